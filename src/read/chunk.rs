//! What the chunk stack is asked: one chunk's bytes, with the priority and the wait of the
//! request they serve, and where its answer is reported.

use crate::layer::gate::{Priority, Queued, Wait};
use crate::model::ChunkKey;
use crate::origin::RangeRequest;
use crate::telemetry::metrics::{Metrics, Report, Source};
use std::ops::Range;
use std::sync::Arc;

/// A request to the chunk stack: the bytes `range` (relative to the chunk start) of one chunk
/// of an object of `object_size` bytes.
///
/// The object size travels with the key because only it says how long the tail chunk is; the
/// fill checks the origin's answer against that length.
#[derive(Clone, Debug)]
pub struct ChunkRequest {
    /// Which chunk.
    pub key: ChunkKey,
    /// Size of the whole object.
    pub object_size: u64,
    /// The version id a client asked for (`?versionId=`), so the fill reads that version. Not
    /// part of the chunk's identity: the ETag already pins the bytes.
    pub version_id: Option<Arc<str>>,
    /// Wanted bytes of the chunk; `0..expected_len` for all of it.
    pub range: Range<u64>,
    /// `None` (urgent: a client waits for these bytes now) or a cell that says whether this
    /// is still readahead; readahead waits behind urgent work and is cancelled when unwanted.
    pub priority: Option<Priority>,
    /// How long a fill for this request may wait for memory and an origin slot.
    pub wait: Wait,
    /// Asked by a peer through `/internal/fill`: serve it here, never forward it again (the
    /// loop guard of SPEC §3).
    pub from_peer: bool,
    /// The store just failed to deliver this chunk (damaged, cut mid-read): the fill must not
    /// send the reader back to it, even if the store still says it has the chunk.
    pub bypass_store: bool,
    /// The client request's tally of where its chunks came from (for `x-shoal-cache` and the
    /// access log).
    pub report: Option<Arc<Report>>,
}

impl ChunkRequest {
    /// An urgent request for the whole chunk.
    pub fn whole(key: ChunkKey, object_size: u64) -> Self {
        let len = key.expected_len(object_size);
        ChunkRequest {
            key,
            object_size,
            version_id: None,
            range: 0..len,
            priority: None,
            wait: Wait::Default,
            from_peer: false,
            bypass_store: false,
            report: None,
        }
    }

    /// The chunk's exact length.
    pub fn chunk_len(&self) -> u64 {
        self.key.expected_len(self.object_size)
    }

    /// Whether this is (still) readahead rather than a client's current need.
    pub fn is_speculative(&self) -> bool {
        self.priority.as_ref().is_some_and(|p| !p.is_urgent())
    }
}

impl ChunkRequest {
    /// Records where this chunk's bytes came from: in `metrics`, in the current span, and in
    /// the client request's report.
    pub fn note(&self, metrics: &Metrics, s: Source) {
        metrics.chunk(s);
        // The `chunk` span this runs in (the reader's, or the fill leader's) says it too.
        tracing::Span::current().record("source", s.as_str());
        if let Some(r) = &self.report {
            r.chunk(s);
        }
    }
}

impl crate::layer::Resumable for ChunkRequest {
    fn expected_len(&self) -> Option<u64> {
        Some(self.range.end - self.range.start)
    }
    fn resume_from(&self, delivered: u64) -> Self {
        let start = (self.range.start + delivered).min(self.range.end);
        ChunkRequest {
            range: start..self.range.end,
            ..self.clone()
        }
    }
}

impl Queued for ChunkRequest {
    fn priority(&self) -> Option<&Priority> {
        self.priority.as_ref()
    }
    fn wait(&self) -> Wait {
        self.wait
    }
}

impl ChunkRequest {
    /// The origin read behind a chunk request: its range, pinned to its version, with its
    /// priority and wait.
    pub fn origin_read(self) -> RangeRequest {
        let k = &self.key;
        RangeRequest {
            bucket: k.bucket.clone(),
            key: k.key.clone(),
            etag: k.etag.clone(),
            version_id: self.version_id.clone(),
            object_size: self.object_size,
            offset: k.offset() + self.range.start,
            len: self.range.end - self.range.start,
            priority: self.priority.clone(),
            wait: self.wait,
        }
    }
}
