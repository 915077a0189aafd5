//! The impersonation self-check: does the gateway's own credential hold exactly the
//! impersonation the configuration needs?
//!
//! For each right [`rbac::required`] lists, and for a fixed list of rights the gateway
//! should never hold (reading secrets, impersonating service accounts, `uids` when no uid
//! claim is mapped, creating pods, everything on everything), it asks the API server with
//! an `authorization.k8s.io/v1` SelfSubjectAccessReview, sent with the gateway's own
//! credential and no impersonation headers. A missing needed right fails readiness with
//! the rule's name, because every request asserting that attribute would fail; a right
//! held beyond that is a warning, logged once and shown on `/readyz`. Answers are kept
//! for [`RECHECK_AFTER`]; an API server that cannot be asked is never taken to mean
//! "missing", and one that does not serve the review API (404) skips the check with a
//! warning rather than blocking readiness.

use std::time::Duration;

use axum::body::Body;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use tokio::time::Instant;

use crate::ops::admin::Check;
use crate::ops::rbac::{self, AUTHENTICATION_GROUP, Right};
use crate::upstream::Upstream;

/// Where the reviews are posted.
pub const REVIEW_PATH: &str = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews";

/// The readiness check's name.
pub const CHECK_NAME: &str = "impersonation-rights";

/// How long a complete set of answers is trusted before readiness asks again: RBAC
/// changes take effect without a restart, and a probe every few seconds must not become
/// a dozen reviews every few seconds.
pub const RECHECK_AFTER: Duration = Duration::from_secs(60);

/// How long one review may take: within the kubelet's readiness probe timeout.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(2);

/// A review answer larger than this is not a review answer.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Whether the gateway should hold a right.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// The configuration needs it: missing fails readiness.
    Needed,
    /// Nothing needs it: holding it is a warning.
    Unwanted,
}

/// One question to the API server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Review {
    /// The right asked about.
    pub right: Right,
    /// Whether the gateway should hold it.
    pub want: Want,
}

fn right(verb: &str, group: &str, resource: &str) -> Right {
    Right {
        verb: verb.into(),
        group: group.into(),
        resource: resource.into(),
        subresource: String::new(),
    }
}

/// The rights a gateway should not hold whatever its configuration, except those it
/// needs (`uids` when a uid claim is mapped).
fn unwanted() -> Vec<Right> {
    vec![
        right("get", "", "secrets"),
        right("list", "", "secrets"),
        right("impersonate", "", "serviceaccounts"),
        right("impersonate", AUTHENTICATION_GROUP, "uids"),
        right("create", "", "pods"),
        right("*", "*", "*"),
    ]
}

/// The reviews to ask for `needed` (from [`rbac::required`]): each needed right, then
/// each unwanted one it does not need.
pub fn reviews(needed: Vec<Right>) -> Vec<Review> {
    let extra: Vec<Right> = unwanted()
        .into_iter()
        .filter(|r| !needed.contains(r))
        .collect();
    needed
        .into_iter()
        .map(|right| Review {
            right,
            want: Want::Needed,
        })
        .chain(extra.into_iter().map(|right| Review {
            right,
            want: Want::Unwanted,
        }))
        .collect()
}

/// How an operator reads a right: `get secrets (core)`, and the wildcard spelled out.
fn describe(right: &Right) -> String {
    if right.verb == "*" && right.resource == "*" {
        "every verb on every resource (*/*)".into()
    } else {
        right.to_string()
    }
}

/// The review's request body.
pub fn review_body(right: &Right) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": {
            "verb": right.verb,
            "group": right.group,
            "resource": right.resource,
            "subresource": right.subresource,
        }},
    })
}

/// What the API server said to one review.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// `status.allowed`.
    Allowed(bool),
    /// 404: the API server does not serve the review API.
    NotServed,
    /// No usable answer; safe to show an operator.
    Failed(String),
}

/// Reads an answer from the status and body the API server sent.
pub fn parse_answer(status: StatusCode, body: &[u8]) -> Answer {
    if status == StatusCode::NOT_FOUND {
        return Answer::NotServed;
    }
    if !status.is_success() {
        return Answer::Failed(format!("the review answered {status}"));
    }
    match serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["status"]["allowed"].as_bool())
    {
        Some(allowed) => Answer::Allowed(allowed),
        None => Answer::Failed("the review's answer has no status.allowed".into()),
    }
}

/// What a complete round of reviews found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every review was answered.
    Verified {
        /// Needed rights the gateway lacks.
        missing: Vec<Right>,
        /// Unwanted rights it holds.
        excess: Vec<Right>,
    },
    /// The API server does not serve SelfSubjectAccessReview.
    NotServed,
    /// Some review got no usable answer: nothing is known (and nothing is kept).
    Unknown(String),
}

/// Folds the answers (in the order of `reviews`) into an outcome.
pub fn outcome(reviews: &[Review], answers: &[Answer]) -> Outcome {
    if let Some(e) = answers.iter().find_map(|a| match a {
        Answer::Failed(e) => Some(e),
        _ => None,
    }) {
        return Outcome::Unknown(e.clone());
    }
    if answers.contains(&Answer::NotServed) {
        return Outcome::NotServed;
    }
    let mut missing = Vec::new();
    let mut excess = Vec::new();
    for (review, answer) in reviews.iter().zip(answers) {
        match (review.want, answer) {
            (Want::Needed, Answer::Allowed(false)) => missing.push(review.right.clone()),
            (Want::Unwanted, Answer::Allowed(true)) => excess.push(review.right.clone()),
            _ => {}
        }
    }
    Outcome::Verified { missing, excess }
}

fn excess_warning(excess: &[Right]) -> Option<String> {
    (!excess.is_empty()).then(|| {
        let names: Vec<String> = excess.iter().map(describe).collect();
        format!("holds rights no rule needs: {}", names.join(", "))
    })
}

/// The readiness line for an outcome.
pub fn check(outcome: &Outcome) -> Check {
    let (result, warning) = match outcome {
        Outcome::Verified { missing, excess } if missing.is_empty() => {
            (Ok(()), excess_warning(excess))
        }
        Outcome::Verified { missing, excess } => {
            let names: Vec<String> = missing.iter().map(describe).collect();
            (
                Err(format!("missing {}", names.join(", "))),
                excess_warning(excess),
            )
        }
        Outcome::NotServed => (
            Ok(()),
            Some("skipped: the API server does not serve SelfSubjectAccessReview (404)".into()),
        ),
        Outcome::Unknown(e) => (Err(format!("not verified: {e}")), None),
    };
    Check {
        name: CHECK_NAME.into(),
        result,
        warning,
    }
}

struct State {
    /// The last complete outcome and when it was found.
    last: Option<(Instant, Outcome)>,
    /// The outcome last logged, so each finding is logged once.
    logged: Option<Outcome>,
}

impl State {
    /// The last complete outcome while it is fresh at `now`.
    fn cached(&self, now: Instant) -> Option<Outcome> {
        self.last
            .as_ref()
            .filter(|(at, _)| now.saturating_duration_since(*at) < RECHECK_AFTER)
            .map(|(_, found)| found.clone())
    }

    /// Takes in a new round's outcome, found at `now`, and says what readiness reports: a
    /// complete outcome is kept; an unknown one is never kept and yields to the last
    /// complete outcome, stale or not.
    fn settle(&mut self, now: Instant, fresh: Outcome) -> Outcome {
        match (fresh, &self.last) {
            (Outcome::Unknown(e), Some((_, last))) => {
                // Every probe while the API server is away: the upstream check says so.
                tracing::debug!(error = %e, "impersonation self-check: cannot ask the API server; keeping the last answers");
                last.clone()
            }
            (unknown @ Outcome::Unknown(_), None) => unknown,
            (found, _) => {
                self.last = Some((now, found.clone()));
                found
            }
        }
    }

    /// Logs a finding when it differs from the last one logged; says whether it did.
    fn log_once(&mut self, found: &Outcome) -> bool {
        if self.logged.as_ref() == Some(found) {
            return false;
        }
        let line = check(found);
        if let Err(e) = &line.result {
            tracing::error!(check = CHECK_NAME, "impersonation self-check failed: {e}");
        }
        if let Some(w) = &line.warning {
            tracing::warn!(check = CHECK_NAME, "impersonation self-check: {w}");
        }
        if line.result.is_ok() && line.warning.is_none() {
            tracing::info!(
                check = CHECK_NAME,
                "impersonation self-check: holds exactly the impersonation it needs"
            );
        }
        self.logged = Some(found.clone());
        true
    }
}

/// The self-check of one gateway: its reviews and their cached outcome.
pub struct SelfCheck {
    reviews: Vec<Review>,
    /// A tokio mutex: concurrent probes wait for one round rather than each asking.
    state: tokio::sync::Mutex<State>,
}

impl std::fmt::Debug for SelfCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SelfCheck")
            .field("reviews", &self.reviews.len())
            .finish_non_exhaustive()
    }
}

impl SelfCheck {
    /// The self-check for `config`.
    pub fn new(config: &kubegate_config::Config) -> SelfCheck {
        SelfCheck {
            reviews: reviews(rbac::required(config)),
            state: tokio::sync::Mutex::new(State {
                last: None,
                logged: None,
            }),
        }
    }

    /// The readiness line: the cached outcome while fresh, otherwise a new round of
    /// reviews. A round without a usable answer keeps the last complete outcome, if any.
    pub async fn check(&self, upstream: &Upstream) -> Check {
        let mut state = self.state.lock().await;
        let found = match state.cached(Instant::now()) {
            Some(found) => found,
            None => {
                let answers = futures_util::future::join_all(
                    self.reviews.iter().map(|r| Self::ask(upstream, &r.right)),
                )
                .await;
                state.settle(Instant::now(), outcome(&self.reviews, &answers))
            }
        };
        state.log_once(&found);
        check(&found)
    }

    async fn ask(upstream: &Upstream, right: &Right) -> Answer {
        match tokio::time::timeout(REVIEW_TIMEOUT, send_review(upstream, right)).await {
            Ok(answer) => answer,
            Err(_) => Answer::Failed(format!("no answer within {}s", REVIEW_TIMEOUT.as_secs())),
        }
    }
}

/// Posts one review with the gateway's own credential (and no impersonation headers: it
/// asks about the gateway itself).
async fn send_review(upstream: &Upstream, right: &Right) -> Answer {
    let uri = match upstream.uri_for(REVIEW_PATH) {
        Ok(uri) => uri,
        Err(e) => return Answer::Failed(e.to_string()),
    };
    let request = Request::post(uri)
        .header(CONTENT_TYPE, "application/json")
        .header(ACCEPT, "application/json")
        .body(Body::from(review_body(right).to_string()));
    let mut request = match request {
        Ok(r) => r,
        Err(e) => return Answer::Failed(e.to_string()),
    };
    match upstream.authorization().await {
        Ok(Some(auth)) => {
            request.headers_mut().insert(AUTHORIZATION, auth);
        }
        Ok(None) => {}
        Err(e) => return Answer::Failed(e.to_string()),
    }
    let response = match upstream.send(request).await {
        Ok(r) => r,
        Err(_) => return Answer::Failed("unreachable".into()),
    };
    let status = response.status();
    match Limited::new(response.into_body(), MAX_ANSWER_BYTES)
        .collect()
        .await
    {
        Ok(body) => parse_answer(status, &body.to_bytes()),
        Err(_) => Answer::Failed(format!(
            "the review's answer was cut off or over {MAX_ANSWER_BYTES} bytes"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(reviews: &[Review], want: Want) -> Vec<String> {
        reviews
            .iter()
            .filter(|r| r.want == want)
            .map(|r| describe(&r.right))
            .collect()
    }

    fn users_groups() -> Vec<Right> {
        vec![
            right("impersonate", "", "users"),
            right("impersonate", "", "groups"),
        ]
    }

    fn uids() -> Right {
        right("impersonate", AUTHENTICATION_GROUP, "uids")
    }

    #[test]
    fn without_a_uid_claim_uids_is_asked_as_unwanted() {
        let r = reviews(users_groups());
        assert_eq!(
            named(&r, Want::Needed),
            ["impersonate users (core)", "impersonate groups (core)"]
        );
        assert_eq!(
            named(&r, Want::Unwanted),
            [
                "get secrets (core)",
                "list secrets (core)",
                "impersonate serviceaccounts (core)",
                "impersonate uids (authentication.k8s.io)",
                "create pods (core)",
                "every verb on every resource (*/*)",
            ]
        );
    }

    #[test]
    fn a_mapped_uid_and_extra_key_are_needed_and_uids_is_not_unwanted() {
        let mut needed = users_groups();
        needed.push(uids());
        needed.push(Right {
            subresource: "example.com/team".into(),
            ..right("impersonate", AUTHENTICATION_GROUP, "userextras")
        });
        let r = reviews(needed);
        assert_eq!(
            named(&r, Want::Needed)[2..],
            [
                "impersonate uids (authentication.k8s.io)",
                "impersonate userextras/example.com/team (authentication.k8s.io)"
            ]
        );
        assert!(!named(&r, Want::Unwanted).iter().any(|n| n.contains("uids")));
        assert_eq!(
            review_body(&r[3].right)["spec"]["resourceAttributes"],
            serde_json::json!({"verb": "impersonate", "group": "authentication.k8s.io",
                "resource": "userextras", "subresource": "example.com/team"})
        );
    }

    #[test]
    fn answers_are_read_strictly() {
        let ok = br#"{"kind":"SelfSubjectAccessReview","status":{"allowed":true}}"#;
        assert_eq!(parse_answer(StatusCode::CREATED, ok), Answer::Allowed(true));
        assert_eq!(
            parse_answer(StatusCode::CREATED, br#"{"status":{"allowed":false}}"#),
            Answer::Allowed(false)
        );
        assert_eq!(
            parse_answer(StatusCode::NOT_FOUND, b"404 page not found"),
            Answer::NotServed
        );
        assert_eq!(
            parse_answer(StatusCode::FORBIDDEN, ok),
            Answer::Failed("the review answered 403 Forbidden".into())
        );
        for body in [
            &br#"{"status":{}}"#[..],
            b"not json",
            br#"{"status":{"allowed":"yes"}}"#,
        ] {
            assert!(
                matches!(parse_answer(StatusCode::CREATED, body), Answer::Failed(_)),
                "{body:?}"
            );
        }
    }

    #[test]
    fn a_missing_needed_right_fails_and_names_the_rule() {
        let mut needed = users_groups();
        needed.push(uids());
        let r = reviews(needed);
        // users, groups allowed; uids denied; nothing unwanted held.
        let answers: Vec<Answer> = r
            .iter()
            .map(|x| Answer::Allowed(x.want == Want::Needed && x.right != uids()))
            .collect();
        let c = check(&outcome(&r, &answers));
        assert_eq!(c.name, "impersonation-rights");
        assert_eq!(
            c.result,
            Err("missing impersonate uids (authentication.k8s.io)".into())
        );
        assert_eq!(c.warning, None);
    }

    #[test]
    fn exact_rights_pass_and_excess_rights_pass_with_a_warning() {
        let r = reviews(users_groups());
        let exact: Vec<Answer> = r
            .iter()
            .map(|x| Answer::Allowed(x.want == Want::Needed))
            .collect();
        let c = check(&outcome(&r, &exact));
        assert_eq!((c.result, c.warning), (Ok(()), None));

        let broad: Vec<Answer> = r
            .iter()
            .map(|x| Answer::Allowed(x.want == Want::Needed || x.right.resource == "secrets"))
            .collect();
        let c = check(&outcome(&r, &broad));
        assert_eq!(c.result, Ok(()));
        assert_eq!(
            c.warning.as_deref(),
            Some("holds rights no rule needs: get secrets (core), list secrets (core)")
        );
    }

    #[test]
    fn no_review_api_skips_and_no_answer_is_not_missing() {
        let r = reviews(users_groups());
        let mut answers = vec![Answer::NotServed; r.len()];
        let c = check(&outcome(&r, &answers));
        assert_eq!(c.result, Ok(()));
        assert!(c.warning.unwrap().starts_with("skipped: "));

        answers[1] = Answer::Failed("unreachable".into());
        let found = outcome(&r, &answers);
        assert_eq!(found, Outcome::Unknown("unreachable".into()));
        assert_eq!(
            check(&found).result,
            Err("not verified: unreachable".into())
        );
    }

    #[test]
    fn complete_answers_are_kept_a_minute_and_no_answer_never_replaces_them() {
        let t0 = Instant::now();
        let mut state = State {
            last: None,
            logged: None,
        };
        let unknown = Outcome::Unknown("unreachable".into());
        // Nothing known yet: unknown is reported, and not kept.
        assert_eq!(state.settle(t0, unknown.clone()), unknown);
        assert_eq!(state.cached(t0), None);
        let missing = Outcome::Verified {
            missing: vec![uids()],
            excess: vec![],
        };
        assert_eq!(state.settle(t0, missing.clone()), missing);
        assert_eq!(
            state.cached(t0 + Duration::from_secs(59)),
            Some(missing.clone())
        );
        let later = t0 + RECHECK_AFTER;
        assert_eq!(state.cached(later), None, "asked again after a minute");
        // The API server cannot be asked: the last answers stand, stale as they are.
        assert_eq!(state.settle(later, unknown), missing);
        let fixed = Outcome::Verified {
            missing: vec![],
            excess: vec![],
        };
        assert_eq!(state.settle(later, fixed.clone()), fixed);
        assert_eq!(state.cached(later), Some(fixed));
    }

    #[test]
    fn each_finding_is_logged_once() {
        let mut state = State {
            last: None,
            logged: None,
        };
        let broad = Outcome::Verified {
            missing: vec![],
            excess: vec![right("get", "", "secrets")],
        };
        assert!(state.log_once(&broad));
        assert!(!state.log_once(&broad));
        assert!(state.log_once(&Outcome::NotServed));
        assert!(
            state.log_once(&broad),
            "a finding that comes back is logged again"
        );
    }
}
