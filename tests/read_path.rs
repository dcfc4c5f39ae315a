//! The single-replica read path against a real S3 server (Garage) over HTTP.

mod common;

use common::faulty::Faulty;
use common::*;
use shoal::config::HedgeAfter;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

const MIB: usize = 1 << 20;

/// Objects of 4 MiB and more are cut into 4 MiB chunks (smaller ones into the test config's
/// 1 MiB): a chunk longer than the first GET's, and room deep inside a chunk.
fn four_mib_chunks_from_four_mib(cfg: &mut shoal::config::Config) {
    cfg.chunk.tiers = vec![shoal::config::TierConfig {
        min_object_size: shoal::config::ByteSize(4 * MIB as u64),
        chunk_size: shoal::config::ByteSize(4 * MIB as u64),
    }];
}

async fn body(r: reqwest::Response) -> Vec<u8> {
    r.bytes().await.expect("body").to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn full_gets_are_byte_exact() {
    let g = garage();
    let c = client(&g.endpoint);
    let b = bucket(&c, "full").await;
    let objects = [
        ("empty", 0usize),
        ("one-kib", 1024),
        ("one-and-a-half-chunks", MIB + MIB / 2),
        ("sixty-four-chunks", 64 * MIB),
    ];
    for (i, (k, n)) in objects.iter().enumerate() {
        put(&c, &b, k, data(*n, i as u64 + 1)).await;
    }
    let cfg = config(g);
    let origin = Faulty::new(s3_origin(&cfg).await);
    let shoal = Shoal::start(&cfg, origin.clone()).await;
    for (i, (k, n)) in objects.iter().enumerate() {
        let want = data(*n, i as u64 + 1);
        for pass in ["cold", "warm"] {
            let r = shoal.get(&format!("{b}/{k}")).await;
            assert_eq!(r.status(), 200, "{k} {pass}");
            assert_eq!(r.headers()["content-length"], n.to_string().as_str());
            assert!(r.headers()["etag"].to_str().unwrap().starts_with('"'));
            assert_eq!(r.headers()["accept-ranges"], "bytes");
            assert!(r.headers().contains_key("last-modified"));
            assert!(r.headers().contains_key("x-amz-request-id"));
            assert_eq!(r.headers()["server"], "Shoal");
            let got = body(r).await;
            assert_eq!(got.len(), want.len(), "{k} {pass}");
            assert!(got == want, "{k} {pass}: bytes differ");
        }
        // The warm pass is served from the store: one origin GET per chunk in all.
        let chunks = n.div_ceil(MIB);
        assert_eq!(origin.gets_for(k).len(), chunks, "{k}");
    }
    shoal.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ranged_gets_match_the_origin_bytes() {
    let g = garage();
    let c = client(&g.endpoint);
    let b = bucket(&c, "range").await;
    let n = 3 * MIB + 12345;
    let want = data(n, 42);
    put(&c, &b, "obj", want.clone()).await;
    let cfg = config(g);
    let shoal = Shoal::start(&cfg, s3_origin(&cfg).await).await;
    let m = MIB;
    let cases: Vec<(String, usize, usize)> = vec![
        ("bytes=10-99".to_string(), 10, 99), // inside the first chunk
        (format!("bytes={}-{}", m + 5, m + 4000), m + 5, m + 4000), // inside a later chunk
        (format!("bytes={}-{}", m - 10, m + 9), m - 10, m + 9), // across one boundary
        (format!("bytes=100-{}", 3 * m + 5), 100, 3 * m + 5), // across three boundaries
        (format!("bytes={}-", n - 100), n - 100, n - 1), // the tail
        ("bytes=-777".to_string(), n - 777, n - 1), // a suffix
        (format!("bytes={}-{}", n - 5, n + 1000), n - 5, n - 1), // end clamped
        (format!("bytes={}-{}", m, 2 * m - 1), m, 2 * m - 1), // exactly one chunk
    ];
    for pass in 0..2 {
        for (h, s, e) in &cases {
            let r = shoal.get_range(&format!("{b}/obj"), h).await;
            assert_eq!(r.status(), 206, "{h} pass {pass}");
            assert_eq!(
                r.headers()["content-range"],
                format!("bytes {s}-{e}/{n}").as_str(),
                "{h}"
            );
            assert_eq!(
                r.headers()["content-length"],
                (e - s + 1).to_string().as_str()
            );
            let got = body(r).await;
            assert!(got == want[*s..=*e], "{h} pass {pass}: bytes differ");
        }
    }
    let r = shoal
        .get_range(&format!("{b}/obj"), &format!("bytes={n}-"))
        .await;
    assert_eq!(r.status(), 416);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes */{n}").as_str()
    );
    assert!(String::from_utf8(body(r).await)
        .unwrap()
        .contains("<Code>InvalidRange</Code>"));
    shoal.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn warm_get_survives_deletion_at_the_origin() {
    let g = garage();
    let c = client(&g.endpoint);
    let b = bucket(&c, "warm").await;
    let want = data(2 * MIB + 7, 9);
    put(&c, &b, "doomed", want.clone()).await;
    let cfg = config(g);
    let shoal = Shoal::start(&cfg, s3_origin(&cfg).await).await;
    assert!(body(shoal.get(&format!("{b}/doomed")).await).await == want);
    c.delete_object()
        .bucket(&b)
        .key("doomed")
        .send()
        .await
        .unwrap();
    assert!(c
        .head_object()
        .bucket(&b)
        .key("doomed")
        .send()
        .await
        .is_err());
    let r = shoal.get(&format!("{b}/doomed")).await;
    assert_eq!(r.status(), 200);
    assert!(body(r).await == want);
    shoal.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_cold_gets_make_one_origin_get_per_chunk() {
    let g = garage();
    let c = client(&g.endpoint);
    let b = bucket(&c, "herd").await;
    let want = Arc::new(data(64 * MIB, 77));
    put(&c, &b, "big", want.to_vec()).await;
    let cfg = config(g);
    let origin = Faulty::new(s3_origin(&cfg).await);
    origin.one_trip.store(true, Ordering::SeqCst);
    let shoal = Arc::new(Shoal::start(&cfg, origin.clone()).await);
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let (s, b, want) = (shoal.clone(), b.clone(), want.clone());
            tokio::spawn(async move {
                let r = s.get(&format!("{b}/big")).await;
                assert_eq!(r.status(), 200);
                let got = r.bytes().await.unwrap();
                assert!(got[..] == want[..], "bytes differ");
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let mut gets = origin.gets_for("big");
    gets.sort();
    let expected: Vec<(u64, u64)> = (0..64).map(|i| ((i * MIB) as u64, MIB as u64)).collect();
    assert_eq!(gets, expected, "exactly one origin range GET per chunk");
    assert_eq!(
        origin.heads(),
        0,
        "the first chunk's GET told the metadata: no HEAD for 32 clients"
    );
    Arc::try_unwrap(shoal).ok().unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_failed_origin_attempts_are_invisible() {
    let g = garage();
    let c = client(&g.endpoint);
    let b = bucket(&c, "flaky").await;
    let want = data(3 * MIB, 5);
    put(&c, &b, "flaky", want.clone()).await;
    let cfg = config(g);
    let origin = Faulty::new(s3_origin(&cfg).await);
    // The first chunk (before headers) and a later one (after) each fail twice.
    origin.fail_first("flaky", 0, 2);
    origin.fail_first("flaky", 2 * MIB as u64, 2);
    let shoal = Shoal::start(&cfg, origin.clone()).await;
    let r = shoal.get(&format!("{b}/flaky")).await;
    assert_eq!(r.status(), 200);
    assert!(body(r).await == want);
    assert_eq!(origin.gets_for("flaky").len(), 3 + 4);
    shoal.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_cut_mid_chunk_is_resumed_from_the_offset() {
    let g = garage();
    let c = client(&g.endpoint);
    let b = bucket(&c, "cut").await;
    let want = data(2 * MIB, 6);
    put(&c, &b, "cut", want.clone()).await;
    let cfg = config(g);
    let origin = Faulty::new(s3_origin(&cfg).await);
    origin.cut_after("cut", 300_001);
    let shoal = Shoal::start(&cfg, origin.clone()).await;
    let r = shoal.get(&format!("{b}/cut")).await;
    assert_eq!(r.status(), 200);
    assert!(body(r).await == want);
    let gets = origin.gets_for("cut");
    assert!(
        gets.contains(&(300_001, MIB as u64 - 300_001)),
        "resumed at the exact offset: {gets:?}"
    );
    // The resumed chunk was committed whole: a warm GET needs no origin request.
    let before = origin.gets_for("cut").len();
    assert!(body(shoal.get(&format!("{b}/cut")).await).await == want);
    assert_eq!(origin.gets_for("cut").len(), before);
    shoal.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_queue_timeout_is_503_slowdown() {
    let g = garage();
    let c = client(&g.endpoint);
    let b = bucket(&c, "queue").await;
    put(&c, &b, "slow", data(MIB, 1)).await;
    put(&c, &b, "other", data(1000, 2)).await;
    let mut cfg = config(g);
    cfg.fill.origin_concurrency = 1;
    cfg.fill.queue_timeout = shoal::config::Dur(Duration::from_millis(200));
    let origin = Faulty::new(s3_origin(&cfg).await);
    origin.slow("slow", Some(Duration::from_millis(300)));
    let shoal = Arc::new(Shoal::start(&cfg, origin.clone()).await);
    let s2 = shoal.clone();
    let b2 = b.clone();
    let slow = tokio::spawn(async move { s2.get(&format!("{b2}/slow")).await.status() });
    // Let the slow fill take the only origin slot.
    for _ in 0..100 {
        if !origin.gets_for("slow").is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let r = shoal.get(&format!("{b}/other")).await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["content-type"], "application/xml");
    let x = String::from_utf8(body(r).await).unwrap();
    assert!(x.contains("<Code>SlowDown</Code>"), "{x}");
    slow.abort();
    let _ = slow.await; // the task owns a handle to the server; let it go first
    Arc::try_unwrap(shoal).ok().unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_missing_key_is_404_and_negatively_cached() {
    let g = garage();
    let c = client(&g.endpoint);
    let b = bucket(&c, "missing").await;
    let cfg = config(g);
    let origin = Faulty::new(s3_origin(&cfg).await);
    let shoal = Shoal::start(&cfg, origin.clone()).await;
    let r = shoal.get(&format!("{b}/nope/not-here")).await;
    assert_eq!(r.status(), 404);
    let rid = r.headers()["x-amz-request-id"].to_str().unwrap().to_owned();
    let x = String::from_utf8(body(r).await).unwrap();
    assert!(x.contains("<Code>NoSuchKey</Code>"), "{x}");
    assert!(x.contains(&format!("<RequestId>{rid}</RequestId>")), "{x}");
    assert!(x.contains("<Key>nope/not-here</Key>"), "{x}");
    assert_eq!(origin.heads(), 1);
    let r = shoal.get(&format!("{b}/nope/not-here")).await;
    assert_eq!(r.status(), 404);
    assert_eq!(origin.heads(), 1, "the second GET made no origin call");
    // HEAD gets the status without a body.
    let r = shoal
        .http
        .head(shoal.url(&format!("{b}/nope/not-here")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(body(r).await.is_empty());
    shoal.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_missing_etag_is_502_origin_missing_etag() {
    let g = garage();
    let c = client(&g.endpoint);
    let b = bucket(&c, "noetag").await;
    put(&c, &b, "anon", data(10, 1)).await;
    let cfg = config(g);
    let origin = Faulty::new(s3_origin(&cfg).await);
    origin.strip_etag("anon");
    let shoal = Shoal::start(&cfg, origin.clone()).await;
    for _ in 0..2 {
        let r = shoal.get(&format!("{b}/anon")).await;
        assert_eq!(r.status(), 502);
        let x = String::from_utf8(body(r).await).unwrap();
        assert!(x.contains("<Code>OriginMissingETag</Code>"), "{x}");
    }
    assert_eq!(origin.heads(), 1, "negatively cached");
    assert!(origin.gets_for("anon").is_empty());
    shoal.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn list_v2_matches_the_origin_page_by_page() {
    let g = garage();
    let c = client(&g.endpoint);
    let b = bucket(&c, "list").await;
    let keys = [
        "a.txt",
        "dir/1",
        "dir/2",
        "dir/sub/3",
        "dir/sub/4",
        "dir2/x",
        "e",
        "f/g/h",
        "z z",
        "plus+key",
    ];
    for k in keys {
        put(&c, &b, k, data(3, 1)).await;
    }
    let cfg = config(g);
    let shoal = Shoal::start(&cfg, s3_origin(&cfg).await).await;
    let via = client(&shoal.base);
    for (prefix, delim, max) in [
        (None, None, 3),
        (None, Some("/"), 2),
        (Some("dir/"), Some("/"), 1),
        (Some("dir"), None, 1000),
        (Some("nothing"), None, 5),
    ] {
        let (mut t1, mut t2) = (None::<String>, None::<String>);
        let mut pages = 0;
        loop {
            let req = |cl: &aws_sdk_s3::Client, tok: Option<String>| {
                cl.list_objects_v2()
                    .bucket(&b)
                    .set_prefix(prefix.map(str::to_owned))
                    .set_delimiter(delim.map(str::to_owned))
                    .max_keys(max)
                    .set_continuation_token(tok)
                    .send()
            };
            let o = req(&c, t1.clone()).await.unwrap();
            let s = req(&via, t2.clone()).await.unwrap();
            let keys = |x: &aws_sdk_s3::operation::list_objects_v2::ListObjectsV2Output| {
                x.contents()
                    .iter()
                    .map(|o| {
                        (
                            o.key().map(str::to_owned),
                            o.size(),
                            o.e_tag().map(str::to_owned),
                        )
                    })
                    .collect::<Vec<_>>()
            };
            let cps = |x: &aws_sdk_s3::operation::list_objects_v2::ListObjectsV2Output| {
                x.common_prefixes()
                    .iter()
                    .map(|p| p.prefix().map(str::to_owned))
                    .collect::<Vec<_>>()
            };
            assert_eq!(keys(&s), keys(&o), "{prefix:?} {delim:?} {max}");
            assert_eq!(cps(&s), cps(&o));
            assert_eq!(s.is_truncated(), o.is_truncated());
            assert_eq!(s.key_count(), o.key_count());
            assert_eq!(s.max_keys(), o.max_keys());
            assert_eq!(s.prefix(), o.prefix());
            assert_eq!(s.delimiter(), o.delimiter());
            pages += 1;
            if o.is_truncated() != Some(true) {
                break;
            }
            t1 = o.next_continuation_token().map(str::to_owned);
            t2 = s.next_continuation_token().map(str::to_owned);
            assert!(pages < 20);
        }
    }
    // V1 too.
    let o = c
        .list_objects()
        .bucket(&b)
        .delimiter("/")
        .max_keys(2)
        .send()
        .await
        .unwrap();
    let s = via
        .list_objects()
        .bucket(&b)
        .delimiter("/")
        .max_keys(2)
        .send()
        .await
        .unwrap();
    assert_eq!(
        s.contents().iter().map(|x| x.key()).collect::<Vec<_>>(),
        o.contents().iter().map(|x| x.key()).collect::<Vec<_>>()
    );
    assert_eq!(s.next_marker(), o.next_marker());
    shoal.stop().await;
}

/// A bucket of seven objects of different sizes behind a fault proxy, and Shoal reading it
/// through the proxy: for the LIST fault tests.
async fn list_behind_a_proxy(hint: &str) -> (String, common::proxy::Proxy, Shoal) {
    let g = garage();
    let c = client(&g.endpoint);
    let b = bucket(&c, hint).await;
    for i in 0..7u64 {
        put(&c, &b, &format!("obj/{i}"), data(1000 + 37 * i as usize, i)).await;
    }
    let proxy = common::proxy::Proxy::start(&g.endpoint).await;
    let mut cfg = config(g);
    cfg.origin.endpoint = Some(proxy.endpoint.clone());
    let shoal = Shoal::start(&cfg, s3_origin(&cfg).await).await;
    (b, proxy, shoal)
}

/// LIST requests (Shoal always sends `max-keys`) the proxy forwarded so far.
fn lists_seen(proxy: &common::proxy::Proxy) -> usize {
    proxy
        .seen()
        .iter()
        .filter(|s| s.method == "GET" && s.path.contains("max-keys="))
        .count()
}

/// Asserts a retryable origin failure: a 5xx S3 error the SDKs retry, never a 400 that blames
/// the client, never a 200 with a page that is not the origin's.
async fn assert_origin_failure(r: reqwest::Response, what: &str) {
    let status = r.status().as_u16();
    let xml = r.text().await.unwrap();
    assert_eq!(status, 502, "{what}: {xml}");
    assert!(
        xml.contains("<Code>OriginUnreachable</Code>"),
        "{what}: {xml}"
    );
}

/// The page Shoal serves equals the origin's own (keys, sizes, ETags, count, next token).
async fn assert_same_page(b: &str, shoal: &Shoal) {
    let direct = client(&garage().endpoint);
    let via = client(&shoal.base);
    let page = |cl: aws_sdk_s3::Client| {
        let b = b.to_owned();
        async move {
            let o = cl
                .list_objects_v2()
                .bucket(&b)
                .max_keys(5)
                .send()
                .await
                .expect("list");
            let entries: Vec<_> = o
                .contents()
                .iter()
                .map(|x| {
                    (
                        x.key().map(str::to_owned),
                        x.size(),
                        x.e_tag().map(str::to_owned),
                    )
                })
                .collect();
            (
                entries,
                o.key_count(),
                o.is_truncated(),
                o.next_continuation_token().map(str::to_owned),
            )
        }
    };
    let (want, got) = (page(direct).await, page(via).await);
    assert_eq!(want.0.len(), 5);
    assert_eq!(got, want, "the full, correct page");
}

/// Issue 21, defect 1: a LIST whose body the origin cuts short (the connection reset after a
/// few hundred bytes of a 200) was answered 400 `InvalidRequest` ("The origin rejected the
/// request: HTTP 200"). It is a transient origin failure: retried within `fill.retry`, then
/// 502 `OriginUnreachable`; one cut followed by a clean answer is invisible.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_list_cut_short_is_retried_then_a_5xx_never_a_400() {
    let (b, proxy, shoal) = list_behind_a_proxy("listcut").await;
    let attempts = config(garage()).fill.retry.attempts as usize;
    for (path, what) in [
        (format!("{b}?list-type=2&max-keys=5"), "V2"),
        (format!("{b}?max-keys=5"), "V1"),
    ] {
        let before = lists_seen(&proxy);
        proxy.cut_times("max-keys=", 200, 100);
        assert_origin_failure(shoal.get(&path).await, what).await;
        assert_eq!(
            lists_seen(&proxy) - before,
            attempts,
            "{what}: retried within the budget"
        );
    }
    // One cut, then a clean answer: the client sees the origin's page, whole.
    proxy.cut_times("max-keys=", 200, 1);
    let before = lists_seen(&proxy);
    assert_same_page(&b, &shoal).await;
    assert_eq!(
        lists_seen(&proxy) - before,
        2,
        "the cut answer was retried once"
    );
    shoal.stop().await;
}

/// The body up to the end of the `n`th occurrence of `tag` (1-based).
fn through_nth(body: &[u8], tag: &str, n: usize) -> bytes::Bytes {
    let s = std::str::from_utf8(body).expect("XML");
    let mut end = 0;
    for i in 0..n {
        let at = s[end..]
            .find(tag)
            .unwrap_or_else(|| panic!("no {tag} #{} in {s}", i + 1));
        end += at + tag.len();
    }
    bytes::Bytes::copy_from_slice(&body[..end])
}

/// Issue 21, defect 2: a LIST body cut short but framed with a matching `Content-Length` was
/// answered 200 and complete-looking (KeyCount 4 of 5, an entry with Size 0, a continuation
/// token past the missing key). LIST answers are verified: an entry without `Key`, `Size` or
/// `ETag`, a `KeyCount` that does not match, or a document that ends before its root element
/// closes is an origin failure — retried, then a 5xx — never a 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_list_truncated_with_a_matching_length_is_never_a_200() {
    let (b, proxy, shoal) = list_behind_a_proxy("listtrunc").await;
    type Cut = fn(bytes::Bytes) -> bytes::Bytes;
    let cuts: [(&str, Cut); 4] = [
        // Four whole entries of five: KeyCount says 5.
        ("after the 4th entry", |x| through_nth(&x, "</Contents>", 4)),
        // The 5th entry has its Key but no Size or ETag: not an object of size 0.
        ("inside the 5th entry", |x| through_nth(&x, "</Key>", 5)),
        // Every entry whole; only the document's end is missing (the V1 shape: no KeyCount
        // to disagree).
        ("after the last entry", |x| {
            through_nth(&x, "</Contents>", 5)
        }),
        ("without the root's end", |x| {
            let s = std::str::from_utf8(&x).unwrap().trim_end();
            let end = s.rfind("</ListBucketResult>").expect("root end");
            x.slice(..end)
        }),
    ];
    for (path, version) in [
        (format!("{b}?list-type=2&max-keys=5"), "V2"),
        (format!("{b}?max-keys=5"), "V1"),
    ] {
        for (what, cut) in cuts {
            proxy.rewrite_times("max-keys=", 100, cut);
            assert_origin_failure(shoal.get(&path).await, &format!("{version}, {what}")).await;
        }
    }
    // One truncated answer, then a clean one: the full, correct page.
    proxy.rewrite_times("max-keys=", 1, |x| through_nth(&x, "</Contents>", 4));
    assert_same_page(&b, &shoal).await;
    shoal.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn headers_go_out_before_the_first_chunk_is_complete() {
    let g = garage();
    let c = client(&g.endpoint);
    let b = bucket(&c, "ttfb").await;
    let want = data(MIB, 12);
    put(&c, &b, "slow", want.clone()).await;
    let cfg = config(g);
    let origin = Faulty::new(s3_origin(&cfg).await);
    // Every piece of the origin body arrives 40 ms after the previous one.
    origin.slow("slow", Some(Duration::from_millis(40)));
    let shoal = Shoal::start(&cfg, origin.clone()).await;
    let r = shoal.get(&format!("{b}/slow")).await;
    assert_eq!(r.status(), 200);
    // Headers are here, yet the chunk is not complete (not committed) at this point.
    let stats = shoal.running.store.stats();
    assert_eq!(stats.chunks, 0, "headers waited for the whole chunk");
    assert!(body(r).await == want);
    shoal.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_disconnected_client_does_not_cancel_the_fill() {
    let g = garage();
    let c = client(&g.endpoint);
    let b = bucket(&c, "gone").await;
    let want = data(MIB, 13);
    put(&c, &b, "obj", want.clone()).await;
    let cfg = config(g);
    let origin = Faulty::new(s3_origin(&cfg).await);
    origin.slow("obj", Some(Duration::from_millis(10)));
    let shoal = Shoal::start(&cfg, origin.clone()).await;
    let r = shoal.get(&format!("{b}/obj")).await;
    assert_eq!(r.status(), 200);
    drop(r); // the client goes away with the fill in progress
    for _ in 0..500 {
        if shoal.running.store.stats().chunks == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        shoal.running.store.stats().chunks,
        1,
        "the fill finished and committed"
    );
    origin.slow("obj", None);
    assert!(body(shoal.get(&format!("{b}/obj")).await).await == want);
    assert_eq!(origin.gets_for("obj").len(), 1);
    shoal.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_etag_change_before_the_first_byte_serves_the_new_version() {
    let g = garage();
    let c = client(&g.endpoint);
    let b = bucket(&c, "etag").await;
    let v1 = data(2 * MIB, 1);
    let v2 = data(2 * MIB, 2);
    put(&c, &b, "obj", v1.clone()).await;
    let cfg = config(g);
    let origin = Faulty::new(s3_origin(&cfg).await);
    let shoal = Shoal::start(&cfg, origin.clone()).await;
    // Version 1's metadata and first chunk are cached.
    let r = shoal.get_range(&format!("{b}/obj"), "bytes=0-9").await;
    assert!(body(r).await[..] == v1[..10]);
    assert_eq!(origin.heads(), 1);
    // The object is replaced; Shoal's cached metadata still says version 1.
    put(&c, &b, "obj", v2.clone()).await;
    // The second chunk must be filled: the origin refuses the old ETag (If-Match), Shoal
    // re-reads the metadata once and serves version 2 — never a mix of the two.
    let m = MIB;
    let r = shoal
        .get_range(&format!("{b}/obj"), &format!("bytes={}-{}", m, m + 99))
        .await;
    assert_eq!(r.status(), 206);
    assert!(
        body(r).await[..] == v2[m..m + 100],
        "bytes of the new version"
    );
    assert_eq!(origin.heads(), 2, "metadata re-read once");
    // And a full GET is all version 2.
    assert!(body(shoal.get(&format!("{b}/obj")).await).await == v2);
    shoal.stop().await;
}

/// Keys in a ListObjectsV2 answer.
fn listed_keys(xml: &str) -> Vec<String> {
    xml.split("<Key>")
        .skip(1)
        .filter_map(|s| s.split("</Key>").next())
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn list_ttl_answers_identical_lists_from_one_origin_page() {
    let g = garage();
    let c = client(&g.endpoint);
    let b = bucket(&c, "listttl").await;
    for i in 0..5 {
        put(&c, &b, &format!("data/{i}"), data(10, i)).await;
    }
    let mut cfg = config(g);
    cfg.list.ttl = shoal::config::Dur(Duration::from_secs(3600));
    let origin = Faulty::new(s3_origin(&cfg).await);
    let shoal = Arc::new(Shoal::start(&cfg, origin.clone()).await);
    let path = format!("{b}?list-type=2&prefix=data/");
    // Twenty concurrent identical LISTs: one origin LIST, the same answer for all.
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (s, path) = (shoal.clone(), path.clone());
            tokio::spawn(async move {
                let r = s.get(&path).await;
                assert_eq!(r.status(), 200);
                let cache = r.headers()["x-shoal-cache"].to_str().unwrap().to_owned();
                (cache, r.text().await.unwrap())
            })
        })
        .collect();
    let mut misses = 0;
    for t in tasks {
        let (cache, xml) = t.await.unwrap();
        misses += usize::from(cache == "miss");
        assert_eq!(
            listed_keys(&xml),
            (0..5).map(|i| format!("data/{i}")).collect::<Vec<_>>()
        );
    }
    assert_eq!(
        origin.lists.load(Ordering::SeqCst),
        1,
        "one origin LIST for 20 clients"
    );
    assert_eq!(misses, 1, "one of them asked the origin");

    // Within the TTL a new object is not listed (that is the trade `list.ttl` makes)...
    put(&c, &b, "data/new", data(10, 99)).await;
    let r = shoal.get(&path).await;
    assert_eq!(r.headers()["x-shoal-cache"], "hit");
    assert!(!listed_keys(&r.text().await.unwrap()).contains(&"data/new".to_string()));
    // ...but a LIST with other parameters is its own page, asked of the origin.
    let r = shoal
        .get(&format!("{b}?list-type=2&prefix=data/&max-keys=100"))
        .await;
    assert_eq!(r.headers()["x-shoal-cache"], "miss");
    assert!(listed_keys(&r.text().await.unwrap()).contains(&"data/new".to_string()));
    assert_eq!(origin.lists.load(Ordering::SeqCst), 2);
    Arc::try_unwrap(shoal).ok().unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn list_is_not_cached_by_default() {
    let g = garage();
    let c = client(&g.endpoint);
    let b = bucket(&c, "listoff").await;
    put(&c, &b, "a", data(10, 1)).await;
    let cfg = config(g);
    let origin = Faulty::new(s3_origin(&cfg).await);
    let shoal = Shoal::start(&cfg, origin.clone()).await;
    let path = format!("{b}?list-type=2");
    let r = shoal.get(&path).await;
    assert!(r.headers().get("x-shoal-cache").is_none());
    put(&c, &b, "b", data(10, 2)).await;
    let r = shoal.get(&path).await;
    assert_eq!(listed_keys(&r.text().await.unwrap()), ["a", "b"]);
    assert_eq!(
        origin.lists.load(Ordering::SeqCst),
        2,
        "every LIST asks the origin"
    );
    shoal.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cold_get_asks_the_origin_once_for_metadata_and_first_chunk() {
    let g = garage();
    let c = client(&g.endpoint);
    let b = bucket(&c, "onetrip").await;
    let want = data(3 * MIB + MIB / 2, 31);
    put(&c, &b, "obj", want.clone()).await;
    let mut cfg = config(g);
    // Objects of 4 MiB and more are cut into 4 MiB chunks: their first chunk is longer than
    // the first GET's 1 MiB, and continues with a pinned GET of the rest.
    four_mib_chunks_from_four_mib(&mut cfg);
    let origin = Faulty::new(s3_origin(&cfg).await);
    origin.one_trip.store(true, Ordering::SeqCst);
    let shoal = Shoal::start(&cfg, origin.clone()).await;

    // A cold GET: no HEAD; the first chunk is the first GET's bytes.
    let r = shoal.get(&format!("{b}/obj")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], want.len().to_string());
    assert!(body(r).await == want);
    assert_eq!(origin.heads(), 0);
    let m = MIB as u64;
    // Readahead asks for the later chunks concurrently, in any order.
    let mut gets = origin.gets_for("obj");
    gets.sort();
    assert_eq!(gets, [(0, m), (m, m), (2 * m, m), (3 * m, m / 2)]);
    // Warm, and HEAD, from the cache.
    assert!(body(shoal.get(&format!("{b}/obj")).await).await == want);
    let h = shoal
        .http
        .head(shoal.url(&format!("{b}/obj")))
        .send()
        .await
        .unwrap();
    assert_eq!(h.headers()["content-length"], want.len().to_string());
    assert_eq!(origin.heads(), 0);
    assert_eq!(origin.gets_for("obj").len(), 4);

    // A bigger tier: the first GET's 1 MiB, then the rest of the 4 MiB chunk, pinned.
    let big = data(6 * MIB, 32);
    put(&c, &b, "big", big.clone()).await;
    let r = shoal.get(&format!("{b}/big")).await;
    assert_eq!(r.status(), 200);
    assert!(
        body(r).await == big,
        "exact bytes across the prefetched part and the rest"
    );
    let mut gets = origin.gets_for("big");
    gets.sort();
    assert_eq!(gets, [(0, m), (m, 3 * m), (4 * m, 2 * m)]);
    assert_eq!(origin.heads(), 0);

    // A range that does not start at 0 still asks HEAD first (its first chunk is elsewhere).
    put(&c, &b, "ranged", want.clone()).await;
    let r = shoal
        .get_range(&format!("{b}/ranged"), "bytes=2000000-2000099")
        .await;
    assert_eq!(r.status(), 206);
    assert!(body(r).await == want[2_000_000..2_000_100]);
    assert_eq!(origin.heads(), 1);

    // An empty object (a range of it is unsatisfiable): answered via HEAD, 200 and empty.
    put(&c, &b, "empty", Vec::new()).await;
    let r = shoal.get(&format!("{b}/empty")).await;
    assert_eq!(r.status(), 200);
    assert!(body(r).await.is_empty());
    // A missing object: 404 from the first GET, remembered like a HEAD's.
    let r = shoal.get(&format!("{b}/missing")).await;
    assert_eq!(r.status(), 404);
    shoal.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_first_chunk_answer_nobody_needs_is_not_kept() {
    let g = garage();
    let c = client(&g.endpoint);
    let b = bucket(&c, "onetripstored").await;
    let want = data(2 * MIB, 41);
    put(&c, &b, "obj", want.clone()).await;
    let mut cfg = config(g);
    cfg.metadata.ttl = shoal::config::Dur(Duration::from_millis(500));
    let origin = Faulty::new(s3_origin(&cfg).await);
    origin.one_trip.store(true, Ordering::SeqCst);
    let shoal = Shoal::start(&cfg, origin.clone()).await;
    assert!(body(shoal.get(&format!("{b}/obj")).await).await == want);
    assert!(
        shoal.running.prefetched.is_empty(),
        "the first chunk's fill took it"
    );
    // The metadata expires, the chunks stay: the next GET's first-chunk answer finds its
    // chunk stored and is dropped at once instead of waiting for a fill that never comes.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let r = shoal.get(&format!("{b}/obj")).await;
    assert_eq!(r.headers()["x-shoal-cache"], "hit");
    assert!(body(r).await == want);
    assert_eq!(
        origin.gets_for("obj").iter().filter(|g| g.0 == 0).count(),
        2
    );
    assert!(
        shoal.running.prefetched.is_empty(),
        "nothing parked for a stored chunk"
    );
    shoal.stop().await;
}

/// A slow origin GET gets one hedge when `fill.hedge_after` is set and a slot is free; the
/// first answer wins and the slow one is cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_origin_get_is_hedged_once() {
    let g = garage();
    let c = client(&g.endpoint);
    let b = bucket(&c, "hedge").await;
    let want = data(3 * MIB, 51);
    put(&c, &b, "obj", want.clone()).await;
    let mut cfg = config(g);
    cfg.fill.hedge_after = HedgeAfter::After(Duration::from_millis(100));
    cfg.origin.timeout = shoal::config::Dur(Duration::from_secs(60));
    cfg.fill.retry.max_total = shoal::config::Dur(Duration::from_secs(120));
    let origin = Faulty::new(s3_origin(&cfg).await);
    let shoal = Shoal::start(&cfg, origin.clone()).await;
    // The first GET of chunk 1 hangs for a minute: without a hedge this GET would take that.
    origin.delay_next("obj", MIB as u64, Duration::from_secs(60));
    let r = tokio::time::timeout(Duration::from_secs(20), shoal.get(&format!("{b}/obj")))
        .await
        .expect("the hedge answered");
    assert_eq!(r.status(), 200);
    let got = tokio::time::timeout(Duration::from_secs(20), body(r))
        .await
        .expect("the body completed");
    assert!(got == want);
    let at_1: Vec<_> = origin
        .gets_for("obj")
        .into_iter()
        .filter(|g| g.0 == MIB as u64)
        .collect();
    assert_eq!(at_1.len(), 2, "one hedge, no more");
    assert_eq!(
        origin.cancelled.load(Ordering::SeqCst),
        1,
        "the slow GET was cancelled"
    );
    assert_eq!(
        origin.gets_for("obj").len(),
        4,
        "the other chunks were not hedged"
    );
    shoal.stop().await;
}

/// `hedge_after = "p95"`: no hedge until the origin's usual latency is known; after that, a
/// GET far beyond its 95th percentile gets one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_get_in_the_origins_tail_is_hedged_at_its_observed_p95() {
    let g = garage();
    let c = client(&g.endpoint);
    let b = bucket(&c, "p95").await;
    let slow = data(3 * MIB, 53);
    put(&c, &b, "slow", slow.clone()).await;
    put(&c, &b, "warm", data(40 * MIB, 54)).await;
    let mut cfg = config(g);
    cfg.fill.hedge_after = HedgeAfter::P95;
    cfg.origin.timeout = shoal::config::Dur(Duration::from_secs(60));
    cfg.fill.retry.max_total = shoal::config::Dur(Duration::from_secs(120));
    let origin = Faulty::new(s3_origin(&cfg).await);
    let shoal = Shoal::start(&cfg, origin.clone()).await;
    // Nothing seen yet: a slow GET is waited for, not hedged.
    origin.delay_next("slow", MIB as u64, Duration::from_millis(600));
    assert!(body(shoal.get(&format!("{b}/slow")).await).await == slow);
    assert_eq!(
        origin.gets_for("slow").len(),
        3,
        "no hedge without a baseline"
    );
    assert_eq!(origin.cancelled.load(Ordering::SeqCst), 0);
    // 40 ordinary GETs teach it the origin's latency.
    let r = shoal.get(&format!("{b}/warm")).await;
    assert_eq!(body(r).await.len(), 40 * MIB);
    let p95 = shoal
        .running
        .origin_latency
        .p95()
        .expect("a p95 after 40 GETs");
    assert!(p95 < Duration::from_secs(10), "p95 {p95:?}");
    // Now a GET that hangs for a minute is hedged at about that p95.
    put(&c, &b, "slow2", slow.clone()).await;
    origin.delay_next("slow2", MIB as u64, Duration::from_secs(60));
    let r = tokio::time::timeout(Duration::from_secs(20), shoal.get(&format!("{b}/slow2")))
        .await
        .expect("the hedge answered");
    let got = tokio::time::timeout(Duration::from_secs(20), body(r))
        .await
        .expect("the body completed");
    assert!(got == slow);
    let at_1 = origin
        .gets_for("slow2")
        .into_iter()
        .filter(|g| g.0 == MIB as u64)
        .count();
    assert_eq!(at_1, 2, "one hedge of the hung GET, no more");
    assert!(
        origin.cancelled.load(Ordering::SeqCst) >= 1,
        "the hung GET was cancelled"
    );
    shoal.stop().await;
}

/// Hedging is off by default, and a hedge needs a free origin slot: with
/// `origin_concurrency = 1` the slow GET is simply waited for.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hedges_are_off_by_default_and_count_against_origin_concurrency() {
    let g = garage();
    let c = client(&g.endpoint);
    let b = bucket(&c, "nohedge").await;
    let want = data(MIB, 52);
    put(&c, &b, "obj", want.clone()).await;
    for (hedge_after, concurrency) in [(0u64, 64usize), (50, 1)] {
        let mut cfg = config(g);
        cfg.fill.hedge_after = match hedge_after {
            0 => HedgeAfter::Off,
            ms => HedgeAfter::After(Duration::from_millis(ms)),
        };
        cfg.fill.origin_concurrency = concurrency;
        let origin = Faulty::new(s3_origin(&cfg).await);
        let shoal = Shoal::start(&cfg, origin.clone()).await;
        origin.delay_next("obj", 0, Duration::from_millis(600));
        assert!(body(shoal.get(&format!("{b}/obj")).await).await == want);
        assert_eq!(
            origin.gets_for("obj").len(),
            1,
            "no hedge ({hedge_after} ms, {concurrency} slots)"
        );
        assert_eq!(origin.cancelled.load(Ordering::SeqCst), 0);
        shoal.stop().await;
    }
}

/// Regression: readahead found a chunk missing and went to the fill without the store ever
/// hearing that a reader wanted it. A full store's admission (W-TinyLFU) then saw every
/// readahead chunk as never used and declined it on every read: once the store had filled
/// up, a new object's chunks after the first were fetched from the origin on every GET, for
/// ever, however often it was read.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_store_admits_an_object_its_readers_keep_reading() {
    let g = garage();
    let c = client(&g.endpoint);
    let b = bucket(&c, "admit").await;
    let (old, new) = (data(8 * MIB, 41), data(8 * MIB, 42));
    put(&c, &b, "old", old.clone()).await;
    put(&c, &b, "new", new.clone()).await;
    for kind in ["memory", "disk"] {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(g);
        // Room for one of the two 8-chunk objects (and the disk store's file headers), not
        // for both.
        cfg.store.capacity = shoal::config::ByteSize(10 * MIB as u64);
        if kind == "disk" {
            cfg.store.kind = shoal::config::StoreKind::Disk;
            cfg.store.path = Some(dir.path().to_path_buf());
        }
        let origin = Faulty::new(s3_origin(&cfg).await);
        let shoal = Shoal::start(&cfg, origin.clone()).await;
        // The store fills up with an object read once.
        assert!(body(shoal.get(&format!("{b}/old")).await).await == old);
        // A second object, read again and again: a one-off read may be declined, a repeated
        // one must not be.
        for _ in 0..2 {
            assert!(body(shoal.get(&format!("{b}/new")).await).await == new);
        }
        let before = origin.gets_for("new").len();
        assert!(body(shoal.get(&format!("{b}/new")).await).await == new);
        let after = origin.gets_for("new").len();
        assert_eq!(
            after - before,
            0,
            "{kind} store: the third read of an object asked the origin again"
        );
        shoal.stop().await;
    }
}

/// A cold suffix range (`bytes=-N`, a Parquet reader's first read of a file) asks the origin
/// once: the GET of those bytes says what a HEAD would, and its bytes are the ones the client
/// gets. A suffix the direct read does not take is not kept waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cold_footer_read_asks_the_origin_once() {
    let g = garage();
    let c = client(&g.endpoint);
    let b = bucket(&c, "footer").await;
    // 6 MiB in 4 MiB chunks: the footer is 2 MiB into the second chunk, deep enough to be
    // read straight from the origin.
    let big = data(6 * MIB, 61);
    put(&c, &b, "big", big.clone()).await;
    // 1.5 MiB in 1 MiB chunks: the footer is 448 KiB into its chunk, which is filled.
    let small = data(MIB + MIB / 2, 62);
    put(&c, &b, "small", small.clone()).await;
    let mut cfg = config(g);
    four_mib_chunks_from_four_mib(&mut cfg);
    let origin = Faulty::new(s3_origin(&cfg).await);
    origin.one_trip.store(true, Ordering::SeqCst);
    let shoal = Shoal::start(&cfg, origin.clone()).await;
    let footer = 64 * 1024u64;

    let r = shoal.get_range(&format!("{b}/big"), "bytes=-65536").await;
    assert_eq!(r.status(), 206);
    let (size, start) = (big.len() as u64, big.len() as u64 - footer);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes {start}-{}/{size}", size - 1)
    );
    assert!(body(r).await == big[start as usize..]);
    assert_eq!(origin.heads(), 0, "no HEAD before the footer");
    // The footer's own GET, and the background fill of its chunk; nothing else.
    let gets = origin.gets_for("big");
    assert_eq!(
        gets.iter().filter(|g| **g == (start, footer)).count(),
        1,
        "{gets:?}"
    );
    assert!(
        shoal.running.prefetched.is_empty(),
        "the direct read took the footer's answer"
    );

    let r = shoal.get_range(&format!("{b}/small"), "bytes=-65536").await;
    assert_eq!(r.status(), 206);
    let start = small.len() - footer as usize;
    assert!(body(r).await == small[start..]);
    assert_eq!(origin.heads(), 0);
    assert!(
        shoal.running.prefetched.is_empty(),
        "an answer no read would take is not kept"
    );
    // A suffix longer than the object is the whole object, learned and served in one GET.
    let tiny = data(1000, 63);
    put(&c, &b, "tiny", tiny.clone()).await;
    let r = shoal.get_range(&format!("{b}/tiny"), "bytes=-5000").await;
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-range"], "bytes 0-999/1000");
    assert!(body(r).await == tiny);
    assert_eq!(origin.heads(), 0);
    assert_eq!(
        origin.gets_for("tiny"),
        [(0, 1000)],
        "the suffix GET's bytes were used"
    );
    shoal.stop().await;
}
