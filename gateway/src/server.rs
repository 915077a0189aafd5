//! Accepting connections: TCP, the TLS handshake under a deadline, then HTTP/1.1 or
//! HTTP/2 (chosen by ALPN) with upgrades enabled, each connection on its own task.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;
use tracing::{debug, info, warn};

/// What the pipeline knows about the connection a request came on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// The identity of the client certificate rustls verified, if one was presented.
    pub client_cert: Option<Arc<crate::tls::CertIdentity>>,
}

/// Connection-level settings.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Deadline for the TLS handshake.
    pub handshake_timeout: Duration,
    /// Deadline for an HTTP/1.1 client to send its request headers.
    pub header_read_timeout: Duration,
    /// How long open connections may take to finish after shutdown begins.
    pub grace_period: Duration,
    /// Open client connections at most; past it the gateway stops accepting (new
    /// clients wait in the kernel's backlog) until one closes.
    pub max_connections: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(30),
            grace_period: Duration::from_secs(30),
            max_connections: 8192,
        }
    }
}

/// HTTP/2 streams one client connection may have open at once: enough for kubectl's
/// parallel discovery, small enough that one connection cannot hog the gateway.
const MAX_CONCURRENT_STREAMS: u32 = 250;

/// Serves `app` over TLS on `listener` until `shutdown` completes, then stops accepting
/// and gives open connections `grace_period` to finish.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let acceptor = TlsAcceptor::from(tls);
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let builder = Arc::new(builder);

    let slots = Arc::new(tokio::sync::Semaphore::new(options.max_connections));
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let handshake_timeout = options.handshake_timeout;
        tokio::spawn(async move {
            // Held for the connection's life.
            let _slot = slot;
            let tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            // Parsed once per connection; rustls has already verified the chain.
            let client_cert = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|leaf| crate::tls::cert_identity(leaf))
                .map(Arc::new);
            let conn_info = ConnInfo { peer, client_cert };
            let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                req.extensions_mut().insert(conn_info.clone());
                app.clone().oneshot(req.map(Body::new))
            });
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }

    drop(listener);
    info!("no longer accepting connections; waiting for open ones to finish");
    if tokio::time::timeout(options.grace_period, graceful.shutdown())
        .await
        .is_err()
    {
        warn!(grace_period = ?options.grace_period, "connections still open after the grace period");
    }
    Ok(())
}
