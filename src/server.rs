//! The S3 listener: HTTP/1.1 and HTTP/2 (h2c) on one port, a cap on open connections, and
//! graceful shutdown.
//!
//! Every open connection costs memory (buffers, a task, at most one piece of a chunk on its
//! way out), so their number is bounded by `server.max_connections`. A connection past the cap
//! is not dropped on the floor — a client cannot tell that from a crash — but answered, once,
//! with 503 `SlowDown` and `Connection: close`, which every S3 SDK backs off and retries on.
//! Those answers are themselves bounded (a few at a time, each within a short deadline), so a
//! flood of connections cannot turn the rejection path into the new unbounded resource. On
//! HTTP/2, `server.http2_max_streams` bounds the streams of one connection; further streams are
//! refused with `REFUSED_STREAM`, which clients retry.

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Connections over the cap being answered at once; more are closed without an answer.
const REJECTING: usize = 64;
/// How long an over-cap connection may take to send its request and read the answer.
const REJECT_DEADLINE: Duration = Duration::from_secs(5);

/// Listener limits.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Open connections at most (`server.max_connections`).
    pub max_connections: usize,
    /// HTTP/2 streams per connection (`server.http2_max_streams`).
    pub http2_max_streams: u32,
}

/// Serves `app` on `listener` until `stop` is cancelled, then lets open connections finish
/// (the caller bounds how long it waits).
pub async fn serve(listener: TcpListener, app: Router, limits: Limits, stop: CancellationToken) {
    let conns = Arc::new(Semaphore::new(limits.max_connections));
    let rejecting = Arc::new(Semaphore::new(REJECTING));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let tasks = TaskTracker::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http2()
        .max_concurrent_streams(limits.http2_max_streams);
    loop {
        let (sock, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let _ = sock.set_nodelay(true);
        match conns.clone().try_acquire_owned() {
            Ok(permit) => {
                let svc = TowerToHyperService::new(app.clone());
                let conn = builder
                    .serve_connection_with_upgrades(TokioIo::new(sock), svc)
                    .into_owned();
                let conn = graceful.watch(conn);
                tasks.spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                    drop(permit);
                });
            }
            Err(_) => match rejecting.clone().try_acquire_owned() {
                Ok(permit) => {
                    tracing::warn!(%peer, max = limits.max_connections, "connection cap reached; answering 503 SlowDown");
                    tasks.spawn(async move {
                        let _ = tokio::time::timeout(REJECT_DEADLINE, reject(sock)).await;
                        drop(permit);
                    });
                }
                Err(_) => {
                    tracing::warn!(%peer, "connection cap reached and too many rejections pending; closing");
                    drop(sock);
                }
            },
        }
    }
    drop(listener);
    graceful.shutdown().await;
    tasks.close();
    tasks.wait().await;
}

/// Answers one request on an over-cap connection with 503 `SlowDown` and closes it.
async fn reject(sock: TcpStream) {
    let svc = hyper::service::service_fn(|_req| async {
        Ok::<_, std::convert::Infallible>(crate::s3::overloaded())
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .serve_connection(TokioIo::new(sock), svc)
        .await;
}
