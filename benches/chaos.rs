//! `make chaos` and `make soak`: Shoal as an operator would try it before trusting it.
//!
//! Real processes over real HTTP on loopback: Garage (the origin), a fault-injecting proxy in
//! front of it (in this program, `chaos/proxy.rs`), and three `shoal serve` replicas with disk
//! stores in one cluster. A mixed read workload runs against them (`chaos/workload.rs`) while
//! faults rotate: origin 503 bursts, resets mid-body, stalled bodies, latency spikes, a 30 s
//! outage; objects overwritten while read; a replica SIGKILLed and restarted, one SIGSTOPped
//! and resumed, one restarted with a different peer list (a membership change under load);
//! bytes flipped in chunk files; a store directory filled up.
//!
//! Every byte of every answer is checked against the version its ETag names, and every
//! failure must be honest (an S3 error before the headers, or a body cut short). The report
//! (printed, and written to `<target>/chaos/`) says what ran and how it went; the run fails on
//! a wrong byte, a short body that looked complete, a wrong listing, a request without
//! progress for 60 s, a replica that crashed, or one not serving correctly 30 s after a fault.
//!
//! Soak mode (`--soak` or `SOAK=1`) runs the same workload with a slow stream of faults and
//! samples each replica's resources every 5 s (`chaos/soak.rs`).
//!
//! Settings (environment): `CHAOS_SECS` (600), `SOAK_SECS` (600), `CHAOS_CLIENTS` (12),
//! `CHAOS_IDLE_CONNS` (1000), `CHAOS_FAULT_SECS` (5), `CHAOS_DOWN_SECS` (30),
//! `CHAOS_STOP_SECS` (10), `CHAOS_GAP_SECS` (1), `CHAOS_WARMUP_SECS` (5), `SOAK_FAULT_GAP_SECS` (45),
//! `CHAOS_ORIGIN_TIMEOUT_MS` (3000), `CHAOS_REQUIRE_STOP_RATIO` (unset: reported only),
//! `CHAOS_EXTRA_FAULTS` (unset; `lying_list` adds listings cut short with a matching
//! `Content-Length`, `corrupt_body` adds object bodies with a flipped byte, which no cache can
//! catch without a checksum: it shows that the harness's own checks bite).
//!
//! `cargo bench --bench chaos` runs it against the release binary; `cargo test --bench chaos
//! -- --run` against the debug one (what `make test` does); `cargo test --all-targets` alone
//! only prints how to run it.

#[path = "../tests/common/mod.rs"]
mod common;

#[path = "chaos/content.rs"]
mod content;
#[path = "chaos/proxy.rs"]
mod proxy;
#[path = "chaos/replica.rs"]
mod replica;
#[path = "chaos/soak.rs"]
mod soak;
#[path = "chaos/workload.rs"]
mod workload;

use content::{put_version, Catalog, Rng, KIB, MIB};
use proxy::{FaultProxy, Mode};
use replica::{Avail, Replica, Tmpfs};
use serde_json::json;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use workload::{Ctx, BUCKET};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

#[derive(Clone, Debug)]
struct Opts {
    soak: bool,
    secs: u64,
    clients: u64,
    idle_conns: u64,
    fault: Duration,
    down: Duration,
    stop: Duration,
    gap: Duration,
    warmup: Duration,
    origin_timeout: Duration,
    queue_timeout: Duration,
    require_stop_ratio: Option<f64>,
    /// Lying-origin faults added to the rotation (`CHAOS_EXTRA_FAULTS=lying_list,corrupt_body`).
    extra: Vec<Fault>,
}

impl Opts {
    fn from_env(soak: bool) -> Opts {
        let origin_timeout = Duration::from_millis(env_u64("CHAOS_ORIGIN_TIMEOUT_MS", 3000));
        Opts {
            soak,
            secs: if soak {
                env_u64("SOAK_SECS", 600)
            } else {
                env_u64("CHAOS_SECS", 600)
            },
            clients: env_u64("CHAOS_CLIENTS", 12),
            idle_conns: env_u64("CHAOS_IDLE_CONNS", 1000),
            fault: Duration::from_secs(env_u64("CHAOS_FAULT_SECS", 5)),
            down: Duration::from_secs(env_u64("CHAOS_DOWN_SECS", 30)),
            stop: Duration::from_secs(env_u64("CHAOS_STOP_SECS", 10)),
            gap: Duration::from_secs(if soak {
                env_u64("SOAK_FAULT_GAP_SECS", 45)
            } else {
                env_u64("CHAOS_GAP_SECS", 1)
            }),
            warmup: Duration::from_secs(env_u64("CHAOS_WARMUP_SECS", 5)),
            origin_timeout,
            queue_timeout: Duration::from_secs(2),
            extra: std::env::var("CHAOS_EXTRA_FAULTS")
                .unwrap_or_default()
                .split(',')
                .filter_map(|f| match f.trim() {
                    "lying_list" => Some(Fault::LyingList),
                    "corrupt_body" => Some(Fault::CorruptBody),
                    _ => None,
                })
                .collect(),
            require_stop_ratio: std::env::var("CHAOS_REQUIRE_STOP_RATIO")
                .ok()
                .and_then(|v| v.parse().ok()),
        }
    }
}

/// The fault classes, in the order they rotate (the 30 s outage early, so a short run has it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    OriginDown,
    Sigkill,
    Origin503,
    Sigstop,
    OriginReset,
    FlipChunkBytes,
    OriginStall,
    Membership,
    OriginLatency,
    Overwrite,
    StoreFull,
    LyingList,
    CorruptBody,
}

const ROTATION: [Fault; 11] = [
    Fault::Origin503,
    Fault::Sigkill,
    Fault::OriginDown,
    Fault::Sigstop,
    Fault::OriginReset,
    Fault::FlipChunkBytes,
    Fault::OriginStall,
    Fault::Membership,
    Fault::OriginLatency,
    Fault::Overwrite,
    Fault::StoreFull,
];

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::OriginDown => "origin_down",
            Fault::Sigkill => "replica_sigkill",
            Fault::Origin503 => "origin_503_slowdown",
            Fault::Sigstop => "replica_sigstop",
            Fault::OriginReset => "origin_reset_mid_body",
            Fault::FlipChunkBytes => "chunk_bytes_flipped",
            Fault::OriginStall => "origin_body_stall",
            Fault::Membership => "membership_change",
            Fault::OriginLatency => "origin_latency",
            Fault::Overwrite => "object_overwritten",
            Fault::StoreFull => "store_dir_full",
            Fault::LyingList => "origin_list_truncated_lying",
            Fault::CorruptBody => "origin_body_corrupted_lying",
        }
    }

    /// About how long it takes, for scheduling.
    fn estimate(self, o: &Opts) -> Duration {
        match self {
            Fault::OriginDown => o.down,
            Fault::Sigstop => o.stop * 2,
            Fault::Sigkill => o.fault + Duration::from_secs(3),
            Fault::Membership => o.fault + Duration::from_secs(4),
            _ => o.fault,
        }
    }
}

#[derive(Debug)]
struct FaultRec {
    class: Fault,
    start: f64,
    end: f64,
    detail: String,
    /// Seconds from the fault's end until each replica served a probe correctly.
    recovery: Vec<Option<f64>>,
}

#[derive(Debug)]
struct StopRatio {
    replica: usize,
    before_per_s: f64,
    during_per_s: f64,
    ratio: f64,
}

struct Harness {
    opts: Opts,
    ctx: Arc<Ctx>,
    proxy: FaultProxy,
    s3: aws_sdk_s3::Client,
    peers: Vec<String>,
    tmpfs: Tmpfs,
    store_full_method: String,
    seeds: std::sync::atomic::AtomicU64,
    stop_ratios: std::sync::Mutex<Vec<StopRatio>>,
    restarts: std::sync::atomic::AtomicU64,
    /// Ctrl-C: the run stopped early; the report says so and the exit code is never 0.
    interrupted: std::sync::atomic::AtomicBool,
}

impl Harness {
    fn r(&self, i: usize) -> &Arc<Replica> {
        &self.ctx.replicas[i]
    }

    fn now(&self) -> f64 {
        self.ctx.t0.elapsed().as_secs_f64()
    }

    async fn restart(&self, i: usize, peers: &[String]) -> Result<(), String> {
        self.r(i).kill();
        self.restarts.fetch_add(1, Ordering::Relaxed);
        self.r(i).start(peers).await.map(|_| ())
    }

    /// Successful workload answers of replicas `which` between `from` and `to` (seconds).
    fn ok_between(&self, which: &[usize], from: f64, to: f64) -> u64 {
        let ok = self.ctx.stats.per_replica_ok.lock().unwrap();
        let b = BUCKET.as_secs_f64();
        let (a, z) = ((from / b) as usize, (to / b) as usize);
        ok.iter()
            .take(z.min(ok.len()))
            .skip(a)
            .map(|s| which.iter().map(|&w| s[w] as u64).sum::<u64>())
            .sum()
    }

    async fn inject(&self, class: Fault, n: usize, rng: &mut Rng) -> (f64, String) {
        let o = &self.opts;
        let start = self.now();
        let detail = match class {
            Fault::OriginDown => {
                self.proxy.set(Mode::Down);
                tokio::time::sleep(o.down).await;
                self.proxy.set(Mode::Clean);
                format!("origin refused/reset for {:?}", o.down)
            }
            Fault::Origin503 => {
                self.proxy.set(Mode::Errors(0.5));
                tokio::time::sleep(o.fault).await;
                self.proxy.set(Mode::Clean);
                format!(
                    "half of origin requests answered 503 SlowDown for {:?}",
                    o.fault
                )
            }
            Fault::OriginReset => {
                self.proxy.set(Mode::Reset(0.4));
                tokio::time::sleep(o.fault).await;
                self.proxy.set(Mode::Clean);
                format!("40% of origin GET bodies reset part-way for {:?}", o.fault)
            }
            Fault::OriginStall => {
                let hold = o.origin_timeout * 2;
                self.proxy.set(Mode::Stall(0.4, hold));
                tokio::time::sleep(o.fault).await;
                self.proxy.set(Mode::Clean);
                format!(
                    "40% of origin GET bodies stalled {hold:?} (origin.timeout {:?}) for {:?}",
                    o.origin_timeout, o.fault
                )
            }
            Fault::LyingList => {
                self.proxy.set(Mode::TruncateList(0.5));
                tokio::time::sleep(o.fault).await;
                self.proxy.set(Mode::Clean);
                format!(
                    "half of origin listings cut short with a matching Content-Length for {:?}",
                    o.fault
                )
            }
            Fault::CorruptBody => {
                self.proxy.set(Mode::CorruptBody(0.2));
                tokio::time::sleep(o.fault).await;
                self.proxy.set(Mode::Clean);
                format!(
                    "one byte flipped in 20% of origin object bodies for {:?} (the run must fail)",
                    o.fault
                )
            }
            Fault::OriginLatency => {
                self.proxy.set(Mode::Latency(
                    Duration::from_millis(300),
                    Duration::from_millis(2000),
                ));
                tokio::time::sleep(o.fault).await;
                self.proxy.set(Mode::Clean);
                format!("every origin request delayed 0.3-2 s for {:?}", o.fault)
            }
            Fault::Sigkill => {
                let r = n % 3;
                self.r(r).kill();
                tokio::time::sleep(Duration::from_secs(2)).await;
                let took = self.r(r).start(&self.peers).await;
                self.restarts.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(o.fault.saturating_sub(Duration::from_secs(2))).await;
                format!("replica {r} SIGKILLed under load, restarted after 2 s ({took:?})")
            }
            Fault::Sigstop => {
                let r = n % 3;
                let healthy: Vec<usize> = (0..3).filter(|&i| i != r).collect();
                let t_stop = self.now();
                self.r(r).stop();
                // A load balancer takes it out: what was in flight to it is given up.
                self.ctx.abandon(r);
                tokio::time::sleep(o.stop).await;
                let t_cont = self.now();
                self.r(r).resume();
                let w = o.stop.as_secs_f64();
                let before = self.ok_between(&healthy, t_stop - w, t_stop) as f64 / w;
                let during = self.ok_between(&healthy, t_stop, t_cont) as f64 / (t_cont - t_stop);
                let ratio = if before > 0.0 {
                    during / before
                } else {
                    f64::NAN
                };
                self.stop_ratios.lock().unwrap().push(StopRatio {
                    replica: r,
                    before_per_s: before,
                    during_per_s: during,
                    ratio,
                });
                format!(
                    "replica {r} SIGSTOPped {:?}: the other two served {before:.1}/s before, \
                     {during:.1}/s during (ratio {ratio:.2})",
                    o.stop
                )
            }
            Fault::Membership => {
                let r = n % 3;
                let q = (r + 1) % 3;
                let partial: Vec<String> = (0..3)
                    .filter(|&i| i != q)
                    .map(|i| self.r(i).cluster_addr())
                    .collect();
                let a = self.restart(r, &partial).await;
                tokio::time::sleep(o.fault).await;
                let b = self.restart(r, &self.peers).await;
                format!(
                    "replica {r} restarted with peers without replica {q} for {:?} (the others \
                     still list all three), then with all three again ({a:?}, {b:?})",
                    o.fault
                )
            }
            Fault::Overwrite => {
                let keys: Vec<usize> = self
                    .ctx
                    .cat
                    .hot()
                    .into_iter()
                    .filter(|i| !self.ctx.stable.contains(i))
                    .collect();
                let until = Instant::now() + o.fault;
                let mut written = Vec::new();
                while Instant::now() < until {
                    let idx = *rng.pick(&keys);
                    let old = self.ctx.cat.latest(idx).map_or(0, |v| v.size);
                    let size = *rng.pick(&[old, old, 300 * KIB, MIB + 17, 5 * MIB / 2]);
                    let seed = self.seeds.fetch_add(1, Ordering::Relaxed);
                    match put_version(&self.s3, &self.ctx.cat, idx, seed, size).await {
                        Ok(_) => written.push(format!("{} ({size} B)", self.ctx.cat.key(idx))),
                        Err(e) => written.push(format!("FAILED {e}")),
                    }
                    tokio::time::sleep(Duration::from_millis(800)).await;
                }
                format!(
                    "{} overwrites in place: {}",
                    written.len(),
                    written.join(", ")
                )
            }
            Fault::FlipChunkBytes => {
                let mut files = Vec::new();
                for r in &self.ctx.replicas {
                    chunk_files(&r.store, &mut files, 0);
                }
                let caught_before = self.checksum_failures().await;
                let mut flipped = 0;
                for _ in 0..12.min(files.len()) {
                    let f = rng.pick(&files).clone();
                    if flip_byte(&f, rng).is_ok() {
                        flipped += 1;
                    }
                }
                tokio::time::sleep(o.fault).await;
                let caught = self.checksum_failures().await.saturating_sub(caught_before);
                format!(
                    "flipped one byte in each of {flipped} chunk files (of {} found); \
                     shoal_store_checksum_failures_total rose by {caught} during the window \
                     (a flipped chunk not read again is not counted)",
                    files.len()
                )
            }
            Fault::StoreFull => {
                if self.tmpfs.mounted {
                    let ballast = self.tmpfs.path.join("ballast");
                    let wrote = fill_up(&ballast);
                    tokio::time::sleep(o.fault).await;
                    let _ = std::fs::remove_file(&ballast);
                    format!(
                        "replica 2's store file system (tmpfs) filled with {} MiB of ballast for {:?}",
                        wrote / MIB,
                        o.fault
                    )
                } else {
                    tokio::time::sleep(o.fault).await;
                    "not injected: no bounded file system (see store_full_method)".into()
                }
            }
        };
        (start, detail)
    }

    /// The replicas' `shoal_store_checksum_failures_total`, summed.
    async fn checksum_failures(&self) -> u64 {
        let mut n = 0;
        for r in &self.ctx.replicas {
            let url = format!("http://127.0.0.1:{}/metrics", r.ops_port);
            let text = tokio::time::timeout(Duration::from_secs(5), async {
                self.ctx.http.get(url).send().await.ok()?.text().await.ok()
            })
            .await
            .ok()
            .flatten()
            .unwrap_or_default();
            n += text
                .lines()
                .find_map(|l| l.strip_prefix("shoal_store_checksum_failures_total "))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0) as u64;
        }
        n
    }

    /// Time from now until each replica serves a probe correctly (at most 30 s).
    async fn recovery(&self) -> Vec<Option<f64>> {
        let t = Instant::now();
        let each = (0..3).map(|r| async move {
            while t.elapsed() < Duration::from_secs(30) {
                if self.r(r).avail() == Avail::Up && self.ctx.probe(r).await {
                    return Some(t.elapsed().as_secs_f64());
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            None
        });
        futures_util::future::join_all(each).await
    }

    async fn fault_loop(&self, deadline: Instant, stop: CancellationToken) -> Vec<FaultRec> {
        let mut recs = Vec::new();
        let mut rng = Rng::new(0xFA17);
        let mut last_end = Instant::now();
        let mut n = 0usize;
        let mut since_skip = 0;
        // The first fault after a warm-up (soak: a whole gap, so the steady state is seen),
        // so that there is something cached to lose.
        let warmup = if self.opts.soak {
            self.opts.gap
        } else {
            self.opts.warmup
        };
        tokio::select! {
            _ = tokio::time::sleep(warmup) => {}
            _ = stop.cancelled() => return recs,
        }
        // Extra (lying-origin) faults first, so that a short run shows them.
        let mut rotation = self.opts.extra.clone();
        rotation.extend(ROTATION);
        while !stop.is_cancelled() && since_skip < rotation.len() {
            let class = rotation[n % rotation.len()];
            let est = class.estimate(&self.opts);
            if Instant::now() + est > deadline + Duration::from_secs(10) {
                n += 1;
                since_skip += 1;
                continue;
            }
            since_skip = 0;
            if class == Fault::Sigstop {
                // The rate before the stop is measured over a quiet window as long as the stop.
                let quiet = last_end + self.opts.stop;
                tokio::time::sleep_until(quiet.into()).await;
            }
            println!("[{:>6.1}s] fault {}: start", self.now(), class.name());
            let (start, detail) = self.inject(class, n / rotation.len(), &mut rng).await;
            let end = self.now();
            let recovery = self.recovery().await;
            println!(
                "[{:>6.1}s] fault {}: ended; {detail}; recovered in {}",
                self.now(),
                class.name(),
                fmt_recovery(&recovery)
            );
            for (r, rec) in recovery.iter().enumerate() {
                if rec.is_none() {
                    self.ctx.stats.fatal(
                        "not_recovered",
                        format!(
                            "replica {r} not serving correctly 30 s after {} ended at {end:.1} s",
                            class.name()
                        ),
                    );
                }
            }
            recs.push(FaultRec {
                class,
                start,
                end,
                detail,
                recovery,
            });
            last_end = Instant::now();
            n += 1;
            tokio::select! {
                _ = tokio::time::sleep(self.opts.gap) => {}
                _ = stop.cancelled() => break,
            }
        }
        recs
    }
}

fn fmt_recovery(r: &[Option<f64>]) -> String {
    r.iter()
        .map(|x| x.map_or("NOT RECOVERED".into(), |s| format!("{s:.2}s")))
        .collect::<Vec<_>>()
        .join(" / ")
}

/// Chunk files under a disk store: named by their index (a number), temp files excluded.
fn chunk_files(dir: &std::path::Path, out: &mut Vec<PathBuf>, depth: usize) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() && depth < 4 {
            chunk_files(&p, out, depth + 1);
        } else if ft.is_file()
            && e.file_name()
                .to_str()
                .is_some_and(|n| n.parse::<u64>().is_ok())
        {
            out.push(p);
        }
    }
}

fn flip_byte(path: &std::path::Path, rng: &mut Rng) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let len = f.metadata()?.len();
    if len == 0 {
        return Err(std::io::Error::other("empty"));
    }
    let at = rng.below(len);
    let mut b = [0u8];
    f.seek(SeekFrom::Start(at))?;
    f.read_exact(&mut b)?;
    b[0] ^= 0xFF;
    f.seek(SeekFrom::Start(at))?;
    f.write_all(&b)
}

/// Writes ballast until the file system is full (at most 1 GiB); returns the bytes written.
fn fill_up(path: &std::path::Path) -> u64 {
    use std::io::Write;
    let Ok(mut f) = std::fs::File::create(path) else {
        return 0;
    };
    let block = vec![0xA5u8; MIB as usize];
    let mut n = 0;
    while n < 1024 * MIB {
        match f.write(&block) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k as u64,
        }
    }
    let _ = f.flush();
    n
}

fn raise_fd_limit() -> u64 {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on this process with a valid struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
        l.rlim_cur = l.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &l);
    }
    l.rlim_cur
}

fn target_dir() -> PathBuf {
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().map(PathBuf::from).unwrap_or(tmp)
}

/// The catalog: hot keys (most of the traffic), cold ones (more than the stores hold, so
/// they keep missing), a key that needs percent-encoding, and the probe.
const OBJECTS: &[(&str, bool, u64)] = &[
    ("hot/empty", true, 0),
    ("hot/one", true, 1),
    ("hot/idle-4k", true, 4 * KIB),
    ("hot/a-300k", true, 300 * KIB),
    ("hot/b-1m", true, MIB),
    ("hot/c-2.5m", true, 5 * MIB / 2 + 3),
    ("hot/d-6m", true, 6 * MIB),
    ("odd/sp ace+plus%pct/ünï €.bin", true, 200 * KIB + 5),
    ("probe/obj", false, 5 * MIB / 2 + 11),
];

/// Cold objects: about 190 MiB with the sizes below, twice what the three stores hold
/// together (each chunk is kept by its owner only), so that cold reads keep going to the
/// origin and the origin's faults keep meeting object reads, not only listings.
const COLD_OBJECTS: usize = 36;
/// `store.capacity` of each replica.
const STORE_MIB: u64 = 32;

const COLD_SIZES: &[u64] = &[
    64 * KIB,
    MIB - 1,
    MIB + 1,
    3 * MIB,
    5 * MIB + 123,
    9 * MIB,
    16 * MIB,
];

async fn run(opts: Opts) -> i32 {
    let run_id = std::process::id();
    // Runs that are over (their harness gone) leave logs, and a failed one its stores.
    if let Ok(rd) = std::fs::read_dir(target_dir().join("chaos")) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name
                .strip_prefix("run-")
                .and_then(|p| p.parse::<u32>().ok())
            {
                if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    }
    let base = target_dir().join("chaos").join(format!("run-{run_id}"));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).expect("run dir");
    let fds = raise_fd_limit();
    println!(
        "chaos: {} mode, {} s, {} clients, {} idle connections (fd limit {fds}); files in {}",
        if opts.soak { "soak" } else { "chaos" },
        opts.secs,
        opts.clients,
        opts.idle_conns,
        base.display()
    );

    // The origin and the bucket.
    let g = common::garage();
    let s3 = common::client(&g.endpoint);
    let bucket = common::bucket(&s3, "chaos").await;
    let cat = Arc::new(Catalog::new(bucket.clone()));
    let mut probe = 0;
    let mut idle_key = 0;
    for (k, hot, size) in OBJECTS {
        let i = cat.add_key(k, *hot);
        if *k == "probe/obj" {
            probe = i;
        }
        if *k == "hot/idle-4k" {
            idle_key = i;
        }
        put_version(&s3, &cat, i, 1000 + i as u64, *size)
            .await
            .expect("seed object");
    }
    for (n, size) in COLD_SIZES.iter().cycle().take(COLD_OBJECTS).enumerate() {
        let i = cat.add_key(&format!("cold/{n:02}"), false);
        put_version(&s3, &cat, i, 1000 + i as u64, *size)
            .await
            .expect("seed object");
    }
    let total: u64 = cat.all().iter().map(|o| o.versions[0].size).sum();
    println!(
        "chaos: {} objects ({} MiB) in bucket {bucket}",
        cat.len(),
        total / MIB
    );

    // The fault proxy, and the replicas behind it.
    let proxy = FaultProxy::start(&g.endpoint).await;
    let (tmpfs, store_full_method) = Tmpfs::mount(base.join("tmpfs-2"), 64);
    println!("chaos: store-full fault uses {store_full_method}");
    let common_cfg = replica::Common {
        bin: PathBuf::from(env!("CARGO_BIN_EXE_shoal")),
        origin: proxy.endpoint.clone(),
        bucket: bucket.clone(),
        access_key: common::ACCESS_KEY.into(),
        secret_key: common::SECRET_KEY.into(),
        region: common::REGION.into(),
        origin_timeout: opts.origin_timeout,
        queue_timeout: opts.queue_timeout,
        capacity_mib: STORE_MIB,
        budget_mib: 128,
    };
    let replicas: Vec<Arc<Replica>> = (0..3)
        .map(|i| {
            let store = if i == 2 {
                tmpfs.path.join("store")
            } else {
                base.join(format!("store-{i}"))
            };
            let ports = [
                common::free_port(),
                common::free_port(),
                common::free_port(),
            ];
            Arc::new(Replica::new(i, &base, store, ports, common_cfg.clone()))
        })
        .collect();
    let peers: Vec<String> = replicas.iter().map(|r| r.cluster_addr()).collect();
    for r in &replicas {
        if let Err(e) = r.start(&peers).await {
            eprintln!("chaos: {e}");
            return 2;
        }
    }
    let buckets = ((opts.secs + 600) * 1000 / BUCKET.as_millis() as u64) as usize;
    let ctx = Arc::new(Ctx::new(
        cat.clone(),
        replicas.clone(),
        probe,
        idle_key,
        buckets,
    ));
    for r in 0..3 {
        if !ctx.probe(r).await {
            eprintln!("chaos: replica {r} does not serve the probe before any fault");
        }
    }
    let h = Arc::new(Harness {
        opts: opts.clone(),
        ctx: ctx.clone(),
        proxy,
        s3,
        peers,
        tmpfs,
        store_full_method,
        seeds: std::sync::atomic::AtomicU64::new(1_000_000),
        stop_ratios: Default::default(),
        restarts: Default::default(),
        interrupted: Default::default(),
    });

    let stop = CancellationToken::new();
    let ctrl_c = {
        let (stop, h) = (stop.clone(), h.clone());
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("chaos: interrupted; stopping and reporting");
                h.interrupted.store(true, Ordering::SeqCst);
                stop.cancel();
            }
        })
    };
    // Crashes: an exit the harness did not cause is a failure; the replica is restarted so
    // the run goes on.
    let monitor = {
        let (h, stop) = (h.clone(), stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            while !stop.is_cancelled() {
                tick.tick().await;
                for r in 0..3 {
                    if h.r(r).check_crash() {
                        let msg = h.r(r).crashes.lock().unwrap().last().cloned();
                        h.ctx.stats.fatal("crash", msg.unwrap_or_default());
                        let _ = h.r(r).start(&h.peers).await;
                    }
                }
            }
        })
    };
    let load_stop = CancellationToken::new();
    let mut idle = tokio::task::JoinSet::new();
    for i in 0..opts.idle_conns as usize {
        let (ctx, st) = (ctx.clone(), load_stop.clone());
        idle.spawn(async move {
            // Spread over the first seconds: 1,000 at once would be a connection storm.
            tokio::time::sleep(Duration::from_millis(i as u64 * 5)).await;
            ctx.idle_connection(i, st).await
        });
    }
    let mut clients = tokio::task::JoinSet::new();
    for id in 0..opts.clients {
        clients.spawn(ctx.clone().client(id, load_stop.clone()));
    }
    let sampler = opts.soak.then(|| {
        tokio::spawn(soak::sampler(
            replicas.clone(),
            ctx.t0,
            Duration::from_secs(5),
            load_stop.clone(),
        ))
    });
    let load_t0 = Instant::now();
    let deadline = load_t0 + Duration::from_secs(opts.secs);
    let faults = h.fault_loop(deadline, stop.clone()).await;
    // Let the load run to the deadline (the faults may end earlier).
    tokio::select! {
        _ = tokio::time::sleep_until(deadline.into()) => {}
        _ = stop.cancelled() => {}
    }
    let load_secs = load_t0.elapsed().as_secs_f64();
    load_stop.cancel();
    let idle_open_at_end = ctx.stats.idle_open.load(Ordering::Relaxed);
    // Clients finish their current request (each bounded by the 60 s progress rule).
    let drained = tokio::time::timeout(Duration::from_secs(90), async {
        while clients.join_next().await.is_some() {}
    })
    .await
    .is_ok();
    if !drained {
        ctx.stats.fatal(
            "no_progress_60s",
            "clients did not finish within 90 s of the end".into(),
        );
        clients.abort_all();
    }
    idle.abort_all();
    let samples = match sampler {
        Some(s) => s.await.unwrap_or_default(),
        None => Vec::new(),
    };
    // The end state: every replica serves correctly.
    let final_probe = h.recovery().await;
    stop.cancel();
    let _ = monitor.await;
    ctrl_c.abort();

    let code = report(
        &h,
        &faults,
        &samples,
        load_secs,
        idle_open_at_end,
        &final_probe,
        &base,
    );
    if h.interrupted.load(Ordering::SeqCst) {
        // A run cut short proves less than it claims: never exit 0.
        return 130;
    }
    code
}

#[allow(clippy::too_many_arguments)]
fn report(
    h: &Harness,
    faults: &[FaultRec],
    samples: &[soak::Sample],
    load_secs: f64,
    idle_open_at_end: i64,
    final_probe: &[Option<f64>],
    base: &std::path::Path,
) -> i32 {
    let s = &h.ctx.stats;
    let o = &h.opts;
    let requests = s.requests.lock().unwrap().clone();
    let correct = s.correct.lock().unwrap().clone();
    let honest = s.honest.lock().unwrap().clone();
    let unexpected = s.unexpected.lock().unwrap().clone();
    let fatal = s.fatal.lock().unwrap().clone();
    let total: u64 = requests.values().sum();
    let bytes = s.bytes_verified.load(Ordering::Relaxed);
    let mut by_class: BTreeMap<&str, Vec<&FaultRec>> = BTreeMap::new();
    for f in faults {
        by_class.entry(f.class.name()).or_default().push(f);
    }
    let per_replica: Vec<(u64, f64)> = (0..3)
        .map(|r| {
            let n = s.per_replica_requests[r].load(Ordering::Relaxed);
            let ok: u64 = h.ok_between(&[r], 0.0, h.now());
            (n, ok as f64 / load_secs)
        })
        .collect();
    let ratios = h.stop_ratios.lock().unwrap();
    let min_ratio = ratios
        .iter()
        .map(|r| r.ratio)
        .filter(|r| r.is_finite())
        .fold(f64::INFINITY, f64::min);
    let soak_j = (!samples.is_empty()).then(|| soak::judge(samples, load_secs, 3));

    let mut fail = Vec::new();
    if h.interrupted.load(Ordering::SeqCst) {
        fail.push(format!(
            "INTERRUPTED (Ctrl-C) after {load_secs:.0} s of {} s; only that part was judged",
            o.secs
        ));
    }
    if s.fatal_count() > 0 {
        fail.push(format!("{} fatal findings: {fatal:?}", s.fatal_count()));
    }
    for (r, p) in final_probe.iter().enumerate() {
        if p.is_none() {
            fail.push(format!("replica {r} not serving correctly at the end"));
        }
    }
    if let (Some(want), true) = (o.require_stop_ratio, !ratios.is_empty()) {
        // Not finite: no window had a rate to compare with, which proves nothing.
        if min_ratio < want || !min_ratio.is_finite() {
            fail.push(format!(
                "stopped-replica ratio {min_ratio:.2} below CHAOS_REQUIRE_STOP_RATIO={want}"
            ));
        }
    }
    if let Some(j) = &soak_j {
        fail.extend(j.failures.iter().cloned());
    }

    let mut md = String::new();
    let mode = if o.soak { "soak" } else { "chaos" };
    let _ = writeln!(md, "# Shoal {mode} report\n");
    let _ = writeln!(
        md,
        "Load ran {load_secs:.0} s: {} clients, {} idle keep-alive connections, 3 replicas \
         (disk stores, 1 MiB chunks, store.capacity {STORE_MIB} MiB, origin.timeout {:?}, \
         fill.queue_timeout {:?}, fill.retry 3 attempts 100 ms-1 s). Store-full fault: {}.\n",
        o.clients, o.idle_conns, o.origin_timeout, o.queue_timeout, h.store_full_method
    );
    let _ = writeln!(
        md,
        "**Verdict: {}**\n",
        if fail.is_empty() {
            "PASS".to_owned()
        } else {
            format!("FAIL — {}", fail.join("; "))
        }
    );
    let _ = writeln!(
        md,
        "## Requests\n\n| kind | requests | correct |\n|---|---:|---:|"
    );
    for (k, n) in &requests {
        let _ = writeln!(
            md,
            "| {k} | {n} | {} |",
            correct.get(k).copied().unwrap_or(0)
        );
    }
    let _ = writeln!(
        md,
        "| **all** | {total} | {} |\n\nBytes verified: {bytes} ({:.2} GiB). Idle connections: \
         {} opened, {idle_open_at_end} open at the end, {} closed by a server (replica restarts).\n",
        correct.values().sum::<u64>(),
        bytes as f64 / (1u64 << 30) as f64,
        s.idle_opened.load(Ordering::Relaxed),
        s.idle_closed_by_server.load(Ordering::Relaxed),
    );
    let _ = writeln!(
        md,
        "Per replica (all kinds): requests, correct answers per second over the run:\n"
    );
    for (r, (n, rate)) in per_replica.iter().enumerate() {
        let _ = writeln!(md, "- replica {r}: {n} requests, {rate:.1} correct/s");
    }
    let _ = writeln!(md, "\n## Honest failures\n\n| kind | count |\n|---|---:|");
    for (k, n) in &honest {
        let _ = writeln!(md, "| {k} | {n} |");
    }
    let _ = writeln!(
        md,
        "\n## Unexpected answers (reported, not fatal)\n\n| class | count |\n|---|---:|"
    );
    for (k, n) in &unexpected {
        let _ = writeln!(md, "| {k} | {n} |");
    }
    for e in s.unexpected_examples.lock().unwrap().iter().take(15) {
        let _ = writeln!(md, "- {e}");
    }
    let _ = writeln!(md, "\n## Fatal findings\n\n| class | count |\n|---|---:|");
    for (k, n) in &fatal {
        let _ = writeln!(md, "| {k} | {n} |");
    }
    for e in s.fatal_examples.lock().unwrap().iter().take(20) {
        let _ = writeln!(md, "- {e}");
    }
    let _ = writeln!(
        md,
        "\n## Faults\n\n| class | injected | recovery max (s) | recovery median (s) |\n|---|---:|---:|---:|"
    );
    for (c, fs) in &by_class {
        let mut rec: Vec<f64> = fs
            .iter()
            .flat_map(|f| f.recovery.iter().map(|x| x.unwrap_or(f64::INFINITY)))
            .collect();
        rec.sort_by(|a, b| a.total_cmp(b));
        let max = rec.last().copied().unwrap_or(0.0);
        let med = rec.get(rec.len() / 2).copied().unwrap_or(0.0);
        let _ = writeln!(md, "| {c} | {} | {max:.2} | {med:.2} |", fs.len());
    }
    let _ = writeln!(md, "\nOrigin proxy effects: {:?}\n", h.proxy.effects());
    let _ = writeln!(
        md,
        "Replica restarts by the harness: {}\n",
        h.restarts.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        md,
        "Each fault (start/end s; recovery per replica, from the fault's end):\n"
    );
    for f in faults {
        let _ = writeln!(
            md,
            "- {:>6.1}-{:>6.1} {}: {}; recovered {}",
            f.start,
            f.end,
            f.class.name(),
            f.detail,
            fmt_recovery(&f.recovery)
        );
    }
    let _ = writeln!(md, "\n## Stopped replica\n");
    if ratios.is_empty() {
        let _ = writeln!(md, "No SIGSTOP window ran.");
    }
    for r in ratios.iter() {
        let _ = writeln!(
            md,
            "- replica {} stopped: the other two {:.1}/s before, {:.1}/s during: ratio {:.2}",
            r.replica, r.before_per_s, r.during_per_s, r.ratio
        );
    }
    if !ratios.is_empty() {
        let _ = writeln!(
            md,
            "\nLowest ratio {min_ratio:.2} (goal ≥ 0.5; enforced only with CHAOS_REQUIRE_STOP_RATIO, {}).",
            o.require_stop_ratio.map_or("unset".into(), |v| format!("set to {v}"))
        );
    }
    if let Some(j) = &soak_j {
        let _ = writeln!(
            md,
            "\n## Soak: growth over the second half (thresholds per series, least squares)\n"
        );
        for l in &j.lines {
            let _ = writeln!(md, "- {l}");
        }
    }
    let _ = writeln!(md, "\nFinal probe: {}", fmt_recovery(final_probe));

    let json = json!({
        "mode": mode,
        "verdict": if fail.is_empty() { "pass" } else { "fail" },
        "failures": fail,
        "load_secs": load_secs,
        "settings": {
            "clients": o.clients, "idle_conns": o.idle_conns,
            "fault_secs": o.fault.as_secs(), "down_secs": o.down.as_secs(),
            "stop_secs": o.stop.as_secs(), "gap_secs": o.gap.as_secs(),
            "origin_timeout_ms": o.origin_timeout.as_millis() as u64,
            "queue_timeout_ms": o.queue_timeout.as_millis() as u64,
            "store_full_method": h.store_full_method,
        },
        "requests": requests, "correct": correct, "bytes_verified": bytes,
        "honest_failures": honest, "unexpected": unexpected,
        "unexpected_examples": *s.unexpected_examples.lock().unwrap(),
        "fatal": fatal, "fatal_examples": *s.fatal_examples.lock().unwrap(),
        "per_replica": per_replica.iter().map(|(n, r)| json!({"requests": n, "correct_per_s": r})).collect::<Vec<_>>(),
        "faults": faults.iter().map(|f| json!({
            "class": f.class.name(), "start_s": f.start, "end_s": f.end,
            "detail": f.detail, "recovery_s": f.recovery,
        })).collect::<Vec<_>>(),
        "faults_by_class": by_class.iter().map(|(c, v)| (c.to_string(), v.len())).collect::<BTreeMap<_, _>>(),
        "proxy_effects": h.proxy.effects(),
        "stop_ratios": ratios.iter().map(|r| json!({
            "replica": r.replica, "before_per_s": r.before_per_s,
            "during_per_s": r.during_per_s, "ratio": r.ratio,
        })).collect::<Vec<_>>(),
        "idle": {
            "opened": s.idle_opened.load(Ordering::Relaxed),
            "open_at_end": idle_open_at_end,
            "closed_by_server": s.idle_closed_by_server.load(Ordering::Relaxed),
        },
        "restarts": h.restarts.load(Ordering::Relaxed),
        "soak": soak_j.as_ref().map(|j| j.json.clone()),
        "final_probe_s": final_probe,
    });
    let out = target_dir().join("chaos");
    let _ = std::fs::write(out.join(format!("{mode}-report.md")), &md);
    let _ = std::fs::write(
        out.join(format!("{mode}-report.json")),
        serde_json::to_string_pretty(&json).unwrap_or_default(),
    );
    if !samples.is_empty() {
        let _ = soak::write_csv(&out.join("soak.csv"), samples);
        if let Err(e) = soak::write_png(&out.join("soak.png"), samples, 3) {
            eprintln!("soak: plot failed: {e}");
        }
    }
    println!("\n{md}");
    println!(
        "chaos: report written to {}/{mode}-report.{{md,json}}{}",
        out.display(),
        if samples.is_empty() {
            ""
        } else {
            " with soak.csv and soak.png"
        }
    );
    // The stores and logs of a passing run are not needed again.
    if fail.is_empty() {
        for r in &h.ctx.replicas {
            r.kill();
        }
        let _ = std::fs::remove_dir_all(base.join("store-0"));
        let _ = std::fs::remove_dir_all(base.join("store-1"));
    }
    if fail.is_empty() {
        0
    } else {
        1
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let has = |a: &str| args.iter().any(|x| x == a);
    // `cargo bench` passes `--bench`; `make test` passes `--run`. `cargo test --all-targets`
    // runs this binary with neither, and a multi-minute fault run has no place there.
    if !has("--bench") && !has("--run") && !has("--soak") {
        println!(
            "chaos: fault-injection harness; run it with `make chaos` / `make soak` \
             (or `cargo test --bench chaos -- --run`)"
        );
        return;
    }
    let soak = has("--soak") || std::env::var("SOAK").is_ok_and(|v| v == "1");
    let opts = Opts::from_env(soak);
    // The shared test helpers stop a binary after 20 minutes; a long run needs longer.
    if std::env::var("TEST_WATCHDOG_SECS").is_err() {
        std::env::set_var("TEST_WATCHDOG_SECS", (opts.secs + 30 * 60).to_string());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let code = rt.block_on(run(opts));
    // Dropping the runtime drops every task, and with them the replicas (killed in Drop).
    drop(rt);
    std::process::exit(code);
}
