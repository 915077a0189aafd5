//! The state every request handler of one sandbox shares: the object store, pod logs,
//! proxy and port-forward backends, the request log, and the knobs tests turn (refused
//! users, an artificial delay). Handlers and the listener depend on this module; it
//! depends on none of them, so the sandbox has no import cycle.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http::HeaderMap;
use tokio::sync::watch;

use crate::RecordedRequest;
use crate::logs::Logs;
use crate::proxy::Backends;
use crate::store::Store;

/// State shared by every connection of one sandbox.
pub(crate) struct Shared {
    pub(crate) token: String,
    pub(crate) addr: SocketAddr,
    pub(crate) store: Store,
    pub(crate) logs: Logs,
    /// Upgraded sessions (exec, attach, port-forward) outlive their HTTP connection, so
    /// they watch this to end with the sandbox.
    pub(crate) stop: watch::Receiver<()>,
    /// Upgraded sessions open right now.
    pub(crate) tunnels: Arc<AtomicUsize>,
    /// Users whose exec, attach and port-forward requests are refused with 403, as RBAC
    /// would refuse them on a real API server.
    pub(crate) connect_denied: Mutex<HashSet<String>>,
    /// Where service and pod proxy requests go.
    pub(crate) backends: Backends,
    /// TCP backends of pods' port-forwards, by namespace and pod.
    pub(crate) port_forwards: Mutex<HashMap<(String, String), SocketAddr>>,
    recorded: Mutex<Recorded>,
    delay: Mutex<Duration>,
}

/// The request log, optionally capped so a long dev session does not grow without bound.
#[derive(Default)]
pub(crate) struct Recorded {
    pub(crate) requests: VecDeque<RecordedRequest>,
    pub(crate) limit: Option<usize>,
}

impl Recorded {
    pub(crate) fn trim(&mut self) {
        if let Some(limit) = self.limit {
            let excess = self.requests.len().saturating_sub(limit);
            self.requests.drain(..excess);
        }
    }
}

impl Shared {
    pub(crate) fn new(token: String, addr: SocketAddr, stop: watch::Receiver<()>) -> Self {
        Shared {
            token,
            addr,
            store: Store::new(),
            logs: Logs::default(),
            stop,
            tunnels: Arc::new(AtomicUsize::new(0)),
            connect_denied: Mutex::new(HashSet::new()),
            backends: Backends::default(),
            port_forwards: Mutex::new(HashMap::new()),
            recorded: Mutex::new(Recorded::default()),
            delay: Mutex::new(Duration::ZERO),
        }
    }

    pub(crate) fn recorded(&self) -> MutexGuard<'_, Recorded> {
        self.recorded.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn delay(&self) -> Duration {
        *self.delay.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn set_delay(&self, delay: Duration) {
        *self.delay.lock().unwrap_or_else(|e| e.into_inner()) = delay;
    }

    pub(crate) fn port_forward_backend(&self, ns: &str, pod: &str) -> Option<SocketAddr> {
        self.port_forwards
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(ns.to_owned(), pod.to_owned()))
            .copied()
    }

    pub(crate) fn connect_denied(&self) -> MutexGuard<'_, HashSet<String>> {
        self.connect_denied
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Exactly one `Authorization` header carrying our token. Several headers are refused:
    /// which one a server would read is ambiguous, and a gateway must never send two.
    pub(crate) fn is_authorized(&self, headers: &HeaderMap) -> bool {
        let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            return false;
        };
        let Some((scheme, token)) = value.to_str().ok().and_then(|v| v.split_once(' ')) else {
            return false;
        };
        scheme.eq_ignore_ascii_case("bearer")
            && constant_time_eq(token.trim().as_bytes(), self.token.as_bytes())
    }

    pub(crate) fn record(&self, parts: &http::request::Parts, authorized: bool) {
        let request = RecordedRequest {
            method: parts.method.to_string(),
            path_and_query: parts
                .uri
                .path_and_query()
                .map_or_else(|| "/".to_string(), |p| p.to_string()),
            headers: parts
                .headers
                .iter()
                .map(|(n, v)| {
                    (
                        n.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            authorized,
            http_version: format!("{:?}", parts.version),
        };
        let mut recorded = self.recorded();
        recorded.requests.push_back(request);
        recorded.trim();
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Runs `future` on Tokio until it finishes or the sandbox stops.
pub(crate) fn spawn_until_stopped<F>(mut stop: watch::Receiver<()>, future: F)
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(async move {
        tokio::select! {
            _ = future => {}
            _ = stop.changed() => {}
        }
    });
}
