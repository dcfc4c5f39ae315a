//! Shoal's layers in a plain axum app, without the rest of Shoal.
//!
//! `/render/{name}` streams an "expensive" body. Concurrent requests for the same name share
//! one render (`SingleflightLayer`); at most two renders run at once and a request that waits
//! longer than a second for a slot gets 503 (`ConcurrencyLimitLayer`).
//!
//! ```sh
//! cargo run --example singleflight_axum
//! curl http://127.0.0.1:3000/render/a & curl http://127.0.0.1:3000/render/a   # one render
//! ```

use axum::body::Body;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use futures_util::stream::{self, BoxStream, StreamExt};
use shoal::layer::{ConcurrencyLimitLayer, QueueTimeout, Queued, Released, SingleflightLayer};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

/// The example's error: the limit layer needs to build one from a queue timeout.
#[derive(Debug, Clone)]
enum RenderError {
    Busy,
}

impl From<QueueTimeout> for RenderError {
    fn from(_: QueueTimeout) -> Self {
        RenderError::Busy
    }
}

/// Singleflight buffers are never released early here (no durable copy), so this never
/// happens; the layer still needs to be able to say it.
impl From<Released> for RenderError {
    fn from(_: Released) -> Self {
        RenderError::Busy
    }
}

/// A render request: urgent, with the limit layer's default queue timeout.
#[derive(Clone)]
struct Render(String);
impl Queued for Render {}

impl std::fmt::Display for RenderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("busy")
    }
}

impl std::error::Error for RenderError {}

type Body2 = BoxStream<'static, Result<Bytes, RenderError>>;

/// Builds the deduplicated, limited render service.
fn renderer(
    renders: Arc<AtomicUsize>,
) -> impl Service<
    Render,
    Response = impl futures_util::Stream<Item = Result<Bytes, RenderError>> + Send + 'static,
    Error = RenderError,
    Future = impl Send,
> + Clone
       + Send
       + 'static {
    let render = tower::service_fn(move |Render(name): Render| {
        renders.fetch_add(1, Ordering::SeqCst);
        async move {
            let body: Body2 = stream::iter(0..5)
                .then(move |i| {
                    let name = name.clone();
                    async move {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Ok(Bytes::from(format!("{name}: part {i}\n")))
                    }
                })
                .boxed();
            Ok::<_, RenderError>(body)
        }
    });
    let limited = ServiceBuilder::new()
        .layer(ConcurrencyLimitLayer::new(2, Duration::from_secs(1)))
        .service(render)
        .map_response(|b| -> Body2 { b.boxed() });
    SingleflightLayer::new(|r: &Render| r.0.clone()).layer(limited)
}

#[tokio::main]
async fn main() {
    let renders = Arc::new(AtomicUsize::new(0));
    let svc = renderer(renders.clone());
    let app = Router::new().route(
        "/render/{name}",
        get(move |Path(name): Path<String>| {
            let svc = svc.clone();
            async move {
                match svc.oneshot(Render(name)).await {
                    Ok(body) => Body::from_stream(body).into_response(),
                    Err(RenderError::Busy) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
                }
            }
        }),
    );
    let listener = match tokio::net::TcpListener::bind("127.0.0.1:3000").await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot listen on 127.0.0.1:3000: {e}");
            return;
        }
    };
    println!("listening on http://127.0.0.1:3000/render/{{name}}");
    let _ = axum::serve(listener, app).await;
    let _: Response = StatusCode::OK.into_response();
}
