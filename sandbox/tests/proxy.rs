//! The service and pod proxy over real HTTPS, to a real HTTP backend on loopback.

mod common;

use bytes::Bytes;
use common::{Protocol, TestClient, start};
use http::{Method, StatusCode};
use http_body_util::Full;
use kubegate_sandbox::webapp::{PAGE, SCRIPT, STYLESHEET};
use kubegate_sandbox::{ProxyKind, WebApp};

const WEB: &str = "/api/v1/namespaces/dev/services/web:80/proxy";

#[tokio::test]
async fn forwards_the_backends_path_and_query_exactly() {
    let sandbox = start().await;
    let app = WebApp::start().await.unwrap();
    sandbox.proxy_to(ProxyKind::Service, "dev", "web", app.addr());
    let client = TestClient::new(&sandbox, Protocol::Any);

    let page = client.get(&format!("{WEB}/")).await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(page.content_type, "text/html; charset=utf-8");
    assert_eq!(page.body, PAGE);
    // The page's relative links, resolved against its URL, stay below the proxy.
    assert!(PAGE.contains("href=\"static/style.css\"") && PAGE.contains("src=\"static/app.js\""));
    assert_eq!(
        client.get(&format!("{WEB}/static/style.css")).await.body,
        STYLESHEET
    );
    assert_eq!(
        client.get(&format!("{WEB}/static/app.js")).await.body,
        SCRIPT
    );
    for rest in ["//a", "/a/", "/a?x=1", "/a%20b//?q=%2F&r"] {
        let reply = client.get(&format!("{WEB}{rest}")).await;
        assert_eq!(reply.status, StatusCode::OK, "{rest}");
        assert_eq!(reply.body, format!("you asked for {rest}\n"), "{rest}");
    }
    assert_eq!(
        app.targets(),
        [
            "/",
            "/static/style.css",
            "/static/app.js",
            "//a",
            "/a/",
            "/a?x=1",
            "/a%20b//?q=%2F&r"
        ]
    );
}

#[tokio::test]
async fn an_empty_backend_path_is_redirected_to_the_slash_form() {
    let sandbox = start().await;
    let app = WebApp::start().await.unwrap();
    sandbox.proxy_to(ProxyKind::Service, "dev", "web", app.addr());
    let client = TestClient::new(&sandbox, Protocol::Http1);
    let reply = client
        .send(
            client
                .request(Method::GET, &format!("{WEB}?x=1"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::MOVED_PERMANENTLY);
    assert!(app.targets().is_empty());
}

#[tokio::test]
async fn pods_proxy_too_and_credentials_stay_behind() {
    let sandbox = start().await;
    let app = WebApp::start().await.unwrap();
    sandbox.proxy_to(ProxyKind::Pod, "dev", "web-0", app.addr());
    let client = TestClient::new(&sandbox, Protocol::Http1);
    let reply = client
        .send(
            client
                .request(
                    Method::POST,
                    "/api/v1/namespaces/dev/pods/web-0:8080/proxy/form",
                )
                .header("impersonate-user", "alice")
                .body(Full::new(Bytes::from_static(b"a=1")))
                .unwrap(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, "you asked for /form\n");

    // Unknown names and other namespaces are not found; a dead backend is unavailable.
    for path in [
        "/api/v1/namespaces/dev/services/web:80/proxy/",
        "/api/v1/namespaces/prod/pods/web-0/proxy/",
    ] {
        let reply = client.get(path).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(reply.json()["reason"], "NotFound");
    }
    let addr = app.addr();
    drop(app);
    sandbox.proxy_to(ProxyKind::Service, "dev", "gone", addr);
    let reply = client
        .get("/api/v1/namespaces/dev/services/gone/proxy/")
        .await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.json()["reason"], "ServiceUnavailable");
}
