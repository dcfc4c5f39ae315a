//! Client authentication: AWS Signature Version 4, verified the way S3 verifies it (SPEC §1.5).
//!
//! Shoal reads the origin with its own credentials, so without this anyone who can reach it
//! reads the operator's buckets. With `auth.mode = "sigv4"` every request must be signed by a
//! configured user — in the `Authorization` header or as a presigned URL — and may only read
//! that user's buckets. Verification runs before any cache or origin work: a denied request
//! learns nothing about the object and costs no origin request.
//!
//! The canonical request is built here, as an S3 server builds it: the path decoded and
//! encoded again byte by byte (RFC 3986 unreserved characters kept, `/` kept), the query
//! parameters decoded, encoded again and sorted, exactly the headers the client listed in
//! `SignedHeaders` (values trimmed, inner runs of spaces collapsed, repeats joined with `,`),
//! and the payload hash the client declared (`UNSIGNED-PAYLOAD`, the empty-body hash or a
//! streaming variant; a presigned URL's is `UNSIGNED-PAYLOAD`). The cryptography — the
//! per-day signing key and the HMAC chain — is `aws-sigv4`'s, the same code the AWS SDK signs
//! with; derived signing keys are cached per (access key, date, region, service). The
//! signature is compared in constant time.
//!
//! Nothing secret is ever logged or formatted: secrets live in [`Secret`], whose `Debug` prints
//! stars, and neither the `Authorization` header nor a presigned URL's query is logged.

use crate::config::{AuthConfig, AuthMode};
use crate::error::Error;
use http::{HeaderMap, Method, Uri};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use subtle::ConstantTimeEq;

const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// SHA-256 of the empty string: what a signed GET without a body declares.
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
/// Presigned URLs live at most seven days (S3's limit).
const MAX_EXPIRES: u64 = 7 * 24 * 3600;
/// The longest region a credential scope may name. AWS's longest is 14 bytes; S3-compatible
/// stores name theirs freely but briefly (`garage`, `auto`, `minio-1`).
const MAX_REGION_LEN: usize = 32;
/// What the derived signing keys may hold in all, in bytes (each entry is weighed by its
/// scope's length plus the 32-byte key and a fixed overhead). Only verified requests add to
/// it, so a user signing for one region a day needs a few hundred bytes.
const KEY_CACHE_BYTES: u64 = 1 << 20;
/// The `x-amz-content-sha256` keywords S3 accepts besides a hash.
const PAYLOAD_KEYWORDS: [&str; 6] = [
    "UNSIGNED-PAYLOAD",
    "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
    "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
    "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER",
    "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD",
    "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD-TRAILER",
];

/// Why a request was refused. Each maps to the S3 error a client expects (`s3::error`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// No credentials at all.
    Anonymous,
    /// Signature Version 2 (`Authorization: AWS …`, or `AWSAccessKeyId=` in the query).
    SigV2,
    /// The access key id is not a configured user.
    UnknownKey,
    /// The signature is not the one the user's secret gives for this request.
    BadSignature,
    /// The request's time is further from the clock than `auth.max_skew`.
    Skewed,
    /// A presigned URL past its `X-Amz-Expires`.
    Expired,
    /// A presigned URL dated in the future.
    NotYetValid,
    /// A malformed `Authorization` header (what is wrong).
    Malformed(String),
    /// Malformed presigned-URL parameters (what is wrong).
    BadQuery(String),
    /// The user may not read this bucket.
    Bucket,
    /// An `x-amz-date` header S3 would not parse (403 there, as here).
    BadDate,
    /// Headers that S3 requires to be signed are not in `SignedHeaders`: `host`, and every
    /// `x-amz-*` header the request carries. Unsigned, they could be changed or added by anyone
    /// who captured the request (another bucket's virtual host, SSE-C headers).
    Unsigned(String),
    /// An `Authorization` header and a presigned URL's parameters in one request.
    TwoMechanisms,
    /// An `x-amz-content-sha256` that is neither a SHA-256 nor one of S3's keywords.
    BadContentSha256,
    /// An `x-amz-content-sha256` hash that is not the hash of the (empty) body Shoal received.
    ContentSha256Mismatch,
    /// A session token (`X-Amz-Security-Token`): Shoal has no session credentials, and a
    /// token it silently ignored would suggest a protection that does not exist.
    SessionToken,
}

/// A secret that never prints.
#[derive(Clone)]
pub struct Secret(Arc<str>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

struct User {
    secret: Secret,
    /// `None`: every bucket Shoal serves.
    buckets: Option<Arc<[String]>>,
    /// The signing key last derived for this user, with its (date, region, service): a user
    /// signs with one of these for a whole day, so this answers almost every request without
    /// touching the shared cache.
    last_key: std::sync::RwLock<Option<LastKey>>,
}

/// (date, region, service, key).
type LastKey = (String, String, String, Arc<[u8]>);

/// Who a request was made by, once verified.
#[derive(Clone, Debug)]
pub struct Principal {
    /// The access key id (`None` when authentication is off).
    pub access_key_id: Option<Arc<str>>,
    buckets: Option<Arc<[String]>>,
}

impl Principal {
    /// Anyone, when `auth.mode = "none"`.
    pub fn anyone() -> Self {
        Principal {
            access_key_id: None,
            buckets: None,
        }
    }

    /// Whether this principal may read `bucket`.
    pub fn may_read(&self, bucket: &str) -> bool {
        self.buckets
            .as_ref()
            .is_none_or(|b| b.iter().any(|x| x == bucket))
    }
}

/// Verifies requests against the configured users. See the module docs.
pub struct Authenticator {
    users: HashMap<String, User>,
    max_skew: Duration,
    keys: moka::sync::Cache<KeyScope, Arc<[u8]>>,
}

/// What a signing key is derived for: (access key, date, region, service).
type KeyScope = (Arc<str>, String, String, String);

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("users", &self.users.len())
            .finish()
    }
}

/// A signature's parts, from the header or from the query.
struct Parts<'a> {
    access_key: &'a str,
    date: &'a str,
    region: &'a str,
    service: &'a str,
    signed_headers: Vec<&'a str>,
    signature: &'a str,
    amz_date: String,
    payload: String,
    presigned: bool,
}

impl Authenticator {
    /// The authenticator the config asks for; `None` when `auth.mode = "none"`.
    pub fn from_config(cfg: &AuthConfig) -> Result<Option<Self>, Error> {
        if cfg.mode == AuthMode::None {
            return Ok(None);
        }
        let mut users = HashMap::new();
        for u in &cfg.users {
            let secret = u
                .secret()
                .map_err(|e| Error::internal(format!("auth user {}: {e}", u.access_key_id)))?;
            users.insert(
                u.access_key_id.clone(),
                User {
                    secret: Secret(secret.into()),
                    buckets: (!u.buckets.is_empty()).then(|| u.buckets.clone().into()),
                    last_key: std::sync::RwLock::new(None),
                },
            );
        }
        Ok(Some(Authenticator {
            users,
            max_skew: cfg.max_skew.0,
            keys: moka::sync::Cache::builder()
                .max_capacity(KEY_CACHE_BYTES)
                .weigher(|scope: &KeyScope, _key: &Arc<[u8]>| {
                    let (a, d, r, s) = scope;
                    u32::try_from(a.len() + d.len() + r.len() + s.len() + 32 + 96)
                        .unwrap_or(u32::MAX)
                })
                .time_to_live(Duration::from_secs(2 * 24 * 3600))
                .build(),
        }))
    }

    /// Verifies a request's signature; the principal says which buckets it may read.
    ///
    /// `host` is the request's authority as the S3 front resolved it (the absolute-form
    /// target's or HTTP/2's `:authority`, else the one `Host` header): the value the `host`
    /// line of the canonical request must carry, so that the signature pins the bucket of a
    /// virtual-hosted request.
    ///
    /// Nothing is remembered from a request that does not verify: the signing-key cache is
    /// written only after the signature matched, under exactly the scope the key was derived
    /// for.
    pub fn verify(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        host: Option<&str>,
        now: SystemTime,
    ) -> Result<Principal, Denied> {
        let query = uri.query().unwrap_or("");
        let auth = headers
            .get(http::header::AUTHORIZATION)
            .map(|v| {
                v.to_str()
                    .map_err(|_| Denied::Malformed("not ASCII".into()))
            })
            .transpose()?;
        if headers.contains_key("x-amz-security-token")
            || query_names(query).any(|k| k.eq_ignore_ascii_case("X-Amz-Security-Token"))
        {
            return Err(Denied::SessionToken);
        }
        if auth.is_some()
            && query_names(query).any(|k| {
                k == "X-Amz-Algorithm"
                    || k == "X-Amz-Signature"
                    || k == "X-Amz-Credential"
                    || k == "Signature"
            })
        {
            return Err(Denied::TwoMechanisms);
        }
        // Only a presigned URL needs its query decoded, and only its X-Amz-* values.
        let params: Vec<(String, String)> = if auth.is_none() {
            query_params(query, |k| k.starts_with("X-Amz-") || k == "AWSAccessKeyId")
        } else {
            Vec::new()
        };
        let p = match auth {
            Some(a) if a.starts_with(ALGORITHM) => header_parts(a, headers)?,
            Some(a) if a.starts_with("AWS ") => return Err(Denied::SigV2),
            Some(_) => {
                return Err(Denied::Malformed(format!(
                    "the algorithm must be {ALGORITHM}"
                )))
            }
            None if params.iter().any(|(k, _)| k == "X-Amz-Algorithm") => query_parts(&params)?,
            None if params.iter().any(|(k, _)| k == "AWSAccessKeyId") => return Err(Denied::SigV2),
            None => return Err(Denied::Anonymous),
        };
        check_payload(&p.payload)?;
        let bad = |why: String| {
            if p.presigned {
                Denied::BadQuery(why)
            } else {
                Denied::Malformed(why)
            }
        };
        let t = parse_amz_date(&p.amz_date).ok_or_else(|| {
            if p.presigned {
                Denied::BadQuery(
                    "X-Amz-Date must be in the ISO8601 Long Format \"yyyyMMdd'T'HHmmss'Z'\"".into(),
                )
            } else {
                Denied::BadDate
            }
        })?;
        // The day the signing key is derived for is the credential's, checked to be the
        // request's own: the key is then exactly what the cache files it under.
        let day = parse_amz_date(&format!("{}T000000Z", p.date))
            .filter(|_| p.amz_date.starts_with(p.date))
            .ok_or_else(|| bad("the credential's date is not the request's".into()))?;
        unsigned(headers, &p.signed_headers)?;
        let Some(user) = self.users.get(p.access_key) else {
            return Err(Denied::UnknownKey);
        };
        if p.presigned {
            let expires: u64 = param(&params, "X-Amz-Expires")
                .and_then(|v| v.parse().ok())
                .filter(|n| (1..=MAX_EXPIRES).contains(n))
                .ok_or_else(|| {
                    Denied::BadQuery(format!(
                        "X-Amz-Expires must be a number of seconds from 1 to {MAX_EXPIRES}"
                    ))
                })?;
            if t > now + self.max_skew {
                return Err(Denied::NotYetValid);
            }
            if now > t + Duration::from_secs(expires) {
                return Err(Denied::Expired);
            }
        } else {
            let skew = now.duration_since(t).unwrap_or_else(|e| e.duration());
            if skew > self.max_skew {
                return Err(Denied::Skewed);
            }
        }
        let creq = canonical_request(method, uri, headers, host, &p);
        let scope = format!("{}/{}/{}/aws4_request", p.date, p.region, p.service);
        let sts = format!(
            "{ALGORITHM}\n{}\n{scope}\n{}",
            p.amz_date,
            sha256_hex(creq.as_bytes())
        );
        let scope = (
            Arc::<str>::from(p.access_key),
            p.date.to_owned(),
            p.region.to_owned(),
            p.service.to_owned(),
        );
        let (key, cached) = match self.cached_key(user, &scope) {
            Some(k) => (k, true),
            None => {
                let k = aws_sigv4::sign::v4::generate_signing_key(
                    &user.secret.0,
                    day,
                    p.region,
                    p.service,
                );
                (Arc::<[u8]>::from(k.as_ref()), false)
            }
        };
        let expected = aws_sigv4::sign::v4::calculate_signature(&*key, sts.as_bytes());
        let same = expected.len() == p.signature.len()
            && bool::from(expected.as_bytes().ct_eq(p.signature.as_bytes()));
        if !same {
            return Err(Denied::BadSignature);
        }
        if !cached {
            self.keys.insert(scope.clone(), key.clone());
        }
        let (_, date, region, service) = scope;
        *user.last_key.write().unwrap_or_else(|p| p.into_inner()) =
            Some((date, region, service, key));
        Ok(Principal {
            access_key_id: Some(p.access_key.into()),
            buckets: user.buckets.clone(),
        })
    }

    /// The signing key already derived for `scope`, from the user's last one or the cache.
    fn cached_key(&self, user: &User, scope: &KeyScope) -> Option<Arc<[u8]>> {
        if let Some((d, r, s, k)) = &*user.last_key.read().unwrap_or_else(|p| p.into_inner()) {
            if *d == scope.1 && *r == scope.2 && *s == scope.3 {
                return Some(k.clone());
            }
        }
        self.keys.get(scope)
    }

    /// How many signing keys are cached (tests: nothing is cached from an unverified request).
    #[cfg(test)]
    fn cached_keys(&self) -> u64 {
        self.keys.run_pending_tasks();
        self.keys.entry_count()
    }
}

/// The query's parameter names, raw.
fn query_names(q: &str) -> impl Iterator<Item = &str> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').map_or(p, |(k, _)| k))
}

/// S3's rule for `x-amz-content-sha256`: a lowercase hex SHA-256 or one of its keywords. A
/// GET or HEAD has no body, so a hash can only be the empty body's.
fn check_payload(v: &str) -> Result<(), Denied> {
    if PAYLOAD_KEYWORDS.contains(&v) {
        return Ok(());
    }
    let is_hash = v.len() == 64 && v.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    match (is_hash, v == EMPTY_SHA256) {
        (true, true) => Ok(()),
        (true, false) => Err(Denied::ContentSha256Mismatch),
        (false, _) => Err(Denied::BadContentSha256),
    }
}

/// `Denied::Unsigned` naming what S3 requires to be signed but is not: `host`, and every
/// `x-amz-*` header present.
fn unsigned(headers: &HeaderMap, signed: &[&str]) -> Result<(), Denied> {
    let mut missing: Vec<&str> = Vec::new();
    if !signed.contains(&"host") {
        missing.push("host");
    }
    for name in headers.keys() {
        let n = name.as_str();
        if n.starts_with("x-amz-") && !signed.contains(&n) && !missing.contains(&n) {
            missing.push(n);
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Denied::Unsigned(missing.join(";")))
    }
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(64);
    for x in Sha256::digest(b) {
        s.push(HEX[usize::from(x >> 4)] as char);
        s.push(HEX[usize::from(x & 15)] as char);
    }
    s
}

/// Parses `Authorization: AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…`.
fn header_parts<'a>(auth: &'a str, headers: &HeaderMap) -> Result<Parts<'a>, Denied> {
    let rest = auth[ALGORITHM.len()..].trim();
    let mut cred = None;
    let mut signed = None;
    let mut sig = None;
    for part in rest.split(',') {
        match part.trim().split_once('=') {
            Some(("Credential", v)) => cred = Some(v.trim()),
            Some(("SignedHeaders", v)) => signed = Some(v.trim()),
            Some(("Signature", v)) => sig = Some(v.trim()),
            _ => {
                return Err(Denied::Malformed(format!(
                    "unexpected element `{}`",
                    part.trim()
                )))
            }
        }
    }
    let (Some(cred), Some(signed), Some(sig)) = (cred, signed, sig) else {
        return Err(Denied::Malformed(
            "Credential, SignedHeaders and Signature are required".into(),
        ));
    };
    let (access_key, date, region, service) = credential(cred).map_err(Denied::Malformed)?;
    let amz_date = headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| Denied::Malformed("the x-amz-date header is required".into()))?
        .to_owned();
    let payload = headers
        .get("x-amz-content-sha256")
        .and_then(|v| v.to_str().ok())
        .unwrap_or(EMPTY_SHA256)
        .to_owned();
    Ok(Parts {
        access_key,
        date,
        region,
        service,
        signed_headers: signed.split(';').collect(),
        signature: sig,
        amz_date,
        payload,
        presigned: false,
    })
}

/// Whether a (lowercased) query parameter is part of a presigned URL's authentication, which
/// is the client's business with Shoal and never passed to the origin.
pub fn is_presign_param(lower: &str) -> bool {
    matches!(
        lower,
        "x-amz-algorithm"
            | "x-amz-credential"
            | "x-amz-date"
            | "x-amz-expires"
            | "x-amz-signedheaders"
            | "x-amz-signature"
            | "x-amz-security-token"
            | "x-amz-content-sha256"
    )
}

/// Parses a presigned URL's `X-Amz-*` parameters.
fn query_parts<'a>(params: &'a [(String, String)]) -> Result<Parts<'a>, Denied> {
    let need =
        |k: &str| param(params, k).ok_or_else(|| Denied::BadQuery(format!("{k} is required")));
    if need("X-Amz-Algorithm")? != ALGORITHM {
        return Err(Denied::BadQuery(format!(
            "X-Amz-Algorithm must be {ALGORITHM}"
        )));
    }
    let (access_key, date, region, service) =
        credential(need("X-Amz-Credential")?).map_err(Denied::BadQuery)?;
    Ok(Parts {
        access_key,
        date,
        region,
        service,
        signed_headers: need("X-Amz-SignedHeaders")?.split(';').collect(),
        signature: need("X-Amz-Signature")?,
        amz_date: need("X-Amz-Date")?.to_owned(),
        payload: param(params, "X-Amz-Content-Sha256")
            .unwrap_or("UNSIGNED-PAYLOAD")
            .to_owned(),
        presigned: true,
    })
}

/// `AKID/YYYYMMDD/region/service/aws4_request`.
fn credential(c: &str) -> Result<(&str, &str, &str, &str), String> {
    let mut it = c.rsplitn(5, '/');
    let (Some(term), Some(service), Some(region), Some(date), Some(key)) =
        (it.next(), it.next(), it.next(), it.next(), it.next())
    else {
        return Err(format!("bad Credential `{c}`"));
    };
    if term != "aws4_request" || key.is_empty() || date.len() != 8 {
        return Err(format!("bad Credential `{c}`"));
    }
    let region_ok = !region.is_empty()
        && region.len() <= MAX_REGION_LEN
        && region
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !region_ok {
        return Err(format!(
            "the credential's region must be 1 to {MAX_REGION_LEN} letters, digits, `-`, `_` or `.`"
        ));
    }
    if service != "s3" {
        return Err(format!(
            "the credential's service must be s3, not `{service}`"
        ));
    }
    Ok((key, date, region, service))
}

fn param<'a>(params: &'a [(String, String)], k: &str) -> Option<&'a str> {
    params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
}

/// The decoded query parameters whose (raw) name `want`s, in order (a malformed escape is kept
/// as it is).
fn query_params(q: &str, want: impl Fn(&str) -> bool) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .filter(|(k, _)| want(k))
        .map(|(k, v)| (pct_decode(k), pct_decode(v)))
        .collect()
}

fn pct_decode(s: &str) -> String {
    let s = s.replace('+', " ");
    percent_encoding::percent_decode_str(&s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .unwrap_or_else(|_| s.clone())
}

/// SigV4's URI encoding: every byte but `A-Za-z0-9-_.~` (and `/` where `keep_slash`) as `%XX`.
fn uri_encode(bytes: &[u8], keep_slash: bool) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(bytes.len() + 8);
    for &b in bytes {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b'~')
            || (keep_slash && b == b'/')
        {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 15)] as char);
        }
    }
    out
}

/// Whether `s` is already in SigV4's canonical encoding — unreserved characters (and `/` where
/// `keep_slash`) as they are, everything else as uppercase `%XX` — so it can be used as it is.
/// SDKs send their paths and queries this way, which spares decoding and encoding them again.
fn is_canonical(s: &str, keep_slash: bool) -> bool {
    let plain = |c: u8| {
        c.is_ascii_alphanumeric()
            || matches!(c, b'-' | b'_' | b'.' | b'~')
            || (keep_slash && c == b'/')
    };
    let upper_hex = |c: u8| c.is_ascii_digit() || (b'A'..=b'F').contains(&c);
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if plain(c) {
            i += 1;
        } else if c == b'%' && i + 2 < b.len() && upper_hex(b[i + 1]) && upper_hex(b[i + 2]) {
            let v = u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap_or(0);
            if plain(v) {
                return false; // an escape the canonical form would not have
            }
            i += 3;
        } else {
            return false;
        }
    }
    true
}

/// A path or query component in canonical form: as sent when it already is, else decoded once
/// and encoded again.
/// A query component in canonical form. The S3 front decodes `+` in a query as a space (as
/// S3 and HTML forms do), so it is a space here too: the value verified is the value served.
fn canonical_query(raw: &str) -> std::borrow::Cow<'_, str> {
    if raw.contains('+') {
        std::borrow::Cow::Owned(canonical(&raw.replace('+', "%20"), false).into_owned())
    } else {
        canonical(raw, false)
    }
}

fn canonical(raw: &str, keep_slash: bool) -> std::borrow::Cow<'_, str> {
    if is_canonical(raw, keep_slash) {
        std::borrow::Cow::Borrowed(raw)
    } else {
        let bytes: Vec<u8> = percent_encoding::percent_decode_str(raw).collect();
        std::borrow::Cow::Owned(uri_encode(&bytes, keep_slash))
    }
}

fn canonical_request(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    host: Option<&str>,
    p: &Parts<'_>,
) -> String {
    let mut out = String::with_capacity(512);
    out.push_str(method.as_str());
    out.push('\n');
    // The path as S3 sees it: decoded once, encoded again.
    out.push_str(&canonical(uri.path(), true));
    out.push('\n');
    let mut q: Vec<(std::borrow::Cow<'_, str>, std::borrow::Cow<'_, str>)> = uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|x| !x.is_empty())
        .map(|x| x.split_once('=').unwrap_or((x, "")))
        .filter(|(k, _)| !(p.presigned && *k == "X-Amz-Signature"))
        .map(|(k, v)| (canonical_query(k), canonical_query(v)))
        .collect();
    q.sort();
    for (i, (k, v)) in q.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    out.push('\n');
    for name in &p.signed_headers {
        out.push_str(name);
        out.push(':');
        if *name == "host" {
            // The authority the front resolved (absolute-form target, HTTP/2 `:authority`
            // or the one `Host` header): the one that also picks a virtual host's bucket.
            collapse_into(&mut out, host.unwrap_or(""));
        } else {
            let mut any = false;
            for v in headers.get_all(*name) {
                if any {
                    out.push(',');
                }
                collapse_into(&mut out, &String::from_utf8_lossy(v.as_bytes()));
                any = true;
            }
        }
        out.push('\n');
    }
    out.push('\n');
    for (i, h) in p.signed_headers.iter().enumerate() {
        if i > 0 {
            out.push(';');
        }
        out.push_str(h);
    }
    out.push('\n');
    out.push_str(&p.payload);
    out
}

/// Appends a header value trimmed, with inner runs of spaces collapsed, as SigV4 asks.
fn collapse_into(out: &mut String, v: &str) {
    let mut space = false;
    for c in v.trim().chars() {
        if c == ' ' {
            if !space {
                out.push(' ');
            }
            space = true;
        } else {
            out.push(c);
            space = false;
        }
    }
}

/// `YYYYMMDDTHHMMSSZ` → the instant, parsed as strictly as S3 parses it: digits only, a real
/// calendar date (no 31 April, 29 February only in leap years), hours 00–23, minutes and
/// seconds 00–59 (a leap second `60` would roll into the next day, whose signing key differs
/// from the credential's), and years 1970–9999, so no arithmetic below can overflow.
fn parse_amz_date(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let n = |r: std::ops::Range<usize>| -> Option<u64> {
        let d = b.get(r)?;
        d.iter()
            .all(u8::is_ascii_digit)
            .then(|| d.iter().fold(0u64, |acc, c| acc * 10 + u64::from(c - b'0')))
    };
    let (y, mo, d) = (n(0..4)?, n(4..6)?, n(6..8)?);
    let (h, mi, se) = (n(9..11)?, n(11..13)?, n(13..15)?);
    let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    let days_in_month = match mo {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if !(1970..=9999).contains(&y)
        || !(1..=days_in_month).contains(&d)
        || h > 23
        || mi > 59
        || se > 59
    {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm); y ≥ 1970 keeps it unsigned.
    let (y, m) = if mo <= 2 {
        (y - 1, mo + 9)
    } else {
        (y, mo - 3)
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe).checked_sub(719_468)?;
    Some(UNIX_EPOCH + Duration::from_secs(days * 86_400 + h * 3600 + mi * 60 + se))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sigv4::http_request::{
        sign, PercentEncodingMode, SignableBody, SignableRequest, SignatureLocation,
        SigningSettings, UriPathNormalizationMode,
    };
    use proptest::prelude::*;

    fn auth(users: &[(&str, &str, &[&str])]) -> Authenticator {
        let cfg = AuthConfig {
            mode: AuthMode::Sigv4,
            max_skew: crate::config::Dur(Duration::from_secs(900)),
            users: users
                .iter()
                .map(|(k, s, b)| crate::config::UserConfig {
                    access_key_id: (*k).into(),
                    secret_access_key: Some((*s).into()),
                    buckets: b.iter().map(|x| x.to_string()).collect(),
                    ..Default::default()
                })
                .collect(),
        };
        Authenticator::from_config(&cfg).unwrap().unwrap()
    }

    /// Signs a request the way the AWS SDK does (aws-sigv4, S3 settings).
    fn signed(
        key: &str,
        secret: &str,
        method: &str,
        uri: &str,
        extra: &[(&str, &str)],
        t: SystemTime,
        presign: Option<u64>,
    ) -> (Uri, HeaderMap) {
        let creds = aws_credential_types::Credentials::new(key, secret, None, None, "t");
        let identity = creds.into();
        let mut settings = SigningSettings::default();
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        settings.payload_checksum_kind = aws_sigv4::http_request::PayloadChecksumKind::XAmzSha256;
        if let Some(e) = presign {
            settings.signature_location = SignatureLocation::QueryParams;
            settings.expires_in = Some(Duration::from_secs(e));
            settings.payload_checksum_kind = aws_sigv4::http_request::PayloadChecksumKind::NoHeader;
        }
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region("us-east-1")
            .name("s3")
            .time(t)
            .settings(settings)
            .build()
            .unwrap()
            .into();
        let mut req = http::Request::builder().method(method).uri(uri);
        req = req.header("host", "shoal.test");
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        let mut req = req.body(()).unwrap();
        let hdrs: Vec<(String, String)> = req
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap().to_owned()))
            .collect();
        let body = if presign.is_some() {
            SignableBody::UnsignedPayload
        } else {
            SignableBody::Precomputed(EMPTY_SHA256.into())
        };
        let s = SignableRequest::new(
            method,
            uri,
            hdrs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            body,
        )
        .unwrap();
        let (instructions, _) = sign(s, &params).unwrap().into_parts();
        instructions.apply_to_request_http1x(&mut req);
        let (parts, _) = req.into_parts();
        (parts.uri, parts.headers)
    }

    fn now() -> SystemTime {
        SystemTime::now()
    }

    #[test]
    fn amz_dates_parse() {
        let t = parse_amz_date("20130524T000000Z").unwrap();
        assert_eq!(
            t.duration_since(UNIX_EPOCH).unwrap().as_secs(),
            1_369_353_600
        );
        assert!(parse_amz_date("20130524T250000Z").is_none());
        assert!(parse_amz_date("2013-05-24").is_none());
    }

    #[test]
    fn sdk_signed_requests_verify_and_the_wrong_ones_do_not() {
        let a = auth(&[("reader", "s3cr3t", &["models"]), ("all", "other", &[])]);
        let (uri, h) = signed(
            "reader",
            "s3cr3t",
            "GET",
            "/models/a%20b%2Bc/%E2%9C%93?x-id=GetObject",
            &[("range", "bytes=0-9")],
            now(),
            None,
        );
        let p = a
            .verify(&Method::GET, &uri, &h, Some("shoal.test"), now())
            .unwrap();
        assert!(p.may_read("models") && !p.may_read("datasets"));
        assert!(a
            .verify(&Method::GET, &uri, &h, Some("shoal.test"), now())
            .unwrap()
            .access_key_id
            .is_some());
        // Another user's secret, an unknown key, a tampered header, another method.
        let (uri2, h2) = signed("reader", "wrong", "GET", "/models/k", &[], now(), None);
        assert_eq!(
            a.verify(&Method::GET, &uri2, &h2, Some("shoal.test"), now())
                .unwrap_err(),
            Denied::BadSignature
        );
        let (uri3, h3) = signed("nobody", "x", "GET", "/models/k", &[], now(), None);
        assert_eq!(
            a.verify(&Method::GET, &uri3, &h3, Some("shoal.test"), now())
                .unwrap_err(),
            Denied::UnknownKey
        );
        let mut h4 = h.clone();
        h4.insert("range", "bytes=0-10".parse().unwrap());
        assert_eq!(
            a.verify(&Method::GET, &uri, &h4, Some("shoal.test"), now())
                .unwrap_err(),
            Denied::BadSignature
        );
        assert_eq!(
            a.verify(&Method::HEAD, &uri, &h, Some("shoal.test"), now())
                .unwrap_err(),
            Denied::BadSignature
        );
        // Clock skew.
        let old = now() - Duration::from_secs(20 * 60);
        let (uri5, h5) = signed("all", "other", "GET", "/x/k", &[], old, None);
        assert_eq!(
            a.verify(&Method::GET, &uri5, &h5, Some("shoal.test"), now())
                .unwrap_err(),
            Denied::Skewed
        );
        // No credentials; Signature Version 2.
        assert_eq!(
            a.verify(
                &Method::GET,
                &"/x/k".parse().unwrap(),
                &HeaderMap::new(),
                Some("shoal.test"),
                now()
            )
            .unwrap_err(),
            Denied::Anonymous
        );
        let mut v2 = HeaderMap::new();
        v2.insert("authorization", "AWS all:c2lnbmF0dXJl".parse().unwrap());
        assert_eq!(
            a.verify(
                &Method::GET,
                &"/x/k".parse().unwrap(),
                &v2,
                Some("shoal.test"),
                now()
            )
            .unwrap_err(),
            Denied::SigV2
        );
        let mut bad = HeaderMap::new();
        bad.insert(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=all".parse().unwrap(),
        );
        assert!(matches!(
            a.verify(
                &Method::GET,
                &"/x/k".parse().unwrap(),
                &bad,
                Some("shoal.test"),
                now()
            )
            .unwrap_err(),
            Denied::Malformed(_)
        ));
    }

    #[test]
    fn presigned_urls_verify_until_they_expire() {
        let a = auth(&[("all", "other", &[])]);
        let t = now();
        let (uri, h) = signed("all", "other", "GET", "/b/some%20key", &[], t, Some(60));
        assert!(uri.query().unwrap().contains("X-Amz-Signature"));
        assert!(a
            .verify(&Method::GET, &uri, &h, Some("shoal.test"), t)
            .is_ok());
        assert_eq!(
            a.verify(
                &Method::GET,
                &uri,
                &h,
                Some("shoal.test"),
                t + Duration::from_secs(61)
            )
            .unwrap_err(),
            Denied::Expired
        );
        let tampered: Uri = uri
            .to_string()
            .replace("some%20key", "some%20kez")
            .parse()
            .unwrap();
        assert_eq!(
            a.verify(&Method::GET, &tampered, &h, Some("shoal.test"), t)
                .unwrap_err(),
            Denied::BadSignature
        );
        let (long, h2) = signed("all", "other", "GET", "/b/k", &[], t, Some(MAX_EXPIRES + 1));
        assert!(matches!(
            a.verify(&Method::GET, &long, &h2, Some("shoal.test"), t)
                .unwrap_err(),
            Denied::BadQuery(_)
        ));
    }

    #[test]
    fn dates_parse_as_s3_parses_them() {
        for bad in [
            "20130524T235960Z", // a leap second would roll into the next day
            "00000101T000000Z", // year 0 used to overflow
            "19691231T235959Z",
            "20130230T000000Z",
            "20130229T000000Z", // not a leap year
            "20130431T000000Z",
            "20131301T000000Z",
            "20130500T000000Z",
            "2013052+T000000Z",
            "+2013052T000000Z",
            "20130524T24000Z0",
        ] {
            assert!(parse_amz_date(bad).is_none(), "{bad}");
        }
        assert!(parse_amz_date("20120229T235959Z").is_some());
        assert!(parse_amz_date("20000229T000000Z").is_some());
        assert!(parse_amz_date("99991231T235959Z").is_some());
    }

    /// A presigned URL whose query is `base` with `X-Amz-Date` and `X-Amz-Credential` as given.
    fn forged(access_key: &str, date: &str, amz_date: &str, region: &str) -> Uri {
        format!(
            "/b/any?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={access_key}%2F{date}%2F{region}%2Fs3%2Faws4_request&X-Amz-Date={amz_date}&X-Amz-Expires=604800&X-Amz-SignedHeaders=host&X-Amz-Signature={}",
            "0".repeat(64)
        )
        .parse()
        .unwrap()
    }

    #[test]
    fn a_request_that_does_not_verify_leaves_no_signing_key_behind() {
        let a = auth(&[("alice", "alice-secret", &[])]);
        let t = now() - Duration::from_secs(2 * 86_400);
        let (uri, h) = signed(
            "alice",
            "alice-secret",
            "GET",
            "/b/k",
            &[],
            t,
            Some(604_800),
        );
        let d = param(&query_params(uri.query().unwrap(), |_| true), "X-Amz-Date").unwrap()[..8]
            .to_owned();
        // The attack of issue 19: second 60 of the credential's day, a bogus signature.
        let attack = forged("alice", &d, &format!("{d}T235960Z"), "us-east-1");
        assert!(matches!(
            a.verify(
                &Method::GET,
                &attack,
                &HeaderMap::new(),
                Some("shoal.test"),
                now()
            ),
            Err(Denied::BadQuery(_))
        ));
        // Every date of the day and many regions, with bogus signatures: nothing is cached.
        for (i, region) in ["us-east-1", "eu-west-1", "x", "garage"].iter().enumerate() {
            let forged = forged("alice", &d, &format!("{d}T23595{i}Z"), region);
            assert_eq!(
                a.verify(
                    &Method::GET,
                    &forged,
                    &HeaderMap::new(),
                    Some("shoal.test"),
                    now()
                )
                .unwrap_err(),
                Denied::BadSignature
            );
        }
        assert_eq!(a.cached_keys(), 0);
        // Alice's own URL still verifies, and only it is cached.
        a.verify(&Method::GET, &uri, &h, Some("shoal.test"), now())
            .unwrap();
        assert_eq!(a.cached_keys(), 1);
        let huge = forged("alice", &d, &format!("{d}T000000Z"), &"r".repeat(30_000));
        assert!(matches!(
            a.verify(
                &Method::GET,
                &huge,
                &HeaderMap::new(),
                Some("shoal.test"),
                now()
            ),
            Err(Denied::BadQuery(_))
        ));
    }

    #[test]
    fn host_and_every_x_amz_header_must_be_signed() {
        let a = auth(&[("k", "s", &[])]);
        let (uri, h) = signed("k", "s", "GET", "/b/k", &[], now(), None);
        assert!(a
            .verify(&Method::GET, &uri, &h, Some("shoal.test"), now())
            .is_ok());
        // The host it was signed for is the host it is good for.
        assert_eq!(
            a.verify(&Method::GET, &uri, &h, Some("other.test"), now())
                .unwrap_err(),
            Denied::BadSignature
        );
        let mut extra = h.clone();
        extra.insert(
            "x-amz-server-side-encryption-customer-algorithm",
            "AES256".parse().unwrap(),
        );
        assert_eq!(
            a.verify(&Method::GET, &uri, &extra, Some("shoal.test"), now())
                .unwrap_err(),
            Denied::Unsigned("x-amz-server-side-encryption-customer-algorithm".into())
        );
        // A signature without host.
        let auth_value = h.get("authorization").unwrap().to_str().unwrap();
        let no_host = auth_value.replace("SignedHeaders=host;", "SignedHeaders=");
        let mut h2 = h.clone();
        h2.insert("authorization", no_host.parse().unwrap());
        assert_eq!(
            a.verify(&Method::GET, &uri, &h2, Some("shoal.test"), now())
                .unwrap_err(),
            Denied::Unsigned("host".into())
        );
        let (puri, ph) = signed("k", "s", "GET", "/b/k", &[], now(), Some(60));
        let pno_host: Uri = puri
            .to_string()
            .replace("X-Amz-SignedHeaders=host", "X-Amz-SignedHeaders=range")
            .parse()
            .unwrap();
        assert_eq!(
            a.verify(&Method::GET, &pno_host, &ph, Some("shoal.test"), now())
                .unwrap_err(),
            Denied::Unsigned("host".into())
        );
    }

    #[test]
    fn s3s_other_refusals() {
        let a = auth(&[("k", "s", &[])]);
        let (uri, h) = signed("k", "s", "GET", "/b/k", &[], now(), None);
        // A header signature and a query signature.
        let (puri, _) = signed("k", "s", "GET", "/b/k", &[], now(), Some(60));
        assert_eq!(
            a.verify(&Method::GET, &puri, &h, Some("shoal.test"), now())
                .unwrap_err(),
            Denied::TwoMechanisms
        );
        // Session tokens, in a header or the query.
        let mut tok = h.clone();
        tok.insert("x-amz-security-token", "FwoGZX".parse().unwrap());
        assert_eq!(
            a.verify(&Method::GET, &uri, &tok, Some("shoal.test"), now())
                .unwrap_err(),
            Denied::SessionToken
        );
        let qtok: Uri = format!("{puri}&X-Amz-Security-Token=FwoGZX")
            .parse()
            .unwrap();
        assert_eq!(
            a.verify(
                &Method::GET,
                &qtok,
                &HeaderMap::new(),
                Some("shoal.test"),
                now()
            )
            .unwrap_err(),
            Denied::SessionToken
        );
        // x-amz-content-sha256: a keyword, the empty body's hash, or nothing else.
        for (v, want) in [
            ("garbage", Some(Denied::BadContentSha256)),
            (&"A".repeat(64)[..], Some(Denied::BadContentSha256)),
            (&"a".repeat(64)[..], Some(Denied::ContentSha256Mismatch)),
            ("UNSIGNED-PAYLOAD", None),
            (EMPTY_SHA256, None),
        ] {
            // The value is judged before the signature: a changed one is refused as such.
            let mut h = h.clone();
            h.insert("x-amz-content-sha256", v.parse().unwrap());
            let got = a.verify(&Method::GET, &uri, &h, Some("shoal.test"), now());
            match want {
                Some(d) => assert_eq!(got.unwrap_err(), d, "{v}"),
                None => assert!(
                    matches!(got, Ok(_) | Err(Denied::BadSignature)),
                    "{v}: {got:?}"
                ),
            }
        }
    }

    #[test]
    fn a_plus_in_the_query_is_verified_as_the_space_it_is_served_as() {
        let a = auth(&[("k", "s", &[])]);
        // Signed for a literal `+` (`%2B`).
        let (uri, h) = signed(
            "k",
            "s",
            "GET",
            "/b?list-type=2&prefix=sec%2Fa%2B",
            &[],
            now(),
            None,
        );
        assert!(a
            .verify(&Method::GET, &uri, &h, Some("shoal.test"), now())
            .is_ok());
        let replay: Uri = uri.to_string().replace("%2Fa%2B", "%2Fa+").parse().unwrap();
        assert_eq!(
            a.verify(&Method::GET, &replay, &h, Some("shoal.test"), now())
                .unwrap_err(),
            Denied::BadSignature
        );
        // Signed for a space (`%20`): `+` is the same value.
        let (uri, h) = signed(
            "k",
            "s",
            "GET",
            "/b?list-type=2&prefix=a%20b",
            &[],
            now(),
            None,
        );
        let plus: Uri = uri.to_string().replace("a%20b", "a+b").parse().unwrap();
        assert!(a
            .verify(&Method::GET, &plus, &h, Some("shoal.test"), now())
            .is_ok());
    }

    /// Hostile shapes for what a SigV4 request carries.
    fn hostile() -> impl Strategy<Value = String> {
        prop_oneof![
            "[ -~]{0,40}",
            "[0-9TZ]{0,20}",
            Just("AWS4-HMAC-SHA256".to_string()),
            Just("%".to_string()),
            Just("%zz".to_string()),
            Just("/".to_string()),
            Just("=".to_string()),
            Just(",".to_string()),
            Just("aws4_request".to_string()),
            Just("99991231T235960Z".to_string()),
            Just("00000101T000000Z".to_string()),
            "\\PC{0,8}",
        ]
    }

    fn hostile_concat() -> impl Strategy<Value = String> {
        proptest::collection::vec(hostile(), 0..8).prop_map(|v| v.concat())
    }

    proptest! {
        #![proptest_config(crate::fuzz::config())]
        /// Fuzz: any Authorization header, presigned query, date and content hash is refused
        /// (or verified) without a panic, and no refused request leaves a key behind.
        #[test]
        fn fuzz_sigv4_never_panics_and_never_caches_a_refusal(
            cred in hostile_concat(),
            date in hostile_concat(),
            signed_headers in hostile_concat(),
            sig in hostile_concat(),
            sha in hostile_concat(),
            presign in any::<bool>(),
        ) {
            let a = auth(&[("alice", "s", &[])]);
            let mut h = HeaderMap::new();
            let uri: Uri = if presign {
                let q = format!(
                    "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=alice%2F{cred}&X-Amz-Date={date}&X-Amz-Expires=60&X-Amz-SignedHeaders={signed_headers}&X-Amz-Signature={sig}"
                );
                let q: String = q.chars().filter(|c| c.is_ascii_graphic() && *c != '#').collect();
                match format!("/b/k?{q}").parse() { Ok(u) => u, Err(_) => return Ok(()) }
            } else {
                let v = format!("AWS4-HMAC-SHA256 Credential=alice/{cred}, SignedHeaders={signed_headers}, Signature={sig}");
                if let Ok(v) = v.parse() { h.insert("authorization", v); }
                if let Ok(v) = date.parse() { h.insert("x-amz-date", v); }
                if let Ok(v) = sha.parse() { h.insert("x-amz-content-sha256", v); }
                "/b/k".parse().unwrap()
            };
            let _ = a.verify(&Method::GET, &uri, &h, Some("shoal.test"), now());
            prop_assert_eq!(a.cached_keys(), 0);
        }

        /// Fuzz: the date parser never panics, and what it accepts formats back to itself.
        #[test]
        fn fuzz_amz_dates(s in "[0-9]{8}T[0-9]{6}Z|[ -~]{0,20}") {
            if let Some(t) = parse_amz_date(&s) {
                let d = t.duration_since(UNIX_EPOCH).unwrap().as_secs();
                prop_assert!(d % 60 < 60);
                prop_assert_eq!(&s[13..15], format!("{:02}", d % 60));
            }
        }
    }

    #[test]
    fn secrets_do_not_print() {
        let a = auth(&[("k", "the-secret-value", &[])]);
        assert!(!format!("{a:?}").contains("the-secret-value"));
        assert!(!format!("{:?}", Secret("the-secret-value".into())).contains("secret-value"));
    }

    fn key_strategy() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                Just("a".to_string()),
                Just(" ".to_string()),
                Just("+".to_string()),
                Just("%".to_string()),
                Just("/".to_string()),
                Just("é".to_string()),
                Just("✓".to_string()),
                Just("~".to_string()),
                Just("(".to_string()),
                Just("=".to_string()),
                "[a-zA-Z0-9._-]{1,4}",
            ],
            1..8,
        )
        .prop_map(|v| v.concat())
    }

    fn enc(s: &str, keep_slash: bool) -> String {
        uri_encode(s.as_bytes(), keep_slash)
    }

    proptest! {
        /// Using a component as sent when it is canonical gives exactly what decoding and
        /// encoding it again gives.
        #[test]
        fn the_canonical_fast_path_equals_decode_and_encode(
            raw in "([a-zA-Z0-9._~/+ -]|%[0-9a-fA-F]{2}|%)*",
            keep_slash in any::<bool>(),
        ) {
            let slow = uri_encode(
                &percent_encoding::percent_decode_str(&raw).collect::<Vec<u8>>(),
                keep_slash,
            );
            prop_assert_eq!(canonical(&raw, keep_slash).into_owned(), slow);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// A request signed by the SDK's own signer always verifies; changing any one signed
        /// part of it — method, path, query, a signed header, the date — never does.
        #[test]
        fn sdk_signatures_verify_and_single_changes_never_do(
            key in key_strategy(),
            qk in "[a-z-]{1,6}", qv in key_strategy(),
            hv in "[a-z]{0,3}( {1,3}[a-z!-~]{1,3}){0,3}",
            secret in "[A-Za-z0-9/+]{8,40}",
            presign in any::<bool>(),
            which in 0usize..5,
        ) {
            let a = auth(&[("AKIDTEST", &secret, &[])]);
            let t = now();
            let path = format!("/bucket/{}", enc(&key, true));
            let uri = format!("{path}?{}={}&x-id=GetObject", enc(&qk, false), enc(&qv, false));
            let (u, h) = signed("AKIDTEST", &secret, "GET", &uri, &[("x-amz-meta-test", hv.trim())], t, presign.then_some(300));
            prop_assert!(a.verify(&Method::GET, &u, &h, Some("shoal.test"), t).is_ok(), "{}", u);
            let (mut u2, mut h2, mut m2) = (u.clone(), h.clone(), Method::GET);
            match which {
                0 => m2 = Method::HEAD,
                1 => u2 = u.to_string().replacen("/bucket/", "/bucket/x", 1).parse().unwrap(),
                2 => u2 = u.to_string().replacen("x-id=GetObject", "x-id=GetObjecu", 1).parse().unwrap(),
                3 => { h2.insert("x-amz-meta-test", format!("{}!", hv.trim()).parse().unwrap()); }
                _ => {
                    if presign {
                        let d = param(&query_params(u.query().unwrap(), |_| true), "X-Amz-Date").unwrap().to_owned();
                        let mut b = d.clone().into_bytes();
                        b[14] = if b[14] == b'0' { b'1' } else { b'0' };
                        let d2 = String::from_utf8(b).unwrap();
                        u2 = u.to_string().replacen(&d, &d2, 1).parse().unwrap();
                    } else {
                        let d = h.get("x-amz-date").unwrap().to_str().unwrap().to_owned();
                        let mut b = d.into_bytes();
                        b[14] = if b[14] == b'0' { b'1' } else { b'0' };
                        h2.insert("x-amz-date", String::from_utf8(b).unwrap().parse().unwrap());
                    }
                }
            }
            prop_assert!(a.verify(&m2, &u2, &h2, Some("shoal.test"), t).is_err(), "change {} accepted", which);
        }
    }
}
