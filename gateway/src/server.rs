//! Accepting connections: TCP, the TLS handshake under a deadline, then HTTP/1.1 or
//! HTTP/2 (chosen by ALPN) with upgrades enabled, each connection on its own task.
//!
//! Connections run on connection threads, one single-threaded runtime per core, handed out
//! in turn by the accept loop. A connection's tasks (the client connection, its requests,
//! the upstream connections they use: see [`current_thread_index`]) then wake each other on
//! one thread: on a multi-threaded runtime every request crossed threads several times,
//! which cost more CPU than the request's own work and made the latency tail depend on two
//! threads being scheduled at once.

use std::cell::Cell;
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
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;
use tracing::{debug, info, warn};

/// What the pipeline knows about the connection a request came on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// What the client certificate rustls verified says (an identity, or why it names
    /// no one); `None` when no certificate was presented.
    pub client_cert: Option<Arc<crate::tls::ClientCert>>,
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
    /// Connection threads; 0 serves connections on the calling runtime instead (tests
    /// that pause its clock need that).
    pub connection_threads: usize,
}

/// One connection thread per core.
pub fn default_connection_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

thread_local! {
    static THREAD_INDEX: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The index of the connection thread running the caller, if it runs on one: the upstream
/// keeps a connection pool per thread, so a request uses connections whose tasks live on
/// its own thread.
pub fn current_thread_index() -> Option<usize> {
    THREAD_INDEX.with(Cell::get)
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(30),
            grace_period: Duration::from_secs(30),
            max_connections: 8192,
            connection_threads: default_connection_threads(),
        }
    }
}

/// HTTP/2 streams one client connection may have open at once: enough for kubectl's
/// parallel discovery, small enough that one connection cannot hog the gateway.
const MAX_CONCURRENT_STREAMS: u32 = 250;

/// What every connection needs, shared by all connection threads.
struct Connections {
    acceptor: TlsAcceptor,
    app: Router,
    builder: auto::Builder<TokioExecutor>,
    handshake_timeout: Duration,
}

/// An accepted TCP connection on its way to a connection thread.
struct Accepted {
    tcp: std::net::TcpStream,
    peer: SocketAddr,
    /// The connection-cap slot, held for the connection's life.
    slot: OwnedSemaphorePermit,
    watcher: Watcher,
}

/// A connection thread: its intake, its stop signal and its handle.
struct ConnectionThread {
    intake: mpsc::UnboundedSender<Accepted>,
    stop: oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl ConnectionThread {
    fn start(index: usize, connections: Arc<Connections>) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (intake, mut accepted) = mpsc::unbounded_channel::<Accepted>();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("kubegate-conn-{index}"))
            .spawn(move || {
                THREAD_INDEX.with(|i| i.set(Some(index)));
                runtime.block_on(async move {
                    while let Some(a) = accepted.recv().await {
                        match TcpStream::from_std(a.tcp) {
                            Ok(tcp) => {
                                tokio::spawn(serve_connection(
                                    connections.clone(),
                                    tcp,
                                    a.peer,
                                    a.slot,
                                    a.watcher,
                                ));
                            }
                            Err(e) => {
                                warn!(peer = %a.peer, error = %e, "cannot adopt a connection")
                            }
                        }
                    }
                    // Intake closed: serve what is open until told to stop (after the
                    // grace period); dropping the runtime then ends whatever is left.
                    let _ = stopped.await;
                });
            })?;
        Ok(ConnectionThread {
            intake,
            stop,
            thread,
        })
    }
}

/// Serves `app` over TLS on `listener` until `shutdown` completes, then stops accepting
/// and gives open connections `grace_period` to finish.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
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
    let connections = Arc::new(Connections {
        acceptor: TlsAcceptor::from(tls),
        app,
        builder,
        handshake_timeout: options.handshake_timeout,
    });
    let mut threads = (0..options.connection_threads)
        .map(|i| ConnectionThread::start(i, connections.clone()))
        .collect::<std::io::Result<Vec<_>>>()?;
    let mut next = 0;

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
        let watcher = graceful.watcher();
        if threads.is_empty() {
            tokio::spawn(serve_connection(
                connections.clone(),
                tcp,
                peer,
                slot,
                watcher,
            ));
            continue;
        }
        // Handed over as a std socket: it leaves this runtime's reactor for the thread's.
        let tcp = match tcp.into_std() {
            Ok(tcp) => tcp,
            Err(e) => {
                warn!(%peer, error = %e, "cannot hand a connection over");
                continue;
            }
        };
        let accepted = Accepted {
            tcp,
            peer,
            slot,
            watcher,
        };
        if threads[next].intake.send(accepted).is_err() {
            warn!(%peer, "a connection thread has stopped; dropping the connection");
        }
        next = (next + 1) % threads.len();
    }

    drop(listener);
    info!("no longer accepting connections; waiting for open ones to finish");
    if tokio::time::timeout(options.grace_period, graceful.shutdown())
        .await
        .is_err()
    {
        warn!(grace_period = ?options.grace_period, "connections still open after the grace period");
    }
    for t in threads.drain(..) {
        let ConnectionThread {
            intake,
            stop,
            thread,
        } = t;
        drop(intake);
        let _ = stop.send(());
        if tokio::task::spawn_blocking(move || thread.join())
            .await
            .map_or(true, |joined| joined.is_err())
        {
            warn!("a connection thread ended with a panic");
        }
    }
    Ok(())
}

/// One client connection: the TLS handshake under its deadline, then HTTP until the client
/// or the graceful shutdown ends it.
async fn serve_connection(
    connections: Arc<Connections>,
    tcp: TcpStream,
    peer: SocketAddr,
    slot: OwnedSemaphorePermit,
    watcher: Watcher,
) {
    // Held for the connection's life.
    let _slot = slot;
    let handshake = connections.acceptor.accept(tcp);
    let tls = match tokio::time::timeout(connections.handshake_timeout, handshake).await {
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
        .map(|leaf| Arc::new(crate::tls::client_cert(leaf)));
    let conn_info = ConnInfo { peer, client_cert };
    let app = connections.app.clone();
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(conn_info.clone());
        app.clone().oneshot(req.map(Body::new))
    });
    let conn = connections
        .builder
        .serve_connection_with_upgrades(TokioIo::new(tls), service);
    if let Err(e) = watcher.watch(conn.into_owned()).await {
        debug!(%peer, error = %e, "connection ended with an error");
    }
}
