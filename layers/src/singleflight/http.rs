//! The HTTP face of [`Singleflight`]: identical concurrent GET and HEAD requests — same method,
//! URI and chosen headers ([`HttpKey`]) — make one call to the inner service; every caller gets
//! the status and headers, and streams the body as it arrives. Other methods pass through.
//!
//! ```
//! use axum::{routing::get, Router};
//! use shoal_layers::SingleflightLayer;
//! use std::time::Duration;
//! use tower::ServiceBuilder;
//! use tower_http::{timeout::TimeoutLayer, trace::TraceLayer};
//!
//! async fn render() -> &'static str {
//!     "expensive"
//! }
//! let app: Router = Router::new().route("/render", get(render)).layer(
//!     ServiceBuilder::new()
//!         .layer(TraceLayer::new_for_http())
//!         .layer(TimeoutLayer::with_status_code(http::StatusCode::REQUEST_TIMEOUT, Duration::from_secs(30)))
//!         .layer(SingleflightLayer::http()),
//! );
//! # let _ = app;
//! ```

use super::{Flights, Joined, NotDurable, Share, Singleflight};
use crate::http::{
    boxed, is_safe, plain, BoxError, DataStream, Head, HttpKey, RequestKey, ResponseBody,
    SharedError, StreamBody,
};
use bytes::Bytes;
use futures_util::ready;
use http::{HeaderName, StatusCode};
use http_body::Body;
use pin_project_lite::pin_project;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio_util::task::TaskTracker;
use tower::{Layer, Service};

/// The [`Share`] of HTTP answers: the head is copied to every caller, the body is streamed to
/// all of them.
#[derive(Clone, Copy, Debug, Default)]
pub struct HttpShare;

impl<B, E> Share<http::Response<B>, E> for HttpShare
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    E: Into<BoxError>,
{
    type Head = Head;
    type Error = SharedError;
    type Body = DataStream<B>;

    fn split(&self, answer: http::Response<B>) -> (Head, DataStream<B>) {
        let head = Head::of(&answer);
        (head, DataStream::new(answer.into_body()))
    }

    fn failed(&self, e: E) -> SharedError {
        SharedError::new(e)
    }
}

impl super::SingleflightLayer<HttpKey, (), NotDurable, HttpShare> {
    /// The HTTP face: coalesces identical concurrent GET and HEAD requests by method and URI
    /// (add headers with [`HttpSingleflightLayer::vary`]).
    pub fn http() -> HttpSingleflightLayer {
        HttpSingleflightLayer {
            key: HttpKey::new(),
            tasks: TaskTracker::new(),
        }
    }
}

/// Applies [`HttpSingleflight`]; see [`SingleflightLayer::http`](super::SingleflightLayer::http).
#[derive(Clone, Debug)]
pub struct HttpSingleflightLayer {
    key: HttpKey,
    tasks: TaskTracker,
}

impl HttpSingleflightLayer {
    /// Requests that differ in `header` are not coalesced (`Range`, `Accept-Encoding`,
    /// `Authorization`…).
    pub fn vary(mut self, header: HeaderName) -> Self {
        self.key = self.key.vary(header);
        self
    }

    /// Uses `tasks` to own the detached calls, so that shutdown can wait for them.
    pub fn with_tracker(mut self, tasks: TaskTracker) -> Self {
        self.tasks = tasks;
        self
    }
}

impl<S> Layer<S> for HttpSingleflightLayer {
    type Service = HttpSingleflight<S>;
    fn layer(&self, inner: S) -> Self::Service {
        HttpSingleflight {
            inner,
            key: self.key.clone(),
            tasks: self.tasks.clone(),
            flights: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}

/// Coalesces identical concurrent GET and HEAD requests; see the module docs.
#[derive(Clone)]
pub struct HttpSingleflight<S> {
    inner: S,
    key: HttpKey,
    tasks: TaskTracker,
    flights: Flights<RequestKey, Head, SharedError>,
}

impl<S> HttpSingleflight<S> {
    /// Requests with a call in flight right now.
    pub fn in_flight(&self) -> usize {
        super::lock(&self.flights).len()
    }
}

impl<S, ReqB, ResB> Service<http::Request<ReqB>> for HttpSingleflight<S>
where
    S: Service<http::Request<ReqB>, Response = http::Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError> + Send + 'static,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
    ReqB: Send + 'static,
{
    type Response = http::Response<ResponseBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqB>) -> Self::Future {
        if !is_safe(req.method()) {
            return ResponseFuture {
                state: State::Passed {
                    fut: self.inner.call(req),
                },
            };
        }
        // The service driven to readiness goes to the flight (it is called only if this
        // request leads); a fresh clone stays behind.
        let clone = self.inner.clone();
        let mut flight = Singleflight {
            inner: std::mem::replace(&mut self.inner, clone),
            key_of: self.key.clone(),
            durable: NotDurable,
            share: HttpShare,
            tasks: self.tasks.clone(),
            observe: None,
            flights: self.flights.clone(),
        };
        // Joining is immediate; the answer's head is what is waited for.
        match flight.call(req).into_inner() {
            Ok(joined) => ResponseFuture {
                state: State::Shared {
                    joined: Some(joined),
                },
            },
            Err(e) => ResponseFuture {
                state: State::Failed { error: Some(e) },
            },
        }
    }
}

pin_project! {
    /// The future of [`HttpSingleflight`]: the inner call's own for a request passed through,
    /// else the shared call's head.
    pub struct ResponseFuture<F, E> {
        #[pin]
        state: State<F, E>,
    }
}

pin_project! {
    #[project = Project]
    enum State<F, E> {
        // A request that is not shared (not GET or HEAD).
        Passed { #[pin] fut: F },
        // A caller of the shared call, waiting for its head.
        Shared { joined: Option<Joined<Head, SharedError>> },
        // Joining failed.
        Failed { error: Option<E> },
    }
}

impl<F, B, E> Future for ResponseFuture<F, E>
where
    F: Future<Output = Result<http::Response<B>, E>>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Output = Result<http::Response<ResponseBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            Project::Passed { fut } => fut.poll(cx).map(|r| r.map(|resp| resp.map(boxed))),
            Project::Shared { joined } => {
                let Some(j) = joined.as_mut() else {
                    return Poll::Ready(Ok(plain(
                        StatusCode::BAD_GATEWAY,
                        &[],
                        "polled after completion",
                    )));
                };
                let head = ready!(j.poll_head(cx));
                let Some(j) = joined.take() else {
                    return Poll::Ready(Ok(plain(
                        StatusCode::BAD_GATEWAY,
                        &[],
                        "polled after completion",
                    )));
                };
                Poll::Ready(Ok(match head {
                    Ok(head) => head.response(boxed(StreamBody::new(j))),
                    Err(e) => plain(
                        StatusCode::BAD_GATEWAY,
                        &[],
                        &format!("the shared upstream call failed: {e}"),
                    ),
                }))
            }
            Project::Failed { error } => match error.take() {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Ready(Ok(plain(
                    StatusCode::BAD_GATEWAY,
                    &[],
                    "polled after completion",
                ))),
            },
        }
    }
}
