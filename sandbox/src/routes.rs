//! Request handling: authentication, recording, the response delay, then routing of the few
//! API paths the sandbox knows. Everything else is a 404 `Status`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use futures_util::StreamExt as _;
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use crate::select::Selector;
use crate::state::Shared;
use crate::status::{self, ApiError, json_response};
use crate::store::{Event, Resource, merge_patch};
use crate::table::{self, IncludeObject};
use crate::time::rfc3339;
use crate::{discovery, logs, proto, proxy, remote};

// As the API server's default limit on request bodies.
const MAX_BODY: usize = 3 * 1024 * 1024;
// The API server picks 30 to 60 minutes when the client gives no timeoutSeconds.
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(30 * 60);

type ApiResult = Result<Response, ApiError>;

/// Handles one request: record it, wait out the configured delay, authenticate, route.
pub(crate) async fn handle(shared: Arc<Shared>, request: Request<Body>) -> Response {
    let (parts, body) = request.into_parts();
    let authorized = shared.is_authorized(&parts.headers);
    shared.record(&parts, authorized);
    let delay = shared.delay();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if !authorized {
        return ApiError::unauthorized().into_response();
    }
    route(&shared, parts, body)
        .await
        .unwrap_or_else(ApiError::into_response)
}

/// The query string as ordered pairs.
struct Params(Vec<(String, String)>);

impl Params {
    fn from_parts(parts: &Parts) -> Result<Self, ApiError> {
        axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&parts.uri)
            .map(|q| Params(q.0))
            .map_err(|e| ApiError::bad_request(format!("invalid query string: {e}")))
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1"))
    }

    fn dry_run(&self) -> bool {
        self.get("dryRun") == Some("All")
    }
}

/// The shape a client asked for in `Accept`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Plain,
    Table(IncludeObject),
    Metadata,
}

/// Picks the first media range of `Accept` the sandbox can produce; JSON when none fits
/// (the sandbox speaks no protobuf, and clients that offer it also accept JSON).
fn negotiate(headers: &HeaderMap, params: &Params) -> Format {
    let accept = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",");
    for range in accept.split(',') {
        let mut pieces = range.split(';').map(str::trim);
        let media = pieces.next().unwrap_or_default().to_ascii_lowercase();
        if !matches!(media.as_str(), "application/json" | "application/*" | "*/*") {
            continue;
        }
        let (mut as_kind, mut group, mut version) = (None, None, None);
        for p in pieces {
            match p.split_once('=') {
                Some(("as", v)) => as_kind = Some(v),
                Some(("g", v)) => group = Some(v),
                Some(("v", v)) => version = Some(v),
                _ => {}
            }
        }
        match (as_kind, group, version) {
            (None, _, _) => return Format::Plain,
            (Some("Table"), Some("meta.k8s.io"), Some("v1")) => {
                return Format::Table(IncludeObject::parse(params.get("includeObject")));
            }
            (
                Some("PartialObjectMetadata" | "PartialObjectMetadataList"),
                Some("meta.k8s.io"),
                Some("v1"),
            ) => return Format::Metadata,
            // e.g. aggregated discovery or v1beta1 Tables: try the next range.
            _ => continue,
        }
    }
    Format::Plain
}

/// Where a core/v1 path points.
enum Target<'a> {
    /// `ns == None` is every namespace (or a cluster-scoped collection).
    Collection { res: Resource, ns: Option<&'a str> },
    Object {
        res: Resource,
        ns: &'a str,
        name: &'a str,
    },
    PodSub {
        ns: &'a str,
        name: &'a str,
        sub: &'a str,
    },
}

fn core_target<'a>(segments: &[&'a str]) -> Option<Target<'a>> {
    let namespaced = |p: &str| Resource::from_plural(p).filter(|r| r.namespaced());
    Some(match *segments {
        ["namespaces"] => Target::Collection {
            res: Resource::Namespaces,
            ns: None,
        },
        ["namespaces", name] => Target::Object {
            res: Resource::Namespaces,
            ns: "",
            name,
        },
        ["namespaces", ns, plural] => Target::Collection {
            res: namespaced(plural)?,
            ns: Some(ns),
        },
        ["namespaces", ns, plural, name] => Target::Object {
            res: namespaced(plural)?,
            ns,
            name,
        },
        ["namespaces", ns, "pods", name, sub] => Target::PodSub { ns, name, sub },
        [plural] => Target::Collection {
            res: namespaced(plural)?,
            ns: None,
        },
        _ => return None,
    })
}

async fn route(shared: &Shared, parts: Parts, body: Body) -> ApiResult {
    let path = parts.uri.path().to_string();
    // Read from the raw path: the backend's path keeps its empty segments and trailing slash.
    if let Some(target) = proxy::ProxyTarget::parse(&path) {
        return proxy::forward(shared, target, parts, body).await;
    }
    let params = Params::from_parts(&parts)?;
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let method = parts.method.clone();
    let get_only = |value: Value| -> ApiResult {
        if method == Method::GET {
            Ok(json_response(StatusCode::OK, &value))
        } else {
            Err(ApiError::method_not_allowed(&method))
        }
    };
    match segments.as_slice() {
        ["version"] => get_only(discovery::version()),
        ["healthz" | "livez" | "readyz"] if method == Method::GET => Ok(text(StatusCode::OK, "ok")),
        ["api"] => get_only(discovery::api_versions(shared.addr)),
        ["api", "v1"] => get_only(discovery::core_v1()),
        ["apis"] => get_only(discovery::api_groups()),
        ["apis", discovery::AUTHN_GROUP] => get_only(discovery::authn_group_doc()),
        ["apis", discovery::AUTHN_GROUP, "v1"] => get_only(discovery::authn_v1()),
        ["apis", discovery::AUTHN_GROUP, "v1", "selfsubjectreviews"] => {
            if method != Method::POST {
                return Err(ApiError::method_not_allowed(&method));
            }
            // The review's body says nothing (kubectl even sends it as protobuf): the answer
            // depends only on who is asking.
            read_body(body).await?;
            Ok(json_response(
                StatusCode::CREATED,
                &self_subject_review(&parts.headers),
            ))
        }
        [
            "apis",
            AUTHZ_GROUP,
            "v1",
            kind @ ("selfsubjectaccessreviews" | "selfsubjectrulesreviews"),
        ] => {
            if method != Method::POST {
                return Err(ApiError::method_not_allowed(&method));
            }
            // The gateway sends reviews as JSON: it rebuilds each one it forwards.
            let review = read_body_json(body).await?;
            let answer = if *kind == "selfsubjectaccessreviews" {
                access_review(review)
            } else {
                rules_review(review)
            };
            Ok(json_response(StatusCode::CREATED, &answer))
        }
        [
            "api",
            "v1",
            "namespaces",
            ns,
            "pods",
            name,
            sub @ ("exec" | "attach" | "portforward"),
        ] => remote::connect(shared, parts, &params.0, ns, name, sub).await,
        ["openapi", "v3"] => get_only(discovery::openapi_v3_index()),
        ["openapi", "v3", "api", "v1"] => get_only(discovery::openapi_v3_core()),
        ["api", "v1", rest @ ..] => {
            let (rest, watch_path) = match rest {
                ["watch", rest @ ..] => (rest, true),
                _ => (rest, false),
            };
            let target = core_target(rest).ok_or_else(ApiError::no_such_path)?;
            let request = CoreRequest {
                shared,
                format: negotiate(&parts.headers, &params),
                params,
                headers: parts.headers,
                method: parts.method,
                watch_path,
            };
            request.serve(target, body).await
        }
        _ => Err(ApiError::no_such_path()),
    }
}

struct CoreRequest<'a> {
    shared: &'a Shared,
    params: Params,
    headers: HeaderMap,
    method: Method,
    format: Format,
    /// The deprecated `/api/v1/watch/...` form.
    watch_path: bool,
}

impl CoreRequest<'_> {
    async fn serve(self, target: Target<'_>, body: Body) -> ApiResult {
        let store = &self.shared.store;
        let watching = self.watch_path || self.params.flag("watch");
        match (target, self.method.clone()) {
            (Target::Collection { res, ns }, Method::GET) if watching => self.watch(res, ns, None),
            (Target::Collection { res, ns }, Method::GET) => self.list(res, ns),
            (Target::Collection { res, ns }, Method::POST) => {
                let ns = match (res.namespaced(), ns) {
                    (true, Some(ns)) => ns,
                    (false, None) => "",
                    _ => return Err(ApiError::method_not_allowed(&self.method)),
                };
                let object = read_object(&self.headers, body, res).await?;
                let created = store.create(res, ns, object, self.params.dry_run())?;
                Ok(self.object_response(StatusCode::CREATED, res, &created))
            }
            (Target::Object { res, ns, name }, Method::GET) if watching => {
                self.watch(res, res.namespaced().then_some(ns), Some(name))
            }
            (Target::Object { res, ns, name }, Method::GET) => {
                let object = store.get(res, ns, name)?;
                Ok(self.object_response(StatusCode::OK, res, &object))
            }
            (Target::Object { res, ns, name }, Method::PUT) => {
                let object = read_object(&self.headers, body, res).await?;
                let updated = store.update(res, ns, name, self.params.dry_run(), |_| Ok(object))?;
                Ok(self.object_response(StatusCode::OK, res, &updated))
            }
            (Target::Object { res, ns, name }, Method::PATCH) => {
                let content_type = content_type(&self.headers);
                if !matches!(
                    content_type.as_str(),
                    "application/merge-patch+json" | "application/strategic-merge-patch+json"
                ) {
                    // JSON patch and server-side apply are not implemented.
                    return Err(ApiError::unsupported_media_type(&content_type));
                }
                let mut patch = read_body_json(body).await?;
                // Strategic merge is approximated by a JSON merge patch: lists are replaced
                // rather than merged by key, which suits labels, annotations and data. Its
                // `$` directives (e.g. kubectl apply's `$setElementOrder`) are dropped so they
                // do not land in the object.
                if content_type == "application/strategic-merge-patch+json" {
                    strip_directives(&mut patch);
                }
                let updated = store.update(res, ns, name, self.params.dry_run(), |current| {
                    let mut next = current.clone();
                    merge_patch(&mut next, &patch);
                    Ok(next)
                })?;
                Ok(self.object_response(StatusCode::OK, res, &updated))
            }
            (Target::Object { res, ns, name }, Method::DELETE) => {
                // DeleteOptions (grace period, propagation, in JSON or protobuf) do not
                // matter: deletion is immediate.
                read_body(body).await?;
                let deleted = store.delete(res, ns, name, self.params.dry_run())?;
                if res == Resource::Pods && !self.params.dry_run() {
                    self.shared.logs.forget(ns, name);
                }
                // As upstream: pods and namespaces (graceful deletion, finalizers) answer with
                // the object, the others with a success Status.
                if matches!(res, Resource::Pods | Resource::Namespaces) {
                    Ok(self.object_response(StatusCode::OK, res, &deleted))
                } else {
                    let uid = deleted["metadata"]["uid"].as_str().unwrap_or_default();
                    Ok(json_response(
                        StatusCode::OK,
                        &status::success(res.plural(), name, uid),
                    ))
                }
            }
            (Target::PodSub { ns, name, sub }, method) => {
                self.pod_subresource(ns, name, sub, &method)
            }
            (_, method) => Err(ApiError::method_not_allowed(&method)),
        }
    }

    fn object_response(&self, code: StatusCode, res: Resource, object: &Value) -> Response {
        let body = match self.format {
            Format::Plain => return json_response(code, object),
            Format::Metadata => table::partial_metadata(object),
            Format::Table(include) => {
                let rv = object["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or_default();
                table::table(res, [object], rv, include, SystemTime::now())
            }
        };
        json_response(code, &body)
    }

    fn selector(&self, res: Resource, name: Option<&str>) -> Result<Selector, ApiError> {
        // A watch on a single object (legacy path) is a watch on its name.
        let by_name = name.map(|n| format!("metadata.name={n}"));
        let fields = match (self.params.get("fieldSelector"), by_name.as_deref()) {
            (Some(f), Some(n)) if !f.is_empty() => Some(format!("{f},{n}")),
            (f, n) => n.or(f).map(str::to_string),
        };
        Selector::parse(res, self.params.get("labelSelector"), fields.as_deref())
    }

    fn list(&self, res: Resource, ns: Option<&str>) -> ApiResult {
        let selector = self.selector(res, None)?;
        let (items, rv) = self.shared.store.list(res, ns);
        let items: Vec<&Value> = items
            .iter()
            .map(|o| o.as_ref())
            .filter(|o| selector.matches(o))
            .collect();
        let rv = rv.to_string();
        // `limit` is honoured by returning everything at once, with no `continue`.
        let body = match self.format {
            Format::Table(include) => table::table(res, items, &rv, include, SystemTime::now()),
            Format::Metadata => json!({
                "kind": "PartialObjectMetadataList",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": {"resourceVersion": rv},
                "items": items.into_iter().map(table::partial_metadata).collect::<Vec<_>>(),
            }),
            Format::Plain => json!({
                "kind": format!("{}List", res.kind()),
                "apiVersion": "v1",
                "metadata": {"resourceVersion": rv},
                "items": items,
            }),
        };
        Ok(json_response(StatusCode::OK, &body))
    }

    fn watch(&self, res: Resource, ns: Option<&str>, name: Option<&str>) -> ApiResult {
        let selector = self.selector(res, name)?;
        let since =
            match self.params.get("resourceVersion") {
                None | Some("") => None,
                Some(rv) => Some(rv.parse::<u64>().map_err(|_| {
                    ApiError::bad_request(format!("invalid resourceVersion: {rv:?}"))
                })?),
            };
        let timeout = match self.params.get("timeoutSeconds") {
            None | Some("") => DEFAULT_WATCH_TIMEOUT,
            Some(t) => Duration::from_secs(
                t.parse()
                    .map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds: {t:?}")))?,
            ),
        };
        let start = self.shared.store.watch(res, ns, since)?;
        let ns = ns.map(str::to_string);
        let format = self.format;
        let min_rv = since.unwrap_or(0);
        let wanted = move |e: &Event| {
            e.resource == res
                && ns.as_deref().is_none_or(|ns| ns == e.namespace)
                && e.rv > min_rv
                && selector.matches(&e.object)
        };
        let initial: Vec<Event> = start.initial.into_iter().filter(&wanted).collect();
        let deadline = tokio::time::Instant::now() + timeout;
        let live = futures_util::stream::unfold(start.live, move |mut rx| async move {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Ok(event)) => Some((event, rx)),
                // A reader too slow for the channel is cut off, and re-lists as with upstream.
                Ok(Err(RecvError::Lagged(_) | RecvError::Closed)) | Err(_) => None,
            }
        })
        .filter(move |e| std::future::ready(wanted(e)));
        let events = futures_util::stream::iter(initial)
            .chain(live)
            .map(move |event| Ok::<_, std::convert::Infallible>(encode_event(&event, res, format)));
        let mut response = Response::new(Body::from_stream(events));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        Ok(response)
    }

    fn pod_subresource(&self, ns: &str, name: &str, sub: &str, method: &Method) -> ApiResult {
        let pod = self.shared.store.get(Resource::Pods, ns, name)?;
        match (sub, method) {
            ("log", &Method::GET) => {
                let containers = pod["spec"]["containers"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                let container = match self.params.get("container") {
                    Some(c) => c.to_string(),
                    None if containers.len() == 1 => containers[0]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    None => {
                        return Err(ApiError::bad_request(format!(
                            "a container name must be specified for pod {name}"
                        )));
                    }
                };
                if !containers.iter().any(|c| c["name"] == container.as_str()) {
                    return Err(ApiError::bad_request(format!(
                        "container {container} is not valid for pod {name}"
                    )));
                }
                let follow = self.params.flag("follow");
                logs::respond(self.shared, ns, name, &pod, &container, follow)
            }
            ("log", _) => Err(ApiError::method_not_allowed(method)),
            _ => Err(ApiError::no_such_path()),
        }
    }
}

fn strip_directives(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|k, _| !k.starts_with('$'));
            map.values_mut().for_each(strip_directives);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_directives),
        _ => {}
    }
}

/// One watch line: `{"type":"ADDED","object":{...}}\n`, the object shaped as negotiated.
fn encode_event(event: &Event, res: Resource, format: Format) -> Bytes {
    let object = match format {
        Format::Plain => (*event.object).clone(),
        Format::Metadata => table::partial_metadata(&event.object),
        Format::Table(include) => table::table(
            res,
            [event.object.as_ref()],
            &event.rv.to_string(),
            include,
            SystemTime::now(),
        ),
    };
    let mut line = serde_json::to_vec(&json!({"type": event.kind.as_str(), "object": object}))
        .unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

/// Who the request claims to be: the impersonated user when the gateway set one (the sandbox
/// trusts the headers, as the API server trusts a caller allowed to impersonate), else the
/// identity behind the sandbox's token.
fn self_subject_review(headers: &HeaderMap) -> Value {
    let values = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    };
    let mut user_info = match values("impersonate-user").into_iter().next() {
        Some(user) => {
            let mut groups = values("impersonate-group");
            if !groups.iter().any(|g| g == "system:authenticated") {
                groups.push("system:authenticated".to_string());
            }
            json!({"username": user, "groups": groups})
        }
        None => json!({
            "username": "kubegate-sandbox-admin",
            "groups": ["system:masters", "system:authenticated"],
        }),
    };
    if let Some(uid) = values("impersonate-uid").into_iter().next() {
        user_info["uid"] = json!(uid);
    }
    let mut extra = serde_json::Map::new();
    for (name, value) in headers {
        if let Some(key) = name.as_str().strip_prefix("impersonate-extra-") {
            let entry = extra.entry(key.to_string()).or_insert_with(|| json!([]));
            if let Some(list) = entry.as_array_mut() {
                list.push(json!(String::from_utf8_lossy(value.as_bytes())));
            }
        }
    }
    if !extra.is_empty() {
        user_info["extra"] = Value::Object(extra);
    }
    json!({
        "kind": "SelfSubjectReview",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"creationTimestamp": rfc3339(SystemTime::now())},
        "status": {"userInfo": user_info},
    })
}

const AUTHZ_GROUP: &str = "authorization.k8s.io";

/// The sandbox authorizes every request its token lets in, so every access review is
/// allowed (the gateway's policy is what refuses).
fn access_review(review: Value) -> Value {
    json!({
        "kind": "SelfSubjectAccessReview",
        "apiVersion": format!("{AUTHZ_GROUP}/v1"),
        "metadata": {"creationTimestamp": rfc3339(SystemTime::now())},
        "spec": review.get("spec").cloned().unwrap_or_else(|| json!({})),
        "status": {"allowed": true, "reason": "the sandbox authorizes every request"},
    })
}

/// Everything, as the sandbox does it: every verb on every resource and every path.
fn rules_review(review: Value) -> Value {
    json!({
        "kind": "SelfSubjectRulesReview",
        "apiVersion": format!("{AUTHZ_GROUP}/v1"),
        "metadata": {"creationTimestamp": rfc3339(SystemTime::now())},
        "spec": review.get("spec").cloned().unwrap_or_else(|| json!({})),
        "status": {
            "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}],
            "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
            "incomplete": false,
        },
    })
}

fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

async fn read_body(body: Body) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, MAX_BODY).await.map_err(|e| {
        if std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
        {
            ApiError::too_large()
        } else {
            ApiError::bad_request(format!("reading the request body: {e}"))
        }
    })
}

async fn read_body_json(body: Body) -> Result<Value, ApiError> {
    serde_json::from_slice(&read_body(body).await?)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))
}

/// An object of `res` sent as JSON, or as protobuf where [`proto`] can read it. YAML is not
/// spoken here (kubectl converts YAML to JSON itself).
async fn read_object(headers: &HeaderMap, body: Body, res: Resource) -> Result<Value, ApiError> {
    match content_type(headers).as_str() {
        "" | "application/json" => read_body_json(body).await,
        proto::CONTENT_TYPE if res != Resource::Pods => {
            let bytes = read_body(body).await?;
            proto::decode(res, &bytes)
                .map_err(|e| ApiError::bad_request(format!("decoding the protobuf body: {e}")))
        }
        other => Err(ApiError::unsupported_media_type(other)),
    }
}

fn text(code: StatusCode, body: &str) -> Response {
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = code;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(value: &str, query: &str) -> Format {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_str(value).unwrap());
        let parts = Request::get(format!("/x?{query}"))
            .body(())
            .unwrap()
            .into_parts()
            .0;
        negotiate(&headers, &Params::from_parts(&parts).unwrap())
    }

    #[test]
    fn negotiates_like_kubectl_asks() {
        let kubectl_get = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert_eq!(
            accept(kubectl_get, ""),
            Format::Table(IncludeObject::Metadata)
        );
        assert_eq!(
            accept(kubectl_get, "includeObject=Object"),
            Format::Table(IncludeObject::Object)
        );
        let aggregated = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        assert_eq!(accept(aggregated, ""), Format::Plain);
        assert_eq!(
            accept("application/vnd.kubernetes.protobuf", ""),
            Format::Plain
        );
        assert_eq!(
            accept(
                "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1",
                ""
            ),
            Format::Metadata
        );
    }

    #[test]
    fn strategic_merge_directives_are_dropped() {
        let mut patch = json!({"$setElementOrder/containers": [{"name": "a"}],
                               "spec": {"containers": [{"name": "a", "$patch": "replace"}]}});
        strip_directives(&mut patch);
        assert_eq!(patch, json!({"spec": {"containers": [{"name": "a"}]}}));
    }

    #[test]
    fn core_paths() {
        assert!(matches!(
            core_target(&["namespaces", "dev", "pods", "x"]),
            Some(Target::Object {
                res: Resource::Pods,
                ns: "dev",
                name: "x"
            })
        ));
        assert!(matches!(
            core_target(&["pods"]),
            Some(Target::Collection {
                res: Resource::Pods,
                ns: None
            })
        ));
        assert!(core_target(&["namespaces", "dev", "namespaces"]).is_none());
        assert!(core_target(&["services"]).is_none());
        assert!(matches!(
            core_target(&["namespaces", "dev", "pods", "x", "log"]),
            Some(Target::PodSub { sub: "log", .. })
        ));
    }
}
