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
//! - `path`: a discovery request.

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
