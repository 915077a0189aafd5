//! Start-up: from a validated configuration to a listening gateway.
//!
//! Everything that can be checked before accepting a connection is checked here, and a
//! failure names the configuration field it came from. [`check`] runs the same checks
//! without starting anything; it backs `kubegate check-config`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use kubegate_config::{Config, ConfigError, KeySource};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::authn::keys::start_key_loading;
use crate::authn::{Authenticator, IssuerVerifier, KeySet};
use crate::listener::tls::{CertStore, load_certified_key, server_config};
use crate::listener::{ServeOptions, default_connection_threads, serve};
use crate::ops::reload::{AuthConfigReloader, CertReloader, PolicyReloader};
use crate::pipeline::authz::{PolicyStore, load_policy};
use crate::pipeline::{Gateway, router};
use crate::upstream::Upstream;

/// Why the gateway could not start. Every variant names the file (and where possible the
/// line and field) to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A configuration or file problem, located.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The policy file is invalid.
    #[error(transparent)]
    Policy(#[from] crate::pipeline::authz::PolicyLoadError),
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Something else the runtime needs failed.
    #[error("{0}")]
    Runtime(String),
}

/// The parts of a gateway that exist before it listens.
pub struct Prepared {
    /// The shared pipeline state.
    pub gateway: Arc<Gateway>,
    /// The listener's certificate, replaceable at run time.
    pub certs: Arc<CertStore>,
    /// Reload the policy on SIGHUP too (the file is always watched). Off by default so
    /// an embedding process keeps its signals.
    pub reload_on_sighup: bool,
    /// The sign-in pages under `/kubegate/`, when `[login]` is configured.
    pub signin: Option<Arc<crate::signin::SignIn>>,
    /// The impersonation self-check readiness runs.
    selfcheck: Arc<crate::ops::selfcheck::SelfCheck>,
    tls: Arc<rustls::ServerConfig>,
    options: ServeOptions,
    listen: SocketAddr,
    admin: Option<SocketAddr>,
    tls_files: (std::path::PathBuf, std::path::PathBuf),
    /// The configuration file and its `authentication_config`, watched for reloads.
    auth_files: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// Validates everything the configuration points at without starting anything:
/// the policy, the TLS pair, the JWKS files, the kubeconfig and the audit webhook's.
pub async fn check(config: &Config) -> Result<CheckSummary, StartError> {
    let (policy, warnings) = load_policy(&config.policy.value)?;
    let tls = &config.listen;
    let key = load_certified_key(&tls.tls_cert.value, &tls.tls_key.value)
        .map_err(|e| tls.tls_cert.location.error(e.to_string()))?;
    if let Some(ca) = &tls.client_ca {
        server_config(CertStore::new(key), Some(&ca.value))
            .map_err(|e| ca.location.error(e.to_string()))?;
    }
    for issuer in &config.auth.oidc {
        if let KeySource::JwksFile(file) = &issuer.keys {
            let bytes = std::fs::read(&file.value)
                .map_err(|e| file.location.error(format!("cannot read: {e}")))?;
            KeySet::parse(&bytes, &issuer.algorithms)
                .map_err(|e| file.location.error(e.to_string()))?;
        }
    }
    Upstream::load(&config.upstream)
        .await
        .map_err(|e| config.upstream.location.error(e.to_string()))?;
    crate::audit::webhook::load(&config.audit).await?;
    Ok(CheckSummary {
        rules: policy.rule_count(),
        issuers: config.auth.oidc.len(),
        warnings: warnings.iter().map(ToString::to_string).collect(),
    })
}

/// What `check` found.
#[derive(Debug)]
pub struct CheckSummary {
    /// Rules in the policy.
    pub rules: usize,
    /// Configured issuers.
    pub issuers: usize,
    /// Policy warnings (for example shadowed rules).
    pub warnings: Vec<String>,
}

/// Builds the gateway from its configuration: policy, TLS, upstream and issuer keys.
pub async fn prepare(config: &Config) -> Result<Prepared, StartError> {
    prepare_in(
        config,
        &crate::upstream::incluster::ServiceAccountEnv::from_process(),
    )
    .await
}

/// [`prepare`], with `in_cluster = true` taking the service account from
/// `service_account` instead of this process's mount path and environment.
pub async fn prepare_in(
    config: &Config,
    service_account: &crate::upstream::incluster::ServiceAccountEnv,
) -> Result<Prepared, StartError> {
    install_crypto_provider();
    // Before anything takes a metric handle (the audit log keeps one for its queue depth).
    crate::ops::metrics::recorder();
    let (policy, warnings) = load_policy(&config.policy.value)?;
    for w in &warnings {
        tracing::warn!(warning = %w, "policy warning");
    }
    let listen = &config.listen;
    let key = load_certified_key(&listen.tls_cert.value, &listen.tls_key.value)
        .map_err(|e| listen.tls_cert.location.error(e.to_string()))?;
    let certs = CertStore::new(key);
    let tls = server_config(
        certs.clone(),
        listen.client_ca.as_ref().map(|c| c.value.as_path()),
    )
    .map_err(|e| {
        let at = listen
            .client_ca
            .as_ref()
            .map_or(&listen.tls_cert.location, |c| &c.location);
        at.error(e.to_string())
    })?;
    let upstream = Upstream::load_in(&config.upstream, service_account)
        .await
        .map_err(|e| config.upstream.location.error(e.to_string()))?;

    let issuers = config
        .auth
        .oidc
        .iter()
        .map(|i| {
            IssuerVerifier::new(i.clone()).map(Arc::new).map_err(|e| {
                i.location
                    .error(format!("cannot set up TLS for this issuer: {e}"))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let key_tasks = start_key_loading(&issuers).await;

    let webhook = crate::audit::webhook::load(&config.audit).await?;
    let audit = crate::audit::AuditLog::start_with_webhook(config.audit.clone(), webhook)
        .map_err(|e| StartError::Runtime(format!("cannot open the audit log: {e}")))?;

    let gateway = Gateway {
        authn: Authenticator::new(issuers, &config.auth, key_tasks),
        policy: Arc::new(PolicyStore::new(config.policy.value.clone(), policy)),
        upstream,
        limits: config.limits.clone(),
        admission: crate::pipeline::admission::Admission::new(&config.limits),
        audit,
        pending_audit: crate::pipeline::response::Pending::default(),
        shutdown: crate::ops::shutdown::ShutdownTrigger::new().0,
        recorder: crate::recording::Recorder::new(config.recording.as_ref())?,
    };
    let gateway = Arc::new(gateway);
    let signin = crate::signin::SignIn::new(gateway.clone(), config)?;
    Ok(Prepared {
        gateway,
        signin,
        certs,
        reload_on_sighup: false,
        selfcheck: Arc::new(crate::ops::selfcheck::SelfCheck::new(config)),
        tls: Arc::new(tls),
        options: ServeOptions {
            listen: listen.clone(),
            limits: config.limits.clone(),
            connection_threads: default_connection_threads(),
        },
        listen: listen.addr,
        admin: config.admin.as_ref().map(|a| a.addr),
        tls_files: (listen.tls_cert.value.clone(), listen.tls_key.value.clone()),
        auth_files: config
            .auth
            .authentication_config
            .as_ref()
            .map(|f| (config.file.clone(), f.value.clone())),
    })
}

/// A gateway serving in the background.
pub struct Running {
    addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    admin_task: Option<JoinHandle<()>>,
    gateway: Arc<Gateway>,
    _reloader: PolicyReloader,
    _cert_reloader: CertReloader,
    _auth_reloader: Option<AuthConfigReloader>,
    pruner: JoinHandle<()>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Drop for Running {
    // A gateway dropped without `shutdown` (a test's) stops serving and leaves no task.
    fn drop(&mut self) {
        self.task.abort();
        self.pruner.abort();
        if let Some(admin) = self.admin_task.take() {
            admin.abort();
        }
    }
}

impl Running {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The admin listener's address, when one is configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The shared pipeline state (policy store, upstream, ...).
    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gateway
    }

    /// Stops accepting, lets open requests finish, and waits.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        // Watches and exec sessions end now rather than at the grace period's end.
        self.gateway.shutdown.trigger();
        let result = (&mut self.task)
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        // Every connection has ended; write the records of streams that ended with them,
        // then flush the trail.
        self.gateway
            .pending_audit
            .drained(std::time::Duration::from_secs(5))
            .await;
        if let Err(e) = self.gateway.audit.clone().close().await {
            tracing::error!(error = %e, "the audit log did not close cleanly");
        }
        // Health stays answerable until the user-facing listener has drained.
        if let Some(admin) = self.admin_task.take() {
            admin.abort();
        }
        self.pruner.abort();
        result
    }
}

impl Prepared {
    /// Serve connections on `n` connection threads, or on the calling runtime with 0 (for
    /// tests that pause that runtime's clock). One per core by default, and never more:
    /// the upstream keeps one connection pool per core, so that a connection thread only
    /// ever reuses connections its own runtime drives.
    pub fn set_connection_threads(&mut self, n: usize) {
        self.options.connection_threads = n.min(default_connection_threads());
    }

    /// The user-facing application: the gateway's own pages under `/kubegate/` (or their
    /// refusal without `[login]`), everything else through the pipeline.
    pub fn router(&self) -> Router {
        router(self.gateway.clone()).merge(crate::signin::routes(
            self.signin.clone(),
            self.gateway.clone(),
        ))
    }

    /// Binds the configured address and serves `app` in the background.
    pub async fn start(self, app: Router) -> Result<Running, StartError> {
        let listener = bind(self.listen).await?;
        self.start_on(listener, app).await
    }

    /// Serves `app` on an already bound listener (the dev mode binds first to learn its
    /// port).
    pub async fn start_on(self, listener: TcpListener, app: Router) -> Result<Running, StartError> {
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: self.listen,
            source,
        })?;
        let reloader = PolicyReloader::start(self.gateway.policy.clone(), self.reload_on_sighup)
            .map_err(|e| {
                StartError::Runtime(format!(
                    "cannot watch the policy file {}: {e}",
                    self.gateway.policy.path().display()
                ))
            })?;
        let (admin_addr, admin_task) = match self.admin {
            Some(admin) => {
                let admin_listener = bind(admin).await?;
                let admin_addr =
                    admin_listener
                        .local_addr()
                        .map_err(|source| StartError::Bind {
                            addr: admin,
                            source,
                        })?;
                let app = crate::ops::admin::router(self.gateway.clone(), self.selfcheck.clone());
                let task = tokio::spawn(async move {
                    if let Err(e) = axum::serve(admin_listener, app).await {
                        tracing::error!(error = %e, "admin listener failed");
                    }
                });
                (Some(admin_addr), Some(task))
            }
            None => (None, None),
        };
        let cert_reloader = CertReloader::start(
            self.certs.clone(),
            self.tls_files.0.clone(),
            self.tls_files.1.clone(),
            self.reload_on_sighup,
        )
        .map_err(|e| StartError::Runtime(format!("cannot watch the TLS certificate files: {e}")))?;
        let auth_reloader = match &self.auth_files {
            None => None,
            Some((config, file)) => Some(
                AuthConfigReloader::start(
                    self.gateway.clone(),
                    config.clone(),
                    file.clone(),
                    self.reload_on_sighup,
                )
                .map_err(|e| {
                    StartError::Runtime(format!(
                        "cannot watch the authentication configuration {}: {e}",
                        file.display()
                    ))
                })?,
            ),
        };
        let pruner = {
            let gateway = self.gateway.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
                loop {
                    tick.tick().await;
                    gateway.admission.prune();
                }
            })
        };
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(serve(listener, self.tls, app, self.options, async {
            let _ = rx.await;
        }));
        Ok(Running {
            addr,
            admin_addr,
            admin_task,
            gateway: self.gateway,
            _reloader: reloader,
            _cert_reloader: cert_reloader,
            _auth_reloader: auth_reloader,
            pruner,
            shutdown: Some(tx),
            task,
        })
    }
}

/// Binds a TCP listener, naming the address on failure.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

/// Loads the configuration's gateway and starts it: the library form of `kubegate serve`.
pub async fn start(config: &Config) -> Result<Running, StartError> {
    let prepared = prepare(config).await?;
    let app = prepared.router();
    prepared.start(app).await
}

/// Makes aws-lc-rs the process-wide rustls provider, for code (like `kube`'s TLS setup)
/// that asks rustls for the default.
pub fn install_crypto_provider() {
    // Err means it is installed already, which is what we want.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
