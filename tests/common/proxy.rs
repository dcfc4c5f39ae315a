//! A misbehaving HTTP proxy between Shoal and the real S3 server, for faults that only exist on
//! the wire: a proxy that drops `If-Match` (and re-signs the request, since `If-Match` is a
//! signed header — exactly what a careless caching proxy in front of an origin does), a body
//! that stops flowing half-way without the connection closing, a body cut (the connection
//! dropped) after some bytes, and a body rewritten — truncated, say — and re-framed with a
//! `Content-Length` that matches, so that nothing on the wire shows it is short.

use super::{ACCESS_KEY, REGION, SECRET_KEY};
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// One request the proxy forwarded.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub range: Option<String>,
    pub if_match: Option<String>,
}

/// A change made to a whole response body.
pub type Rewrite = Arc<dyn Fn(Bytes) -> Bytes + Send + Sync>;

#[derive(Default)]
struct Rules {
    strip_if_match: AtomicBool,
    /// (path substring, bytes): the next matching response body stops after that many bytes
    /// and never sends more; the connection stays open.
    stall: Mutex<Option<(String, usize)>>,
    /// (path substring, bytes, times): the next `times` matching GETs' response bodies fail
    /// after that many bytes (the connection is cut).
    cut: Mutex<Option<(String, usize, u32)>>,
    /// (path substring, times, rewrite): the next `times` matching GETs' response bodies are
    /// read whole, passed through `rewrite` and sent with a `Content-Length` that matches.
    rewrite: Mutex<Option<(String, u32, Rewrite)>>,
    /// Response bodies are paced to this many bytes per second.
    throttle: Mutex<Option<u64>>,
}

pub struct Proxy {
    pub endpoint: String,
    rules: Arc<Rules>,
    seen: Arc<Mutex<Vec<Seen>>>,
    _tasks: JoinSet<()>,
}

impl Proxy {
    /// Starts a proxy on a loopback port the OS picks, forwarding to `upstream`.
    pub async fn start(upstream: &str) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", l.local_addr().unwrap());
        let rules = Arc::new(Rules::default());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let upstream: Arc<str> = upstream.trim_end_matches('/').into();
        let mut tasks = JoinSet::new();
        let (r, s) = (rules.clone(), seen.clone());
        tasks.spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((sock, _)) = l.accept().await {
                let (r, s, c, u) = (r.clone(), s.clone(), client.clone(), upstream.clone());
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        forward(req, r.clone(), s.clone(), c.clone(), u.clone())
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(sock), svc)
                        .await;
                });
            }
        });
        Proxy {
            endpoint,
            rules,
            seen,
            _tasks: tasks,
        }
    }

    /// Drop `If-Match` from every request from now on (re-signing what is forwarded).
    pub fn strip_if_match(&self, on: bool) {
        self.rules.strip_if_match.store(on, Ordering::SeqCst);
    }

    /// The next response to a request whose path contains `path_part` stalls after `after`
    /// bytes of body, forever.
    pub fn stall_next(&self, path_part: &str, after: usize) {
        *self.rules.stall.lock().unwrap() = Some((path_part.to_owned(), after));
    }

    /// The next GET whose path contains `path_part` is cut (connection dropped) after `after`
    /// bytes of body.
    pub fn cut_next(&self, path_part: &str, after: usize) {
        self.cut_times(path_part, after, 1);
    }

    /// The next `times` GETs whose path contains `path_part` are cut (connection dropped)
    /// after `after` bytes of body.
    pub fn cut_times(&self, path_part: &str, after: usize, times: u32) {
        *self.rules.cut.lock().unwrap() = (times > 0).then(|| (path_part.to_owned(), after, times));
    }

    /// The next `times` GETs whose path contains `path_part` get their whole body passed
    /// through `rewrite`, with `Content-Length` set to match what is left (a proxy that
    /// truncated a body and framed it as complete).
    pub fn rewrite_times(
        &self,
        path_part: &str,
        times: u32,
        rewrite: impl Fn(Bytes) -> Bytes + Send + Sync + 'static,
    ) {
        *self.rules.rewrite.lock().unwrap() =
            (times > 0).then(|| (path_part.to_owned(), times, Arc::new(rewrite) as Rewrite));
    }

    /// Paces every response body to `rate` bytes per second (`None`: full speed).
    pub fn throttle(&self, rate: Option<u64>) {
        *self.rules.throttle.lock().unwrap() = rate;
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

type ProxyBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

async fn forward(
    req: hyper::Request<Incoming>,
    rules: Arc<Rules>,
    seen: Arc<Mutex<Vec<Seen>>>,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    upstream: Arc<str>,
) -> Result<hyper::Response<ProxyBody>, Infallible> {
    let (mut parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    let header =
        |h: &hyper::HeaderMap, n: &str| h.get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
    seen.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        path: pq.clone(),
        range: header(&parts.headers, "range"),
        if_match: header(&parts.headers, "if-match"),
    });
    parts.uri = format!("{upstream}{pq}").parse().unwrap();
    if rules.strip_if_match.load(Ordering::SeqCst) && parts.headers.remove("if-match").is_some() {
        resign(&mut parts);
    }
    let stall = {
        let mut st = rules.stall.lock().unwrap();
        match st.as_ref() {
            Some((p, n)) if parts.method == hyper::Method::GET && pq.contains(p.as_str()) => {
                let n = *n;
                *st = None;
                Some(n)
            }
            _ => None,
        }
    };
    let cut = {
        let mut c = rules.cut.lock().unwrap();
        match c.as_mut() {
            Some((p, n, times))
                if parts.method == hyper::Method::GET && pq.contains(p.as_str()) =>
            {
                let n = *n;
                *times -= 1;
                if *times == 0 {
                    *c = None;
                }
                Some(n)
            }
            _ => None,
        }
    };
    let rewrite = {
        let mut r = rules.rewrite.lock().unwrap();
        match r.as_mut() {
            Some((p, times, f))
                if parts.method == hyper::Method::GET && pq.contains(p.as_str()) =>
            {
                let f = f.clone();
                *times -= 1;
                if *times == 0 {
                    *r = None;
                }
                Some(f)
            }
            _ => None,
        }
    };
    let resp = match client
        .request(hyper::Request::from_parts(parts, Full::new(body)))
        .await
    {
        Ok(r) => r,
        Err(e) => {
            let b = Full::new(Bytes::from(e.to_string()))
                .map_err(|never| match never {})
                .boxed();
            let mut r = hyper::Response::new(b);
            *r.status_mut() = hyper::StatusCode::BAD_GATEWAY;
            return Ok(r);
        }
    };
    let (mut parts, body) = resp.into_parts();
    if let Some(f) = rewrite {
        let whole = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let out = f(whole);
        parts.headers.remove(hyper::header::TRANSFER_ENCODING);
        parts
            .headers
            .insert(hyper::header::CONTENT_LENGTH, out.len().into());
        let b = Full::new(out).map_err(|never| match never {}).boxed();
        return Ok(hyper::Response::from_parts(parts, b));
    }
    let data = body.into_data_stream();
    let rate = *rules.throttle.lock().unwrap();
    let frames = futures_util::stream::unfold(
        (data, stall.or(cut).unwrap_or(usize::MAX)),
        move |(mut data, left)| async move {
            if left == 0 && cut.is_some() {
                // The cut: the body fails, and with it the connection. First a pause, so that
                // the status line, the headers and the bytes before the cut are on the wire
                // (hyper drops what it has not flushed when a body fails): the client sees a
                // 200 whose body breaks, not a connection that never answered.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                return Some((
                    Err(std::io::Error::other("cut by the test proxy")),
                    (data, 0),
                ));
            }
            if left == 0 {
                // The stall: nothing more, ever, and the connection stays open.
                futures_util::future::pending::<()>().await;
            }
            match data.next().await? {
                Ok(mut b) => {
                    if let Some(rate) = rate {
                        let secs = b.len() as f64 / rate as f64;
                        tokio::time::sleep(std::time::Duration::from_secs_f64(secs)).await;
                    }
                    b.truncate(left);

                    let left = left - b.len();
                    Some((Ok(Frame::data(b)), (data, left)))
                }
                Err(e) => Some((Err(std::io::Error::other(e)), (data, 0))),
            }
        },
    );
    let body: ProxyBody = BodyExt::boxed(StreamBody::new(frames));
    Ok(hyper::Response::from_parts(parts, body))
}

/// Signs the request again with the test credentials, as an S3 client would have signed it
/// without the removed header.
fn resign(parts: &mut http::request::Parts) {
    use aws_sigv4::http_request::{
        sign, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
        UriPathNormalizationMode,
    };
    for h in ["authorization", "x-amz-date"] {
        parts.headers.remove(h);
    }
    let payload = parts
        .headers
        .get("x-amz-content-sha256")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("UNSIGNED-PAYLOAD")
        .to_owned();
    let identity =
        aws_credential_types::Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "t").into();
    let mut settings = SigningSettings::default();
    settings.percent_encoding_mode = PercentEncodingMode::Single;
    settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(REGION)
        .name("s3")
        .time(SystemTime::now())
        .settings(settings)
        .build()
        .unwrap()
        .into();
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    let uri = parts.uri.to_string();
    let signable = SignableRequest::new(
        parts.method.as_str(),
        uri.as_str(),
        headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        SignableBody::Precomputed(payload),
    )
    .unwrap();
    let (instructions, _) = sign(signable, &params).unwrap().into_parts();
    let taken = std::mem::replace(parts, http::Request::new(()).into_parts().0);
    let mut req = http::Request::from_parts(taken, ());
    instructions.apply_to_request_http1x(&mut req);
    *parts = req.into_parts().0;
}
