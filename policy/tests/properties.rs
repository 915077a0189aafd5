//! Property tests for the security invariants of path normalisation,
//! resolution and decisions.

use kubegate_policy::{Policy, RequestAttributes, Subject, normalize_path, resolve};
use proptest::prelude::*;
use proptest::sample::{select, subsequence};

/// Path pieces chosen to hit every normalisation rule, glued with `/`.
fn path_piece() -> impl Strategy<Value = String> {
    prop_oneof![
        select(vec![
            "api",
            "apis",
            "v1",
            "namespaces",
            "dev",
            "pods",
            "web:80",
            "proxy",
            ".",
            "..",
            "%2e",
            "%2E%2e",
            ".%2e",
            "%2f",
            "%2F",
            "%5c",
            "\\",
            "%00",
            "%7f",
            "%zz",
            "%4",
            "%",
            "%66oo",
            "%20",
            "%3A",
            "%3a",
            "%C3%A9",
            "%ff",
            "%25",
            "a%2Fb",
            "?",
            "#",
            " ",
            "é",
            "",
            "...",
            "~",
            "_x",
            "a;b",
            "\"{}|",
        ])
        .prop_map(str::to_owned),
        "[a-zA-Z0-9%./\\\\:~_-]{0,6}",
        any::<String>().prop_map(|s| s.chars().take(4).collect()),
    ]
}

fn raw_path() -> impl Strategy<Value = String> {
    (
        any::<bool>(),
        prop::collection::vec(path_piece(), 0..6),
        any::<bool>(),
    )
        .prop_map(|(lead, pieces, trail)| {
            let mut p = if lead { "/".to_owned() } else { String::new() };
            p.push_str(&pieces.join("/"));
            if trail {
                p.push('/');
            }
            p
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn normalisation_is_idempotent(raw in raw_path()) {
        if let Ok(p) = normalize_path(&raw) {
            prop_assert_eq!(p.as_str(), raw.as_str());
            prop_assert_eq!(normalize_path(p.as_str()), Ok(p));
        }
    }

    #[test]
    fn accepted_paths_have_no_dot_segments_or_encoded_separators(raw in raw_path()) {
        if let Ok(p) = normalize_path(&raw) {
            let lower = raw.to_ascii_lowercase();
            prop_assert!(!lower.contains("%2f") && !lower.contains("%5c") && !lower.contains("%2e"));
            prop_assert!(!raw.contains('\\'));
            // Only a proxy request's backend path may hold empty segments.
            let decided = &raw[..raw.len() - p.backend_path().map_or(0, str::len)];
            prop_assert!(!decided.contains("//"));
            prop_assert!(decided == "/" || !decided.ends_with('/'));
            prop_assert!(!raw.split('/').any(|s| s == "." || s == ".."));
            for seg in p.segments() {
                prop_assert!(seg != "." && seg != ".." && !seg.is_empty());
                prop_assert!(!seg.contains('/') && !seg.contains('\\'));
                prop_assert!(!seg.chars().any(char::is_control));
            }
            // Raw segments split the same way the decoded ones do.
            let raw_count = if decided == "/" { 0 } else { decided.matches('/').count() };
            prop_assert_eq!(raw_count, p.segments().len());
        }
    }

    #[test]
    fn a_backend_path_never_changes_the_decision(
        target in select(vec![
            "/api/v1/namespaces/dev/services/web:80/proxy",
            "/api/v1/namespaces/dev/pods/web-0/proxy",
            "/api/v1/nodes/n1:10250/proxy",
            "/api/v1/proxy/namespaces/dev/services/web",
        ]),
        method in select(vec!["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]),
        tail in raw_path(),
        query in select(vec!["", "x=1", "watch=1", "fieldSelector=metadata.name%3Dx"]),
    ) {
        let raw = format!("{target}{}", tail.strip_prefix('/').map_or(String::new(), |t| format!("/{t}")));
        let q = (!query.is_empty()).then_some(query);
        let bare = resolve(method, &normalize_path(target).unwrap(), q);
        if let Ok(p) = normalize_path(&raw) {
            prop_assert_eq!(p.as_str(), raw.as_str());
            prop_assert_eq!(p.backend_path(), Some(&raw[target.len()..]));
            let RequestAttributes::Resource(mut got) = resolve(method, &p, q) else {
                panic!("a proxy request is a resource request");
            };
            prop_assert_eq!(&got.path, &raw);
            got.path = target.to_owned();
            prop_assert_eq!(RequestAttributes::Resource(got), bare);
        }
    }
}

// ---------------------------------------------------------------- decisions

fn subjects_toml() -> impl Strategy<Value = &'static str> {
    select(vec![
        r#"{ users = ["alice"] }"#,
        r#"{ groups = ["devs"] }"#,
        r#"{ groups = ["team-*"] }"#,
        r#"{ authenticated = true }"#,
        r#"{ authenticated = true, not_groups = ["admins"] }"#,
        r#"{ users = ["bob", "carol"], groups = ["admins"] }"#,
        r#"{ claims = { role = "ops" } }"#,
    ])
}

fn target_toml() -> impl Strategy<Value = String> {
    let resources = (
        select(vec![r#""""#, r#""apps""#, r#""*""#]),
        select(vec![r#""pods""#, r#""pods/log""#, r#""*""#, r#""secrets""#, r#""*/exec""#, r#""deployments""#]),
        select(vec!["", r#", namespaces = ["dev"]"#, r#", namespaces = ["team-*"]"#, r#", namespaces = [""]"#]),
        select(vec!["", r#", names = ["web"]"#]),
        select(vec![r#"["get"]"#, r#"["get", "list", "watch"]"#, r#"["create"]"#, r#"["*"]"#, r#"["delete", "deletecollection"]"#]),
    )
        .prop_map(|(g, r, ns, names, verbs)| {
            format!("resources = [{{ api_groups = [{g}], resources = [{r}]{ns}{names}, verbs = {verbs} }}]")
        });
    let paths = (
        select(vec!["/", "/api", "/version", "/apis/apps"]),
        any::<bool>(),
        select(vec![
            "",
            r#", methods = ["get"]"#,
            r#", methods = ["post", "delete"]"#,
        ]),
    )
        .prop_map(|(p, prefix, m)| format!("paths = [{{ path = \"{p}\", prefix = {prefix}{m} }}]"));
    prop_oneof![3 => resources, 1 => paths]
}

#[derive(Clone, Debug)]
struct RuleText {
    deny: bool,
    subjects: &'static str,
    target: String,
}

fn rule_text() -> impl Strategy<Value = RuleText> {
    (any::<bool>(), subjects_toml(), target_toml()).prop_map(|(deny, subjects, target)| RuleText {
        deny,
        subjects,
        target,
    })
}

fn render(rules: &[RuleText]) -> String {
    let mut out = String::new();
    for (i, r) in rules.iter().enumerate() {
        out.push_str(&format!(
            "[[rule]]\nname = \"r{i}\"\neffect = \"{}\"\nsubjects = {}\n{}\n\n",
            if r.deny { "deny" } else { "allow" },
            r.subjects,
            r.target
        ));
    }
    out
}

fn subject() -> impl Strategy<Value = Subject> {
    (
        select(vec!["alice", "bob", "dave", "system:anonymous"]),
        subsequence(
            vec!["devs", "team-a", "admins", "system:unauthenticated"],
            0..3,
        ),
        any::<bool>(),
    )
        .prop_map(|(user, groups, ops)| {
            let mut s = Subject::new(user, groups);
            if ops {
                s.claims.insert("role".into(), "ops".into());
            }
            s
        })
}

fn request() -> impl Strategy<Value = RequestAttributes> {
    (
        select(vec!["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"]),
        select(vec![
            "/api/v1/namespaces/dev/pods",
            "/api/v1/namespaces/dev/pods/web",
            "/api/v1/namespaces/dev/pods/web/log",
            "/api/v1/namespaces/team-a/pods/web/exec",
            "/api/v1/namespaces/dev/secrets/web",
            "/api/v1/pods",
            "/api/v1/nodes/n1",
            "/apis/apps/v1/namespaces/dev/deployments/web",
            "/api",
            "/api/v1",
            "/apis/apps",
            "/version",
            "/healthz",
        ]),
        select(vec!["", "watch=1", "fieldSelector=metadata.name%3Dweb"]),
    )
        .prop_map(|(m, p, q)| resolve(m, &normalize_path(p).unwrap(), (!q.is_empty()).then_some(q)))
}

fn policy(rules: &[RuleText]) -> Policy {
    Policy::from_toml("prop.toml", &render(rules))
        .unwrap_or_else(|e| panic!("{e}"))
        .policy
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn adding_a_deny_rule_never_allows_more(
        rules in prop::collection::vec(rule_text(), 0..8),
        extra in rule_text(),
        at in any::<prop::sample::Index>(),
        who in subject(),
        req in request(),
    ) {
        let before = policy(&rules).decide(&who, &req);
        let mut with_deny = rules.clone();
        with_deny.insert(at.index(rules.len() + 1), RuleText { deny: true, ..extra });
        let after = policy(&with_deny).decide(&who, &req);
        prop_assert!(!after.allowed || before.allowed, "deny rule turned {before:?} into {after:?}");
        if after.allowed {
            // Same allow rule decides (modulo renumbering), same identity.
            prop_assert_eq!(before.forward_as, after.forward_as);
        }
    }

    #[test]
    fn decisions_do_not_depend_on_query_order(
        rules in prop::collection::vec(rule_text(), 0..8),
        who in subject(),
        method in select(vec!["GET", "DELETE", "POST"]),
        path in select(vec!["/api/v1/namespaces/dev/pods", "/api/v1/namespaces/dev/pods/web/log", "/apis/apps/v1/deployments"]),
        params in subsequence(vec![
            "watch=1", "watch=false", "fieldSelector=metadata.name%3Dweb", "limit=500",
            "follow=true", "resourceVersion=0", "labelSelector=app%3Dweb", "timeoutSeconds=30",
            "allowWatchBookmarks=true", "%77atch=true",
        ], 0..7),
        shuffled in any::<u64>(),
    ) {
        // Keys must be distinct: with repeated keys the first value wins, in
        // the API server too, so order legitimately matters there.
        let mut params: Vec<&str> = params;
        let mut seen = std::collections::HashSet::new();
        params.retain(|p| {
            let key = p.split('=').next().unwrap().replace("%77", "w");
            seen.insert(key)
        });
        let mut perm = params.clone();
        let mut x = shuffled | 1;
        for i in (1..perm.len()).rev() {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            perm.swap(i, (x % (i as u64 + 1)) as usize);
        }
        let p = policy(&rules);
        let path = normalize_path(path).unwrap();
        let (q1, q2) = (params.join("&"), perm.join("&"));
        let a1 = resolve(method, &path, Some(&q1));
        let a2 = resolve(method, &path, Some(&q2));
        prop_assert_eq!(&a1, &a2);
        prop_assert_eq!(p.decide(&who, &a1), p.decide(&who, &a2));
    }
}
