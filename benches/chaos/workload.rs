//! The clients: whole and ranged GETs, HEADs, LISTs, slow readers, readers that hang up
//! part-way, malformed requests, and a crowd of idle keep-alive connections; and the judge of
//! every answer.
//!
//! An answer is one of: **correct** (every byte checked against the version its ETag names),
//! an **honest failure** (an S3 error before the headers, a connection refused or reset before
//! them, or a body cut short of its `Content-Length`), **unexpected** (a status a well-formed
//! request should not get, such as a 400 to a valid LIST; reported, not fatal), or **fatal**
//! (a wrong byte, a body that ended cleanly short of its length, an unknown ETag, a listing
//! that names what was never written, or 60 s without progress).

use crate::content::{encode_key, mismatch, unquote, Catalog, Rng, Version};
use crate::replica::{Avail, Replica};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// A request that makes no progress this long is a failure of the run.
pub const NO_PROGRESS: Duration = Duration::from_secs(60);
/// Success counts are kept per replica in buckets of this length.
pub const BUCKET: Duration = Duration::from_millis(100);

/// How one answer was judged.
#[derive(Debug)]
pub enum Verdict {
    Ok,
    /// The client hung up on purpose part-way, after checking what it read.
    Disconnected,
    Honest(String),
    Unexpected(String),
    Fatal(String),
    /// The harness stopped the replica under it (a load balancer would have given up).
    Abandoned,
}

#[derive(Default)]
pub struct Stats {
    pub requests: Mutex<BTreeMap<String, u64>>,
    pub correct: Mutex<BTreeMap<String, u64>>,
    pub honest: Mutex<BTreeMap<String, u64>>,
    pub unexpected: Mutex<BTreeMap<String, u64>>,
    pub unexpected_examples: Mutex<Vec<String>>,
    pub fatal: Mutex<BTreeMap<String, u64>>,
    pub fatal_examples: Mutex<Vec<String>>,
    pub bytes_verified: AtomicU64,
    pub per_replica_ok: Mutex<Vec<[u32; 3]>>,
    pub per_replica_requests: [AtomicU64; 3],
    pub idle_open: AtomicI64,
    pub idle_opened: AtomicU64,
    pub idle_closed_by_server: AtomicU64,
}

fn bump(m: &Mutex<BTreeMap<String, u64>>, k: &str) {
    *m.lock().unwrap().entry(k.to_owned()).or_default() += 1;
}

impl Stats {
    pub fn fatal(&self, class: &str, detail: String) {
        bump(&self.fatal, class);
        eprintln!("FATAL {class}: {detail}");
        let mut e = self.fatal_examples.lock().unwrap();
        if e.len() < 50 {
            e.push(format!("{class}: {detail}"));
        }
    }

    pub fn fatal_count(&self) -> u64 {
        self.fatal.lock().unwrap().values().sum()
    }
}

pub struct Ctx {
    pub cat: Arc<Catalog>,
    pub replicas: Vec<Arc<Replica>>,
    pub stats: Stats,
    pub http: reqwest::Client,
    pub t0: Instant,
    /// Cancelled when the harness stops or kills a replica; replaced when it is back.
    tokens: Vec<Mutex<CancellationToken>>,
    /// Keys the overwrite fault leaves alone (the probe, the idle connections' key).
    pub stable: BTreeSet<usize>,
    pub probe: usize,
    pub idle_key: usize,
}

/// A `Range` header and what S3 makes of it.
#[derive(Clone, Debug)]
pub enum RangeSpec {
    FromTo(u64, u64),
    From(u64),
    Suffix(u64),
    /// Syntactically malformed: ignored, the whole object (SPEC §1.2).
    Ignored(&'static str),
}

impl RangeSpec {
    fn header(&self) -> String {
        match self {
            RangeSpec::FromTo(s, e) => format!("bytes={s}-{e}"),
            RangeSpec::From(s) => format!("bytes={s}-"),
            RangeSpec::Suffix(n) => format!("bytes=-{n}"),
            RangeSpec::Ignored(h) => (*h).to_owned(),
        }
    }
}

#[derive(Debug, PartialEq)]
enum Expect {
    Full,
    Part(u64, u64),
    Unsatisfiable,
}

fn expect(r: Option<&RangeSpec>, size: u64) -> Expect {
    match r {
        None | Some(RangeSpec::Ignored(_)) => Expect::Full,
        Some(_) if size == 0 => Expect::Unsatisfiable,
        Some(RangeSpec::FromTo(s, e)) if *s < size => Expect::Part(*s, (*e).min(size - 1)),
        Some(RangeSpec::From(s)) if *s < size => Expect::Part(*s, size - 1),
        Some(RangeSpec::Suffix(n)) if *n > 0 => Expect::Part(size - (*n).min(size), size - 1),
        Some(_) => Expect::Unsatisfiable,
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Reader {
    Fast,
    /// Paced to about this many bytes per second.
    Slow(u64),
    /// Hangs up after this many bytes.
    HangUp(u64),
}

fn header(h: &reqwest::header::HeaderMap, n: &str) -> Option<String> {
    h.get(n).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

impl Ctx {
    pub fn new(
        cat: Arc<Catalog>,
        replicas: Vec<Arc<Replica>>,
        probe: usize,
        idle_key: usize,
        buckets: usize,
    ) -> Ctx {
        let stats = Stats::default();
        *stats.per_replica_ok.lock().unwrap() = vec![[0; 3]; buckets];
        Ctx {
            cat,
            tokens: replicas
                .iter()
                .map(|_| Mutex::new(CancellationToken::new()))
                .collect(),
            replicas,
            stats,
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .pool_idle_timeout(Duration::from_secs(20))
                .pool_max_idle_per_host(64)
                .build()
                .expect("http client"),
            t0: Instant::now(),
            stable: [probe, idle_key].into_iter().collect(),
            probe,
            idle_key,
        }
    }

    /// Abandons every request in flight to replica `r` (it was stopped or killed).
    pub fn abandon(&self, r: usize) {
        let mut t = self.tokens[r].lock().unwrap();
        t.cancel();
        *t = CancellationToken::new();
    }

    fn token(&self, r: usize) -> CancellationToken {
        self.tokens[r].lock().unwrap().clone()
    }

    pub fn up(&self) -> Vec<usize> {
        (0..self.replicas.len())
            .filter(|&i| self.replicas[i].avail() == Avail::Up)
            .collect()
    }

    fn url(&self, r: usize, key: &str) -> String {
        format!(
            "{}/{}/{}",
            self.replicas[r].s3(),
            self.cat.bucket,
            encode_key(key)
        )
    }

    /// Counts a workload answer.
    pub fn record(&self, kind: &str, r: usize, v: &Verdict) {
        let s = &self.stats;
        bump(&s.requests, kind);
        s.per_replica_requests[r].fetch_add(1, Ordering::Relaxed);
        match v {
            Verdict::Ok | Verdict::Disconnected => {
                bump(&s.correct, kind);
                let b = (self.t0.elapsed().as_millis() / BUCKET.as_millis()) as usize;
                let mut ok = s.per_replica_ok.lock().unwrap();
                if let Some(slot) = ok.get_mut(b) {
                    slot[r] += 1;
                }
            }
            Verdict::Honest(h) => bump(&s.honest, h),
            Verdict::Unexpected(u) => {
                let class = u.split(':').next().unwrap_or(u).to_owned();
                bump(&s.unexpected, &class);
                let mut e = s.unexpected_examples.lock().unwrap();
                if e.len() < 30 {
                    e.push(format!("{kind} on replica {r}: {u}"));
                }
            }
            Verdict::Fatal(f) => {
                let class = f.split(':').next().unwrap_or(f).to_owned();
                s.fatal(&class, format!("{kind} on replica {r}: {f}"));
            }
            Verdict::Abandoned => bump(
                &s.honest,
                "abandoned (replica stopped or killed by the harness)",
            ),
        }
    }

    /// Runs `f` unless the replica is stopped or killed under it.
    async fn guarded<F: std::future::Future<Output = Verdict>>(&self, r: usize, f: F) -> Verdict {
        let tok = self.token(r);
        tokio::select! {
            v = f => v,
            _ = tok.cancelled() => Verdict::Abandoned,
        }
    }

    /// A GET of key `idx` from replica `r`, every byte checked.
    pub async fn get(
        &self,
        r: usize,
        idx: usize,
        range: Option<RangeSpec>,
        reader: Reader,
    ) -> Verdict {
        self.guarded(r, self.get_inner(r, idx, range, reader)).await
    }

    async fn get_inner(
        &self,
        r: usize,
        idx: usize,
        range: Option<RangeSpec>,
        reader: Reader,
    ) -> Verdict {
        let key = self.cat.key(idx);
        let mut req = self.http.get(self.url(r, &key));
        if let Some(rs) = &range {
            req = req.header("range", rs.header());
        }
        let mut resp = match tokio::time::timeout(NO_PROGRESS, req.send()).await {
            Err(_) => {
                return Verdict::Fatal(format!(
                    "no_progress_60s: no headers for GET {key} ({range:?}) within 60 s"
                ))
            }
            Ok(Err(e)) => return Verdict::Honest(connect_error(&e)),
            Ok(Ok(r)) => r,
        };
        let status = resp.status().as_u16();
        let h = resp.headers().clone();
        if status == 416 {
            // Correct only if some version of the key makes this range unsatisfiable.
            let total: Option<u64> =
                header(&h, "content-range").and_then(|c| c.strip_prefix("bytes */")?.parse().ok());
            let sizes = self.cat.sizes(idx);
            return match total {
                Some(t)
                    if sizes.contains(&t)
                        && expect(range.as_ref(), t) == Expect::Unsatisfiable =>
                {
                    drain_error(resp).await;
                    Verdict::Ok
                }
                _ => Verdict::Unexpected(format!(
                    "416 for a satisfiable range: {key} {range:?}, Content-Range {:?}, sizes {sizes:?}",
                    header(&h, "content-range")
                )),
            };
        }
        if status != 200 && status != 206 {
            return error_verdict("GET", status, &key, Some(resp)).await;
        }
        let Some(etag) = header(&h, "etag") else {
            return Verdict::Fatal(format!("no_etag: GET {key} answered {status} without ETag"));
        };
        let Some(v) = self.cat.version(idx, &etag) else {
            return Verdict::Fatal(format!(
                "unknown_etag: GET {key} answered ETag {etag}, never written"
            ));
        };
        let exp = expect(range.as_ref(), v.size);
        let mut unexpected = None;
        let (start, len) = match (status, &exp) {
            (200, Expect::Full) => (0, v.size),
            (206, Expect::Part(s, e)) => {
                let want = format!("bytes {s}-{e}/{}", v.size);
                if header(&h, "content-range").as_deref() != Some(want.as_str()) {
                    return Verdict::Fatal(format!(
                        "wrong_content_range: GET {key} {range:?}: {:?}, expected {want}",
                        header(&h, "content-range")
                    ));
                }
                (*s, e - s + 1)
            }
            (200, _) => {
                unexpected = Some(format!(
                    "status_200_for_range: GET {key} {range:?} of {} bytes",
                    v.size
                ));
                (0, v.size)
            }
            (_, _) => {
                // A 206 the range does not call for: check it by its own Content-Range.
                let cr = header(&h, "content-range").unwrap_or_default();
                let parsed = cr.strip_prefix("bytes ").and_then(|x| {
                    let (se, t) = x.split_once('/')?;
                    let (s, e) = se.split_once('-')?;
                    Some((
                        s.parse::<u64>().ok()?,
                        e.parse::<u64>().ok()?,
                        t.parse::<u64>().ok()?,
                    ))
                });
                match parsed {
                    Some((s, e, t)) if t == v.size && s <= e && e < t => {
                        unexpected = Some(format!(
                            "status_206_unexpected: GET {key} {range:?} answered {cr}"
                        ));
                        (s, e - s + 1)
                    }
                    _ => {
                        return Verdict::Fatal(format!(
                        "wrong_content_range: GET {key} {range:?} answered 206 {cr:?} for {} bytes",
                        v.size
                    ))
                    }
                }
            }
        };
        let clen: Option<u64> = header(&h, "content-length").and_then(|c| c.parse().ok());
        if clen != Some(len) {
            return Verdict::Fatal(format!(
                "wrong_length: GET {key} {range:?}: Content-Length {clen:?}, expected {len}"
            ));
        }
        let mut off = 0u64;
        loop {
            let next = match tokio::time::timeout(NO_PROGRESS, resp.chunk()).await {
                Err(_) => {
                    return Verdict::Fatal(format!(
                        "no_progress_60s: GET {key} body stalled at {off} of {len} bytes"
                    ))
                }
                Ok(n) => n,
            };
            match next {
                Err(_) => {
                    return if off < len {
                        Verdict::Honest("body cut short of Content-Length".into())
                    } else {
                        Verdict::Honest("error after the last byte".into())
                    }
                }
                Ok(None) => break,
                Ok(Some(b)) => {
                    if off + b.len() as u64 > len {
                        return Verdict::Fatal(format!(
                            "too_many_bytes: GET {key}: more than Content-Length {len}"
                        ));
                    }
                    if let Some(i) = mismatch(v.seed, start + off, &b) {
                        return Verdict::Fatal(format!(
                            "wrong_byte: GET {key} ETag {etag} {range:?}: byte {} of the object{}",
                            start + off + i as u64,
                            self.whose(idx, start + off, &b, &v)
                        ));
                    }
                    off += b.len() as u64;
                    self.stats
                        .bytes_verified
                        .fetch_add(b.len() as u64, Ordering::Relaxed);
                    match reader {
                        Reader::HangUp(at) if off >= at && off < len => {
                            return Verdict::Disconnected
                        }
                        Reader::Slow(rate) => {
                            tokio::time::sleep(Duration::from_secs_f64(
                                b.len() as f64 / rate as f64,
                            ))
                            .await
                        }
                        _ => {}
                    }
                }
            }
        }
        if off != len {
            return Verdict::Fatal(format!(
                "short_but_complete: GET {key} body ended cleanly at {off} of {len} bytes"
            ));
        }
        match unexpected {
            Some(u) => Verdict::Unexpected(u),
            None => Verdict::Ok,
        }
    }

    /// Which other version the wrong bytes belong to, if any (for the report).
    fn whose(&self, idx: usize, off: u64, b: &[u8], claimed: &Version) -> String {
        for v in self.cat.object(idx).versions {
            if v.etag != claimed.etag && mismatch(v.seed, off, b).is_none() {
                return format!(" (the bytes are version {} of the key)", v.etag);
            }
        }
        String::new()
    }

    pub async fn head(&self, r: usize, idx: usize) -> Verdict {
        self.guarded(r, async {
            let key = self.cat.key(idx);
            let resp =
                match tokio::time::timeout(NO_PROGRESS, self.http.head(self.url(r, &key)).send())
                    .await
                {
                    Err(_) => return Verdict::Fatal(format!("no_progress_60s: HEAD {key}")),
                    Ok(Err(e)) => return Verdict::Honest(connect_error(&e)),
                    Ok(Ok(r)) => r,
                };
            let status = resp.status().as_u16();
            if status != 200 {
                return error_verdict("HEAD", status, &key, None).await;
            }
            let h = resp.headers();
            let etag = header(h, "etag").unwrap_or_default();
            let Some(v) = self.cat.version(idx, &etag) else {
                return Verdict::Fatal(format!("unknown_etag: HEAD {key} answered ETag {etag:?}"));
            };
            let clen: Option<u64> = header(h, "content-length").and_then(|c| c.parse().ok());
            if clen != Some(v.size) {
                return Verdict::Fatal(format!(
                    "wrong_length: HEAD {key}: Content-Length {clen:?} for ETag {etag} of {} bytes",
                    v.size
                ));
            }
            Verdict::Ok
        })
        .await
    }

    /// A ListObjectsV2 walk of `prefix` (every page), each entry checked against what was
    /// written, and the whole listing checked for completeness.
    pub async fn list(&self, r: usize, prefix: &str, delimiter: bool, max_keys: u32) -> Verdict {
        self.guarded(r, self.list_inner(r, prefix, delimiter, max_keys))
            .await
    }

    async fn list_inner(&self, r: usize, prefix: &str, delimiter: bool, max_keys: u32) -> Verdict {
        let mut keys = BTreeSet::new();
        let mut prefixes = BTreeSet::new();
        let mut token: Option<String> = None;
        for _page in 0..50 {
            let mut q: Vec<(String, String)> = vec![
                ("list-type".into(), "2".into()),
                ("prefix".into(), prefix.into()),
                ("max-keys".into(), max_keys.to_string()),
            ];
            if delimiter {
                q.push(("delimiter".into(), "/".into()));
            }
            if let Some(t) = &token {
                q.push(("continuation-token".into(), t.clone()));
            }
            let url = format!("{}/{}", self.replicas[r].s3(), self.cat.bucket);
            let send = self.http.get(&url).query(&q).send();
            let resp = match tokio::time::timeout(NO_PROGRESS, send).await {
                Err(_) => return Verdict::Fatal(format!("no_progress_60s: LIST {prefix}")),
                Ok(Err(e)) => return Verdict::Honest(connect_error(&e)),
                Ok(Ok(r)) => r,
            };
            let status = resp.status().as_u16();
            if status != 200 {
                return error_verdict("LIST", status, prefix, Some(resp)).await;
            }
            let body = match tokio::time::timeout(NO_PROGRESS, resp.text()).await {
                Err(_) => return Verdict::Fatal(format!("no_progress_60s: LIST {prefix} body")),
                Ok(Err(_)) => return Verdict::Honest("body cut short of Content-Length".into()),
                Ok(Ok(b)) => b,
            };
            let page = parse_list(&body);
            if page.key_count != Some((page.contents.len() + page.prefixes.len()) as u64) {
                return Verdict::Fatal(format!(
                    "list_wrong: LIST {prefix}: KeyCount {:?} but {} entries and {} prefixes",
                    page.key_count,
                    page.contents.len(),
                    page.prefixes.len()
                ));
            }
            for (k, size, etag) in &page.contents {
                let Some(idx) = self.cat.index_of(k) else {
                    return Verdict::Fatal(format!(
                        "list_wrong: LIST {prefix} names {k:?}, never written"
                    ));
                };
                let ok = self.cat.object(idx).versions.iter().any(|v| {
                    Some(v.size) == *size && Some(v.etag.as_str()) == etag.as_deref().map(unquote)
                });
                if !ok {
                    return Verdict::Fatal(format!(
                        "list_wrong: LIST {prefix}: {k:?} with Size {size:?} ETag {etag:?} matches no version written"
                    ));
                }
                if !k.starts_with(prefix) {
                    return Verdict::Fatal(format!("list_wrong: LIST {prefix} names {k:?}"));
                }
                keys.insert(k.clone());
            }
            prefixes.extend(page.prefixes.iter().cloned());
            if page.truncated {
                match page.next_token {
                    Some(t) => token = Some(t),
                    None => {
                        return Verdict::Fatal(format!(
                            "list_wrong: LIST {prefix} truncated without a continuation token"
                        ))
                    }
                }
            } else {
                // Complete: it must name every key written under the prefix.
                let mut want_keys = BTreeSet::new();
                let mut want_prefixes = BTreeSet::new();
                for o in self.cat.all() {
                    if let Some(rest) = o.key.strip_prefix(prefix) {
                        match rest.find('/') {
                            Some(i) if delimiter => {
                                want_prefixes.insert(format!("{prefix}{}", &rest[..=i]));
                            }
                            _ => {
                                want_keys.insert(o.key.clone());
                            }
                        }
                    }
                }
                if want_keys != keys || want_prefixes != prefixes {
                    let missing: Vec<_> = want_keys.difference(&keys).collect();
                    return Verdict::Fatal(format!(
                        "list_wrong: LIST {prefix} complete-looking but missing keys {missing:?}, prefixes {:?} vs {:?}",
                        prefixes, want_prefixes
                    ));
                }
                return Verdict::Ok;
            }
        }
        Verdict::Unexpected("list_too_many_pages: more than 50 pages".into())
    }

    /// A malformed request over a raw connection: it must be answered with a 4xx, not hang.
    pub async fn malformed(&self, r: usize, which: u64) -> Verdict {
        let b = &self.cat.bucket;
        let req: Vec<u8> = match which % 7 {
            0 => b"GARBAGE\r\n\r\n".to_vec(),
            1 => format!("GET /{b}/x HTTP/9.9\r\nHost: a\r\n\r\n").into_bytes(),
            2 => format!("GET /{b}/%zz%G0/%C3%28%ff HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                .into_bytes(),
            3 => b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03garbage-tls-hello\r\n\r\n".to_vec(),
            4 => {
                let mut v = format!("GET /{b}/x HTTP/1.1\r\nHost: a\r\nX-Big: ").into_bytes();
                v.extend(std::iter::repeat_n(b'a', 128 * 1024));
                v.extend_from_slice(b"\r\n\r\n");
                v
            }
            5 => format!("GET /{b}/x HTTP/1.1\r\nHost: a\r\nContent-Length: nope\r\n\r\n").into_bytes(),
            _ => format!("GET /{b}?list-type=2&max-keys=-5&prefix=%E0%A4%A HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                .into_bytes(),
        };
        let port = self.replicas[r].s3_port;
        let starts = self.replicas[r].starts.load(Ordering::SeqCst);
        self.guarded(r, async move {
            let mut s = match tokio::time::timeout(
                Duration::from_secs(5),
                tokio::net::TcpStream::connect(("127.0.0.1", port)),
            )
            .await
            {
                Ok(Ok(s)) => s,
                _ => return Verdict::Honest("connect failed".into()),
            };
            // The server may answer (and close) before reading all of a huge header.
            let _ = s.write_all(&req).await;
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            let read = async {
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            got.extend_from_slice(&buf[..n]);
                            if got.windows(4).any(|w| w == b"\r\n\r\n") || got.len() > 64 * 1024 {
                                break;
                            }
                        }
                    }
                }
            };
            if tokio::time::timeout(NO_PROGRESS, read).await.is_err() {
                return Verdict::Fatal(format!(
                    "no_progress_60s: malformed request #{} got no answer in 60 s",
                    which % 7
                ));
            }
            let text = String::from_utf8_lossy(&got);
            let status: Option<u16> = text
                .strip_prefix("HTTP/1.")
                .and_then(|t| t.get(2..5)?.parse().ok());
            match status {
                Some(s) if (400..500).contains(&s) => Verdict::Ok,
                Some(s) => Verdict::Unexpected(format!(
                    "malformed_answered_{s}: request #{} answered {s}",
                    which % 7
                )),
                // Killed under the request (the harness's doing): nothing to judge.
                None if self.replicas[r].starts.load(Ordering::SeqCst) != starts
                    || self.replicas[r].avail() != Avail::Up =>
                {
                    Verdict::Honest("connection closed: replica killed by the harness".into())
                }
                None => Verdict::Unexpected(format!(
                    "malformed_closed_without_answer: request #{} ({} bytes back)",
                    which % 7,
                    got.len()
                )),
            }
        })
        .await
    }

    /// One idle keep-alive connection: a GET, its answer checked, then silence until the run
    /// ends (reconnecting if the server closes it). Not counted in the request rates.
    pub async fn idle_connection(self: Arc<Self>, i: usize, stop: CancellationToken) {
        let key = encode_key(&self.cat.key(self.idle_key));
        let want = self.cat.latest(self.idle_key).expect("idle key written");
        while !stop.is_cancelled() {
            let r = i % self.replicas.len();
            if self.replicas[r].avail() != Avail::Up {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = stop.cancelled() => return,
                }
            }
            let port = self.replicas[r].s3_port;
            let Ok(Ok(mut s)) = tokio::time::timeout(
                Duration::from_secs(5),
                tokio::net::TcpStream::connect(("127.0.0.1", port)),
            )
            .await
            else {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            };
            let req = format!(
                "GET /{}/{key} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
                self.cat.bucket
            );
            if s.write_all(req.as_bytes()).await.is_err() {
                continue;
            }
            // Headers and the whole body (its Content-Length: an error's, or the object's).
            let mut got = Vec::new();
            let mut buf = vec![0u8; 16 * 1024];
            let mut need = 0usize;
            let ok = tokio::time::timeout(NO_PROGRESS, async {
                loop {
                    if let Some(p) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&got[..p]).to_ascii_lowercase();
                        need = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        if got.len() >= p + 4 + need {
                            return Some(p + 4);
                        }
                    }
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return None,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
            })
            .await;
            match ok {
                Err(_) => self.stats.fatal(
                    "no_progress_60s",
                    format!("idle connection {i}: no answer to its GET in 60 s"),
                ),
                Ok(None) => {}
                Ok(Some(body_at)) => {
                    if got.starts_with(b"HTTP/1.1 200") {
                        if need as u64 != want.size {
                            self.stats.fatal(
                                "wrong_length",
                                format!(
                                    "idle connection {i}: Content-Length {need}, expected {}",
                                    want.size
                                ),
                            );
                            return;
                        }
                        if let Some(at) = mismatch(want.seed, 0, &got[body_at..body_at + need]) {
                            self.stats.fatal(
                                "wrong_byte",
                                format!("idle connection {i}: byte {at} of its GET"),
                            );
                        }
                        self.stats
                            .bytes_verified
                            .fetch_add(need as u64, Ordering::Relaxed);
                    }
                    self.stats.idle_opened.fetch_add(1, Ordering::Relaxed);
                    self.stats.idle_open.fetch_add(1, Ordering::Relaxed);
                    // Idle until the run ends or the server hangs up.
                    let closed = tokio::select! {
                        _ = s.read(&mut buf) => true,
                        _ = stop.cancelled() => false,
                    };
                    self.stats.idle_open.fetch_sub(1, Ordering::Relaxed);
                    if closed {
                        self.stats
                            .idle_closed_by_server
                            .fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    /// One workload client: random requests until the deadline.
    pub async fn client(self: Arc<Self>, id: u64, stop: CancellationToken) {
        let mut rng = Rng::new(0xC11E47 + id);
        let hot = self.cat.hot();
        let cold = self.cat.cold();
        while !stop.is_cancelled() {
            let up = self.up();
            if up.is_empty() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            let r = *rng.pick(&up);
            let idx = if rng.chance(0.7) {
                *rng.pick(&hot)
            } else {
                *rng.pick(&cold)
            };
            let size = self.cat.latest(idx).map_or(0, |v| v.size);
            let roll = rng.below(100);
            let (kind, v) = match roll {
                0..=31 => ("get", self.get(r, idx, None, Reader::Fast).await),
                32..=53 => {
                    let span = size + size / 8 + 2;
                    let rs = match rng.below(4) {
                        0 => RangeSpec::From(rng.below(span)),
                        1 => RangeSpec::Suffix(rng.below(span)),
                        _ => {
                            let s = rng.below(span);
                            RangeSpec::FromTo(s, s + rng.below(3 << 20))
                        }
                    };
                    ("get_range", self.get(r, idx, Some(rs), Reader::Fast).await)
                }
                54..=61 => ("head", self.head(r, idx).await),
                62..=68 => {
                    let (p, d) = *rng.pick(&[
                        ("hot/", false),
                        ("cold/", false),
                        ("", true),
                        ("odd/", false),
                        ("", false),
                    ]);
                    let mk = *rng.pick(&[2u32, 7, 1000]);
                    ("list", self.list(r, p, d, mk).await)
                }
                69..=73 => (
                    "get_slow",
                    self.get(r, idx, None, Reader::Slow(1 << 20)).await,
                ),
                74..=81 => {
                    let at = rng.below(size.max(1));
                    (
                        "get_hangup",
                        self.get(r, idx, None, Reader::HangUp(at)).await,
                    )
                }
                82..=89 => {
                    let h = *rng.pick(&[
                        "foo=1-2",
                        "bytes=5-1",
                        "bytes=",
                        "bytes=0-1,4-5",
                        "bytes=abc",
                    ]);
                    (
                        "get_bad_range",
                        self.get(r, idx, Some(RangeSpec::Ignored(h)), Reader::Fast)
                            .await,
                    )
                }
                _ => ("malformed", self.malformed(r, rng.next()).await),
            };
            let failed = !matches!(v, Verdict::Ok | Verdict::Disconnected);
            self.record(kind, r, &v);
            if failed {
                // As an SDK backs off before retrying: a failing cluster is not hammered by
                // a tight loop of instant errors (which would also drown the counts).
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// A probe of replica `r`: the probe object whole and a LIST, both checked. Fatal
    /// findings are counted; the rest only says "not yet".
    pub async fn probe(&self, r: usize) -> bool {
        let probe = self.probe;
        let v = tokio::time::timeout(
            Duration::from_secs(10),
            self.get(r, probe, None, Reader::Fast),
        )
        .await
        .unwrap_or(Verdict::Honest("probe timed out".into()));
        if let Verdict::Fatal(f) = &v {
            self.record("probe", r, &Verdict::Fatal(f.clone()));
        }
        if !matches!(v, Verdict::Ok) {
            return false;
        }
        let l = tokio::time::timeout(Duration::from_secs(10), self.list(r, "probe/", false, 1000))
            .await
            .unwrap_or(Verdict::Honest("probe timed out".into()));
        if let Verdict::Fatal(f) = &l {
            self.record("probe", r, &Verdict::Fatal(f.clone()));
        }
        matches!(l, Verdict::Ok)
    }
}

fn connect_error(e: &reqwest::Error) -> String {
    if e.is_connect() {
        "connection refused before headers".into()
    } else if e.is_timeout() {
        "timeout before headers".into()
    } else {
        "connection reset before headers".into()
    }
}

/// Judges an error status: an S3 error is honest; a status a well-formed request should not
/// get is unexpected.
async fn error_verdict(
    op: &str,
    status: u16,
    what: &str,
    resp: Option<reqwest::Response>,
) -> Verdict {
    let code = match resp {
        Some(r) => match tokio::time::timeout(Duration::from_secs(10), r.text()).await {
            Ok(Ok(body)) => body
                .split("<Code>")
                .nth(1)
                .and_then(|c| c.split("</Code>").next())
                .map(str::to_owned),
            _ => None,
        },
        None => None,
    };
    let code = code.unwrap_or_else(|| "(no S3 code)".into());
    match status {
        500..=599 if status != 500 => Verdict::Honest(format!("{op} {status} {code}")),
        _ => Verdict::Unexpected(format!("{op}_{status}_{code}: {what}")),
    }
}

async fn drain_error(r: reqwest::Response) {
    let _ = tokio::time::timeout(Duration::from_secs(5), r.bytes()).await;
}

struct ListPage {
    contents: Vec<(String, Option<u64>, Option<String>)>,
    prefixes: Vec<String>,
    key_count: Option<u64>,
    truncated: bool,
    next_token: Option<String>,
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&#34;", "\"")
        .replace("&amp;", "&")
}

fn tag<'a>(s: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let a = s.find(&open)? + open.len();
    let b = s[a..].find(&close)? + a;
    Some(&s[a..b])
}

fn blocks<'a>(s: &'a str, name: &str) -> Vec<&'a str> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(a) = rest.find(&open) {
        let after = &rest[a + open.len()..];
        let Some(b) = after.find(&close) else { break };
        out.push(&after[..b]);
        rest = &after[b + close.len()..];
    }
    out
}

fn parse_list(body: &str) -> ListPage {
    ListPage {
        contents: blocks(body, "Contents")
            .into_iter()
            .map(|c| {
                (
                    tag(c, "Key").map(unescape).unwrap_or_default(),
                    tag(c, "Size").and_then(|s| s.trim().parse().ok()),
                    tag(c, "ETag").map(unescape),
                )
            })
            .collect(),
        prefixes: blocks(body, "CommonPrefixes")
            .into_iter()
            .filter_map(|c| tag(c, "Prefix").map(unescape))
            .collect(),
        key_count: tag(body, "KeyCount").and_then(|s| s.trim().parse().ok()),
        truncated: tag(body, "IsTruncated").is_some_and(|t| t.trim() == "true"),
        next_token: tag(body, "NextContinuationToken").map(unescape),
    }
}
