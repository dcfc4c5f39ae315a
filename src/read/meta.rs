//! Metadata lookups: what the origin says an object is (size, ETag, headers), for the
//! metadata stack (`NegativeCacheLayer` over [`OriginMeta`], built in `crate::app`).
//!
//! A miss costs one origin round trip where it can: a GET that reads from byte 0 (or a suffix,
//! a Parquet footer) asks the origin for those very bytes, learns from the answer what a HEAD
//! would have said, and parks the answer ([`Prefetched`]) for the read that follows at once
//! (the one-trip lookup). Elsewhere — a cluster, where the chunk may be another replica's to
//! fill; a shared store, where it is probably there already; a version or part; a HEAD — it
//! asks HEAD.

use crate::error::{Error, OriginError};
use crate::model::{chunk_size_for, ChunkKey, ObjectMeta, Selector, Tier};
use crate::origin::{Origin, Prefetched};
use crate::store::ChunkStore;
use crate::telemetry::metrics::Report;
use futures_util::future::BoxFuture;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::util::BoxCloneSyncService;

/// Identifies an object at the origin; the key of the metadata cache.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectRef {
    /// Bucket.
    pub bucket: Arc<str>,
    /// Key.
    pub key: Arc<str>,
    /// Which version or part (the current object, whole, by default).
    pub sel: Selector,
}

/// A metadata lookup: the object, and the client request's report (told whether the
/// metadata was cached).
#[derive(Debug, Clone)]
pub struct MetaRequest {
    /// The object.
    pub object: ObjectRef,
    /// The client request's report, if any.
    pub report: Option<Arc<Report>>,
    /// What the request reads first: on a miss the metadata may be learned from that read's
    /// own origin GET (one round trip instead of HEAD + GET).
    pub first_read: FirstRead,
}

/// What a GET reads first, when its origin GET can also stand for the HEAD a metadata miss
/// would otherwise cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FirstRead {
    /// Not a GET, or a read that needs the object's size first: a miss asks HEAD.
    #[default]
    Unknown,
    /// The GET starts at byte 0: the first chunk's GET.
    FirstChunk,
    /// The GET is a suffix range (`bytes=-N`, a Parquet footer): a GET of the last N bytes.
    Suffix(u64),
}

/// The metadata stack, type-erased: `MetaRequest` → metadata with a non-empty ETag.
pub type MetaService = BoxCloneSyncService<MetaRequest, Arc<ObjectMeta>, Error>;

/// Forgets an object's cached metadata if it still describes the version with this ETag.
pub type InvalidateFn = Arc<dyn Fn(ObjectRef, Arc<str>) -> BoxFuture<'static, ()> + Send + Sync>;

/// Turns an origin HEAD answer into cacheable metadata: no ETag means no version to pin, which
/// is an error of its own (negatively cached, SPEC §1.4).
pub fn require_etag(meta: ObjectMeta) -> Result<Arc<ObjectMeta>, Error> {
    if meta.etag.is_empty() {
        Err(Error::Origin(OriginError::MissingEtag))
    } else {
        Ok(Arc::new(meta))
    }
}

/// The bottom of the metadata stack: asks the origin what an object is, in one round trip
/// with the first read's own GET where that is safe (see the module docs).
#[derive(Clone)]
pub struct OriginMeta {
    /// The origin asked.
    pub origin: Arc<dyn Origin>,
    /// Where a one-trip answer's bytes are parked for the fill that takes them.
    pub prefetched: Prefetched,
    /// In a cluster, the chunk may be another replica's to fill: no one-trip lookup.
    pub clustered: bool,
    /// A shared store probably has the chunk already: no one-trip lookup; and a chunk
    /// already stored takes no parked answer.
    pub store: Arc<dyn ChunkStore>,
    /// `origin.id`.
    pub origin_id: Arc<str>,
    /// `chunk.size` and `chunk.tiers`: which chunk a one-trip answer's bytes belong to.
    pub base_chunk: u64,
    /// See `base_chunk`.
    pub tiers: Arc<[Tier]>,
}

impl tower::Service<MetaRequest> for OriginMeta {
    type Response = Arc<ObjectMeta>;
    type Error = Error;
    type Future = BoxFuture<'static, Result<Arc<ObjectMeta>, Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        // No capacity of its own: the origin's slots are not taken by metadata lookups.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, r: MetaRequest) -> Self::Future {
        Box::pin(self.clone().lookup(r))
    }
}

impl OriginMeta {
    async fn lookup(self, r: MetaRequest) -> Result<Arc<ObjectMeta>, Error> {
        let OriginMeta {
            origin: o,
            prefetched,
            clustered,
            store: stored,
            origin_id,
            base_chunk,
            tiers,
        } = self;
        // In a cluster the chunk may belong to another replica, which fills it itself. Nor
        // when the store is shared: the chunk is probably there already.
        let first_read = r.first_read;
        let one_trip = first_read != FirstRead::Unknown
            && r.object.sel.is_current()
            && !clustered
            && !stored.is_shared();
        let (bucket, key) = (&*r.object.bucket, &*r.object.key);
        if one_trip {
            // One round trip: the GET of the bytes the client reads first also says what a
            // HEAD would; its bytes are parked for the read that follows at once.
            let asked = std::time::Instant::now();
            let got = match first_read {
                FirstRead::Suffix(n) => o.get_suffix(bucket, key, n).await,
                _ => o.get_first(bucket, key, base_chunk).await,
            };
            match got {
                Ok((meta, answer)) => {
                    let first_byte = asked.elapsed();
                    let meta = require_etag(meta)?;
                    let chunk_size = chunk_size_for(meta.size, base_chunk, &tiers);
                    // The bytes the answer carries, and whether a read will ask the origin
                    // for exactly those: the first chunk's fill; for a suffix, the direct
                    // read of a range deep in its chunk, or the fill of a one-chunk object.
                    let (bytes, taken) = match first_read {
                        FirstRead::Suffix(n) => {
                            let start = meta.size - n.min(meta.size);
                            let deep =
                                start % chunk_size >= crate::read::lookup::DIRECT_RANGE_AFTER;
                            (
                                start..meta.size,
                                deep || (start == 0 && meta.size <= chunk_size),
                            )
                        }
                        _ => (0..base_chunk.min(meta.size), true),
                    };
                    // An origin that ignored the Range sends the whole object: not those
                    // bytes, unless they are the whole object.
                    let ranged = answer.content_range.is_some()
                        || (bytes.start == 0 && bytes.end == meta.size);
                    // Metadata can expire while the chunk stays stored: then no read would
                    // take the answer, and dropping it now closes it at once.
                    let at = ChunkKey {
                        origin_id,
                        bucket: r.object.bucket.clone(),
                        key: r.object.key.clone(),
                        etag: meta.etag.as_str().into(),
                        chunk_size,
                        index: bytes.start / chunk_size.max(1),
                    };
                    if !bytes.is_empty() && ranged && taken && !stored.contains(&at) {
                        prefetched.park(bucket, key, &meta.etag, bytes, answer, first_byte);
                    }
                    return Ok(meta);
                }
                Err(
                    e @ (OriginError::NotFound
                    | OriginError::NoSuchBucket
                    | OriginError::Unauthorized(_)),
                ) => return Err(Error::Origin(e)),
                // Anything else (an empty object's range, a transient failure): ask HEAD,
                // and let the fill retry the bytes as it always does.
                Err(e) => tracing::debug!(error = %e, "one-trip GET failed; asking HEAD"),
            }
        }
        let m = o
            .head_selected(bucket, key, &r.object.sel)
            .await
            .map_err(Error::Origin)?;
        require_etag(m)
    }
}
