//! The S3 origin: AWS S3 or any S3-compatible store through aws-sdk-s3.
//!
//! Every ranged GET is pinned with `If-Match`, and the answer's ETag, `Content-Range` and
//! length are handed up with the body, so that [`super::verify`] can check them: an origin (or
//! a proxy in front of it) that ignores `If-Match` or `Range` is caught there, not trusted.

use super::{
    BucketInfo, BucketList, ListEntry, ListPage, ListRequest, ListVersion, ObjectMeta, Origin,
    RangeAnswer, RangeRequest, RawAnswer, RawRequest, Selector,
};
use crate::config::OriginConfig;
use crate::error::{Error, OriginError};
use async_trait::async_trait;
use aws_sdk_s3::config::interceptors::{
    AfterDeserializationInterceptorContextRef, BeforeDeserializationInterceptorContextMut,
};
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::Client;
use futures_util::StreamExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// The key the SDK is given when the real key is one it refuses to build a request for (only
/// whitespace: `" "`, `"\t"`, `"\n"`, which S3 itself accepts). The request is built for this
/// key, and its URI is rewritten to the real one before signing.
const PLACEHOLDER: &str = "shoal-placeholder-key-9f1c";

/// The key to give the SDK for `key`.
fn sdk_key(key: &str) -> &str {
    if key.trim().is_empty() {
        PLACEHOLDER
    } else {
        key
    }
}

/// S3's encoding of a key in a path: everything but RFC 3986 unreserved characters and `/`.
fn encode_key(key: &str) -> String {
    super::url_encode(key)
}

use super::encode_component as encode_query;

/// Rewrites a request the SDK built for [`PLACEHOLDER`] (or for any key, when `query` is
/// given) to the exact `key` and query, before it is signed.
fn rewrite_uri(uri: &str, key: &str, query: Option<&str>) -> Option<String> {
    let (path_end, old_query) = match uri.find('?') {
        Some(i) => (i, Some(&uri[i + 1..])),
        None => (uri.len(), None),
    };
    let mut out = uri[..path_end].to_owned();
    let marker = format!("/{PLACEHOLDER}");
    if let Some(at) = out
        .rfind(&marker)
        .filter(|at| at + marker.len() == out.len())
    {
        out.truncate(at);
        if !key.is_empty() {
            out.push('/');
            out.push_str(&encode_key(key));
        } else if !out[out.find("://").map_or(0, |i| i + 3)..].contains('/') {
            // Virtual-hosted style: the bucket's root.
            out.push('/');
        }
    }
    match query.or(old_query) {
        Some(q) if !q.is_empty() => {
            out.push('?');
            out.push_str(q);
        }
        _ => {}
    }
    Some(out)
}

/// A closure for `mutate_request` that puts the real key back into a placeholder request.
fn exact_key(
    key: &str,
) -> impl Fn(&mut aws_sdk_s3::config::http::HttpRequest) + Send + Sync + 'static {
    let key = (key.trim().is_empty()).then(|| key.to_owned());
    move |req| {
        if let Some(k) = &key {
            if let Some(u) = rewrite_uri(req.uri(), k, None) {
                let _ = req.set_uri(u);
            }
        }
    }
}

/// What the origin answered to a passthrough: status, headers and the body, untouched.
type Captured = (u16, http::HeaderMap, aws_smithy_types::body::SdkBody);

/// Takes the origin's answer to a passthrough before the SDK reads it: status, headers and
/// body are kept as they arrived, and the SDK is left an empty 200 to "deserialize". The SDK
/// never judges an answer it was not built for (a tagging document, an error, a header in a
/// form it does not parse), so Shoal can pass on exactly what the origin said.
#[derive(Debug, Clone, Default)]
struct Capture(Arc<Mutex<Option<Captured>>>);

impl Intercept for Capture {
    fn name(&self) -> &'static str {
        "ShoalCapture"
    }
    fn modify_before_deserialization(
        &self,
        ctx: &mut BeforeDeserializationInterceptorContextMut<'_>,
        _rc: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), aws_sdk_s3::error::BoxError> {
        let r = ctx.response_mut();
        let headers = raw_headers(r.headers().iter());
        let status = r.status().as_u16();
        let body = std::mem::replace(r.body_mut(), aws_smithy_types::body::SdkBody::empty());
        let names: Vec<String> = r.headers().iter().map(|(k, _)| k.to_owned()).collect();
        for n in names {
            r.headers_mut().remove(n);
        }
        if let Ok(ok) = aws_sdk_s3::config::http::HttpResponse::try_from(http::Response::new(
            aws_smithy_types::body::SdkBody::empty(),
        )) {
            *r.status_mut() = ok.status();
        }
        *crate::layer::lock(&self.0) = Some((status, headers, body));
        Ok(())
    }
}

/// Headers as the origin sent them, without hop-by-hop ones and the origin's own identity.
fn raw_headers<'a>(it: impl Iterator<Item = (&'a str, &'a str)>) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    for (k, v) in it {
        let lk = k.to_ascii_lowercase();
        if matches!(
            lk.as_str(),
            "connection"
                | "keep-alive"
                | "transfer-encoding"
                | "te"
                | "trailer"
                | "upgrade"
                | "proxy-connection"
                | "server"
                | "date"
                | "x-amz-request-id"
        ) {
            continue;
        }
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(lk.as_bytes()),
            http::HeaderValue::from_str(v),
        ) {
            h.append(n, v);
        }
    }
    h
}

/// The checksum headers S3 may send for an object (with `x-amz-checksum-mode: ENABLED`).
fn checksums_of(h: &aws_sdk_s3::operation::head_object::HeadObjectOutput) -> Vec<(String, String)> {
    let mut v = Vec::new();
    for (name, value) in [
        ("x-amz-checksum-crc32", h.checksum_crc32()),
        ("x-amz-checksum-crc32c", h.checksum_crc32_c()),
        ("x-amz-checksum-crc64nvme", h.checksum_crc64_nvme()),
        ("x-amz-checksum-sha1", h.checksum_sha1()),
        ("x-amz-checksum-sha256", h.checksum_sha256()),
        ("x-amz-checksum-type", h.checksum_type().map(|t| t.as_str())),
    ] {
        if let Some(x) = value {
            v.push((name.to_owned(), x.to_owned()));
        }
    }
    v
}

/// Bounds the wait for an origin's answer (status and headers) by `origin.timeout`. An origin
/// that accepts the connection and then says nothing is a transient failure, retried like one.
async fn answer<T, E>(
    timeout: Duration,
    fut: impl std::future::Future<Output = Result<T, SdkError<E>>>,
) -> Result<T, OriginError>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r.map_err(map_err),
        Err(_) => Err(OriginError::Transient(format!(
            "origin did not answer within {timeout:?}"
        ))),
    }
}

/// An origin reached through aws-sdk-s3.
#[derive(Clone, Debug)]
pub struct S3Origin {
    client: Client,
    region: String,
    timeout: Duration,
    /// Whether each bucket exists, learned (by HeadBucket) only when an object HEAD says 404,
    /// whose answer has no body to tell `NoSuchKey` from `NoSuchBucket`.
    buckets: moka::future::Cache<String, bool>,
}

impl S3Origin {
    /// A GET of `range` whose answer also stands for a HEAD: the metadata (the size from the
    /// `Content-Range` total) and the bytes.
    async fn get_with_meta(
        &self,
        bucket: &str,
        key: &str,
        range: String,
    ) -> Result<(ObjectMeta, RangeAnswer), OriginError> {
        let out = answer(
            self.timeout,
            self.client
                .get_object()
                .bucket(bucket)
                .key(sdk_key(key))
                .range(range)
                .customize()
                .mutate_request(exact_key(key))
                // The same as `get_range`: retries and stalls are the fill's to handle.
                .config_override(no_sdk_retries())
                .send(),
        )
        .await?;
        // A GET answers with every header a HEAD does; the size is the Content-Range total
        // (or the length of a whole-object answer).
        let size = match out
            .content_range()
            .and_then(crate::wire::parse_content_range)
        {
            Some((_, _, Some(total))) => total,
            Some(_) => {
                return Err(OriginError::Rejected(
                    "origin answered a range without the object's size".into(),
                ))
            }
            None => out.content_length().unwrap_or(0).max(0) as u64,
        };
        // A ranged GET does not carry the object's checksums.
        let meta = object_meta!(out, size, None, None);
        Ok((meta, self.range_answer(out)))
    }

    /// Builds the client: endpoint, path style and credentials from the config, else the
    /// standard AWS chain (env, profile, IMDS).
    pub async fn new(cfg: &OriginConfig) -> Result<Self, Error> {
        let creds = cfg
            .access_key_id
            .as_deref()
            .zip(cfg.secret_access_key.as_deref());
        let client = crate::sdk::sdk_client(
            cfg.endpoint.as_deref(),
            &cfg.region,
            cfg.force_path_style,
            creds,
        )
        .await;
        Ok(S3Origin {
            client,
            region: cfg.region.clone(),
            timeout: cfg.timeout.0,
            buckets: moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(BUCKET_TTL)
                .build(),
        })
    }

    /// The underlying SDK client (tests use it to seed and compare).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// What a GET answered, for [`super::verify`], with a body that fails when it stalls for
    /// `origin.timeout`.
    fn range_answer(&self, out: aws_sdk_s3::operation::get_object::GetObjectOutput) -> RangeAnswer {
        let etag = out.e_tag().map(str::to_owned);
        let content_range = out.content_range().map(str::to_owned);
        let content_length = out.content_length().and_then(|n| u64::try_from(n).ok());
        RangeAnswer {
            etag,
            content_range,
            content_length,
            body: self.idle_guarded(out.body),
        }
    }

    /// Whether `bucket` exists (cached for [`BUCKET_TTL`]); asked only after an object's
    /// HEAD said 404. When HeadBucket itself fails, the bucket is taken to exist (the answer
    /// stays `NoSuchKey`, as before).
    async fn bucket_exists(&self, bucket: &str) -> bool {
        if let Some(known) = self.buckets.get(bucket).await {
            return known;
        }
        let exists = !matches!(
            self.head_bucket(bucket).await,
            Err(OriginError::NoSuchBucket | OriginError::NotFound)
        );
        self.buckets.insert(bucket.to_owned(), exists).await;
        exists
    }

    /// A body that fails when it stalls for `origin.timeout`.
    fn idle_guarded(&self, body: aws_sdk_s3::primitives::ByteStream) -> super::ByteStream {
        let idle = self.timeout;
        let stream = futures_util::stream::unfold(body, move |mut body| async move {
            match tokio::time::timeout(idle, body.next()).await {
                Ok(Some(Ok(b))) => Some((Ok(b), body)),
                Ok(Some(Err(e))) => Some((
                    Err(Error::Origin(OriginError::Transient(format!(
                        "origin body: {e}"
                    )))),
                    body,
                )),
                Ok(None) => None,
                Err(_) => Some((
                    Err(Error::Origin(OriginError::Transient(format!(
                        "origin body stalled for {idle:?}"
                    )))),
                    body,
                )),
            }
        });
        stream.boxed()
    }
}

/// How long Shoal trusts what it learned about a bucket's existence.
const BUCKET_TTL: Duration = Duration::from_secs(30);

/// `x-amz-meta-*` pairs, names lowercased, sorted by name.
/// SDK settings for requests whose retries and stalls are someone else's to handle: the GETs
/// that fill chunks (RetryUntilCommitLayer owns their retries; SDK retries underneath it
/// would multiply the attempts and hide them from the budget, and stalls are detected with
/// `origin.timeout`, the one knob the retry budget is checked against, not by the SDK's own
/// 5 s stalled-stream guard) and passed-through requests (the client retries as it sees fit).
fn no_sdk_retries() -> aws_sdk_s3::config::Builder {
    aws_sdk_s3::config::Builder::default()
        .retry_config(RetryConfig::disabled())
        .stalled_stream_protection(aws_sdk_s3::config::StalledStreamProtectionConfig::disabled())
}

/// An object's metadata from a HEAD or a GET answer, given its size, part range and
/// checksums: the SDK's two outputs have the same accessors, and metadata learned from a cold
/// GET must describe the object exactly as a HEAD's does, so both are read by one field list.
macro_rules! object_meta {
    ($out:expr, $size:expr, $part_range:expr, $checksums:expr) => {{
        let o = &$out;
        ObjectMeta {
            size: $size,
            etag: o
                .e_tag()
                .map(|e| e.trim_matches('"').to_owned())
                .unwrap_or_default(),
            content_type: o.content_type().map(str::to_owned),
            last_modified: o.last_modified().and_then(to_system_time),
            cache_control: o.cache_control().map(str::to_owned),
            content_encoding: o.content_encoding().map(str::to_owned),
            content_disposition: o.content_disposition().map(str::to_owned),
            content_language: o.content_language().map(str::to_owned),
            expires: o.expires_string().map(str::to_owned),
            user_metadata: user_metadata(o.metadata()),
            version_id: o.version_id().map(str::to_owned),
            parts_count: o.parts_count().and_then(|n| u32::try_from(n).ok()),
            part_range: $part_range,
            checksums: $checksums,
            headers: Default::default(),
        }
    }};
}
use object_meta;

fn user_metadata(m: Option<&std::collections::HashMap<String, String>>) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = m
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Files an SDK error as an [`OriginError`].
///
/// An answer that failed *on the way in* is transient, whatever its status line said: the body
/// was cut short (`ResponseError`), the request timed out or never got through
/// (`TimeoutError`, `DispatchFailure`), or a 2xx/3xx answer's body could not be read as the
/// operation's output (the SDK reports a success body it cannot parse as an "unhandled" service
/// error carrying the 200). Such a failure says nothing about the request, so it is retried,
/// and in the end answered as the retryable 502 of SPEC §1.4 — never as a 400 that tells the
/// client its request was wrong (issue 21: a LIST cut short was answered 400 "HTTP 200").
fn map_err<E>(e: SdkError<E>) -> OriginError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let status = e.raw_response().map(|r| r.status().as_u16());
    let transport = matches!(
        e,
        SdkError::ResponseError(_) | SdkError::TimeoutError(_) | SdkError::DispatchFailure(_)
    );
    if transport && status.is_none_or(|s| s < 400) {
        return OriginError::Transient(
            format!(
                "origin answer not received whole: {}",
                aws_smithy_types::error::display::DisplayErrorContext(&e)
            )
            .chars()
            .take(300)
            .collect(),
        );
    }
    let code = e
        .as_service_error()
        .and_then(|s| s.code())
        .map(str::to_owned);
    let msg = format!(
        "{}{}",
        code.clone().unwrap_or_default(),
        e.as_service_error()
            .and_then(|s| s.message())
            .map(|m| format!(": {m}"))
            .unwrap_or_default()
    );
    match (status, code.as_deref()) {
        (_, Some("NoSuchBucket")) => OriginError::NoSuchBucket,
        (Some(404), _) | (_, Some("NoSuchKey")) => OriginError::NotFound,
        (Some(412), _) | (_, Some("PreconditionFailed")) => OriginError::EtagChanged,
        (Some(401 | 403), _) => OriginError::Unauthorized(msg),
        (Some(429), _) | (_, Some("SlowDown" | "Throttling" | "ThrottlingException")) => {
            OriginError::Throttled(msg)
        }
        (Some(s), _) if s >= 500 => OriginError::Transient(format!("HTTP {s} {msg}")),
        // A success (or redirect) status with an error: its body did not parse.
        (Some(s), _) if s < 400 => OriginError::Transient(
            format!(
                "HTTP {s} answer could not be read: {}",
                aws_smithy_types::error::display::DisplayErrorContext(&e)
            )
            .chars()
            .take(300)
            .collect(),
        ),
        (Some(s), _) => OriginError::Rejected(format!("HTTP {s} {msg}")),
        // No response at all: timeouts, connection errors, dispatch failures.
        (None, _) => OriginError::Transient(format!("{e:?}").chars().take(300).collect()),
    }
}

fn to_system_time(t: &aws_sdk_s3::primitives::DateTime) -> Option<SystemTime> {
    SystemTime::try_from(*t).ok()
}

/// A LIST answer that arrived but cannot be trusted: an origin failure, retried like a reset
/// (`Protocol` is transient), never passed on as a 200.
fn malformed(why: impl std::fmt::Display) -> OriginError {
    OriginError::Protocol(format!("malformed LIST answer: {why}"))
}

/// One listed object, verified: an entry without `Key`, `Size` or `ETag` is a malformed answer
/// (a body cut short, a proxy that mangled it), not an object of size 0 or without a version.
fn list_entry(o: &aws_sdk_s3::types::Object) -> Result<ListEntry, OriginError> {
    let key = o.key().ok_or_else(|| malformed("an entry without Key"))?;
    let size = o
        .size()
        .and_then(|n| u64::try_from(n).ok())
        .ok_or_else(|| malformed(format_args!("entry {key:?} without a valid Size")))?;
    let etag = o
        .e_tag()
        .ok_or_else(|| malformed(format_args!("entry {key:?} without ETag")))?;
    Ok(ListEntry {
        key: key.to_owned(),
        last_modified: o.last_modified().and_then(to_system_time),
        etag: Some(etag.to_owned()),
        size,
        storage_class: o.storage_class().map(|s| s.as_str().to_owned()),
        owner: o.owner().and_then(|ow| {
            ow.id()
                .map(|id| (id.to_owned(), ow.display_name().map(str::to_owned)))
        }),
    })
}

/// The listed objects, each verified.
fn list_entries(objects: &[aws_sdk_s3::types::Object]) -> Result<Vec<ListEntry>, OriginError> {
    objects.iter().map(list_entry).collect()
}

/// The common prefixes; one without `Prefix` is malformed.
fn prefixes(p: &[aws_sdk_s3::types::CommonPrefix]) -> Result<Vec<String>, OriginError> {
    p.iter()
        .map(|p| {
            p.prefix()
                .map(str::to_owned)
                .ok_or_else(|| malformed("a CommonPrefixes entry without Prefix"))
        })
        .collect()
}

/// Whether a LIST answer's XML document arrived whole: it must end with the root element's
/// closing tag. The SDK's XML reader accepts a document cut short (it reads the elements it
/// got), and a cut that lands between two entries leaves nothing else to notice — every entry
/// it has is complete, and a V1 listing has no `KeyCount`. A cut with a `Content-Length` that
/// matches (a proxy that truncated and re-framed the body) is only visible here.
fn xml_is_whole(body: &[u8], root: &str) -> bool {
    let close = format!("</{root}>");
    body.trim_ascii_end().ends_with(close.as_bytes())
}

/// The verdict of [`xml_is_whole`] on a LIST answer's raw body, taken by an interceptor after
/// the SDK read it (the parsed output keeps no trace of where the document ended). `None`:
/// no successful answer was seen.
#[derive(Debug, Clone, Default)]
struct WholeXml(Arc<Mutex<Option<bool>>>);

impl Intercept for WholeXml {
    fn name(&self) -> &'static str {
        "ShoalWholeXml"
    }
    fn read_after_deserialization(
        &self,
        ctx: &AfterDeserializationInterceptorContextRef<'_>,
        _rc: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), aws_sdk_s3::error::BoxError> {
        let r = ctx.response();
        if r.status().is_success() {
            // A non-streaming operation's body is in memory by now; if it were not, the
            // document could not be checked, and is not trusted.
            let whole = r
                .body()
                .bytes()
                .is_some_and(|b| xml_is_whole(b, "ListBucketResult"));
            *crate::layer::lock(&self.0) = Some(whole);
        }
        Ok(())
    }
}

impl WholeXml {
    /// Fails unless the answer just received was seen whole.
    fn check(&self) -> Result<(), OriginError> {
        match crate::layer::lock(&self.0).take() {
            Some(true) => Ok(()),
            Some(false) => Err(malformed(
                "the XML document ends before </ListBucketResult> (body cut short)",
            )),
            None => Err(malformed("the answer's body was not seen")),
        }
    }
}

#[async_trait]
impl Origin for S3Origin {
    async fn head(&self, bucket: &str, key: &str) -> Result<ObjectMeta, OriginError> {
        self.head_selected(bucket, key, &Selector::default()).await
    }

    async fn head_selected(
        &self,
        bucket: &str,
        key: &str,
        sel: &Selector,
    ) -> Result<ObjectMeta, OriginError> {
        let sent = answer(
            self.timeout,
            self.client
                .head_object()
                .bucket(bucket)
                .key(sdk_key(key))
                .set_version_id(sel.version_id.as_deref().map(str::to_owned))
                .set_part_number(sel.part_number.and_then(|n| i32::try_from(n).ok()))
                .checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled)
                .customize()
                .mutate_request(exact_key(key))
                .send(),
        )
        .await;
        let out = match sent {
            Ok(out) => out,
            Err(OriginError::NotFound) if !self.bucket_exists(bucket).await => {
                return Err(OriginError::NoSuchBucket)
            }
            Err(e) => return Err(e),
        };
        let part_range = match (sel.part_number, out.content_range()) {
            (Some(_), Some(cr)) => crate::wire::parse_content_range(cr).map(|(s, e, _)| (s, e)),
            _ => None,
        };
        // With a part number, the object's size is the Content-Range total.
        let size = match out
            .content_range()
            .and_then(crate::wire::parse_content_range)
        {
            Some((_, _, Some(total))) if sel.part_number.is_some() => total,
            _ => out.content_length().unwrap_or(0).max(0) as u64,
        };
        Ok(object_meta!(
            out,
            size,
            part_range,
            Some(checksums_of(&out))
        ))
    }

    async fn passthrough(&self, req: RawRequest) -> Result<RawAnswer, OriginError> {
        let query: Vec<String> = req
            .query
            .iter()
            .map(|(k, v)| {
                if v.is_empty() {
                    encode_query(k)
                } else {
                    format!("{}={}", encode_query(k), encode_query(v))
                }
            })
            .collect();
        let query = query.join("&");
        let key = req.key.clone();
        let method = req.method.clone();
        let headers = req.headers.clone();
        let capture = Capture::default();
        let sent = tokio::time::timeout(
            self.timeout,
            self.client
                .get_object()
                .bucket(&req.bucket)
                .key(PLACEHOLDER)
                .customize()
                .interceptor(capture.clone())
                .mutate_request(move |r| {
                    if let Some(u) = rewrite_uri(r.uri(), &key, Some(&query)) {
                        let _ = r.set_uri(u);
                    }
                    let _ = r.set_method(method.as_str());
                    for (k, v) in &headers {
                        if let Ok(v) = v.to_str() {
                            r.headers_mut().insert(k.as_str().to_owned(), v.to_owned());
                        }
                    }
                })
                // The client retries as it sees fit; Shoal passes the first answer on.
                .config_override(no_sdk_retries())
                .send(),
        )
        .await
        .map_err(|_| {
            OriginError::Transient(format!("origin did not answer within {:?}", self.timeout))
        })?;
        let captured = crate::layer::lock(&capture.0).take();
        match (sent, captured) {
            (_, Some((status, headers, body))) => {
                let status = http::StatusCode::from_u16(status)
                    .map_err(|_| OriginError::Protocol(format!("status {status}")))?;
                let body = self.idle_guarded(aws_sdk_s3::primitives::ByteStream::new(body));
                Ok(RawAnswer {
                    status,
                    headers,
                    body,
                })
            }
            // No answer at all: a connection error or a timeout.
            (Err(e), None) => Err(map_err(e)),
            (Ok(_), None) => Err(OriginError::Protocol(
                "the origin's answer was not seen".into(),
            )),
        }
    }

    async fn get_range(&self, r: &RangeRequest) -> Result<RangeAnswer, OriginError> {
        let end = r.offset + r.len - 1;
        let out = answer(
            self.timeout,
            self.client
                .get_object()
                .bucket(&*r.bucket)
                .key(sdk_key(&r.key))
                .set_version_id(r.version_id.as_deref().map(str::to_owned))
                .range(format!("bytes={}-{end}", r.offset))
                .if_match(format!("\"{}\"", r.etag))
                .customize()
                .mutate_request(exact_key(&r.key))
                .config_override(no_sdk_retries())
                .send(),
        )
        .await?;
        Ok(self.range_answer(out))
    }

    async fn get_first(
        &self,
        bucket: &str,
        key: &str,
        len: u64,
    ) -> Result<(ObjectMeta, RangeAnswer), OriginError> {
        self.get_with_meta(bucket, key, format!("bytes=0-{}", len.max(1) - 1))
            .await
    }

    async fn get_suffix(
        &self,
        bucket: &str,
        key: &str,
        len: u64,
    ) -> Result<(ObjectMeta, RangeAnswer), OriginError> {
        self.get_with_meta(bucket, key, format!("bytes=-{}", len.max(1)))
            .await
    }

    async fn list(&self, bucket: &str, req: &ListRequest) -> Result<ListPage, OriginError> {
        let enc = req
            .encoding_url
            .then_some(aws_sdk_s3::types::EncodingType::Url);
        match req.version {
            ListVersion::V2 => {
                let whole = WholeXml::default();
                let out = answer(
                    self.timeout,
                    self.client
                        .list_objects_v2()
                        .bucket(bucket)
                        .set_prefix(req.prefix.clone())
                        .set_delimiter(req.delimiter.clone())
                        .max_keys(req.max_keys)
                        .set_continuation_token(req.continuation_token.clone())
                        .set_start_after(req.start_after.clone())
                        .fetch_owner(req.fetch_owner)
                        .set_encoding_type(enc)
                        .customize()
                        .interceptor(whole.clone())
                        // Shoal's LIST path retries (with the checks below, which the SDK's
                        // retries would not repeat); SDK retries under it would multiply them.
                        .config_override(no_sdk_retries())
                        .send(),
                )
                .await?;
                whole.check()?;
                let contents = list_entries(out.contents())?;
                let common_prefixes = prefixes(out.common_prefixes())?;
                // KeyCount counts the keys and the common prefixes the page returns.
                if let Some(n) = out.key_count() {
                    if usize::try_from(n).ok() != Some(contents.len() + common_prefixes.len()) {
                        return Err(malformed(format_args!(
                            "KeyCount {n} but {} entries and {} common prefixes",
                            contents.len(),
                            common_prefixes.len()
                        )));
                    }
                }
                Ok(ListPage {
                    contents,
                    common_prefixes,
                    is_truncated: out.is_truncated().unwrap_or(false),
                    next_continuation_token: out.next_continuation_token().map(str::to_owned),
                    next_marker: None,
                    prefix: out.prefix().map(str::to_owned),
                    max_keys: out.max_keys(),
                    delimiter: out.delimiter().map(str::to_owned),
                    start_after: out.start_after().map(str::to_owned),
                    marker: None,
                    url_encoded: out.encoding_type().is_some(),
                })
            }
            ListVersion::V1 => {
                let whole = WholeXml::default();
                let out = answer(
                    self.timeout,
                    self.client
                        .list_objects()
                        .bucket(bucket)
                        .set_prefix(req.prefix.clone())
                        .set_delimiter(req.delimiter.clone())
                        .max_keys(req.max_keys)
                        .set_marker(req.marker.clone())
                        .set_encoding_type(enc)
                        .customize()
                        .interceptor(whole.clone())
                        .config_override(no_sdk_retries())
                        .send(),
                )
                .await?;
                // V1 has no KeyCount: the document's end is what proves it complete.
                whole.check()?;
                Ok(ListPage {
                    contents: list_entries(out.contents())?,
                    common_prefixes: prefixes(out.common_prefixes())?,
                    is_truncated: out.is_truncated().unwrap_or(false),
                    next_continuation_token: None,
                    next_marker: out.next_marker().map(str::to_owned),
                    prefix: out.prefix().map(str::to_owned),
                    max_keys: out.max_keys(),
                    delimiter: out.delimiter().map(str::to_owned),
                    start_after: None,
                    marker: out.marker().map(str::to_owned),
                    url_encoded: out.encoding_type().is_some(),
                })
            }
        }
    }

    async fn head_bucket(&self, bucket: &str) -> Result<(), OriginError> {
        match answer(
            self.timeout,
            self.client.head_bucket().bucket(bucket).send(),
        )
        .await
        {
            Ok(_) => Ok(()),
            Err(e) => Err(match e {
                OriginError::NotFound => OriginError::NoSuchBucket,
                other => other,
            }),
        }
    }

    async fn list_buckets(&self) -> Result<BucketList, OriginError> {
        let out = answer(self.timeout, self.client.list_buckets().send()).await?;
        Ok(BucketList {
            buckets: out
                .buckets()
                .iter()
                .filter_map(|b| {
                    Some(BucketInfo {
                        name: b.name()?.to_owned(),
                        created: b.creation_date().and_then(to_system_time),
                    })
                })
                .collect(),
            owner: out.owner().and_then(|o| {
                o.id()
                    .map(|id| (id.to_owned(), o.display_name().map(str::to_owned)))
            }),
        })
    }

    fn region(&self) -> &str {
        &self.region
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholder_requests_are_rewritten_to_the_exact_key_and_query() {
        let p = format!("http://127.0.0.1:9/b/{PLACEHOLDER}?x-id=GetObject");
        assert_eq!(
            rewrite_uri(&p, " ", None).unwrap(),
            "http://127.0.0.1:9/b/%20?x-id=GetObject"
        );
        assert_eq!(
            rewrite_uri(&p, "\t/a b", Some("tagging")).unwrap(),
            "http://127.0.0.1:9/b/%09/a%20b?tagging"
        );
        // A bucket sub-resource: path style keeps the bucket, virtual-hosted style the root.
        assert_eq!(
            rewrite_uri(&p, "", Some("versioning")).unwrap(),
            "http://127.0.0.1:9/b?versioning"
        );
        let v = format!("https://b.s3.amazonaws.com/{PLACEHOLDER}?x-id=GetObject");
        assert_eq!(
            rewrite_uri(&v, "", Some("versions&prefix=a")).unwrap(),
            "https://b.s3.amazonaws.com/?versions&prefix=a"
        );
        // A URI without the placeholder keeps its path.
        assert_eq!(
            rewrite_uri("http://h/b/real", "x", Some("acl")).unwrap(),
            "http://h/b/real?acl"
        );
        assert_eq!(sdk_key(" \n"), PLACEHOLDER);
        assert_eq!(sdk_key(" a "), " a ");
    }

    fn raw(status: u16) -> aws_sdk_s3::config::http::HttpResponse {
        aws_sdk_s3::config::http::HttpResponse::try_from(
            http::Response::builder()
                .status(status)
                .body(aws_smithy_types::body::SdkBody::empty())
                .unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn an_answer_that_failed_on_the_way_in_is_transient_not_rejected() {
        use aws_sdk_s3::operation::list_objects_v2::ListObjectsV2Error as E;
        // A 200 whose body was cut short (issue 21: answered 400 "HTTP 200").
        let cut = SdkError::<E, _>::response_error("connection reset", raw(200));
        assert!(matches!(map_err(cut), OriginError::Transient(_)));
        // A 200 whose body did not parse as a listing.
        let unparsed = SdkError::service_error(E::unhandled("bad XML"), raw(200));
        assert!(matches!(map_err(unparsed), OriginError::Transient(_)));
        // A 4xx stays what its status says, even when its body broke too.
        let e = SdkError::<E, _>::response_error("reset", raw(404));
        assert_eq!(map_err(e), OriginError::NotFound);
        let e = SdkError::service_error(E::unhandled("?"), raw(400));
        assert!(matches!(map_err(e), OriginError::Rejected(_)));
    }

    #[test]
    fn list_answers_are_verified_not_defaulted() {
        use aws_sdk_s3::types::Object;
        assert!(xml_is_whole(
            b"<ListBucketResult><Contents/></ListBucketResult>\n",
            "ListBucketResult"
        ));
        assert!(!xml_is_whole(
            b"<ListBucketResult><Contents/>",
            "ListBucketResult"
        ));
        assert!(!xml_is_whole(b"", "ListBucketResult"));
        let whole = Object::builder().key("k").size(7).e_tag("\"e\"").build();
        let e = list_entry(&whole).unwrap();
        assert_eq!(
            (e.key.as_str(), e.size, e.etag.as_deref()),
            ("k", 7, Some("\"e\""))
        );
        for bad in [
            Object::builder().size(7).e_tag("\"e\"").build(),
            Object::builder().key("k").e_tag("\"e\"").build(),
            Object::builder().key("k").size(7).build(),
            Object::builder().key("k").size(-1).e_tag("\"e\"").build(),
        ] {
            assert!(
                matches!(list_entry(&bad), Err(OriginError::Protocol(_))),
                "{bad:?}"
            );
        }
        let p = aws_sdk_s3::types::CommonPrefix::builder().build();
        assert!(prefixes(&[p]).is_err());
    }

    #[tokio::test]
    async fn a_silent_origin_is_a_transient_failure_not_a_hang() {
        // Accepts connections and never answers.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let keep = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        });
        let cfg = OriginConfig {
            endpoint: Some(format!("http://{addr}")),
            force_path_style: true,
            access_key_id: Some("k".into()),
            secret_access_key: Some("s".into()),
            timeout: crate::config::Dur(Duration::from_millis(300)),
            ..OriginConfig::default()
        };
        let o = S3Origin::new(&cfg).await.unwrap();
        let started = std::time::Instant::now();
        let e = o
            .get_range(&RangeRequest::new("b", "k", "e", 10, 0, 10))
            .await
            .err();
        assert!(matches!(e, Some(OriginError::Transient(_))), "{e:?}");
        assert!(started.elapsed() < Duration::from_secs(20));
        keep.abort();
    }
}
