//! Recording sessions end to end on in-memory sockets and writers: what the file holds,
//! and that a failing or slow writer ends the recording, never the relay.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use tokio::io::{AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use super::websocket::tests::frame;
use super::*;
use crate::pipeline::upgrade::splice_recorded;

/// An in-memory file that fails once more than `limit` bytes were written (a full disk).
#[derive(Clone)]
struct Disk {
    bytes: Arc<Mutex<Vec<u8>>>,
    limit: usize,
}

impl Disk {
    fn new(limit: usize) -> Self {
        Disk {
            bytes: Arc::new(Mutex::new(Vec::new())),
            limit,
        }
    }

    fn text(&self) -> String {
        String::from_utf8(self.bytes.lock().unwrap().clone()).unwrap()
    }
}

impl AsyncWrite for Disk {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let mut bytes = self.bytes.lock().unwrap();
        if bytes.len() + buf.len() > self.limit {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                "no space left on device",
            )));
        }
        bytes.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn selected(query: &str, max_buffered: usize) -> Selected {
    Selected {
        path: PathBuf::from("/recordings/id.cast"),
        title: "alice exec dev/runner: sh".into(),
        streams: Streams::from_query(Some(query)),
        max_buffered,
    }
}

/// A session recorded onto a fresh in-memory disk that holds `limit` bytes.
fn on_disk(query: &str, protocol: Protocol, head: &HeaderMap, limit: usize) -> (Disk, Session) {
    let disk = Disk::new(limit);
    let file = disk.clone();
    let session = selected(query, 64).start_with(protocol, head, async move { Ok(file) });
    (disk, session)
}

/// Each peer received exactly what the other sent.
fn assert_relayed(steps: &[(Vec<u8>, Vec<u8>)], up: &[u8], down: &[u8]) {
    assert_eq!(
        up,
        steps.iter().flat_map(|s| s.0.clone()).collect::<Vec<_>>()
    );
    assert_eq!(
        down,
        steps.iter().flat_map(|s| s.1.clone()).collect::<Vec<_>>()
    );
}

/// The events' codes and data.
fn codes(events: &[(f64, String, String)]) -> Vec<(&str, &str)> {
    events
        .iter()
        .map(|(_, c, d)| (c.as_str(), d.as_str()))
        .collect()
}

fn websocket(subprotocol: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        "sec-websocket-protocol",
        HeaderValue::from_str(subprotocol).unwrap(),
    );
    h
}

/// The events of a cast file: (time, code, data).
fn events(text: &str) -> (serde_json::Value, Vec<(f64, String, String)>) {
    let mut lines = text.lines();
    let header: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    let events = lines
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v[0].as_f64().unwrap(),
                v[1].as_str().unwrap().to_string(),
                v[2].as_str().unwrap().to_string(),
            )
        })
        .collect();
    (header, events)
}

/// Relays `steps` (bytes the client sends, bytes the upstream answers) through a recorded
/// splice and returns what each peer received and the session's annotations.
async fn session(
    session: Session,
    steps: &[(Vec<u8>, Vec<u8>)],
) -> (Vec<u8>, Vec<u8>, Vec<(&'static str, String)>) {
    let (client, mut client_peer) = tokio::io::duplex(1 << 16);
    let (upstream, mut upstream_peer) = tokio::io::duplex(1 << 16);
    let splice = tokio::spawn(splice_recorded(
        client,
        upstream,
        Duration::from_secs(60),
        Some(session.tap()),
    ));
    let (mut up, mut down) = (Vec::new(), Vec::new());
    for (sent, answered) in steps {
        client_peer.write_all(sent).await.unwrap();
        let mut got = vec![0; sent.len()];
        upstream_peer.read_exact(&mut got).await.unwrap();
        up.extend(got);
        upstream_peer.write_all(answered).await.unwrap();
        let mut got = vec![0; answered.len()];
        client_peer.read_exact(&mut got).await.unwrap();
        down.extend(got);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    drop(client_peer);
    drop(upstream_peer);
    splice.await.unwrap().ok();
    (up, down, session.finish().await)
}

fn steps() -> Vec<(Vec<u8>, Vec<u8>)> {
    let key = Some([3, 1, 4, 1]);
    vec![
        (
            frame(true, 2, b"\x04{\"Width\":120,\"Height\":40}", key),
            frame(true, 2, b"\x01$ ", None),
        ),
        (
            frame(true, 2, b"\0echo h\xc3", key),
            frame(true, 2, b"\x01echo h", None),
        ),
        (
            frame(true, 2, b"\0\xa9\r", key),
            frame(true, 2, b"\x01\xc3\xa9\r\n\xc3\xa9\r\n", None),
        ),
        (
            frame(true, 2, b"\x04{\"Width\":100,\"Height\":30}", key),
            frame(true, 2, b"\x02oops", None),
        ),
    ]
}

#[tokio::test]
async fn a_websocket_session_is_cast_in_order_and_relayed_untouched() {
    let (disk, s) = on_disk(
        "command=sh&stdin=true&stdout=true&tty=true",
        Protocol::WebSocket,
        &websocket("v5.channel.k8s.io"),
        usize::MAX,
    );
    let steps = steps();
    let (up, down, annotations) = session(s, &steps).await;
    // Byte for byte what each side sent.
    assert_relayed(&steps, &up, &down);
    assert_eq!(
        annotations,
        vec![(ANNOTATION, "/recordings/id.cast".to_string())]
    );

    let (header, events) = events(&disk.text());
    assert_eq!(header["version"], 2);
    // The first resize sized the header.
    assert_eq!(
        (header["width"].as_u64(), header["height"].as_u64()),
        (Some(120), Some(40))
    );
    assert_eq!(header["title"], "alice exec dev/runner: sh");
    assert!(header["timestamp"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(
        codes(&events),
        vec![
            ("o", "$ "),
            // The é split across two messages is kept whole.
            ("i", "echo h"),
            ("o", "echo h"),
            ("i", "é\r"),
            ("o", "é\r\né\r\n"),
            ("r", "100x30"),
            ("o", "oops"),
        ]
    );
    assert!(events.windows(2).all(|w| w[0].0 <= w[1].0), "{events:?}");
    assert!(events.last().unwrap().0 > 0.0);
}

#[tokio::test]
async fn a_failing_disk_ends_the_recording_and_the_session_goes_on() {
    let (disk, s) = on_disk(
        "stdin=true&stdout=true&tty=true",
        Protocol::WebSocket,
        &websocket("v5.channel.k8s.io"),
        150,
    );
    let steps = steps();
    let (up, down, annotations) = session(s, &steps).await;
    assert_relayed(&steps, &up, &down);
    assert!(
        annotations.contains(&(ANNOTATION_ENDED, "write_failed".to_string())),
        "{annotations:?}"
    );
    assert!(disk.text().len() <= 150);
}

#[tokio::test]
async fn a_writer_that_falls_behind_ends_the_recording_not_the_session() {
    // The file never opens: the queue of 1 fills at the second chunk.
    let s = selected("stdin=true&stdout=true", 1).start_with(
        Protocol::WebSocket,
        &websocket("v4.channel.k8s.io"),
        std::future::pending::<std::io::Result<Disk>>(),
    );
    let steps = steps();
    let (client, mut client_peer) = tokio::io::duplex(1 << 16);
    let (upstream, mut upstream_peer) = tokio::io::duplex(1 << 16);
    let tap = s.tap();
    let splice = tokio::spawn(splice_recorded(
        client,
        upstream,
        Duration::from_secs(60),
        Some(tap),
    ));
    for (sent, _) in &steps {
        client_peer.write_all(sent).await.unwrap();
        let mut got = vec![0; sent.len()];
        upstream_peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, sent);
    }
    assert_eq!(s.shared.reason(), Some(Ended::FellBehind));
    drop((client_peer, upstream_peer));
    splice.await.unwrap().ok();
}

#[tokio::test]
async fn base64_websocket_sessions_are_decoded() {
    use base64::Engine as _;
    let b64 = |channel: char, d: &[u8]| {
        format!(
            "{channel}{}",
            base64::engine::general_purpose::STANDARD.encode(d)
        )
        .into_bytes()
    };
    let (disk, s) = on_disk(
        "stdin=true&stdout=true",
        Protocol::WebSocket,
        &websocket("v4.base64.channel.k8s.io"),
        usize::MAX,
    );
    let steps = vec![(
        frame(true, 1, &b64('0', b"id\n"), Some([7, 7, 7, 7])),
        frame(true, 1, &b64('1', b"uid=0\n"), None),
    )];
    session(s, &steps).await;
    let (header, events) = events(&disk.text());
    assert_eq!(header["width"], 80);
    assert_eq!(codes(&events), vec![("i", "id\n"), ("o", "uid=0\n")]);
}

#[tokio::test]
async fn spdy_streams_are_told_apart_by_client_gos_order() {
    use super::spdy::tests::{data, syn_stream};
    // error (1), stdin (3), stdout (5), resize (7): a tty, so no stderr stream.
    let (disk, s) = on_disk(
        "stdin=true&stdout=true&stderr=true&tty=true",
        Protocol::Spdy,
        &HeaderMap::new(),
        usize::MAX,
    );
    let mut open = Vec::new();
    for id in [1, 3, 5, 7] {
        open.extend(syn_stream(id));
    }
    let steps = vec![
        (open, Vec::new()),
        (data(7, b"{\"Width\":90,\"Height\":20}\n"), data(5, b"# ")),
        (data(3, b"ls\r"), data(5, b"ls\r\nbin\r\n")),
        (
            data(7, b"{\"Width\":91,\"Height\":21}\n"),
            data(1, b"{\"status\":\"Success\"}"),
        ),
    ];
    session(s, &steps).await;
    let (header, events) = events(&disk.text());
    assert_eq!(header["width"], 90);
    assert_eq!(
        codes(&events),
        vec![
            ("o", "# "),
            ("i", "ls\r"),
            ("o", "ls\r\nbin\r\n"),
            ("r", "91x21")
        ]
    );
}

#[tokio::test]
async fn an_unreadable_sub_protocol_is_said_and_nothing_is_written() {
    let (disk, s) = on_disk(
        "stdin=true",
        Protocol::WebSocket,
        &websocket("some.other.protocol"),
        usize::MAX,
    );
    let (_, _, annotations) = session(s, &[(b"hello".to_vec(), b"world".to_vec())]).await;
    assert!(annotations.contains(&(ANNOTATION_ENDED, "unreadable".to_string())));
    assert!(disk.text().is_empty());
}

#[test]
fn incomplete_utf8_at_the_end_is_carried_and_invalid_bytes_are_not() {
    assert_eq!(incomplete_tail(b"abc"), 0);
    assert_eq!(incomplete_tail(b"ab\xc3"), 1);
    assert_eq!(incomplete_tail(b"ab\xe2\x82"), 2);
    assert_eq!(incomplete_tail(b"\xffab\xf0\x9f\x98"), 3);
    assert_eq!(incomplete_tail(b"\xff\xfe"), 0);
}

#[test]
fn query_flags_give_client_gos_stream_order() {
    let roles = |q: &str| Streams::from_query(Some(q)).roles();
    assert_eq!(
        roles("stdin=true&stdout=true&stderr=true"),
        vec![Role::Error, Role::Stdin, Role::Stdout, Role::Stderr]
    );
    assert_eq!(
        roles("stdout=1&stderr=true&tty=true"),
        vec![Role::Error, Role::Stdout, Role::Resize]
    );
    assert_eq!(roles("command=ls"), vec![Role::Error]);
}

#[test]
fn only_exec_and_attach_of_chosen_users_are_selected() {
    let dir = tempfile::tempdir().unwrap();
    let config = Recording {
        dir: kubegate_config::Setting {
            value: dir.path().join("casts"),
            location: kubegate_config::Location {
                file: "kubegate.toml".into(),
                line: 1,
                column: 1,
                field: "recording.dir".into(),
            },
        },
        groups: vec!["contractors".into()],
        users: vec!["carol".into()],
        max_buffered: 8,
    };
    let recorder = Recorder::new(Some(&config)).unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join("casts"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
    }
    let who = |user: &str, groups: &[&str]| Identity {
        user: user.into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        uid: None,
        extra: Default::default(),
        claims: Default::default(),
    };
    let at = |path: &str| {
        let canonical = kubegate_policy::normalize_path(path).unwrap();
        kubegate_policy::resolve("GET", &canonical, Some("command=sh"))
    };
    let id = AuditId::new();
    let exec = at("/api/v1/namespaces/dev/pods/p/exec");
    let picked = recorder
        .select(
            &who("dave", &["devs", "contractors"]),
            &exec,
            Some("command=sh&command=-c"),
            &id,
        )
        .unwrap();
    assert_eq!(
        picked.path(),
        dir.path()
            .join("casts")
            .join(format!("{}.cast", id.as_str()))
    );
    assert_eq!(picked.title, "dave exec dev/p: sh -c");
    assert!(
        recorder
            .select(
                &who("carol", &[]),
                &at("/api/v1/namespaces/dev/pods/p/attach"),
                None,
                &id
            )
            .is_some()
    );
    assert!(
        recorder
            .select(&who("alice", &["devs"]), &exec, None, &id)
            .is_none()
    );
    assert!(
        recorder
            .select(
                &who("carol", &[]),
                &at("/api/v1/namespaces/dev/pods/p/portforward"),
                None,
                &id
            )
            .is_none()
    );
    assert!(
        Recorder::disabled()
            .select(&who("carol", &[]), &exec, None, &id)
            .is_none()
    );

    // A directory others may enter is refused, with its location.
    {
        use std::os::unix::fs::PermissionsExt as _;
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut c = config.clone();
        c.dir.value = open;
        let e = Recorder::new(Some(&c)).unwrap_err();
        assert!(e.to_string().contains("chmod 700"), "{e}");
    }
}
