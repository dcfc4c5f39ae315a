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
//!
//! With `server.tls` set the listener speaks TLS only (rustls; HTTP/2 or HTTP/1.1 by ALPN). The
//! certificate and key are read again on SIGHUP ([`Tls::reload`]), so a renewed certificate
//! needs no restart and no dropped connection; a reload that fails keeps the old pair. A client
//! that speaks plain HTTP to a TLS port fails its handshake and is closed.

use crate::error::Error;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::RwLock;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Connections over the cap being answered at once; more are closed without an answer.
const REJECTING: usize = 64;
/// How long an over-cap connection may take to send its request and read the answer.
const REJECT_DEADLINE: Duration = Duration::from_secs(5);
/// How long a TLS handshake may take.
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);

/// The listener's certificate, swappable while it serves.
#[derive(Clone)]
pub struct Tls {
    acceptor: tokio_rustls::TlsAcceptor,
    cert: Arc<ReloadingCert>,
}

struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

impl std::fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingCert")
            .field("cert", &self.cert)
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

fn load_pair(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, Error> {
    let bad = |what: &str, p: &Path, e: String| {
        Error::internal(format!("TLS {what} {}: {e}", p.display()))
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad("certificate", cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad("certificate", cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(bad(
            "certificate",
            cert,
            "no certificate in the file".into(),
        ));
    }
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| bad("key", key, e.to_string()))?;
    let provider = rustls::crypto::ring::default_provider();
    let ck = CertifiedKey::from_der(certs, der, &provider)
        .map_err(|e| bad("key", key, e.to_string()))?;
    Ok(Arc::new(ck))
}

impl Tls {
    /// Reads the PEM certificate chain and key.
    pub fn load(cert: &Path, key: &Path) -> Result<Tls, Error> {
        let reloading = Arc::new(ReloadingCert {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: RwLock::new(load_pair(cert, key)?),
        });
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::internal(format!("TLS: {e}")))?
            .with_no_client_auth()
            .with_cert_resolver(reloading.clone());
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Tls {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(cfg)),
            cert: reloading,
        })
    }

    /// Reads the certificate and key again; new handshakes use them. On failure the old pair
    /// stays in use.
    pub fn reload(&self) -> Result<(), Error> {
        let fresh = load_pair(&self.cert.cert, &self.cert.key)?;
        *self.cert.current.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }
}

/// Listener limits.
#[derive(Clone)]
pub struct Limits {
    /// Open connections at most (`server.max_connections`).
    pub max_connections: usize,
    /// HTTP/2 streams per connection (`server.http2_max_streams`).
    pub http2_max_streams: u32,
    /// Where open and refused connections are counted (the S3 listener's).
    pub metrics: Option<crate::telemetry::metrics::Metrics>,
}

/// Serves `app` on `listener` (over TLS when `tls` is set) until `stop` is cancelled, then lets
/// open connections finish (the caller bounds how long it waits).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    tls: Option<Tls>,
    stop: CancellationToken,
) {
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
                let permit = Counted::new(permit, limits.metrics.clone());
                let svc = TowerToHyperService::new(app.clone());
                match &tls {
                    None => {
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
                    Some(tls) => {
                        let (acceptor, builder) = (tls.acceptor.clone(), builder.clone());
                        let watcher = graceful.watcher();
                        tasks.spawn(async move {
                            let stream = match tokio::time::timeout(
                                HANDSHAKE_DEADLINE,
                                acceptor.accept(sock),
                            )
                            .await
                            {
                                Ok(Ok(s)) => s,
                                Ok(Err(e)) => {
                                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                    return;
                                }
                                Err(_) => {
                                    tracing::debug!(%peer, "TLS handshake timed out");
                                    return;
                                }
                            };
                            let conn = builder
                                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                                .into_owned();
                            if let Err(e) = watcher.watch(conn).await {
                                tracing::debug!(%peer, error = %e, "connection ended with an error");
                            }
                            drop(permit);
                        });
                    }
                }
            }
            Err(_) => match rejecting.clone().try_acquire_owned() {
                Ok(permit) => {
                    if let Some(m) = &limits.metrics {
                        m.connection_refused();
                    }
                    tracing::warn!(%peer, max = limits.max_connections, "connection cap reached; answering 503 SlowDown");
                    tasks.spawn(async move {
                        let _ = tokio::time::timeout(REJECT_DEADLINE, reject(sock)).await;
                        drop(permit);
                    });
                }
                Err(_) => {
                    if let Some(m) = &limits.metrics {
                        m.connection_refused();
                    }
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

/// A connection slot, counted as open in the metrics while it is held.
struct Counted {
    _permit: tokio::sync::OwnedSemaphorePermit,
    metrics: Option<crate::telemetry::metrics::Metrics>,
}

impl Counted {
    fn new(
        permit: tokio::sync::OwnedSemaphorePermit,
        metrics: Option<crate::telemetry::metrics::Metrics>,
    ) -> Self {
        if let Some(m) = &metrics {
            m.connections(1);
        }
        Counted {
            _permit: permit,
            metrics,
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if let Some(m) = &self.metrics {
            m.connections(-1);
        }
    }
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
