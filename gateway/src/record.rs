//! What a request leaves behind: its audit records, and the guard that keeps its
//! admission slot and writes its final record when a long-running request ends.
//!
//! An ordinary request gets one `ResponseComplete` record when its response starts. A
//! long-running one (watch, log follow, an upgraded exec/attach/port-forward) gets a
//! `ResponseStarted` record then, and a `ResponseComplete` record when its stream or
//! spliced connection ends, written by [`Completion`]'s drop.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use kubegate_policy::RequestAttributes;

use crate::audit::{AuditId, AuditLog, Event, ObjectRef, Stage, UserInfo};
use crate::authn::Identity;
use crate::forward::ForwardedIdentity;
use crate::limits::Permit;

/// Everything the audit record of one request needs, filled in phase by phase.
pub struct Facts {
    /// The request's audit ID.
    pub audit_id: AuditId,
    /// When the request arrived.
    pub received: SystemTime,
    /// Path and query as received.
    pub request_uri: String,
    /// The client's address.
    pub source_ip: String,
    /// The client's `User-Agent`.
    pub user_agent: Option<String>,
}

/// Builds the audit event for a request.
#[allow(clippy::too_many_arguments)]
pub fn event(
    facts: &Facts,
    stage: Stage,
    attributes: Option<&RequestAttributes>,
    identity: Option<&Identity>,
    forwarded: Option<&ForwardedIdentity>,
    code: u16,
    annotations: BTreeMap<String, String>,
) -> Event {
    let (verb, object_ref) = match attributes {
        Some(RequestAttributes::Resource(r)) => (
            r.verb.clone(),
            Some(ObjectRef {
                resource: r.resource.clone(),
                namespace: r.namespace.clone(),
                name: r.name.clone(),
                api_group: r.api_group.clone(),
                api_version: r.api_version.clone(),
                subresource: r.subresource.clone(),
            }),
        ),
        Some(RequestAttributes::NonResource(n)) => (n.verb.clone(), None),
        None => (String::new(), None),
    };
    Event {
        audit_id: facts.audit_id.clone(),
        stage,
        request_uri: facts.request_uri.clone(),
        verb,
        user: identity.map(|i| UserInfo {
            username: i.username.clone(),
            uid: i.uid.clone(),
            groups: i.groups.clone(),
            extra: i.extra.clone(),
        }),
        impersonated_user: forwarded.map(|f| UserInfo {
            username: f.user.clone(),
            uid: f.uid.clone(),
            groups: f.groups.clone(),
            extra: f.extra.clone(),
        }),
        source_ips: vec![facts.source_ip.clone()],
        user_agent: facts.user_agent.clone(),
        object_ref,
        response_code: code,
        request_received: facts.received,
        stage_time: SystemTime::now(),
        annotations,
    }
}

/// Counts `ResponseComplete` records still being written by guards, so shutdown can wait
/// for them before closing the audit log.
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

/// Held for the life of a request's response (its body, or its spliced connection):
/// releases the admission slot and, for long-running requests, writes the
/// `ResponseComplete` record when dropped.
pub struct Completion {
    permit: Option<Permit>,
    finish: Option<(AuditLog, Event, Pending)>,
}

impl Completion {
    /// Holds `permit`; when `finish` is given, writes that event (its stage time reset to
    /// the moment of drop) to the audit log on drop.
    pub fn new(
        permit: Option<Permit>,
        finish: Option<(AuditLog, Event)>,
        pending: &Pending,
    ) -> Self {
        let finish = finish.map(|(log, event)| {
            pending.0.fetch_add(1, Ordering::AcqRel);
            (log, event, pending.clone())
        });
        Completion { permit, finish }
    }

    /// Cancels the final record (the request turned out not to be long-running, for
    /// example a refused upgrade).
    pub fn disarm(&mut self) {
        if let Some((_, _, pending)) = self.finish.take() {
            pending.0.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// The admission slot, handed back (after [`Completion::disarm`]).
    pub fn into_permit(mut self) -> Option<Permit> {
        self.permit.take()
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        if let Some((log, mut event, pending)) = self.finish.take() {
            event.stage = Stage::ResponseComplete;
            event.stage_time = SystemTime::now();
            // Drop cannot wait; the pending count lets shutdown wait instead.
            log.record_detached(event, move || {
                pending.0.fetch_sub(1, Ordering::AcqRel);
            });
        }
    }
}

/// The gateway's shutdown, as seen by long-running streams: they end cleanly when it
/// begins instead of holding their connections until the grace period runs out.
#[derive(Clone)]
pub struct Shutdown(tokio::sync::watch::Receiver<bool>);

/// Starts a [`Shutdown`].
#[derive(Debug)]
pub struct ShutdownTrigger(tokio::sync::watch::Sender<bool>);

impl ShutdownTrigger {
    /// A trigger and the signal it drives.
    pub fn new() -> (ShutdownTrigger, Shutdown) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        (ShutdownTrigger(tx), Shutdown(rx))
    }

    /// Signals every stream to end.
    pub fn trigger(&self) {
        let _ = self.0.send(true);
    }

    /// A new signal receiver.
    pub fn signal(&self) -> Shutdown {
        Shutdown(self.0.subscribe())
    }
}

impl Shutdown {
    /// Resolves once shutdown has begun (never, if its trigger is gone without firing).
    pub async fn wait(mut self) {
        if self.0.wait_for(|down| *down).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

type ShutdownFuture = Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// A response body that keeps a [`Completion`] until the body is finished or dropped,
/// and ends (cleanly: a watch client simply re-watches) when the gateway shuts down.
pub struct Guarded<B> {
    inner: B,
    completion: Option<Completion>,
    shutdown: Option<ShutdownFuture>,
}

impl<B> Guarded<B> {
    /// Wraps `inner`.
    pub fn new(inner: B, completion: Completion, shutdown: Shutdown) -> Self {
        Guarded {
            inner,
            completion: Some(completion),
            shutdown: Some(Box::pin(shutdown.wait())),
        }
    }
}

impl<B> HttpBody for Guarded<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(shutdown) = self.shutdown.as_mut()
            && shutdown.as_mut().poll(cx).is_ready()
        {
            self.shutdown = None;
            self.completion.take();
            return Poll::Ready(None);
        }
        if self.completion.is_none() && self.shutdown.is_none() {
            return Poll::Ready(None);
        }
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            // Finished: release now rather than when hyper drops the body.
            self.completion.take();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        // Ended for shutdown, or the inner body is done.
        (self.completion.is_none() && self.shutdown.is_none()) || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
