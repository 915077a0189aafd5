//! Policy test files: a list of requests with the decision each must get,
//! run by `kubegate policy test`.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use toml::Spanned;

use crate::error::{Locator, PolicyError};
use crate::path::normalize_path;
use crate::request::resolve;
use crate::rules::Policy;
use crate::rules::compile::entry_at;
use crate::subject::Subject;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CasesFile {
    #[serde(default, rename = "case")]
    cases: Vec<Spanned<CaseSpec>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseSpec {
    name: Spanned<String>,
    user: String,
    #[serde(default)]
    groups: Vec<String>,
    uid: Option<String>,
    #[serde(default)]
    extra: BTreeMap<String, Vec<String>>,
    claims: Option<Spanned<toml::Table>>,
    request: Spanned<String>,
    expect: Spanned<String>,
    rule: Option<Spanned<String>>,
    forward_user: Option<String>,
    forward_groups: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
struct LenientCases {
    #[serde(default)]
    case: Vec<Spanned<toml::Value>>,
}

/// Result of [`run_cases`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CaseReport {
    /// Number of cases run.
    pub total: usize,
    /// Cases whose decision differed from the expectation, in file order.
    pub failures: Vec<CaseFailure>,
}

impl CaseReport {
    /// Number of cases that passed.
    pub fn passed(&self) -> usize {
        self.total - self.failures.len()
    }

    /// True when every case passed.
    pub fn is_success(&self) -> bool {
        self.failures.is_empty()
    }
}

impl fmt::Display for CaseReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for failure in &self.failures {
            writeln!(f, "{failure}")?;
        }
        write!(f, "{} of {} policy cases passed", self.passed(), self.total)
    }
}

/// One case whose decision was not the expected one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaseFailure {
    /// The case's name.
    pub name: String,
    /// 1-based line of the case's `name` in the cases file.
    pub line: u32,
    /// What the case expected, e.g. `allow by rule "devs-read"`.
    pub expected: String,
    /// What happened: the decision's reason, plus the forwarded identity
    /// when the case checks it.
    pub got: String,
}

impl fmt::Display for CaseFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "case {:?} (line {}): expected {}, got {}",
            self.name, self.line, self.expected, self.got
        )
    }
}

/// Runs the cases in `cases_toml` (file name `source`) against `policy`.
/// Malformed case files (unknown fields, bad requests, rules the policy does
/// not have) are errors; mismatching decisions are failures in the report.
pub fn run_cases(
    policy: &Policy,
    source: &str,
    cases_toml: &str,
) -> Result<CaseReport, PolicyError> {
    let loc = Locator {
        file: source,
        text: cases_toml,
    };
    let file: CasesFile = toml::from_str(cases_toml).map_err(|e| {
        loc.toml_error(&e, |at| {
            let lenient: LenientCases = toml::from_str(cases_toml).ok()?;
            entry_at(cases_toml, &lenient.case, "case", at)
        })
    })?;
    if file.cases.is_empty() {
        return Err(loc.error(None, None, None, "no [[case]] entries"));
    }
    let mut report = CaseReport::default();
    let mut names = std::collections::HashSet::new();
    for case in file.cases {
        let case = case.into_inner();
        let name = case.name.get_ref().clone();
        let err = |span: std::ops::Range<usize>, field: &str, msg: String| {
            loc.error(Some(span), Some(&name), Some(field), msg)
        };
        if !names.insert(name.clone()) {
            return Err(err(
                case.name.span(),
                "name",
                "duplicate case name".to_owned(),
            ));
        }
        let want_allow = match case.expect.get_ref().as_str() {
            "allow" => true,
            "deny" => false,
            other => {
                return Err(err(
                    case.expect.span(),
                    "expect",
                    format!("unknown expectation {other:?}; expected \"allow\" or \"deny\""),
                ));
            }
        };
        if let Some(rule) = &case.rule
            && !policy.rule_names().any(|n| n == rule.get_ref())
        {
            return Err(err(
                rule.span(),
                "rule",
                format!("the policy has no rule {:?}", rule.get_ref()),
            ));
        }
        let (method, path, query) = parse_request(case.request.get_ref())
            .map_err(|m| err(case.request.span(), "request", m))?;
        let claims = match &case.claims {
            None => serde_json::Map::new(),
            Some(t) => match serde_json::to_value(t.get_ref()) {
                Ok(serde_json::Value::Object(m)) => m,
                _ => {
                    return Err(err(
                        t.span(),
                        "claims",
                        "claims must be a table of json-compatible values".to_owned(),
                    ));
                }
            },
        };
        let subject = Subject {
            user: case.user,
            groups: case.groups,
            uid: case.uid,
            extra: case.extra,
            claims,
        };
        let attrs = resolve(method, &path, query);
        let decision = policy.decide(&subject, &attrs);

        let mut expected = if want_allow { "allow" } else { "deny" }.to_owned();
        if let Some(rule) = &case.rule {
            expected.push_str(&format!(" by rule {:?}", rule.get_ref()));
        }
        let mut ok = decision.allowed == want_allow
            && case
                .rule
                .as_ref()
                .is_none_or(|r| decision.rule.as_deref() == Some(r.get_ref().as_str()));
        let mut got = decision.reason();
        if case.forward_user.is_some() || case.forward_groups.is_some() {
            let fwd = decision.forward_as.as_ref();
            if let Some(u) = &case.forward_user {
                expected.push_str(&format!(" as user {u:?}"));
                ok &= fwd.is_some_and(|f| &f.user == u);
            }
            if let Some(g) = &case.forward_groups {
                expected.push_str(&format!(" with groups {g:?}"));
                ok &= fwd.is_some_and(|f| &f.groups == g);
            }
            if let Some(f) = fwd {
                got.push_str(&format!(" as user {:?} with groups {:?}", f.user, f.groups));
            }
        }
        report.total += 1;
        if !ok {
            report.failures.push(CaseFailure {
                line: loc.line_col(case.name.span().start).0,
                name,
                expected,
                got,
            });
        }
    }
    Ok(report)
}

/// `METHOD /path[?query]`.
fn parse_request(text: &str) -> Result<(&str, crate::CanonicalPath, Option<&str>), String> {
    let (method, target) = text
        .trim()
        .split_once(' ')
        .ok_or_else(|| "expected \"METHOD /path[?query]\"".to_owned())?;
    if method.is_empty() || !method.chars().all(|c| c.is_ascii_uppercase()) {
        return Err(format!(
            "method {method:?} must be an upper-case http method"
        ));
    }
    let target = target.trim();
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let path = normalize_path(path).map_err(|e| format!("invalid request path: {e}"))?;
    Ok((method, path, query))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE_POLICY: &str = include_str!("../../examples/policy.toml");
    const EXAMPLE_CASES: &str = include_str!("../../examples/policy-tests.toml");

    #[test]
    fn example_policy_passes_its_cases() {
        let loaded = Policy::from_toml("examples/policy.toml", EXAMPLE_POLICY).unwrap();
        // Exactly the escalation paths its comments own up to, nothing else.
        let warned: Vec<String> = loaded
            .warnings
            .iter()
            .map(|w| {
                let grant = w.message.strip_prefix("escalation path: ").unwrap_or("?");
                let grant = grant.split(": ").next().unwrap_or("");
                format!("{}: {grant}", w.rule.as_deref().unwrap_or("?"))
            })
            .collect();
        let admins = |g: &str| format!("platform-admins: {g}");
        let mut expected: Vec<String> = crate::rules::escalation_tests::STAR_GRANTS
            .map(admins)
            .to_vec();
        expected.push("devs-manage-pods-dev: create on pods in namespace \"dev\"".to_owned());
        expected.push(
            "contractors-read: get, list, watch on secrets in namespace \"contract-*\"".to_owned(),
        );
        assert_eq!(warned, expected);
        let report =
            run_cases(&loaded.policy, "examples/policy-tests.toml", EXAMPLE_CASES).unwrap();
        assert!(report.is_success(), "{report}");
        assert!(report.total >= 15, "{}", report.total);
    }

    const POLICY: &str = r#"
[[rule]]
name = "devs"
effect = "allow"
subjects = { groups = ["devs"] }
resources = [{ api_groups = [""], resources = ["pods"], namespaces = ["dev"], verbs = ["get", "list"] }]

[[rule]]
name = "mapped"
effect = "allow"
subjects = { groups = ["ext"] }
resources = [{ api_groups = [""], resources = ["pods"], verbs = ["get"] }]
as_user = "ext:{username}"
"#;

    fn policy() -> Policy {
        Policy::from_toml("p.toml", POLICY).unwrap().policy
    }

    #[test]
    fn reports_failures() {
        let cases = r#"
[[case]]
name = "ok"
user = "a"
groups = ["devs"]
request = "GET /api/v1/namespaces/dev/pods"
expect = "allow"
rule = "devs"

[[case]]
name = "wrong"
user = "a"
groups = ["devs"]
request = "GET /api/v1/namespaces/prod/pods"
expect = "allow"

[[case]]
name = "forward"
user = "e"
groups = ["ext"]
request = "GET /api/v1/namespaces/x/pods/p"
expect = "allow"
forward_user = "ext:e"
forward_groups = []

[[case]]
name = "forward-wrong"
user = "e"
groups = ["ext"]
request = "GET /api/v1/namespaces/x/pods/p"
expect = "allow"
forward_user = "e"
"#;
        let report = run_cases(&policy(), "c.toml", cases).unwrap();
        assert_eq!(report.total, 4);
        assert_eq!(report.failures.len(), 2, "{report}");
        assert_eq!(
            report.failures[0].to_string(),
            "case \"wrong\" (line 11): expected allow, got no rule allowed"
        );
        assert_eq!(
            report.failures[1].to_string(),
            "case \"forward-wrong\" (line 27): expected allow as user \"e\", got allowed by rule \"mapped\" as user \"ext:e\" with groups []"
        );
        assert!(report.to_string().ends_with("2 of 4 policy cases passed"));
    }

    #[test]
    fn case_file_errors() {
        let p = policy();
        let e = run_cases(&p, "c.toml", "[[case]]\nname = \"x\"\nuser = \"a\"\nrequest = \"GET /\"\nexpect = \"allow\"\nbogus = 1\n").unwrap_err();
        assert_eq!(e.line, Some(6));
        assert_eq!(e.rule.as_deref(), Some("x"));
        assert!(
            e.to_string()
                .starts_with("c.toml:6:1: rule \"x\": unknown field `bogus`"),
            "{e}"
        );
        let e = run_cases(
            &p,
            "c.toml",
            "[[case]]\nname = \"x\"\nuser = \"a\"\nrequest = \"GET /a/../b\"\nexpect = \"allow\"\n",
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "c.toml:4:11: rule \"x\": request: invalid request path: path contains a dot segment"
        );
        let e = run_cases(&p, "c.toml", "[[case]]\nname = \"x\"\nuser = \"a\"\nrequest = \"GET /\"\nexpect = \"allow\"\nrule = \"nope\"\n").unwrap_err();
        assert!(e.message.contains("no rule \"nope\""), "{e}");
        let e = run_cases(
            &p,
            "c.toml",
            "[[case]]\nname = \"x\"\nuser = \"a\"\nrequest = \"GET /\"\nexpect = \"maybe\"\n",
        )
        .unwrap_err();
        assert!(e.message.contains("unknown expectation"), "{e}");
        let e = run_cases(
            &p,
            "c.toml",
            "[[case]]\nname = \"x\"\nuser = \"a\"\nrequest = \"/\"\nexpect = \"deny\"\n",
        )
        .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("request"));
        assert!(run_cases(&p, "c.toml", "").is_err());
    }

    #[test]
    fn claims_in_cases() {
        let p = Policy::from_toml(
            "p.toml",
            r#"
[[rule]]
name = "by-claim"
effect = "allow"
subjects = { claims = { "realm_access.roles" = "viewer" } }
paths = [{ path = "/metrics" }]
"#,
        )
        .unwrap()
        .policy;
        let cases = r#"
[[case]]
name = "has role"
user = "a"
request = "GET /metrics"
expect = "allow"
[case.claims]
realm_access = { roles = ["viewer", "x"] }

[[case]]
name = "no role"
user = "a"
request = "GET /metrics"
expect = "deny"
"#;
        let report = run_cases(&p, "c.toml", cases).unwrap();
        assert!(report.is_success(), "{report}");
    }
}
