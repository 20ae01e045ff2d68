//! Accepting connections for the HTTP server: plain TCP or TLS (rustls), a bounded number
//! of connections, a deadline for each request head (slow clients cannot hold a
//! connection open by trickling headers), and graceful shutdown.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use salesflow_plugin_api::axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// How connections are accepted.
#[derive(Clone)]
pub struct Options {
    pub header_read_timeout: Duration,
    pub max_connections: usize,
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// Reads a PEM certificate chain and private key into a TLS configuration (HTTP/1.1).
pub fn tls_config(certificate: &Path, private_key: &Path) -> Result<rustls::ServerConfig, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(certificate)
        .and_then(Iterator::collect)
        .map_err(|e| {
            format!(
                "cannot read certificates from {}: {e}",
                certificate.display()
            )
        })?;
    if chain.is_empty() {
        return Err(format!("{} holds no certificate", certificate.display()));
    }
    // The key's error never includes its bytes.
    let key = PrivateKeyDer::from_pem_file(private_key).map_err(|e| {
        format!(
            "cannot read a private key from {}: {e}",
            private_key.display()
        )
    })?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS: {e}"))?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .map_err(|e| format!("the certificate and key do not make a TLS identity: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Counts connections refused at the limit, and TLS handshakes that failed.
pub struct Metrics {
    refused: Counter,
    handshake_failures: Counter,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let refused = Counter::default();
        registry.register(
            "salesflow_http_refused_connections",
            "Connections closed at once because max_connections were open",
            refused.clone(),
        );
        let handshake_failures = Counter::default();
        registry.register(
            "salesflow_http_tls_handshake_failures",
            "TLS handshakes that failed or timed out",
            handshake_failures.clone(),
        );
        Self {
            refused,
            handshake_failures,
        }
    }
}

/// Serves `app` on `listener` until `stop`, then lets open requests finish for up to
/// `grace`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    options: Options,
    metrics: Metrics,
    stop: CancellationToken,
    grace: Duration,
) {
    let limit = Arc::new(tokio::sync::Semaphore::new(options.max_connections));
    let acceptor = options.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    let graceful = GracefulShutdown::new();
    let metrics = Arc::new(metrics);
    loop {
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = Arc::clone(&limit).try_acquire_owned() else {
            metrics.refused.inc();
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(options.header_read_timeout);
        let service = TowerToHyperService::new(app.clone());
        let watcher = graceful.watcher();
        let acceptor = acceptor.clone();
        let metrics = Arc::clone(&metrics);
        let handshake_timeout = options.header_read_timeout;
        tokio::spawn(async move {
            let _permit = permit;
            let result = match acceptor {
                None => {
                    let conn = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .into_owned();
                    watcher.watch(conn).await
                }
                Some(acceptor) => {
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let conn = builder
                                .serve_connection_with_upgrades(TokioIo::new(tls), service)
                                .into_owned();
                            watcher.watch(conn).await
                        }
                        Ok(Err(e)) => {
                            metrics.handshake_failures.inc();
                            debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            metrics.handshake_failures.inc();
                            debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    }
                }
            };
            if let Err(e) = result {
                debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        warn!("open HTTP connections did not finish within the grace period");
    }
}
