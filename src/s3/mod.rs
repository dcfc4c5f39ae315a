//! The S3 front: request parsing, dispatch, object headers and S3 errors.
//!
//! One fallback handler takes every request and dispatches by hand. S3's addressing (path
//! style, virtual-hosted style, sub-resources in the query string) does not fit a route table
//! well, and doing it in one place keeps every answer — success or error — carrying
//! `x-amz-request-id` and `Server: Shoal`.

pub mod auth;
pub mod conditional;

pub mod error;
pub mod list_cache;
pub mod range;
pub mod xml;

use crate::error::{Error, OriginError};
use crate::origin::{
    BucketInfo, BucketList, ListRequest, ListVersion, ObjectMeta, Origin, RawRequest, Selector,
};
use crate::read::object::ObjectService;
use crate::telemetry::metrics::{MetaResult, Metrics, Op, Report};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use axum::Router;
use conditional::Outcome;
use error::S3Error;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument;

/// Longest key S3 accepts (bytes of UTF-8).
const MAX_KEY_LEN: usize = 1024;
/// Largest header section accepted; S3 answers `RequestHeaderSectionTooLarge` past its limit
/// too. Signed SDK requests use well under 4 KiB.
const MAX_HEADER_BYTES: usize = 32 << 10;

/// What the S3 front needs.
pub struct S3State {
    /// Object reads.
    pub objects: ObjectService,
    /// LIST and bucket operations go straight to the origin.
    pub origin: Arc<dyn Origin>,
    /// LIST pages kept for `list.ttl` (off by default).
    pub lists: list_cache::ListCache,
    /// Bucket allowlist; empty = any.
    pub buckets: Vec<String>,
    /// Base domain for virtual-hosted-style addressing.
    pub domain: Option<String>,
    /// Client authentication; `None` when `auth.mode = "none"`.
    pub auth: Option<auth::Authenticator>,
    /// Request counts and latencies.
    pub metrics: Metrics,
}

/// What the front learns about a request while serving it, for the access log, the metrics
/// and `x-shoal-cache`.
struct Ctx {
    op: Op,
    report: Arc<Report>,
}

/// The S3 router.
pub fn router(state: Arc<S3State>) -> Router {
    guard_panics(Router::new().fallback(handle).with_state(state))
}

/// Turns a panic in a handler into 500 `InternalError` instead of a dropped connection (a
/// bug must still get an S3 answer, SPEC §1.4).
pub fn guard_panics(router: Router) -> Router {
    router.layer(tower_http::catch_panic::CatchPanicLayer::custom(
        |_panic: Box<dyn std::any::Any + Send>| {
            let rid = request_id();
            tracing::error!(request_id = %rid, "handler panicked");
            let e = S3Error::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "We encountered an internal error. Please try again.",
            );
            stamp(error_response(&e, false, "", &rid), &rid)
        },
    ))
}

/// The answer to a connection over `server.max_connections`: 503 `SlowDown`, which SDKs back
/// off and retry on, and `Connection: close`.
pub fn overloaded() -> Response {
    let rid = request_id();
    let e = S3Error::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "SlowDown",
        "Please reduce your request rate.",
    );
    let mut r = stamp(error_response(&e, false, "", &rid), &rid);
    r.headers_mut()
        .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// A request id: unique per process run, 16 hex digits like S3's.
fn request_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let seed = *SEED.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        h.finish()
    });
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{:016X}", seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// Decodes a percent-encoded path or query component; `plus` turns `+` into a space (query).
/// Errors on a `%` not followed by two hex digits and on invalid UTF-8.
fn decode(s: &str, plus: bool) -> Result<String, S3Error> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                let Some(v) = hex else {
                    return Err(S3Error::invalid_argument(
                        "Invalid percent-encoding in the request URI.",
                    ));
                };
                out.push(v);
                i += 3;
            }
            b'+' if plus => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out)
        .map_err(|_| S3Error::invalid_argument("The request URI is not valid UTF-8."))
}

/// Query parameters in order, decoded.
fn query_pairs(q: Option<&str>) -> Result<Vec<(String, String)>, S3Error> {
    let Some(q) = q else { return Ok(Vec::new()) };
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            Ok((decode(k, true)?, decode(v, true)?))
        })
        .collect()
}

struct Parsed {
    bucket: String,
    key: String,
    query: Vec<(String, String)>,
}

impl Parsed {
    fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    fn has(&self, name: &str) -> bool {
        self.query.iter().any(|(k, _)| k == name)
    }
    /// The first of `subs` named in the query (a sub-resource that is passed through).
    fn passthrough(&self, subs: &[&'static str]) -> Option<&'static str> {
        subs.iter().copied().find(|s| self.has(s))
    }
    /// The first query parameter that names a sub-resource or operation we do not serve.
    fn unsupported(&self, allowed: &[&str]) -> Option<&str> {
        self.query.iter().map(|(k, _)| k.as_str()).find(|k| {
            let lk = k.to_ascii_lowercase();
            !(allowed.contains(k)
                || lk == "x-id"
                || lk.starts_with("x-amz-")
                || lk.starts_with("response-"))
        })
    }
}

/// The request's authority: the absolute-form target's or HTTP/2's `:authority` (hyper puts
/// both in the URI), else the one `Host` header. The URI wins over `Host`, as RFC 9112 §3.2.2
/// says; two `Host` headers are a 400, never "the first one".
fn authority(req: &Request) -> Result<Option<&str>, S3Error> {
    let mut hosts = req.headers().get_all(http::header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(S3Error::invalid_argument(
            "The request has more than one Host header.",
        ));
    }
    if let Some(a) = req.uri().authority() {
        if a.as_str().contains('@') {
            return Err(S3Error::invalid_argument(
                "The request target may not carry user information.",
            ));
        }
        return Ok(Some(a.as_str()));
    }
    host.map(|h| {
        h.to_str()
            .map_err(|_| S3Error::invalid_argument("The Host header is not ASCII."))
    })
    .transpose()
}

fn parse(req: &Request, host: Option<&str>, domain: Option<&str>) -> Result<Parsed, S3Error> {
    let uri = req.uri();
    let path = decode(uri.path(), false)?;
    let query = query_pairs(uri.query())?;
    let host = host.map(|h| {
        h.rsplit_once(':')
            .map_or(h, |(a, _)| a)
            .to_ascii_lowercase()
    });
    let vhost_bucket = match (domain, host) {
        (Some(d), Some(h)) => h
            .strip_suffix(&format!(".{}", d.to_ascii_lowercase()))
            .filter(|b| !b.is_empty())
            .map(str::to_owned),
        _ => None,
    };
    let rest = path.strip_prefix('/').unwrap_or(&path);
    let (bucket, key) = match vhost_bucket {
        Some(b) => (b, rest.to_owned()),
        None => match rest.split_once('/') {
            Some((b, k)) => (b.to_owned(), k.to_owned()),
            None => (rest.to_owned(), String::new()),
        },
    };
    // Only `/` itself is ListBuckets. An empty bucket name before more path (`//etc/passwd`,
    // `//bucket/key`) names no bucket at all.
    if bucket.is_empty() && !rest.is_empty() {
        return Err(S3Error::new(
            StatusCode::BAD_REQUEST,
            "InvalidBucketName",
            "The specified bucket is not valid.",
        )
        .with("BucketName", ""));
    }
    Ok(Parsed { bucket, key, query })
}

async fn handle(State(st): State<Arc<S3State>>, req: Request) -> Response {
    let rid = request_id();
    let started = Instant::now();
    let method = req.method().clone();
    let resource = req.uri().path().to_owned();
    // Every line logged while serving the request carries its id (the span's field), and the
    // span is the root of the request's trace — or a child of the client's `traceparent`.
    let span = tracing::info_span!(
        "request",
        otel.name = %method,
        otel.kind = "server",
        request_id = %rid,
        method = %method,
        path = %resource,
        op = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        cache = tracing::field::Empty,
    );
    crate::telemetry::trace::accept_parent(&span, req.headers());
    let mut ctx = Ctx {
        op: Op::Other,
        report: Arc::default(),
    };
    let result = dispatch(&st, req, &mut ctx).instrument(span.clone()).await;
    let mut resp = stamp(
        result.unwrap_or_else(|e| error_response(&e, method == Method::HEAD, &resource, &rid)),
        &rid,
    );
    if matches!(ctx.op, Op::Get | Op::Head) && !resp.headers().contains_key(CACHE_HEADER) {
        // No body was opened (HEAD, 304, 412, an error, an empty object): the metadata
        // lookup is what happened.
        let v = match ctx.report.meta() {
            Some(MetaResult::Hit | MetaResult::NegativeHit) => Some("hit"),
            Some(MetaResult::Miss) => Some("miss"),
            None => None,
        };
        if let Some(v) = v {
            resp.headers_mut()
                .insert(CACHE_HEADER, HeaderValue::from_static(v));
        }
    }
    let status = resp.status().as_u16();
    // The header's value as one of the values Shoal sets (no copy per request).
    let cache = resp.headers().get(CACHE_HEADER).map_or("-", |v| {
        CACHE_VALUES
            .into_iter()
            .find(|c| c.as_bytes() == v.as_bytes())
            .unwrap_or("other")
    });
    span.record("op", ctx.op.as_str());
    span.record("http.response.status_code", status);
    span.record("cache", cache);
    let content_length = resp
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .filter(|_| method != Method::HEAD);
    let (parts, body) = resp.into_parts();
    let logged = crate::telemetry::access::Logged::new(
        body,
        crate::telemetry::access::Entry {
            span,
            started,
            op: ctx.op,
            status,
            cache,
            report: ctx.report,
            metrics: st.metrics.clone(),
        },
        content_length,
    );
    Response::from_parts(parts, Body::new(logged))
}

/// The header that tells a client where a GET's or HEAD's answer came from.
const CACHE_HEADER: &str = "x-shoal-cache";
/// Every value Shoal puts in [`CACHE_HEADER`] (the README's table).
const CACHE_VALUES: [&str; 6] = ["hit", "miss", "joined", "peer", "mixed", "bypass"];

/// Adds the headers every answer carries: `x-amz-request-id` and `Server: Shoal`.
fn stamp(mut resp: Response, rid: &str) -> Response {
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(rid) {
        h.insert("x-amz-request-id", v);
    }
    h.insert(http::header::SERVER, HeaderValue::from_static("Shoal"));
    resp
}

fn error_response(e: &S3Error, head: bool, resource: &str, rid: &str) -> Response {
    let mut b = Response::builder().status(e.status);
    for (k, v) in &e.headers {
        b = b.header(*k, v);
    }
    let body = if head {
        Body::empty()
    } else {
        b = b.header(http::header::CONTENT_TYPE, "application/xml");
        let extra: Vec<(&str, &str)> = e.extra.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Body::from(xml::error(e.code, &e.message, resource, rid, &extra))
    };
    b.body(body)
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

async fn dispatch(st: &S3State, req: Request, ctx: &mut Ctx) -> Result<Response, S3Error> {
    let method = req.method().clone();
    let head = method == Method::HEAD;
    let header_bytes: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if header_bytes > MAX_HEADER_BYTES {
        return Err(S3Error::new(
            StatusCode::BAD_REQUEST,
            "RequestHeaderSectionTooLarge",
            format!("Your request header section exceeds the maximum allowed size of {MAX_HEADER_BYTES} bytes."),
        ));
    }
    let host = authority(&req)?;
    // Who is asking, before anything else is looked at: a denied request learns nothing.
    let principal = match &st.auth {
        Some(a) => a
            .verify(
                &method,
                req.uri(),
                req.headers(),
                host,
                std::time::SystemTime::now(),
            )
            .map_err(|d| {
                tracing::info!(reason = ?d, "request denied");
                S3Error::from_denied(&d)
            })?,
        None => auth::Principal::anyone(),
    };
    if !matches!(method, Method::GET | Method::HEAD) {
        return Err(S3Error::method_not_allowed(method.as_str()));
    }
    let p = parse(&req, host, st.domain.as_deref())?;
    ctx.op = if p.bucket.is_empty() {
        Op::ListBuckets
    } else if !p.key.is_empty() {
        if head {
            Op::Head
        } else {
            Op::Get
        }
    } else if head {
        Op::HeadBucket
    } else if p.has("location") {
        Op::Location
    } else {
        Op::List
    };
    if p.bucket.is_empty() {
        if let Some(op) = p.unsupported(&[]) {
            return Err(S3Error::not_implemented(&format!("The `{op}` operation")));
        }
        let mut list = match st.origin.list_buckets().await {
            Ok(list) => list,
            // Credentials that may read the allowlisted buckets but not list them: the names
            // are known, their dates are not.
            Err(e) if !st.buckets.is_empty() => {
                tracing::info!(error = %e, "origin ListBuckets failed; answering the allowlist");
                BucketList::default()
            }
            Err(e) => return Err(S3Error::from_error(&Error::Origin(e), "", "")),
        };
        if !st.buckets.is_empty() {
            let mut allowed: Vec<BucketInfo> = st
                .buckets
                .iter()
                .map(|name| BucketInfo {
                    name: name.clone(),
                    created: list
                        .buckets
                        .iter()
                        .find(|b| &b.name == name)
                        .and_then(|b| b.created),
                })
                .collect();
            allowed.sort_by(|a, b| a.name.cmp(&b.name));
            list.buckets = allowed;
        }
        list.buckets.retain(|b| principal.may_read(&b.name));
        // The caller is the owner S3 shows; the origin's owner is Shoal's own account (with
        // Garage its access key id, on AWS the operator's account id), not the caller's.
        list.owner = principal
            .access_key_id
            .as_deref()
            .map(|k| (k.to_owned(), Some(k.to_owned())));
        return Ok(xml_response(xml::bucket_list(&list), head));
    }
    if !st.buckets.is_empty() && !st.buckets.contains(&p.bucket) {
        return Err(S3Error::access_denied().with("BucketName", p.bucket.clone()));
    }
    if !principal.may_read(&p.bucket) {
        return Err(
            S3Error::from_denied(&auth::Denied::Bucket).with("BucketName", p.bucket.clone())
        );
    }
    if p.key.is_empty() {
        if let Some(sub) = p.passthrough(BUCKET_PASSTHROUGH) {
            tracing::debug!(sub, "bucket sub-resource passed to the origin");
            ctx.op = Op::Other;
            return passthrough(st, &p, req.headers(), &method).await;
        }
        return bucket_op(st, &p, head).await;
    }
    if p.key.len() > MAX_KEY_LEN {
        return Err(S3Error::new(
            StatusCode::BAD_REQUEST,
            "KeyTooLongError",
            "Your key is too long",
        ));
    }
    if let Some(sub) = p.passthrough(OBJECT_PASSTHROUGH) {
        tracing::debug!(sub, "object sub-resource passed to the origin");
        ctx.op = Op::Other;
        return passthrough(st, &p, req.headers(), &method).await;
    }
    if is_sse_c(req.headers()) {
        // Encrypted with the client's own key: only the origin can read it, and its bytes
        // must never be kept where a request without the key could get them.
        return passthrough(st, &p, req.headers(), &method).await;
    }
    if let Some(op) = p.unsupported(&["versionId", "partNumber"]) {
        return Err(S3Error::not_implemented(&format!("GetObject with `?{op}`")));
    }
    object_op(st, &p, req.headers(), head, &ctx.report).await
}

/// Object sub-resources that are read-only and passed to the origin uncached.
const OBJECT_PASSTHROUGH: &[&str] = &[
    "tagging",
    "acl",
    "attributes",
    "legal-hold",
    "retention",
    "torrent",
    "uploadId",
];

/// Bucket sub-resources that are read-only and passed to the origin uncached.
const BUCKET_PASSTHROUGH: &[&str] = &[
    "versions",
    "versioning",
    "policyStatus",
    "policy",
    "acl",
    "tagging",
    "cors",
    "encryption",
    "lifecycle",
    "logging",
    "notification",
    "ownershipControls",
    "publicAccessBlock",
    "replication",
    "requestPayment",
    "website",
    "accelerate",
    "object-lock",
    "uploads",
    "intelligent-tiering",
    "inventory",
    "metrics",
    "analytics",
];

/// Whether a request carries SSE-C headers (`x-amz-server-side-encryption-customer-*`).
fn is_sse_c(h: &HeaderMap) -> bool {
    h.keys().any(|k| {
        k.as_str()
            .starts_with("x-amz-server-side-encryption-customer-")
    })
}

/// The client headers a passed-through request keeps: what changes the origin's answer.
/// Authentication, hop-by-hop and host headers are Shoal's own to set.
fn forwardable(h: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (k, v) in h {
        let n = k.as_str();
        let keep = matches!(
            n,
            "range"
                | "if-match"
                | "if-none-match"
                | "if-modified-since"
                | "if-unmodified-since"
                | "x-amz-object-attributes"
                | "x-amz-max-parts"
                | "x-amz-part-number-marker"
                | "x-amz-checksum-mode"
                | "x-amz-expected-bucket-owner"
                | "x-amz-request-payer"
        ) || n.starts_with("x-amz-server-side-encryption-customer-");
        if keep {
            out.append(k.clone(), v.clone());
        }
    }
    out
}

/// Sends a request Shoal does not cache to the origin, with Shoal's credentials, and passes
/// its answer on: status, headers and body as the origin gave them (its own error codes
/// included), marked `x-shoal-cache: bypass`.
async fn passthrough(
    st: &S3State,
    p: &Parsed,
    headers: &HeaderMap,
    method: &Method,
) -> Result<Response, S3Error> {
    let query = p
        .query
        .iter()
        .filter(|(k, _)| {
            let lk = k.to_ascii_lowercase();
            // The client's own presigned-URL authentication is not the origin's business.
            !(lk == "x-id" || (lk.starts_with("x-amz-") && auth::is_presign_param(&lk)))
        })
        .cloned()
        .collect();
    let answer = st
        .origin
        .passthrough(RawRequest {
            method: method.clone(),
            bucket: p.bucket.clone(),
            key: p.key.clone(),
            query,
            headers: forwardable(headers),
        })
        .await
        .map_err(|e| S3Error::from_error(&Error::Origin(e), &p.bucket, &p.key))?;
    let body = if *method == Method::HEAD {
        Body::empty()
    } else {
        Body::from_stream(answer.body)
    };
    let mut r = Response::new(body);
    *r.status_mut() = answer.status;
    *r.headers_mut() = answer.headers;
    r.headers_mut()
        .insert(CACHE_HEADER, HeaderValue::from_static("bypass"));
    Ok(r)
}

fn xml_response(body: String, head: bool) -> Response {
    let len = body.len();
    let b = Response::builder()
        .status(StatusCode::OK)
        .header(http::header::CONTENT_TYPE, "application/xml")
        .header(http::header::CONTENT_LENGTH, len);
    b.body(if head {
        Body::empty()
    } else {
        Body::from(body)
    })
    .unwrap_or_else(|_| Response::new(Body::empty()))
}

const LIST_PARAMS: &[&str] = &[
    "list-type",
    "prefix",
    "delimiter",
    "max-keys",
    "continuation-token",
    "start-after",
    "marker",
    "encoding-type",
    "fetch-owner",
];

async fn bucket_op(st: &S3State, p: &Parsed, head: bool) -> Result<Response, S3Error> {
    let map = |e: OriginError| S3Error::from_error(&Error::Origin(e), &p.bucket, "");
    if head {
        st.origin.head_bucket(&p.bucket).await.map_err(map)?;
        return Ok(Response::builder()
            .status(StatusCode::OK)
            .header("x-amz-bucket-region", st.origin.region())
            .body(Body::empty())
            .unwrap_or_else(|_| Response::new(Body::empty())));
    }
    if p.has("location") {
        st.origin.head_bucket(&p.bucket).await.map_err(map)?;
        return Ok(xml_response(xml::location(st.origin.region()), false));
    }
    if let Some(op) = p.unsupported(LIST_PARAMS) {
        return Err(S3Error::not_implemented(&format!(
            "The bucket sub-resource `?{op}`"
        )));
    }
    let version = match p.param("list-type") {
        None => ListVersion::V1,
        Some("2") => ListVersion::V2,
        Some(_) => return Err(S3Error::invalid_argument("Invalid list-type; expected 2.")),
    };
    let max_keys = match p.param("max-keys") {
        None => 1000,
        Some(v) => match v.parse::<i64>() {
            Ok(n) if n >= 0 => n.min(1000) as i32,
            _ => {
                return Err(S3Error::invalid_argument(
                    "max-keys must be a non-negative integer.",
                ))
            }
        },
    };
    let url = match p.param("encoding-type") {
        None => false,
        Some(v) if v.eq_ignore_ascii_case("url") => true,
        Some(_) => {
            return Err(S3Error::invalid_argument(
                "Invalid Encoding Method specified in Request",
            ))
        }
    };
    let opt = |k: &str| p.param(k).map(str::to_owned);
    let req = ListRequest {
        version,
        prefix: opt("prefix"),
        delimiter: opt("delimiter").filter(|d| !d.is_empty()),
        max_keys,
        continuation_token: if version == ListVersion::V2 {
            opt("continuation-token")
        } else {
            None
        },
        start_after: if version == ListVersion::V2 {
            opt("start-after")
        } else {
            None
        },
        marker: if version == ListVersion::V1 {
            opt("marker")
        } else {
            None
        },
        encoding_url: url,
        fetch_owner: p
            .param("fetch-owner")
            .is_some_and(|v| v.eq_ignore_ascii_case("true")),
    };
    let (page, from) = st
        .lists
        .list(&*st.origin, &p.bucket, &req)
        .await
        .map_err(map)?;
    let mut resp = xml_response(xml::list_result(&p.bucket, &req, &page), false);
    if st.lists.enabled() {
        let v = match from {
            list_cache::Listed::Origin => "miss",
            list_cache::Listed::Cache => "hit",
        };
        resp.headers_mut()
            .insert(CACHE_HEADER, HeaderValue::from_static(v));
    }
    Ok(resp)
}

/// The version and part a GET or HEAD names (`?versionId=`, `?partNumber=`).
fn selector(p: &Parsed) -> Result<Selector, S3Error> {
    let version_id = match p.param("versionId") {
        None => None,
        Some("") => {
            return Err(S3Error::invalid_argument(
                "Version id cannot be the empty string",
            ))
        }
        Some(v) => Some(v.into()),
    };
    let part_number = match p.param("partNumber") {
        None => None,
        Some(v) => match v.parse::<u32>() {
            Ok(n @ 1..=10_000) => Some(n),
            _ => {
                return Err(S3Error::invalid_argument(
                    "Part number must be an integer between 1 and 10000, inclusive",
                )
                .with("ArgumentName", "partNumber".to_owned())
                .with("ArgumentValue", v.to_owned()))
            }
        },
    };
    Ok(Selector {
        version_id,
        part_number,
    })
}

/// The object headers of SPEC §1.1 (prepared once per cached metadata entry), with the
/// request's `response-*` overrides applied to this answer's copy only.
fn object_headers(meta: &ObjectMeta, p: &Parsed) -> HeaderMap {
    // A copy with room for what the response adds (length, range, cache status, request id…):
    // a cloned map would have none and grow twice.
    let prepared = meta.headers.get_or_init(|| meta_headers(meta));
    let mut h = HeaderMap::with_capacity(prepared.len() + 12);
    h.extend(prepared.iter().map(|(k, v)| (k.clone(), v.clone())));
    for (param, header) in [
        ("response-content-type", http::header::CONTENT_TYPE),
        ("response-content-language", http::header::CONTENT_LANGUAGE),
        ("response-expires", http::header::EXPIRES),
        ("response-cache-control", http::header::CACHE_CONTROL),
        (
            "response-content-disposition",
            http::header::CONTENT_DISPOSITION,
        ),
        ("response-content-encoding", http::header::CONTENT_ENCODING),
    ] {
        if let Some(Ok(v)) = p.param(param).map(HeaderValue::from_str) {
            h.insert(header, v);
        }
    }
    h
}

/// The headers that follow from the metadata alone (cached with it: [`ObjectMeta::headers`]).
fn meta_headers(meta: &ObjectMeta) -> HeaderMap {
    let mut h = HeaderMap::with_capacity(10 + meta.user_metadata.len());
    let mut put = |name: &str, value: Option<&str>| {
        if let (Ok(n), Some(Ok(v))) = (
            HeaderName::from_bytes(name.as_bytes()),
            value.map(HeaderValue::from_str),
        ) {
            h.insert(n, v);
        }
    };
    put("etag", Some(&format!("\"{}\"", meta.etag)));
    put("x-amz-version-id", meta.version_id.as_deref());
    let lm = meta.last_modified.map(conditional::format_date);
    put("last-modified", lm.as_deref());
    put("accept-ranges", Some("bytes"));
    put(
        "content-type",
        Some(
            meta.content_type
                .as_deref()
                .unwrap_or("binary/octet-stream"),
        ),
    );
    put("cache-control", meta.cache_control.as_deref());
    put("content-encoding", meta.content_encoding.as_deref());
    put("content-disposition", meta.content_disposition.as_deref());
    put("content-language", meta.content_language.as_deref());
    put("expires", meta.expires.as_deref());
    for (k, v) in &meta.user_metadata {
        put(&format!("x-amz-meta-{k}"), Some(v));
    }
    h
}

async fn object_op(
    st: &S3State,
    p: &Parsed,
    headers: &HeaderMap,
    head: bool,
    report: &Arc<Report>,
) -> Result<Response, S3Error> {
    let (bucket, key) = (p.bucket.as_str(), p.key.as_str());
    let sel = selector(p)?;
    let map = |e: &Error| match (e, &sel.version_id) {
        // A version that does not exist is S3's `NoSuchVersion`, not `NoSuchKey`.
        (Error::Origin(OriginError::NotFound), Some(v)) => S3Error::new(
            StatusCode::NOT_FOUND,
            "NoSuchVersion",
            "The specified version does not exist.",
        )
        .with("Key", key)
        .with("VersionId", v.to_string()),
        _ => S3Error::from_error(e, bucket, key),
    };
    if sel.part_number.is_some() && headers.contains_key(http::header::RANGE) {
        return Err(S3Error::invalid_request(
            "Cannot specify both Range header and partNumber query parameter",
        ));
    }
    let checksums_wanted = headers
        .get("x-amz-checksum-mode")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("enabled"));
    // One re-read of the metadata is allowed if the object changes before the first byte.
    let mut retried_etag = false;
    // A GET from byte 0 may learn a missing object's metadata from its first chunk's GET, and
    // a suffix range (`bytes=-N`) from the GET of those bytes (not a version or a part, and
    // not when the client wants the checksums a HEAD gives).
    let first_read = if head || !sel.is_current() || checksums_wanted {
        crate::read::meta::FirstRead::Unknown
    } else {
        match headers
            .get(http::header::RANGE)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
        {
            None => crate::read::meta::FirstRead::FirstChunk,
            Some(r) if r.starts_with("bytes=0-") => crate::read::meta::FirstRead::FirstChunk,
            Some(r) => match r.strip_prefix("bytes=-").map(|n| n.trim().parse::<u64>()) {
                Some(Ok(n)) if n > 0 => crate::read::meta::FirstRead::Suffix(n),
                _ => crate::read::meta::FirstRead::Unknown,
            },
        }
    };
    loop {
        let mut meta = st
            .objects
            .meta(bucket, key, &sel, Some(report), first_read)
            .await
            .map_err(|e| map(&e))?;
        if checksums_wanted && meta.checksums.is_none() {
            // Learned from a GET, which does not carry checksums: ask HEAD once.
            st.objects.invalidate(bucket, key, &sel, &meta.etag).await;
            meta = st
                .objects
                .meta(
                    bucket,
                    key,
                    &sel,
                    Some(report),
                    crate::read::meta::FirstRead::Unknown,
                )
                .await
                .map_err(|e| map(&e))?;
        }
        let mut base = object_headers(&meta, p);
        match conditional::evaluate(headers, &meta.etag, meta.last_modified) {
            Outcome::Proceed => {}
            Outcome::NotModified => {
                let mut r = Response::new(Body::empty());
                *r.status_mut() = StatusCode::NOT_MODIFIED;
                for name in ["etag", "last-modified"] {
                    if let Some(v) = base.remove(name) {
                        r.headers_mut().insert(name, v);
                    }
                }
                return Ok(r);
            }
            Outcome::Failed(condition) => return Err(S3Error::precondition_failed(condition)),
        }
        if let Some(n) = sel.part_number.and(meta.parts_count) {
            base.insert("x-amz-mp-parts-count", HeaderValue::from(n));
        }
        let range = match (sel.part_number, meta.part_range) {
            // A part is the byte range the origin named for it.
            (Some(_), Some((s, e))) => Some(range::ByteRange::From(s, Some(e))),
            _ => headers
                .get(http::header::RANGE)
                .and_then(|v| v.to_str().ok())
                .filter(|_| conditional::if_range_holds(headers, &meta.etag, meta.last_modified))
                .and_then(range::parse),
        };
        let resolved = range::resolve(range, meta.size);
        if checksums_wanted && matches!(resolved, range::Resolved::Full) {
            // S3 sends an object's checksums only with the whole object.
            for (k, v) in meta.checksums.iter().flatten() {
                if let (Ok(k), Ok(v)) = (
                    HeaderName::from_bytes(k.as_bytes()),
                    HeaderValue::from_str(v),
                ) {
                    base.insert(k, v);
                }
            }
        }
        let (status, start, end) = match resolved {
            range::Resolved::Unsatisfiable => return Err(S3Error::invalid_range(meta.size)),
            range::Resolved::Full => (StatusCode::OK, 0, meta.size.saturating_sub(1)),
            range::Resolved::Partial(s, e) => {
                base.insert(
                    http::header::CONTENT_RANGE,
                    HeaderValue::from_str(&format!("bytes {s}-{e}/{}", meta.size))
                        .map_err(|_| S3Error::invalid_request("bad range"))?,
                );
                (StatusCode::PARTIAL_CONTENT, s, e)
            }
        };
        let len = if meta.size == 0 { 0 } else { end - start + 1 };
        base.insert(http::header::CONTENT_LENGTH, HeaderValue::from(len));
        let body = if head || len == 0 {
            Body::empty()
        } else {
            match st
                .objects
                .open(bucket, key, &sel, &meta, start, end, report.clone())
                .await
            {
                Ok((s, cache)) => {
                    base.insert(CACHE_HEADER, HeaderValue::from_static(cache.as_str()));
                    Body::from_stream(s)
                }
                Err(Error::Origin(OriginError::EtagChanged)) if !retried_etag => {
                    // Nothing was sent yet: read the metadata again (`open` has forgotten the
                    // old version's) and serve the version the origin has now.
                    tracing::info!(bucket, key, "object changed at origin; re-reading metadata");
                    st.objects.invalidate(bucket, key, &sel, &meta.etag).await;
                    retried_etag = true;
                    continue;
                }
                Err(e) => return Err(map(&e)),
            }
        };
        let mut r = Response::new(body);
        *r.status_mut() = status;
        *r.headers_mut() = base;
        return Ok(r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn req(target: &str, hosts: &[&str]) -> Option<Request> {
        let mut b = http::Request::builder().uri(target);
        for h in hosts {
            b = b.header(http::header::HOST, HeaderValue::from_str(h).ok()?);
        }
        b.body(Body::empty()).ok()
    }

    #[test]
    fn the_authority_is_the_targets_then_the_one_host_header() {
        let r = req("/b/k", &["data.localhost"]).unwrap();
        assert_eq!(authority(&r).unwrap(), Some("data.localhost"));
        let r = req("http://other.localhost/k", &["data.localhost"]).unwrap();
        assert_eq!(authority(&r).unwrap(), Some("other.localhost"));
        let p = parse(&r, authority(&r).unwrap(), Some("localhost")).unwrap();
        assert_eq!((p.bucket.as_str(), p.key.as_str()), ("other", "k"));
        let r = req("/b/k", &["data.localhost", "other.localhost"]).unwrap();
        assert_eq!(authority(&r).unwrap_err().status, StatusCode::BAD_REQUEST);
        let r = req("http://u@other.localhost/k", &[]).unwrap();
        assert!(authority(&r).is_err());
    }

    #[test]
    fn an_empty_bucket_before_a_key_is_no_bucket() {
        for target in ["//etc/passwd", "//data/chaos/obj-04", "//"] {
            let r = req(target, &["shoal"]).unwrap();
            let e = parse(&r, Some("shoal"), None).err().expect(target);
            assert_eq!(e.code, "InvalidBucketName", "{target}");
        }
        let r = req("/", &["shoal"]).unwrap();
        assert!(parse(&r, Some("shoal"), None).unwrap().bucket.is_empty());
        // Virtual-hosted: a key may start with `/`; an empty host label is no bucket.
        let r = req("//k", &["b.localhost"]).unwrap();
        let p = parse(&r, Some("b.localhost"), Some("localhost")).unwrap();
        assert_eq!((p.bucket.as_str(), p.key.as_str()), ("b", "/k"));
        let r = req("/x/k", &[".localhost"]).unwrap();
        let p = parse(&r, Some(".localhost"), Some("localhost")).unwrap();
        assert_eq!((p.bucket.as_str(), p.key.as_str()), ("x", "k"));
    }

    fn hostile() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                Just("/".to_string()),
                Just("//".to_string()),
                Just("%".to_string()),
                Just("%2F".to_string()),
                Just("%00".to_string()),
                Just("%ff".to_string()),
                Just("+".to_string()),
                Just("?".to_string()),
                Just("&".to_string()),
                Just("=".to_string()),
                Just("..".to_string()),
                Just(":".to_string()),
                Just("@".to_string()),
                "[a-z0-9.-]{1,5}",
                "\\PC{0,3}",
            ],
            0..10,
        )
        .prop_map(|v| v.concat())
    }

    proptest! {
        #![proptest_config(crate::fuzz::config())]
        /// Fuzz: the S3 request parser (authority, path, query, virtual hosts) never panics on
        /// hostile targets and hosts, and never turns a path with more than `/` into
        /// ListBuckets.
        #[test]
        fn fuzz_request_parser(
            path in hostile(), host in hostile(), host2 in hostile(),
            absolute in any::<bool>(), two in any::<bool>(), vhost in any::<bool>(),
        ) {
            let target = if absolute { format!("http://{host}/{path}") } else { format!("/{path}") };
            let hosts: Vec<&str> = if two { vec![&host, &host2] } else { vec![&host] };
            let Some(r) = req(&target, &hosts) else { return Ok(()) };
            let Ok(h) = authority(&r) else { return Ok(()) };
            if let Ok(p) = parse(&r, h, vhost.then_some("localhost")) {
                if p.bucket.is_empty() {
                    prop_assert!(matches!(r.uri().path(), "/" | ""), "{}", r.uri());
                }
            }
        }
    }

    #[test]
    fn decoding_rejects_bad_escapes() {
        assert_eq!(decode("a%20b+c", false).unwrap(), "a b+c");
        assert_eq!(decode("a%20b+c", true).unwrap(), "a b c");
        assert!(decode("%zz", false).is_err());
        assert!(decode("%4", false).is_err());
        assert!(decode("%ff", false).is_err());
        assert_eq!(decode("%E2%9C%93", false).unwrap(), "✓");
    }

    #[tokio::test]
    async fn a_panicking_handler_is_a_500_internal_error() {
        use tower::ServiceExt;
        let app = guard_panics(Router::new().fallback(|| async {
            if true {
                panic!("bug");
            }
            "unreachable"
        }));
        let r = app
            .oneshot(http::Request::new(Body::empty()))
            .await
            .unwrap();
        assert_eq!(r.status(), 500);
        assert!(r.headers().contains_key("x-amz-request-id"));
        let body = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
        assert!(String::from_utf8_lossy(&body).contains("<Code>InternalError</Code>"));
    }

    #[test]
    fn the_access_log_knows_every_cache_status() {
        use crate::telemetry::metrics::CacheStatus::*;
        for c in [Hit, Miss, Joined, Peer, Mixed] {
            assert!(CACHE_VALUES.contains(&c.as_str()), "{c:?}");
        }
        assert!(CACHE_VALUES.contains(&"bypass"));
    }

    #[test]
    fn request_ids_differ() {
        assert_ne!(request_id(), request_id());
        assert_eq!(request_id().len(), 16);
    }
}
