//! The sandbox over real HTTPS: authentication, recording, discovery, CRUD, watches, Tables.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Protocol, TABLE_ACCEPT, TOKEN, TestClient, pod, start};
use http::{Method, StatusCode};
use http_body_util::Full;
use kubegate_sandbox::{Sandbox, SandboxError, SandboxOptions};
use serde_json::json;

#[tokio::test]
async fn rejects_requests_without_the_token_and_records_them() {
    let sandbox = start().await;
    let mut client = TestClient::new(&sandbox, Protocol::Any);
    client.token = None;
    let reply = client.get("/api/v1/namespaces").await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.content_type, "application/json");
    assert_eq!(
        reply.json(),
        json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
               "message":"Unauthorized","reason":"Unauthorized","code":401})
    );
    client.token = Some("wrong".into());
    assert_eq!(
        client.get("/version").await.status,
        StatusCode::UNAUTHORIZED
    );

    // Two Authorization headers are ambiguous, even if one is right.
    client.token = Some(TOKEN.into());
    let request = client
        .request(Method::GET, "/version")
        .header("authorization", "Bearer other")
        .body(Full::default())
        .unwrap();
    assert_eq!(client.send(request).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(client.get("/version").await.status, StatusCode::OK);

    let recorded = sandbox.requests();
    let authorized: Vec<bool> = recorded.iter().map(|r| r.authorized).collect();
    assert_eq!(authorized, [false, false, false, true]);
    assert_eq!(recorded[0].path_and_query, "/api/v1/namespaces");
    assert_eq!(recorded[2].header_values("authorization").len(), 2);
    assert_eq!(sandbox.request_count(), 4);
    sandbox.clear_requests();
    assert_eq!(sandbox.request_count(), 0);

    sandbox.set_request_log_limit(Some(2));
    for path in ["/a", "/b", "/c"] {
        client.get(path).await;
    }
    let paths: Vec<String> = sandbox
        .requests()
        .into_iter()
        .map(|r| r.path_and_query)
        .collect();
    assert_eq!(paths, ["/b", "/c"]);
}

#[tokio::test]
async fn an_empty_token_is_refused() {
    let err = Sandbox::start(SandboxOptions::new("")).await.unwrap_err();
    assert!(matches!(err, SandboxError::EmptyToken));
}

#[tokio::test]
async fn records_headers_with_duplicates_in_order() {
    let sandbox = start().await;
    let client = TestClient::new(&sandbox, Protocol::Http1);
    let request = client
        .request(
            Method::GET,
            "/api/v1/namespaces/dev/pods?labelSelector=a%3Db",
        )
        .header("Impersonate-User", "alice")
        .header("Impersonate-Group", "devs")
        .header("X-Other", "1")
        .header("Impersonate-Group", "ops")
        .header("Impersonate-Group", "devs")
        .body(Full::default())
        .unwrap();
    assert_eq!(client.send(request).await.status, StatusCode::OK);
    let recorded = &sandbox.requests()[0];
    assert_eq!(recorded.method, "GET");
    assert_eq!(
        recorded.path_and_query,
        "/api/v1/namespaces/dev/pods?labelSelector=a%3Db"
    );
    assert!(recorded.authorized);
    assert_eq!(recorded.impersonate_user(), Some("alice"));
    assert_eq!(recorded.impersonate_groups(), ["devs", "ops", "devs"]);
    assert_eq!(recorded.header_values("x-other"), ["1"]);
    assert_eq!(recorded.header_values("IMPERSONATE-USER"), ["alice"]);
    // Names are lower-case and the groups' values stay in the order sent.
    let groups: Vec<_> = recorded
        .headers
        .iter()
        .filter(|(n, _)| n == "impersonate-group")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(groups, ["devs", "ops", "devs"]);
    assert!(recorded.headers.iter().all(|(n, _)| *n == n.to_lowercase()));
}

#[tokio::test]
async fn serves_discovery() {
    let sandbox = start().await;
    let client = TestClient::new(&sandbox, Protocol::Any);
    let version = client.get("/version").await;
    assert_eq!(version.version, http::Version::HTTP_2, "ALPN picks h2");
    assert_eq!(version.json()["gitVersion"], "v1.32.0-sandbox");

    let api = client.get("/api").await.json();
    assert_eq!(api["kind"], "APIVersions");
    assert_eq!(api["versions"], json!(["v1"]));

    // kubectl asks for aggregated discovery; the legacy document comes back as plain JSON.
    let aggregated =
        "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json";
    let v1 = client.get_accept("/api/v1", aggregated).await;
    assert_eq!(v1.content_type, "application/json");
    let v1 = v1.json();
    assert_eq!(v1["kind"], "APIResourceList");
    let names: Vec<&str> = v1["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    for name in [
        "namespaces",
        "pods",
        "pods/log",
        "pods/exec",
        "pods/attach",
        "pods/portforward",
        "configmaps",
        "secrets",
    ] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
    let pods = v1["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "pods")
        .unwrap();
    assert_eq!(pods["namespaced"], true);
    assert_eq!(pods["kind"], "Pod");
    assert_eq!(pods["shortNames"], json!(["po"]));
    assert!(pods["verbs"].as_array().unwrap().contains(&json!("watch")));

    let apis = client.get("/apis").await.json();
    assert_eq!(apis["kind"], "APIGroupList");
    assert_eq!(
        client.get("/openapi/v2").await.status,
        StatusCode::NOT_FOUND
    );
    let unknown = client.get("/apis/apps/v1/deployments").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.json()["reason"], "NotFound");
}

#[tokio::test]
async fn creates_gets_lists_and_deletes_over_http1() {
    let sandbox = start().await;
    let client = TestClient::new(&sandbox, Protocol::Http1);
    let created = client
        .post_json("/api/v1/namespaces/dev/pods", &pod("web"))
        .await;
    assert_eq!(created.version, http::Version::HTTP_11);
    assert_eq!(created.status, StatusCode::CREATED);
    let created = created.json();
    assert_eq!(created["metadata"]["namespace"], "dev");
    assert_eq!(created["status"]["phase"], "Running");
    assert!(created["metadata"]["uid"].is_string());
    assert!(created["metadata"]["creationTimestamp"].is_string());
    let rv: u64 = created["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    let duplicate = client
        .post_json("/api/v1/namespaces/dev/pods", &pod("web"))
        .await;
    assert_eq!(duplicate.status, StatusCode::CONFLICT);
    assert_eq!(duplicate.json()["reason"], "AlreadyExists");
    assert_eq!(duplicate.json()["message"], "pods \"web\" already exists");

    let got = client.get("/api/v1/namespaces/dev/pods/web").await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.json(), created);

    let cm = json!({"metadata": {"name": "cfg"}, "data": {"a": "b"}});
    assert_eq!(
        client
            .post_json("/api/v1/namespaces/default/configmaps", &cm)
            .await
            .status,
        StatusCode::CREATED
    );
    let list = client.get("/api/v1/namespaces/dev/pods").await.json();
    assert_eq!(list["kind"], "PodList");
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    let list_rv: u64 = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(list_rv > rv);
    let all = client.get("/api/v1/configmaps").await.json();
    assert_eq!(all["kind"], "ConfigMapList");
    assert_eq!(all["items"][0]["metadata"]["namespace"], "default");
    let selected = client
        .get("/api/v1/pods?labelSelector=app%3Dweb&fieldSelector=metadata.name%3Dweb")
        .await
        .json();
    assert_eq!(selected["items"].as_array().unwrap().len(), 1);
    let none = client
        .get("/api/v1/pods?labelSelector=app%3Ddb")
        .await
        .json();
    assert_eq!(none["items"], json!([]));

    let deleted = client.delete("/api/v1/namespaces/dev/pods/web").await;
    assert_eq!(deleted.status, StatusCode::OK);
    assert_eq!(deleted.json()["metadata"]["name"], "web");
    let cm_deleted = client
        .delete("/api/v1/namespaces/default/configmaps/cfg")
        .await
        .json();
    assert_eq!(cm_deleted["kind"], "Status");
    assert_eq!(cm_deleted["status"], "Success");

    let gone = client.get("/api/v1/namespaces/dev/pods/web").await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    assert_eq!(
        gone.json(),
        json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
               "message":"pods \"web\" not found","reason":"NotFound",
               "details":{"name":"web","kind":"pods"},"code":404})
    );
    let no_ns = client
        .post_json("/api/v1/namespaces/nope/pods", &pod("x"))
        .await;
    assert_eq!(no_ns.status, StatusCode::NOT_FOUND);
    assert_eq!(no_ns.json()["message"], "namespaces \"nope\" not found");
}

#[tokio::test]
async fn reports_errors_as_status() {
    let sandbox = start().await;
    let client = TestClient::new(&sandbox, Protocol::Any);
    let bad = client
        .send(
            client
                .request(Method::POST, "/api/v1/namespaces/dev/configmaps")
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from_static(b"{not json")))
                .unwrap(),
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.json()["reason"], "BadRequest");

    let put_version = client
        .send(
            client
                .request(Method::PUT, "/version")
                .body(Full::default())
                .unwrap(),
        )
        .await;
    assert_eq!(put_version.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(put_version.json()["reason"], "MethodNotAllowed");

    let yaml = client
        .send(
            client
                .request(Method::POST, "/api/v1/namespaces/dev/configmaps")
                .header("content-type", "application/yaml")
                .body(Full::new(Bytes::from_static(b"metadata: {name: x}")))
                .unwrap(),
        )
        .await;
    assert_eq!(yaml.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let invalid = client
        .post_json(
            "/api/v1/namespaces/dev/pods",
            &json!({"metadata": {"name": "x"}, "spec": {"containers": []}}),
        )
        .await;
    assert_eq!(invalid.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(invalid.json()["reason"], "Invalid");

    let exec = client
        .send(
            client
                .request(
                    Method::POST,
                    "/api/v1/namespaces/dev/pods/nope/exec?command=ls",
                )
                .body(Full::default())
                .unwrap(),
        )
        .await;
    assert_eq!(exec.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn updates_and_patches_bump_the_resource_version() {
    let sandbox = start().await;
    let client = TestClient::new(&sandbox, Protocol::Any);
    let cm = json!({"metadata": {"name": "cfg"}, "data": {"a": "1"}});
    let created = client
        .post_json("/api/v1/namespaces/dev/configmaps", &cm)
        .await
        .json();
    let patch = client
        .send(
            client
                .request(Method::PATCH, "/api/v1/namespaces/dev/configmaps/cfg")
                .header("content-type", "application/merge-patch+json")
                .body(Full::new(Bytes::from(
                    json!({"data": {"b": "2"}, "metadata": {"labels": {"x": "y"}}}).to_string(),
                )))
                .unwrap(),
        )
        .await;
    assert_eq!(patch.status, StatusCode::OK);
    let patched = patch.json();
    assert_eq!(patched["data"], json!({"a": "1", "b": "2"}));
    assert_eq!(patched["metadata"]["uid"], created["metadata"]["uid"]);
    assert_ne!(
        patched["metadata"]["resourceVersion"],
        created["metadata"]["resourceVersion"]
    );

    // A PUT carrying the old resourceVersion lost the race.
    let stale = client
        .send(
            client
                .request(Method::PUT, "/api/v1/namespaces/dev/configmaps/cfg")
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(created.to_string())))
                .unwrap(),
        )
        .await;
    assert_eq!(stale.status, StatusCode::CONFLICT);
    assert_eq!(stale.json()["reason"], "Conflict");
}

#[tokio::test]
async fn watch_streams_existing_then_live_events() {
    let sandbox = start().await;
    let client = TestClient::new(&sandbox, Protocol::Any);
    client
        .post_json("/api/v1/namespaces/dev/pods", &pod("first"))
        .await;
    let mut watch = client
        .stream(
            "/api/v1/namespaces/dev/pods?watch=true&timeoutSeconds=30",
            "application/json",
        )
        .await;
    let event = watch.next_event().await.unwrap();
    assert_eq!(event["type"], "ADDED");
    assert_eq!(event["object"]["metadata"]["name"], "first");

    // Changes elsewhere are not in this watch's scope.
    client
        .post_json("/api/v1/namespaces/default/pods", &pod("elsewhere"))
        .await;
    client
        .post_json("/api/v1/namespaces/dev/pods", &pod("second"))
        .await;
    let event = watch.next_event().await.unwrap();
    assert_eq!(event["type"], "ADDED");
    assert_eq!(event["object"]["metadata"]["name"], "second");
    assert_eq!(event["object"]["kind"], "Pod");

    client.delete("/api/v1/namespaces/dev/pods/first").await;
    let event = watch.next_event().await.unwrap();
    assert_eq!(event["type"], "DELETED");
    assert_eq!(event["object"]["metadata"]["name"], "first");
}

#[tokio::test]
async fn watch_resumes_from_a_resource_version_and_honours_its_timeout() {
    let sandbox = start().await;
    let client = TestClient::new(&sandbox, Protocol::Http1);
    let list = client.get("/api/v1/namespaces/dev/configmaps").await.json();
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    client
        .post_json(
            "/api/v1/namespaces/dev/configmaps",
            &json!({"metadata": {"name": "after"}}),
        )
        .await;
    let started = Instant::now();
    let mut watch = client
        .stream(
            &format!(
                "/api/v1/namespaces/dev/configmaps?watch=1&resourceVersion={rv}&timeoutSeconds=1"
            ),
            "application/json",
        )
        .await;
    let event = watch.next_event().await.unwrap();
    assert_eq!(event["type"], "ADDED");
    assert_eq!(event["object"]["metadata"]["name"], "after");
    assert!(
        watch.next_event().await.is_none(),
        "the stream ends at timeoutSeconds"
    );
    assert!(started.elapsed() >= Duration::from_millis(900));
}

#[tokio::test]
async fn serves_tables_to_kubectl_get() {
    let sandbox = start().await;
    let client = TestClient::new(&sandbox, Protocol::Any);
    client
        .post_json("/api/v1/namespaces/dev/pods", &pod("web"))
        .await;
    let table = client
        .get_accept("/api/v1/namespaces/dev/pods?limit=500", TABLE_ACCEPT)
        .await
        .json();
    assert_eq!(table["kind"], "Table");
    assert_eq!(table["apiVersion"], "meta.k8s.io/v1");
    let columns: Vec<&str> = table["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(columns, ["Name", "Ready", "Status", "Restarts", "Age"]);
    let row = &table["rows"][0];
    assert_eq!(
        row["cells"].as_array().unwrap()[..4],
        [json!("web"), json!("1/1"), json!("Running"), json!("0")]
    );
    assert_eq!(row["object"]["kind"], "PartialObjectMetadata");
    assert_eq!(row["object"]["metadata"]["name"], "web");

    let namespaces = client
        .get_accept("/api/v1/namespaces", TABLE_ACCEPT)
        .await
        .json();
    let names: Vec<&str> = namespaces["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["cells"][0].as_str().unwrap())
        .collect();
    assert_eq!(names, ["default", "dev", "kube-system"]);
    assert_eq!(namespaces["rows"][0]["cells"][1], "Active");

    // kubectl get -w: every event carries a one-row Table.
    let mut watch = client
        .stream(
            "/api/v1/namespaces/dev/pods?watch=true&timeoutSeconds=30",
            TABLE_ACCEPT,
        )
        .await;
    let event = watch.next_event().await.unwrap();
    assert_eq!(event["type"], "ADDED");
    assert_eq!(event["object"]["kind"], "Table");
    assert_eq!(event["object"]["rows"].as_array().unwrap().len(), 1);
    assert_eq!(event["object"]["rows"][0]["cells"][0], "web");
}

#[tokio::test]
async fn self_subject_review_reports_the_impersonated_identity() {
    let sandbox = start().await;
    let client = TestClient::new(&sandbox, Protocol::Any);
    let request = client
        .request(
            Method::POST,
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        )
        .header("content-type", "application/json")
        .header("impersonate-user", "alice")
        .header("impersonate-group", "devs")
        .header("impersonate-group", "ops")
        .body(Full::new(Bytes::from_static(
            br#"{"kind":"SelfSubjectReview","apiVersion":"authentication.k8s.io/v1"}"#,
        )))
        .unwrap();
    let reply = client.send(request).await;
    assert_eq!(reply.status, StatusCode::CREATED);
    let info = &reply.json()["status"]["userInfo"];
    assert_eq!(info["username"], "alice");
    assert_eq!(
        info["groups"],
        json!(["devs", "ops", "system:authenticated"])
    );
}

#[tokio::test]
async fn delays_responses_but_records_on_arrival() {
    const DELAY: Duration = Duration::from_millis(1500);
    let sandbox = start().await;
    let client = TestClient::new(&sandbox, Protocol::Any);
    sandbox.set_response_delay(DELAY);
    let started = Instant::now();
    let pending = tokio::spawn(async move { client.get("/version").await.status });
    while sandbox.request_count() == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "request never arrived"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        !pending.is_finished(),
        "recorded while the response is still held"
    );
    assert_eq!(pending.await.unwrap(), StatusCode::OK);
    assert!(started.elapsed() >= DELAY);

    sandbox.set_response_delay(Duration::ZERO);
    let client = TestClient::new(&sandbox, Protocol::Any);
    let started = Instant::now();
    client.get("/version").await;
    assert!(started.elapsed() < DELAY);
}

#[tokio::test]
async fn shutdown_closes_the_listener_and_open_watches() {
    let sandbox = start().await;
    let addr = sandbox.addr();
    let mut watches = Vec::new();
    for protocol in [Protocol::Http1, Protocol::Any] {
        let client = TestClient::new(&sandbox, protocol);
        let mut watch = client
            .stream("/api/v1/namespaces?watch=true", "application/json")
            .await;
        assert_eq!(watch.next_event().await.unwrap()["type"], "ADDED");
        watches.push((protocol, watch));
    }
    sandbox.shutdown().await;
    for (protocol, mut watch) in watches {
        let ended = tokio::time::timeout(Duration::from_secs(5), watch.drain()).await;
        assert!(
            ended.is_ok(),
            "the {protocol:?} watch ends once the sandbox stops"
        );
    }
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn dropping_the_sandbox_stops_it() {
    let sandbox = start().await;
    let addr = sandbox.addr();
    drop(sandbox);
    let deadline = Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < deadline, "still listening after drop");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn writes_a_kubeconfig() {
    let sandbox = start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config");
    sandbox.write_kubeconfig(&path).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    use base64::Engine as _;
    let ca = base64::engine::general_purpose::STANDARD.encode(sandbox.ca_pem());
    assert!(text.contains(&format!("server: \"{}\"", sandbox.url())));
    assert!(text.contains(&format!("certificate-authority-data: \"{ca}\"")));
    assert!(text.contains(&format!("token: \"{TOKEN}\"")));
    assert!(text.contains("current-context: sandbox"));
    assert!(sandbox.url().starts_with("https://127.0.0.1:"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
