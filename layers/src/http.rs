//! What the layers' HTTP faces share: adapters between HTTP messages and the byte streams the
//! layers' cores work on, and the key of a request.
//!
//! A core (singleflight's shared buffer, the retry loop…) works on `Stream<Item = Result<Bytes,
//! E>>`. An HTTP response is a [`Head`] (status, version, headers) and a body; [`DataStream`]
//! turns the body into such a stream and [`StreamBody`] turns a stream back into a body, so one
//! implementation serves both faces.

pub use super::resume::ResumeError;
use super::retry::Truncated;
use super::singleflight::Released;
use super::KeyOf;
use bytes::Bytes;
use futures_util::Stream;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt as _;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// The error type HTTP bodies use.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of the responses the HTTP faces build: boxed, because one face may answer from a
/// shared buffer, from memory or from the inner service.
pub type ResponseBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// An error that several readers can be handed (one shared body failing for all of them).
#[derive(Clone)]
pub struct SharedError(Arc<dyn std::error::Error + Send + Sync>);

impl SharedError {
    /// Wraps any error.
    pub fn new(e: impl Into<BoxError>) -> Self {
        SharedError(Arc::from(e.into()))
    }
}

impl fmt::Debug for SharedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for SharedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&*self.0, f)
    }
}

impl std::error::Error for SharedError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl From<Released> for SharedError {
    fn from(r: Released) -> Self {
        SharedError::new(r)
    }
}

impl From<Truncated> for SharedError {
    fn from(t: Truncated) -> Self {
        SharedError::new(t)
    }
}

/// What every reader of a shared or remembered response gets a copy of.
#[derive(Clone, Debug)]
pub struct Head {
    /// The status.
    pub status: StatusCode,
    /// The HTTP version.
    pub version: Version,
    /// The headers.
    pub headers: HeaderMap,
}

impl Head {
    /// The head of `response` (extensions are not copied: they are not `Clone`).
    pub fn of<B>(response: &http::Response<B>) -> Self {
        Head {
            status: response.status(),
            version: response.version(),
            headers: response.headers().clone(),
        }
    }

    /// A response with this head and `body`.
    pub fn response<B>(&self, body: B) -> http::Response<B> {
        let mut r = http::Response::new(body);
        *r.status_mut() = self.status;
        *r.version_mut() = self.version;
        *r.headers_mut() = self.headers.clone();
        r
    }
}

/// The data of an HTTP body as a stream of `Bytes` (trailers are dropped; errors become
/// [`SharedError`]s).
pub struct DataStream<B> {
    body: Pin<Box<B>>,
}

impl<B> DataStream<B> {
    /// Streams `body`.
    pub fn new(body: B) -> Self {
        DataStream {
            body: Box::pin(body),
        }
    }
}

impl<B> Stream for DataStream<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Item = Result<Bytes, SharedError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            return match self.body.as_mut().poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) if data.is_empty() => continue,
                    Ok(data) => Poll::Ready(Some(Ok(data))),
                    Err(_trailers) => continue,
                },
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(SharedError::new(e)))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            };
        }
    }
}

/// A byte stream as an HTTP body.
pub struct StreamBody<S> {
    stream: S,
    /// The length, when it is known (it then becomes `Content-Length`).
    len: Option<u64>,
}

impl<S> StreamBody<S> {
    /// A body of unknown length.
    pub fn new(stream: S) -> Self {
        StreamBody { stream, len: None }
    }

    /// A body of exactly `len` bytes.
    pub fn sized(stream: S, len: Option<u64>) -> Self {
        StreamBody { stream, len }
    }
}

impl<S, E> Body for StreamBody<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
{
    type Data = Bytes;
    type Error = E;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, E>>> {
        Pin::new(&mut self.stream)
            .poll_next(cx)
            .map(|o| o.map(|r| r.map(Frame::data)))
    }

    fn size_hint(&self) -> SizeHint {
        self.len
            .map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

/// Boxes any body into the faces' [`ResponseBody`].
pub fn boxed<B>(body: B) -> ResponseBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// A body of `bytes` (or nothing).
pub fn full(bytes: Bytes) -> ResponseBody {
    boxed(http_body_util::Full::new(bytes).map_err(|never| -> BoxError { match never {} }))
}

/// A response with `status`, `headers` and a short text body; how the faces answer when they
/// cannot pass an answer on (an inner service failed, a limit was reached).
pub fn plain(
    status: StatusCode,
    headers: &[(HeaderName, HeaderValue)],
    msg: &str,
) -> http::Response<ResponseBody> {
    let mut r = http::Response::new(full(Bytes::from(format!("{msg}\n"))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    for (k, v) in headers {
        r.headers_mut().insert(k.clone(), v.clone());
    }
    r
}

/// Whether the HTTP faces may share, remember or resume a request: the safe methods (GET,
/// HEAD). Everything else passes straight through.
pub fn is_safe(m: &Method) -> bool {
    *m == Method::GET || *m == Method::HEAD
}

/// The key of an HTTP request for the faces that share or remember answers: its method, its
/// URI, and the headers that change the answer ([`HttpKey::vary`]), as HTTP caches do with
/// `Vary`.
///
/// ```
/// use shoal_layers::http::HttpKey;
/// use shoal_layers::KeyOf;
/// let key = HttpKey::new().vary(http::header::RANGE);
/// let a = http::Request::get("/x").header("range", "bytes=0-9").body(()).unwrap();
/// let b = http::Request::get("/x").header("range", "bytes=10-19").body(()).unwrap();
/// assert_ne!(key.key_of(&a), key.key_of(&b));
/// ```
#[derive(Clone, Debug, Default)]
pub struct HttpKey {
    vary: Vec<HeaderName>,
}

impl HttpKey {
    /// Method and URI only.
    pub fn new() -> Self {
        HttpKey::default()
    }

    /// Also tells requests apart by `header` (`Range`, `Accept-Encoding`, `Authorization`…).
    pub fn vary(mut self, header: HeaderName) -> Self {
        self.vary.push(header);
        self
    }
}

/// See [`HttpKey`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RequestKey {
    method: Method,
    uri: String,
    vary: Vec<Option<HeaderValue>>,
}

impl<B> KeyOf<http::Request<B>> for HttpKey {
    type Key = RequestKey;
    fn key_of(&self, req: &http::Request<B>) -> RequestKey {
        RequestKey {
            method: req.method().clone(),
            uri: req.uri().to_string(),
            vary: self
                .vary
                .iter()
                .map(|h| req.headers().get(h).cloned())
                .collect(),
        }
    }
}

/// A request without its body, which the faces can copy to re-issue it.
#[derive(Clone, Debug)]
pub struct RequestHead {
    /// The method.
    pub method: Method,
    /// The URI.
    pub uri: http::Uri,
    /// The version.
    pub version: Version,
    /// The headers.
    pub headers: HeaderMap,
}

impl RequestHead {
    /// The head of `req` (its body is dropped: the faces only re-issue safe requests).
    pub fn of<B>(req: &http::Request<B>) -> Self {
        RequestHead {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: req.headers().clone(),
        }
    }

    /// A request with this head and `body`.
    pub fn request<B>(&self, body: B) -> http::Request<B> {
        let mut r = http::Request::new(body);
        *r.method_mut() = self.method.clone();
        *r.uri_mut() = self.uri.clone();
        *r.version_mut() = self.version;
        *r.headers_mut() = self.headers.clone();
        r
    }
}
