//! The shared S3 cachestore (`store.kind = "s3"`): chunks kept as objects at their chunk
//! path in one bucket of an S3-compatible store that every replica reads and writes, as orca
//! does.
//!
//! - **Reads** are ranged GETs on the chunk object, checked for length. A missing object is a
//!   miss, never an error: the bucket's lifecycle rules may delete any chunk at any time. A
//!   read that fails or ends short after its first byte is an error *in the stream*, which the
//!   chunk reader turns into a continuation from the fill at the exact byte reached.
//! - **Presence** is remembered in a bounded in-memory catalog (moka), so that a hit costs no
//!   HEAD. The catalog only ever says "probably here": a GET that finds nothing forgets the
//!   entry. Before a fill goes to the origin it asks the bucket itself ([`ChunkStore::present`]),
//!   so a chunk that another replica stored is a hit here too.
//! - **Commits are no-clobber**: `PutObject` with `If-None-Match: *` where the store supports
//!   it (found out by the start-up self-test), else stat-then-put as orca does. A lost race is
//!   not an error: the chunk's path pins its bytes (the ETag is in it), so whoever won wrote
//!   the same bytes. Chunks stream into the upload as the fill receives them; chunks of
//!   [`MULTIPART_FROM`] and more go up as multipart uploads in parts of [`PART_SIZE`], so no
//!   writer ever holds more than one part.
//! - **Capacity** is the bucket's business (lifecycle rules), not Shoal's.

use super::{ChunkStore, ChunkWriter, Committed, StoreError, StoreStats};
use crate::config::StoreConfig;
use crate::error::Error;
use crate::model::ByteStream;
use crate::model::ChunkKey;
use async_trait::async_trait;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::Client;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Chunks at least this big are uploaded as multipart.
pub const MULTIPART_FROM: u64 = 64 << 20;
/// Part size of a multipart chunk upload (S3's minimum is 5 MiB).
pub const PART_SIZE: usize = 16 << 20;
/// How long one request to the store may take to answer (its body may take longer).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// Chunks kept in a shared S3-compatible bucket.
pub struct S3Store {
    client: Client,
    bucket: String,
    prefix: String,
    /// Chunks known to be in the bucket (shared with the writers, which record commits).
    catalog: Catalog,
    /// Whether the store refuses a `PutObject` with `If-None-Match: *` over an existing
    /// object (else commits stat first).
    conditional_put: bool,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("conditional_put", &self.conditional_put)
            .finish_non_exhaustive()
    }
}

fn io<E: ProvideErrorMetadata + std::fmt::Debug>(what: &str, e: &SdkError<E>) -> StoreError {
    let status = e.raw_response().map(|r| r.status().as_u16());
    let detail = match (e.code(), e.message()) {
        (Some(c), Some(m)) => format!("{c}: {m}"),
        (Some(c), None) => c.to_owned(),
        _ => format!("{e:?}").chars().take(200).collect(),
    };
    match status {
        Some(s) => StoreError::Io(format!("{what}: HTTP {s} {detail}")),
        None => StoreError::Io(format!("{what}: {detail}")),
    }
}

fn not_found<E: ProvideErrorMetadata>(e: &SdkError<E>) -> bool {
    e.raw_response().is_some_and(|r| r.status().as_u16() == 404)
        || matches!(e.code(), Some("NoSuchKey" | "NotFound"))
}

/// A `PutObject`/`CompleteMultipartUpload` refused because the object is already there.
fn lost_race<E: ProvideErrorMetadata>(e: &SdkError<E>) -> bool {
    e.raw_response()
        .is_some_and(|r| matches!(r.status().as_u16(), 409 | 412))
        || matches!(
            e.code(),
            Some("PreconditionFailed" | "ConditionalRequestConflict")
        )
}

async fn within<T>(
    what: &str,
    fut: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(ANSWER_TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| {
            Err(StoreError::Io(format!(
                "{what}: no answer within {ANSWER_TIMEOUT:?}"
            )))
        })
}

impl S3Store {
    /// Connects to the bucket and runs the self-test: the bucket must exist, be readable and
    /// writable with these credentials, and not be versioned (orca's gate: chunks are
    /// immutable, so a versioned bucket would only pile up copies). The error names the
    /// bucket and the reason.
    pub async fn open(cfg: &StoreConfig) -> Result<Self, Error> {
        let bucket = cfg
            .bucket
            .clone()
            .ok_or_else(|| Error::internal("store.bucket is required"))?;
        let creds = cfg
            .access_key_id
            .as_deref()
            .zip(cfg.secret_access_key.as_deref());
        let client = crate::sdk::sdk_client(
            cfg.endpoint.as_deref(),
            &cfg.region,
            cfg.force_path_style,
            creds,
        )
        .await;
        let prefix = match cfg.prefix.trim_end_matches('/') {
            "" => String::new(),
            p => format!("{p}/"),
        };
        let mut store = S3Store {
            client,
            bucket,
            prefix,
            catalog: Catalog::new(cfg.catalog_entries),
            conditional_put: false,
        };
        store.conditional_put = store.self_test().await.map_err(|why| {
            Error::Store(
                format!(
                    "store bucket `{}` failed the start-up self-test: {why}",
                    store.bucket
                )
                .into(),
            )
        })?;
        tracing::info!(
            bucket = %store.bucket,
            prefix = %store.prefix,
            no_clobber = if store.conditional_put { "If-None-Match" } else { "stat-then-put" },
            "s3 store ready"
        );
        Ok(store)
    }

    /// Versioning gate, then put, read back and delete a probe object; also finds out whether
    /// the store honours `If-None-Match: *` on PUT. Returns that.
    async fn self_test(&self) -> Result<bool, String> {
        let status = within("GetBucketVersioning", async {
            match self
                .client
                .get_bucket_versioning()
                .bucket(&self.bucket)
                .send()
                .await
            {
                Ok(v) => Ok(v.status().map(|s| s.as_str().to_owned())),
                // A 200 the SDK could not parse (some S3-compatible stores name the root
                // element differently): read the status from the document itself.
                Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 200) => {
                    let body = e
                        .raw_response()
                        .and_then(|r| r.body().bytes())
                        .map(|b| String::from_utf8_lossy(b).into_owned())
                        .unwrap_or_default();
                    Ok(body
                        .split_once("<Status>")
                        .and_then(|(_, rest)| rest.split_once("</Status>"))
                        .map(|(s, _)| s.trim().to_owned())
                        .filter(|s| !s.is_empty()))
                }
                Err(e) => Err(io("GetBucketVersioning", &e)),
            }
        })
        .await
        .map_err(|e| describe(&e))?;
        if let Some(status) = status {
            return Err(format!(
                "the bucket has versioning {status}; chunks are immutable and written again \
                 only with the same bytes, so a versioned bucket would pile up copies — use a \
                 bucket without versioning"
            ));
        }
        let token: u64 = {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos()),
            );
            h.finish()
        };
        let probe = format!("{}_shoal-selftest/{token:016x}", self.prefix);
        let body = Bytes::from_static(b"shoal-selftest");
        let put = |cond: bool| {
            let mut p = self
                .client
                .put_object()
                .bucket(&self.bucket)
                .key(&probe)
                .body(body.clone().into());
            if cond {
                p = p.if_none_match("*");
            }
            p.send()
        };
        within("PutObject", async {
            put(false).await.map_err(|e| io("PutObject", &e))
        })
        .await
        .map_err(|e| describe(&e))?;
        let got = within("GetObject", async {
            let out = self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(&probe)
                .send()
                .await
                .map_err(|e| io("GetObject", &e))?;
            out.body
                .collect()
                .await
                .map(|b| b.into_bytes())
                .map_err(|e| StoreError::Io(format!("GetObject body: {e}")))
        })
        .await
        .map_err(|e| describe(&e))?;
        if got != body {
            return Err("the probe object read back different bytes".into());
        }
        // A second PUT with If-None-Match: * over the probe must be refused where no-clobber
        // PUTs are supported; anything else means "not supported" (stat-then-put instead).
        let conditional = match put(true).await {
            Err(e) if lost_race(&e) => true,
            Ok(_) => false,
            Err(e) => {
                tracing::debug!(error = %io("conditional PutObject", &e), "no If-None-Match on PUT");
                false
            }
        };
        if let Err(e) = self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(&probe)
            .send()
            .await
        {
            tracing::warn!(error = %io("DeleteObject", &e), probe, "could not delete the self-test probe");
        }
        Ok(conditional)
    }

    fn object(&self, key: &ChunkKey) -> String {
        format!("{}{}", self.prefix, key.path())
    }

    fn remember(&self, key: &ChunkKey, len: u64) {
        self.catalog.remember(key, len);
    }

    fn forget(&self, key: &ChunkKey) {
        self.catalog.chunks.invalidate(key);
    }

    /// Whether the object is in the bucket (HEAD), and its length.
    async fn stat(&self, key: &ChunkKey) -> Result<Option<u64>, StoreError> {
        within("HeadObject", async {
            match self
                .client
                .head_object()
                .bucket(&self.bucket)
                .key(self.object(key))
                .send()
                .await
            {
                Ok(h) => Ok(Some(h.content_length().unwrap_or(0).max(0) as u64)),
                Err(e) if not_found(&e) => Ok(None),
                Err(e) => Err(io("HeadObject", &e)),
            }
        })
        .await
    }
}

/// The reason of a self-test failure in words an operator can act on.
fn describe(e: &StoreError) -> String {
    let s = e.to_string();
    if s.contains("NoSuchBucket") || (s.contains("HTTP 404") && s.contains("GetBucketVersioning")) {
        "the bucket does not exist".into()
    } else if s.contains("HTTP 403") || s.contains("HTTP 401") {
        format!("the store refused Shoal's credentials ({s})")
    } else {
        s
    }
}

#[async_trait]
impl ChunkStore for S3Store {
    async fn get(
        &self,
        key: &ChunkKey,
        range: Range<u64>,
    ) -> Result<Option<ByteStream>, StoreError> {
        if range.start > range.end {
            return Err(StoreError::Io(format!("bad range {range:?}")));
        }
        if range.is_empty() {
            return Ok(self
                .present(key)
                .await
                .then(|| futures_util::stream::empty().boxed()));
        }
        let want = range.end - range.start;
        let answer = within("GetObject", async {
            match self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(self.object(key))
                .range(format!("bytes={}-{}", range.start, range.end - 1))
                .send()
                .await
            {
                Ok(out) => Ok(Some(out)),
                Err(e) if not_found(&e) => Ok(None),
                // Shorter than the range asked for: not the chunk it should be.
                Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 416) => {
                    tracing::warn!(chunk = ?key, "store object shorter than its chunk; ignored");
                    Ok(None)
                }
                Err(e) => Err(io("GetObject", &e)),
            }
        })
        .await?;
        let Some(out) = answer else {
            // Evicted by the bucket's lifecycle rules (or never there): a miss.
            self.forget(key);
            return Ok(None);
        };
        if out.content_length() != Some(want as i64) {
            tracing::warn!(chunk = ?key, got = ?out.content_length(), want, "store answered the wrong length; ignored");
            self.forget(key);
            return Ok(None);
        }
        if range.start == 0 {
            if let Some(total) = out
                .content_range()
                .and_then(crate::wire::parse_content_range)
                .and_then(|(_, _, t)| t)
            {
                self.remember(key, total);
            }
        }
        // Bytes are counted, and a body that ends early or fails is an error in the stream
        // (the reader continues from the fill at the byte reached).
        let label = format!("{key:?}");
        let stream =
            futures_util::stream::unfold((out.body, 0u64, false), move |(mut body, got, done)| {
                let label = label.clone();
                async move {
                    if done {
                        return None;
                    }
                    match tokio::time::timeout(ANSWER_TIMEOUT, body.next()).await {
                        Ok(Some(Ok(b))) => {
                            let got = got + b.len() as u64;
                            if got > want {
                                return Some((
                                    Err(Error::Store(
                                        format!("store object {label} longer than its range")
                                            .into(),
                                    )),
                                    (body, got, true),
                                ));
                            }
                            Some((Ok(b), (body, got, false)))
                        }
                        Ok(Some(Err(e))) => Some((
                            Err(Error::Store(format!("store read of {label}: {e}").into())),
                            (body, got, true),
                        )),
                        Ok(None) if got < want => Some((
                            Err(Error::Store(
                                format!("store read of {label} ended after {got} of {want} bytes")
                                    .into(),
                            )),
                            (body, got, true),
                        )),
                        Ok(None) => None,
                        Err(_) => Some((
                            Err(Error::Store(
                                format!("store read of {label} stalled").into(),
                            )),
                            (body, got, true),
                        )),
                    }
                }
            });
        Ok(Some(stream.boxed()))
    }

    async fn begin(&self, key: &ChunkKey, len: u64) -> Result<Box<dyn ChunkWriter>, StoreError> {
        let object = self.object(key);
        let target = Target {
            client: self.client.clone(),
            bucket: self.bucket.clone(),
            object,
            key: key.clone(),
            len,
            conditional: self.conditional_put,
        };
        if !self.conditional_put || len >= MULTIPART_FROM {
            // Stat-then-put (and, for multipart, a cheap way to skip a whole upload).
            if let Some(have) = self.stat(key).await? {
                if have == len {
                    self.remember(key, len);
                    return Ok(Box::new(Present { len, written: 0 }));
                }
            }
        }
        if len >= MULTIPART_FROM {
            let up = within("CreateMultipartUpload", async {
                target
                    .client
                    .create_multipart_upload()
                    .bucket(&target.bucket)
                    .key(&target.object)
                    .send()
                    .await
                    .map_err(|e| io("CreateMultipartUpload", &e))
            })
            .await?;
            let upload_id = up
                .upload_id()
                .ok_or_else(|| StoreError::Io("CreateMultipartUpload: no upload id".into()))?
                .to_owned();
            return Ok(Box::new(Multipart {
                target,
                upload_id: Some(upload_id),
                part: BytesMut::new(),
                parts: Vec::new(),
                written: 0,
                catalog: self.catalog.clone(),
            }));
        }
        // One streaming PUT of exactly `len` bytes: the body is fed as the fill writes.
        let (tx, body) = http_body_util::channel::Channel::<Bytes, std::io::Error>::new(4);
        let t = target.clone();
        let upload = tokio::spawn(async move {
            let mut p = t
                .client
                .put_object()
                .bucket(&t.bucket)
                .key(&t.object)
                .content_length(t.len as i64)
                .body(aws_sdk_s3::primitives::ByteStream::new(
                    aws_smithy_types::body::SdkBody::from_body_1_x(body),
                ));
            if t.conditional {
                p = p.if_none_match("*");
            }
            match p.send().await {
                Ok(_) => Ok(()),
                Err(e) if lost_race(&e) => Ok(()),
                Err(e) => Err(io("PutObject", &e)),
            }
        });
        Ok(Box::new(Single {
            target,
            tx: Some(tx),
            upload: Some(tokio_util::task::AbortOnDropHandle::new(upload)),
            written: 0,
            catalog: self.catalog.clone(),
        }))
    }

    fn contains(&self, key: &ChunkKey) -> bool {
        self.catalog.chunks.contains_key(key)
    }

    fn wanted(&self, key: &ChunkKey) {
        // A lookup, hit or miss, is what moka's frequency sketch counts.
        let _ = self.catalog.chunks.get(key);
    }

    async fn present(&self, key: &ChunkKey) -> bool {
        if self.contains(key) {
            return true;
        }
        match self.stat(key).await {
            Ok(Some(len)) if len > 0 => {
                self.remember(key, len);
                true
            }
            Ok(_) => false,
            Err(e) => {
                tracing::debug!(chunk = ?key, error = %e, "store presence check failed; filling");
                false
            }
        }
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            used_bytes: self.catalog.known_bytes.load(Ordering::Relaxed),
            chunks: self.catalog.chunks.entry_count(),
            failed_commits: self.catalog.failed_commits.load(Ordering::Relaxed),
            ..StoreStats::default()
        }
    }
}

/// The presence catalog and the store's counters, shared by the store and its writers (which
/// record their commits in it).
#[derive(Clone)]
struct Catalog {
    /// Chunks known to be in the bucket, with their length.
    chunks: moka::sync::Cache<ChunkKey, u64>,
    /// Bytes of the chunks in the catalog.
    known_bytes: Arc<AtomicU64>,
    failed_commits: Arc<AtomicU64>,
}

impl Catalog {
    /// A catalog of at most `entries` chunks; `known_bytes` follows its entries both ways
    /// (added by [`remember`](Self::remember), taken back when an entry leaves).
    fn new(entries: u64) -> Self {
        let known_bytes = Arc::new(AtomicU64::new(0));
        let kb = known_bytes.clone();
        let chunks = moka::sync::Cache::builder()
            .max_capacity(entries)
            .eviction_listener(move |_k, len: u64, _cause| {
                kb.fetch_sub(len, Ordering::Relaxed);
            })
            .build();
        Catalog {
            chunks,
            known_bytes,
            failed_commits: Arc::default(),
        }
    }

    fn remember(&self, key: &ChunkKey, len: u64) {
        if !self.chunks.contains_key(key) {
            self.known_bytes.fetch_add(len, Ordering::Relaxed);
        }
        self.chunks.insert(key.clone(), len);
    }

    /// Counts a commit that failed (the chunk is simply not cached).
    fn failed<T>(&self, e: StoreError) -> Result<T, StoreError> {
        self.failed_commits.fetch_add(1, Ordering::Relaxed);
        Err(e)
    }
}

#[derive(Clone)]
struct Target {
    client: Client,
    bucket: String,
    object: String,
    key: ChunkKey,
    len: u64,
    conditional: bool,
}

fn check_len(written: u64, promised: u64) -> Result<(), StoreError> {
    if written == promised {
        Ok(())
    } else {
        Err(StoreError::Length {
            wrote: written,
            promised,
        })
    }
}

/// The chunk is already in the bucket: the bytes are counted and dropped.
struct Present {
    len: u64,
    written: u64,
}

#[async_trait]
impl ChunkWriter for Present {
    async fn write(&mut self, bytes: Bytes) -> Result<(), StoreError> {
        self.written += bytes.len() as u64;
        Ok(())
    }
    async fn commit(self: Box<Self>) -> Result<Committed, StoreError> {
        check_len(self.written, self.len)?;
        Ok(Committed::Kept)
    }
}

/// One streaming PUT.
struct Single {
    target: Target,
    tx: Option<http_body_util::channel::Sender<Bytes, std::io::Error>>,
    upload: Option<tokio_util::task::AbortOnDropHandle<Result<(), StoreError>>>,
    written: u64,
    catalog: Catalog,
}

#[async_trait]
impl ChunkWriter for Single {
    async fn write(&mut self, bytes: Bytes) -> Result<(), StoreError> {
        self.written += bytes.len() as u64;
        if self.written > self.target.len {
            return Err(StoreError::Length {
                wrote: self.written,
                promised: self.target.len,
            });
        }
        let tx = self
            .tx
            .as_mut()
            .ok_or_else(|| StoreError::Io("writer closed".into()))?;
        if tx.send_data(bytes).await.is_err() {
            // The upload ended early: its error is the one to report.
            let up = self.upload.take();
            return Err(match up {
                Some(h) => match h.await {
                    Ok(Err(e)) => e,
                    _ => StoreError::Io("PutObject ended before the chunk was sent".into()),
                },
                None => StoreError::Io("PutObject ended before the chunk was sent".into()),
            });
        }
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> Result<Committed, StoreError> {
        if let Err(e) = check_len(self.written, self.target.len) {
            if let Some(tx) = self.tx.take() {
                tx.abort(std::io::Error::other("short chunk"));
            }
            return Err(e);
        }
        drop(self.tx.take());
        let up = self
            .upload
            .take()
            .ok_or_else(|| StoreError::Io("no upload".into()))?;
        match up.await {
            Ok(Ok(())) => {
                self.catalog.remember(&self.target.key, self.target.len);
                Ok(Committed::Kept)
            }
            Ok(Err(e)) => self.catalog.failed(e),
            Err(e) => self
                .catalog
                .failed(StoreError::Io(format!("PutObject task: {e}"))),
        }
    }
}

impl Drop for Single {
    fn drop(&mut self) {
        // Not committed: the body fails, so the store never sees a complete object (and the
        // upload task is aborted with its handle).
        if let Some(tx) = self.tx.take() {
            tx.abort(std::io::Error::other("chunk abandoned"));
        }
    }
}

/// A multipart upload, one part buffered at a time.
struct Multipart {
    target: Target,
    upload_id: Option<String>,
    part: BytesMut,
    parts: Vec<aws_sdk_s3::types::CompletedPart>,
    written: u64,
    catalog: Catalog,
}

impl Multipart {
    async fn flush(&mut self) -> Result<(), StoreError> {
        if self.part.is_empty() {
            return Ok(());
        }
        let n = self.parts.len() as i32 + 1;
        let body = self.part.split().freeze();
        let t = &self.target;
        let id = self.upload_id.clone().unwrap_or_default();
        let out = within("UploadPart", async {
            t.client
                .upload_part()
                .bucket(&t.bucket)
                .key(&t.object)
                .upload_id(id)
                .part_number(n)
                .body(body.into())
                .send()
                .await
                .map_err(|e| io("UploadPart", &e))
        })
        .await?;
        self.parts.push(
            aws_sdk_s3::types::CompletedPart::builder()
                .part_number(n)
                .set_e_tag(out.e_tag().map(str::to_owned))
                .build(),
        );
        Ok(())
    }
}

#[async_trait]
impl ChunkWriter for Multipart {
    async fn write(&mut self, bytes: Bytes) -> Result<(), StoreError> {
        self.written += bytes.len() as u64;
        if self.written > self.target.len {
            return Err(StoreError::Length {
                wrote: self.written,
                promised: self.target.len,
            });
        }
        self.part.extend_from_slice(&bytes);
        if self.part.len() >= PART_SIZE {
            self.flush().await?;
        }
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> Result<Committed, StoreError> {
        check_len(self.written, self.target.len)?;
        self.flush().await?;
        let id = self.upload_id.clone().unwrap_or_default();
        let t = self.target.clone();
        let parts = std::mem::take(&mut self.parts);
        let done = within("CompleteMultipartUpload", async {
            let mut c = t
                .client
                .complete_multipart_upload()
                .bucket(&t.bucket)
                .key(&t.object)
                .upload_id(id)
                .multipart_upload(
                    aws_sdk_s3::types::CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                );
            if t.conditional {
                c = c.if_none_match("*");
            }
            match c.send().await {
                Ok(_) => Ok(()),
                Err(e) if lost_race(&e) => Ok(()),
                Err(e) => Err(io("CompleteMultipartUpload", &e)),
            }
        })
        .await;
        // Completed (or lost to an identical chunk): nothing to abort any more.
        let id = self.upload_id.take();
        match done {
            Ok(()) => {
                self.catalog.remember(&t.key, t.len);
                Ok(Committed::Kept)
            }
            Err(e) => {
                self.upload_id = id;
                self.catalog.failed(e)
            }
        }
    }
}

impl Drop for Multipart {
    fn drop(&mut self) {
        // Abandoned: abort the upload so the store frees its parts (best effort).
        if let Some(id) = self.upload_id.take() {
            let t = self.target.clone();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = t
                        .client
                        .abort_multipart_upload()
                        .bucket(&t.bucket)
                        .key(&t.object)
                        .upload_id(id)
                        .send()
                        .await;
                });
            }
        }
    }
}
