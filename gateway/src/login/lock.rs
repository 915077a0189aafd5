//! The cross-process lock that makes parallel `get-token` runs share one sign-in.
//!
//! kubectl starts a plugin per process: eight `kubectl get` started together with an
//! empty or expired cache would otherwise open eight browser windows or spend one refresh
//! token eight times (with rotation, seven of them then fail). The lock is an advisory
//! `flock` on a file inside the private cache directory, never in a shared /tmp where
//! another user could take it first; the kernel drops it when the holder exits, so a
//! crashed run never leaves it stuck.

use std::fs::{File, OpenOptions, TryLockError};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::error::LoginError;

/// How often a waiting process tries again.
const POLL: Duration = Duration::from_millis(50);

/// The held lock; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct CacheLock {
    _file: File,
    path: PathBuf,
}

impl CacheLock {
    /// Takes the lock at `path`, waiting at most `wait` for the process that holds it.
    pub async fn acquire(path: &Path, wait: Duration) -> Result<Self, LoginError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|source| LoginError::CacheIo {
                path: path.to_path_buf(),
                source,
            })?;
        let started = Instant::now();
        loop {
            match file.try_lock() {
                Ok(()) => {
                    return Ok(CacheLock {
                        _file: file,
                        path: path.to_path_buf(),
                    });
                }
                Err(TryLockError::WouldBlock) => {
                    if started.elapsed() >= wait {
                        return Err(LoginError::LockTimeout {
                            path: path.to_path_buf(),
                            waited: started.elapsed(),
                        });
                    }
                    tokio::time::sleep(POLL).await;
                }
                Err(TryLockError::Error(source)) => {
                    return Err(LoginError::CacheIo {
                        path: path.to_path_buf(),
                        source,
                    });
                }
            }
        }
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_holder_waits_then_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.lock");
        let first = CacheLock::acquire(&path, Duration::from_secs(1))
            .await
            .unwrap();
        // flock locks belong to the open file: a second open in this process contends
        // exactly as another process would.
        let err = CacheLock::acquire(&path, Duration::from_millis(120))
            .await
            .unwrap_err();
        assert!(matches!(err, LoginError::LockTimeout { .. }), "{err}");
        drop(first);
        CacheLock::acquire(&path, Duration::from_millis(120))
            .await
            .expect("free after the first holder is gone");
    }
}
