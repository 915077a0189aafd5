//! The audit event: the Kubernetes API server's `audit.k8s.io/v1` `Event` at level
//! `Metadata`, its audit ID, and its wire form (field names, omitted empties, RFC 3339
//! timestamps with microseconds), so kubegate's records read like the API server's.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use kubegate_policy::ForwardIdentity;
use serde::{Serialize, Serializer};

use crate::authn::Identity;
use crate::ip_text::IpText;

mod line;

/// A request's audit ID: a random (version 4) UUID in lowercase hex,
/// `xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx`, held inline: every request copies it into its
/// record, its log line and two headers, and a `String` was one more allocation each time.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AuditId(pub(super) [u8; 36]);

impl AuditId {
    /// A fresh ID, random-looking and unique.
    ///
    /// Audit IDs need to be unique, not secret: the API server even takes one a client
    /// sends. So the system RNG (aws-lc-rs, 2.4k instructions a call, 1.5% of a cached
    /// request) only seeds each thread once; each ID is then a counter mixed through a
    /// bijection, so one thread never repeats an ID and threads differ by their keys.
    pub fn new() -> Self {
        Self::from_random(IDS.with(|ids| {
            let (keys, counter) = ids.get().unwrap_or_else(seed);
            ids.set(Some((keys, counter.wrapping_add(1))));
            let mut bytes = [0u8; 16];
            bytes[..8].copy_from_slice(&mix(counter ^ keys[0]).to_be_bytes());
            bytes[8..].copy_from_slice(&mix(counter.wrapping_add(keys[1])).to_be_bytes());
            bytes
        }))
    }

    /// Formats 16 random bytes as a version 4, variant 1 UUID.
    pub(super) fn from_random(mut bytes: [u8; 16]) -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        bytes[6] = (bytes[6] & 0x0f) | 0x40;
        bytes[8] = (bytes[8] & 0x3f) | 0x80;
        let mut out = [b'-'; 36];
        let mut at = 0;
        for (i, byte) in bytes.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                at += 1;
            }
            out[at] = HEX[usize::from(byte >> 4)];
            out[at + 1] = HEX[usize::from(byte & 0x0f)];
            at += 2;
        }
        AuditId(out)
    }

    /// The ID as text, e.g. for an `Audit-ID` response header.
    pub fn as_str(&self) -> &str {
        // Only hex digits and dashes are ever written (`from_random`).
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Debug for AuditId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("AuditId").field(&self.as_str()).finish()
    }
}

thread_local! {
    /// This thread's audit-ID keys and counter, seeded on first use.
    static IDS: std::cell::Cell<Option<([u64; 2], u64)>> = const { std::cell::Cell::new(None) };
}

/// Two keys and a starting counter from the system RNG, or from the clock and a
/// process-wide counter if it fails (IDs stay unique; TLS is in trouble anyway).
fn seed() -> ([u64; 2], u64) {
    let mut bytes = [0u8; 24];
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        tracing::error!(
            "the system random generator failed; audit IDs fall back to clock and counter"
        );
        // Two draws: the counter in them makes the keys and the start differ.
        bytes[..16].copy_from_slice(&fallback_bytes());
        bytes[16..].copy_from_slice(&fallback_bytes()[8..]);
    }
    let word = |i: usize| u64::from_be_bytes(bytes[i..i + 8].try_into().unwrap_or_default());
    ([word(0), word(8)], word(16))
}

/// SplitMix64's finalizer: a bijection on 64-bit words that scatters consecutive inputs.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Sixteen bytes from the clock, the process id and a process-wide counter: unique, for
/// when the system RNG fails.
pub(super) fn fallback_bytes() -> [u8; 16] {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let low = count ^ (u64::from(std::process::id()) << 32);
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&(nanos as u64).to_be_bytes());
    bytes[8..].copy_from_slice(&low.to_be_bytes());
    bytes
}

impl Default for AuditId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for AuditId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for AuditId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// The stage of the request an event describes (the API server's names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Stage {
    /// Response headers sent, body still streaming (watches, long-running requests).
    ResponseStarted,
    /// The response is complete.
    ResponseComplete,
}

/// A user as the audit log shows it (`authentication.k8s.io/v1` `UserInfo`): a view of
/// the caller's [`Identity`] or of the [`ForwardIdentity`] it was forwarded as, borrowed
/// while a record is serialized.
#[derive(Serialize)]
pub(super) struct UserInfo<'a> {
    username: &'a str,
    /// Omitted when absent or empty.
    #[serde(skip_serializing_if = "is_none_or_empty")]
    uid: Option<&'a str>,
    /// Omitted when empty.
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    groups: &'a [String],
    /// Omitted when empty.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    extra: &'a BTreeMap<String, Vec<String>>,
}

impl<'a> From<&'a Identity> for UserInfo<'a> {
    fn from(i: &'a Identity) -> Self {
        UserInfo {
            username: &i.user,
            uid: i.uid.as_deref(),
            groups: &i.groups,
            extra: &i.extra,
        }
    }
}

impl<'a> From<&'a ForwardIdentity> for UserInfo<'a> {
    fn from(f: &'a ForwardIdentity) -> Self {
        UserInfo {
            username: &f.user,
            uid: f.uid.as_deref(),
            groups: &f.groups,
            extra: &f.extra,
        }
    }
}

fn is_none_or_empty(value: &Option<&str>) -> bool {
    value.is_none_or(str::is_empty)
}

/// The object a resource request addresses; empty strings are omitted like the API
/// server's `omitempty`. Borrowed from the request's attributes while its record is
/// written, owned by a record that outlives the request (see [`Event`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef<'a> {
    /// Resource, e.g. `pods`.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub resource: Cow<'a, str>,
    /// Namespace, empty for cluster-scoped resources.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub namespace: Cow<'a, str>,
    /// Object name, empty for collections.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub name: Cow<'a, str>,
    /// API group, empty for the core group.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub api_group: Cow<'a, str>,
    /// API version, e.g. `v1`.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub api_version: Cow<'a, str>,
    /// Subresource, e.g. `log` or `exec`.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub subresource: Cow<'a, str>,
}

impl ObjectRef<'_> {
    fn into_owned(self) -> ObjectRef<'static> {
        ObjectRef {
            resource: owned(self.resource),
            namespace: owned(self.namespace),
            name: owned(self.name),
            api_group: owned(self.api_group),
            api_version: owned(self.api_version),
            subresource: owned(self.subresource),
        }
    }
}

fn owned(text: Cow<'_, str>) -> Cow<'static, str> {
    Cow::Owned(text.into_owned())
}

/// A record's annotations (`kubegate.io/...`), sorted by key as the API server writes
/// them. The keys are the gateway's own names; the values may borrow from the request.
pub type Annotations<'a> = BTreeMap<Cow<'static, str>, Cow<'a, str>>;

/// One audit record. Serializes (see [`Serialize`]) as an `audit.k8s.io/v1` `Event` at
/// level `Metadata`. It holds no credential.
///
/// An ordinary request's record borrows its text from the request (its facts, attributes
/// and decision) for the moment it is written, so writing it allocates nothing but the
/// line; a record that outlives the request (a long-running response's final record, the
/// first refusal of a summary window) is made [`into_owned`](Self::into_owned).
#[derive(Clone, Debug)]
pub struct Event<'a> {
    /// Unique per request; also sent to the client as `Audit-ID`.
    pub audit_id: AuditId,
    /// Which stage this record describes.
    pub stage: Stage,
    /// Path plus `?` and query, as received.
    pub request_uri: Cow<'a, str>,
    /// Kubernetes verb (`get`, `list`, `watch`, ...) or the lower-case HTTP method for
    /// non-resource requests.
    pub verb: Cow<'a, str>,
    /// The authenticated user; `None` (field omitted) when authentication failed.
    pub user: Option<Arc<Identity>>,
    /// The identity the gateway forwarded upstream; `None` when nothing was forwarded.
    pub impersonated_user: Option<Arc<ForwardIdentity>>,
    /// The client's address (`sourceIPs`, a list of one); the gateway trusts no
    /// forwarding header, so it knows no other.
    pub source_ip: Option<IpAddr>,
    /// The client's `User-Agent`; omitted when absent or empty.
    pub user_agent: Option<Cow<'a, str>>,
    /// The object addressed, for resource requests.
    pub object_ref: Option<ObjectRef<'a>>,
    /// HTTP status code of the response.
    pub response_code: u16,
    /// When the gateway received the request.
    pub request_received: SystemTime,
    /// When this stage was reached.
    pub stage_time: SystemTime,
    /// `kubegate.io/...` annotations (decision, rule, latency); omitted when empty.
    pub annotations: Annotations<'a>,
}

/// The wire form of [`Event`], in the API server's field names and order.
#[derive(Serialize)]
struct WireEvent<'a> {
    kind: &'static str,
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    level: &'static str,
    #[serde(rename = "auditID")]
    audit_id: &'a AuditId,
    stage: Stage,
    #[serde(rename = "requestURI")]
    request_uri: &'a str,
    verb: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<UserInfo<'a>>,
    #[serde(rename = "impersonatedUser", skip_serializing_if = "Option::is_none")]
    impersonated_user: Option<UserInfo<'a>>,
    #[serde(
        rename = "sourceIPs",
        skip_serializing_if = "Option::is_none",
        serialize_with = "list_of_one"
    )]
    source_ip: Option<IpAddr>,
    #[serde(rename = "userAgent", skip_serializing_if = "Option::is_none")]
    user_agent: Option<&'a str>,
    #[serde(rename = "objectRef", skip_serializing_if = "Option::is_none")]
    object_ref: Option<&'a ObjectRef<'a>>,
    #[serde(rename = "responseStatus")]
    response_status: ResponseStatus,
    #[serde(rename = "requestReceivedTimestamp")]
    request_received: Timestamp,
    #[serde(rename = "stageTimestamp")]
    stage_time: Timestamp,
    #[serde(skip_serializing_if = "is_empty_map")]
    annotations: Cow<'a, Annotations<'a>>,
}

fn is_empty_map(map: &Annotations<'_>) -> bool {
    map.is_empty()
}

/// `sourceIPs`: the one address, as a list.
fn list_of_one<S: Serializer>(ip: &Option<IpAddr>, serializer: S) -> Result<S::Ok, S::Error> {
    let texts = ip.map(IpText::new);
    serializer.collect_seq(texts.iter().map(IpText::as_str))
}

#[derive(Serialize)]
struct ResponseStatus {
    metadata: EmptyObject,
    code: u16,
}

/// Serializes as `{}`.
#[derive(Serialize)]
struct EmptyObject {}

impl Serialize for Event<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.wire(false).serialize(serializer)
    }
}

impl Event<'_> {
    /// The record with everything it borrowed copied, to outlive the request.
    pub fn into_owned(self) -> Event<'static> {
        Event {
            audit_id: self.audit_id,
            stage: self.stage,
            request_uri: owned(self.request_uri),
            verb: owned(self.verb),
            user: self.user,
            impersonated_user: self.impersonated_user,
            source_ip: self.source_ip,
            user_agent: self.user_agent.map(owned),
            object_ref: self.object_ref.map(ObjectRef::into_owned),
            response_code: self.response_code,
            request_received: self.request_received,
            stage_time: self.stage_time,
            annotations: self
                .annotations
                .into_iter()
                .map(|(key, value)| (key, owned(value)))
                .collect(),
        }
    }

    /// The wire form; with `omit_user_info`, without `user` and `impersonatedUser`, and
    /// a summary's `user:<name>` key cut to `user`.
    fn wire(&self, omit_user_info: bool) -> WireEvent<'_> {
        let mut annotations = Cow::Borrowed(&self.annotations);
        if omit_user_info
            && let Some(key) = self.annotations.get(super::summary::SUMMARY_KEY)
            && let Some((kind, _name)) = key.split_once(':')
            && kind == "user"
        {
            annotations
                .to_mut()
                .insert(super::summary::SUMMARY_KEY.into(), kind.into());
        }
        WireEvent {
            kind: "Event",
            api_version: "audit.k8s.io/v1",
            level: "Metadata",
            audit_id: &self.audit_id,
            stage: self.stage,
            request_uri: &self.request_uri,
            verb: &self.verb,
            user: (!omit_user_info)
                .then(|| self.user.as_deref().map(UserInfo::from))
                .flatten(),
            impersonated_user: (!omit_user_info)
                .then(|| self.impersonated_user.as_deref().map(UserInfo::from))
                .flatten(),
            source_ip: self.source_ip,
            user_agent: self.user_agent.as_deref().filter(|ua| !ua.is_empty()),
            object_ref: self.object_ref.as_ref(),
            response_status: ResponseStatus {
                metadata: EmptyObject {},
                code: self.response_code,
            },
            request_received: Timestamp(self.request_received),
            stage_time: Timestamp(self.stage_time),
            annotations,
        }
    }

    /// The event as one JSON object followed by `\n`.
    #[cfg(test)]
    pub(super) fn to_line(&self) -> Vec<u8> {
        self.line(false)
    }

    /// [`to_line`](Self::to_line), leaving out who made the request when
    /// `omit_user_info` (`[audit] omit_user_info`).
    pub(super) fn line(&self, omit_user_info: bool) -> Vec<u8> {
        // Sized for a typical line, so it is written without the three reallocations and
        // copies of growing from serde_json's 128 bytes.
        let mut line = Vec::with_capacity(LINE_CAPACITY);
        self.wire(omit_user_info).write_json(&mut line);
        line.push(b'\n');
        line
    }
}

/// The room an audit line is written into at first: a typical line is about 710 bytes.
/// Below 1,008 on purpose: glibc serves larger requests from its large bins, and each
/// such malloc first consolidates every free small chunk (1,775 instructions a line).
const LINE_CAPACITY: usize = 1000;

/// RFC 3339 in UTC with microseconds, `2026-11-28T12:00:00.123456Z`, truncated like the
/// API server's `MicroTime`.
pub(super) struct Timestamp(pub(super) SystemTime);

impl Timestamp {
    /// Whole seconds since the epoch and the microseconds past them, floored.
    fn seconds_and_micros(&self) -> (i64, i64) {
        match self.0.duration_since(UNIX_EPOCH) {
            // Every real clock reading: 64-bit arithmetic only (two timestamps on every
            // audit line; 128-bit division cost more than the rest of the rendering).
            Ok(after) => (
                i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
                i64::from(after.subsec_micros()),
            ),
            // Before 1970: floored to the microsecond, like the API server's `MicroTime`.
            Err(before) => {
                let micros = (-(before.duration().as_nanos() as i128)).div_euclid(1_000);
                (
                    i64::try_from(micros.div_euclid(1_000_000)).unwrap_or(i64::MIN),
                    micros.rem_euclid(1_000_000) as i64,
                )
            }
        }
    }

    /// The fields of the timestamp: (year, month, day, hour, minute, second, microsecond).
    fn fields(&self) -> (i64, u32, u32, i64, i64, i64, i64) {
        let (secs, frac) = self.seconds_and_micros();
        let (year, month, day, hour, minute, second) = civil_from_seconds(secs);
        (year, month, day, hour, minute, second, frac)
    }

    /// The text for years 0 to 9999, written digit by digit: two of these are on every
    /// audit line, and the formatting machinery cost more than the rest of the line's
    /// numbers together. `None` outside those years (see the `Display` fallback).
    ///
    /// Each thread keeps the text of the last second it rendered: a request's two
    /// timestamps, and the next requests', almost always fall in the same second, and
    /// then only the microseconds are written.
    fn render(&self) -> Option<[u8; 27]> {
        let (secs, frac) = self.seconds_and_micros();
        let second = LAST_SECOND.with(|last| match last.get() {
            Some((at, text)) if at == secs => Some(text),
            _ => {
                let text = render_second(secs)?;
                last.set(Some((secs, text)));
                Some(text)
            }
        })?;
        let mut out = *b"0000-00-00T00:00:00.000000Z";
        out[..19].copy_from_slice(&second);
        // Fractions are below 10^6 by construction.
        put_digits(&mut out[20..26], frac as u64);
        Some(out)
    }
}

thread_local! {
    /// The last whole second this thread rendered, and its text.
    static LAST_SECOND: std::cell::Cell<Option<(i64, [u8; 19])>> =
        const { std::cell::Cell::new(None) };
}

/// (year, month, day, hour, minute, second) of `secs` since the epoch, in UTC.
fn civil_from_seconds(secs: i64) -> (i64, u32, u32, i64, i64, i64) {
    let day_secs = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
    (
        year,
        month,
        day,
        day_secs / 3_600,
        day_secs % 3_600 / 60,
        day_secs % 60,
    )
}

/// `YYYY-MM-DDTHH:MM:SS` of `secs`, or `None` outside years 0 to 9999.
fn render_second(secs: i64) -> Option<[u8; 19]> {
    let (year, month, day, hour, minute, second) = civil_from_seconds(secs);
    if !(0..=9_999).contains(&year) {
        return None;
    }
    let mut out = *b"0000-00-00T00:00:00";
    // Every value is in range here: the year by the check above, the rest by
    // construction (months 1-12, days 1-31, hours < 24).
    put_digits(&mut out[0..4], year as u64);
    put_digits(&mut out[5..7], u64::from(month));
    put_digits(&mut out[8..10], u64::from(day));
    put_digits(&mut out[11..13], hour as u64);
    put_digits(&mut out[14..16], minute as u64);
    put_digits(&mut out[17..19], second as u64);
    Some(out)
}

/// `value` in decimal, written without the formatter (whose machinery costs hundreds of
/// instructions a number) into the end of `buf`: the digits.
pub(super) fn decimal(mut value: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            return &buf[at..];
        }
    }
}

/// Writes `value`'s last `digits.len()` decimal digits into `digits`, zero-padded.
pub(super) fn put_digits(digits: &mut [u8], mut value: u64) {
    for digit in digits.iter_mut().rev() {
        *digit = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(text) = self.render() {
            // Only ASCII digits and separators were written.
            return f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?);
        }
        let (year, month, day, hour, minute, second, frac) = self.fields();
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{frac:06}Z"
        )
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.render() {
            Some(text) => match std::str::from_utf8(&text) {
                Ok(text) => serializer.serialize_str(text),
                Err(_) => serializer.collect_str(self),
            },
            None => serializer.collect_str(self),
        }
    }
}

/// (year, month, day) of the proleptic Gregorian calendar for days since 1970-01-01
/// (Howard Hinnant's `civil_from_days`).
pub(super) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of era, [0, 146096]
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of year from March 1, [0, 365]
    let mp = (5 * doy + 2) / 153; // month from March, [0, 11]
    let day = doy - (153 * mp + 2) / 5 + 1; // [1, 31]
    let month = if mp < 10 { mp + 3 } else { mp - 9 }; // [1, 12]
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month as u32, day as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn by_formatter(t: &Timestamp) -> String {
        let (year, month, day, hour, minute, second, frac) = t.fields();
        format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{frac:06}Z")
    }

    /// The fields as the exact 128-bit arithmetic gives them, floored to the microsecond.
    fn exact_fields(t: SystemTime) -> (i64, u32, u32, i64, i64, i64, i64) {
        let nanos: i128 = match t.duration_since(UNIX_EPOCH) {
            Ok(after) => after.as_nanos() as i128,
            Err(before) => -(before.duration().as_nanos() as i128),
        };
        let micros = nanos.div_euclid(1_000);
        let secs = micros.div_euclid(1_000_000);
        let day_secs = secs.rem_euclid(86_400) as i64;
        let (year, month, day) = civil_from_days(secs.div_euclid(86_400) as i64);
        let frac = micros.rem_euclid(1_000_000) as i64;
        (
            year,
            month,
            day,
            day_secs / 3_600,
            day_secs % 3_600 / 60,
            day_secs % 60,
            frac,
        )
    }

    #[test]
    fn the_fields_agree_with_exact_arithmetic_on_both_sides_of_the_epoch() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for i in 0..20_000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let offset = Duration::new(x % 400_000_000_000, (x >> 20) as u32 % 1_000_000_000);
            let small = Duration::new(0, i % 3_000);
            for t in [
                UNIX_EPOCH + offset,
                UNIX_EPOCH - offset,
                UNIX_EPOCH + small,
                UNIX_EPOCH - small,
            ] {
                assert_eq!(Timestamp(t).fields(), exact_fields(t), "{t:?}");
            }
        }
    }

    #[test]
    fn the_digit_writer_matches_the_formatter() {
        // The epoch and the second before it, a leap day, the first second of year 0, the
        // last of 9999 and the first of 10000 (where the formatter takes over), and 10,000
        // pseudo-random seconds from 1200 to 13000.
        let mut seconds: Vec<i64> = vec![
            0,
            -1,
            951_782_400,
            -62_167_219_200,
            -62_167_219_201,
            253_402_300_799,
            253_402_300_800,
        ];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            seconds.push((x % 350_000_000_000) as i64 - 24_000_000_000);
        }
        for s in seconds {
            let at = if s >= 0 {
                UNIX_EPOCH + Duration::from_secs(s.unsigned_abs())
            } else {
                UNIX_EPOCH - Duration::from_secs(s.unsigned_abs())
            };
            for micros in [0, 1, 123_456, 999_999] {
                let t = Timestamp(at + Duration::from_micros(micros));
                let expected = by_formatter(&t);
                assert_eq!(t.to_string(), expected);
                assert_eq!(
                    serde_json::to_string(&t).unwrap(),
                    format!("\"{expected}\"")
                );
            }
        }
        assert_eq!(
            Timestamp(UNIX_EPOCH + Duration::from_secs(253_402_300_799)).to_string(),
            "9999-12-31T23:59:59.000000Z"
        );
        assert_eq!(
            Timestamp(UNIX_EPOCH + Duration::from_secs(951_782_400)).to_string(),
            "2000-02-29T00:00:00.000000Z"
        );
    }
}
