//! The kubectl side of the plugin protocol: the `ExecCredential` printed on stdout and the
//! `KUBERNETES_EXEC_INFO` kubectl passes in (client.authentication.k8s.io/v1).

use std::time::SystemTime;

use serde_json::{Value, json};

/// The API version kubegate speaks (kubectl 1.22+).
pub const API_VERSION: &str = "client.authentication.k8s.io/v1";

/// The one JSON line `get-token` prints: the token and when kubectl must ask again.
pub fn render(token: &str, expires: SystemTime) -> String {
    json!({
        "kind": "ExecCredential",
        "apiVersion": API_VERSION,
        "spec": {},
        "status": {
            "token": token,
            "expirationTimestamp": humantime::format_rfc3339_seconds(expires).to_string(),
        },
    })
    .to_string()
}

/// Whether kubectl says a person can answer prompts. Absent or unreadable exec info
/// (an old kubectl, or the plugin run by hand) counts as interactive, as in kubectl's
/// own `interactiveMode: IfAvailable` without a cluster to ask about.
pub fn interactive(exec_info: Option<&str>) -> bool {
    let Some(text) = exec_info else {
        return true;
    };
    serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| v.pointer("/spec/interactive").and_then(Value::as_bool))
        .unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn renders_v1_with_an_expiry() {
        let text = render("t0k", UNIX_EPOCH + Duration::from_secs(1_800_000_000));
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["apiVersion"], API_VERSION);
        assert_eq!(v["kind"], "ExecCredential");
        assert_eq!(v["status"]["token"], "t0k");
        assert_eq!(v["status"]["expirationTimestamp"], "2027-01-15T08:00:00Z");
    }

    #[test]
    fn reads_interactive_from_exec_info() {
        let info = |b: bool| {
            format!(
                r#"{{"kind":"ExecCredential","apiVersion":"{API_VERSION}","spec":{{"interactive":{b}}}}}"#
            )
        };
        assert!(!interactive(Some(&info(false))));
        assert!(interactive(Some(&info(true))));
        assert!(interactive(None));
        assert!(interactive(Some("{}")));
    }
}
