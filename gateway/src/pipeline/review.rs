//! Self-reviews, answered by the gateway so that `kubectl auth can-i`, `can-i --list` and
//! `auth whoami` tell the truth about what the gateway will do, not only what RBAC says.
//!
//! - `SelfSubjectAccessReview` (`can-i`): the reviewed attributes are decided by the policy
//!   first; only when it allows them is the API server asked the same question, as the
//!   identity the policy forwards them as. Allowed only when both allow, and
//!   `status.reason` names the kubegate rule and who refused.
//! - `SelfSubjectRulesReview` (`can-i --list`): the API server's rules for each identity
//!   the policy may forward the caller as, cut down to the cells the policy allows for
//!   every name with that same identity; `incomplete` wherever the gateway cannot express
//!   the intersection exactly (wildcards, name-dependent rules). Never wider than the truth.
//! - `SelfSubjectReview` (`whoami`): answered here from the identity the review is
//!   forwarded as, on every API server (v1.20 has no such API).
//!
//! A review is allowed for every authenticated user, as the API server's
//! `system:basic-user` allows it, unless a policy rule explicitly denies it. It has been
//! admitted (rate, slot) and is audited like any request. The client's body is read under
//! `[limits] max_request_body`, as JSON or as the protobuf kubectl sends, and never
//! forwarded: the question sent upstream is rebuilt from the attributes the policy
//! decided, so nothing reaches the API server that the policy did not see.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt as _, Limited};
use kubegate_policy::{
    Cell, Decision, ForwardIdentity, Grants, HTTP_METHODS, KUBERNETES_VERBS, NonResourceAttributes,
    Policy, RequestAttributes, ResourceAttributes,
};
use serde_json::{Value, json};

use super::headers::add_gateway_headers;
use super::{Gateway, Outcome};
use crate::audit::record::Facts;
use crate::authn::Identity;
use crate::error::GatewayError;

/// The rule name decisions and audit records carry for the built-in grant of self-reviews.
pub const BUILT_IN_RULE: &str = "(built-in) self-review";

/// The API server's answers are read whole; none of them is near this size.
const MAX_UPSTREAM_ANSWER: usize = 4 * 1024 * 1024;

/// At most this many identities are asked about in one rules review (the caller's own and
/// the ones the policy's rules map them to); beyond it the answer is incomplete.
const MAX_IDENTITIES: usize = 8;

/// The prefix of Kubernetes protobuf bodies.
const PROTOBUF_MAGIC: &[u8] = b"k8s\0";

const AUTHORIZATION_GROUP: &str = "authorization.k8s.io";
const AUTHENTICATION_GROUP: &str = "authentication.k8s.io";

/// A self-review the gateway answers itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelfReview {
    /// `SelfSubjectAccessReview` in `authorization.k8s.io/v1`.
    Access,
    /// `SelfSubjectRulesReview` in `authorization.k8s.io/v1`.
    Rules,
    /// `SelfSubjectReview` in `authentication.k8s.io/<version>`.
    Subject(&'static str),
    /// An access or rules review in another version: refused rather than forwarded, so that
    /// no version of the API answers from RBAC alone.
    OtherVersion,
}

impl SelfReview {
    /// The review a request creates, if it is one.
    pub fn of(method: &Method, attributes: &RequestAttributes) -> Option<SelfReview> {
        let RequestAttributes::Resource(r) = attributes else {
            return None;
        };
        if method != Method::POST
            || r.verb != "create"
            || !r.namespace.is_empty()
            || !r.name.is_empty()
            || !r.subresource.is_empty()
        {
            return None;
        }
        match (r.api_group.as_str(), r.resource.as_str()) {
            (AUTHORIZATION_GROUP, "selfsubjectaccessreviews" | "selfsubjectrulesreviews") => {
                Some(match (r.api_version.as_str(), r.resource.as_str()) {
                    ("v1", "selfsubjectaccessreviews") => SelfReview::Access,
                    ("v1", _) => SelfReview::Rules,
                    _ => SelfReview::OtherVersion,
                })
            }
            (AUTHENTICATION_GROUP, "selfsubjectreviews") => Some(match r.api_version.as_str() {
                "v1" => SelfReview::Subject("v1"),
                "v1beta1" => SelfReview::Subject("v1beta1"),
                "v1alpha1" => SelfReview::Subject("v1alpha1"),
                _ => SelfReview::OtherVersion,
            }),
            _ => None,
        }
    }
}

/// What a review asks the API server, and as whom.
struct Question<'a> {
    path: &'static str,
    body: Value,
    forward: &'a ForwardIdentity,
}

/// The API server's answer: its review status, or its refusal relayed as it is.
enum Answer {
    Status(Value),
    Refused(Response),
}

impl Gateway {
    /// Answers a self-review (a request [`SelfReview::of`] names; see the module docs).
    /// `attributes` are the review request's own, already admitted.
    pub(super) async fn answer_review(
        &self,
        identity: &Arc<Identity>,
        attributes: &RequestAttributes,
        parts: Parts,
        body: Body,
        facts: &Facts,
        outcome: &mut Outcome,
    ) -> Result<Response, GatewayError> {
        let review = SelfReview::of(&parts.method, attributes)
            .ok_or_else(|| GatewayError::Internal("not a self-review".into()))?;
        let policy = self.policy.snapshot();
        let forward = self.review_permission(identity, attributes, outcome)?;
        if review == SelfReview::OtherVersion {
            return Err(GatewayError::BadRequest(
                "kubegate answers access and rules reviews only in authorization.k8s.io/v1",
            ));
        }
        let body = read_body(
            &parts.headers,
            body,
            self.limits.max_request_body,
            self.upstream.timeout(),
        )
        .await?;
        let protobuf = is_protobuf(&parts.headers);
        let peer = peer_of(&parts);
        let ask = Asker {
            gateway: self,
            facts,
            peer,
        };
        match review {
            SelfReview::Access => {
                let spec = AccessSpec::decode(&body, protobuf)?;
                self.access_review(&policy, identity, spec, &ask, outcome)
                    .await
            }
            SelfReview::Rules => {
                let namespace = rules_namespace(&body, protobuf)?;
                self.rules_review(&policy, identity, namespace, &ask, outcome)
                    .await
            }
            SelfReview::Subject(version) => {
                check_envelope(&body, protobuf)?;
                outcome.forwarded = Some(Arc::new(forward.clone()));
                Ok(created(&subject_review(version, &forward)))
            }
            SelfReview::OtherVersion => unreachable_review(),
        }
    }

    /// A review is allowed for every authenticated user unless a rule denies it. Returns
    /// the identity the review itself is forwarded as: the allowing rule's, or the
    /// caller's own under the built-in grant.
    fn review_permission(
        &self,
        identity: &Identity,
        attributes: &RequestAttributes,
        outcome: &mut Outcome,
    ) -> Result<ForwardIdentity, GatewayError> {
        match self
            .policy
            .authorize(identity, attributes, &mut outcome.decision)
        {
            Ok(forward) => Ok((*forward).clone()),
            Err(denied) if outcome.decision.as_ref().is_some_and(|d| d.rule.is_some()) => {
                Err(denied)
            }
            Err(_) => {
                let forward = ForwardIdentity::of(identity);
                outcome.decision = Some(Decision {
                    allowed: true,
                    rule: Some(BUILT_IN_RULE.to_string()),
                    forward_as: Some(Arc::new(forward.clone())),
                });
                Ok(forward)
            }
        }
    }

    async fn access_review(
        &self,
        policy: &Policy,
        identity: &Identity,
        spec: AccessSpec,
        ask: &Asker<'_>,
        outcome: &mut Outcome,
    ) -> Result<Response, GatewayError> {
        let attributes = &spec.0;
        let decision = policy.decide(identity, attributes);
        let mut status = json!({"allowed": false});
        let forward = match (&decision.forward_as, decision.allowed) {
            (Some(forward), true) => forward,
            _ => {
                status["denied"] = json!(decision.rule.is_some());
                status["reason"] = json!(format!("kubegate: {}", decision.reason()));
                return Ok(created(&spec.review(status)));
            }
        };
        if let RequestAttributes::Resource(r) = attributes
            && spec.is_wildcard()
            && let Some(rule) = policy.wildcard_deny(identity, r)
        {
            status["reason"] = json!(format!(
                "kubegate: rule {rule:?} denies part of what this wildcard review asks about"
            ));
            return Ok(created(&spec.review(status)));
        }
        let question = Question {
            path: "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            body: spec.review(json!({})),
            forward,
        };
        outcome.forwarded = Some(forward.clone());
        let upstream = match ask.ask(question, outcome).await? {
            Answer::Status(upstream) => upstream,
            Answer::Refused(response) => return Ok(response),
        };
        let allowed = upstream["allowed"].as_bool() == Some(true);
        let theirs = upstream["reason"]
            .as_str()
            .filter(|r| !r.is_empty())
            .unwrap_or(if allowed {
                "allowed"
            } else {
                "no RBAC rule allowed it"
            });
        status = json!({
            "allowed": allowed,
            "reason": format!("kubegate: {}; the API server: {theirs}", decision.reason()),
        });
        if !allowed && upstream["denied"].as_bool() == Some(true) {
            status["denied"] = json!(true);
        }
        if let Some(error) = upstream["evaluationError"]
            .as_str()
            .filter(|e| !e.is_empty())
        {
            status["evaluationError"] = json!(error);
        }
        Ok(created(&spec.review(status)))
    }

    async fn rules_review(
        &self,
        policy: &Policy,
        identity: &Identity,
        namespace: String,
        ask: &Asker<'_>,
        outcome: &mut Outcome,
    ) -> Result<Response, GatewayError> {
        let grants = policy.grants(identity);
        let mut listing = Listing::default();
        if grants.identities.len() > MAX_IDENTITIES {
            listing.incomplete(format!(
                "kubegate: the policy forwards this user as more than {MAX_IDENTITIES} identities; only the first are listed"
            ));
        }
        for forward in grants.identities.iter().take(MAX_IDENTITIES) {
            let question = Question {
                path: "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews",
                body: json!({
                    "apiVersion": "authorization.k8s.io/v1",
                    "kind": "SelfSubjectRulesReview",
                    "spec": {"namespace": namespace},
                }),
                forward,
            };
            if outcome.forwarded.is_none() {
                outcome.forwarded = Some(Arc::new(forward.clone()));
            }
            let upstream = match ask.ask(question, outcome).await? {
                Answer::Status(upstream) => upstream,
                Answer::Refused(response) => return Ok(response),
            };
            let narrowing = Narrowing {
                policy,
                identity,
                forward,
                namespace: &namespace,
                grants: &grants,
            };
            narrowing.apply(&upstream, &mut listing);
        }
        let review = json!({
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectRulesReview",
            "metadata": {"creationTimestamp": null},
            "spec": {"namespace": namespace},
            "status": listing.status(),
        });
        Ok(created(&review))
    }
}

fn unreachable_review() -> Result<Response, GatewayError> {
    Err(GatewayError::Internal(
        "a review in another version reached its answer".into(),
    ))
}

/// Sends the gateway's questions upstream, as every request is sent: the gateway's
/// credential, `Impersonate-*` for the forwarded identity, the request's audit ID.
struct Asker<'a> {
    gateway: &'a Gateway,
    facts: &'a Facts,
    peer: std::net::IpAddr,
}

impl Asker<'_> {
    async fn ask(
        &self,
        question: Question<'_>,
        outcome: &mut Outcome,
    ) -> Result<Answer, GatewayError> {
        let upstream = &self.gateway.upstream;
        let body = serde_json::to_vec(&question.body)
            .map_err(|e| GatewayError::Internal(format!("encoding a review: {e}")))?;
        let mut request = Request::post(upstream.uri_for(question.path)?)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json")
            .body(Body::from(body))
            .map_err(|e| GatewayError::Internal(format!("building a review request: {e}")))?;
        let credential = upstream.authorization().await?;
        add_gateway_headers(
            request.headers_mut(),
            credential,
            question.forward,
            self.peer,
        )?;
        if let Ok(id) = HeaderValue::from_str(self.facts.audit_id.as_str()) {
            request.headers_mut().insert(super::headers::AUDIT_ID, id);
        }
        outcome.sent_upstream = true;
        let sent = Instant::now();
        let response = upstream.send(request).await?;
        let (parts, body) = response.into_parts();
        let bytes = tokio::time::timeout(
            upstream.timeout(),
            Limited::new(body, MAX_UPSTREAM_ANSWER).collect(),
        )
        .await
        .map_err(|_| GatewayError::UpstreamTimeout(upstream.timeout()))?
        .map_err(GatewayError::UpstreamUnavailable)?
        .to_bytes();
        outcome.upstream_wait += sent.elapsed();
        if !parts.status.is_success() {
            // The API server's own refusal (a Status), for the client as it would get it.
            let mut response = Response::new(Body::from(bytes));
            *response.status_mut() = parts.status;
            if let Some(kind) = parts.headers.get(header::CONTENT_TYPE) {
                response
                    .headers_mut()
                    .insert(header::CONTENT_TYPE, kind.clone());
            }
            return Ok(Answer::Refused(response));
        }
        let review: Value = serde_json::from_slice(&bytes).map_err(|e| {
            GatewayError::UpstreamUnavailable(
                format!("the API server's review answer is not JSON: {e}").into(),
            )
        })?;
        Ok(Answer::Status(review["status"].clone()))
    }
}

fn peer_of(parts: &Parts) -> std::net::IpAddr {
    parts
        .extensions
        .get::<crate::listener::ConnInfo>()
        .map_or(std::net::Ipv4Addr::UNSPECIFIED.into(), |c| c.peer.ip())
}

/// The reviewed attributes of a `SelfSubjectAccessReview`, as the policy decides them:
/// literally, as the API server's authorizer reads a review, `*` included.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AccessSpec(RequestAttributes);

/// `resourceAttributes` in the order of their protobuf field numbers.
fn resource_spec(
    [namespace, verb, group, version, resource, subresource, name]: [String; 7],
) -> AccessSpec {
    AccessSpec(RequestAttributes::Resource(ResourceAttributes {
        verb,
        api_prefix: if group.is_empty() { "api" } else { "apis" }.to_string(),
        api_group: group,
        api_version: version,
        namespace,
        resource,
        subresource,
        name,
        path: String::new(),
        follow: false,
    }))
}

fn non_resource_spec(path: String, verb: String) -> AccessSpec {
    AccessSpec(RequestAttributes::NonResource(NonResourceAttributes {
        verb,
        path,
    }))
}

impl AccessSpec {
    fn decode(body: &[u8], protobuf: bool) -> Result<AccessSpec, GatewayError> {
        if protobuf {
            return Self::from_protobuf(body);
        }
        let review: Value = serde_json::from_slice(body)
            .map_err(|_| GatewayError::BadRequest("the review is not valid JSON"))?;
        let text = |v: &Value, key: &str| -> Result<String, GatewayError> {
            match &v[key] {
                Value::Null => Ok(String::new()),
                Value::String(s) => Ok(s.clone()),
                _ => Err(GatewayError::BadRequest(
                    "a review attribute is not a string",
                )),
            }
        };
        let spec = &review["spec"];
        let resource = &spec["resourceAttributes"];
        let non_resource = &spec["nonResourceAttributes"];
        match (resource.is_object(), non_resource.is_object()) {
            (true, false) => {
                let mut values: [String; 7] = Default::default();
                let keys = [
                    "namespace",
                    "verb",
                    "group",
                    "version",
                    "resource",
                    "subresource",
                    "name",
                ];
                for (value, key) in values.iter_mut().zip(keys) {
                    *value = text(resource, key)?;
                }
                Ok(resource_spec(values))
            }
            (false, true) => Ok(non_resource_spec(
                text(non_resource, "path")?,
                text(non_resource, "verb")?,
            )),
            _ => Err(exactly_one()),
        }
    }

    /// `runtime.Unknown{raw: SelfSubjectAccessReview{spec (2): {resourceAttributes (1) |
    /// nonResourceAttributes (2)}}}` (k8s.io/api/authorization/v1/generated.proto).
    fn from_protobuf(body: &[u8]) -> Result<AccessSpec, GatewayError> {
        let spec = field(unknown_raw(body)?, 2)?.unwrap_or_default();
        let strings = |message: &[u8], count: usize| -> Result<Vec<String>, GatewayError> {
            let mut out = vec![String::new(); count];
            for f in Fields(message) {
                if let (number @ 1.., Wire::Bytes(bytes)) = f?
                    && let Some(slot) = out.get_mut(number as usize - 1)
                {
                    *slot = utf8(bytes)?;
                }
            }
            Ok(out)
        };
        match (field(spec, 1)?, field(spec, 2)?) {
            (Some(r), None) => Ok(resource_spec(
                strings(r, 7)?.try_into().map_err(|_| exactly_one())?,
            )),
            (None, Some(n)) => {
                let [path, verb]: [String; 2] =
                    strings(n, 2)?.try_into().map_err(|_| exactly_one())?;
                Ok(non_resource_spec(path, verb))
            }
            _ => Err(exactly_one()),
        }
    }

    /// Asks about every verb, group, resource or subresource at once.
    fn is_wildcard(&self) -> bool {
        match &self.0 {
            RequestAttributes::Resource(r) => [&r.verb, &r.api_group, &r.resource, &r.subresource]
                .iter()
                .any(|v| v.as_str() == "*"),
            RequestAttributes::NonResource(_) => false,
        }
    }

    /// The review as JSON with `status`.
    fn review(&self, status: Value) -> Value {
        let spec = match &self.0 {
            RequestAttributes::Resource(r) => json!({"resourceAttributes": {
                "namespace": r.namespace, "verb": r.verb, "group": r.api_group,
                "version": r.api_version, "resource": r.resource,
                "subresource": r.subresource, "name": r.name,
            }}),
            RequestAttributes::NonResource(n) => {
                json!({"nonResourceAttributes": {"path": n.path, "verb": n.verb}})
            }
        };
        let mut review = json!({
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "metadata": {"creationTimestamp": null},
            "spec": spec,
        });
        if status.as_object().is_some_and(|s| !s.is_empty()) {
            review["status"] = status;
        }
        review
    }
}

fn exactly_one() -> GatewayError {
    GatewayError::BadRequest(
        "a self-subject access review needs exactly one of spec.resourceAttributes and spec.nonResourceAttributes",
    )
}

/// `spec.namespace` of a `SelfSubjectRulesReview`; required, as the API server requires it.
fn rules_namespace(body: &[u8], protobuf: bool) -> Result<String, GatewayError> {
    let namespace = if protobuf {
        let spec = field(unknown_raw(body)?, 2)?.unwrap_or_default();
        field(spec, 1)?.map(utf8).transpose()?.unwrap_or_default()
    } else {
        let review: Value = serde_json::from_slice(body)
            .map_err(|_| GatewayError::BadRequest("the review is not valid JSON"))?;
        match &review["spec"]["namespace"] {
            Value::String(ns) => ns.clone(),
            Value::Null => String::new(),
            _ => return Err(GatewayError::BadRequest("spec.namespace is not a string")),
        }
    };
    if namespace.is_empty() {
        return Err(GatewayError::BadRequest(
            "a self-subject rules review needs spec.namespace",
        ));
    }
    Ok(namespace)
}

/// A `SelfSubjectReview` body says nothing, but it must still be one.
fn check_envelope(body: &[u8], protobuf: bool) -> Result<(), GatewayError> {
    if protobuf {
        unknown_raw(body).map(|_| ())
    } else {
        serde_json::from_slice::<Value>(body)
            .map(|_| ())
            .map_err(|_| GatewayError::BadRequest("the review is not valid JSON"))
    }
}

/// `whoami`: the identity forwarded, with the `system:authenticated` the API server adds
/// to every impersonated user.
fn subject_review(version: &str, forward: &ForwardIdentity) -> Value {
    let mut groups = forward.groups.clone();
    if !groups.iter().any(|g| g == "system:authenticated") {
        groups.push("system:authenticated".to_string());
    }
    let mut user = json!({"username": forward.user, "groups": groups});
    if let Some(uid) = &forward.uid {
        user["uid"] = json!(uid);
    }
    if !forward.extra.is_empty() {
        user["extra"] = json!(forward.extra);
    }
    json!({
        "apiVersion": format!("{AUTHENTICATION_GROUP}/{version}"),
        "kind": "SelfSubjectReview",
        "metadata": {"creationTimestamp": null},
        "status": {"userInfo": user},
    })
}

fn created(review: &Value) -> Response {
    let mut response = Response::new(Body::from(review.to_string()));
    *response.status_mut() = StatusCode::CREATED;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn is_protobuf(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/vnd.kubernetes.protobuf")
        })
}

/// The client's review body, whole, under the request body cap.
/// The review's body, at most `cap` bytes, in full within `deadline`: the gateway reads it
/// itself instead of streaming it on, so the client's pace would otherwise be unbounded.
async fn read_body(
    headers: &HeaderMap,
    body: Body,
    cap: u64,
    deadline: Duration,
) -> Result<Bytes, GatewayError> {
    let (body, watch) = super::stream::request_body(headers, body, Some(cap))?;
    let limit = usize::try_from(cap).unwrap_or(usize::MAX);
    let collected = tokio::time::timeout(deadline, Limited::new(body, limit).collect())
        .await
        .map_err(|_| GatewayError::BadRequest("the review's body did not arrive in time"))?;
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(GatewayError::PayloadTooLarge { limit: cap })
        }
        Err(_) => Err(watch.blame(GatewayError::BadRequest(
            "the request body could not be read: it was malformed or cut off",
        ))),
    }
}

// ---------------------------------------------------------------------------------------
// Protobuf, just enough for the reviews kubectl sends
// ---------------------------------------------------------------------------------------

fn bad_protobuf() -> GatewayError {
    GatewayError::BadRequest("the review is not a valid Kubernetes protobuf message")
}

/// The object inside kubectl's `k8s\0`-prefixed `runtime.Unknown` envelope (field 2).
fn unknown_raw(body: &[u8]) -> Result<&[u8], GatewayError> {
    let envelope = body.strip_prefix(PROTOBUF_MAGIC).ok_or_else(bad_protobuf)?;
    if field(envelope, 3)?.is_some_and(|encoding| !encoding.is_empty()) {
        return Err(GatewayError::BadRequest(
            "content encodings are not supported in reviews",
        ));
    }
    Ok(field(envelope, 2)?.unwrap_or_default())
}

/// The last length-delimited field `number` of `message` (protobuf's last-one-wins).
fn field(message: &[u8], number: u64) -> Result<Option<&[u8]>, GatewayError> {
    let mut found = None;
    for f in Fields(message) {
        if let (n, Wire::Bytes(bytes)) = f?
            && n == number
        {
            found = Some(bytes);
        }
    }
    Ok(found)
}

fn utf8(bytes: &[u8]) -> Result<String, GatewayError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| bad_protobuf())
}

enum Wire<'a> {
    Scalar,
    Bytes(&'a [u8]),
}

/// The fields of one protobuf message, in order; a malformed one ends it with an error.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn varint(&mut self) -> Result<u64, GatewayError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = self.0.split_first().ok_or_else(bad_protobuf)?;
            self.0 = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(bad_protobuf())
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], GatewayError> {
        let n = usize::try_from(n).map_err(|_| bad_protobuf())?;
        if n > self.0.len() {
            return Err(bad_protobuf());
        }
        let (taken, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(taken)
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u64, Wire<'a>), GatewayError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty() {
            return None;
        }
        let read = (|| {
            let key = self.varint()?;
            let wire = match key & 7 {
                0 => self.varint().map(|_| Wire::Scalar)?,
                1 => self.take(8).map(|_| Wire::Scalar)?,
                2 => {
                    let n = self.varint()?;
                    Wire::Bytes(self.take(n)?)
                }
                5 => self.take(4).map(|_| Wire::Scalar)?,
                _ => return Err(bad_protobuf()),
            };
            Ok((key >> 3, wire))
        })();
        if read.is_err() {
            self.0 = &[];
        }
        Some(read)
    }
}

// ---------------------------------------------------------------------------------------
// Rules reviews: the API server's rules cut down to the policy's
// ---------------------------------------------------------------------------------------

/// The rules kept so far, and why the list is incomplete.
#[derive(Default)]
struct Listing {
    /// (group, resource, resource names) -> verbs.
    resources: BTreeMap<(String, String, Vec<String>), Vec<String>>,
    /// URL -> verbs.
    non_resources: BTreeMap<String, Vec<String>>,
    incomplete: bool,
    errors: Vec<String>,
}

impl Listing {
    fn incomplete(&mut self, why: String) {
        self.incomplete = true;
        if !self.errors.contains(&why) {
            self.errors.push(why);
        }
    }

    fn keep(&mut self, cell: &Cell, names: Vec<String>) {
        let resource = if cell.subresource.is_empty() {
            cell.resource.clone()
        } else {
            format!("{}/{}", cell.resource, cell.subresource)
        };
        let verbs = self
            .resources
            .entry((cell.api_group.clone(), resource, names))
            .or_default();
        if !verbs.contains(&cell.verb) {
            verbs.push(cell.verb.clone());
        }
    }

    fn status(&self) -> Value {
        let resource_rules: Vec<Value> = self
            .resources
            .iter()
            .map(|((group, resource, names), verbs)| {
                let mut rule =
                    json!({"verbs": verbs, "apiGroups": [group], "resources": [resource]});
                if !names.is_empty() {
                    rule["resourceNames"] = json!(names);
                }
                rule
            })
            .collect();
        let non_resource_rules: Vec<Value> = self
            .non_resources
            .iter()
            .map(|(url, verbs)| json!({"verbs": verbs, "nonResourceURLs": [url]}))
            .collect();
        let mut status = json!({
            "resourceRules": resource_rules,
            "nonResourceRules": non_resource_rules,
            "incomplete": self.incomplete,
        });
        if !self.errors.is_empty() {
            status["evaluationError"] = json!(self.errors.join("; "));
        }
        status
    }
}

/// One identity's rules from the API server, narrowed to what the policy allows when it
/// forwards the caller as that identity.
struct Narrowing<'a> {
    policy: &'a Policy,
    identity: &'a Identity,
    forward: &'a ForwardIdentity,
    namespace: &'a str,
    grants: &'a Grants,
}

impl Narrowing<'_> {
    fn apply(&self, upstream: &Value, listing: &mut Listing) {
        if upstream["incomplete"].as_bool() == Some(true) {
            let error = upstream["evaluationError"].as_str().unwrap_or_default();
            listing.incomplete(format!("the API server's list is incomplete: {error}"));
        }
        for rule in array(&upstream["resourceRules"]) {
            self.resource_rule(&RbacRule::of(rule), listing);
        }
        for rule in array(&upstream["nonResourceRules"]) {
            self.non_resource_rule(rule, listing);
        }
    }

    fn attributes(&self, cell: &Cell, name: &str) -> ResourceAttributes {
        ResourceAttributes {
            verb: cell.verb.clone(),
            api_prefix: if cell.api_group.is_empty() {
                "api"
            } else {
                "apis"
            }
            .to_string(),
            api_group: cell.api_group.clone(),
            namespace: self.namespace.to_string(),
            resource: cell.resource.clone(),
            subresource: cell.subresource.clone(),
            name: name.to_string(),
            ..ResourceAttributes::default()
        }
    }

    fn resource_rule(&self, rule: &RbacRule, listing: &mut Listing) {
        let cells = if rule.is_literal() {
            rule.cells()
        } else {
            // A wildcard: what the policy grants by name, within the rule.
            if self.grants.globbed {
                listing.incomplete(
                    "kubegate: the API server grants wildcards and the policy globs; only the resources the policy names are listed".into(),
                );
            }
            self.grants
                .cells
                .iter()
                .filter(|c| rule.covers(c))
                .cloned()
                .collect()
        };
        for cell in cells {
            if rule.names.is_empty() {
                match self
                    .policy
                    .every_name(self.identity, &self.attributes(&cell, ""))
                {
                    Some(forward) if forward == *self.forward => listing.keep(&cell, Vec::new()),
                    Some(_) => {}
                    None => {
                        let unnamed = RequestAttributes::Resource(self.attributes(&cell, ""));
                        if self.policy.decide(self.identity, &unnamed).allowed {
                            listing.incomplete(format!(
                                "kubegate: {} {} depends on the object's name and is not listed",
                                cell.verb,
                                resource_text(&cell)
                            ));
                        }
                    }
                }
                continue;
            }
            for name in &rule.names {
                let named = RequestAttributes::Resource(self.attributes(&cell, name));
                let decision = self.policy.decide(self.identity, &named);
                if decision.allowed && decision.forward_as.as_deref() == Some(self.forward) {
                    listing.keep(&cell, vec![name.clone()]);
                }
            }
        }
    }

    fn non_resource_rule(&self, rule: &Value, listing: &mut Listing) {
        let verbs = strings(&rule["verbs"]);
        let verbs: Vec<String> = if verbs.iter().any(|v| v == "*") {
            listing.incomplete(
                "kubegate: non-resource rules with verb \"*\" are listed for the HTTP methods only"
                    .into(),
            );
            HTTP_METHODS.iter().map(|m| m.to_string()).collect()
        } else {
            verbs
        };
        for url in strings(&rule["nonResourceURLs"]) {
            if url.contains('*') {
                listing.incomplete(format!(
                    "kubegate: the non-resource URL pattern {url:?} is not listed"
                ));
                continue;
            }
            for verb in &verbs {
                let attributes = RequestAttributes::NonResource(NonResourceAttributes {
                    verb: verb.clone(),
                    path: url.clone(),
                });
                let decision = self.policy.decide(self.identity, &attributes);
                if decision.allowed && decision.forward_as.as_deref() == Some(self.forward) {
                    let kept = listing.non_resources.entry(url.clone()).or_default();
                    if !kept.contains(verb) {
                        kept.push(verb.clone());
                    }
                }
            }
        }
    }
}

fn resource_text(cell: &Cell) -> String {
    let mut text = cell.resource.clone();
    if !cell.subresource.is_empty() {
        text = format!("{text}/{}", cell.subresource);
    }
    if !cell.api_group.is_empty() {
        text = format!("{text}.{}", cell.api_group);
    }
    text
}

fn array(v: &Value) -> &[Value] {
    v.as_array().map_or(&[], Vec::as_slice)
}

fn strings(v: &Value) -> Vec<String> {
    array(v)
        .iter()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect()
}

/// One of the API server's resource rules, read as RBAC matches it.
struct RbacRule {
    verbs: Vec<String>,
    groups: Vec<String>,
    resources: Vec<String>,
    names: Vec<String>,
}

impl RbacRule {
    fn of(rule: &Value) -> RbacRule {
        RbacRule {
            verbs: strings(&rule["verbs"]),
            groups: strings(&rule["apiGroups"]),
            resources: strings(&rule["resources"]),
            names: strings(&rule["resourceNames"]),
        }
    }

    fn is_literal(&self) -> bool {
        !self
            .verbs
            .iter()
            .chain(&self.groups)
            .chain(&self.resources)
            .any(|v| v.contains('*'))
    }

    /// verbs × groups × resources of a literal rule (verbs outside Kubernetes' own, such as
    /// `use` or `impersonate`, are not requests the gateway forwards by that verb).
    fn cells(&self) -> Vec<Cell> {
        let mut cells = Vec::new();
        for verb in self
            .verbs
            .iter()
            .filter(|v| KUBERNETES_VERBS.contains(&v.as_str()))
        {
            for group in &self.groups {
                for resource in &self.resources {
                    let (resource, subresource) =
                        resource.split_once('/').unwrap_or((resource, ""));
                    cells.push(Cell {
                        api_group: group.clone(),
                        resource: resource.to_string(),
                        subresource: subresource.to_string(),
                        verb: verb.clone(),
                    });
                }
            }
        }
        cells
    }

    /// RBAC's own matching (`VerbMatches`, `APIGroupMatches`, `ResourceMatches`).
    fn covers(&self, cell: &Cell) -> bool {
        let combined = resource_text(&Cell {
            api_group: String::new(),
            ..cell.clone()
        });
        self.verbs.iter().any(|v| v == "*" || *v == cell.verb)
            && self.groups.iter().any(|g| g == "*" || *g == cell.api_group)
            && self.resources.iter().any(|r| {
                r == "*"
                    || *r == combined
                    || (!cell.subresource.is_empty() && *r == format!("*/{}", cell.subresource))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pb_string(field: u8, value: &str) -> Vec<u8> {
        let mut out = vec![field << 3 | 2, value.len() as u8];
        out.extend_from_slice(value.as_bytes());
        out
    }

    fn pb_message(field: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![field << 3 | 2, body.len() as u8];
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn kubectls_protobuf_access_review_is_read() {
        // What kubectl 1.32 sends for `kubectl auth can-i get pods -n dev`.
        let body = b"k8s\x00\n2\n\x17authorization.k8s.io/v1\x12\x17SelfSubjectAccessReview\x128\n\x10\n\x00\x12\x00\x1a\x00\"\x00*\x002\x008\x00B\x00\x12\x1a\n\x18\n\x03dev\x12\x03get\x1a\x00\"\x00*\x04pods2\x00:\x00\x1a\x08\x08\x00\x12\x00\x1a\x00 \x00\x1a\x00\"\x00";
        let spec = AccessSpec::decode(body, true).unwrap();
        let want = ["dev", "get", "", "", "pods", "", ""].map(String::from);
        assert_eq!(spec, resource_spec(want));
        // `kubectl auth can-i get /logs`.
        let non_resource = pb_message(2, &[pb_string(1, "/logs"), pb_string(2, "get")].concat());
        let raw = pb_message(2, &non_resource);
        let body = [PROTOBUF_MAGIC, &pb_message(2, &raw)].concat();
        assert_eq!(
            AccessSpec::decode(&body, true).unwrap(),
            non_resource_spec("/logs".into(), "get".into())
        );
        // `kubectl auth can-i --list -n dev`.
        let body = b"k8s\x00\n1\n\x17authorization.k8s.io/v1\x12\x16SelfSubjectRulesReview\x12\x1f\n\x10\n\x00\x12\x00\x1a\x00\"\x00*\x002\x008\x00B\x00\x12\x05\n\x03dev\x1a\x04\x18\x00\"\x00\x1a\x00\"\x00";
        assert_eq!(rules_namespace(body, true).unwrap(), "dev");
    }

    #[tokio::test(start_paused = true)]
    async fn a_review_body_that_never_arrives_is_refused_at_the_deadline() {
        let never =
            Body::from_stream(futures_util::stream::pending::<Result<Bytes, std::io::Error>>());
        let headers = HeaderMap::new();
        let read = read_body(&headers, never, 1024, Duration::from_secs(30)).await;
        match read {
            Err(GatewayError::BadRequest(message)) => assert!(message.contains("in time")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn malformed_reviews_are_the_clients_400() {
        for body in [
            &b"k8s\x00\x12\xff"[..], // a length past the end
            b"k8s\x00\x12\x02\x12",  // a truncated inner message
            b"\x12\x00",             // no magic
            b"k8s\x00\x0f",          // wire type 7
            b"k8s\x00\x12\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01", // an endless varint
        ] {
            let error = AccessSpec::decode(body, true).unwrap_err();
            assert_eq!(error.status(), StatusCode::BAD_REQUEST, "{body:?}");
        }
        for body in [
            &b"{"[..],
            br#"{"spec":{}}"#,
            br#"{"spec":{"resourceAttributes":{},"nonResourceAttributes":{}}}"#,
            br#"{"spec":{"resourceAttributes":{"verb":7}}}"#,
        ] {
            let error = AccessSpec::decode(body, false).unwrap_err();
            assert_eq!(error.status(), StatusCode::BAD_REQUEST, "{body:?}");
        }
        assert!(rules_namespace(br#"{"spec":{}}"#, false).is_err());
        assert!(check_envelope(b"not json", false).is_err());
    }

    #[test]
    fn only_self_reviews_are_answered_here() {
        let of = |method: Method, path: &str| {
            let path = kubegate_policy::normalize_path(path).unwrap();
            SelfReview::of(
                &method,
                &kubegate_policy::resolve(method.as_str(), &path, None),
            )
        };
        let ssar = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews";
        assert_eq!(of(Method::POST, ssar), Some(SelfReview::Access));
        assert_eq!(of(Method::GET, ssar), None);
        assert_eq!(
            of(
                Method::POST,
                "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews"
            ),
            Some(SelfReview::Rules)
        );
        assert_eq!(
            of(
                Method::POST,
                "/apis/authorization.k8s.io/v1beta1/selfsubjectaccessreviews"
            ),
            Some(SelfReview::OtherVersion)
        );
        assert_eq!(
            of(
                Method::POST,
                "/apis/authentication.k8s.io/v1beta1/selfsubjectreviews"
            ),
            Some(SelfReview::Subject("v1beta1"))
        );
        // Reviews of other users are ordinary creates for the policy to decide.
        assert_eq!(
            of(
                Method::POST,
                "/apis/authorization.k8s.io/v1/subjectaccessreviews"
            ),
            None
        );
        assert_eq!(
            of(
                Method::POST,
                "/apis/authorization.k8s.io/v1/namespaces/dev/localsubjectaccessreviews"
            ),
            None
        );
    }

    #[test]
    fn rbac_rules_match_as_rbac_does() {
        let rule = RbacRule {
            verbs: vec!["get".into()],
            groups: vec!["*".into()],
            resources: vec!["*/log".into(), "secrets".into()],
            names: Vec::new(),
        };
        let cell = |r: &str, s: &str, v: &str| Cell {
            api_group: String::new(),
            resource: r.into(),
            subresource: s.into(),
            verb: v.into(),
        };
        assert!(rule.covers(&cell("pods", "log", "get")));
        assert!(rule.covers(&cell("secrets", "", "get")));
        assert!(!rule.covers(&cell("pods", "", "get")));
        assert!(!rule.covers(&cell("secrets", "", "list")));
        assert!(!rule.is_literal());
    }
}
