//! The HTTP face of [`RetryUntilCommit`]: wrap an HTTP *client* service (a hyper-util
//! `Client`, or any `Service<http::Request<B>>` that answers with a streaming body), and a GET
//! whose answer breaks — before its head, or in the middle of its body — is retried, then
//! resumed from the byte reached with `Range: bytes=N-` pinned by `If-Match` on the first
//! answer's `ETag`. The caller sees one response whose body is the exact bytes of that version.
//!
//! Resuming is only safe when the content cannot change under it, so the face checks every
//! resumed answer: it must be `206` for exactly the range asked, and carry the pinned `ETag`
//! (an upstream or proxy that ignores `If-Match` is caught, not trusted). An answer without a
//! strong `ETag` is passed on unresumed: when it breaks, the body fails rather than splice bytes
//! of an unknown version. Answers other than 2xx are passed on as they are, after retrying the
//! transient ones (5xx, 429) within the policy. Methods other than GET pass straight through.
//!
//! ```
//! use axum::{body::Body, extract::State, http::Request, routing::get, Router};
//! use hyper_util::{client::legacy::{connect::HttpConnector, Client}, rt::TokioExecutor};
//! use shoal_layers::http::ResponseBody;
//! use shoal_layers::{RetryPolicy, RetryUntilCommitLayer};
//! use std::time::Duration;
//! use tower::{util::BoxCloneSyncService, ServiceBuilder, ServiceExt};
//! use tower_http::timeout::TimeoutLayer;
//!
//! type Upstream = BoxCloneSyncService<Request<Body>, http::Response<ResponseBody>, shoal_layers::retry::http::RetryError>;
//!
//! // A proxy route that survives upstream resets.
//! async fn proxy(State(up): State<Upstream>, req: Request<Body>) -> axum::response::Response {
//!     let uri = format!("http://127.0.0.1:9000{}", req.uri().path());
//!     let req = Request::get(uri).body(Body::empty()).unwrap();
//!     match up.oneshot(req).await {
//!         Ok(r) => r.map(Body::new),
//!         Err(e) => (http::StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
//!     }
//! }
//! # use axum::response::IntoResponse;
//! # fn main() {
//! let client = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
//! let upstream: Upstream = BoxCloneSyncService::new(
//!     ServiceBuilder::new()
//!         .layer(RetryUntilCommitLayer::http(RetryPolicy::default()))
//!         .service(client),
//! );
//! let app: Router = Router::new()
//!     .route("/{*key}", get(proxy))
//!     .with_state(upstream)
//!     .layer(TimeoutLayer::with_status_code(http::StatusCode::REQUEST_TIMEOUT, Duration::from_secs(300)));
//! # let _ = app;
//! # }
//! ```

use super::{RetryPolicy, RetryUntilCommit};
use crate::http::{boxed, BoxError, RequestHead, ResponseBody, SharedError, StreamBody};
pub use crate::resume::ResumeError as RetryError;
use crate::resume::{Attempts, Pin, Resume};
use crate::Class;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::Method;
use http_body::Body;
use std::task::{Context, Poll};
use tower::{Layer, Service};

impl super::RetryUntilCommitLayer<fn(&RetryError) -> Class> {
    /// The HTTP face: retries and resumes GETs through an HTTP client within `policy`. See
    /// [`mod@self::http`](self).
    pub fn http(policy: RetryPolicy) -> HttpRetryLayer {
        HttpRetryLayer { policy }
    }
}

/// Applies [`HttpRetry`]; see [`RetryUntilCommitLayer::http`](super::RetryUntilCommitLayer::http).
#[derive(Clone, Debug)]
pub struct HttpRetryLayer {
    policy: RetryPolicy,
}

impl<S> Layer<S> for HttpRetryLayer {
    type Service = HttpRetry<S>;
    fn layer(&self, inner: S) -> HttpRetry<S> {
        HttpRetry {
            inner,
            policy: self.policy,
        }
    }
}

/// Retries and resumes GETs through an HTTP client; see the module docs.
#[derive(Clone, Debug)]
pub struct HttpRetry<S> {
    inner: S,
    policy: RetryPolicy,
}

impl<S, ReqB, ResB> Service<http::Request<ReqB>> for HttpRetry<S>
where
    S: Service<http::Request<ReqB>, Response = http::Response<ResB>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    ReqB: Default + Send + 'static,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    type Response = http::Response<ResponseBody>;
    type Error = RetryError;
    type Future = BoxFuture<'static, Result<Self::Response, RetryError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), RetryError>> {
        self.inner
            .poll_ready(cx)
            .map_err(|e| RetryError::Upstream(SharedError::new(e)))
    }

    fn call(&mut self, req: http::Request<ReqB>) -> Self::Future {
        if req.method() != Method::GET {
            let fut = self.inner.call(req);
            return Box::pin(async move {
                fut.await
                    .map(|r| r.map(boxed))
                    .map_err(|e| RetryError::Upstream(SharedError::new(e)))
            });
        }
        let resume = Resume::new(RequestHead::of(&req), Pin::Head);
        let mut core = RetryUntilCommit {
            inner: Attempts::new(self.inner.clone()),
            policy: self.policy,
            classify: RetryError::class as fn(&RetryError) -> Class,
            on_retry: None,
        };
        let stream = core.call(resume.clone());
        Box::pin(async move {
            match stream.await {
                // An attempt that answered a body always recorded the first answer.
                Ok(stream) => match resume.first() {
                    Some(first) => Ok(first
                        .head
                        .response(boxed(StreamBody::sized(stream, first.len)))),
                    None => Err(RetryError::Protocol("no answer was recorded".into())),
                },
                Err(e) => match resume.take_passthrough() {
                    Some(answer) => Ok(answer),
                    None => Err(e),
                },
            }
        })
    }
}
