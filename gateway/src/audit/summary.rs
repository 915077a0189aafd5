//! Summaries of refusals: the records of requests the gateway turned away before the API
//! server saw them, gathered per client so a flood of them cannot rotate other records out
//! of the trail.
//!
//! Which records come here is decided by the pipeline (a request that was not forwarded,
//! and either got no policy decision — a bad path, a 401 — or was refused by admission
//! with a 429); every forwarded request and every policy decision keeps its own record.
//! Here, per [`SummaryKey`] (the verified user, else the client address) and window of
//! [`WINDOW`]: the first record is written in full at once, the others are only counted,
//! and when the window ends one summary record is written with the first request's details,
//! a new audit ID and `kubegate.io/summary*` annotations naming the first record, the
//! count and the window. So one key costs at most two records a window, and at most
//! [`MAX_KEYS`] keys have a window open at once: refusals for further keys share one
//! overflow window until some close.
//!
//! Windows close when a periodic sweep ([`sweep_periodically`], every quarter window) finds
//! them ended, when the same key is refused again after its window ended, and all at once
//! when the log closes, so no count is lost. Each summary is counted in
//! [`RECORDS_SUMMARISED`] and logged (IDs and counts, never the record's contents). The
//! state is driven by an explicit clock (`now` arguments) so it can be tested without
//! waiting; the log's wrappers pass tokio's, which tests can pause.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::mem;
use std::sync::{Mutex, PoisonError, Weak};
use std::time::{Duration, SystemTime};

use metrics::{counter, describe_counter};
use tokio::time::Instant;

use super::{AuditId, AuditLog, Event, Inner, Timestamp};

/// How long a key's window stays open after its first refusal.
pub const WINDOW: Duration = Duration::from_secs(1);
/// Keys with a window open at once; refusals for more keys share one overflow window.
pub const MAX_KEYS: usize = 1024;
/// Counter: refused requests that got no record of their own, only a share of a summary.
pub const RECORDS_SUMMARISED: &str = "kubegate_audit_records_summarised_total";

/// Annotation on a summary record: `"true"`.
pub const SUMMARY: &str = "kubegate.io/summary";
/// Annotation: the audit ID of the window's first request, which has its own full record.
pub const SUMMARY_OF: &str = "kubegate.io/summary-of";
/// Annotation: how many more requests the window refused (the first not included).
pub const SUMMARY_COUNT: &str = "kubegate.io/summary-count";
/// Annotation: those requests by response code, e.g. `"401=12,429=300"`.
pub const SUMMARY_CODES: &str = "kubegate.io/summary-codes";
/// Annotation: whose window it was, `user:<name>`, `address:<address>` or `overflow`.
pub const SUMMARY_KEY: &str = "kubegate.io/summary-key";
/// Annotation: when the window opened (RFC 3339, microseconds).
pub const SUMMARY_START: &str = "kubegate.io/summary-window-start";
/// Annotation: when the window closed.
pub const SUMMARY_END: &str = "kubegate.io/summary-window-end";

/// Registers the description of [`RECORDS_SUMMARISED`].
pub(super) fn describe_metrics() {
    describe_counter!(
        RECORDS_SUMMARISED,
        "Refused requests counted in an audit summary instead of a record of their own."
    );
}

/// Whose refusals one window gathers.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum SummaryKey {
    /// A verified identity, by username.
    User(String),
    /// A client without a verified identity, by address (or address block).
    Address(String),
}

/// A window's slot: a key, or the one overflow window past [`MAX_KEYS`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Slot {
    Key(SummaryKey),
    Overflow,
}

impl Slot {
    fn label(&self) -> String {
        match self {
            Slot::Key(SummaryKey::User(name)) => format!("user:{name}"),
            Slot::Key(SummaryKey::Address(address)) => format!("address:{address}"),
            Slot::Overflow => "overflow".into(),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Slot::Key(SummaryKey::User(_)) => "user",
            Slot::Key(SummaryKey::Address(_)) => "address",
            Slot::Overflow => "overflow",
        }
    }
}

/// One open window.
struct Window {
    opened: Instant,
    /// The wall-clock time it opened, for the record.
    opened_at: SystemTime,
    /// The first request's record, already written in full.
    first: Event<'static>,
    /// Refusals since, by response code.
    codes: BTreeMap<u16, u64>,
}

impl Window {
    fn open(first: &Event<'_>, now: Instant) -> Window {
        Window {
            opened: now,
            opened_at: SystemTime::now(),
            first: first.clone().into_owned(),
            codes: BTreeMap::new(),
        }
    }

    fn ended(&self, window: Duration, now: Instant) -> bool {
        now.saturating_duration_since(self.opened) >= window
    }

    /// The summary record, when the window counted anything beyond its first request.
    fn summary(self, slot: &Slot, window: Duration, now: Instant) -> Option<Summary> {
        let count: u64 = self.codes.values().sum();
        if count == 0 {
            return None;
        }
        let mut codes = String::new();
        for (code, n) in &self.codes {
            let sep = if codes.is_empty() { "" } else { "," };
            let _ = write!(codes, "{sep}{code}={n}");
        }
        let open_for = now.saturating_duration_since(self.opened).min(window);
        let mut event = self.first;
        // `take` leaves a fresh random ID (`AuditId::default`) for the summary.
        let first = mem::take(&mut event.audit_id);
        event.stage_time = SystemTime::now();
        let a = &mut event.annotations;
        a.insert(SUMMARY.into(), "true".into());
        a.insert(SUMMARY_OF.into(), first.as_str().to_owned().into());
        a.insert(SUMMARY_COUNT.into(), count.to_string().into());
        a.insert(SUMMARY_CODES.into(), codes.into());
        a.insert(SUMMARY_KEY.into(), slot.label().into());
        a.insert(
            SUMMARY_START.into(),
            Timestamp(self.opened_at).to_string().into(),
        );
        a.insert(
            SUMMARY_END.into(),
            Timestamp(self.opened_at + open_for).to_string().into(),
        );
        Some(Summary {
            event,
            first,
            count,
            kind: slot.kind(),
        })
    }
}

/// A summary record to write, with what its log line says.
pub(super) struct Summary {
    event: Event<'static>,
    first: AuditId,
    count: u64,
    kind: &'static str,
}

/// What [`Summaries::admit`] decided for one refusal.
#[derive(Default)]
pub(super) struct Admitted {
    /// Write the refusal's own record (it opened a window, or summaries are closed).
    pub(super) write: bool,
    /// Summaries of windows that ended, to write first.
    pub(super) summaries: Vec<Summary>,
}

#[derive(Default)]
struct State {
    windows: HashMap<Slot, Window>,
    /// Set by [`Summaries::drain`]: every later refusal is written in full.
    closed: bool,
}

/// The open windows. Blocking (a mutex held for a map look-up, never across an await).
pub(super) struct Summaries {
    state: Mutex<State>,
    window: Duration,
    max_keys: usize,
}

impl Summaries {
    pub(super) fn new(window: Duration, max_keys: usize) -> Summaries {
        Summaries {
            state: Mutex::new(State::default()),
            window,
            max_keys,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts `event`, a refusal for `key` at `now`, in its window, or opens one for it.
    pub(super) fn admit(&self, key: SummaryKey, event: &Event<'_>, now: Instant) -> Admitted {
        let mut state = self.state();
        if state.closed {
            return Admitted {
                write: true,
                summaries: Vec::new(),
            };
        }
        let mut admitted = Admitted::default();
        let mut slot = Slot::Key(key);
        if !state.windows.contains_key(&slot) && self.keys(&state) >= self.max_keys {
            // Full: make room from ended windows before folding into the overflow.
            admitted.summaries = self.take_ended(&mut state, now);
            if self.keys(&state) >= self.max_keys {
                slot = Slot::Overflow;
            }
        }
        let window = self.window;
        match state.windows.get_mut(&slot) {
            Some(open) if !open.ended(window, now) => {
                *open.codes.entry(event.response_code).or_default() += 1;
            }
            Some(open) => {
                let ended = mem::replace(open, Window::open(event, now));
                admitted.summaries.extend(ended.summary(&slot, window, now));
                admitted.write = true;
            }
            None => {
                state.windows.insert(slot, Window::open(event, now));
                admitted.write = true;
            }
        }
        admitted
    }

    /// Closes the windows that have ended by `now`.
    pub(super) fn sweep(&self, now: Instant) -> Vec<Summary> {
        let mut state = self.state();
        self.take_ended(&mut state, now)
    }

    /// Closes every window and stops summarising: later refusals are written in full.
    pub(super) fn drain(&self, now: Instant) -> Vec<Summary> {
        let mut state = self.state();
        state.closed = true;
        let window = self.window;
        state
            .windows
            .drain()
            .filter_map(|(slot, open)| open.summary(&slot, window, now))
            .collect()
    }

    /// Windows open for keys (the overflow window not counted).
    fn keys(&self, state: &State) -> usize {
        state.windows.len() - usize::from(state.windows.contains_key(&Slot::Overflow))
    }

    fn take_ended(&self, state: &mut State, now: Instant) -> Vec<Summary> {
        let window = self.window;
        let ended: Vec<Slot> = state
            .windows
            .iter()
            .filter(|(_, open)| open.ended(window, now))
            .map(|(slot, _)| slot.clone())
            .collect();
        ended
            .into_iter()
            .filter_map(|slot| {
                let open = state.windows.remove(&slot)?;
                open.summary(&slot, window, now)
            })
            .collect()
    }

    /// Windows open now (tests).
    #[cfg(test)]
    fn open_windows(&self) -> usize {
        self.state().windows.len()
    }
}

impl AuditLog {
    /// Records a refusal the gateway answered itself before any policy decision or by
    /// admission (see the module doc): the first for `key` in a window is written in full,
    /// later ones are counted into the window's summary.
    pub async fn record_refusal(&self, key: SummaryKey, event: &Event<'_>) {
        let admitted = self.inner.summaries.admit(key, event, Instant::now());
        self.write_summaries(admitted.summaries).await;
        if admitted.write {
            self.record(event).await;
        }
    }

    /// Writes the summaries of windows that have ended.
    pub(super) async fn sweep_summaries(&self) {
        let due = self.inner.summaries.sweep(Instant::now());
        self.write_summaries(due).await;
    }

    /// Writes the summaries of every open window and stops summarising (at close).
    pub(super) async fn drain_summaries(&self) {
        let due = self.inner.summaries.drain(Instant::now());
        self.write_summaries(due).await;
    }

    async fn write_summaries(&self, summaries: Vec<Summary>) {
        for summary in summaries {
            counter!(RECORDS_SUMMARISED).increment(summary.count);
            tracing::info!(
                audit_id = %summary.event.audit_id,
                first = %summary.first,
                by = summary.kind,
                count = summary.count,
                "audit records summarised: refusals counted in one record"
            );
            self.record(&summary.event).await;
        }
    }
}

/// Closes ended windows every quarter window until the log is closed or every handle to it
/// is gone.
pub(super) async fn sweep_periodically(inner: Weak<Inner>, window: Duration) {
    let mut tick = tokio::time::interval((window / 4).max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let log = AuditLog { inner };
        if log.is_closing() {
            return;
        }
        log.sweep_summaries().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::tests::{config, lines, numbered};

    const W: Duration = WINDOW;

    fn refusal(i: usize, code: u16) -> Event<'static> {
        let mut event = numbered(i);
        event.response_code = code;
        event
    }

    fn user(name: &str) -> SummaryKey {
        SummaryKey::User(name.into())
    }

    fn address(a: &str) -> SummaryKey {
        SummaryKey::Address(a.into())
    }

    #[test]
    fn the_first_refusal_of_a_window_is_written_the_rest_counted_into_one_summary() {
        let s = Summaries::new(W, 8);
        let t0 = Instant::now();
        let first = refusal(0, 401);
        let a = s.admit(address("192.0.2.1"), &first, t0);
        assert!(a.write && a.summaries.is_empty());
        for i in 1..=5 {
            let code = if i % 2 == 0 { 429 } else { 401 };
            let a = s.admit(
                address("192.0.2.1"),
                &refusal(i, code),
                t0 + W / 10 * i as u32,
            );
            assert!(!a.write && a.summaries.is_empty(), "refusal {i}");
        }
        // Not yet: the window is open until a full window after its first refusal.
        assert!(s.sweep(t0 + W - Duration::from_millis(1)).is_empty());
        let due = s.sweep(t0 + W);
        assert_eq!(due.len(), 1);
        let summary = &due[0];
        assert_eq!(summary.count, 5);
        assert_eq!(summary.first, first.audit_id);
        assert_eq!(summary.kind, "address");
        let e = &summary.event;
        assert_ne!(e.audit_id, first.audit_id, "a summary has an ID of its own");
        assert_eq!(
            e.request_uri, first.request_uri,
            "the first request's details"
        );
        assert_eq!(e.response_code, 401);
        assert_eq!(e.annotations[SUMMARY], "true");
        assert_eq!(e.annotations[SUMMARY_OF], first.audit_id.as_str());
        assert_eq!(e.annotations[SUMMARY_COUNT], "5");
        assert_eq!(e.annotations[SUMMARY_CODES], "401=3,429=2");
        assert_eq!(e.annotations[SUMMARY_KEY], "address:192.0.2.1");
        assert!(e.annotations[SUMMARY_START] < e.annotations[SUMMARY_END]);
        assert_eq!(e.annotations["kubegate.io/rule"], "devs-read", "kept");
        assert_eq!(s.open_windows(), 0);
        // The next refusal opens a new window and is written in full.
        assert!(
            s.admit(address("192.0.2.1"), &refusal(9, 401), t0 + W)
                .write
        );
    }

    #[test]
    fn a_window_with_only_its_first_refusal_needs_no_summary() {
        let s = Summaries::new(W, 8);
        let t0 = Instant::now();
        assert!(s.admit(user("alice"), &refusal(0, 429), t0).write);
        assert!(s.sweep(t0 + W * 5).is_empty());
        assert_eq!(s.open_windows(), 0);
    }

    #[test]
    fn keys_have_windows_of_their_own_and_users_never_share_with_addresses() {
        let s = Summaries::new(W, 8);
        let t0 = Instant::now();
        // A user named like an address is still a user.
        for key in [
            user("alice"),
            user("bob"),
            address("192.0.2.1"),
            user("192.0.2.1"),
        ] {
            assert!(s.admit(key.clone(), &refusal(0, 429), t0).write, "{key:?}");
            assert!(!s.admit(key, &refusal(1, 429), t0).write);
        }
        let mut labels: Vec<_> = s
            .sweep(t0 + W)
            .iter()
            .map(|d| d.event.annotations[SUMMARY_KEY].clone())
            .collect();
        labels.sort();
        assert_eq!(
            labels,
            [
                "address:192.0.2.1",
                "user:192.0.2.1",
                "user:alice",
                "user:bob"
            ]
        );
    }

    #[test]
    fn a_refusal_after_its_window_ended_closes_it_before_the_sweep_does() {
        let s = Summaries::new(W, 8);
        let t0 = Instant::now();
        let first = refusal(0, 401);
        s.admit(user("alice"), &first, t0);
        s.admit(user("alice"), &refusal(1, 401), t0);
        let second = refusal(2, 429);
        let a = s.admit(user("alice"), &second, t0 + W * 3);
        assert!(a.write, "the new window's first refusal is written");
        assert_eq!(a.summaries.len(), 1);
        assert_eq!(a.summaries[0].first, first.audit_id);
        assert_eq!(a.summaries[0].count, 1);
        // Closed at most a window after it opened, however late it is written.
        let e = &a.summaries[0].event;
        let start = &e.annotations[SUMMARY_START];
        let end = &e.annotations[SUMMARY_END];
        assert!(start < end);
        s.admit(user("alice"), &refusal(3, 429), t0 + W * 3);
        let due = s.drain(t0 + W * 3);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].first, second.audit_id);
    }

    #[test]
    fn past_the_key_cap_refusals_fold_into_one_overflow_window() {
        let s = Summaries::new(W, 3);
        let t0 = Instant::now();
        for i in 0..3 {
            assert!(
                s.admit(address(&format!("192.0.2.{i}")), &refusal(i, 401), t0)
                    .write
            );
        }
        // The fourth and later addresses share one window: its first written, the rest counted.
        let overflow_first = refusal(3, 401);
        assert!(s.admit(address("192.0.2.3"), &overflow_first, t0).write);
        for i in 4..100 {
            let a = s.admit(address(&format!("192.0.2.{i}")), &refusal(i, 401), t0);
            assert!(!a.write);
        }
        // Keys that have a window keep it.
        assert!(!s.admit(address("192.0.2.0"), &refusal(100, 401), t0).write);
        assert_eq!(s.open_windows(), 4, "3 keys and the overflow");
        let due = s.sweep(t0 + W);
        let overflow: Vec<_> = due.iter().filter(|d| d.kind == "overflow").collect();
        assert_eq!(overflow.len(), 1);
        assert_eq!(overflow[0].count, 96);
        assert_eq!(overflow[0].first, overflow_first.audit_id);
        assert_eq!(overflow[0].event.annotations[SUMMARY_KEY], "overflow");
        assert_eq!(due.iter().map(|d| d.count).sum::<u64>(), 97);
    }

    #[test]
    fn a_full_map_makes_room_from_ended_windows_before_overflowing() {
        let s = Summaries::new(W, 2);
        let t0 = Instant::now();
        s.admit(user("a"), &refusal(0, 429), t0);
        s.admit(user("a"), &refusal(1, 429), t0);
        s.admit(user("b"), &refusal(2, 429), t0 + W / 2);
        // At t0 + W, a's window has ended (b's has not): c takes its place.
        let a = s.admit(user("c"), &refusal(3, 429), t0 + W);
        assert!(a.write);
        assert_eq!(a.summaries.len(), 1);
        assert_eq!(a.summaries[0].event.annotations[SUMMARY_KEY], "user:a");
        assert!(!s.admit(user("c"), &refusal(4, 429), t0 + W).write);
        assert_eq!(s.open_windows(), 2, "no overflow window");
    }

    #[test]
    fn drain_closes_every_window_and_later_refusals_are_written_in_full() {
        let s = Summaries::new(W, 2);
        let t0 = Instant::now();
        for i in 0..10 {
            s.admit(user(&format!("u{}", i % 5)), &refusal(i, 429), t0);
        }
        let due = s.drain(t0 + W / 2);
        assert_eq!(
            due.iter().map(|d| d.count).sum::<u64>(),
            10 - 3,
            "3 written in full"
        );
        assert_eq!(s.open_windows(), 0);
        for i in 0..3 {
            let a = s.admit(user("u0"), &refusal(i, 429), t0 + W / 2);
            assert!(a.write && a.summaries.is_empty());
        }
        assert!(s.drain(t0 + W).is_empty());
    }

    #[test]
    fn the_summary_of_the_largest_refusal_fits_the_record_bound_too() {
        let s = Summaries::new(W, 8);
        let t0 = Instant::now();
        let largest = crate::audit::record::tests::largest_refusal();
        let key = address("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff");
        for code in [400, 401, 429, 500, 401] {
            let mut event = largest.clone();
            event.response_code = code;
            s.admit(key.clone(), &event, t0);
        }
        let due = s.drain(t0 + W);
        let line = due[0].event.to_line();
        assert!(
            line.len() <= crate::audit::record::MAX_RECORD_WITHOUT_IDENTITY,
            "{} bytes",
            line.len()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_log_writes_summaries_when_windows_end_and_at_close() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::start(config(&path, 64)).unwrap();
        let first = refusal(0, 401);
        log.record_refusal(address("192.0.2.1"), &first).await;
        for i in 1..=50 {
            log.record_refusal(address("192.0.2.1"), &refusal(i, 401))
                .await;
        }
        let other = refusal(60, 429);
        log.record_refusal(user("bob"), &other).await;
        log.record_refusal(user("bob"), &refusal(61, 429)).await;
        // The periodic sweep writes the address's summary once its window is over...
        tokio::time::sleep(W + W / 2).await;
        // ...bob's too (same window), then bob is refused again: counted in a new window
        // that only the close will end.
        let late = refusal(70, 429);
        log.record_refusal(user("bob"), &late).await;
        log.record_refusal(user("bob"), &refusal(71, 429)).await;
        log.record_refusal(user("bob"), &refusal(72, 429)).await;
        let handle = log.clone();
        log.close().await.unwrap();
        assert_eq!(handle.lost(), 0);
        let records = lines(&path);
        let ids: Vec<_> = records
            .iter()
            .map(|r| r["auditID"].as_str().unwrap().to_string())
            .collect();
        // Full records: the three windows' first refusals; three summaries.
        assert_eq!(records.len(), 6, "{records:#?}");
        assert!(ids.contains(&first.audit_id.to_string()));
        assert!(ids.contains(&other.audit_id.to_string()));
        assert!(ids.contains(&late.audit_id.to_string()));
        let summaries: BTreeMap<String, String> = records
            .iter()
            .filter(|r| r["annotations"][SUMMARY] == "true")
            .map(|r| {
                let a = &r["annotations"];
                (
                    a[SUMMARY_OF].as_str().unwrap().to_string(),
                    a[SUMMARY_COUNT].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(
            summaries,
            BTreeMap::from([
                (first.audit_id.to_string(), "50".to_string()),
                (other.audit_id.to_string(), "1".to_string()),
                (late.audit_id.to_string(), "2".to_string()),
            ])
        );
        // The sweep wrote the first two before the late refusals arrived.
        let position = |id: &AuditId| ids.iter().position(|x| x == id.as_str()).unwrap();
        let summary_of_first = records
            .iter()
            .position(|r| r["annotations"][SUMMARY_OF] == first.audit_id.as_str())
            .unwrap();
        assert!(summary_of_first < position(&late.audit_id));
    }

    #[tokio::test(start_paused = true)]
    async fn the_sweeper_stops_with_the_last_handle() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::start(config(&path, 4)).unwrap();
        let weak = std::sync::Arc::downgrade(&log.inner);
        drop(log);
        tokio::time::sleep(W).await;
        assert!(
            weak.upgrade().is_none(),
            "the sweeper holds no handle between ticks"
        );
    }
}
