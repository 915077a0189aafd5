//! The HTTP/1.1 keep-alive connections that ordinary requests reuse.
//!
//! There is one shard per connection thread, because a connection's task runs on the
//! runtime that opened it. Each shard lists the connections that are free: a request takes
//! one, and its response body ([`Pooled`]) gives it back once the body has been read to its
//! end. So the list holds free connections only, and a checkout looks at one or two of
//! them however many requests are in flight. Nothing runs between two requests.
//!
//! This replaces hyper-util's pool on the hot path. That pool hashed its key with SipHash
//! at checkout and again at hand-back, and it spawned a task for every request to watch for
//! the connection becoming free.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body::{Body as _, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::time::Instant;
use tower::{BoxError, ServiceExt};

/// How long a connection may go unused before the pool closes it: the same 90 s as Go's
/// default HTTP client transport (and hyper-util's pool as the gateway configured it). A
/// connection the server has closed is noticed at checkout, and a request it refused
/// unsent is retried.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// How often idle connections are looked for when no request comes to find them.
const SWEEP_INTERVAL: Duration = Duration::from_secs(30);

/// The most free connections one shard keeps; a connection given back past it is closed.
/// Busy connections are not counted: `max_in_flight` bounds those. After a burst of
/// 1,280 concurrent requests (the harness's 128 x 10 HTTP/2 cell) a shard keeps a few
/// hundred, which the sweep closes once they have been idle for [`IDLE_TIMEOUT`].
const MAX_PER_SHARD: usize = 4096;

/// Why a request could not be sent or answered.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// No connection could be made: TCP connect or the TLS handshake failed.
    #[error("cannot connect to the upstream: {0}")]
    Connect(#[source] BoxError),
    /// The connection failed while sending the request or reading the response head.
    #[error("the upstream connection failed: {0}")]
    Http(#[from] hyper::Error),
}

/// HTTP/1.1 connections to one upstream, kept per connection thread.
pub struct Pool {
    connector: HttpsConnector<HttpConnector>,
    /// What the connector dials: the upstream's scheme and authority.
    target: Uri,
    /// Shared with the response bodies that will give a connection back, so that a body
    /// outliving the pool (a reload) still has somewhere to put it; dropped with the last.
    shards: Box<[Arc<Shard>]>,
}

/// The free connections of one connection thread.
#[derive(Default)]
struct Shard {
    free: Mutex<Vec<Kept>>,
}

impl Shard {
    fn lock(&self) -> MutexGuard<'_, Vec<Kept>> {
        // The guarded list holds only senders: still valid after a panic.
        self.free.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a ready connection, looking from the end (the one given back last, whose
    /// server has most recently shown it keeps the connection), and closes the spent ones
    /// it passes.
    fn checkout(&self, now: Instant) -> Option<http1::SendRequest<Body>> {
        let mut free = self.lock();
        let mut i = free.len();
        while i > 0 {
            i -= 1;
            if free[i].is_spent(now) {
                free.swap_remove(i);
            } else if free[i].sender.is_ready() {
                return Some(free.swap_remove(i).sender);
            }
            // Not ready yet: given back an instant before hyper's connection task marked
            // it free. Left for the next checkout.
        }
        None
    }

    fn give_back(&self, sender: http1::SendRequest<Body>, used: Instant) {
        let mut free = self.lock();
        if free.len() < MAX_PER_SHARD {
            free.push(Kept { sender, used });
        }
    }
}

/// A free connection, and when a request was last sent on it.
struct Kept {
    sender: http1::SendRequest<Body>,
    used: Instant,
}

impl Kept {
    /// Closed by the server, or unused for longer than [`IDLE_TIMEOUT`].
    fn is_spent(&self, now: Instant) -> bool {
        self.sender.is_closed() || now.saturating_duration_since(self.used) > IDLE_TIMEOUT
    }
}

impl Pool {
    /// A pool that dials `target` through `connector`, with a shard for each of `threads`
    /// connection threads and one for callers off them. Inside a runtime it also starts
    /// the sweep that closes idle connections. The sweep ends once the pool has been
    /// dropped, as it is after a reload.
    pub fn new(connector: HttpsConnector<HttpConnector>, target: Uri, threads: usize) -> Arc<Pool> {
        let pool = Arc::new(Pool {
            connector,
            target,
            shards: (0..=threads).map(|_| Arc::default()).collect(),
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(sweep(Arc::downgrade(&pool)));
        }
        pool
    }

    /// Sends `request` (origin-form target, `Host` set) on a connection of the calling
    /// thread's shard: a free one if there is one, a new one otherwise. A request that a
    /// reused connection refused before writing any of it is tried again. That happens
    /// when the server had closed the connection while it was idle.
    pub async fn send(&self, mut request: Request<Body>) -> Result<Response<Pooled>, PoolError> {
        let shard = &self.shards[self.shard()];
        loop {
            // One clock read a try: `used` only needs to be right to the second.
            let now = Instant::now();
            let (mut sender, reused) = match shard.checkout(now) {
                Some(sender) => (sender, true),
                // Boxed: connecting (TCP, TLS, the handshake) is rare, and inline its state
                // would grow every request's future by 3 KB.
                None => (Box::pin(self.connect()).await?, false),
            };
            match sender.try_send_request(request).await {
                Ok(response) => {
                    let home = Home {
                        shard: shard.clone(),
                        sender,
                        used: now,
                    };
                    return Ok(response.map(|body| Pooled::new(body, home)));
                }
                Err(mut error) => match error.take_message() {
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(error.into_error().into()),
                },
            }
        }
    }

    /// The free connections the calling thread's shard keeps now.
    #[cfg(test)]
    fn kept(&self) -> usize {
        self.shards[self.shard()].lock().len()
    }

    /// The calling connection thread's shard; the last one for callers off those threads.
    fn shard(&self) -> usize {
        let threads = self.shards.len() - 1;
        match crate::listener::current_thread_index() {
            Some(i) if threads > 0 => i % threads,
            _ => threads,
        }
    }

    /// A new connection. Its task runs on the caller's runtime.
    async fn connect(&self) -> Result<http1::SendRequest<Body>, PoolError> {
        let io = self
            .connector
            .clone()
            .oneshot(self.target.clone())
            .await
            .map_err(PoolError::Connect)?;
        let (sender, connection) = http1::Builder::new().handshake(io).await?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "an upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// Closes the spent connections of every shard.
    fn sweep_once(&self) {
        let now = Instant::now();
        for shard in &self.shards {
            shard.lock().retain(|kept| !kept.is_spent(now));
        }
    }
}

async fn sweep(pool: Weak<Pool>) {
    let mut ticks = tokio::time::interval(SWEEP_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match pool.upgrade() {
            Some(pool) => pool.sweep_once(),
            None => return,
        }
    }
}

/// Where a busy connection goes back to.
struct Home {
    shard: Arc<Shard>,
    sender: http1::SendRequest<Body>,
    used: Instant,
}

/// A response body from the pool. Once it has been read to its end, its connection is
/// free again and goes back to its shard. A body dropped before its end takes the
/// connection with it: hyper closes a connection whose response was not read.
pub struct Pooled {
    body: Incoming,
    home: Option<Home>,
}

impl Pooled {
    fn new(body: Incoming, home: Home) -> Self {
        let mut pooled = Pooled {
            body,
            home: Some(home),
        };
        // A response without a body (`204`, `304`, a `HEAD`) is at its end already: the
        // connection is free before anyone reads the body, if anyone does.
        if pooled.body.is_end_stream() {
            pooled.give_back();
        }
        pooled
    }

    fn give_back(&mut self) {
        if let Some(home) = self.home.take() {
            home.shard.give_back(home.sender, home.used);
        }
    }
}

impl std::fmt::Debug for Pooled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pooled")
            .field("body", &self.body)
            .field("busy", &self.home.is_some())
            .finish()
    }
}

impl http_body::Body for Pooled {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            // hyper ends the body once its connection has read the whole response; a
            // `Content-Length` body knows its last frame, and the client's side may never
            // ask for the end after it.
            Poll::Ready(None) => self.give_back(),
            Poll::Ready(Some(Ok(_))) if self.body.is_end_stream() => self.give_back(),
            // hyper closes the connection of a failed body.
            Poll::Ready(Some(Err(_))) => self.home = None,
            Poll::Ready(Some(Ok(_))) | Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::Barrier;

    use super::*;
    use crate::testing::eventually;

    /// How a test server treats its connections.
    #[derive(Clone, Copy)]
    enum After {
        /// Keeps the connection for the next request.
        KeepAlive,
        /// Closes it after the response without saying so (as a server's idle timeout
        /// does).
        Close,
    }

    /// How a test server frames its answers' bodies.
    #[derive(Clone, Copy)]
    enum Framing {
        Length,
        /// One chunk, then the last (empty) one.
        Chunked,
    }

    /// A TLS server on 127.0.0.1 that answers every `GET` with `body_len` bytes, speaking
    /// HTTP/1.1 by hand so that the test controls exactly when a connection closes.
    struct Server {
        port: u16,
        cert: CertificateDer<'static>,
        accepted: Arc<AtomicUsize>,
        /// Connections that have ended, whoever ended them.
        ended: Arc<AtomicUsize>,
    }

    impl Server {
        /// With `gate`, each connection's first request waits there before its answer.
        async fn start(after: After, body_len: usize, gate: Option<Arc<Barrier>>) -> Server {
            Server::framed(after, Framing::Length, body_len, gate).await
        }

        async fn framed(
            after: After,
            framing: Framing,
            body_len: usize,
            gate: Option<Arc<Barrier>>,
        ) -> Server {
            crate::app::install_crypto_provider();
            let key = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
            let cert = key.cert.der().clone();
            let private = PrivatePkcs8KeyDer::from(key.signing_key.serialize_der());
            let tls = rustls::ServerConfig::builder()
                .with_no_client_auth()
                .with_single_cert(vec![cert.clone()], PrivateKeyDer::Pkcs8(private))
                .unwrap();
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let accepted = Arc::new(AtomicUsize::new(0));
            let ended = Arc::new(AtomicUsize::new(0));
            let (counted, finished) = (accepted.clone(), ended.clone());
            tokio::spawn(async move {
                loop {
                    let (tcp, _) = listener.accept().await.unwrap();
                    counted.fetch_add(1, Ordering::SeqCst);
                    let (acceptor, gate, finished) =
                        (acceptor.clone(), gate.clone(), finished.clone());
                    tokio::spawn(async move {
                        if let Ok(tls) = acceptor.accept(tcp).await {
                            serve(tls, after, framing, body_len, gate).await;
                        }
                        finished.fetch_add(1, Ordering::SeqCst);
                    });
                }
            });
            Server {
                port,
                cert,
                accepted,
                ended,
            }
        }

        fn pool(&self) -> Arc<Pool> {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(self.cert.clone()).unwrap();
            let tls = rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth();
            let connector =
                super::super::https_connector(tls, None, Duration::from_secs(5), false).unwrap();
            let target = format!("https://localhost:{}/", self.port).parse().unwrap();
            Pool::new(connector, target, 1)
        }

        fn accepted(&self) -> usize {
            self.accepted.load(Ordering::SeqCst)
        }

        fn ended(&self) -> usize {
            self.ended.load(Ordering::SeqCst)
        }
    }

    async fn serve<S>(
        mut tls: S,
        after: After,
        framing: Framing,
        body_len: usize,
        gate: Option<Arc<Barrier>>,
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let mut gate = gate;
        let mut buf = Vec::new();
        loop {
            // One request head (the tests send no bodies).
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                let mut chunk = [0u8; 1024];
                match tls.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            buf.clear();
            if let Some(gate) = gate.take() {
                gate.wait().await;
            }
            let mut answer = match framing {
                Framing::Length => format!("HTTP/1.1 200 OK\r\ncontent-length: {body_len}\r\n\r\n"),
                Framing::Chunked => {
                    format!("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n{body_len:x}\r\n")
                }
            }
            .into_bytes();
            answer.resize(answer.len() + body_len, b'x');
            if let Framing::Chunked = framing {
                answer.extend_from_slice(b"\r\n0\r\n\r\n");
            }
            if tls.write_all(&answer).await.is_err() || tls.flush().await.is_err() {
                return;
            }
            if let After::Close = after {
                let _ = tls.shutdown().await;
                return;
            }
        }
    }

    fn get() -> Request<Body> {
        Request::get("/version")
            .header(http::header::HOST, "localhost")
            .body(Body::empty())
            .unwrap()
    }

    /// Sends a request and reads the whole answer.
    async fn fetch(pool: &Pool) -> usize {
        let response = pool.send(get()).await.expect("answered");
        assert_eq!(response.status(), 200);
        read(response).await
    }

    #[tokio::test]
    async fn requests_one_after_another_share_one_connection() {
        let server = Server::start(After::KeepAlive, 2, None).await;
        let pool = server.pool();
        for _ in 0..5 {
            assert_eq!(fetch(&pool).await, 2);
        }
        assert_eq!(server.accepted(), 1);
        assert_eq!(pool.kept(), 1);
    }

    /// The whole body of `response`.
    async fn read(response: Response<Pooled>) -> usize {
        response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .len()
    }

    #[tokio::test]
    async fn concurrent_requests_each_get_a_connection_and_later_reuse_them() {
        // Each connection's first answer waits until four requests have arrived: if two
        // of them shared a connection, the second would wait behind the first for ever.
        let gate = Arc::new(Barrier::new(4));
        let server = Server::start(After::KeepAlive, 2, Some(gate)).await;
        let pool = server.pool();
        let together = futures_util::future::join_all((0..4).map(|_| pool.send(get())));
        let responses = tokio::time::timeout(Duration::from_secs(10), together)
            .await
            .expect("four connections, not one queue");
        // Busy connections are not in the list a checkout looks through.
        assert_eq!(pool.kept(), 0);
        for response in responses {
            assert_eq!(read(response.unwrap()).await, 2);
        }
        assert_eq!(pool.kept(), 4, "each given back at the end of its body");
        for _ in 0..8 {
            fetch(&pool).await;
        }
        assert_eq!(server.accepted(), 4);
    }

    #[tokio::test]
    async fn a_response_without_a_body_frees_its_connection_unread() {
        let server = Server::start(After::KeepAlive, 0, None).await;
        let pool = server.pool();
        let unread = pool.send(get()).await.unwrap();
        assert_eq!(pool.kept(), 1);
        assert_eq!(fetch(&pool).await, 0);
        assert_eq!(server.accepted(), 1);
        drop(unread);
        assert_eq!(pool.kept(), 1);
    }

    #[tokio::test]
    async fn a_chunked_response_frees_its_connection_at_its_end() {
        let server = Server::framed(After::KeepAlive, Framing::Chunked, 3, None).await;
        let pool = server.pool();
        for _ in 0..3 {
            let response = pool.send(get()).await.unwrap();
            assert_eq!(pool.kept(), 0, "busy until its last chunk");
            assert_eq!(read(response).await, 3);
            assert_eq!(pool.kept(), 1);
        }
        assert_eq!(server.accepted(), 1);
    }

    #[tokio::test]
    async fn a_body_that_outlives_its_pool_closes_its_connection_at_its_end() {
        // As after a reload: the old pool is gone while a response is still being read.
        let server = Server::start(After::KeepAlive, 2, None).await;
        let pool = server.pool();
        let response = pool.send(get()).await.unwrap();
        drop(pool);
        assert_eq!(server.ended(), 0);
        assert_eq!(read(response).await, 2);
        eventually("the connection closed", || server.ended() == 1).await;
    }

    #[tokio::test]
    async fn a_connection_whose_answer_is_abandoned_is_not_given_to_the_next_request() {
        // A megabyte is more than one read: the first connection is still busy with it.
        let server = Server::start(After::KeepAlive, 1 << 20, None).await;
        let pool = server.pool();
        let abandoned = pool.send(get()).await.unwrap();
        assert_eq!(fetch(&pool).await, 1 << 20);
        drop(abandoned);
        assert_eq!(server.accepted(), 2);
        // hyper closes the abandoned connection; the pool keeps using the other.
        eventually("the abandoned connection closed", || server.ended() == 1).await;
        assert_eq!(fetch(&pool).await, 1 << 20);
        assert_eq!(server.accepted(), 2);
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_is_replaced() {
        let server = Server::start(After::Close, 2, None).await;
        let pool = server.pool();
        for round in 1..=3 {
            assert_eq!(fetch(&pool).await, 2);
            eventually("the server closed its side", || server.ended() == round).await;
            // The pool's connection task sees the end too before the next request.
            eventually("the pool noticed", || {
                pool.shards[pool.shard()]
                    .lock()
                    .iter()
                    .all(|k| k.sender.is_closed())
            })
            .await;
        }
        assert_eq!(server.accepted(), 3);
        assert_eq!(pool.kept(), 1, "the closed ones are dropped at checkout");
    }

    #[tokio::test]
    async fn idle_connections_are_closed_after_the_idle_timeout() {
        let server = Server::start(After::KeepAlive, 2, None).await;
        let pool = server.pool();
        fetch(&pool).await;
        assert_eq!(pool.kept(), 1);
        tokio::time::pause();
        tokio::time::advance(IDLE_TIMEOUT + SWEEP_INTERVAL).await;
        tokio::time::resume();
        // The sweep's tick is due: it drops the sender, and the connection task ends.
        eventually("the sweep ran", || pool.kept() == 0).await;
        eventually("the idle connection closed", || server.ended() == 1).await;
        fetch(&pool).await;
        assert_eq!(server.accepted(), 2);
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let server = Server::start(After::KeepAlive, 2, None).await;
        let pool = server.pool();
        // A port nothing listens on: bind one, then let it go.
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = free.local_addr().unwrap().port();
        drop(free);
        let target: Uri = format!("https://localhost:{port}/").parse().unwrap();
        let dead = Pool::new(pool.connector.clone(), target, 1);
        let error = dead.send(get()).await.unwrap_err();
        assert!(matches!(error, PoolError::Connect(_)), "{error}");
        assert_eq!(dead.kept(), 0);
    }
}
