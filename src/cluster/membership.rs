//! Membership: which replicas there are right now.
//!
//! Two sources: a static list of `host:port` (`cluster.peers`), or a DNS name whose A/AAAA
//! records are the replicas (`cluster.dns`: a Kubernetes headless Service with
//! `publishNotReadyAddresses`, all replicas on the cluster port). Either is read again every
//! `cluster.refresh`. This replica is always a member, whatever the source says.
//!
//! A failed refresh keeps the last good set, because a DNS hiccup must not make every replica
//! believe it owns everything (and fill everything from the origin at once). After five failed
//! refreshes in a row the set falls back to this replica alone: by then the old set is more
//! likely wrong than right, and owning everything locally is always correct, only less shared.
//! `/readyz` stays 503 until the first snapshot is taken.

use super::rendezvous::{self, Member};
use crate::config::ClusterConfig;
use crate::error::Error;
use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::TokioResolver;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long one refresh may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);
/// Failed refreshes in a row after which the set falls back to this replica alone.
const MAX_STALE_REFRESHES: u32 = 5;

/// The current members; cheap to clone and to read on every chunk.
#[derive(Clone)]
pub struct Membership {
    inner: Arc<Inner>,
}

struct Inner {
    me: Member,
    /// The cluster port, for members known without one (DNS).
    port: u16,
    members: RwLock<Arc<Vec<Member>>>,
    ready: AtomicBool,
    clustered: bool,
    /// Refreshes attempted so far (successful or not).
    refreshes: AtomicU64,
}

enum Source {
    Static(Vec<String>),
    Dns {
        name: String,
        resolver: Box<TokioResolver>,
    },
}

impl Source {
    async fn resolve(&self) -> Result<Vec<Member>, String> {
        match self {
            Source::Static(peers) => {
                let mut out = Vec::new();
                let mut failed = Vec::new();
                for p in peers {
                    let port = p
                        .rsplit_once(':')
                        .and_then(|(_, port)| port.parse::<u16>().ok())
                        .unwrap_or(0);
                    match tokio::net::lookup_host(p.as_str()).await {
                        Ok(addrs) => out.extend(addrs.map(|a| Member { ip: a.ip(), port })),
                        Err(e) => failed.push(format!("{p}: {e}")),
                    }
                }
                if out.is_empty() && !failed.is_empty() {
                    return Err(failed.join("; "));
                }
                if !failed.is_empty() {
                    tracing::warn!(peers = ?failed, "some static peers do not resolve; left out");
                }
                Ok(out)
            }
            Source::Dns { name, resolver } => match resolver.lookup_ip(name.as_str()).await {
                Ok(ips) => Ok(ips.iter().map(|ip| Member { ip, port: 0 }).collect()),
                // No records: nobody else is up (yet). Orca answers "self only" too.
                Err(e) if e.is_no_records_found() => Ok(Vec::new()),
                Err(e) => Err(e.to_string()),
            },
        }
    }
}

impl Membership {
    /// A replica on its own: it is the only member, and ready.
    pub fn solo() -> Self {
        let me = Member {
            ip: IpAddr::from([127, 0, 0, 1]),
            port: 0,
        };
        Membership {
            inner: Arc::new(Inner {
                me,
                port: 0,
                members: RwLock::new(Arc::new(vec![me])),
                ready: AtomicBool::new(true),
                clustered: false,
                refreshes: AtomicU64::new(0),
            }),
        }
    }

    /// A fixed set of members that is never refreshed (unit tests of what reads it).
    #[cfg(test)]
    pub(crate) fn fixed(me: Member, mut members: Vec<Member>) -> Self {
        members.push(me);
        members.sort();
        members.dedup();
        Membership {
            inner: Arc::new(Inner {
                me,
                port: 0,
                members: RwLock::new(Arc::new(members)),
                ready: AtomicBool::new(true),
                clustered: true,
                refreshes: AtomicU64::new(0),
            }),
        }
    }

    /// Reads membership from the configured source now (readiness follows the outcome), then
    /// every `cluster.refresh` on a task owned by `tasks`, until `stop`.
    pub async fn start(
        cfg: &ClusterConfig,
        tasks: &TaskTracker,
        stop: CancellationToken,
    ) -> Result<Self, Error> {
        if !cfg.enabled() {
            return Ok(Self::solo());
        }
        let adv = cfg
            .advertised()
            .ok_or_else(|| Error::internal("cluster.advertise is not set"))?;
        let static_peers = cfg.dns.is_none();
        let me = match adv.parse::<SocketAddr>() {
            Ok(a) if static_peers => Member {
                ip: a.ip(),
                port: a.port(),
            },
            Ok(a) => Member {
                ip: a.ip(),
                port: 0,
            },
            Err(_) => {
                let ip: IpAddr = adv.parse().map_err(|_| {
                    Error::internal(format!("cluster.advertise `{adv}` is not an ip"))
                })?;
                Member {
                    ip,
                    port: if static_peers { cfg.listen.port() } else { 0 },
                }
            }
        };
        let source = match &cfg.dns {
            None => Source::Static(cfg.peers.clone()),
            Some(name) => {
                let mut builder = match cfg.dns_server {
                    Some(server) => TokioResolver::builder_with_config(
                        ResolverConfig::from_parts(
                            None,
                            Vec::new(),
                            NameServerConfigGroup::from_ips_clear(
                                &[server.ip()],
                                server.port(),
                                true,
                            ),
                        ),
                        TokioConnectionProvider::default(),
                    ),
                    None => TokioResolver::builder_tokio()
                        .map_err(|e| Error::internal(format!("system DNS configuration: {e}")))?,
                };
                // Never trust an answer for longer than half a refresh: a changed set must
                // show within two refreshes.
                let opts = builder.options_mut();
                opts.positive_max_ttl = Some(cfg.refresh.0 / 2);
                opts.negative_max_ttl = Some(cfg.refresh.0 / 2);
                opts.timeout = RESOLVE_TIMEOUT;
                Source::Dns {
                    name: name.clone(),
                    resolver: Box::new(builder.build()),
                }
            }
        };
        let m = Membership {
            inner: Arc::new(Inner {
                me,
                port: cfg.listen.port(),
                members: RwLock::new(Arc::new(vec![me])),
                ready: AtomicBool::new(false),
                clustered: true,
                refreshes: AtomicU64::new(0),
            }),
        };
        let mut fails = 0u32;
        m.refresh(&source, &mut fails).await;
        let (m2, refresh) = (m.clone(), cfg.refresh.0);
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(refresh) => m2.refresh(&source, &mut fails).await,
                }
            }
        });
        Ok(m)
    }

    async fn refresh(&self, source: &Source, fails: &mut u32) {
        let found = match tokio::time::timeout(RESOLVE_TIMEOUT, source.resolve()).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {RESOLVE_TIMEOUT:?}")),
        };
        match found {
            Ok(mut set) => {
                *fails = 0;
                set.push(self.inner.me);
                set.sort();
                set.dedup();
                self.install(set);
            }
            Err(e) => {
                *fails += 1;
                if *fails > MAX_STALE_REFRESHES {
                    tracing::warn!(error = %e, failed = *fails, "membership unknown for too long; serving as a replica of one");
                    self.install(vec![self.inner.me]);
                } else {
                    tracing::warn!(error = %e, failed = *fails, "membership refresh failed; keeping the last set");
                }
            }
        }
        self.inner.refreshes.fetch_add(1, Ordering::AcqRel);
    }

    /// How many refreshes have been attempted (a refresh that failed counts too).
    pub fn refreshes(&self) -> u64 {
        self.inner.refreshes.load(Ordering::Acquire)
    }

    fn install(&self, set: Vec<Member>) {
        let mut cur = self
            .inner
            .members
            .write()
            .unwrap_or_else(|p| p.into_inner());
        let first = !self.inner.ready.swap(true, Ordering::AcqRel);
        if first || **cur != set {
            let added: Vec<String> = set
                .iter()
                .filter(|m| !cur.contains(m))
                .map(Member::to_string)
                .collect();
            let removed: Vec<String> = cur
                .iter()
                .filter(|m| !set.contains(m))
                .map(Member::to_string)
                .collect();
            tracing::info!(
                members = set.len(),
                ?added,
                ?removed,
                initial = first,
                "cluster membership changed"
            );
            *cur = Arc::new(set);
        }
    }

    /// This replica.
    pub fn me(&self) -> Member {
        self.inner.me
    }

    /// Whether other replicas may exist (a cluster is configured).
    pub fn is_clustered(&self) -> bool {
        self.inner.clustered
    }

    /// Whether the first membership snapshot has been taken.
    pub fn ready(&self) -> bool {
        self.inner.ready.load(Ordering::Acquire)
    }

    /// The current members, sorted.
    pub fn members(&self) -> Arc<Vec<Member>> {
        self.inner
            .members
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The owner of a chunk path under the current membership.
    pub fn owner(&self, path: &str) -> Member {
        let members = self.members();
        rendezvous::owner(&members, path)
            .copied()
            .unwrap_or(self.inner.me)
    }

    /// Where to reach a member's internal listener.
    pub fn address(&self, m: &Member) -> SocketAddr {
        SocketAddr::new(m.ip, if m.port == 0 { self.inner.port } else { m.port })
    }
}
