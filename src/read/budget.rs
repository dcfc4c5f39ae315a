//! The byte budget: every byte Shoal holds outside its store is paid for here.
//!
//! Flight buffers, readahead and pieces waiting for a store writer all live in *pieces*: chunk
//! bytes copied from the origin into allocations of at most [`PIECE`] bytes. A piece is a
//! [`Bytes`] whose owner carries a charge against `fill.buffer_budget`; the charge is returned
//! when the last reference to the piece is dropped, whoever held it (a reader, the singleflight
//! buffer, the writer's queue). Nothing else has to remember to give memory back, so the
//! accounting cannot drift from what is really allocated.
//!
//! A fill reserves its whole chunk before it asks the origin ([`Budget::reserve`]); pieces are
//! then cut from that reservation without waiting, so a running fill never stalls on memory
//! (which would let a slow reader hold it back). When the budget is spent, new fills wait in
//! the [`Gate`]'s queues — urgent before speculative — and give up with `SlowDown`.
//!
//! When a chunk is committed to the memory store, the store becomes the owner of those same
//! pieces and its capacity bounds them; the fill then hands the charge over
//! ([`ChunkCharge::transfer`]) so the bytes are not counted twice.

use crate::layer::gate::{Acquire, Gate, GatePermit, Priority};
use bytes::Bytes;
use std::sync::{Arc, Mutex};
use tokio::time::Instant;

pub use crate::model::PIECE;

/// The process-wide byte budget. Clones share it.
#[derive(Clone, Debug)]
pub struct Budget {
    gate: Gate,
}

impl Budget {
    /// A budget of `bytes`.
    pub fn new(bytes: u64) -> Self {
        Budget {
            gate: Gate::new(bytes),
        }
    }

    /// Waits for `bytes` (the whole chunk about to be filled).
    pub fn reserve(
        &self,
        bytes: u64,
        priority: Option<Priority>,
        deadline: Option<Instant>,
    ) -> Acquire {
        self.gate.acquire(bytes, priority, deadline)
    }

    /// Bytes not spoken for right now.
    pub fn available(&self) -> u64 {
        self.gate.available()
    }

    /// The whole budget.
    pub fn total(&self) -> u64 {
        self.gate.total()
    }

    /// Fills waiting for memory right now.
    pub fn queued(&self) -> usize {
        self.gate.queued()
    }
}

/// The budget held for one chunk's pieces. Pieces return their bytes as they are freed;
/// whatever was never turned into a piece is returned with [`ChunkCharge::finish`].
pub struct ChunkCharge {
    state: Mutex<ChargeState>,
}

struct ChargeState {
    /// The reservation; its units are always ≥ the bytes of live pieces. `None` once the
    /// store owns the pieces.
    permit: Option<GatePermit>,
    /// Bytes of pieces cut from this charge and not yet freed.
    live: u64,
}

impl std::fmt::Debug for ChunkCharge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.lock();
        f.debug_struct("ChunkCharge")
            .field("live", &st.live)
            .field("held", &st.permit.as_ref().map_or(0, GatePermit::units))
            .finish()
    }
}

impl ChunkCharge {
    /// Holds `permit` for the chunk's pieces.
    pub fn new(permit: GatePermit) -> Arc<Self> {
        Arc::new(ChunkCharge {
            state: Mutex::new(ChargeState {
                permit: Some(permit),
                live: 0,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ChargeState> {
        // Nothing panics while the lock is held, so a poisoned state is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Copies `frames` into one new piece charged to this chunk. Callers keep pieces at most
    /// [`PIECE`] bytes, so that holding one pins little.
    pub fn piece(self: &Arc<Self>, frames: &[Bytes]) -> Bytes {
        let n: usize = frames.iter().map(Bytes::len).sum();
        let mut data = Vec::with_capacity(n);
        for f in frames {
            data.extend_from_slice(f);
        }
        self.lock().live += n as u64;
        Bytes::from_owner(Piece {
            data: data.into_boxed_slice(),
            charge: self.clone(),
        })
    }

    /// The fill is over: returns the part of the reservation that no live piece holds (all of
    /// it for a chunk that failed before its first byte). Live pieces keep their share until
    /// they are freed.
    pub fn finish(&self) {
        let mut st = self.lock();
        let live = st.live;
        if let Some(p) = st.permit.as_mut() {
            let spare = p.units().saturating_sub(live);
            p.release(spare);
        }
    }

    /// Bytes of this chunk's pieces that are still alive.
    pub fn live(&self) -> u64 {
        self.lock().live
    }

    /// The store now owns these pieces (memory store): stop charging them to the budget.
    pub fn transfer(&self) {
        let permit = self.lock().permit.take();
        drop(permit);
    }

    fn freed(&self, n: u64) {
        let mut st = self.lock();
        st.live = st.live.saturating_sub(n);
        if let Some(p) = st.permit.as_mut() {
            p.release(n);
        }
    }
}

struct Piece {
    data: Box<[u8]>,
    charge: Arc<ChunkCharge>,
}

impl AsRef<[u8]> for Piece {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

impl Drop for Piece {
    fn drop(&mut self) {
        self.charge.freed(self.data.len() as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pieces_return_their_bytes_when_the_last_reference_goes() {
        let b = Budget::new(1000);
        let permit = b.reserve(600, None, None).await.unwrap();
        let charge = ChunkCharge::new(permit);
        let p1 = charge.piece(&[Bytes::from_static(b"abc"), Bytes::from_static(b"de")]);
        let p2 = charge.piece(&[Bytes::from(vec![7u8; 100])]);
        assert_eq!(&p1[..], b"abcde");
        assert_eq!(b.available(), 400);
        charge.finish();
        assert_eq!(
            b.available(),
            1000 - 105,
            "the uncut rest is returned at finish"
        );
        let slice = p2.slice(10..20);
        drop(p2);
        assert_eq!(b.available(), 1000 - 105, "a slice keeps the piece alive");
        drop(slice);
        drop(p1);
        assert_eq!(b.available(), 1000);
        assert_eq!(charge.live(), 0);
    }

    #[tokio::test]
    async fn a_transfer_hands_the_pieces_to_the_store() {
        let b = Budget::new(100);
        let charge = ChunkCharge::new(b.reserve(50, None, None).await.unwrap());
        let p = charge.piece(&[Bytes::from(vec![1u8; 50])]);
        charge.finish();
        assert_eq!(b.available(), 50);
        charge.transfer();
        assert_eq!(b.available(), 100);
        drop(p);
        assert_eq!(b.available(), 100, "nothing is returned twice");
    }
}
