//! The internal fill protocol: `GET /internal/fill` between replicas.
//!
//! A replica that does not own a chunk asks the owner for it. The request carries the whole
//! chunk key, the object size and the byte range wanted, and a proof that the caller knows
//! `cluster.secret`: `x-shoal-peer: t=<unix seconds>;sig=<hex>`, the signature being
//! HMAC-SHA256 over the timestamp and the request's path and query. The secret itself never
//! travels, a captured request is useless after five minutes, and the check is constant-time.
//! A request without a valid proof gets 401 and a log line. (orca had no authentication here.)
//!
//! The owner serves the range from its store, or joins or starts the chunk's fill, through the
//! same chunk stack its own clients use, with routing switched off for the request (the loop
//! guard): a replica that does not think it owns the chunk answers 409 and never forwards. The
//! answer streams with `Content-Length`; the caller checks it, and falls back to a fill of its
//! own on 409, a connection error, a timeout, an error status or a short body.
//!
//! **Acknowledge at once, stream when there are bytes.** Whatever the owner can decide without
//! waiting (the proof, the request, whether it owns the chunk: 401, 400, 409) is answered as a
//! status. Everything else is acknowledged at once — `200` with the chunk's `Content-Length` —
//! and the bytes follow when the owner has them: from its store at once, or after it waited
//! for an origin slot and the origin's first byte. The caller therefore bounds the
//! *acknowledgement* by a short `cluster.peer_timeout` and the body by the origin's own
//! deadlines: a busy owner (queued behind its origin slots, or reading a slow origin) has
//! acknowledged and is waited for, so a chunk is still fetched from the origin once; a stopped
//! or wedged owner has not, and is [ejected](super::ejection) within `cluster.peer_timeout`.
//! Before this, both looked the same for `fill.queue_timeout + origin.timeout` per chunk.
//!
//! The price of the early acknowledgement: an error after it can only cut the body short
//! (hyper ends the response before its `Content-Length`). The caller treats a cut body as it
//! always did — the owner did not serve, fill here (continuing at the byte reached if bytes
//! came) — so nothing is lost: an origin 404 or 412 the owner met is met again by the local
//! fill, which answers the client with it, and a 503 `SlowDown` of the owner becomes a local
//! attempt with this replica's own origin slots. A cut body after an acknowledgement never
//! ejects the owner: it answered; its origin is what failed.

use super::ejection::Ejections;
use super::membership::Membership;
use super::rendezvous::Member;
use crate::error::Error;
use crate::layer::gate::Wait;
use crate::model::ByteStream;
use crate::model::{ChunkKey, MIN_CHUNK_SIZE};
use crate::read::chunk::ChunkRequest;
use crate::read::object::ChunkService;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use hmac::{Hmac, KeyInit, Mac};
use http::{HeaderValue, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sha2::Sha256;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tower::ServiceExt;

/// The proof header.
pub const AUTH_HEADER: &str = "x-shoal-peer";
/// How far a proof's timestamp may be from this replica's clock.
const MAX_SKEW_SECS: u64 = 300;
/// How long connecting to a peer may take (peers are on the same network). Within
/// `cluster.peer_timeout`, which bounds connecting and the acknowledgement together.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

type HmacSha256 = Hmac<Sha256>;

/// The shared secret, kept out of `Debug` output.
#[derive(Clone)]
pub struct Secret(Arc<[u8]>);

impl Secret {
    /// Wraps the configured secret.
    pub fn new(s: &str) -> Self {
        Secret(s.as_bytes().into())
    }

    fn mac(&self, t: u64, path_and_query: &str) -> HmacSha256 {
        // HMAC accepts keys of any length.
        let mut m = HmacSha256::new_from_slice(&self.0).unwrap_or_else(|_| {
            HmacSha256::new_from_slice(b"shoal").expect("a fixed key is a valid HMAC key")
        });
        m.update(t.to_string().as_bytes());
        m.update(b"\n");
        m.update(path_and_query.as_bytes());
        m
    }

    /// The proof header value for a request to `path_and_query` at time `t`.
    pub fn sign(&self, t: u64, path_and_query: &str) -> String {
        let sig = self.mac(t, path_and_query).finalize().into_bytes();
        format!("t={t};sig={}", hex(&sig))
    }

    /// Whether `header` proves knowledge of the secret for this request, now.
    pub fn verify(&self, header: &str, path_and_query: &str, now: u64) -> bool {
        let mut t = None;
        let mut sig = None;
        for part in header.split(';') {
            match part.trim().split_once('=') {
                Some(("t", v)) => t = v.parse::<u64>().ok(),
                Some(("sig", v)) => sig = unhex(v),
                _ => {}
            }
        }
        let (Some(t), Some(sig)) = (t, sig) else {
            return false;
        };
        if t.abs_diff(now) > MAX_SKEW_SECS {
            return false;
        }
        // Constant-time comparison.
        self.mac(t, path_and_query).verify_slice(&sig).is_ok()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

fn hex(b: &[u8]) -> String {
    use std::fmt::Write;
    b.iter()
        .fold(String::with_capacity(b.len() * 2), |mut s, x| {
            let _ = write!(s, "{x:02x}");
            s
        })
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

use crate::model::encode_component as enc;

/// The query string of an internal fill for `req` (fields in a fixed order).
pub fn encode(req: &ChunkRequest) -> String {
    let k = &req.key;
    let version = req
        .version_id
        .as_deref()
        .map(|v| format!("&version_id={}", enc(v)))
        .unwrap_or_default();
    format!(
        "origin_id={}&bucket={}&key={}&etag={}&chunk_size={}&index={}&object_size={}&start={}&end={}{version}",
        enc(&k.origin_id),
        enc(&k.bucket),
        enc(&k.key),
        enc(&k.etag),
        k.chunk_size,
        k.index,
        req.object_size,
        req.range.start,
        req.range.end
    )
}

/// Parses an internal fill query back into a request served on a peer's behalf.
pub fn decode(query: &str) -> Result<ChunkRequest, String> {
    let mut f: std::collections::HashMap<String, String> = Default::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_encoding::percent_decode_str(v)
            .decode_utf8()
            .map_err(|_| format!("`{k}` is not UTF-8"))?;
        f.insert(k.to_owned(), v.into_owned());
    }
    let s = |k: &str| f.get(k).cloned().ok_or_else(|| format!("missing `{k}`"));
    let n = |k: &str| -> Result<u64, String> {
        s(k)?.parse().map_err(|_| format!("`{k}` is not a number"))
    };
    let key = ChunkKey {
        origin_id: s("origin_id")?.into(),
        bucket: s("bucket")?.into(),
        key: s("key")?.into(),
        etag: s("etag")?.into(),
        chunk_size: n("chunk_size")?,
        index: n("index")?,
    };
    let object_size = n("object_size")?;
    let (start, end) = (n("start")?, n("end")?);
    if key.key.is_empty() || key.etag.is_empty() || key.bucket.is_empty() {
        return Err("bucket, key and etag must not be empty".into());
    }
    if key.chunk_size < MIN_CHUNK_SIZE {
        return Err(format!(
            "chunk_size {} is below the minimum",
            key.chunk_size
        ));
    }
    let len = key.expected_len(object_size);
    if len == 0 || start > end || end > len {
        return Err(format!(
            "range {start}..{end} is not inside chunk {} of a {object_size}-byte object",
            key.index
        ));
    }
    Ok(ChunkRequest {
        key,
        object_size,
        version_id: f.get("version_id").map(|v| v.as_str().into()),
        range: start..end,
        priority: None,
        wait: Wait::Default,
        from_peer: true,
        bypass_store: false,
        report: None,
    })
}

/// What the internal listener needs.
pub struct InternalState {
    /// The chunk stack (the same one the S3 front uses).
    pub chunks: ChunkService,
    /// Who owns what.
    pub membership: Membership,
    /// The shared secret.
    pub secret: Secret,
    /// This replica's origin id; a peer with another one is misconfigured.
    pub origin_id: Arc<str>,
    /// `origin.buckets` (empty = any): holds here as on the S3 front, so that knowing
    /// `cluster.secret` does not make this listener a relay for other buckets.
    pub buckets: Vec<String>,
}

/// The internal listener's router: `GET /internal/fill`.
pub fn router(state: Arc<InternalState>) -> Router {
    Router::new()
        .route("/internal/fill", get(fill))
        .with_state(state)
}

fn plain(status: StatusCode, msg: &str) -> Response {
    let mut r = Response::new(Body::from(format!("{msg}\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain"),
    );
    r
}

async fn fill(State(st): State<Arc<InternalState>>, req: Request) -> Response {
    let pq = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let proof = req
        .headers()
        .get(AUTH_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !st.secret.verify(proof, &pq, now_secs()) {
        tracing::warn!(
            path = %req.uri().path(),
            with_proof = !proof.is_empty(),
            "internal fill refused: no valid proof of cluster.secret"
        );
        return plain(StatusCode::UNAUTHORIZED, "unauthorized");
    }
    let creq = match decode(req.uri().query().unwrap_or("")) {
        Ok(r) => r,
        Err(e) => return plain(StatusCode::BAD_REQUEST, &format!("invalid chunk key: {e}")),
    };
    if creq.key.origin_id != st.origin_id {
        return plain(
            StatusCode::BAD_REQUEST,
            "origin_id differs from this replica's: the cluster is misconfigured",
        );
    }
    if !st.buckets.is_empty() && !st.buckets.iter().any(|b| **b == *creq.key.bucket) {
        tracing::warn!(bucket = %creq.key.bucket, "internal fill refused: bucket not in origin.buckets");
        return plain(StatusCode::FORBIDDEN, "bucket not allowed");
    }
    let path = creq.key.path();
    if st.membership.owner(&path) != st.membership.me() {
        return plain(StatusCode::CONFLICT, "{\"reason\":\"not_owner\"}");
    }
    let len = creq.range.end - creq.range.start;
    // A child of the asking replica's `peer_fill` span: one trace across replicas. It lasts
    // until the last byte is sent.
    let span = tracing::debug_span!(
        "internal_fill",
        otel.kind = "server",
        chunk = %creq.key.path(),
        range = ?creq.range
    );
    crate::telemetry::trace::accept_parent(&span, req.headers());
    // The acknowledgement goes out now; the chunk stack is asked when hyper first polls the
    // body, that is right after the headers are written (see the module docs). A failure from
    // here on cuts the body short, which the caller reads as "fill it yourself".
    let chunks = st.chunks.clone();
    let opened = tracing::Instrument::instrument(
        async move {
            match chunks.oneshot(creq).await {
                Ok(body) => body,
                Err(e) => {
                    // An origin 404/412 is found again by the caller's own fill; an origin
                    // outage or a 503 SlowDown here is worth a line on this side.
                    tracing::debug!(error = %e, "internal fill failed after its acknowledgement; the body is cut");
                    futures_util::stream::iter([Err(e)]).boxed()
                }
            }
        },
        span.clone(),
    );
    let body = futures_util::stream::once(opened).flatten().map(move |b| {
        let _ = &span;
        b
    });
    let mut r = Response::new(Body::from_stream(body));
    r.headers_mut()
        .insert(http::header::CONTENT_LENGTH, HeaderValue::from(len));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    r
}

/// How long a peer is waited for, at each step of an internal fill.
#[derive(Debug, Clone, Copy)]
pub struct PeerTimeouts {
    /// Connecting and the owner's acknowledgement (its response headers):
    /// `cluster.peer_timeout`. An owner that does not acknowledge in this time is ejected.
    pub ack: Duration,
    /// The first byte of the body after the acknowledgement: the owner may first wait for an
    /// origin slot and then for the origin (`fill.queue_timeout + origin.timeout`).
    pub first_byte: Duration,
    /// A body that stops moving (`origin.timeout`).
    pub idle: Duration,
}

/// Asks owners for chunks over `/internal/fill`: pooled keep-alive connections, a short bound
/// on the owner's acknowledgement, the origin's deadlines on its bytes, and no limit on a body
/// that keeps moving (only on one that stalls), so a slow large transfer is never cut for
/// being long. A peer that does not acknowledge, cannot be reached or answers 5xx is ejected
/// (see [`super::ejection`]): [`PeerClient::admits`] then sends its chunks to a local fill
/// until a probe succeeds.
#[derive(Clone)]
pub struct PeerClient {
    http: Client<HttpConnector, Empty<Bytes>>,
    membership: Membership,
    secret: Secret,
    timeouts: PeerTimeouts,
    ejections: Ejections,
}

impl PeerClient {
    /// A client that signs with `secret` and waits as `timeouts` say; ejections are counted
    /// in `metrics`.
    pub fn new(
        membership: Membership,
        secret: Secret,
        timeouts: PeerTimeouts,
        metrics: crate::telemetry::metrics::Metrics,
    ) -> Self {
        let mut conn = HttpConnector::new();
        conn.set_connect_timeout(Some(CONNECT_TIMEOUT.min(timeouts.ack)));
        conn.set_nodelay(true);
        conn.set_keepalive(Some(Duration::from_secs(30)));
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(32)
            .build(conn);
        let ejections = Ejections::new(membership.clone(), timeouts.ack + CONNECT_TIMEOUT, metrics);
        PeerClient {
            http,
            membership,
            secret,
            timeouts,
            ejections,
        }
    }

    /// Whether `peer` may be asked for a chunk now (it is not ejected, or this request is its
    /// probe). The route asks this, so an ejected owner's chunks are filled locally at once.
    pub fn admits(&self, peer: &Member) -> bool {
        self.ejections.admits(peer)
    }

    async fn fetch(self, peer: Member, req: ChunkRequest) -> Result<ByteStream, Error> {
        let asked = Instant::now();
        let addr = self.membership.address(&peer);
        let pq = format!("/internal/fill?{}", encode(&req));
        let want = req.range.end - req.range.start;
        let mut request = http::Request::get(format!("http://{addr}{pq}"))
            .header(AUTH_HEADER, self.secret.sign(now_secs(), &pq))
            .body(Empty::new())
            .map_err(|e| Error::Peer(format!("request: {e}").into()))?;
        // The owner's spans join this request's trace.
        crate::telemetry::trace::inject(request.headers_mut());
        let ack = self.timeouts.ack;
        let resp = match tokio::time::timeout(ack, self.http.request(request)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                let why = format!("{addr}: {e}");
                self.ejections.failed(&peer, asked, &why);
                return Err(Error::Peer(why.into()));
            }
            Err(_) => {
                let why =
                    format!("{addr}: no acknowledgement within {ack:?} (cluster.peer_timeout)");
                self.ejections.failed(&peer, asked, &why);
                return Err(Error::Peer(why.into()));
            }
        };
        let status = resp.status();
        if status.is_server_error() {
            let why = format!("{addr} answered {status}");
            self.ejections.failed(&peer, asked, &why);
            return Err(Error::Peer(why.into()));
        }
        // Any other answer, a 409 `not_owner` included, shows a live peer.
        self.ejections.succeeded(&peer);
        if status != StatusCode::OK {
            return Err(Error::Peer(format!("{addr} answered {status}").into()));
        }
        let len = resp
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if len != Some(want) {
            return Err(Error::Peer(
                format!("{addr} answered Content-Length {len:?} for {want} bytes").into(),
            ));
        }
        // After the acknowledgement, the origin's deadlines: the owner may be queued for an
        // origin slot and then wait for the origin before its first byte; after that, a body
        // that stops moving for `origin.timeout` has failed. Neither ejects the owner.
        let PeerTimeouts {
            first_byte, idle, ..
        } = self.timeouts;
        let body = resp.into_body().into_data_stream();
        let stream =
            futures_util::stream::unfold((body, first_byte), move |(mut body, wait)| async move {
                match tokio::time::timeout(wait, body.next()).await {
                    Ok(Some(Ok(b))) => Some((Ok(b), (body, idle))),
                    Ok(Some(Err(e))) => {
                        Some((Err(Error::Peer(format!("body: {e}").into())), (body, idle)))
                    }
                    Ok(None) => None,
                    Err(_) => Some((
                        Err(Error::Peer(format!("body stalled for {wait:?}").into())),
                        (body, idle),
                    )),
                }
            });
        Ok(stream.boxed())
    }
}

impl tower::Service<(Member, ChunkRequest)> for PeerClient {
    type Response = ByteStream;
    type Error = Error;
    type Future = BoxFuture<'static, Result<ByteStream, Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, (peer, req): (Member, ChunkRequest)) -> Self::Future {
        let span = tracing::debug_span!(
            "peer_fill",
            otel.kind = "client",
            %peer,
            chunk = %req.key.path()
        );
        Box::pin(tracing::Instrument::instrument(
            self.clone().fetch(peer, req),
            span,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(crate::fuzz::config())]
        /// Fuzz: the internal fill's query parser never panics on hostile queries, and what it
        /// accepts is a range inside its chunk.
        #[test]
        fn fuzz_internal_fill_query(
            parts in proptest::collection::vec(prop_oneof![
                Just("origin_id=o".to_string()), Just("bucket=b".to_string()), Just("key=k".to_string()),
                Just("etag=e".to_string()), Just("chunk_size=1048576".to_string()),
                Just("chunk_size=18446744073709551615".to_string()), Just("index=0".to_string()),
                Just("index=18446744073709551615".to_string()), Just("object_size=5".to_string()),
                Just("object_size=18446744073709551615".to_string()), Just("start=0".to_string()),
                Just("end=5".to_string()), Just("end=18446744073709551615".to_string()),
                Just("version_id=%ff".to_string()), Just("%".to_string()), Just("=".to_string()),
                "[a-z_]{1,8}=[0-9a-z%]{0,8}",
            ], 0..14),
        ) {
            if let Ok(r) = decode(&parts.join("&")) {
                let len = r.key.expected_len(r.object_size);
                prop_assert!(r.range.start <= r.range.end && r.range.end <= len);
            }
        }
    }

    #[test]
    fn proofs_verify_only_for_the_same_secret_request_and_time() {
        let s = Secret::new("0123456789abcdef-secret");
        let pq = "/internal/fill?origin_id=o&bucket=b";
        let h = s.sign(1_000_000, pq);
        assert!(s.verify(&h, pq, 1_000_000));
        assert!(s.verify(&h, pq, 1_000_000 + MAX_SKEW_SECS));
        assert!(!s.verify(&h, pq, 1_000_000 + MAX_SKEW_SECS + 1), "too old");
        assert!(!s.verify(&h, "/internal/fill?origin_id=o&bucket=c", 1_000_000));
        assert!(!Secret::new("another secret of length").verify(&h, pq, 1_000_000));
        assert!(!s.verify("", pq, 1_000_000));
        assert!(!s.verify("t=1000000;sig=zz", pq, 1_000_000));
        assert!(!format!("{s:?}").contains("secret"));
    }

    #[test]
    fn requests_round_trip_through_the_query() {
        let req = ChunkRequest {
            key: ChunkKey {
                origin_id: "o-1".into(),
                bucket: "b".into(),
                key: "a key/with ünïcode & = + %".into(),
                etag: "\"abc\"-3".into(),
                chunk_size: 1 << 20,
                index: 2,
            },
            object_size: 5 << 20,
            version_id: Some("v 1/=".into()),
            range: 100..200,
            priority: None,
            wait: Wait::Default,
            from_peer: false,
            bypass_store: false,
            report: None,
        };
        let back = decode(&encode(&req)).unwrap();
        assert_eq!(back.key, req.key);
        assert_eq!((back.object_size, back.range.clone()), (5 << 20, 100..200));
        assert_eq!(back.version_id.as_deref(), Some("v 1/="));
        assert!(
            back.from_peer,
            "a decoded request is served on a peer's behalf"
        );
        for bad in [
            "origin_id=o&bucket=b&key=k&etag=e&chunk_size=1048576&index=9&object_size=10&start=0&end=1",
            "origin_id=o&bucket=b&key=k&etag=e&chunk_size=10&index=0&object_size=10&start=0&end=1",
            "origin_id=o&bucket=b&key=k&etag=e&chunk_size=1048576&index=0&object_size=10&start=5&end=11",
            "bucket=b",
        ] {
            assert!(decode(bad).is_err(), "{bad}");
        }
    }
}
