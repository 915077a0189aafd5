//! What kind of response a request gets, decided once per request: it chooses the
//! admission cap, the bounds on the response, the audit stages and the open-stream label.

use kubegate_policy::RequestAttributes;

/// How long a request's response lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// An ordinary request: one response, bounded by the upstream timeout, audited once.
    Ordinary,
    /// `?watch=true` or the legacy `/watch/` paths.
    Watch,
    /// Any other long-running response: `logs --follow`, proxy.
    Stream,
    /// A connection upgrade: exec, attach, port-forward (or a proxied WebSocket).
    Upgrade,
}

impl RequestKind {
    /// The kind of a request with these attributes; `upgrade` when it asks to switch
    /// protocols (already checked by `upgrade::requested`).
    pub fn of(attributes: &RequestAttributes, upgrade: bool) -> Self {
        if upgrade {
            RequestKind::Upgrade
        } else if !attributes.is_long_running() {
            RequestKind::Ordinary
        } else if attributes.verb() == "watch" {
            RequestKind::Watch
        } else {
            RequestKind::Stream
        }
    }

    /// Watches, streams and upgrades: exempt from the upstream timeout, counted by the
    /// stream caps, audited when they start and when they end.
    pub fn is_long_running(self) -> bool {
        self != RequestKind::Ordinary
    }

    /// The `kind` label of `kubegate_open_streams`.
    pub fn label(self) -> &'static str {
        match self {
            RequestKind::Ordinary => "ordinary",
            RequestKind::Watch => "watch",
            RequestKind::Stream => "stream",
            RequestKind::Upgrade => "upgrade",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_follow_the_attributes() {
        let attributes = |path: &str, query| {
            let path = kubegate_policy::normalize_path(path).unwrap();
            kubegate_policy::resolve("GET", &path, query)
        };
        let pods = "/api/v1/namespaces/dev/pods";
        assert_eq!(
            RequestKind::of(&attributes(pods, Some("watch=true")), false),
            RequestKind::Watch
        );
        assert_eq!(
            RequestKind::of(&attributes(pods, None), false),
            RequestKind::Ordinary
        );
        let logs = "/api/v1/namespaces/dev/pods/a/log";
        assert_eq!(
            RequestKind::of(&attributes(logs, Some("follow=true")), false),
            RequestKind::Stream
        );
        assert_eq!(
            RequestKind::of(&attributes(logs, None), false),
            RequestKind::Ordinary
        );
        let exec = "/api/v1/namespaces/dev/pods/a/exec";
        assert_eq!(
            RequestKind::of(&attributes(exec, None), true),
            RequestKind::Upgrade
        );
        assert!(!RequestKind::Ordinary.is_long_running());
        assert!(RequestKind::Upgrade.is_long_running());
    }
}
