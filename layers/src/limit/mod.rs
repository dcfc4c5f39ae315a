//! `ConcurrencyLimitLayer`: a bound on in-flight calls that lasts until the *body* ends.
//!
//! tower's own concurrency limit releases its permit when the response future resolves. For a
//! streaming origin that is the moment the headers arrive, long before the bytes do, so it
//! would not bound anything that matters (connections, origin load, buffered memory). This
//! layer moves the permit into the response stream and releases it when the stream ends, fails
//! or is dropped.
//!
//! Waiting is fair and prioritised (a [`Gate`]): urgent requests go before speculative ones
//! (readahead), a speculative request can be promoted while it waits, and speculation never
//! takes the last quarter of the slots. Waiting is bounded too: a call that cannot get a slot
//! before its deadline ([`Queued::wait`], else the layer's queue timeout) fails with
//! [`QueueTimeout`], which Shoal answers as 503 `SlowDown` — a signal every S3 SDK backs off
//! and retries on. That is why the slot is taken in the call's future rather than in
//! `poll_ready`: the slot's priority and deadline come from the request, which `poll_ready`
//! does not see.
//!
//! The HTTP face ([`ConcurrencyLimitLayer::http`], in [`mod@http`]) has no per-request
//! priorities, so it takes the slot in `poll_ready` instead and is honest about capacity there:
//! `LoadShed` above it sheds, and `Buffer` queues, exactly as tower documents. Its waiting is
//! bounded in length and in time, and a caller past either gets 503 with `Retry-After`. Both
//! faces hold the slot in the same [`Permitted`] body until the last byte.

pub mod http;

use super::gate::{Gate, GatePermit, Queued, Wait};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::Stream;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

/// No permit became free within the queue timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no slot free within {0:?}")]
pub struct QueueTimeout(pub Duration);

/// Applies [`ConcurrencyLimit`]; clones share the same permits.
///
/// ```
/// use shoal_layers::ConcurrencyLimitLayer;
/// use std::time::Duration;
/// // At most 64 bodies streaming at once; wait at most 5 s for a slot.
/// let layer = ConcurrencyLimitLayer::new(64, Duration::from_secs(5));
/// assert_eq!(layer.available(), 64);
/// ```
#[derive(Clone)]
pub struct ConcurrencyLimitLayer {
    gate: Gate,
    queue_timeout: Duration,
    on_wait: Option<OnWait>,
}

/// A hook told how long each call waited for its slot.
type OnWait = std::sync::Arc<dyn Fn(Duration) + Send + Sync>;

impl std::fmt::Debug for ConcurrencyLimitLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConcurrencyLimitLayer")
            .field("gate", &self.gate)
            .field("queue_timeout", &self.queue_timeout)
            .finish()
    }
}

impl ConcurrencyLimitLayer {
    /// `max` concurrent bodies; callers wait at most `queue_timeout` for a slot (unless the
    /// request names its own deadline).
    pub fn new(max: usize, queue_timeout: Duration) -> Self {
        ConcurrencyLimitLayer {
            gate: Gate::new(max as u64),
            queue_timeout,
            on_wait: None,
        }
    }

    /// Calls `f` with how long each call waited for its slot (for metrics).
    pub fn on_wait(mut self, f: impl Fn(Duration) + Send + Sync + 'static) -> Self {
        self.on_wait = Some(std::sync::Arc::new(f));
        self
    }

    /// Slots in use right now.
    pub fn in_use(&self) -> usize {
        (self.gate.total() - self.gate.available()) as usize
    }

    /// Free slots right now.
    pub fn available(&self) -> usize {
        self.gate.available() as usize
    }

    /// Callers waiting for a slot right now.
    pub fn queued(&self) -> usize {
        self.gate.queued()
    }

    /// The slots themselves, for work that must count against the same limit without going
    /// through the layer (a hedged second request takes one with [`Gate::try_acquire`]).
    pub fn gate(&self) -> Gate {
        self.gate.clone()
    }
}

impl<S> Layer<S> for ConcurrencyLimitLayer {
    type Service = ConcurrencyLimit<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ConcurrencyLimit {
            inner,
            gate: self.gate.clone(),
            queue_timeout: self.queue_timeout,
            on_wait: self.on_wait.clone(),
        }
    }
}

/// Bounds concurrent response bodies. See the module docs.
#[derive(Clone)]
pub struct ConcurrencyLimit<S> {
    inner: S,
    gate: Gate,
    queue_timeout: Duration,
    on_wait: Option<OnWait>,
}

impl<S, Req> Service<Req> for ConcurrencyLimit<S>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: From<QueueTimeout> + Send,
    Req: Queued + Send + 'static,
{
    type Response = Permitted<S::Response>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Capacity is checked in `call` (with a deadline); the inner service is driven to
        // readiness there too, with `ready()`.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let deadline = match req.wait() {
            Wait::Default => Some(Instant::now() + self.queue_timeout),
            Wait::Until(t) => Some(t),
            Wait::Forever => None,
        };
        let wait = self.gate.acquire(1, req.priority().cloned(), deadline);
        let inner = self.inner.clone();
        let on_wait = self.on_wait.clone();
        Box::pin(async move {
            let started = Instant::now();
            let permit = tracing::Instrument::instrument(wait, tracing::debug_span!("queue_wait"))
                .await
                .map_err(|t| QueueTimeout(t.0))?;
            if let Some(f) = on_wait {
                f(started.elapsed());
            }
            let body = inner.oneshot(req).await?;
            Ok(Permitted {
                body,
                permit: Some(permit),
            })
        })
    }
}

/// A response body that holds a permit until it ends, fails or is dropped: a `Stream` of
/// bytes in the chunk stack, an `http_body::Body` in the HTTP face.
pub struct Permitted<B> {
    body: B,
    permit: Option<GatePermit>,
}

impl<B> Permitted<B> {
    /// `body`, holding `permit` until it ends.
    pub fn new(body: B, permit: GatePermit) -> Self {
        Permitted {
            body,
            permit: Some(permit),
        }
    }
}

impl<B> http_body::Body for Permitted<B>
where
    B: http_body::Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        let frame = Pin::new(&mut self.body).poll_frame(cx);
        if matches!(frame, Poll::Ready(None) | Poll::Ready(Some(Err(_))))
            || self.body.is_end_stream()
        {
            self.permit = None;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

impl<B, E> Stream for Permitted<B>
where
    B: Stream<Item = Result<Bytes, E>> + Unpin,
{
    type Item = Result<Bytes, E>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let item = Pin::new(&mut self.body).poll_next(cx);
        if matches!(item, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            self.permit = None;
        }
        item
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gate::Priority;
    use futures_util::{stream, StreamExt};
    use tower::service_fn;

    #[derive(Debug, PartialEq)]
    enum E {
        Timeout,
    }
    impl From<QueueTimeout> for E {
        fn from(_: QueueTimeout) -> Self {
            E::Timeout
        }
    }

    #[derive(Clone, Default)]
    struct Req(Option<Priority>);
    impl Queued for Req {
        fn priority(&self) -> Option<&Priority> {
            self.0.as_ref()
        }
        fn wait(&self) -> Wait {
            if self.0.as_ref().is_some_and(|p| !p.is_urgent()) {
                Wait::Forever
            } else {
                Wait::Default
            }
        }
    }

    fn svc() -> impl Service<
        Req,
        Response = impl Stream<Item = Result<Bytes, E>> + Unpin,
        Error = E,
        Future = impl Send,
    > + Clone
           + Send
           + 'static {
        service_fn(|_: Req| async {
            Ok::<_, E>(stream::iter(vec![
                Ok(Bytes::from_static(b"a")),
                Ok(Bytes::from_static(b"b")),
            ]))
        })
    }

    #[tokio::test]
    async fn permit_is_held_until_the_body_ends() {
        let layer = ConcurrencyLimitLayer::new(1, Duration::from_millis(50));
        let s = layer.layer(svc());
        let mut body = s.clone().oneshot(Req::default()).await.unwrap();
        assert_eq!(layer.available(), 0);
        // Headers are in, the body is not: a second call must time out.
        assert_eq!(
            s.clone().oneshot(Req::default()).await.err(),
            Some(E::Timeout)
        );
        while body.next().await.is_some() {}
        assert_eq!(layer.available(), 1);
        assert!(s.clone().oneshot(Req::default()).await.is_ok());
    }

    #[tokio::test]
    async fn dropping_the_body_frees_the_permit() {
        let layer = ConcurrencyLimitLayer::new(1, Duration::from_secs(5));
        let s = layer.layer(svc());
        let body = s.clone().oneshot(Req::default()).await.unwrap();
        let waiter = tokio::spawn(s.clone().oneshot(Req::default()));
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(body);
        assert!(waiter.await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn urgent_calls_overtake_queued_speculative_ones() {
        let layer = ConcurrencyLimitLayer::new(1, Duration::from_secs(5));
        let s = layer.layer(svc());
        let body = s.clone().oneshot(Req::default()).await.unwrap();
        let spec = tokio::spawn(s.clone().oneshot(Req(Some(Priority::speculative()))));
        tokio::time::sleep(Duration::from_millis(10)).await;
        let urgent = tokio::spawn(s.clone().oneshot(Req::default()));
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(body);
        let won = urgent.await.unwrap().unwrap();
        assert!(!spec.is_finished(), "speculation waits behind urgent work");
        drop(won);
        assert!(spec.await.unwrap().is_ok());
    }
}
