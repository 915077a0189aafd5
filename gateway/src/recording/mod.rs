//! Exec and attach sessions recorded as asciicast v2 files, for auditors who need to know
//! what was typed, not only that a session opened.
//!
//! Opt-in through `[recording]` (config): a session is recorded when the authenticated
//! user is named there or is in one of its groups. [`Recorder::select`] decides that
//! before the request is forwarded; once the upstream has switched protocols,
//! [`Selected::start`] opens a [`Session`]: a [`Tap`] the splice hands a copy of every
//! chunk it reads, and a writer task that turns the chunks into terminal events and
//! writes `<dir>/<audit-id>.cast` (mode 0600 in a 0700 directory, never overwriting).
//!
//! The splice never waits for the recording: the tap copies a chunk into a bounded queue
//! with `try_send` and returns. When the queue is full (the disk is slower than the
//! session), or the writer fails (a full disk, a removed directory), or the bytes cannot
//! be read as the channel protocol, the recording of that session ends, with a warning
//! and a count in `kubegate_recordings_ended_total{reason}`, and the session goes on: a
//! full disk ends recording, not the gateway, and not the operator's shell in the middle
//! of an incident. The session's final audit record says where the file is
//! (`kubegate.io/recording`) and, when it is incomplete, why (`kubegate.io/recording-ended`),
//! so the gap is never silent. Memory is bounded per session by `max_buffered` chunks (one
//! read each) plus the readers' few bytes of state: nothing holds a whole message.
//!
//! Stdin (channel 0, or the SPDY stdin stream) becomes `"i"` events, stdout and stderr
//! `"o"`, terminal resizes `"r"` (`"WxH"`; a resize before any other event sizes the
//! header instead). The status channel and port-forward data are not terminal I/O and are
//! not recorded.

pub mod spdy;
pub mod websocket;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::HeaderMap;
use kubegate_config::{ConfigError, Recording};
use kubegate_policy::RequestAttributes;
use metrics::{counter, describe_counter};
use tokio::io::{AsyncWrite, AsyncWriteExt as _};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::warn;

use crate::audit::AuditId;
use crate::authn::Identity;
use crate::pipeline::upgrade::Protocol;

/// Sessions whose recording started, by protocol.
pub const RECORDINGS: &str = "kubegate_recordings_total";
/// Recordings that ended before their session did, by reason.
pub const RECORDINGS_ENDED: &str = "kubegate_recordings_ended_total";
/// The audit annotation naming a session's recording.
pub const ANNOTATION: &str = "kubegate.io/recording";
/// The audit annotation saying why a recording is incomplete.
pub const ANNOTATION_ENDED: &str = "kubegate.io/recording-ended";

/// Registers descriptions for the recording metrics with the installed recorder.
pub fn describe_metrics() {
    describe_counter!(
        RECORDINGS,
        "Exec and attach sessions whose recording started."
    );
    describe_counter!(
        RECORDINGS_ENDED,
        "Recordings that ended before their session did, by reason."
    );
}

/// The asciicast header's size when the client never sends one before other output.
const DEFAULT_SIZE: (u16, u16) = (80, 24);
/// How long a finished session waits for its recording to be flushed.
const FLUSH_LIMIT: Duration = Duration::from_secs(10);
/// A resize message larger than this is not one.
const MAX_RESIZE: usize = 256;
/// Characters of the asciicast title (user, verb, pod, command).
const MAX_TITLE: usize = 256;

/// Decides which sessions are recorded and where; disabled without `[recording]`.
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    config: Option<Arc<Recording>>,
}

impl Recorder {
    /// Nothing is recorded.
    pub fn disabled() -> Self {
        Recorder::default()
    }

    /// The recorder `config` describes. Creates its directory (0700) if missing and
    /// refuses one that is not a directory or that other users may read or enter: the
    /// files hold whatever was typed, passwords included.
    pub fn new(config: Option<&Recording>) -> Result<Self, ConfigError> {
        let Some(config) = config else {
            return Ok(Recorder::disabled());
        };
        let dir = &config.dir;
        prepare_dir(&dir.value).map_err(|m| dir.location.error(m))?;
        Ok(Recorder {
            config: Some(Arc::new(config.clone())),
        })
    }

    /// The recording for an exec or attach by `identity`, if its session is to be
    /// recorded. `query` is the request's, which says the streams asked for.
    pub fn select(
        &self,
        identity: &Identity,
        attributes: &RequestAttributes,
        query: Option<&str>,
        audit_id: &AuditId,
    ) -> Option<Selected> {
        let config = self.config.as_ref()?;
        let RequestAttributes::Resource(r) = attributes else {
            return None;
        };
        if !matches!(r.subresource.as_str(), "exec" | "attach") || r.resource != "pods" {
            return None;
        }
        let chosen = config.users.contains(&identity.user)
            || identity.groups.iter().any(|g| config.groups.contains(g));
        if !chosen {
            return None;
        }
        let streams = Streams::from_query(query);
        let mut title = format!(
            "{} {} {}/{}",
            identity.user, r.subresource, r.namespace, r.name
        );
        if !streams.command.is_empty() {
            title.push_str(": ");
            title.push_str(&streams.command.join(" "));
        }
        let title = title.chars().take(MAX_TITLE).collect();
        Some(Selected {
            // Audit IDs are UUIDs the gateway made: a safe file name.
            path: config.dir.value.join(format!("{}.cast", audit_id.as_str())),
            title,
            streams,
            max_buffered: config.max_buffered,
        })
    }
}

fn prepare_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot create {}: {e}", dir.display())),
    }
    let meta = std::fs::symlink_metadata(dir)
        .map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    if !meta.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "{} may be read by other users (mode {:o}); recordings hold what was typed: chmod 700 it",
            dir.display(),
            meta.permissions().mode() & 0o777
        ));
    }
    Ok(())
}

/// The streams an exec or attach asked for, from its query (`stdin=true&tty=true`...),
/// which is also the order client-go opens its SPDY streams in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Streams {
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
    command: Vec<String>,
}

/// What a SPDY stream carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Error,
    Stdin,
    Stdout,
    Stderr,
    Resize,
}

impl Streams {
    fn from_query(query: Option<&str>) -> Self {
        let mut s = Streams::default();
        for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            let yes = matches!(&*v, "true" | "1");
            match &*k {
                "stdin" => s.stdin = yes,
                "stdout" => s.stdout = yes,
                "stderr" => s.stderr = yes,
                "tty" => s.tty = yes,
                // Bounded: the title keeps MAX_TITLE characters of it.
                "command" if s.command.len() < 64 => {
                    s.command.push(v.chars().take(MAX_TITLE).collect())
                }
                _ => {}
            }
        }
        s
    }

    /// client-go's creation order (remotecommand v2/v3/v4 `createStreams`): error, stdin,
    /// stdout, stderr (not with a tty), resize (only with a tty).
    fn roles(&self) -> Vec<Role> {
        let mut roles = vec![Role::Error];
        if self.stdin {
            roles.push(Role::Stdin);
        }
        if self.stdout {
            roles.push(Role::Stdout);
        }
        if self.stderr && !self.tty {
            roles.push(Role::Stderr);
        }
        if self.tty {
            roles.push(Role::Resize);
        }
        roles
    }
}

/// A session chosen for recording, before its protocol is known.
#[derive(Debug)]
pub struct Selected {
    path: PathBuf,
    title: String,
    streams: Streams,
    max_buffered: usize,
}

impl Selected {
    /// Where the recording goes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Starts recording the session the upstream switched to `protocol` with `head` (its
    /// `101`'s headers, which name the WebSocket sub-protocol).
    pub fn start(self, protocol: Protocol, head: &HeaderMap) -> Session {
        let path = self.path.clone();
        let open = async move {
            use std::os::unix::fs::PermissionsExt as _;
            let file = tokio::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .await?;
            // The mode above is filtered by the umask; this is not.
            file.set_permissions(std::fs::Permissions::from_mode(0o600))
                .await?;
            Ok(file)
        };
        self.start_with(protocol, head, open)
    }

    /// [`Selected::start`] with the writer `open` gives: tests inject failing ones.
    pub(crate) fn start_with<W, F>(self, protocol: Protocol, head: &HeaderMap, open: F) -> Session
    where
        W: AsyncWrite + Unpin + Send + 'static,
        F: Future<Output = std::io::Result<W>> + Send + 'static,
    {
        let subprotocol = head
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let decoder = match protocol {
            Protocol::WebSocket => {
                websocket::Encoding::of(subprotocol).map(|e| Decoder::WebSocket {
                    up: websocket::Reader::new(e),
                    down: websocket::Reader::new(e),
                })
            }
            Protocol::Spdy => Some(Decoder::Spdy {
                up: spdy::Reader::default(),
                down: spdy::Reader::default(),
                roles: self.streams.roles(),
                opened: Vec::new(),
            }),
        };
        counter!(RECORDINGS, "protocol" => protocol.token()).increment(1);
        let shared = Arc::new(Shared {
            ended: AtomicBool::new(false),
            reason: Mutex::new(None),
            file: self.path.display().to_string(),
        });
        let (tx, rx) = mpsc::channel(self.max_buffered.max(1));
        let tap = Tap {
            tx,
            epoch: Instant::now(),
            shared: shared.clone(),
        };
        let writer = match decoder {
            Some(decoder) => {
                let cast = Cast::new(self.title, SystemTime::now());
                tokio::spawn(write(open, rx, decoder, cast, shared.clone()))
            }
            None => {
                shared.end(Ended::Unreadable);
                tokio::spawn(async {})
            }
        };
        Session {
            tap,
            writer,
            shared,
            path: self.path,
        }
    }
}

/// Why a recording ended before its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The writer fell `max_buffered` chunks behind the session.
    FellBehind,
    /// Creating or writing the file failed (a full disk, a missing directory).
    WriteFailed,
    /// The bytes are not the channel protocol (another sub-protocol, an extension).
    Unreadable,
    /// The finished session's file was not flushed within the limit.
    FlushTimeout,
}

impl Ended {
    /// The metric label and audit annotation value.
    pub fn label(self) -> &'static str {
        match self {
            Ended::FellBehind => "fell_behind",
            Ended::WriteFailed => "write_failed",
            Ended::Unreadable => "unreadable",
            Ended::FlushTimeout => "flush_timeout",
        }
    }
}

struct Shared {
    ended: AtomicBool,
    reason: Mutex<Option<Ended>>,
    /// The file, for log lines.
    file: String,
}

impl Shared {
    fn end(&self, reason: Ended) {
        if self.ended.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Ok(mut r) = self.reason.lock() {
            *r = Some(reason);
        }
        warn!(
            file = %self.file,
            reason = reason.label(),
            "session recording ended; the session goes on unrecorded"
        );
        counter!(RECORDINGS_ENDED, "reason" => reason.label()).increment(1);
    }

    fn reason(&self) -> Option<Ended> {
        self.reason.lock().ok().and_then(|r| *r)
    }
}

/// Which way bytes were going.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client to API server (stdin, resizes).
    Up,
    /// API server to client (stdout, stderr).
    Down,
}

struct Chunk {
    at: Duration,
    direction: Direction,
    bytes: Bytes,
}

/// The splice's side of a recording: hands over copies of what it relays, never waits.
#[derive(Clone)]
pub struct Tap {
    tx: mpsc::Sender<Chunk>,
    epoch: Instant,
    shared: Arc<Shared>,
}

impl Tap {
    /// Queues a copy of `bytes`, just read going `direction`, for the writer. A full
    /// queue ends the recording; the caller's relay is never delayed.
    pub fn observe(&self, direction: Direction, bytes: &[u8]) {
        if bytes.is_empty() || self.shared.ended.load(Ordering::Acquire) {
            return;
        }
        let chunk = Chunk {
            at: self.epoch.elapsed(),
            direction,
            bytes: Bytes::copy_from_slice(bytes),
        };
        match self.tx.try_send(chunk) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => self.shared.end(Ended::FellBehind),
            // The writer stopped and said why.
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.shared.ended.store(true, Ordering::Release)
            }
        }
    }
}

/// A session being recorded.
pub struct Session {
    tap: Tap,
    writer: tokio::task::JoinHandle<()>,
    shared: Arc<Shared>,
    path: PathBuf,
}

impl Session {
    /// The tap for the splice.
    pub fn tap(&self) -> Tap {
        self.tap.clone()
    }

    /// The annotations for the session's final audit record, once the session is over:
    /// waits (bounded) for the writer to flush the file.
    pub async fn finish(self) -> Vec<(&'static str, String)> {
        let Session {
            tap,
            writer,
            shared,
            path,
        } = self;
        drop(tap);
        if tokio::time::timeout(FLUSH_LIMIT, writer).await.is_err() {
            shared.end(Ended::FlushTimeout);
        }
        let mut annotations = vec![(ANNOTATION, path.display().to_string())];
        if let Some(reason) = shared.reason() {
            annotations.push((ANNOTATION_ENDED, reason.label().to_string()));
        }
        annotations
    }
}

enum Decoder {
    WebSocket {
        up: websocket::Reader,
        down: websocket::Reader,
    },
    Spdy {
        up: spdy::Reader,
        down: spdy::Reader,
        /// Roles still to hand out to the client's streams, in order.
        roles: Vec<Role>,
        opened: Vec<(u32, Role)>,
    },
}

impl Decoder {
    /// The terminal events in `chunk`.
    fn feed(&mut self, chunk: &Chunk, cast: &mut Cast) -> Result<(), Ended> {
        let at = chunk.at;
        let dir = chunk.direction;
        match self {
            Decoder::WebSocket { up, down } => {
                let reader = if dir == Direction::Up { up } else { down };
                reader
                    .feed(&chunk.bytes, &mut |piece| match (dir, piece) {
                        (Direction::Up, websocket::Piece::Data(0, d)) => {
                            cast.data(at, Kind::Input, d)
                        }
                        (Direction::Up, websocket::Piece::Data(4, d)) => cast.resize_data(d),
                        (Direction::Up, websocket::Piece::End(4)) => cast.resize_end(at),
                        (Direction::Down, websocket::Piece::Data(1 | 2, d)) => {
                            cast.data(at, Kind::Output, d)
                        }
                        _ => {}
                    })
                    .map_err(|_| Ended::Unreadable)
            }
            Decoder::Spdy {
                up,
                down,
                roles,
                opened,
            } => {
                let reader = if dir == Direction::Up { up } else { down };
                reader
                    .feed(&chunk.bytes, &mut |piece| match piece {
                        // Only the client opens streams in exec and attach.
                        spdy::Piece::Opened(id) if dir == Direction::Up && !roles.is_empty() => {
                            opened.push((id, roles.remove(0)));
                        }
                        spdy::Piece::Opened(_) => {}
                        spdy::Piece::Data(id, d) => {
                            let role = opened.iter().find(|(i, _)| *i == id).map(|(_, r)| *r);
                            match (dir, role) {
                                (Direction::Up, Some(Role::Stdin)) => cast.data(at, Kind::Input, d),
                                (Direction::Up, Some(Role::Resize)) => {
                                    cast.resize_data(d);
                                    cast.resize_lines(at);
                                }
                                (Direction::Down, Some(Role::Stdout | Role::Stderr)) => {
                                    cast.data(at, Kind::Output, d)
                                }
                                _ => {}
                            }
                        }
                    })
                    .map_err(|_| Ended::Unreadable)
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Input,
    Output,
}

/// The asciicast v2 text of one session, produced line by line into `pending`.
struct Cast {
    title: String,
    started: SystemTime,
    header_written: bool,
    /// Incomplete UTF-8 sequences at the end of the last input and output data.
    carry_in: Vec<u8>,
    carry_out: Vec<u8>,
    resize: Vec<u8>,
    last: Duration,
    pending: Vec<u8>,
}

impl Cast {
    fn new(title: String, started: SystemTime) -> Self {
        Cast {
            title,
            started,
            header_written: false,
            carry_in: Vec::new(),
            carry_out: Vec::new(),
            resize: Vec::new(),
            last: Duration::ZERO,
            pending: Vec::new(),
        }
    }

    fn header(&mut self, (width, height): (u16, u16)) {
        if self.header_written {
            return;
        }
        self.header_written = true;
        let timestamp = self
            .started
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let header = serde_json::json!({
            "version": 2,
            "width": width,
            "height": height,
            "timestamp": timestamp,
            "title": self.title,
        });
        self.pending
            .extend_from_slice(header.to_string().as_bytes());
        self.pending.push(b'\n');
    }

    fn event(&mut self, at: Duration, code: &str, text: &str) {
        self.header(DEFAULT_SIZE);
        // Chunks arrive in the order they were read, so times never go back.
        self.last = self.last.max(at);
        let line = serde_json::json!([(self.last.as_secs_f64() * 1e6).round() / 1e6, code, text]);
        self.pending.extend_from_slice(line.to_string().as_bytes());
        self.pending.push(b'\n');
    }

    /// Terminal bytes as asciicast text: valid UTF-8 as it is, an incomplete sequence at
    /// the end kept for the next data, anything invalid replaced (U+FFFD).
    fn data(&mut self, at: Duration, kind: Kind, d: &[u8]) {
        let carry = match kind {
            Kind::Input => &mut self.carry_in,
            Kind::Output => &mut self.carry_out,
        };
        let mut bytes = std::mem::take(carry);
        bytes.extend_from_slice(d);
        let keep = incomplete_tail(&bytes);
        let tail = bytes.split_off(bytes.len() - keep);
        match kind {
            Kind::Input => self.carry_in = tail,
            Kind::Output => self.carry_out = tail,
        }
        if !bytes.is_empty() {
            let text = String::from_utf8_lossy(&bytes).into_owned();
            self.event(at, if kind == Kind::Input { "i" } else { "o" }, &text);
        }
    }

    fn resize_data(&mut self, d: &[u8]) {
        if self.resize.len() + d.len() > MAX_RESIZE {
            self.resize.clear();
            return;
        }
        self.resize.extend_from_slice(d);
    }

    /// A WebSocket resize message ended.
    fn resize_end(&mut self, at: Duration) {
        let message = std::mem::take(&mut self.resize);
        self.resized(at, &message);
    }

    /// SPDY's resize stream carries JSON objects, one a line.
    fn resize_lines(&mut self, at: Duration) {
        while let Some(end) = self.resize.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.resize.drain(..=end).collect();
            self.resized(at, &line);
        }
    }

    fn resized(&mut self, at: Duration, message: &[u8]) {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Size {
            width: u16,
            height: u16,
        }
        let Ok(size) = serde_json::from_slice::<Size>(message) else {
            return;
        };
        if self.header_written {
            self.event(at, "r", &format!("{}x{}", size.width, size.height));
        } else {
            self.header((size.width, size.height));
        }
    }

    /// What is left at the end of the session.
    fn finish(&mut self, at: Duration) {
        for kind in [Kind::Input, Kind::Output] {
            let carry = match kind {
                Kind::Input => std::mem::take(&mut self.carry_in),
                Kind::Output => std::mem::take(&mut self.carry_out),
            };
            if !carry.is_empty() {
                let text = String::from_utf8_lossy(&carry).into_owned();
                self.event(at, if kind == Kind::Input { "i" } else { "o" }, &text);
            }
        }
        self.header(DEFAULT_SIZE);
    }
}

/// Moves bytes from the front of `bytes` into `buf[*have..need]`, for the readers' frame
/// headers; returns what is left of `bytes`.
fn fill<'a>(buf: &mut [u8], have: &mut usize, need: usize, bytes: &'a [u8]) -> &'a [u8] {
    let take = need.saturating_sub(*have).min(bytes.len());
    buf[*have..*have + take].copy_from_slice(&bytes[..take]);
    *have += take;
    &bytes[take..]
}

/// How many bytes at the end of `bytes` start a UTF-8 sequence that is not complete yet.
fn incomplete_tail(bytes: &[u8]) -> usize {
    match std::str::from_utf8(bytes) {
        Ok(_) => 0,
        Err(e) if e.error_len().is_none() => bytes.len() - e.valid_up_to(),
        // Invalid bytes earlier: look only at the last three.
        Err(_) => {
            let from = bytes.len().saturating_sub(3);
            (from..bytes.len())
                .find(|&i| {
                    let b = bytes[i];
                    let need = match b {
                        0xc0..=0xdf => 2,
                        0xe0..=0xef => 3,
                        0xf0..=0xf7 => 4,
                        _ => return false,
                    };
                    bytes.len() - i < need
                })
                .map_or(0, |i| bytes.len() - i)
        }
    }
}

/// The writer task: chunks in, asciicast lines out, until the session's tap is dropped or
/// something fails (which ends the recording, never the session).
async fn write<W, F>(
    open: F,
    mut rx: mpsc::Receiver<Chunk>,
    mut decoder: Decoder,
    mut cast: Cast,
    shared: Arc<Shared>,
) where
    W: AsyncWrite + Unpin + Send,
    F: Future<Output = std::io::Result<W>>,
{
    let mut out = match open.await {
        Ok(w) => tokio::io::BufWriter::new(w),
        Err(error) => {
            warn!(file = %shared.file, %error, "cannot create the session recording");
            shared.end(Ended::WriteFailed);
            return;
        }
    };
    let mut last = Duration::ZERO;
    while let Some(chunk) = rx.recv().await {
        last = chunk.at;
        if let Err(reason) = decoder.feed(&chunk, &mut cast) {
            shared.end(reason);
            break;
        }
        if let Err(error) = drain(&mut out, &mut cast, rx.is_empty()).await {
            warn!(file = %shared.file, %error, "cannot write the session recording");
            shared.end(Ended::WriteFailed);
            return;
        }
    }
    cast.finish(last);
    let flushed = drain(&mut out, &mut cast, true).await;
    let closed = match flushed {
        Ok(()) => out.shutdown().await,
        Err(e) => Err(e),
    };
    if let Err(error) = closed {
        warn!(file = %shared.file, %error, "cannot write the session recording");
        shared.end(Ended::WriteFailed);
    }
}

/// Writes the lines `cast` has ready; flushes when the queue is empty, so a live session's
/// file is readable as it goes.
async fn drain<W: AsyncWrite + Unpin>(
    out: &mut tokio::io::BufWriter<W>,
    cast: &mut Cast,
    flush: bool,
) -> std::io::Result<()> {
    if !cast.pending.is_empty() {
        let lines = std::mem::take(&mut cast.pending);
        out.write_all(&lines).await?;
        cast.pending = lines;
        cast.pending.clear();
    }
    if flush {
        out.flush().await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
