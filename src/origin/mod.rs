//! Origins: where misses are filled from.
//!
//! The [`Origin`] trait is the boundary between Shoal and the outside store. It is small on
//! purpose — HEAD, one ranged GET pinned by ETag, and LIST — so that tests can wrap a real
//! origin (counting requests, injecting faults) at exactly the point where the origin is asked.
//!
//! Below the trait, the bottom of the chunk stack: [`OriginRanges`] (`ranges.rs`: ranged reads
//! as a tower service, metered), every answer [`verify`]-ed (`verify.rs`), a slow GET hedged
//! (`hedge.rs`), and the first-chunk answers of cold metadata lookups parked for the fill that
//! takes them (`prefetch.rs`). The plain types they answer with live in `crate::model`.

mod azure;
mod hedge;
mod local;
mod prefetch;
mod ranges;
mod s3;
mod verify;

pub use azure::AzureOrigin;
pub use hedge::LatencyWindow;
pub use local::LocalOrigin;
pub use prefetch::Prefetched;
pub use ranges::OriginRanges;
pub use s3::S3Origin;
pub use verify::verify;
// The plain types of `crate::model` that the `Origin` trait speaks, for its implementors.
pub use crate::model::{
    encode_component, url_encode, BucketInfo, BucketList, ByteStream, ListEntry, ListPage,
    ListRequest, ListVersion, ObjectMeta, Selector,
};

use crate::error::OriginError;
use crate::layer::gate::{Priority, Queued, Wait};
use async_trait::async_trait;
use std::sync::Arc;

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
