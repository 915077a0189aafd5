//! One response's lifetime, owned by one object.
//!
//! A [`ResponseGuard`] is created when a request arrives and collects, phase by phase,
//! everything the response holds: the in-flight count, the admission slot, the upstream
//! lease and open-stream count of a long-running response, and the final audit record of
//! a watch, log follow or upgrade. It is then attached once, to the response body
//! ([`ResponseGuard::attach`]) or to the spliced session of an upgrade, and everything it
//! holds ends together when the last byte has been sent, the client has gone away, or the
//! session has closed. So `max_in_flight` counts responses until their bodies are done
//! (a 3 MB list to a slow reader holds its slot until the end), and there is exactly one
//! place to look for where a slot, a lease, a gauge or a final record ends: here.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use metrics::gauge;

use crate::audit::{AuditLog, Event, Stage};
use crate::ops::metrics::{OPEN_STREAMS, in_flight};
use crate::ops::shutdown::Shutdown;
use crate::pipeline::admission::Permit;
use crate::pipeline::kind::RequestKind;
use crate::upstream::StreamLease;

/// Everything one response holds until it is finished. Dropping it releases all of it and
/// writes the final audit record, if one is armed.
#[must_use = "what the guard holds is released when it is dropped"]
pub struct ResponseGuard {
    // Field order is drop order after `drop` ran: the record is written first.
    // Boxed: only long-running responses arm one, and the guard lives in every request's
    // future, which is moved on every request.
    final_record: Option<Box<FinalRecord>>,
    open: Option<OpenStream>,
    lease: Option<StreamLease>,
    permit: Option<Permit>,
    _in_flight: InFlight,
}

struct FinalRecord {
    log: AuditLog,
    event: Event<'static>,
    pending: Pending,
}

impl ResponseGuard {
    /// A guard for a request that has just arrived: counted in flight from now on.
    pub fn new() -> Self {
        ResponseGuard {
            final_record: None,
            open: None,
            lease: None,
            permit: None,
            _in_flight: InFlight::start(),
        }
    }

    /// Holds the admission slot.
    pub fn hold_permit(&mut self, permit: Permit) {
        self.permit = Some(permit);
    }

    /// Holds a long-running response's open-stream count and its place on an upstream
    /// connection.
    pub fn hold_stream(&mut self, kind: RequestKind, lease: Option<StreamLease>) {
        self.open = Some(OpenStream::new(kind));
        self.lease = lease;
    }

    /// Writes `event` as the `ResponseComplete` record (its stage time the moment of the
    /// end) when the response ends.
    pub fn arm_final_record(&mut self, log: AuditLog, event: Event<'_>, pending: &Pending) {
        pending.0.fetch_add(1, Ordering::AcqRel);
        self.final_record = Some(Box::new(FinalRecord {
            log,
            event: event.into_owned(),
            pending: pending.clone(),
        }));
    }

    /// Adds an annotation to the final record, if one is armed (a session's recording).
    pub fn annotate_final_record(&mut self, key: &'static str, value: String) {
        if let Some(record) = self.final_record.as_mut() {
            record.event.annotations.insert(key.into(), value.into());
        }
    }

    /// Cancels the final record: the request turned out not to be long-running (a refused
    /// upgrade, relayed as an ordinary answer).
    pub fn disarm_final_record(&mut self) {
        if let Some(record) = self.final_record.take() {
            record.pending.0.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Attaches the guard to `response`'s body: it is dropped when the body has been sent
    /// in full, fails, or is dropped unfinished (the client went away). With `shutdown`
    /// (long-running responses), the body also ends cleanly when the gateway shuts down;
    /// a watch client simply re-watches.
    pub fn attach(self, response: Response, shutdown: Option<Shutdown>) -> Response {
        let (parts, body) = response.into_parts();
        let body = GuardedBody {
            inner: body,
            guard: Some(self),
            shutdown: shutdown.map(|s| Box::pin(s.wait()) as ShutdownFuture),
        };
        Response::from_parts(parts, Body::new(body))
    }
}

impl Default for ResponseGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for ResponseGuard {
    fn drop(&mut self) {
        if let Some(FinalRecord {
            log,
            mut event,
            pending,
        }) = self.final_record.take().map(|record| *record)
        {
            event.stage = Stage::ResponseComplete;
            event.stage_time = SystemTime::now();
            // Drop cannot wait; the pending count lets shutdown wait instead.
            log.record_detached(event, move || {
                pending.0.fetch_sub(1, Ordering::AcqRel);
            });
        }
    }
}

/// Counts final records armed or still being written, so shutdown can wait for them
/// before closing the audit log.
#[derive(Clone, Default)]
pub struct Pending(Arc<AtomicUsize>);

impl Pending {
    /// Records not yet handed to the audit log.
    pub fn count(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }

    /// Waits until no record is pending, for at most `limit`.
    pub async fn drained(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while self.count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Counts one request in `kubegate_requests_in_flight` until dropped.
struct InFlight(());

impl InFlight {
    fn start() -> Self {
        in_flight(1.0);
        InFlight(())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        in_flight(-1.0);
    }
}

/// Counts one open stream in `kubegate_open_streams` until dropped, so every way a stream
/// can end (finished, client gone, upstream gone, timed out, task cancelled) uncounts it.
#[derive(Debug)]
pub struct OpenStream(RequestKind);

impl OpenStream {
    /// Starts counting a stream of `kind`.
    pub fn new(kind: RequestKind) -> Self {
        gauge!(OPEN_STREAMS, "kind" => kind.label()).increment(1.0);
        OpenStream(kind)
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        gauge!(OPEN_STREAMS, "kind" => self.0.label()).decrement(1.0);
    }
}

type ShutdownFuture = Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// A response body that keeps its [`ResponseGuard`] until the body is finished or dropped.
struct GuardedBody<B> {
    inner: B,
    guard: Option<ResponseGuard>,
    shutdown: Option<ShutdownFuture>,
}

impl<B> HttpBody for GuardedBody<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.guard.is_none() {
            return Poll::Ready(None);
        }
        if let Some(shutdown) = self.shutdown.as_mut()
            && shutdown.as_mut().poll(cx).is_ready()
        {
            self.guard = None;
            return Poll::Ready(None);
        }
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            // Finished (or failed): release now rather than when hyper drops the body.
            self.guard = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.guard.is_none() || self.inner.is_end_stream()
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
    use crate::pipeline::admission::Admission;

    fn admission() -> Admission<governor::clock::FakeRelativeClock> {
        Admission::with_clock(
            &kubegate_config::Limits {
                max_in_flight_per_user: 1,
                ..kubegate_config::Limits::default()
            },
            governor::clock::FakeRelativeClock::default(),
        )
    }

    /// Alice asks for her one in-flight slot.
    fn alice(
        admission: &Admission<governor::clock::FakeRelativeClock>,
    ) -> Result<crate::pipeline::admission::Permit, crate::error::GatewayError> {
        admission.admit("alice", &[], RequestKind::Ordinary)
    }

    fn chunks(n: usize) -> Body {
        let frames = (0..n).map(|_| Ok::<_, std::io::Error>(Frame::data(Bytes::from("chunk"))));
        Body::new(StreamBody::new(futures_util::stream::iter(frames).boxed()))
    }

    #[tokio::test]
    async fn the_slot_is_held_until_the_body_is_finished() {
        let admission = admission();
        let mut guard = ResponseGuard::new();
        guard.hold_permit(alice(&admission).unwrap());
        let response = guard.attach(Response::new(chunks(3)), None);
        // Headers sent, body not yet: the slot is still taken.
        assert!(alice(&admission).is_err());
        let mut body = response.into_body();
        body.frame().await.unwrap().unwrap();
        assert!(alice(&admission).is_err());
        while body.frame().await.is_some() {}
        // The last byte went out: free again, before the body is even dropped.
        drop(alice(&admission).unwrap());
        drop(body);
    }

    #[tokio::test]
    async fn a_body_dropped_unfinished_releases_the_slot() {
        let admission = admission();
        let mut guard = ResponseGuard::new();
        guard.hold_permit(alice(&admission).unwrap());
        let response = guard.attach(Response::new(chunks(1000)), None);
        let mut body = response.into_body();
        body.frame().await.unwrap().unwrap();
        assert!(alice(&admission).is_err());
        // The client went away mid-body.
        drop(body);
        drop(alice(&admission).unwrap());
    }

    #[tokio::test]
    async fn shutdown_ends_a_long_running_body_cleanly() {
        let (trigger, signal) = crate::ops::shutdown::ShutdownTrigger::new();
        let pending = futures_util::stream::pending::<Result<Frame<Bytes>, std::io::Error>>();
        let response = ResponseGuard::new().attach(
            Response::new(Body::new(StreamBody::new(pending))),
            Some(signal),
        );
        trigger.trigger();
        let mut body = response.into_body();
        assert!(body.frame().await.is_none());
        assert!(body.is_end_stream());
    }

    /// Records the open-watch gauge in one cell; every other metric is dropped.
    struct OneGauge(Arc<std::sync::atomic::AtomicU64>);

    impl metrics::Recorder for OneGauge {
        fn describe_counter(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn describe_gauge(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn describe_histogram(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn register_counter(
            &self,
            _: &metrics::Key,
            _: &metrics::Metadata<'_>,
        ) -> metrics::Counter {
            metrics::Counter::noop()
        }
        fn register_gauge(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
            let watches = key.name() == OPEN_STREAMS
                && key
                    .labels()
                    .any(|l| l.key() == "kind" && l.value() == "watch");
            if watches {
                metrics::Gauge::from_arc(self.0.clone())
            } else {
                metrics::Gauge::noop()
            }
        }
        fn register_histogram(
            &self,
            _: &metrics::Key,
            _: &metrics::Metadata<'_>,
        ) -> metrics::Histogram {
            metrics::Histogram::noop()
        }
    }

    #[test]
    fn open_streams_are_counted_until_the_guard_ends() {
        use std::sync::atomic::AtomicU64;
        let cell = Arc::new(AtomicU64::new(0f64.to_bits()));
        let value = || f64::from_bits(cell.load(Ordering::SeqCst));
        metrics::with_local_recorder(&OneGauge(cell.clone()), || {
            let first = OpenStream::new(RequestKind::Watch);
            let mut guard = ResponseGuard::new();
            guard.hold_stream(RequestKind::Watch, None);
            assert_eq!(value(), 2.0);
            drop(first);
            assert_eq!(value(), 1.0);
            // A body dropped unfinished (client gone) releases its count with its guard.
            let response = guard.attach(Response::new(Body::empty()), None);
            assert_eq!(value(), 1.0);
            drop(response);
            assert_eq!(value(), 0.0);
        });
    }
}
