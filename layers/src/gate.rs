//! `Gate`: a counted resource shared fairly between urgent and speculative work.
//!
//! Two things in Shoal are scarce and must be queued for: origin request slots and bytes of
//! memory outside the store (`fill.buffer_budget`). Both are a [`Gate`]: a number of units, a
//! FIFO queue of *urgent* waiters and a FIFO queue of *speculative* ones. The rules:
//!
//! - An urgent waiter is served before any speculative one, whenever it arrived. A client's
//!   first chunk therefore never waits behind another client's readahead.
//! - Speculative waiters are served by rank, then arrival: readahead one chunk ahead of its
//!   reader goes before readahead five chunks ahead of another's, so a fast reader's next chunk
//!   is not stuck behind a slow reader's distant ones.
//! - A speculative waiter is granted only while at least a quarter of the units stays free
//!   after the grant, so readahead can never take the last slots demand needs.
//! - A waiter can be promoted while it waits ([`Priority::raise`]): readahead that a reader
//!   reaches becomes urgent at once, keeping its place in arrival order.
//! - Within a class the order is strict FIFO: a large request at the head is not starved by
//!   small ones behind it.
//! - Every wait has a deadline (or none, for speculative work that is cancelled instead).
//!
//! Units come back when the [`GatePermit`] is dropped, or piece by piece with
//! [`GatePermit::release`] (the byte budget returns each piece's bytes when the piece is freed).

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// How urgent a queued request is; shared, so it can be raised while the request waits.
///
/// Cloning shares the cell. A request without a `Priority` is urgent.
#[derive(Clone)]
pub struct Priority(Arc<PriorityCell>);

struct PriorityCell {
    urgent: AtomicBool,
    /// Among speculative work, lower goes first (readahead distance).
    rank: u32,
    /// Wakers of gate waits that must re-check their class, and cells raised along with this
    /// one (a speculative joiner of a flight raises the flight's own cell).
    watchers: Mutex<(Vec<Waker>, Vec<Priority>)>,
}

impl std::fmt::Debug for Priority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.is_urgent() {
            "Priority::Urgent"
        } else {
            "Priority::Speculative"
        })
    }
}

impl Priority {
    fn new(urgent: bool, rank: u32) -> Self {
        Priority(Arc::new(PriorityCell {
            urgent: AtomicBool::new(urgent),
            rank,
            watchers: Mutex::new((Vec::new(), Vec::new())),
        }))
    }

    /// Work a client is waiting for now.
    pub fn urgent() -> Self {
        Self::new(true, 0)
    }

    /// Work done ahead of need (readahead); may be promoted with [`raise`](Self::raise).
    pub fn speculative() -> Self {
        Self::new(false, 0)
    }

    /// Speculative work of a given rank: lower ranks are served first (for readahead, how
    /// many chunks ahead of its reader it is).
    pub fn speculative_at(rank: u32) -> Self {
        Self::new(false, rank)
    }

    fn rank(&self) -> u32 {
        self.0.rank
    }

    /// Whether this is urgent now.
    pub fn is_urgent(&self) -> bool {
        self.0.urgent.load(Ordering::Acquire)
    }

    /// Makes this (and every cell linked to it) urgent and wakes its waits so they move to the
    /// urgent queue. Idempotent.
    pub fn raise(&self) {
        if self.0.urgent.swap(true, Ordering::AcqRel) {
            return;
        }
        let (wakers, linked) = {
            let mut w = super::lock(&self.0.watchers);
            (std::mem::take(&mut w.0), std::mem::take(&mut w.1))
        };
        for w in wakers {
            w.wake();
        }
        for p in linked {
            p.raise();
        }
    }

    /// Raising `self` will also raise `other` (raised at once if `self` already is urgent).
    pub fn link(&self, other: &Priority) {
        if Arc::ptr_eq(&self.0, &other.0) {
            return;
        }
        {
            let mut w = super::lock(&self.0.watchers);
            if !self.is_urgent() {
                w.1.push(other.clone());
                return;
            }
        }
        other.raise();
    }

    /// Whether two handles share one cell.
    pub fn same(&self, other: &Priority) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    fn watch(&self, waker: &Waker) {
        let mut w = super::lock(&self.0.watchers);
        if self.is_urgent() {
            drop(w);
            waker.wake_by_ref();
            return;
        }
        if !w.0.iter().any(|x| x.will_wake(waker)) {
            w.0.push(waker.clone());
        }
    }
}

/// How long a request may wait for units.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// The gate owner's default (e.g. `fill.queue_timeout`).
    Default,
    /// Until this instant.
    Until(Instant),
    /// No deadline: the request is cancelled by its owner instead (speculative work).
    Forever,
}

/// What a queued request tells the gates it passes through. Requests that do not care
/// implement it with the defaults: urgent, default wait.
pub trait Queued {
    /// The request's priority cell; `None` is urgent.
    fn priority(&self) -> Option<&Priority> {
        None
    }
    /// How long the request may wait for a slot.
    fn wait(&self) -> Wait {
        Wait::Default
    }
}

/// HTTP requests are urgent and wait the layer's default time.
impl<B> Queued for http::Request<B> {}

/// No units became free before the deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no capacity free within {0:?}")]
pub struct GateTimeout(pub Duration);

struct Waiter {
    units: u64,
    urgent: bool,
    rank: u32,
    waker: Option<Waker>,
    granted: bool,
}

struct State {
    total: u64,
    used: u64,
    next_seq: u64,
    urgent: BTreeSet<u64>,
    /// (rank, arrival).
    speculative: BTreeSet<(u32, u64)>,
    waiters: HashMap<u64, Waiter>,
}

impl State {
    fn spec_limit(&self) -> u64 {
        // Leave a quarter for urgent work; a gate of one unit still lets speculation run.
        (self.total - self.total / 4).max(1)
    }

    /// Grants waiters in order while they fit; returns the wakers to call outside the lock.
    fn grant(&mut self, woken: &mut Vec<Waker>) {
        loop {
            let (seq, urgent) = if let Some(&s) = self.urgent.first() {
                (s, true)
            } else if let Some(&(_, s)) = self.speculative.first() {
                (s, false)
            } else {
                return;
            };
            let limit = if urgent {
                self.total
            } else {
                self.spec_limit()
            };
            let Some(w) = self.waiters.get_mut(&seq) else {
                // Cannot happen (queues and waiters change together); heal by dropping it.
                self.urgent.remove(&seq);
                self.speculative.retain(|&(_, s)| s != seq);
                continue;
            };
            if self.used + w.units > limit {
                return;
            }
            self.used += w.units;
            w.granted = true;
            if let Some(k) = w.waker.take() {
                woken.push(k);
            }
            if urgent {
                self.urgent.remove(&seq);
            } else {
                let rank = w.rank;
                self.speculative.remove(&(rank, seq));
            }
        }
    }
}

/// A counted resource with an urgent and a speculative FIFO queue. See the module docs.
/// Clones share the units.
#[derive(Clone)]
pub struct Gate {
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.lock();
        f.debug_struct("Gate")
            .field("total", &st.total)
            .field("used", &st.used)
            .field("queued", &st.waiters.len())
            .finish()
    }
}

impl Gate {
    /// A gate of `total` units (at least 1).
    pub fn new(total: u64) -> Self {
        Gate {
            state: Arc::new(Mutex::new(State {
                total: total.max(1),
                used: 0,
                next_seq: 0,
                urgent: BTreeSet::new(),
                speculative: BTreeSet::new(),
                waiters: HashMap::new(),
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Nothing panics while the lock is held, so a poisoned state is still consistent.
        super::lock(&self.state)
    }

    /// All units.
    pub fn total(&self) -> u64 {
        self.lock().total
    }

    /// Units not handed out right now.
    pub fn available(&self) -> u64 {
        let st = self.lock();
        st.total - st.used
    }

    /// Requests waiting right now.
    pub fn queued(&self) -> usize {
        self.lock().waiters.len()
    }

    /// Takes `units` (clamped to the total, so an oversized request still runs alone) without
    /// waiting, if they are free and nobody of the same or a higher class is queued.
    pub fn try_acquire(&self, units: u64, priority: Option<&Priority>) -> Option<GatePermit> {
        let urgent = priority.is_none_or(Priority::is_urgent);
        let mut st = self.lock();
        let units = units.min(st.total);
        let limit = if urgent { st.total } else { st.spec_limit() };
        let clear = st.urgent.is_empty() && (urgent || st.speculative.is_empty());
        if clear && st.used + units <= limit {
            st.used += units;
            return Some(GatePermit {
                gate: self.clone(),
                units,
            });
        }
        None
    }

    /// Waits for `units`, as urgent or speculative work per `priority` (followed while it
    /// waits), until `deadline` (`None` = no deadline).
    pub fn acquire(
        &self,
        units: u64,
        priority: Option<Priority>,
        deadline: Option<Instant>,
    ) -> Acquire {
        Acquire {
            gate: self.clone(),
            units,
            priority,
            seq: None,
            sleep: deadline.map(|d| Box::pin(tokio::time::sleep_until(d))),
            started: Instant::now(),
        }
    }

    fn give_back(&self, units: u64) {
        if units == 0 {
            return;
        }
        let mut woken = Vec::new();
        {
            let mut st = self.lock();
            st.used = st.used.saturating_sub(units);
            st.grant(&mut woken);
        }
        for w in woken {
            w.wake();
        }
    }
}

/// Units held; returned on drop.
pub struct GatePermit {
    gate: Gate,
    units: u64,
}

impl std::fmt::Debug for GatePermit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatePermit")
            .field("units", &self.units)
            .finish()
    }
}

impl GatePermit {
    /// Units still held.
    pub fn units(&self) -> u64 {
        self.units
    }

    /// Returns up to `n` units now, keeping the rest.
    pub fn release(&mut self, n: u64) {
        let n = n.min(self.units);
        self.units -= n;
        self.gate.give_back(n);
    }
}

impl Drop for GatePermit {
    fn drop(&mut self) {
        self.gate.give_back(self.units);
    }
}

/// The wait of [`Gate::acquire`].
pub struct Acquire {
    gate: Gate,
    units: u64,
    priority: Option<Priority>,
    seq: Option<u64>,
    sleep: Option<Pin<Box<Sleep>>>,
    started: Instant,
}

impl Future for Acquire {
    type Output = Result<GatePermit, GateTimeout>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let urgent = this.priority.as_ref().is_none_or(Priority::is_urgent);
        let mut woken = Vec::new();
        let result = {
            let mut st = this.gate.lock();
            match this.seq {
                None => {
                    let units = this.units.min(st.total);
                    this.units = units;
                    let limit = if urgent { st.total } else { st.spec_limit() };
                    let clear = st.urgent.is_empty() && (urgent || st.speculative.is_empty());
                    if clear && st.used + units <= limit {
                        st.used += units;
                        Some(())
                    } else {
                        let seq = st.next_seq;
                        st.next_seq += 1;
                        let rank = this.priority.as_ref().map_or(0, Priority::rank);
                        st.waiters.insert(
                            seq,
                            Waiter {
                                units,
                                urgent,
                                rank,
                                waker: Some(cx.waker().clone()),
                                granted: false,
                            },
                        );
                        if urgent {
                            st.urgent.insert(seq);
                        } else {
                            st.speculative.insert((rank, seq));
                        }
                        this.seq = Some(seq);
                        None
                    }
                }
                Some(seq) => {
                    let mut rank = 0;
                    let promote = match st.waiters.get_mut(&seq) {
                        Some(w) if w.granted => {
                            st.waiters.remove(&seq);
                            this.seq = None;
                            return Poll::Ready(Ok(GatePermit {
                                gate: this.gate.clone(),
                                units: this.units,
                            }));
                        }
                        Some(w) => {
                            w.waker = Some(cx.waker().clone());
                            rank = w.rank;
                            let promote = urgent && !w.urgent;
                            if promote {
                                w.urgent = true;
                            }
                            promote
                        }
                        None => false,
                    };
                    if promote {
                        st.speculative.remove(&(rank, seq));
                        st.urgent.insert(seq);
                        st.grant(&mut woken);
                        if st.waiters.get(&seq).is_some_and(|w| w.granted) {
                            st.waiters.remove(&seq);
                            this.seq = None;
                            Some(())
                        } else {
                            None
                        }
                    } else {
                        None
                    }
                }
            }
        };
        for w in woken {
            w.wake();
        }
        if result.is_some() {
            return Poll::Ready(Ok(GatePermit {
                gate: this.gate.clone(),
                units: this.units,
            }));
        }
        if !urgent {
            if let Some(p) = &this.priority {
                p.watch(cx.waker());
            }
        }
        if let Some(s) = this.sleep.as_mut() {
            if s.as_mut().poll(cx).is_ready() {
                // Leave the queue (Drop does it) and report how long we waited.
                return Poll::Ready(Err(GateTimeout(this.started.elapsed())));
            }
        }
        Poll::Pending
    }
}

impl Drop for Acquire {
    fn drop(&mut self) {
        let Some(seq) = self.seq.take() else { return };
        let mut woken = Vec::new();
        {
            let mut st = self.gate.lock();
            if let Some(w) = st.waiters.remove(&seq) {
                if w.granted {
                    st.used = st.used.saturating_sub(w.units);
                } else {
                    st.urgent.remove(&seq);
                    st.speculative.remove(&(w.rank, seq));
                }
                // The head may have changed: whoever is next may fit now.
                st.grant(&mut woken);
            }
        }
        for w in woken {
            w.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    fn soon() -> Option<Instant> {
        Some(Instant::now() + Duration::from_secs(5))
    }

    #[tokio::test]
    async fn urgent_waiters_go_before_earlier_speculative_ones() {
        let g = Gate::new(4);
        let held = g.acquire(4, None, soon()).await.unwrap();
        let spec = Priority::speculative();
        let mut s = Box::pin(g.acquire(1, Some(spec.clone()), None));
        assert!(s.as_mut().now_or_never().is_none());
        let mut u = Box::pin(g.acquire(1, None, soon()));
        assert!(u.as_mut().now_or_never().is_none());
        drop(held);
        // One unit is free for urgent work first; the speculative one must leave a quarter.
        assert!(u.as_mut().now_or_never().is_some());
        let p = s.await.unwrap();
        assert_eq!(p.units(), 1);
    }

    #[tokio::test]
    async fn nearer_readahead_goes_first() {
        let g = Gate::new(1);
        let held = g.try_acquire(1, None).unwrap();
        let far = tokio::spawn(g.acquire(1, Some(Priority::speculative_at(5)), None));
        tokio::task::yield_now().await;
        let near = tokio::spawn(g.acquire(1, Some(Priority::speculative_at(1)), None));
        tokio::task::yield_now().await;
        drop(held);
        let first = near.await.unwrap().unwrap();
        assert!(
            !far.is_finished(),
            "the nearer one arrived later but goes first"
        );
        drop(first);
        assert!(far.await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn speculation_leaves_a_quarter_free() {
        let g = Gate::new(8);
        let a = g.try_acquire(6, Some(&Priority::speculative()));
        assert!(a.is_some());
        assert!(g.try_acquire(1, Some(&Priority::speculative())).is_none());
        assert!(
            g.try_acquire(2, None).is_some(),
            "urgent work can use the rest"
        );
    }

    #[tokio::test]
    async fn a_raised_waiter_moves_to_the_urgent_queue() {
        let g = Gate::new(1);
        let held = g.try_acquire(1, None).unwrap();
        let p = Priority::speculative();
        let spec = tokio::spawn(g.acquire(1, Some(p.clone()), None));
        tokio::task::yield_now().await;
        let urgent_later = tokio::spawn(g.acquire(1, None, soon()));
        tokio::task::yield_now().await;
        // Raised before the unit comes back: it was queued first, so it wins.
        p.raise();
        tokio::task::yield_now().await;
        drop(held);
        let first = spec.await.unwrap().unwrap();
        assert!(!urgent_later.is_finished());
        drop(first);
        assert!(urgent_later.await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn deadlines_end_waits_and_give_back_their_place() {
        let g = Gate::new(2);
        let held = g.try_acquire(2, None).unwrap();
        let t = Instant::now() + Duration::from_millis(20);
        assert!(g.acquire(1, None, Some(t)).await.is_err());
        assert_eq!(g.queued(), 0);
        drop(held);
        assert_eq!(g.available(), 2);
    }

    #[tokio::test]
    async fn partial_release_and_oversized_requests() {
        let g = Gate::new(10);
        let mut p = g.acquire(100, None, soon()).await.unwrap();
        assert_eq!(p.units(), 10, "clamped to the total");
        p.release(4);
        assert_eq!(g.available(), 4);
        drop(p);
        assert_eq!(g.available(), 10);
    }

    #[tokio::test]
    async fn linked_cells_rise_together() {
        let a = Priority::speculative();
        let b = Priority::speculative();
        a.link(&b);
        a.raise();
        assert!(b.is_urgent());
        let c = Priority::speculative();
        a.link(&c);
        assert!(c.is_urgent(), "linking to an urgent cell raises at once");
    }

    #[tokio::test]
    async fn a_dropped_granted_wait_returns_its_units() {
        let g = Gate::new(1);
        let held = g.try_acquire(1, None).unwrap();
        let mut w = Box::pin(g.acquire(1, None, soon()));
        assert!(w.as_mut().now_or_never().is_none());
        drop(held); // grants the queued wait
        drop(w); // …which is dropped before it sees the grant
        assert_eq!(g.available(), 1);
    }
}
