//! The HTTP face of the concurrency limit: at most `max` responses in flight, each holding its
//! slot until its body's last byte; `poll_ready` says whether a slot is free, so tower's
//! `LoadShed` and `Buffer` above it work as documented. Without them, a caller waits for a slot
//! — at most `queue_timeout`, and only while fewer than `max_waiting` others wait — and is
//! otherwise answered 503 with `Retry-After`.
//!
//! ```
//! use axum::{routing::get, Router};
//! use shoal_layers::ConcurrencyLimitLayer;
//! use std::time::Duration;
//! use tower::ServiceBuilder;
//! use tower_http::{timeout::TimeoutLayer, trace::TraceLayer};
//!
//! async fn download() -> &'static str {
//!     "a large body"
//! }
//! let app: Router = Router::new().route("/download", get(download)).layer(
//!     ServiceBuilder::new()
//!         .layer(TraceLayer::new_for_http())
//!         .layer(TimeoutLayer::with_status_code(http::StatusCode::REQUEST_TIMEOUT, Duration::from_secs(60)))
//!         .layer(
//!             ConcurrencyLimitLayer::http(64)
//!                 .queue_timeout(Duration::from_secs(5))
//!                 .max_waiting(256),
//!         ),
//! );
//! # let _ = app;
//! ```
//!
//! With `LoadShed` above it (and axum's `HandleErrorLayer` to turn its error into an answer),
//! a request that finds no free slot is shed at once instead of waiting:
//!
//! ```
//! use axum::{error_handling::HandleErrorLayer, http::StatusCode, routing::get, BoxError, Router};
//! use shoal_layers::ConcurrencyLimitLayer;
//! use tower::ServiceBuilder;
//!
//! let app: Router = Router::new().route("/", get(|| async { "hi" })).layer(
//!     ServiceBuilder::new()
//!         .layer(HandleErrorLayer::new(|_: BoxError| async { StatusCode::SERVICE_UNAVAILABLE }))
//!         .load_shed()
//!         .layer(ConcurrencyLimitLayer::http(2)),
//! );
//! # let _ = app;
//! ```

use super::super::gate::{Acquire, Gate, GatePermit};
use super::Permitted;
use crate::http::{boxed, plain, BoxError, ResponseBody};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use http_body::Body;
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use tower::{Layer, Service};

/// Builds the answer given to a caller that got no slot.
type Rejection = Arc<dyn Fn() -> http::Response<ResponseBody> + Send + Sync>;

impl super::ConcurrencyLimitLayer {
    /// The HTTP face: at most `max` responses in flight (until their bodies end). Defaults:
    /// wait at most 5 s, with at most 1 024 callers waiting; then 503 with `Retry-After: 1`.
    pub fn http(max: usize) -> HttpConcurrencyLimitLayer {
        HttpConcurrencyLimitLayer {
            gate: Gate::new(max as u64),
            queue_timeout: Duration::from_secs(5),
            max_waiting: 1024,
            rejection: Arc::new(|| {
                plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &[(http::header::RETRY_AFTER, HeaderValue::from_static("1"))],
                    "busy: too many requests in flight, try again shortly",
                )
            }),
        }
    }
}

/// Applies [`HttpConcurrencyLimit`]; clones share the same slots.
#[derive(Clone)]
pub struct HttpConcurrencyLimitLayer {
    gate: Gate,
    queue_timeout: Duration,
    max_waiting: usize,
    rejection: Rejection,
}

impl std::fmt::Debug for HttpConcurrencyLimitLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpConcurrencyLimitLayer")
            .field("gate", &self.gate)
            .field("queue_timeout", &self.queue_timeout)
            .field("max_waiting", &self.max_waiting)
            .finish()
    }
}

impl HttpConcurrencyLimitLayer {
    /// How long a caller may wait for a slot.
    pub fn queue_timeout(mut self, d: Duration) -> Self {
        self.queue_timeout = d;
        self
    }

    /// How many callers may wait at once; one more is answered at once.
    pub fn max_waiting(mut self, n: usize) -> Self {
        self.max_waiting = n;
        self
    }

    /// The answer for a caller that got no slot (default: 503, `Retry-After: 1`).
    pub fn rejection(
        mut self,
        f: impl Fn() -> http::Response<ResponseBody> + Send + Sync + 'static,
    ) -> Self {
        self.rejection = Arc::new(f);
        self
    }

    /// Sets `Retry-After` on the default answer (seconds).
    pub fn retry_after(self, secs: u32) -> Self {
        self.rejection(move || {
            plain(
                StatusCode::SERVICE_UNAVAILABLE,
                &[(
                    HeaderName::from_static("retry-after"),
                    HeaderValue::from(secs),
                )],
                "busy: too many requests in flight, try again shortly",
            )
        })
    }

    /// Slots free right now.
    pub fn available(&self) -> usize {
        self.gate.available() as usize
    }

    /// Callers waiting right now.
    pub fn queued(&self) -> usize {
        self.gate.queued()
    }
}

impl<S> Layer<S> for HttpConcurrencyLimitLayer {
    type Service = HttpConcurrencyLimit<S>;
    fn layer(&self, inner: S) -> Self::Service {
        HttpConcurrencyLimit {
            inner,
            gate: self.gate.clone(),
            queue_timeout: self.queue_timeout,
            max_waiting: self.max_waiting,
            rejection: self.rejection.clone(),
            state: State::Idle,
        }
    }
}

enum State {
    /// No slot asked for yet.
    Idle,
    /// Waiting for a slot.
    Waiting(Acquire),
    /// A slot is held for the next call.
    Holding(GatePermit),
    /// No slot: the next call is answered with the rejection.
    Rejected,
}

/// Bounds in-flight responses until their bodies end; see the module docs.
pub struct HttpConcurrencyLimit<S> {
    inner: S,
    gate: Gate,
    queue_timeout: Duration,
    max_waiting: usize,
    rejection: Rejection,
    state: State,
}

/// A clone shares the slots but not a slot this service is holding or waiting for.
impl<S: Clone> Clone for HttpConcurrencyLimit<S> {
    fn clone(&self) -> Self {
        HttpConcurrencyLimit {
            inner: self.inner.clone(),
            gate: self.gate.clone(),
            queue_timeout: self.queue_timeout,
            max_waiting: self.max_waiting,
            rejection: self.rejection.clone(),
            state: State::Idle,
        }
    }
}

impl<S, ReqB, ResB> Service<http::Request<ReqB>> for HttpConcurrencyLimit<S>
where
    S: Service<http::Request<ReqB>, Response = http::Response<ResB>>,
    ResB: Body<Data = Bytes> + Send + Unpin + 'static,
    ResB::Error: Into<BoxError>,
{
    type Response = http::Response<ResponseBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        loop {
            match &mut self.state {
                State::Idle => {
                    if let Some(p) = self.gate.try_acquire(1, None) {
                        self.state = State::Holding(p);
                    } else if self.gate.queued() >= self.max_waiting {
                        self.state = State::Rejected;
                    } else {
                        let deadline = Instant::now() + self.queue_timeout;
                        self.state = State::Waiting(self.gate.acquire(1, None, Some(deadline)));
                    }
                }
                State::Waiting(acquire) => match Pin::new(acquire).poll(cx) {
                    Poll::Ready(Ok(p)) => self.state = State::Holding(p),
                    Poll::Ready(Err(_timeout)) => self.state = State::Rejected,
                    // Honest: no slot, no readiness.
                    Poll::Pending => return Poll::Pending,
                },
                // With a slot, ready when the inner service is.
                State::Holding(_) => return self.inner.poll_ready(cx),
                // Ready to answer the rejection, without the inner service.
                State::Rejected => return Poll::Ready(Ok(())),
            }
        }
    }

    fn call(&mut self, req: http::Request<ReqB>) -> Self::Future {
        match std::mem::replace(&mut self.state, State::Idle) {
            State::Holding(permit) => ResponseFuture::Called {
                fut: self.inner.call(req),
                permit: Some(permit),
            },
            // `Rejected`, or a caller that skipped `poll_ready` (a contract breach that gets
            // the rejection rather than a panic).
            _ => ResponseFuture::Rejected {
                answer: Some((self.rejection)()),
            },
        }
    }
}

pin_project! {
    /// The answer of [`HttpConcurrencyLimit`]: the inner service's, with its body holding the
    /// slot, or the rejection.
    #[project = Proj]
    #[allow(missing_docs)]
    pub enum ResponseFuture<F> {
        /// Calling the inner service.
        Called { #[pin] fut: F, permit: Option<GatePermit> },
        /// No slot.
        Rejected { answer: Option<http::Response<ResponseBody>> },
    }
}

impl<F, ResB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<ResB>, E>>,
    ResB: Body<Data = Bytes> + Send + Unpin + 'static,
    ResB::Error: Into<BoxError>,
{
    type Output = Result<http::Response<ResponseBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            Proj::Called { fut, permit } => {
                let resp = std::task::ready!(fut.poll(cx))?;
                let permit = permit.take();
                Poll::Ready(Ok(resp.map(|body| match permit {
                    Some(p) => boxed(Permitted::new(body, p)),
                    None => boxed(body),
                })))
            }
            Proj::Rejected { answer } => Poll::Ready(Ok(answer
                .take()
                .unwrap_or_else(|| plain(StatusCode::SERVICE_UNAVAILABLE, &[], "busy")))),
        }
    }
}
