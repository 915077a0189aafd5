//! Table tests reproducing apiserver's requestinfo_test.go, plus proxy paths.

use super::*;
use crate::path::normalize_path;

fn res(method: &str, url: &str) -> ResourceAttributes {
    match req(method, url) {
        RequestAttributes::Resource(r) => r,
        other => panic!("{method} {url}: expected a resource request, got {other:?}"),
    }
}

fn req(method: &str, url: &str) -> RequestAttributes {
    let (p, q) = match url.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (url, None),
    };
    resolve(method, &normalize_path(p).unwrap(), q)
}

/// (method, url, verb, prefix, group, version, namespace, resource, subresource, name)
type Row = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
);

#[test]
fn get_api_request_info() {
    #[rustfmt::skip]
    let rows: &[Row] = &[
        // resource paths
        (
            "GET",
            "/api/v1/namespaces",
            "list",
            "api",
            "",
            "v1",
            "",
            "namespaces",
            "",
            "",
        ),
        (
            "GET",
            "/api/v1/namespaces/other",
            "get",
            "api",
            "",
            "v1",
            "other",
            "namespaces",
            "",
            "other",
        ),
        (
            "GET",
            "/api/v1/namespaces/other/pods",
            "list",
            "api",
            "",
            "v1",
            "other",
            "pods",
            "",
            "",
        ),
        (
            "GET",
            "/api/v1/namespaces/other/pods/foo",
            "get",
            "api",
            "",
            "v1",
            "other",
            "pods",
            "",
            "foo",
        ),
        (
            "HEAD",
            "/api/v1/namespaces/other/pods/foo",
            "get",
            "api",
            "",
            "v1",
            "other",
            "pods",
            "",
            "foo",
        ),
        (
            "GET",
            "/api/v1/pods",
            "list",
            "api",
            "",
            "v1",
            "",
            "pods",
            "",
            "",
        ),
        (
            "HEAD",
            "/api/v1/pods",
            "list",
            "api",
            "",
            "v1",
            "",
            "pods",
            "",
            "",
        ),
        // special verbs
        (
            "GET",
            "/api/v1/proxy/namespaces/other/pods/foo",
            "proxy",
            "api",
            "",
            "v1",
            "other",
            "pods",
            "",
            "foo",
        ),
        (
            "GET",
            "/api/v1/proxy/namespaces/other/pods/foo/subpath/not/a/subresource",
            "proxy",
            "api",
            "",
            "v1",
            "other",
            "pods",
            "",
            "foo",
        ),
        (
            "GET",
            "/api/v1/watch/pods",
            "watch",
            "api",
            "",
            "v1",
            "",
            "pods",
            "",
            "",
        ),
        (
            "GET",
            "/api/v1/pods?watch=true",
            "watch",
            "api",
            "",
            "v1",
            "",
            "pods",
            "",
            "",
        ),
        (
            "GET",
            "/api/v1/pods?watch=false",
            "list",
            "api",
            "",
            "v1",
            "",
            "pods",
            "",
            "",
        ),
        (
            "GET",
            "/api/v1/watch/namespaces/other/pods",
            "watch",
            "api",
            "",
            "v1",
            "other",
            "pods",
            "",
            "",
        ),
        (
            "GET",
            "/api/v1/namespaces/other/pods?watch=1",
            "watch",
            "api",
            "",
            "v1",
            "other",
            "pods",
            "",
            "",
        ),
        (
            "GET",
            "/api/v1/namespaces/other/pods?watch=0",
            "list",
            "api",
            "",
            "v1",
            "other",
            "pods",
            "",
            "",
        ),
        // subresource identification
        (
            "GET",
            "/api/v1/namespaces/other/pods/foo/status",
            "get",
            "api",
            "",
            "v1",
            "other",
            "pods",
            "status",
            "foo",
        ),
        (
            "GET",
            "/api/v1/namespaces/other/pods/foo/proxy/subpath",
            "get",
            "api",
            "",
            "v1",
            "other",
            "pods",
            "proxy",
            "foo",
        ),
        (
            "PUT",
            "/api/v1/namespaces/other/finalize",
            "update",
            "api",
            "",
            "v1",
            "other",
            "namespaces",
            "finalize",
            "other",
        ),
        (
            "PUT",
            "/api/v1/namespaces/other/status",
            "update",
            "api",
            "",
            "v1",
            "other",
            "namespaces",
            "status",
            "other",
        ),
        // verb identification
        (
            "PATCH",
            "/api/v1/namespaces/other/pods/foo",
            "patch",
            "api",
            "",
            "v1",
            "other",
            "pods",
            "",
            "foo",
        ),
        (
            "DELETE",
            "/api/v1/namespaces/other/pods/foo",
            "delete",
            "api",
            "",
            "v1",
            "other",
            "pods",
            "",
            "foo",
        ),
        (
            "POST",
            "/api/v1/namespaces/other/pods",
            "create",
            "api",
            "",
            "v1",
            "other",
            "pods",
            "",
            "",
        ),
        // deletecollection verb identification
        (
            "DELETE",
            "/api/v1/nodes",
            "deletecollection",
            "api",
            "",
            "v1",
            "",
            "nodes",
            "",
            "",
        ),
        (
            "DELETE",
            "/api/v1/namespaces",
            "deletecollection",
            "api",
            "",
            "v1",
            "",
            "namespaces",
            "",
            "",
        ),
        (
            "DELETE",
            "/api/v1/namespaces/other/pods",
            "deletecollection",
            "api",
            "",
            "v1",
            "other",
            "pods",
            "",
            "",
        ),
        (
            "DELETE",
            "/apis/extensions/v1/namespaces/other/pods",
            "deletecollection",
            "apis",
            "extensions",
            "v1",
            "other",
            "pods",
            "",
            "",
        ),
        // api group identification
        (
            "POST",
            "/apis/extensions/v1/namespaces/other/pods",
            "create",
            "apis",
            "extensions",
            "v1",
            "other",
            "pods",
            "",
            "",
        ),
        // api version identification
        (
            "POST",
            "/apis/extensions/v1beta3/namespaces/other/pods",
            "create",
            "apis",
            "extensions",
            "v1beta3",
            "other",
            "pods",
            "",
            "",
        ),
        // service, node and pod proxy: the verb is the method's
        (
            "GET",
            "/api/v1/namespaces/ns/services/web:8080/proxy/a/b/c",
            "get",
            "api",
            "",
            "v1",
            "ns",
            "services",
            "proxy",
            "web:8080",
        ),
        (
            "GET",
            "/api/v1/namespaces/ns/services/https:web:443/proxy",
            "get",
            "api",
            "",
            "v1",
            "ns",
            "services",
            "proxy",
            "https:web:443",
        ),
        (
            "POST",
            "/api/v1/namespaces/ns/services/web/proxy",
            "create",
            "api",
            "",
            "v1",
            "ns",
            "services",
            "proxy",
            "web",
        ),
        (
            "DELETE",
            "/api/v1/namespaces/ns/services/web:http/proxy/x",
            "delete",
            "api",
            "",
            "v1",
            "ns",
            "services",
            "proxy",
            "web:http",
        ),
        (
            "GET",
            "/api/v1/nodes/node-1/proxy/metrics",
            "get",
            "api",
            "",
            "v1",
            "",
            "nodes",
            "proxy",
            "node-1",
        ),
        (
            "GET",
            "/api/v1/nodes/node-1:10250/proxy/stats/summary",
            "get",
            "api",
            "",
            "v1",
            "",
            "nodes",
            "proxy",
            "node-1:10250",
        ),
        (
            "GET",
            "/api/v1/namespaces/ns/pods/web-0:8080/proxy/healthz",
            "get",
            "api",
            "",
            "v1",
            "ns",
            "pods",
            "proxy",
            "web-0:8080",
        ),
        // exec / attach / portforward: create whatever the method
        (
            "GET",
            "/api/v1/namespaces/ns/pods/web/exec",
            "create",
            "api",
            "",
            "v1",
            "ns",
            "pods",
            "exec",
            "web",
        ),
        (
            "POST",
            "/api/v1/namespaces/ns/pods/web/attach",
            "create",
            "api",
            "",
            "v1",
            "ns",
            "pods",
            "attach",
            "web",
        ),
        (
            "GET",
            "/api/v1/namespaces/ns/pods/web/portforward",
            "create",
            "api",
            "",
            "v1",
            "ns",
            "pods",
            "portforward",
            "web",
        ),
        // logs, scale, decoded segments
        (
            "GET",
            "/api/v1/namespaces/ns/pods/web/log?follow=true",
            "get",
            "api",
            "",
            "v1",
            "ns",
            "pods",
            "log",
            "web",
        ),
        (
            "PUT",
            "/apis/apps/v1/namespaces/ns/deployments/web/scale",
            "update",
            "apis",
            "apps",
            "v1",
            "ns",
            "deployments",
            "scale",
            "web",
        ),
        (
            "GET",
            "/api/v1/namespaces/ns/configmaps/a%3Ab",
            "get",
            "api",
            "",
            "v1",
            "ns",
            "configmaps",
            "",
            "a:b",
        ),
        (
            "GET",
            "/apis/rbac.authorization.k8s.io/v1/clusterroles/system:admin",
            "get",
            "apis",
            "rbac.authorization.k8s.io",
            "v1",
            "",
            "clusterroles",
            "",
            "system:admin",
        ),
        // named get ignores watch=true, as in requestinfo.go
        (
            "GET",
            "/api/v1/namespaces/ns/pods/web?watch=true",
            "get",
            "api",
            "",
            "v1",
            "ns",
            "pods",
            "",
            "web",
        ),
        // odd methods never borrow a Kubernetes verb
        (
            "OPTIONS",
            "/api/v1/pods",
            "options",
            "api",
            "",
            "v1",
            "",
            "pods",
            "",
            "",
        ),
        (
            "LIST",
            "/api/v1/pods",
            "",
            "api",
            "",
            "v1",
            "",
            "pods",
            "",
            "",
        ),
        (
            "get",
            "/api/v1/pods",
            "",
            "api",
            "",
            "v1",
            "",
            "pods",
            "",
            "",
        ),
        // the API server fails these; we keep the verb and no resource
        (
            "GET",
            "/api/v1/watch",
            "watch",
            "api",
            "",
            "v1",
            "",
            "",
            "",
            "",
        ),
    ];
    for &(method, url, verb, prefix, group, version, ns, resource, sub, name) in rows {
        let got = res(method, url);
        let want = (verb, prefix, group, version, ns, resource, sub, name);
        let have = (
            got.verb.as_str(),
            got.api_prefix.as_str(),
            got.api_group.as_str(),
            got.api_version.as_str(),
            got.namespace.as_str(),
            got.resource.as_str(),
            got.subresource.as_str(),
            got.name.as_str(),
        );
        assert_eq!(have, want, "{method} {url}");
        assert_eq!(got.path, url.split('?').next().unwrap());
    }
}

#[test]
fn non_resource_requests() {
    for url in [
        "/",
        "/api",
        "/api/v1",
        "/apis",
        "/apis/apps",
        "/apis/apps/v1",
        "/apis/version/resource",
        "/badprefix/version/resource",
        "/not-api/version/resource",
        "/healthz",
        "/version",
        "/openapi/v3/apis/apps/v1",
    ] {
        match req("GET", url) {
            RequestAttributes::NonResource(n) => {
                assert_eq!(n.verb, "get");
                assert_eq!(n.path, url);
            }
            other => panic!("{url}: expected non-resource, got {other:?}"),
        }
    }
    assert_eq!(req("POST", "/apis").verb(), "post");
    assert_eq!(req("HEAD", "/healthz").verb(), "head");
    for url in [
        "/api/version/resource",
        "/apis/group/version/resource/name/subresource",
        "/api/version/resource/name/subresource",
        "/apis/batch/v1/job",
        "/apis/batch/v1/job/foo",
        "/apis/batch/v1/job/foo/scale",
    ] {
        assert!(
            matches!(req("GET", url), RequestAttributes::Resource(_)),
            "{url}"
        );
    }
}

#[test]
fn field_selector_parsing() {
    #[rustfmt::skip]
    let rows: &[(&str, &str, &str)] = &[
        ("/apis/group/version/resource", "", "list"),
        (
            "/apis/group/version/resource?fieldSelector=metadata.name=name1",
            "name1",
            "list",
        ),
        (
            "/apis/group/version/resource?watch=true&fieldSelector=metadata.name=name1",
            "name1",
            "watch",
        ),
        (
            "/apis/group/version/resource?fieldSelector=foo=bar",
            "",
            "list",
        ),
        (
            "/apis/group/version/resource?fieldSelector=metadata.name=name1,foo",
            "",
            "list",
        ),
        (
            "/apis/group/version/resource?fieldSelector=metadata.name=name1,foo&watch=true",
            "",
            "watch",
        ),
        (
            "/apis/group/version/resource?fieldSelector=metadata.name=name1,foo&watch=false",
            "",
            "list",
        ),
        // encoded selector, invalid path-segment names are ignored
        (
            "/api/v1/namespaces/ns/secrets?fieldSelector=metadata.name%3Ddb",
            "db",
            "list",
        ),
        (
            "/api/v1/namespaces/ns/secrets?fieldSelector=metadata.name%3D..",
            "",
            "list",
        ),
        (
            "/api/v1/namespaces/ns/secrets?fieldSelector=metadata.name%3Da%252Fb",
            "",
            "list",
        ),
        (
            "/api/v1/namespaces/ns/secrets?fieldSelector=metadata.name!%3Ddb",
            "",
            "list",
        ),
        // a failed ListOptions decode drops the name and uses the fallback watch test
        (
            "/api/v1/pods?fieldSelector=metadata.name=x&limit=abc",
            "",
            "list",
        ),
        ("/api/v1/pods?watch=fal%C5%BFe", "", "list"),
        ("/api/v1/pods?watch=fal%C5%BFe&limit=abc", "", "watch"),
        ("/api/v1/pods?watch=", "", "watch"),
        ("/api/v1/pods?watch", "", "watch"),
        ("/api/v1/pods?Watch=true", "", "list"),
        ("/api/v1/pods?watch=true&watch=false", "", "watch"),
        ("/api/v1/pods?watch=false&watch=true", "", "list"),
        ("/api/v1/pods?watch=%zz&watch=1", "", "watch"),
        // fieldSelector on delete collection is not consulted (verb is not get)
        (
            "/api/v1/namespaces/ns/pods?fieldSelector=metadata.name=x",
            "x",
            "list",
        ),
    ];
    for &(url, name, verb) in rows {
        let got = res("GET", url);
        assert_eq!(
            (got.name.as_str(), got.verb.as_str()),
            (name, verb),
            "{url}"
        );
    }
    let del = res(
        "DELETE",
        "/api/v1/namespaces/ns/pods?fieldSelector=metadata.name=x",
    );
    assert_eq!(
        (del.verb.as_str(), del.name.as_str()),
        ("deletecollection", "")
    );
}

#[test]
fn proxy_verbs_come_from_the_method_and_connects_stay_create() {
    let svc = "/api/v1/namespaces/dev/services/web:80/proxy/static/app.js";
    for (method, verb) in [
        ("GET", "get"),
        ("HEAD", "get"),
        ("POST", "create"),
        ("PUT", "update"),
        ("PATCH", "patch"),
        ("DELETE", "delete"),
        ("OPTIONS", "options"),
        ("LIST", ""),
    ] {
        for url in [
            svc,
            "/api/v1/namespaces/dev/pods/web-0:8080/proxy/",
            "/api/v1/nodes/n1/proxy/",
        ] {
            let r = res(method, url);
            assert_eq!(
                (r.verb.as_str(), r.subresource.as_str()),
                (verb, "proxy"),
                "{method} {url}"
            );
        }
        for sub in ["exec", "attach", "portforward"] {
            let r = res(method, &format!("/api/v1/namespaces/dev/pods/web/{sub}"));
            assert_eq!(r.verb, "create", "{method} {sub}");
        }
    }
    // The legacy form keeps its path verb and has no subresource, as in RequestInfo.
    let legacy = res("GET", "/api/v1/proxy/namespaces/dev/services/web:80/");
    assert_eq!(
        (
            legacy.verb.as_str(),
            legacy.resource.as_str(),
            legacy.name.as_str(),
            legacy.subresource.as_str()
        ),
        ("proxy", "services", "web:80", "")
    );
}

#[test]
fn the_backend_path_and_query_are_not_part_of_the_decision() {
    let base = "/api/v1/namespaces/dev/services/web:80/proxy";
    let want = res("GET", base);
    assert_eq!(
        (
            want.name.as_str(),
            want.namespace.as_str(),
            want.resource.as_str()
        ),
        ("web:80", "dev", "services")
    );
    for rest in [
        "/",
        "//a",
        "/a/",
        "/a?x=1",
        "/exec",
        "/a/b/c/d?watch=1&fieldSelector=metadata.name=x",
        "/namespaces/kube-system/secrets/",
    ] {
        let url = format!("{base}{rest}");
        let got = res("GET", &url);
        assert_eq!(got.path, url.split('?').next().unwrap());
        assert_eq!(
            ResourceAttributes {
                path: want.path.clone(),
                ..got
            },
            want,
            "{url}"
        );
    }
}

#[test]
fn long_running() {
    let lr = |m: &str, u: &str| req(m, u).is_long_running();
    assert!(lr("GET", "/api/v1/pods?watch=1"));
    assert!(lr("GET", "/api/v1/watch/pods"));
    assert!(lr("GET", "/api/v1/namespaces/ns/pods/p/exec"));
    assert!(lr("POST", "/api/v1/namespaces/ns/pods/p/attach"));
    assert!(lr("GET", "/api/v1/namespaces/ns/pods/p/portforward"));
    assert!(lr("GET", "/api/v1/nodes/n/proxy/x"));
    assert!(lr("GET", "/api/v1/proxy/nodes/n"));
    assert!(lr("GET", "/api/v1/namespaces/ns/pods/p/log?follow=true"));
    assert!(!lr("GET", "/api/v1/namespaces/ns/pods/p/log?follow=false"));
    assert!(!lr("GET", "/api/v1/namespaces/ns/pods/p/log"));
    assert!(!lr("GET", "/api/v1/pods"));
    assert!(!lr(
        "GET",
        "/api/v1/namespaces/ns/pods/p/status?follow=true"
    ));
    assert!(!lr("GET", "/version"));
}

#[test]
fn display() {
    assert_eq!(
        req("GET", "/api/v1/namespaces/dev/pods/web").to_string(),
        r#"get pods "web" in namespace "dev" (group "", version v1)"#
    );
    assert_eq!(
        req("GET", "/api/v1/namespaces/dev/pods/web/log").to_string(),
        r#"get pods/log "web" in namespace "dev" (group "", version v1)"#
    );
    assert_eq!(
        req("GET", "/apis/apps/v1/deployments").to_string(),
        r#"list deployments (group "apps", version v1)"#
    );
    assert_eq!(
        req("GET", "/version").to_string(),
        "get non-resource path /version"
    );
}
