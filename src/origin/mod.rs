//! Origins: where misses are filled from.
//!
//! The [`Origin`] trait is the boundary between Shoal and the outside store. It is small on
//! purpose — HEAD, one ranged GET pinned by ETag, and LIST — so that tests can wrap a real
//! origin (counting requests, injecting faults) at exactly the point where the origin is asked.

mod local;
mod s3;

pub use local::LocalOrigin;
pub use s3::S3Origin;

use crate::error::{Error, OriginError};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;
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
}

/// Which LIST API a client used; the answer keeps that shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListVersion {
    /// ListObjects (marker based).
    V1,
    /// ListObjectsV2 (continuation-token based).
    V2,
}

/// A LIST request with every S3 parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// The origin Shoal fills from.
#[async_trait]
pub trait Origin: Send + Sync + 'static {
    /// Metadata of the current version of an object.
    async fn head(&self, bucket: &str, key: &str) -> Result<ObjectMeta, OriginError>;

    /// `len` bytes at `offset` of the version whose ETag is `etag`. An implementation must
    /// answer [`OriginError::EtagChanged`] if the object no longer has that ETag, and must never
    /// return bytes other than exactly the requested range.
    async fn get_range(
        &self,
        bucket: &str,
        key: &str,
        etag: &str,
        offset: u64,
        len: u64,
    ) -> Result<ByteStream, OriginError>;

    /// One LIST page.
    async fn list(&self, bucket: &str, req: &ListRequest) -> Result<ListPage, OriginError>;

    /// Whether the bucket exists and can be read.
    async fn head_bucket(&self, bucket: &str) -> Result<(), OriginError>;

    /// The buckets the origin credentials can see (ListBuckets when no allowlist is set).
    async fn list_buckets(&self) -> Result<Vec<String>, OriginError>;

    /// The region Shoal reports for GetBucketLocation.
    fn region(&self) -> &str;
}

#[async_trait]
impl<T: Origin + ?Sized> Origin for Arc<T> {
    async fn head(&self, bucket: &str, key: &str) -> Result<ObjectMeta, OriginError> {
        (**self).head(bucket, key).await
    }
    async fn get_range(
        &self,
        bucket: &str,
        key: &str,
        etag: &str,
        offset: u64,
        len: u64,
    ) -> Result<ByteStream, OriginError> {
        (**self).get_range(bucket, key, etag, offset, len).await
    }
    async fn list(&self, bucket: &str, req: &ListRequest) -> Result<ListPage, OriginError> {
        (**self).list(bucket, req).await
    }
    async fn head_bucket(&self, bucket: &str) -> Result<(), OriginError> {
        (**self).head_bucket(bucket).await
    }
    async fn list_buckets(&self) -> Result<Vec<String>, OriginError> {
        (**self).list_buckets().await
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
    /// First byte.
    pub offset: u64,
    /// Byte count.
    pub len: u64,
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

/// The origin as a tower service of ranged reads: the bottom of the chunk stack.
#[derive(Clone)]
pub struct OriginRanges {
    origin: Arc<dyn Origin>,
}

impl OriginRanges {
    /// Wraps an origin.
    pub fn new(origin: Arc<dyn Origin>) -> Self {
        OriginRanges { origin }
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
        use tracing::Instrument;
        let span = tracing::debug_span!("origin_get", bucket = %r.bucket, key = %r.key, offset = r.offset, len = r.len);
        Box::pin(
            async move {
                origin
                    .get_range(&r.bucket, &r.key, &r.etag, r.offset, r.len)
                    .await
                    .map_err(Error::Origin)
            }
            .instrument(span),
        )
    }
}
