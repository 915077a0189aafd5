//! The audit line written by hand: the event's wire form as one JSON object, byte for byte
//! what serde_json writes for [`WireEvent`], without its byte-by-byte string escaping. Every
//! request writes a line on its own thread, and that escaping was the largest single cost
//! of a cached request. The webhook sends these same lines. The `Serialize` form stays as
//! the event's serde form and is the reference the tests hold this writer to.

use std::io::Write;

use super::{ObjectRef, Stage, UserInfo, WireEvent, decimal};
use crate::ip_text::IpText;

impl WireEvent<'_> {
    /// Appends the event as JSON (no newline) to `out`.
    pub(super) fn write_json(&self, out: &mut Vec<u8>) {
        // The fixed fields are one literal (`wire` sets them to exactly these), and the
        // audit ID is hex and dashes: none of it goes through `string`'s escaping, which
        // costs a hundred instructions a call whatever the length.
        out.extend_from_slice(
            br#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":""#,
        );
        out.extend_from_slice(self.audit_id.as_str().as_bytes());
        out.extend_from_slice(match self.stage {
            Stage::ResponseStarted => br#"","stage":"ResponseStarted""#,
            Stage::ResponseComplete => br#"","stage":"ResponseComplete""#,
        });
        out.extend_from_slice(br#","requestURI":"#);
        string(out, self.request_uri);
        out.extend_from_slice(br#","verb":"#);
        string(out, self.verb);
        if let Some(user) = &self.user {
            out.extend_from_slice(br#","user":"#);
            user_info(out, user);
        }
        if let Some(user) = &self.impersonated_user {
            out.extend_from_slice(br#","impersonatedUser":"#);
            user_info(out, user);
        }
        if let Some(ip) = self.source_ip {
            // Digits, dots, colons and hex: nothing to escape.
            out.extend_from_slice(br#","sourceIPs":[""#);
            out.extend_from_slice(IpText::new(ip).as_str().as_bytes());
            out.extend_from_slice(br#""]"#);
        }
        if let Some(agent) = self.user_agent {
            out.extend_from_slice(br#","userAgent":"#);
            string(out, agent);
        }
        if let Some(of) = self.object_ref {
            out.extend_from_slice(br#","objectRef":"#);
            object_ref(out, of);
        }
        out.extend_from_slice(br#","responseStatus":{"metadata":{},"code":"#);
        out.extend_from_slice(decimal(self.response_status.code.into(), &mut [0; 20]));
        out.extend_from_slice(br#"},"requestReceivedTimestamp":"#);
        timestamp(out, &self.request_received);
        out.extend_from_slice(br#","stageTimestamp":"#);
        timestamp(out, &self.stage_time);
        if !self.annotations.is_empty() {
            out.extend_from_slice(br#","annotations":"#);
            object(
                out,
                self.annotations.iter(),
                |out, k| string(out, k),
                |out, v| string(out, v),
            );
        }
        out.push(b'}');
    }
}

fn user_info(out: &mut Vec<u8>, user: &UserInfo<'_>) {
    out.extend_from_slice(br#"{"username":"#);
    string(out, user.username);
    if let Some(uid) = user.uid.filter(|uid| !uid.is_empty()) {
        out.extend_from_slice(br#","uid":"#);
        string(out, uid);
    }
    if !user.groups.is_empty() {
        out.extend_from_slice(br#","groups":"#);
        strings(out, user.groups);
    }
    if !user.extra.is_empty() {
        out.extend_from_slice(br#","extra":"#);
        object(
            out,
            user.extra,
            |out, k| string(out, k),
            |out, values| strings(out, values),
        );
    }
    out.push(b'}');
}

fn object_ref(out: &mut Vec<u8>, of: &ObjectRef<'_>) {
    // The keys are literals with their quotes: nothing in them to escape.
    let fields: [(&[u8], &str); 6] = [
        (br#""resource""#, &of.resource),
        (br#""namespace""#, &of.namespace),
        (br#""name""#, &of.name),
        (br#""apiGroup""#, &of.api_group),
        (br#""apiVersion""#, &of.api_version),
        (br#""subresource""#, &of.subresource),
    ];
    let present = fields.into_iter().filter(|(_, v)| !v.is_empty());
    object(out, present, |out, key| out.extend_from_slice(key), string);
}

/// A JSON object of `entries`, in their order, each key written by `key` and each value
/// by `value`.
fn object<K, V>(
    out: &mut Vec<u8>,
    entries: impl IntoIterator<Item = (K, V)>,
    key: impl Fn(&mut Vec<u8>, K),
    value: impl Fn(&mut Vec<u8>, V),
) {
    out.push(b'{');
    for (i, (k, v)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        key(out, k);
        out.push(b':');
        value(out, v);
    }
    out.push(b'}');
}

fn strings(out: &mut Vec<u8>, values: &[String]) {
    out.push(b'[');
    for (i, value) in values.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        string(out, value);
    }
    out.push(b']');
}

fn timestamp(out: &mut Vec<u8>, at: &super::Timestamp) {
    out.push(b'"');
    match at.render() {
        Some(text) => out.extend_from_slice(&text),
        // Years outside 0-9999: digits, `-`, `:`, `.` and letters, nothing to escape.
        None => write!(out, "{at}").expect("writing to a Vec cannot fail"),
    }
    out.push(b'"');
}

/// A JSON string, escaped as serde_json escapes: `"`, `\` and the control characters
/// below U+0020, everything else (U+007F and non-ASCII too) as it is.
fn string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    // One pass without early exit, which the compiler can vectorise; almost every string
    // in an audit record has nothing to escape.
    if bytes.iter().fold(false, |any, &b| any | needs_escape(b)) {
        escaped(out, bytes);
    } else {
        out.extend_from_slice(bytes);
    }
    out.push(b'"');
}

fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

fn escaped(out: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if !needs_escape(b) {
            continue;
        }
        out.extend_from_slice(&bytes[start..i]);
        start = i + 1;
        match b {
            b'"' => out.extend_from_slice(br#"\""#),
            b'\\' => out.extend_from_slice(br"\\"),
            b'\x08' => out.extend_from_slice(br"\b"),
            b'\x0c' => out.extend_from_slice(br"\f"),
            b'\n' => out.extend_from_slice(br"\n"),
            b'\r' => out.extend_from_slice(br"\r"),
            b'\t' => out.extend_from_slice(br"\t"),
            _ => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]),
        }
    }
    out.extend_from_slice(&bytes[start..]);
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::sync::Arc;
    use std::time::{Duration, UNIX_EPOCH};

    use kubegate_policy::ForwardIdentity;
    use proptest::prelude::*;

    use super::super::{AuditId, Event, ObjectRef, Stage};
    use crate::authn::Identity;

    /// The hand-written line and serde_json's, for the same event.
    fn both(event: &Event<'_>, omit_user_info: bool) -> (String, String) {
        let wire = event.wire(omit_user_info);
        let mut ours = Vec::new();
        wire.write_json(&mut ours);
        let reference = serde_json::to_vec(&wire).unwrap();
        (
            String::from_utf8(ours).unwrap(),
            String::from_utf8(reference).unwrap(),
        )
    }

    fn event(text: &str, code: u16, secs: u64, full: bool) -> Event<'static> {
        let s = || text.to_string();
        Event {
            audit_id: AuditId::new(),
            stage: if full {
                Stage::ResponseComplete
            } else {
                Stage::ResponseStarted
            },
            request_uri: format!("/api/v1/{text}").into(),
            verb: s().into(),
            user: full.then(|| {
                Arc::new(Identity {
                    uid: Some(s()),
                    extra: [(s(), vec![s(), String::new()])].into(),
                    ..Identity::new(s(), [s(), "devs".to_string()])
                })
            }),
            impersonated_user: full.then(|| {
                Arc::new(ForwardIdentity {
                    user: s(),
                    uid: Some(String::new()),
                    ..ForwardIdentity::default()
                })
            }),
            source_ip: full.then(|| {
                if code.is_multiple_of(2) {
                    "2001:db8::ffff:192.0.2.1".parse().unwrap()
                } else {
                    "203.0.113.255".parse().unwrap()
                }
            }),
            user_agent: full.then(|| s().into()),
            object_ref: full.then(|| ObjectRef {
                resource: s().into(),
                name: s().into(),
                api_group: s().into(),
                ..ObjectRef::default()
            }),
            response_code: code,
            request_received: UNIX_EPOCH + Duration::from_secs(secs),
            stage_time: UNIX_EPOCH + Duration::from_micros(secs.saturating_mul(1_000_001)),
            annotations: if full {
                [
                    (s().into(), s().into()),
                    ("kubegate.io/summary".into(), format!("user:{text}").into()),
                ]
                .into()
            } else {
                Default::default()
            },
        }
    }

    #[test]
    fn every_escape_matches_serde_json() {
        let all: String = (0u8..=0x7f)
            .map(char::from)
            .chain(['é', '\u{2028}', '😀'])
            .collect();
        for omit in [false, true] {
            let (ours, reference) = both(&event(&all, 404, 1_795_867_200, true), omit);
            assert_eq!(ours, reference);
        }
        let (ours, reference) = both(&event("", 0, 0, false), false);
        assert_eq!(ours, reference);
        // An empty object reference, and a year past 9999 (the Display fallback).
        let mut far = event("x", 65_535, 300_000_000_000, true);
        far.object_ref = Some(ObjectRef::default());
        let (ours, reference) = both(&far, false);
        assert_eq!(ours, reference);
        assert_eq!(
            Cow::Borrowed(&ours),
            String::from_utf8_lossy(ours.as_bytes())
        );
    }

    proptest! {
        #[test]
        fn any_event_matches_serde_json(
            text in any::<String>(),
            code in any::<u16>(),
            secs in 0u64..400_000_000_000,
            full in any::<bool>(),
            omit in any::<bool>(),
        ) {
            let (ours, reference) = both(&event(&text, code, secs, full), omit);
            prop_assert_eq!(ours, reference);
        }
    }
}
