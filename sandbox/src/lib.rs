//! kubegate-sandbox owns the in-memory look-alike of the Kubernetes API server that kubegate
//! forwards to in `dev` mode (when no cluster is reachable) and that the integration tests use
//! as the upstream. It serves HTTPS (HTTP/1.1 and HTTP/2) with a CA and serving certificate it
//! generates at start, demands one fixed bearer token, records every request it receives
//! (headers included, so tests can check what the gateway forwarded), and implements just
//! enough of the API for kubectl: discovery, namespaces, pods, configmaps and secrets with
//! get/list/watch/create/update/patch/delete, server-side Tables, and `SelfSubjectReview` so
//! `kubectl auth whoami` shows the impersonated identity. Pods have logs (`follow` streams
//! what [`Sandbox::append_log`] adds), `exec` and `attach` speak the WebSocket
//! `v5.channel.k8s.io` protocol and echo stdin to stdout, and `portforward` echoes bytes
//! after a `SPDY/3.1` upgrade, or speaks the real port-forward protocol to a TCP backend
//! registered with [`Sandbox::port_forward_to`]. Services and pods have a `proxy` subresource that forwards to
//! real HTTP backends registered with [`Sandbox::proxy_to`] (such as a [`WebApp`]). It does
//! not enforce RBAC (but see [`Sandbox::deny_connect`]), run containers, or persist anything.

mod discovery;
mod logs;
mod proto;
mod proxy;
mod remote;
mod routes;
mod select;
mod server;
mod spdy;
mod state;
mod status;
mod store;
mod table;
mod time;
mod tls;
pub mod webapp;

pub use proxy::ProxyKind;
pub use webapp::WebApp;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;

/// How to start a [`Sandbox`].
#[derive(Clone)]
pub struct SandboxOptions {
    /// The only bearer token the sandbox accepts (`Authorization: Bearer <token>`).
    pub bearer_token: String,
    /// Where to listen; port 0 picks a free port (see [`Sandbox::addr`]).
    pub bind: SocketAddr,
}

impl SandboxOptions {
    /// Options accepting `bearer_token`, listening on `127.0.0.1` with a free port.
    pub fn new(bearer_token: impl Into<String>) -> Self {
        Self {
            bearer_token: bearer_token.into(),
            bind: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
        }
    }
}

// The token is a credential: keep it out of logs.
impl fmt::Debug for SandboxOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SandboxOptions")
            .field("bearer_token", &"<redacted>")
            .field("bind", &self.bind)
            .finish()
    }
}

/// Why a [`Sandbox`] could not start.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// An empty token would make `Authorization: Bearer ` a valid credential.
    #[error("the sandbox bearer token must not be empty")]
    EmptyToken,
    /// Generating the CA or the serving certificate failed.
    #[error("generating the sandbox certificates: {0}")]
    Certificate(#[from] rcgen::Error),
    /// Building the rustls server configuration failed.
    #[error("configuring the sandbox TLS server: {0}")]
    Tls(#[from] rustls::Error),
    /// The listening socket could not be bound.
    #[error("binding the sandbox to {addr}: {source}")]
    Bind {
        /// The address from [`SandboxOptions::bind`].
        addr: SocketAddr,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// One request as the sandbox received it, recorded before it was answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedRequest {
    /// The HTTP method, e.g. `GET`.
    pub method: String,
    /// The path and query string, e.g. `/api/v1/namespaces/dev/pods?watch=true`.
    pub path_and_query: String,
    /// Every header, names lower-case, duplicates kept. Names appear in the order they were
    /// first seen, and the values of a repeated name in the order they were received.
    /// Non-UTF-8 bytes are replaced with U+FFFD.
    pub headers: Vec<(String, String)>,
    /// Whether the request carried exactly one `Authorization: Bearer <bearer_token>`.
    pub authorized: bool,
    /// The HTTP version it arrived with: `HTTP/1.1` or `HTTP/2.0`.
    pub http_version: String,
}

impl RecordedRequest {
    /// Every value of header `name` (case-insensitive), in the order received.
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The first `Impersonate-User` value, if any.
    pub fn impersonate_user(&self) -> Option<&str> {
        self.header_values("impersonate-user").into_iter().next()
    }

    /// Every `Impersonate-Group` value, in the order received.
    pub fn impersonate_groups(&self) -> Vec<&str> {
        self.header_values("impersonate-group")
    }
}

/// A running sandbox API server. Dropping it (or calling [`Sandbox::shutdown`]) stops it and
/// closes every connection, watches included.
pub struct Sandbox {
    addr: SocketAddr,
    ca_pem: String,
    shared: Arc<state::Shared>,
    // Dropping the sender is the stop signal for every task the sandbox spawned.
    stop: tokio::sync::watch::Sender<()>,
    accept_task: tokio::task::JoinHandle<()>,
}

impl fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sandbox")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Sandbox {
    /// Generates the certificates, binds the listener and starts serving in the background.
    /// Must be called within a Tokio runtime.
    pub async fn start(options: SandboxOptions) -> Result<Sandbox, SandboxError> {
        if options.bearer_token.is_empty() {
            return Err(SandboxError::EmptyToken);
        }
        let certs = tls::generate(options.bind.ip())?;
        let tls_config = tls::server_config(&certs)?;
        let listener = tokio::net::TcpListener::bind(options.bind)
            .await
            .map_err(|source| SandboxError::Bind {
                addr: options.bind,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| SandboxError::Bind {
            addr: options.bind,
            source,
        })?;
        let (stop, stop_rx) = tokio::sync::watch::channel(());
        let shared = Arc::new(state::Shared::new(
            options.bearer_token,
            addr,
            stop_rx.clone(),
        ));
        let accept_task = tokio::spawn(server::accept_loop(
            listener,
            tls_config,
            shared.clone(),
            stop_rx,
        ));
        tracing::debug!(%addr, "sandbox API server listening");
        Ok(Sandbox {
            addr,
            ca_pem: certs.ca_pem,
            shared,
            stop,
            accept_task,
        })
    }

    /// The address the sandbox listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL, e.g. `https://127.0.0.1:40123` (loopback when bound to a wildcard).
    pub fn url(&self) -> String {
        format!("https://{}", client_addr(self.addr))
    }

    /// PEM of the self-signed CA that signed the serving certificate (SANs `127.0.0.1`, `::1`,
    /// `localhost`, and the bind address).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The bearer token the sandbox accepts.
    pub fn bearer_token(&self) -> &str {
        &self.shared.token
    }

    /// Writes a kubeconfig whose current context `sandbox` points at this server with the CA
    /// inlined and the bearer token as the user's credential. The file is created with mode
    /// 0600 on Unix because it holds the token.
    pub fn write_kubeconfig(&self, path: &Path) -> std::io::Result<()> {
        use std::io::Write as _;
        let ca = base64::engine::general_purpose::STANDARD.encode(self.ca_pem.as_bytes());
        // JSON strings are valid YAML double-quoted scalars, so this quotes safely.
        let q = |s: &str| serde_json::Value::from(s).to_string();
        let yaml = format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: sandbox\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\n\
             users:\n\
             - name: sandbox\n  user:\n    token: {token}\n\
             contexts:\n\
             - name: sandbox\n  context:\n    cluster: sandbox\n    user: sandbox\n    namespace: default\n\
             current-context: sandbox\n\
             preferences: {{}}\n",
            server = q(&self.url()),
            ca = q(&ca),
            token = q(&self.shared.token),
        );
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path)?;
        file.write_all(yaml.as_bytes())?;
        file.flush()
    }

    /// Every request received so far (since the last [`Sandbox::clear_requests`]), in arrival
    /// order, including rejected ones.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.recorded().requests.iter().cloned().collect()
    }

    /// How many requests [`Sandbox::requests`] holds.
    pub fn request_count(&self) -> usize {
        self.shared.recorded().requests.len()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        self.shared.recorded().requests.clear();
    }

    /// Keeps only the `limit` most recent requests from now on (`None`, the default, keeps
    /// all). For long-running dev sessions, where an unbounded log would only grow.
    pub fn set_request_log_limit(&self, limit: Option<usize>) {
        let mut recorded = self.shared.recorded();
        recorded.limit = limit;
        recorded.trim();
    }

    /// Delays the headers of every later response by `delay` (zero turns it off); requests are
    /// still recorded on arrival. Meant for tests of upstream timeouts.
    pub fn set_response_delay(&self, delay: Duration) {
        self.shared.set_delay(delay);
    }

    /// Appends `text` to the log of pod `ns/pod`; `logs --follow` readers get it at once.
    /// The log is forgotten when the pod is deleted.
    pub fn append_log(&self, ns: &str, pod: &str, text: &str) {
        self.shared.logs.append(ns, pod, text);
    }

    /// Answers 403 to `exec`, `attach` and `portforward` requests impersonating `user`, as
    /// the API server does when RBAC refuses them (the sandbox enforces no other RBAC).
    pub fn deny_connect(&self, user: &str) {
        self.shared.connect_denied().insert(user.to_string());
    }

    /// Sends `services/<name>[:<port>]/proxy/...` (or the pod form) in namespace `ns` to the
    /// HTTP backend at `backend`, whatever the port; a later call for the same name replaces
    /// it. Unregistered names answer 404, as for an object that does not exist.
    pub fn proxy_to(&self, kind: ProxyKind, ns: &str, name: &str, backend: SocketAddr) {
        self.shared
            .backends
            .lock()
            .insert((kind, ns.to_owned(), name.to_owned()), backend);
    }

    /// Makes `kubectl port-forward` to pod `ns/pod` reach the TCP server at `backend`
    /// (whatever remote port it names), speaking the real protocol: SPDY/3.1 tunnelled in a
    /// WebSocket, or after a `SPDY/3.1` upgrade. Other pods keep the raw echo.
    pub fn port_forward_to(&self, ns: &str, pod: &str, backend: SocketAddr) {
        self.shared
            .port_forwards
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((ns.to_owned(), pod.to_owned()), backend);
    }

    /// Upgraded sessions (exec, attach, port-forward) open right now.
    pub fn open_tunnels(&self) -> usize {
        self.shared
            .tunnels
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Stops accepting, closes every open connection and waits for the server task to end.
    pub async fn shutdown(self) {
        let Sandbox {
            stop, accept_task, ..
        } = self;
        drop(stop);
        // A JoinError here only means the task panicked or was cancelled: it is gone either way.
        let _ = accept_task.await;
    }
}

/// The address a client should dial: wildcard binds are reached over loopback.
fn client_addr(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::LOCALHOST), addr.port())
        }
        _ => addr,
    }
}
