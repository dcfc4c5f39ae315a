//! The hot cache: chunks owned by other replicas that this one asked for repeatedly, kept
//! here too (`cluster.hot_cache`), and the store as readers see it in a cluster — the
//! replica's own store, then its hot cache. See `crate::cluster` for why.

use crate::model::{ByteStream, ChunkKey};
use crate::store::{ChunkStore, ChunkWriter, StoreError, StoreStats};
use async_trait::async_trait;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

/// How long a peer fetch is remembered when deciding whether a chunk is hot.
const HOT_WINDOW: Duration = Duration::from_secs(600);
/// Peer fetches within the window that make a chunk hot.
const HOT_AFTER: u32 = 2;

/// Chunks owned by other replicas that this one asked for repeatedly. See the module docs.
#[derive(Clone)]
pub struct HotCache {
    store: Arc<dyn ChunkStore>,
    asked: moka::sync::Cache<ChunkKey, u32>,
}

impl HotCache {
    /// A hot cache kept in `store` (of the same kind as the replica's own store, with its own
    /// capacity: `cluster.hot_cache`).
    pub fn new(store: Arc<dyn ChunkStore>) -> Self {
        HotCache {
            store,
            asked: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(HOT_WINDOW)
                .build(),
        }
    }

    /// Notes that `key` is being fetched from its owner again; `true` once it is hot enough to
    /// keep a copy here.
    pub fn fetched_from_peer(&self, key: &ChunkKey) -> bool {
        let n = self
            .asked
            .entry(key.clone())
            .and_upsert_with(|e| e.map_or(1, |v| v.into_value().saturating_add(1)))
            .into_value();
        n >= HOT_AFTER
    }

    /// The store that keeps the hot chunks.
    pub fn store(&self) -> Arc<dyn ChunkStore> {
        self.store.clone()
    }

    /// Its counters.
    pub fn stats(&self) -> StoreStats {
        self.store.stats()
    }
}

/// The chunk store as readers see it in a cluster: the replica's own store, then its hot cache.
/// Writes go to the main store (the fill writes hot chunks to the hot cache itself).
pub struct Tiered {
    main: Arc<dyn ChunkStore>,
    hot: HotCache,
}

impl Tiered {
    /// Reads `main`, then `hot`.
    pub fn new(main: Arc<dyn ChunkStore>, hot: HotCache) -> Self {
        Tiered { main, hot }
    }
}

#[async_trait]
impl ChunkStore for Tiered {
    async fn get(
        &self,
        key: &ChunkKey,
        range: Range<u64>,
    ) -> Result<Option<ByteStream>, StoreError> {
        match self.main.get(key, range.clone()).await? {
            Some(s) => Ok(Some(s)),
            None => self.hot.store.get(key, range).await,
        }
    }

    async fn begin(&self, key: &ChunkKey, len: u64) -> Result<Box<dyn ChunkWriter>, StoreError> {
        self.main.begin(key, len).await
    }

    fn contains(&self, key: &ChunkKey) -> bool {
        self.main.contains(key) || self.hot.store.contains(key)
    }

    fn keeps_written_bytes(&self) -> bool {
        self.main.keeps_written_bytes()
    }

    fn stats(&self) -> StoreStats {
        self.main.stats()
    }
}
