//! `SingleflightLayer`: one in-flight call per key, with streaming joiners.
//!
//! The first request for a key becomes the *leader*: its call to the inner service runs in a
//! detached task that appends every received piece to a shared buffer. Every request for the
//! same key while that runs — the leader's own client included — reads that buffer from the
//! start and then follows it as it grows. So a joiner sees its first byte as soon as the leader
//! does, not when the whole answer has arrived (orca buffered the full chunk first). Pieces are
//! `Bytes`: every reader shares the same memory; nothing is copied per joiner.
//!
//! **Memory.** While the call runs, its pieces are kept so that a late joiner can still read
//! from the start. When it ends, what happens to them depends on whether the answer is now
//! *durable* somewhere else (for Shoal: committed to the chunk store), as the layer's
//! [`Durability`] says:
//! - durable: every piece is dropped at once, and each reader that had not finished gets
//!   [`Released`] with its byte offset, meaning "continue from the durable copy". A slow or
//!   stalled reader therefore never pins a finished answer in memory;
//! - not durable: readers keep the pieces they still need, and each piece is dropped as soon
//!   as every reader is past it.
//!
//! **Detached, except speculation.** When the leader's client disconnects, the call goes on
//! and the other readers still get their bytes. The exception is *speculative* work
//! ([`Queued::priority`] not urgent, e.g. readahead): when its last reader goes away before any
//! urgent request joined, the call is cancelled, because nobody wants the bytes any more. An
//! urgent joiner promotes the flight (raises the leader's [`Priority`]), which also moves it
//! ahead in the queues below; a speculative joiner's priority is linked to the flight's, so
//! raising it later promotes the flight too.
//!
//! **Wake-ups** cost O(readers waiting) per published piece: each reader owns a slot for its
//! waker, so registering is O(1) however many readers there are.
//!
//! The key leaves the in-flight map when the inner stream ends. On failure it leaves *before*
//! the error is published, so a request arriving afterwards starts a fresh attempt instead of
//! being handed a stale transient error.

use super::gate::{Priority, Queued};
use super::KeyOf;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{Stream, StreamExt};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::{Layer, Service};

/// Ends a reader whose bytes were released because the answer became durable elsewhere:
/// continue reading from that copy at byte `at` (relative to the start of the answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("flight released; continue from the durable copy at byte {at}")]
pub struct Released {
    /// Bytes this reader had received.
    pub at: u64,
}

/// Says whether a finished inner answer is durable elsewhere, so its buffer can be released.
pub trait Durability<R> {
    /// Called once the inner stream has ended successfully.
    fn is_durable(&self, body: &R) -> bool;
}

/// The default: answers are never durable elsewhere; buffers live until readers pass them.
#[derive(Clone, Copy, Debug, Default)]
pub struct NotDurable;

impl<R> Durability<R> for NotDurable {
    fn is_durable(&self, _body: &R) -> bool {
        false
    }
}

impl<R, F: Fn(&R) -> bool> Durability<R> for F {
    fn is_durable(&self, body: &R) -> bool {
        self(body)
    }
}

/// Applies [`Singleflight`] to a service.
///
/// ```
/// use bytes::Bytes;
/// use futures_util::{stream, StreamExt};
/// use shoal::layer::{Queued, SingleflightLayer};
/// use tower::{service_fn, Layer, ServiceExt};
///
/// #[derive(Clone)]
/// struct Get(String);
/// impl Queued for Get {} // urgent, default wait
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let inner = service_fn(|r: Get| async move {
///     Ok::<_, String>(stream::iter(vec![Ok(Bytes::from(r.0))]))
/// });
/// let svc = SingleflightLayer::new(|r: &Get| r.0.clone()).layer(inner);
/// let body = svc.oneshot(Get("hello".into())).await.unwrap();
/// let parts: Vec<_> = body.collect().await;
/// assert_eq!(parts.len(), 1);
/// # }
/// ```
///
/// Errors must be able to say [`Released`] (`E: From<Released>`), which readers see only when
/// a [`Durability`] other than the default is configured.
pub struct SingleflightLayer<K, Req, D = NotDurable> {
    key_of: K,
    durable: D,
    tasks: TaskTracker,
    observe: Option<Observe<Req>>,
    _req: PhantomData<fn(Req)>,
}

/// A hook told of every call: the request, and whether it joined a call already in flight.
type Observe<Req> = Arc<dyn Fn(&Req, bool) + Send + Sync>;

impl<K: Clone, Req, D: Clone> Clone for SingleflightLayer<K, Req, D> {
    fn clone(&self) -> Self {
        SingleflightLayer {
            key_of: self.key_of.clone(),
            durable: self.durable.clone(),
            tasks: self.tasks.clone(),
            observe: self.observe.clone(),
            _req: PhantomData,
        }
    }
}

impl<K, Req> SingleflightLayer<K, Req, NotDurable> {
    /// Deduplicates by the key `key_of` extracts.
    pub fn new(key_of: K) -> Self {
        SingleflightLayer {
            key_of,
            durable: NotDurable,
            tasks: TaskTracker::new(),
            observe: None,
            _req: PhantomData,
        }
    }
}

impl<K, Req, D> SingleflightLayer<K, Req, D> {
    /// Calls `f` for every request with whether it joined a call already in flight (`true`) or
    /// started one (`false`) — for metrics.
    pub fn on_call(mut self, f: impl Fn(&Req, bool) + Send + Sync + 'static) -> Self {
        self.observe = Some(Arc::new(f));
        self
    }

    /// Uses `tasks` to own the leader tasks, so that shutdown can wait for running calls.
    pub fn with_tracker(mut self, tasks: TaskTracker) -> Self {
        self.tasks = tasks;
        self
    }

    /// Releases a finished flight's buffer when `durable` says the answer is kept elsewhere;
    /// readers then get [`Released`] and continue from that copy.
    pub fn durable_when<D2>(self, durable: D2) -> SingleflightLayer<K, Req, D2> {
        SingleflightLayer {
            key_of: self.key_of,
            durable,
            tasks: self.tasks,
            observe: self.observe,
            _req: PhantomData,
        }
    }
}

impl<S, K, Req, D> Layer<S> for SingleflightLayer<K, Req, D>
where
    S: Service<Req>,
    K: KeyOf<Req> + Clone,
    D: Clone,
{
    type Service = Singleflight<S, K, Req, D>;
    fn layer(&self, inner: S) -> Self::Service {
        Singleflight {
            inner,
            key_of: self.key_of.clone(),
            durable: self.durable.clone(),
            tasks: self.tasks.clone(),
            observe: self.observe.clone(),
            flights: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}

type Flights<Q, E> = Arc<Mutex<HashMap<Q, Arc<Flight<E>>>>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while these locks are held, so a poisoned value is still consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Deduplicates concurrent calls by key and shares one streamed answer. See the module docs.
pub struct Singleflight<S, K, Req, D = NotDurable>
where
    S: Service<Req>,
    K: KeyOf<Req>,
{
    inner: S,
    key_of: K,
    durable: D,
    tasks: TaskTracker,
    observe: Option<Observe<Req>>,
    flights: Flights<K::Key, S::Error>,
}

impl<S, K, Req, D> Clone for Singleflight<S, K, Req, D>
where
    S: Service<Req> + Clone,
    K: KeyOf<Req> + Clone,
    D: Clone,
{
    fn clone(&self) -> Self {
        Singleflight {
            inner: self.inner.clone(),
            key_of: self.key_of.clone(),
            durable: self.durable.clone(),
            tasks: self.tasks.clone(),
            observe: self.observe.clone(),
            flights: self.flights.clone(),
        }
    }
}

impl<S, K, Req, D> Singleflight<S, K, Req, D>
where
    S: Service<Req>,
    S::Error: Send + 'static,
    K: KeyOf<Req>,
{
    /// Number of keys with a call in flight (for tests and metrics).
    pub fn in_flight(&self) -> usize {
        lock(&self.flights).len()
    }

    /// A cheap, cloneable view that tells how many bytes a running call for a key has
    /// received (`None` when no call runs).
    pub fn progress(&self) -> Progress<K::Key> {
        let flights = self.flights.clone();
        Progress(Arc::new(move |k: &K::Key| {
            let f = lock(&flights).get(k).cloned()?;
            let st = lock(&f.state);
            st.end.is_none().then_some(st.published)
        }))
    }
}

type ProgressFn<Q> = dyn Fn(&Q) -> Option<u64> + Send + Sync;

/// How far a running call for a key has got; see [`Singleflight::progress`].
pub struct Progress<Q>(Arc<ProgressFn<Q>>);

impl<Q> Clone for Progress<Q> {
    fn clone(&self) -> Self {
        Progress(self.0.clone())
    }
}

impl<Q> Progress<Q> {
    /// Bytes received so far by the running call for `key`, if one runs.
    pub fn of(&self, key: &Q) -> Option<u64> {
        (self.0)(key)
    }
}

enum End<E> {
    Done { durable: bool },
    Failed(E),
}

struct Slot {
    /// Index of the next piece this reader reads.
    next: usize,
    /// Bytes read so far.
    offset: u64,
    waker: Option<Waker>,
    waiting: bool,
}

struct FlightState<E> {
    /// Pieces `base..` (earlier ones were released).
    pieces: VecDeque<Bytes>,
    base: usize,
    published: u64,
    end: Option<End<E>>,
    /// The leader went away without an end (it panicked, or its task was cancelled at
    /// shutdown). Readers then see the stream stop early, which length checks downstream turn
    /// into an error: never a hang, never a stream that looks complete.
    abandoned: bool,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    live: usize,
    /// Readers per next-piece index, to find the slowest reader in O(log n).
    cursors: BTreeMap<usize, usize>,
    /// Slots with a stored waker.
    waiting: Vec<usize>,
}

impl<E> FlightState<E> {
    fn total(&self) -> usize {
        self.base + self.pieces.len()
    }

    fn move_cursor(&mut self, from: Option<usize>, to: Option<usize>) {
        if let Some(f) = from {
            if let Some(n) = self.cursors.get_mut(&f) {
                *n -= 1;
                if *n == 0 {
                    self.cursors.remove(&f);
                }
            }
        }
        if let Some(t) = to {
            *self.cursors.entry(t).or_insert(0) += 1;
        }
    }

    /// After a non-durable end: drops the pieces every reader is past.
    fn trim(&mut self) {
        if !matches!(self.end, Some(End::Done { durable: false })) {
            return;
        }
        let keep_from = self.cursors.keys().next().copied().unwrap_or(self.total());
        while self.base < keep_from && !self.pieces.is_empty() {
            self.pieces.pop_front();
            self.base += 1;
        }
    }

    fn take_wakers(&mut self) -> Vec<Waker> {
        let mut out = Vec::with_capacity(self.waiting.len());
        for id in self.waiting.drain(..) {
            if let Some(Some(s)) = self.slots.get_mut(id) {
                s.waiting = false;
                if let Some(w) = s.waker.take() {
                    out.push(w);
                }
            }
        }
        out
    }
}

/// One shared call: the pieces received so far and how it ended.
struct Flight<E> {
    state: Mutex<FlightState<E>>,
    /// The leader's priority; `None` = urgent (never cancelled).
    priority: Option<Priority>,
    cancel: CancellationToken,
    /// Removes this flight from the map if it is still there and nobody reads it; returns
    /// whether it did (then the call is cancelled).
    unlink: Box<UnlinkFn<E>>,
}

type UnlinkFn<E> = dyn Fn(&Arc<Flight<E>>) -> bool + Send + Sync;

impl<E> Flight<E> {
    fn urgent(&self) -> bool {
        self.priority.as_ref().is_none_or(Priority::is_urgent)
    }

    fn update(&self, f: impl FnOnce(&mut FlightState<E>)) {
        let wakers = {
            let mut st = lock(&self.state);
            f(&mut st);
            st.take_wakers()
        };
        for w in wakers {
            w.wake();
        }
    }

    /// Whether a speculative call has lost its last reader and may be cancelled.
    fn unwanted(&self) -> bool {
        let st = lock(&self.state);
        st.live == 0 && st.end.is_none() && !self.urgent()
    }
}

impl<S, K, Req, D> Service<Req> for Singleflight<S, K, Req, D>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Response: Stream<Item = Result<Bytes, S::Error>> + Send + Unpin + 'static,
    S::Error: Clone + From<Released> + Send + 'static,
    K: KeyOf<Req>,
    D: Durability<S::Response> + Clone + Send + 'static,
    Req: Queued + Send + 'static,
{
    type Response = Joined<S::Error>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let key = self.key_of.key_of(&req);
        let urgent = req.priority().is_none_or(Priority::is_urgent);
        let (flight, joined) = {
            let mut map = lock(&self.flights);
            if let Some(f) = map.get(&key) {
                // Registered under the map lock, so a speculative flight cannot be cancelled
                // between this lookup and the new reader.
                let joined = Joined::new(f.clone());
                match (&f.priority, req.priority()) {
                    (Some(fp), _) if urgent => fp.raise(),
                    (Some(fp), Some(mine)) => mine.link(fp),
                    _ => {}
                }
                if let Some(o) = &self.observe {
                    o(&req, true);
                }
                return Box::pin(async move { Ok(joined) });
            }
            let flights = self.flights.clone();
            let k2 = key.clone();
            let flight = Arc::new(Flight {
                state: Mutex::new(FlightState {
                    pieces: VecDeque::new(),
                    base: 0,
                    published: 0,
                    end: None,
                    abandoned: false,
                    slots: Vec::new(),
                    free: Vec::new(),
                    live: 0,
                    cursors: BTreeMap::new(),
                    waiting: Vec::new(),
                }),
                priority: req.priority().cloned(),
                cancel: CancellationToken::new(),
                unlink: Box::new(move |me: &Arc<Flight<S::Error>>| {
                    let mut map = lock(&flights);
                    if map.get(&k2).is_some_and(|f| Arc::ptr_eq(f, me)) && me.unwanted() {
                        map.remove(&k2);
                        return true;
                    }
                    false
                }),
            });
            map.insert(key.clone(), flight.clone());
            let joined = Joined::new(flight.clone());
            (flight, joined)
        };
        if let Some(o) = &self.observe {
            o(&req, false);
        }
        // Take the service that was driven to readiness; leave a fresh clone behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let fut = inner.call(req);
        let leader = Leader {
            flight: flight.clone(),
            entry: Some((self.flights.clone(), key)),
        };
        let durable = self.durable.clone();
        let cancel = flight.cancel.clone();
        // The detached leader stays in the span of the request that started it.
        let task = async move {
            let work = async move {
                match fut.await {
                    Ok(body) => drive(body, leader, durable).await,
                    Err(e) => leader.finish(Err(e)),
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => {
                    tracing::debug!("speculative call cancelled: no reader wants it");
                }
                _ = work => {}
            }
        };
        self.tasks.spawn(tracing::Instrument::in_current_span(task));
        Box::pin(async move { Ok(joined) })
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
            let mut map = lock(&flights);
            if map.get(&key).is_some_and(|f| Arc::ptr_eq(f, &self.flight)) {
                map.remove(&key);
            }
        }
    }

    fn finish(mut self, end: Result<bool, E>) {
        match end {
            Err(e) => {
                // Leave the map first: nobody may join a flight that is known to have failed.
                self.forget();
                self.flight.update(|st| st.end = Some(End::Failed(e)));
            }
            Ok(durable) => {
                self.flight.update(|st| {
                    st.end = Some(End::Done { durable });
                    if durable {
                        // Everyone continues from the durable copy.
                        st.base = st.total();
                        st.pieces.clear();
                    } else {
                        st.trim();
                    }
                });
                self.forget();
            }
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

async fn drive<B, E, Q, D>(mut body: B, leader: Leader<Q, E>, durable: D)
where
    B: Stream<Item = Result<Bytes, E>> + Unpin,
    Q: std::hash::Hash + Eq,
    D: Durability<B>,
{
    let end = loop {
        match body.next().await {
            Some(Ok(b)) if b.is_empty() => {}
            Some(Ok(b)) => leader.flight.update(|st| {
                st.published += b.len() as u64;
                st.pieces.push_back(b);
            }),
            Some(Err(e)) => break Err(e),
            None => break Ok(durable.is_durable(&body)),
        }
    };
    leader.finish(end);
}

/// A reader of a shared flight: every piece from the first, then the end.
pub struct Joined<E> {
    flight: Arc<Flight<E>>,
    id: usize,
    done: bool,
}

impl<E> Joined<E> {
    fn new(flight: Arc<Flight<E>>) -> Self {
        let id = {
            let mut st = lock(&flight.state);
            let slot = Slot {
                next: 0,
                offset: 0,
                waker: None,
                waiting: false,
            };
            let id = match st.free.pop() {
                Some(id) => {
                    st.slots[id] = Some(slot);
                    id
                }
                None => {
                    st.slots.push(Some(slot));
                    st.slots.len() - 1
                }
            };
            st.live += 1;
            st.move_cursor(None, Some(0));
            id
        };
        Joined {
            flight,
            id,
            done: false,
        }
    }
}

impl<E: Clone + From<Released>> Stream for Joined<E> {
    type Item = Result<Bytes, E>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        let this = &mut *self;
        let mut st = lock(&this.flight.state);
        let st = &mut *st;
        let Some(Some(slot)) = st.slots.get_mut(this.id) else {
            this.done = true;
            return Poll::Ready(None);
        };
        let (next, offset) = (slot.next, slot.offset);
        if next < st.base {
            // Released after a durable end (or trimmed after a race with the end).
            this.done = true;
            return Poll::Ready(Some(Err(Released { at: offset }.into())));
        }
        if let Some(b) = st.pieces.get(next - st.base).cloned() {
            slot.next += 1;
            slot.offset += b.len() as u64;
            st.move_cursor(Some(next), Some(next + 1));
            st.trim();
            return Poll::Ready(Some(Ok(b)));
        }
        match &st.end {
            Some(End::Done { .. }) => {
                this.done = true;
                Poll::Ready(None)
            }
            Some(End::Failed(e)) => {
                this.done = true;
                Poll::Ready(Some(Err(e.clone())))
            }
            None if st.abandoned => {
                this.done = true;
                Poll::Ready(None)
            }
            None => {
                let w = cx.waker();
                if !slot.waker.as_ref().is_some_and(|x| x.will_wake(w)) {
                    slot.waker = Some(w.clone());
                }
                if !slot.waiting {
                    slot.waiting = true;
                    st.waiting.push(this.id);
                }
                Poll::Pending
            }
        }
    }
}

impl<E> Drop for Joined<E> {
    fn drop(&mut self) {
        let maybe_unwanted = {
            let mut st = lock(&self.flight.state);
            if let Some(slot) = st.slots.get_mut(self.id).and_then(Option::take) {
                st.free.push(self.id);
                st.live -= 1;
                st.move_cursor(Some(slot.next), None);
                st.trim();
            }
            st.live == 0 && st.end.is_none()
        };
        if maybe_unwanted && !self.flight.urgent() && (self.flight.unlink)(&self.flight) {
            self.flight.cancel.cancel();
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

    #[derive(Debug, Clone, PartialEq)]
    enum E {
        Boom,
        Released(u64),
    }
    impl From<Released> for E {
        fn from(r: Released) -> Self {
            E::Released(r.at)
        }
    }

    #[derive(Clone)]
    struct R(u32, Option<Priority>);
    impl Queued for R {
        fn priority(&self) -> Option<&Priority> {
            self.1.as_ref()
        }
    }
    fn r(k: u32) -> R {
        R(k, None)
    }

    type Body = Pin<Box<dyn Stream<Item = Result<Bytes, E>> + Send>>;

    fn channel_service() -> (
        mpsc::UnboundedSender<Bytes>,
        Arc<AtomicUsize>,
        impl Service<R, Response = Body, Error = E, Future = impl Send> + Clone + Send + 'static,
    ) {
        let calls = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
        let rx = Arc::new(Mutex::new(Some(rx)));
        let c = calls.clone();
        let inner = service_fn(move |_k: R| {
            c.fetch_add(1, Ordering::SeqCst);
            let rx = rx.lock().unwrap().take().unwrap();
            async move {
                let s: Body = Box::pin(from_rx(rx).map(Ok::<Bytes, E>));
                Ok::<_, E>(s)
            }
        });
        (tx, calls, inner)
    }

    #[tokio::test]
    async fn concurrent_calls_share_one_inner_call_and_stream_while_filling() {
        let (tx, calls, inner) = channel_service();
        let svc = SingleflightLayer::new(|k: &R| k.0).layer(inner);
        let mut a = svc.clone().oneshot(r(7)).await.unwrap();
        let mut b = svc.clone().oneshot(r(7)).await.unwrap();
        tx.send(Bytes::from_static(b"one")).unwrap();
        // Both readers see the first piece before the call is complete.
        assert_eq!(a.next().await.unwrap().unwrap(), "one");
        assert_eq!(b.next().await.unwrap().unwrap(), "one");
        // A late joiner starts from the beginning.
        let mut c2 = svc.clone().oneshot(r(7)).await.unwrap();
        tx.send(Bytes::from_static(b"two")).unwrap();
        drop(tx);
        assert_eq!(c2.next().await.unwrap().unwrap(), "one");
        assert_eq!(c2.next().await.unwrap().unwrap(), "two");
        assert!(c2.next().await.is_none());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_durable_end_releases_every_unfinished_reader_at_its_offset() {
        let (tx, _calls, inner) = channel_service();
        let svc = SingleflightLayer::new(|k: &R| k.0)
            .durable_when(|_b: &Body| true)
            .layer(inner);
        let mut fast = svc.clone().oneshot(r(1)).await.unwrap();
        let mut slow = svc.clone().oneshot(r(1)).await.unwrap();
        let never = svc.clone().oneshot(r(1)).await.unwrap();
        tx.send(Bytes::from_static(b"abc")).unwrap();
        tx.send(Bytes::from_static(b"de")).unwrap();
        assert_eq!(slow.next().await.unwrap().unwrap(), "abc");
        assert_eq!(fast.next().await.unwrap().unwrap(), "abc");
        assert_eq!(fast.next().await.unwrap().unwrap(), "de");
        drop(tx);
        while svc.in_flight() > 0 {
            tokio::task::yield_now().await;
        }
        assert!(fast.next().await.is_none(), "a finished reader just ends");
        assert_eq!(slow.next().await.unwrap().unwrap_err(), E::Released(3));
        let mut never = never;
        assert_eq!(never.next().await.unwrap().unwrap_err(), E::Released(0));
    }

    #[tokio::test]
    async fn without_durability_pieces_go_once_every_reader_is_past() {
        let (tx, _calls, inner) = channel_service();
        let svc = SingleflightLayer::new(|k: &R| k.0).layer(inner);
        let mut a = svc.clone().oneshot(r(1)).await.unwrap();
        let mut b = svc.clone().oneshot(r(1)).await.unwrap();
        for p in ["1", "2", "3"] {
            tx.send(Bytes::from(p)).unwrap();
        }
        drop(tx);
        while svc.in_flight() > 0 {
            tokio::task::yield_now().await;
        }
        let pieces = |j: &Joined<E>| lock(&j.flight.state).pieces.len();
        assert_eq!(pieces(&a), 3);
        a.next().await.unwrap().unwrap();
        a.next().await.unwrap().unwrap();
        assert_eq!(pieces(&a), 3, "b still needs them");
        assert_eq!(b.next().await.unwrap().unwrap(), "1");
        assert_eq!(pieces(&a), 2);
        drop(b);
        assert_eq!(pieces(&a), 1);
        assert_eq!(a.next().await.unwrap().unwrap(), "3");
        assert_eq!(pieces(&a), 0);
        assert!(a.next().await.is_none());
    }

    #[tokio::test]
    async fn a_speculative_call_nobody_reads_is_cancelled_and_an_urgent_one_is_not() {
        let (tx, _calls, inner) = channel_service();
        let svc = SingleflightLayer::new(|k: &R| k.0).layer(inner);
        let spec = svc
            .clone()
            .oneshot(R(1, Some(Priority::speculative())))
            .await
            .unwrap();
        tokio::task::yield_now().await;
        assert_eq!(svc.in_flight(), 1);
        drop(spec);
        assert_eq!(svc.in_flight(), 0, "unwanted speculation leaves at once");
        // The cancelled call dropped its body, and with it the channel's receiver.
        for _ in 0..100 {
            if tx.is_closed() {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(tx.is_closed(), "the inner call was cancelled");

        let (_tx, _calls, inner) = channel_service();
        let svc = SingleflightLayer::new(|k: &R| k.0).layer(inner);
        let p = Priority::speculative();
        let spec = svc.clone().oneshot(R(2, Some(p.clone()))).await.unwrap();
        // An urgent joiner promotes the flight; it then survives all of its readers.
        let urgent = svc.clone().oneshot(r(2)).await.unwrap();
        assert!(p.is_urgent(), "the leader's priority was raised");
        drop(spec);
        drop(urgent);
        assert_eq!(svc.in_flight(), 1);
    }

    #[tokio::test]
    async fn a_raised_speculative_joiner_promotes_the_flight() {
        let (_tx, _calls, inner) = channel_service();
        let svc = SingleflightLayer::new(|k: &R| k.0).layer(inner);
        let leader = Priority::speculative();
        let _a = svc
            .clone()
            .oneshot(R(3, Some(leader.clone())))
            .await
            .unwrap();
        let mine = Priority::speculative();
        let _b = svc.clone().oneshot(R(3, Some(mine.clone()))).await.unwrap();
        assert!(!leader.is_urgent());
        mine.raise();
        assert!(leader.is_urgent());
    }

    #[tokio::test]
    async fn leader_keeps_running_when_its_client_goes_away() {
        let finished = Arc::new(AtomicUsize::new(0));
        let f = finished.clone();
        let inner = service_fn(move |_k: R| {
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
                Ok::<_, E>(s)
            }
        });
        let layer = SingleflightLayer::new(|k: &R| k.0);
        let tracker = layer.tasks.clone();
        let svc = layer.layer(inner);
        let body = svc.clone().oneshot(r(1)).await.unwrap();
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
        let inner = service_fn(move |_k: R| {
            let n = c.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    Err(E::Boom)
                } else {
                    let s: Body = Box::pin(stream::iter(vec![Ok(Bytes::from_static(b"ok"))]));
                    Ok(s)
                }
            }
        });
        let svc = SingleflightLayer::new(|k: &R| k.0).layer(inner);
        let mut a = svc.clone().oneshot(r(1)).await.unwrap();
        assert_eq!(a.next().await.unwrap().unwrap_err(), E::Boom);
        assert!(a.next().await.is_none());
        let mut b = svc.clone().oneshot(r(1)).await.unwrap();
        assert_eq!(b.next().await.unwrap().unwrap(), "ok");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_panicking_leader_ends_the_readers_instead_of_hanging_them() {
        let inner = service_fn(|_k: R| async move {
            let s: Body = Box::pin(stream::unfold(0, |i| async move {
                if i == 1 {
                    panic!("leader bug");
                }
                Some((Ok(Bytes::from_static(b"x")), i + 1))
            }));
            Ok::<_, E>(s)
        });
        let svc = SingleflightLayer::new(|k: &R| k.0).layer(inner);
        let mut a = svc.clone().oneshot(r(1)).await.unwrap();
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_thousand_joiners_all_get_every_piece() {
        let (tx, calls, inner) = channel_service();
        let svc = SingleflightLayer::new(|k: &R| k.0).layer(inner);
        let mut readers = Vec::new();
        for _ in 0..1000 {
            let mut j = svc.clone().oneshot(r(9)).await.unwrap();
            readers.push(tokio::spawn(async move {
                let mut n = 0u64;
                while let Some(b) = j.next().await {
                    n += b.unwrap().len() as u64;
                }
                n
            }));
        }
        for _ in 0..200 {
            tx.send(Bytes::from(vec![1u8; 1000])).unwrap();
            tokio::task::yield_now().await;
        }
        drop(tx);
        for r in readers {
            assert_eq!(r.await.unwrap(), 200_000);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    fn from_rx(mut rx: mpsc::UnboundedReceiver<Bytes>) -> impl Stream<Item = Bytes> {
        stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}
