//! The file sink: JSON lines appended to a private (0600) file that is rotated by size
//! (`audit.log.1`, ...), never splitting a line across files, and fsynced on request.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use metrics::counter;

use super::{Batch, WRITE_ERRORS};
pub(super) fn lock(sink: &Mutex<FileSink>) -> MutexGuard<'_, FileSink> {
    sink.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The audit file with size-based rotation. Blocking; used from `spawn_blocking` so that a
/// failed write reports exactly how many bytes reached the file.
pub(super) struct FileSink {
    path: PathBuf,
    file: File,
    /// Bytes in the current file.
    size: u64,
    max_size: u64,
    max_backups: usize,
    /// The file may end in a partial line (a failed write that could not be cut off, or a
    /// crash before this process started): the next write starts a new line.
    torn: bool,
    /// A regular file, not a pipe or device: rotated and fsynced.
    regular: bool,
}

impl FileSink {
    pub(super) fn open(path: PathBuf, max_size: u64, max_backups: usize) -> io::Result<FileSink> {
        let file = open_append(&path)?;
        let metadata = file.metadata()?;
        let regular = metadata.file_type().is_file();
        let size = metadata.len();
        // Unreadable (a write-only file): assume the last run ended its line.
        let torn = regular && size > 0 && !ends_with_newline(&path, size).unwrap_or(true);
        Ok(FileSink {
            path,
            file,
            size,
            // A pipe or device (a log shipper's FIFO, /dev/stderr) is never renamed.
            max_size: if regular { max_size } else { 0 },
            max_backups,
            torn,
            regular,
        })
    }

    /// fsync; pipes and devices have nothing to sync.
    pub(super) fn sync(&self) -> io::Result<()> {
        if self.regular {
            self.file.sync_all()
        } else {
            Ok(())
        }
    }

    /// Writes lines `next..` of `batch`, rotating as needed. Returns the index of the first
    /// line not completely written and the error that stopped it, if any.
    pub(super) fn write_from(
        &mut self,
        batch: &Batch,
        mut next: usize,
    ) -> (usize, Option<io::Error>) {
        if self.torn && next < batch.len() {
            if let Err(e) = self.file.write_all(b"\n") {
                return (next, Some(e));
            }
            self.size += 1;
            self.torn = false;
        }
        let mut rotation_failed = false;
        while next < batch.len() {
            let start = batch.start(next);
            let rotating = self.max_size > 0 && !rotation_failed;
            // Rotate before a write that would pass the limit; never an empty file, so a
            // record larger than the limit is written whole.
            if rotating
                && self.size > 0
                && self.size + (batch.ends[next] - start) as u64 > self.max_size
                && let Err(e) = self.rotate()
            {
                counter!(WRITE_ERRORS).increment(1);
                tracing::error!(
                    path = %self.path.display(), error = %e,
                    "cannot rotate the audit log; writing on past its size limit"
                );
                rotation_failed = true;
            }
            // The run of lines that fits; at least one.
            let mut end = next + 1;
            if self.max_size == 0 || rotation_failed {
                end = batch.len();
            } else {
                while end < batch.len()
                    && self.size + (batch.ends[end] - start) as u64 <= self.max_size
                {
                    end += 1;
                }
            }
            let run = &batch.buf[start..batch.ends[end - 1]];
            let (sent, error) = write_counting(&mut self.file, run);
            let Some(error) = error else {
                self.size += run.len() as u64;
                next = end;
                continue;
            };
            // Keep the complete lines; cut off a partial one if the file lets us.
            let complete = (next..end)
                .take_while(|&line| batch.ends[line] - start <= sent)
                .count();
            let kept = if complete == 0 {
                0
            } else {
                batch.ends[next + complete - 1] - start
            };
            if sent > kept {
                if self.file.set_len(self.size + kept as u64).is_ok() {
                    self.size += kept as u64;
                } else {
                    self.size += sent as u64;
                    self.torn = true;
                }
            } else {
                self.size += kept as u64;
            }
            return (next + complete, Some(error));
        }
        (next, None)
    }

    /// `audit.log` → `audit.log.1` → ... → `audit.log.N`, dropping the oldest, then a fresh
    /// `audit.log`.
    fn rotate(&mut self) -> io::Result<()> {
        self.file.sync_data()?;
        if self.max_backups == 0 {
            ignore_not_found(std::fs::remove_file(&self.path))?;
        } else {
            ignore_not_found(std::fs::remove_file(backup_path(
                &self.path,
                self.max_backups,
            )))?;
            for i in (1..self.max_backups).rev() {
                ignore_not_found(std::fs::rename(
                    backup_path(&self.path, i),
                    backup_path(&self.path, i + 1),
                ))?;
            }
            ignore_not_found(std::fs::rename(&self.path, backup_path(&self.path, 1)))?;
        }
        let file = open_append(&self.path)?;
        self.size = file.metadata()?.len();
        self.file = file;
        self.torn = false;
        Ok(())
    }
}

/// Writes all of `bytes` unless an error stops it; returns how many bytes were written.
fn write_counting(file: &mut File, bytes: &[u8]) -> (usize, Option<io::Error>) {
    let mut sent = 0;
    while sent < bytes.len() {
        match file.write(&bytes[sent..]) {
            Ok(0) => return (sent, Some(io::ErrorKind::WriteZero.into())),
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (sent, Some(e)),
        }
    }
    (sent, None)
}

pub(super) fn open_append(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.append(true).create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

#[cfg(unix)]
fn ends_with_newline(path: &Path, size: u64) -> io::Result<bool> {
    use std::os::unix::fs::FileExt;
    let mut last = [0u8; 1];
    File::open(path)?.read_exact_at(&mut last, size - 1)?;
    Ok(last[0] == b'\n')
}

#[cfg(not(unix))]
fn ends_with_newline(_path: &Path, _size: u64) -> io::Result<bool> {
    Ok(true)
}

pub(super) fn backup_path(path: &Path, index: usize) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{index}"));
    PathBuf::from(name)
}

fn ignore_not_found(result: io::Result<()>) -> io::Result<()> {
    match result {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}
