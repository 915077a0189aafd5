//! The token cache: one JSON file per sign-in (issuer, client and scopes) in a directory
//! only its owner can enter, and the lock file beside it.
//!
//! The directory must be mode 0700 and owned by the user running kubegate; each file is
//! 0600 and owned by that user too. Anything looser is refused with a specific error
//! rather than used or silently fixed: a token file someone else could have written is not
//! a token to send to the cluster. Files are written to a temporary name and renamed,
//! so a reader never sees half a file and may read without the lock.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::error::LoginError;

/// A cached token file is never read past this size (kubegate writes a few KiB).
const MAX_FILE: u64 = 256 * 1024;

/// The tokens of one sign-in, as stored.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CachedTokens {
    /// The issuer that signed the tokens (for `logout --all`, which revokes them).
    pub issuer: String,
    /// The client they were issued to.
    pub client_id: String,
    /// The verified ID token: the credential handed to kubectl.
    pub id_token: String,
    /// Its `exp`, in seconds since the epoch.
    pub expires_at: u64,
    /// The refresh token, when the provider issued one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// The nonce of the sign-in, which refreshed ID tokens may repeat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
}

impl std::fmt::Debug for CachedTokens {
    // Tokens stay out of logs and panics.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedTokens")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("expires_at", &self.expires_at)
            .field("refresh_token", &self.refresh_token.is_some())
            .finish_non_exhaustive()
    }
}

impl CachedTokens {
    /// Whether the ID token is still good for `margin` from `now`.
    pub fn fresh_at(&self, now: SystemTime, margin: Duration) -> bool {
        let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        now.saturating_add(margin.as_secs()) < self.expires_at
    }

    /// The expiry as a point in time.
    pub fn expiry(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.expires_at)
    }
}

/// The checked cache directory.
#[derive(Clone, Debug)]
pub struct CacheDir {
    dir: PathBuf,
    uid: u32,
}

/// The user running kubegate (the effective uid, as the kernel checks file access).
pub fn current_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

impl CacheDir {
    /// Opens `dir`, creating it (and its parents) as 0700 when missing; refuses a directory
    /// that other users can enter or that belongs to someone else.
    pub fn open(dir: &Path) -> Result<Self, LoginError> {
        let io = |source| LoginError::CacheIo {
            path: dir.to_path_buf(),
            source,
        };
        if !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io)?;
        }
        let meta = fs::symlink_metadata(dir).map_err(io)?;
        if !meta.is_dir() {
            return Err(LoginError::BadArgument(format!(
                "the token cache path {} is not a directory",
                dir.display()
            )));
        }
        let uid = current_uid();
        if meta.uid() != uid {
            return Err(LoginError::CacheForeignOwner {
                path: dir.to_path_buf(),
                owner: meta.uid(),
            });
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(LoginError::CacheDirPermissions {
                dir: dir.to_path_buf(),
                mode,
            });
        }
        Ok(CacheDir {
            dir: dir.to_path_buf(),
            uid,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The token file of `key`.
    pub fn token_file(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.json"))
    }

    /// The lock file of `key`.
    pub fn lock_file(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.lock"))
    }

    /// The cached tokens of `key`, `None` when there are none.
    pub fn read(&self, key: &str) -> Result<Option<CachedTokens>, LoginError> {
        let path = self.token_file(key);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(LoginError::CacheIo { path, source }),
        };
        let io = |source| LoginError::CacheIo {
            path: path.clone(),
            source,
        };
        let meta = file.metadata().map_err(io)?;
        self.check_file(&path, &meta)?;
        if meta.len() > MAX_FILE {
            return Err(LoginError::CacheCorrupt {
                path,
                reason: format!("{} bytes, more than kubegate writes", meta.len()),
            });
        }
        let tokens: CachedTokens =
            serde_json::from_reader(std::io::BufReader::new(file)).map_err(|e| {
                LoginError::CacheCorrupt {
                    path: path.clone(),
                    // Line and column only: serde's message may quote the contents.
                    reason: format!(
                        "not kubegate's JSON at line {} column {}",
                        e.line(),
                        e.column()
                    ),
                }
            })?;
        Ok(Some(tokens))
    }

    fn check_file(&self, path: &Path, meta: &fs::Metadata) -> Result<(), LoginError> {
        if meta.uid() != self.uid {
            return Err(LoginError::CacheForeignOwner {
                path: path.to_path_buf(),
                owner: meta.uid(),
            });
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(LoginError::CacheFilePermissions {
                path: path.to_path_buf(),
                mode,
            });
        }
        Ok(())
    }

    /// Stores `tokens` under `key` (0600, written whole then renamed into place).
    pub fn write(&self, key: &str, tokens: &CachedTokens) -> Result<(), LoginError> {
        let path = self.token_file(key);
        let tmp = self.dir.join(format!(".{key}.{}.tmp", std::process::id()));
        let io = |source| LoginError::CacheIo {
            path: path.clone(),
            source,
        };
        let _ = fs::remove_file(&tmp);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        let body = serde_json::to_vec(tokens).map_err(|e| io(std::io::Error::other(e)))?;
        let written = file.write_all(&body).and_then(|()| file.sync_all());
        if let Err(e) = written.and_then(|()| fs::rename(&tmp, &path)) {
            let _ = fs::remove_file(&tmp);
            return Err(io(e));
        }
        Ok(())
    }

    /// Deletes the cached tokens of `key`; true when there were some.
    pub fn remove(&self, key: &str) -> Result<bool, LoginError> {
        let path = self.token_file(key);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(LoginError::CacheIo { path, source }),
        }
    }

    /// The keys of every cached sign-in.
    pub fn keys(&self) -> Result<Vec<String>, LoginError> {
        let entries = fs::read_dir(&self.dir).map_err(|source| LoginError::CacheIo {
            path: self.dir.clone(),
            source,
        })?;
        let mut keys = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(key) = name.strip_suffix(".json")
                && !key.starts_with('.')
            {
                keys.push(key.to_string());
            }
        }
        keys.sort();
        Ok(keys)
    }
}

/// The cache key of a sign-in: a digest of what makes its tokens different (issuer,
/// client and scopes), so two kubeconfig entries for one provider and client share tokens
/// and a different client never gets them.
pub fn key(issuer: &str, client_id: &str, scopes: &[String]) -> String {
    let mut scopes = scopes.to_vec();
    scopes.sort();
    scopes.dedup();
    let text = format!("{issuer}\n{client_id}\n{}", scopes.join(" "));
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
    digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> CachedTokens {
        CachedTokens {
            issuer: "https://idp".into(),
            client_id: "cli".into(),
            id_token: "a.b.c".into(),
            expires_at: 2_000_000_000,
            refresh_token: Some("r".into()),
            nonce: None,
        }
    }

    #[test]
    fn creates_a_private_directory_and_private_files() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("kube/cache/kubegate");
        let cache = CacheDir::open(&dir).unwrap();
        let mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        cache.write("k", &tokens()).unwrap();
        let mode = fs::metadata(cache.token_file("k"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(cache.read("k").unwrap().unwrap().id_token, "a.b.c");
        assert_eq!(cache.keys().unwrap(), vec!["k".to_string()]);
        assert!(cache.remove("k").unwrap());
        assert!(cache.read("k").unwrap().is_none());
    }

    #[test]
    fn refuses_loose_directories_and_files() {
        let root = tempfile::tempdir().unwrap();
        fs::set_permissions(root.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let err = CacheDir::open(root.path()).unwrap_err();
        assert!(
            matches!(err, LoginError::CacheDirPermissions { mode: 0o755, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("chmod 700"), "{err}");

        fs::set_permissions(root.path(), fs::Permissions::from_mode(0o700)).unwrap();
        let cache = CacheDir::open(root.path()).unwrap();
        cache.write("k", &tokens()).unwrap();
        fs::set_permissions(cache.token_file("k"), fs::Permissions::from_mode(0o644)).unwrap();
        let err = cache.read("k").unwrap_err();
        assert!(
            matches!(err, LoginError::CacheFilePermissions { .. }),
            "{err}"
        );
    }

    #[test]
    fn a_corrupt_file_is_named_without_its_contents() {
        let root = tempfile::tempdir().unwrap();
        fs::set_permissions(root.path(), fs::Permissions::from_mode(0o700)).unwrap();
        let cache = CacheDir::open(root.path()).unwrap();
        let path = cache.token_file("k");
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .unwrap()
            .write_all(b"{\"id_token\": \"secret-ish")
            .unwrap();
        let err = cache.read("k").unwrap_err();
        assert!(matches!(err, LoginError::CacheCorrupt { .. }), "{err}");
        assert!(!err.to_string().contains("secret-ish"), "{err}");
    }

    #[test]
    fn keys_differ_by_client_and_scopes_not_scope_order() {
        let a = key("https://idp", "cli", &["openid".into(), "email".into()]);
        let b = key("https://idp", "cli", &["email".into(), "openid".into()]);
        let c = key("https://idp", "other", &["openid".into(), "email".into()]);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.len(), 32);
    }

    #[test]
    fn freshness_keeps_a_margin() {
        let t = tokens();
        let at = |s| UNIX_EPOCH + Duration::from_secs(s);
        assert!(t.fresh_at(at(2_000_000_000 - 31), Duration::from_secs(30)));
        assert!(!t.fresh_at(at(2_000_000_000 - 30), Duration::from_secs(30)));
    }
}
