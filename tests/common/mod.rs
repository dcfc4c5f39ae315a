//! Test harness: a real Garage S3 server on loopback, shared by the tests of one binary, and
//! helpers to start Shoal in front of it with a fault-injecting origin wrapper.
#![allow(dead_code)]

pub mod azurite;
pub mod dns;
pub mod faulty;
pub mod fixture;

pub use fixture::base_config;
pub mod moto;
pub mod proxy;

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use shoal::config::Config;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

pub const ACCESS_KEY: &str = "GK0123456789abcdef01234567";
pub const SECRET_KEY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
pub const REGION: &str = "garage";

/// The shared Garage instance of this test process.
pub struct Garage {
    pub endpoint: String,
    /// Garage's website endpoint: anonymous GETs of a bucket that allows it, with the bucket
    /// named by the `Host` header `{bucket}.web.garage` (what an unsigned proxy such as nginx
    /// can read from, in the benchmarks).
    pub web_endpoint: String,
    cfg: PathBuf,
}

impl Garage {
    /// A new bucket that the test key owns and that anyone can also read through the website
    /// endpoint (made with Garage's own CLI, which names buckets globally).
    pub fn public_bucket(&self, hint: &str) -> String {
        let name = format!("{hint}-{}", std::process::id());
        let run = |args: &[&str]| {
            let out = Command::new(garage_bin())
                .arg("-c")
                .arg(&self.cfg)
                .args(args)
                .output()
                .expect("garage cli");
            assert!(
                out.status.success(),
                "garage {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&["bucket", "create", &name]);
        run(&[
            "bucket", "allow", "--read", "--write", "--owner", &name, "--key", ACCESS_KEY,
        ]);
        run(&["bucket", "website", "--allow", &name]);
        name
    }
}

/// A loopback port nothing listens on, for servers that must be told their port before
/// they start (Garage, cluster replicas).
///
/// It comes from below the kernel's ephemeral range (`ip_local_port_range`, 32768 and up by
/// default), never from a port-0 bind: a port handed out by the kernel as ephemeral can be
/// taken again by any outgoing connection (to Garage, to a peer) before the server binds it,
/// which made tests fail now and then with "Address already in use". Ports are never handed
/// out twice in one process.
pub fn free_port() -> u16 {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static GIVEN: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let given = GIVEN.get_or_init(Default::default);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (from, to) = if low > 12000 {
        (10000, low)
    } else {
        (low.max(1024), 10000)
    };
    // A different start in every process, so that processes running side by side (CI and a
    // developer's run) rarely try the same ports.
    let seed = std::process::id() as u64 * 7919
        + std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as u64)
            .unwrap_or(0);
    let span = (to - from) as u64;
    let mut given = given.lock().unwrap();
    for i in 0..span {
        let port = from + ((seed + i * 7) % span) as u16;
        if !given.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return port;
        }
    }
    panic!("no free loopback port below the ephemeral range");
}

fn garage_bin() -> PathBuf {
    if let Ok(p) = std::env::var("GARAGE_BIN") {
        return p.into();
    }
    if let Ok(out) = Command::new("sh")
        .args(["-c", "command -v garage"])
        .output()
    {
        let p = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if !p.is_empty() {
            return p.into();
        }
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let p = PathBuf::from(home).join(".cargo/bin/garage");
    assert!(
        p.exists(),
        "the garage S3 server is not installed: run `make test`, which installs it"
    );
    p
}

fn pid_alive(pid: u32) -> bool {
    PathBuf::from(format!("/proc/{pid}")).exists()
}

/// Starts Garage once per test process. It runs in a thread that never exits, with
/// PR_SET_PDEATHSIG, so the kernel stops it when this test process ends.
pub fn garage() -> &'static Garage {
    static G: OnceLock<Garage> = OnceLock::new();
    G.get_or_init(|| {
        watchdog();
        start_garage()
    })
}

/// How long one test binary may run before it is taken for hung. The slowest binary takes
/// well under a minute here; a hang must fail the run with a message, not eat CI's time.
/// `TEST_WATCHDOG_SECS` overrides it for the long runs (`make chaos`, `make soak`); not
/// `SHOAL_…`, which `shoal serve` children would read as configuration.
fn watchdog_limit() -> Duration {
    std::env::var("TEST_WATCHDOG_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(Duration::from_secs(20 * 60), Duration::from_secs)
}

/// Ends this test process, saying why, once it has run for [`watchdog_limit`]. Garage stops with it
/// (PR_SET_PDEATHSIG); a hung test's own waits should have fired long before.
fn watchdog() {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        std::thread::spawn(|| {
            let limit = watchdog_limit();
            std::thread::sleep(limit);
            eprintln!("watchdog: this test binary ran for {limit:?}; a test is hung. Giving up.");
            std::process::exit(124);
        });
    });
}

fn start_garage() -> Garage {
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("garage");
    std::fs::create_dir_all(&base).unwrap();
    // Remove the data of earlier test processes that are gone.
    for e in std::fs::read_dir(&base).unwrap().flatten() {
        if let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) {
            if !pid_alive(pid) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let dir = base.join(std::process::id().to_string());
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (s3, rpc, admin, web) = (free_port(), free_port(), free_port(), free_port());
    let cfg = dir.join("garage.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"metadata_dir = "{d}/meta"
data_dir = "{d}/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{secret}"
[s3_api]
s3_region = "{REGION}"
api_bind_addr = "127.0.0.1:{s3}"
[s3_web]
bind_addr = "127.0.0.1:{web}"
root_domain = ".web.garage"
[admin]
api_bind_addr = "127.0.0.1:{admin}"
"#,
            d = dir.display(),
            secret = "5c1b2a3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9",
        ),
    )
    .unwrap();
    let bin = garage_bin();
    let (tx, rx) = std::sync::mpsc::channel();
    let (bin2, cfg2, log) = (bin.clone(), cfg.clone(), dir.join("server.log"));
    std::thread::spawn(move || {
        use std::os::unix::process::CommandExt;
        let logf = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(&bin2);
        cmd.args(["-c"]).arg(&cfg2).arg("server");
        cmd.stdout(Stdio::from(logf.try_clone().unwrap()))
            .stderr(Stdio::from(logf));
        cmd.env("RUST_LOG", "warn");
        // SAFETY: prctl is async-signal-safe; it only asks the kernel to kill the child when
        // this (never-exiting) thread's process dies.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn();
        let ok = child.is_ok();
        tx.send(child.map(|c| c.id()).map_err(|e| e.to_string()))
            .unwrap();
        if ok {
            loop {
                std::thread::park();
            }
        }
    });
    rx.recv().unwrap().expect("cannot start garage");
    let g = |args: &[&str]| -> Result<String, String> {
        let out = Command::new(&bin)
            .arg("-c")
            .arg(&cfg)
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let id = loop {
        match g(&["node", "id", "-q"]) {
            Ok(s) if !s.trim().is_empty() => break s.trim().split('@').next().unwrap().to_owned(),
            other => {
                assert!(
                    Instant::now() < deadline,
                    "garage did not come up: {other:?}"
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    };
    // The RPC port may open a little after `node id` answers: retry each step until the deadline.
    let step = |args: &[&str]| loop {
        match g(args) {
            Ok(_) => break,
            Err(e) => {
                assert!(Instant::now() < deadline, "garage {args:?}: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    };
    step(&["layout", "assign", "-z", "dc1", "-c", "4G", &id]);
    step(&["layout", "apply", "--version", "1"]);
    step(&[
        "key",
        "import",
        "--yes",
        "-n",
        "shoal-test",
        ACCESS_KEY,
        SECRET_KEY,
    ]);
    step(&["key", "allow", "--create-bucket", ACCESS_KEY]);
    let endpoint = format!("http://127.0.0.1:{s3}");
    // Wait until the S3 API answers with the key.
    // On a thread of its own: the caller may be inside a tokio runtime already.
    let ep = endpoint.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let c = client(&ep);
            loop {
                match c.list_buckets().send().await {
                    Ok(_) => break,
                    Err(e) => {
                        assert!(Instant::now() < deadline, "garage S3 API not ready: {e:?}");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        })
    })
    .join()
    .expect("garage readiness check");
    Garage {
        endpoint,
        web_endpoint: format!("http://127.0.0.1:{web}"),
        cfg,
    }
}

/// An SDK client for `endpoint` with the test credentials (Garage or Shoal).
pub fn client(endpoint: &str) -> Client {
    let conf = aws_sdk_s3::config::Builder::new()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new(REGION))
        .credentials_provider(Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "test"))
        .force_path_style(true)
        .request_checksum_calculation(aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired)
        .http_client(
            aws_smithy_http_client::Builder::new()
                .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                    aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
                ))
                .build_https(),
        )
        .build();
    Client::from_conf(conf)
}

/// A fresh bucket with a unique name.
pub async fn bucket(c: &Client, hint: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "{hint}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    c.create_bucket()
        .bucket(&name)
        .send()
        .await
        .expect("create bucket");
    name
}

pub async fn put(c: &Client, bucket: &str, key: &str, data: Vec<u8>) {
    c.put_object()
        .bucket(bucket)
        .key(key)
        .body(ByteStream::from(data))
        .send()
        .await
        .expect("put object");
}

/// Deterministic pseudo-random bytes (so a wrong offset is always visible).
pub fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Starts a server that lives as long as this test process: the child is spawned from a
/// thread that never exits, with PR_SET_PDEATHSIG, so the kernel kills it when the process
/// ends (however the tests end). Output is discarded.
pub fn spawn_for_process(mut cmd: Command) -> Result<(), String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::os::unix::process::CommandExt;
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        // SAFETY: prctl is async-signal-safe; it only asks the kernel to kill the child when
        // this (never-exiting) thread's process dies.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        match cmd.spawn() {
            Ok(mut c) => {
                tx.send(Ok(())).unwrap();
                // Reap it if it dies early; otherwise stay with it forever.
                let _ = c.wait();
                loop {
                    std::thread::park();
                }
            }
            Err(e) => tx.send(Err(e.to_string())).unwrap(),
        }
    });
    rx.recv().unwrap()
}

/// Waits up to `secs` for something to listen on a loopback port.
pub fn wait_listening(port: u16, secs: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// One raw HTTP/1.1 GET (`Connection: close`) with exactly these headers: the status and the
/// whole answer as text. Raw, so that a test can send what no client library would (a path
/// as given, two `Host` headers, an absolute-form target, a `Host` other than the one signed).
pub async fn raw_get(addr: &str, target: &str, headers: &[(String, String)]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr.trim_start_matches("http://"))
        .await
        .unwrap();
    let mut req = format!("GET {target} HTTP/1.1\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// A config for Shoal in front of Garage, on loopback ports the OS picks.
pub fn config(g: &Garage) -> Config {
    let mut c = base_config();
    c.origin.endpoint = Some(g.endpoint.clone());
    c.origin.region = REGION.into();
    c.origin.force_path_style = true;
    c.origin.access_key_id = Some(ACCESS_KEY.into());
    c.origin.secret_access_key = Some(SECRET_KEY.into());
    c.chunk.size = shoal::config::ByteSize(1 << 20);
    c.fill.retry.backoff_initial = shoal::config::Dur(Duration::from_millis(10));
    c.fill.retry.backoff_max = shoal::config::Dur(Duration::from_millis(50));
    c
}

/// [`config`] for a `shoal serve` process ([`ShoalProcess`]): JSON logs, whose start-up line
/// names the addresses it bound. Write it with [`fixture::toml`].
pub fn process_config(g: &Garage) -> Config {
    let mut c = config(g);
    c.telemetry.log_format = shoal::config::LogFormat::Json;
    c
}

/// Shoal's own defaults in front of Garage, for the benchmarks (which measure Shoal as users
/// run it): 8 MiB chunks and the default retries, JSON logs, origin id `bench`.
pub fn bench_config(g: &Garage) -> Config {
    let mut c = process_config(g);
    c.origin.id = "bench".into();
    c.chunk = Default::default();
    c.fill.retry = Default::default();
    c.server.shutdown_grace = shoal::config::ServerConfig::default().shutdown_grace;
    c
}

/// The real S3 origin (Garage), as Shoal builds it.
pub async fn s3_origin(cfg: &Config) -> Arc<shoal::origin::S3Origin> {
    Arc::new(shoal::origin::S3Origin::new(&cfg.origin).await.unwrap())
}

/// A running Shoal and a raw HTTP client for it.
pub struct Shoal {
    pub running: shoal::app::Running,
    pub http: reqwest::Client,
    pub base: String,
}

impl Shoal {
    pub async fn start(cfg: &Config, origin: Arc<dyn shoal::origin::Origin>) -> Shoal {
        let running = shoal::app::start(cfg, origin).await.expect("start shoal");
        let base = format!("http://{}", running.s3_addr);
        Shoal {
            running,
            http: reqwest::Client::new(),
            base,
        }
    }

    /// Starts Shoal with an explicit store.
    pub async fn start_with(
        cfg: &Config,
        origin: Arc<dyn shoal::origin::Origin>,
        store: Arc<dyn shoal::store::ChunkStore>,
    ) -> Shoal {
        let running = shoal::app::start_with(cfg, origin, store)
            .await
            .expect("start shoal");
        let base = format!("http://{}", running.s3_addr);
        Shoal {
            running,
            http: reqwest::Client::new(),
            base,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}/{}", self.base, path.trim_start_matches('/'))
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(self.url(path)).send().await.expect("request")
    }

    pub async fn get_range(&self, path: &str, range: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .header("range", range)
            .send()
            .await
            .expect("request")
    }

    pub async fn stop(self) {
        self.running.shutdown().await;
    }
}

/// Large test data, fast to make: a random 1 MiB block with every MiB stamped with its index
/// and `seed`, so a byte from the wrong offset or the wrong object is always visible.
pub fn patterned(len: usize, seed: u64) -> Vec<u8> {
    const MIB: usize = 1 << 20;
    static BLOCK: OnceLock<Vec<u8>> = OnceLock::new();
    let block = BLOCK.get_or_init(|| data(MIB, 0xB10C));
    let mut out = Vec::with_capacity(len);
    let mut i = 0u64;
    while out.len() < len {
        let mut b = block.clone();
        b[..8].copy_from_slice(&i.to_le_bytes());
        b[8..16].copy_from_slice(&seed.to_le_bytes());
        let take = (len - out.len()).min(MIB);
        out.extend_from_slice(&b[..take]);
        i += 1;
    }
    out
}

/// Peak resident memory (VmHWM) of a process, in bytes.
pub fn peak_rss(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// The `shoal` binary serving a config, as its own process (so its memory can be measured);
/// killed when dropped.
pub struct ShoalProcess {
    pub child: std::process::Child,
    pub s3: String,
    pub ops: String,
    /// Every log line it has written so far (JSON).
    pub logs: Arc<std::sync::Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

/// Reads a `shoal serve` JSON log until its start-up line: the S3 and ops addresses.
pub fn listening(lines: &mut impl Iterator<Item = std::io::Result<String>>) -> (String, String) {
    for line in lines.map_while(Result::ok) {
        if line.contains("shoal listening") {
            let field = |name: &str| {
                let start = line.find(&format!("\"{name}\":\"")).unwrap() + name.len() + 4;
                line[start..].split('"').next().unwrap().to_owned()
            };
            return (field("s3_addr"), field("ops_addr"));
        }
    }
    panic!("shoal did not start (no listening line)");
}

impl ShoalProcess {
    /// Starts `shoal serve` with `toml` (which must listen on 127.0.0.1:0 and log JSON).
    pub fn start(toml: &str) -> ShoalProcess {
        Self::start_with_env(toml, &[])
    }

    /// As [`start`](Self::start), with extra environment (`RUST_LOG` by default warnings
    /// plus the start-up line).
    pub fn start_with_env(toml: &str, env: &[(&str, &str)]) -> ShoalProcess {
        use std::io::BufRead;
        watchdog();
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("shoal.toml");
        std::fs::write(&cfg, toml).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_shoal"));
        cmd.args(["serve", "--config"])
            .arg(&cfg)
            .env("RUST_LOG", "warn,shoal::app=info,shoal::server=info")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start shoal");

        let stdout = child.stdout.take().unwrap();
        let mut lines = std::io::BufReader::new(stdout).lines();
        let (s3, ops) = listening(&mut lines);
        // Keep draining the log so the child never blocks on a full pipe.
        let logs: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
        let l2 = logs.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let mut l = l2.lock().unwrap();
                // A load run with access lines on writes millions: keep the recent ones.
                if l.len() >= 50_000 {
                    l.drain(..25_000);
                }
                l.push(line);
            }
        });
        ShoalProcess {
            child,
            s3: format!("http://{s3}"),
            ops,
            logs,
            _dir: dir,
        }
    }

    pub fn peak_rss(&self) -> u64 {
        peak_rss(self.child.id())
    }
}

/// What a test prints when a wait that should end does not: the server's gauges and its
/// last log lines, so a stall seen only in CI says where it was.
#[derive(Clone)]
pub struct Diagnose {
    ops: String,
    logs: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Diagnose {
    pub fn of(shoal: &ShoalProcess) -> Self {
        Diagnose {
            ops: shoal.ops.clone(),
            logs: shoal.logs.clone(),
        }
    }

    /// Prints the server's budget, origin and request gauges, then its last 40 log lines.
    pub async fn dump(&self) {
        let metrics = async {
            reqwest::get(format!("http://{}/metrics", self.ops))
                .await?
                .text()
                .await
        };
        match tokio::time::timeout(std::time::Duration::from_secs(5), metrics).await {
            Ok(Ok(text)) => {
                for line in text.lines().filter(|l| {
                    !l.starts_with('#')
                        && [
                            "budget",
                            "inflight",
                            "queue",
                            "chunk_lookups",
                            "origin_requests",
                        ]
                        .iter()
                        .any(|k| l.contains(k))
                        && !l.contains("_bucket{")
                }) {
                    eprintln!("metrics: {line}");
                }
            }
            other => eprintln!("metrics: unavailable ({other:?})"),
        }
        let logs = self.logs.lock().unwrap();
        for line in logs.iter().rev().take(40).rev() {
            eprintln!("log: {line}");
        }
    }
}

impl Drop for ShoalProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Shoal {
    /// Waits until no fill runs, then checks that every byte of the budget came back.
    pub async fn assert_budget_returns(&self) {
        assert!(
            self.running.fills_settled(Duration::from_secs(30)).await,
            "fills did not settle"
        );
        let b = &self.running.budget;
        for _ in 0..500 {
            if b.available() == b.total() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "budget leak: {} of {} bytes still held",
            b.total() - b.available(),
            b.total()
        );
    }
}

/// A real store whose writers hang on their first write (a disk that stopped answering).
pub struct HangingStore {
    pub inner: Arc<dyn shoal::store::ChunkStore>,
}

struct HangingWriter;

#[async_trait::async_trait]
impl shoal::store::ChunkWriter for HangingWriter {
    async fn write(&mut self, _b: bytes::Bytes) -> Result<(), shoal::store::StoreError> {
        futures_util::future::pending().await
    }
    async fn commit(self: Box<Self>) -> Result<shoal::store::Committed, shoal::store::StoreError> {
        futures_util::future::pending().await
    }
}

#[async_trait::async_trait]
impl shoal::store::ChunkStore for HangingStore {
    async fn get(
        &self,
        key: &shoal::model::ChunkKey,
        range: std::ops::Range<u64>,
    ) -> Result<Option<shoal::origin::ByteStream>, shoal::store::StoreError> {
        self.inner.get(key, range).await
    }
    async fn begin(
        &self,
        _key: &shoal::model::ChunkKey,
        _len: u64,
    ) -> Result<Box<dyn shoal::store::ChunkWriter>, shoal::store::StoreError> {
        Ok(Box::new(HangingWriter))
    }
    fn contains(&self, key: &shoal::model::ChunkKey) -> bool {
        self.inner.contains(key)
    }
    fn stats(&self) -> shoal::store::StoreStats {
        self.inner.stats()
    }
}
