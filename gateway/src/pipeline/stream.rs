//! Bodies in motion: request bodies streamed upstream under the size cap, responses
//! streamed back frame by frame, and the bounds that replace a request timeout for the
//! requests that never finish quickly (watch, `logs --follow`, proxy).
//!
//! Nothing here buffers a body. A response frame is handed to the client connection as
//! soon as the upstream produces it, and the next one is read from the upstream only when
//! the client connection asks for it, so a slow client slows the upstream down (HTTP/2
//! flow control, TCP windows) instead of growing a buffer in the gateway. What is in
//! flight per stream is bounded by hyper's buffers and the HTTP/2 windows, whatever the
//! size of the response.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, Request};
use http_body::{Frame, SizeHint};
use kubegate_config::Limits;
use tokio::time::{Instant, Sleep};
use tower::BoxError;
use tracing::debug;

use crate::error::GatewayError;
use crate::pipeline::headers::strip_hop_by_hop;
use crate::pipeline::kind::RequestKind;
use crate::pipeline::response::ResponseGuard;
use crate::upstream::Upstream;

/// After the client's own `timeoutSeconds`, the gateway waits this much longer before it
/// ends a watch itself, so that the API server's clean end normally comes first.
const TIMEOUT_SECONDS_GRACE: Duration = Duration::from_secs(5);

/// Sends an authorized, sanitised request that is not an upgrade, and streams the answer
/// back: the request body under the cap (unless the request is long-running), the
/// response with hop-by-hop headers removed, bounded by [`Bounds`]. `timeout_seconds` is
/// the client's own, already bounded by the pipeline. A long-running response's
/// open-stream count and upstream lease go into `guard`, which lives as long as the body.
#[allow(clippy::too_many_arguments)]
pub async fn forward(
    upstream: &Upstream,
    limits: &Limits,
    kind: RequestKind,
    timeout_seconds: Option<u64>,
    parts: Parts,
    body: Body,
    guard: &mut ResponseGuard,
) -> Result<Response, GatewayError> {
    let long_running = kind.is_long_running();
    let bounds = if long_running {
        Bounds {
            idle: limits.stream_idle_timeout,
            deadline: timeout_seconds
                .map(|t| Duration::from_secs(t).saturating_add(TIMEOUT_SECONDS_GRACE)),
            end_cleanly: true,
        }
    } else {
        Bounds::ordinary(upstream.timeout())
    };
    let cap = (!long_running).then_some(limits.max_request_body);
    let (body, watch) = request_body(&parts.headers, body, cap)?;
    let request = Request::from_parts(parts, body);
    // A failed upstream request because of the client's body (cut off by our cap, or
    // malformed or abandoned on the way in) is the client's fault, said as such.
    if long_running {
        let (response, lease) = upstream
            .send_long_running(request)
            .await
            .map_err(|e| watch.blame(e))?;
        guard.hold_stream(kind, Some(lease));
        Ok(relay(response, bounds))
    } else {
        let response = upstream.send(request).await.map_err(|e| watch.blame(e))?;
        Ok(relay(response, bounds))
    }
}

/// The upstream's response for the client: hop-by-hop headers removed, the body streamed
/// under `bounds`.
pub fn relay<B>(response: http::Response<B>, bounds: Bounds) -> Response
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, Body::new(ResponseBody::new(body, bounds)))
}

/// How long a response body may make the client wait.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// The longest wait for the upstream's next frame. It runs only while the client is
    /// waiting for one: a client that reads slowly is never cut off for it.
    pub idle: Duration,
    /// The stream ends at this point after it started, whatever is happening.
    pub deadline: Option<Duration>,
    /// Ending a long-running stream is a normal end for a client (it re-watches, as after
    /// the API server's own timeout); ending any other body early is an error, so the
    /// client cannot take a truncated list for a complete one.
    pub end_cleanly: bool,
}

impl Bounds {
    /// An ordinary response: the upstream timeout between frames, no deadline, an error
    /// when exceeded.
    pub fn ordinary(idle: Duration) -> Self {
        Bounds {
            idle,
            deadline: None,
            end_cleanly: false,
        }
    }
}

/// Why a response body was cut off.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The upstream sent nothing for too long.
    #[error("the upstream sent nothing for {0:?}")]
    Idle(Duration),
    /// The stream outlived its deadline.
    #[error("the stream outlived its deadline of {0:?}")]
    Deadline(Duration),
}

/// A response body passed through frame by frame under [`Bounds`].
pub struct ResponseBody<B> {
    inner: B,
    bounds: Bounds,
    idle: Pin<Box<Sleep>>,
    deadline: Option<Pin<Box<Sleep>>>,
    /// The client asked for a frame and the upstream has not produced it yet: only then
    /// does the idle timer run.
    waiting: bool,
    done: bool,
}

impl<B> ResponseBody<B> {
    /// Wraps `inner`; the deadline starts now.
    pub fn new(inner: B, bounds: Bounds) -> Self {
        let now = Instant::now();
        ResponseBody {
            inner,
            bounds,
            idle: Box::pin(tokio::time::sleep_until(far(now, bounds.idle))),
            // A deadline too far away to represent is no deadline; the idle bound still holds.
            deadline: bounds
                .deadline
                .and_then(|d| now.checked_add(d))
                .map(|at| Box::pin(tokio::time::sleep_until(at))),
            waiting: false,
            done: false,
        }
    }

    fn cut(&mut self, why: StreamError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.done = true;
        if self.bounds.end_cleanly {
            debug!(reason = %why, "ending a long-running response");
            Poll::Ready(None)
        } else {
            Poll::Ready(Some(Err(why.into())))
        }
    }
}

impl<B> http_body::Body for ResponseBody<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if let Some(deadline) = &mut this.deadline
            && deadline.as_mut().poll(cx).is_ready()
        {
            let limit = this.bounds.deadline.unwrap_or_default();
            return this.cut(StreamError::Deadline(limit));
        }
        if !this.waiting {
            this.idle
                .as_mut()
                .reset(far(Instant::now(), this.bounds.idle));
            this.waiting = true;
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.waiting = false;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.done = true;
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => {
                ready!(this.idle.as_mut().poll(cx));
                this.cut(StreamError::Idle(this.bounds.idle))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// `now + d`, or a point so far away that it never comes when that cannot be represented.
fn far(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 60 * 60))
}

const BODY_OK: u8 = 0;
const BODY_TOO_LARGE: u8 = 1;
const BODY_CLIENT_FAILED: u8 = 2;

/// What became of the client's request body on its way upstream: when the upstream request
/// fails, this tells whether the client's body was the cause. HTTP/2 reports a cut-off
/// body to the upstream only as a reset stream, and hyper reports a malformed one only as
/// a failed request, so the body itself has to say.
#[derive(Debug, Default)]
pub struct BodyWatch {
    state: Option<Arc<AtomicU8>>,
    cap: u64,
}

impl BodyWatch {
    /// The error for a failed upstream request: the client's when its body failed,
    /// otherwise the upstream's.
    pub fn blame(&self, upstream_error: GatewayError) -> GatewayError {
        match self
            .state
            .as_ref()
            .map(|state| state.load(Ordering::Acquire))
        {
            Some(BODY_TOO_LARGE) => GatewayError::PayloadTooLarge { limit: self.cap },
            Some(BODY_CLIENT_FAILED) => GatewayError::BadRequest(
                "the request body could not be read: it was malformed or cut off",
            ),
            _ => upstream_error,
        }
    }
}

/// The request body to forward, streamed and watched. With a `cap` (ordinary requests;
/// long-running ones such as proxy carry streams, not API objects), a declared length
/// over it is refused before anything is sent, and a body without one is cut off when it
/// passes it. The returned [`BodyWatch`] tells the caller whether a failed upstream
/// request was the body's fault.
pub fn request_body(
    headers: &HeaderMap,
    body: Body,
    cap: Option<u64>,
) -> Result<(Body, BodyWatch), GatewayError> {
    use http_body::Body as _;
    if let Some(length) = headers.get(http::header::CONTENT_LENGTH) {
        let length: u64 = length
            .to_str()
            .ok()
            .and_then(|v| v.parse().ok())
            .ok_or(GatewayError::BadRequest("invalid Content-Length"))?;
        // hyper holds the client to the declared length, on HTTP/1.1 and HTTP/2.
        if let Some(limit) = cap
            && length > limit
        {
            return Err(GatewayError::PayloadTooLarge { limit });
        }
    }
    if body.is_end_stream() {
        return Ok((body, BodyWatch::default()));
    }
    let state = Arc::new(AtomicU8::new(BODY_OK));
    let watched = WatchedBody {
        inner: body,
        seen: 0,
        cap,
        state: state.clone(),
    };
    let watch = BodyWatch {
        state: Some(state),
        cap: cap.unwrap_or(u64::MAX),
    };
    Ok((Body::new(watched), watch))
}
/// The request body exceeded the cap.
#[derive(Debug, thiserror::Error)]
#[error("the request body exceeds the {0}-byte limit")]
pub struct TooLarge(u64);

/// The client's body on its way upstream: counted against the cap, and its failures noted
/// for [`BodyWatch`].
struct WatchedBody {
    inner: Body,
    seen: u64,
    cap: Option<u64>,
    state: Arc<AtomicU8>,
}

impl http_body::Body for WatchedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = match ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => {
                self.state.store(BODY_CLIENT_FAILED, Ordering::Release);
                return Poll::Ready(Some(Err(e.into())));
            }
            None => return Poll::Ready(None),
        };
        if let (Some(data), Some(cap)) = (frame.data_ref(), self.cap) {
            self.seen = self.seen.saturating_add(data.len() as u64);
            if self.seen > cap {
                self.state.store(BODY_TOO_LARGE, Ordering::Release);
                return Poll::Ready(Some(Err(TooLarge(cap).into())));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt as _;
    use http_body_util::{BodyExt as _, StreamBody};

    use super::*;

    type Frames = futures_util::stream::BoxStream<'static, Result<Frame<Bytes>, BoxError>>;

    /// A body that yields `chunks` and then never ends.
    fn hanging(chunks: &[&'static str]) -> StreamBody<Frames> {
        let chunks: Vec<_> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes()))))
            .collect();
        StreamBody::new(
            futures_util::stream::iter(chunks)
                .chain(futures_util::stream::pending())
                .boxed(),
        )
    }

    fn long_running(idle: u64) -> Bounds {
        Bounds {
            idle: Duration::from_secs(idle),
            deadline: None,
            end_cleanly: true,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_long_running_stream_ends_cleanly() {
        let mut body = ResponseBody::new(hanging(&["a", "b"]), long_running(60));
        let started = Instant::now();
        assert_eq!(
            body.frame().await.unwrap().unwrap().into_data().unwrap(),
            "a"
        );
        assert_eq!(
            body.frame().await.unwrap().unwrap().into_data().unwrap(),
            "b"
        );
        assert!(body.frame().await.is_none());
        assert_eq!(started.elapsed(), Duration::from_secs(60));
        assert!(http_body::Body::is_end_stream(&body));
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_ordinary_response_is_an_error() {
        let mut body =
            ResponseBody::new(hanging(&["a"]), Bounds::ordinary(Duration::from_secs(30)));
        body.frame().await.unwrap().unwrap();
        let error = body.frame().await.unwrap().unwrap_err();
        assert!(error.is::<StreamError>(), "{error}");
        assert!(body.frame().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_is_not_idle() {
        let mut body = ResponseBody::new(hanging(&["a", "b"]), long_running(10));
        body.frame().await.unwrap().unwrap();
        // The client takes far longer than the idle timeout to ask for the next frame,
        // which the upstream had ready all along.
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert_eq!(
            body.frame().await.unwrap().unwrap().into_data().unwrap(),
            "b"
        );
        // The idle clock starts when the client asks, not when the last frame went out.
        let asked = Instant::now();
        assert!(body.frame().await.is_none());
        assert_eq!(asked.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_ends_a_busy_stream() {
        let ticks = futures_util::stream::unfold((), |()| async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Some((
                Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"tick"))),
                (),
            ))
        });
        let bounds = Bounds {
            deadline: Some(Duration::from_secs(5)),
            ..long_running(2)
        };
        let body = ResponseBody::new(StreamBody::new(ticks.boxed()), bounds);
        let started = Instant::now();
        let collected = body.collect().await.unwrap().to_bytes();
        assert_eq!(collected.len(), 4 * 4, "{collected:?}");
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn deadlines_too_far_to_represent_do_not_panic() {
        // The largest `timeoutSeconds` the pipeline lets through, plus the grace, and
        // durations no clock can reach: the stream is bounded by its idle timeout instead.
        for deadline in [
            Duration::from_secs(kubegate_policy::MAX_TIMEOUT_SECONDS)
                .saturating_add(TIMEOUT_SECONDS_GRACE),
            Duration::MAX,
        ] {
            let bounds = Bounds {
                deadline: Some(deadline),
                ..long_running(5)
            };
            let mut body = ResponseBody::new(hanging(&["a"]), bounds);
            body.frame().await.unwrap().unwrap();
            let asked = Instant::now();
            assert!(body.frame().await.is_none());
            assert_eq!(asked.elapsed(), Duration::from_secs(5));
        }
        let body = ResponseBody::new(hanging(&[]), Bounds::ordinary(Duration::MAX));
        drop(body);
    }

    /// A body that yields `chunks`, then fails the way hyper's does on a malformed chunk.
    fn failing(chunks: &[&'static str]) -> Body {
        let mut frames: Vec<Result<Frame<Bytes>, BoxError>> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes()))))
            .collect();
        frames.push(Err("invalid chunk size line".into()));
        Body::new(StreamBody::new(futures_util::stream::iter(frames)))
    }

    fn upstream_down() -> GatewayError {
        GatewayError::UpstreamUnavailable("connection reset".into())
    }

    fn chunked(chunks: &[&'static str]) -> Body {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes()))))
            .collect();
        Body::new(StreamBody::new(futures_util::stream::iter(frames)))
    }

    #[tokio::test]
    async fn a_chunked_body_over_the_cap_is_cut_off_and_reported() {
        let (body, watch) =
            request_body(&HeaderMap::new(), chunked(&["1234", "5678"]), Some(6)).unwrap();
        let error = body.collect().await.unwrap_err();
        assert!(error.to_string().contains("6-byte limit"), "{error}");
        assert!(matches!(
            watch.blame(upstream_down()),
            GatewayError::PayloadTooLarge { limit: 6 }
        ));

        let (body, watch) =
            request_body(&HeaderMap::new(), chunked(&["1234", "56"]), Some(6)).unwrap();
        assert_eq!(body.collect().await.unwrap().to_bytes(), "123456");
        assert!(matches!(
            watch.blame(upstream_down()),
            GatewayError::UpstreamUnavailable(_)
        ));
    }

    #[tokio::test]
    async fn a_malformed_client_body_is_the_clients_fault() {
        for cap in [Some(1024), None] {
            let (body, watch) = request_body(&HeaderMap::new(), failing(&["12"]), cap).unwrap();
            assert!(body.collect().await.is_err());
            let blamed = watch.blame(upstream_down());
            assert!(matches!(blamed, GatewayError::BadRequest(_)), "{blamed:?}");
            assert_eq!(blamed.status(), http::StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn a_declared_length_over_the_cap_is_refused_up_front() {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::CONTENT_LENGTH, "7".parse().unwrap());
        let refused = request_body(&headers, Body::empty(), Some(6)).unwrap_err();
        assert!(matches!(
            refused,
            GatewayError::PayloadTooLarge { limit: 6 }
        ));
        headers.insert(http::header::CONTENT_LENGTH, "x".parse().unwrap());
        assert!(matches!(
            request_body(&headers, Body::empty(), Some(6)),
            Err(GatewayError::BadRequest(_))
        ));
    }

    #[tokio::test]
    async fn long_running_bodies_are_not_capped() {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::CONTENT_LENGTH, "8".parse().unwrap());
        let (body, watch) = request_body(&headers, chunked(&["1234", "5678"]), None).unwrap();
        assert_eq!(body.collect().await.unwrap().to_bytes(), "12345678");
        assert!(matches!(
            watch.blame(upstream_down()),
            GatewayError::UpstreamUnavailable(_)
        ));
    }
}
