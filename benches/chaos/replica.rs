//! The Shoal replicas: `shoal serve` processes the harness starts, kills, stops, resumes and
//! restarts, and watches for crashes (an exit the harness did not cause).
//!
//! Every replica keeps its ports and its store directory across restarts, so a restarted
//! replica is the same member at the same address, starting over a store it must rescan.
//! Children are spawned from one long-lived thread with `PR_SET_PDEATHSIG` (the kernel kills
//! them if the harness dies, even of SIGKILL), and killed in `Drop` (after a SIGCONT, so a
//! stopped child does not outlive its harness).

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Whether clients may be sent to a replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Avail {
    Up = 0,
    /// SIGSTOPped: a load balancer would have taken it out.
    Stopped = 1,
    /// Killed, or starting.
    Down = 2,
}

/// Everything a replica's config needs that is not its own.
#[derive(Clone)]
pub struct Common {
    pub bin: PathBuf,
    pub origin: String,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
    pub region: String,
    /// `origin.timeout`, `fill.queue_timeout` (explicit: the fault windows depend on them).
    pub origin_timeout: Duration,
    pub queue_timeout: Duration,
    pub capacity_mib: u64,
    pub budget_mib: u64,
}

pub struct Replica {
    pub idx: usize,
    pub s3_port: u16,
    pub ops_port: u16,
    pub cluster_port: u16,
    pub dir: PathBuf,
    pub store: PathBuf,
    common: Common,
    child: Mutex<Option<Child>>,
    avail: AtomicU8,
    /// Set before the harness kills it; a exit without it is a crash.
    expect_exit: AtomicBool,
    pub pid: AtomicU32,
    /// Starts so far (1 after the first).
    pub starts: AtomicU32,
    pub crashes: Mutex<Vec<String>>,
    /// Its last log lines, for a crash report.
    tail: Arc<Mutex<Vec<String>>>,
}

/// A command to start, and where to send the child (or why not).
type SpawnRequest = (Command, std::sync::mpsc::Sender<std::io::Result<Child>>);

fn spawner() -> &'static Mutex<std::sync::mpsc::Sender<SpawnRequest>> {
    static S: OnceLock<Mutex<std::sync::mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    S.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<SpawnRequest>();
        // PR_SET_PDEATHSIG fires when the *thread* that forked exits: fork from one thread
        // that lives as long as the harness.
        std::thread::spawn(move || {
            use std::os::unix::process::CommandExt;
            for (mut cmd, reply) in rx {
                // SAFETY: prctl is async-signal-safe; it asks the kernel to kill the child
                // when this thread's process dies.
                unsafe {
                    cmd.pre_exec(|| {
                        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                        Ok(())
                    });
                }
                let _ = reply.send(cmd.spawn());
            }
        });
        Mutex::new(tx)
    })
}

fn spawn(cmd: Command) -> std::io::Result<Child> {
    let (tx, rx) = std::sync::mpsc::channel();
    spawner()
        .lock()
        .unwrap()
        .send((cmd, tx))
        .map_err(std::io::Error::other)?;
    rx.recv().map_err(std::io::Error::other)?
}

pub fn signal(pid: u32, sig: i32) {
    if pid != 0 {
        // SAFETY: sends a signal to a child this harness started.
        unsafe {
            libc::kill(pid as i32, sig);
        }
    }
}

impl Replica {
    pub fn new(idx: usize, dir: &Path, store: PathBuf, ports: [u16; 3], common: Common) -> Self {
        let dir = dir.join(format!("replica-{idx}"));
        std::fs::create_dir_all(&dir).expect("replica dir");
        std::fs::create_dir_all(&store).expect("store dir");
        Replica {
            idx,
            s3_port: ports[0],
            ops_port: ports[1],
            cluster_port: ports[2],
            dir,
            store,
            common,
            child: Mutex::new(None),
            avail: AtomicU8::new(Avail::Down as u8),
            expect_exit: AtomicBool::new(false),
            pid: AtomicU32::new(0),
            starts: AtomicU32::new(0),
            crashes: Mutex::default(),
            tail: Arc::default(),
        }
    }

    pub fn s3(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    pub fn cluster_addr(&self) -> String {
        format!("127.0.0.1:{}", self.cluster_port)
    }

    pub fn avail(&self) -> Avail {
        match self.avail.load(Ordering::SeqCst) {
            0 => Avail::Up,
            1 => Avail::Stopped,
            _ => Avail::Down,
        }
    }

    pub fn set_avail(&self, a: Avail) {
        self.avail.store(a as u8, Ordering::SeqCst);
    }

    /// This replica's `shoal serve` config, written with the tests' fixture. Every setting the
    /// fault windows depend on is explicit.
    fn config(&self, peers: &[String]) -> String {
        use shoal::config::{ByteSize, Dur, LogFormat, OriginKind, StoreKind};
        let c = &self.common;
        let mut cfg = crate::common::base_config();
        cfg.server.listen = format!("127.0.0.1:{}", self.s3_port).parse().unwrap();
        cfg.server.shutdown_grace = Dur(Duration::from_secs(1));
        cfg.ops.listen = format!("127.0.0.1:{}", self.ops_port).parse().unwrap();
        cfg.origin.kind = OriginKind::S3;
        cfg.origin.id = "chaos".into();
        cfg.origin.endpoint = Some(c.origin.clone());
        cfg.origin.region = c.region.clone();
        cfg.origin.force_path_style = true;
        cfg.origin.access_key_id = Some(c.access_key.clone());
        cfg.origin.secret_access_key = Some(c.secret_key.as_str().into());
        cfg.origin.buckets = vec![c.bucket.clone()];
        cfg.origin.timeout = Dur(c.origin_timeout);
        cfg.store.kind = StoreKind::Disk;
        cfg.store.path = Some(self.store.clone());
        cfg.store.capacity = ByteSize(c.capacity_mib << 20);
        cfg.store.small_chunk_memory = ByteSize(8 << 20);
        cfg.store.write_timeout = Dur(Duration::from_secs(10));
        cfg.chunk.size = ByteSize(1 << 20);
        cfg.chunk.readahead = 4;
        cfg.fill.origin_concurrency = 16;
        cfg.fill.queue_timeout = Dur(c.queue_timeout);
        cfg.fill.buffer_budget = ByteSize(c.budget_mib << 20);
        cfg.fill.retry.attempts = 3;
        cfg.fill.retry.backoff_initial = Dur(Duration::from_millis(100));
        cfg.fill.retry.backoff_max = Dur(Duration::from_secs(1));
        cfg.fill.retry.max_total = Dur(c.origin_timeout * 3 + Duration::from_secs(1));
        cfg.cluster.listen = format!("127.0.0.1:{}", self.cluster_port).parse().unwrap();
        cfg.cluster.advertise = Some(format!("127.0.0.1:{}", self.cluster_port));
        cfg.cluster.peers = peers.to_vec();
        cfg.cluster.secret = Some("chaos-harness-cluster-secret-0123456789".into());
        cfg.cluster.refresh = Dur(Duration::from_secs(1));
        cfg.telemetry.log_format = LogFormat::Json;
        format!(
            "# Written by the chaos harness (benches/chaos.rs).\n{}",
            crate::common::fixture::toml(&cfg)
        )
    }

    /// Starts `shoal serve` with this peer list and waits (at most 60 s) for its start-up
    /// line; then clients may use it.
    pub async fn start(&self, peers: &[String]) -> Result<Duration, String> {
        let t0 = Instant::now();
        let cfg = self.dir.join("shoal.toml");
        std::fs::write(&cfg, self.config(peers)).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(&self.common.bin);
        cmd.args(["serve", "--config"])
            .arg(&cfg)
            .env("RUST_LOG", "warn,shoal::app=info,shoal::server=info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = spawn(cmd).map_err(|e| format!("spawn shoal: {e}"))?;
        let n = self.starts.fetch_add(1, Ordering::SeqCst) + 1;
        self.pid.store(child.id(), Ordering::SeqCst);
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let log = self.dir.join("shoal.log");
        let tail = self.tail.clone();
        std::thread::spawn(move || {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .ok();
            let mut ready = Some(ready_tx);
            if let Some(out) = stdout {
                for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                    if line.contains("shoal listening") {
                        if let Some(tx) = ready.take() {
                            let _ = tx.send(());
                        }
                    }
                    if let Some(f) = f.as_mut() {
                        let _ = writeln!(f, "[start {n}] {line}");
                    }
                    let mut t = tail.lock().unwrap();
                    if t.len() >= 200 {
                        t.drain(..100);
                    }
                    t.push(line);
                }
            }
        });
        let tail2 = self.tail.clone();
        std::thread::spawn(move || {
            if let Some(err) = stderr {
                for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                    let mut t = tail2.lock().unwrap();
                    t.push(format!("stderr: {line}"));
                }
            }
        });
        self.expect_exit.store(false, Ordering::SeqCst);
        *self.child.lock().unwrap() = Some(child);
        match tokio::time::timeout(Duration::from_secs(60), ready_rx).await {
            Ok(Ok(())) => {
                self.set_avail(Avail::Up);
                Ok(t0.elapsed())
            }
            _ => Err(format!(
                "replica {} did not start within 60 s; last lines: {:?}",
                self.idx,
                self.tail()
            )),
        }
    }

    /// SIGKILL (after SIGCONT), and reap. Clients are told first.
    pub fn kill(&self) {
        self.set_avail(Avail::Down);
        let mut c = self.child.lock().unwrap();
        if let Some(mut child) = c.take() {
            self.expect_exit.store(true, Ordering::SeqCst);
            signal(child.id(), libc::SIGCONT);
            let _ = child.kill();
            let _ = child.wait();
        }
        self.pid.store(0, Ordering::SeqCst);
    }

    pub fn stop(&self) {
        self.set_avail(Avail::Stopped);
        signal(self.pid.load(Ordering::SeqCst), libc::SIGSTOP);
    }

    pub fn resume(&self) {
        signal(self.pid.load(Ordering::SeqCst), libc::SIGCONT);
        self.set_avail(Avail::Up);
    }

    /// Notes an exit the harness did not cause (a crash). Returns true if it found one.
    pub fn check_crash(&self) -> bool {
        let mut c = self.child.lock().unwrap();
        let exited = match c.as_mut() {
            Some(child) => match child.try_wait() {
                Ok(Some(status)) => Some(status),
                _ => None,
            },
            None => None,
        };
        if let Some(status) = exited {
            *c = None;
            self.set_avail(Avail::Down);
            if !self.expect_exit.load(Ordering::SeqCst) {
                let msg = format!(
                    "replica {} exited by itself ({status}); last log lines: {:?}",
                    self.idx,
                    self.tail().iter().rev().take(10).rev().collect::<Vec<_>>()
                );
                self.crashes.lock().unwrap().push(msg);
                return true;
            }
        }
        false
    }

    pub fn tail(&self) -> Vec<String> {
        self.tail.lock().unwrap().clone()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A small tmpfs for one replica's store, so its store directory can really fill up.
/// Unmounted in `Drop`.
pub struct Tmpfs {
    pub path: PathBuf,
    pub mounted: bool,
}

impl Tmpfs {
    /// Mounts a tmpfs of `mib` at `path`; on failure the directory stays a plain one
    /// (`mounted = false`) and the caller says which ran.
    pub fn mount(path: PathBuf, mib: u64) -> (Tmpfs, String) {
        let _ = std::fs::create_dir_all(&path);
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(&path)
            .output();
        match out {
            Ok(o) if o.status.success() => (
                Tmpfs {
                    path,
                    mounted: true,
                },
                format!("tmpfs of {mib} MiB (mount -t tmpfs)"),
            ),
            other => {
                let why = match other {
                    Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_owned(),
                    Err(e) => e.to_string(),
                };
                (
                    Tmpfs {
                        path,
                        mounted: false,
                    },
                    format!(
                        "fallback: a plain directory (mount failed: {why}); the store-full \
                         fault then only fills what store.capacity allows"
                    ),
                )
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}
