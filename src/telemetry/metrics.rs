//! Prometheus metrics, at `ops.listen` `/metrics`.
//!
//! Every name starts with `shoal_` and every label comes from a small closed set (an operation,
//! a status code Shoal itself produces, a source, an outcome), so the number of series is
//! bounded whatever the traffic. One [`Metrics`] per running Shoal, passed to what records into
//! it — no global registry — so every test server counts only its own work.
//!
//! Which metric answers which question is in the README ("Operating Shoal").

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What a client request was (the `op` label).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Op {
    Get,
    Head,
    List,
    ListBuckets,
    HeadBucket,
    Location,
    /// Refused or malformed before it could be classified.
    Other,
}

/// Where a chunk's bytes came from (the `result` label of chunk lookups).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Source {
    /// This replica's store (or hot cache).
    Hit,
    /// A fill already running here, joined.
    Joined,
    /// The replica that owns the chunk.
    Peer,
    /// The origin (a fill or a direct read).
    Origin,
}

/// How an origin request ended (the `outcome` label).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum OriginOutcome {
    Ok,
    NotFound,
    EtagChanged,
    Throttled,
    Unauthorized,
    Error,
}

/// How a request to a chunk's owner ended (the `outcome` label).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum PeerOutcome {
    /// The owner served the chunk.
    Served,
    /// The owner did not (409, unreachable, error) before a byte: filled here instead.
    Fallback,
    /// The owner's stream broke part-way: continued from the origin at the byte.
    Resumed,
}

/// How a metadata lookup was answered (the `result` label).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum MetaResult {
    /// From the cache.
    Hit,
    /// A cached 404 or "no ETag".
    NegativeHit,
    /// Asked the origin.
    Miss,
}

/// Label values in Prometheus' own style: lowercase, snake case.
macro_rules! label_values {
    ($t:ty { $($v:ident => $s:literal),* $(,)? }) => {
        impl $t {
            /// The label value.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$v => $s),* }
            }
        }
        impl EncodeLabelValue for $t {
            fn encode(&self, e: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
                EncodeLabelValue::encode(&self.as_str(), e)
            }
        }
    };
}

label_values!(Op {
    Get => "get", Head => "head", List => "list", ListBuckets => "list_buckets",
    HeadBucket => "head_bucket", Location => "location", Other => "other",
});
label_values!(Source { Hit => "hit", Joined => "joined", Peer => "peer", Origin => "origin" });
label_values!(OriginOutcome {
    Ok => "ok", NotFound => "not_found", EtagChanged => "etag_changed",
    Throttled => "throttled", Unauthorized => "unauthorized", Error => "error",
});
label_values!(PeerOutcome { Served => "served", Fallback => "fallback", Resumed => "resumed" });
label_values!(MetaResult { Hit => "hit", NegativeHit => "negative_hit", Miss => "miss" });

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    op: Op,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabel {
    op: Op,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabel {
    result: Source,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OriginLabel {
    outcome: OriginOutcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabel {
    outcome: PeerOutcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MetaLabel {
    result: MetaResult,
}

/// Values read when `/metrics` is scraped (store, budget, membership, flights).
#[derive(Clone, Copy, Debug, Default)]
pub struct Snapshot {
    /// Bytes of committed chunks.
    pub store_bytes: u64,
    /// `store.capacity`.
    pub store_capacity: u64,
    /// Committed chunks.
    pub store_chunks: u64,
    /// Chunks evicted for capacity.
    pub store_evictions: u64,
    /// Chunks that failed their checksum.
    pub store_checksum_failures: u64,
    /// Chunks the store declined to keep (admission).
    pub store_refused: u64,
    /// Commits that failed.
    pub store_failed_commits: u64,
    /// Log lines dropped because stdout did not keep up (process-wide).
    pub log_lines_dropped: u64,
    /// Bytes of `fill.buffer_budget` in use, and its size.
    pub budget_used: u64,
    /// `fill.buffer_budget`.
    pub budget_total: u64,
    /// Replicas in the current membership.
    pub members: u64,
    /// Fills, store writers and readahead running (the tracker shutdown waits on).
    pub background_tasks: u64,
    /// Tasks alive on the tokio runtime (every connection, request, fill and timer task).
    pub runtime_tasks: u64,
}

/// Shoal's metrics. Cheap to clone (shared).
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

struct Inner {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_seconds: Family<OpLabel, Histogram>,
    response_bytes: Counter,
    chunks: Family<SourceLabel, Counter>,
    origin_requests: Family<OriginLabel, Counter>,
    origin_bytes: Counter,
    origin_inflight: Gauge,
    origin_queue_seconds: Histogram,
    origin_first_byte_seconds: Histogram,
    origin_retries: Counter,
    budget_wait_seconds: Histogram,
    peer_fills: Family<PeerLabel, Counter>,
    peer_ejected: Gauge,
    metadata: Family<MetaLabel, Counter>,
    store_bytes: Gauge,
    store_capacity: Gauge,
    store_chunks: Gauge,
    store_evictions: Counter,
    store_checksum_failures: Counter,
    store_refused: Counter,
    store_failed_commits: Counter,
    budget_used: Gauge,
    budget_total: Gauge,
    members: Gauge,
    background_tasks: Gauge,
    runtime_tasks: Gauge,
    connections: Gauge,
    connections_refused: Counter,
    log_lines_dropped: Counter,
    /// Last values of the totals kept elsewhere (the store's, the log writer's), so the
    /// exported counters only ever grow.
    seen: [AtomicU64; 5],
}

fn latency() -> Histogram {
    // 100 µs … ~3.3 min.
    Histogram::new(exponential_buckets(0.0001, 2.0, 22))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh set of metrics.
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("shoal");
        let requests = Family::<RequestLabels, Counter>::default();
        r.register(
            "requests",
            "Client requests by operation and status",
            requests.clone(),
        );
        let request_seconds =
            Family::<OpLabel, Histogram>::new_with_constructor(latency as fn() -> Histogram);
        r.register(
            "request_duration_seconds",
            "Client request time, to the last byte sent",
            request_seconds.clone(),
        );
        let response_bytes = Counter::default();
        r.register(
            "response_bytes",
            "Body bytes sent to clients",
            response_bytes.clone(),
        );
        let chunks = Family::<SourceLabel, Counter>::default();
        r.register(
            "chunk_lookups",
            "Chunk reads by where the bytes came from: hit, joined, peer, origin",
            chunks.clone(),
        );
        let origin_requests = Family::<OriginLabel, Counter>::default();
        r.register(
            "origin_requests",
            "Origin range requests (attempts, retries included) by outcome",
            origin_requests.clone(),
        );
        let origin_bytes = Counter::default();
        r.register(
            "origin_bytes",
            "Bytes received from the origin",
            origin_bytes.clone(),
        );
        let origin_inflight = Gauge::default();
        r.register(
            "origin_inflight",
            "Origin range requests with a body still streaming",
            origin_inflight.clone(),
        );
        let origin_queue_seconds = latency();
        r.register(
            "origin_queue_wait_seconds",
            "Time fills waited for an origin slot",
            origin_queue_seconds.clone(),
        );
        let origin_first_byte_seconds = latency();
        r.register(
            "origin_first_byte_seconds",
            "Time from an origin range request to its answer's headers, failures included",
            origin_first_byte_seconds.clone(),
        );
        let origin_retries = Counter::default();
        r.register(
            "origin_retries",
            "Origin attempts repeated or resumed after a failure",
            origin_retries.clone(),
        );
        let budget_wait_seconds = latency();
        r.register(
            "budget_wait_seconds",
            "Time fills waited for memory (fill.buffer_budget)",
            budget_wait_seconds.clone(),
        );
        let peer_fills = Family::<PeerLabel, Counter>::default();
        r.register(
            "peer_fills",
            "Chunks asked of their owner, by outcome: served, fallback, resumed",
            peer_fills.clone(),
        );
        let peer_ejected = Gauge::default();
        r.register(
            "peer_ejected",
            "Peers ejected now: they failed to acknowledge a fill, so their chunks are filled \
             here until a probe succeeds",
            peer_ejected.clone(),
        );
        let metadata = Family::<MetaLabel, Counter>::default();
        r.register(
            "metadata_lookups",
            "Object metadata lookups: hit, negative_hit, miss",
            metadata.clone(),
        );
        let gauge = |r: &mut Registry, name: &str, help: &str| {
            let g = Gauge::default();
            r.register(name, help, g.clone());
            g
        };
        let counter = |r: &mut Registry, name: &str, help: &str| {
            let c = Counter::default();
            r.register(name, help, c.clone());
            c
        };
        let store_bytes = gauge(&mut r, "store_bytes", "Bytes of committed chunks");
        let store_capacity = gauge(&mut r, "store_capacity_bytes", "store.capacity");
        let store_chunks = gauge(&mut r, "store_chunks", "Committed chunks");
        let store_evictions = counter(&mut r, "store_evictions", "Chunks evicted for capacity");
        let store_checksum_failures = counter(
            &mut r,
            "store_checksum_failures",
            "Chunks that failed their checksum (dropped and refilled)",
        );
        let store_refused = counter(
            &mut r,
            "store_refused",
            "Complete chunks the store declined to keep (admission)",
        );
        let store_failed_commits =
            counter(&mut r, "store_failed_commits", "Chunk commits that failed");
        let log_lines_dropped = counter(
            &mut r,
            "log_lines_dropped",
            "Log lines dropped because stdout did not keep up (its reader stalled)",
        );
        let budget_used = gauge(
            &mut r,
            "budget_used_bytes",
            "Bytes of fill.buffer_budget in use",
        );
        let budget_total = gauge(&mut r, "budget_bytes", "fill.buffer_budget");
        let members = gauge(
            &mut r,
            "cluster_members",
            "Replicas in the current membership",
        );
        // A leak of tasks shows here long before it shows as memory (`make soak` plots both).
        let background_tasks = gauge(
            &mut r,
            "background_tasks",
            "Fills, store writers and readahead running",
        );
        let runtime_tasks = gauge(&mut r, "runtime_tasks", "Tasks alive on the tokio runtime");
        let connections = gauge(
            &mut r,
            "connections",
            "Open client connections (against server.max_connections)",
        );
        let connections_refused = counter(
            &mut r,
            "connections_refused",
            "Client connections over server.max_connections, answered 503 SlowDown or closed",
        );
        Metrics(Arc::new(Inner {
            registry: r,
            requests,
            request_seconds,
            response_bytes,
            chunks,
            origin_requests,
            origin_bytes,
            origin_inflight,
            origin_queue_seconds,
            origin_first_byte_seconds,
            origin_retries,
            budget_wait_seconds,
            peer_fills,
            peer_ejected,
            metadata,
            store_bytes,
            store_capacity,
            store_chunks,
            store_evictions,
            store_checksum_failures,
            store_refused,
            store_failed_commits,
            budget_used,
            budget_total,
            members,
            background_tasks,
            runtime_tasks,
            connections,
            connections_refused,
            log_lines_dropped,
            seen: Default::default(),
        }))
    }

    /// A finished client request.
    pub fn request(&self, op: Op, status: u16, took: Duration, bytes: u64) {
        let m = &self.0;
        m.requests
            .get_or_create(&RequestLabels { op, status })
            .inc();
        m.request_seconds
            .get_or_create(&OpLabel { op })
            .observe(took.as_secs_f64());
        m.response_bytes.inc_by(bytes);
    }

    /// A chunk read, by source.
    pub fn chunk(&self, result: Source) {
        self.0.chunks.get_or_create(&SourceLabel { result }).inc();
    }

    /// An origin request answered (or failed).
    pub fn origin(&self, outcome: OriginOutcome) {
        self.0
            .origin_requests
            .get_or_create(&OriginLabel { outcome })
            .inc();
    }

    /// Bytes received from the origin.
    pub fn origin_bytes(&self, n: u64) {
        self.0.origin_bytes.inc_by(n);
    }

    /// An origin body started (+1) or ended (−1).
    pub fn origin_inflight(&self, delta: i64) {
        self.0.origin_inflight.inc_by(delta);
    }

    /// Time waited for an origin slot.
    pub fn origin_queue(&self, waited: Duration) {
        self.0.origin_queue_seconds.observe(waited.as_secs_f64());
    }

    /// How long the origin took to answer a range request.
    pub fn origin_first_byte(&self, took: Duration) {
        self.0.origin_first_byte_seconds.observe(took.as_secs_f64());
    }

    /// An origin attempt repeated or resumed.
    pub fn origin_retry(&self) {
        self.0.origin_retries.inc();
    }

    /// Time waited for memory.
    pub fn budget_wait(&self, waited: Duration) {
        self.0.budget_wait_seconds.observe(waited.as_secs_f64());
    }

    /// A chunk asked of its owner.
    pub fn peer(&self, outcome: PeerOutcome) {
        self.0
            .peer_fills
            .get_or_create(&PeerLabel { outcome })
            .inc();
    }

    /// How many peers are ejected now (see `cluster::ejection`).
    pub fn peers_ejected(&self, n: usize) {
        self.0
            .peer_ejected
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// A client connection opened (+1) or closed (−1).
    pub fn connections(&self, delta: i64) {
        self.0.connections.inc_by(delta);
    }

    /// A client connection refused for the connection cap.
    pub fn connection_refused(&self) {
        self.0.connections_refused.inc();
    }

    /// A metadata lookup.
    pub fn metadata(&self, result: MetaResult) {
        self.0.metadata.get_or_create(&MetaLabel { result }).inc();
    }

    /// The Prometheus text exposition, with `now`'s scrape-time values.
    pub fn render(&self, now: Snapshot) -> String {
        let m = &self.0;
        let set = |g: &Gauge, v: u64| {
            g.set(i64::try_from(v).unwrap_or(i64::MAX));
        };
        set(&m.store_bytes, now.store_bytes);
        set(&m.store_capacity, now.store_capacity);
        set(&m.store_chunks, now.store_chunks);
        set(&m.budget_used, now.budget_used);
        set(&m.budget_total, now.budget_total);
        set(&m.members, now.members);
        set(&m.background_tasks, now.background_tasks);
        set(&m.runtime_tasks, now.runtime_tasks);
        // The store keeps totals; export their growth so the counters stay monotonic.
        for (i, (c, v)) in [
            (&m.store_evictions, now.store_evictions),
            (&m.store_checksum_failures, now.store_checksum_failures),
            (&m.store_refused, now.store_refused),
            (&m.store_failed_commits, now.store_failed_commits),
            (&m.log_lines_dropped, now.log_lines_dropped),
        ]
        .into_iter()
        .enumerate()
        {
            let before = m.seen[i].swap(v, Ordering::AcqRel);
            c.inc_by(v.saturating_sub(before));
        }
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &m.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Where one client request's chunks came from, counted as they are read; the source of the
/// first chunk is kept apart because it is known before the headers go out.
#[derive(Debug, Default)]
pub struct Report {
    counts: [AtomicU64; 4],
    first: std::sync::OnceLock<Source>,
    /// For HEAD: whether the metadata came from the cache.
    meta: std::sync::OnceLock<MetaResult>,
}

impl Report {
    /// Counts a chunk read.
    pub fn chunk(&self, s: Source) {
        let _ = self.first.set(s);
        self.counts[s as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Notes how the metadata lookup was answered.
    pub fn metadata(&self, r: MetaResult) {
        let _ = self.meta.set(r);
    }

    /// The first chunk's source.
    pub fn first(&self) -> Option<Source> {
        self.first.get().copied()
    }

    /// The metadata lookup's result.
    pub fn meta(&self) -> Option<MetaResult> {
        self.meta.get().copied()
    }

    /// (hit, joined, peer, origin) chunk counts.
    pub fn counts(&self) -> [u64; 4] {
        [0, 1, 2, 3].map(|i| self.counts[i].load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text_with_bounded_labels() {
        let m = Metrics::new();
        m.request(Op::Get, 200, Duration::from_millis(3), 10);
        m.chunk(Source::Hit);
        m.chunk(Source::Origin);
        m.origin(OriginOutcome::Ok);
        let t = m.render(Snapshot {
            store_evictions: 2,
            ..Snapshot::default()
        });
        assert!(
            t.contains("shoal_requests_total{op=\"get\",status=\"200\"} 1"),
            "{t}"
        );
        assert!(
            t.contains("shoal_chunk_lookups_total{result=\"hit\"} 1"),
            "{t}"
        );
        assert!(t.contains("shoal_store_evictions_total 2"), "{t}");
        // Counters from the store stay monotonic across scrapes.
        let t = m.render(Snapshot {
            store_evictions: 5,
            ..Snapshot::default()
        });
        assert!(t.contains("shoal_store_evictions_total 5"), "{t}");
        assert!(t.ends_with("# EOF\n"));
    }
}

/// What the `x-shoal-cache` header says about a GET or HEAD, as far as it is known when the
/// headers go out: where the first chunk came from, and whether the rest is in the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheStatus {
    /// Every byte from this replica's store (for HEAD: the metadata was cached).
    Hit,
    /// Filled from the origin (for HEAD: the origin was asked).
    Miss,
    /// Joined a fill already running here.
    Joined,
    /// Served by the replica that owns the chunk.
    Peer,
    /// Some chunks here, some not.
    Mixed,
}

impl CacheStatus {
    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Miss => "miss",
            CacheStatus::Joined => "joined",
            CacheStatus::Peer => "peer",
            CacheStatus::Mixed => "mixed",
        }
    }

    /// The status of a read whose first chunk came from `first`, when `stored` of its `rest`
    /// other chunks are in the store.
    pub fn of(first: Source, stored: usize, rest: usize) -> Self {
        match first {
            Source::Hit if stored == rest => CacheStatus::Hit,
            Source::Hit => CacheStatus::Mixed,
            _ if stored > 0 => CacheStatus::Mixed,
            Source::Joined => CacheStatus::Joined,
            Source::Peer => CacheStatus::Peer,
            Source::Origin => CacheStatus::Miss,
        }
    }
}
