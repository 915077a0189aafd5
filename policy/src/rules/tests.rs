//! Loading, validation and decision tests.

use super::*;
use crate::path::normalize_path;
use crate::request::resolve;
use crate::subject::ForwardIdentity;

fn load(text: &str) -> LoadedPolicy {
    Policy::from_toml("p.toml", text).unwrap_or_else(|e| panic!("{e}"))
}

fn load_err(text: &str) -> PolicyError {
    Policy::from_toml("p.toml", text).expect_err("policy should not load")
}

fn attrs(request: &str) -> RequestAttributes {
    let (method, target) = request.split_once(' ').unwrap();
    let (p, q) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    resolve(method, &normalize_path(p).unwrap(), q)
}

fn who(user: &str, groups: &[&str]) -> Subject {
    Subject::new(user, groups.iter().copied())
}

fn check(p: &Policy, s: &Subject, request: &str) -> String {
    p.decide(s, &attrs(request)).reason()
}

const BASE: &str = r#"
default = "deny"

[[rule]]
name = "discovery"
effect = "allow"
subjects = { authenticated = true }
paths = [
  { path = "/api", prefix = true, methods = ["get"] },
  { path = "/version" },
]

[[rule]]
name = "devs-read-dev"
effect = "allow"
subjects = { groups = ["devs"] }
resources = [
  { api_groups = [""], resources = ["pods", "pods/log"], namespaces = ["dev", "team-*"], verbs = ["get", "list", "watch"] },
]

[[rule]]
name = "no-exec"
effect = "deny"
subjects = { authenticated = true, not_groups = ["admins"] }
resources = [{ api_groups = [""], resources = ["pods/exec", "pods/attach"], verbs = ["*"] }]

[[rule]]
name = "admins"
effect = "allow"
subjects = { groups = ["admins"] }
resources = [{ api_groups = ["*"], resources = ["*"], verbs = ["*"] }]

[[rule]]
name = "contractors"
effect = "allow"
subjects = { groups = ["contractors"] }
resources = [{ api_groups = ["*"], resources = ["*"], namespaces = ["contract-*"], verbs = ["get", "list", "watch"] }]
as_user = "contractor:{username}"
as_groups = ["view-only"]
"#;

#[test]
fn decisions() {
    let loaded = load(BASE);
    // Only the escalation paths of the admins' and contractors' "*" rules.
    let rules: Vec<_> = loaded.warnings.iter().map(|w| w.rule.as_deref()).collect();
    assert_eq!(rules.len(), 12, "{:?}", loaded.warnings);
    assert!(
        rules[..11].iter().all(|r| *r == Some("admins")) && rules[11] == Some("contractors"),
        "{rules:?}"
    );
    let p = &loaded.policy;
    assert_eq!(p.rule_count(), 5);
    let alice = who("alice", &["devs"]);
    let root = who("root", &["admins"]);
    let dave = who("dave", &["contractors"]);
    let anon = who("system:anonymous", &["system:unauthenticated"]);

    assert_eq!(
        check(p, &alice, "GET /api"),
        "allowed by rule \"discovery\""
    );
    assert_eq!(
        check(p, &alice, "GET /api/v1"),
        "allowed by rule \"discovery\""
    );
    assert_eq!(check(p, &alice, "GET /apis"), "no rule allowed");
    assert_eq!(check(p, &alice, "POST /api"), "no rule allowed");
    assert_eq!(
        check(p, &alice, "DELETE /version"),
        "allowed by rule \"discovery\""
    );
    assert_eq!(check(p, &alice, "GET /version/x"), "no rule allowed");
    assert_eq!(check(p, &anon, "GET /version"), "no rule allowed");

    assert_eq!(
        check(p, &alice, "GET /api/v1/namespaces/dev/pods"),
        "allowed by rule \"devs-read-dev\""
    );
    assert_eq!(
        check(p, &alice, "GET /api/v1/namespaces/team-a/pods/x/log"),
        "allowed by rule \"devs-read-dev\""
    );
    assert_eq!(
        check(p, &alice, "GET /api/v1/namespaces/dev/pods?watch=1"),
        "allowed by rule \"devs-read-dev\""
    );
    // all-namespace list is not a list in dev
    assert_eq!(check(p, &alice, "GET /api/v1/pods"), "no rule allowed");
    assert_eq!(
        check(p, &alice, "DELETE /api/v1/namespaces/dev/pods/x"),
        "no rule allowed"
    );
    // plain "pods" does not cover subresources
    assert_eq!(
        check(p, &alice, "GET /api/v1/namespaces/dev/pods/x/status"),
        "no rule allowed"
    );
    assert_eq!(
        check(p, &alice, "GET /api/v1/namespaces/dev/pods/x/exec"),
        "denied by rule \"no-exec\""
    );
    assert_eq!(
        check(p, &alice, "GET /apis/apps/v1/namespaces/dev/deployments"),
        "no rule allowed"
    );

    assert_eq!(
        check(p, &root, "GET /api/v1/namespaces/dev/pods/x/exec"),
        "allowed by rule \"admins\""
    );
    assert_eq!(
        check(p, &root, "DELETE /api/v1/nodes/n1"),
        "allowed by rule \"admins\""
    );
    // resource rules never match non-resource paths
    assert_eq!(check(p, &root, "GET /healthz"), "no rule allowed");

    let d = p.decide(
        &dave,
        &attrs("GET /apis/apps/v1/namespaces/contract-x/deployments"),
    );
    assert!(d.allowed);
    let fwd = d.forward_as.unwrap();
    assert_eq!(fwd.user, "contractor:dave");
    assert_eq!(fwd.groups, ["view-only"]);
    assert_eq!(fwd.uid, None);
    assert_eq!(
        check(p, &dave, "GET /api/v1/namespaces/contract-x/pods/p/exec"),
        "denied by rule \"no-exec\""
    );
    assert_eq!(
        check(p, &dave, "GET /api/v1/namespaces/other/pods"),
        "no rule allowed"
    );

    // an allow without mapping forwards the subject unchanged
    let mut alice2 = alice.clone();
    alice2.uid = Some("u1".into());
    let d = p.decide(&alice2, &attrs("GET /api/v1/namespaces/dev/pods"));
    assert_eq!(d.forward_as.as_deref(), Some(&ForwardIdentity::of(&alice2)));
    let d = p.decide(&alice2, &attrs("GET /api/v1/namespaces/prod/pods"));
    assert_eq!(
        d,
        Decision {
            allowed: false,
            rule: None,
            forward_as: None
        }
    );
}

#[test]
fn deny_beats_earlier_allow_and_first_allow_wins() {
    let p = load(
        r#"
[[rule]]
name = "a1"
effect = "allow"
subjects = { users = ["u"] }
resources = [{ api_groups = [""], resources = ["*"], verbs = ["get"] }]
[[rule]]
name = "a2"
effect = "allow"
subjects = { authenticated = true }
resources = [{ api_groups = [""], resources = ["*"], verbs = ["get"] }]
as_groups = ["g2"]
[[rule]]
name = "d"
effect = "deny"
subjects = { users = ["u*"] }
resources = [{ api_groups = [""], resources = ["secrets"], verbs = ["*"] }]
"#,
    )
    .policy;
    let u = who("u", &[]);
    assert_eq!(
        check(&p, &u, "GET /api/v1/namespaces/x/configmaps/c"),
        "allowed by rule \"a1\""
    );
    assert_eq!(
        check(&p, &u, "GET /api/v1/namespaces/x/secrets/c"),
        "denied by rule \"d\""
    );
    let v = who("v", &["x"]);
    let d = p.decide(&v, &attrs("GET /api/v1/namespaces/x/configmaps/c"));
    assert_eq!(d.rule.as_deref(), Some("a2"));
    let f = d.forward_as.unwrap();
    assert_eq!(
        (f.user.as_str(), f.groups.as_slice()),
        ("v", &["g2".to_owned()][..])
    );
}

#[test]
fn subjects_semantics() {
    let p = load(
        r#"
[[rule]]
name = "r"
effect = "allow"
subjects = { users = ["alice", "svc-*"], groups = ["ops"], claims = { email_verified = "true", "realm_access.roles" = ["admin", "editor"] }, not_users = ["svc-bad"], not_groups = ["blocked"] }
paths = [{ path = "/x" }]
"#,
    )
    .policy;
    let ok = |s: &Subject| p.decide(s, &attrs("GET /x")).allowed;
    assert!(ok(&who("alice", &[])));
    assert!(ok(&who("svc-a", &[])));
    assert!(!ok(&who("svc-bad", &[])));
    assert!(ok(&who("bob", &["ops"])));
    assert!(!ok(&who("bob", &["ops", "blocked"])));
    assert!(!ok(&who("bob", &["dev"])));
    let mut c = who("carol", &[]);
    c.claims
        .insert("email_verified".into(), serde_json::json!(true));
    assert!(ok(&c));
    let mut c = who("carol", &[]);
    c.claims.insert(
        "realm_access".into(),
        serde_json::json!({"roles": ["x", "editor"]}),
    );
    assert!(ok(&c));
    c.groups.push("blocked".into());
    assert!(!ok(&c));
}

#[test]
fn resource_patterns() {
    let p = load(
        r#"
[[rule]]
name = "proxy"
effect = "allow"
subjects = { users = ["u"] }
resources = [
  { api_groups = [""], resources = ["*/proxy"], verbs = ["get"] },
  { api_groups = ["apps"], resources = ["deployments/*"], verbs = ["*"] },
  { api_groups = [""], resources = ["configmaps"], names = ["app-*"], verbs = ["get"] },
  { api_groups = [""], resources = ["nodes", "namespaces"], namespaces = [""], verbs = ["get", "list"] },
  { api_groups = ["*.example.com"], resources = ["widgets"], verbs = ["list"] },
]
"#,
    )
    .policy;
    let u = who("u", &[]);
    let ok = |r: &str| p.decide(&u, &attrs(r)).allowed;
    assert!(ok("GET /api/v1/namespaces/x/services/web:80/proxy/a"));
    assert!(ok("GET /api/v1/nodes/n/proxy"));
    assert!(ok("HEAD /api/v1/nodes/n/proxy/"));
    // The method's verb: a get grant does not let a POST through.
    assert!(!ok("POST /api/v1/namespaces/x/services/web:80/proxy/a"));
    assert!(!ok("GET /api/v1/namespaces/x/services/web"));
    assert!(ok("PUT /apis/apps/v1/namespaces/x/deployments/d/scale"));
    assert!(!ok("PUT /apis/apps/v1/namespaces/x/deployments/d"));
    assert!(ok("GET /api/v1/namespaces/x/configmaps/app-1"));
    assert!(!ok("GET /api/v1/namespaces/x/configmaps/other"));
    // names never match a request without a name
    assert!(!ok("GET /api/v1/namespaces/x/configmaps"));
    // ...but a metadata.name field selector gives a list a name
    assert!(!ok(
        "GET /api/v1/namespaces/x/configmaps?fieldSelector=metadata.name%3Dapp-1"
    ));
    assert!(ok("GET /api/v1/nodes"));
    assert!(ok("GET /api/v1/namespaces"));
    // namespace "x" itself has namespace "x", so `namespaces = [""]` excludes it
    assert!(!ok("GET /api/v1/namespaces/x"));
    assert!(ok("GET /apis/a.example.com/v1/widgets"));
    assert!(!ok("GET /apis/example.com/v1/widgets"));
}

#[test]
fn non_canonical_attributes_match_no_path_rule() {
    let p = load(
        r#"
[[rule]]
name = "all"
effect = "allow"
subjects = { authenticated = true }
paths = [{ path = "/", prefix = true }]
"#,
    )
    .policy;
    let s = who("a", &[]);
    let bad = RequestAttributes::NonResource(crate::NonResourceAttributes {
        verb: "get".into(),
        path: "/a/../b".into(),
    });
    assert!(!p.decide(&s, &bad).allowed);
    assert!(p.decide(&s, &attrs("GET /anything/at/all")).allowed);
    assert!(p.decide(&s, &attrs("GET /")).allowed);
}

#[test]
fn templates_needing_uid_skip_subjects_without_one() {
    let p = load(
        r#"
[[rule]]
name = "by-uid"
effect = "allow"
subjects = { authenticated = true }
paths = [{ path = "/x" }]
as_user = "u:{uid}"
[[rule]]
name = "fallback"
effect = "allow"
subjects = { authenticated = true }
paths = [{ path = "/x" }]
"#,
    )
    .policy;
    let mut s = who("a", &["g"]);
    assert_eq!(check(&p, &s, "GET /x"), "allowed by rule \"fallback\"");
    s.uid = Some("42".into());
    let d = p.decide(&s, &attrs("GET /x"));
    assert_eq!(d.rule.as_deref(), Some("by-uid"));
    assert_eq!(d.forward_as.unwrap().user, "u:42");
}

#[test]
fn index_handles_literal_and_general_rules_in_file_order() {
    let mut text = String::new();
    for i in 0..50 {
        text.push_str(&format!(
            "[[rule]]\nname = \"g{i}\"\neffect = \"allow\"\nsubjects = {{ groups = [\"team-{i}\"], users = [\"user-{i}\"] }}\nresources = [{{ api_groups = [\"\"], resources = [\"pods\"], namespaces = [\"team-{i}\"], verbs = [\"get\"] }}]\n\n"
        ));
    }
    text.push_str("[[rule]]\nname = \"late-general\"\neffect = \"allow\"\nsubjects = { authenticated = true }\nresources = [{ api_groups = [\"\"], resources = [\"pods\"], verbs = [\"get\"] }]\n");
    let p = load(&text).policy;
    assert_eq!(
        check(
            &p,
            &who("x", &["team-7"]),
            "GET /api/v1/namespaces/team-7/pods/p"
        ),
        "allowed by rule \"g7\""
    );
    assert_eq!(
        check(
            &p,
            &who("user-9", &[]),
            "GET /api/v1/namespaces/team-9/pods/p"
        ),
        "allowed by rule \"g9\""
    );
    assert_eq!(
        check(
            &p,
            &who("x", &["team-7"]),
            "GET /api/v1/namespaces/team-8/pods/p"
        ),
        "allowed by rule \"late-general\""
    );
    assert_eq!(
        check(
            &p,
            &who("x", &["team-7"]),
            "LIST /api/v1/namespaces/team-7/pods"
        ),
        "no rule allowed"
    );
}

#[test]
fn unknown_verbs_reach_only_wildcard_rules() {
    let p = load(
        r#"
[[rule]]
name = "star"
effect = "allow"
subjects = { users = ["s"] }
resources = [{ api_groups = ["*"], resources = ["*"], verbs = ["*"] }]
[[rule]]
name = "get"
effect = "allow"
subjects = { users = ["g"] }
resources = [{ api_groups = ["*"], resources = ["*"], verbs = ["get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"] }]
"#,
    )
    .policy;
    assert!(
        p.decide(&who("s", &[]), &attrs("OPTIONS /api/v1/pods"))
            .allowed
    );
    assert!(
        !p.decide(&who("g", &[]), &attrs("OPTIONS /api/v1/pods"))
            .allowed
    );
    assert!(
        !p.decide(&who("g", &[]), &attrs("GET /api/v1/proxy/nodes/n"))
            .allowed
    );
}

fn rule(body: &str) -> String {
    format!(
        "[[rule]]\nname = \"r\"\neffect = \"allow\"\nsubjects = {{ users = [\"u\"] }}\n{body}\n"
    )
}

#[test]
fn load_errors_are_located() {
    let cases: &[(String, &str)] = &[
        (
            "[[rule]]\nname = \"r\"\neffect = \"allow\"\nsubjects = { users = [\"u\"] }\npaths = [{ path = \"/\" }]\nbogus = 1\n".into(),
            "p.toml:6:1: rule \"r\": unknown field `bogus`",
        ),
        (
            "[[rule]]\nname = \"r\"\neffect = \"allow\"\nsubjects = { users = [\"u\"], nobody = [] }\npaths = [{ path = \"/\" }]\n".into(),
            "p.toml:4:29: rule \"r\": unknown field `nobody`",
        ),
        ("default = \"allow\"\n".into(), "p.toml:1:11: default: unsupported default"),
        ("bogus = 1\n".into(), "p.toml:1:1: unknown field `bogus`"),
        (
            "[[rule]]\nname = \"r\"\neffect = \"permit\"\nsubjects = { users = [\"u\"] }\npaths = [{ path = \"/\" }]\n".into(),
            "p.toml:3:10: rule \"r\": effect: unknown effect \"permit\"",
        ),
        (rule("resources = [{ api_groups = [\"\"], resources = [\"pods\"], verbs = [\"gett\"] }]"),
            "p.toml:5:66: rule \"r\": resources[0].verbs[0]: unknown verb \"gett\""),
        (rule("resources = [{ api_groups = [\"\"], resources = [\"pods\"], verbs = [] }]"),
            "p.toml:5:65: rule \"r\": resources[0].verbs: list must not be empty"),
        (rule("resources = [{ api_groups = [\"\"], resources = [\"pods\"], namespaces = [\"Dev\"], verbs = [\"get\"] }]"),
            "p.toml:5:71: rule \"r\": resources[0].namespaces[0]: glob that cannot match any namespace"),
        (rule("resources = [{ api_groups = [\"\"], resources = [\"pods\"], namespaces = [\"team_*\"], verbs = [\"get\"] }]"),
            "rule \"r\": resources[0].namespaces[0]: glob that cannot match any namespace"),
        (rule("resources = [{ api_groups = [\"\"], resources = [\"Pods\"], verbs = [\"get\"] }]"),
            "resources[0].resources[0]: glob that cannot match any resource"),
        (rule("resources = [{ api_groups = [\"\"], resources = [\"a/b/c\"], verbs = [\"get\"] }]"),
            "resources[0].resources[0]: expected \"resource\" or \"resource/subresource\""),
        (rule("resources = [{ api_groups = [\"\"], resources = [\"pods\"], names = [\"a/b\"], verbs = [\"get\"] }]"),
            "resources[0].names[0]: glob that cannot match any name"),
        (rule("resources = [{ api_groups = [\"Apps\"], resources = [\"pods\"], verbs = [\"get\"] }]"),
            "resources[0].api_groups[0]: glob that cannot match any api group"),
        (rule("resources = [{ resources = [\"pods\"], verbs = [\"get\"] }]"),
            "missing field `api_groups`"),
        (rule("paths = [{ path = \"/a/../b\" }]"),
            "p.toml:5:19: rule \"r\": paths[0].path: path is not canonical: path contains a dot segment"),
        (rule("paths = [{ path = \"/healthz/\" }]"), "path contains an empty segment"),
        (rule("paths = [{ path = \"/x\", methods = [\"GET\"] }]"), "paths[0].methods[0]: unknown method \"GET\""),
        (rule("paths = []"), "rule \"r\": paths: list must not be empty"),
        (rule("paths = [{ path = \"/x\" }]\nresources = [{ api_groups = [\"\"], resources = [\"pods\"], verbs = [\"get\"] }]"),
            "resources: a rule has either resources or paths, not both"),
        (rule(""), "a rule needs resources or paths"),
        (rule("paths = [{ path = \"/x\" }]\nas_user = \"x:{email}\""),
            "p.toml:6:11: rule \"r\": as_user: unknown placeholder {email}"),
        (rule("paths = [{ path = \"/x\" }]\nas_groups = [\"{username\"]"),
            "as_groups[0]: unclosed `{`"),
        (
            "[[rule]]\nname = \"r\"\neffect = \"deny\"\nsubjects = { users = [\"u\"] }\npaths = [{ path = \"/x\" }]\nas_user = \"x\"\n".into(),
            "as_user: as_user is only allowed on allow rules",
        ),
        (
            "[[rule]]\nname = \"r\"\neffect = \"allow\"\nsubjects = { not_users = [\"u\"] }\npaths = [{ path = \"/x\" }]\n".into(),
            "p.toml:4:12: rule \"r\": subjects: subject set selects nobody",
        ),
        (
            "[[rule]]\nname = \"r\"\neffect = \"allow\"\nsubjects = {}\npaths = [{ path = \"/x\" }]\n".into(),
            "subjects: subject set selects nobody",
        ),
        (
            "[[rule]]\nname = \"r\"\neffect = \"allow\"\nsubjects = { authenticated = false }\npaths = [{ path = \"/x\" }]\n".into(),
            "subjects.authenticated: authenticated can only be true",
        ),
        (
            "[[rule]]\nname = \"r\"\neffect = \"allow\"\nsubjects = { groups = [] }\npaths = [{ path = \"/x\" }]\n".into(),
            "subjects.groups: list must not be empty",
        ),
        (
            "[[rule]]\nname = \"r\"\neffect = \"allow\"\nsubjects = { groups = [\"\"] }\npaths = [{ path = \"/x\" }]\n".into(),
            "subjects.groups[0]: must not be empty",
        ),
        (
            "[[rule]]\nname = \"r\"\neffect = \"allow\"\nsubjects = { claims = { roles = 3 } }\npaths = [{ path = \"/x\" }]\n".into(),
            "subjects.claims.roles: claim value must be a string",
        ),
        (
            "[[rule]]\nname = \"\"\neffect = \"allow\"\nsubjects = { users = [\"u\"] }\npaths = [{ path = \"/x\" }]\n".into(),
            "p.toml:2:8: name: rule name must not be empty",
        ),
        (
            format!("{}{}", rule("paths = [{ path = \"/x\" }]"), rule("paths = [{ path = \"/y\" }]")),
            "p.toml:7:8: rule \"r\": name: duplicate rule name (first defined on line 2)",
        ),
        ("[[rule]\n".into(), "p.toml:1:"),
    ];
    for (text, want) in cases {
        let e = load_err(text).to_string();
        assert!(
            e.contains(want),
            "error {e:?} does not contain {want:?}\n--- policy:\n{text}"
        );
    }
    let e = load_err(&rule("paths = [{ path = \"/x\", methods = [\"GET\"] }]"));
    assert_eq!(
        (e.file.as_str(), e.line, e.column),
        ("p.toml", Some(5), Some(36))
    );
    assert_eq!(e.rule.as_deref(), Some("r"));
    assert_eq!(e.field.as_deref(), Some("paths[0].methods[0]"));
}

#[test]
fn warnings() {
    let loaded = load(
        r#"
[[rule]]
name = "no-secrets"
effect = "deny"
subjects = { authenticated = true }
resources = [{ api_groups = [""], resources = ["secrets", "configmaps"], verbs = ["*"] }]

[[rule]]
name = "alice-secrets"
effect = "allow"
subjects = { users = ["alice"], groups = ["devs"] }
resources = [{ api_groups = [""], resources = ["secrets"], namespaces = ["dev"], verbs = ["get"] }]

[[rule]]
name = "not-shadowed"
effect = "allow"
subjects = { users = ["alice"] }
resources = [{ api_groups = [""], resources = ["secrets", "pods"], verbs = ["get"] }]

[[rule]]
name = "anon-not-shadowed"
effect = "allow"
subjects = { users = ["system:anonymous"] }
resources = [{ api_groups = [""], resources = ["secrets"], verbs = ["get"] }]
"#,
    );
    let w: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        w,
        [
            "p.toml:9:8: rule \"alice-secrets\": rule never allows anything: every request it matches is denied by rule \"no-secrets\"",
            // The shadowed rule allows nothing, so only the live ones read secrets.
            "p.toml:18:14: rule \"not-shadowed\": resources[0]: escalation path: get on secrets in every namespace: reads secrets directly, service-account tokens included",
            "p.toml:24:14: rule \"anon-not-shadowed\": resources[0]: escalation path: get on secrets in every namespace: reads secrets directly, service-account tokens included",
        ]
    );
    let loaded = load("");
    assert_eq!(
        loaded.warnings[0].to_string(),
        "p.toml: policy has no rules: every request is denied"
    );
    assert!(
        !loaded
            .policy
            .decide(&who("a", &[]), &attrs("GET /"))
            .allowed
    );
}

#[test]
fn debug_is_short() {
    let p = load(BASE).policy;
    assert_eq!(
        format!("{p:?}"),
        "Policy { source: \"p.toml\", rules: 5, .. }"
    );
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Policy>();
}

#[test]
fn namespace_keyed_general_rules_keep_file_order() {
    let p = load(
        r#"
[[rule]]
name = "ns-a"
effect = "allow"
subjects = { authenticated = true }
resources = [{ api_groups = [""], resources = ["pods"], namespaces = ["a", ""], verbs = ["get", "list"] }]
as_groups = ["from-ns-a"]
[[rule]]
name = "any-ns"
effect = "allow"
subjects = { authenticated = true }
resources = [{ api_groups = [""], resources = ["pods"], verbs = ["get"] }]
[[rule]]
name = "ns-b-deny"
effect = "deny"
subjects = { authenticated = true }
resources = [{ api_groups = [""], resources = ["pods"], namespaces = ["b"], names = ["secret-*"], verbs = ["*"] }]
[[rule]]
name = "ns-c"
effect = "allow"
subjects = { authenticated = true }
resources = [{ api_groups = [""], resources = ["pods"], namespaces = ["c"], verbs = ["list"] }]
"#,
    )
    .policy;
    let s = who("x", &["g"]);
    assert_eq!(
        check(&p, &s, "GET /api/v1/namespaces/a/pods/p"),
        "allowed by rule \"ns-a\""
    );
    assert_eq!(
        check(&p, &s, "GET /api/v1/pods"),
        "allowed by rule \"ns-a\""
    );
    assert_eq!(
        check(&p, &s, "GET /api/v1/namespaces/b/pods/p"),
        "allowed by rule \"any-ns\""
    );
    assert_eq!(
        check(&p, &s, "GET /api/v1/namespaces/b/pods/secret-1"),
        "denied by rule \"ns-b-deny\""
    );
    assert_eq!(
        check(&p, &s, "GET /api/v1/namespaces/c/pods"),
        "allowed by rule \"ns-c\""
    );
    assert_eq!(
        check(&p, &s, "GET /api/v1/namespaces/d/pods"),
        "no rule allowed"
    );
}

#[test]
fn claims_with_dotted_keys_and_resource_path_warning() {
    let loaded = load(
        r#"
[[rule]]
name = "c"
effect = "allow"
subjects = { claims = { realm_access.roles = "admin", "groups" = ["a", "b"] } }
paths = [{ path = "/api/v1/pods" }, { path = "/metrics" }]
"#,
    );
    let w: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].starts_with("p.toml:6:19: rule \"c\": paths[0].path: this is a resource path"),
        "{w:?}"
    );
    let mut s = who("x", &[]);
    s.claims.insert(
        "realm_access".into(),
        serde_json::json!({"roles": ["admin"]}),
    );
    assert!(loaded.policy.decide(&s, &attrs("GET /metrics")).allowed);
    let mut s = who("x", &[]);
    s.claims.insert("groups".into(), serde_json::json!("b"));
    assert!(loaded.policy.decide(&s, &attrs("GET /metrics")).allowed);
    assert!(
        !loaded
            .policy
            .decide(&who("x", &[]), &attrs("GET /metrics"))
            .allowed
    );
}

#[test]
fn syntax_errors_are_one_line() {
    for text in [
        "[[rule]\n",
        "a = \n",
        "x = [1,\n",
        "[[rule]]\nname = \"a\"\nname = \"b\"\n",
    ] {
        let e = load_err(text);
        let s = e.to_string();
        assert!(!s.contains('\n'), "{s:?}");
        assert!(e.line.is_some(), "{s:?}");
    }
}
