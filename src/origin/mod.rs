//! Origins: where misses are filled from.
//!
//! The [`Origin`] trait is the boundary between Shoal and the outside store. It is small on
//! purpose — HEAD, one ranged GET pinned by ETag, and LIST — so that tests can wrap a real
//! origin (counting requests, injecting faults) at exactly the point where the origin is asked.

mod azure;
mod local;
mod s3;

pub use azure::AzureOrigin;
pub use local::LocalOrigin;
pub use s3::S3Origin;

use crate::config::HedgeAfter;
use crate::error::{Error, OriginError};
use crate::layer::gate::{Priority, Queued, Wait};
use crate::telemetry::metrics::{Metrics, OriginOutcome};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::SystemTime;

/// A stream of object bytes; errors are the crate's, so layers above can pass it on unchanged.
pub type ByteStream = BoxStream<'static, Result<Bytes, Error>>;

/// What a HEAD at the origin says about one object version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Size in bytes.
    pub size: u64,
    /// ETag without surrounding quotes; empty when the origin gave none.
    pub etag: String,
    /// `Content-Type`.
    pub content_type: Option<String>,
    /// `Last-Modified`.
    pub last_modified: Option<SystemTime>,
    /// `Cache-Control`.
    pub cache_control: Option<String>,
    /// `Content-Encoding`.
    pub content_encoding: Option<String>,
    /// `Content-Disposition`.
    pub content_disposition: Option<String>,
    /// `Content-Language`.
    pub content_language: Option<String>,
    /// `Expires`, verbatim.
    pub expires: Option<String>,
    /// `x-amz-meta-*` pairs (names without the prefix, lowercase), sorted by name.
    pub user_metadata: Vec<(String, String)>,
    /// `x-amz-version-id`, when the origin's bucket is versioned.
    pub version_id: Option<String>,
    /// `x-amz-mp-parts-count`: how many parts a multipart object has.
    pub parts_count: Option<u32>,
    /// The byte range `(first, last)` of the part asked for by number (`?partNumber=`).
    pub part_range: Option<(u64, u64)>,
    /// The object's stored checksums as the origin reported them (`x-amz-checksum-*` header
    /// names, lowercase, with `x-amz-checksum-type`); `None` when unknown (the metadata came
    /// from a ranged GET, which does not carry them).
    pub checksums: Option<Vec<(String, String)>>,
    /// The response headers this metadata implies, built on first use (see [`HeaderCache`]).
    pub headers: HeaderCache,
}

/// The response headers an object's metadata implies (ETag, Last-Modified, Content-Type,
/// user metadata…), built once per cached metadata entry: a warm GET then copies a prepared
/// map instead of formatting and allocating every value again (about ten allocations of the
/// ~58 a warm small GET made). Not part of the metadata's identity: metas compare equal
/// whatever it holds, and a clone starts empty, so a copy changed afterwards can never keep
/// headers of the original.
#[derive(Default)]
pub struct HeaderCache(std::sync::OnceLock<http::HeaderMap>);

impl HeaderCache {
    /// The headers, built by `build` the first time.
    pub fn get_or_init(&self, build: impl FnOnce() -> http::HeaderMap) -> &http::HeaderMap {
        self.0.get_or_init(build)
    }
}

impl Clone for HeaderCache {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl PartialEq for HeaderCache {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for HeaderCache {}

impl std::fmt::Debug for HeaderCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "built"
        } else {
            "empty"
        })
    }
}

/// Which variant of an object a read means: the current version (the default), a specific
/// version (`?versionId=`), and/or one part of a multipart object (`?partNumber=`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Selector {
    /// `versionId`.
    pub version_id: Option<Arc<str>>,
    /// `partNumber`.
    pub part_number: Option<u32>,
}

impl Selector {
    /// The current version, whole.
    pub fn is_current(&self) -> bool {
        self.version_id.is_none() && self.part_number.is_none()
    }
}

/// A bucket as ListBuckets names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketInfo {
    /// Name.
    pub name: String,
    /// `CreationDate`, when the origin says.
    pub created: Option<SystemTime>,
}

/// A ListBuckets answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BucketList {
    /// The buckets.
    pub buckets: Vec<BucketInfo>,
    /// The owner (id, display name), as the origin names it.
    pub owner: Option<(String, Option<String>)>,
}

/// A read-only request Shoal does not cache, sent to the origin as the client made it (with
/// Shoal's credentials): sub-resources such as `?tagging` or `?versions`, and SSE-C reads.
#[derive(Debug, Clone)]
pub struct RawRequest {
    /// GET or HEAD.
    pub method: http::Method,
    /// Bucket.
    pub bucket: String,
    /// Key; empty for a bucket sub-resource.
    pub key: String,
    /// The client's query parameters (decoded), minus its own authentication.
    pub query: Vec<(String, String)>,
    /// The client's headers worth forwarding (ranges, conditionals, SSE-C, attributes).
    pub headers: http::HeaderMap,
}

/// The origin's answer to a [`RawRequest`], passed on as it is.
pub struct RawAnswer {
    /// Status.
    pub status: http::StatusCode,
    /// Headers (hop-by-hop ones removed).
    pub headers: http::HeaderMap,
    /// Body.
    pub body: ByteStream,
}

/// Which LIST API a client used; the answer keeps that shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListVersion {
    /// ListObjects (marker based).
    V1,
    /// ListObjectsV2 (continuation-token based).
    V2,
}

/// A LIST request with every S3 parameter.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ListRequest {
    /// V1 or V2.
    pub version: ListVersion,
    /// `prefix`.
    pub prefix: Option<String>,
    /// `delimiter`.
    pub delimiter: Option<String>,
    /// `max-keys` (already clamped to 0..=1000).
    pub max_keys: i32,
    /// V2 `continuation-token`.
    pub continuation_token: Option<String>,
    /// V2 `start-after`.
    pub start_after: Option<String>,
    /// V1 `marker`.
    pub marker: Option<String>,
    /// V2 `fetch-owner`.
    pub fetch_owner: bool,
    /// `encoding-type=url`: the origin URL-encodes keys and echoed values.
    pub encoding_url: bool,
}

/// One object of a LIST page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListEntry {
    /// Key.
    pub key: String,
    /// Last-Modified.
    pub last_modified: Option<SystemTime>,
    /// ETag as the origin listed it (quotes kept).
    pub etag: Option<String>,
    /// Size.
    pub size: u64,
    /// Storage class.
    pub storage_class: Option<String>,
    /// Owner (id, display name), when asked for and given.
    pub owner: Option<(String, Option<String>)>,
}

/// One LIST page, in the origin's own order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListPage {
    /// Objects.
    pub contents: Vec<ListEntry>,
    /// Common prefixes (with delimiter).
    pub common_prefixes: Vec<String>,
    /// More pages follow.
    pub is_truncated: bool,
    /// V2: token for the next page.
    pub next_continuation_token: Option<String>,
    /// V1: marker for the next page (when a delimiter was given).
    pub next_marker: Option<String>,
    /// The request's prefix as the origin echoed it.
    pub prefix: Option<String>,
    /// `MaxKeys` as the origin echoed it (stores differ on `max-keys=0`).
    pub max_keys: Option<i32>,
    /// The request's delimiter as the origin echoed it.
    pub delimiter: Option<String>,
    /// V2: the request's start-after as the origin echoed it.
    pub start_after: Option<String>,
    /// V1: the request's marker as the origin echoed it.
    pub marker: Option<String>,
    /// Keys, prefixes and echoed values are URL-encoded (`encoding-type=url`). The origin's
    /// own encoding is passed through untouched, so Shoal's listing is the origin's.
    pub url_encoded: bool,
}

/// URL-encodes a LIST value for `encoding-type=url` (used where Shoal lists by itself, in the
/// local origin): RFC 3986 unreserved characters and `/` are kept.
pub fn url_encode(s: &str) -> String {
    use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
    const KEEP: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~')
        .remove(b'/');
    utf8_percent_encode(s, KEEP).to_string()
}

/// Percent-encodes a query component (or any value that must survive a URL untouched):
/// everything but RFC 3986 unreserved characters. One encoder for every URL Shoal builds —
/// origin requests it signs, pass-through queries, `/internal/fill` chunk keys.
pub fn encode_component(s: &str) -> String {
    use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
    const KEEP: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    utf8_percent_encode(s, KEEP).to_string()
}

/// The origin Shoal fills from.
#[async_trait]
pub trait Origin: Send + Sync + 'static {
    /// Metadata of the current version of an object.
    async fn head(&self, bucket: &str, key: &str) -> Result<ObjectMeta, OriginError>;

    /// Metadata of one version and/or part of an object (`?versionId=`, `?partNumber=`). An
    /// origin without versions or parts answers the current object to an empty selector and
    /// refuses any other.
    async fn head_selected(
        &self,
        bucket: &str,
        key: &str,
        sel: &Selector,
    ) -> Result<ObjectMeta, OriginError> {
        if sel.is_current() {
            return self.head(bucket, key).await;
        }
        Err(OriginError::Unsupported(
            "object versions and parts are not supported by this origin".into(),
        ))
    }

    /// Sends a request Shoal does not cache to the origin as the client made it (with
    /// Shoal's credentials) and hands back its answer, error or not, unchanged.
    async fn passthrough(&self, req: RawRequest) -> Result<RawAnswer, OriginError> {
        let _ = req;
        Err(OriginError::Unsupported(
            "this request is not supported by this origin".into(),
        ))
    }

    /// The bytes `req` asks for, of the version whose ETag is `req.etag`, pinned with
    /// `If-Match` where the origin supports it. The answer carries what the origin said about
    /// itself (ETag, `Content-Range`, length); [`verify`] checks it before any byte is used, so
    /// an implementation reports, it does not judge.
    async fn get_range(&self, req: &RangeRequest) -> Result<RangeAnswer, OriginError>;

    /// The object's metadata and its first `len` bytes (fewer if it is smaller), in one
    /// round trip where the origin can: a GET of `bytes=0-(len-1)` answers with everything a
    /// HEAD would, so a cold GET need not ask twice. The answer is what the origin said, for
    /// [`verify`]; the default asks HEAD, then the range pinned to the HEAD's ETag.
    async fn get_first(
        &self,
        bucket: &str,
        key: &str,
        len: u64,
    ) -> Result<(ObjectMeta, RangeAnswer), OriginError> {
        let meta = self.head(bucket, key).await?;
        let req = RangeRequest::new(bucket, key, &meta.etag, meta.size, 0, len.min(meta.size));
        let answer = self.get_range(&req).await?;
        Ok((meta, answer))
    }

    /// The object's metadata and its last `len` bytes (all of it if it is smaller), in one
    /// round trip where the origin can: a GET of `bytes=-len` — a Parquet reader's first read
    /// of a file, its footer — answers with the object's size and everything a HEAD would. The
    /// default asks HEAD, then the range pinned to the HEAD's ETag.
    async fn get_suffix(
        &self,
        bucket: &str,
        key: &str,
        len: u64,
    ) -> Result<(ObjectMeta, RangeAnswer), OriginError> {
        let meta = self.head(bucket, key).await?;
        let n = len.min(meta.size);
        let req = RangeRequest::new(bucket, key, &meta.etag, meta.size, meta.size - n, n);
        let answer = self.get_range(&req).await?;
        Ok((meta, answer))
    }

    /// One LIST page.
    async fn list(&self, bucket: &str, req: &ListRequest) -> Result<ListPage, OriginError>;

    /// Whether the bucket exists and can be read.
    async fn head_bucket(&self, bucket: &str) -> Result<(), OriginError>;

    /// The buckets the origin credentials can see, with their creation dates and owner.
    async fn list_buckets(&self) -> Result<BucketList, OriginError>;

    /// The region Shoal reports for GetBucketLocation.
    fn region(&self) -> &str;
}

#[async_trait]
impl<T: Origin + ?Sized> Origin for Arc<T> {
    async fn head(&self, bucket: &str, key: &str) -> Result<ObjectMeta, OriginError> {
        (**self).head(bucket, key).await
    }
    async fn get_range(&self, req: &RangeRequest) -> Result<RangeAnswer, OriginError> {
        (**self).get_range(req).await
    }
    async fn get_first(
        &self,
        bucket: &str,
        key: &str,
        len: u64,
    ) -> Result<(ObjectMeta, RangeAnswer), OriginError> {
        (**self).get_first(bucket, key, len).await
    }
    async fn get_suffix(
        &self,
        bucket: &str,
        key: &str,
        len: u64,
    ) -> Result<(ObjectMeta, RangeAnswer), OriginError> {
        (**self).get_suffix(bucket, key, len).await
    }
    async fn list(&self, bucket: &str, req: &ListRequest) -> Result<ListPage, OriginError> {
        (**self).list(bucket, req).await
    }
    async fn head_bucket(&self, bucket: &str) -> Result<(), OriginError> {
        (**self).head_bucket(bucket).await
    }
    async fn list_buckets(&self) -> Result<BucketList, OriginError> {
        (**self).list_buckets().await
    }
    async fn head_selected(
        &self,
        bucket: &str,
        key: &str,
        sel: &Selector,
    ) -> Result<ObjectMeta, OriginError> {
        (**self).head_selected(bucket, key, sel).await
    }
    async fn passthrough(&self, req: RawRequest) -> Result<RawAnswer, OriginError> {
        (**self).passthrough(req).await
    }
    fn region(&self) -> &str {
        (**self).region()
    }
}

/// A ranged read of one object version: `len` bytes at `offset`, pinned by `etag`.
#[derive(Debug, Clone)]
pub struct RangeRequest {
    /// Bucket.
    pub bucket: Arc<str>,
    /// Key.
    pub key: Arc<str>,
    /// The version; the origin must refuse if the object no longer has it.
    pub etag: Arc<str>,
    /// The version id a client asked for (`?versionId=`): read that version, not the
    /// current one.
    pub version_id: Option<Arc<str>>,
    /// Size of that version: the total an origin's `Content-Range` must state.
    pub object_size: u64,
    /// First byte.
    pub offset: u64,
    /// Byte count.
    pub len: u64,
    /// Urgent (a client waits) or speculative (readahead); decides the queue for a slot.
    pub priority: Option<Priority>,
    /// How long the request may wait for an origin slot.
    pub wait: Wait,
}

impl RangeRequest {
    /// An urgent read of `len` bytes at `offset` of the version `etag` (of `object_size` bytes).
    pub fn new(
        bucket: &str,
        key: &str,
        etag: &str,
        object_size: u64,
        offset: u64,
        len: u64,
    ) -> Self {
        RangeRequest {
            bucket: bucket.into(),
            key: key.into(),
            etag: etag.into(),
            version_id: None,
            object_size,
            offset,
            len,
            priority: None,
            wait: Wait::Default,
        }
    }
}

impl RangeRequest {
    /// The origin read behind a chunk request: its range, pinned to its version, with its
    /// priority and wait.
    pub fn for_chunk(r: crate::read::chunk::ChunkRequest) -> Self {
        let k = &r.key;
        RangeRequest {
            bucket: k.bucket.clone(),
            key: k.key.clone(),
            etag: k.etag.clone(),
            version_id: r.version_id.clone(),
            object_size: r.object_size,
            offset: k.offset() + r.range.start,
            len: r.range.end - r.range.start,
            priority: r.priority.clone(),
            wait: r.wait,
        }
    }
}

impl Queued for RangeRequest {
    fn priority(&self) -> Option<&Priority> {
        self.priority.as_ref()
    }
    fn wait(&self) -> Wait {
        self.wait
    }
}

impl crate::layer::Resumable for RangeRequest {
    fn expected_len(&self) -> Option<u64> {
        Some(self.len)
    }
    fn resume_from(&self, delivered: u64) -> Self {
        let d = delivered.min(self.len);
        RangeRequest {
            offset: self.offset + d,
            len: self.len - d,
            ..self.clone()
        }
    }
}

/// What an origin answered to a ranged read, before it is trusted.
pub struct RangeAnswer {
    /// The ETag of the bytes in the body (quotes allowed).
    pub etag: Option<String>,
    /// `Content-Range` as sent; `None` for an answer without one (200).
    pub content_range: Option<String>,
    /// `Content-Length` as sent.
    pub content_length: Option<u64>,
    /// The bytes.
    pub body: ByteStream,
}

impl std::fmt::Debug for RangeAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RangeAnswer")
            .field("etag", &self.etag)
            .field("content_range", &self.content_range)
            .field("content_length", &self.content_length)
            .finish_non_exhaustive()
    }
}

/// Checks an origin's answer against the request: the ETag must be the pinned one, and the
/// `Content-Range` start, end and total and the length must be exactly what was asked.
///
/// Any mismatch is reported as [`OriginError::EtagChanged`]: whatever the cause (an origin or a
/// proxy that ignores `If-Match`, an object overwritten with another size, a store that
/// ignores `Range`), these bytes are not the pinned version's bytes at this offset, and the
/// only safe move is to forget the cached metadata and read the object afresh. Trusting the
/// answer instead would commit another version's bytes under this version's key, forever.
pub fn verify(req: &RangeRequest, a: &RangeAnswer) -> Result<(), OriginError> {
    let changed = |why: String| {
        tracing::warn!(
            bucket = %req.bucket, key = %req.key, offset = req.offset, len = req.len,
            "origin answer does not match the pinned version: {why}"
        );
        Err(OriginError::EtagChanged)
    };
    let etag = a
        .etag
        .as_deref()
        .map(|e| e.trim().trim_start_matches("W/").trim_matches('"'));
    if etag != Some(&*req.etag) {
        return changed(format!("ETag {:?}, pinned {:?}", a.etag, req.etag));
    }
    let end = req.offset + req.len - 1;
    match a.content_range.as_deref() {
        Some(cr) => match crate::wire::parse_content_range(cr) {
            Some((s, e, Some(t))) if s == req.offset && e == end && t == req.object_size => {}
            _ => {
                return changed(format!(
                    "Content-Range {cr:?}, asked bytes {}-{end}/{}",
                    req.offset, req.object_size
                ))
            }
        },
        // A whole-object answer is acceptable only when the whole object is what was asked.
        None if req.offset == 0 && req.len == req.object_size => {}
        None => return changed("no Content-Range on a ranged read".into()),
    }
    if a.content_length != Some(req.len) {
        return changed(format!(
            "Content-Length {:?}, asked {}",
            a.content_length, req.len
        ));
    }
    Ok(())
}

/// Answers that a cold GET's metadata lookup received ([`Origin::get_first`],
/// [`Origin::get_suffix`]), parked until the chunk stack asks the origin for bytes starting
/// where the answer starts: that read takes the bytes already on their way instead of asking
/// again. An answer nobody takes (the client went away, a conditional GET was answered 304,
/// the chunk was in the store after all) is dropped after [`Prefetched::KEEP`], which closes
/// its connection.
#[derive(Clone, Default)]
pub struct Prefetched {
    parked: Arc<std::sync::Mutex<std::collections::HashMap<PrefetchKey, Parked>>>,
}

type PrefetchKey = (Arc<str>, Arc<str>, Arc<str>);

struct Parked {
    /// Where the answer's bytes start in the object.
    offset: u64,
    /// Bytes the answer carries.
    len: u64,
    answer: RangeAnswer,
    /// How long the origin took to answer (counted when a fill takes the answer).
    first_byte: std::time::Duration,
    /// Tells a parked answer from a later one of the same key when it expires.
    id: u64,
}

impl Prefetched {
    /// How long an answer waits for its fill.
    pub const KEEP: std::time::Duration = std::time::Duration::from_secs(10);

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<PrefetchKey, Parked>> {
        crate::layer::lock(&self.parked)
    }

    /// Parks `bytes` of version `etag` of `bucket/key`, which the origin took `first_byte`
    /// to start answering.
    pub fn park(
        &self,
        bucket: &str,
        key: &str,
        etag: &str,
        bytes: std::ops::Range<u64>,
        answer: RangeAnswer,
        first_byte: std::time::Duration,
    ) {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let k: PrefetchKey = (bucket.into(), key.into(), etag.into());
        self.lock().insert(
            k.clone(),
            Parked {
                offset: bytes.start,
                len: bytes.end.saturating_sub(bytes.start),
                answer,
                id,
                first_byte,
            },
        );
        let weak = Arc::downgrade(&self.parked);
        tokio::spawn(async move {
            tokio::time::sleep(Self::KEEP).await;
            if let Some(parked) = weak.upgrade() {
                let mut map = crate::layer::lock(&parked);
                if map.get(&k).is_some_and(|p| p.id == id) {
                    map.remove(&k);
                }
            }
        });
    }

    /// Takes the parked bytes of version `etag` of `bucket/key` if they start at `offset`:
    /// `(len, answer, time the origin took to answer)`.
    pub fn take(
        &self,
        bucket: &str,
        key: &str,
        etag: &str,
        offset: u64,
    ) -> Option<(u64, RangeAnswer, std::time::Duration)> {
        let k: PrefetchKey = (bucket.into(), key.into(), etag.into());
        let mut map = self.lock();
        if map.get(&k)?.offset != offset {
            return None;
        }
        map.remove(&k).map(|p| (p.len, p.answer, p.first_byte))
    }

    /// Answers parked right now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing is parked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The origin as a tower service of ranged reads: the bottom of the chunk stack. Every answer
/// is [`verify`]-ed here, once, whatever the origin kind.
#[derive(Clone)]
pub struct OriginRanges {
    origin: Arc<dyn Origin>,
    metrics: Metrics,
    prefetched: Prefetched,
    /// `fill.hedge_after` (never `Off`), and the origin slots a hedge must take one of.
    hedge: Option<(HedgeAfter, crate::layer::Gate)>,
    /// Recent first-byte times of successful GETs (for `hedge_after = "p95"`).
    latency: Arc<LatencyWindow>,
}

/// The last [`LatencyWindow::SIZE`] first-byte times of origin GETs, and their 95th
/// percentile. A hedge at the p95 is sent for about one GET in twenty — those in the tail —
/// whatever the origin's normal latency is, so it needs no tuning per origin.
#[derive(Debug, Default)]
pub struct LatencyWindow {
    ring: std::sync::Mutex<(Vec<u32>, usize, usize)>,
    /// The p95 in microseconds, recomputed every [`LatencyWindow::EVERY`] samples; 0 = not
    /// known yet.
    p95_micros: std::sync::atomic::AtomicU64,
}

impl LatencyWindow {
    /// Samples kept.
    pub const SIZE: usize = 256;
    /// Samples needed before a percentile is trusted.
    pub const MIN: usize = 32;
    /// The percentile is recomputed after this many new samples (a sort of 256 numbers).
    const EVERY: usize = 16;

    /// Records one first-byte time.
    pub fn record(&self, d: std::time::Duration) {
        let micros = u32::try_from(d.as_micros()).unwrap_or(u32::MAX).max(1);
        let sorted = {
            let mut g = crate::layer::lock(&self.ring);
            let (ring, next, fresh) = &mut *g;
            if ring.len() < Self::SIZE {
                ring.push(micros);
            } else {
                ring[*next] = micros;
            }
            *next = (*next + 1) % Self::SIZE;
            *fresh += 1;
            if ring.len() < Self::MIN || *fresh < Self::EVERY {
                return;
            }
            *fresh = 0;
            ring.clone()
        };
        let mut v = sorted;
        v.sort_unstable();
        let p = v[(v.len() * 95 / 100).min(v.len() - 1)];
        self.p95_micros
            .store(u64::from(p), std::sync::atomic::Ordering::Relaxed);
    }

    /// The 95th percentile, once at least [`LatencyWindow::MIN`] GETs have been seen.
    pub fn p95(&self) -> Option<std::time::Duration> {
        match self.p95_micros.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            m => Some(std::time::Duration::from_micros(m)),
        }
    }
}

impl OriginRanges {
    /// Wraps an origin.
    pub fn new(origin: Arc<dyn Origin>) -> Self {
        OriginRanges {
            origin,
            metrics: Metrics::new(),
            prefetched: Prefetched::default(),
            hedge: None,
            latency: Arc::default(),
        }
    }

    /// Hedges a GET that has not answered within `after` with a second one, when `slots` (the
    /// origin concurrency limit's) has one free; the first answer wins, the other is dropped,
    /// which cancels it. At most one hedge per request. `Off` (or a zero delay) = never.
    pub fn hedge(mut self, after: HedgeAfter, slots: crate::layer::Gate) -> Self {
        self.hedge = match after {
            HedgeAfter::Off => None,
            HedgeAfter::After(d) if d.is_zero() => None,
            a => Some((a, slots)),
        };
        self
    }

    /// Records first-byte times in `window` (shared, so the process can read its p95).
    pub fn latency_window(mut self, window: Arc<LatencyWindow>) -> Self {
        self.latency = window;
        self
    }

    /// Serves a chunk that starts at byte 0 from `prefetched` when its answer is parked there.
    pub fn prefetched(mut self, prefetched: Prefetched) -> Self {
        self.prefetched = prefetched;
        self
    }

    /// Counts origin requests (by outcome), bytes and bodies in flight in `metrics`.
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }
}

fn outcome(e: &OriginError) -> OriginOutcome {
    match e {
        OriginError::NotFound | OriginError::NoSuchBucket => OriginOutcome::NotFound,
        OriginError::EtagChanged => OriginOutcome::EtagChanged,
        OriginError::Throttled(_) => OriginOutcome::Throttled,
        OriginError::Unauthorized(_) => OriginOutcome::Unauthorized,
        _ => OriginOutcome::Error,
    }
}

/// Counts a body's bytes and marks it in flight until it ends or is dropped; the origin
/// request's span lasts as long and is told the bytes received.
struct Metered {
    body: ByteStream,
    metrics: Metrics,
    done: bool,
    bytes: u64,
    span: tracing::Span,
}

impl futures_util::Stream for Metered {
    type Item = Result<Bytes, Error>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let item = self.body.poll_next_unpin(cx);
        match &item {
            std::task::Poll::Ready(Some(Ok(b))) => {
                self.metrics.origin_bytes(b.len() as u64);
                self.bytes += b.len() as u64;
            }
            std::task::Poll::Ready(_) if !self.done => {
                self.done = true;
                self.metrics.origin_inflight(-1);
                self.span.record("bytes", self.bytes);
            }
            _ => {}
        }
        item
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        if !self.done {
            self.metrics.origin_inflight(-1);
            self.span.record("bytes", self.bytes);
        }
    }
}

impl tower::Service<RangeRequest> for OriginRanges {
    type Response = ByteStream;
    type Error = Error;
    type Future = futures_util::future::BoxFuture<'static, Result<ByteStream, Error>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, r: RangeRequest) -> Self::Future {
        let origin = self.origin.clone();
        let metrics = self.metrics.clone();
        let parked = self.prefetched.take(&r.bucket, &r.key, &r.etag, r.offset);
        let latency = self.latency.clone();
        let hedge = self.hedge.clone().and_then(|(after, slots)| match after {
            HedgeAfter::After(d) => Some((d, slots)),
            // Until the origin's normal latency is known, nothing counts as slow.
            HedgeAfter::P95 => latency.p95().map(|d| (d, slots)),
            HedgeAfter::Off => None,
        });
        use tracing::Instrument;
        let span = tracing::debug_span!(
            "origin_get",
            otel.kind = "client",
            bucket = %r.bucket,
            key = %r.key,
            offset = r.offset,
            len = r.len,
            outcome = tracing::field::Empty,
            bytes = tracing::field::Empty,
        );
        let held = span.clone();
        Box::pin(
            async move {
                if r.len == 0 {
                    return Ok(futures_util::stream::empty().boxed());
                }
                let answer = match parked {
                    // The bytes the metadata lookup's GET is already receiving.
                    Some((len, answer, first_byte)) if len > 0 && len <= r.len => {
                        metrics.origin_first_byte(first_byte);
                        latency.record(first_byte);
                        first_then_rest(origin, &r, len, answer)
                    }
                    _ => {
                        let asked = std::time::Instant::now();
                        let answer = match hedge {
                            Some((after, slots)) => hedged(&origin, &r, after, &slots).await,
                            None => origin.get_range(&r).await,
                        };
                        let first_byte = asked.elapsed();
                        metrics.origin_first_byte(first_byte);
                        if answer.is_ok() {
                            latency.record(first_byte);
                        }
                        answer.and_then(|a| verify(&r, &a).map(|()| a))
                    }
                };
                let answer = match answer {
                    Ok(a) => a,
                    Err(e) => {
                        let o = outcome(&e);
                        metrics.origin(o);
                        tracing::Span::current().record("outcome", o.as_str());
                        return Err(Error::Origin(e));
                    }
                };
                metrics.origin(OriginOutcome::Ok);
                tracing::Span::current().record("outcome", "ok");
                metrics.origin_inflight(1);
                Ok(Metered {
                    body: answer.body,
                    metrics,
                    done: false,
                    bytes: 0,
                    span: held,
                }
                .boxed())
            }
            .instrument(span),
        )
    }
}

/// `origin.get_range(r)`, with a second identical GET sent if the first has not answered
/// within `after` and `slots` has a free slot (taken without waiting, held only while both
/// run). The first to answer wins — a failed answer waits for the other — and dropping the
/// other cancels it.
async fn hedged(
    origin: &Arc<dyn Origin>,
    r: &RangeRequest,
    after: std::time::Duration,
    slots: &crate::layer::Gate,
) -> Result<RangeAnswer, OriginError> {
    let mut first = origin.get_range(r);
    let permit = tokio::select! {
        a = &mut first => return a,
        () = tokio::time::sleep(after) => slots.try_acquire(1, r.priority.as_ref()),
    };
    let Some(_permit) = permit else {
        // Every origin slot is busy: a hedge would only queue behind other chunks.
        return first.await;
    };
    tracing::debug!(bucket = %r.bucket, key = %r.key, offset = r.offset, "hedging a slow origin GET");
    let second = origin.get_range(r);
    let (a, other) = match futures_util::future::select(first, second).await {
        futures_util::future::Either::Left((a, other)) => (a, other),
        futures_util::future::Either::Right((a, other)) => (a, other),
    };
    match a {
        Ok(a) => Ok(a),
        Err(_) => other.await,
    }
}

/// The answer for `r` from a parked answer of its first `len` bytes: verified as such, then
/// followed — when `r` is longer (a bigger size tier's first chunk) — by a pinned GET of the rest,
/// itself verified before any of its bytes are used.
fn first_then_rest(
    origin: Arc<dyn Origin>,
    r: &RangeRequest,
    len: u64,
    first: RangeAnswer,
) -> Result<RangeAnswer, OriginError> {
    let mut head = r.clone();
    head.len = len;
    verify(&head, &first)?;
    if len == r.len {
        return Ok(first);
    }
    let mut rest = r.clone();
    rest.offset = r.offset + len;
    rest.len = r.len - len;
    let tail = futures_util::stream::once(async move {
        match origin.get_range(&rest).await {
            Ok(a) => match verify(&rest, &a) {
                Ok(()) => a.body,
                Err(e) => futures_util::stream::iter([Err(Error::Origin(e))]).boxed(),
            },
            Err(e) => futures_util::stream::iter([Err(Error::Origin(e))]).boxed(),
        }
    })
    .flatten();
    Ok(RangeAnswer {
        etag: first.etag,
        content_range: Some(format!(
            "bytes {}-{}/{}",
            r.offset,
            r.offset + r.len - 1,
            r.object_size
        )),
        content_length: Some(r.len),
        body: first.body.chain(tail).boxed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latency_window_knows_its_p95_only_after_enough_gets() {
        use std::time::Duration;
        let w = LatencyWindow::default();
        for ms in 1..LatencyWindow::MIN as u64 {
            w.record(Duration::from_millis(ms));
        }
        assert_eq!(w.p95(), None, "31 samples are not enough");
        // 1..=160 ms (recomputed every 16 samples, so exactly at the last one): the 95th
        // percentile is about 152 ms.
        let w = LatencyWindow::default();
        for ms in 1..=160u64 {
            w.record(Duration::from_millis(ms));
        }
        let p = w.p95().expect("a p95 after 160 samples");
        assert!(
            p >= Duration::from_millis(150) && p <= Duration::from_millis(154),
            "{p:?}"
        );
        // The window follows the origin: 256 fast GETs later the slow past is forgotten.
        for _ in 0..LatencyWindow::SIZE {
            w.record(Duration::from_millis(2));
        }
        assert_eq!(w.p95(), Some(Duration::from_millis(2)));
    }

    fn req(offset: u64, len: u64, size: u64) -> RangeRequest {
        RangeRequest::new("b", "k", "abc", size, offset, len)
    }

    fn ans(etag: Option<&str>, cr: Option<&str>, len: Option<u64>) -> RangeAnswer {
        RangeAnswer {
            etag: etag.map(str::to_owned),
            content_range: cr.map(str::to_owned),
            content_length: len,
            body: futures_util::stream::empty().boxed(),
        }
    }

    #[test]
    fn answers_are_checked_field_by_field() {
        let r = req(10, 5, 100);
        assert!(verify(&r, &ans(Some("\"abc\""), Some("bytes 10-14/100"), Some(5))).is_ok());
        let bad = [
            ans(Some("\"other\""), Some("bytes 10-14/100"), Some(5)), // If-Match ignored
            ans(None, Some("bytes 10-14/100"), Some(5)),              // no ETag
            ans(Some("abc"), Some("bytes 10-14/200"), Some(5)),       // another size
            ans(Some("abc"), Some("bytes 0-4/100"), Some(5)),         // Range ignored
            ans(Some("abc"), Some("bytes 10-15/100"), Some(6)),       // wrong end
            ans(Some("abc"), Some("bytes 10-14/*"), Some(5)),         // unknown total
            ans(Some("abc"), None, Some(100)),                        // whole object
            ans(Some("abc"), Some("bytes 10-14/100"), Some(4)),       // wrong length
            ans(Some("abc"), Some("garbage"), Some(5)),
        ];
        for a in bad {
            assert_eq!(verify(&r, &a), Err(OriginError::EtagChanged), "{a:?}");
        }
        // The whole object, asked as such, may come without a Content-Range.
        assert!(verify(&req(0, 100, 100), &ans(Some("abc"), None, Some(100))).is_ok());
    }
}
