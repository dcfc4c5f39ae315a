//! Shoal's layers on a plain axum app, without the rest of Shoal (it builds with
//! `default-features = false`, which compiles the layers alone).
//!
//! | route | layer | try |
//! |---|---|---|
//! | `/models/{name}` | `SingleflightLayer::http()` | many concurrent GETs of one name render it once |
//! | `/objects/{name}` | `NegativeCacheLayer::http()` | a 404 is answered from memory for its TTL |
//! | `/downloads/{name}` | `ConcurrencyLimitLayer::http(2)` | the 3rd slow download waits, the 11th gets 503 |
//! | `/proxy/{name}` | `RetryUntilCommitLayer::http(..)` on a hyper client | an upstream that resets mid-body is resumed |
//! | `/blob/{name}` | `PeerRoutingLayer::http(..)` | answered by the peer that owns it, here if the peer fails |
//!
//! ```sh
//! cargo run --example layers_axum --no-default-features
//! for i in $(seq 20); do curl -s http://127.0.0.1:3000/models/a | wc -c & done; wait
//! curl -i http://127.0.0.1:3000/objects/missing
//! curl -s http://127.0.0.1:3000/proxy/blob | sha256sum   # the upstream breaks every other body
//! ```
//!
//! `tests/layers.rs` starts these same apps on loopback and checks each behaviour over HTTP.

use axum::body::Body;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{BoxError, Router};
use bytes::Bytes;
use futures_util::{stream, StreamExt};
use http_body_util::Empty;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use shoal_layers::http::{RequestHead, ResponseBody};
use shoal_layers::limit::http::HttpConcurrencyLimitLayer;
use shoal_layers::retry::http::RetryError;
use shoal_layers::{
    NegativeCacheLayer, PeerRoutingLayer, RetryPolicy, RetryUntilCommitLayer, SingleflightLayer,
};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tower::util::{BoxCloneSyncService, MapRequestLayer};
use tower::{ServiceBuilder, ServiceExt};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

/// Counts requests that reached some point.
#[derive(Clone, Default)]
pub struct Counter(Arc<AtomicUsize>);

impl Counter {
    /// One more.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
    /// How many so far.
    pub fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// Deterministic bytes for `name`, so a client can check what it got.
pub fn content(name: &str, len: usize) -> Bytes {
    let seed = name
        .bytes()
        .fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32));
    (0..len)
        .map(|i| (seed.wrapping_add(i as u32).wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect()
}

/// A switch a handler waits on (always on in `main`; tests flip it).
pub fn open() -> watch::Receiver<bool> {
    watch::channel(true).1
}

// ---- Singleflight ----------------------------------------------------------------------

/// What `/models` needs: a count of renders, a count of arrivals, and a switch that holds
/// renders back until it is on.
#[derive(Clone)]
pub struct Models {
    /// Calls that reached the render handler.
    pub renders: Counter,
    /// Requests that reached the route, before the singleflight layer.
    pub arrivals: Counter,
    /// Renders wait for this to be `true`.
    pub hold: watch::Receiver<bool>,
}

/// The size of a rendered model.
pub const MODEL_LEN: usize = 1 << 20;

async fn render(State(m): State<Models>, Path(name): Path<String>) -> Response {
    m.renders.inc();
    let _ = m.hold.clone().wait_for(|on| *on).await;
    // The body is produced over time, so joiners stream it as it arrives.
    let data = content(&name, MODEL_LEN);
    let pieces = (0..16).map(move |i| data.slice(i * (MODEL_LEN / 16)..(i + 1) * (MODEL_LEN / 16)));
    let body = stream::iter(pieces).then(|p| async move {
        tokio::time::sleep(Duration::from_millis(5)).await;
        Ok::<_, std::io::Error>(p)
    });
    (
        [(header::CONTENT_LENGTH, MODEL_LEN.to_string())],
        Body::from_stream(body),
    )
        .into_response()
}

/// `/models/{name}`: an expensive render, coalesced by `SingleflightLayer::http()`.
pub fn models(m: Models) -> Router {
    let arrivals = m.arrivals.clone();
    Router::new()
        .route("/models/{name}", get(render))
        .with_state(m)
        .layer(SingleflightLayer::http())
        .layer(MapRequestLayer::new(move |r: Request<Body>| {
            arrivals.inc();
            r
        }))
}

// ---- NegativeCache ---------------------------------------------------------------------

async fn lookup(State(calls): State<Counter>, Path(name): Path<String>) -> Response {
    calls.inc();
    if name.starts_with("here") {
        (StatusCode::OK, "found\n").into_response()
    } else {
        (StatusCode::NOT_FOUND, format!("no object named {name}\n")).into_response()
    }
}

/// `/objects/{name}`: a lookup whose 404s `NegativeCacheLayer::http()` remembers for `ttl`.
pub fn objects(calls: Counter, ttl: Duration) -> Router {
    Router::new()
        .route("/objects/{name}", get(lookup))
        .with_state(calls)
        .layer(NegativeCacheLayer::http().negative_ttl(ttl))
}

// ---- ConcurrencyLimit ------------------------------------------------------------------

/// A download: its first piece at once, the rest when `release` is on — a slow body that
/// holds its slot until it ends.
async fn download(
    State(release): State<watch::Receiver<bool>>,
    Path(name): Path<String>,
) -> Response {
    let data = content(&name, 64 * 1024);
    let (head, tail) = (data.slice(..1024), data.slice(1024..));
    let rest = async move {
        let _ = release.clone().wait_for(|on| *on).await;
        Ok::<_, std::io::Error>(tail)
    };
    let body = stream::iter([Ok(head)]).chain(stream::once(rest));
    (
        [(header::CONTENT_LENGTH, data.len().to_string())],
        Body::from_stream(body),
    )
        .into_response()
}

/// `/downloads/{name}`: slow bodies behind `limit` (`ConcurrencyLimitLayer::http(..)`), with
/// tower-http's trace and timeout layers around it, as an app would compose them.
pub fn downloads(limit: HttpConcurrencyLimitLayer, release: watch::Receiver<bool>) -> Router {
    Router::new()
        .route("/downloads/{name}", get(download))
        .with_state(release)
        .layer(
            ServiceBuilder::new()
                .layer(TraceLayer::new_for_http())
                .layer(TimeoutLayer::with_status_code(
                    StatusCode::REQUEST_TIMEOUT,
                    Duration::from_secs(60),
                ))
                .layer(limit),
        )
}

/// The same, with tower's `LoadShed` above the limit: a request that finds no free slot is
/// answered 503 at once rather than queued, because the limit's `poll_ready` says so.
pub fn downloads_shedding(
    limit: HttpConcurrencyLimitLayer,
    release: watch::Receiver<bool>,
) -> Router {
    Router::new()
        .route("/downloads/{name}", get(download))
        .with_state(release)
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(|e: BoxError| async move {
                    (StatusCode::SERVICE_UNAVAILABLE, format!("shed: {e}\n"))
                }))
                .load_shed()
                .layer(limit),
        )
}

// ---- RetryUntilCommit ------------------------------------------------------------------

/// An upstream that serves `/blob/{name}` with an `ETag`, honours `Range` and `If-Match`, and
/// breaks the body of the next `breaks` GETs half-way (the connection is cut).
#[derive(Clone)]
pub struct Upstream {
    /// The object served.
    pub data: Bytes,
    /// Its entity tag.
    pub etag: &'static str,
    /// Bodies still to break.
    pub breaks: Arc<AtomicUsize>,
    /// Every request's headers, in order.
    pub seen: Arc<Mutex<Vec<HeaderMap>>>,
    /// Whether the object is overwritten (other bytes, `ETag` `"v2"`) when a body breaks.
    pub overwrite_on_break: bool,
    /// Whether `If-Match` is obeyed (some proxies and stores ignore it).
    pub honours_if_match: bool,
    overwritten: Arc<std::sync::atomic::AtomicBool>,
}

impl Upstream {
    /// The size of the upstream's object.
    pub const LEN: usize = 4 << 20;

    /// An upstream whose next `breaks` bodies break.
    pub fn new(breaks: usize) -> Self {
        Upstream {
            data: content("blob", Self::LEN),
            etag: "\"v1\"",
            breaks: Arc::new(AtomicUsize::new(breaks)),
            seen: Arc::default(),
            overwrite_on_break: false,
            honours_if_match: true,
            overwritten: Arc::default(),
        }
    }

    /// The object as it is now: `(bytes, etag)`.
    pub fn current(&self) -> (Bytes, &'static str) {
        if self.overwritten.load(Ordering::SeqCst) {
            (content("blob v2", Self::LEN), "\"v2\"")
        } else {
            (self.data.clone(), self.etag)
        }
    }
}

fn range_of(h: &HeaderMap, len: usize) -> Option<(usize, usize)> {
    let spec = h
        .get(header::RANGE)?
        .to_str()
        .ok()?
        .strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    let a: usize = a.parse().ok()?;
    let b: usize = if b.is_empty() {
        len - 1
    } else {
        b.parse::<usize>().ok()?.min(len - 1)
    };
    (a <= b).then_some((a, b))
}

async fn blob(State(up): State<Upstream>, headers: HeaderMap) -> Response {
    up.seen
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(headers.clone());
    let (data, etag) = up.current();
    if let Some(m) = headers.get(header::IF_MATCH) {
        if up.honours_if_match && m.as_bytes() != etag.as_bytes() {
            return StatusCode::PRECONDITION_FAILED.into_response();
        }
    }
    let len = data.len();
    let (status, (a, b)) = match range_of(&headers, len) {
        Some(r) => (StatusCode::PARTIAL_CONTENT, r),
        None => (StatusCode::OK, (0, len - 1)),
    };
    let part = data.slice(a..=b);
    let breaks = up
        .breaks
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if breaks && up.overwrite_on_break {
        up.overwritten.store(true, Ordering::SeqCst);
    }
    let body = if breaks {
        // Half the body, a pause so it is sent, then an error: hyper cuts the connection.
        let half = part.slice(..part.len() / 2);
        let reset = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "upstream reset",
            ))
        };
        Body::from_stream(stream::iter([Ok(half)]).chain(stream::once(reset)))
    } else {
        Body::from(part.clone())
    };
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    h.insert(header::ETAG, HeaderValue::from_static(etag));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(part.len()));
    if status == StatusCode::PARTIAL_CONTENT {
        let cr = format!("bytes {a}-{b}/{len}");
        h.insert(
            header::CONTENT_RANGE,
            HeaderValue::try_from(cr).expect("ascii"),
        );
    }
    r
}

/// The flaky upstream as an app.
pub fn upstream(up: Upstream) -> Router {
    Router::new()
        .route("/blob/{name}", get(blob))
        .with_state(up)
}

/// The client the proxy uses: hyper's, retried and resumed by `RetryUntilCommitLayer::http`.
pub type UpstreamClient =
    BoxCloneSyncService<Request<Body>, http::Response<ResponseBody>, RetryError>;

/// A hyper client wrapped in the retry layer.
pub fn upstream_client() -> UpstreamClient {
    let client = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let policy = RetryPolicy {
        attempts: 4,
        backoff_initial: Duration::from_millis(20),
        ..RetryPolicy::default()
    };
    BoxCloneSyncService::new(
        ServiceBuilder::new()
            .layer(RetryUntilCommitLayer::http(policy))
            .service(client),
    )
}

async fn forward(
    State((client, to)): State<(UpstreamClient, SocketAddr)>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    let mut req = Request::get(format!("http://{to}/blob/{name}"));
    if let Some(r) = headers.get(header::RANGE) {
        req = req.header(header::RANGE, r);
    }
    let Ok(req) = req.body(Body::empty()) else {
        return (StatusCode::BAD_REQUEST, "bad name\n").into_response();
    };
    match client.oneshot(req).await {
        Ok(r) => r.map(Body::new),
        Err(e) => (StatusCode::BAD_GATEWAY, format!("{e}\n")).into_response(),
    }
}

/// `/proxy/{name}`: forwards to the upstream at `to` through [`upstream_client`].
pub fn proxy(to: SocketAddr) -> Router {
    Router::new()
        .route("/proxy/{name}", get(forward))
        .with_state((upstream_client(), to))
}

// ---- PeerRouting -----------------------------------------------------------------------

/// A replica: serves `/blob/{name}` from its own copy (`local`, which honours `Range` and
/// `If-Match`), but asks `peer` first when there is one (`PeerRoutingLayer::http`).
pub fn replica(local: Upstream, peer: Option<SocketAddr>) -> Router {
    let client =
        Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(HttpConnector::new());
    Router::new()
        .route("/blob/{name}", get(blob))
        .with_state(local)
        .layer(PeerRoutingLayer::http(move |_: &RequestHead| peer, client))
}

/// Serves `app` on `addr`; returns the bound address.
pub async fn serve(app: Router, addr: &str) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(bound)
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let port = std::env::var("PORT").unwrap_or_else(|_| "3000".into());
    // An upstream that breaks a body every half second, for the proxy.
    let up = Upstream::new(1);
    let up_addr = serve(upstream(up.clone()), "127.0.0.1:0").await?;
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            up.breaks.store(1, Ordering::SeqCst);
        }
    });
    let app = Router::new()
        .merge(models(Models {
            renders: Counter::default(),
            arrivals: Counter::default(),
            hold: open(),
        }))
        .merge(objects(Counter::default(), Duration::from_secs(10)))
        .merge(downloads(
            shoal_layers::ConcurrencyLimitLayer::http(2).max_waiting(8),
            open(),
        ))
        .merge(proxy(up_addr))
        // `/blob/{name}` answered by a second replica that owns everything.
        .merge(replica(
            Upstream::new(0),
            Some(serve(replica(Upstream::new(0), None), "127.0.0.1:0").await?),
        ));
    let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}")).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await
}
