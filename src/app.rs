//! Wiring: origin, store, the two stacks, the listeners, and shutdown.

use crate::cluster::internal::{InternalState, PeerClient, PeerTimeouts, Secret};
use crate::cluster::{self, HotCache, Member, Membership, Tiered};
use crate::config::{Config, OriginKind, StoreKind};
use crate::error::{Error, ShoalClassify};
use crate::layer::negative_cache::Lookup;
use crate::layer::peer::PeerEvent;
use crate::layer::{
    ConcurrencyLimitLayer, NegativeCacheLayer, PeerRoutingLayer, RetryPolicy,
    RetryUntilCommitLayer, SingleflightLayer,
};
use crate::origin::{
    ByteStream, LatencyWindow, LocalOrigin, Origin, OriginRanges, Prefetched, RangeRequest,
    S3Origin,
};
use crate::read::budget::Budget;
use crate::read::chunk::ChunkRequest;
use crate::read::fill::{Fill, FillBody, FillConfig};
use crate::read::lookup::{OriginService, StoreLookupLayer};
use crate::read::meta::{InvalidateFn, MetaRequest, MetaService, ObjectRef, OriginMeta};
use crate::read::object::{ChunkService, ObjectService, ReadPolicy};
use crate::s3::{self, S3State};
use crate::server::Limits;
use crate::store::{ChunkStore, DiskStore, MemoryStore};
use crate::telemetry::metrics::{MetaResult, Metrics, PeerOutcome, Snapshot, Source};
use axum::routing::get;
use axum::Router;
use futures_util::StreamExt;
use http::StatusCode;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::util::BoxCloneSyncService;
use tower::{Layer, ServiceBuilder, ServiceExt};

/// Builds the origin named by the config.
pub async fn build_origin(cfg: &Config) -> Result<Arc<dyn Origin>, Error> {
    Ok(match cfg.origin.kind {
        OriginKind::S3 => Arc::new(S3Origin::new(&cfg.origin).await?),
        OriginKind::Azure => Arc::new(crate::origin::AzureOrigin::new(&cfg.origin)?),
        OriginKind::Local => {
            let root = cfg
                .origin
                .root
                .clone()
                .ok_or_else(|| Error::internal("origin.root is required"))?;
            Arc::new(LocalOrigin::new(root))
        }
    })
}

/// Builds the store named by the config.
pub async fn build_store(cfg: &Config) -> Result<Arc<dyn ChunkStore>, Error> {
    match cfg.store.kind {
        StoreKind::Memory => Ok(Arc::new(MemoryStore::new(cfg.store.capacity.0))),
        StoreKind::Disk => {
            let path = cfg
                .store
                .path
                .clone()
                .ok_or_else(|| Error::internal("store.path is required"))?;
            let (capacity, small) = (cfg.store.capacity.0, cfg.store.small_chunk_memory.0);
            let store = DiskStore::open_with(path, capacity, small)
                .map_err(|e| Error::Store(format!("cannot open the disk store: {e}").into()))?;
            Ok(Arc::new(store))
        }
        StoreKind::S3 => Ok(Arc::new(crate::store::S3Store::open(&cfg.store).await?)),
    }
}

/// The hot cache of a replica in a cluster: `cluster.hot_cache` bytes (default 10% of
/// `store.capacity`) on the same medium as the store — memory, or a `.hot` directory inside
/// the disk store's path.
pub fn build_hot_cache(cfg: &Config) -> Result<HotCache, Error> {
    let cap = cfg
        .cluster
        .hot_cache
        .map_or(cfg.store.capacity.0 / 10, |h| h.0)
        .max(1);
    let store: Arc<dyn ChunkStore> = match (cfg.store.kind, &cfg.store.path) {
        (StoreKind::Disk, Some(path)) => Arc::new(
            DiskStore::open(path.join(".hot"), cap)
                .map_err(|e| Error::Store(format!("cannot open the hot cache: {e}").into()))?,
        ),
        _ => Arc::new(MemoryStore::new(cap)),
    };
    Ok(HotCache::new(store))
}

/// What the parts of one running Shoal share.
#[derive(Clone)]
pub struct Shared {
    /// Every byte held outside the store is charged here.
    pub budget: Budget,
    /// Owns fills, writers and readahead, so that shutdown can wait for them.
    pub tasks: TaskTracker,
    /// Who owns which chunk.
    pub membership: Membership,
    /// Where everything is counted.
    pub metrics: Metrics,
    /// First chunks that cold GETs' metadata lookups are already receiving.
    pub prefetched: Prefetched,
    /// The origin's recent first-byte times (`fill.hedge_after = "p95"`).
    pub origin_latency: Arc<LatencyWindow>,
}

/// `fill.retry` as a policy: how hard an origin request is tried, for chunk fills and LISTs.
fn retry_policy(cfg: &Config) -> RetryPolicy {
    let retry = &cfg.fill.retry;
    RetryPolicy {
        attempts: retry.attempts,
        backoff_initial: retry.backoff_initial.0,
        backoff_max: retry.backoff_max.0,
        max_total: retry.max_total.0,
    }
}

/// The chunk stack of DESIGN.md, top to bottom, sharing the budget for every byte it holds
/// outside the store:
/// `StoreLookup ▸ Singleflight ▸ Fill ▸ PeerRouting ▸ ConcurrencyLimit ▸ RetryUntilCommit ▸
/// origin`. In a cluster, `PeerRouting` asks a chunk's owner first (see [`crate::cluster`]).
pub fn chunk_stack(
    cfg: &Config,
    origin: Arc<dyn Origin>,
    store: Arc<dyn ChunkStore>,
    hot: Option<HotCache>,
    shared: &Shared,
) -> ChunkService {
    let Shared {
        budget,
        tasks,
        membership,
        metrics,
        prefetched,
        origin_latency,
    } = shared.clone();
    let (m1, m2) = (metrics.clone(), metrics.clone());
    let limit = ConcurrencyLimitLayer::new(cfg.fill.origin_concurrency, cfg.fill.queue_timeout.0)
        .on_wait(move |d| m1.origin_queue(d));
    let slots = limit.gate();
    let origin_stack = ServiceBuilder::new()
        .layer(limit)
        .layer(
            RetryUntilCommitLayer::new(retry_policy(cfg), ShoalClassify)
                .on_retry(move || m2.origin_retry()),
        )
        .service(
            OriginRanges::new(origin)
                .latency_window(origin_latency)
                .metrics(metrics.clone())
                .prefetched(prefetched)
                .hedge(cfg.fill.hedge_after, slots),
        );
    let direct: OriginService = BoxCloneSyncService::new(
        origin_stack
            .clone()
            .map_response(|b| -> ByteStream { b.boxed() }),
    );
    let lookup: Arc<dyn ChunkStore> = match &hot {
        Some(h) => Arc::new(Tiered::new(store.clone(), h.clone())),
        None => store.clone(),
    };
    let peers = PeerClient::new(
        membership.clone(),
        Secret::new(cfg.cluster.secret.as_deref().unwrap_or_default()),
        PeerTimeouts {
            // The owner acknowledges at once (`cluster::internal`): only a stopped or wedged
            // owner takes longer.
            ack: cfg.cluster.peer_timeout.0,
            // The owner may be queued for an origin slot, then wait for the origin.
            first_byte: cfg.fill.queue_timeout.0 + cfg.origin.timeout.0,
            idle: cfg.origin.timeout.0,
        },
        metrics.clone(),
    );
    let (m, admitted) = (membership, peers.clone());
    let route = move |r: &ChunkRequest| -> Option<Member> {
        // A request a peer sent here is served here (the loop guard).
        if r.from_peer || !m.is_clustered() {
            return None;
        }
        let owner = m.owner(&r.key.path());
        // An ejected owner is not asked: its chunks are filled here until a probe shows it
        // is back (`cluster::ejection`).
        (owner != m.me() && admitted.admits(&owner)).then_some(owner)
    };
    let m3 = metrics.clone();
    let source = PeerRoutingLayer::new(route, peers)
        .on_event(move |e| {
            m3.peer(match e {
                PeerEvent::Served => PeerOutcome::Served,
                PeerEvent::Fallback => PeerOutcome::Fallback,
                PeerEvent::Resumed => PeerOutcome::Resumed,
            })
        })
        .layer(
            origin_stack.map_request(ChunkRequest::origin_read as fn(ChunkRequest) -> RangeRequest),
        );
    let fill = Fill::new(
        source,
        store,
        FillConfig {
            budget,
            queue_timeout: cfg.fill.queue_timeout.0,
            write_timeout: cfg.store.write_timeout.0,
            tasks: tasks.clone(),
            hot,
            metrics: metrics.clone(),
        },
    );
    let m4 = metrics.clone();
    let flights = SingleflightLayer::new(|r: &ChunkRequest| r.key.clone())
        .with_tracker(tasks)
        .on_call(move |r: &ChunkRequest, joined| {
            if joined {
                r.note(&m4, Source::Joined);
            }
        })
        .durable_when(|b: &FillBody| b.is_durable())
        .layer(fill);
    let progress = flights.progress();
    let stack = StoreLookupLayer::new(lookup)
        .metrics(metrics)
        .direct_ranges(direct, progress)
        .layer(flights);
    BoxCloneSyncService::new(stack)
}

/// The object service: the metadata stack over `origin`, and `chunks`.
pub fn object_service(
    cfg: &Config,
    origin: Arc<dyn Origin>,
    chunks: ChunkService,
    store: Arc<dyn ChunkStore>,
    shared: &Shared,
) -> ObjectService {
    let (tasks, metrics) = (shared.tasks.clone(), shared.metrics.clone());
    let head = OriginMeta {
        origin: origin.clone(),
        prefetched: shared.prefetched.clone(),
        clustered: shared.membership.is_clustered(),
        store: store.clone(),
        origin_id: cfg.origin.id.as_str().into(),
        base_chunk: cfg.chunk.size.0,
        tiers: cfg.chunk.tiers().into(),
    };
    let cached = NegativeCacheLayer::new(|r: &MetaRequest| r.object.clone(), ShoalClassify)
        .on_lookup(move |r: &MetaRequest, l| {
            let result = match l {
                Lookup::Hit => MetaResult::Hit,
                Lookup::NegativeHit => MetaResult::NegativeHit,
                Lookup::Miss => MetaResult::Miss,
            };
            metrics.metadata(result);
            if let Some(rep) = &r.report {
                rep.metadata(result);
            }
        })
        .ttl(cfg.metadata.ttl.0)
        .negative_ttl(cfg.metadata.negative_ttl.0)
        .max_entries(cfg.metadata.max_entries)
        .layer(head);
    let handle = cached.clone();
    let invalidate: InvalidateFn = Arc::new(move |r: ObjectRef, etag: Arc<str>| {
        let h = handle.clone();
        Box::pin(async move {
            h.invalidate_if(r, |v| matches!(v, Ok(m) if *m.etag == *etag))
                .await
        })
    });
    let meta: MetaService = BoxCloneSyncService::new(cached);
    ObjectService::new(
        cfg.origin.id.as_str().into(),
        meta,
        invalidate,
        chunks,
        cfg.chunk.size.0,
        cfg.chunk.tiers(),
        ReadPolicy {
            readahead: cfg.chunk.readahead,
            readahead_bytes: cfg.chunk.readahead_bytes.0,
            progress_timeout: cfg.fill.retry.max_total.0,
        },
        tasks,
        store,
    )
}

/// A running Shoal: its bound addresses and the handle to stop it.
pub struct Running {
    /// Where the S3 listener is bound.
    pub s3_addr: SocketAddr,
    /// Where the ops listener is bound.
    pub ops_addr: SocketAddr,
    /// Where the internal (cluster) listener is bound, in a cluster.
    pub cluster_addr: Option<SocketAddr>,
    /// Who owns what.
    pub membership: Membership,
    /// The chunk store (tests inspect it).
    pub store: Arc<dyn ChunkStore>,
    /// The byte budget (tests check that every byte comes back).
    pub budget: Budget,
    /// This replica's metrics (also served at `/metrics`).
    pub metrics: Metrics,
    /// First-chunk answers parked for their fills (tests check that none is left behind).
    pub prefetched: Prefetched,
    /// The origin's recent first-byte times, behind `fill.hedge_after = "p95"`.
    pub origin_latency: Arc<LatencyWindow>,
    tls: Option<crate::server::Tls>,
    stop: CancellationToken,
    servers: TaskTracker,
    fills: TaskTracker,
    grace: Duration,
}

impl Running {
    /// Stops accepting, lets in-flight responses and fills finish within the grace period.
    pub async fn shutdown(self) {
        self.stop.cancel();
        self.servers.close();
        self.fills.close();
        let all = async {
            self.servers.wait().await;
            self.fills.wait().await;
        };
        if tokio::time::timeout(self.grace, all).await.is_err() {
            tracing::warn!(grace = ?self.grace, "shutdown grace elapsed; dropping in-flight work");
        }
    }

    /// Waits (at most `limit`) until no fill is running: every chunk a finished response
    /// asked for is then committed or given up. Responses end when their last byte is sent,
    /// which can be a moment before the fill behind them has committed.
    pub async fn fills_settled(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while !self.fills.is_empty() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }

    /// Reads the S3 listener's TLS certificate and key again (SIGHUP). `Ok(false)` when TLS is
    /// off; on error the old pair stays in use.
    pub fn reload_tls(&self) -> Result<bool, Error> {
        match &self.tls {
            Some(t) => t.reload().map(|()| true),
            None => Ok(false),
        }
    }

    /// Resolves when a stop was requested (by `shutdown` or a signal handler).
    pub async fn stopped(&self) {
        self.stop.cancelled().await
    }

    /// A token that stops the server when cancelled.
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }
}

/// Starts Shoal with `origin` (tests pass a wrapped one) and the store the config names.
pub async fn start(cfg: &Config, origin: Arc<dyn Origin>) -> Result<Running, Error> {
    let store = build_store(cfg).await?;
    start_with(cfg, origin, store).await
}

/// Starts Shoal with an explicit origin and store.
pub async fn start_with(
    cfg: &Config,
    origin: Arc<dyn Origin>,
    store: Arc<dyn ChunkStore>,
) -> Result<Running, Error> {
    let fills = TaskTracker::new();
    let stop = CancellationToken::new();
    let servers = TaskTracker::new();
    let membership = Membership::start(&cfg.cluster, &servers, stop.clone()).await?;
    let budget = Budget::new(cfg.fill.buffer_budget.0);
    let metrics = Metrics::new();
    let hot = if membership.is_clustered() {
        Some(build_hot_cache(cfg)?)
    } else {
        None
    };
    let prefetched = Prefetched::default();
    let origin_latency = Arc::new(LatencyWindow::default());
    let shared = Shared {
        budget: budget.clone(),
        tasks: fills.clone(),
        membership: membership.clone(),
        metrics: metrics.clone(),
        prefetched: prefetched.clone(),
        origin_latency: origin_latency.clone(),
    };
    let chunks = chunk_stack(cfg, origin.clone(), store.clone(), hot, &shared);
    let objects = object_service(cfg, origin.clone(), chunks.clone(), store.clone(), &shared);
    let state = Arc::new(S3State {
        objects,
        origin,
        lists: crate::s3::list_cache::ListCache::new(cfg.list.ttl.0, cfg.list.max_entries)
            .retry(retry_policy(cfg)),
        buckets: cfg.origin.buckets.clone(),
        domain: cfg.server.domain.clone(),
        auth: crate::s3::auth::Authenticator::from_config(&cfg.auth)?,
        metrics: metrics.clone(),
    });
    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|e| Error::internal(format!("cannot listen on {addr}: {e}")))
    };
    let s3_listener = bind(cfg.server.listen).await?;
    let ops_listener = bind(cfg.ops.listen).await?;
    let s3_addr = s3_listener
        .local_addr()
        .map_err(|e| Error::internal(e.to_string()))?;
    let ops_addr = ops_listener
        .local_addr()
        .map_err(|e| Error::internal(e.to_string()))?;
    let ready = Arc::new(AtomicBool::new(false));

    let s3_app = s3::router(state);
    let limits = Limits {
        max_connections: cfg.server.max_connections,
        http2_max_streams: cfg.server.http2_max_streams,
        metrics: Some(metrics.clone()),
    };
    let tls = match (&cfg.server.tls.cert, &cfg.server.tls.key) {
        (Some(c), Some(k)) => Some(crate::server::Tls::load(c, k)?),
        _ => None,
    };
    servers.spawn(crate::server::serve(
        s3_listener,
        s3_app,
        limits.clone(),
        tls.clone(),
        stop.clone(),
    ));
    let cluster_addr = if membership.is_clustered() {
        let l = bind(cfg.cluster.listen).await?;
        let addr = l.local_addr().map_err(|e| Error::internal(e.to_string()))?;
        let internal = cluster::internal::router(Arc::new(InternalState {
            chunks,
            membership: membership.clone(),
            secret: Secret::new(cfg.cluster.secret.as_deref().unwrap_or_default()),
            origin_id: cfg.origin.id.as_str().into(),
            buckets: cfg.origin.buckets.clone(),
        }));
        servers.spawn(crate::server::serve(
            l,
            internal,
            Limits {
                metrics: None,
                ..limits
            },
            None,
            stop.clone(),
        ));
        Some(addr)
    } else {
        None
    };
    let r2 = ready.clone();
    let m2 = membership.clone();
    let details: Arc<str> = match cfg.store.kind {
        StoreKind::Memory => "store.kind = memory\n".to_owned(),
        StoreKind::Disk => "store.kind = disk\n".to_owned(),
        StoreKind::S3 => format!(
            "store.kind = s3\nstore.bucket = {}\n",
            cfg.store.bucket.as_deref().unwrap_or("")
        ),
    }
    .into();
    let scrape = {
        let (metrics, store, budget, membership, tracked) = (
            metrics.clone(),
            store.clone(),
            budget.clone(),
            membership.clone(),
            fills.clone(),
        );
        let capacity = cfg.store.capacity.0;
        move || {
            let s = store.stats();
            let body = metrics.render(Snapshot {
                store_bytes: s.used_bytes,
                store_capacity: capacity,
                store_chunks: s.chunks,
                store_evictions: s.evictions,
                store_checksum_failures: s.corrupt,
                store_refused: s.refused,
                store_failed_commits: s.failed_commits,
                log_lines_dropped: crate::telemetry::sink::dropped(),
                budget_used: budget.total() - budget.available(),
                budget_total: budget.total(),
                members: membership.members().len() as u64,
                background_tasks: tracked.len() as u64,
                // Cheap: one atomic load per worker; `/metrics` runs on the runtime itself.
                runtime_tasks: tokio::runtime::Handle::try_current()
                    .map_or(0, |h| h.metrics().num_alive_tasks() as u64),
            });
            async move {
                (
                    [(
                        http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    body,
                )
            }
        }
    };
    let ops_app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(scrape))
        .route(
            "/readyz",
            get(move || {
                let (r, m, details) = (r2.clone(), m2.clone(), details.clone());
                async move {
                    // Ready once listening, with a first membership snapshot. The first line
                    // says so; the next ones say what this replica runs on.
                    if r.load(Ordering::Acquire) && m.ready() {
                        (StatusCode::OK, format!("ready\n{details}"))
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("not ready\n{details}"),
                        )
                    }
                }
            }),
        );
    let s = stop.clone();
    servers.spawn(async move {
        let r = axum::serve(ops_listener, ops_app)
            .with_graceful_shutdown(s.cancelled_owned())
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "ops listener failed");
        }
    });
    ready.store(true, Ordering::Release);
    let members: Vec<String> = membership.members().iter().map(Member::to_string).collect();
    tracing::info!(
        %s3_addr,
        %ops_addr,
        cluster_addr = ?cluster_addr,
        origin = %cfg.origin.id,
        ?members,
        "shoal listening"
    );
    Ok(Running {
        s3_addr,
        ops_addr,
        cluster_addr,
        membership,
        store,
        budget,
        metrics,
        prefetched,
        origin_latency,
        tls,
        stop,
        servers,
        fills,
        grace: cfg.server.shutdown_grace.0,
    })
}
