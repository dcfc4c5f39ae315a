//! The core fill service: origin bytes → the reader and the store, committed on completion.
//!
//! Each piece that arrives from the origin is handed on to the reader (in practice the
//! singleflight buffer that every waiting client reads) and written to a store writer at the
//! same time. When the origin stream ends, the byte count is checked against the chunk's
//! expected length; only then is the chunk committed. The stream ends only after the commit, so
//! a request that arrives while the commit runs is still joined to this fill, and one that
//! arrives after finds the chunk in the store — there is no window in which a second origin
//! request for the chunk could start.
//!
//! A store that fails (full disk, I/O error) costs caching, never correctness: the writer is
//! dropped and the bytes keep flowing to the clients.

use crate::chunk::ChunkRequest;
use crate::error::{Error, OriginError};
use crate::layer::retry::Truncated;
use crate::origin::{ByteStream, RangeRequest};
use crate::store::{ChunkStore, ChunkWriter};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{Stream, StreamExt};
use std::sync::Arc;
use std::task::{Context, Poll};
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

/// Fills whole chunks from the service below (the origin stack) into `store`.
#[derive(Clone)]
pub struct Fill<S> {
    origin: S,
    store: Arc<dyn ChunkStore>,
}

impl<S> Fill<S> {
    /// Fills from `origin` into `store`.
    pub fn new(origin: S, store: Arc<dyn ChunkStore>) -> Self {
        Fill { origin, store }
    }
}

struct Tee<B> {
    body: B,
    writer: Option<Box<dyn ChunkWriter>>,
    got: u64,
    expected: u64,
    done: bool,
    label: String,
}

impl<S> Service<ChunkRequest> for Fill<S>
where
    S: Service<RangeRequest, Error = Error> + Clone + Send + 'static,
    S::Future: Send,
    S::Response: Stream<Item = Result<Bytes, Error>> + Send + Unpin + 'static,
{
    type Response = ByteStream;
    type Error = Error;
    type Future = BoxFuture<'static, Result<ByteStream, Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: ChunkRequest) -> Self::Future {
        let origin = self.origin.clone();
        let store = self.store.clone();
        Box::pin(async move {
            let expected = req.chunk_len();
            // Double-check: the chunk may have been committed between this request's store
            // lookup and its arrival here (a fill that just finished).
            if let Ok(Some(hit)) = store.get(&req.key, 0..expected).await {
                return Ok(hit);
            }
            let k = &req.key;
            let body = origin
                .oneshot(RangeRequest {
                    bucket: k.bucket.clone(),
                    key: k.key.clone(),
                    etag: k.etag.clone(),
                    offset: k.offset(),
                    len: expected,
                })
                .await?;
            let writer = match store.begin(k, expected).await {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!(chunk = ?k, error = %e, "store cannot take chunk; serving uncached");
                    None
                }
            };
            let tee = Tee {
                body,
                writer,
                got: 0,
                expected,
                done: false,
                label: format!("{k:?}"),
            };
            let stream = futures_util::stream::unfold(tee, |mut t| async move {
                if t.done {
                    return None;
                }
                match t.body.next().await {
                    Some(Ok(b)) => {
                        t.got += b.len() as u64;
                        if t.got > t.expected {
                            t.done = true;
                            let e = OriginError::Protocol(format!(
                                "origin sent more than the {} bytes asked for",
                                t.expected
                            ));
                            return Some((Err(e.into()), t));
                        }
                        if let Some(w) = t.writer.as_mut() {
                            if let Err(e) = w.write(b.clone()).await {
                                tracing::warn!(chunk = %t.label, error = %e, "store write failed; serving uncached");
                                t.writer = None;
                            }
                        }
                        Some((Ok(b), t))
                    }
                    Some(Err(e)) => {
                        t.done = true;
                        Some((Err(e), t))
                    }
                    None => {
                        t.done = true;
                        if t.got != t.expected {
                            let e = Truncated {
                                got: t.got,
                                expected: t.expected,
                            };
                            return Some((Err(e.into()), t));
                        }
                        if let Some(w) = t.writer.take() {
                            match w.commit().await {
                                Ok(()) => {
                                    tracing::debug!(chunk = %t.label, bytes = t.got, "chunk committed")
                                }
                                Err(e) => {
                                    tracing::warn!(chunk = %t.label, error = %e, "commit failed; next request refills")
                                }
                            }
                        }
                        None
                    }
                }
            });
            Ok(stream.boxed())
        })
    }
}
