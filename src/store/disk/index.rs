//! What the store knows it holds: chunk identities, and letting files go.

use super::DiskStore;
use crate::model::ChunkKey;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// A chunk's identity as the disk knows it: its store path. The index is keyed by this rather
/// than by [`ChunkKey`] because the start-up scan can recover paths, not bucket/key/ETag.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub(super) struct ChunkId {
    pub(super) origin: Arc<str>,
    pub(super) hash: Arc<str>,
    pub(super) index: u64,
}

impl ChunkId {
    pub(super) fn of(key: &ChunkKey) -> Self {
        ChunkId {
            origin: key.origin_id.clone(),
            hash: key.object_hash().into(),
            index: key.index,
        }
    }

    pub(super) fn rel_path(&self) -> PathBuf {
        PathBuf::from(&*self.origin)
            .join(&*self.hash)
            .join(self.index.to_string())
    }
}

/// Work for the unlink thread.
pub(super) enum Unlink {
    /// A chunk file, unless the chunk was committed again meanwhile.
    Chunk(ChunkId),
    /// A temp file of a writer that did not commit.
    Temp(PathBuf),
}

impl DiskStore {
    /// Counts, forgets and unlinks a chunk that failed its checks.
    pub(super) fn drop_corrupt(&self, id: &ChunkId, why: &str) {
        self.inner.corrupt.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(chunk = ?id, why, "corrupt chunk dropped; it will be refilled");
        self.inner.index.invalidate(id);
        self.inner.handles.invalidate(id);
        self.forget_small(id);
        let _ = self.inner.unlink.send(Unlink::Chunk(id.clone()));
    }

    pub(super) fn forget_small(&self, id: &ChunkId) {
        if let Some(m) = &self.inner.small {
            m.invalidate(id);
        }
    }
}
