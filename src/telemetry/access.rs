//! The access log and the request metrics, written when a response's body ends.
//!
//! A GET's status and headers go out long before its last byte, and a client may hang up in
//! between. The line and the latency histogram must describe what the client got, so
//! [`Logged`] wraps the body and records once: when the body ends, fails, or is dropped.

use crate::telemetry::metrics::{Metrics, Op, Report};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

/// What is known about a request when its headers go out.
pub struct Entry {
    /// The request's span: the line is logged inside it (request id), and it stays open —
    /// in the trace, too — until the last byte.
    pub span: tracing::Span,
    /// When the request arrived.
    pub started: Instant,
    /// The operation.
    pub op: Op,
    /// The status sent.
    pub status: u16,
    /// The `x-shoal-cache` value, or `-`.
    pub cache: &'static str,
    /// Where the chunks came from.
    pub report: Arc<Report>,
    /// Where the request is counted.
    pub metrics: Metrics,
}

/// A response body that logs the access line and records the request's metrics when it ends.
pub struct Logged<B> {
    inner: B,
    entry: Option<Entry>,
    bytes: u64,
    /// The bytes the answer promised (its `Content-Length`; 0 for an empty body). hyper
    /// stops polling — and drops — a body once it has sent that many, or at once when
    /// there are none: reaching it is a complete answer.
    expected: Option<u64>,
}

impl<B: Body> Logged<B> {
    /// Wraps `inner`, the body of an answer with `content_length` (if it has one).
    pub fn new(inner: B, entry: Entry, content_length: Option<u64>) -> Self {
        let expected = if inner.is_end_stream() {
            Some(0)
        } else {
            content_length
        };
        Logged {
            inner,
            entry: Some(entry),
            bytes: 0,
            expected,
        }
    }
}

impl<B> Logged<B> {
    fn finish(&mut self, outcome: &'static str) {
        let Some(e) = self.entry.take() else { return };
        let took = e.started.elapsed();
        e.metrics.request(e.op, e.status, took, self.bytes);
        let [hit, joined, peer, origin] = e.report.counts();
        e.span.in_scope(|| {
            tracing::info!(
                op = e.op.as_str(),
                status = e.status,
                bytes = self.bytes,
                elapsed_ms = took.as_secs_f64() * 1e3,
                cache = %e.cache,
                chunks_hit = hit,
                chunks_joined = joined,
                chunks_peer = peer,
                chunks_origin = origin,
                outcome,
                "access"
            )
        });
    }
}

impl<B> Body for Logged<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    this.bytes += d.len() as u64;
                }
                if this.inner.is_end_stream() || Some(this.bytes) == this.expected {
                    this.finish("complete");
                }
            }
            Poll::Ready(Some(Err(_))) => this.finish("failed"),
            Poll::Ready(None) => this.finish("complete"),
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for Logged<B> {
    fn drop(&mut self) {
        // Anything else ending here was cut short: the client went away, or the connection
        // broke.
        let complete = Some(self.bytes) == self.expected;
        self.finish(if complete { "complete" } else { "aborted" });
    }
}
