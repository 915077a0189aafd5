//! Reloading while the gateway runs: the policy (file change or SIGHUP) and the
//! listener's TLS certificate and key (file change or SIGHUP).
//!
//! A reload reads and validates everything first; only a value that validates replaces
//! the running one. A bad file is logged with its location and counted, and the running
//! value stays in force. Files are watched through their directories, so a save by rename
//! (editors, Kubernetes secret volumes) is seen too.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::authz::PolicyStore;
use crate::tls::{CertStore, load_certified_key};

/// Editors save in several steps (truncate, write, rename); wait this long after the first
/// event so one save is one reload, of the finished file.
const SETTLE: Duration = Duration::from_millis(150);

/// Why a reload was triggered, for the log.
#[derive(Debug, Clone, Copy)]
enum Trigger {
    FileChanged,
    Hangup,
}

/// Calls a reload function when any of some files changes or on SIGHUP; stops when
/// dropped.
struct Reloader {
    _watcher: notify::RecommendedWatcher,
    task: JoinHandle<()>,
}

impl Drop for Reloader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Reloader {
    fn start(
        files: &[&Path],
        sighup: bool,
        mut reload: impl FnMut(Trigger) + Send + 'static,
    ) -> notify::Result<Self> {
        let (tx, mut rx) = mpsc::channel::<Trigger>(1);
        let mut dirs: Vec<PathBuf> = Vec::new();
        let mut names: Vec<OsString> = Vec::new();
        for file in files {
            let dir = file
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
            if let Some(name) = file.file_name() {
                names.push(name.to_os_string());
            }
        }
        let file_tx = tx.clone();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let Ok(event) = event else { return };
                if event.kind.is_access() {
                    return;
                }
                let ours = event
                    .paths
                    .iter()
                    .any(|p| p.file_name().is_some_and(|n| names.iter().any(|m| m == n)));
                if ours {
                    // A full channel already holds a pending reload: nothing is lost.
                    let _ = file_tx.try_send(Trigger::FileChanged);
                }
            })?;
        for dir in &dirs {
            watcher.watch(dir, RecursiveMode::NonRecursive)?;
        }
        if sighup {
            let hup_tx = tx.clone();
            tokio::spawn(async move {
                use tokio::signal::unix::{SignalKind, signal};
                let Ok(mut hup) = signal(SignalKind::hangup()) else {
                    warn!("cannot listen for SIGHUP; reload on signal is off");
                    return;
                };
                while hup.recv().await.is_some() {
                    if hup_tx.send(Trigger::Hangup).await.is_err() {
                        return;
                    }
                }
            });
        }
        drop(tx);
        let task = tokio::spawn(async move {
            while let Some(trigger) = rx.recv().await {
                tokio::time::sleep(SETTLE).await;
                while rx.try_recv().is_ok() {}
                reload(trigger);
            }
        });
        Ok(Reloader {
            _watcher: watcher,
            task,
        })
    }
}

/// Watches the policy file (and SIGHUP when asked); stops when dropped.
pub struct PolicyReloader(#[allow(dead_code)] Reloader);

impl PolicyReloader {
    /// Starts watching `store`'s file and, when `sighup` is set, the SIGHUP signal.
    pub fn start(store: Arc<PolicyStore>, sighup: bool) -> notify::Result<Self> {
        let path = store.path().to_path_buf();
        let reloader = Reloader::start(&[&path], sighup, move |trigger| {
            let result = store.reload();
            crate::observe::policy_reload(result.is_ok());
            match result {
                Ok(warnings) => {
                    for w in &warnings {
                        warn!(warning = %w, "policy warning");
                    }
                    info!(?trigger, path = %store.path().display(), "policy reloaded");
                }
                Err(e) => {
                    error!(?trigger, error = %e, "policy reload failed; keeping the running policy");
                }
            }
        })?;
        Ok(PolicyReloader(reloader))
    }
}

/// Watches the listener's certificate and key (and SIGHUP when asked): new handshakes
/// get the new pair, open connections keep theirs. Stops when dropped.
pub struct CertReloader(#[allow(dead_code)] Reloader);

impl CertReloader {
    /// Starts watching `cert` and `key` for `store`.
    pub fn start(
        store: Arc<CertStore>,
        cert: PathBuf,
        key: PathBuf,
        sighup: bool,
    ) -> notify::Result<Self> {
        let files = [cert.as_path(), key.as_path()];
        let reloader = Reloader::start(&files, sighup, {
            let (cert, key) = (cert.clone(), key.clone());
            move |trigger| match load_certified_key(&cert, &key) {
                Ok(pair) => {
                    store.replace(pair);
                    crate::observe::certificate_reload(true);
                    info!(?trigger, cert = %cert.display(), "TLS certificate reloaded");
                }
                Err(e) => {
                    crate::observe::certificate_reload(false);
                    // During a rotation the key may land a moment after the certificate;
                    // the next event retries.
                    error!(?trigger, error = %e, "TLS certificate reload failed; keeping the current pair");
                }
            }
        })?;
        Ok(CertReloader(reloader))
    }
}
