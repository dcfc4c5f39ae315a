//! The core fill service: origin bytes → the readers and the store, committed on completion.
//!
//! A fill first reserves the whole chunk in the byte budget (urgent fills before readahead;
//! waiting too long is `SlowDown`), then asks its source: the chunk's owner in a cluster, or
//! the origin stack ([`crate::layer::PeerRouting`] decides). Incoming frames are coalesced
//! into pieces of at most [`PIECE`] bytes, each charged to the budget until it is freed (see
//! [`crate::read::budget`]): whatever frames are ready are copied together, so a fast origin gives
//! few large pieces (fewer wake-ups for joiners) and a slow one gives its bytes on at once.
//!
//! Each piece goes to the reader (in practice the singleflight buffer every waiting client
//! reads) and to a store writer running in its own task behind a bounded queue: the replica's
//! store for a chunk it fetched itself, the hot cache for another replica's chunk it had to ask
//! for repeatedly, no writer at all otherwise (one copy per cluster). The writer is
//! never on the readers' path: a writer that falls more than a queue behind, or whose store
//! call takes longer than `store.write_timeout`, is dropped — the chunk is not committed, and
//! the readers never noticed. When the origin stream ends, the byte count is checked against
//! the chunk's length; only then may the writer commit. The stream ends after the commit has
//! been decided, so a request arriving while the commit runs still joins this fill, and the
//! singleflight learns whether the chunk is now durable in the store ([`FillBody::is_durable`])
//! and can release its buffer.

use crate::error::{Error, OriginError};
use crate::layer::gate::Wait;
use crate::layer::peer::Routed;
use crate::layer::retry::Truncated;
use crate::model::ByteStream;
use crate::read::budget::{Budget, ChunkCharge, PIECE};
use crate::read::chunk::ChunkRequest;
use crate::store::hot::HotCache;
use crate::store::{ChunkStore, ChunkWriter, Committed};
use crate::telemetry::metrics::{Metrics, Source};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, Stream, StreamExt};
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tower::{Service, ServiceExt};

impl From<crate::layer::QueueTimeout> for Error {
    fn from(q: crate::layer::QueueTimeout) -> Self {
        Error::SlowDown(q.0)
    }
}

impl From<Truncated> for Error {
    fn from(t: Truncated) -> Self {
        Error::Origin(OriginError::Protocol(t.to_string()))
    }
}

/// How far (in bytes) a store writer may fall behind the fill before it is dropped. Queued
/// pieces are the fill's own (charged to the budget, held by the flight anyway), so this bounds
/// time lost, not memory; a writer that is merely a little slower than the origin still commits.
const WRITER_QUEUE_BYTES: u64 = 64 << 20;

/// What a fill needs besides the origin stack.
#[derive(Clone)]
pub struct FillConfig {
    /// Memory for pieces.
    pub budget: Budget,
    /// Default bound on waiting for memory (`fill.queue_timeout`).
    pub queue_timeout: Duration,
    /// Bound on each store call of the writer (`store.write_timeout`).
    pub write_timeout: Duration,
    /// Owns the writer tasks, so shutdown can wait for commits.
    pub tasks: TaskTracker,
    /// Where chunks fetched from their owner are kept when they are hot (cluster only).
    pub hot: Option<HotCache>,
    /// Where chunk sources and memory waits are counted.
    pub metrics: Metrics,
}

/// Fills whole chunks from `source` (owner or origin) into `store`.
#[derive(Clone)]
pub struct Fill<S> {
    source: S,
    store: Arc<dyn ChunkStore>,
    cfg: FillConfig,
}

impl<S> Fill<S> {
    /// Fills from `source` into `store`.
    pub fn new(source: S, store: Arc<dyn ChunkStore>, cfg: FillConfig) -> Self {
        Fill { source, store, cfg }
    }
}

/// The bytes of one chunk fill, and whether the chunk ended up committed in the store.
pub struct FillBody {
    stream: ByteStream,
    durable: Arc<AtomicBool>,
}

impl FillBody {
    /// Whether the finished chunk is in the store (readers may continue from there).
    pub fn is_durable(&self) -> bool {
        self.durable.load(Ordering::Acquire)
    }
}

impl Stream for FillBody {
    type Item = Result<Bytes, Error>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.stream.poll_next_unpin(cx)
    }
}

/// Returns a chunk's unused reservation however the fill ends (error, cancellation).
struct ChargeGuard(Arc<ChunkCharge>);

impl Drop for ChargeGuard {
    fn drop(&mut self) {
        self.0.finish();
    }
}

/// The fill's side of a store writer task.
struct WriterHandle {
    pieces: mpsc::UnboundedSender<Bytes>,
    /// Bytes sent and not yet written; bounded by [`WRITER_QUEUE_BYTES`] (and the chunk).
    queued: Arc<AtomicU64>,
    complete: oneshot::Sender<()>,
    result: oneshot::Receiver<Committed>,
}

impl WriterHandle {
    /// Queues a piece; `false` if the writer has fallen too far behind (or is gone).
    fn offer(&self, piece: Bytes) -> bool {
        let n = piece.len() as u64;
        if self.queued.fetch_add(n, Ordering::AcqRel) + n > WRITER_QUEUE_BYTES {
            return false;
        }
        self.pieces.send(piece).is_ok()
    }
}

fn spawn_writer(
    store: Arc<dyn ChunkStore>,
    req: &ChunkRequest,
    len: u64,
    charge: Arc<ChunkCharge>,
    cfg: &FillConfig,
) -> WriterHandle {
    let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
    let queued = Arc::new(AtomicU64::new(0));
    let drained = queued.clone();
    let (complete_tx, complete_rx) = oneshot::channel();
    let (result_tx, result_rx) = oneshot::channel();
    let key = req.key.clone();
    let wt = cfg.write_timeout;
    let task = async move {
        let label = format!("{key:?}");
        let give_up = |w: Box<dyn ChunkWriter>, why: String| {
            tracing::warn!(chunk = %label, %why, "store writer dropped; chunk not committed");
            // Dropping a writer may touch the disk (temp file removal): not on this thread.
            tokio::task::spawn_blocking(move || drop(w));
        };
        let mut w = match tokio::time::timeout(wt, store.begin(&key, len)).await {
            Ok(Ok(w)) => w,
            Ok(Err(e)) => {
                tracing::warn!(chunk = ?key, error = %e, "store cannot take chunk; serving uncached");
                return;
            }
            Err(_) => {
                tracing::warn!(chunk = ?key, "store did not open a chunk within {wt:?}; serving uncached");
                return;
            }
        };
        while let Some(b) = rx.recv().await {
            let n = b.len() as u64;
            match tokio::time::timeout(wt, w.write(b)).await {
                Ok(Ok(())) => {
                    drained.fetch_sub(n, Ordering::AcqRel);
                }
                Ok(Err(e)) => return give_up(w, format!("write failed: {e}")),
                Err(_) => return give_up(w, format!("write took longer than {wt:?}")),
            }
        }
        // The queue is closed: either everything was sent and `complete` fired, or the fill
        // failed or dropped this writer.
        if complete_rx.await.is_err() {
            return give_up(w, "fill did not complete".into());
        }
        let span = tracing::debug_span!("commit", bytes = len, outcome = tracing::field::Empty);
        let commit =
            tracing::Instrument::instrument(tokio::time::timeout(wt, w.commit()), span.clone());
        let committed = commit.await;
        span.record(
            "outcome",
            match &committed {
                Ok(Ok(Committed::Kept)) => "kept",
                Ok(Ok(Committed::Refused)) => "refused",
                Ok(Err(_)) => "failed",
                Err(_) => "timed_out",
            },
        );
        match committed {
            Ok(Ok(c)) => {
                if c == Committed::Kept && store.keeps_written_bytes() {
                    // The store now holds these very pieces; its capacity bounds them.
                    charge.transfer();
                }
                tracing::debug!(chunk = ?key, bytes = len, outcome = ?c, "chunk committed");
                let _ = result_tx.send(c);
            }
            Ok(Err(e)) => {
                tracing::warn!(chunk = ?key, error = %e, "commit failed; next request refills")
            }
            Err(_) => tracing::warn!(chunk = ?key, "commit took longer than {wt:?}; dropped"),
        }
    };
    cfg.tasks.spawn(tracing::Instrument::in_current_span(task));
    WriterHandle {
        pieces: tx,
        queued,
        complete: complete_tx,
        result: result_rx,
    }
}

struct Tee<B> {
    body: B,
    charge: ChargeGuard,
    writer: Option<WriterHandle>,
    got: u64,
    expected: u64,
    /// Pieces cut and not yet handed out.
    out: VecDeque<Bytes>,
    /// What the origin stream said after the frames in `out` (an error, or its end).
    after: Option<Option<Error>>,
    done: bool,
    durable: Arc<AtomicBool>,
    write_timeout: Duration,
    label: String,
}

impl<B> Tee<B>
where
    B: Stream<Item = Result<Bytes, Error>> + Unpin,
{
    /// Turns ready origin frames into pieces (at most [`PIECE`] each), hands them to the writer.
    fn cut(&mut self, frames: Vec<Bytes>) -> Result<(), Error> {
        let n: u64 = frames.iter().map(|b| b.len() as u64).sum();
        if self.got + n > self.expected {
            return Err(OriginError::Protocol(format!(
                "origin sent more than the {} bytes asked for",
                self.expected
            ))
            .into());
        }
        self.got += n;
        let mut group: Vec<Bytes> = Vec::new();
        let mut size = 0usize;
        for mut f in frames {
            while !f.is_empty() {
                let take = (PIECE - size).min(f.len());
                group.push(f.split_to(take));
                size += take;
                if size == PIECE {
                    self.emit(&group);
                    group.clear();
                    size = 0;
                }
            }
        }
        if size > 0 {
            self.emit(&group);
        }
        Ok(())
    }

    fn emit(&mut self, group: &[Bytes]) {
        let piece = self.charge.0.piece(group);
        if let Some(w) = self.writer.as_ref() {
            if !w.offer(piece.clone()) {
                tracing::warn!(chunk = %self.label, "store writer fell behind; chunk not committed");
                self.writer = None;
            }
        }
        self.out.push_back(piece);
    }

    /// Reads the next frame and every frame already waiting behind it.
    async fn pull(&mut self) {
        let first = match self.body.next().await {
            Some(Ok(b)) => b,
            Some(Err(e)) => {
                self.after = Some(Some(e));
                return;
            }
            None => {
                self.after = Some(None);
                return;
            }
        };
        let mut frames = vec![first];
        let mut size = frames[0].len();
        while size < PIECE {
            match self.body.next().now_or_never() {
                Some(Some(Ok(b))) => {
                    size += b.len();
                    frames.push(b);
                }
                Some(Some(Err(e))) => {
                    self.after = Some(Some(e));
                    break;
                }
                Some(None) => {
                    self.after = Some(None);
                    break;
                }
                None => break,
            }
        }
        if let Err(e) = self.cut(frames) {
            self.out.clear();
            self.after = Some(Some(e));
        }
    }

    /// The origin stream has ended: check the length, let the writer commit, learn the result.
    async fn close(&mut self) -> Option<Error> {
        if self.got != self.expected {
            return Some(
                Truncated {
                    got: self.got,
                    expected: self.expected,
                }
                .into(),
            );
        }
        if let Some(w) = self.writer.take() {
            let _ = w.complete.send(());
            drop(w.pieces);
            // Readers are not waiting on this: they have every piece already. What waits is
            // the decision whether the buffer can be released to the store.
            match tokio::time::timeout(self.write_timeout, w.result).await {
                Ok(Ok(Committed::Kept)) => self.durable.store(true, Ordering::Release),
                Ok(Ok(Committed::Refused)) => {
                    tracing::debug!(chunk = %self.label, "store declined the chunk (admission)")
                }
                Ok(Err(_)) => {}
                Err(_) => tracing::warn!(
                    chunk = %self.label,
                    "store writer still busy {:?} after the last byte; buffer kept for readers",
                    self.write_timeout
                ),
            }
        }
        None
    }
}

impl<S> Service<ChunkRequest> for Fill<S>
where
    S: Service<ChunkRequest, Response = Routed<Error>, Error = Error> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = FillBody;
    type Error = Error;
    type Future = BoxFuture<'static, Result<FillBody, Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: ChunkRequest) -> Self::Future {
        let source = self.source.clone();
        let store = self.store.clone();
        let cfg = self.cfg.clone();
        Box::pin(async move {
            let expected = req.chunk_len();
            let durable = Arc::new(AtomicBool::new(false));
            // The chunk may have been committed between this request's store lookup and its
            // arrival here (a fill that just finished): then the store has it.
            // In a shared store another replica may have put it there: asked before the origin.
            // Every reader is told so as if the flight had just released its buffer (`Released`
            // at byte 0), and reads on from the store — an empty body would read as a chunk
            // that ended before its first byte (a 500 for a GET's first chunk).
            if !req.bypass_store && store.present(&req.key).await {
                req.note(&cfg.metrics, Source::Hit);
                durable.store(true, Ordering::Release);
                return Ok(FillBody {
                    stream: futures_util::stream::iter([Err(Error::Released(0))]).boxed(),
                    durable,
                });
            }
            let deadline = match req.wait {
                Wait::Default => Some(Instant::now() + cfg.queue_timeout),
                Wait::Until(t) => Some(t),
                Wait::Forever => None,
            };
            let started = Instant::now();
            let permit = tracing::Instrument::instrument(
                cfg.budget.reserve(expected, req.priority.clone(), deadline),
                tracing::debug_span!("budget_wait", bytes = expected),
            )
            .await?;
            cfg.metrics.budget_wait(started.elapsed());
            let charge = ChunkCharge::new(permit);
            let k = req.key.clone();
            let body = source
                .oneshot(ChunkRequest {
                    range: 0..expected,
                    wait: deadline.map_or(Wait::Forever, Wait::Until),
                    ..req.clone()
                })
                .await?;
            let source = if body.from_peer() {
                Source::Peer
            } else {
                Source::Origin
            };
            req.note(&cfg.metrics, source);
            // Where this chunk is kept: here if this replica fetched it itself; if another
            // replica (its owner) sent it, only when it is hot here.
            let target = match (&cfg.hot, body.from_peer()) {
                (_, false) => Some(store),
                (Some(hot), true) if hot.fetched_from_peer(&k) => Some(hot.store()),
                _ => None,
            };
            let writer = target.map(|s| spawn_writer(s, &req, expected, charge.clone(), &cfg));
            let tee = Tee {
                body,
                charge: ChargeGuard(charge),
                writer,

                got: 0,
                expected,
                out: VecDeque::new(),
                after: None,
                done: false,
                durable: durable.clone(),
                write_timeout: cfg.write_timeout,
                label: format!("{k:?}"),
            };
            let stream = futures_util::stream::unfold(tee, |mut t| async move {
                loop {
                    if let Some(p) = t.out.pop_front() {
                        return Some((Ok(p), t));
                    }
                    if t.done {
                        return None;
                    }
                    match t.after.take() {
                        None => t.pull().await,
                        Some(Some(e)) => {
                            t.done = true;
                            // The chunk will not complete: let the writer go (and with it
                            // the pieces it still queues).
                            t.writer = None;
                            return Some((Err(e), t));
                        }
                        Some(None) => {
                            t.done = true;
                            if let Some(e) = t.close().await {
                                return Some((Err(e), t));
                            }
                            return None;
                        }
                    }
                }
            });
            Ok(FillBody {
                stream: stream.boxed(),
                durable,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::{PeerRouting, PeerRoutingLayer};
    use crate::model::ChunkKey;
    use crate::origin::RangeRequest;
    use crate::store::MemoryStore;
    use futures_util::stream;
    use tower::{service_fn, Layer};

    type NoPeer = tower::util::ServiceFn<
        fn((String, ChunkRequest)) -> std::future::Ready<Result<ByteStream, Error>>,
    >;
    type ToRange<S> = tower::util::MapRequest<S, fn(ChunkRequest) -> RangeRequest>;
    type NoRoute = fn(&ChunkRequest) -> Option<String>;

    /// A source with no peers: every chunk comes from `origin` (a ranged-read service).
    fn local<S>(origin: S) -> PeerRouting<ToRange<S>, NoRoute, NoPeer>
    where
        S: Service<RangeRequest>,
    {
        fn no_route(_: &ChunkRequest) -> Option<String> {
            None
        }
        fn no_peer(_: (String, ChunkRequest)) -> std::future::Ready<Result<ByteStream, Error>> {
            std::future::ready(Err(Error::internal("no peers here")))
        }
        let route: fn(&ChunkRequest) -> Option<String> = no_route;
        let to_range: fn(ChunkRequest) -> RangeRequest = ChunkRequest::origin_read;
        PeerRoutingLayer::new(route, service_fn(no_peer as fn(_) -> _))
            .layer(ServiceExt::map_request(origin, to_range))
    }

    fn key() -> ChunkKey {
        ChunkKey {
            origin_id: "o".into(),
            bucket: "b".into(),
            key: "k".into(),
            etag: "e".into(),
            chunk_size: 1 << 20,
            index: 0,
        }
    }

    fn cfg(budget: &Budget) -> FillConfig {
        FillConfig {
            budget: budget.clone(),
            queue_timeout: Duration::from_millis(100),
            write_timeout: Duration::from_secs(5),
            tasks: TaskTracker::new(),
            hot: None,
            metrics: Metrics::new(),
        }
    }

    /// An origin that sends `len` bytes in frames of `frame` bytes.
    fn origin(
        frame: usize,
    ) -> impl Service<RangeRequest, Response = ByteStream, Error = Error, Future = impl Send>
           + Clone
           + Send
           + 'static {
        service_fn(move |r: RangeRequest| async move {
            let frames: Vec<Result<Bytes, Error>> = (0..r.len as usize)
                .step_by(frame)
                .map(|i| {
                    let n = frame.min(r.len as usize - i);
                    Ok(Bytes::from(vec![(i % 251) as u8; n]))
                })
                .collect();
            Ok(stream::iter(frames).boxed())
        })
    }

    #[tokio::test]
    async fn ready_frames_are_coalesced_into_pieces_and_committed() {
        let budget = Budget::new(4 << 20);
        let store = Arc::new(MemoryStore::new(64 << 20));
        let c = cfg(&budget);
        let fill = Fill::new(local(origin(16 << 10)), store.clone(), c.clone());
        let req = ChunkRequest::whole(key(), 1 << 20);
        let mut body = fill.oneshot(req).await.unwrap();
        assert_eq!(budget.available(), 3 << 20, "the whole chunk is reserved");
        let mut sizes = Vec::new();
        while let Some(p) = body.next().await {
            sizes.push(p.unwrap().len());
        }
        assert_eq!(sizes.iter().sum::<usize>(), 1 << 20);
        assert!(sizes.iter().all(|&s| s == PIECE), "{sizes:?}");
        assert!(body.is_durable());
        assert!(store.contains(&key()));
        assert_eq!(
            budget.available(),
            4 << 20,
            "the memory store owns the pieces now"
        );
    }

    /// Regression: the writer queue was bounded in pieces (4 for a 1 MiB chunk), so a
    /// trickling origin (many small pieces) plus a store a moment slow to open made the fill
    /// drop a healthy writer, and the next reader fetched the chunk again.
    #[tokio::test]
    async fn a_writer_a_little_late_still_commits_a_trickled_chunk() {
        struct SlowOpen(MemoryStore);
        #[async_trait::async_trait]
        impl ChunkStore for SlowOpen {
            async fn get(
                &self,
                k: &ChunkKey,
                r: std::ops::Range<u64>,
            ) -> Result<Option<ByteStream>, crate::store::StoreError> {
                self.0.get(k, r).await
            }
            async fn begin(
                &self,
                k: &ChunkKey,
                len: u64,
            ) -> Result<Box<dyn ChunkWriter>, crate::store::StoreError> {
                tokio::time::sleep(Duration::from_millis(100)).await;
                self.0.begin(k, len).await
            }
            fn contains(&self, k: &ChunkKey) -> bool {
                self.0.contains(k)
            }
            fn stats(&self) -> crate::store::StoreStats {
                self.0.stats()
            }
        }
        let trickle = service_fn(|r: RangeRequest| async move {
            let frames = (0..r.len / 16384).map(|_| Bytes::from(vec![3u8; 16384]));
            let s = stream::iter(frames).then(|b| async move {
                tokio::time::sleep(Duration::from_millis(1)).await;
                Ok::<_, Error>(b)
            });
            Ok::<ByteStream, Error>(s.boxed())
        });
        let budget = Budget::new(4 << 20);
        let store = Arc::new(SlowOpen(MemoryStore::new(64 << 20)));
        let fill = Fill::new(local(trickle), store.clone(), cfg(&budget));
        let mut body = fill
            .oneshot(ChunkRequest::whole(key(), 1 << 20))
            .await
            .unwrap();
        let mut pieces = 0;
        while let Some(p) = body.next().await {
            p.unwrap();
            pieces += 1;
        }
        assert!(pieces > 8, "the origin trickled: {pieces} pieces");
        assert!(body.is_durable(), "the late writer was dropped");
        assert!(store.contains(&key()));
    }

    #[tokio::test]
    async fn no_budget_no_fill() {
        let budget = Budget::new(1 << 20);
        let _held = budget.reserve(1 << 20, None, None).await.unwrap();
        let fill = Fill::new(
            local(origin(4096)),
            Arc::new(MemoryStore::new(1 << 30)),
            cfg(&budget),
        );
        let r = fill.oneshot(ChunkRequest::whole(key(), 1 << 20)).await;
        assert!(matches!(r, Err(Error::SlowDown(_))), "{:?}", r.err());
    }

    #[tokio::test]
    async fn a_short_origin_body_is_not_committed_and_returns_the_budget() {
        let budget = Budget::new(4 << 20);
        let store = Arc::new(MemoryStore::new(64 << 20));
        let short = service_fn(|_r: RangeRequest| async {
            Ok::<ByteStream, Error>(stream::iter(vec![Ok(Bytes::from(vec![1u8; 1000]))]).boxed())
        });
        let fill = Fill::new(local(short), store.clone(), cfg(&budget));
        let mut body = fill
            .oneshot(ChunkRequest::whole(key(), 1 << 20))
            .await
            .unwrap();
        let mut pieces = Vec::new();
        let mut err = None;
        while let Some(x) = body.next().await {
            match x {
                Ok(p) => pieces.push(p),
                Err(e) => err = Some(e),
            }
        }
        assert!(err.is_some());
        assert!(!body.is_durable());
        assert!(!store.contains(&key()));
        // The abandoned writer lets go of its copies on its own task.
        let settle = |want: u64| {
            let b = budget.clone();
            async move {
                for _ in 0..500 {
                    if b.available() == want {
                        return true;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                false
            }
        };
        assert!(
            settle((4 << 20) - 1000).await,
            "only live pieces hold budget: {}",
            budget.available()
        );
        drop(pieces);
        assert!(settle(4 << 20).await);
    }
}
