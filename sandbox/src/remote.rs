//! exec, attach and port-forward: the upgrade handshakes the API server speaks, with
//! nothing running behind them.
//!
//! - exec and attach speak WebSocket with the `v5.channel.k8s.io` (or `v4`) channel
//!   protocol, as kubectl 1.30+ does: every binary message starts with a channel byte
//!   (0 stdin, 1 stdout, 2 stderr, 3 status, 4 resize; v5 adds 255, "the sender closed the
//!   channel named in the next byte"). The session echoes stdin to stdout and, when stdin
//!   closes (at once without stdin), reports the exit status on channel 3 and closes the
//!   socket. The status is 0, or N when the command contains `exit N`.
//! - port-forward answers a `SPDY/3.1` upgrade and then echoes raw bytes, half-close
//!   included (no SPDY framing: it exists for protocol-level tests of a proxy), and a
//!   WebSocket upgrade by echoing binary messages.
//!
//! A pod given a backend with [`crate::Sandbox::port_forward_to`] speaks port-forward for
//! real instead, over either transport (spdy.rs).
//!
//! SPDY exec and attach are refused with 400: kubectl only falls back to SPDY when the
//! WebSocket upgrade fails, and a raw echo would confuse it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::extract::FromRequestParts as _;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::response::Response;
use bytes::{BufMut as _, Bytes, BytesMut};
use http::request::Parts;
use http::{HeaderValue, Method, StatusCode, header};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::io::AsyncWriteExt as _;

use crate::spdy;
use crate::state::{Shared, spawn_until_stopped};
use crate::status::ApiError;
use crate::store::Resource;

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STATUS: u8 = 3;
/// v5: `[CLOSE, channel]` says the sender will write no more on `channel`.
const CLOSE: u8 = 255;

/// kubectl 1.30+'s first choice for port-forward: SPDY tunnelled in WebSocket messages.
const SPDY_TUNNEL: &str = "SPDY/3.1+portforward.k8s.io";
const V5: &str = "v5.channel.k8s.io";
const V4: &str = "v4.channel.k8s.io";

// After our close frame, how long to wait for the client's before dropping the socket.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Answers `.../pods/<name>/{exec,attach,portforward}`.
pub(crate) async fn connect(
    shared: &Shared,
    mut parts: Parts,
    params: &[(String, String)],
    ns: &str,
    name: &str,
    sub: &str,
) -> Result<Response, ApiError> {
    if parts.method != Method::GET && parts.method != Method::POST {
        return Err(ApiError::method_not_allowed(&parts.method));
    }
    shared.store.get(Resource::Pods, ns, name)?;
    let user = parts
        .headers
        .get("impersonate-user")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("kubegate-sandbox-admin")
        .to_string();
    if shared.connect_denied().contains(&user) {
        return Err(ApiError::forbidden(&user, &format!("pods/{sub}"), ns, name));
    }
    let upgrade = parts
        .headers
        .get(header::UPGRADE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).to_ascii_lowercase());
    let guard = TunnelGuard::new(&shared.tunnels);
    let stop = shared.stop.clone();
    // A pod with a port-forward backend speaks the real protocol to it (spdy.rs).
    if let Some(backend) = (sub == "portforward")
        .then(|| shared.port_forward_backend(ns, name))
        .flatten()
    {
        return match upgrade.as_deref() {
            Some("websocket") => {
                let ws = websocket(&mut parts).await?.protocols([SPDY_TUNNEL]);
                if ws.selected_protocol().is_none() {
                    return Err(ApiError::bad_request(format!(
                        "the sandbox tunnels port-forward as {SPDY_TUNNEL} only"
                    )));
                }
                Ok(ws.on_upgrade(move |socket| async move {
                    let _guard = guard;
                    until_stopped(stop, spdy::over_websocket(socket, backend)).await;
                }))
            }
            Some("spdy/3.1") => {
                switch_to_spdy(parts, guard, stop, move |io| spdy::over_io(io, backend))
            }
            _ => Err(ApiError::bad_request("Upgrade request required")),
        };
    }
    match (upgrade.as_deref(), sub) {
        (None, _) => Err(ApiError::bad_request("Upgrade request required")),
        (Some("websocket"), "exec" | "attach") => {
            let ws = websocket(&mut parts).await?.protocols([V5, V4]);
            let v5 = match ws.selected_protocol() {
                Some(p) => p == V5,
                None => {
                    return Err(ApiError::bad_request(format!(
                        "the sandbox speaks {V5} and {V4} only"
                    )));
                }
            };
            let session = Session::from_params(params, sub == "exec");
            Ok(ws.on_upgrade(move |socket| async move {
                let _guard = guard;
                until_stopped(stop, session.run(socket, v5)).await;
            }))
        }
        (Some("websocket"), _) => {
            let ws =
                websocket(&mut parts)
                    .await?
                    .protocols([SPDY_TUNNEL, "portforward.k8s.io", V4]);
            Ok(ws.on_upgrade(move |socket| async move {
                let _guard = guard;
                until_stopped(stop, echo_messages(socket)).await;
            }))
        }
        (Some("spdy/3.1"), "portforward") => switch_to_spdy(parts, guard, stop, raw_echo),
        (Some("spdy/3.1"), _) => Err(ApiError::bad_request(format!(
            "the sandbox speaks {sub} over WebSocket ({V5}) only"
        ))),
        (Some(_), _) => Err(ApiError::bad_request("unsupported upgrade protocol")),
    }
}

async fn websocket(parts: &mut Parts) -> Result<WebSocketUpgrade, ApiError> {
    WebSocketUpgrade::from_request_parts(parts, &())
        .await
        .map_err(|e| ApiError::bad_request(format!("invalid WebSocket upgrade: {e}")))
}

async fn until_stopped(mut stop: tokio::sync::watch::Receiver<()>, session: impl Future) {
    tokio::select! {
        _ = session => {}
        // Resolves when the Sandbox drops the sender: the sandbox is stopping.
        _ = stop.changed() => {}
    }
}

/// Counts an upgraded session from the 101 to its end, whichever way it ends.
struct TunnelGuard(Arc<AtomicUsize>);

impl TunnelGuard {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        TunnelGuard(count.clone())
    }
}

impl Drop for TunnelGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What an exec or attach asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Session {
    stdin: bool,
    stdout: bool,
    exit_code: u8,
}

impl Session {
    fn from_params(params: &[(String, String)], exec: bool) -> Self {
        let flag = |key: &str| {
            params
                .iter()
                .any(|(k, v)| k == key && matches!(v.as_str(), "true" | "1"))
        };
        let command: Vec<&str> = params
            .iter()
            .filter(|(k, _)| exec && k == "command")
            .map(|(_, v)| v.as_str())
            .collect();
        Session {
            stdin: flag("stdin"),
            // A terminal merges everything into stdout.
            stdout: flag("stdout") || flag("tty"),
            exit_code: exit_code(&command.join(" ")),
        }
    }

    async fn run(self, mut socket: WebSocket, v5: bool) {
        if self.stdin {
            loop {
                let data = match socket.recv().await {
                    Some(Ok(Message::Binary(data))) => data,
                    Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                    Some(Ok(_)) => continue,
                };
                match data.first() {
                    Some(&STDIN) if self.stdout && data.len() > 1 => {
                        let echoed = channel_message(STDOUT, &data[1..]);
                        if socket.send(Message::Binary(echoed)).await.is_err() {
                            return;
                        }
                    }
                    // v4 has no way to close stdin: the session lasts until the client
                    // closes the socket.
                    Some(&CLOSE) if v5 && data.get(1) == Some(&STDIN) => break,
                    // Resize messages and anything else: a sandbox has no terminal.
                    _ => {}
                }
            }
        }
        let status = channel_message(STATUS, &exit_status(self.exit_code));
        if socket.send(Message::Binary(status)).await.is_err() {
            return;
        }
        let close = CloseFrame {
            code: close_code::NORMAL,
            reason: "".into(),
        };
        if socket.send(Message::Close(Some(close))).await.is_ok() {
            let _ = tokio::time::timeout(CLOSE_GRACE, async {
                while let Some(Ok(message)) = socket.recv().await {
                    if matches!(message, Message::Close(_)) {
                        break;
                    }
                }
            })
            .await;
        }
    }
}

fn channel_message(channel: u8, payload: &[u8]) -> Bytes {
    let mut message = BytesMut::with_capacity(payload.len() + 1);
    message.put_u8(channel);
    message.put_slice(payload);
    message.freeze()
}

/// The `Status` the kubelet writes on the status channel when a command ends; kubectl
/// turns a `NonZeroExitCode` into its own exit code.
fn exit_status(code: u8) -> Vec<u8> {
    let status = if code == 0 {
        json!({"metadata": {}, "status": "Success"})
    } else {
        json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("command terminated with non-zero exit code: exit code {code}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        })
    };
    serde_json::to_vec(&status).unwrap_or_default()
}

/// The `N` of the last `exit N` in the command, 0 without one.
fn exit_code(command: &str) -> u8 {
    let words: Vec<&str> = command
        .split(|c: char| c.is_whitespace() || c == ';' || c == '&' || c == '|')
        .filter(|w| !w.is_empty())
        .collect();
    words
        .windows(2)
        .rev()
        .find_map(|pair| match pair {
            ["exit", n] => n.parse().ok(),
            _ => None,
        })
        .unwrap_or(0)
}

async fn echo_messages(mut socket: WebSocket) {
    while let Some(Ok(message)) = socket.recv().await {
        let reply = match message {
            Message::Binary(data) => Message::Binary(data),
            Message::Text(text) => Message::Text(text),
            Message::Close(_) => return,
            // Pings are answered by the WebSocket layer.
            _ => continue,
        };
        if socket.send(reply).await.is_err() {
            return;
        }
    }
}

/// Every byte received is sent back; when the client closes its sending side, so does the
/// sandbox, after the echo.
async fn raw_echo(upgraded: TokioIo<hyper::upgrade::Upgraded>) {
    let (mut reader, mut writer) = tokio::io::split(upgraded);
    if tokio::io::copy(&mut reader, &mut writer).await.is_ok() {
        let _ = writer.shutdown().await;
    }
}

/// `101 Switching Protocols` to `SPDY/3.1`, then `session` on the upgraded connection.
fn switch_to_spdy<F, Fut>(
    mut parts: Parts,
    guard: TunnelGuard,
    stop: tokio::sync::watch::Receiver<()>,
    session: F,
) -> Result<Response, ApiError>
where
    F: FnOnce(TokioIo<hyper::upgrade::Upgraded>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let on_upgrade = parts
        .extensions
        .remove::<hyper::upgrade::OnUpgrade>()
        .ok_or_else(|| ApiError::bad_request("this connection cannot be upgraded"))?;
    // As the API server: the first stream protocol the client offers that we speak.
    let version = parts
        .headers
        .get_all("x-stream-protocol-version")
        .iter()
        .flat_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|v| v == "portforward.k8s.io")
        .then(|| HeaderValue::from_static("portforward.k8s.io"));
    spawn_until_stopped(stop, async move {
        let _guard = guard;
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        session(TokioIo::new(upgraded)).await;
    });
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
    if let Some(version) = version {
        headers.insert("x-stream-protocol-version", version);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn exit_codes_come_from_the_command() {
        assert_eq!(exit_code("cat"), 0);
        assert_eq!(exit_code("sh -c cat; exit 3"), 3);
        assert_eq!(exit_code("sh -c exit 1 || exit 42"), 42);
        assert_eq!(exit_code("exit"), 0);
        assert_eq!(exit_code("exit 999"), 0);
    }

    #[test]
    fn sessions_read_what_kubectl_sends() {
        let exec = Session::from_params(
            &params(&[
                ("command", "sh"),
                ("command", "-c"),
                ("command", "cat; exit 7"),
                ("container", "web"),
                ("stdin", "true"),
                ("stdout", "true"),
                ("stderr", "true"),
            ]),
            true,
        );
        assert_eq!(
            exec,
            Session {
                stdin: true,
                stdout: true,
                exit_code: 7
            }
        );
        // attach runs no command, so carries no exit code even if the query says one.
        let attach =
            Session::from_params(&params(&[("command", "exit 3"), ("tty", "true")]), false);
        assert_eq!(
            attach,
            Session {
                stdin: false,
                stdout: true,
                exit_code: 0
            }
        );
    }

    #[test]
    fn a_non_zero_status_carries_the_exit_code() {
        let status: serde_json::Value = serde_json::from_slice(&exit_status(3)).unwrap();
        assert_eq!(status["reason"], "NonZeroExitCode");
        assert_eq!(status["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(status["details"]["causes"][0]["message"], "3");
        let ok: serde_json::Value = serde_json::from_slice(&exit_status(0)).unwrap();
        assert_eq!(ok["status"], "Success");
    }
}
