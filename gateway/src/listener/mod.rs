//! Accepting connections: TCP, the TLS handshake under a deadline, then HTTP/1.1 or
//! HTTP/2 (chosen by ALPN) with upgrades enabled, each connection on its own task.
//!
//! Every phase of a connection has a deadline, so an idle socket cannot hold a connection
//! slot: the first request's headers must arrive within `header_read_timeout` of the
//! accept (TLS handshake, protocol detection and headers together; the handshake also has
//! its own `handshake_timeout`), and from then on a connection with no request in flight
//! for `idle_timeout` is closed (HTTP/2: GOAWAY). A request is in flight from its headers
//! until its response body has ended or been dropped, so a long watch keeps its connection
//! and HTTP/2 pings do not. In front of the global `max_connections`, each client address
//! (IPv6 by prefix, [`address_key`]) may hold `max_connections_per_address`.
//!
//! Connections run on connection threads, one single-threaded runtime per core, handed out
//! in turn by the accept loop. A connection's tasks (the client connection, its requests,
//! the upstream connections they use: see [`current_thread_index`]) then wake each other on
//! one thread: on a multi-threaded runtime every request crossed threads several times,
//! which cost more CPU than the request's own work and made the latency tail depend on two
//! threads being scheduled at once.

pub mod tls;

use std::cell::Cell;
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use bytes::Bytes;
use http::Request;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, mpsc, oneshot, watch};
use tokio::time::Instant;
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
    pub client_cert: Option<Arc<crate::listener::tls::ClientCert>>,
}

/// Connection-level settings (their defaults live in kubegate-config).
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The `[listen]` settings: deadlines for each connection phase.
    pub listen: kubegate_config::Listen,
    /// The `[limits]` settings: the connection caps and the IPv6 prefix.
    pub limits: kubegate_config::Limits,
    /// Connection threads; 0 serves connections on the calling runtime instead (tests
    /// that pause its clock need that).
    pub connection_threads: usize,
}
/// How long open connections may take to finish once shutdown begins.
pub const GRACE_PERIOD: Duration = Duration::from_secs(30);

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

/// The key a client address is counted by in every per-address bound: an IPv4 address as
/// it is (an IPv4-mapped IPv6 address as that IPv4 address), any other IPv6 address cut
/// to its first `ipv6_prefix_length` bits, since one host usually holds a whole /64 and
/// could otherwise take a fresh budget with every address in it.
pub fn address_key(ip: IpAddr, ipv6_prefix_length: u8) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let kept = u32::from(ipv6_prefix_length.min(128));
                // A shift by 128 (prefix 0) overflows: nothing is kept then.
                let mask = u128::MAX.checked_shl(128 - kept).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
            }
        },
    }
}

/// HTTP/2 streams one client connection may have open at once: enough for kubectl's
/// parallel discovery, small enough that one connection cannot hog the gateway.
const MAX_CONCURRENT_STREAMS: u32 = 250;

/// The gateway pings every HTTP/2 connection this often, and closes one whose peer has
/// not answered within [`H2_KEEP_ALIVE_TIMEOUT`]: a connection holding streams to a
/// vanished peer is not idle by the request count, so this is what ends it.
const H2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// See [`H2_KEEP_ALIVE_INTERVAL`].
const H2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// After an idle connection was told to close (an HTTP/2 GOAWAY, which the peer should
/// acknowledge within a round trip), how long it may stay open with no request in flight
/// before it is dropped outright; never longer than the idle timeout itself.
const CLOSE_DRAIN: Duration = Duration::from_secs(5);

/// Refused connections are logged at most this often (with a count), so a flood does not
/// turn into a flood of log lines.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// What every connection needs, shared by all connection threads.
struct Connections {
    acceptor: TlsAcceptor,
    app: Router,
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    handshake_timeout: Duration,
    header_read_timeout: Duration,
    idle_timeout: Duration,
}

/// An accepted TCP connection on its way to a connection thread.
struct Accepted {
    tcp: std::net::TcpStream,
    peer: SocketAddr,
    slots: Slots,
    stop: watch::Receiver<()>,
}

/// A connection's places under the global and the per-address cap, held for its life.
struct Slots {
    // Fields drop in order: the address slot must go first. The accept loop waits for the
    // global slot and then checks the address; freed the other way round, a client whose
    // previous connection just closed could find its address still full and be reset.
    _address: AddressSlot,
    _global: OwnedSemaphorePermit,
}

/// Open connections per address key, for `max_connections_per_address`. An entry exists
/// only while its address has a connection open, so the map holds at most
/// `max_connections` entries.
struct PerAddress {
    max: usize,
    ipv6_prefix_length: u8,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl PerAddress {
    /// A slot for one more connection from `ip`, or `None` when its address is at the cap.
    fn acquire(self: &Arc<Self>, ip: IpAddr) -> Option<AddressSlot> {
        let key = address_key(ip, self.ipv6_prefix_length);
        // A poisoned lock only means a panic elsewhere mid-update of a counter.
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.get(&key).is_some_and(|n| *n >= self.max) {
            return None;
        }
        *open.entry(key).or_default() += 1;
        Some(AddressSlot {
            table: self.clone(),
            key,
        })
    }
}

/// One connection counted against its address; uncounted when dropped.
struct AddressSlot {
    table: Arc<PerAddress>,
    key: IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.table.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// What the idle watchdog of one connection knows: how many requests are in flight and,
/// when none is, by when the next one must arrive.
///
/// The watchdog's timer is not re-armed per request: on a keep-alive connection every
/// request moves the deadline later, so the timer stays where it is and, when it fires
/// early, is set to the deadline then in force. Only a deadline that moved earlier (the
/// first request ending sooner than `header_read_timeout` would, or a request ending
/// while the watchdog waits for one) wakes it. A timer re-armed per request cost a wake
/// and two timer-wheel operations on every request.
struct Activity {
    state: Mutex<ActivityState>,
    /// Signalled when the watchdog must look again (see [`Activity`]).
    idle: Notify,
}

struct ActivityState {
    in_flight: usize,
    served: bool,
    /// With nothing in flight: the connection is closed if no request starts by then.
    deadline: Instant,
    /// How long the connection may idle after its last request ends.
    idle_timeout: Duration,
    /// When the watchdog's timer fires; `None` while it waits for the requests in flight.
    armed: Option<Instant>,
}

/// Why a connection's watchdog ended it.
enum Expired {
    /// No request arrived within `header_read_timeout` of the accept.
    NoRequest,
    /// No request was in flight for the idle timeout.
    Idle,
}

impl Activity {
    fn new(first_request_by: Instant, idle_timeout: Duration) -> Self {
        Activity {
            state: Mutex::new(ActivityState {
                in_flight: 0,
                served: false,
                deadline: first_request_by,
                idle_timeout,
                armed: None,
            }),
            idle: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ActivityState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a request in flight until the returned guard is dropped.
    fn start(self: &Arc<Self>) -> Busy {
        let mut state = self.lock();
        state.in_flight += 1;
        state.served = true;
        Busy(self.clone())
    }

    /// From now on an idle connection is dropped after `drain` instead of the idle timeout.
    /// Takes effect for the next [`Activity::expired`].
    fn draining(&self, drain: Duration) {
        let mut state = self.lock();
        state.idle_timeout = drain;
        state.deadline = Instant::now() + drain;
    }

    /// Resolves once no request has been in flight until the connection's deadline.
    async fn expired(&self) -> Expired {
        let mut timer = pin!(tokio::time::sleep_until(self.lock().deadline));
        loop {
            // Created before the state is read, so a wake in between is not lost.
            let notified = self.idle.notified();
            let busy = {
                let mut state = self.lock();
                if state.in_flight > 0 {
                    state.armed = None;
                    true
                } else if Instant::now() >= state.deadline {
                    return if state.served {
                        Expired::Idle
                    } else {
                        Expired::NoRequest
                    };
                } else {
                    if timer.is_elapsed() || state.deadline < timer.deadline() {
                        timer.as_mut().reset(state.deadline);
                    }
                    state.armed = Some(timer.deadline());
                    false
                }
            };
            if busy {
                notified.await;
            } else {
                tokio::select! {
                    () = timer.as_mut() => {}
                    () = notified => {}
                }
            }
        }
    }
}

/// A request in flight on its connection.
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.in_flight -= 1;
        if state.in_flight == 0 {
            let deadline = Instant::now() + state.idle_timeout;
            state.deadline = deadline;
            let look_again = state.armed.is_none_or(|armed| deadline < armed);
            drop(state);
            if look_again {
                self.0.idle.notify_one();
            }
        }
    }
}

/// A response body that keeps its request counted in flight until it has ended or been
/// dropped: a watch is busy for as long as it streams, not just until its headers.
struct TrackedBody {
    body: Body,
    busy: Option<Busy>,
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let frame = ready!(Pin::new(&mut self.body).poll_frame(cx));
        if frame.is_none() {
            self.busy = None;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
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
                                    a.slots,
                                    a.stop,
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
    // Every connection holds a receiver; shutdown signals them all, then waits until the
    // last one has dropped its receiver.
    let (stop, _) = watch::channel(());
    let mut http1 = http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(options.listen.header_read_timeout)
        .keep_alive(true);
    let mut http2 = http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .keep_alive_interval(Some(H2_KEEP_ALIVE_INTERVAL))
        .keep_alive_timeout(H2_KEEP_ALIVE_TIMEOUT);
    let connections = Arc::new(Connections {
        acceptor: TlsAcceptor::from(tls),
        app,
        http1,
        http2,
        handshake_timeout: options.listen.handshake_timeout,
        header_read_timeout: options.listen.header_read_timeout,
        idle_timeout: options.listen.idle_timeout,
    });
    let mut threads = (0..options.connection_threads)
        .map(|i| ConnectionThread::start(i, connections.clone()))
        .collect::<std::io::Result<Vec<_>>>()?;
    let mut next = 0;

    let slots = Arc::new(tokio::sync::Semaphore::new(
        options.limits.max_connections as usize,
    ));
    let per_address = Arc::new(PerAddress {
        max: options.limits.max_connections_per_address as usize,
        ipv6_prefix_length: options.limits.ipv6_prefix_length,
        open: Mutex::new(HashMap::new()),
    });
    let mut refusals = Refusals::default();
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
        let Some(address_slot) = per_address.acquire(peer.ip()) else {
            // Closed before any TLS work; the global slot goes back with `slot`.
            drop(tcp);
            refusals.refused(peer);
            continue;
        };
        let held = Slots {
            _global: slot,
            _address: address_slot,
        };
        let _ = tcp.set_nodelay(true);
        let stop = stop.subscribe();
        if threads.is_empty() {
            tokio::spawn(serve_connection(connections.clone(), tcp, peer, held, stop));
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
            slots: held,
            stop,
        };
        if threads[next].intake.send(accepted).is_err() {
            warn!(%peer, "a connection thread has stopped; dropping the connection");
        }
        next = (next + 1) % threads.len();
    }

    drop(listener);
    info!("no longer accepting connections; waiting for open ones to finish");
    let _ = stop.send(());
    if tokio::time::timeout(GRACE_PERIOD, stop.closed())
        .await
        .is_err()
    {
        warn!(grace_period = ?GRACE_PERIOD, "connections still open after the grace period");
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

/// Connections refused by the per-address cap: each is counted, and logged in batches.
#[derive(Default)]
struct Refusals {
    unlogged: u64,
    last_logged: Option<Instant>,
}

impl Refusals {
    fn refused(&mut self, peer: SocketAddr) {
        crate::ops::metrics::connection_refused("address");
        self.unlogged += 1;
        let now = Instant::now();
        if self
            .last_logged
            .is_none_or(|at| now.duration_since(at) >= REFUSAL_LOG_INTERVAL)
        {
            debug!(%peer, refused = self.unlogged, "connections refused: their address is at max_connections_per_address");
            self.unlogged = 0;
            self.last_logged = Some(now);
        }
    }
}

/// One client connection: the TLS handshake, then HTTP until the client, the idle
/// watchdog or the graceful shutdown ends it.
async fn serve_connection(
    connections: Arc<Connections>,
    tcp: TcpStream,
    peer: SocketAddr,
    slots: Slots,
    mut stop: watch::Receiver<()>,
) {
    // Held for the connection's life.
    let _slots = slots;
    let accepted = Instant::now();
    let first_request_by = accepted + connections.header_read_timeout;
    let handshake_by = first_request_by.min(accepted + connections.handshake_timeout);
    let handshake = connections.acceptor.accept(tcp);
    let tls = match tokio::time::timeout_at(handshake_by, handshake).await {
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
        .map(|leaf| Arc::new(crate::listener::tls::client_cert(leaf)));
    let conn_info = ConnInfo { peer, client_cert };
    let activity = Arc::new(Activity::new(first_request_by, connections.idle_timeout));
    let app = connections.app.clone();
    let service = hyper::service::service_fn({
        let activity = activity.clone();
        move |mut req: Request<Incoming>| {
            let busy = activity.start();
            req.extensions_mut().insert(conn_info.clone());
            let response = app.clone().oneshot(req.map(Body::new));
            async move {
                let response = response.await?;
                Ok::<_, std::convert::Infallible>(response.map(|body| TrackedBody {
                    body,
                    busy: Some(busy),
                }))
            }
        }
    });
    // The protocol is the one TLS agreed on (ALPN), as the API server decides it: no
    // sniffing of the first bytes, whose short read would also double hyper's HTTP/1
    // read buffer to 16 KiB for the connection's life.
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = TokioIo::new(tls);
    let mut conn = if h2 {
        Served::h2(connections.http2.serve_connection(io, service))
    } else {
        Served::h1(
            connections
                .http1
                .serve_connection(io, service)
                .with_upgrades(),
        )
    };
    let result = tokio::select! {
        result = &mut conn => result,
        _ = stop.changed() => {
            conn.graceful_shutdown();
            conn.await
        }
        expired = activity.expired() => match expired {
            Expired::NoRequest => {
                // Nothing was served, so there is nothing to finish: dropped.
                debug!(%peer, "no request within header_read_timeout; closing");
                Ok(())
            }
            Expired::Idle => {
                debug!(%peer, "idle; closing");
                // HTTP/2: GOAWAY, then the peer's acknowledgement; HTTP/1.1: closed now.
                conn.graceful_shutdown();
                activity.draining(CLOSE_DRAIN.min(connections.idle_timeout));
                tokio::select! {
                    result = &mut conn => result,
                    _ = activity.expired() => Ok(()),
                }
            }
        },
    };
    if let Err(e) = result {
        debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// A connection served by the protocol its TLS handshake agreed on. Boxed, so the
/// connection task stays small and either side is `Unpin`.
struct Served<H1, H2> {
    conn: Protocol<H1, H2>,
    /// Asked to shut down gracefully; applied at the next poll.
    closing: bool,
}

enum Protocol<H1, H2> {
    H1(Pin<Box<H1>>),
    H2(Pin<Box<H2>>),
}

impl<H1, H2> Served<H1, H2> {
    fn h1(conn: H1) -> Self {
        Served {
            conn: Protocol::H1(Box::pin(conn)),
            closing: false,
        }
    }

    fn h2(conn: H2) -> Self {
        Served {
            conn: Protocol::H2(Box::pin(conn)),
            closing: false,
        }
    }

    /// HTTP/2: GOAWAY, then the open streams finish; HTTP/1.1: the request in flight
    /// finishes, then the connection closes. Takes effect when the connection is next
    /// polled, which every caller does at once.
    fn graceful_shutdown(&mut self) {
        self.closing = true;
    }
}

impl<I, S, B, E> Future for Served<http1::UpgradeableConnection<I, S>, http2::Connection<I, S, E>>
where
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: http_body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    type Output = hyper::Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let closing = std::mem::take(&mut this.closing);
        match &mut this.conn {
            Protocol::H1(conn) => {
                if closing {
                    conn.as_mut().graceful_shutdown();
                }
                conn.as_mut().poll(cx)
            }
            Protocol::H2(conn) => {
                if closing {
                    conn.as_mut().graceful_shutdown();
                }
                conn.as_mut().poll(cx)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv4_addresses_are_their_own_key() {
        for prefix in [1, 64, 128] {
            assert_eq!(address_key(ip("192.0.2.7"), prefix), ip("192.0.2.7"));
        }
    }

    #[test]
    fn ipv4_mapped_addresses_count_as_the_ipv4_address() {
        assert_eq!(address_key(ip("::ffff:192.0.2.7"), 64), ip("192.0.2.7"));
        assert_eq!(address_key(ip("::ffff:192.0.2.7"), 128), ip("192.0.2.7"));
    }

    #[test]
    fn ipv6_addresses_are_cut_to_the_prefix() {
        let a = ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd");
        assert_eq!(address_key(a, 64), ip("2001:db8:1:2::"));
        assert_eq!(
            address_key(ip("2001:db8:1:2::ffff"), 64),
            address_key(a, 64),
            "one /64 is one address"
        );
        assert_ne!(address_key(ip("2001:db8:1:3::1"), 64), address_key(a, 64));
        assert_eq!(address_key(a, 48), ip("2001:db8:1::"));
        assert_eq!(address_key(a, 128), a);
        assert_eq!(address_key(a, 1), ip("::"));
        assert_eq!(address_key(ip("8000::1"), 1), ip("8000::"));
        assert_eq!(address_key(a, 0), ip("::"), "never past the ends");
    }

    #[test]
    fn the_per_address_cap_counts_open_connections_by_key() {
        let table = Arc::new(PerAddress {
            max: 2,
            ipv6_prefix_length: 64,
            open: Mutex::new(HashMap::new()),
        });
        let first = table.acquire(ip("2001:db8::1")).unwrap();
        let second = table.acquire(ip("2001:db8::2")).unwrap();
        assert!(table.acquire(ip("2001:db8::3")).is_none(), "same /64");
        assert!(table.acquire(ip("2001:db8:0:1::1")).is_some());
        drop(first);
        assert!(table.acquire(ip("2001:db8::3")).is_some(), "released");
        drop(second);
        assert!(
            table.open.lock().unwrap().is_empty(),
            "no entry outlives its connections"
        );
    }

    /// When `activity`'s watchdog ends the connection, measured from now (paused time), or
    /// `None` if it has not within `horizon`, while `during` runs beside it.
    async fn expires_after(
        activity: &Arc<Activity>,
        horizon: Duration,
        during: impl Future<Output = ()>,
    ) -> Option<(Duration, bool)> {
        let start = Instant::now();
        let watchdog = async {
            let expired = activity.expired().await;
            (start.elapsed(), matches!(expired, Expired::Idle))
        };
        tokio::select! {
            ended = watchdog => Some(ended),
            () = async { during.await; tokio::time::sleep(horizon).await } => None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_a_request_ends_at_the_first_request_deadline() {
        let activity = Arc::new(Activity::new(
            Instant::now() + Duration::from_secs(10),
            Duration::from_secs(60),
        ));
        let ended = expires_after(&activity, Duration::from_secs(30), async {}).await;
        assert_eq!(ended, Some((Duration::from_secs(10), false)));
    }

    #[tokio::test(start_paused = true)]
    async fn keep_alive_requests_keep_moving_the_idle_deadline() {
        let activity = Arc::new(Activity::new(
            Instant::now() + Duration::from_secs(1),
            Duration::from_secs(1),
        ));
        // A request every 600 ms for 6 s, each taking 100 ms: never idle for 1 s, although
        // the timer first armed (at 1 s) fires while requests keep coming.
        let traffic = async {
            for _ in 0..10 {
                let busy = activity.start();
                tokio::time::sleep(Duration::from_millis(100)).await;
                drop(busy);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        };
        let ended = expires_after(&activity, Duration::ZERO, traffic).await;
        assert_eq!(ended, None, "closed while requests kept coming");
        // Then quiet: idle one second after the last request ended (6 s - 500 ms).
        let ended = expires_after(&activity, Duration::from_secs(30), async {}).await;
        assert_eq!(ended, Some((Duration::from_millis(500), true)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_short_idle_timeout_after_the_first_request_wins_over_the_header_deadline() {
        let activity = Arc::new(Activity::new(
            Instant::now() + Duration::from_secs(6),
            Duration::from_secs(1),
        ));
        let one_request = async {
            let busy = activity.start();
            tokio::time::sleep(Duration::from_millis(200)).await;
            drop(busy);
        };
        // The watchdog armed for 6 s; the request's end moves the deadline to 1.2 s.
        let ended = expires_after(&activity, Duration::from_secs(30), one_request).await;
        assert_eq!(ended, Some((Duration::from_millis(1200), true)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_flight_holds_the_connection_past_every_deadline() {
        let activity = Arc::new(Activity::new(
            Instant::now() + Duration::from_secs(1),
            Duration::from_secs(2),
        ));
        let busy = activity.start();
        let long = async {
            tokio::time::sleep(Duration::from_secs(100)).await;
        };
        assert_eq!(
            expires_after(&activity, Duration::ZERO, long).await,
            None,
            "a request in flight is never idle"
        );
        drop(busy);
        let ended = expires_after(&activity, Duration::from_secs(30), async {}).await;
        assert_eq!(ended, Some((Duration::from_secs(2), true)));
    }
}
