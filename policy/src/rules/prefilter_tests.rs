//! The indexed decision (literal index and prefilter) against a reference that
//! evaluates every rule in file order, on random glob-heavy policies.

use proptest::prelude::*;
use proptest::sample::{select, subsequence};

use super::compile::compile;
use super::decide::{Decision, Index, decide};
use super::model::{Effect, Rule, method_bit, verb_bit};
use crate::error::Locator;
use crate::path::normalize_path;
use crate::request::{RequestAttributes, resolve};
use crate::subject::Subject;

/// The language's decision rule, written out with no index: the first
/// matching deny rule denies; else the first matching allow rule whose
/// identity renders allows; else denied.
fn reference(rules: &[Rule], s: &Subject, attrs: &RequestAttributes) -> Decision {
    let mut first_allow = None;
    for rule in rules {
        let target = match attrs {
            RequestAttributes::Resource(r) => rule.matches_resource(r, verb_bit(&r.verb)),
            RequestAttributes::NonResource(n) => normalize_path(&n.path)
                .is_ok_and(|p| rule.matches_path(p.segments(), method_bit(&n.verb))),
        };
        if !target || !rule.subjects.matches(s) {
            continue;
        }
        match rule.effect {
            Effect::Deny => {
                return Decision {
                    allowed: false,
                    rule: Some(rule.name.clone()),
                    forward_as: None,
                };
            }
            Effect::Allow if first_allow.is_none() => {
                first_allow = rule.forward(s).map(|f| (rule.name.clone(), f));
            }
            Effect::Allow => {}
        }
    }
    match first_allow {
        Some((name, f)) => Decision {
            allowed: true,
            rule: Some(name),
            forward_as: Some(std::sync::Arc::new(f)),
        },
        None => Decision {
            allowed: false,
            rule: None,
            forward_as: None,
        },
    }
}

fn subjects_toml() -> impl Strategy<Value = &'static str> {
    select(vec![
        r#"{ users = ["alice"] }"#,
        r#"{ users = ["al*"] }"#,
        r#"{ users = ["*@a.example"] }"#,
        r#"{ users = ["*"] }"#,
        r#"{ groups = ["devs"] }"#,
        r#"{ groups = ["team-*"] }"#,
        r#"{ groups = ["*-ops"] }"#,
        r#"{ groups = ["*"] }"#,
        r#"{ groups = ["t*m*"] }"#,
        r#"{ groups = ["*a*"] }"#,
        r#"{ users = ["bob@a.example"], groups = ["team-*"] }"#,
        r#"{ authenticated = true }"#,
        r#"{ authenticated = true, not_groups = ["team-*"] }"#,
        r#"{ groups = ["*"], not_users = ["al*"] }"#,
        r#"{ claims = { role = "ops" } }"#,
        r#"{ users = ["*@a.example"], claims = { role = "ops" } }"#,
    ])
}

fn resource_toml() -> impl Strategy<Value = String> {
    (
        select(vec![
            r#""""#,
            r#""apps""#,
            r#""*""#,
            r#""app*""#,
            r#""", "apps""#,
        ]),
        select(vec![
            r#""pods""#,
            r#""pods/log""#,
            r#""*""#,
            r#""pod*""#,
            r#""*/exec""#,
            r#""pods/*""#,
            r#""deployments""#,
            r#""*ments", "pods""#,
        ]),
        select(vec![
            "",
            r#", namespaces = [""]"#,
            r#", namespaces = ["dev"]"#,
            r#", namespaces = ["team-*"]"#,
            r#", namespaces = ["*-prod"]"#,
            r#", namespaces = ["*"]"#,
            r#", namespaces = ["t*a"]"#,
            r#", namespaces = ["*e*"]"#,
            r#", namespaces = ["team-a", "*-prod"]"#,
            r#", namespaces = ["", "team-*"]"#,
        ]),
        select(vec!["", r#", names = ["web"]"#, r#", names = ["w*"]"#]),
        select(vec![
            r#"["get"]"#,
            r#"["get", "list", "watch"]"#,
            r#"["create"]"#,
            r#"["*"]"#,
            r#"["delete", "deletecollection"]"#,
        ]),
    )
        .prop_map(|(g, r, ns, names, verbs)| {
            format!("{{ api_groups = [{g}], resources = [{r}]{ns}{names}, verbs = {verbs} }}")
        })
}

fn target_toml() -> impl Strategy<Value = String> {
    let resources = prop::collection::vec(resource_toml(), 1..3)
        .prop_map(|es| format!("resources = [{}]", es.join(", ")));
    // Several entries per rule, so a path rule reaches more than one method bucket.
    let path_entry = (
        select(vec!["/", "/api", "/version", "/apis/apps", "/healthz"]),
        any::<bool>(),
        select(vec![
            "",
            r#", methods = ["get"]"#,
            r#", methods = ["post", "delete", "head"]"#,
        ]),
    )
        .prop_map(|(p, prefix, m)| format!("{{ path = \"{p}\", prefix = {prefix}{m} }}"));
    let paths = prop::collection::vec(path_entry, 1..3)
        .prop_map(|es| format!("paths = [{}]", es.join(", ")));
    prop_oneof![4 => resources, 1 => paths]
}

fn rule_toml() -> impl Strategy<Value = (bool, &'static str, String, &'static str)> {
    (
        prop::bool::weighted(0.2),
        subjects_toml(),
        target_toml(),
        select(vec![
            "",
            "",
            "as_user = \"u:{username}\"\n",
            "as_user = \"{uid}\"\n",
        ]),
    )
}

fn render(rules: &[(bool, &'static str, String, &'static str)]) -> String {
    let mut out = String::new();
    for (i, (deny, subjects, target, mapping)) in rules.iter().enumerate() {
        let (effect, mapping) = if *deny {
            ("deny", "")
        } else {
            ("allow", *mapping)
        };
        out.push_str(&format!(
            "[[rule]]\nname = \"r{i}\"\neffect = \"{effect}\"\nsubjects = {subjects}\n{target}\n{mapping}\n"
        ));
    }
    out
}

fn subject() -> impl Strategy<Value = Subject> {
    (
        select(vec!["alice", "al", "bob@a.example", "system:anonymous", ""]),
        subsequence(
            vec![
                "devs",
                "team-a",
                "eu-ops",
                "team-",
                "t-m",
                "system:unauthenticated",
            ],
            0..4,
        ),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(user, groups, ops, uid)| {
            let mut s = Subject::new(user, groups);
            if ops {
                s.claims.insert("role".into(), "ops".into());
            }
            if uid {
                s.uid = Some("u-1".into());
            }
            s
        })
}

fn request() -> impl Strategy<Value = RequestAttributes> {
    (
        select(vec!["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"]),
        select(vec![
            "/api/v1/namespaces/dev/pods",
            "/api/v1/namespaces/team-a/pods/web",
            "/api/v1/namespaces/eu-prod/pods/web/log",
            "/api/v1/namespaces/team-a/pods/web/exec",
            "/api/v1/namespaces/tea/pods/w1",
            "/api/v1/namespaces/-prod/configmaps",
            "/api/v1/pods",
            "/api/v1/nodes/n1",
            "/apis/apps/v1/namespaces/team-b/deployments/web",
            "/apis/apps/v1/deployments",
            "/apis/apps/v1/watch/namespaces/eu-prod/deployments",
            "/api",
            "/api/v1",
            "/apis/apps",
            "/version",
            "/healthz",
        ]),
        select(vec!["", "watch=1"]),
    )
        .prop_map(|(m, p, q)| {
            resolve(
                m,
                &normalize_path(p).expect("canonical"),
                (!q.is_empty()).then_some(q),
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn indexed_decisions_equal_the_reference(
        rules in prop::collection::vec(rule_toml(), 0..40),
        cases in prop::collection::vec((subject(), request()), 1..16),
    ) {
        let text = render(&rules);
        let (rules, _) = compile(Locator { file: "p.toml", text: &text })
            .unwrap_or_else(|e| panic!("{e}"));
        // Threshold 0: every general rule goes through the prefilter;
        // the default threshold: the mix the gateway runs.
        let prefiltered = Index::with_threshold(&rules, 0);
        let default = Index::build(&rules);
        for (who, req) in &cases {
            let want = reference(&rules, who, req);
            prop_assert_eq!(&decide(&rules, &prefiltered, who, req), &want, "{:?} {}", who, req);
            prop_assert_eq!(&decide(&rules, &default, who, req), &want, "{:?} {}", who, req);
        }
    }
}

/// Many general rules in one bucket, so the default threshold prefilters:
/// the decided rule, the deny, and default deny match the reference.
#[test]
fn large_glob_policy_matches_the_reference() {
    let mut text = String::new();
    for i in 0..200 {
        let (effect, subjects) = match i % 5 {
            0 => ("allow", format!(r#"{{ groups = ["tenant-{i}-*"] }}"#)),
            1 => ("allow", format!(r#"{{ users = ["*@t{i}.example"] }}"#)),
            2 => ("allow", r#"{ groups = ["*"] }"#.to_owned()),
            3 => ("deny", format!(r#"{{ users = ["*@c{i}.example"] }}"#)),
            _ => ("allow", r#"{ authenticated = true }"#.to_owned()),
        };
        let ns = match i % 3 {
            0 => format!(r#""t{i}-*""#),
            1 => format!(r#""*-t{i}-prod""#),
            _ => format!(r#""t{i}-*-dev""#),
        };
        text.push_str(&format!(
            "[[rule]]\nname = \"w{i}\"\neffect = \"{effect}\"\nsubjects = {subjects}\nresources = [{{ api_groups = [\"\"], resources = [\"pods\"], namespaces = [{ns}], verbs = [\"get\"] }}]\n"
        ));
    }
    let (rules, _) = compile(Locator {
        file: "p.toml",
        text: &text,
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let index = Index::build(&rules);
    let get = |ns: &str| {
        resolve(
            "GET",
            &normalize_path(&format!("/api/v1/namespaces/{ns}/pods/web")).expect("canonical"),
            None,
        )
    };
    let mut seen = (false, false, false);
    for i in 0..200 {
        for who in [
            Subject::new(format!("ann@t{i}.example"), ["staff"]),
            Subject::new(format!("cat@c{i}.example"), [format!("tenant-{i}-x")]),
            Subject::new("", Vec::<String>::new()),
        ] {
            for ns in [
                format!("t{i}-x"),
                format!("eu-t{i}-prod"),
                format!("t{i}-x-dev"),
                "sandbox".to_owned(),
            ] {
                let req = get(&ns);
                let got = decide(&rules, &index, &who, &req);
                assert_eq!(got, reference(&rules, &who, &req), "{who:?} {req}");
                seen.0 |= got.allowed;
                seen.1 |= !got.allowed && got.rule.is_some();
                seen.2 |= got.rule.is_none();
            }
        }
    }
    assert_eq!(
        seen,
        (true, true, true),
        "allow, deny and default deny all seen"
    );
}
