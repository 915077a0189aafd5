//! Escalation warnings: each listed grant warns (also through `*` and
//! globs), read-only and deny rules do not, and every warned grant is one
//! the engine really allows.

use super::*;
use crate::path::normalize_path;
use crate::request::resolve;

/// One allow rule `r` for group `g` with the given resource entries; the
/// first entry starts at line 6, column 3.
fn rule(entries: &[&str], extra: &str) -> String {
    format!(
        "[[rule]]\nname = \"r\"\neffect = \"allow\"\nsubjects = {{ groups = [\"g\"] }}\nresources = [\n  {},\n]\n{extra}",
        entries.join(",\n  ")
    )
}

fn load(text: &str) -> LoadedPolicy {
    Policy::from_toml("p.toml", text).unwrap_or_else(|e| panic!("{e}"))
}

/// The escalation warnings of a policy, rendered.
fn escalations(text: &str) -> Vec<String> {
    load(text)
        .warnings
        .iter()
        .filter(|w| w.message.starts_with("escalation path: "))
        .map(ToString::to_string)
        .collect()
}

fn allows(p: &Policy, request: &str) -> bool {
    let (method, target) = request.split_once(' ').unwrap();
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let attrs = resolve(method, &normalize_path(path).unwrap(), query);
    p.decide(&Subject::new("u", ["g"]), &attrs).allowed
}

const PODS: &str = "a pod can mount any secret and service-account token of its namespace, and its containers can read them back";
const EXEC: &str = "runs commands in (or attaches to) running containers, which hold their pod's secrets and service-account token (kubegate authorises these as create, kubectl's websocket GET included)";
const EPHEMERAL: &str = "adds a container to a running pod, which runs with that pod's secrets and service-account token";
const WORKLOADS: &str = "a controller creates pods from its template, and a pod can mount any secret and service-account token of its namespace";
const NODES: &str = "reaches the kubelet api, which runs commands in any pod on the node (get alone is enough: the kubelet serves exec and attach over websocket GETs)";
const TOKEN: &str =
    "mints a token for a service account, which then acts with that account's permissions";
const IMPERSONATE: &str = "impersonation acts as another user, group or service account (verbs \"*\" include impersonate)";
const RBAC: &str = "escalate writes roles with permissions their author lacks and bind binds them (verbs \"*\" include escalate and bind)";
const CSR: &str = "a signed client certificate authenticates as whatever user and groups it names";
const WEBHOOKS: &str = "an admission webhook receives (and a mutating one rewrites) every api request it matches, secrets included";
const SECRETS: &str = "reads secrets directly, service-account tokens included";

/// (entry, expected message after `escalation path: `, a request the rule
/// allows that exercises the grant, if any request does).
const LISTED: &[(&str, &str, Option<&str>)] = &[
    (
        r#"{ api_groups = [""], resources = ["pods"], namespaces = ["dev"], verbs = ["create"] }"#,
        "create on pods in namespace \"dev\"",
        Some("POST /api/v1/namespaces/dev/pods"),
    ),
    (
        r#"{ api_groups = [""], resources = ["pods/exec"], verbs = ["create"] }"#,
        "create on pods/exec in every namespace",
        Some("GET /api/v1/namespaces/dev/pods/p/exec?command=sh"),
    ),
    (
        r#"{ api_groups = [""], resources = ["pods/attach"], verbs = ["create"] }"#,
        "create on pods/attach in every namespace",
        Some("POST /api/v1/namespaces/dev/pods/p/attach"),
    ),
    (
        r#"{ api_groups = [""], resources = ["pods/ephemeralcontainers"], verbs = ["patch"] }"#,
        "patch on pods/ephemeralcontainers in every namespace",
        Some("PATCH /api/v1/namespaces/dev/pods/p/ephemeralcontainers"),
    ),
    (
        r#"{ api_groups = ["apps"], resources = ["deployments"], verbs = ["create"] }"#,
        "create on deployments in every namespace",
        Some("POST /apis/apps/v1/namespaces/dev/deployments"),
    ),
    (
        r#"{ api_groups = ["apps"], resources = ["replicasets"], verbs = ["update"] }"#,
        "update on replicasets in every namespace",
        Some("PUT /apis/apps/v1/namespaces/dev/replicasets/r"),
    ),
    (
        r#"{ api_groups = ["apps"], resources = ["statefulsets"], verbs = ["patch"] }"#,
        "patch on statefulsets in every namespace",
        Some("PATCH /apis/apps/v1/namespaces/dev/statefulsets/s"),
    ),
    (
        r#"{ api_groups = ["apps"], resources = ["daemonsets"], verbs = ["create"] }"#,
        "create on daemonsets in every namespace",
        Some("POST /apis/apps/v1/namespaces/dev/daemonsets"),
    ),
    (
        r#"{ api_groups = ["batch"], resources = ["jobs"], verbs = ["create"] }"#,
        "create on jobs in every namespace",
        Some("POST /apis/batch/v1/namespaces/dev/jobs"),
    ),
    (
        r#"{ api_groups = ["batch"], resources = ["cronjobs"], verbs = ["create"] }"#,
        "create on cronjobs in every namespace",
        Some("POST /apis/batch/v1/namespaces/dev/cronjobs"),
    ),
    (
        r#"{ api_groups = [""], resources = ["replicationcontrollers"], verbs = ["create"] }"#,
        "create on replicationcontrollers in every namespace",
        Some("POST /api/v1/namespaces/dev/replicationcontrollers"),
    ),
    (
        r#"{ api_groups = [""], resources = ["nodes/proxy"], verbs = ["create"] }"#,
        "create on nodes/proxy",
        Some("POST /api/v1/nodes/n1/proxy/run/ns/pod/c"),
    ),
    // GET is `get` on a proxy, and the kubelet's exec takes a websocket GET.
    (
        r#"{ api_groups = [""], resources = ["nodes/proxy"], verbs = ["get"] }"#,
        "get on nodes/proxy",
        Some("GET /api/v1/nodes/x/proxy/"),
    ),
    (
        r#"{ api_groups = [""], resources = ["nodes/*"], names = ["x"], verbs = ["delete", "get", "list"] }"#,
        "get, delete on nodes/proxy",
        Some("DELETE /api/v1/nodes/x/proxy/exec/ns/pod/c"),
    ),
    (
        r#"{ api_groups = [""], resources = ["serviceaccounts/token"], namespaces = ["dev"], verbs = ["create"] }"#,
        "create on serviceaccounts/token in namespace \"dev\"",
        Some("POST /api/v1/namespaces/dev/serviceaccounts/default/token"),
    ),
    (
        r#"{ api_groups = [""], resources = ["users", "groups", "serviceaccounts"], verbs = ["*"] }"#,
        "impersonate on users, groups, serviceaccounts in every namespace",
        None,
    ),
    (
        r#"{ api_groups = ["authentication.k8s.io"], resources = ["uids", "userextras/*"], verbs = ["*"] }"#,
        "impersonate on uids, userextras/*",
        None,
    ),
    (
        r#"{ api_groups = ["rbac.authorization.k8s.io"], resources = ["roles"], verbs = ["*"] }"#,
        "escalate, bind on roles in every namespace",
        None,
    ),
    (
        r#"{ api_groups = ["rbac.authorization.k8s.io"], resources = ["clusterroles"], verbs = ["*"] }"#,
        "escalate, bind on clusterroles",
        None,
    ),
    (
        r#"{ api_groups = ["certificates.k8s.io"], resources = ["certificatesigningrequests"], verbs = ["create"] }"#,
        "create on certificatesigningrequests",
        Some("POST /apis/certificates.k8s.io/v1/certificatesigningrequests"),
    ),
    (
        r#"{ api_groups = ["certificates.k8s.io"], resources = ["certificatesigningrequests/approval"], verbs = ["update"] }"#,
        "update on certificatesigningrequests/approval",
        Some("PUT /apis/certificates.k8s.io/v1/certificatesigningrequests/c/approval"),
    ),
    (
        r#"{ api_groups = ["admissionregistration.k8s.io"], resources = ["mutatingwebhookconfigurations"], verbs = ["create"] }"#,
        "create on mutatingwebhookconfigurations",
        Some("POST /apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"),
    ),
    (
        r#"{ api_groups = ["admissionregistration.k8s.io"], resources = ["validatingwebhookconfigurations"], verbs = ["update"] }"#,
        "update on validatingwebhookconfigurations",
        Some("PUT /apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/v"),
    ),
    (
        r#"{ api_groups = [""], resources = ["secrets"], namespaces = ["dev", "team-*"], verbs = ["get"] }"#,
        "get on secrets in namespaces \"dev\", \"team-*\"",
        Some("GET /api/v1/namespaces/team-a/secrets/s"),
    ),
];

fn why(grant: &str) -> &'static str {
    let resource = grant.split(" on ").nth(1).unwrap_or("");
    [
        ("pods/exec", EXEC),
        ("pods/attach", EXEC),
        ("pods/ephemeral", EPHEMERAL),
        ("pods", PODS),
        ("nodes/proxy", NODES),
        ("serviceaccounts/token", TOKEN),
        ("users", IMPERSONATE),
        ("uids", IMPERSONATE),
        ("roles", RBAC),
        ("clusterroles", RBAC),
        ("certificatesigningrequests", CSR),
        ("mutating", WEBHOOKS),
        ("validating", WEBHOOKS),
        ("secrets", SECRETS),
    ]
    .iter()
    .find(|(prefix, _)| resource.starts_with(prefix))
    .map_or(WORKLOADS, |(_, why)| why)
}

#[test]
fn each_listed_grant_warns_once_and_is_really_allowed() {
    for (entry, grant, request) in LISTED {
        let text = rule(&[entry], "");
        assert_eq!(
            escalations(&text),
            [format!(
                "p.toml:6:3: rule \"r\": resources[0]: escalation path: {grant}: {}",
                why(grant)
            )],
            "{entry}"
        );
        if let Some(request) = request {
            assert!(allows(&load(&text).policy, request), "{entry}: {request}");
        }
    }
}

/// What `resources = ["*"]`, `verbs = ["*"]`, `api_groups = ["*"]` grants,
/// one kind each (also the shipped example's admin rule).
pub(crate) const STAR_GRANTS: [&str; 11] = [
    "create on pods in every namespace",
    "create on pods/exec, pods/attach in every namespace",
    "update, patch on pods/ephemeralcontainers in every namespace",
    "create, update, patch on deployments, replicasets, statefulsets, daemonsets, jobs, cronjobs, replicationcontrollers in every namespace",
    "get, create, update, patch, delete on nodes/proxy",
    "create on serviceaccounts/token in every namespace",
    "impersonate on users, groups, serviceaccounts, uids, userextras/* in every namespace",
    "escalate, bind on roles, clusterroles in every namespace",
    "create on certificatesigningrequests; update, patch on certificatesigningrequests/approval",
    "create, update, patch on mutatingwebhookconfigurations, validatingwebhookconfigurations",
    "get, list, watch on secrets in every namespace",
];

#[test]
fn star_grants_every_kind_once() {
    let w = escalations(&rule(
        &[r#"{ api_groups = ["*"], resources = ["*"], verbs = ["*"] }"#],
        "",
    ));
    let prefix = "p.toml:6:3: rule \"r\": resources[0]: escalation path: ";
    let grants: Vec<&str> = w
        .iter()
        .map(|w| w.strip_prefix(prefix).unwrap().split(": ").next().unwrap())
        .collect();
    assert_eq!(grants, STAR_GRANTS);
}

#[test]
fn globs_count_as_the_engine_counts_them() {
    let cases = [
        (
            r#"{ api_groups = ["*"], resources = ["pod*"], verbs = ["create"] }"#,
            "create on pods in every namespace",
        ),
        (
            r#"{ api_groups = [""], resources = ["*/exec"], verbs = ["*"] }"#,
            "create on pods/exec in every namespace",
        ),
        (
            r#"{ api_groups = [""], resources = ["pods/*"], verbs = ["patch"] }"#,
            "patch on pods/ephemeralcontainers in every namespace",
        ),
        (
            r#"{ api_groups = ["app*"], resources = ["*sets"], verbs = ["update"] }"#,
            "update on replicasets, statefulsets, daemonsets in every namespace",
        ),
        (
            r#"{ api_groups = [""], resources = ["*/proxy"], namespaces = ["", "dev"], verbs = ["create"] }"#,
            "create on nodes/proxy",
        ),
        (
            r#"{ api_groups = [""], resources = ["*/token"], namespaces = ["*"], verbs = ["create"] }"#,
            "create on serviceaccounts/token in every namespace",
        ),
        (
            r#"{ api_groups = ["*.k8s.io"], resources = ["certificatesigning*"], verbs = ["create"] }"#,
            "create on certificatesigningrequests",
        ),
        (
            r#"{ api_groups = ["admissionregistration.*"], resources = ["*webhookconfigurations"], verbs = ["patch"] }"#,
            "patch on mutatingwebhookconfigurations, validatingwebhookconfigurations",
        ),
        (
            r#"{ api_groups = ["*"], resources = ["*"], namespaces = ["dev"], verbs = ["list"] }"#,
            "list on secrets in namespace \"dev\"",
        ),
        // `""` on a namespaced resource is the list across all namespaces.
        (
            r#"{ api_groups = [""], resources = ["secrets"], namespaces = [""], verbs = ["watch"] }"#,
            "watch on secrets in every namespace",
        ),
    ];
    for (entry, grant) in cases {
        let w = escalations(&rule(&[entry], ""));
        assert_eq!(w.len(), 1, "{entry}: {w:?}");
        assert!(
            w[0].contains(&format!("escalation path: {grant}: ")),
            "{entry}: {w:?}"
        );
    }
    let p = load(&rule(
        &[r#"{ api_groups = [""], resources = ["secrets"], namespaces = [""], verbs = ["watch"] }"#],
        "",
    ))
    .policy;
    assert!(allows(&p, "GET /api/v1/secrets?watch=1"));
}

#[test]
fn grants_the_engine_never_allows_do_not_warn() {
    for entry in [
        // Connect subresources always resolve to create (proxy does not: see LISTED).
        r#"{ api_groups = [""], resources = ["pods/exec", "pods/attach", "services/proxy"], verbs = ["get"] }"#,
        // No proxy request resolves to list or watch.
        r#"{ api_groups = [""], resources = ["nodes/proxy"], verbs = ["list", "watch", "deletecollection"] }"#,
        // A create on a collection carries no name.
        r#"{ api_groups = [""], resources = ["pods"], names = ["web"], verbs = ["create"] }"#,
        // Pods cannot be created outside a namespace.
        r#"{ api_groups = [""], resources = ["pods"], namespaces = [""], verbs = ["create"] }"#,
        // Cluster-scoped resources have no namespace.
        r#"{ api_groups = [""], resources = ["nodes/proxy"], namespaces = ["dev"], verbs = ["create"] }"#,
        // Only `*` covers impersonate, escalate and bind.
        r#"{ api_groups = [""], resources = ["users", "serviceaccounts"], verbs = ["get", "list", "create", "update", "patch", "delete"] }"#,
        // Plain resources never cover subresources.
        r#"{ api_groups = [""], resources = ["serviceaccounts", "nodes"], verbs = ["create"] }"#,
        // Wrong group.
        r#"{ api_groups = ["apps"], resources = ["pods", "secrets"], verbs = ["*"] }"#,
    ] {
        let text = rule(&[entry], "");
        assert_eq!(escalations(&text), Vec::<String>::new(), "{entry}");
    }
    let p = load(&rule(
        &[r#"{ api_groups = [""], resources = ["pods"], names = ["web"], verbs = ["create"] }"#],
        "",
    ))
    .policy;
    assert!(!allows(&p, "POST /api/v1/namespaces/dev/pods"));
    let p = load(&rule(
        &[r#"{ api_groups = [""], resources = ["pods/exec"], verbs = ["get"] }"#],
        "",
    ))
    .policy;
    assert!(!allows(&p, "GET /api/v1/namespaces/dev/pods/p/exec"));
}

#[test]
fn read_only_policy_does_not_warn() {
    let loaded = load(
        r#"
[[rule]]
name = "discovery"
effect = "allow"
subjects = { authenticated = true }
paths = [{ path = "/api", prefix = true, methods = ["get"] }, { path = "/apis", prefix = true, methods = ["get"] }, { path = "/version" }]

[[rule]]
name = "read"
effect = "allow"
subjects = { groups = ["devs"] }
resources = [
  { api_groups = [""], resources = ["pods", "pods/log", "configmaps", "services", "events"], verbs = ["get", "list", "watch"] },
  { api_groups = ["apps"], resources = ["deployments", "replicasets"], namespaces = ["dev"], verbs = ["get", "list", "watch"] },
]
"#,
    );
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
}

#[test]
fn deny_rules_and_shadowed_rules_do_not_warn() {
    let w = escalations(
        r#"
[[rule]]
name = "deny-all"
effect = "deny"
subjects = { groups = ["g"] }
resources = [{ api_groups = ["*"], resources = ["*"], verbs = ["*"] }]

[[rule]]
name = "dead"
effect = "allow"
subjects = { groups = ["g"] }
resources = [{ api_groups = [""], resources = ["pods"], verbs = ["create"] }]
"#,
    );
    assert_eq!(w, Vec::<String>::new());
}

#[test]
fn one_warning_per_rule_and_kind_at_its_first_entry() {
    let w = escalations(&rule(
        &[
            r#"{ api_groups = [""], resources = ["configmaps"], verbs = ["*"] }"#,
            r#"{ api_groups = [""], resources = ["pods"], namespaces = ["dev"], verbs = ["create"] }"#,
            r#"{ api_groups = ["apps"], resources = ["deployments"], namespaces = ["prod"], verbs = ["create", "update"] }"#,
            r#"{ api_groups = [""], resources = ["pods"], namespaces = ["prod", "dev"], verbs = ["create", "delete"] }"#,
            r#"{ api_groups = ["batch"], resources = ["jobs"], namespaces = ["*"], verbs = ["patch"] }"#,
        ],
        "",
    ));
    assert_eq!(
        w,
        [
            format!(
                "p.toml:7:3: rule \"r\": resources[1]: escalation path: create on pods in namespaces \"dev\", \"prod\": {PODS}"
            ),
            format!(
                "p.toml:8:3: rule \"r\": resources[2]: escalation path: create, update on deployments; patch on jobs in every namespace: {WORKLOADS}"
            ),
        ]
    );
}

#[test]
fn a_mapped_identity_is_worded_as_such() {
    let w = escalations(&rule(
        &[r#"{ api_groups = [""], resources = ["pods"], verbs = ["create"] }"#],
        "as_user = \"sandbox:{username}\"\n",
    ));
    assert_eq!(
        w,
        [format!(
            "p.toml:6:3: rule \"r\": resources[0]: escalation path: create on pods in every namespace: {PODS} (the rule forwards a mapped identity: the gateway still lets this through, and that identity's rbac decides upstream)"
        )]
    );
}
