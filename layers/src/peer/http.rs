//! The HTTP face of [`PeerRouting`]: a GET that a route function assigns to a peer is sent to
//! that peer (through an HTTP client, as `http://{peer}{path}?{query}`) and answered from it;
//! if the peer fails before its first byte — refused, unreachable, an error status — the
//! request is served here as if it had been local all along. If the peer's body breaks after
//! bytes went out, the rest comes from the local service with `Range` pinned by `If-Match` on
//! the peer's `ETag`, and the local answer is verified (`206`, the bytes asked, the same
//! `ETag`): the caller sees one unbroken body of one version. The local service must honour
//! `Range` and `If-Match` for that (tower-http's `ServeDir` and Shoal do); without a strong
//! `ETag` the body fails instead of continuing.
//!
//! A forwarded request carries a hop header (`x-peer-routed` by default); a request that has
//! it is always served locally, so two replicas that disagree on ownership cannot bounce a
//! request between them. HEAD and other methods are served locally.
//!
//! ```
//! use axum::{routing::get, Router};
//! use http_body_util::Empty;
//! use hyper_util::{client::legacy::{connect::HttpConnector, Client}, rt::TokioExecutor};
//! use shoal_layers::http::RequestHead;
//! use shoal_layers::PeerRoutingLayer;
//! use std::time::Duration;
//! use tower::ServiceBuilder;
//! use tower_http::{timeout::TimeoutLayer, trace::TraceLayer};
//!
//! let peers = ["10.0.0.1:8080", "10.0.0.2:8080"];
//! let me = 0;
//! // Each path has one owner among the peers (a real cluster would use rendezvous hashing).
//! let owner = move |h: &RequestHead| {
//!     let i = h.uri.path().bytes().map(usize::from).sum::<usize>() % peers.len();
//!     (i != me).then(|| peers[i].to_string())
//! };
//! let client = Client::builder(TokioExecutor::new()).build::<_, Empty<bytes::Bytes>>(HttpConnector::new());
//! let app: Router = Router::new()
//!     .route("/files/{name}", get(|| async { "bytes" }))
//!     .layer(
//!         ServiceBuilder::new()
//!             .layer(TraceLayer::new_for_http())
//!             .layer(TimeoutLayer::with_status_code(http::StatusCode::REQUEST_TIMEOUT, Duration::from_secs(60)))
//!             .layer(PeerRoutingLayer::http(owner, client)),
//!     );
//! # let _ = app;
//! ```

use super::PeerRouting;
use crate::http::{boxed, plain, BoxError, RequestHead, ResponseBody, StreamBody};
use crate::resume::{Attempts, Pin, Resume, ResumeError};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{HeaderName, HeaderValue, Method, StatusCode};
use http_body::Body;
use http_body_util::Empty;
use std::fmt::Display;
use std::task::{Context, Poll};
use tower::{Layer, Service, ServiceExt};

/// The header a forwarded request carries, so that it is served where it lands.
pub const HOP_HEADER: HeaderName = HeaderName::from_static("x-peer-routed");

impl super::PeerRoutingLayer<(), ()> {
    /// The HTTP face: `route` names the peer (`host:port`) that should answer a request, or
    /// `None` to answer here; `client` (a hyper-util client of empty bodies) reaches peers.
    pub fn http<F, C>(route: F, client: C) -> HttpPeerRoutingLayer<F, C> {
        HttpPeerRoutingLayer {
            route,
            client,
            hop: HOP_HEADER,
        }
    }
}

/// Applies [`HttpPeerRouting`]; see [`PeerRoutingLayer::http`](super::PeerRoutingLayer::http).
#[derive(Clone, Debug)]
pub struct HttpPeerRoutingLayer<F, C> {
    route: F,
    client: C,
    hop: HeaderName,
}

impl<F, C> HttpPeerRoutingLayer<F, C> {
    /// Marks forwarded requests with `header` instead of `x-peer-routed`.
    pub fn hop_header(mut self, header: HeaderName) -> Self {
        self.hop = header;
        self
    }
}

impl<S, F: Clone, C: Clone> Layer<S> for HttpPeerRoutingLayer<F, C> {
    type Service = HttpPeerRouting<S, F, C>;
    fn layer(&self, inner: S) -> Self::Service {
        HttpPeerRouting {
            inner,
            route: self.route.clone(),
            client: self.client.clone(),
            hop: self.hop.clone(),
        }
    }
}

/// Answers GETs from the peer that owns them; see the module docs.
#[derive(Clone, Debug)]
pub struct HttpPeerRouting<S, F, C> {
    inner: S,
    route: F,
    client: C,
    hop: HeaderName,
}

/// Sends a GET to a peer: the same request at the peer's address, marked as forwarded.
#[derive(Clone)]
struct ToPeer<C> {
    client: C,
    hop: HeaderName,
}

impl<C, P, ResB> Service<(P, Resume)> for ToPeer<C>
where
    P: Display + Send + 'static,
    C: Service<http::Request<Empty<Bytes>>, Response = http::Response<ResB>>
        + Clone
        + Send
        + Sync
        + 'static,
    C::Future: Send,
    C::Error: Into<BoxError>,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    type Response = crate::resume::AttemptBody<ResB>;
    type Error = ResumeError;
    type Future = BoxFuture<'static, Result<Self::Response, ResumeError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ResumeError>> {
        // The attempt drives its own clone of the client to readiness.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, (peer, at): (P, Resume)) -> Self::Future {
        let mut head = at.head().clone();
        let path = head.uri.path_and_query().map_or("/", |p| p.as_str());
        let uri = format!("http://{peer}{path}");
        let client = self.client.clone();
        let hop = self.hop.clone();
        Box::pin(async move {
            head.uri = uri
                .parse()
                .map_err(|e| ResumeError::Protocol(format!("peer address {uri}: {e}")))?;
            // The client names the peer's host itself.
            head.headers.remove(http::header::HOST);
            head.headers.insert(hop, HeaderValue::from_static("1"));
            Attempts::new(client).oneshot(at.with_head(head)).await
        })
    }
}

impl<S, F, P, C, ReqB, ResB, PResB> Service<http::Request<ReqB>> for HttpPeerRouting<S, F, C>
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
    F: Fn(&RequestHead) -> Option<P>,
    P: Clone + Send + Sync + Display + 'static,
    C: Service<http::Request<Empty<Bytes>>, Response = http::Response<PResB>>
        + Clone
        + Send
        + Sync
        + 'static,
    C::Future: Send,
    C::Error: Into<BoxError>,
    PResB: Body<Data = Bytes> + Send + 'static,
    PResB::Error: Into<BoxError>,
{
    type Response = http::Response<ResponseBody>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqB>) -> Self::Future {
        let head = RequestHead::of(&req);
        let peer = (req.method() == Method::GET && !req.headers().contains_key(&self.hop))
            .then(|| (self.route)(&head))
            .flatten();
        let Some(peer) = peer else {
            let fut = self.inner.call(req);
            return Box::pin(async move { Ok(fut.await?.map(boxed)) });
        };
        let resume = Resume::new(head, Pin::FirstByte);
        let mut core = PeerRouting {
            inner: Attempts::new(self.inner.clone()),
            route: move |_: &Resume| Some(peer.clone()),
            client: ToPeer {
                client: self.client.clone(),
                hop: self.hop.clone(),
            },
            on_event: None,
        };
        let routed = core.call(resume.clone());
        Box::pin(async move {
            let failed = |e: &dyn Display| {
                plain(
                    StatusCode::BAD_GATEWAY,
                    &[],
                    &format!("peer routing failed: {e}"),
                )
            };
            Ok(match routed.await {
                // The answer that gave the first byte (the peer's, or the local fallback's).
                Ok(stream) => match resume.first() {
                    Some(first) => first
                        .head
                        .response(boxed(StreamBody::sized(stream, first.len))),
                    None => failed(&"no answer was recorded"),
                },
                // A local answer other than 2xx is passed on as it is.
                Err(e) => resume.take_passthrough().unwrap_or_else(|| failed(&e)),
            })
        })
    }
}
