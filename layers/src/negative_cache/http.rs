//! The HTTP face of [`NegativeCache`]: answers to GET and HEAD with a remembered status (404
//! and 410 by default) are kept for `negative_ttl` and served from memory; optionally, small
//! successes are kept for `ttl` too. Concurrent misses of one request make one inner call.
//!
//! Only answers whose body is known to be small (at most `max_body` bytes, from its size hint
//! or `Content-Length`) are kept; anything else streams through untouched, to the caller that
//! asked. A caller that was coalesced with such an answer makes its own call: a streamed body
//! has only one reader.
//!
//! ```
//! use axum::{http::StatusCode, routing::get, Router};
//! use shoal_layers::NegativeCacheLayer;
//! use std::time::Duration;
//! use tower::ServiceBuilder;
//! use tower_http::trace::TraceLayer;
//!
//! async fn lookup() -> StatusCode {
//!     StatusCode::NOT_FOUND // expensive to find out
//! }
//! let app: Router = Router::new().route("/item", get(lookup)).layer(
//!     ServiceBuilder::new()
//!         .layer(TraceLayer::new_for_http())
//!         .layer(NegativeCacheLayer::http().negative_ttl(Duration::from_secs(30))),
//! );
//! # let _ = app;
//! ```

use super::{NegativeCache, Remember};
use crate::http::{
    boxed, full, is_safe, plain, BoxError, Head, HttpKey, RequestHead, RequestKey, ResponseBody,
    SharedError,
};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::StatusCode;
use http_body::Body;
use http_body_util::BodyExt;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tower::{Layer, Service, ServiceExt};

/// What the cache holds for a request.
#[derive(Clone)]
pub enum Answer {
    /// A whole answer, kept (if the policy says so) and served from memory.
    Kept(Arc<(Head, Bytes)>),
    /// A streamed answer, never kept: the first caller to take it gets it.
    Passed(Arc<Mutex<Option<http::Response<ResponseBody>>>>),
}

/// Which answers the HTTP face keeps, and for how long.
#[derive(Clone, Debug)]
pub struct ByStatus {
    negative: Vec<StatusCode>,
    negative_ttl: Duration,
    /// `Some(ttl)` when successes are kept.
    successes: Option<Duration>,
}

impl Remember<Answer, SharedError> for ByStatus {
    fn keep_for(&self, answer: &Result<Answer, SharedError>) -> Duration {
        match answer {
            Ok(Answer::Kept(k)) if self.negative.contains(&k.0.status) => self.negative_ttl,
            Ok(Answer::Kept(k)) if k.0.status.is_success() => self.successes.unwrap_or_default(),
            _ => Duration::ZERO,
        }
    }
}

impl super::NegativeCacheLayer<HttpKey, (), ()> {
    /// The HTTP face: remembers 404 and 410 answers to GET and HEAD for 60 s, keyed by method
    /// and URI; everything else passes through.
    pub fn http() -> HttpNegativeCacheLayer {
        HttpNegativeCacheLayer {
            key: HttpKey::new(),
            policy: ByStatus {
                negative: vec![StatusCode::NOT_FOUND, StatusCode::GONE],
                negative_ttl: Duration::from_secs(60),
                successes: None,
            },
            max_body: 64 << 10,
            max_entries: 10_000,
        }
    }
}

/// Applies [`HttpNegativeCache`]; see [`NegativeCacheLayer::http`](super::NegativeCacheLayer::http).
#[derive(Clone, Debug)]
pub struct HttpNegativeCacheLayer {
    key: HttpKey,
    policy: ByStatus,
    max_body: u64,
    max_entries: u64,
}

impl HttpNegativeCacheLayer {
    /// How long a remembered status is kept (default 60 s).
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.policy.negative_ttl = ttl;
        self
    }

    /// The statuses remembered (default 404 and 410).
    pub fn statuses(mut self, statuses: impl IntoIterator<Item = StatusCode>) -> Self {
        self.policy.negative = statuses.into_iter().collect();
        self
    }

    /// Also keeps successful answers with small bodies, for `ttl`.
    pub fn successes(mut self, ttl: Duration) -> Self {
        self.policy.successes = Some(ttl);
        self
    }

    /// The largest body kept (default 64 KiB).
    pub fn max_body(mut self, bytes: u64) -> Self {
        self.max_body = bytes;
        self
    }

    /// Entry bound (default 10 000).
    pub fn max_entries(mut self, n: u64) -> Self {
        self.max_entries = n;
        self
    }

    /// Requests that differ in `header` are remembered apart.
    pub fn vary(mut self, header: http::HeaderName) -> Self {
        self.key = self.key.vary(header);
        self
    }
}

impl<S> Layer<S> for HttpNegativeCacheLayer {
    type Service = HttpNegativeCache<S>;
    fn layer(&self, inner: S) -> Self::Service {
        HttpNegativeCache {
            fetch: Fetch {
                inner,
                policy: self.policy.clone(),
                max_body: self.max_body,
            },
            key: self.key.clone(),
            cache: super::cache(self.policy.clone(), self.max_entries),
        }
    }
}

/// Calls the inner service and turns its answer into an [`Answer`].
#[derive(Clone)]
pub struct Fetch<S> {
    inner: S,
    policy: ByStatus,
    max_body: u64,
}

impl<S, ReqB, ResB> Service<http::Request<ReqB>> for Fetch<S>
where
    S: Service<http::Request<ReqB>, Response = http::Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
    ReqB: Send + 'static,
{
    type Response = Answer;
    type Error = SharedError;
    type Future = BoxFuture<'static, Result<Answer, SharedError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SharedError>> {
        self.inner.poll_ready(cx).map_err(SharedError::new)
    }

    fn call(&mut self, req: http::Request<ReqB>) -> Self::Future {
        let fut = self.inner.call(req);
        let (policy, max_body) = (self.policy.clone(), self.max_body);
        Box::pin(async move {
            let resp = fut.await.map_err(SharedError::new)?;
            let status = resp.status();
            let wanted = policy.negative.contains(&status)
                || (policy.successes.is_some() && status.is_success());
            let small = resp
                .body()
                .size_hint()
                .upper()
                .is_some_and(|n| n <= max_body);
            if wanted && small {
                let head = Head::of(&resp);
                let bytes = resp
                    .into_body()
                    .collect()
                    .await
                    .map_err(SharedError::new)?
                    .to_bytes();
                return Ok(Answer::Kept(Arc::new((head, bytes))));
            }
            Ok(Answer::Passed(Arc::new(Mutex::new(Some(resp.map(boxed))))))
        })
    }
}

/// Remembers answers to GET and HEAD by status; see the module docs.
#[derive(Clone)]
pub struct HttpNegativeCache<S> {
    fetch: Fetch<S>,
    key: HttpKey,
    cache: moka::future::Cache<RequestKey, Result<Answer, SharedError>>,
}

impl<S> HttpNegativeCache<S> {
    /// Forgets everything remembered.
    pub fn clear(&self) {
        self.cache.invalidate_all();
    }
}

impl<S, ReqB, ResB> Service<http::Request<ReqB>> for HttpNegativeCache<S>
where
    S: Service<http::Request<ReqB>, Response = http::Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError> + Send + 'static,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
    ReqB: Default + Send + 'static,
{
    type Response = http::Response<ResponseBody>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.fetch.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqB>) -> Self::Future {
        if !is_safe(req.method()) {
            let fut = self.fetch.inner.call(req);
            return Box::pin(async move { Ok(fut.await?.map(boxed)) });
        }
        let again = RequestHead::of(&req);
        let inner = self.fetch.inner.clone();
        let cache = NegativeCache {
            inner: self.fetch.clone(),
            key_of: self.key.clone(),
            cache: self.cache.clone(),
            on_lookup: None,
        };
        let head = req.method() == http::Method::HEAD;
        Box::pin(async move {
            match cache.oneshot(req).await {
                Ok(Answer::Kept(k)) => {
                    let body = if head { Bytes::new() } else { k.1.clone() };
                    Ok(k.0.response(full(body)))
                }
                Ok(Answer::Passed(slot)) => {
                    let taken = crate::lock(&slot).take();
                    match taken {
                        Some(r) => Ok(r),
                        // Coalesced with a call whose streamed answer its own caller took:
                        // ask again.
                        None => Ok(inner
                            .oneshot(again.request(ReqB::default()))
                            .await?
                            .map(boxed)),
                    }
                }
                Err(e) => Ok(plain(
                    StatusCode::BAD_GATEWAY,
                    &[],
                    &format!("the upstream call failed: {e}"),
                )),
            }
        })
    }
}
