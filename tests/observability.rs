//! Observability (SPEC §4, issue 9) against the real S3 server: `/metrics` after a known
//! workload, checked by an independent parser (Python's `prometheus_client`); `x-shoal-cache`
//! on every GET and HEAD; the access log and request ids; and one OpenTelemetry trace across
//! two replicas, received by an OTLP/HTTP receiver running in the test.

mod common;

use common::faulty::Faulty;
use common::*;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;

/// `/metrics` parsed by `prometheus_client`'s OpenMetrics parser: every sample as
/// `name{label="value",…}` (labels sorted) → value. Panics if the text does not parse.
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    use std::io::Write;
    let mut p = std::process::Command::new("python3")
        .arg("-c")
        .arg(
            r#"
import sys, json
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = {}
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
        out[f"{s.name}{{{labels}}}"] = s.value
print(json.dumps(out))
"#,
        )
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 (make test-deps installs prometheus_client)");
    p.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = p.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "/metrics is not valid OpenMetrics text: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

async fn scrape(ops: &str) -> (String, HashMap<String, f64>) {
    let r = reqwest::get(format!("http://{ops}/metrics")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let text = r.text().await.unwrap();
    let parsed = parse_metrics(&text);
    (text, parsed)
}

fn cache_of(r: &reqwest::Response) -> String {
    r.headers()
        .get("x-shoal-cache")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_else(|| panic!("no x-shoal-cache on a {} answer", r.status()))
}

/// A known workload, then exact counts: every request by operation and status, every chunk by
/// source, every origin request, the metadata cache, the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_known_workload_exactly() {
    let g = garage();
    let c = client(&g.endpoint);
    let b = bucket(&c, "metrics").await;
    let size = 3 * MIB + 100; // four chunks of 1 MiB, the last one short
    put(&c, &b, "obj", patterned(size, 1)).await;
    let cfg = config(g);
    let shoal = Shoal::start(&cfg, s3_origin(&cfg).await).await;
    let path = format!("{b}/obj");

    let r = shoal.get(&path).await; // cold: 4 chunks from the origin, metadata miss
    assert_eq!((r.status().as_u16(), cache_of(&r).as_str()), (200, "miss"));
    assert_eq!(r.bytes().await.unwrap().len(), size);
    assert!(shoal.running.fills_settled(Duration::from_secs(10)).await);
    let r = shoal.get(&path).await; // warm: 4 hits
    assert_eq!((r.status().as_u16(), cache_of(&r).as_str()), (200, "hit"));
    assert_eq!(r.bytes().await.unwrap().len(), size);
    let r = shoal.get_range(&path, "bytes=0-99").await; // 1 hit
    assert_eq!((r.status().as_u16(), cache_of(&r).as_str()), (206, "hit"));
    assert_eq!(r.bytes().await.unwrap().len(), 100);
    let r = shoal.http.head(shoal.url(&path)).send().await.unwrap();
    assert_eq!((r.status().as_u16(), cache_of(&r).as_str()), (200, "hit"));
    let missing = format!("{b}/missing");
    let r = shoal.http.head(shoal.url(&missing)).send().await.unwrap();
    assert_eq!((r.status().as_u16(), cache_of(&r).as_str()), (404, "miss"));
    let r = shoal.http.head(shoal.url(&missing)).send().await.unwrap();
    assert_eq!((r.status().as_u16(), cache_of(&r).as_str()), (404, "hit"));
    let r = shoal.get(&format!("{b}?list-type=2")).await;
    assert_eq!(r.status(), 200);
    assert!(
        r.headers().get("x-shoal-cache").is_none(),
        "LIST is not cached"
    );
    let list_len = r.bytes().await.unwrap().len();
    let r = shoal.http.put(shoal.url(&path)).send().await.unwrap();
    assert_eq!(r.status(), 405);
    let error_len = r.bytes().await.unwrap().len();

    // A request is counted when its body has been sent, which can trail the client's last
    // byte by a moment.
    let ops = shoal.running.ops_addr.to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    let (text, m) = loop {
        let (text, m) = scrape(&ops).await;
        let total: f64 = m
            .iter()
            .filter(|(k, _)| k.starts_with("shoal_requests_total{"))
            .map(|(_, v)| v)
            .sum();
        if total >= 8.0 || Instant::now() > deadline {
            break (text, m);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let get = |k: &str| -> f64 { m.get(k).copied().unwrap_or(0.0) };
    let want: &[(&str, f64)] = &[
        (r#"shoal_requests_total{op="get",status="200"}"#, 2.0),
        (r#"shoal_requests_total{op="get",status="206"}"#, 1.0),
        (r#"shoal_requests_total{op="head",status="200"}"#, 1.0),
        (r#"shoal_requests_total{op="head",status="404"}"#, 2.0),
        (r#"shoal_requests_total{op="list",status="200"}"#, 1.0),
        (r#"shoal_requests_total{op="other",status="405"}"#, 1.0),
        (r#"shoal_request_duration_seconds_count{op="get"}"#, 3.0),
        (r#"shoal_request_duration_seconds_count{op="head"}"#, 3.0),
        (r#"shoal_chunk_lookups_total{result="origin"}"#, 4.0),
        (r#"shoal_chunk_lookups_total{result="hit"}"#, 5.0),
        (r#"shoal_chunk_lookups_total{result="joined"}"#, 0.0),
        (r#"shoal_chunk_lookups_total{result="peer"}"#, 0.0),
        (r#"shoal_origin_requests_total{outcome="ok"}"#, 4.0),
        (r#"shoal_origin_bytes_total{}"#, size as f64),
        (r#"shoal_origin_inflight{}"#, 0.0),
        (r#"shoal_origin_retries_total{}"#, 0.0),
        (r#"shoal_origin_queue_wait_seconds_count{}"#, 4.0),
        (r#"shoal_budget_wait_seconds_count{}"#, 4.0),
        (r#"shoal_origin_first_byte_seconds_count{}"#, 4.0),
        (r#"shoal_metadata_lookups_total{result="miss"}"#, 2.0),
        (r#"shoal_metadata_lookups_total{result="hit"}"#, 3.0),
        (
            r#"shoal_metadata_lookups_total{result="negative_hit"}"#,
            1.0,
        ),
        (
            r#"shoal_response_bytes_total{}"#,
            (2 * size + 100 + list_len + error_len) as f64,
        ),
        (r#"shoal_store_chunks{}"#, 4.0),
        (r#"shoal_store_bytes{}"#, size as f64),
        (
            r#"shoal_store_capacity_bytes{}"#,
            cfg.store.capacity.0 as f64,
        ),
        (r#"shoal_store_evictions_total{}"#, 0.0),
        (r#"shoal_store_checksum_failures_total{}"#, 0.0),
        (r#"shoal_budget_used_bytes{}"#, 0.0),
        (r#"shoal_budget_bytes{}"#, cfg.fill.buffer_budget.0 as f64),
        (r#"shoal_cluster_members{}"#, 1.0),
        (r#"shoal_peer_ejected{}"#, 0.0),
        (r#"shoal_connections_refused_total{}"#, 0.0),
    ];
    for (k, v) in want {
        assert_eq!(get(k), *v, "{k}\n{text}");
    }
    // Nothing else was counted: no other status, no failed origin request, no peer fill.
    for (k, v) in &m {
        if k.starts_with("shoal_requests_total{") || k.starts_with("shoal_origin_requests_total{") {
            assert!(
                want.iter().any(|(w, _)| w == k) || *v == 0.0,
                "unexpected {k} = {v}"
            );
        }
        assert!(
            !k.starts_with("shoal_peer_fills_total{") || *v == 0.0,
            "{k}"
        );
    }
    // Every label value comes from a closed set: no key, bucket or address in a label.
    assert!(!text.contains(&b), "a bucket name became a label:\n{text}");
    shoal.stop().await;
}

/// `x-shoal-cache` tells a joined fill and a partly cached range apart, and the chunk mix
/// is counted the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_header_tells_joined_and_mixed_reads() {
    let g = garage();
    let c = client(&g.endpoint);
    let b = bucket(&c, "cachehdr").await;
    put(&c, &b, "obj", patterned(2 * MIB, 2)).await;
    let cfg = config(g);
    let faulty = Faulty::new(s3_origin(&cfg).await);
    let shoal = Shoal::start(&cfg, faulty.clone()).await;
    let path = format!("{b}/obj");
    // Chunk 0 only, cold and slow: the second reader joins the first one's fill.
    faulty.latency("obj", Duration::from_millis(400));
    let first = {
        let (http, url) = (shoal.http.clone(), shoal.url(&path));
        tokio::spawn(async move {
            http.get(url)
                .header("range", "bytes=0-9")
                .send()
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    let second = shoal.get_range(&path, "bytes=10-19").await;
    let first = first.await.unwrap();
    assert_eq!(cache_of(&first), "miss");
    assert_eq!(cache_of(&second), "joined");
    first.bytes().await.unwrap();
    second.bytes().await.unwrap();
    assert!(shoal.running.fills_settled(Duration::from_secs(10)).await);
    faulty.latency("obj", Duration::ZERO);
    // Chunk 0 is stored, chunk 1 is not: a range over both is mixed.
    let r = shoal
        .get_range(&path, &format!("bytes={}-{}", MIB - 10, MIB + 10))
        .await;
    assert_eq!(cache_of(&r), "mixed");
    assert_eq!(r.bytes().await.unwrap().len(), 21);
    // A 304 from cached metadata is a hit too.
    let etag = shoal
        .http
        .head(shoal.url(&path))
        .send()
        .await
        .unwrap()
        .headers()["etag"]
        .clone();
    let r = shoal
        .http
        .get(shoal.url(&path))
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!((r.status().as_u16(), cache_of(&r).as_str()), (304, "hit"));
    shoal.stop().await;
}

fn field<'a>(line: &'a Value, name: &str) -> Option<&'a Value> {
    line.get("fields").and_then(|f| f.get(name))
}

/// One INFO access line per request, with the bytes, status, time and chunk mix; the request
/// id on every line logged while serving it (the root span of each line is the request's).
#[test]
fn every_request_logs_one_access_line_and_every_line_its_request_id() {
    let g = garage();
    let toml = common::fixture::toml(&process_config(g));
    let shoal = ShoalProcess::start_with_env(&toml, &[("RUST_LOG", "debug")]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut ids = Vec::new();
    rt.block_on(async {
        let c = client(&g.endpoint);
        let b = bucket(&c, "access").await;
        put(&c, &b, "obj", patterned(2 * MIB + 5, 3)).await;
        let http = reqwest::Client::new();
        for (method, key) in [
            ("GET", "obj"),
            ("GET", "obj"),
            ("HEAD", "obj"),
            ("GET", "nope"),
        ] {
            let url = format!("{}/{b}/{key}", shoal.s3);
            let r = match method {
                "GET" => http.get(url),
                _ => http.head(url),
            }
            .send()
            .await
            .unwrap();
            let rid = r.headers()["x-amz-request-id"].to_str().unwrap().to_owned();
            let status = r.status().as_u16();
            let len = r.bytes().await.unwrap().len();
            ids.push((rid, status, len));
        }
    });
    // Access lines are written when the body is done; give the last one a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    let lines: Vec<Value> = loop {
        let lines: Vec<Value> = shoal
            .logs
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let access = lines
            .iter()
            .filter(|l| field(l, "message") == Some(&Value::from("access")))
            .count();
        if access >= ids.len() || Instant::now() > deadline {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let request_id_of = |l: &Value| -> Option<String> {
        l.get("spans")?
            .as_array()?
            .first()
            .filter(|s| s["name"] == "request")?
            .get("request_id")?
            .as_str()
            .map(str::to_owned)
    };
    for (rid, status, len) in &ids {
        let access: Vec<&Value> = lines
            .iter()
            .filter(|l| {
                field(l, "message") == Some(&Value::from("access"))
                    && request_id_of(l).as_deref() == Some(rid)
            })
            .collect();
        assert_eq!(access.len(), 1, "one access line for {rid}");
        let a = access[0];
        assert_eq!(a["level"], "INFO");
        assert_eq!(field(a, "status").unwrap(), *status);
        assert_eq!(field(a, "bytes").unwrap(), *len as u64);
        assert_eq!(field(a, "outcome").unwrap(), "complete");
        assert!(field(a, "elapsed_ms").unwrap().as_f64().unwrap() > 0.0);
        for k in [
            "cache",
            "chunks_hit",
            "chunks_origin",
            "chunks_joined",
            "chunks_peer",
        ] {
            assert!(field(a, k).is_some(), "{k} missing: {a}");
        }
    }
    // The first GET filled 3 chunks from the origin, the second read them from the store.
    let access_of = |i: usize| {
        lines
            .iter()
            .find(|l| {
                field(l, "message") == Some(&Value::from("access"))
                    && request_id_of(l).as_deref() == Some(&ids[i].0)
            })
            .unwrap()
            .clone()
    };
    assert_eq!(field(&access_of(0), "chunks_origin").unwrap(), 3);
    assert_eq!(field(&access_of(0), "cache").unwrap(), "miss");
    assert_eq!(field(&access_of(1), "chunks_hit").unwrap(), 3);
    assert_eq!(field(&access_of(1), "cache").unwrap(), "hit");
    // Every line logged inside any span — the fills and store writes a request started
    // included — belongs to a request and carries its id.
    let mut inside = 0;
    for l in &lines {
        let in_span = l
            .get("spans")
            .and_then(Value::as_array)
            .is_some_and(|s| !s.is_empty());
        if in_span {
            inside += 1;
            let rid = request_id_of(l).unwrap_or_else(|| panic!("a line without a request: {l}"));
            assert!(ids.iter().any(|(r, _, _)| *r == rid), "{l}");
        }
    }
    assert!(
        inside > ids.len() * 2,
        "debug lines were captured ({inside})"
    );
}

/// The OTLP spans a receiver got, flattened: (instance, trace id, span id, parent, name).
#[derive(Clone, Debug)]
struct Span {
    instance: String,
    trace: String,
    id: String,
    parent: String,
    name: String,
    /// Attributes, every value as text.
    attrs: HashMap<String, String>,
}

/// OTLP JSON attributes (`[{key, value: {stringValue | intValue | …}}]`) as text.
fn attributes(v: &Value) -> HashMap<String, String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| {
            let value = a["value"].as_object()?.values().next()?;
            let text = match value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            Some((a["key"].as_str()?.to_owned(), text))
        })
        .collect()
}

/// A minimal OTLP/HTTP JSON receiver (`POST /v1/traces`).
async fn receiver() -> (String, Arc<Mutex<Vec<Span>>>) {
    let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
    let s2 = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let spans = s2.clone();
            async move {
                let v: Value = serde_json::from_slice(&body).expect("OTLP JSON");
                for rs in v["resourceSpans"].as_array().into_iter().flatten() {
                    let instance = rs["resource"]["attributes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|a| a["key"] == "service.instance.id")
                        .and_then(|a| a["value"]["stringValue"].as_str())
                        .unwrap_or("")
                        .to_owned();
                    for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                        for sp in ss["spans"].as_array().into_iter().flatten() {
                            let s = |k: &str| sp[k].as_str().unwrap_or("").to_ascii_lowercase();
                            spans.lock().unwrap().push(Span {
                                instance: instance.clone(),
                                trace: s("traceId"),
                                id: s("spanId"),
                                parent: s("parentSpanId"),
                                name: sp["name"].as_str().unwrap_or("").to_owned(),
                                attrs: attributes(&sp["attributes"]),
                            });
                        }
                    }
                }
                ([("content-type", "application/json")], "{}")
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    (format!("http://{addr}"), spans)
}

fn replica_toml(g: &Garage, me: u16, peers: &[u16], otlp: &str) -> String {
    let mut c = process_config(g);
    c.origin.id = "traces".into();
    c.cluster.listen = format!("127.0.0.1:{me}").parse().unwrap();
    c.cluster.advertise = Some(format!("127.0.0.1:{me}"));
    c.cluster.peers = peers.iter().map(|q| format!("127.0.0.1:{q}")).collect();
    c.cluster.secret = Some("trace-test-secret-0123456789".into());
    c.telemetry.otlp_endpoint = Some(otlp.to_owned());
    common::fixture::toml(&c)
}

/// A GET on replica A for a chunk replica B owns is one trace: the client's span, A's request,
/// A's call to B, B's internal fill, B's origin GET — with every parent link right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_through_a_peer_is_one_trace_across_both_replicas() {
    use shoal::cluster::rendezvous::{owner, Member};
    use shoal::model::ChunkKey;
    let g = garage();
    let c = client(&g.endpoint);
    let b = bucket(&c, "traces").await;
    let (otlp, spans) = receiver().await;
    let ports = [free_port(), free_port()];
    let members: Vec<Member> = ports
        .iter()
        .map(|&p| Member {
            ip: "127.0.0.1".parse().unwrap(),
            port: p,
        })
        .collect();
    // A one-chunk object whose chunk replica B (ports[1]) owns.
    let data = patterned(MIB / 2, 9);
    let mut key = None;
    for i in 0..64 {
        let k = format!("obj-{i}");
        put(&c, &b, &k, data.clone()).await;
        let etag = c
            .head_object()
            .bucket(&b)
            .key(&k)
            .send()
            .await
            .unwrap()
            .e_tag()
            .unwrap()
            .trim_matches('"')
            .to_owned();
        let chunk = ChunkKey {
            origin_id: "traces".into(),
            bucket: b.as_str().into(),
            key: k.as_str().into(),
            etag: etag.into(),
            chunk_size: MIB as u64,
            index: 0,
        };
        if owner(&members, &chunk.path()) == Some(&members[1]) {
            key = Some(k);
            break;
        }
    }
    let key = key.expect("some key's chunk is owned by B");
    let env = [("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")];
    let a = ShoalProcess::start_with_env(&replica_toml(g, ports[0], &ports, &otlp), &env);
    let b_proc = ShoalProcess::start_with_env(&replica_toml(g, ports[1], &ports, &otlp), &env);
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let r = reqwest::Client::new()
        .get(format!("{}/{b}/{key}", a.s3))
        .header("traceparent", format!("00-{trace}-{client_span}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(cache_of(&r), "peer");
    assert_eq!(r.bytes().await.unwrap(), data);

    let (a_id, b_id) = (
        format!("127.0.0.1:{}", ports[0]),
        format!("127.0.0.1:{}", ports[1]),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let got = loop {
        let got: Vec<Span> = spans
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.trace == trace)
            .cloned()
            .collect();
        let done = got.iter().any(|s| s.name == "origin_get")
            && got.iter().any(|s| s.name == "GET" && s.instance == a_id);
        if done || Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let show = || {
        got.iter()
            .map(|s| format!("{} {} {}←{}", s.instance, s.name, s.id, s.parent))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let one = |name: &str, on: &str| -> Span {
        let m: Vec<&Span> = got
            .iter()
            .filter(|s| s.name == name && s.instance == on)
            .collect();
        assert_eq!(m.len(), 1, "one {name} span on {on}:\n{}", show());
        m[0].clone()
    };
    let by_id: HashMap<&str, &Span> = got.iter().map(|s| (s.id.as_str(), s)).collect();
    let descends = |s: &Span, ancestor: &Span| {
        let mut cur = s;
        while let Some(p) = by_id.get(cur.parent.as_str()) {
            if p.id == ancestor.id {
                return true;
            }
            cur = p;
        }
        false
    };
    let request = one("GET", &a_id);
    assert_eq!(
        request.parent, client_span,
        "the client's traceparent is the root"
    );
    let peer_fill = one("peer_fill", &a_id);
    assert!(descends(&peer_fill, &request), "{}", show());
    let internal = one("internal_fill", &b_id);
    assert_eq!(
        internal.parent,
        peer_fill.id,
        "B continues A's call:\n{}",
        show()
    );
    let origin_get = one("origin_get", &b_id);
    assert!(descends(&origin_get, &internal), "{}", show());
    // The spans say what happened: where A's chunk came from, which origin attempt this was,
    // how it ended and what it carried.
    let a_chunk = one("chunk", &a_id);
    assert_eq!(a_chunk.attrs["source"], "peer", "{:?}", a_chunk.attrs);
    assert_eq!(one("chunk", &b_id).attrs["source"], "origin");
    assert_eq!(origin_get.attrs["outcome"], "ok");
    assert_eq!(origin_get.attrs["bytes"], data.len().to_string());
    assert_eq!(one("attempt", &b_id).attrs["number"], "1");
    assert_eq!(request.attrs["cache"], "peer");
    assert_eq!(request.attrs["http.response.status_code"], "200");
    assert!(
        !got.iter()
            .any(|s| s.name == "origin_get" && s.instance == a_id),
        "A did not ask the origin:\n{}",
        show()
    );
    let instances: std::collections::BTreeSet<&str> =
        got.iter().map(|s| s.instance.as_str()).collect();
    assert_eq!(instances.len(), 2, "{}", show());
    for name in [
        "metadata",
        "chunk",
        "attempt",
        "queue_wait",
        "budget_wait",
        "commit",
    ] {
        assert!(
            got.iter().any(|s| s.name == name),
            "no {name} span:\n{}",
            show()
        );
    }
    drop((a, b_proc));
}

/// The exporter never holds a request: with the collector's port closed, or a collector that
/// accepts and never answers, GETs are answered (their latency is in `make bench`).
#[test]
fn an_unreachable_or_stalled_collector_never_blocks_requests() {
    let g = garage();
    let rt = tokio::runtime::Runtime::new().unwrap();
    // A "collector" that accepts connections and never reads or answers.
    let stalled = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let stalled_addr = stalled.local_addr().unwrap();
    let closed = format!("http://127.0.0.1:{}", free_port());
    let b = rt.block_on(async {
        let c = client(&g.endpoint);
        let b = bucket(&c, "otlpdown").await;
        put(&c, &b, "obj", patterned(64 << 10, 4)).await;
        b
    });
    for otlp in [closed, format!("http://{stalled_addr}")] {
        let mut cfg = process_config(g);
        cfg.chunk = Default::default();
        cfg.telemetry.otlp_endpoint = Some(otlp.clone());
        let toml = common::fixture::toml(&cfg);
        let shoal = ShoalProcess::start(&toml);
        rt.block_on(async {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap();
            // Enough spans to fill the export queue many times over.
            for _ in 0..300 {
                let r = http
                    .get(format!("{}/{b}/obj", shoal.s3))
                    .send()
                    .await
                    .expect("answered while the collector is down");
                assert_eq!(r.status(), 200);
                assert_eq!(r.bytes().await.unwrap().len(), 64 << 10);
            }
        });
    }
    drop(stalled);
}
