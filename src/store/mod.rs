//! Chunk stores: where filled chunks are kept.
//!
//! A store is asked for a byte range of a chunk and answers with a stream, or `None` when it
//! does not have the chunk (or has it damaged — a store never serves bytes it cannot vouch
//! for). Writes go through a [`ChunkWriter`] that becomes visible only on `commit`, and only if
//! the written length is the promised one: a half-written chunk is never visible.

mod disk;
pub mod hot;
mod memory;
mod s3;

pub use disk::DiskStore;
pub use memory::MemoryStore;
pub use s3::{S3Store, MULTIPART_FROM, PART_SIZE};

use crate::model::ByteStream;
use crate::model::ChunkKey;
use async_trait::async_trait;
use bytes::Bytes;
use std::ops::Range;

/// A store failure. The read path treats every one of them as a miss (refill from the
/// origin); they are reported, never shown to clients as wrong bytes.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    /// The chunk does not fit (capacity or disk full).
    #[error("store full: {0}")]
    Full(String),
    /// More or fewer bytes were written than promised.
    #[error("chunk length mismatch: wrote {wrote}, promised {promised}")]
    Length {
        /// Bytes written.
        wrote: u64,
        /// Bytes promised to `begin`.
        promised: u64,
    },
    /// An I/O error.
    #[error("store I/O: {0}")]
    Io(String),
}

/// Counters a store keeps about itself (exported as metrics later).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Bytes of committed chunks.
    pub used_bytes: u64,
    /// Committed chunks.
    pub chunks: u64,
    /// Chunks found damaged (checksum mismatch) and dropped.
    pub corrupt: u64,
    /// Commits that failed.
    pub failed_commits: u64,
    /// Complete chunks the admission policy declined to keep (see [`Committed::Refused`]).
    pub refused: u64,
    /// Chunks evicted to stay within capacity.
    pub evictions: u64,
}

/// What became of a complete chunk at commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    /// The chunk is in the store: readers may continue from it.
    Kept,
    /// The store is full of chunks used more often, and its admission policy (W-TinyLFU)
    /// declined this one. Deliberate: a one-off read must not flush hot chunks. The chunk's
    /// readers are served from the fill's buffer instead.
    Refused,
}

/// Keeps chunks. Implementations must be safe to share across tasks.
#[async_trait]
pub trait ChunkStore: Send + Sync + 'static {
    /// Streams `range` (relative to the chunk start) of a committed chunk, or `None` if the
    /// chunk is absent. `range` must lie inside the chunk.
    async fn get(
        &self,
        key: &ChunkKey,
        range: Range<u64>,
    ) -> Result<Option<ByteStream>, StoreError>;

    /// Starts writing a chunk of exactly `len` bytes.
    async fn begin(&self, key: &ChunkKey, len: u64) -> Result<Box<dyn ChunkWriter>, StoreError>;

    /// Whether a committed chunk is present (cheap: an index lookup, not counted as a use).
    fn contains(&self, key: &ChunkKey) -> bool;

    /// A reader is about to read this chunk from elsewhere: readahead found it missing and
    /// joins (or starts) its fill. Counts as a use for the store's admission, as a `get`
    /// would: without it, a full store would see the chunks of a large object as never
    /// read (readahead, not `get`, finds them missing) and decline them on every fill, however
    /// often the object is read. Stores without an admission policy ignore it.
    fn wanted(&self, _key: &ChunkKey) {}

    /// Whether a chunk is present, asking the store itself where that is not free: a fill
    /// asks this before it goes to the origin, so that a chunk another replica put into a
    /// shared store is a hit here. Local stores answer [`ChunkStore::contains`].
    async fn present(&self, key: &ChunkKey) -> bool {
        self.contains(key)
    }

    /// Whether other replicas write into this store too (the `s3` cachestore): then
    /// [`ChunkStore::contains`] only knows what this replica has seen.
    fn is_shared(&self) -> bool {
        false
    }

    /// Whether the store keeps the very `Bytes` it is given (the memory store), so that a
    /// committed chunk's memory is the store's to account for, not the fill budget's.
    fn keeps_written_bytes(&self) -> bool {
        false
    }

    /// Current counters.
    fn stats(&self) -> StoreStats;
}

/// An uncommitted chunk. Dropping it without `commit` discards it.
#[async_trait]
pub trait ChunkWriter: Send {
    /// Appends bytes.
    async fn write(&mut self, bytes: Bytes) -> Result<(), StoreError>;
    /// Makes the chunk visible, atomically, if exactly the promised length was written.
    async fn commit(self: Box<Self>) -> Result<Committed, StoreError>;
}

/// Checks that `range` lies in a chunk of `len` bytes.
pub(crate) fn range_ok(range: &Range<u64>, len: u64) -> bool {
    range.start <= range.end && range.end <= len
}
