//! Connection upgrades: `exec`, `attach` and `port-forward` over `SPDY/3.1` or WebSocket.
//!
//! An upgrade request reaches [`forward`] only after every phase of the pipeline agreed:
//! the path was judged, the token verified, the policy allowed `create` on the
//! subresource, the client's credential and identity headers were removed and the
//! gateway's credential and `Impersonate-*` headers added. [`requested`] runs before the
//! headers are sanitised (which removes `Upgrade` and `Connection` as hop-by-hop) and
//! accepts only the two protocols Kubernetes speaks; [`check_target`] (after admission)
//! only the endpoints the API server switches protocols for.
//!
//! [`forward`] sends the request upstream on an HTTP/1.1 connection of its own and looks at
//! the answer. Only `101 Switching Protocols` naming the protocol that was asked for makes
//! the gateway switch the client too and splice the two connections; anything else is
//! relayed as an ordinary response, and neither connection is ever spliced. The
//! sub-protocol headers (`Sec-WebSocket-*`, `X-Stream-Protocol-Version`) pass through
//! untouched both ways, but for the WebSocket bearer credential entry, which sanitising
//! always removes: the gateway never speaks WebSocket or SPDY itself, it copies bytes.
//!
//! The splice copies both directions at once. When one side finishes sending (EOF), the
//! other side's sending half is shut down and the opposite direction keeps flowing until
//! it finishes too, so half-close propagates both ways; a failed read or write on either
//! side ends both, and so does `stream_idle_timeout` without a byte in either direction.
//! Both connections are dropped, and so closed, when the splice ends.
//!
//! A session chosen for recording (crate::recording) gets a tap: every chunk the splice
//! reads is copied to the recording's queue before it is written on, without waiting and
//! without changing a byte of what is relayed.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use http::header::{CONNECTION, UPGRADE};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Version};
use http_body::Body as _;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use kubegate_policy::RequestAttributes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tracing::debug;

use crate::error::GatewayError;
use crate::ops::shutdown::Shutdown;
use crate::pipeline::headers::strip_hop_by_hop;
use crate::pipeline::response::ResponseGuard;
use crate::pipeline::stream::{Bounds, relay};
use crate::recording::{Direction, Selected, Tap};
use crate::upstream::Upstream;

/// The upgrade protocols the gateway splices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `websocket`: kubectl's default for exec, attach and port-forward since 1.30/1.31
    /// (`v5.channel.k8s.io`, `v4.channel.k8s.io`, `SPDY/3.1+portforward.k8s.io`, ...).
    WebSocket,
    /// `SPDY/3.1`: the older transport, still kubectl's fallback.
    Spdy,
}

impl Protocol {
    /// The `Upgrade` token, as sent upstream.
    pub fn token(self) -> &'static str {
        match self {
            Protocol::WebSocket => "websocket",
            Protocol::Spdy => "SPDY/3.1",
        }
    }

    fn parse(value: &[u8]) -> Option<Self> {
        [Protocol::WebSocket, Protocol::Spdy]
            .into_iter()
            .find(|p| value.eq_ignore_ascii_case(p.token().as_bytes()))
    }
}

/// An upgrade the client asked for and the gateway is willing to splice.
pub struct Upgrade {
    protocol: Protocol,
    /// Resolves to the client's connection once the `101` has been written to it.
    client: OnUpgrade,
}

impl std::fmt::Debug for Upgrade {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upgrade")
            .field("protocol", &self.protocol)
            .finish_non_exhaustive()
    }
}

impl Upgrade {
    /// The protocol asked for.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }
}

/// Why an upgrade failed after the upstream answered.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// The upstream switched, but not to the protocol asked for.
    #[error("the upstream answered 101 without switching to {0}")]
    Mismatch(&'static str),
    /// Nothing moved either way for too long.
    #[error("no data in either direction for {0:?}")]
    Idle(Duration),
}

/// The upgrade the client asks for, if any. Must run before the headers are sanitised.
///
/// An `Upgrade` header is either a well-formed HTTP/1.1 upgrade to exactly one of the
/// accepted protocols, announced in `Connection`, or the request is refused with 400: a
/// request that one hop could read as an upgrade and another as a plain request is never
/// forwarded. Whether the target may be upgraded at all is [`check_target`]'s question.
pub fn requested(parts: &mut Parts) -> Result<Option<Upgrade>, GatewayError> {
    let Some(protocol) = protocol_of(parts.version, &parts.headers)? else {
        return Ok(None);
    };
    let client = parts
        .extensions
        .remove::<OnUpgrade>()
        .ok_or(GatewayError::BadRequest(
            "this connection cannot be upgraded",
        ))?;
    Ok(Some(Upgrade { protocol, client }))
}

/// Refuses an upgrade of a request the API server would not switch protocols for. It
/// does for the connect subresources (exec, attach, port-forward, proxy) and for the
/// streams it also serves over WebSocket (watch and logs), on `GET` (WebSocket) or `POST`
/// (SPDY).
///
/// Without it, upgrade headers would turn any request into a stream: admitted by the
/// stream caps and relayed as an ordinary response when the API server does not switch.
pub fn check_target(method: &Method, attributes: &RequestAttributes) -> Result<(), GatewayError> {
    let switches = match attributes {
        RequestAttributes::NonResource(_) => false,
        RequestAttributes::Resource(r) => {
            matches!(
                r.subresource.as_str(),
                "exec" | "attach" | "portforward" | "proxy" | "log"
            ) || r.verb == "watch"
        }
    };
    if switches && matches!(*method, Method::GET | Method::POST) {
        Ok(())
    } else {
        Err(GatewayError::BadRequest(
            "connection upgrades are accepted only for exec, attach, port-forward, proxy, \
             watch and log requests (GET or POST)",
        ))
    }
}

fn protocol_of(version: Version, headers: &HeaderMap) -> Result<Option<Protocol>, GatewayError> {
    let mut values = headers.get_all(UPGRADE).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if version != Version::HTTP_11 {
        return Err(GatewayError::BadRequest(
            "connection upgrades need HTTP/1.1",
        ));
    }
    let protocol = match (Protocol::parse(value.as_bytes()), values.next()) {
        (Some(protocol), None) => protocol,
        _ => {
            return Err(GatewayError::BadRequest(
                "the only upgrade protocols accepted are SPDY/3.1 and websocket, one at a time",
            ));
        }
    };
    let announced = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|option| option.trim().eq_ignore_ascii_case("upgrade"));
    if !announced {
        return Err(GatewayError::BadRequest(
            "an Upgrade header must be announced with Connection: upgrade",
        ));
    }
    Ok(Some(protocol))
}

/// What the upstream answered an upgrade request.
pub enum Answer {
    /// It switched protocols as asked: splice with [`Switched::splice`].
    Switched(Switched),
    /// Anything else (401, 403, 404, 400 "Upgrade request required", ...), relayed as an
    /// ordinary response. hyper keeps the client's connection plain HTTP when the answer
    /// is not 101, and neither connection is ever spliced.
    Refused(Response),
}

/// An upstream connection that has switched protocols, waiting to be spliced to the
/// client's.
pub struct Switched {
    head: http::response::Parts,
    protocol: Protocol,
    client: OnUpgrade,
    upstream: OnUpgrade,
}

/// Sends the prepared (sanitised, impersonated) upgrade request upstream over HTTP/1.1
/// and tells whether the upstream switched protocols as asked.
pub async fn forward(
    upstream: &Upstream,
    upgrade: Upgrade,
    mut parts: Parts,
    body: Body,
) -> Result<Answer, GatewayError> {
    // Bytes sent before the switch would have to reach the upstream before the spliced
    // ones; no Kubernetes client sends any, so none are accepted.
    if !body.is_end_stream() {
        return Err(GatewayError::BadRequest(
            "an upgrade request must not have a body",
        ));
    }
    let token = HeaderValue::from_static(upgrade.protocol.token());
    parts
        .headers
        .insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    parts.headers.insert(UPGRADE, token.clone());
    parts.version = Version::HTTP_11;
    let mut response = upstream
        .send_upgrade(Request::from_parts(parts, Body::empty()))
        .await?;

    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Ok(Answer::Refused(relay(
            response,
            Bounds::ordinary(upstream.timeout()),
        )));
    }
    check_switch(upgrade.protocol, response.headers())
        .map_err(|e| GatewayError::UpstreamUnavailable(Box::new(e)))?;

    let upstream_io = hyper::upgrade::on(&mut response);
    let (mut head, _) = response.into_parts();
    strip_hop_by_hop(&mut head.headers);
    head.headers
        .insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    head.headers.insert(UPGRADE, token);
    Ok(Answer::Switched(Switched {
        head,
        protocol: upgrade.protocol,
        client: upgrade.client,
        upstream: upstream_io,
    }))
}

impl Switched {
    /// The `101` for the client. Once hyper has written it, the two connections are
    /// spliced in the background; `guard` (the response's slot, open-stream count and
    /// end-of-session audit record) lives exactly as long as the spliced session, which
    /// ends when both directions finish, either side fails, nothing moves for `idle`, or
    /// the gateway shuts down.
    pub fn splice(
        self,
        mut guard: ResponseGuard,
        idle: Duration,
        shutdown: Shutdown,
        recording: Option<Selected>,
    ) -> Response {
        let Switched {
            head,
            protocol,
            client,
            upstream,
        } = self;
        let switched_headers = recording.as_ref().map(|_| head.headers.clone());
        tokio::spawn(async move {
            // The client's side resolves once hyper has written the 101 below.
            let (client, upstream) = match tokio::try_join!(client, upstream) {
                Ok(pair) => pair,
                Err(error) => {
                    debug!(%error, "upgrade abandoned before the splice");
                    return;
                }
            };
            let started = Instant::now();
            let session = recording
                .zip(switched_headers)
                .map(|(selected, headers)| selected.start(protocol, &headers));
            let tap = session.as_ref().map(|s| s.tap());
            // Shutdown closes the session (both sockets) instead of waiting it out.
            let spliced = tokio::select! {
                spliced = splice_recorded(TokioIo::new(client), TokioIo::new(upstream), idle, tap) => Some(spliced),
                () = shutdown.wait() => None,
            };
            // The recording is flushed, and named in the final record, before the guard
            // writes that record.
            if let Some(session) = session {
                for (key, value) in session.finish().await {
                    guard.annotate_final_record(key, value);
                }
            }
            match spliced {
                None => debug!(
                    protocol = protocol.token(),
                    "upgraded connection closed for shutdown"
                ),
                Some(Ok((up, down))) => debug!(
                    protocol = protocol.token(),
                    bytes_up = up,
                    bytes_down = down,
                    seconds = started.elapsed().as_secs(),
                    "upgraded connection closed"
                ),
                Some(Err(error)) => debug!(
                    protocol = protocol.token(),
                    %error,
                    seconds = started.elapsed().as_secs(),
                    "upgraded connection ended"
                ),
            }
            drop(guard);
        });
        Response::from_parts(head, Body::empty())
    }
}

/// The upstream's `101` must switch to exactly the protocol asked for.
fn check_switch(protocol: Protocol, headers: &HeaderMap) -> Result<(), UpgradeError> {
    let mut values = headers.get_all(UPGRADE).iter();
    match (
        values.next().map(|v| Protocol::parse(v.as_bytes())),
        values.next(),
    ) {
        (Some(Some(switched)), None) if switched == protocol => Ok(()),
        _ => Err(UpgradeError::Mismatch(protocol.token())),
    }
}

/// Copies both ways between `client` and `upstream` until both directions have finished,
/// either side fails, or nothing moves for `idle`. Returns the bytes sent up and down.
pub async fn splice<C, U>(client: C, upstream: U, idle: Duration) -> std::io::Result<(u64, u64)>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    splice_recorded(client, upstream, idle, None).await
}

/// [`splice`], handing `tap` a copy of every chunk read from either side.
pub async fn splice_recorded<C, U>(
    client: C,
    upstream: U,
    idle: Duration,
    tap: Option<Tap>,
) -> std::io::Result<(u64, u64)>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let epoch = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let mut client = Tracked {
        io: client,
        epoch,
        last: last.clone(),
        tap: tap.clone().map(|t| (t, Direction::Up)),
    };
    let mut upstream = Tracked {
        io: upstream,
        epoch,
        last: last.clone(),
        tap: tap.map(|t| (t, Direction::Down)),
    };
    // tokio's copy shuts down the writer of one side when the other side's reader ends:
    // the half-close propagation.
    let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
    tokio::pin!(copy);
    loop {
        let quiet_until = epoch + Duration::from_millis(last.load(Ordering::Relaxed)) + idle;
        tokio::select! {
            done = &mut copy => return done,
            () = tokio::time::sleep_until(quiet_until) => {
                let last_moved = epoch + Duration::from_millis(last.load(Ordering::Relaxed));
                if last_moved + idle <= Instant::now() {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        UpgradeError::Idle(idle),
                    ));
                }
            }
        }
    }
}

/// An I/O object that notes when bytes last moved through it, and shows what it reads
/// to a recording's tap (bytes read from the client go up, from the upstream down).
struct Tracked<T> {
    io: T,
    epoch: Instant,
    last: Arc<AtomicU64>,
    tap: Option<(Tap, Direction)>,
}

impl<T> Tracked<T> {
    fn moved(&self) {
        let millis = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(millis, Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.moved();
            if let Some((tap, direction)) = &self.tap {
                tap.observe(*direction, &buf.filled()[before..]);
            }
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.moved();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn only_websocket_and_spdy_are_accepted() {
        let ok = |upgrade: &str, connection: &str| {
            protocol_of(
                Version::HTTP_11,
                &headers(&[("upgrade", upgrade), ("connection", connection)]),
            )
        };
        assert_eq!(
            ok("websocket", "Upgrade").unwrap(),
            Some(Protocol::WebSocket)
        );
        assert_eq!(
            ok("WebSocket", "keep-alive, upgrade").unwrap(),
            Some(Protocol::WebSocket)
        );
        assert_eq!(ok("SPDY/3.1", "Upgrade").unwrap(), Some(Protocol::Spdy));
        assert_eq!(ok("spdy/3.1", "upgrade").unwrap(), Some(Protocol::Spdy));
        for refused in [
            "h2c",
            "websocket, h2c",
            "SPDY/3",
            "TLS/1.2",
            "",
            "websocket2",
        ] {
            assert!(
                matches!(ok(refused, "Upgrade"), Err(GatewayError::BadRequest(_))),
                "{refused}"
            );
        }
        assert_eq!(
            protocol_of(Version::HTTP_11, &headers(&[("accept", "*/*")])).unwrap(),
            None
        );
    }

    #[test]
    fn ambiguous_upgrades_are_refused() {
        let two = headers(&[
            ("upgrade", "websocket"),
            ("upgrade", "SPDY/3.1"),
            ("connection", "Upgrade"),
        ]);
        assert!(protocol_of(Version::HTTP_11, &two).is_err());
        let unannounced = headers(&[("upgrade", "websocket"), ("connection", "keep-alive")]);
        assert!(protocol_of(Version::HTTP_11, &unannounced).is_err());
        let no_connection = headers(&[("upgrade", "websocket")]);
        assert!(protocol_of(Version::HTTP_11, &no_connection).is_err());
        let h2 = headers(&[("upgrade", "websocket"), ("connection", "Upgrade")]);
        assert!(protocol_of(Version::HTTP_2, &h2).is_err());
        assert!(protocol_of(Version::HTTP_10, &h2).is_err());
    }

    fn attributes(method: &str, path: &str, query: Option<&str>) -> RequestAttributes {
        let canonical = kubegate_policy::normalize_path(path).unwrap();
        kubegate_policy::resolve(method, &canonical, query)
    }

    #[test]
    fn only_endpoints_that_switch_protocols_may_be_upgraded() {
        for (method, path, query) in [
            (
                "GET",
                "/api/v1/namespaces/dev/pods/p/exec",
                Some("command=sh"),
            ),
            (
                "POST",
                "/api/v1/namespaces/dev/pods/p/exec",
                Some("command=sh"),
            ),
            ("POST", "/api/v1/namespaces/dev/pods/p/attach", None),
            ("GET", "/api/v1/namespaces/dev/pods/p/portforward", None),
            (
                "GET",
                "/api/v1/namespaces/dev/services/web:80/proxy/ws",
                None,
            ),
            ("GET", "/api/v1/namespaces/dev/pods", Some("watch=true")),
            (
                "GET",
                "/api/v1/namespaces/dev/pods/p/log",
                Some("follow=true"),
            ),
        ] {
            let m = Method::from_bytes(method.as_bytes()).unwrap();
            assert!(
                check_target(&m, &attributes(method, path, query)).is_ok(),
                "{method} {path}"
            );
        }
        // Upgrade headers on ordinary requests are how the stream caps (and once the rate
        // quota) were sidestepped: refused before the request is admitted or forwarded.
        for (method, path, query) in [
            ("GET", "/api/v1/namespaces/dev/pods", None),
            ("GET", "/api/v1/namespaces/dev/pods/p", None),
            ("DELETE", "/api/v1/namespaces/dev/pods/p", None),
            ("DELETE", "/api/v1/namespaces/dev/pods/p/exec", None),
            ("PUT", "/api/v1/namespaces/dev/pods/p/exec", None),
            ("GET", "/version", None),
            ("GET", "/api/v1/namespaces/dev/secrets", None),
        ] {
            let m = Method::from_bytes(method.as_bytes()).unwrap();
            let refused = check_target(&m, &attributes(method, path, query)).unwrap_err();
            assert!(
                refused.to_string().contains("accepted only for exec"),
                "{method} {path}: {refused}"
            );
        }
    }

    #[test]
    fn the_upstream_must_switch_to_the_protocol_asked_for() {
        assert!(check_switch(Protocol::Spdy, &headers(&[("upgrade", "SPDY/3.1")])).is_ok());
        assert!(check_switch(Protocol::WebSocket, &headers(&[("upgrade", "WebSocket")])).is_ok());
        for wrong in [
            headers(&[("upgrade", "websocket")]),
            headers(&[]),
            headers(&[("upgrade", "SPDY/3.1"), ("upgrade", "SPDY/3.1")]),
            headers(&[("upgrade", "h2c")]),
        ] {
            assert!(check_switch(Protocol::Spdy, &wrong).is_err(), "{wrong:?}");
        }
    }

    #[tokio::test]
    async fn half_close_propagates_both_ways() {
        let (client, mut client_peer) = tokio::io::duplex(64);
        let (upstream, mut upstream_peer) = tokio::io::duplex(64);
        let splice = tokio::spawn(splice(client, upstream, Duration::from_secs(60)));

        client_peer.write_all(b"stdin").await.unwrap();
        // The client is done sending; the upstream sees EOF after the data ...
        client_peer.shutdown().await.unwrap();
        let mut got = Vec::new();
        upstream_peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"stdin");
        // ... and can still answer on the other direction until it finishes too.
        upstream_peer.write_all(b"stdout").await.unwrap();
        upstream_peer.shutdown().await.unwrap();
        let mut got = Vec::new();
        client_peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"stdout");
        assert_eq!(splice.await.unwrap().unwrap(), (5, 6));
    }

    #[tokio::test]
    async fn a_side_going_away_releases_the_other() {
        let (client, client_peer) = tokio::io::duplex(64);
        let (upstream, mut upstream_peer) = tokio::io::duplex(64);
        let splice = tokio::spawn(splice(client, upstream, Duration::from_secs(60)));
        drop(client_peer);
        // The upstream sees the end of the stream, and the splice ends once it closes.
        let mut got = Vec::new();
        upstream_peer.read_to_end(&mut got).await.unwrap();
        drop(upstream_peer);
        tokio::time::timeout(Duration::from_secs(5), splice)
            .await
            .expect("the splice ends")
            .unwrap()
            .ok();
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_splice_is_closed_and_traffic_keeps_it_open() {
        let (client, mut client_peer) = tokio::io::duplex(64);
        let (upstream, mut upstream_peer) = tokio::io::duplex(64);
        let started = Instant::now();
        let splice = tokio::spawn(splice(client, upstream, Duration::from_secs(10)));
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(6)).await;
            client_peer.write_all(b"x").await.unwrap();
            let mut byte = [0u8; 1];
            upstream_peer.read_exact(&mut byte).await.unwrap();
        }
        let error = splice.await.unwrap().unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(28));
        // Both sides are released.
        let mut rest = Vec::new();
        assert_eq!(client_peer.read_to_end(&mut rest).await.unwrap(), 0);
    }
}
