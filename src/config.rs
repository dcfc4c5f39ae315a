//! Configuration: defaults ◂ TOML file ◂ `SHOAL_…` environment (`__` nests).
//!
//! Every value is checked at start, and a bad one stops the process with one line that names
//! the key. A cache that starts with a typo in its config and quietly runs on a default is
//! worse than one that refuses to start: the operator finds out from an outage instead of from
//! the deploy.

use crate::model::{Tier, MIN_CHUNK_SIZE};
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A byte count written as `"8 MiB"`, `"1.5 GiB"`, `"64KB"` or a bare integer.
///
/// IEC suffixes (KiB, MiB, …) are powers of two, SI suffixes (KB, MB, …) powers of ten, as
/// operators expect from other tools.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Parses the human form; the error says what was wrong with it.
    pub fn parse(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if t.is_empty() {
            return Err("size is empty".into());
        }
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let num: f64 = num
            .parse()
            .map_err(|_| format!("`{s}` is not a size like \"8 MiB\""))?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1_000,
            "kib" => 1 << 10,
            "m" | "mb" => 1_000_000,
            "mib" => 1 << 20,
            "g" | "gb" => 1_000_000_000,
            "gib" => 1 << 30,
            "t" | "tb" => 1_000_000_000_000,
            "tib" => 1 << 40,
            other => return Err(format!("unknown size unit `{other}` in `{s}`")),
        };
        let v = num * mult as f64;
        if !v.is_finite() || v < 0.0 || v > u64::MAX as f64 {
            return Err(format!("`{s}` is out of range"));
        }
        Ok(ByteSize(v as u64))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0;
        for (unit, shift) in [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)] {
            if v >= 1 << shift && v % (1 << shift) == 0 {
                return write!(f, "{} {unit}", v >> shift);
            }
        }
        write!(f, "{v} B")
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => ByteSize::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

/// A duration written as `"5s"`, `"100ms"`, `"5m"` (humantime syntax).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(s.trim()).map(Dur).map_err(|e| {
            serde::de::Error::custom(format!("`{s}` is not a duration like \"5s\": {e}"))
        })
    }
}

/// A secret from the config (a user's or the origin's secret key, the cluster secret, a SAS
/// token): its `Debug` prints `***`, so a config can be logged or printed whole, and it reads
/// and writes as the plain string. `as_deref()` on an `Option<Secret>` gives the `&str`.
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for the one place that uses it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl std::ops::Deref for Secret {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret(s.to_owned())
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(s)
    }
}

/// `fill.hedge_after`: when a slow origin GET gets a second, identical one.
///
/// A fixed delay suits an origin whose latency is known; `"p95"` follows the origin as it is:
/// a GET still unanswered at the 95th percentile of recent first-byte times is in the tail,
/// and a hedge then costs at most about 5 % more origin requests (the "tail at scale" rule).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HedgeAfter {
    /// Never hedge (`"0s"`, the default).
    Off,
    /// After this long.
    After(Duration),
    /// After the observed 95th percentile of the origin's recent first-byte times; no hedge
    /// until enough GETs have been seen to know it.
    P95,
}

impl Serialize for HedgeAfter {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            HedgeAfter::Off => s.serialize_str("0s"),
            HedgeAfter::After(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            HedgeAfter::P95 => s.serialize_str("p95"),
        }
    }
}

impl<'de> Deserialize<'de> for HedgeAfter {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.trim().eq_ignore_ascii_case("p95") {
            return Ok(HedgeAfter::P95);
        }
        match humantime::parse_duration(s.trim()) {
            Ok(d) if d.is_zero() => Ok(HedgeAfter::Off),
            Ok(d) => Ok(HedgeAfter::After(d)),
            Err(e) => Err(serde::de::Error::custom(format!(
                "`{s}` is neither a duration like \"200ms\" nor \"p95\": {e}"
            ))),
        }
    }
}

/// The whole configuration.
#[derive(Clone, Debug, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The S3 listener.
    pub server: ServerConfig,
    /// Where misses are filled from.
    pub origin: OriginConfig,
    /// Where chunks are kept.
    pub store: StoreConfig,
    /// How objects are cut.
    pub chunk: ChunkConfig,
    /// How misses are filled.
    pub fill: FillConfig,
    /// The object metadata (HEAD) cache.
    pub metadata: MetadataConfig,
    /// The LIST cache.
    pub list: ListConfig,
    /// Health and readiness listener.
    pub ops: OpsConfig,
    /// Replicas that share the work: membership, ownership, the internal fill listener.
    pub cluster: ClusterConfig,
    /// Who may read: client signatures and per-user buckets.
    pub auth: AuthConfig,
    /// Logs.
    pub telemetry: TelemetryConfig,
}

/// `server.*`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// S3 listener address.
    pub listen: SocketAddr,
    /// Base domain for virtual-hosted-style requests (`bucket.domain`); unset = path style only.
    pub domain: Option<String>,
    /// Bound on graceful shutdown: in-flight responses get this long to finish after SIGTERM.
    pub shutdown_grace: Dur,
    /// Open client connections at most; a connection past the cap is answered 503 `SlowDown`
    /// and closed, never silently dropped.
    pub max_connections: usize,
    /// Concurrent HTTP/2 streams per connection; further streams are refused (`REFUSED_STREAM`,
    /// which clients retry).
    pub http2_max_streams: u32,
    /// TLS on the S3 listener (both files set), reloaded on SIGHUP.
    pub tls: TlsConfig,
}

/// `server.tls.*`
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert: Option<PathBuf>,
    /// PEM private key.
    pub key: Option<PathBuf>,
}

/// `auth.mode`
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Verify AWS Signature Version 4 on every request (header or presigned URL).
    #[default]
    Sigv4,
    /// Answer anyone who can reach the listener.
    None,
}

/// `auth.*`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `sigv4` or `none`.
    pub mode: AuthMode,
    /// How far a signed request's time may be from this clock.
    pub max_skew: Dur,
    /// The users, from `[[auth.users]]` or `SHOAL_AUTH__USERS`.
    pub users: Vec<UserConfig>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            mode: AuthMode::Sigv4,
            max_skew: Dur(Duration::from_secs(15 * 60)),
            users: Vec::new(),
        }
    }
}

/// One `[[auth.users]]` entry.
#[derive(Clone, Debug, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct UserConfig {
    /// The access key id clients sign with.
    pub access_key_id: String,
    /// The secret, inline…
    pub secret_access_key: Option<Secret>,
    /// …or in a file (a mounted Kubernetes Secret).
    pub secret_access_key_file: Option<PathBuf>,
    /// Buckets this user may read; empty = every bucket Shoal serves.
    pub buckets: Vec<String>,
}

impl UserConfig {
    /// The secret, from the config or its file.
    pub fn secret(&self) -> Result<String, String> {
        match (&self.secret_access_key, &self.secret_access_key_file) {
            (Some(s), None) => Ok(s.expose().to_owned()),
            (None, Some(p)) => std::fs::read_to_string(p)
                .map(|s| s.trim_end_matches(['\n', '\r']).to_owned())
                .map_err(|e| format!("cannot read {}: {e}", p.display())),
            _ => Err("set exactly one of secret_access_key and secret_access_key_file".into()),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: ([0, 0, 0, 0], 9000).into(),
            domain: None,
            shutdown_grace: Dur(Duration::from_secs(30)),
            max_connections: 4096,
            http2_max_streams: 256,
            tls: TlsConfig::default(),
        }
    }
}

/// Which kind of origin serves misses.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OriginKind {
    /// AWS S3 or any S3-compatible store, through aws-sdk-s3.
    S3,
    /// A local directory, one folder per bucket (demos and `make run`).
    Local,
    /// Azure Blob Storage: containers are buckets, blob names are keys.
    Azure,
}

/// `origin.*`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OriginConfig {
    /// Names this origin inside every chunk path; change it and the cache starts cold.
    pub id: String,
    /// `s3` or `local`.
    pub kind: OriginKind,
    /// Endpoint URL for S3-compatible stores; unset = AWS.
    pub endpoint: Option<String>,
    /// Region used for signing (and answered to GetBucketLocation).
    pub region: String,
    /// Path-style addressing (most non-AWS stores need it).
    pub force_path_style: bool,
    /// Static credentials; unset = the standard AWS chain.
    pub access_key_id: Option<String>,
    /// Static credentials; unset = the standard AWS chain.
    pub secret_access_key: Option<Secret>,
    /// Bucket allowlist; empty = any bucket the credentials can read.
    pub buckets: Vec<String>,
    /// Directory served by the `local` origin.
    pub root: Option<PathBuf>,
    /// `azure`: the storage account name.
    pub account: Option<String>,
    /// `azure`: the account key (base64), for Shared Key authentication.
    pub access_key: Option<Secret>,
    /// `azure`: a SAS token (the query string, with or without `?`) instead of the key.
    pub sas_token: Option<Secret>,
    /// How long the origin may take to answer a request (and how long a body may stall);
    /// past it the request counts as a transient failure and is retried or resumed.
    pub timeout: Dur,
}

impl Default for OriginConfig {
    fn default() -> Self {
        OriginConfig {
            id: "default".into(),
            kind: OriginKind::S3,
            endpoint: None,
            region: "us-east-1".into(),
            force_path_style: false,
            access_key_id: None,
            secret_access_key: None,
            buckets: Vec::new(),
            root: None,
            account: None,
            access_key: None,
            sas_token: None,
            timeout: Dur(Duration::from_secs(10)),
        }
    }
}

/// Which store keeps chunks.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// In-process, byte-weighted; lost on restart.
    Memory,
    /// Files under `store.path`; survives restart.
    Disk,
    /// Objects in a bucket of an S3-compatible store that every replica shares (orca's
    /// cachestore).
    S3,
}

/// `store.*`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `memory`, `disk` or `s3`.
    pub kind: StoreKind,
    /// Upper bound on stored chunk bytes (memory and disk; an `s3` store's size is its
    /// bucket's business, bounded by lifecycle rules).
    pub capacity: ByteSize,
    /// Directory of the disk store.
    pub path: Option<PathBuf>,
    /// Disk store: memory that keeps small chunks (small objects, tails of large ones) once
    /// read, so a hot small object is served without a disk read. Part of the process's
    /// fixed memory, on top of `fill.buffer_budget`; at most `store.capacity`; 0 = off.
    pub small_chunk_memory: ByteSize,
    /// Longest a single store call (open, write, commit) of a chunk writer may take before the
    /// chunk is given up (not committed); readers never wait for it.
    pub write_timeout: Dur,
    /// `s3` store: endpoint URL of the S3-compatible store; unset = AWS.
    pub endpoint: Option<String>,
    /// `s3` store: the bucket every replica shares.
    pub bucket: Option<String>,
    /// `s3` store: region used for signing.
    pub region: String,
    /// `s3` store: path-style addressing (most non-AWS stores need it).
    pub force_path_style: bool,
    /// `s3` store: static credentials; unset = the standard AWS chain.
    pub access_key_id: Option<String>,
    /// `s3` store: static credentials; unset = the standard AWS chain.
    pub secret_access_key: Option<Secret>,
    /// `s3` store: key prefix of every chunk object (`prefix/origin_id/hash/index`).
    pub prefix: String,
    /// `s3` store: how many chunks the in-memory presence catalog remembers, so that a hit
    /// costs no HEAD.
    pub catalog_entries: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            kind: StoreKind::Memory,
            capacity: ByteSize(1 << 30),
            path: None,
            small_chunk_memory: ByteSize(64 << 20),
            write_timeout: Dur(Duration::from_secs(30)),
            endpoint: None,
            bucket: None,
            region: "us-east-1".into(),
            force_path_style: false,
            access_key_id: None,
            secret_access_key: None,
            prefix: String::new(),
            catalog_entries: 1_000_000,
        }
    }
}

/// One `[[chunk.tiers]]` entry.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierConfig {
    /// Objects at least this big…
    pub min_object_size: ByteSize,
    /// …are cut into chunks of this size.
    pub chunk_size: ByteSize,
}

/// `chunk.*`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChunkConfig {
    /// Base chunk size (min 1 MiB).
    pub size: ByteSize,
    /// Chunks fetched ahead of the one being sent on a multi-chunk GET.
    pub readahead: usize,
    /// Bytes fetched ahead at most, per GET (whichever of the two limits is smaller wins).
    pub readahead_bytes: ByteSize,
    /// Larger chunks for larger objects; strictly ascending by `min_object_size`.
    pub tiers: Vec<TierConfig>,
}

impl Default for ChunkConfig {
    fn default() -> Self {
        ChunkConfig {
            size: ByteSize(8 << 20),
            readahead: 8,
            readahead_bytes: ByteSize(64 << 20),
            tiers: vec![
                TierConfig {
                    min_object_size: ByteSize(1 << 30),
                    chunk_size: ByteSize(64 << 20),
                },
                TierConfig {
                    min_object_size: ByteSize(10 << 30),
                    chunk_size: ByteSize(128 << 20),
                },
            ],
        }
    }
}

impl ChunkConfig {
    /// The ladder as chunk-model tiers.
    pub fn tiers(&self) -> Vec<Tier> {
        self.tiers
            .iter()
            .map(|t| Tier {
                min_object_size: t.min_object_size.0,
                chunk_size: t.chunk_size.0,
            })
            .collect()
    }
}

/// `fill.retry.*`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Origin requests per fill, first one included.
    pub attempts: u32,
    /// First backoff; doubles per retry.
    pub backoff_initial: Dur,
    /// Backoff cap.
    pub backoff_max: Dur,
    /// Time a fill may go without progress (a received byte resets it); must leave room for
    /// a retry after an `origin.timeout`.
    pub max_total: Dur,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            attempts: 3,
            backoff_initial: Dur(Duration::from_millis(100)),
            backoff_max: Dur(Duration::from_secs(2)),
            max_total: Dur(Duration::from_secs(30)),
        }
    }
}

/// `fill.*`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FillConfig {
    /// Origin requests in flight per replica.
    pub origin_concurrency: usize,
    /// How long a fill waits for an origin slot before the client gets 503 SlowDown.
    pub queue_timeout: Dur,
    /// Bytes held outside the store (fill buffers, readahead, pieces on their way to a store
    /// writer), for the whole process. Fills wait for it, then answer 503 SlowDown.
    pub buffer_budget: ByteSize,
    /// Retry budget.
    pub retry: RetryConfig,
    /// A chunk's origin GET that has not answered within this long (a duration, or `"p95"`
    /// of the origin's recent first-byte times) gets a second, identical GET (a hedge) if an
    /// origin slot is free; the first answer wins and the other is cancelled. 0 = never.
    pub hedge_after: HedgeAfter,
}

impl Default for FillConfig {
    fn default() -> Self {
        FillConfig {
            origin_concurrency: 64,
            queue_timeout: Dur(Duration::from_secs(5)),
            buffer_budget: ByteSize(1 << 30),
            retry: RetryConfig::default(),
            hedge_after: HedgeAfter::Off,
        }
    }
}

/// `metadata.*`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetadataConfig {
    /// How long a HEAD result is trusted.
    pub ttl: Dur,
    /// How long a 404 or a missing ETag is remembered.
    pub negative_ttl: Dur,
    /// Entry bound of the cache.
    pub max_entries: u64,
}

impl Default for MetadataConfig {
    fn default() -> Self {
        MetadataConfig {
            ttl: Dur(Duration::from_secs(300)),
            negative_ttl: Dur(Duration::from_secs(60)),
            max_entries: 10_000,
        }
    }
}

/// `list.*`: LIST pages may be answered from memory for a while (off by default, because a
/// cached listing does not show objects written since).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListConfig {
    /// How long an identical LIST is answered from the same origin page; 0 = never.
    pub ttl: Dur,
    /// Pages kept at most.
    pub max_entries: u64,
}

impl Default for ListConfig {
    fn default() -> Self {
        ListConfig {
            ttl: Dur(Duration::ZERO),
            max_entries: 1_000,
        }
    }
}

/// `ops.*`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpsConfig {
    /// `/healthz` and `/readyz` listener.
    pub listen: SocketAddr,
}

impl Default for OpsConfig {
    fn default() -> Self {
        OpsConfig {
            listen: ([0, 0, 0, 0], 9002).into(),
        }
    }
}

/// `cluster.*`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Internal listener (`/internal/fill`), reached by the other replicas only.
    pub listen: SocketAddr,
    /// This replica's address as the peers see it: `ip` or `ip:port`. Unset: the `POD_IP`
    /// environment variable (plus the listen port with static `peers`).
    pub advertise: Option<String>,
    /// Static membership: the internal `host:port` of every replica (this one may be listed).
    pub peers: Vec<String>,
    /// DNS membership: a name (a Kubernetes headless Service) whose A/AAAA records are the
    /// replicas, all on the port of `cluster.listen`.
    pub dns: Option<String>,
    /// The DNS server to ask for `dns` (`ip:port`); unset: the system resolver.
    pub dns_server: Option<SocketAddr>,
    /// How often membership is refreshed.
    pub refresh: Dur,
    /// Shared secret that authenticates `/internal/fill` (HMAC); required in a cluster.
    pub secret: Option<Secret>,
    /// Bytes of chunks owned by other replicas kept here because they were asked for
    /// repeatedly; unset: 10% of `store.capacity`.
    pub hot_cache: Option<ByteSize>,
    /// How long a chunk's owner may take to acknowledge an internal fill (connect and
    /// response headers). Owners acknowledge at once and stream when they have bytes, so only
    /// a stopped or wedged one takes longer: it is then ejected and its chunks are filled
    /// here. The bytes themselves keep the origin's deadlines, so a busy owner is never
    /// mistaken for a dead one.
    pub peer_timeout: Dur,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            listen: ([0, 0, 0, 0], 9001).into(),
            advertise: None,
            peers: Vec::new(),
            dns: None,
            dns_server: None,
            refresh: Dur(Duration::from_secs(5)),
            secret: None,
            hot_cache: None,
            peer_timeout: Dur(Duration::from_secs(2)),
        }
    }
}

impl ClusterConfig {
    /// Whether this replica is part of a cluster (static peers or DNS).
    pub fn enabled(&self) -> bool {
        !self.peers.is_empty() || self.dns.is_some()
    }

    /// The advertised address: `cluster.advertise`, else `POD_IP` (with the listen port when
    /// peers are static). `None` when neither is set.
    pub fn advertised(&self) -> Option<String> {
        self.advertise.clone().or_else(|| {
            let ip = std::env::var("POD_IP").ok().filter(|s| !s.is_empty())?;
            Some(if self.peers.is_empty() {
                ip
            } else {
                format!("{ip}:{}", self.listen.port())
            })
        })
    }
}

/// Log output format.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// `telemetry.*`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// `text` or `json`.
    pub log_format: LogFormat,
    /// A `tracing` filter: `info`, `debug`, `shoal=debug,info`…
    pub log_level: String,
    /// Where traces go: an OTLP/HTTP collector's base URL (`http://collector:4318`;
    /// `/v1/traces` is added). Unset = no traces are exported. The standard
    /// `OTEL_EXPORTER_OTLP_*` variables set the protocol, headers and timeout.
    pub otlp_endpoint: Option<String>,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            log_format: LogFormat::Text,
            log_level: "info".into(),
            otlp_endpoint: None,
        }
    }
}

/// A configuration problem, always naming the key.
#[derive(Debug, thiserror::Error)]
#[error("config: {0}")]
pub struct ConfigError(pub String);

impl Config {
    fn validate_auth(&self) -> Result<(), ConfigError> {
        let bad = |k: &str, m: String| Err(ConfigError(format!("`{k}`: {m}")));
        match (&self.server.tls.cert, &self.server.tls.key) {
            (Some(c), Some(k)) => {
                for (key, p) in [("server.tls.cert", c), ("server.tls.key", k)] {
                    if !p.is_file() {
                        return bad(key, format!("{} is not a readable file", p.display()));
                    }
                }
            }
            (None, None) => {}
            _ => {
                return bad(
                    "server.tls",
                    "set both server.tls.cert and server.tls.key, or neither".into(),
                )
            }
        }
        let a = &self.auth;
        if a.max_skew.0.is_zero() {
            return bad("auth.max_skew", "must be > 0".into());
        }
        if a.mode == AuthMode::Sigv4 && a.users.is_empty() {
            return bad(
                "auth.users",
                "auth.mode = \"sigv4\" (the default) needs at least one user: add \
                 [[auth.users]] with access_key_id and secret_access_key (or SHOAL_AUTH__USERS), \
                 or set auth.mode = \"none\" to answer anyone"
                    .into(),
            );
        }
        let mut seen = std::collections::HashSet::new();
        for (i, u) in a.users.iter().enumerate() {
            let k = format!("auth.users[{i}]");
            if u.access_key_id.is_empty() || u.access_key_id.contains(char::is_whitespace) {
                return bad(
                    &format!("{k}.access_key_id"),
                    "must be non-empty, without spaces".into(),
                );
            }
            if !seen.insert(u.access_key_id.as_str()) {
                return bad(
                    &format!("{k}.access_key_id"),
                    format!("`{}` is listed twice", u.access_key_id),
                );
            }
            match u.secret() {
                Ok(s) if s.is_empty() => {
                    return bad(&format!("{k}.secret_access_key"), "is empty".into())
                }
                Ok(_) => {}
                Err(e) => return bad(&format!("{k}.secret_access_key"), e),
            }
            for b in &u.buckets {
                if !self.origin.buckets.is_empty() && !self.origin.buckets.contains(b) {
                    return bad(
                        &format!("{k}.buckets"),
                        format!("`{b}` is not in origin.buckets, so nobody can read it"),
                    );
                }
            }
        }
        Ok(())
    }

    fn validate_cluster(&self) -> Result<(), ConfigError> {
        let bad = |k: &str, m: String| Err(ConfigError(format!("`{k}`: {m}")));
        let c = &self.cluster;
        if c.refresh.0.is_zero() {
            return bad("cluster.refresh", "must be > 0".into());
        }
        // Long enough for a loaded owner's answer on a local network, short enough that a
        // stopped one costs little; beyond a minute it no longer tells stopped from busy.
        if c.peer_timeout.0 < Duration::from_millis(10)
            || c.peer_timeout.0 > Duration::from_secs(60)
        {
            return bad(
                "cluster.peer_timeout",
                format!(
                    "{} is outside 10ms..=60s",
                    humantime::format_duration(c.peer_timeout.0)
                ),
            );
        }
        if let Some(h) = c.hot_cache {
            if h.0 > self.store.capacity.0 {
                return bad(
                    "cluster.hot_cache",
                    format!("{h} is more than store.capacity ({})", self.store.capacity),
                );
            }
        }
        if !c.enabled() {
            return Ok(());
        }
        if c.dns.is_some() && !c.peers.is_empty() {
            return bad(
                "cluster.dns",
                "choose one membership source: cluster.peers or cluster.dns".into(),
            );
        }
        if c.dns.as_deref().is_some_and(|d| d.trim().is_empty()) {
            return bad("cluster.dns", "must not be empty".into());
        }
        for (i, p) in c.peers.iter().enumerate() {
            let port_ok = p
                .rsplit_once(':')
                .is_some_and(|(h, port)| !h.is_empty() && port.parse::<u16>().is_ok_and(|n| n > 0));
            if !port_ok {
                return bad(
                    &format!("cluster.peers[{i}]"),
                    format!("`{p}` is not host:port"),
                );
            }
        }
        match c.secret.as_deref() {
            None => {
                return bad(
                    "cluster.secret",
                    "is required in a cluster (it authenticates /internal/fill); set it, e.g. \
                     SHOAL_CLUSTER__SECRET from a Kubernetes Secret"
                        .into(),
                )
            }
            Some(s) if s.len() < 16 => {
                return bad("cluster.secret", "must be at least 16 characters".into())
            }
            _ => {}
        }
        let Some(adv) = c.advertised() else {
            return bad(
                "cluster.advertise",
                "is required in a cluster: set it (ip or ip:port), or the POD_IP env var".into(),
            );
        };
        let parsed = adv
            .parse::<std::net::SocketAddr>()
            .map(|a| a.ip())
            .or_else(|_| adv.parse::<std::net::IpAddr>());
        if parsed.is_err() {
            return bad(
                "cluster.advertise",
                format!("`{adv}` is not an ip or ip:port"),
            );
        }
        Ok(())
    }

    /// Loads defaults ◂ `file` ◂ `SHOAL_` environment and validates the result.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError(format!(
                    "file {} does not exist",
                    path.display()
                )));
            }
            fig = fig.merge(Toml::file_exact(path));
        }
        fig = fig.merge(Env::prefixed("SHOAL_").split("__"));
        Self::from_figment(fig)
    }

    /// Extracts and validates from any figment (tests build their own).
    pub fn from_figment(fig: Figment) -> Result<Config, ConfigError> {
        let cfg: Config = fig.extract().map_err(|e| {
            let e = e
                .into_iter()
                .next()
                .unwrap_or_else(|| figment::Error::from("unknown error".to_string()));
            let key = if e.path.is_empty() {
                String::from("<root>")
            } else {
                e.path.join(".")
            };
            ConfigError(format!("`{key}`: {}", e.kind))
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every value that serde cannot; the first problem is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |k: &str, m: String| Err(ConfigError(format!("`{k}`: {m}")));
        // The id names a directory of the disk store: keep it a plain, safe file name that
        // does not start with a dot (dot-directories are the store's own, like `.hot`).
        let id_ok = !self.origin.id.is_empty()
            && self.origin.id.len() <= 64
            && !self.origin.id.starts_with('.')
            && self
                .origin
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !id_ok {
            return bad(
                "origin.id",
                "must be 1-64 characters of A-Z a-z 0-9 . _ - not starting with a dot".into(),
            );
        }
        match self.origin.kind {
            OriginKind::Local => match &self.origin.root {
                None => {
                    return bad(
                        "origin.root",
                        "is required when origin.kind = \"local\"".into(),
                    )
                }
                Some(r) if !r.is_dir() => {
                    return bad("origin.root", format!("{} is not a directory", r.display()))
                }
                _ => {}
            },
            OriginKind::S3 => {
                if let Some(ep) = &self.origin.endpoint {
                    if !(ep.starts_with("http://") || ep.starts_with("https://")) {
                        return bad(
                            "origin.endpoint",
                            format!("`{ep}` must start with http:// or https://"),
                        );
                    }
                }
                if self.origin.access_key_id.is_some() != self.origin.secret_access_key.is_some() {
                    return bad(
                        "origin.secret_access_key",
                        "origin.access_key_id and origin.secret_access_key must be set together"
                            .into(),
                    );
                }
            }
            OriginKind::Azure => {
                match &self.origin.account {
                    None => {
                        return bad(
                            "origin.account",
                            "is required when origin.kind = \"azure\"".into(),
                        )
                    }
                    Some(a)
                        if a.is_empty()
                            || !a.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()) =>
                    {
                        return bad(
                            "origin.account",
                            format!("`{a}` is not a storage account name (lowercase letters and digits)"),
                        )
                    }
                    _ => {}
                }
                if let Some(ep) = &self.origin.endpoint {
                    if !(ep.starts_with("http://") || ep.starts_with("https://")) {
                        return bad(
                            "origin.endpoint",
                            format!("`{ep}` must start with http:// or https://"),
                        );
                    }
                }
                if self.origin.access_key.is_some() && self.origin.sas_token.is_some() {
                    return bad(
                        "origin.access_key",
                        "and `origin.sas_token` are two ways to authenticate: set one".into(),
                    );
                }
                if let Some(k) = &self.origin.access_key {
                    if aws_smithy_types::base64::decode(k.trim()).map_or(true, |b| b.is_empty()) {
                        return bad("origin.access_key", "is not a base64 account key".into());
                    }
                }
            }
        }
        if self.origin.timeout.0.is_zero() {
            return bad("origin.timeout", "must be > 0".into());
        }
        if self.origin.region.trim().is_empty() {
            return bad("origin.region", "must not be empty".into());
        }
        for (i, b) in self.origin.buckets.iter().enumerate() {
            if b.is_empty() || b.contains('/') {
                return bad(
                    &format!("origin.buckets[{i}]"),
                    format!("`{b}` is not a bucket name"),
                );
            }
        }
        if self.store.capacity.0 == 0 {
            return bad("store.capacity", "must be > 0".into());
        }
        if self.store.write_timeout.0.is_zero() {
            return bad("store.write_timeout", "must be > 0".into());
        }
        if self.server.max_connections == 0 {
            return bad("server.max_connections", "must be ≥ 1".into());
        }
        if self.server.http2_max_streams == 0 {
            return bad("server.http2_max_streams", "must be ≥ 1".into());
        }
        if self.store.kind == StoreKind::Disk && self.store.path.is_none() {
            return bad(
                "store.path",
                "is required when store.kind = \"disk\"".into(),
            );
        }
        if self.store.kind == StoreKind::S3 {
            match &self.store.bucket {
                None => {
                    return bad(
                        "store.bucket",
                        "is required when store.kind = \"s3\"".into(),
                    )
                }
                Some(b) if b.is_empty() || b.contains('/') => {
                    return bad("store.bucket", format!("`{b}` is not a bucket name"))
                }
                _ => {}
            }
            if self.store.access_key_id.is_some() != self.store.secret_access_key.is_some() {
                return bad(
                    "store.access_key_id",
                    "and `store.secret_access_key` go together: set both, or neither for the standard AWS chain".into(),
                );
            }
            if self.store.prefix.starts_with('/') {
                return bad("store.prefix", "must not start with `/`".into());
            }
            if let Some(ep) = &self.store.endpoint {
                if !(ep.starts_with("http://") || ep.starts_with("https://")) {
                    return bad(
                        "store.endpoint",
                        format!("`{ep}` is not an http:// or https:// URL"),
                    );
                }
            }
        }
        if self.store.catalog_entries == 0 {
            return bad("store.catalog_entries", "must be ≥ 1".into());
        }
        if self.chunk.size.0 < MIN_CHUNK_SIZE {
            return bad(
                "chunk.size",
                format!("{} is below the minimum of 1 MiB", self.chunk.size),
            );
        }
        let mut prev = 0;
        for (i, t) in self.chunk.tiers.iter().enumerate() {
            if t.chunk_size.0 < MIN_CHUNK_SIZE {
                return bad(
                    &format!("chunk.tiers[{i}].chunk_size"),
                    format!("{} is below the minimum of 1 MiB", t.chunk_size),
                );
            }
            if t.min_object_size.0 == 0 || t.min_object_size.0 <= prev {
                return bad(
                    &format!("chunk.tiers[{i}].min_object_size"),
                    "must be > 0 and strictly ascending".into(),
                );
            }
            prev = t.min_object_size.0;
        }
        if self.chunk.readahead > 256 {
            return bad("chunk.readahead", "must be at most 256".into());
        }
        if let HedgeAfter::After(d) = self.fill.hedge_after {
            if d >= self.origin.timeout.0 {
                return bad(
                    "fill.hedge_after",
                    format!(
                        "{} is not shorter than origin.timeout ({}): the hedge would never be sent",
                        humantime::format_duration(d),
                        humantime::format_duration(self.origin.timeout.0)
                    ),
                );
            }
        }
        if self.fill.origin_concurrency == 0 {
            return bad("fill.origin_concurrency", "must be ≥ 1".into());
        }
        if self.fill.queue_timeout.0.is_zero() {
            return bad("fill.queue_timeout", "must be > 0".into());
        }
        if self.fill.retry.attempts == 0 {
            return bad("fill.retry.attempts", "must be ≥ 1".into());
        }
        if self.fill.retry.backoff_max.0 < self.fill.retry.backoff_initial.0 {
            return bad(
                "fill.retry.backoff_max",
                "must be ≥ fill.retry.backoff_initial".into(),
            );
        }
        // The budget exists for timeouts and stalls: an origin that goes silent is noticed
        // after `origin.timeout`, and there must still be time for another attempt then.
        let need = self.origin.timeout.0 + self.fill.retry.backoff_initial.0;
        if self.fill.retry.attempts > 1 && self.fill.retry.max_total.0 < need {
            return bad(
                "fill.retry.max_total",
                format!(
                    "{} leaves no retry after an origin timeout of {}; make it at least {} \
                     (origin.timeout + fill.retry.backoff_initial)",
                    humantime::format_duration(self.fill.retry.max_total.0),
                    humantime::format_duration(self.origin.timeout.0),
                    humantime::format_duration(need),
                ),
            );
        }
        let largest = self
            .chunk
            .tiers
            .iter()
            .map(|t| t.chunk_size.0)
            .chain([self.chunk.size.0])
            .max()
            .unwrap_or(self.chunk.size.0);
        if self.fill.buffer_budget.0 < largest {
            return bad(
                "fill.buffer_budget",
                format!(
                    "{} cannot hold one chunk of the largest size in use ({})",
                    self.fill.buffer_budget,
                    ByteSize(largest)
                ),
            );
        }
        if self.metadata.max_entries == 0 {
            return bad("metadata.max_entries", "must be ≥ 1".into());
        }
        if self.metadata.ttl.0.is_zero() {
            return bad("metadata.ttl", "must be > 0".into());
        }
        if self.list.max_entries == 0 {
            return bad("list.max_entries", "must be ≥ 1".into());
        }
        self.validate_cluster()?;
        self.validate_auth()?;
        if tracing_subscriber::EnvFilter::try_new(&self.telemetry.log_level).is_err() {
            return bad(
                "telemetry.log_level",
                format!("`{}` is not a level or filter", self.telemetry.log_level),
            );
        }
        if let Some(e) = &self.telemetry.otlp_endpoint {
            let ok = e.parse::<http::Uri>().ok().is_some_and(|u| {
                u.scheme_str() == Some("http") && u.authority().is_some() && u.query().is_none()
            });
            if !ok {
                return bad(
                    "telemetry.otlp_endpoint",
                    format!(
                        "`{e}` is not an http:// URL such as http://collector:4318 \
                         (https is not built in: send to a local collector)"
                    ),
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Defaults ◂ an open (`auth.mode = "none"`) server ◂ `s`.
    fn from_toml(s: &str) -> Result<Config, ConfigError> {
        Config::from_figment(
            Figment::from(Serialized::defaults(Config::default()))
                .merge(Toml::string("[auth]\nmode = \"none\""))
                .merge(Toml::string(s)),
        )
    }

    /// Dotted paths of every key with a value in `v`.
    fn keys(prefix: &str, v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    let path = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    keys(&path, v, out);
                }
            }
            serde_json::Value::Null => {}
            _ => out.push(prefix.to_string()),
        }
    }

    #[test]
    fn the_example_config_is_valid_and_lists_every_key() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/shoal.example.toml");
        Config::from_figment(
            Figment::from(Serialized::defaults(Config::default())).merge(Toml::file_exact(&path)),
        )
        .expect("the example config is valid");
        let example = Figment::from(Toml::file_exact(&path));
        let mut all = Vec::new();
        keys(
            "",
            &serde_json::to_value(Config::default()).unwrap(),
            &mut all,
        );
        let missing: Vec<_> = all
            .iter()
            .filter(|k| example.find_value(k).is_err())
            .collect();
        assert!(
            missing.is_empty(),
            "keys missing from the example: {missing:?}"
        );
    }

    #[test]
    fn the_small_chunk_memory_is_a_size() {
        let c = from_toml("[store]\nsmall_chunk_memory = \"8 MiB\"").unwrap();
        assert_eq!(c.store.small_chunk_memory.0, 8 << 20);
        assert_eq!(Config::default().store.small_chunk_memory.0, 64 << 20);
        let e = from_toml("[store]\nsmall_chunk_memory = \"lots\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("small_chunk_memory"), "{e}");
    }

    #[test]
    fn the_azure_origin_settings_are_checked() {
        let base = "[auth]\nmode = \"none\"\n[origin]\nkind = \"azure\"\n";
        let parse = |extra: &str| {
            Config::from_figment(
                Figment::from(Serialized::defaults(Config::default()))
                    .merge(Toml::string(&format!("{base}{extra}"))),
            )
        };
        let e = parse("").unwrap_err().to_string();
        assert!(
            e.contains("origin.account") && e.contains("required"),
            "{e}"
        );
        let e = parse("account = \"Bad_Name\"\n").unwrap_err().to_string();
        assert!(e.contains("origin.account"), "{e}");
        let e = parse("account = \"acct\"\naccess_key = \"a2V5\"\nsas_token = \"sv=x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("origin.sas_token"), "{e}");
        let e = parse("account = \"acct\"\naccess_key = \"not base64!\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("origin.access_key"), "{e}");
        let ok = parse("account = \"acct\"\naccess_key = \"c2VjcmV0a2V5\"\n").unwrap();
        let dbg = format!("{:?}", ok.origin);
        assert!(
            !dbg.contains("c2VjcmV0a2V5"),
            "secrets stay out of Debug: {dbg}"
        );
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/origin-azure.toml");
        let cfg: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::file_exact(&path))
            .extract()
            .expect("config/origin-azure.toml parses");
        assert_eq!(cfg.origin.kind, OriginKind::Azure);
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/store-disk.toml");
        let cfg: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::file_exact(&path))
            .extract()
            .expect("config/store-disk.toml parses");
        assert_eq!(cfg.store.kind, StoreKind::Disk);
    }

    #[test]
    fn the_s3_store_settings_are_checked() {
        let base = "[auth]\nmode = \"none\"\n[store]\nkind = \"s3\"\n";
        let parse = |extra: &str| {
            Config::from_figment(
                Figment::from(Serialized::defaults(Config::default()))
                    .merge(Toml::string(&format!("{base}{extra}"))),
            )
        };
        let e = parse("").unwrap_err().to_string();
        assert!(e.contains("store.bucket") && e.contains("required"), "{e}");
        let e = parse("bucket = \"b\"\naccess_key_id = \"k\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("store.access_key_id"), "{e}");
        let e = parse("bucket = \"b\"\nendpoint = \"cachestore:3900\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("store.endpoint"), "{e}");
        let e = parse("bucket = \"b\"\nprefix = \"/x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("store.prefix"), "{e}");
        let e = parse("bucket = \"b\"\ncatalog_entries = 0\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("store.catalog_entries"), "{e}");
        let ok =
            parse("bucket = \"b\"\nsecret_access_key = \"hush\"\naccess_key_id = \"k\"\n").unwrap();
        assert!(
            !format!("{:?}", ok.store).contains("hush"),
            "secrets stay out of Debug"
        );
        // The example config for the s3 store parses.
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/store-s3.toml");
        let cfg: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::file_exact(&path))
            .extract()
            .expect("config/store-s3.toml parses");
        assert_eq!(cfg.store.kind, StoreKind::S3);
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(ByteSize::parse("8 MiB").unwrap().0, 8 << 20);
        assert_eq!(ByteSize::parse("1.5GiB").unwrap().0, 3 << 29);
        assert_eq!(ByteSize::parse("64KB").unwrap().0, 64_000);
        assert_eq!(ByteSize::parse("1024").unwrap().0, 1024);
        assert!(ByteSize::parse("8 MiBs").is_err());
        assert!(ByteSize::parse("").is_err());
        assert!(ByteSize::parse("-1 MiB").is_err());
        assert_eq!(ByteSize(8 << 20).to_string(), "8 MiB");
    }

    #[test]
    fn auth_settings_are_checked() {
        // The default is sigv4, and it needs users: the message says what to do.
        let e = Config::from_figment(Figment::from(Serialized::defaults(Config::default())))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("auth.users") && e.contains("auth.mode = \"none\""),
            "{e}"
        );
        let ok = "[auth]\n[[auth.users]]\naccess_key_id = \"r\"\nsecret_access_key = \"s3cr3t\"";
        let c = Config::from_figment(
            Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(ok)),
        )
        .unwrap();
        assert!(
            !format!("{c:?}").contains("s3cr3t"),
            "secret in Debug output"
        );
        for (toml, key) in [
            ("[[auth.users]]\naccess_key_id = \"r\"", "auth.users[0].secret_access_key"),
            ("[[auth.users]]\naccess_key_id = \"\"\nsecret_access_key = \"s\"", "auth.users[0].access_key_id"),
            ("[[auth.users]]\naccess_key_id = \"r\"\nsecret_access_key_file = \"/nonexistent\"", "auth.users[0].secret_access_key"),
            ("[[auth.users]]\naccess_key_id = \"r\"\nsecret_access_key = \"s\"\n[[auth.users]]\naccess_key_id = \"r\"\nsecret_access_key = \"t\"", "auth.users[1].access_key_id"),
            ("[origin]\nbuckets = [\"a\"]\n[[auth.users]]\naccess_key_id = \"r\"\nsecret_access_key = \"s\"\nbuckets = [\"b\"]", "auth.users[0].buckets"),
            ("[server.tls]\ncert = \"/nonexistent\"", "server.tls"),
        ] {
            let e = Config::from_figment(
                Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(toml)),
            )
            .unwrap_err()
            .to_string();
            assert!(e.contains(key), "{toml}: {e}");
        }
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API fixes the error type
    fn users_can_come_from_the_environment() {
        figment::Jail::expect_with(|jail| {
            jail.set_env(
                "SHOAL_AUTH__USERS",
                r#"[{access_key_id="k8s", secret_access_key="from-a-secret", buckets=["models"]}]"#,
            );
            let c = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(c.auth.users.len(), 1);
            assert_eq!(c.auth.users[0].access_key_id, "k8s");
            assert_eq!(c.auth.users[0].buckets, vec!["models".to_string()]);
            Ok(())
        });
    }

    #[test]
    fn cluster_settings_are_checked() {
        let ok = "[cluster]\npeers = [\"10.0.0.1:9001\", \"10.0.0.2:9001\"]\nadvertise = \"10.0.0.1:9001\"\nsecret = \"0123456789abcdef0123\"";
        assert!(from_toml(ok).is_ok());
        for (toml, key) in [
            ("[cluster]\npeers = [\"10.0.0.1:9001\"]\nadvertise = \"10.0.0.1:9001\"", "cluster.secret"),
            ("[cluster]\npeers = [\"10.0.0.1:9001\"]\nadvertise = \"10.0.0.1:9001\"\nsecret = \"short\"", "cluster.secret"),
            ("[cluster]\npeers = [\"10.0.0.1\"]\nadvertise = \"10.0.0.1:9001\"\nsecret = \"0123456789abcdef0123\"", "cluster.peers[0]"),
            ("[cluster]\ndns = \"x\"\npeers = [\"10.0.0.1:1\"]\nadvertise = \"10.0.0.1\"\nsecret = \"0123456789abcdef0123\"", "cluster.dns"),
            ("[cluster]\ndns = \"peers.svc\"\nadvertise = \"not an ip\"\nsecret = \"0123456789abcdef0123\"", "cluster.advertise"),
            ("[cluster]\nrefresh = \"0s\"", "cluster.refresh"),
            ("[cluster]\npeer_timeout = \"0s\"", "cluster.peer_timeout"),
            ("[cluster]\npeer_timeout = \"5m\"", "cluster.peer_timeout"),
            ("[cluster]\nhot_cache = \"2 GiB\"", "cluster.hot_cache"),
        ] {
            let e = from_toml(toml).unwrap_err().to_string();
            assert!(e.contains(key), "{toml}: {e}");
        }
        let c = from_toml(ok).unwrap();
        assert!(
            !format!("{c:?}").contains("0123456789abcdef0123"),
            "secret in Debug"
        );
    }

    #[test]
    fn the_retry_budget_must_cover_an_origin_timeout() {
        // Regression: with origin.timeout 30 s and max_total 5 s, a stalled body was detected
        // only after the budget was spent, so it was never resumed.
        let e = from_toml("[origin]\ntimeout = \"30s\"\n[fill.retry]\nmax_total = \"5s\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("fill.retry.max_total"), "{e}");
        let d = Config::default();
        assert!(d.fill.retry.max_total.0 >= d.origin.timeout.0 + d.fill.retry.backoff_initial.0);
        // One attempt means no retries, by choice: nothing to cover.
        assert!(from_toml("[fill.retry]\nattempts = 1\nmax_total = \"1s\"").is_ok());
    }

    #[test]
    fn a_hedge_must_come_before_the_origin_timeout() {
        let e = from_toml("[fill]\nhedge_after = \"10s\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("fill.hedge_after"), "{e}");
        let hedge = |v: &str| {
            from_toml(&format!("[fill]\nhedge_after = \"{v}\"")).map(|c| c.fill.hedge_after)
        };
        assert_eq!(
            hedge("200ms").unwrap(),
            HedgeAfter::After(Duration::from_millis(200))
        );
        assert_eq!(hedge("0s").unwrap(), HedgeAfter::Off);
        assert_eq!(hedge("p95").unwrap(), HedgeAfter::P95);
        assert_eq!(hedge("P95").unwrap(), HedgeAfter::P95);
        let e = hedge("p99").unwrap_err().to_string();
        assert!(e.contains("hedge_after") && e.contains("p95"), "{e}");
        assert!(from_toml("[list]\nmax_entries = 0").is_err());
    }

    #[test]
    fn the_budget_must_hold_the_largest_chunk() {
        let e = from_toml("[fill]\nbuffer_budget = \"100 MiB\"")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("fill.buffer_budget") && e.contains("128 MiB"),
            "{e}"
        );
        assert!(from_toml("[fill]\nbuffer_budget = \"100 MiB\"\n[chunk]\ntiers = []").is_ok());
    }

    #[test]
    fn defaults_validate() {
        let c = from_toml("").unwrap();
        assert_eq!(c.chunk.size.0, 8 << 20);
        assert_eq!(c.fill.retry.attempts, 3);
        assert_eq!(c.metadata.negative_ttl.0, Duration::from_secs(60));
    }

    #[test]
    fn toml_values_override() {
        let c = from_toml(
            r#"
            [chunk]
            size = "2 MiB"
            readahead = 0
            tiers = []
            [fill]
            queue_timeout = "250ms"
            "#,
        )
        .unwrap();
        assert_eq!(c.chunk.size.0, 2 << 20);
        assert!(c.chunk.tiers.is_empty());
        assert_eq!(c.fill.queue_timeout.0, Duration::from_millis(250));
    }

    #[test]
    fn errors_name_the_key() {
        let e = from_toml("[chunk]\nsize = \"12 parsecs\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("chunk.size"), "{e}");
        let e = from_toml("[chunk]\nsize = \"4 KiB\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("chunk.size"), "{e}");
        let e = from_toml("[fill]\nqueue_timeout = \"soon\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("fill.queue_timeout"), "{e}");
        let e = from_toml("[origin]\nkind = \"ftp\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("origin.kind"), "{e}");
        let e = from_toml("[store]\nkidn = \"disk\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("kidn"), "{e}");
        let e = from_toml("[[chunk.tiers]]\nmin_object_size = \"2 GiB\"\nchunk_size = \"64 MiB\"\n[[chunk.tiers]]\nmin_object_size = \"1 GiB\"\nchunk_size = \"64 MiB\"").unwrap_err().to_string();
        assert!(e.contains("chunk.tiers[1].min_object_size"), "{e}");
        assert!(!e.contains('\n'));
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API fixes the error type
    fn env_nests_with_double_underscore() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("SHOAL_ORIGIN__ENDPOINT", "http://127.0.0.1:3900");
            jail.set_env("SHOAL_AUTH__MODE", "none");
            jail.set_env("SHOAL_CHUNK__SIZE", "4 MiB");
            let c = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(c.origin.endpoint.as_deref(), Some("http://127.0.0.1:3900"));
            assert_eq!(c.chunk.size.0, 4 << 20);
            Ok(())
        });
    }

    /// Every secret of the config is a `Secret`: printing a whole config shows none of them.
    #[test]
    fn no_secret_of_the_config_prints() {
        let mut c = Config::default();
        c.origin.secret_access_key = Some("origin-secret-1".into());
        c.origin.access_key = Some("azure-key-2".into());
        c.origin.sas_token = Some("sas-token-3".into());
        c.store.secret_access_key = Some("store-secret-4".into());
        c.cluster.secret = Some("cluster-secret-5".into());
        c.auth.users = vec![UserConfig {
            access_key_id: "u".into(),
            secret_access_key: Some("user-secret-6".into()),
            ..Default::default()
        }];
        let dbg = format!("{c:?}");
        for s in [
            "origin-secret-1",
            "azure-key-2",
            "sas-token-3",
            "store-secret-4",
            "cluster-secret-5",
            "user-secret-6",
        ] {
            assert!(!dbg.contains(s), "{s} printed: {dbg}");
        }
        assert_eq!(c.cluster.secret.as_deref(), Some("cluster-secret-5"));
    }
}
