//! `StoreLookupLayer`: answer from the chunk store when it can, else ask the stack below.
//!
//! The stack below always produces whole chunks (that is what gets filled and shared); this
//! layer cuts the requested range out of them, so a 4 KiB ranged read of a cached chunk reads
//! 4 KiB from the store and a cold one still fills the whole chunk once for everybody.

use crate::chunk::ChunkRequest;
use crate::error::Error;
use crate::origin::ByteStream;
use crate::store::ChunkStore;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{Stream, StreamExt};
use std::ops::Range;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service, ServiceExt};

/// Applies [`StoreLookup`] with a shared store.
///
/// ```
/// use shoal::layer::StoreLookupLayer;
/// use shoal::store::MemoryStore;
/// use std::sync::Arc;
/// // Hits come from a 64 MiB memory store; misses go to the service below.
/// let layer = StoreLookupLayer::new(Arc::new(MemoryStore::new(64 << 20)));
/// # let _ = layer;
/// ```
#[derive(Clone)]
pub struct StoreLookupLayer {
    store: Arc<dyn ChunkStore>,
}

impl StoreLookupLayer {
    /// Looks chunks up in `store`.
    pub fn new(store: Arc<dyn ChunkStore>) -> Self {
        StoreLookupLayer { store }
    }
}

impl<S> Layer<S> for StoreLookupLayer {
    type Service = StoreLookup<S>;
    fn layer(&self, inner: S) -> Self::Service {
        StoreLookup {
            inner,
            store: self.store.clone(),
        }
    }
}

/// Serves hits from the store and slices misses. See the module docs.
#[derive(Clone)]
pub struct StoreLookup<S> {
    inner: S,
    store: Arc<dyn ChunkStore>,
}

impl<S, B> Service<ChunkRequest> for StoreLookup<S>
where
    S: Service<ChunkRequest, Response = B, Error = Error> + Clone + Send + 'static,
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
        let inner = self.inner.clone();
        let span = tracing::debug_span!("chunk", chunk = ?req.key, range = ?req.range);
        Box::pin(tracing::Instrument::instrument(
            async move {
                match store.get(&req.key, req.range.clone()).await {
                    Ok(Some(hit)) => {
                        tracing::trace!(chunk = ?req.key, "store hit");
                        return Ok(healing(hit, inner, req));
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(chunk = ?req.key, error = %e, "store read failed; refilling")
                    }
                }
                let range = req.range.clone();
                let whole = inner.oneshot(req).await?;
                Ok(slice(whole, range))
            },
            span,
        ))
    }
}

/// A store hit that, if the store finds damage part-way (a checksum mismatch), continues from
/// the origin at the exact byte it had reached: the reader gets exact bytes either way.
fn healing<S, B>(hit: ByteStream, inner: S, req: ChunkRequest) -> ByteStream
where
    S: Service<ChunkRequest, Response = B, Error = Error> + Clone + Send + 'static,
    S::Future: Send,
    B: Stream<Item = Result<Bytes, Error>> + Send + Unpin + 'static,
{
    struct St<S> {
        body: ByteStream,
        inner: Option<S>,
        req: ChunkRequest,
        delivered: u64,
    }
    let st = St {
        body: hit,
        inner: Some(inner),
        req,
        delivered: 0,
    };
    futures_util::stream::unfold(st, |mut st| async move {
        loop {
            match st.body.next().await {
                Some(Ok(b)) => {
                    st.delivered += b.len() as u64;
                    return Some((Ok(b), st));
                }
                Some(Err(Error::Store(why))) if st.inner.is_some() => {
                    let inner = st.inner.take()?;
                    let mut r = st.req.clone();
                    r.range.start += st.delivered;
                    tracing::warn!(chunk = ?r.key, %why, at = r.range.start, "store read failed mid-chunk; continuing from the origin");
                    let range = r.range.clone();
                    match inner.oneshot(r).await {
                        Ok(whole) => st.body = slice(whole, range),
                        Err(e) => return Some((Err(e), st)),
                    }
                }
                other => return other.map(|x| (x, st)),
            }
        }
    })
    .boxed()
}

/// The bytes `range` of `body`; an error if `body` ends before `range.end`.
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
