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

use super::{range_ok, ChunkStore, ChunkWriter, Committed, StoreError, StoreStats};
use crate::budget::PIECE;
use crate::chunk::ChunkKey;
use crate::error::Error;
use crate::origin::ByteStream;
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

/// One committed chunk: its pieces and where each starts.
struct Stored {
    pieces: Vec<Bytes>,
    starts: Vec<u64>,
    len: u64,
}

impl Stored {
    /// The bytes from `pos` to at most `end` that one piece holds (at most [`PIECE`]).
    fn piece_at(&self, pos: u64, end: u64) -> Option<Bytes> {
        let i = self.starts.partition_point(|&s| s <= pos).checked_sub(1)?;
        let p = self.pieces.get(i)?;
        let lo = (pos - self.starts[i]) as usize;
        let hi = (p.len())
            .min(lo + PIECE)
            .min((end - self.starts[i]) as usize);
        (lo < hi).then(|| p.slice(lo..hi))
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
                .eviction_listener(move |_k, _v, cause| {
                    if cause == moka::notification::RemovalCause::Size {
                        s2.fetch_add(1, Ordering::Relaxed);
                    }
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
        let Some(chunk) = self.chunk.upgrade() else {
            self.pos = self.end;
            return Some(Err(Error::Store("chunk evicted while being read".into())));
        };
        match chunk.piece_at(self.pos, self.end) {
            Some(b) => {
                self.pos += b.len() as u64;
                Some(Ok(b))
            }
            None => {
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
            pieces: self.pieces,
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
