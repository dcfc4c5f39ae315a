//! Load benchmarks for the herd-safe read path, against the real S3 server (Garage) on
//! loopback, each compared as a ratio within one run:
//!
//! 1. **memory** — 16 clients reading 16 different 128 MiB objects at ~1 MB/s, a 256 MiB memory
//!    store and a 256 MiB budget; Shoal runs as its own (release) process. Reports its peak RSS
//!    against the model's bound, and a fast client's throughput for another cold 128 MiB object
//!    during the herd vs. on the idle server.
//! 2. **priority** — time to first byte of a new client while 8 GETs' readahead (64 chunks of
//!    8 MiB, 200 ms origin latency each) is queued, vs. on the idle server. The 8 readers pause
//!    inside their first chunk, so everything queued is readahead.
//! 3. **direct** — time to first byte of `bytes=-8` of a cold 64 MiB chunk through Shoal vs. a
//!    signed ranged GET of the same bytes straight from the origin.
//! 4. **cluster** — 3 replicas (their own processes), 48 clients spread over them, one cold
//!    256 MiB object: origin range GETs per chunk (counted at a proxy in front of the origin),
//!    p50/p99 completion time, and each replica's peak RSS.
//! 5. **auth** — warm 4 KiB GETs per second, 32 connections, with `auth.mode = "sigv4"` vs
//!    `"none"`, alternating rounds. Both servers get the very same presigned URL (made once,
//!    so the client does no extra work; the open server ignores its signature), so the ratio
//!    is the cost of verifying every request and nothing else.
//! 6. **otlp** — warm 4 KiB GETs (16 connections, alternating rounds) with traces off, exported
//!    to a collector that answers, to a port where nothing listens, and to a collector that
//!    accepts and never answers: request rate and p99 latency as ratios to "off", and the
//!    resident memory of each server after every round (it must not grow round over round).
//!
//! `make bench` runs it (`cargo bench --bench herd`); the summary is printed at the end and
//! written to `target/bench-herd.json`.

#[path = "../tests/common/mod.rs"]
mod common;

use common::faulty::Faulty;
use common::*;
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

async fn drain(r: reqwest::Response) -> usize {
    let mut s = r.bytes_stream();
    let mut n = 0;
    while let Some(b) = s.next().await {
        n += b.expect("body").len();
    }
    n
}

async fn memory(g: &Garage, c: &aws_sdk_s3::Client) -> serde_json_lite::Obj {
    const OBJ: usize = 128 * MIB;
    const SLOW: usize = 16;
    let b = bucket(c, "bench-mem").await;
    for i in 0..SLOW + 2 {
        put(c, &b, &format!("o{i}"), patterned(OBJ, i as u64)).await;
    }
    let mut cfg = bench_config(g);
    cfg.store.capacity = shoal::config::ByteSize(256 * MIB as u64);
    cfg.fill.buffer_budget = shoal::config::ByteSize(256 * MIB as u64);
    let shoal = ShoalProcess::start(&common::fixture::toml(&cfg));
    let http = reqwest::Client::new();
    let fast = |key: String| {
        let (http, url) = (http.clone(), format!("{}/{b}/{key}", shoal.s3));
        async move {
            let t = Instant::now();
            let n = drain(http.get(url).send().await.unwrap()).await;
            assert_eq!(n, OBJ);
            OBJ as f64 / t.elapsed().as_secs_f64() / 1e6
        }
    };
    let alone = fast(format!("o{}", SLOW + 1)).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let slow: Vec<_> = (0..SLOW)
        .map(|i| {
            let (http, url, stop) = (http.clone(), format!("{}/{b}/o{i}", shoal.s3), stop.clone());
            tokio::spawn(async move {
                let r = http.get(url).send().await.unwrap();
                let t = Instant::now();
                let mut s = r.bytes_stream();
                let mut got = 0usize;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    match s.next().await {
                        Some(Ok(p)) => got += p.len(),
                        _ => break,
                    }
                    let due = Duration::from_secs_f64(got as f64 / 1e6);
                    if let Some(w) = due.checked_sub(t.elapsed()) {
                        tokio::time::sleep(w).await;
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = fast(format!("o{SLOW}")).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for t in slow {
        let _ = t.await;
    }
    let peak = shoal.peak_rss() as f64 / MIB as f64;
    serde_json_lite::obj(&[
        ("peak_rss_mib", peak),
        ("bound_mib", 640.0),
        ("fast_alone_mb_s", alone),
        ("fast_during_herd_mb_s", during),
        ("fast_ratio", during / alone),
    ])
}

async fn priority(g: &Garage, c: &aws_sdk_s3::Client) -> serde_json_lite::Obj {
    const N: usize = 8;
    const SAMPLES: usize = 5;
    let b = bucket(c, "bench-prio").await;
    for i in 0..N {
        put(c, &b, &format!("o{i}"), patterned(72 * MIB, i as u64)).await;
    }
    for s in 0..2 * SAMPLES {
        put(c, &b, &format!("new{s}"), patterned(MIB, 1000 + s as u64)).await;
    }
    let mut cfg = config(g);
    cfg.chunk.size = shoal::config::ByteSize(8 << 20);
    cfg.fill.origin_concurrency = 8;
    cfg.fill.queue_timeout = shoal::config::Dur(Duration::from_secs(10));
    let origin = Faulty::new(s3_origin(&cfg).await);
    for i in 0..N {
        origin.latency(&format!("o{i}"), Duration::from_millis(200));
    }
    let shoal = Shoal::start(&cfg, origin.clone()).await;
    let ttfb = |key: String| {
        let url = shoal.url(&format!("{b}/{key}"));
        let http = shoal.http.clone();
        async move {
            let t = Instant::now();
            let r = http.get(url).send().await.unwrap();
            let first = t.elapsed().as_secs_f64() * 1e3;
            drain(r).await;
            first
        }
    };
    let mut idle = Vec::new();
    for s in 0..SAMPLES {
        idle.push(ttfb(format!("new{s}")).await);
    }
    // 8 GETs whose readers pause after the first bytes: their readahead piles up.
    let held = futures_util::future::join_all((0..N).map(|i| {
        let url = shoal.url(&format!("{b}/o{i}"));
        let http = shoal.http.clone();
        async move { http.get(url).send().await.unwrap() }
    }))
    .await;
    let mut loaded = Vec::new();
    for s in SAMPLES..2 * SAMPLES {
        loaded.push(ttfb(format!("new{s}")).await);
    }
    let queued = (N * 8).saturating_sub(origin.issued.lock().unwrap().len().saturating_sub(N));

    for r in held {
        drain(r).await;
    }
    shoal.stop().await;
    let (i, l) = (median(idle), median(loaded));
    serde_json_lite::obj(&[
        ("ttfb_idle_ms", i),
        ("ttfb_with_readahead_queued_ms", l),
        ("readahead_still_queued_at_end", queued as f64),
        ("ratio", l / i),
    ])
}

async fn direct(g: &Garage, c: &aws_sdk_s3::Client) -> serde_json_lite::Obj {
    const SAMPLES: usize = 7;
    let b = bucket(c, "bench-direct").await;
    let size = 64 * MIB;
    put(c, &b, "t.parquet", patterned(size, 5)).await;
    put(c, &b, "warm-up", patterned(1024, 6)).await;
    let mut cfg = config(g);
    cfg.chunk.size = shoal::config::ByteSize(64 << 20);
    cfg.chunk.tiers.clear();
    let (mut via, mut straight, mut after_head) = (Vec::new(), Vec::new(), Vec::new());
    // Time to the first *body* byte in every case, as a reader sees it.
    async fn first_byte(c: &aws_sdk_s3::Client, b: &str) -> f64 {
        let t = Instant::now();
        let mut o = c
            .get_object()
            .bucket(b)
            .key("t.parquet")
            .range("bytes=-8")
            .send()
            .await
            .unwrap();
        let first = o.body.next().await.unwrap().unwrap();
        assert_eq!(first.len(), 8);
        t.elapsed().as_secs_f64() * 1e3
    }
    for _ in 0..SAMPLES {
        // A fresh Shoal each time: the chunk is cold. Its origin client is warmed first
        // (connection, first-request setup), as the test's own client is.
        let shoal = Shoal::start(&cfg, s3_origin(&cfg).await).await;
        drain(shoal.get(&format!("{b}/warm-up")).await).await;
        let t = Instant::now();
        let r = shoal.get_range(&format!("{b}/t.parquet"), "bytes=-8").await;
        via.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(drain(r).await, 8);
        shoal.running.fills_settled(Duration::from_secs(30)).await;
        shoal.stop().await;
        // The origin's own ranged GET, on a fresh connection…
        straight.push(first_byte(&client(&g.endpoint), &b).await);
        // …and after a HEAD on the same connection, which is what Shoal does on a cold miss.
        // Garage writes headers and a tiny body separately without TCP_NODELAY, so after a
        // request/response on a connection the body waits for a delayed ACK (~40 ms): any
        // client that checks metadata first pays it, Shoal included.
        let fresh = client(&g.endpoint);
        let _ = fresh
            .head_object()
            .bucket(&b)
            .key("t.parquet")
            .send()
            .await
            .unwrap();
        after_head.push(first_byte(&fresh, &b).await);
    }
    let (v, s, h) = (median(via), median(straight), median(after_head));
    serde_json_lite::obj(&[
        ("ttfb_shoal_cold_ms", v),
        ("ttfb_origin_get_ms", s),
        ("ttfb_origin_head_then_get_ms", h),
        ("ratio_vs_get", v / s),
        ("ratio_vs_head_then_get", v / h),
    ])
}

async fn cluster(g: &Garage, c: &aws_sdk_s3::Client) -> serde_json_lite::Obj {
    const SIZE: usize = 256 * MIB;
    const CLIENTS: usize = 48;
    let b = bucket(c, "bench-cluster").await;
    put(c, &b, "model.bin", patterned(SIZE, 9)).await;
    let proxy = common::proxy::Proxy::start(&g.endpoint).await;
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let replicas: Vec<ShoalProcess> = ports
        .iter()
        .map(|&p| {
            let mut cfg = bench_config(g);
            cfg.origin.endpoint = Some(proxy.endpoint.clone());
            cfg.cluster.listen = format!("127.0.0.1:{p}").parse().unwrap();
            cfg.cluster.advertise = Some(format!("127.0.0.1:{p}"));
            cfg.cluster.peers = ports.iter().map(|q| format!("127.0.0.1:{q}")).collect();
            cfg.cluster.secret = Some("bench-cluster-secret-0123456789".into());
            ShoalProcess::start(&common::fixture::toml(&cfg))
        })
        .collect();
    let http = reqwest::Client::new();
    let started = Instant::now();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let url = format!("{}/{b}/model.bin", replicas[i % 3].s3);
            let http = http.clone();
            tokio::spawn(async move {
                let n = drain(http.get(url).send().await.unwrap()).await;
                assert_eq!(n, SIZE);
                started.elapsed().as_secs_f64()
            })
        })
        .collect();
    let mut done = Vec::new();
    for t in tasks {
        done.push(t.await.unwrap());
    }
    done.sort_by(|a, b| a.total_cmp(b));
    let gets = proxy
        .seen()
        .iter()
        .filter(|s| s.method == "GET" && s.range.is_some() && s.path.contains("model.bin"))
        .count();
    let chunks = SIZE / (8 * MIB);
    let mut out = vec![
        ("origin_gets", gets as f64),
        ("chunks", chunks as f64),
        ("p50_s", done[done.len() / 2]),
        ("p99_s", done[(done.len() * 99 / 100).min(done.len() - 1)]),
    ];
    let names = [
        "peak_rss_mib_replica1",
        "peak_rss_mib_replica2",
        "peak_rss_mib_replica3",
    ];
    for (i, r) in replicas.iter().enumerate() {
        out.push((names[i], r.peak_rss() as f64 / MIB as f64));
    }
    serde_json_lite::obj(&out)
}

async fn auth(g: &Garage, c: &aws_sdk_s3::Client) -> serde_json_lite::Obj {
    const ROUNDS: usize = 4;
    const CONNS: usize = 32;
    const ROUND: Duration = Duration::from_secs(3);
    let b = bucket(c, "bench-auth").await;
    put(c, &b, "small", patterned(4096, 3)).await;
    let mut open = config(g);
    open.auth.mode = shoal::config::AuthMode::None;
    let mut signed = open.clone();
    signed.auth.mode = shoal::config::AuthMode::Sigv4;
    signed.auth.users = vec![shoal::config::UserConfig {
        access_key_id: "bench".into(),
        secret_access_key: Some("bench-secret-0123456789".into()),
        ..Default::default()
    }];
    let a = Shoal::start(&open, s3_origin(&open).await).await;
    let s = Shoal::start(&signed, s3_origin(&signed).await).await;
    let plain_base = a.base.clone();
    let signer = aws_sdk_s3::Client::from_conf(
        c.config()
            .to_builder()
            .endpoint_url(&s.base)
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                "bench",
                "bench-secret-0123456789",
                None,
                None,
                "bench",
            ))
            .build(),
    );
    let presigned = signer
        .get_object()
        .bucket(&b)
        .key("small")
        .presigned(
            aws_sdk_s3::presigning::PresigningConfig::expires_in(Duration::from_secs(3600))
                .unwrap(),
        )
        .await
        .unwrap()
        .uri()
        .to_owned();
    // The same request, byte for byte, to the open server.
    let plain_url = presigned.replacen(&s.base, &plain_base, 1);
    // Warm both (and check the signed URL works).
    for u in [&plain_url, &presigned] {
        let r = reqwest::get(u).await.unwrap();
        assert_eq!(r.status(), 200, "{u}");
        drain(r).await;
    }
    let rate = |url: String| async move {
        let http = reqwest::Client::new();
        let stop = Instant::now() + ROUND;
        let counts = futures_util::future::join_all((0..CONNS).map(|_| {
            let (http, url) = (http.clone(), url.clone());
            async move {
                let mut n = 0u64;
                while Instant::now() < stop {
                    let r = http.get(&url).send().await.unwrap();
                    assert_eq!(r.status(), 200);
                    drain(r).await;
                    n += 1;
                }
                n
            }
        }))
        .await;
        counts.iter().sum::<u64>() as f64 / ROUND.as_secs_f64()
    };
    let (mut none, mut sigv4) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        none.push(rate(plain_url.clone()).await);
        sigv4.push(rate(presigned.clone()).await);
    }
    a.stop().await;
    s.stop().await;
    let (n, v) = (median(none), median(sigv4));
    serde_json_lite::obj(&[
        ("req_per_s_auth_none", n),
        ("req_per_s_sigv4", v),
        ("ratio", v / n),
    ])
}

/// Resident memory (VmRSS) of a process now, in bytes.
fn rss(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

async fn otlp(g: &Garage, c: &aws_sdk_s3::Client) -> serde_json_lite::Obj {
    const ROUNDS: usize = 4;
    const CONNS: usize = 16;
    const ROUND: Duration = Duration::from_secs(3);
    let b = bucket(c, "bench-otlp").await;
    put(c, &b, "small", patterned(4096, 6)).await;
    // A collector that answers at once, and one that accepts and never answers.
    let sink = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sink_addr = sink.local_addr().unwrap();
    tokio::spawn(async move {
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(|_b: axum::body::Bytes| async { "" }),
        );
        axum::serve(sink, app).await
    });
    let stalled = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let modes = [
        ("off", None),
        ("collector", Some(format!("http://{sink_addr}"))),
        (
            "closed_port",
            Some(format!("http://127.0.0.1:{}", free_port())),
        ),
        (
            "stalled",
            Some(format!("http://{}", stalled.local_addr().unwrap())),
        ),
    ];
    let servers: Vec<ShoalProcess> = modes
        .iter()
        .map(|(_, ep)| {
            let mut cfg = bench_config(g);
            cfg.origin.id = shoal::config::OriginConfig::default().id;
            cfg.telemetry.otlp_endpoint = ep.clone();
            ShoalProcess::start(&common::fixture::toml(&cfg))
        })
        .collect();
    let http = reqwest::Client::new();
    for s in &servers {
        let r = http
            .get(format!("{}/{b}/small", s.s3))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        drain(r).await;
    }
    let round = |url: String| {
        let http = http.clone();
        async move {
            let stop = Instant::now() + ROUND;
            let lat = futures_util::future::join_all((0..CONNS).map(|_| {
                let (http, url) = (http.clone(), url.clone());
                async move {
                    let mut lat = Vec::new();
                    while Instant::now() < stop {
                        let t = Instant::now();
                        let r = http.get(&url).send().await.unwrap();
                        assert_eq!(r.status(), 200);
                        drain(r).await;
                        lat.push(t.elapsed().as_secs_f64());
                    }
                    lat
                }
            }))
            .await;
            let mut all: Vec<f64> = lat.into_iter().flatten().collect();
            all.sort_by(|a, b| a.total_cmp(b));
            let rate = all.len() as f64 / ROUND.as_secs_f64();
            (rate, all[all.len() * 99 / 100])
        }
    };
    let mut rates = vec![Vec::new(); modes.len()];
    let mut p99s = vec![Vec::new(); modes.len()];
    let mut mem = vec![Vec::new(); modes.len()];
    for _ in 0..ROUNDS {
        for (i, s) in servers.iter().enumerate() {
            let (r, p) = round(format!("{}/{b}/small", s.s3)).await;
            rates[i].push(r);
            p99s[i].push(p);
            mem[i].push(rss(s.child.id()) as f64);
        }
    }
    drop(stalled);
    let (base_rate, base_p99) = (median(rates[0].clone()), median(p99s[0].clone()));
    let mut out = vec![
        ("req_per_s_off".to_string(), base_rate),
        ("p99_ms_off".to_string(), base_p99 * 1e3),
    ];
    for (i, (name, _)) in modes.iter().enumerate() {
        if i > 0 {
            let (r, p) = (median(rates[i].clone()), median(p99s[i].clone()));
            out.push((format!("rate_ratio_{name}"), r / base_rate));
            out.push((format!("p99_ratio_{name}"), p / base_p99));
        }
        out.push((
            format!("rss_mib_first_round_{name}"),
            mem[i][0] / MIB as f64,
        ));
        out.push((
            format!("rss_mib_last_round_{name}"),
            mem[i][ROUNDS - 1] / MIB as f64,
        ));
    }
    out
}

/// Just enough JSON for a flat summary, to keep the bench free of extra dependencies.
mod serde_json_lite {
    pub type Obj = Vec<(String, f64)>;
    pub fn obj(kv: &[(&str, f64)]) -> Obj {
        kv.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }
    pub fn render(all: &[(&str, Obj)]) -> String {
        let sec: Vec<String> = all
            .iter()
            .map(|(name, o)| {
                let fields: Vec<String> = o
                    .iter()
                    .map(|(k, v)| format!("\"{k}\": {:.3}", v))
                    .collect();
                format!("  \"{name}\": {{ {} }}", fields.join(", "))
            })
            .collect();
        format!("{{\n{}\n}}\n", sec.join(",\n"))
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this binary without it,
    // and a load benchmark has no place in the test run.
    if !std::env::args().any(|a| a == "--bench") {
        println!("herd: load benchmark; run it with `cargo bench --bench herd` (make bench)");
        return;
    }
    // A name filter picks scenarios: `cargo bench --bench herd -- memory`.
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
    rt.block_on(async {
        let g = garage();
        let c = client(&g.endpoint);
        let mut all = Vec::new();
        if want("memory") {
            all.push(("memory", memory(g, &c).await));
        }
        if want("priority") {
            all.push(("priority", priority(g, &c).await));
        }
        if want("direct") {
            all.push(("direct", direct(g, &c).await));
        }
        if want("cluster") {
            all.push(("cluster", cluster(g, &c).await));
        }
        if want("auth") {
            all.push(("auth", auth(g, &c).await));
        }
        if want("otlp") {
            all.push(("otlp", otlp(g, &c).await));
        }

        let out = serde_json_lite::render(&all);
        print!("{out}");
        let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("../bench-herd.json");
        let _ = std::fs::write(path, out);
    });
}
