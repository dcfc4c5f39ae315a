//! GET planning: which chunks a request needs, the first one before headers, the rest read
//! ahead and delivered in order.
//!
//! Headers go out only once the first chunk's source has answered with its first bytes. Until
//! then any failure is still a clean S3 error with the right status; after it, a failure can
//! only cut the response short (SPEC §1.4). Waiting for first bytes — not for the whole first
//! chunk — keeps time to first byte close to the origin's own.
//!
//! Readahead asks the chunk stack for up to `chunk.readahead` chunks past the one being sent.
//! Asking is what starts a fill (the fill itself runs detached in the singleflight layer), so
//! the origin works on the next chunks while the current one streams out; order is kept by
//! consuming the answers strictly in index order.

use crate::chunk::{chunk_size_for, slices, ChunkKey, ChunkRequest, Tier};
use crate::error::{Error, OriginError};
use crate::origin::{ByteStream, ObjectMeta};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{Stream, StreamExt};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio_util::task::AbortOnDropHandle;
use tower::util::BoxCloneSyncService;
use tower::ServiceExt;

/// The chunk stack, type-erased: `ChunkRequest` → the requested bytes.
pub type ChunkService = BoxCloneSyncService<ChunkRequest, ByteStream, Error>;

/// Identifies an object at the origin; the key of the metadata cache.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectRef {
    /// Bucket.
    pub bucket: Arc<str>,
    /// Key.
    pub key: Arc<str>,
}

/// The metadata stack, type-erased: `ObjectRef` → metadata with a non-empty ETag.
pub type MetaService = BoxCloneSyncService<ObjectRef, Arc<ObjectMeta>, Error>;

/// Plans and streams object reads over the chunk stack.
#[derive(Clone)]
pub struct ObjectService {
    origin_id: Arc<str>,
    meta: MetaService,
    invalidate: Arc<dyn Fn(ObjectRef) -> BoxFuture<'static, ()> + Send + Sync>,
    chunks: ChunkService,
    base_chunk: u64,
    tiers: Arc<[Tier]>,
    readahead: usize,
}

impl ObjectService {
    /// Builds the service. `invalidate` forgets cached metadata of an object (called when the
    /// origin says the ETag changed).
    pub fn new(
        origin_id: Arc<str>,
        meta: MetaService,
        invalidate: Arc<dyn Fn(ObjectRef) -> BoxFuture<'static, ()> + Send + Sync>,
        chunks: ChunkService,
        base_chunk: u64,
        tiers: Vec<Tier>,
        readahead: usize,
    ) -> Self {
        ObjectService {
            origin_id,
            meta,
            invalidate,
            chunks,
            base_chunk,
            tiers: tiers.into(),
            readahead,
        }
    }

    /// Current metadata of an object (cached; one origin HEAD per key at a time).
    pub async fn head(&self, bucket: &str, key: &str) -> Result<Arc<ObjectMeta>, Error> {
        use tracing::Instrument;
        self.meta
            .clone()
            .oneshot(ObjectRef {
                bucket: bucket.into(),
                key: key.into(),
            })
            .instrument(tracing::debug_span!("head", bucket, key))
            .await
    }

    /// Forgets cached metadata of an object.
    pub async fn invalidate(&self, bucket: &str, key: &str) {
        (self.invalidate)(ObjectRef {
            bucket: bucket.into(),
            key: key.into(),
        })
        .await
    }

    /// Streams bytes `start..=end` of the version `meta` describes. Resolves once the first
    /// bytes are in hand (or the range is empty), so an error here is still a clean one.
    pub async fn open(
        &self,
        bucket: &str,
        key: &str,
        meta: &ObjectMeta,
        start: u64,
        end: u64,
    ) -> Result<ByteStream, Error> {
        let chunk_size = chunk_size_for(meta.size, self.base_chunk, &self.tiers);
        let bucket: Arc<str> = bucket.into();
        let key: Arc<str> = key.into();
        let etag: Arc<str> = meta.etag.as_str().into();
        let mut reqs: VecDeque<ChunkRequest> = slices(start, end, chunk_size, meta.size)
            .into_iter()
            .map(|s| ChunkRequest {
                key: ChunkKey {
                    origin_id: self.origin_id.clone(),
                    bucket: bucket.clone(),
                    key: key.clone(),
                    etag: etag.clone(),
                    chunk_size,
                    index: s.index,
                },
                object_size: meta.size,
                range: s.range,
            })
            .collect();
        let Some(first) = reqs.pop_front() else {
            return Ok(futures_util::stream::empty().boxed());
        };
        let mut body = self.chunks.clone().oneshot(first).await?;
        let head = match body.next().await {
            Some(Ok(b)) => b,
            Some(Err(e)) => return Err(e),
            None => Bytes::new(),
        };
        let current: ByteStream = futures_util::stream::iter([Ok(head)]).chain(body).boxed();
        Ok(Readahead {
            chunks: self.chunks.clone(),
            todo: reqs,
            pending: VecDeque::new(),
            current: Some(current),
            depth: self.readahead,
            failed: false,
            span: tracing::Span::current(),
        }
        .boxed())
    }
}

/// Streams chunks in order while up to `depth` later chunks are being opened.
struct Readahead {
    chunks: ChunkService,
    todo: VecDeque<ChunkRequest>,
    pending: VecDeque<AbortOnDropHandle<Result<ByteStream, Error>>>,
    current: Option<ByteStream>,
    depth: usize,
    failed: bool,
    /// The request's span: chunk opens run in it although hyper polls the body elsewhere.
    span: tracing::Span,
}

impl Readahead {
    fn top_up(&mut self) {
        let want = if self.current.is_none() {
            self.depth.max(1)
        } else {
            self.depth
        };
        while self.pending.len() < want {
            let Some(r) = self.todo.pop_front() else {
                break;
            };
            let svc = self.chunks.clone();
            let task = tracing::Instrument::instrument(svc.oneshot(r), self.span.clone());
            self.pending
                .push_back(AbortOnDropHandle::new(tokio::spawn(task)));
        }
    }
}

impl Stream for Readahead {
    type Item = Result<Bytes, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.failed {
            return Poll::Ready(None);
        }
        loop {
            this.top_up();
            if let Some(cur) = this.current.as_mut() {
                match cur.poll_next_unpin(cx) {
                    Poll::Ready(Some(Err(e))) => {
                        this.failed = true;
                        return Poll::Ready(Some(Err(e)));
                    }
                    Poll::Ready(Some(ok)) => return Poll::Ready(Some(ok)),
                    Poll::Ready(None) => this.current = None,
                    Poll::Pending => return Poll::Pending,
                }
                continue;
            }
            let Some(front) = this.pending.front_mut() else {
                return Poll::Ready(None);
            };
            match Pin::new(front).poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(res) => {
                    this.pending.pop_front();
                    match res {
                        Ok(Ok(s)) => this.current = Some(s),
                        Ok(Err(e)) => {
                            this.failed = true;
                            return Poll::Ready(Some(Err(e)));
                        }
                        Err(join) => {
                            this.failed = true;
                            return Poll::Ready(Some(Err(Error::internal(format!(
                                "chunk task failed: {join}"
                            )))));
                        }
                    }
                }
            }
        }
    }
}

/// Turns an origin HEAD answer into cacheable metadata: no ETag means no version to pin, which
/// is an error of its own (negatively cached, SPEC §1.4).
pub fn require_etag(meta: ObjectMeta) -> Result<Arc<ObjectMeta>, Error> {
    if meta.etag.is_empty() {
        Err(Error::Origin(OriginError::MissingEtag))
    } else {
        Ok(Arc::new(meta))
    }
}
