//! GET planning: which chunks a request needs, the first one before headers, the rest read
//! ahead and delivered in order.
//!
//! Headers go out only once the first chunk's source has answered with its first bytes. Until
//! then any failure is still a clean S3 error with the right status; after it, a failure can
//! only cut the response short (SPEC §1.4). Waiting for first bytes — not for the whole first
//! chunk — keeps time to first byte close to the origin's own.
//!
//! **Readahead** asks the chunk stack for chunks past the one being sent, as *speculative*
//! requests: their fills wait behind every client's current chunk for memory and origin slots
//! (nearer readahead first), and they are cancelled if this GET goes away before reaching them.
//! The window adapts to the reader: it starts at two chunks and doubles, up to
//! `chunk.readahead` chunks and `chunk.readahead_bytes`, each time the reader reaches a chunk
//! that is not there yet. A slow reader, which never catches up with its readahead, keeps a
//! short window and holds little memory and few origin slots; a fast one grows the window it
//! needs to read at the origin's full parallel speed. When the reader reaches a chunk its
//! request is raised to urgent in place. If that readahead failed or was refused meanwhile, the
//! chunk is simply asked for again, urgently: readahead can never cut a response short by
//! itself.
//!
//! **Versions.** An origin that says the object changed (ETag mismatch) or is gone (404) while
//! any chunk is read makes Shoal forget its cached metadata for that version at once, so the
//! next request sees the new version instead of failing until `metadata.ttl` runs out.

use crate::error::{Error, OriginError};
use crate::layer::gate::{Priority, Wait};
use crate::model::{chunk_size_for, slices, ChunkKey, Tier};
use crate::model::{ByteStream, ObjectMeta, Selector};
use crate::read::chunk::ChunkRequest;
use crate::read::meta::{FirstRead, InvalidateFn, MetaRequest, MetaService, ObjectRef};
use crate::store::ChunkStore;
use crate::telemetry::metrics::{CacheStatus, Report, Source};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{Stream, StreamExt};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};
use tokio_util::task::{AbortOnDropHandle, TaskTracker};
use tower::util::BoxCloneSyncService;
use tower::ServiceExt;

/// The chunk stack, type-erased: `ChunkRequest` → the requested bytes.
pub type ChunkService = BoxCloneSyncService<ChunkRequest, ByteStream, Error>;

/// How GETs read ahead and how long their chunks may wait.
#[derive(Clone, Debug)]
pub struct ReadPolicy {
    /// Chunks read ahead of the one being sent (`chunk.readahead`).
    pub readahead: usize,
    /// Bytes read ahead at most (`chunk.readahead_bytes`).
    pub readahead_bytes: u64,
    /// How long a chunk after the first may take to start once the reader needs it
    /// (`fill.retry.max_total`: the time a response may go without progress).
    pub progress_timeout: Duration,
}

/// Readahead window a GET starts with (chunks); it doubles when the reader catches up.
const INITIAL_READAHEAD: usize = 2;

/// Plans and streams object reads over the chunk stack.
#[derive(Clone)]
pub struct ObjectService {
    origin_id: Arc<str>,
    meta: MetaService,
    invalidate: InvalidateFn,
    chunks: ChunkService,
    base_chunk: u64,
    tiers: Arc<[Tier]>,
    policy: ReadPolicy,
    tasks: TaskTracker,
    /// For `x-shoal-cache`: which chunks are already here.
    store: Arc<dyn ChunkStore>,
}

impl ObjectService {
    /// Builds the service. `invalidate` forgets cached metadata of an object version (called
    /// when the origin says the ETag changed or the object is gone); `tasks` owns the short
    /// tasks this spawns (readahead opens, invalidations).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        origin_id: Arc<str>,
        meta: MetaService,
        invalidate: InvalidateFn,
        chunks: ChunkService,
        base_chunk: u64,
        tiers: Vec<Tier>,
        policy: ReadPolicy,
        tasks: TaskTracker,
        store: Arc<dyn ChunkStore>,
    ) -> Self {
        ObjectService {
            origin_id,
            meta,
            invalidate,
            chunks,
            base_chunk,
            tiers: tiers.into(),
            policy,
            tasks,
            store,
        }
    }

    /// Current metadata of an object (cached; one origin HEAD per key at a time). `report`,
    /// when given, learns whether it was cached.
    pub async fn head(
        &self,
        bucket: &str,
        key: &str,
        report: Option<&Arc<Report>>,
    ) -> Result<Arc<ObjectMeta>, Error> {
        self.meta(
            bucket,
            key,
            &Selector::default(),
            report,
            FirstRead::Unknown,
        )
        .await
    }

    /// Like [`ObjectService::head`], for a GET: `first_read` says what the GET reads first,
    /// so that a miss can be answered by that read's own origin GET.
    /// `sel` picks a version or part; only the current object can be learned from a GET.
    pub async fn meta(
        &self,
        bucket: &str,
        key: &str,
        sel: &Selector,
        report: Option<&Arc<Report>>,
        first_read: FirstRead,
    ) -> Result<Arc<ObjectMeta>, Error> {
        use tracing::Instrument;
        self.meta
            .clone()
            .oneshot(MetaRequest {
                object: ObjectRef {
                    bucket: bucket.into(),
                    key: key.into(),
                    sel: sel.clone(),
                },
                report: report.cloned(),
                first_read,
            })
            .instrument(tracing::debug_span!("metadata", bucket, key))
            .await
    }

    /// Forgets cached metadata of an object if it still holds the version `etag`.
    pub async fn invalidate(&self, bucket: &str, key: &str, sel: &Selector, etag: &str) {
        (self.invalidate)(
            ObjectRef {
                bucket: bucket.into(),
                key: key.into(),
                sel: sel.clone(),
            },
            etag.into(),
        )
        .await
    }

    /// Streams bytes `start..=end` of the version `meta` describes. Resolves once the first
    /// bytes are in hand (or the range is empty), so an error here is still a clean one; the
    /// status says where the bytes come from, as far as that is known then. `report` counts
    /// every chunk's source as it is read. `sel` is the version or part the metadata was
    /// looked up for: a specific version is read as that version.
    #[allow(clippy::too_many_arguments)]
    pub async fn open(
        &self,
        bucket: &str,
        key: &str,
        sel: &Selector,
        meta: &ObjectMeta,
        start: u64,
        end: u64,
        report: Arc<Report>,
    ) -> Result<(ByteStream, CacheStatus), Error> {
        let chunk_size = chunk_size_for(meta.size, self.base_chunk, &self.tiers);
        let bucket: Arc<str> = bucket.into();
        let key: Arc<str> = key.into();
        let etag: Arc<str> = meta.etag.as_str().into();
        let mut todo: VecDeque<ChunkRequest> = slices(start, end, chunk_size, meta.size)
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
                version_id: sel.version_id.clone(),
                range: s.range,
                priority: None,
                wait: Wait::Default,
                from_peer: false,
                bypass_store: false,
                report: Some(report.clone()),
            })
            .collect();

        let version = Version {
            object: ObjectRef {
                bucket: bucket.clone(),
                key: key.clone(),
                sel: sel.clone(),
            },
            etag,
            invalidate: self.invalidate.clone(),
        };
        let Some(first) = todo.pop_front() else {
            return Ok((futures_util::stream::empty().boxed(), CacheStatus::Hit));
        };
        let first = async {
            let mut body = self.chunks.clone().oneshot(first).await?;
            match body.next().await {
                Some(Ok(b)) => Ok((b, body)),
                Some(Err(e)) => Err(e),
                None => Ok((Bytes::new(), body)),
            }
        };
        let (head, body) = match first.await {
            Ok(v) => v,
            Err(e) => {
                if let Some(forget) = version.saw(&e) {
                    forget.await;
                }
                return Err(e);
            }
        };
        let stored = todo.iter().filter(|r| self.store.contains(&r.key)).count();
        let status = CacheStatus::of(report.first().unwrap_or(Source::Origin), stored, todo.len());
        let max_depth = self
            .policy
            .readahead
            .min((self.policy.readahead_bytes / chunk_size.max(1)) as usize);
        let stream = Readahead {
            chunks: self.chunks.clone(),
            todo,
            ahead: VecDeque::new(),
            depth: max_depth.min(INITIAL_READAHEAD),
            max_depth,
            current: Some(Current {
                stream: futures_util::stream::iter([Ok(head)]).chain(body).boxed(),
                retry: None,
                started: true,
                waited: true,
                deadline: None,
            }),
            opening: None,
            open_deadline: None,
            failed: false,
            failing: None,
            progress_timeout: self.policy.progress_timeout,
            version,
            tasks: self.tasks.clone(),
            span: tracing::Span::current(),
        }
        .boxed();
        Ok((stream, status))
    }
}

/// The object version a GET reads, and how to forget it when the origin says it is gone.
struct Version {
    object: ObjectRef,
    etag: Arc<str>,
    invalidate: InvalidateFn,
}

impl Version {
    /// Reacts to a chunk error: a changed or missing object invalidates its metadata. The
    /// caller awaits it before passing the error on, so that a client which sees the failure
    /// and asks again gets the new answer (not the forgotten version's metadata).
    fn saw(&self, e: &Error) -> Option<BoxFuture<'static, ()>> {
        if !matches!(
            e,
            Error::Origin(OriginError::EtagChanged | OriginError::NotFound)
        ) {
            return None;
        }
        tracing::info!(
            bucket = %self.object.bucket, key = %self.object.key,
            "object changed or vanished at the origin; forgetting its metadata"
        );
        Some((self.invalidate)(self.object.clone(), self.etag.clone()))
    }
}

/// A readahead request in flight: its cell (raised when the reader gets there) and the task
/// that opened it.
struct Ahead {
    req: ChunkRequest,
    priority: Priority,
    open: AbortOnDropHandle<Result<ByteStream, Error>>,
}

/// The chunk being sent.
struct Current {
    stream: ByteStream,
    /// For a chunk that came from readahead: the request to repeat, urgently, if it fails
    /// before its first byte.
    retry: Option<ChunkRequest>,
    /// Whether it has produced a byte.
    started: bool,
    /// Whether the reader has already had to wait for it (counted once).
    waited: bool,
    /// While it has nothing to send: when to give up waiting (armed when it first pends,
    /// cleared by every piece).
    deadline: Option<Pin<Box<Sleep>>>,
}

/// Streams chunks in order while later ones are read ahead.
struct Readahead {
    chunks: ChunkService,
    todo: VecDeque<ChunkRequest>,
    ahead: VecDeque<Ahead>,
    /// Chunks read ahead now, and at most.
    depth: usize,
    max_depth: usize,
    current: Option<Current>,
    /// The next chunk, asked for urgently; resolves to its stream.
    opening: Option<(BoxFuture<'static, Result<ByteStream, Error>>, ChunkRequest)>,
    /// While the reader waits for the next chunk to *open* (its urgent request, or the
    /// readahead task it caught up with): when to give up. A readahead request waits in the
    /// memory and origin queues with no deadline of its own (it is cancelled with its reader
    /// instead), and a request that joins another's fill waits as long as that fill does, so
    /// the reader's own wait needs this bound. Armed when the wait first pends, cleared when
    /// the chunk opens.
    open_deadline: Option<Pin<Box<Sleep>>>,
    /// A chunk failed: the stream is over.
    failed: bool,
    /// The error that ends the stream, once the metadata it invalidates is forgotten.
    failing: Option<(BoxFuture<'static, ()>, Error)>,
    progress_timeout: Duration,
    version: Version,
    tasks: TaskTracker,
    /// The request's span: chunk opens run in it although hyper polls the body elsewhere.
    span: tracing::Span,
}

impl Readahead {
    fn top_up(&mut self) {
        while self.ahead.len() < self.depth {
            let Some(mut r) = self.todo.pop_front() else {
                break;
            };
            // Ranked by distance from the reader: nearer readahead is served first.
            let p = Priority::speculative_at(self.ahead.len() as u32 + 1);
            r.priority = Some(p.clone());
            r.wait = Wait::Forever;
            let task = tracing::Instrument::instrument(
                self.chunks.clone().oneshot(r.clone()),
                self.span.clone(),
            );
            self.ahead.push_back(Ahead {
                req: r,
                priority: p,
                open: AbortOnDropHandle::new(self.tasks.spawn(task)),
            });
        }
    }

    /// Whether the reader has waited `progress_timeout` for the next chunk to open.
    fn open_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let waited = self.progress_timeout;
        let d = self
            .open_deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(Instant::now() + waited)));
        if d.as_mut().poll(cx).is_ready() {
            tracing::warn!("the next chunk did not open within {waited:?}; ending the response");
            return true;
        }
        false
    }

    fn deadline(&self) -> Option<Pin<Box<Sleep>>> {
        Some(Box::pin(tokio::time::sleep_until(
            Instant::now() + self.progress_timeout,
        )))
    }

    /// Asks for `r` urgently, as the chunk the reader needs now.
    fn open_now(&mut self, mut r: ChunkRequest) {
        r.priority = None;
        r.wait = Wait::Until(Instant::now() + self.progress_timeout);
        let fut = tracing::Instrument::instrument(
            self.chunks.clone().oneshot(r.clone()),
            self.span.clone(),
        );
        self.opening = Some((Box::pin(fut), r));
    }

    fn fail(&mut self, e: Error, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Error>>> {
        self.ahead.clear();
        match self.version.saw(&e) {
            Some(forget) => {
                self.failing = Some((forget, e));
                self.finish_failing(cx)
            }
            None => {
                self.failed = true;
                Poll::Ready(Some(Err(e)))
            }
        }
    }

    /// Forgets the metadata, then ends the stream with the error.
    fn finish_failing(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Error>>> {
        let Some((forget, _)) = self.failing.as_mut() else {
            return Poll::Ready(None);
        };
        if forget.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.failed = true;
        Poll::Ready(self.failing.take().map(|(_, e)| Err(e)))
    }
}

impl Stream for Readahead {
    type Item = Result<Bytes, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.failing.is_some() {
            return this.finish_failing(cx);
        }
        if this.failed {
            return Poll::Ready(None);
        }
        loop {
            this.top_up();
            if let Some(cur) = this.current.as_mut() {
                match cur.stream.poll_next_unpin(cx) {
                    Poll::Ready(Some(Ok(b))) => {
                        cur.started = true;
                        cur.deadline = None;
                        return Poll::Ready(Some(Ok(b)));
                    }
                    Poll::Ready(Some(Err(e))) => {
                        if let (false, Some(r)) = (cur.started, cur.retry.take()) {
                            // Readahead that failed (or was refused) before the reader got
                            // here: ask again, now as the reader's current need.
                            tracing::debug!(chunk = ?r.key, error = %e, "readahead failed; asking again");
                            this.current = None;
                            this.open_now(r);
                            continue;
                        }
                        return this.fail(e, cx);
                    }
                    Poll::Ready(None) => {
                        this.current = None;
                        continue;
                    }
                    Poll::Pending => {
                        if !cur.started && !cur.waited {
                            // The reader caught up with its readahead: read further ahead.
                            cur.waited = true;
                            this.depth = (this.depth * 2).min(this.max_depth);
                        }
                        // Before its first byte or between two pieces alike: a source that
                        // makes no progress for `progress_timeout` ends the response. Any fill
                        // still trying would have spent its retry budget by then, and a read
                        // parked in a queue (a refill behind the memory budget) must not hang
                        // the client for ever.
                        let waited = this.progress_timeout;
                        let d = cur.deadline.get_or_insert_with(|| {
                            Box::pin(tokio::time::sleep_until(Instant::now() + waited))
                        });
                        if d.as_mut().poll(cx).is_ready() {
                            tracing::warn!(
                                started = cur.started,
                                "a chunk made no progress for {waited:?}; ending the response"
                            );
                            return this.fail(Error::SlowDown(waited), cx);
                        }
                        return Poll::Pending;
                    }
                }
            }
            if let Some((fut, _)) = this.opening.as_mut() {
                match fut.as_mut().poll(cx) {
                    Poll::Pending => {
                        if this.open_expired(cx) {
                            this.opening = None;
                            return this.fail(Error::SlowDown(this.progress_timeout), cx);
                        }
                        return Poll::Pending;
                    }
                    Poll::Ready(Ok(s)) => {
                        this.open_deadline = None;
                        this.opening = None;
                        this.current = Some(Current {
                            stream: s,
                            retry: None,
                            started: false,
                            waited: false,
                            deadline: this.deadline(),
                        });
                        continue;
                    }
                    Poll::Ready(Err(e)) => {
                        this.open_deadline = None;
                        this.opening = None;
                        return this.fail(e, cx);
                    }
                }
            }
            if let Some(front) = this.ahead.front_mut() {
                // The reader is here: this chunk is urgent from now on, wherever it waits.
                front.priority.raise();
                let res = match Pin::new(&mut front.open).poll(cx) {
                    Poll::Pending => {
                        if this.open_expired(cx) {
                            return this.fail(Error::SlowDown(this.progress_timeout), cx);
                        }
                        return Poll::Pending;
                    }
                    Poll::Ready(r) => r,
                };
                this.open_deadline = None;
                let Some(a) = this.ahead.pop_front() else {
                    continue;
                };
                match res {
                    Ok(Ok(s)) => {
                        this.current = Some(Current {
                            stream: s,
                            retry: Some(a.req),
                            started: false,
                            waited: false,
                            deadline: this.deadline(),
                        })
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(chunk = ?a.req.key, error = %e, "readahead failed; asking again");
                        this.open_now(a.req);
                    }
                    Err(join) => {
                        tracing::debug!(chunk = ?a.req.key, error = %join, "readahead task failed; asking again");
                        this.open_now(a.req);
                    }
                }
                continue;
            }
            match this.todo.pop_front() {
                Some(r) => this.open_now(r),
                None => return Poll::Ready(None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// An object of `n` chunks of 1 MiB whose chunk streams are ready at once, or only after a
    /// short wait; every chunk request is recorded by index.
    fn service(n: u64, delayed: bool) -> (ObjectService, Arc<Mutex<Vec<u64>>>, Arc<ObjectMeta>) {
        service_with(n, Duration::from_secs(5), move |_, len| {
            futures_util::stream::once(async move {
                if delayed {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Ok(Bytes::from(vec![1u8; len]))
            })
            .boxed()
        })
    }

    /// An object of `n` chunks of 1 MiB whose chunk streams `make(index, len)` builds, read
    /// with `progress` as the progress timeout.
    fn service_with(
        n: u64,
        progress: Duration,
        make: impl Fn(u64, usize) -> ByteStream + Clone + Send + Sync + 'static,
    ) -> (ObjectService, Arc<Mutex<Vec<u64>>>, Arc<ObjectMeta>) {
        service_parking(n, progress, make, None)
    }

    /// As [`service_with`], with every request for chunk `parked` never opening: a fill that
    /// waits in a queue for ever (a readahead fill behind a spent budget, or a fill joined to
    /// one).
    fn service_parking(
        n: u64,
        progress: Duration,
        make: impl Fn(u64, usize) -> ByteStream + Clone + Send + Sync + 'static,
        parked: Option<u64>,
    ) -> (ObjectService, Arc<Mutex<Vec<u64>>>, Arc<ObjectMeta>) {
        let asked: Arc<Mutex<Vec<u64>>> = Arc::default();
        let a2 = asked.clone();
        let chunks = tower::service_fn(move |r: ChunkRequest| {
            a2.lock().unwrap().push(r.key.index);
            let len = (r.range.end - r.range.start) as usize;
            let s = make(r.key.index, len);
            let park = parked == Some(r.key.index);
            async move {
                if park {
                    futures_util::future::pending::<()>().await;
                }
                Ok::<ByteStream, Error>(s)
            }
        });
        let meta = Arc::new(ObjectMeta {
            size: n << 20,
            etag: "e".into(),
            ..ObjectMeta::default()
        });
        let m2 = meta.clone();
        let head = tower::service_fn(move |_r: MetaRequest| {
            let m = m2.clone();
            async move { Ok::<_, Error>(m) }
        });
        let invalidate: InvalidateFn = Arc::new(|_, _| Box::pin(async {}));
        let svc = ObjectService::new(
            "o".into(),
            BoxCloneSyncService::new(head),
            invalidate,
            BoxCloneSyncService::new(chunks),
            1 << 20,
            Vec::new(),
            ReadPolicy {
                readahead: 8,
                readahead_bytes: 64 << 20,
                progress_timeout: progress,
            },
            TaskTracker::new(),
            Arc::new(crate::store::MemoryStore::new(1 << 20)),
        );
        (svc, asked, meta)
    }

    /// A GET of the whole object.
    async fn whole(svc: &ObjectService, meta: &Arc<ObjectMeta>) -> ByteStream {
        let last = meta.size - 1;
        let s = Selector::default();
        svc.open("b", "k", &s, meta, 0, last, Arc::default())
            .await
            .unwrap()
            .0
    }

    /// How far ahead of the chunk being read the requests went, at most.
    async fn widest_window(delayed: bool) -> u64 {
        let (svc, asked, meta) = service(40, delayed);
        let mut s = whole(&svc, &meta).await;
        let (mut read, mut widest) = (0u64, 0u64);
        while let Some(b) = s.next().await {
            read += b.unwrap().len() as u64;
            let current = read.saturating_sub(1) >> 20;
            tokio::task::yield_now().await;
            let furthest = asked.lock().unwrap().iter().copied().max().unwrap_or(0);
            widest = widest.max(furthest.saturating_sub(current));
        }
        assert_eq!(read, 40 << 20);
        widest
    }

    #[tokio::test]
    async fn readahead_stays_short_for_a_reader_that_never_catches_up() {
        assert!(widest_window(false).await <= 2);
    }

    #[tokio::test]
    async fn readahead_grows_for_a_reader_that_does() {
        assert_eq!(widest_window(true).await, 8);
    }

    /// Regression: a chunk that had started and then went silent (a refill parked behind the
    /// memory budget, with no deadline of its own) left the response hanging for ever. It now
    /// ends with `SlowDown` once it has made no progress for `progress_timeout`.
    #[tokio::test]
    async fn a_chunk_that_goes_silent_mid_way_ends_the_response() {
        let progress = Duration::from_millis(300);
        let (svc, _, meta) = service_with(4, progress, |index, len| {
            let first =
                futures_util::stream::once(async move { Ok(Bytes::from(vec![7u8; len / 2])) });
            if index == 1 {
                first.chain(futures_util::stream::pending()).boxed()
            } else {
                futures_util::stream::once(async move { Ok(Bytes::from(vec![7u8; len])) }).boxed()
            }
        });
        let mut s = whole(&svc, &meta).await;
        let mut read = 0usize;
        let started = Instant::now();
        let end = loop {
            match tokio::time::timeout(Duration::from_secs(30), s.next()).await {
                Ok(Some(Ok(b))) => read += b.len(),
                Ok(other) => break other,
                Err(_) => panic!("the response hung after {read} bytes"),
            }
        };
        assert_eq!(
            read,
            (1 << 20) + (1 << 19),
            "chunk 0 and half of chunk 1 were sent"
        );
        assert!(matches!(end, Some(Err(Error::SlowDown(_)))), "{end:?}");
        let waited = started.elapsed();
        assert!(
            waited >= progress,
            "ended after {waited:?}, before the progress timeout"
        );
        assert!(s.next().await.is_none(), "the stream is over");
    }

    /// Regression (issue 21, "no wait without a bound"): a reader that caught up with a chunk
    /// whose readahead request never opens — parked in the memory or origin queue, which
    /// readahead waits in with no deadline of its own, or joined to a fill parked there —
    /// waited for ever: the response hung with nothing to bound it. It now ends with
    /// `SlowDown` after `progress_timeout`, whether the chunk was read ahead or asked for now.
    #[tokio::test]
    async fn a_chunk_that_never_opens_ends_the_response() {
        let progress = Duration::from_millis(300);
        for parked in [1u64, 3] {
            let (svc, asked, meta) = service_parking(
                5,
                progress,
                |_, len| {
                    futures_util::stream::once(async move { Ok(Bytes::from(vec![7u8; len])) })
                        .boxed()
                },
                Some(parked),
            );
            let mut s = whole(&svc, &meta).await;
            let mut read = 0u64;
            let end = loop {
                match tokio::time::timeout(Duration::from_secs(30), s.next()).await {
                    Ok(Some(Ok(b))) => read += b.len() as u64,
                    Ok(other) => break other,
                    Err(_) => panic!("the response hung after {read} bytes"),
                }
            };
            assert_eq!(
                read,
                parked << 20,
                "every chunk before the parked one was sent"
            );
            assert!(matches!(end, Some(Err(Error::SlowDown(_)))), "{end:?}");
            assert!(asked.lock().unwrap().contains(&parked));
        }
    }
}
