//! Reloading the policy while the gateway runs: on SIGHUP and when its file changes.
//!
//! A reload parses and validates the whole file first; only a policy that validates
//! replaces the running one. A bad file is logged with its location and counted, and the
//! running policy stays in force.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::authz::PolicyStore;

/// Editors save in several steps (truncate, write, rename); wait this long after the first
/// event so one save is one reload, of the finished file.
const SETTLE: Duration = Duration::from_millis(150);

/// Why a reload was triggered, for the log.
#[derive(Debug, Clone, Copy)]
enum Trigger {
    FileChanged,
    Hangup,
}

/// Watches the policy file and SIGHUP; stops when dropped.
pub struct PolicyReloader {
    _watcher: notify::RecommendedWatcher,
    task: JoinHandle<()>,
}

impl Drop for PolicyReloader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PolicyReloader {
    /// Starts watching `store`'s file (through its directory, so replacing the file by a
    /// rename is seen too) and, when `sighup` is set, the SIGHUP signal.
    pub fn start(store: Arc<PolicyStore>, sighup: bool) -> notify::Result<Self> {
        let (tx, mut rx) = mpsc::channel::<Trigger>(1);
        let file: PathBuf = store.path().to_path_buf();
        let name = file.file_name().map(|n| n.to_os_string());
        let dir = file
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), |p| p.to_path_buf());
        let file_tx = tx.clone();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let Ok(event) = event else { return };
                if event.kind.is_access() {
                    return;
                }
                if event.paths.iter().any(|p| p.file_name() == name.as_deref()) {
                    // A full channel already holds a pending reload: nothing is lost.
                    let _ = file_tx.try_send(Trigger::FileChanged);
                }
            })?;
        watcher.watch(&dir, RecursiveMode::NonRecursive)?;

        if sighup {
            let hup_tx = tx.clone();
            tokio::spawn(async move {
                use tokio::signal::unix::{SignalKind, signal};
                let Ok(mut hup) = signal(SignalKind::hangup()) else {
                    warn!("cannot listen for SIGHUP; policy reload on signal is off");
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
            }
        });
        Ok(PolicyReloader {
            _watcher: watcher,
            task,
        })
    }
}
