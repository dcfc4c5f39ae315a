//! A flight: the shared buffer of one call's answer, and [`Joined`], a reader of it.

use super::*;

pub(super) enum End<E> {
    Done { durable: bool },
    Failed(E),
}

pub(super) struct Slot {
    /// Index of the next piece this reader reads.
    pub(super) next: usize,
    /// Bytes read so far.
    pub(super) offset: u64,
    pub(super) waker: Option<Waker>,
    pub(super) waiting: bool,
}

pub(super) struct FlightState<H, E> {
    /// What every reader gets a copy of, once the call has answered.
    pub(super) head: Option<H>,
    /// Pieces `base..` (earlier ones were released).
    pub(super) pieces: VecDeque<Bytes>,
    pub(super) base: usize,
    pub(super) published: u64,
    pub(super) end: Option<End<E>>,
    /// The leader went away without an end (it panicked, or its task was cancelled at
    /// shutdown). Readers then see the stream stop early, which length checks downstream turn
    /// into an error: never a hang, never a stream that looks complete.
    pub(super) abandoned: bool,
    pub(super) slots: Vec<Option<Slot>>,
    pub(super) free: Vec<usize>,
    pub(super) live: usize,
    /// Readers per next-piece index, to find the slowest reader in O(log n).
    pub(super) cursors: BTreeMap<usize, usize>,
    /// Slots with a stored waker.
    pub(super) waiting: Vec<usize>,
}

impl<H, E> FlightState<H, E> {
    pub(super) fn total(&self) -> usize {
        self.base + self.pieces.len()
    }

    pub(super) fn move_cursor(&mut self, from: Option<usize>, to: Option<usize>) {
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
    pub(super) fn trim(&mut self) {
        if !matches!(self.end, Some(End::Done { durable: false })) {
            return;
        }
        let keep_from = self.cursors.keys().next().copied().unwrap_or(self.total());
        while self.base < keep_from && !self.pieces.is_empty() {
            self.pieces.pop_front();
            self.base += 1;
        }
    }

    pub(super) fn take_wakers(&mut self) -> Vec<Waker> {
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
pub(super) struct Flight<H, E> {
    pub(super) state: Mutex<FlightState<H, E>>,
    /// The leader's priority; `None` = urgent (never cancelled).
    pub(super) priority: Option<Priority>,
    pub(super) cancel: CancellationToken,
    /// Removes this flight from the map if it is still there and nobody reads it; returns
    /// whether it did (then the call is cancelled).
    pub(super) unlink: Box<UnlinkFn<H, E>>,
}

pub(super) type UnlinkFn<H, E> = dyn Fn(&Arc<Flight<H, E>>) -> bool + Send + Sync;

impl<H, E> Flight<H, E> {
    pub(super) fn urgent(&self) -> bool {
        self.priority.as_ref().is_none_or(Priority::is_urgent)
    }

    pub(super) fn update(&self, f: impl FnOnce(&mut FlightState<H, E>)) {
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
    pub(super) fn unwanted(&self) -> bool {
        let st = lock(&self.state);
        st.live == 0 && st.end.is_none() && !self.urgent()
    }
}

/// A reader of a shared flight: every piece from the first, then the end.
pub struct Joined<H, E> {
    pub(super) flight: Arc<Flight<H, E>>,
    pub(super) id: usize,
    pub(super) done: bool,
}

impl<H: Clone, E: Clone + From<Released>> Joined<H, E> {
    /// The answer's head, once the call has answered (or its error, if it failed first). A
    /// call given up without an answer (its leader task was cancelled or panicked) reads as
    /// [`Released`] at byte 0.
    pub fn poll_head(&mut self, cx: &mut Context<'_>) -> Poll<Result<H, E>> {
        let mut st = lock(&self.flight.state);
        let st = &mut *st;
        if let Some(h) = &st.head {
            return Poll::Ready(Ok(h.clone()));
        }
        match &st.end {
            Some(End::Failed(e)) => return Poll::Ready(Err(e.clone())),
            // Ended without an answer: only a leader that went away does that.
            Some(End::Done { .. }) => {}
            None if !st.abandoned => {
                if let Some(Some(slot)) = st.slots.get_mut(self.id) {
                    let w = cx.waker();
                    if !slot.waker.as_ref().is_some_and(|x| x.will_wake(w)) {
                        slot.waker = Some(w.clone());
                    }
                    if !slot.waiting {
                        slot.waiting = true;
                        st.waiting.push(self.id);
                    }
                }
                return Poll::Pending;
            }
            None => {}
        }
        Poll::Ready(Err(Released { at: 0 }.into()))
    }

    /// Waits for the answer's head.
    pub async fn head(&mut self) -> Result<H, E> {
        std::future::poll_fn(|cx| self.poll_head(cx)).await
    }
}

impl<H, E> Joined<H, E> {
    /// Whether the call behind this reader was given up without an answer (its leader task
    /// was cancelled or panicked).
    pub fn abandoned(&self) -> bool {
        let st = lock(&self.flight.state);
        st.abandoned && st.head.is_none()
    }

    pub(super) fn new(flight: Arc<Flight<H, E>>) -> Self {
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

impl<H, E: Clone + From<Released>> Stream for Joined<H, E> {
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

impl<H, E> Drop for Joined<H, E> {
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
