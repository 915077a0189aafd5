//! In-cluster mode (`in_cluster = true`): the pod's service account as the gateway's
//! upstream credential.
//!
//! The kubelet mounts the account's token, the cluster CA and the namespace in one
//! directory and sets `KUBERNETES_SERVICE_HOST`/`_PORT`; [`ServiceAccountEnv`] names those
//! inputs so that tests (and unusual layouts) can supply them without touching the
//! process environment. Bound tokens expire (an hour by default) and the kubelet swaps a
//! fresh one in well before: [`TokenFile`] re-reads the file whenever it changed, checked
//! at most once per [`RECHECK`], so the gateway never sends a token the kubelet has
//! replaced for longer than that.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use http::HeaderValue;

/// Where the kubelet mounts the service account's files.
pub const DEFAULT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// How often the token file is looked at (one `stat`) for a rotated token.
pub const RECHECK: Duration = Duration::from_secs(1);

/// The in-cluster inputs: the mounted directory and the API server's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccountEnv {
    /// The directory holding `token`, `ca.crt` and `namespace`.
    pub dir: PathBuf,
    /// `KUBERNETES_SERVICE_HOST`, if set.
    pub host: Option<String>,
    /// `KUBERNETES_SERVICE_PORT`, if set.
    pub port: Option<String>,
}

impl ServiceAccountEnv {
    /// The standard mount path and the address the kubelet put in this process's
    /// environment.
    pub fn from_process() -> Self {
        ServiceAccountEnv {
            dir: PathBuf::from(DEFAULT_DIR),
            host: std::env::var("KUBERNETES_SERVICE_HOST").ok(),
            port: std::env::var("KUBERNETES_SERVICE_PORT").ok(),
        }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// Why the in-cluster configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum InClusterError {
    /// The API server's address is not in the environment: not running in a pod.
    #[error(
        "KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT must both be set (in_cluster = true runs in a pod)"
    )]
    NoAddress,
    /// The address does not make an https URL.
    #[error("KUBERNETES_SERVICE_HOST/PORT {0:?} do not make an https URL")]
    Address(String),
    /// The token file cannot be read (no service account token mounted?).
    #[error(
        "cannot read the service account token {path}: {source} (is automountServiceAccountToken off?)"
    )]
    Token {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The token file holds no usable token.
    #[error("the service account token {0} is empty or not a single printable line")]
    BadToken(PathBuf),
    /// The CA bundle cannot be read or holds no certificate.
    #[error("cannot use the cluster CA {path}: {reason}")]
    Ca {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// The `kube` client configuration for the service account (no credential: the token
/// comes from the returned [`TokenFile`]).
pub fn load(env: &ServiceAccountEnv) -> Result<(kube::Config, TokenFile), InClusterError> {
    let (Some(host), Some(port)) = (&env.host, &env.port) else {
        return Err(InClusterError::NoAddress);
    };
    let address = format!("{host}:{port}");
    let port: u16 = port
        .parse()
        .map_err(|_| InClusterError::Address(address.clone()))?;
    // An IPv6 literal needs brackets in a URL.
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.clone()
    };
    let url: http::Uri = format!("https://{host}:{port}")
        .parse()
        .map_err(|_| InClusterError::Address(address))?;
    let token = TokenFile::open(env.file("token"))?;

    let ca_path = env.file("ca.crt");
    let ca_error = |reason: String| InClusterError::Ca {
        path: ca_path.clone(),
        reason,
    };
    let pem = std::fs::read(&ca_path).map_err(|e| ca_error(e.to_string()))?;
    let certs = rustls_pki_types::pem::PemObject::pem_slice_iter(&pem)
        .map(|c: Result<rustls_pki_types::CertificateDer<'static>, _>| c.map(|c| c.to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ca_error(format!("not a PEM certificate bundle: {e:?}")))?;
    if certs.is_empty() {
        return Err(ca_error("holds no certificate".into()));
    }

    let mut config = kube::Config::new(url);
    config.root_cert = Some(certs);
    // The namespace file is informational for the gateway (it never uses a default
    // namespace); a pod always has it, a hand-made layout may not.
    if let Ok(ns) = std::fs::read_to_string(env.file("namespace")) {
        config.default_namespace = ns.trim().to_string();
    }
    Ok((config, token))
}

/// A bearer token read from a file and re-read when the file changes.
pub struct TokenFile {
    path: PathBuf,
    state: Mutex<TokenState>,
}

struct TokenState {
    header: HeaderValue,
    /// The file's identity when `header` was read: a new file (the kubelet's atomic
    /// swap), a new length or a new mtime means a new token.
    stamp: Stamp,
    checked: Instant,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

impl std::fmt::Debug for TokenFile {
    // Never the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenFile")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn stamp(path: &Path) -> std::io::Result<Stamp> {
    use std::os::unix::fs::MetadataExt;
    // Follows symlinks: the kubelet's `token -> ..data/token` resolves to the new file.
    let m = std::fs::metadata(path)?;
    Ok(Stamp {
        modified: m.modified().ok(),
        len: m.len(),
        inode: m.ino(),
    })
}

fn read_token(path: &Path) -> Result<(HeaderValue, Stamp), InClusterError> {
    let io = |source| InClusterError::Token {
        path: path.to_path_buf(),
        source,
    };
    let stamp = stamp(path).map_err(io)?;
    let text = std::fs::read_to_string(path).map_err(io)?;
    let token = text.trim();
    if token.is_empty() || token.contains(char::is_whitespace) {
        return Err(InClusterError::BadToken(path.to_path_buf()));
    }
    let mut header = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| InClusterError::BadToken(path.to_path_buf()))?;
    header.set_sensitive(true);
    Ok((header, stamp))
}

impl TokenFile {
    /// Reads the token now: a missing or empty file is an error at start.
    pub fn open(path: PathBuf) -> Result<TokenFile, InClusterError> {
        let (header, stamp) = read_token(&path)?;
        Ok(TokenFile {
            path,
            state: Mutex::new(TokenState {
                header,
                stamp,
                checked: Instant::now(),
            }),
        })
    }

    /// The `Authorization` header: the file's current token, re-read if the file changed
    /// since it was last looked at (at most once per [`RECHECK`]). A file that vanished
    /// or went bad after start keeps the last good token in use (as client-go does) and
    /// is logged; the API server will say when that token stops working.
    pub fn header(&self) -> HeaderValue {
        // The guarded data is a header and two stamps: valid after a panic.
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.checked.elapsed() >= RECHECK {
            state.checked = Instant::now();
            match stamp(&self.path) {
                Ok(now) if now == state.stamp => {}
                _ => match read_token(&self.path) {
                    Ok((header, stamp)) => {
                        state.header = header;
                        state.stamp = stamp;
                        tracing::info!(path = %self.path.display(), "service account token re-read");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "keeping the last service account token")
                    }
                },
            }
        }
        state.header.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIBfTCCASOgAwIBAgIUQ4n0Xb1m5y0mKfJ3bT9gS9h7mYkwCgYIKoZIzj0EAwIw\n-----END CERTIFICATE-----\n";

    fn layout(token: Option<&str>) -> (tempfile::TempDir, ServiceAccountEnv) {
        let dir = tempfile::tempdir().unwrap();
        if let Some(t) = token {
            std::fs::write(dir.path().join("token"), t).unwrap();
        }
        let ca = rcgen::generate_simple_self_signed(vec!["kubernetes".into()]).unwrap();
        std::fs::write(dir.path().join("ca.crt"), ca.cert.pem()).unwrap();
        std::fs::write(dir.path().join("namespace"), "kubegate\n").unwrap();
        let env = ServiceAccountEnv {
            dir: dir.path().to_path_buf(),
            host: Some("10.0.0.1".into()),
            port: Some("443".into()),
        };
        (dir, env)
    }

    #[test]
    fn the_mounted_files_and_address_make_the_config() {
        let (_dir, env) = layout(Some("abc.def\n"));
        let (config, token) = load(&env).expect("loads");
        assert_eq!(config.cluster_url.to_string(), "https://10.0.0.1:443/");
        assert_eq!(config.default_namespace, "kubegate");
        assert_eq!(config.root_cert.as_ref().map(Vec::len), Some(1));
        assert_eq!(token.header(), "Bearer abc.def");
        assert!(token.header().is_sensitive());
        assert!(!format!("{token:?}").contains("abc"), "{token:?}");
        let v6 = ServiceAccountEnv {
            host: Some("fd00::1".into()),
            port: Some("6443".into()),
            ..env
        };
        assert_eq!(
            load(&v6).unwrap().0.cluster_url.to_string(),
            "https://[fd00::1]:6443/"
        );
    }

    #[test]
    fn a_missing_token_file_or_address_is_a_clear_error() {
        let (_dir, env) = layout(None);
        let e = load(&env).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!(
                "cannot read the service account token {}/token: No such file",
                env.dir.display()
            )),
            "{e}"
        );
        let (_dir, env) = layout(Some("  \n"));
        assert!(load(&env).unwrap_err().to_string().contains("is empty"));
        let (_dir, env) = layout(Some("t"));
        let no_host = ServiceAccountEnv {
            host: None,
            ..env.clone()
        };
        assert!(matches!(load(&no_host), Err(InClusterError::NoAddress)));
        let bad_port = ServiceAccountEnv {
            port: Some("https".into()),
            ..env.clone()
        };
        assert!(matches!(load(&bad_port), Err(InClusterError::Address(_))));
        std::fs::write(env.dir.join("ca.crt"), CA.replace("BEGIN", "BEGAN")).unwrap();
        assert!(
            load(&env)
                .unwrap_err()
                .to_string()
                .contains("holds no certificate")
        );
    }

    #[test]
    fn a_rotated_token_is_read_and_a_vanished_one_keeps_the_last() {
        let (_dir, env) = layout(Some("first"));
        let token = TokenFile::open(env.file("token")).unwrap();
        assert_eq!(token.header(), "Bearer first");
        // The kubelet's way: a new file renamed over the old one.
        let next = env.dir.join("token.new");
        std::fs::write(&next, "second").unwrap();
        std::fs::rename(&next, env.file("token")).unwrap();
        std::thread::sleep(RECHECK);
        assert_eq!(token.header(), "Bearer second");
        std::fs::remove_file(env.file("token")).unwrap();
        std::thread::sleep(RECHECK);
        assert_eq!(token.header(), "Bearer second");
    }
}
