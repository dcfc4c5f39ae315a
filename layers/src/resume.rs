//! What the HTTP faces that resume a GET share ([`RetryUntilCommitLayer::http`] and
//! [`PeerRoutingLayer::http`]): the request as the byte-stream cores see it ([`Resume`]), and
//! the adapter that turns it into an HTTP request and checks the answer ([`Attempts`]).
//!
//! A GET's first answer fixes what every later attempt must continue: the version (its strong
//! `ETag`), the range (its `Content-Range`, or the whole body) and the head the caller is
//! given. A later attempt asks `Range: bytes=N-` of that range with `If-Match` on that `ETag`,
//! and its answer is verified — `206`, for exactly the bytes asked, with the same `ETag` — so
//! an upstream that ignores `If-Match` cannot splice another version's bytes on.
//!
//! [`RetryUntilCommitLayer::http`]: super::RetryUntilCommitLayer::http
//! [`PeerRoutingLayer::http`]: super::PeerRoutingLayer::http

use super::http::{boxed, BoxError, DataStream, Head, RequestHead, ResponseBody, SharedError};
use super::lock;
use super::retry::Truncated;
use super::{Class, Resumable};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use http::header::{
    CONTENT_LENGTH, CONTENT_RANGE, ETAG, IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE,
    IF_UNMODIFIED_SINCE, RANGE,
};
use http::{HeaderValue, StatusCode};
use http_body::Body;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tower::{Service, ServiceExt};

/// Why a GET through one of the resuming HTTP faces ([`HttpRetry`](super::retry::http::HttpRetry),
/// [`HttpPeerRouting`](super::peer::http::HttpPeerRouting)) failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ResumeError {
    /// The client could not get an answer (connection refused or reset, timeout).
    #[error("upstream request failed: {0}")]
    Upstream(SharedError),
    /// The upstream answered with a status worth asking again (5xx, 429).
    #[error("upstream answered {0}")]
    Status(StatusCode),
    /// The upstream answered with a final status; the answer is passed on to the caller.
    #[error("upstream answered {0}")]
    Answered(StatusCode),
    /// The body broke in the middle.
    #[error("upstream body failed: {0}")]
    Body(SharedError),
    /// The body ended before its `Content-Length`.
    #[error(transparent)]
    Truncated(#[from] Truncated),
    /// The object changed since the first answer (`412`, or another `ETag`): the bytes
    /// already sent cannot be continued.
    #[error("the object changed while it was read; cannot resume")]
    Changed,
    /// The first answer had no strong `ETag`, so a resumed answer could not be pinned to it.
    #[error("the answer has no strong ETag; cannot resume it safely")]
    Unpinned,
    /// A resumed answer was not the range asked for.
    #[error("the upstream answered a resume wrongly: {0}")]
    Protocol(String),
}

impl ResumeError {
    /// Transient errors are retried or resumed; the rest are final.
    pub fn class(&self) -> Class {
        match self {
            ResumeError::Upstream(_)
            | ResumeError::Status(_)
            | ResumeError::Body(_)
            | ResumeError::Truncated(_) => Class::Transient,
            ResumeError::Answered(_)
            | ResumeError::Changed
            | ResumeError::Unpinned
            | ResumeError::Protocol(_) => Class::Final,
        }
    }
}

/// When the first answer becomes binding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pin {
    /// At its head: the retry face hands the head to the caller as soon as it has one, so every
    /// later attempt continues that answer, even before a byte of it arrived.
    Head,
    /// At its first byte: the peer face reads a first byte before it answers, so an attempt
    /// that failed before it (a peer that answered and died) leaves nothing to continue.
    FirstByte,
}

/// What the first answer fixed: the version and the byte range every resume continues.
#[derive(Debug)]
pub(crate) struct First {
    pub(crate) head: Head,
    /// The strong `ETag`, if the answer had one.
    pub(crate) etag: Option<HeaderValue>,
    /// The offset of the first byte within the object (non-zero when the caller asked a range).
    pub(crate) start: u64,
    /// The body length, when the answer said it.
    pub(crate) len: Option<u64>,
}

/// Shared by every attempt of one GET.
#[derive(Default)]
struct Learned {
    first: Mutex<Option<Arc<First>>>,
    /// A non-2xx answer to pass on if the core gives up on it.
    passthrough: Mutex<Option<http::Response<ResponseBody>>>,
}

/// One GET as the cores see it: the caller's request, what its first answer fixed, and the
/// bytes already delivered.
#[derive(Clone)]
pub(crate) struct Resume {
    head: Arc<RequestHead>,
    learned: Arc<Learned>,
    offset: u64,
    pin: Pin,
}

impl Resume {
    /// A GET of `head`, whose first answer binds from `pin` on.
    pub(crate) fn new(head: RequestHead, pin: Pin) -> Self {
        Resume {
            head: Arc::new(head),
            learned: Arc::default(),
            offset: 0,
            pin,
        }
    }

    /// The request as it is sent.
    pub(crate) fn head(&self) -> &RequestHead {
        &self.head
    }

    /// The same GET sent as `head` (to another address, with other headers).
    pub(crate) fn with_head(&self, head: RequestHead) -> Self {
        Resume {
            head: Arc::new(head),
            ..self.clone()
        }
    }

    /// The answer that fixed the version and range, once there is one.
    pub(crate) fn first(&self) -> Option<Arc<First>> {
        lock(&self.learned.first).clone()
    }

    /// The last non-2xx answer, to pass on when the core gave up.
    pub(crate) fn take_passthrough(&self) -> Option<http::Response<ResponseBody>> {
        lock(&self.learned.passthrough).take()
    }
}

impl Resumable for Resume {
    fn expected_len(&self) -> Option<u64> {
        self.first().and_then(|f| f.len)
    }

    fn resume_from(&self, delivered: u64) -> Self {
        Resume {
            offset: self.offset + delivered,
            ..self.clone()
        }
    }
}

/// Turns a [`Resume`] into the request to send through `S` and checks the answer.
pub(crate) struct Attempts<S, ReqB> {
    inner: S,
    _body: std::marker::PhantomData<fn() -> ReqB>,
}

impl<S, ReqB> Attempts<S, ReqB> {
    /// Attempts through `inner`.
    pub(crate) fn new(inner: S) -> Self {
        Attempts {
            inner,
            _body: std::marker::PhantomData,
        }
    }
}

impl<S: Clone, ReqB> Clone for Attempts<S, ReqB> {
    fn clone(&self) -> Self {
        Attempts {
            inner: self.inner.clone(),
            _body: std::marker::PhantomData,
        }
    }
}

/// The body of one attempt, as the retry core reads it.
pub(crate) type AttemptBody<B> = futures_util::stream::Map<
    DataStream<B>,
    fn(Result<Bytes, SharedError>) -> Result<Bytes, ResumeError>,
>;

fn body_error(r: Result<Bytes, SharedError>) -> Result<Bytes, ResumeError> {
    r.map_err(ResumeError::Body)
}

/// The strong entity tag of a response, if it has one (a weak tag cannot pin bytes).
fn strong_etag(headers: &http::HeaderMap) -> Option<HeaderValue> {
    headers
        .get(ETAG)
        .filter(|v| !v.as_bytes().starts_with(b"W/"))
        .cloned()
}

/// `(first, last, total)` of a `Content-Range: bytes a-b/total` header.
fn content_range(headers: &http::HeaderMap) -> Option<(u64, u64, Option<u64>)> {
    let v = headers.get(CONTENT_RANGE)?.to_str().ok()?;
    let (range, total) = v.strip_prefix("bytes ")?.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    let (a, b) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    (a <= b).then_some((a, b, total.trim().parse().ok()))
}

fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

impl<S, ReqB, ResB> Service<Resume> for Attempts<S, ReqB>
where
    S: Service<http::Request<ReqB>, Response = http::Response<ResB>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    ReqB: Default + Send + 'static,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    type Response = AttemptBody<ResB>;
    type Error = ResumeError;
    type Future = BoxFuture<'static, Result<AttemptBody<ResB>, ResumeError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ResumeError>> {
        // Each attempt drives its own clone of the client to readiness with `oneshot`.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, at: Resume) -> Self::Future {
        let client = self.inner.clone();
        Box::pin(async move {
            // A fresh start before the binding point; after it, a continuation.
            let fresh = at.pin == Pin::FirstByte && at.offset == 0;
            let first = if fresh { None } else { at.first() };
            let mut req = at.head.request(ReqB::default());
            if let Some(first) = &first {
                // A resume: the rest of the first answer's range, of the first answer's version.
                let Some(etag) = first.etag.clone() else {
                    return Err(ResumeError::Unpinned);
                };
                let from = first.start + at.offset;
                let range = match first.len {
                    Some(len) => format!("bytes={from}-{}", first.start + len - 1),
                    None => format!("bytes={from}-"),
                };
                let h = req.headers_mut();
                for c in [
                    IF_NONE_MATCH,
                    IF_MODIFIED_SINCE,
                    IF_UNMODIFIED_SINCE,
                    IF_RANGE,
                ] {
                    h.remove(c);
                }
                h.insert(IF_MATCH, etag);
                h.insert(
                    RANGE,
                    HeaderValue::try_from(range)
                        .map_err(|e| ResumeError::Protocol(e.to_string()))?,
                );
            }
            let answer = client
                .oneshot(req)
                .await
                .map_err(|e| ResumeError::Upstream(SharedError::new(e)))?;
            let status = answer.status();
            match first {
                None if status.is_success() => {
                    let headers = answer.headers();
                    let (start, len) = match (status, content_range(headers)) {
                        (StatusCode::PARTIAL_CONTENT, Some((a, b, _))) => (a, Some(b - a + 1)),
                        _ => (0, content_length(headers)),
                    };
                    *lock(&at.learned.first) = Some(Arc::new(First {
                        head: Head::of(&answer),
                        etag: strong_etag(headers),
                        start,
                        len,
                    }));
                }
                None => {
                    // Passed on as it is if the core gives up on it.
                    let transient =
                        status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS;
                    *lock(&at.learned.passthrough) = Some(answer.map(boxed));
                    return Err(if transient {
                        ResumeError::Status(status)
                    } else {
                        ResumeError::Answered(status)
                    });
                }
                Some(first) => {
                    if status == StatusCode::PRECONDITION_FAILED {
                        return Err(ResumeError::Changed);
                    }
                    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                        return Err(ResumeError::Status(status));
                    }
                    if status != StatusCode::PARTIAL_CONTENT {
                        return Err(ResumeError::Protocol(format!(
                            "asked a range, got {status}"
                        )));
                    }
                    // Verified, not trusted: an upstream that ignores If-Match must not splice
                    // another version's bytes on.
                    if strong_etag(answer.headers()) != first.etag {
                        return Err(ResumeError::Changed);
                    }
                    let from = first.start + at.offset;
                    match content_range(answer.headers()) {
                        Some((a, _, _)) if a == from => {}
                        other => {
                            return Err(ResumeError::Protocol(format!(
                                "asked from byte {from}, got Content-Range {other:?}"
                            )))
                        }
                    }
                }
            }
            Ok(DataStream::new(answer.into_body()).map(body_error as fn(_) -> _))
        })
    }
}
