//! Where the gateway's log lines go: stderr, through a buffer a background thread writes
//! out a few milliseconds after the first line lands in it.
//!
//! The gateway logs one line per request. Written straight to stderr, each line is a
//! `write` system call taken under the process-wide stderr lock, which the runtime's worker
//! threads then queue on; a writer thread that woke for every line (as `tracing-appender`'s
//! does) would trade that for a thread wake-up per line instead. Here a line is appended to
//! a buffer under a short lock, and only a line that finds the buffer empty wakes the
//! flusher, which waits [`LINGER`] and writes everything gathered in one call: a busy
//! gateway makes a few hundred writes a second instead of one per request, and a quiet one
//! still shows each line within milliseconds.
//!
//! Lines keep their order, and the buffer is bounded: a logger that finds it over
//! [`MAX_BUFFERED`] writes it out itself. [`LogFlusher::flush`] (and its drop) writes
//! whatever is buffered, for shutdown and before the process prints a final error.

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// How long the flusher lets lines gather after the first one.
pub const LINGER: Duration = Duration::from_millis(5);
/// Past this many buffered bytes the logging thread writes them out itself.
pub const MAX_BUFFERED: usize = 256 * 1024;

/// Makes the writers `tracing_subscriber::fmt` formats each event into.
#[derive(Clone)]
pub struct LingeringStderr {
    shared: Arc<Shared>,
}

/// Writes out what is buffered when asked and when dropped; stops the flusher thread.
pub struct LogFlusher {
    shared: Arc<Shared>,
}

struct Shared {
    pending: Mutex<Pending>,
    /// Signalled when a line lands in an empty buffer, and at shutdown.
    wake: Condvar,
    /// Held while taking the buffer and writing it, so chunks reach stderr in the order
    /// their lines were logged.
    output: Mutex<Box<dyn Write + Send>>,
}

#[derive(Default)]
struct Pending {
    buf: Vec<u8>,
    closed: bool,
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding either lock leaves bytes, which are still fine to write.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl LingeringStderr {
    /// Starts the flusher thread writing to stderr.
    pub fn start() -> io::Result<(LingeringStderr, LogFlusher)> {
        Self::start_with(Box::new(io::stderr()))
    }

    fn start_with(output: Box<dyn Write + Send>) -> io::Result<(LingeringStderr, LogFlusher)> {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            output: Mutex::new(output),
        });
        let flusher = shared.clone();
        std::thread::Builder::new()
            .name("kubegate-log".into())
            .spawn(move || flusher.run())?;
        Ok((
            LingeringStderr {
                shared: shared.clone(),
            },
            LogFlusher { shared },
        ))
    }
}

impl Shared {
    fn run(&self) {
        loop {
            {
                let mut pending = lock(&self.pending);
                while pending.buf.is_empty() && !pending.closed {
                    pending = self
                        .wake
                        .wait(pending)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                if pending.closed {
                    return;
                }
            }
            std::thread::sleep(LINGER);
            self.write_out();
        }
    }

    /// Takes everything buffered and writes it, in order with any other writer.
    fn write_out(&self) {
        let mut output = lock(&self.output);
        let chunk = std::mem::take(&mut lock(&self.pending).buf);
        if !chunk.is_empty() {
            // Nowhere to report a failing stderr; the lines are dropped, as eprintln's are.
            let _ = output.write_all(&chunk);
            let _ = output.flush();
        }
    }

    fn append(&self, line: &[u8]) {
        let (was_empty, full) = {
            let mut pending = lock(&self.pending);
            let was_empty = pending.buf.is_empty();
            pending.buf.extend_from_slice(line);
            (was_empty, pending.buf.len() >= MAX_BUFFERED)
        };
        if full {
            self.write_out();
        } else if was_empty {
            self.wake.notify_one();
        }
    }
}

impl LogFlusher {
    /// Writes out every line logged so far.
    pub fn flush(&self) {
        self.shared.write_out();
    }
}

impl Drop for LogFlusher {
    fn drop(&mut self) {
        lock(&self.shared.pending).closed = true;
        self.shared.wake.notify_one();
        self.shared.write_out();
    }
}

/// One event's writer: `fmt` writes the formatted line into it, usually in one call.
pub struct LineWriter<'a> {
    shared: &'a Shared,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.shared.append(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LingeringStderr {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            shared: &self.shared,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Collects what the flusher writes, one entry per write call.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            lock(&self.0).push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Capture {
        fn text(&self) -> String {
            String::from_utf8(lock(&self.0).concat()).unwrap()
        }
        fn writes(&self) -> usize {
            lock(&self.0).len()
        }
    }

    fn log(make: &LingeringStderr, line: &str) {
        make.make_writer().write_all(line.as_bytes()).unwrap();
    }

    #[test]
    fn lines_logged_together_are_written_together_and_in_order() {
        let capture = Capture::default();
        let (make, _flusher) = LingeringStderr::start_with(Box::new(capture.clone())).unwrap();
        for i in 0..100 {
            log(&make, &format!("line {i}\n"));
        }
        let expected: String = (0..100).map(|i| format!("line {i}\n")).collect();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while capture.text() != expected {
            assert!(std::time::Instant::now() < deadline, "{}", capture.text());
            std::thread::sleep(Duration::from_millis(1));
        }
        // Logged within one linger period: far fewer writes than lines.
        assert!(capture.writes() < 10, "{} writes", capture.writes());
    }

    #[test]
    fn a_quiet_logger_still_shows_each_line_without_a_flush() {
        let capture = Capture::default();
        let (make, _flusher) = LingeringStderr::start_with(Box::new(capture.clone())).unwrap();
        log(&make, "one\n");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while capture.text() != "one\n" {
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(1));
        }
        log(&make, "two\n");
        while capture.text() != "one\ntwo\n" {
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn flush_and_drop_write_everything_at_once() {
        let capture = Capture::default();
        let (make, flusher) = LingeringStderr::start_with(Box::new(capture.clone())).unwrap();
        log(&make, "a\n");
        flusher.flush();
        assert_eq!(capture.text(), "a\n");
        log(&make, "b\n");
        drop(flusher);
        assert_eq!(capture.text(), "a\nb\n");
    }

    #[test]
    fn a_full_buffer_is_written_by_the_logger_itself() {
        let capture = Capture::default();
        let (make, _flusher) = LingeringStderr::start_with(Box::new(capture.clone())).unwrap();
        // One line as large as the buffer may hold: written before `write` returns.
        let line = format!("{}\n", "x".repeat(MAX_BUFFERED - 1));
        log(&make, &line);
        assert_eq!(capture.text().len(), MAX_BUFFERED);
        assert_eq!(capture.writes(), 1);
    }
}
