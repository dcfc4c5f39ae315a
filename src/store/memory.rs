//! The memory store: committed chunks as `Bytes` in a moka cache weighted by size.
//!
//! A hit is a reference-counted slice of the stored buffer: no copy, no lock held while the
//! bytes go out. moka's TinyLFU admission keeps one-off scans from flushing hot chunks.

use super::{range_ok, ChunkStore, ChunkWriter, StoreError, StoreStats};
use crate::chunk::ChunkKey;
use crate::origin::ByteStream;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Chunks in memory, bounded by `capacity` bytes.
#[derive(Clone)]
pub struct MemoryStore {
    cache: moka::sync::Cache<ChunkKey, Bytes>,
    failed_commits: Arc<AtomicU64>,
}

impl MemoryStore {
    /// A store holding at most `capacity` bytes of chunks.
    pub fn new(capacity: u64) -> Self {
        MemoryStore {
            cache: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .weigher(|_k: &ChunkKey, v: &Bytes| u32::try_from(v.len()).unwrap_or(u32::MAX))
                .build(),
            failed_commits: Arc::default(),
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
        let Some(b) = self.cache.get(key) else {
            return Ok(None);
        };
        if !range_ok(&range, b.len() as u64) {
            return Ok(None);
        }
        let slice = b.slice(range.start as usize..range.end as usize);
        Ok(Some(futures_util::stream::iter([Ok(slice)]).boxed()))
    }

    async fn begin(&self, key: &ChunkKey, len: u64) -> Result<Box<dyn ChunkWriter>, StoreError> {
        let cap = usize::try_from(len).map_err(|_| StoreError::Full("chunk too large".into()))?;
        Ok(Box::new(MemoryWriter {
            store: self.clone(),
            key: key.clone(),
            buf: BytesMut::with_capacity(cap),
            promised: len,
        }))
    }

    fn contains(&self, key: &ChunkKey) -> bool {
        self.cache.contains_key(key)
    }

    fn stats(&self) -> StoreStats {
        self.cache.run_pending_tasks();
        StoreStats {
            used_bytes: self.cache.weighted_size(),
            chunks: self.cache.entry_count(),
            corrupt: 0,
            failed_commits: self.failed_commits.load(Ordering::Relaxed),
        }
    }
}

struct MemoryWriter {
    store: MemoryStore,
    key: ChunkKey,
    buf: BytesMut,
    promised: u64,
}

#[async_trait]
impl ChunkWriter for MemoryWriter {
    async fn write(&mut self, bytes: Bytes) -> Result<(), StoreError> {
        if self.buf.len() as u64 + bytes.len() as u64 > self.promised {
            return Err(StoreError::Length {
                wrote: self.buf.len() as u64 + bytes.len() as u64,
                promised: self.promised,
            });
        }
        self.buf.extend_from_slice(&bytes);
        Ok(())
    }

    async fn commit(self: Box<Self>) -> Result<(), StoreError> {
        if self.buf.len() as u64 != self.promised {
            self.store.failed_commits.fetch_add(1, Ordering::Relaxed);
            return Err(StoreError::Length {
                wrote: self.buf.len() as u64,
                promised: self.promised,
            });
        }
        self.store.cache.insert(self.key, self.buf.freeze());
        Ok(())
    }
}
