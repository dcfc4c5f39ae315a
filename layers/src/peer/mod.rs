//! `PeerRoutingLayer`: send a request to the peer that owns it; do it here if that fails.
//!
//! A [`Route`] names the peer that should answer a request (or none: answer here). The layer
//! then asks that peer through a client service. Any failure before the first byte — the peer
//! refuses (it does not think it owns the request), is unreachable, is slow to answer, answers
//! with an error — falls through to the inner service, as if the request had been local all
//! along: a peer can only ever make a request faster, never make it fail. A peer stream that
//! breaks *after* bytes have gone out is continued by the inner service from the exact byte
//! reached ([`Resumable::resume_from`]), as the retry layer does for an origin: the reader sees
//! one unbroken stream.
//!
//! The answer says where its first byte came from ([`Routed::from_peer`]), so a caller can
//! treat a peer's bytes differently (Shoal keeps chunks at their owner only).

pub mod http;

use super::retry::Truncated;
use super::Resumable;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};
use std::pin::Pin;
use std::task::{Context, Poll};
use tower::{Layer, Service, ServiceExt};

/// Names the peer that should answer a request, or `None` to answer locally.
///
/// Implemented for any `Fn(&Req) -> Option<P>`.
pub trait Route<Req> {
    /// How a peer is named (an address, a member id…).
    type Peer: Clone + Send + Sync + std::fmt::Display + 'static;
    /// The peer for `req`, or `None`.
    fn route(&self, req: &Req) -> Option<Self::Peer>;
}

impl<Req, P, F> Route<Req> for F
where
    F: Fn(&Req) -> Option<P>,
    P: Clone + Send + Sync + std::fmt::Display + 'static,
{
    type Peer = P;
    fn route(&self, req: &Req) -> Option<P> {
        self(req)
    }
}

/// Applies [`PeerRouting`].
///
/// ```
/// use bytes::Bytes;
/// use futures_util::{stream, StreamExt};
/// use shoal_layers::{PeerRoutingLayer, Resumable, Truncated};
/// use tower::{service_fn, Layer, ServiceExt};
///
/// #[derive(Clone, Debug)]
/// struct Get { name: String, from: u64 }
/// impl Resumable for Get {
///     fn expected_len(&self) -> Option<u64> { None }
///     fn resume_from(&self, d: u64) -> Self { Get { from: self.from + d, ..self.clone() } }
/// }
/// #[derive(Debug)]
/// struct E;
/// impl From<Truncated> for E { fn from(_: Truncated) -> Self { E } }
/// impl std::fmt::Display for E {
///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str("failed") }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// // Names starting with "b" belong to peer "b:9001"; the peer is down, so it is served here.
/// let route = |r: &Get| r.name.starts_with('b').then(|| "b:9001".to_string());
/// let peer = service_fn(|(_peer, _r): (String, Get)| async { Err::<stream::Empty<Result<Bytes, E>>, E>(E) });
/// let local = service_fn(|r: Get| async move {
///     Ok::<_, E>(stream::iter(vec![Ok(Bytes::from(r.name))]))
/// });
/// let svc = PeerRoutingLayer::new(route, peer).layer(local);
/// let mut body = svc.oneshot(Get { name: "bob".into(), from: 0 }).await.unwrap();
/// assert!(!body.from_peer());
/// assert_eq!(body.next().await.unwrap().unwrap(), "bob");
/// # }
/// ```
#[derive(Clone)]
pub struct PeerRoutingLayer<R, C> {
    route: R,
    client: C,
    on_event: Option<OnEvent>,
}

/// What happened to a request routed to a peer (for metrics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerEvent {
    /// The peer served it.
    Served,
    /// The peer did not, before the first byte: served locally.
    Fallback,
    /// The peer's stream broke after bytes: continued locally from the byte reached.
    Resumed,
}

type OnEvent = std::sync::Arc<dyn Fn(PeerEvent) + Send + Sync>;

impl<R, C> PeerRoutingLayer<R, C> {
    /// Routes with `route`, asks peers through `client` (a service of `(peer, request)`).
    pub fn new(route: R, client: C) -> Self {
        PeerRoutingLayer {
            route,
            client,
            on_event: None,
        }
    }

    /// Calls `f` with what happened to every request sent to a peer (for metrics).
    pub fn on_event(mut self, f: impl Fn(PeerEvent) + Send + Sync + 'static) -> Self {
        self.on_event = Some(std::sync::Arc::new(f));
        self
    }
}

impl<S, R: Clone, C: Clone> Layer<S> for PeerRoutingLayer<R, C> {
    type Service = PeerRouting<S, R, C>;
    fn layer(&self, inner: S) -> Self::Service {
        PeerRouting {
            inner,
            route: self.route.clone(),
            client: self.client.clone(),
            on_event: self.on_event.clone(),
        }
    }
}

/// Answers from the owning peer when there is one, else (or on failure) from `inner`. See the
/// module docs.
#[derive(Clone)]
pub struct PeerRouting<S, R, C> {
    inner: S,
    route: R,
    client: C,
    on_event: Option<OnEvent>,
}

/// A routed answer: the bytes, and whether the first of them came from a peer.
pub struct Routed<E> {
    stream: BoxStream<'static, Result<Bytes, E>>,
    from_peer: bool,
}

impl<E> Routed<E> {
    /// Whether the answer's first byte came from a peer.
    pub fn from_peer(&self) -> bool {
        self.from_peer
    }
}

impl<E> Stream for Routed<E> {
    type Item = Result<Bytes, E>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.stream.poll_next_unpin(cx)
    }
}

impl<S, R, C, Req, B, PB, E> Service<Req> for PeerRouting<S, R, C>
where
    Req: Resumable + Clone + Send + Sync + 'static,
    R: Route<Req> + Clone + Send + 'static,
    S: Service<Req, Response = B, Error = E> + Clone + Send + 'static,
    S::Future: Send,
    B: Stream<Item = Result<Bytes, E>> + Send + Unpin + 'static,
    C: Service<(R::Peer, Req), Response = PB, Error = E> + Clone + Send + 'static,
    C::Future: Send,
    PB: Stream<Item = Result<Bytes, E>> + Send + Unpin + 'static,
    E: From<Truncated> + std::fmt::Display + Send + 'static,
{
    type Response = Routed<E>;
    type Error = E;
    type Future = BoxFuture<'static, Result<Routed<E>, E>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), E>> {
        // Both the client and the inner service are driven to readiness with `oneshot`.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let peer = self.route.route(&req);
        let inner = self.inner.clone();
        let client = self.client.clone();
        let on_event = self.on_event.clone();
        let event = move |e: PeerEvent| {
            if let Some(f) = &on_event {
                f(e);
            }
        };
        Box::pin(async move {
            let Some(peer) = peer else {
                let local = inner.oneshot(req).await?;
                return Ok(Routed {
                    stream: local.boxed(),
                    from_peer: false,
                });
            };
            // The first byte decides: before it, any peer failure is a quiet fallback.
            let first = async {
                let mut s = client.oneshot((peer.clone(), req.clone())).await?;
                match s.next().await {
                    Some(Ok(b)) => Ok((b, s)),
                    Some(Err(e)) => Err(e),
                    None => Err(Truncated {
                        got: 0,
                        expected: req.expected_len().unwrap_or(0),
                    }
                    .into()),
                }
            };
            match first.await {
                Ok((b, rest)) if !b.is_empty() || req.expected_len() == Some(0) => {
                    event(PeerEvent::Served);
                    Ok(Routed {
                        stream: spliced(b, rest, peer, req, inner, event),
                        from_peer: true,
                    })
                }
                Ok(_) => {
                    event(PeerEvent::Fallback);
                    tracing::warn!(%peer, "peer answered with an empty first piece; serving locally");
                    let local = inner.oneshot(req).await?;
                    Ok(Routed {
                        stream: local.boxed(),
                        from_peer: false,
                    })
                }
                Err(e) => {
                    event(PeerEvent::Fallback);
                    tracing::warn!(%peer, error = %e, "peer did not serve; serving locally");
                    let local = inner.oneshot(req).await?;
                    Ok(Routed {
                        stream: local.boxed(),
                        from_peer: false,
                    })
                }
            }
        })
    }
}

/// The peer's stream, continued by `inner` from the byte reached if it breaks or ends early.
fn spliced<S, Req, B, PB, E, P>(
    first: Bytes,
    rest: PB,
    peer: P,
    req: Req,
    inner: S,
    event: impl Fn(PeerEvent) + Send + 'static,
) -> BoxStream<'static, Result<Bytes, E>>
where
    Req: Resumable + Send + 'static,
    S: Service<Req, Response = B, Error = E> + Send + 'static,
    S::Future: Send,
    B: Stream<Item = Result<Bytes, E>> + Send + Unpin + 'static,
    PB: Stream<Item = Result<Bytes, E>> + Send + Unpin + 'static,
    E: From<Truncated> + std::fmt::Display + Send + 'static,
    P: std::fmt::Display + Send + 'static,
{
    enum Src<PB, B> {
        Peer(PB),
        Local(B),
    }
    struct St<S, Req, PB, B, P, F> {
        src: Src<PB, B>,
        inner: Option<S>,
        req: Req,
        delivered: u64,
        peer: P,
        done: bool,
        event: F,
    }
    let st = St {
        src: Src::<PB, B>::Peer(rest),
        inner: Some(inner),
        delivered: first.len() as u64,
        req,
        peer,
        done: false,
        event,
    };
    let rest = futures_util::stream::unfold(st, |mut st| async move {
        loop {
            if st.done {
                return None;
            }
            let item = match &mut st.src {
                Src::Peer(s) => s.next().await,
                Src::Local(s) => {
                    let x = s.next().await;
                    if x.as_ref().is_none_or(|r| r.is_err()) {
                        st.done = true;
                    }
                    return x.map(|x| (x, st));
                }
            };
            let why = match item {
                Some(Ok(b)) => {
                    st.delivered += b.len() as u64;
                    return Some((Ok(b), st));
                }
                Some(Err(e)) => e.to_string(),
                None => match st.req.expected_len() {
                    Some(n) if st.delivered < n => {
                        format!("ended after {} of {n} bytes", st.delivered)
                    }
                    _ => return None,
                },
            };
            let inner = st.inner.take()?;
            tracing::warn!(peer = %st.peer, %why, at = st.delivered, "peer stream broke; continuing locally");
            (st.event)(PeerEvent::Resumed);
            match inner.oneshot(st.req.resume_from(st.delivered)).await {
                Ok(local) => st.src = Src::Local(local),
                Err(e) => {
                    st.done = true;
                    return Some((Err(e), st));
                }
            }
        }
    });
    futures_util::stream::iter([Ok(first)]).chain(rest).boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tower::service_fn;

    #[derive(Debug, Clone, PartialEq)]
    struct E(String);
    impl From<Truncated> for E {
        fn from(t: Truncated) -> Self {
            E(t.to_string())
        }
    }
    impl std::fmt::Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }

    const DATA: &[u8] = b"0123456789abcdefghij";

    #[derive(Clone, Debug)]
    struct R {
        off: usize,
    }
    impl Resumable for R {
        fn expected_len(&self) -> Option<u64> {
            Some((DATA.len() - self.off) as u64)
        }
        fn resume_from(&self, d: u64) -> Self {
            R {
                off: self.off + d as usize,
            }
        }
    }

    type Body = BoxStream<'static, Result<Bytes, E>>;

    fn local(
        calls: Arc<AtomicUsize>,
    ) -> impl Service<R, Response = Body, Error = E, Future = impl Send> + Clone + Send {
        service_fn(move |r: R| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move {
                let b: Body =
                    stream::iter(vec![Ok(Bytes::copy_from_slice(&DATA[r.off..]))]).boxed();
                Ok(b)
            }
        })
    }

    async fn all(mut s: Routed<E>) -> Result<Vec<u8>, E> {
        let mut v = Vec::new();
        while let Some(b) = s.next().await {
            v.extend_from_slice(&b?);
        }
        Ok(v)
    }

    #[tokio::test]
    async fn a_healthy_peer_serves_and_local_is_not_asked() {
        let calls = Arc::new(AtomicUsize::new(0));
        let peer = service_fn(|(_p, r): (String, R)| async move {
            let b: Body = stream::iter(vec![
                Ok(Bytes::copy_from_slice(&DATA[r.off..10])),
                Ok(Bytes::copy_from_slice(&DATA[10..])),
            ])
            .boxed();
            Ok::<_, E>(b)
        });
        let svc =
            PeerRoutingLayer::new(|_r: &R| Some("p".to_string()), peer).layer(local(calls.clone()));
        let out = svc.oneshot(R { off: 0 }).await.unwrap();
        assert!(out.from_peer());
        assert_eq!(all(out).await.unwrap(), DATA);
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_failing_peer_falls_through_before_the_first_byte() {
        let calls = Arc::new(AtomicUsize::new(0));
        let peer = service_fn(|(_p, _r): (String, R)| async { Err::<Body, E>(E("409".into())) });
        let svc =
            PeerRoutingLayer::new(|_r: &R| Some("p".to_string()), peer).layer(local(calls.clone()));
        let out = svc.oneshot(R { off: 3 }).await.unwrap();
        assert!(!out.from_peer());
        assert_eq!(all(out).await.unwrap(), &DATA[3..]);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_peer_stream_that_breaks_is_continued_locally_at_the_byte() {
        let calls = Arc::new(AtomicUsize::new(0));
        let peer = service_fn(|(_p, _r): (String, R)| async {
            let b: Body = stream::iter(vec![
                Ok(Bytes::copy_from_slice(&DATA[..7])),
                Err(E("reset".into())),
            ])
            .boxed();
            Ok::<_, E>(b)
        });
        let svc =
            PeerRoutingLayer::new(|_r: &R| Some("p".to_string()), peer).layer(local(calls.clone()));
        assert_eq!(
            all(svc.oneshot(R { off: 0 }).await.unwrap()).await.unwrap(),
            DATA
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        // A stream that just ends short is broken too.
        let short = service_fn(|(_p, _r): (String, R)| async {
            let b: Body = stream::iter(vec![Ok(Bytes::copy_from_slice(&DATA[..4]))]).boxed();
            Ok::<_, E>(b)
        });
        let svc = PeerRoutingLayer::new(|_r: &R| Some("p".to_string()), short)
            .layer(local(calls.clone()));
        assert_eq!(
            all(svc.oneshot(R { off: 0 }).await.unwrap()).await.unwrap(),
            DATA
        );
    }

    #[tokio::test]
    async fn no_route_means_local() {
        let calls = Arc::new(AtomicUsize::new(0));
        let peer = service_fn(|(_p, _r): (String, R)| async { Err::<Body, E>(E("unused".into())) });
        let svc = PeerRoutingLayer::new(|_r: &R| None::<String>, peer).layer(local(calls.clone()));
        assert_eq!(
            all(svc.oneshot(R { off: 0 }).await.unwrap()).await.unwrap(),
            DATA
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
