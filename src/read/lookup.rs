//! Shoal's chunk reader (`StoreLookupLayer`): it answers from the chunk store when it can and
//! otherwise follows the fill below, moving between the two at the exact byte reached.
//!
//! Not a reusable layer: it knows [`ChunkRequest`], [`ChunkStore`] and Shoal's errors, and
//! sits on top of Shoal's own chunk stack. The generic layers are in [`crate::layer`].
//!
//! A read of `range` in one chunk is a small state machine:
//!
//! - **Store** — the chunk is committed: stream it from the store. A store that fails part-way
//!   (a checksum mismatch on disk, a chunk evicted from memory under a slow reader) is not an
//!   error for the client: the read continues from the fill below at the byte it reached.
//! - **Flight** — not committed: join (or start) the fill below and stream its buffer as it
//!   grows. When the fill commits, it releases its buffer ([`Error::Released`]); the read then
//!   continues from the store at its exact byte, so a slow reader never pins a finished chunk
//!   in memory.
//! - **Direct** — a small range deep inside a cold chunk (a Parquet footer, `bytes=-8` of a
//!   large file): waiting for the fill to reach it would cost the whole prefix, so the client's
//!   bytes come straight from the origin (the same verified, retried, rate-limited origin
//!   stack) while the chunk is filled in the background for the next reader. Time to first
//!   byte is then the origin's own, at the price of one extra origin request for those bytes.
//!
//! Readahead asks with a *speculative* request: no I/O happens then, the store is only checked
//! for presence and a fill is joined or started at low priority. The returned stream does its
//! work when it is first polled, by which time the reader has raised the request's priority.

use crate::error::Error;
use crate::layer::singleflight::Progress;
use crate::model::ChunkKey;
use crate::origin::{ByteStream, RangeRequest};
use crate::read::chunk::ChunkRequest;
use crate::store::ChunkStore;
use crate::telemetry::metrics::{Metrics, Source};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{Stream, StreamExt};
use std::ops::Range;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::util::BoxCloneSyncService;
use tower::{Layer, Service, ServiceExt};

/// A cold read that starts at least this far into a chunk (and this far ahead of a running
/// fill) is served straight from the origin. About what an S3 stream delivers in the time of
/// one request's first byte, so joining the fill would at least double time to first byte.
pub const DIRECT_RANGE_AFTER: u64 = 1 << 20;

/// The origin stack, type-erased: verified, retried, rate-limited ranged reads.
pub type OriginService = BoxCloneSyncService<RangeRequest, ByteStream, Error>;

/// How many times one read may switch sources (store → fill → store…) before giving up; a
/// healthy read switches at most twice.
const MAX_SWITCHES: u32 = 4;

/// Applies [`StoreLookup`] with a shared store.
///
/// ```
/// use shoal::read::lookup::StoreLookupLayer;
/// use shoal::store::MemoryStore;
/// use std::sync::Arc;
/// // Hits come from a 64 MiB memory store; misses go to the service below.
/// let layer = StoreLookupLayer::new(Arc::new(MemoryStore::new(64 << 20)));
/// # let _ = layer;
/// ```
#[derive(Clone)]
pub struct StoreLookupLayer {
    store: Arc<dyn ChunkStore>,
    direct: Option<Arc<Direct>>,
    metrics: Metrics,
}

struct Direct {
    origin: OriginService,
    progress: Progress<ChunkKey>,
}

impl StoreLookupLayer {
    /// Looks chunks up in `store`.
    pub fn new(store: Arc<dyn ChunkStore>) -> Self {
        StoreLookupLayer {
            store,
            direct: None,
            metrics: Metrics::new(),
        }
    }

    /// Counts store hits and direct reads in `metrics`.
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Serves cold ranges deep inside a chunk straight from `origin` (see the module docs);
    /// `progress` tells how far a running fill of a chunk has got.
    pub fn direct_ranges(mut self, origin: OriginService, progress: Progress<ChunkKey>) -> Self {
        self.direct = Some(Arc::new(Direct { origin, progress }));
        self
    }
}

impl<S> Layer<S> for StoreLookupLayer {
    type Service = StoreLookup<S>;
    fn layer(&self, inner: S) -> Self::Service {
        StoreLookup {
            inner: Arc::new(inner),
            store: self.store.clone(),
            direct: self.direct.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

/// Serves hits from the store and follows fills. See the module docs.
///
/// The stack below is shared, not copied: the chunk service is cloned for every chunk read,
/// and a hit — most reads — never calls the stack below, so it is cloned for real
/// only when a read needs it.
pub struct StoreLookup<S> {
    inner: Arc<S>,
    store: Arc<dyn ChunkStore>,
    direct: Option<Arc<Direct>>,
    metrics: Metrics,
}

impl<S> Clone for StoreLookup<S> {
    fn clone(&self) -> Self {
        StoreLookup {
            inner: self.inner.clone(),
            store: self.store.clone(),
            direct: self.direct.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

/// The stack below the lookup, behind an `Arc`: cloning it is a reference count, and each
/// call runs on a fresh copy of the stack (as `oneshot` on a clone would).
struct Below<S>(Arc<S>);

impl<S> Clone for Below<S> {
    fn clone(&self) -> Self {
        Below(self.0.clone())
    }
}

impl<S> Service<ChunkRequest> for Below<S>
where
    S: Service<ChunkRequest> + Clone,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = tower::util::Oneshot<S, ChunkRequest>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is the copy's business, checked by `oneshot` when it is called.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: ChunkRequest) -> Self::Future {
        S::clone(&self.0).oneshot(req)
    }
}

/// Where a read gets its next bytes from.
enum Src {
    /// Not decided yet: the store if it has the chunk, else the fill.
    Open { skip_store: bool },
    /// A stream positioned at the read's next byte.
    Reading(ByteStream),
}

struct Follow<S> {
    inner: S,
    store: Arc<dyn ChunkStore>,
    req: ChunkRequest,
    pos: u64,
    end: u64,
    src: Src,
    switches: u32,
    done: bool,
}

impl<S, B> Follow<S>
where
    S: Service<ChunkRequest, Response = B, Error = Error> + Clone + Send + 'static,
    S::Future: Send,
    B: Stream<Item = Result<Bytes, Error>> + Send + Unpin + 'static,
{
    async fn open(&mut self, skip_store: bool) -> Result<ByteStream, Error> {
        self.switches += 1;
        if self.switches > MAX_SWITCHES {
            return Err(Error::internal(format!(
                "chunk {:?}: no source could serve byte {}",
                self.req.key, self.pos
            )));
        }
        let range = self.pos..self.end;
        if !skip_store {
            match self.store.get(&self.req.key, range.clone()).await {
                Ok(Some(s)) => return Ok(s),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(chunk = ?self.req.key, error = %e, "store read failed; refilling")
                }
            }
        }
        // The store was just asked (or just failed): the fill must not send this reader back
        // to it, even if the store says it has the chunk. A shared store may say so (its
        // presence check found another replica's object) while its read finds nothing; going
        // round that loop would end the read with an error instead of bytes from the origin.
        let whole = ChunkRequest {
            range: 0..self.req.chunk_len(),
            bypass_store: true,
            ..self.req.clone()
        };
        let joined = self.inner.clone().oneshot(whole).await?;
        Ok(slice(joined, range))
    }

    async fn next(&mut self) -> Option<Result<Bytes, Error>> {
        loop {
            if self.done || self.pos >= self.end {
                return None;
            }
            let s = match &mut self.src {
                Src::Open { skip_store } => {
                    let skip = *skip_store;
                    match self.open(skip).await {
                        Ok(s) => {
                            self.src = Src::Reading(s);
                            continue;
                        }
                        Err(e) => {
                            self.done = true;
                            return Some(Err(e));
                        }
                    }
                }
                Src::Reading(s) => s,
            };
            match s.next().await {
                Some(Ok(b)) => {
                    self.pos += b.len() as u64;
                    return Some(Ok(b));
                }
                // The fill committed and let go of its buffer: the store has the rest.
                Some(Err(Error::Released(_))) => self.src = Src::Open { skip_store: false },
                // The store failed part-way: damaged or evicted. Continue from the fill.
                Some(Err(Error::Store(why))) => {
                    tracing::warn!(chunk = ?self.req.key, %why, at = self.pos, "store read failed mid-chunk; continuing from the origin");
                    self.src = Src::Open { skip_store: true };
                }
                Some(Err(e)) => {
                    self.done = true;
                    return Some(Err(e));
                }
                None => {
                    self.done = true;
                    return Some(Err(Error::internal(format!(
                        "chunk source ended at byte {} of {}",
                        self.pos, self.end
                    ))));
                }
            }
        }
    }
}

fn follow<S, B>(inner: S, store: Arc<dyn ChunkStore>, req: ChunkRequest, src: Src) -> ByteStream
where
    S: Service<ChunkRequest, Response = B, Error = Error> + Clone + Send + 'static,
    S::Future: Send,
    B: Stream<Item = Result<Bytes, Error>> + Send + Unpin + 'static,
{
    let f = Follow {
        inner,
        store,
        pos: req.range.start,
        end: req.range.end,
        req,
        src,
        switches: 0,
        done: false,
    };
    futures_util::stream::unfold(f, |mut f| async move { f.next().await.map(|x| (x, f)) }).boxed()
}

impl<S, B> Service<ChunkRequest> for StoreLookup<S>
where
    S: Service<ChunkRequest, Response = B, Error = Error> + Clone + Send + Sync + 'static,
    S::Future: Send,
    B: Stream<Item = Result<Bytes, Error>> + Send + Unpin + 'static,
{
    type Response = ByteStream;
    type Error = Error;
    type Future = BoxFuture<'static, Result<ByteStream, Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: ChunkRequest) -> Self::Future {
        let store = self.store.clone();
        let inner = Below(self.inner.clone());
        let direct = self.direct.clone();
        let metrics = self.metrics.clone();
        let span = tracing::debug_span!("chunk", chunk = ?req.key, range = ?req.range, source = tracing::field::Empty);
        Box::pin(tracing::Instrument::instrument(
            async move {
                let whole = || ChunkRequest {
                    range: 0..req.chunk_len(),
                    ..req.clone()
                };
                if req.is_speculative() {
                    // Readahead: no I/O now. A present chunk is read when the reader gets
                    // there; a missing one is filled (or joined) at low priority.
                    if store.contains(&req.key) {
                        req.note(&metrics, Source::Hit);
                        // A remote store (the shared S3 cachestore) costs a round trip per
                        // chunk: its read is opened now, so that the round trip overlaps the
                        // reader instead of adding to it. Only the answer's head is awaited;
                        // the body waits in the connection until the reader gets there.
                        if store.is_shared() {
                            if let Ok(Some(s)) = store.get(&req.key, req.range.clone()).await {
                                return Ok(follow(inner, store, req, Src::Reading(s)));
                            }
                        }
                        let src = Src::Open { skip_store: false };
                        return Ok(follow(inner, store, req, src));
                    }
                    // The reader never asks the store for this chunk: tell it that one wants it,
                    // or its admission counts the chunk as unused and may decline it for ever.
                    store.wanted(&req.key);
                    let joined = inner.clone().oneshot(whole()).await?;
                    let src = Src::Reading(slice(joined, req.range.clone()));
                    return Ok(follow(inner, store, req, src));
                }
                match store.get(&req.key, req.range.clone()).await {
                    Ok(Some(hit)) => {
                        req.note(&metrics, Source::Hit);
                        return Ok(follow(inner, store, req, Src::Reading(hit)));
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %e, "store read failed; refilling"),
                }
                if let Some(d) = direct.filter(|d| far_ahead(d, &req)) {
                    req.note(&metrics, Source::Origin);
                    return serve_direct(d, inner, req).await;
                }
                let joined = inner.clone().oneshot(whole()).await?;
                let src = Src::Reading(slice(joined, req.range.clone()));
                Ok(follow(inner, store, req, src))
            },
            span,
        ))
    }
}

/// Whether the read starts far enough into a cold chunk (and ahead of any running fill) that
/// the origin answers it sooner than the fill would reach it.
fn far_ahead(d: &Direct, req: &ChunkRequest) -> bool {
    req.range.start >= DIRECT_RANGE_AFTER
        && d.progress
            .of(&req.key)
            .is_none_or(|got| got + DIRECT_RANGE_AFTER <= req.range.start)
}

/// Starts (or joins) the chunk's fill in the background and streams the client's own range
/// straight from the origin stack.
async fn serve_direct<S, B>(
    d: Arc<Direct>,
    inner: S,
    req: ChunkRequest,
) -> Result<ByteStream, Error>
where
    S: Service<ChunkRequest, Response = B, Error = Error> + Clone + Send + 'static,
    S::Future: Send,
    B: Stream<Item = Result<Bytes, Error>> + Send + Unpin + 'static,
{
    tracing::debug!(
        at = req.range.start,
        "cold range deep in a chunk: reading it directly"
    );
    let range = req.clone().origin_read();
    let whole = ChunkRequest {
        range: 0..req.chunk_len(),
        ..req.clone()
    };
    // An urgent fill runs to the end whether or not anybody reads it: the handle can go.
    let (fill, bytes) = tokio::join!(inner.oneshot(whole), d.origin.clone().oneshot(range));
    if let Err(e) = fill {
        tracing::debug!(error = %e, "background fill of a directly read chunk did not start");
    }
    bytes
}

/// The bytes `range` of `body`; an error if `body` ends before `range.end`. Errors of `body`
/// (including [`Error::Released`]) are passed on as they are.
pub fn slice<B>(body: B, range: Range<u64>) -> ByteStream
where
    B: Stream<Item = Result<Bytes, Error>> + Send + Unpin + 'static,
{
    let want = range.end - range.start;
    futures_util::stream::unfold(
        (body, 0u64, range),
        move |(mut body, mut pos, range)| async move {
            loop {
                if pos >= range.end {
                    return None;
                }
                match body.next().await {
                    Some(Ok(b)) => {
                        let (lo, hi) = (pos, pos + b.len() as u64);
                        pos = hi;
                        if hi <= range.start {
                            continue;
                        }
                        let s = range.start.max(lo) - lo;
                        let e = range.end.min(hi) - lo;
                        return Some((Ok(b.slice(s as usize..e as usize)), (body, pos, range)));
                    }
                    Some(Err(e)) => return Some((Err(e), (body, range.end, range))),
                    None => {
                        let e = Error::internal(format!(
                            "chunk stream ended at {pos}, before byte {} (wanted {want})",
                            range.end
                        ));
                        return Some((Err(e), (body, range.end, range)));
                    }
                }
            }
        },
    )
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream;

    async fn run(parts: &[&'static [u8]], range: Range<u64>) -> Result<Vec<u8>, Error> {
        let body = stream::iter(
            parts
                .iter()
                .map(|p| Ok(Bytes::from_static(p)))
                .collect::<Vec<_>>(),
        );
        let mut out = Vec::new();
        let mut s = slice(body, range);
        while let Some(b) = s.next().await {
            out.extend_from_slice(&b?);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn slices_across_pieces() {
        assert_eq!(
            run(&[b"abc", b"def", b"ghi"], 2..7).await.unwrap(),
            b"cdefg"
        );
        assert_eq!(run(&[b"abc", b"def"], 0..6).await.unwrap(), b"abcdef");
        assert_eq!(run(&[b"abc", b"def"], 3..3).await.unwrap(), b"");
        assert!(run(&[b"abc"], 1..5).await.is_err());
    }
}
