//! The herd-safe read path (issue: bounded memory, priorities, verified origin answers), against
//! the real S3 server. Each test is a failure mode that used to happen; none of them measures
//! time against a threshold — speed is in `make bench`.

mod common;

use common::faulty::Faulty;
use common::proxy::Proxy;
use common::*;
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;

/// Reads a response: (status, ETag, body received, whether the body was complete).
async fn fetch(r: reqwest::Response) -> (u16, String, Vec<u8>, bool) {
    let status = r.status().as_u16();
    let etag = r
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .trim_matches('"')
        .to_owned();
    let len: Option<usize> = r
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let mut body = Vec::new();
    let mut s = r.bytes_stream();
    let mut broken = false;
    while let Some(b) = s.next().await {
        match b {
            Ok(b) => body.extend_from_slice(&b),
            Err(_) => {
                broken = true;
                break;
            }
        }
    }
    let complete = !broken && len.is_none_or(|n| n == body.len());
    (status, etag, body, complete)
}

async fn etag_of(c: &aws_sdk_s3::Client, b: &str, k: &str) -> String {
    c.head_object()
        .bucket(b)
        .key(k)
        .send()
        .await
        .unwrap()
        .e_tag()
        .unwrap()
        .trim_matches('"')
        .to_owned()
}

/// Regression: an origin (here a proxy in front of it) that ignores `If-Match`, and an
/// overwrite between two chunk fills, made Shoal answer 200 with version A's ETag and a body of
/// A's first chunk followed by B's bytes — and commit B's bytes under A's chunk keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_origin_that_ignores_if_match_never_mixes_versions() {
    let g = garage();
    let c = client(&g.endpoint);
    let b = bucket(&c, "ifmatch").await;
    let (va, vb) = (data(3 * MIB, 1), data(3 * MIB, 2));
    put(&c, &b, "obj", va.clone()).await;
    let proxy = Proxy::start(&g.endpoint).await;
    let mut cfg = config(g);
    cfg.origin.endpoint = Some(proxy.endpoint.clone());
    let shoal = Shoal::start(&cfg, s3_origin(&cfg).await).await;
    // Version A's metadata and first chunk are cached.
    let (st, etag_a, body, _) =
        fetch(shoal.get_range(&format!("{b}/obj"), "bytes=0-9").await).await;
    assert_eq!((st, &body[..]), (206, &va[..10]));
    assert_eq!(etag_a, etag_of(&c, &b, "obj").await);
    // The proxy starts dropping If-Match, and the object is replaced.
    proxy.strip_if_match(true);
    put(&c, &b, "obj", vb.clone()).await;
    let etag_b = etag_of(&c, &b, "obj").await;
    assert_ne!(etag_a, etag_b);
    let mut saw_b = false;
    for i in 0..3 {
        let (st, etag, body, complete) = fetch(shoal.get(&format!("{b}/obj")).await).await;
        assert_eq!(st, 200, "GET {i}");
        let want = if etag == etag_a {
            &va
        } else {
            assert_eq!(etag, etag_b, "GET {i}: unknown ETag");
            &vb
        };
        // Never bytes of one version under the other's ETag: what arrived is a prefix of the
        // version the ETag names, and a body that is not that whole version is cut short.
        assert!(
            body[..] == want[..body.len()],
            "GET {i}: bytes of another version under ETag {etag}"
        );
        if complete {
            assert_eq!(body.len(), want.len(), "GET {i}");
            saw_b |= etag == etag_b;
        }
    }
    assert!(saw_b, "version B was never served");
    // The proxy really did drop If-Match: Shoal asked with it, the origin never saw it.
    assert!(proxy
        .seen()
        .iter()
        .any(|s| s.method == "GET" && s.if_match.is_some()));
    // Nothing of version B was kept under version A's chunks: a range of A through a fresh
    // version-A request is impossible now, so check the store holds only verified chunks by
    // reading B whole once more from the cache.
    let (st, etag, body, complete) = fetch(shoal.get(&format!("{b}/obj")).await).await;
    assert_eq!((st, etag.as_str(), complete), (200, etag_b.as_str(), true));
    assert!(body == vb);
    shoal.assert_budget_returns().await;
    shoal.stop().await;
}

/// Regression: with the default settings a body that stalled was never resumed: the SDK's
/// own stall guard fired after ~5 s, when the 5 s retry budget was already spent, so every
/// reader of the chunk got a cut response.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_origin_body_is_resumed_under_default_settings() {
    let g = garage();
    let c = client(&g.endpoint);
    let b = bucket(&c, "stall").await;
    let want = data(2 * MIB, 3);
    put(&c, &b, "obj", want.clone()).await;
    let proxy = Proxy::start(&g.endpoint).await;
    let mut cfg = config(g);
    cfg.origin.endpoint = Some(proxy.endpoint.clone());
    // The defaults, as a new user runs Shoal.
    let d = shoal::config::Config::default();
    cfg.fill.retry = d.fill.retry.clone();
    cfg.origin.timeout = d.origin.timeout;
    let shoal = Shoal::start(&cfg, s3_origin(&cfg).await).await;
    proxy.stall_next(&format!("/{b}/obj"), 300_000);
    let (st, _, body, complete) = fetch(shoal.get(&format!("{b}/obj")).await).await;
    assert_eq!(st, 200);
    assert!(complete, "cut after {} bytes", body.len());
    assert!(body == want, "bytes differ");
    let ranges: Vec<String> = proxy
        .seen()
        .iter()
        .filter_map(|s| s.range.clone())
        .collect();
    assert!(
        ranges.contains(&"bytes=300000-1048575".to_string()),
        "resumed at the exact offset: {ranges:?}"
    );
    shoal.assert_budget_returns().await;
    shoal.stop().await;
}

/// Regression: after an in-place overwrite of an object whose first chunks were cached, every
/// GET was cut at the first uncached chunk until `metadata.ttl` ran out (5 minutes).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_overwrite_in_place_fails_at_most_one_get() {
    let g = garage();
    let c = client(&g.endpoint);
    let b = bucket(&c, "overwrite").await;
    let (v1, v2) = (data(8 * MIB, 4), data(8 * MIB, 5));
    put(&c, &b, "obj", v1.clone()).await;
    let cfg = config(g);
    let origin = Faulty::new(s3_origin(&cfg).await);
    let shoal = Shoal::start(&cfg, origin.clone()).await;
    // Chunks 0–3 of version 1 are cached.
    let (st, _, body, _) = fetch(
        shoal
            .get_range(&format!("{b}/obj"), &format!("bytes=0-{}", 4 * MIB - 1))
            .await,
    )
    .await;
    assert_eq!((st, body.len()), (206, 4 * MIB));
    assert!(shoal.running.fills_settled(Duration::from_secs(10)).await);
    put(&c, &b, "obj", v2.clone()).await;
    let etag2 = etag_of(&c, &b, "obj").await;
    let mut failed = 0;
    let mut last = None;
    for _ in 0..3 {
        let (st, etag, body, complete) = fetch(shoal.get(&format!("{b}/obj")).await).await;
        assert_eq!(st, 200);
        if complete {
            let want = if etag == etag2 { &v2 } else { &v1 };
            assert!(body == *want, "exact bytes of the version the ETag names");
        } else {
            failed += 1;
            assert!(
                body[..] == v1[..body.len()],
                "a cut GET carries only version 1"
            );
        }
        last = Some((etag, complete));
    }
    assert!(failed <= 1, "{failed} GETs failed after the overwrite");
    assert_eq!(last, Some((etag2, true)), "the new version is served");
    assert_eq!(
        origin.heads(),
        2,
        "metadata re-read once, long before metadata.ttl"
    );
    shoal.assert_budget_returns().await;
    shoal.stop().await;
}

/// A client that sends a GET and then reads nothing until told to, on a socket with a tiny
/// receive buffer, so that Shoal cannot push it far past its first chunk.
struct HeldGet {
    sock: tokio::net::TcpStream,
    head: Vec<u8>,
}

impl HeldGet {
    async fn send(addr: std::net::SocketAddr, path: String) -> HeldGet {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.set_recv_buffer_size(4096).unwrap();
        let mut sock = s.connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        sock.write_all(req.as_bytes()).await.unwrap();
        // The status line and headers: the first chunk's first bytes are in.
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            sock.read_exact(&mut b).await.unwrap();
            head.push(b[0]);
        }
        HeldGet { sock, head }
    }

    /// Reads the rest: (status line, body, complete).
    async fn finish(mut self) -> (String, Vec<u8>, bool) {
        use tokio::io::AsyncReadExt;
        let head = String::from_utf8_lossy(&self.head).to_string();
        let len: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().to_owned())
            })
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = Vec::new();
        let _ = self.sock.read_to_end(&mut body).await;
        let status = head.lines().next().unwrap_or("").to_owned();
        let complete = body.len() == len;
        (status, body, complete)
    }
}

/// Regression: readahead and first chunks shared one FIFO queue for origin slots, so a new
/// client's first byte waited behind every queued readahead chunk, and readahead that timed
/// out in that queue later cut running responses short with `SlowDown`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readahead_never_delays_a_first_chunk_or_cuts_a_response() {
    let g = garage();
    let c = client(&g.endpoint);
    let b = bucket(&c, "prio").await;
    const N: usize = 64;
    const SIZE: usize = 8 * MIB;
    for i in 0..N {
        put(&c, &b, &format!("o{i}"), patterned(SIZE, i as u64)).await;
    }
    put(&c, &b, "newcomer", patterned(MIB, 999)).await;
    let mut cfg = config(g);
    cfg.chunk.size = shoal::config::ByteSize(2 << 20);
    cfg.fill.origin_concurrency = 8;
    // Long enough for the 64 first chunks (8 slots × 200 ms), short enough that readahead
    // queued behind ~190 others (≈8 s) would time out if it waited with the same deadline.
    cfg.fill.queue_timeout = shoal::config::Dur(Duration::from_secs(3));

    let origin = Faulty::new(s3_origin(&cfg).await);
    for i in 0..N {
        origin.latency(&format!("o{i}"), Duration::from_millis(200));
    }
    let shoal = Arc::new(Shoal::start(&cfg, origin.clone()).await);
    // 64 clients ask at once and then stop reading: their first chunks are sent (as far as
    // the sockets take them), every later chunk is readahead — 3 each, 192 in all — waiting
    // for the 8 origin slots, 200 ms per request.
    let addr = shoal.running.s3_addr;
    let held =
        futures_util::future::join_all((0..N).map(|i| HeldGet::send(addr, format!("/{b}/o{i}"))))
            .await;
    for h in &held {
        assert!(
            h.head.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&h.head)
        );
    }

    let issued = origin.issued.lock().unwrap().len();
    assert!(
        issued < N + 3 * N - 100,
        "at least 100 readahead chunks must still be queued (issued {issued})"
    );
    // A new client arrives.
    let r = shoal.get(&format!("{b}/newcomer")).await;
    assert_eq!(r.status(), 200);
    let log = origin.issued.lock().unwrap().clone();
    let pos = log[issued..]
        .iter()
        .position(|(k, _, _)| k == "newcomer")
        .expect("the newcomer's origin GET");
    // Clients that read on (their sockets took a whole first chunk) made their next chunk
    // urgent, and urgent requests keep their arrival order. But no readahead went first,
    // except what already held one of the 6 slots readahead may use and was on its way.
    let speculative = log[issued..issued + pos]
        .iter()
        .filter(|(_, _, urgent)| !urgent)
        .count();
    assert!(
        speculative <= 6,
        "{speculative} queued readahead requests went before the newcomer's first chunk"
    );
    let (_, _, body, complete) = fetch(r).await;
    assert!(complete && body == patterned(MIB, 999));
    // Now everyone reads on: no response is cut by readahead that waited past the timeout.
    let tasks: Vec<_> = held
        .into_iter()
        .enumerate()
        .map(|(i, h)| {
            tokio::spawn(async move {
                let (_, body, complete) = h.finish().await;
                assert!(complete, "o{i} was cut after {} bytes", body.len());
                assert!(body == patterned(SIZE, i as u64), "o{i}: bytes differ");
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    shoal.assert_budget_returns().await;
    Arc::try_unwrap(shoal).ok().unwrap().stop().await;
}

/// Readahead whose reader went away is cancelled (queued or running); the chunk the reader
/// was actually sent is finished and committed, as a detached fill should be.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readahead_nobody_wants_is_cancelled() {
    let g = garage();
    let c = client(&g.endpoint);
    let b = bucket(&c, "cancel").await;
    put(&c, &b, "big", patterned(32 * MIB, 7)).await;
    let cfg = config(g);
    let origin = Faulty::new(s3_origin(&cfg).await);
    origin.slow("big", Some(Duration::from_millis(30)));
    let shoal = Shoal::start(&cfg, origin.clone()).await;
    let r = shoal.get(&format!("{b}/big")).await;
    assert_eq!(r.status(), 200);
    let mut s = r.bytes_stream();
    let _ = s.next().await;
    tokio::time::sleep(Duration::from_millis(100)).await; // readahead has started
    drop(s);
    shoal.assert_budget_returns().await;
    let gets = origin.gets_for("big");
    assert!(
        gets.len() <= 9,
        "no readahead after the reader left: {gets:?}"
    );
    assert_eq!(
        origin.delivered("big", 0),
        MIB as u64,
        "the first chunk was finished"
    );
    let mut cut_short = 0;
    for (off, _) in gets.iter().filter(|(o, _)| *o > 0) {
        if origin.delivered("big", *off) < MIB as u64 {
            cut_short += 1;
        }
    }
    assert!(cut_short > 0, "running readahead was cancelled too");
    assert_eq!(
        shoal.running.store.stats().chunks,
        1,
        "only the first chunk is kept"
    );
    shoal.stop().await;
}

/// A small range deep inside a cold large chunk (a Parquet footer read) is served straight
/// from the origin instead of waiting for the fill to reach it; the chunk is still filled.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cold_small_range_deep_in_a_chunk_comes_straight_from_the_origin() {
    let g = garage();
    let c = client(&g.endpoint);
    let b = bucket(&c, "direct").await;
    let want = patterned(8 * MIB, 8);
    put(&c, &b, "table.parquet", want.clone()).await;
    let mut cfg = config(g);
    cfg.chunk.size = shoal::config::ByteSize(8 << 20);
    let origin = Faulty::new(s3_origin(&cfg).await);
    let shoal = Shoal::start(&cfg, origin.clone()).await;
    let (st, _, body, _) = fetch(
        shoal
            .get_range(&format!("{b}/table.parquet"), "bytes=-8")
            .await,
    )
    .await;
    assert_eq!((st, &body[..]), (206, &want[want.len() - 8..]));
    assert!(shoal.running.fills_settled(Duration::from_secs(10)).await);
    let gets = origin.gets_for("table.parquet");
    assert!(
        gets.contains(&((8 * MIB - 8) as u64, 8)),
        "the footer was read directly: {gets:?}"
    );
    assert!(
        gets.contains(&(0, (8 * MIB) as u64)),
        "and the chunk filled"
    );
    // The next footer read is a hit.
    let (_, _, body, _) = fetch(
        shoal
            .get_range(&format!("{b}/table.parquet"), "bytes=-8")
            .await,
    )
    .await;
    assert_eq!(&body[..], &want[want.len() - 8..]);
    assert_eq!(origin.gets_for("table.parquet").len(), 2);
    shoal.assert_budget_returns().await;
    shoal.stop().await;
}

/// Regression: store writes ran on the fill's path with no deadline, so a hung disk hung every
/// reader of the chunk (and held its origin slot).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hung_store_writer_never_holds_readers_back() {
    let g = garage();
    let c = client(&g.endpoint);
    let b = bucket(&c, "hung").await;
    let want = data(3 * MIB, 9);
    put(&c, &b, "obj", want.clone()).await;
    let mut cfg = config(g);
    cfg.store.write_timeout = shoal::config::Dur(Duration::from_millis(500));
    let origin = Faulty::new(s3_origin(&cfg).await);
    let store = Arc::new(HangingStore {
        inner: Arc::new(shoal::store::MemoryStore::new(1 << 30)),
    });
    let shoal = Shoal::start_with(&cfg, origin.clone(), store).await;
    let got = tokio::time::timeout(Duration::from_secs(60), async {
        fetch(shoal.get(&format!("{b}/obj")).await).await
    })
    .await
    .expect("a hung store must not hang the reader");
    assert!(got.3 && got.2 == want);
    shoal.assert_budget_returns().await;
    assert_eq!(
        shoal.running.store.stats().chunks,
        0,
        "nothing was committed"
    );
    shoal.stop().await;
}

/// Connections past `server.max_connections` are answered 503 SlowDown, not dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_over_the_cap_are_answered_not_dropped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let g = garage();
    let c = client(&g.endpoint);
    let b = bucket(&c, "cap").await;
    put(&c, &b, "k", data(10, 1)).await;
    let mut cfg = config(g);
    cfg.server.max_connections = 2;
    let shoal = Shoal::start(&cfg, s3_origin(&cfg).await).await;
    let addr = shoal.running.s3_addr;
    let request = format!("GET /{b}/k HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut buf = [0u8; 12];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200");
        open.push(s); // kept alive (keep-alive)
    }
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    // Read until the server closes (it must), or give up after a while: never hang.
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => raw.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "the over-cap connection was neither answered nor closed: {}",
                String::from_utf8_lossy(&raw)
            ),
        }
    }
    let answer = String::from_utf8_lossy(&raw).to_string();

    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("<Code>SlowDown</Code>"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("connection: close"));
    // Counted for the operator: two open, one refused.
    let m = shoal.running.metrics.render(Default::default());
    assert!(m.contains("\nshoal_connections 2\n"), "{m}");
    assert!(m.contains("\nshoal_connections_refused_total 1\n"), "{m}");
    drop(open.pop());
    tokio::time::sleep(Duration::from_millis(50)).await;
    let r = shoal.get(&format!("{b}/k")).await;
    assert_eq!(r.status(), 200, "a freed slot is usable again");
    drop(open);
    shoal.stop().await;
}

/// The memory model under a herd of slow clients: 16 clients at ~1 MB/s on 16 different
/// 128 MiB objects, a 256 MiB memory store and a 256 MiB budget. Shoal runs as its own process
/// so its peak RSS is its own: it must stay within store + budget + 128 MiB. A fast client
/// started meanwhile gets its whole object, exact, while the slow ones are still near the start.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_clients_cannot_grow_memory_or_slow_down_a_fast_one() {
    const OBJ: usize = 128 * MIB;
    const SLOW: usize = 16;
    const RATE: f64 = 1_000_000.0; // bytes per second per slow client
                                   // Every wait below is bounded: a stall fails the test with what the server was doing,
                                   // instead of hanging the run.
    const STALL: Duration = Duration::from_secs(60);
    let t0 = Instant::now();
    let g = garage();
    let c = client(&g.endpoint);
    let b = bucket(&c, "rss").await;
    for i in 0..=SLOW {
        put(&c, &b, &format!("o{i}"), patterned(OBJ, i as u64)).await;
    }
    eprintln!("{:?}: {} objects put", t0.elapsed(), SLOW + 1);
    // Shoal's defaults but for the store and the budget (8 MiB chunks, default retries).
    let mut cfg = process_config(g);
    cfg.origin.id = "rss".into();
    cfg.chunk = Default::default();
    cfg.fill.retry = Default::default();
    cfg.store.capacity = shoal::config::ByteSize(256 * MIB as u64);
    cfg.fill.buffer_budget = shoal::config::ByteSize(256 * MIB as u64);
    let shoal = ShoalProcess::start(&common::fixture::toml(&cfg));
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let diag = Diagnose::of(&shoal);
    let http = reqwest::Client::new();
    let stop = Arc::new(AtomicBool::new(false));
    let progress: Arc<Vec<AtomicUsize>> =
        Arc::new((0..SLOW).map(|_| AtomicUsize::new(0)).collect());
    let slow: Vec<_> = (0..SLOW)
        .map(|i| {
            let (http, url, stop) = (http.clone(), format!("{}/{b}/o{i}", shoal.s3), stop.clone());
            let progress = progress.clone();
            let diag = diag.clone();
            tokio::spawn(async move {
                let Ok(r) = tokio::time::timeout(STALL, http.get(url).send()).await else {
                    diag.dump().await;
                    panic!("slow client {i}: no answer in {STALL:?}");
                };
                let r = r.unwrap();
                assert_eq!(r.status(), 200);
                let started = Instant::now();
                let want = patterned(OBJ, i as u64);
                let mut got = 0usize;
                let mut s = r.bytes_stream();
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let Ok(next) = tokio::time::timeout(STALL, s.next()).await else {
                        diag.dump().await;
                        panic!("slow client {i} stalled after {got} bytes");
                    };
                    let Some(Ok(piece)) = next else {
                        panic!("slow client {i} was cut after {got} bytes");
                    };
                    assert!(
                        piece[..] == want[got..got + piece.len()],
                        "slow {i}: wrong bytes"
                    );
                    got += piece.len();
                    progress[i].store(got, Ordering::SeqCst);
                    let due = Duration::from_secs_f64(got as f64 / RATE);
                    if let Some(wait) = due.checked_sub(started.elapsed()) {
                        tokio::time::sleep(wait).await;
                    }
                }
                got
            })
        })
        .collect();
    // Let the slow clients' readahead and fills pile up as far as they can.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let fast = async {
        let r = http
            .get(format!("{}/{b}/o{SLOW}", shoal.s3))
            .send()
            .await
            .unwrap();
        fetch(r).await
    };
    let Ok((st, _, body, complete)) = tokio::time::timeout(4 * STALL, fast).await else {
        diag.dump().await;
        panic!("the fast client did not finish in {:?}", 4 * STALL);
    };
    eprintln!("{:?}: the fast client read its object", t0.elapsed());
    // Its 128 MiB arrived before any slow client (≈1 MB/s) got through 16 MiB: it was not
    // held to their pace.
    let slowest_lead = progress.iter().map(|p| p.load(Ordering::SeqCst)).max();
    assert_eq!(st, 200);
    assert!(
        complete && body == patterned(OBJ, SLOW as u64),
        "fast client: bytes differ"
    );
    drop(body);
    assert!(
        slowest_lead < Some(16 * MIB),
        "the fast client finished only after a slow one read {slowest_lead:?} bytes"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    for t in slow {
        let got = tokio::time::timeout(2 * STALL, t)
            .await
            .expect("a slow client did not stop")
            .unwrap();
        assert!(got > 0);
    }

    let peak = shoal.peak_rss();
    let bound = (256 + 256 + 128) as u64 * MIB as u64;
    eprintln!("peak RSS {} MiB (bound {} MiB)", peak >> 20, bound >> 20);
    assert!(peak > 0, "could not read the server's peak RSS");
    assert!(
        peak <= bound,
        "peak RSS {} MiB over the {} MiB bound",
        peak >> 20,
        bound >> 20
    );
}

/// An h2c client is told how many streams it may open, and a GET over HTTP/2 works.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http2_clients_are_told_the_stream_cap() {
    let g = garage();
    let c = client(&g.endpoint);
    let b = bucket(&c, "h2").await;
    put(&c, &b, "k", data(1000, 2)).await;
    let mut cfg = config(g);
    cfg.server.http2_max_streams = 3;
    let shoal = Shoal::start(&cfg, s3_origin(&cfg).await).await;
    let tcp = tokio::net::TcpStream::connect(shoal.running.s3_addr)
        .await
        .unwrap();
    let (h2, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(conn);
    let mut h2 = h2.ready().await.unwrap();
    let req = http::Request::get(format!("http://x/{b}/k"))
        .body(())
        .unwrap();
    let (resp, _) = h2.send_request(req, true).unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        h2.current_max_send_streams(),
        3,
        "SETTINGS_MAX_CONCURRENT_STREAMS"
    );
    let mut body = resp.into_body();
    let mut got = Vec::new();
    while let Some(d) = body.data().await {
        got.extend_from_slice(&d.unwrap());
    }
    assert!(got == data(1000, 2));
    drop(h2);
    conn.abort();
    shoal.stop().await;
}

/// When the byte budget is spent, a new fill waits and then answers 503 SlowDown: it never
/// grows memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_spent_budget_answers_slowdown() {
    let g = garage();
    let c = client(&g.endpoint);
    let b = bucket(&c, "budget").await;
    put(&c, &b, "a", data(MIB, 1)).await;
    put(&c, &b, "b", data(MIB, 2)).await;
    let mut cfg = config(g);
    cfg.chunk.tiers.clear();
    cfg.fill.buffer_budget = shoal::config::ByteSize(MIB as u64);
    cfg.fill.queue_timeout = shoal::config::Dur(Duration::from_millis(300));
    let origin = Faulty::new(s3_origin(&cfg).await);
    origin.latency("a", Duration::from_secs(2));
    let shoal = Arc::new(Shoal::start(&cfg, origin.clone()).await);
    // "a" holds the whole budget while its origin takes 2 s to answer.
    let (s2, b2) = (shoal.clone(), b.clone());
    let first = tokio::spawn(async move { fetch(s2.get(&format!("{b2}/a")).await).await });
    for _ in 0..200 {
        if shoal.running.budget.available() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(shoal.running.budget.available(), 0);
    let (st, _, body, _) = fetch(shoal.get(&format!("{b}/b")).await).await;
    assert_eq!(st, 503);
    assert!(String::from_utf8_lossy(&body).contains("<Code>SlowDown</Code>"));
    assert!(
        origin.gets_for("b").is_empty(),
        "no origin request without memory"
    );
    let (st, _, body, complete) = first.await.unwrap();
    assert!(st == 200 && complete && body == data(MIB, 1));
    // With the budget back, "b" is served.
    let (st, _, body, _) = fetch(shoal.get(&format!("{b}/b")).await).await;
    assert!(st == 200 && body == data(MIB, 2));
    shoal.assert_budget_returns().await;
    Arc::try_unwrap(shoal).ok().unwrap().stop().await;
}

/// Regression: a readahead chunk that failed before the reader got to it ended the response
/// when the reader got there. Now it is asked for again, as the reader's current need.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_readahead_is_asked_again_not_fatal() {
    let g = garage();
    let c = client(&g.endpoint);
    let b = bucket(&c, "refail").await;
    let want = data(3 * MIB, 11);
    put(&c, &b, "obj", want.clone()).await;
    let cfg = config(g);
    let origin = Faulty::new(s3_origin(&cfg).await);
    // Chunk 1 fails as many times as the retry budget allows: its readahead fill fails.
    origin.fail_first("obj", MIB as u64, cfg.fill.retry.attempts);
    origin.latency("obj", Duration::from_millis(50));
    let shoal = Shoal::start(&cfg, origin.clone()).await;
    let (st, _, body, complete) = fetch(shoal.get(&format!("{b}/obj")).await).await;
    assert_eq!(st, 200);
    assert!(complete, "cut after {} bytes", body.len());
    assert!(body == want);
    let chunk1 = origin
        .gets_for("obj")
        .iter()
        .filter(|(o, _)| *o == MIB as u64)
        .count();
    assert_eq!(
        chunk1,
        cfg.fill.retry.attempts as usize + 1,
        "asked again once"
    );
    shoal.assert_budget_returns().await;
    shoal.stop().await;
}

/// An object deleted while it is read: the 404 on a later chunk invalidates the cached
/// metadata, so the next request gets 404 at once, not after `metadata.ttl`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_404_on_a_later_chunk_forgets_the_object() {
    let g = garage();
    let c = client(&g.endpoint);
    let b = bucket(&c, "gone").await;
    put(&c, &b, "obj", data(4 * MIB, 12)).await;
    let cfg = config(g);
    let shoal = Shoal::start(&cfg, s3_origin(&cfg).await).await;
    let (st, _, _, _) = fetch(shoal.get_range(&format!("{b}/obj"), "bytes=0-9").await).await;
    assert_eq!(st, 206);
    c.delete_object()
        .bucket(&b)
        .key("obj")
        .send()
        .await
        .unwrap();
    let (st, _, body, complete) = fetch(shoal.get(&format!("{b}/obj")).await).await;
    assert_eq!(st, 200, "headers went out from cached metadata and chunk 0");
    assert!(!complete, "cut: the rest is gone ({} bytes)", body.len());
    let (st, _, body, _) = fetch(shoal.get(&format!("{b}/obj")).await).await;
    assert_eq!(st, 404);
    assert!(String::from_utf8_lossy(&body).contains("NoSuchKey"));
    shoal.assert_budget_returns().await;
    shoal.stop().await;
}

/// Issue 21, "no wait without a bound": the shape of the herd test that once hung CI — 16 slow
/// readers of one large object, a memory store so small that readahead chunks are evicted
/// before their readers reach them, and a byte budget that is spent. Every response must end
/// within a bound: complete and exact, or honestly short (never complete-looking and wrong),
/// and the budget must come back. Before the fix a reader that caught up with a readahead
/// request parked in a queue waited with no deadline at all
/// (`object::tests::a_chunk_that_never_opens_ends_the_response` pins that cause). It also
/// found a budget leak: a chunk the memory store refused (admission) kept its pieces, still
/// charged to the budget, alive in moka's deferred garbage until later cache traffic happened
/// to free them (`store::memory::tests::a_refused_chunk_lets_go_of_its_pieces_at_once`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_slow_readers_with_evicted_readahead_and_a_spent_budget_all_end() {
    let g = garage();
    let c = client(&g.endpoint);
    let b = bucket(&c, "hang").await;
    let want = Arc::new(data(24 * MIB, 21));
    put(&c, &b, "big", (*want).clone()).await;
    let mut cfg = config(g);
    cfg.chunk.tiers.clear();
    cfg.store.capacity = shoal::config::ByteSize(3 * MIB as u64);
    cfg.fill.buffer_budget = shoal::config::ByteSize(4 * MIB as u64);
    cfg.fill.queue_timeout = shoal::config::Dur(Duration::from_millis(500));
    cfg.fill.retry.max_total = shoal::config::Dur(Duration::from_secs(3));
    let origin = Faulty::new(s3_origin(&cfg).await);
    let shoal = Arc::new(Shoal::start(&cfg, origin.clone()).await);
    let mut readers = tokio::task::JoinSet::new();
    for i in 0..16u64 {
        let (shoal, b, want) = (shoal.clone(), b.clone(), want.clone());
        readers.spawn(async move {
            let r = shoal.get(&format!("{b}/big")).await;
            let status = r.status().as_u16();
            let mut s = r.bytes_stream();
            let mut got = 0usize;
            let mut broken = false;
            while let Some(piece) = s.next().await {
                match piece {
                    Ok(p) => {
                        assert!(
                            p[..] == want[got..got + p.len()],
                            "reader {i}: wrong bytes at {got}"
                        );
                        got += p.len();
                        // ~2 MB/s, each reader on its own schedule.
                        tokio::time::sleep(Duration::from_millis(5 + i)).await;
                    }
                    Err(_) => {
                        broken = true;
                        break;
                    }
                }
            }
            (status, got, broken)
        });
    }
    let mut outcomes = Vec::new();
    let all = async {
        while let Some(r) = readers.join_next().await {
            outcomes.push(r.unwrap());
        }
    };
    if tokio::time::timeout(Duration::from_secs(240), all)
        .await
        .is_err()
    {
        panic!("a reader made no end within 240 s: {outcomes:?}");
    }
    for (status, got, broken) in &outcomes {
        match status {
            200 => assert!(
                *got == want.len() || *broken,
                "a body ended short without an error: {got} bytes"
            ),
            503 => {}
            s => panic!("unexpected status {s}"),
        }
    }
    assert!(
        outcomes
            .iter()
            .any(|(s, got, _)| *s == 200 && *got == want.len()),
        "some readers got the whole object: {outcomes:?}"
    );
    shoal.assert_budget_returns().await;
    Arc::try_unwrap(shoal).ok().unwrap().stop().await;
}
