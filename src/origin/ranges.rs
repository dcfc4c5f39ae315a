//! The origin as a tower service of ranged reads, metered: the bottom of the chunk stack.

use super::hedge::{hedged, LatencyWindow};
use super::{verify, Origin, Prefetched, RangeAnswer, RangeRequest};
use crate::config::HedgeAfter;
use crate::error::{Error, OriginError};
use crate::model::ByteStream;
use crate::telemetry::metrics::{Metrics, OriginOutcome};
use bytes::Bytes;
use futures_util::StreamExt;
use std::sync::Arc;

/// The origin as a tower service of ranged reads: the bottom of the chunk stack. Every answer
/// is [`verify`]-ed here, once, whatever the origin kind.
#[derive(Clone)]
pub struct OriginRanges {
    origin: Arc<dyn Origin>,
    metrics: Metrics,
    prefetched: Prefetched,
    /// `fill.hedge_after` (never `Off`), and the origin slots a hedge must take one of.
    hedge: Option<(HedgeAfter, crate::layer::Gate)>,
    /// Recent first-byte times of successful GETs (for `hedge_after = "p95"`).
    latency: Arc<LatencyWindow>,
}

impl OriginRanges {
    /// Wraps an origin.
    pub fn new(origin: Arc<dyn Origin>) -> Self {
        OriginRanges {
            origin,
            metrics: Metrics::new(),
            prefetched: Prefetched::default(),
            hedge: None,
            latency: Arc::default(),
        }
    }

    /// Hedges a GET that has not answered within `after` with a second one, when `slots` (the
    /// origin concurrency limit's) has one free; the first answer wins, the other is dropped,
    /// which cancels it. At most one hedge per request. `Off` (or a zero delay) = never.
    pub fn hedge(mut self, after: HedgeAfter, slots: crate::layer::Gate) -> Self {
        self.hedge = match after {
            HedgeAfter::Off => None,
            HedgeAfter::After(d) if d.is_zero() => None,
            a => Some((a, slots)),
        };
        self
    }

    /// Records first-byte times in `window` (shared, so the process can read its p95).
    pub fn latency_window(mut self, window: Arc<LatencyWindow>) -> Self {
        self.latency = window;
        self
    }

    /// Serves a chunk that starts at byte 0 from `prefetched` when its answer is parked there.
    pub fn prefetched(mut self, prefetched: Prefetched) -> Self {
        self.prefetched = prefetched;
        self
    }

    /// Counts origin requests (by outcome), bytes and bodies in flight in `metrics`.
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }
}

fn outcome(e: &OriginError) -> OriginOutcome {
    match e {
        OriginError::NotFound | OriginError::NoSuchBucket => OriginOutcome::NotFound,
        OriginError::EtagChanged => OriginOutcome::EtagChanged,
        OriginError::Throttled(_) => OriginOutcome::Throttled,
        OriginError::Unauthorized(_) => OriginOutcome::Unauthorized,
        _ => OriginOutcome::Error,
    }
}

/// Counts a body's bytes and marks it in flight until it ends or is dropped; the origin
/// request's span lasts as long and is told the bytes received.
struct Metered {
    body: ByteStream,
    metrics: Metrics,
    done: bool,
    bytes: u64,
    span: tracing::Span,
}

impl futures_util::Stream for Metered {
    type Item = Result<Bytes, Error>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let item = self.body.poll_next_unpin(cx);
        match &item {
            std::task::Poll::Ready(Some(Ok(b))) => {
                self.metrics.origin_bytes(b.len() as u64);
                self.bytes += b.len() as u64;
            }
            std::task::Poll::Ready(_) if !self.done => {
                self.done = true;
                self.metrics.origin_inflight(-1);
                self.span.record("bytes", self.bytes);
            }
            _ => {}
        }
        item
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        if !self.done {
            self.metrics.origin_inflight(-1);
            self.span.record("bytes", self.bytes);
        }
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
        let metrics = self.metrics.clone();
        let parked = self.prefetched.take(&r.bucket, &r.key, &r.etag, r.offset);
        let latency = self.latency.clone();
        let hedge = self.hedge.clone().and_then(|(after, slots)| match after {
            HedgeAfter::After(d) => Some((d, slots)),
            // Until the origin's normal latency is known, nothing counts as slow.
            HedgeAfter::P95 => latency.p95().map(|d| (d, slots)),
            HedgeAfter::Off => None,
        });
        use tracing::Instrument;
        let span = tracing::debug_span!(
            "origin_get",
            otel.kind = "client",
            bucket = %r.bucket,
            key = %r.key,
            offset = r.offset,
            len = r.len,
            outcome = tracing::field::Empty,
            bytes = tracing::field::Empty,
        );
        let held = span.clone();
        Box::pin(
            async move {
                if r.len == 0 {
                    return Ok(futures_util::stream::empty().boxed());
                }
                let answer = match parked {
                    // The bytes the metadata lookup's GET is already receiving.
                    Some((len, answer, first_byte)) if len > 0 && len <= r.len => {
                        metrics.origin_first_byte(first_byte);
                        latency.record(first_byte);
                        first_then_rest(origin, &r, len, answer)
                    }
                    _ => {
                        let asked = std::time::Instant::now();
                        let answer = match hedge {
                            Some((after, slots)) => hedged(&origin, &r, after, &slots).await,
                            None => origin.get_range(&r).await,
                        };
                        let first_byte = asked.elapsed();
                        metrics.origin_first_byte(first_byte);
                        if answer.is_ok() {
                            latency.record(first_byte);
                        }
                        answer.and_then(|a| verify(&r, &a).map(|()| a))
                    }
                };
                let answer = match answer {
                    Ok(a) => a,
                    Err(e) => {
                        let o = outcome(&e);
                        metrics.origin(o);
                        tracing::Span::current().record("outcome", o.as_str());
                        return Err(Error::Origin(e));
                    }
                };
                metrics.origin(OriginOutcome::Ok);
                tracing::Span::current().record("outcome", "ok");
                metrics.origin_inflight(1);
                Ok(Metered {
                    body: answer.body,
                    metrics,
                    done: false,
                    bytes: 0,
                    span: held,
                }
                .boxed())
            }
            .instrument(span),
        )
    }
}

/// The answer for `r` from a parked answer of its first `len` bytes: verified as such, then
/// followed — when `r` is longer (a bigger size tier's first chunk) — by a pinned GET of the rest,
/// itself verified before any of its bytes are used.
fn first_then_rest(
    origin: Arc<dyn Origin>,
    r: &RangeRequest,
    len: u64,
    first: RangeAnswer,
) -> Result<RangeAnswer, OriginError> {
    let mut head = r.clone();
    head.len = len;
    verify(&head, &first)?;
    if len == r.len {
        return Ok(first);
    }
    let mut rest = r.clone();
    rest.offset = r.offset + len;
    rest.len = r.len - len;
    let tail = futures_util::stream::once(async move {
        match origin.get_range(&rest).await {
            Ok(a) => match verify(&rest, &a) {
                Ok(()) => a.body,
                Err(e) => futures_util::stream::iter([Err(Error::Origin(e))]).boxed(),
            },
            Err(e) => futures_util::stream::iter([Err(Error::Origin(e))]).boxed(),
        }
    })
    .flatten();
    Ok(RangeAnswer {
        etag: first.etag,
        content_range: Some(format!(
            "bytes {}-{}/{}",
            r.offset,
            r.offset + r.len - 1,
            r.object_size
        )),
        content_length: Some(r.len),
        body: first.body.chain(tail).boxed(),
    })
}
