//! `Policy::decide` latency at 10, 1,000 and 10,000 rules.
//!
//! The generated policies look like real multi-tenant ones: per-team allow
//! rules keyed by group and namespace, a handful of broad rules for everyone
//! authenticated, and a few deny rules. Scenarios:
//! - `team_allow`: a team member reads pods in their namespace (allowed by a
//!   rule in the middle of the file);
//! - `default_deny`: a user in no team group asks for something nobody grants;
//! - `authenticated_ns`: every rule is `authenticated = true` limited to one
//!   namespace (subjects cannot be indexed, namespaces can);
//! - `path`: a discovery request;
//! - `wildcard_*`: 1,000 rules whose subjects are all globs (`tenant-N-*`
//!   groups, `*@tN.example` users, `*`, `authenticated`) and whose
//!   namespaces are all globs (`tN-*`, `*-tN-prod`, `tN-*-dev`), so nothing
//!   is indexable by literal name: a request allowed by a rule near the end
//!   (`wildcard_allow_late`), one nothing matches (`wildcard_default_deny`)
//!   and one a late deny rule refuses (`wildcard_deny`).

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use kubegate_policy::{Policy, RequestAttributes, Subject, normalize_path, resolve};

fn team_policy(n: usize) -> String {
    let mut t = String::from(
        r#"
[[rule]]
name = "discovery"
effect = "allow"
subjects = { authenticated = true }
paths = [{ path = "/api", prefix = true, methods = ["get"] }, { path = "/apis", prefix = true, methods = ["get"] }, { path = "/version" }]

[[rule]]
name = "no-secrets"
effect = "deny"
subjects = { authenticated = true, not_groups = ["admins"] }
resources = [{ api_groups = [""], resources = ["secrets"], verbs = ["*"] }]

[[rule]]
name = "no-exec"
effect = "deny"
subjects = { groups = ["contractors"] }
resources = [{ api_groups = [""], resources = ["pods/exec", "pods/attach"], verbs = ["*"] }]
"#,
    );
    for i in 0..n.saturating_sub(3) {
        t.push_str(&format!(
            r#"
[[rule]]
name = "team-{i}"
effect = "allow"
subjects = {{ groups = ["team-{i}"] }}
resources = [
  {{ api_groups = ["", "apps"], resources = ["pods", "pods/log", "deployments", "configmaps"], namespaces = ["team-{i}"], verbs = ["get", "list", "watch"] }},
  {{ api_groups = [""], resources = ["pods"], namespaces = ["team-{i}"], verbs = ["create", "delete"] }},
]
"#
        ));
    }
    t
}

fn authenticated_policy(n: usize) -> String {
    let mut t = String::new();
    for i in 0..n {
        t.push_str(&format!(
            r#"
[[rule]]
name = "ns-{i}"
effect = "allow"
subjects = {{ authenticated = true }}
resources = [{{ api_groups = [""], resources = ["pods", "configmaps"], namespaces = ["ns-{i}"], verbs = ["get", "list"] }}]
"#
        ));
    }
    t
}

fn wildcard_policy(n: usize) -> String {
    const VERBS: [&str; 4] = [
        r#"["get", "list", "watch"]"#,
        r#"["create", "update", "patch"]"#,
        r#"["delete", "deletecollection"]"#,
        r#"["*"]"#,
    ];
    const RESOURCES: [(&str, &str); 4] = [
        (r#""""#, r#""pods", "pods/log""#),
        (r#""apps""#, r#""deployments", "statefulsets""#),
        (r#""""#, r#""configmaps", "services""#),
        (r#""*""#, r#""*""#),
    ];
    let mut t = String::new();
    for i in 0..n {
        let (effect, subjects) = if i % 100 == 95 {
            (
                "deny",
                format!(r#"{{ users = ["*@contractors-{i}.example"] }}"#),
            )
        } else {
            let s = match i % 4 {
                0 => format!(r#"{{ groups = ["tenant-{i}-*"] }}"#),
                1 => format!(r#"{{ users = ["*@t{i}.example"] }}"#),
                2 => r#"{ groups = ["*"] }"#.to_owned(),
                _ => r#"{ authenticated = true, not_groups = ["suspended"] }"#.to_owned(),
            };
            ("allow", s)
        };
        let namespaces = match i % 3 {
            0 => format!(r#""t{i}-*""#),
            1 => format!(r#""*-t{i}-prod""#),
            _ => format!(r#""t{i}-*-dev", "t{i}-*-test""#),
        };
        let (groups, resources) = RESOURCES[(i / 4) % 4];
        let verbs = VERBS[(i / 16) % 4];
        t.push_str(&format!(
            r#"
[[rule]]
name = "wild-{i}"
effect = "{effect}"
subjects = {subjects}
resources = [{{ api_groups = [{groups}], resources = [{resources}], namespaces = [{namespaces}], verbs = {verbs} }}]
"#
        ));
    }
    t
}

fn req(method: &str, url: &str) -> RequestAttributes {
    let (p, q) = match url.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (url, None),
    };
    resolve(method, &normalize_path(p).unwrap(), q)
}

fn load(text: &str) -> Policy {
    Policy::from_toml("bench.toml", text).unwrap().policy
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("decide");
    for n in [10usize, 1_000, 10_000] {
        let teams = load(&team_policy(n));
        let team = (n.saturating_sub(3)) / 2;
        let member = Subject::new("alice", [format!("team-{team}"), "devs".to_owned()]);
        let own = req(
            "GET",
            &format!("/api/v1/namespaces/team-{team}/pods?watch=1"),
        );
        let outsider = Subject::new("bob", ["guests"]);
        let foreign = req("DELETE", "/api/v1/namespaces/team-1/pods/web");
        let discovery = req("GET", "/apis/apps/v1");
        assert!(teams.decide(&member, &own).allowed);
        assert!(!teams.decide(&outsider, &foreign).allowed);
        assert!(teams.decide(&outsider, &discovery).allowed);

        g.bench_with_input(BenchmarkId::new("team_allow", n), &n, |b, _| {
            b.iter(|| teams.decide(black_box(&member), black_box(&own)))
        });
        g.bench_with_input(BenchmarkId::new("default_deny", n), &n, |b, _| {
            b.iter(|| teams.decide(black_box(&outsider), black_box(&foreign)))
        });
        g.bench_with_input(BenchmarkId::new("path", n), &n, |b, _| {
            b.iter(|| teams.decide(black_box(&outsider), black_box(&discovery)))
        });

        let auth = load(&authenticated_policy(n));
        let in_ns = req(
            "GET",
            &format!("/api/v1/namespaces/ns-{}/configmaps/x", n / 2),
        );
        assert!(auth.decide(&outsider, &in_ns).allowed);
        g.bench_with_input(BenchmarkId::new("authenticated_ns", n), &n, |b, _| {
            b.iter(|| auth.decide(black_box(&outsider), black_box(&in_ns)))
        });
    }

    let n = 1_000;
    let wild = load(&wildcard_policy(n));
    // Rule 993: users `*@t993.example`, namespaces `t993-*`, core pods, delete.
    let late = Subject::new("ann@t993.example", ["staff"]);
    let late_req = req("DELETE", "/api/v1/namespaces/t993-web/pods/web");
    // No namespace glob matches `sandbox`.
    let nowhere = req("GET", "/api/v1/namespaces/sandbox/pods/web");
    // Rule 995 (deny): users `*@contractors-995.example`, namespaces
    // `t995-*-dev`, core pods, delete.
    let contractor = Subject::new("cat@contractors-995.example", ["staff"]);
    let denied = req("DELETE", "/api/v1/namespaces/t995-web-dev/pods/web");
    let decision = wild.decide(&late, &late_req);
    assert!(decision.allowed, "{decision:?}");
    assert_eq!(decision.rule.as_deref(), Some("wild-993"));
    assert_eq!(wild.decide(&late, &nowhere).rule, None);
    let decision = wild.decide(&contractor, &denied);
    assert!(!decision.allowed, "{decision:?}");
    assert_eq!(decision.rule.as_deref(), Some("wild-995"));
    g.bench_with_input(BenchmarkId::new("wildcard_allow_late", n), &n, |b, _| {
        b.iter(|| wild.decide(black_box(&late), black_box(&late_req)))
    });
    g.bench_with_input(BenchmarkId::new("wildcard_default_deny", n), &n, |b, _| {
        b.iter(|| wild.decide(black_box(&late), black_box(&nowhere)))
    });
    g.bench_with_input(BenchmarkId::new("wildcard_deny", n), &n, |b, _| {
        b.iter(|| wild.decide(black_box(&contractor), black_box(&denied)))
    });
    g.finish();

    // Whole pipeline for one request, as the gateway runs it.
    let teams = load(&team_policy(1_000));
    let member = Subject::new("alice", ["team-498", "devs"]);
    c.bench_function("normalize_resolve_decide/1000", |b| {
        b.iter(|| {
            let p =
                normalize_path(black_box("/api/v1/namespaces/team-498/pods/web-0/log")).unwrap();
            let a = resolve("GET", &p, Some(black_box("follow=true&container=app")));
            teams.decide(&member, &a)
        })
    });
    c.bench_function("load/1000", |b| {
        let text = team_policy(1_000);
        b.iter(|| load(black_box(&text)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
