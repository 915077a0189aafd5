//! Metrics: names, bounded labels, and the process's Prometheus recorder.
//!
//! Every label here takes values from a small fixed set (a status code, a verb, a
//! decision, a failure category); nothing derived from a path, a user or a token is ever a
//! label, so the series count stays bounded whatever clients send.

use foldhash::HashMap;
use std::cell::RefCell;
use std::sync::OnceLock;
use std::time::Duration;

use metrics::{
    Counter, Gauge, Histogram, counter, describe_counter, describe_gauge, describe_histogram,
    gauge, histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Requests answered, by `code`, `verb` and `decision`.
pub const REQUESTS: &str = "kubegate_requests_total";
/// Seconds from request to response headers, by `verb`.
pub const REQUEST_SECONDS: &str = "kubegate_request_duration_seconds";
/// The gateway's own share of [`REQUEST_SECONDS`]: total minus the wait for the upstream.
pub const GATEWAY_SECONDS: &str = "kubegate_gateway_duration_seconds";
/// Requests being handled now.
pub const IN_FLIGHT: &str = "kubegate_requests_in_flight";
/// Open long-running streams, by `kind` (`watch`, `stream` for log follows and proxy, `upgrade`).
pub const OPEN_STREAMS: &str = "kubegate_open_streams";
/// Authentication failures, by `reason`.
pub const AUTH_FAILURES: &str = "kubegate_authentication_failures_total";
/// JWKS and discovery fetches, by `result` (`ok`, `error`).
pub const JWKS_FETCHES: &str = "kubegate_jwks_fetches_total";
/// Policy reloads, by `result` (`ok`, `error`).
pub const POLICY_RELOADS: &str = "kubegate_policy_reloads_total";
/// TLS certificate reloads, by `result` (`ok`, `error`).
pub const CERT_RELOADS: &str = "kubegate_certificate_reloads_total";
/// `AuthenticationConfiguration` file reloads, by `result` (`ok`, `error`).
pub const AUTHN_CONFIG_RELOADS: &str = "kubegate_authentication_config_reloads_total";
/// Requests refused by a rate or concurrency limit, by `limit`.
pub const RATE_LIMITED: &str = "kubegate_rate_limited_total";
/// Connections closed as soon as they were accepted, by `reason` (`address`: the
/// client's address was at `max_connections_per_address`).
pub const CONNECTIONS_REFUSED: &str = "kubegate_connections_refused_total";

/// The process's recorder. Installed once; later gateways in the same process (tests)
/// share it.
pub fn recorder() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        // Buckets from 100 µs (a denied request) to a minute (a slow list).
        let buckets = [
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            2.5, 5.0, 10.0, 30.0, 60.0,
        ];
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(GATEWAY_SECONDS.into()), &buckets))
            .unwrap_or_else(|_| PrometheusBuilder::new())
            .build_recorder();
        let handle = recorder.handle();
        // Err: a recorder is already installed (an embedding process chose its own).
        let _ = metrics::set_global_recorder(recorder);
        describe();
        start_upkeep(handle.clone(), UPKEEP_INTERVAL);
        handle
    })
}

/// How often histogram samples are folded into their buckets.
pub const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// The exporter keeps every histogram sample until something folds them into buckets: a
/// scrape does, but nothing else. Without this, a gateway nobody scrapes would hold two
/// samples per request forever (tens of MB an hour at a few thousand requests a second).
fn start_upkeep(handle: PrometheusHandle, interval: std::time::Duration) {
    let spawned = std::thread::Builder::new()
        .name("kubegate-metrics".into())
        .spawn(move || {
            loop {
                std::thread::sleep(interval);
                handle.run_upkeep();
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start metrics upkeep; histograms are folded only when scraped");
    }
}

fn describe() {
    crate::audit::describe_metrics();
    crate::recording::describe_metrics();
    describe_counter!(
        REQUESTS,
        "Requests answered, by status code, verb and decision."
    );
    describe_histogram!(
        REQUEST_SECONDS,
        metrics::Unit::Seconds,
        "Time from request to response headers."
    );
    describe_histogram!(
        GATEWAY_SECONDS,
        metrics::Unit::Seconds,
        "The gateway's own share of the request time (excluding the upstream's)."
    );
    describe_gauge!(IN_FLIGHT, "Requests being handled now.");
    describe_gauge!(OPEN_STREAMS, "Open watches and connection upgrades.");
    describe_counter!(AUTH_FAILURES, "Authentication failures, by reason.");
    describe_counter!(JWKS_FETCHES, "Issuer key fetches, by result.");
    describe_counter!(POLICY_RELOADS, "Policy reloads, by result.");
    describe_counter!(CERT_RELOADS, "TLS certificate reloads, by result.");
    describe_counter!(
        AUTHN_CONFIG_RELOADS,
        "AuthenticationConfiguration file reloads, by result."
    );
    describe_counter!(
        RATE_LIMITED,
        "Requests refused by a rate or concurrency limit."
    );
    describe_counter!(
        CONNECTIONS_REFUSED,
        "Connections closed as soon as they were accepted, by reason."
    );
}

/// Verbs as metric labels: the Kubernetes verbs and HTTP methods, anything else `other`.
pub fn verb_label(verb: &str) -> &'static str {
    // What else a request can resolve to: the proxy verb, and methods no path rule names.
    const OTHER_METHODS: [&str; 3] = ["proxy", "connect", "trace"];
    kubegate_policy::KUBERNETES_VERBS
        .iter()
        .chain(&kubegate_policy::HTTP_METHODS)
        .chain(&OTHER_METHODS)
        .find(|v| **v == verb)
        .copied()
        .unwrap_or("other")
}

/// Records one answered request.
pub fn request_done(
    code: u16,
    verb: &'static str,
    decision: &'static str,
    total: Duration,
    upstream_wait: Duration,
) {
    let gateway = total.saturating_sub(upstream_wait).as_secs_f64();
    with_request_handles(|handles| {
        let requests = handles
            .requests
            .entry((code, verb, decision))
            .or_insert_with(|| {
                counter!(REQUESTS, "code" => code.to_string(), "verb" => verb, "decision" => decision)
            });
        requests.increment(1);
        let seconds = handles
            .seconds
            .entry(verb)
            .or_insert_with(|| histogram!(REQUEST_SECONDS, "verb" => verb));
        seconds.record(total.as_secs_f64());
        handles.gateway.record(gateway);
    });
}

/// Moves [`IN_FLIGHT`] by `delta` (a request starts: 1, ends: -1).
pub fn in_flight(delta: f64) {
    with_request_handles(|handles| handles.in_flight.increment(delta));
}

/// Runs `f` on this thread's handles for the recorder in force. A thread that is exiting
/// (its handles already gone) records nothing rather than panicking in a `Drop`.
fn with_request_handles(f: impl FnOnce(&mut RequestHandles)) {
    let _ = REQUEST_HANDLES.try_with(|cell| {
        let mut handles = cell.borrow_mut();
        let recorder = current_recorder();
        let handles = match &mut *handles {
            Some(h) if h.recorder == recorder => h,
            slot => slot.insert(RequestHandles::new(recorder)),
        };
        f(handles);
    });
}

/// The handles of [`request_done`]'s and [`in_flight`]'s series, kept per thread. Finding
/// them in the registry on every request (a label key built, hashed and looked up, the
/// status code formatted) took about 4,400 instructions a request, and 600 for each move
/// of the in-flight gauge. The set is as bounded as the labels. The handles belong to the
/// recorder they came from: a thread that sees another recorder (a test's local one)
/// starts a new set.
struct RequestHandles {
    recorder: usize,
    requests: HashMap<(u16, &'static str, &'static str), Counter>,
    seconds: HashMap<&'static str, Histogram>,
    gateway: Histogram,
    in_flight: Gauge,
}

impl RequestHandles {
    fn new(recorder: usize) -> Self {
        RequestHandles {
            recorder,
            requests: HashMap::default(),
            seconds: HashMap::default(),
            gateway: histogram!(GATEWAY_SECONDS),
            in_flight: gauge!(IN_FLIGHT),
        }
    }
}

thread_local! {
    static REQUEST_HANDLES: RefCell<Option<RequestHandles>> = const { RefCell::new(None) };
}

/// The address of the recorder in force on this thread: which recorder handles belong to.
fn current_recorder() -> usize {
    metrics::with_recorder(|r| std::ptr::from_ref(r).cast::<()>() as usize)
}

/// Records an authentication failure.
pub fn auth_failure(reason: &'static str) {
    counter!(AUTH_FAILURES, "reason" => reason).increment(1);
}

/// Records a key fetch.
pub fn jwks_fetch(ok: bool) {
    counter!(JWKS_FETCHES, "result" => if ok { "ok" } else { "error" }).increment(1);
}

/// Records a policy reload.
pub fn policy_reload(ok: bool) {
    counter!(POLICY_RELOADS, "result" => if ok { "ok" } else { "error" }).increment(1);
}

/// Records a certificate reload.
pub fn certificate_reload(ok: bool) {
    counter!(CERT_RELOADS, "result" => if ok { "ok" } else { "error" }).increment(1);
}

/// Records a reload of the `AuthenticationConfiguration` file.
pub fn authentication_config_reload(ok: bool) {
    counter!(AUTHN_CONFIG_RELOADS, "result" => if ok { "ok" } else { "error" }).increment(1);
}

/// Records a request refused by a limit (`user`, `address`, `concurrency`).
pub fn rate_limited(limit: &'static str) {
    counter!(RATE_LIMITED, "limit" => limit).increment(1);
}

/// Records a connection closed as soon as it was accepted (`address`).
pub fn connection_refused(reason: &'static str) {
    counter!(CONNECTIONS_REFUSED, "reason" => reason).increment(1);
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use metrics::{Key, KeyName, Metadata, Recorder, SharedString, Unit};

    use super::*;

    /// Counts `kubegate_requests_total` with code 200; everything else goes nowhere.
    #[derive(Default)]
    struct Requests(Arc<AtomicU64>);

    impl Requests {
        fn count(&self) -> u64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    impl Recorder for Requests {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            let ok = key.name() == REQUESTS
                && key
                    .labels()
                    .any(|l| l.key() == "code" && l.value() == "200");
            if ok {
                Counter::from_arc(self.0.clone())
            } else {
                Counter::noop()
            }
        }
        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> metrics::Gauge {
            metrics::Gauge::noop()
        }
        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::noop()
        }
    }

    /// The per-thread handles follow the recorder in force: a request recorded under
    /// one recorder never lands in another's series.
    #[test]
    fn cached_handles_belong_to_their_recorder() {
        let (a, b) = (Requests::default(), Requests::default());
        let done = |code| request_done(code, "get", "allowed", Duration::ZERO, Duration::ZERO);
        metrics::with_local_recorder(&a, || {
            done(200);
            done(200);
            done(404);
        });
        metrics::with_local_recorder(&b, || done(200));
        metrics::with_local_recorder(&a, || done(200));
        assert_eq!((a.count(), b.count()), (3, 1));
    }
}
