//! `SingleflightLayer`: one in-flight call per key, with streaming joiners.
//!
//! The first request for a key becomes the *leader*: its call to the inner service runs in a
//! detached task that appends every received piece to a shared buffer. Every request for the
//! same key while that runs — the leader's own client included — reads that buffer from the
//! start and then follows it as it grows. So a joiner sees its first byte as soon as the leader
//! does, not when the whole chunk has arrived (orca buffered the full chunk first).
//!
//! The task is detached on purpose: when the leader's client disconnects, the fill goes on and
//! the other readers (and the store) still get their bytes. Pieces are `Bytes`, so every reader
//! shares the same memory; nothing is copied per joiner.
//!
//! The key leaves the in-flight map when the inner stream ends. On failure it leaves *before*
//! the error is published, so a request arriving afterwards starts a fresh attempt instead of
//! being handed a stale transient error.

use super::KeyOf;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{Stream, StreamExt};
use std::collections::HashMap;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use tokio_util::task::TaskTracker;
use tower::{Layer, Service};

/// Applies [`Singleflight`] to a service.
///
/// ```
/// use bytes::Bytes;
/// use futures_util::{stream, StreamExt};
/// use shoal::layer::SingleflightLayer;
/// use tower::{service_fn, Layer, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let inner = service_fn(|name: String| async move {
///     Ok::<_, String>(stream::iter(vec![Ok(Bytes::from(name))]))
/// });
/// let svc = SingleflightLayer::new(|n: &String| n.clone()).layer(inner);
/// let body = svc.oneshot("hello".to_string()).await.unwrap();
/// let parts: Vec<_> = body.collect().await;
/// assert_eq!(parts.len(), 1);
/// # }
/// ```
pub struct SingleflightLayer<K, Req> {
    key_of: K,
    tasks: TaskTracker,
    _req: PhantomData<fn(Req)>,
}

impl<K: Clone, Req> Clone for SingleflightLayer<K, Req> {
    fn clone(&self) -> Self {
        SingleflightLayer {
            key_of: self.key_of.clone(),
            tasks: self.tasks.clone(),
            _req: PhantomData,
        }
    }
}

impl<K, Req> SingleflightLayer<K, Req> {
    /// Deduplicates by the key `key_of` extracts.
    pub fn new(key_of: K) -> Self {
        SingleflightLayer {
            key_of,
            tasks: TaskTracker::new(),
            _req: PhantomData,
        }
    }

    /// Uses `tasks` to own the leader tasks, so that shutdown can wait for running fills.
    pub fn with_tracker(mut self, tasks: TaskTracker) -> Self {
        self.tasks = tasks;
        self
    }
}

impl<S, K, Req> Layer<S> for SingleflightLayer<K, Req>
where
    S: Service<Req>,
    K: KeyOf<Req> + Clone,
{
    type Service = Singleflight<S, K, Req>;
    fn layer(&self, inner: S) -> Self::Service {
        Singleflight {
            inner,
            key_of: self.key_of.clone(),
            tasks: self.tasks.clone(),
            flights: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}

type Flights<Q, E> = Arc<Mutex<HashMap<Q, Arc<Flight<E>>>>>;

/// Deduplicates concurrent calls by key and shares one streamed answer. See the module docs.
pub struct Singleflight<S, K, Req>
where
    S: Service<Req>,
    K: KeyOf<Req>,
{
    inner: S,
    key_of: K,
    tasks: TaskTracker,
    flights: Flights<K::Key, S::Error>,
}

impl<S, K, Req> Clone for Singleflight<S, K, Req>
where
    S: Service<Req> + Clone,
    K: KeyOf<Req> + Clone,
{
    fn clone(&self) -> Self {
        Singleflight {
            inner: self.inner.clone(),
            key_of: self.key_of.clone(),
            tasks: self.tasks.clone(),
            flights: self.flights.clone(),
        }
    }
}

impl<S, K, Req> Singleflight<S, K, Req>
where
    S: Service<Req>,
    K: KeyOf<Req>,
{
    /// Number of keys with a call in flight (for tests and metrics).
    pub fn in_flight(&self) -> usize {
        self.flights.lock().map_or(0, |m| m.len())
    }
}

struct FlightState<E> {
    parts: Vec<Bytes>,
    end: Option<Result<(), E>>,
    /// The leader went away without an end (it panicked, or its task was cancelled at
    /// shutdown). Readers then see the stream stop early, which length checks downstream turn
    /// into an error: never a hang, never a stream that looks complete.
    abandoned: bool,
    wakers: Vec<Waker>,
}

/// One shared call: the pieces received so far and how it ended.
struct Flight<E> {
    state: Mutex<FlightState<E>>,
}

impl<E> Flight<E> {
    fn new() -> Self {
        Flight {
            state: Mutex::new(FlightState {
                parts: Vec::new(),
                end: None,
                abandoned: false,
                wakers: Vec::new(),
            }),
        }
    }

    fn update(&self, f: impl FnOnce(&mut FlightState<E>)) {
        let wakers = {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut st);
            std::mem::take(&mut st.wakers)
        };
        for w in wakers {
            w.wake();
        }
    }
}

impl<S, K, Req> Service<Req> for Singleflight<S, K, Req>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Response: Stream<Item = Result<Bytes, S::Error>> + Send + Unpin + 'static,
    S::Error: Clone + Send + 'static,
    K: KeyOf<Req>,
    Req: Send + 'static,
{
    type Response = Joined<S::Error>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let key = self.key_of.key_of(&req);
        let flight = {
            // Nothing panics while the lock is held, so a poisoned map is still consistent.
            let mut map = self.flights.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(f) = map.get(&key) {
                let joined = Joined::new(f.clone());
                return Box::pin(async move { Ok(joined) });
            }
            let flight = Arc::new(Flight::new());
            map.insert(key.clone(), flight.clone());
            flight
        };
        // Take the service that was driven to readiness; leave a fresh clone behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let fut = inner.call(req);
        let leader = Leader {
            flight: flight.clone(),
            entry: Some((self.flights.clone(), key)),
        };
        // The detached leader stays in the span of the request that started it.
        let task = async move {
            match fut.await {
                Ok(body) => drive(body, leader).await,
                Err(e) => leader.finish(Err(e)),
            }
        };
        self.tasks.spawn(tracing::Instrument::in_current_span(task));
        Box::pin(async move { Ok(Joined::new(flight)) })
    }
}

/// The leader's hold on its flight and its map entry; finishing (or dropping) releases both.
struct Leader<Q: std::hash::Hash + Eq, E> {
    flight: Arc<Flight<E>>,
    entry: Option<(Flights<Q, E>, Q)>,
}

impl<Q: std::hash::Hash + Eq, E> Leader<Q, E> {
    fn forget(&mut self) {
        if let Some((flights, key)) = self.entry.take() {
            let mut map = flights.lock().unwrap_or_else(|p| p.into_inner());
            if map.get(&key).is_some_and(|f| Arc::ptr_eq(f, &self.flight)) {
                map.remove(&key);
            }
        }
    }

    fn finish(mut self, end: Result<(), E>) {
        if end.is_err() {
            // Leave the map first: nobody may join a flight that is known to have failed.
            self.forget();
            self.flight.update(|st| st.end = Some(end));
        } else {
            self.flight.update(|st| st.end = Some(end));
            self.forget();
        }
    }
}

impl<Q: std::hash::Hash + Eq, E> Drop for Leader<Q, E> {
    fn drop(&mut self) {
        if self.entry.is_some() {
            self.forget();
            self.flight.update(|st| st.abandoned = true);
        }
    }
}

async fn drive<B, E, Q>(mut body: B, leader: Leader<Q, E>)
where
    B: Stream<Item = Result<Bytes, E>> + Unpin,
    Q: std::hash::Hash + Eq,
{
    let end = loop {
        match body.next().await {
            Some(Ok(b)) => leader.flight.update(|st| st.parts.push(b)),
            Some(Err(e)) => break Err(e),
            None => break Ok(()),
        }
    };
    leader.finish(end);
}

/// A reader of a shared flight: every piece from the first, then the end.
pub struct Joined<E> {
    flight: Arc<Flight<E>>,
    next: usize,
    done: bool,
}

impl<E> Joined<E> {
    fn new(flight: Arc<Flight<E>>) -> Self {
        Joined {
            flight,
            next: 0,
            done: false,
        }
    }
}

impl<E: Clone> Stream for Joined<E> {
    type Item = Result<Bytes, E>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        let this = &mut *self;
        let mut st = this.flight.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = st.parts.get(this.next) {
            this.next += 1;
            return Poll::Ready(Some(Ok(b.clone())));
        }
        match &st.end {
            Some(Ok(())) => {
                this.done = true;
                Poll::Ready(None)
            }
            Some(Err(e)) => {
                this.done = true;
                Poll::Ready(Some(Err(e.clone())))
            }
            None if st.abandoned => {
                this.done = true;
                Poll::Ready(None)
            }
            None => {
                if !st.wakers.iter().any(|w| w.will_wake(cx.waker())) {
                    st.wakers.push(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;
    use tokio::sync::mpsc;
    use tower::{service_fn, ServiceExt};

    type Body = Pin<Box<dyn Stream<Item = Result<Bytes, String>> + Send>>;

    #[tokio::test]
    async fn concurrent_calls_share_one_inner_call_and_stream_while_filling() {
        let calls = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
        let rx = Arc::new(Mutex::new(Some(rx)));
        let c = calls.clone();
        let inner = service_fn(move |_k: u32| {
            c.fetch_add(1, Ordering::SeqCst);
            let rx = rx.lock().unwrap().take().unwrap();
            async move {
                let s: Body = Box::pin(tokio_stream_from(rx).map(Ok::<Bytes, String>));
                Ok::<_, String>(s)
            }
        });
        let svc = SingleflightLayer::new(|k: &u32| *k).layer(inner);
        let mut a = svc.clone().oneshot(7).await.unwrap();
        let mut b = svc.clone().oneshot(7).await.unwrap();
        tx.send(Bytes::from_static(b"one")).unwrap();
        // Both readers see the first piece before the fill is complete.
        assert_eq!(a.next().await.unwrap().unwrap(), "one");
        assert_eq!(b.next().await.unwrap().unwrap(), "one");
        // A late joiner starts from the beginning.
        let mut c2 = svc.clone().oneshot(7).await.unwrap();
        tx.send(Bytes::from_static(b"two")).unwrap();
        drop(tx);
        assert_eq!(c2.next().await.unwrap().unwrap(), "one");
        assert_eq!(c2.next().await.unwrap().unwrap(), "two");
        assert!(c2.next().await.is_none());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn leader_keeps_running_when_its_client_goes_away() {
        let finished = Arc::new(AtomicUsize::new(0));
        let f = finished.clone();
        let inner = service_fn(move |_k: u32| {
            let f = f.clone();
            async move {
                let s: Body = Box::pin(stream::unfold(0, move |i| {
                    let f = f.clone();
                    async move {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        if i == 3 {
                            f.fetch_add(1, Ordering::SeqCst);
                            None
                        } else {
                            Some((Ok(Bytes::from_static(b"x")), i + 1))
                        }
                    }
                }));
                Ok::<_, String>(s)
            }
        });
        let layer = SingleflightLayer::new(|k: &u32| *k);
        let tracker = layer.tasks.clone();
        let svc = layer.layer(inner);
        let body = svc.clone().oneshot(1).await.unwrap();
        drop(body);
        tracker.close();
        tracker.wait().await;
        assert_eq!(finished.load(Ordering::SeqCst), 1);
        assert_eq!(svc.in_flight(), 0);
    }

    #[tokio::test]
    async fn failure_reaches_every_reader_and_is_not_replayed() {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let inner = service_fn(move |_k: u32| {
            let n = c.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    Err("boom".to_string())
                } else {
                    let s: Body = Box::pin(stream::iter(vec![Ok(Bytes::from_static(b"ok"))]));
                    Ok(s)
                }
            }
        });
        let svc = SingleflightLayer::new(|k: &u32| *k).layer(inner);
        let mut a = svc.clone().oneshot(1).await.unwrap();
        assert_eq!(a.next().await.unwrap().unwrap_err(), "boom");
        assert!(a.next().await.is_none());
        let mut b = svc.clone().oneshot(1).await.unwrap();
        assert_eq!(b.next().await.unwrap().unwrap(), "ok");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_panicking_leader_ends_the_readers_instead_of_hanging_them() {
        let inner = service_fn(|_k: u32| async move {
            let s: Body = Box::pin(stream::unfold(0, |i| async move {
                if i == 1 {
                    panic!("leader bug");
                }
                Some((Ok(Bytes::from_static(b"x")), i + 1))
            }));
            Ok::<_, String>(s)
        });
        let svc = SingleflightLayer::new(|k: &u32| *k).layer(inner);
        let mut a = svc.clone().oneshot(1).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), async {
            let mut n = 0;
            while let Some(x) = a.next().await {
                x.unwrap();
                n += 1;
            }
            n
        })
        .await
        .expect("readers must not hang");
        assert_eq!(got, 1);
        assert_eq!(svc.in_flight(), 0, "the key was released");
    }

    fn tokio_stream_from(mut rx: mpsc::UnboundedReceiver<Bytes>) -> impl Stream<Item = Bytes> {
        stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}
