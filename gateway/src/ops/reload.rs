//! Reloading while the gateway runs: the policy, the listener's TLS certificate and key,
//! and the `AuthenticationConfiguration` file's issuers (each on a file change or
//! SIGHUP).
//!
//! A reload reads and validates everything first; only a value that validates replaces
//! the running one. A bad file is logged with its location and counted, and the running
//! value stays in force. Files are watched through their directories, so a save by rename
//! (editors) or a Kubernetes volume's `..data` swap is seen too. The kernel reports only
//! finished writes, creations, renames and removals: a log or audit file written next to
//! the policy must not wake the watcher on every line.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use notify::event::EventKindMask;
use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::listener::tls::{CertStore, load_certified_key};
use crate::pipeline::authz::PolicyStore;

/// Editors save in several steps (truncate, write, rename); wait this long after the first
/// event so one save is one reload, of the finished file.
const SETTLE: Duration = Duration::from_millis(150);

/// Kubernetes ConfigMap and Secret volumes publish a new version by renaming this symlink;
/// the files the gateway names are links through it and never see an event themselves.
const KUBERNETES_DATA_LINK: &str = "..data";

/// What the watcher asks the kernel for: a file closed after writing (in-place saves), created,
/// renamed (saves by rename, volume swaps; notify reports renames as name changes) or removed.
/// Not every `write`.
fn watched_events() -> EventKindMask {
    EventKindMask::CREATE
        | EventKindMask::REMOVE
        | EventKindMask::MODIFY_NAME
        | EventKindMask::ACCESS_CLOSE
}

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
    /// File-system events the watcher delivered, ours or not (for tests).
    #[cfg_attr(not(test), expect(dead_code))]
    events: Arc<AtomicU64>,
}

impl Drop for Reloader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Reloader {
    /// `reload` runs once per settled change; the next change waits for its future (an
    /// `AuthenticationConfiguration` reload fetches new issuers' keys).
    fn start<F>(
        files: &[&Path],
        sighup: bool,
        mut reload: impl FnMut(Trigger) -> F + Send + 'static,
    ) -> notify::Result<Self>
    where
        F: Future<Output = ()> + Send + 'static,
    {
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
        names.push(OsString::from(KUBERNETES_DATA_LINK));
        let file_tx = tx.clone();
        let events = Arc::new(AtomicU64::new(0));
        let seen = events.clone();
        let mut watcher = notify::RecommendedWatcher::new(
            move |event: notify::Result<notify::Event>| {
                seen.fetch_add(1, Ordering::Relaxed);
                let Ok(event) = event else { return };
                let ours = event
                    .paths
                    .iter()
                    .any(|p| p.file_name().is_some_and(|n| names.iter().any(|m| m == n)));
                if ours {
                    // A full channel already holds a pending reload: nothing is lost.
                    let _ = file_tx.try_send(Trigger::FileChanged);
                }
            },
            notify::Config::default().with_event_kinds(watched_events()),
        )?;
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
                reload(trigger).await;
            }
        });
        Ok(Reloader {
            _watcher: watcher,
            task,
            events,
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
            crate::ops::metrics::policy_reload(result.is_ok());
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
            std::future::ready(())
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
            move |trigger| {
                match load_certified_key(&cert, &key) {
                    Ok(pair) => {
                        store.replace(pair);
                        crate::ops::metrics::certificate_reload(true);
                        info!(?trigger, cert = %cert.display(), "TLS certificate reloaded");
                    }
                    Err(e) => {
                        crate::ops::metrics::certificate_reload(false);
                        // During a rotation the key may land a moment after the certificate;
                        // the next event retries.
                        error!(?trigger, error = %e, "TLS certificate reload failed; keeping the current pair");
                    }
                }
                std::future::ready(())
            }
        })?;
        Ok(CertReloader(reloader))
    }
}

/// Watches the `AuthenticationConfiguration` file (and SIGHUP when asked): a file that
/// validates, with the rest of the configuration, and whose new issuers' keys load,
/// replaces the file's issuers (added, removed, changed: [`crate::authn::Authenticator::reload_rules`]);
/// a bad one is logged with its location and counted, and the running issuers stay.
/// Stops when dropped.
pub struct AuthConfigReloader(#[allow(dead_code)] Reloader);

impl AuthConfigReloader {
    /// Starts watching `file`, the `authentication_config` of the configuration file
    /// `config` (re-read whole, so an issuer duplicated in `[[auth.oidc]]` is caught too).
    pub fn start(
        gateway: Arc<crate::pipeline::Gateway>,
        config: PathBuf,
        file: PathBuf,
        sighup: bool,
    ) -> notify::Result<Self> {
        let file_shown = file.display().to_string();
        let reloader = Reloader::start(&[&file], sighup, move |trigger| {
            let gateway = gateway.clone();
            let config = config.clone();
            let file = file_shown.clone();
            async move {
                let reloaded = kubegate_config::load(&config).map(|c| c.auth.oidc);
                let result = gateway.authn.reload_rules(reloaded).await;
                crate::ops::metrics::authentication_config_reload(result.is_ok());
                match result {
                    Ok(()) => {
                        info!(?trigger, path = %file, "authentication configuration reloaded")
                    }
                    Err(e) => error!(
                        ?trigger,
                        error = %e,
                        "authentication configuration reload failed; keeping the running issuers and rules"
                    ),
                }
            }
        })?;
        Ok(AuthConfigReloader(reloader))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::eventually;
    use std::io::Write;

    const POLICY: &str = "default = \"deny\"\n";
    const WIDER: &str = "default = \"deny\"\n[[rule]]\nname = \"all\"\neffect = \"allow\"\nsubjects = { authenticated = true }\npaths = [{ path = \"/version\" }]\n";

    fn store(path: &Path) -> Arc<PolicyStore> {
        let (policy, _) = crate::pipeline::authz::load_policy(path).unwrap();
        Arc::new(PolicyStore::new(path.to_path_buf(), policy))
    }

    /// A policy file in a new directory, watched.
    fn watched() -> (tempfile::TempDir, PathBuf, Arc<PolicyStore>, PolicyReloader) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        std::fs::write(&path, POLICY).unwrap();
        let store = store(&path);
        let reloader = PolicyReloader::start(store.clone(), false).unwrap();
        (dir, path, store, reloader)
    }

    #[tokio::test]
    async fn writes_to_other_files_in_the_directory_do_not_reach_the_watcher() {
        let (dir, path, store, reloader) = watched();
        // An audit log or a log file next to the policy, written line by line.
        let mut log = std::fs::File::create(dir.path().join("audit.log")).unwrap();
        // Its creation is an event (delivered asynchronously); its writes must not be.
        let events = || reloader.0.events.load(Ordering::Relaxed);
        eventually("the creation event", || events() >= 1).await;
        tokio::time::sleep(SETTLE).await;
        let baseline = events();
        for i in 0..1_000 {
            writeln!(log, "record {i}").unwrap();
        }
        log.sync_all().unwrap();
        tokio::time::sleep(SETTLE * 2).await;
        assert_eq!(events(), baseline);
        assert_eq!(store.reloads(), 0);

        // A save of the policy itself is still seen.
        std::fs::write(&path, WIDER).unwrap();
        eventually("the reload", || store.reloads() == 1).await;
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_kubernetes_volume_swap_is_a_reload() {
        use std::os::unix::fs::symlink;
        // A ConfigMap volume: policy.toml -> ..data/policy.toml, ..data -> ..v1; an update
        // writes ..v2, points ..data_tmp at it and renames ..data_tmp over ..data.
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("..v1")).unwrap();
        std::fs::write(d.join("..v1/policy.toml"), POLICY).unwrap();
        symlink("..v1", d.join("..data")).unwrap();
        symlink("..data/policy.toml", d.join("policy.toml")).unwrap();
        let store = store(&d.join("policy.toml"));
        let _reloader = PolicyReloader::start(store.clone(), false).unwrap();

        std::fs::create_dir(d.join("..v2")).unwrap();
        std::fs::write(d.join("..v2/policy.toml"), WIDER).unwrap();
        symlink("..v2", d.join("..data_tmp")).unwrap();
        std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
        eventually("the reload", || store.reloads() == 1).await;
        assert_eq!(store.snapshot().rule_count(), 1);
    }

    #[tokio::test]
    async fn a_save_by_rename_is_a_reload() {
        // What most editors do: write a temporary file, rename it over the original.
        let (dir, path, store, _reloader) = watched();
        let temporary = dir.path().join(".policy.toml.swp");
        std::fs::write(&temporary, WIDER).unwrap();
        std::fs::rename(&temporary, &path).unwrap();
        eventually("the reload", || store.reloads() == 1).await;
        assert_eq!(store.snapshot().rule_count(), 1);
    }
}
