//! The fault-injecting HTTP proxy between the Shoal replicas and Garage.
//!
//! Faults that only exist on the wire have to be made on the wire: a 503 `SlowDown` burst, a
//! body cut (the connection reset) part-way, a body that stops flowing while its connection
//! stays open, a slow answer, and an origin that is gone (the listening socket closed, so new
//! connections are refused, and every open connection reset). Requests keep their `Host`
//! header, so Garage verifies the replicas' signatures unchanged.

use crate::content::Rng;
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// What the proxy does to the requests it forwards.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    /// Forward everything untouched.
    Clean,
    /// Answer this share of requests 503 `SlowDown` without asking Garage.
    Errors(f64),
    /// Cut this share of object and listing bodies part-way (connection reset).
    Reset(f64),
    /// Stop this share of bodies part-way for `hold`, connection open, then cut them.
    Stall(f64, Duration),
    /// Hold every request this long (at least the first, at most the second) before
    /// forwarding it.
    Latency(Duration, Duration),
    /// Refuse connections; reset the open ones.
    Down,
    /// A lying origin: this share of listings cut short *with a matching Content-Length*
    /// (complete-looking and wrong). Not in the default rotation (see `CHAOS_EXTRA_FAULTS`).
    TruncateList(f64),
    /// A lying origin: one byte flipped in this share of object bodies, length and ETag
    /// intact. Nothing but a checksum could catch it, so it proves the harness's own checks
    /// (the run must fail). Not in the default rotation.
    CorruptBody(f64),
}

struct State {
    mode: Mutex<Mode>,
    down: watch::Sender<bool>,
    /// Requests affected, by what was done to them.
    effects: Mutex<BTreeMap<&'static str, u64>>,
    rng: Mutex<Rng>,
}

impl State {
    fn count(&self, what: &'static str) {
        *self.effects.lock().unwrap().entry(what).or_default() += 1;
    }
    fn chance(&self, p: f64) -> bool {
        self.rng.lock().unwrap().chance(p)
    }
    fn below(&self, n: u64) -> u64 {
        self.rng.lock().unwrap().below(n)
    }
}

pub struct FaultProxy {
    pub endpoint: String,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type ProxyBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;
type Upstream = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

impl FaultProxy {
    pub async fn start(upstream: &str) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let (down, _) = watch::channel(false);
        let state = Arc::new(State {
            mode: Mutex::new(Mode::Clean),
            down,
            effects: Mutex::default(),
            rng: Mutex::new(Rng::new(0x5EED_FA17)),
        });
        let client: Upstream = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build_http();
        let upstream: Arc<str> = upstream.trim_end_matches('/').into();
        let task = tokio::spawn(accept_loop(listener, addr, state.clone(), client, upstream));
        FaultProxy {
            endpoint: format!("http://{addr}"),
            state,
            task,
        }
    }

    pub fn set(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = mode;
        self.state.down.send_replace(mode == Mode::Down);
    }

    /// What was done to how many requests, so far.
    pub fn effects(&self) -> BTreeMap<&'static str, u64> {
        self.state.effects.lock().unwrap().clone()
    }
}

async fn accept_loop(
    mut listener: TcpListener,
    addr: SocketAddr,
    state: Arc<State>,
    client: Upstream,
    upstream: Arc<str>,
) {
    let mut down = state.down.subscribe();
    loop {
        if *down.borrow_and_update() {
            // Gone: nothing listens, so connecting is refused.
            drop(listener);
            while *down.borrow_and_update() {
                if down.changed().await.is_err() {
                    return;
                }
            }
            listener = loop {
                match TcpListener::bind(addr).await {
                    Ok(l) => break l,
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            };
        }
        let sock = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(_) => continue,
            },
            r = down.changed() => {
                if r.is_err() { return; }
                continue;
            }
        };
        let (state, client, upstream) = (state.clone(), client.clone(), upstream.clone());
        tokio::spawn(async move {
            let fd = sock.as_raw_fd();
            let mut down = state.down.subscribe();
            let svc = {
                let state = state.clone();
                hyper::service::service_fn(move |req| {
                    forward(req, state.clone(), client.clone(), upstream.clone())
                })
            };
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(sock), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = &mut conn => {}
                _ = async { while !*down.borrow_and_update() { if down.changed().await.is_err() { break } } } => {
                    // The origin went away under this connection: reset it, as a crashed
                    // server's kernel would. SO_LINGER 0 makes the close below an RST; the
                    // socket is still open (owned by `conn`) when it is set.
                    let l = libc::linger { l_onoff: 1, l_linger: 0 };
                    // SAFETY: `fd` is the open socket `conn` owns; setsockopt only reads `l`.
                    unsafe {
                        libc::setsockopt(
                            fd,
                            libc::SOL_SOCKET,
                            libc::SO_LINGER,
                            &l as *const libc::linger as *const libc::c_void,
                            std::mem::size_of::<libc::linger>() as libc::socklen_t,
                        );
                    }
                    state.count("reset_by_outage");
                }
            }
        });
    }
}

fn slow_down() -> hyper::Response<ProxyBody> {
    let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code>\
                <Message>Please reduce your request rate.</Message></Error>";
    let mut r = hyper::Response::new(
        Full::new(Bytes::from_static(body.as_bytes()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
    r.headers_mut()
        .insert("content-type", "application/xml".parse().unwrap());
    r
}

async fn forward(
    req: hyper::Request<Incoming>,
    state: Arc<State>,
    client: Upstream,
    upstream: Arc<str>,
) -> Result<hyper::Response<ProxyBody>, std::io::Error> {
    let mode = *state.mode.lock().unwrap();
    state.count("forwarded_or_faulted");
    match mode {
        Mode::Down => {
            state.count("refused_in_outage");
            return Err(std::io::Error::other("origin down"));
        }
        Mode::Errors(p) if state.chance(p) => {
            state.count("answered_503_slowdown");
            return Ok(slow_down());
        }
        Mode::Latency(lo, hi) => {
            let span = hi.saturating_sub(lo).as_millis() as u64;
            let d = lo + Duration::from_millis(state.below(span + 1));
            state.count("delayed");
            tokio::time::sleep(d).await;
        }
        _ => {}
    }
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
    let is_get = parts.method == hyper::Method::GET;
    let is_list = is_get && pq.contains("list-type=");
    parts.uri = format!("{upstream}{pq}")
        .parse()
        .map_err(std::io::Error::other)?;
    let resp = match client
        .request(hyper::Request::from_parts(parts, Full::new(body)))
        .await
    {
        Ok(r) => r,
        Err(e) => {
            state.count("upstream_error");
            return Err(std::io::Error::other(e));
        }
    };
    let (mut parts, body) = resp.into_parts();
    if let Mode::TruncateList(p) = mode {
        if is_list && parts.status.is_success() && state.chance(p) {
            let full = body
                .collect()
                .await
                .map_err(std::io::Error::other)?
                .to_bytes();
            let cut = full.slice(..state.below(full.len() as u64) as usize);
            parts.headers.insert("content-length", cut.len().into());
            state.count("list_truncated_with_matching_length");
            let body = Full::new(cut).map_err(|never| match never {}).boxed();
            return Ok(hyper::Response::from_parts(parts, body));
        }
    }
    // Without a Content-Length (a chunked listing), break within its first 4 KiB.
    let len: u64 = parts
        .headers
        .get("content-length")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(4096);
    // Only bodies worth breaking: GET answers (objects and listings) with bytes in them.
    let breakable = is_get && parts.status.is_success() && len > 1;
    // (bytes after which the body breaks, and how long it stalls first)
    let brk: Option<(u64, Option<Duration>)> = match mode {
        Mode::Reset(p) if breakable && state.chance(p) => {
            state.count("body_reset");
            Some((state.below(len), None))
        }
        Mode::Stall(p, hold) if breakable && state.chance(p) => {
            state.count("body_stalled");
            Some((state.below(len), Some(hold)))
        }
        _ => None,
    };
    let corrupt_at = match mode {
        Mode::CorruptBody(p) if breakable && !is_list && state.chance(p) => {
            state.count("body_byte_flipped");
            Some(state.below(len))
        }
        _ => None,
    };
    let data = body.into_data_stream();
    let mut seen = 0u64;
    let data = data.map(move |r| {
        r.map(|b| {
            let at = corrupt_at.filter(|&a| a >= seen && a < seen + b.len() as u64);
            seen += b.len() as u64;
            match at {
                Some(a) => {
                    let mut v = b.to_vec();
                    v[(a + b.len() as u64 - seen) as usize] ^= 0x01;
                    Bytes::from(v)
                }
                None => b,
            }
        })
    });
    let left = brk.map_or(u64::MAX, |b| b.0);
    let hold = brk.and_then(|b| b.1);
    let frames = futures_util::stream::unfold(
        (data, left, false),
        move |(mut data, left, done)| async move {
            if done {
                return None;
            }
            if left == 0 {
                if let Some(h) = hold {
                    tokio::time::sleep(h).await;
                }
                return Some((
                    Err(std::io::Error::other("cut by the fault proxy")),
                    (data, 0, true),
                ));
            }
            match data.next().await? {
                Ok(mut b) => {
                    if (b.len() as u64) > left {
                        b.truncate(left as usize);
                    }
                    let left = left - b.len() as u64;
                    Some((Ok(Frame::data(b)), (data, left, false)))
                }
                Err(e) => Some((Err(std::io::Error::other(e)), (data, 0, true))),
            }
        },
    );
    let body: ProxyBody = BodyExt::boxed(StreamBody::new(frames));
    Ok(hyper::Response::from_parts(parts, body))
}
