//! Admission control: who may start another request now.
//!
//! - Each identity has a token bucket (governor's GCRA) with a default quota and
//!   per-user or per-group overrides; one noisy user drains only their own bucket.
//! - Per client IP, requests whose credential still needs checking (no token, or a token
//!   not in the verified cache) draw from a separate bucket *before* any signature check
//!   or key fetch runs, so token guessing and kid floods are bounded per source.
//! - Every request draws one token from its identity's bucket, a long-running one (watch,
//!   exec, port-forward, log follow) when it starts: opening a watch costs the API server
//!   a list, so watch churn is metered like listing, while a watch that stays open costs
//!   nothing more.
//! - Concurrency is capped in total and per identity; long-running requests are counted
//!   by caps of their own, so open `kubectl get -w` sessions never starve a user's
//!   request slots.
//!
//! The rate limiters are generic over governor's clock, so tests drive time by hand.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use foldhash::HashMap;
use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use kubegate_config::{Limits, Rate, RateSubject};

use crate::error::GatewayError;
use crate::pipeline::kind::RequestKind;

type Keyed<K, C> =
    RateLimiter<K, DefaultKeyedStateStore<K>, C, NoOpMiddleware<<C as Clock>::Instant>>;

fn quota(rate: Rate) -> Quota {
    Quota::per_second(rate.per_second).allow_burst(rate.burst)
}

/// Which limit refused a request: the `limit` label of `kubegate_rate_limited_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// The identity's request quota.
    User,
    /// The client address's budget for credential checks.
    Address,
    /// A concurrency cap (in total or per identity).
    Concurrency,
}

impl Limit {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Limit::User => "user",
            Limit::Address => "address",
            Limit::Concurrency => "concurrency",
        }
    }
}

/// Admission state for one gateway.
pub struct Admission<C: Clock = DefaultClock> {
    clock: C,
    /// `[0]` is the default quota; then one limiter per override, in config order.
    buckets: Vec<Keyed<String, C>>,
    overrides: Vec<(RateSubject, usize)>,
    unauthenticated: Keyed<IpAddr, C>,
    ipv6_prefix_length: u8,
    requests: Counter,
    streams: Counter,
}

/// Holds a concurrency slot until dropped.
#[must_use = "the slot is released when this is dropped"]
pub struct Permit {
    counter: Arc<CounterInner>,
    user: Arc<str>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Ok(mut state) = self.counter.state.lock() {
            state.total = state.total.saturating_sub(1);
            if let Some(mine) = state.per_user.get_mut(&*self.user) {
                mine.count -= 1;
                if mine.count == 0 {
                    state.per_user.remove(&*self.user);
                }
            }
        }
    }
}

#[derive(Clone)]
struct Counter(Arc<CounterInner>);

struct CounterInner {
    max_total: u32,
    max_per_user: u32,
    state: Mutex<CounterState>,
}

/// One user's requests in flight, with the name the map is keyed by.
struct UserCount {
    name: Arc<str>,
    count: u32,
}

#[derive(Default)]
struct CounterState {
    total: u32,
    /// In flight per user. The name is shared with each [`Permit`]: a request whose user
    /// already has one in flight allocates nothing here.
    per_user: HashMap<Arc<str>, UserCount>,
}

impl Counter {
    fn new(max_total: u32, max_per_user: u32) -> Self {
        Counter(Arc::new(CounterInner {
            max_total,
            max_per_user,
            state: Mutex::new(CounterState::default()),
        }))
    }

    fn acquire(&self, user: &str, what: &'static str) -> Result<Permit, GatewayError> {
        let inner = &self.0;
        let mut state = inner
            .state
            .lock()
            .map_err(|_| GatewayError::Internal("admission state poisoned".into()))?;
        if state.total >= inner.max_total {
            return Err(GatewayError::TooManyRequests {
                limit: Limit::Concurrency,
                message: format!(
                    "the gateway is at its limit of {} concurrent {what}",
                    inner.max_total
                ),
                retry_after: Duration::from_secs(1),
            });
        }
        let state = &mut *state;
        let mine = state.per_user.get_mut(user);
        if mine.as_ref().map_or(0, |m| m.count) >= inner.max_per_user {
            return Err(GatewayError::TooManyRequests {
                limit: Limit::Concurrency,
                message: format!(
                    "you are at your limit of {} concurrent {what}",
                    inner.max_per_user
                ),
                retry_after: Duration::from_secs(1),
            });
        }
        state.total += 1;
        let user = match mine {
            Some(mine) => {
                mine.count += 1;
                mine.name.clone()
            }
            None => {
                let name: Arc<str> = Arc::from(user);
                let count = UserCount {
                    name: name.clone(),
                    count: 1,
                };
                state.per_user.insert(name.clone(), count);
                name
            }
        };
        Ok(Permit {
            counter: inner.clone(),
            user,
        })
    }
}

impl Admission<DefaultClock> {
    /// Admission for `limits` on the real clock.
    pub fn new(limits: &Limits) -> Self {
        Self::with_clock(limits, DefaultClock::default())
    }
}

impl<C> Admission<C>
where
    C: Clock + Clone,
    C::Instant: Reference,
{
    /// Admission for `limits` on `clock`.
    pub fn with_clock(limits: &Limits, clock: C) -> Self {
        let keyed = |rate: Rate| {
            RateLimiter::new(
                quota(rate),
                DefaultKeyedStateStore::default(),
                clock.clone(),
            )
        };
        let mut buckets = vec![keyed(limits.rate)];
        let mut overrides = Vec::new();
        for o in &limits.overrides {
            overrides.push((o.subject.clone(), buckets.len()));
            buckets.push(keyed(o.rate));
        }
        Admission {
            unauthenticated: RateLimiter::new(
                quota(limits.unauthenticated_rate),
                DefaultKeyedStateStore::default(),
                clock.clone(),
            ),
            ipv6_prefix_length: limits.ipv6_prefix_length,
            clock,
            buckets,
            overrides,
            requests: Counter::new(limits.max_in_flight, limits.max_in_flight_per_user),
            streams: Counter::new(limits.max_streams, limits.max_streams_per_user),
        }
    }

    /// Charges unauthenticated work (a credential that still needs checking) to `ip`'s
    /// address (an IPv6 address by its prefix: [`crate::listener::address_key`]).
    pub fn check_unauthenticated(&self, ip: IpAddr) -> Result<(), GatewayError> {
        self.unauthenticated
            .check_key(&crate::listener::address_key(ip, self.ipv6_prefix_length))
            .map_err(|not_until| GatewayError::TooManyRequests {
                limit: Limit::Address,
                message: "too many unauthenticated requests from your address".into(),
                retry_after: not_until.wait_time_from(self.clock.now()),
            })
    }

    /// Admits a request from `user` in `groups`: a rate-bucket token (every request,
    /// long-running ones when they start: a watch costs the API server a list) and a
    /// concurrency slot of the kind's cap, held until the returned permit is dropped.
    pub fn admit(
        &self,
        user: &str,
        groups: &[String],
        kind: RequestKind,
    ) -> Result<Permit, GatewayError> {
        let bucket = &self.buckets[self.bucket_for(user, groups)];
        bucket
            .check_key(&user.to_string())
            .map_err(|not_until| GatewayError::TooManyRequests {
                limit: Limit::User,
                message: "you are over your request quota".into(),
                retry_after: not_until.wait_time_from(self.clock.now()),
            })?;
        if kind.is_long_running() {
            self.streams.acquire(user, "streams")
        } else {
            self.requests.acquire(user, "requests")
        }
    }

    /// The bucket index for an identity: a user override first, then a group override,
    /// then the default.
    fn bucket_for(&self, user: &str, groups: &[String]) -> usize {
        let by_user = self
            .overrides
            .iter()
            .find(|(s, _)| matches!(s, RateSubject::User(u) if u == user));
        let by_group = || {
            self.overrides
                .iter()
                .find(|(s, _)| matches!(s, RateSubject::Group(g) if groups.contains(g)))
        };
        by_user.or_else(by_group).map_or(0, |(_, i)| *i)
    }

    /// Forgets buckets that are full again, so the key maps do not grow with every user
    /// and address ever seen. Called periodically.
    pub fn prune(&self) {
        for b in &self.buckets {
            b.retain_recent();
            b.shrink_to_fit();
        }
        self.unauthenticated.retain_recent();
        self.unauthenticated.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;
    use kubegate_config::RateOverride;
    use std::num::NonZeroU32;

    fn rate(per_second: u32, burst: u32) -> Rate {
        let nz = |n: u32| NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
        Rate {
            per_second: nz(per_second),
            burst: nz(burst),
        }
    }

    fn limits() -> Limits {
        Limits {
            rate: rate(1, 3),
            unauthenticated_rate: rate(1, 2),
            max_in_flight: 100,
            max_in_flight_per_user: 2,
            max_streams: 100,
            max_streams_per_user: 1,
            ..Limits::default()
        }
    }

    fn groups(g: &[&str]) -> Vec<String> {
        g.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_noisy_user_never_starves_another() {
        let clock = FakeRelativeClock::default();
        let a = Admission::with_clock(&limits(), clock.clone());
        // Mallory spends her burst and is refused from then on.
        for _ in 0..3 {
            drop(a.admit("mallory", &[], RequestKind::Ordinary).unwrap());
        }
        for _ in 0..100 {
            let err = a
                .admit("mallory", &[], RequestKind::Ordinary)
                .err()
                .unwrap();
            assert!(matches!(err, GatewayError::TooManyRequests { .. }));
        }
        // Alice is untouched by Mallory's flood.
        for _ in 0..3 {
            drop(a.admit("alice", &[], RequestKind::Ordinary).unwrap());
        }
        // A second later Mallory has one more token, no more.
        clock.advance(Duration::from_secs(1));
        drop(a.admit("mallory", &[], RequestKind::Ordinary).unwrap());
        assert!(a.admit("mallory", &[], RequestKind::Ordinary).is_err());
    }

    #[test]
    fn retry_after_says_when_the_next_token_comes() {
        let clock = FakeRelativeClock::default();
        let a = Admission::with_clock(&limits(), clock.clone());
        for _ in 0..3 {
            drop(a.admit("bob", &[], RequestKind::Ordinary).unwrap());
        }
        clock.advance(Duration::from_millis(400));
        match a.admit("bob", &[], RequestKind::Ordinary) {
            Err(GatewayError::TooManyRequests { retry_after, .. }) => {
                assert_eq!(retry_after, Duration::from_millis(600));
            }
            _ => panic!("expected 429"),
        }
    }

    #[test]
    fn overrides_by_user_then_group() {
        let mut l = limits();
        l.overrides = vec![
            RateOverride {
                subject: RateSubject::Group("ci".into()),
                rate: rate(1, 10),
            },
            RateOverride {
                subject: RateSubject::User("slow".into()),
                rate: rate(1, 1),
            },
        ];
        let a = Admission::with_clock(&l, FakeRelativeClock::default());
        for _ in 0..10 {
            drop(
                a.admit("bot", &groups(&["ci"]), RequestKind::Ordinary)
                    .unwrap(),
            );
        }
        assert!(
            a.admit("bot", &groups(&["ci"]), RequestKind::Ordinary)
                .is_err()
        );
        // The user entry wins over the group entry.
        drop(
            a.admit("slow", &groups(&["ci"]), RequestKind::Ordinary)
                .unwrap(),
        );
        assert!(
            a.admit("slow", &groups(&["ci"]), RequestKind::Ordinary)
                .is_err()
        );
    }

    #[test]
    fn concurrency_caps_per_user_and_streams_apart() {
        let a = Admission::with_clock(
            &Limits {
                rate: rate(1000, 1000),
                ..limits()
            },
            FakeRelativeClock::default(),
        );
        let p1 = a.admit("alice", &[], RequestKind::Ordinary).unwrap();
        let _p2 = a.admit("alice", &[], RequestKind::Ordinary).unwrap();
        assert!(
            a.admit("alice", &[], RequestKind::Ordinary).is_err(),
            "two at once"
        );
        // A stream is counted apart, by its own cap.
        let s1 = a.admit("alice", &[], RequestKind::Watch).unwrap();
        assert!(
            a.admit("alice", &[], RequestKind::Watch).is_err(),
            "one stream at once"
        );
        drop(p1);
        drop(a.admit("alice", &[], RequestKind::Ordinary).unwrap());
        drop(s1);
        drop(a.admit("alice", &[], RequestKind::Watch).unwrap());
    }

    #[test]
    fn opening_streams_draws_from_the_rate_quota() {
        let clock = FakeRelativeClock::default();
        let a = Admission::with_clock(
            &Limits {
                max_streams_per_user: 100,
                ..limits()
            },
            clock.clone(),
        );
        // Watch churn: open and drop at once. The burst of 3 is spent, then 429.
        for _ in 0..3 {
            drop(a.admit("churner", &[], RequestKind::Watch).unwrap());
        }
        match a.admit("churner", &[], RequestKind::Watch) {
            Err(GatewayError::TooManyRequests { limit, .. }) => assert_eq!(limit, Limit::User),
            other => panic!("expected 429, got {:?}", other.err()),
        }
        // Streams and requests share the one quota.
        assert!(a.admit("churner", &[], RequestKind::Ordinary).is_err());
        clock.advance(Duration::from_secs(1));
        drop(a.admit("churner", &[], RequestKind::Watch).unwrap());
    }

    #[test]
    fn unauthenticated_work_is_bounded_per_address() {
        let clock = FakeRelativeClock::default();
        let a = Admission::with_clock(&limits(), clock.clone());
        let attacker: IpAddr = [10, 0, 0, 1].into();
        let other: IpAddr = [10, 0, 0, 2].into();
        assert!(a.check_unauthenticated(attacker).is_ok());
        assert!(a.check_unauthenticated(attacker).is_ok());
        assert!(a.check_unauthenticated(attacker).is_err());
        assert!(a.check_unauthenticated(other).is_ok());
        clock.advance(Duration::from_secs(1));
        assert!(a.check_unauthenticated(attacker).is_ok());
    }

    #[test]
    fn an_ipv6_prefix_shares_one_unauthenticated_budget() {
        let a = Admission::with_clock(&limits(), FakeRelativeClock::default());
        let host = |last: u16| IpAddr::from([0x2001, 0xdb8, 0, 1, 0, 0, 0, last]);
        assert!(a.check_unauthenticated(host(1)).is_ok());
        assert!(a.check_unauthenticated(host(2)).is_ok());
        assert!(a.check_unauthenticated(host(3)).is_err(), "same /64");
        let next_prefix = IpAddr::from([0x2001, 0xdb8, 0, 2, 0, 0, 0, 1]);
        assert!(a.check_unauthenticated(next_prefix).is_ok());
    }

    #[test]
    fn pruning_forgets_idle_keys() {
        let clock = FakeRelativeClock::default();
        let a = Admission::with_clock(&limits(), clock.clone());
        for i in 0..50 {
            drop(
                a.admit(&format!("user{i}"), &[], RequestKind::Ordinary)
                    .unwrap(),
            );
        }
        assert_eq!(a.buckets[0].len(), 50);
        clock.advance(Duration::from_secs(60));
        a.prune();
        assert_eq!(a.buckets[0].len(), 0);
    }
}
