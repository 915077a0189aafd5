//! Verified tokens, remembered by their BLAKE3 digest so a busy client pays for the
//! signature check once.
//!
//! The cache holds a digest, never the token. An entry ends at the earlier of the token's
//! `exp` and the configured TTL, and is ignored as soon as its issuer's key set or claim
//! rules change (so a key the issuer revoked stops working at the next key refresh), or
//! its issuer is no longer the one in that place of the running issuer set (a reload
//! removed or replaced it).

use foldhash::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::Identity;

/// A token's digest.
pub(crate) type TokenDigest = [u8; 32];

/// The BLAKE3 digest of a token: collision-resistant like SHA-256 (a token that
/// collided with another user's would be handed their identity), and computed on every
/// request, where SHA-256 without the CPU's SHA extensions cost 7% of a request's
/// instructions and BLAKE3 a fraction of that.
pub(crate) fn digest_of(token: &str) -> TokenDigest {
    *blake3::hash(token.as_bytes()).as_bytes()
}

struct Entry {
    identity: Arc<Identity>,
    /// Seconds since the epoch after which the entry is void.
    until: u64,
    /// The verifier's place in the issuer set, and its [`super::IssuerVerifier::id`].
    issuer: usize,
    issuer_id: u64,
    generation: u64,
}

/// When the cache is full of live entries, about 1/this of them (those ending soonest)
/// make room.
const EVICT_FRACTION: usize = 8;

/// A bounded map from token digest to verified identity.
pub(crate) struct TokenCache {
    ttl: Duration,
    capacity: usize,
    entries: Mutex<HashMap<TokenDigest, Entry>>,
}

impl TokenCache {
    pub(crate) fn new(ttl: Duration, capacity: usize) -> Self {
        TokenCache {
            ttl,
            // At least one: the eviction below picks from a full, so non-empty, map.
            capacity: capacity.max(1),
            entries: Mutex::new(HashMap::default()),
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        !self.ttl.is_zero()
    }

    /// The identity for `digest`, if it has not expired and `current(place)`, the id and
    /// generation of the verifier now in that place of the issuer set, are the ones that
    /// verified it.
    pub(crate) fn get(
        &self,
        digest: &TokenDigest,
        current: impl Fn(usize) -> Option<(u64, u64)>,
    ) -> Option<Arc<Identity>> {
        let now = now_secs();
        let mut entries = self.entries.lock().ok()?;
        let entry = entries.get(digest)?;
        if entry.until > now && current(entry.issuer) == Some((entry.issuer_id, entry.generation)) {
            return Some(entry.identity.clone());
        }
        entries.remove(digest);
        None
    }

    pub(crate) fn insert(
        &self,
        digest: TokenDigest,
        identity: Arc<Identity>,
        expires_at: u64,
        (issuer, issuer_id, generation): (usize, u64, u64),
    ) {
        let until = expires_at.min(now_secs().saturating_add(self.ttl.as_secs()));
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if entries.len() >= self.capacity {
            let now = now_secs();
            entries.retain(|_, e| e.until > now);
            // Still full of live entries: drop the eighth that ends soonest, rather than
            // grow or start over (which would make every user of a busy gateway pay a
            // signature check at once). One scan per capacity/8 inserts.
            if entries.len() >= self.capacity {
                let mut ends: Vec<u64> = entries.values().map(|e| e.until).collect();
                let cut = ends.len() / EVICT_FRACTION;
                let (_, threshold, _) = ends.select_nth_unstable(cut);
                let threshold = *threshold;
                entries.retain(|_, e| e.until > threshold);
            }
        }
        entries.insert(
            digest,
            Entry {
                identity,
                until,
                issuer,
                issuer_id,
                generation,
            },
        );
    }

    /// Drops every entry whose verifier `keep` does not name: after a reload, entries of
    /// removed or replaced issuers could never be used again.
    pub(crate) fn retain_issuers(&self, keep: impl Fn(u64) -> bool) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.retain(|_, e| keep(e.issuer_id));
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str) -> Arc<Identity> {
        Arc::new(Identity::new(name, Vec::<String>::new()))
    }

    #[test]
    fn hits_until_expiry_or_key_change() {
        let cache = TokenCache::new(Duration::from_secs(60), 10);
        let d = digest_of("token-a");
        cache.insert(d, id("a"), now_secs() + 3600, (0, 3, 7));
        assert_eq!(cache.get(&d, |_| Some((3, 7))).unwrap().user, "a");
        assert!(
            cache.get(&d, |_| Some((3, 8))).is_none(),
            "new keys void old verdicts"
        );
        assert!(
            cache.get(&d, |_| Some((3, 7))).is_none(),
            "and the entry is gone"
        );

        let expired = digest_of("token-b");
        cache.insert(expired, id("b"), now_secs() - 1, (0, 3, 7));
        assert!(
            cache.get(&expired, |_| Some((3, 7))).is_none(),
            "never past exp"
        );
    }

    #[test]
    fn a_verdict_ends_with_its_verifier() {
        let cache = TokenCache::new(Duration::from_secs(60), 10);
        let d = digest_of("token-a");
        // Another verifier in that place (a reload replaced it), or none at all.
        cache.insert(d, id("a"), now_secs() + 3600, (1, 3, 7));
        assert!(cache.get(&d, |_| Some((4, 7))).is_none());
        cache.insert(d, id("a"), now_secs() + 3600, (1, 3, 7));
        assert!(cache.get(&d, |_| None).is_none());

        cache.insert(d, id("a"), now_secs() + 3600, (1, 3, 7));
        let other = digest_of("token-b");
        cache.insert(other, id("b"), now_secs() + 3600, (0, 5, 1));
        cache.retain_issuers(|issuer| issuer == 5);
        assert_eq!(cache.len(), 1);
        assert!(cache.get(&other, |_| Some((5, 1))).is_some());
    }

    #[test]
    fn stays_bounded() {
        let cache = TokenCache::new(Duration::from_secs(60), 4);
        for i in 0..100 {
            cache.insert(
                digest_of(&i.to_string()),
                id("x"),
                now_secs() + 60,
                (0, 0, 0),
            );
            assert!(cache.len() <= 4);
        }
    }

    #[test]
    fn digests_differ_per_token() {
        assert_ne!(digest_of("a"), digest_of("b"));
        assert_eq!(digest_of("a"), digest_of("a"));
    }

    #[test]
    fn a_full_cache_drops_the_entries_ending_soonest_not_all() {
        let cache = TokenCache::new(Duration::from_secs(3600), 16);
        let now = now_secs();
        for i in 0..16u8 {
            // Entry i ends i minutes from now plus ten.
            let ends = now + 600 + u64::from(i) * 60;
            cache.insert([i; 32], id(&format!("u{i}")), ends, (0, 1, 1));
        }
        assert_eq!(cache.len(), 16);
        cache.insert([99; 32], id("new"), now + 3000, (0, 1, 1));
        let current = |_| Some((1, 1));
        assert!(
            cache.get(&[99; 32], current).is_some(),
            "the new entry is kept"
        );
        // The three ending soonest (an eighth, and the one at the cut) made room; every
        // other user keeps their entry.
        assert!(cache.get(&[0; 32], current).is_none());
        assert!(cache.get(&[1; 32], current).is_none());
        assert!(cache.get(&[2; 32], current).is_none());
        for i in 3..16u8 {
            assert!(
                cache.get(&[i; 32], current).is_some(),
                "entry {i} was dropped"
            );
        }
        assert!(cache.len() >= 14);
    }

    #[test]
    fn a_zero_capacity_holds_one_entry_instead_of_panicking() {
        let cache = TokenCache::new(Duration::from_secs(60), 0);
        let now = now_secs();
        for i in 0..3u8 {
            cache.insert([i; 32], id("u"), now + 600, (0, 1, 1));
        }
        assert_eq!(cache.len(), 1);
    }
}
