//! Discovery documents in the legacy (unaggregated) JSON form. kubectl asks for aggregated
//! discovery first but accepts these when answered with plain `application/json`.

use std::net::SocketAddr;

use serde_json::{Value, json};

use crate::store::Resource;

/// The version the sandbox claims to be; matches the kubectl it is tested with.
pub(crate) const GIT_VERSION: &str = "v1.32.0-sandbox";

const VERBS: [&str; 7] = [
    "create", "delete", "get", "list", "patch", "update", "watch",
];

pub(crate) const AUTHN_GROUP: &str = "authentication.k8s.io";

pub(crate) fn version() -> Value {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    json!({
        "major": "1",
        "minor": "32",
        "gitVersion": GIT_VERSION,
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2024-12-11T00:00:00Z",
        "goVersion": "go1.23.3",
        "compiler": "gc",
        "platform": format!("{}/{arch}", std::env::consts::OS),
    })
}

/// `/api`.
pub(crate) fn api_versions(addr: SocketAddr) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": addr.to_string()}],
    })
}

/// `/api/v1`.
pub(crate) fn core_v1() -> Value {
    let mut resources = Vec::new();
    for res in Resource::ALL {
        let mut entry = json!({
            "name": res.plural(),
            "singularName": res.singular(),
            "namespaced": res.namespaced(),
            "kind": res.kind(),
            "verbs": VERBS,
        });
        if !res.short_names().is_empty() {
            entry["shortNames"] = json!(res.short_names());
        }
        if res == Resource::Pods {
            entry["categories"] = json!(["all"]);
        }
        resources.push(entry);
        if res == Resource::Pods {
            for (sub, kind, verbs) in [
                ("attach", "PodAttachOptions", &["create", "get"][..]),
                ("exec", "PodExecOptions", &["create", "get"][..]),
                ("log", "Pod", &["get"][..]),
                (
                    "portforward",
                    "PodPortForwardOptions",
                    &["create", "get"][..],
                ),
            ] {
                resources.push(json!({
                    "name": format!("pods/{sub}"),
                    "singularName": "",
                    "namespaced": true,
                    "kind": kind,
                    "verbs": verbs,
                }));
            }
        }
    }
    json!({"kind": "APIResourceList", "groupVersion": "v1", "resources": resources})
}

fn authn_group() -> Value {
    let version = json!({"groupVersion": format!("{AUTHN_GROUP}/v1"), "version": "v1"});
    json!({
        "name": AUTHN_GROUP,
        "versions": [version],
        "preferredVersion": version,
    })
}

/// `/apis`.
pub(crate) fn api_groups() -> Value {
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [authn_group()]})
}

/// `/apis/authentication.k8s.io`.
pub(crate) fn authn_group_doc() -> Value {
    let mut group = authn_group();
    group["kind"] = json!("APIGroup");
    group["apiVersion"] = json!("v1");
    group
}

/// `/apis/authentication.k8s.io/v1`.
pub(crate) fn authn_v1() -> Value {
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": format!("{AUTHN_GROUP}/v1"),
        "resources": [{
            "name": "selfsubjectreviews",
            "singularName": "selfsubjectreview",
            "namespaced": false,
            "kind": "SelfSubjectReview",
            "verbs": ["create"],
        }],
    })
}

/// Where kubectl finds the core group's OpenAPI v3 document. The hash is fixed because the
/// document never changes.
pub(crate) fn openapi_v3_index() -> Value {
    json!({"paths": {"api/v1": {"serverRelativeURL": "/openapi/v3/api/v1?hash=kubegate-sandbox-1"}}})
}

/// A minimal OpenAPI v3 document for `api/v1`: only the PATCH operations, each declaring the
/// `fieldValidation` parameter. kubectl looks for exactly that before sending objects; when
/// it is missing kubectl validates client-side against OpenAPI v2 schemas, which the sandbox
/// does not have. The sandbox accepts `fieldValidation` but checks no schema.
pub(crate) fn openapi_v3_core() -> Value {
    let mut paths = serde_json::Map::new();
    for res in Resource::ALL {
        let path = if res.namespaced() {
            format!("/api/v1/namespaces/{{namespace}}/{}/{{name}}", res.plural())
        } else {
            format!("/api/v1/{}/{{name}}", res.plural())
        };
        paths.insert(
            path,
            json!({"patch": {
                "operationId": format!("patchCoreV1{}", res.kind()),
                "x-kubernetes-action": "patch",
                "x-kubernetes-group-version-kind": {"group": "", "version": "v1", "kind": res.kind()},
                "parameters": [{
                    "name": "fieldValidation",
                    "in": "query",
                    "description": "Accepted for compatibility; the sandbox checks no schema.",
                    "schema": {"type": "string", "uniqueItems": true},
                }],
                "responses": {"200": {"description": "OK"}},
            }}),
        );
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes (kubegate sandbox)", "version": GIT_VERSION},
        "paths": paths,
    })
}
