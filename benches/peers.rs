//! Shoal against the caches a user would pick instead, side by side on loopback, in one run:
//! Shoal (memory store, disk store), nginx with `proxy_cache` + `slice 8m`, cachey (when it is
//! installed: `cargo install cachey --locked`, binary `server`), and the bare origin (Garage).
//! Every comparison alternates the servers round by round and reports medians, min–max and
//! ratios, because the machine is shared and absolute numbers alone say little.
//!
//! Scenarios:
//! 1. **warm large GET**: one 256 MiB object, warm in every cache; wrk with 8 and 64
//!    connections; bytes per second.
//! 2. **warm small GET**: one 4 KiB object, wrk with 64 and 256 connections; requests per
//!    second, p50 and p99.
//! 3. **cold large GET**: one client, a 256 MiB object no cache has seen (a fresh object each
//!    round): time to the headers, to the first body byte and to the last, against a signed
//!    download straight from the origin.
//! 4. **cold footer read**: the last 64 KiB of a cold 256 MiB object (a Parquet footer): the
//!    same times, against the same ranged GET straight from the origin.
//! 5. **LIST**: a 1,000-key prefix, 32 connections, `list.ttl` off and on.
//!
//! nginx reads Garage's website endpoint (it cannot sign requests); cachey and Shoal read the
//! S3 API with the same credentials. Everything listens on loopback except cachey, which has no
//! bind option (it listens on all interfaces, on a port the bench picks).
//!
//! `make bench` runs it (`cargo bench --bench peers`): it writes `BENCHMARKS.md` at the top of
//! the repository and `target/bench-peers.json`. `cargo bench --bench peers -- cold` runs the
//! scenarios whose names match (warm_large, warm_small, cold, list) and only prints.

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use futures_util::StreamExt as _;
use std::fmt::Write as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;
const LARGE: usize = 256 * MIB;
const SMALL: usize = 4096;
const FOOTER: usize = 64 * 1024;
/// Rounds per comparison (each round runs every contender once).
const ROUNDS: usize = 3;
/// Length of one wrk run.
const WRK_SECS: u64 = 5;

/// One contender's address and the headers its requests need.
#[derive(Clone)]
struct Target {
    name: &'static str,
    /// URL of an object, given its key.
    url: fn(&Target, &str) -> String,
    base: String,
    bucket: String,
    headers: Vec<String>,
}

fn path_style(t: &Target, key: &str) -> String {
    format!("{}/{}/{key}", t.base, t.bucket)
}

fn host_style(t: &Target, key: &str) -> String {
    format!("{}/{key}", t.base)
}

fn cachey_style(t: &Target, key: &str) -> String {
    format!("{}/fetch/{}/{key}", t.base, t.bucket)
}

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        // SIGTERM first: nginx's master stops its workers on it, while a SIGKILLed master
        // leaves them running.
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What wrk measured.
#[derive(Clone, Copy, Debug, Default)]
struct Load {
    req_s: f64,
    bytes_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn parse_unit(v: &str) -> f64 {
    let v = v.trim();
    let split = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (n, u) = v.split_at(split);
    let n: f64 = n.parse().unwrap_or(0.0);
    match u {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        "KB" => n * 1024.0,
        "MB" => n * 1024.0 * 1024.0,
        "GB" => n * 1024.0 * 1024.0 * 1024.0,
        "B" | "" => n,
        _ => n,
    }
}

fn wrk(url: &str, headers: &[String], conns: usize) -> Load {
    let mut cmd = Command::new("wrk");
    // A 256 MiB body takes longer than wrk's default 2 s timeout under 64 connections.
    cmd.args([
        "-t2",
        &format!("-c{conns}"),
        &format!("-d{WRK_SECS}s"),
        "--timeout",
        "120s",
        "--latency",
    ]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    let out = cmd.arg(url).output().expect("run wrk");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut load = Load::default();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        match (f.next(), f.next()) {
            (Some("Requests/sec:"), Some(v)) => load.req_s = v.parse().unwrap_or(0.0),
            (Some("Transfer/sec:"), Some(v)) => load.bytes_s = parse_unit(v),
            (Some("50%"), Some(v)) => load.p50_ms = parse_unit(v),
            (Some("99%"), Some(v)) => load.p99_ms = parse_unit(v),
            _ => {}
        }
    }
    let errors = text
        .lines()
        .any(|l| l.contains("Non-2xx") || l.contains("Socket errors"));
    assert!(
        // With 64 connections on a 256 MiB body no request may finish within the run;
        // the bytes moved are the measure then.
        (load.req_s > 0.0 || load.bytes_s > 0.0) && !errors,
        "wrk {url} failed or saw errors:\n{text}"
    );
    load
}

/// Time to first byte and total of one GET, and the bytes received (curl).
fn timed_get(url: &str, headers: &[String]) -> (f64, f64, u64) {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{time_starttransfer} %{time_total} %{size_download}",
    ]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    let out = cmd.arg(url).output().expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let f: Vec<&str> = text.split_whitespace().collect();
    assert!(
        f.len() == 4 && (f[0] == "200" || f[0] == "206"),
        "GET {url}: {text}"
    );
    (
        f[1].parse::<f64>().unwrap() * 1000.0,
        f[2].parse::<f64>().unwrap() * 1000.0,
        f[3].parse().unwrap(),
    )
}

/// One GET on a fresh connection, timed in process: response headers, first body byte and
/// last byte in ms, and the bytes received. curl's own "time to first byte" is the headers;
/// a cache that answers headers before it has data would look fast there and not to a reader,
/// so the cold rows report both.
async fn timed_stream(url: &str, headers: &[String]) -> (f64, f64, f64, u64) {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut req = client.get(url);
    for h in headers {
        let (name, value) = h.split_once(':').unwrap();
        req = req.header(name.trim(), value.trim());
    }
    let t0 = Instant::now();
    let mut resp = req.send().await.expect("GET");
    let head = t0.elapsed();
    assert!(resp.status().is_success(), "GET {url}: {}", resp.status());
    let (mut first, mut n) = (None, 0u64);
    while let Some(piece) = resp.chunk().await.expect("body") {
        if first.is_none() && !piece.is_empty() {
            first = Some(t0.elapsed());
        }
        n += piece.len() as u64;
    }
    let total = t0.elapsed();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    (ms(head), ms(first.unwrap_or(total)), ms(total), n)
}

/// median, min, max
fn stats(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    (s[s.len() / 2], s[0], s[s.len() - 1])
}

/// Results, kept for both the Markdown and the JSON.
#[derive(Default)]
struct Report {
    md: String,
    json: Vec<String>,
}

impl Report {
    fn section(&mut self, title: &str, intro: &str) {
        let _ = write!(self.md, "\n## {title}\n\n{intro}\n\n");
    }

    fn table(&mut self, head: &[&str]) {
        let _ = writeln!(self.md, "| {} |", head.join(" | "));
        let _ = writeln!(self.md, "|{}|", vec!["---"; head.len()].join("|"));
    }

    fn row(&mut self, cells: &[String]) {
        let _ = writeln!(self.md, "| {} |", cells.join(" | "));
    }

    fn value(&mut self, scenario: &str, contender: &str, metric: &str, v: &[f64]) {
        let (m, lo, hi) = stats(v);
        self.json.push(format!(
            "{{\"scenario\": \"{scenario}\", \"contender\": \"{contender}\", \"metric\": \"{metric}\", \"median\": {m:.4}, \"min\": {lo:.4}, \"max\": {hi:.4}, \"runs\": {}}}",
            v.len()
        ));
    }
}

fn fmt_range(v: &[f64], scale: f64, digits: usize) -> String {
    let (m, lo, hi) = stats(v);
    format!(
        "{:.d$} ({:.d$}–{:.d$})",
        m / scale,
        lo / scale,
        hi / scale,
        d = digits
    )
}

fn shoal_toml(g: &Garage, store: &str, dir: &std::path::Path, list_ttl: &str) -> String {
    let mut cfg = bench_config(g);
    match store {
        "disk" => {
            cfg.store.kind = shoal::config::StoreKind::Disk;
            cfg.store.path = Some(dir.to_owned());
            cfg.store.capacity = shoal::config::ByteSize(2 << 30);
        }
        _ => cfg.store.capacity = shoal::config::ByteSize(1 << 30),
    }
    cfg.list.ttl = shoal::config::Dur(humantime::parse_duration(list_ttl).unwrap());
    common::fixture::toml(&cfg)
}

fn start_nginx(g: &Garage, bucket: &str, dir: &std::path::Path) -> (Proc, String) {
    let port = free_port();
    let web_port = g.web_endpoint.rsplit(':').next().unwrap().to_string();
    let conf = dir.join("nginx.conf");
    std::fs::create_dir_all(dir.join("cache")).unwrap();
    std::fs::write(
        &conf,
        format!(
            r#"
user root;
worker_processes 2;
daemon off;
error_log {d}/error.log warn;
pid {d}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    proxy_cache_path {d}/cache levels=1:2 keys_zone=s3:64m max_size=4g inactive=1h use_temp_path=off;
    upstream garage {{ server 127.0.0.1:{web_port}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            slice 8m;
            proxy_cache s3;
            proxy_cache_key $uri$slice_range;
            proxy_set_header Range $slice_range;
            proxy_cache_valid 200 206 1h;
            proxy_cache_lock on;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host {bucket}.web.garage;
            proxy_pass http://garage;
        }}
    }}
}}
"#,
            d = dir.display(),
        ),
    )
    .unwrap();
    let child = Command::new("nginx")
        .args(["-c"])
        .arg(&conf)
        .args(["-p"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nginx");
    let base = format!("http://127.0.0.1:{port}");
    wait_port(port);
    (Proc(child), base)
}

fn start_cachey(g: &Garage) -> Option<(Proc, String)> {
    let bin = std::env::var("CACHEY_BIN").unwrap_or_else(|_| {
        format!(
            "{}/.cargo/bin/server",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    if !std::path::Path::new(&bin).exists() {
        println!("peers: cachey not installed ({bin}); its rows are left out");
        return None;
    }
    let port = free_port();
    let child = Command::new(&bin)
        .args(["--memory", "1GiB", "--port", &port.to_string()])
        .env("AWS_ENDPOINT_URL", &g.endpoint)
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_REGION", REGION)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start cachey");
    wait_port(port);
    Some((Proc(child), format!("http://127.0.0.1:{port}")))
}

fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn version(cmd: &str, arg: &str) -> String {
    Command::new(cmd)
        .arg(arg)
        .output()
        .map(|o| {
            let s = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&s)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_else(|_| "not found".into())
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "peers: comparison benchmark; run it with `cargo bench --bench peers` (make bench)"
        );
        return;
    }
    // A name filter runs some scenarios only (`cargo bench --bench peers -- cold`: warm_large,
    // warm_small, cold, list); a filtered run prints its tables and leaves BENCHMARKS.md alone.
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let want = |n: &str| filter.is_empty() || filter.iter().any(|f| n.contains(f.as_str()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let g = garage();
    let c = client(&g.endpoint);
    let tmp = tempfile::tempdir().unwrap();
    let b = g.public_bucket("peers");
    let large = patterned(LARGE, 1);
    rt.block_on(async {
        put(&c, &b, "large", large.clone()).await;
        put(&c, &b, "small", patterned(SMALL, 2)).await;
        for i in 0..ROUNDS {
            put(&c, &b, &format!("cold{i}"), patterned(LARGE, 10 + i as u64)).await;
            put(
                &c,
                &b,
                &format!("footer{i}"),
                patterned(LARGE, 20 + i as u64),
            )
            .await;
        }
    });
    // Contenders.
    let mem = ShoalProcess::start(&shoal_toml(g, "memory", tmp.path(), "0s"));
    let disk_dir = tmp.path().join("disk");
    let disk = ShoalProcess::start(&shoal_toml(g, "disk", &disk_dir, "0s"));
    let (_nginx, nginx_base) = start_nginx(g, &b, &tmp.path().join("nginx"));
    let cachey = start_cachey(g);
    let shoal_t = |name: &'static str, base: &str| Target {
        name,
        url: path_style,
        base: base.to_string(),
        bucket: b.clone(),
        headers: vec![],
    };
    let mut warm: Vec<Target> = vec![
        shoal_t("shoal (memory)", &mem.s3),
        shoal_t("shoal (disk)", &disk.s3),
        Target {
            name: "nginx slice",
            url: host_style,
            base: nginx_base.clone(),
            bucket: b.clone(),
            headers: vec![],
        },
    ];
    let cachey_t = |range: String| {
        cachey.as_ref().map(|(_, base)| Target {
            name: "cachey",
            url: cachey_style,
            base: base.clone(),
            bucket: b.clone(),
            headers: vec![range, "C0-Config: fps=true".into()],
        })
    };
    let mut report = Report::default();
    let mut md_head = String::new();
    let _ = writeln!(md_head, "# Benchmarks\n");
    let _ = writeln!(
        md_head,
        "Written by `make bench` (`benches/peers.rs`) on {}. Loopback only; the load generator \
         shares the machine with the servers. Medians of {ROUNDS} alternating rounds, \
         min–max in brackets; the ratio column is to the best peer (nginx or cachey) in the \
         same run. Other load numbers (memory under a herd, priorities, the cluster herd, \
         auth and tracing cost) are in `target/bench-herd.json` from `benches/herd.rs`.\n",
        Command::new("date")
            .arg("-u")
            .arg("+%Y-%m-%d")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    );
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let _ = writeln!(
        md_head,
        "- machine: {cpus} cores, {}",
        version("uname", "-sr")
    );
    let _ = writeln!(md_head, "- shoal {}", env!("CARGO_PKG_VERSION"));
    let _ = writeln!(md_head, "- {}", version("nginx", "-v"));
    let _ = writeln!(
        md_head,
        "- cachey: {}",
        if cachey.is_some() {
            "installed (0.10.x, `server`)"
        } else {
            "not installed"
        }
    );
    let _ = writeln!(
        md_head,
        "- origin: Garage ({})",
        version(
            &std::env::var("GARAGE_BIN").unwrap_or("garage".into()),
            "--version"
        )
    );
    let _ = writeln!(md_head, "- load: {}", version("wrk", "-v"));

    // ---- 1. warm large ----
    if want("warm_large") {
        if let Some(t) = cachey_t(format!("Range: bytes=0-{}", LARGE - 1)) {
            warm.push(t);
        }
        for t in &warm {
            let (_, _, n) = timed_get(&(t.url)(t, "large"), &t.headers);
            assert_eq!(n as usize, LARGE, "{} warm-up", t.name);
            // A second read so that every slice is cached whatever the cache's admission.
            timed_get(&(t.url)(t, "large"), &t.headers);
        }
        report.section(
            "Warm large GET (256 MiB)",
            "wrk, whole-object GETs of one cached 256 MiB object (cachey: the whole range). MiB/s.",
        );
        report.table(&["connections", "contender", "MiB/s", "× best peer"]);
        for conns in [8usize, 64] {
            let mut runs: Vec<Vec<f64>> = vec![Vec::new(); warm.len()];
            for _ in 0..ROUNDS {
                for (i, t) in warm.iter().enumerate() {
                    runs[i].push(wrk(&(t.url)(t, "large"), &t.headers, conns).bytes_s);
                }
            }
            let best_peer = warm
                .iter()
                .zip(&runs)
                .filter(|(t, _)| !t.name.starts_with("shoal"))
                .map(|(_, r)| stats(r).0)
                .fold(0.0, f64::max);
            for (t, r) in warm.iter().zip(&runs) {
                report.value(&format!("warm_large_c{conns}"), t.name, "bytes_per_s", r);
                report.row(&[
                    conns.to_string(),
                    t.name.to_string(),
                    fmt_range(r, MIB as f64, 0),
                    format!("{:.2}", stats(r).0 / best_peer),
                ]);
            }
        }
    }

    // ---- 2. warm small ----
    if want("warm_small") {
        let mut small_targets = warm.clone();
        small_targets.truncate(3);
        // The other Shoal rows log warnings only, as nginx runs with `access_log off`; this one
        // writes its JSON access line for every request, as a deployment does.
        let logged = ShoalProcess::start_with_env(
            &shoal_toml(g, "memory", tmp.path(), "0s"),
            &[("RUST_LOG", "info")],
        );
        small_targets.push(shoal_t("shoal (memory, access log)", &logged.s3));
        if let Some(t) = cachey_t(format!("Range: bytes=0-{}", SMALL - 1)) {
            small_targets.push(t);
        }
        for t in &small_targets {
            timed_get(&(t.url)(t, "small"), &t.headers);
            timed_get(&(t.url)(t, "small"), &t.headers);
        }
        report.section(
            "Warm small GET (4 KiB)",
            "wrk, GETs of one cached 4 KiB object. Requests per second, p50 and p99 in ms. \
             Shoal logs warnings only (nginx: `access_log off`), except the access-log row: one \
             JSON line per request, at `info`.",
        );
        report.table(&[
            "connections",
            "contender",
            "req/s",
            "p50 ms",
            "p99 ms",
            "× best peer (req/s)",
        ]);
        for conns in [64usize, 256] {
            let mut runs: Vec<Vec<Load>> = vec![Vec::new(); small_targets.len()];
            for _ in 0..ROUNDS {
                for (i, t) in small_targets.iter().enumerate() {
                    runs[i].push(wrk(&(t.url)(t, "small"), &t.headers, conns));
                }
            }
            let col = |r: &[Load], f: fn(&Load) -> f64| r.iter().map(f).collect::<Vec<f64>>();
            let best_peer = small_targets
                .iter()
                .zip(&runs)
                .filter(|(t, _)| !t.name.starts_with("shoal"))
                .map(|(_, r)| stats(&col(r, |l| l.req_s)).0)
                .fold(0.0, f64::max);
            for (t, r) in small_targets.iter().zip(&runs) {
                let rate = col(r, |l| l.req_s);
                let (p50, p99) = (col(r, |l| l.p50_ms), col(r, |l| l.p99_ms));
                let s = format!("warm_small_c{conns}");
                report.value(&s, t.name, "req_per_s", &rate);
                report.value(&s, t.name, "p50_ms", &p50);
                report.value(&s, t.name, "p99_ms", &p99);
                report.row(&[
                    conns.to_string(),
                    t.name.to_string(),
                    fmt_range(&rate, 1.0, 0),
                    fmt_range(&p50, 1.0, 2),
                    fmt_range(&p99, 1.0, 2),
                    format!("{:.2}", stats(&rate).0 / best_peer),
                ]);
            }
        }
    }

    // ---- 3. cold large, 4. cold footer ----
    if want("cold") {
        let origin_url = |key: &str, range: Option<String>| -> String {
            rt.block_on(async {
                let mut req = c.get_object().bucket(&b).key(key);
                if let Some(r) = range {
                    req = req.range(r);
                }
                req.presigned(
                    aws_sdk_s3::presigning::PresigningConfig::expires_in(Duration::from_secs(3600))
                        .unwrap(),
                )
                .await
                .unwrap()
                .uri()
                .to_owned()
            })
        };
        report.section(
            "Cold large GET (256 MiB) and cold footer read (last 64 KiB of 256 MiB)",
            "One client (a fresh connection each GET), an object no cache has seen (a fresh one \
         each round). Milliseconds to the response headers, to the first body byte and to the \
         last; the ratios are to a signed GET straight from the origin (Garage on loopback: \
         the bar a cache cannot beat on a miss).",
        );
        report.table(&[
            "read",
            "contender",
            "headers ms",
            "first byte ms",
            "total ms",
            "first byte × origin",
            "total × origin",
        ]);
        type ColdRow = (&'static str, Vec<f64>, Vec<f64>, Vec<f64>);
        for (scenario, key_prefix, footer) in [
            ("cold_large", "cold", false),
            ("cold_footer", "footer", true),
        ] {
            let mut rows: Vec<ColdRow> = vec![
                ("origin (direct)", vec![], vec![], vec![]),
                ("shoal (memory)", vec![], vec![], vec![]),
                ("nginx slice", vec![], vec![], vec![]),
            ];
            if cachey.is_some() {
                rows.push(("cachey", vec![], vec![], vec![]));
            }
            let suffix = format!("bytes=-{FOOTER}");
            let exact = format!("bytes={}-{}", LARGE - FOOTER, LARGE - 1);
            for round in 0..ROUNDS {
                let key = format!("{key_prefix}{round}");
                for row in rows.iter_mut() {
                    let range_hdr = |r: &str| vec![format!("Range: {r}")];
                    let timed = |url: &str, h: &[String]| rt.block_on(timed_stream(url, h));
                    let (head, first, total, n) = match row.0 {
                        // The presigned URL signs the Range header: send the same one.
                        "origin (direct)" => timed(
                            &origin_url(&key, footer.then(|| suffix.clone())),
                            &if footer { range_hdr(&suffix) } else { vec![] },
                        ),
                        "shoal (memory)" => timed(
                            &format!("{}/{b}/{key}", mem.s3),
                            &if footer { range_hdr(&suffix) } else { vec![] },
                        ),
                        "nginx slice" => timed(
                            &format!("{nginx_base}/{key}"),
                            &if footer { range_hdr(&suffix) } else { vec![] },
                        ),
                        _ => {
                            let base = &cachey.as_ref().unwrap().1;
                            let r = if footer {
                                exact.clone()
                            } else {
                                format!("bytes=0-{}", LARGE - 1)
                            };
                            timed(
                                &format!("{base}/fetch/{b}/{key}"),
                                &[format!("Range: {r}"), "C0-Config: fps=true".into()],
                            )
                        }
                    };
                    assert_eq!(
                        n as usize,
                        if footer { FOOTER } else { LARGE },
                        "{} {key}",
                        row.0
                    );
                    row.1.push(head);
                    row.2.push(first);
                    row.3.push(total);
                }
            }
            let (o_first, o_total) = (stats(&rows[0].2).0, stats(&rows[0].3).0);
            for (name, head, first, total) in &rows {
                report.value(scenario, name, "headers_ms", head);
                report.value(scenario, name, "first_byte_ms", first);
                report.value(scenario, name, "total_ms", total);
                report.row(&[
                    if footer {
                        "footer 64 KiB"
                    } else {
                        "whole 256 MiB"
                    }
                    .to_string(),
                    name.to_string(),
                    fmt_range(head, 1.0, 1),
                    fmt_range(first, 1.0, 1),
                    fmt_range(total, 1.0, 1),
                    format!("{:.2}", stats(first).0 / o_first),
                    format!("{:.2}", stats(total).0 / o_total),
                ]);
            }
        }
    }

    // ---- 5. LIST ----
    if want("list") {
        let lb = rt.block_on(bucket(&c, "peers-list"));
        rt.block_on(async {
            let puts = (0..1000).map(|i| {
                let (c, lb) = (c.clone(), lb.clone());
                async move { put(&c, &lb, &format!("data/{i:04}"), vec![b'x'; 16]).await }
            });
            futures_util::stream::iter(puts)
                .buffer_unordered(32)
                .collect::<Vec<()>>()
                .await;
        });
        drop(mem);
        let off = ShoalProcess::start(&shoal_toml(g, "memory", tmp.path(), "0s"));
        let on = ShoalProcess::start(&shoal_toml(g, "memory", tmp.path(), "60s"));
        report.section(
        "LIST (1,000 keys under one prefix)",
        "wrk, 32 connections, `ListObjectsV2` of the prefix (one 1,000-key page), `list.ttl` off \
         (every LIST asks the origin) and on (60 s).",
    );
        report.table(&["list.ttl", "req/s", "p50 ms", "p99 ms"]);
        let list_url = |base: &str| format!("{base}/{lb}?list-type=2&prefix=data/");
        let (mut r_off, mut r_on) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            r_off.push(wrk(&list_url(&off.s3), &[], 32));
            r_on.push(wrk(&list_url(&on.s3), &[], 32));
        }
        for (name, r) in [("off", &r_off), ("60s", &r_on)] {
            let rate: Vec<f64> = r.iter().map(|l| l.req_s).collect();
            let p50: Vec<f64> = r.iter().map(|l| l.p50_ms).collect();
            let p99: Vec<f64> = r.iter().map(|l| l.p99_ms).collect();
            report.value("list", name, "req_per_s", &rate);
            report.row(&[
                name.to_string(),
                fmt_range(&rate, 1.0, 0),
                fmt_range(&p50, 1.0, 2),
                fmt_range(&p99, 1.0, 2),
            ]);
        }
    }

    let md = format!("{md_head}{}", report.md);
    print!("{md}");
    if !filter.is_empty() {
        return;
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let _ = std::fs::write(root.join("BENCHMARKS.md"), &md);
    let json = format!("[\n  {}\n]\n", report.json.join(",\n  "));
    let _ = std::fs::write(
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("../bench-peers.json"),
        json,
    );
    drop(disk);
}
