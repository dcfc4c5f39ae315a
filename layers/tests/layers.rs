//! The layers' HTTP faces on real axum servers on loopback: the example app
//! (`examples/layers_axum.rs`) is started as it is and driven over HTTP with hyper's client.
//! These tests build without the `server` feature too (`cargo test --no-default-features
//! --test layers`), which is how a user of the layers alone gets them.

#[allow(dead_code)]
#[path = "../examples/layers_axum.rs"]
mod example;

use bytes::Bytes;
use example::{Counter, Models, Upstream};
use http::{header, HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use shoal_layers::ConcurrencyLimitLayer;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::watch;

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// A whole answer.
#[derive(Debug)]
struct Got {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

async fn get(c: &HttpClient, addr: SocketAddr, path: &str) -> Got {
    let req = Request::get(format!("http://{addr}{path}"))
        .body(Empty::new())
        .unwrap();
    let resp = c.request(req).await.expect("request");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Got {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// Waits until `f` holds (the servers run on other tasks).
async fn until(what: &str, f: impl Fn() -> bool) {
    for _ in 0..1000 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn singleflight_fifty_identical_gets_reach_the_handler_once() {
    let (open, hold) = watch::channel(false);
    let m = Models {
        renders: Counter::default(),
        arrivals: Counter::default(),
        hold,
    };
    let addr = example::serve(example::models(m.clone()), "127.0.0.1:0")
        .await
        .unwrap();
    let c = client();
    let gets: Vec<_> = (0..50)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { get(&c, addr, "/models/llama").await })
        })
        .collect();
    // Every request is in the server before the one render may answer.
    until("50 arrivals", || m.arrivals.get() == 50).await;
    open.send(true).unwrap();
    let want = example::content("llama", example::MODEL_LEN);
    for g in gets {
        let got = g.await.unwrap();
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.body.len(), want.len());
        assert!(got.body == want, "every caller gets the same, exact bytes");
    }
    assert_eq!(m.renders.get(), 1, "one call reached the handler");

    // Once the call is over, the next GET renders again (nothing is cached), and other names
    // are not coalesced with it.
    let again = get(&c, addr, "/models/llama").await;
    let other = get(&c, addr, "/models/mistral").await;
    assert_eq!(again.body, want);
    assert_eq!(other.body, example::content("mistral", example::MODEL_LEN));
    assert_eq!(m.renders.get(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_cache_answers_a_404_from_memory_within_its_ttl() {
    let calls = Counter::default();
    let ttl = Duration::from_secs(1);
    let addr = example::serve(example::objects(calls.clone(), ttl), "127.0.0.1:0")
        .await
        .unwrap();
    let c = client();
    let first = get(&c, addr, "/objects/missing").await;
    assert_eq!(first.status, StatusCode::NOT_FOUND);
    assert_eq!(&first.body[..], b"no object named missing\n");
    for _ in 0..5 {
        let again = get(&c, addr, "/objects/missing").await;
        assert_eq!(again.status, StatusCode::NOT_FOUND);
        assert_eq!(
            again.body, first.body,
            "the remembered answer, body included"
        );
    }
    assert_eq!(calls.get(), 1, "the 404 was answered from memory");

    // Successes are not remembered by default; each GET reaches the handler.
    assert_eq!(get(&c, addr, "/objects/here").await.status, StatusCode::OK);
    assert_eq!(get(&c, addr, "/objects/here").await.status, StatusCode::OK);
    assert_eq!(calls.get(), 3);

    // Concurrent misses of a new key make one call.
    let gets: Vec<_> = (0..20)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { get(&c, addr, "/objects/gone").await.status })
        })
        .collect();
    for g in gets {
        assert_eq!(g.await.unwrap(), StatusCode::NOT_FOUND);
    }
    assert_eq!(calls.get(), 4, "twenty concurrent misses, one call");

    // After the TTL the handler is asked again.
    tokio::time::sleep(ttl + Duration::from_millis(500)).await;
    assert_eq!(
        get(&c, addr, "/objects/missing").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(calls.get(), 5, "asked again once the TTL passed");
}

/// Starts a GET and returns its answer's status and headers as soon as they arrive, with the
/// body read to the end in the background.
async fn start(c: &HttpClient, addr: SocketAddr, path: &str) -> tokio::task::JoinHandle<Got> {
    let c = c.clone();
    let path = path.to_string();
    tokio::spawn(async move { get(&c, addr, &path).await })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_limit_queues_then_answers_503_with_retry_after() {
    let (release, held) = watch::channel(false);
    let limit = ConcurrencyLimitLayer::http(2)
        .max_waiting(8)
        .queue_timeout(Duration::from_secs(60));
    let addr = example::serve(example::downloads(limit.clone(), held), "127.0.0.1:0")
        .await
        .unwrap();
    let c = client();
    // Two slow bodies hold both slots until released.
    let first_two = [
        start(&c, addr, "/downloads/a").await,
        start(&c, addr, "/downloads/b").await,
    ];
    until("both slots taken", || limit.available() == 0).await;
    // The third to the tenth wait for a slot.
    let mut waiting = Vec::new();
    for i in 3..=10 {
        waiting.push(start(&c, addr, &format!("/downloads/n{i}")).await);
        until("the caller to queue", || limit.queued() == i - 2).await;
    }
    // The eleventh finds the queue full and is answered at once.
    let eleventh = get(&c, addr, "/downloads/n11").await;
    assert_eq!(eleventh.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(eleventh.headers.get(header::RETRY_AFTER).unwrap(), "1");
    assert!(
        waiting.iter().all(|w| !w.is_finished()),
        "the waiting callers are still waiting"
    );
    assert_eq!(limit.queued(), 8);

    // Releasing the bodies frees the slots; every waiting caller is served, in full.
    release.send(true).unwrap();
    for (i, w) in first_two.into_iter().chain(waiting).enumerate() {
        let got = w.await.unwrap();
        assert_eq!(got.status, StatusCode::OK, "caller {i}");
        assert_eq!(got.body.len(), 64 * 1024);
    }
    until("all slots free", || limit.available() == 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_limit_answers_a_caller_that_waits_past_the_queue_timeout() {
    let (_release, held) = watch::channel(false);
    let limit = ConcurrencyLimitLayer::http(1)
        .queue_timeout(Duration::from_millis(200))
        .retry_after(7);
    let addr = example::serve(example::downloads(limit.clone(), held), "127.0.0.1:0")
        .await
        .unwrap();
    let c = client();
    let _holder = start(&c, addr, "/downloads/a").await;
    until("the slot taken", || limit.available() == 0).await;
    let late = get(&c, addr, "/downloads/b").await;
    assert_eq!(late.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(late.headers.get(header::RETRY_AFTER).unwrap(), "7");
    assert_eq!(limit.queued(), 0, "the timed-out caller left the queue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_shed_above_the_limit_sheds_instead_of_queueing() {
    let (release, held) = watch::channel(false);
    let limit = ConcurrencyLimitLayer::http(2).queue_timeout(Duration::from_secs(60));
    let addr = example::serve(
        example::downloads_shedding(limit.clone(), held),
        "127.0.0.1:0",
    )
    .await
    .unwrap();
    let c = client();
    let holders = [
        start(&c, addr, "/downloads/a").await,
        start(&c, addr, "/downloads/b").await,
    ];
    until("both slots taken", || limit.available() == 0).await;
    let third = get(&c, addr, "/downloads/c").await;
    assert_eq!(third.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        String::from_utf8_lossy(&third.body).starts_with("shed:"),
        "LoadShed answered, not the limit's queue: {:?}",
        third.body
    );
    assert_eq!(limit.queued(), 0, "nothing queued behind LoadShed");
    release.send(true).unwrap();
    for h in holders {
        assert_eq!(h.await.unwrap().body.len(), 64 * 1024);
    }
    until("slots free", || limit.available() == 2).await;
    assert_eq!(get(&c, addr, "/downloads/d").await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_resumes_an_upstream_reset_mid_body_with_exact_bytes() {
    let up = Upstream::new(2);
    let up_addr = example::serve(example::upstream(up.clone()), "127.0.0.1:0")
        .await
        .unwrap();
    let addr = example::serve(example::proxy(up_addr), "127.0.0.1:0")
        .await
        .unwrap();
    let c = client();
    let got = get(&c, addr, "/proxy/blob").await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.headers.get(header::ETAG).unwrap(), up.etag);
    assert_eq!(got.body.len(), up.data.len());
    assert!(got.body == up.data, "exact bytes across two resets");

    // The upstream saw the GET, then resumes from the bytes reached, pinned to the first
    // answer's version.
    let seen = up.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3, "one GET and two resumes");
    assert!(seen[0].get(header::RANGE).is_none());
    let half = Upstream::LEN / 2;
    let quarter = (Upstream::LEN - half) / 2;
    assert_eq!(
        seen[1].get(header::RANGE).unwrap(),
        &format!("bytes={half}-{}", Upstream::LEN - 1)
    );
    assert_eq!(
        seen[2].get(header::RANGE).unwrap(),
        &format!("bytes={}-{}", half + quarter, Upstream::LEN - 1)
    );
    for s in &seen[1..] {
        assert_eq!(s.get(header::IF_MATCH).unwrap(), up.etag);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_resumes_a_ranged_get_within_its_range() {
    let up = Upstream::new(1);
    let up_addr = example::serve(example::upstream(up.clone()), "127.0.0.1:0")
        .await
        .unwrap();
    let addr = example::serve(example::proxy(up_addr), "127.0.0.1:0")
        .await
        .unwrap();
    let req = Request::get(format!("http://{addr}/proxy/blob"))
        .header(header::RANGE, "bytes=1000-200999")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        resp.headers().get(header::CONTENT_RANGE).unwrap(),
        &format!("bytes 1000-200999/{}", Upstream::LEN)
    );
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(
        body == up.data.slice(1000..201000),
        "exact bytes of the range"
    );
    // The resume asks for the rest of the caller's range, pinned.
    let seen = up.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].get(header::RANGE).unwrap(), "bytes=101000-200999");
    assert_eq!(seen[1].get(header::IF_MATCH).unwrap(), up.etag);
}

/// GETs `path` and reads the body until it ends or fails: `(status, etag, bytes received,
/// whether the body failed)`.
async fn read_until_failure(addr: SocketAddr, path: &str) -> (StatusCode, String, Vec<u8>, bool) {
    let req = Request::get(format!("http://{addr}{path}"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = client().request(req).await.unwrap();
    let status = resp.status();
    let etag = resp.headers()[header::ETAG].to_str().unwrap().to_string();
    let mut body = resp.into_body();
    let mut got = Vec::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => got.extend_from_slice(&f.into_data().unwrap_or_default()),
            Err(_) => return (status, etag, got, true),
        }
    }
    (status, etag, got, false)
}

async fn overwritten_mid_body(honours_if_match: bool) {
    let mut up = Upstream::new(1);
    up.overwrite_on_break = true;
    up.honours_if_match = honours_if_match;
    let up_addr = example::serve(example::upstream(up.clone()), "127.0.0.1:0")
        .await
        .unwrap();
    let addr = example::serve(example::proxy(up_addr), "127.0.0.1:0")
        .await
        .unwrap();
    let (status, etag, got, failed) = read_until_failure(addr, "/proxy/blob").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(etag, "\"v1\"");
    assert!(
        failed,
        "the body fails rather than continue with another version"
    );
    assert!(got.len() < Upstream::LEN);
    assert!(
        got[..] == up.data[..got.len()],
        "every byte received is version 1's"
    );
    // The resume was asked for (pinned), and not retried once refused or mismatched.
    let seen = up.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].get(header::IF_MATCH).unwrap(), "\"v1\"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_refuses_to_splice_an_overwritten_object() {
    overwritten_mid_body(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_checks_the_etag_of_an_upstream_that_ignores_if_match() {
    overwritten_mid_body(false).await;
}

/// A replica in front of `local` that routes every GET to `peer`.
async fn replica(local: &Upstream, peer: Option<SocketAddr>) -> SocketAddr {
    example::serve(example::replica(local.clone(), peer), "127.0.0.1:0")
        .await
        .unwrap()
}

fn seen(up: &Upstream) -> Vec<HeaderMap> {
    up.seen.lock().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_routing_answers_from_the_owner() {
    let (here, owner) = (Upstream::new(0), Upstream::new(0));
    let b = replica(&owner, None).await;
    let a = replica(&here, Some(b)).await;
    let got = get(&client(), a, "/blob/x").await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(got.body == here.data);
    assert_eq!(got.headers[header::ETAG], owner.etag);
    assert!(seen(&here).is_empty(), "not served here");
    let at_owner = seen(&owner);
    assert_eq!(at_owner.len(), 1);
    assert_eq!(at_owner[0]["x-peer-routed"], "1", "marked as forwarded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_routing_serves_here_when_the_peer_is_down_or_refuses() {
    let here = Upstream::new(0);
    // A port nothing listens on.
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let a = replica(&here, Some(dead)).await;
    let got = get(&client(), a, "/blob/x").await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(got.body == here.data);
    assert_eq!(seen(&here).len(), 1);

    // A peer that answers 404 (it has no such route): served here too.
    let refusing = example::serve(axum::Router::new(), "127.0.0.1:0")
        .await
        .unwrap();
    let a = replica(&here, Some(refusing)).await;
    let got = get(&client(), a, "/blob/x").await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(got.body == here.data);
    assert_eq!(seen(&here).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_routing_continues_here_from_the_byte_the_peer_reached() {
    let (here, owner) = (Upstream::new(0), Upstream::new(1));
    let b = replica(&owner, None).await;
    let a = replica(&here, Some(b)).await;
    let got = get(&client(), a, "/blob/x").await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body.len(), Upstream::LEN);
    assert!(
        got.body == here.data,
        "exact bytes: the peer's half, then ours"
    );
    let local = seen(&here);
    assert_eq!(local.len(), 1);
    assert_eq!(
        local[0][header::RANGE],
        format!("bytes={}-{}", Upstream::LEN / 2, Upstream::LEN - 1)
    );
    assert_eq!(
        local[0][header::IF_MATCH],
        owner.etag,
        "pinned to the peer's version"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_routing_serves_a_forwarded_request_where_it_lands() {
    let (here, owner) = (Upstream::new(0), Upstream::new(0));
    let b = replica(&owner, None).await;
    let a = replica(&here, Some(b)).await;
    let req = Request::get(format!("http://{a}/blob/x"))
        .header("x-peer-routed", "1")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(seen(&here).len(), 1, "served here");
    assert!(seen(&owner).is_empty(), "not forwarded again");
}
