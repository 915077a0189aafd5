//! Exec sessions recorded through the gateway (`[recording]`): a chosen user's session is
//! written as an asciicast v2 file named by its audit ID that replays what was sent and
//! received, in order; the session's final audit record names the file; other users'
//! sessions leave no file; a recording that cannot be written ends, the session does not.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use kubegate_tests::{
    GatewayOptions, TestGateway, connect_http1, create_pod, eventually, kubectl, read_response,
};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Alice (`devs`) and carol (`contractors`) may exec in `dev`; only contractors are
/// recorded.
const POLICY: &str = concat!(
    kubegate_tests::policy_preamble!(),
    r#"

[[rule]]
name = "exec"
effect = "allow"
subjects = { groups = ["devs", "contractors"] }
resources = [{ api_groups = [""], resources = ["pods", "pods/exec"], namespaces = ["dev"], verbs = ["get", "list", "create"] }]
"#
);

const EXEC: &str = "/api/v1/namespaces/dev/pods/runner/exec?command=cat&stdin=true&stdout=true";

async fn gateway() -> TestGateway {
    let gw = TestGateway::start_with(GatewayOptions {
        policy: POLICY.to_string(),
        tables_toml: Some("[recording]\ndir = \"recordings\"\ngroups = [\"contractors\"]\n".into()),
        ..GatewayOptions::default()
    })
    .await;
    create_pod(&gw, &gw.issuer.token("alice", &["devs"]), "dev", "runner").await;
    gw
}

fn recordings(gw: &TestGateway) -> PathBuf {
    gw.dir.path().join("recordings")
}

/// A client's binary message on `channel`, masked.
fn message(channel: u8, data: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut payload = vec![channel];
    payload.extend_from_slice(data);
    assert!(payload.len() < 126);
    let mut frame = vec![0x82, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
    frame
}

/// Runs an exec as `user` over WebSocket by hand: each line of `lines` on stdin, its echo
/// read back from stdout, then stdin closed (v5). Returns the session's audit ID.
async fn exec(gw: &TestGateway, user: &str, group: &str, lines: &[&str]) -> String {
    let token = gw.issuer.token(user, &[group]);
    let mut conn = connect_http1(gw).await;
    let request = format!(
        "GET {EXEC} HTTP/1.1\r\nHost: kubegate\r\nAuthorization: Bearer {token}\r\n\
         Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Protocol: v5.channel.k8s.io\r\n\r\n"
    );
    conn.write_all(request.as_bytes()).await.unwrap();
    let head = read_response(&mut conn).await;
    assert_eq!(
        head.status,
        101,
        "{:?}",
        String::from_utf8_lossy(&head.body)
    );
    let audit_id = head.header("audit-id")[0].to_string();
    for line in lines {
        conn.write_all(&message(0, line.as_bytes())).await.unwrap();
        // The sandbox echoes stdin on stdout, unmasked: [0x82, len, 1, data...].
        let mut echoed = vec![0u8; 3 + line.len()];
        conn.read_exact(&mut echoed).await.unwrap();
        assert_eq!(&echoed[3..], line.as_bytes(), "the session goes on");
        assert_eq!(echoed[2], 1);
    }
    // Stdin closed: the sandbox reports the status and closes the socket.
    conn.write_all(&message(255, &[0])).await.unwrap();
    // And our close frame (1000), so neither side waits out a close grace period.
    conn.write_all(&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8])
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut rest)).await;
    audit_id
}

/// The session's `ResponseComplete` record, once written.
async fn closing_record(gw: &TestGateway, audit_id: &str) -> Value {
    let mut found = None;
    eventually("the session's final audit record", async || {
        found = gw
            .audit_records()
            .into_iter()
            .find(|r| r["auditID"] == audit_id && r["stage"] == "ResponseComplete");
        found.is_some()
    })
    .await;
    found.unwrap()
}

/// A cast file's header and events (time, code, data).
fn read_cast(path: &Path) -> (Value, Vec<(f64, String, String)>) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header: Value = serde_json::from_str(lines.next().expect("a header")).unwrap();
    let events = lines
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let code = v[1].as_str().unwrap().to_string();
            (
                v[0].as_f64().unwrap(),
                code,
                v[2].as_str().unwrap().to_string(),
            )
        })
        .collect();
    (header, events)
}

/// Input and output joined per direction, and the order of the codes.
fn replay(events: &[(f64, String, String)]) -> (String, String) {
    assert!(
        events.windows(2).all(|w| w[0].0 <= w[1].0),
        "timestamps never go back: {events:?}"
    );
    let joined = |code: &str| {
        events
            .iter()
            .filter(|e| e.1 == code)
            .map(|e| e.2.as_str())
            .collect::<String>()
    };
    (joined("i"), joined("o"))
}

#[tokio::test]
async fn a_contractors_exec_is_recorded_and_the_audit_record_names_the_file() {
    let gw = gateway().await;
    let id = exec(&gw, "carol", "contractors", &["whoami\n", "ls /\n"]).await;
    let record = closing_record(&gw, &id).await;
    let file = recordings(&gw).join(format!("{id}.cast"));
    assert_eq!(
        record["annotations"]["kubegate.io/recording"],
        file.display().to_string(),
        "{record}"
    );
    assert!(
        record["annotations"]
            .get("kubegate.io/recording-ended")
            .is_none(),
        "{record}"
    );

    let (header, events) = read_cast(&file);
    assert_eq!(header["version"], 2);
    assert_eq!(header["title"], "carol exec dev/runner: cat");
    let codes: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e.1.as_str(), e.2.as_str()))
        .collect();
    // Each line typed, then its echo, in the order they crossed the gateway.
    assert_eq!(
        codes,
        vec![
            ("i", "whoami\n"),
            ("o", "whoami\n"),
            ("i", "ls /\n"),
            ("o", "ls /\n")
        ]
    );
    replay(&events);

    use std::os::unix::fs::PermissionsExt as _;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&file), 0o600);
    assert_eq!(mode(&recordings(&gw)), 0o700);
}

#[tokio::test]
async fn a_session_that_is_not_chosen_leaves_no_file() {
    let gw = gateway().await;
    let id = exec(&gw, "alice", "devs", &["secret\n"]).await;
    let record = closing_record(&gw, &id).await;
    assert!(
        record["annotations"].get("kubegate.io/recording").is_none(),
        "{record}"
    );
    let files: Vec<_> = std::fs::read_dir(recordings(&gw)).unwrap().collect();
    assert!(files.is_empty(), "{files:?}");
}

#[tokio::test]
async fn a_recording_that_cannot_be_written_ends_and_the_session_goes_on() {
    let gw = gateway().await;
    // The directory is gone and a file stands in its place (root ignores read-only
    // modes, so this is the failure every user sees).
    std::fs::remove_dir(recordings(&gw)).unwrap();
    std::fs::write(recordings(&gw), "not a directory").unwrap();
    // `exec` asserts each echo: the session itself is unaffected.
    let id = exec(&gw, "carol", "contractors", &["still here\n", "and here\n"]).await;
    let record = closing_record(&gw, &id).await;
    assert_eq!(
        record["annotations"]["kubegate.io/recording-ended"], "write_failed",
        "{record}"
    );
    assert_eq!(record["responseStatus"]["code"], 101);
}

#[tokio::test]
async fn kubectl_exec_of_a_contractor_is_recorded() {
    let gw = gateway().await;
    let token = gw.issuer.token("carol", &["contractors"]);
    let kubeconfig = gw.client_kubeconfig("carol", &token);
    let mut child = tokio::process::Command::new(kubectl())
        .args(["exec", "-i", "runner", "-n", "dev", "--", "cat"])
        .env_clear()
        .env("KUBECONFIG", &kubeconfig)
        .env("HOME", kubeconfig.parent().unwrap())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("kubectl runs");
    let mut input = child.stdin.take().unwrap();
    input.write_all(b"hello\nworld\n").await.unwrap();
    drop(input);
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("kubectl exec finished within 60 s")
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(output.stdout, b"hello\nworld\n");

    let mut record = None;
    eventually("the exec's final audit record", async || {
        record = gw.audit_records().into_iter().find(|r| {
            r["stage"] == "ResponseComplete"
                && r["requestURI"]
                    .as_str()
                    .is_some_and(|u| u.contains("/exec?"))
        });
        record.is_some()
    })
    .await;
    let record = record.unwrap();
    let file = PathBuf::from(
        record["annotations"]["kubegate.io/recording"]
            .as_str()
            .unwrap(),
    );
    assert_eq!(file.parent(), Some(recordings(&gw).as_path()));
    let (_, events) = read_cast(&file);
    assert_eq!(
        replay(&events),
        ("hello\nworld\n".into(), "hello\nworld\n".into())
    );
}
