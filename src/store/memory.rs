//! The memory store: committed chunks kept as the fill's own pieces, in a moka cache weighted
//! by size.
//!
//! The value of a chunk is the list of `Bytes` pieces the fill produced: committing copies
//! nothing, and a hit hands out slices of those same pieces. moka's W-TinyLFU admission keeps
//! one-off scans from flushing hot chunks; a chunk it declines is reported as
//! [`Committed::Refused`].
//!
//! A reader holds the chunk only weakly between pieces. If the chunk is evicted while a slow
//! client is still reading it, the reader's next step finds it gone and reports a store error,
//! on which the read path continues from the origin at the exact byte reached. So a slow client
//! pins at most the one piece it is being sent, never a whole evicted chunk: the memory the
//! store uses stays within its capacity plus one piece per connection.
//!
//! A chunk moka removes — evicted, refused at commit, replaced — lets go of its pieces at once,
//! in the eviction listener. moka itself frees a removed value only when the epoch-based
//! garbage collection of its hash table runs, which takes later cache traffic: until then an
//! evicted chunk would still be readable and, worse, a refused chunk (whose pieces are still
//! charged to the fill budget: only a kept chunk's charge is handed over) would hold its share
//! of the budget for as long as the cache stays quiet.

use super::{range_ok, ChunkStore, ChunkWriter, Committed, StoreError, StoreStats};
use crate::error::Error;
use crate::model::ByteStream;
use crate::model::ChunkKey;
use crate::model::PIECE;
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// One committed chunk: its pieces and where each starts.
struct Stored {
    /// Emptied when the cache removes the chunk ([`Stored::release`]).
    pieces: Mutex<Vec<Bytes>>,
    starts: Vec<u64>,
    len: u64,
}

/// The chunk was removed from the store.
struct Gone;

impl Stored {
    /// The bytes from `pos` to at most `end` that one piece holds (at most [`PIECE`]); `None`
    /// if the index has no such piece.
    fn piece_at(&self, pos: u64, end: u64) -> Result<Option<Bytes>, Gone> {
        let pieces = crate::layer::lock(&self.pieces);
        if pieces.is_empty() && self.len > 0 {
            return Err(Gone);
        }
        let Some(i) = self.starts.partition_point(|&s| s <= pos).checked_sub(1) else {
            return Ok(None);
        };
        let Some(p) = pieces.get(i) else {
            return Ok(None);
        };
        let lo = (pos - self.starts[i]) as usize;
        let hi = (p.len())
            .min(lo + PIECE)
            .min((end - self.starts[i]) as usize);
        Ok((lo < hi).then(|| p.slice(lo..hi)))
    }

    /// The cache removed this chunk: its pieces go now, not when moka frees the value.
    fn release(&self) {
        let pieces = std::mem::take(&mut *crate::layer::lock(&self.pieces));
        drop(pieces);
    }
}

/// Chunks in memory, bounded by `capacity` bytes.
#[derive(Clone)]
pub struct MemoryStore {
    cache: moka::sync::Cache<ChunkKey, Arc<Stored>>,
    failed_commits: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
    /// Removals for size, refused admissions included (subtracted when counted).
    sized_out: Arc<AtomicU64>,
}

impl MemoryStore {
    /// A store holding at most `capacity` bytes of chunks.
    pub fn new(capacity: u64) -> Self {
        let sized_out: Arc<AtomicU64> = Arc::default();
        let s2 = sized_out.clone();
        MemoryStore {
            cache: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .weigher(|_k: &ChunkKey, v: &Arc<Stored>| u32::try_from(v.len).unwrap_or(u32::MAX))
                .eviction_listener(move |_k, v: Arc<Stored>, cause| {
                    if cause == moka::notification::RemovalCause::Size {
                        s2.fetch_add(1, Ordering::Relaxed);
                    }
                    // Whatever the cause (see the module docs).
                    v.release();
                })
                .build(),
            failed_commits: Arc::default(),
            refused: Arc::default(),
            sized_out,
        }
    }
}

struct Reader {
    chunk: Weak<Stored>,
    pos: u64,
    end: u64,
}

impl Reader {
    fn next(&mut self) -> Option<Result<Bytes, Error>> {
        if self.pos >= self.end {
            return None;
        }
        let evicted = || Some(Err(Error::Store("chunk evicted while being read".into())));
        let Some(chunk) = self.chunk.upgrade() else {
            self.pos = self.end;
            return evicted();
        };
        match chunk.piece_at(self.pos, self.end) {
            Ok(Some(b)) => {
                self.pos += b.len() as u64;
                Some(Ok(b))
            }
            Err(Gone) => {
                self.pos = self.end;
                evicted()
            }
            Ok(None) => {
                self.pos = self.end;
                Some(Err(Error::internal(
                    "memory chunk shorter than its index says",
                )))
            }
        }
    }
}

#[async_trait]
impl ChunkStore for MemoryStore {
    async fn get(
        &self,
        key: &ChunkKey,
        range: Range<u64>,
    ) -> Result<Option<ByteStream>, StoreError> {
        let Some(chunk) = self.cache.get(key) else {
            return Ok(None);
        };
        if !range_ok(&range, chunk.len) {
            return Ok(None);
        }
        let mut r = Reader {
            chunk: Arc::downgrade(&chunk),
            pos: range.start,
            end: range.end,
        };
        // The first piece is taken while the chunk is certainly here.
        let first = r.next();
        drop(chunk);
        let rest = futures_util::stream::iter(std::iter::from_fn(move || r.next()));
        Ok(Some(futures_util::stream::iter(first).chain(rest).boxed()))
    }

    async fn begin(&self, key: &ChunkKey, len: u64) -> Result<Box<dyn ChunkWriter>, StoreError> {
        Ok(Box::new(MemoryWriter {
            store: self.clone(),
            key: key.clone(),
            pieces: Vec::new(),
            starts: Vec::new(),
            written: 0,
            promised: len,
        }))
    }

    fn contains(&self, key: &ChunkKey) -> bool {
        self.cache.contains_key(key)
    }

    fn wanted(&self, key: &ChunkKey) {
        // A lookup, hit or miss, is what moka's frequency sketch counts.
        let _ = self.cache.get(key);
    }

    fn keeps_written_bytes(&self) -> bool {
        true
    }

    fn stats(&self) -> StoreStats {
        self.cache.run_pending_tasks();
        StoreStats {
            used_bytes: self.cache.weighted_size(),
            chunks: self.cache.entry_count(),
            corrupt: 0,
            failed_commits: self.failed_commits.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            evictions: self
                .sized_out
                .load(Ordering::Relaxed)
                .saturating_sub(self.refused.load(Ordering::Relaxed)),
        }
    }
}

struct MemoryWriter {
    store: MemoryStore,
    key: ChunkKey,
    pieces: Vec<Bytes>,
    starts: Vec<u64>,
    written: u64,
    promised: u64,
}

#[async_trait]
impl ChunkWriter for MemoryWriter {
    async fn write(&mut self, bytes: Bytes) -> Result<(), StoreError> {
        if self.written + bytes.len() as u64 > self.promised {
            return Err(StoreError::Length {
                wrote: self.written + bytes.len() as u64,
                promised: self.promised,
            });
        }
        if !bytes.is_empty() {
            self.starts.push(self.written);
            self.written += bytes.len() as u64;
            self.pieces.push(bytes);
        }
        Ok(())
    }

    async fn commit(self: Box<Self>) -> Result<Committed, StoreError> {
        if self.written != self.promised {
            self.store.failed_commits.fetch_add(1, Ordering::Relaxed);
            return Err(StoreError::Length {
                wrote: self.written,
                promised: self.promised,
            });
        }
        let cache = self.store.cache.clone();
        let chunk = Arc::new(Stored {
            pieces: Mutex::new(self.pieces),
            starts: self.starts,
            len: self.written,
        });
        cache.insert(self.key.clone(), chunk);
        // Admission is decided by moka's maintenance; run it now so the answer is known.
        cache.run_pending_tasks();
        if cache.contains_key(&self.key) {
            Ok(Committed::Kept)
        } else {
            self.store.refused.fetch_add(1, Ordering::Relaxed);
            Ok(Committed::Refused)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::read::budget::{Budget, ChunkCharge};

    const CHUNK: u64 = 1 << 20;

    fn key(index: u64) -> ChunkKey {
        ChunkKey {
            origin_id: "o".into(),
            bucket: "b".into(),
            key: "k".into(),
            etag: "e".into(),
            chunk_size: CHUNK,
            index,
        }
    }

    /// Commits chunk `index` made of `pieces`.
    async fn commit(store: &MemoryStore, index: u64, pieces: Vec<Bytes>) -> Committed {
        let mut w = store.begin(&key(index), CHUNK).await.unwrap();
        for p in pieces {
            w.write(p).await.unwrap();
        }
        w.commit().await.unwrap()
    }

    /// A whole chunk of pieces charged to `budget`, as a fill cuts them. The charge is never
    /// transferred here: the budget shows whether any of the pieces is still alive.
    async fn charged(budget: &Budget) -> Vec<Bytes> {
        let charge = ChunkCharge::new(budget.reserve(CHUNK, None, None).await.unwrap());
        let pieces = (0..CHUNK as usize / PIECE)
            .map(|_| charge.piece(&[Bytes::from(vec![7u8; PIECE])]))
            .collect();
        charge.finish();
        pieces
    }

    fn plain() -> Vec<Bytes> {
        vec![Bytes::from(vec![1u8; CHUNK as usize])]
    }

    /// Regression: moka frees a removed value only when its epoch-based garbage collection
    /// runs, which needs later cache traffic. A chunk the admission policy refused kept its
    /// pieces — still charged to the budget, since only a kept chunk's charge is transferred —
    /// alive until then: after a quiet end, the budget never came back (found by the herd
    /// test `sixteen_slow_readers_with_evicted_readahead_and_a_spent_budget_all_end`).
    #[tokio::test]
    async fn a_refused_chunk_lets_go_of_its_pieces_at_once() {
        let store = MemoryStore::new(2 * CHUNK);
        for i in 0..2 {
            assert_eq!(commit(&store, i, plain()).await, Committed::Kept);
            for _ in 0..8 {
                assert!(store.get(&key(i), 0..1).await.unwrap().is_some());
            }
        }
        let budget = Budget::new(CHUNK);
        let pieces = charged(&budget).await;
        assert_eq!(commit(&store, 9, pieces).await, Committed::Refused);
        assert!(!store.contains(&key(9)));
        assert_eq!(
            budget.available(),
            CHUNK,
            "the store still holds pieces of a chunk it refused"
        );
    }

    /// An evicted chunk's pieces go at once too (the store's memory stays within its
    /// capacity), and a reader that was reading it learns that it is gone.
    #[tokio::test]
    async fn an_evicted_chunk_lets_go_of_its_pieces_at_once() {
        let store = MemoryStore::new(2 * CHUNK);
        let budget = Budget::new(CHUNK);
        assert_eq!(
            commit(&store, 0, charged(&budget).await).await,
            Committed::Kept
        );
        let mut reader = store.get(&key(0), 0..CHUNK).await.unwrap().unwrap();
        assert_eq!(reader.next().await.unwrap().unwrap().len(), PIECE);
        assert_eq!(commit(&store, 1, plain()).await, Committed::Kept);
        // A chunk wanted more often than chunk 0 takes its place.
        for _ in 0..8 {
            store.wanted(&key(2));
        }
        assert_eq!(commit(&store, 2, plain()).await, Committed::Kept);
        assert!(!store.contains(&key(0)), "chunk 0 was evicted");
        assert!(
            matches!(reader.next().await, Some(Err(Error::Store(_)))),
            "the reader of an evicted chunk continues elsewhere"
        );
        drop(reader);
        assert_eq!(
            budget.available(),
            CHUNK,
            "the store still holds pieces of an evicted chunk"
        );
    }
}
