//! `labelSelector` and `fieldSelector` for list and watch: equality-based requirements only
//! (`a=b`, `a==b`, `a!=b`, and for labels `a`, `!a`). Set-based label selectors (`in`,
//! `notin`) are refused with 400 rather than silently ignored.

use serde_json::Value;

use crate::status::ApiError;
use crate::store::Resource;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Eq(String),
    NotEq(String),
    Exists,
    NotExists,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Requirement {
    key: String,
    op: Op,
}

/// Both selectors of a request; the empty selector matches everything.
#[derive(Debug, Clone, Default)]
pub(crate) struct Selector {
    labels: Vec<Requirement>,
    fields: Vec<Requirement>,
}

impl Selector {
    pub(crate) fn parse(
        res: Resource,
        labels: Option<&str>,
        fields: Option<&str>,
    ) -> Result<Self, ApiError> {
        let labels = match labels {
            Some(s) => parse(s, true)?,
            None => Vec::new(),
        };
        let fields = match fields {
            Some(s) => parse(s, false)?,
            None => Vec::new(),
        };
        for f in &fields {
            if !supported_field(res, &f.key) {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {}",
                    f.key
                )));
            }
        }
        Ok(Selector { labels, fields })
    }

    pub(crate) fn matches(&self, object: &Value) -> bool {
        let label_ok = self.labels.iter().all(|r| {
            let value = object["metadata"]["labels"][&r.key].as_str();
            match &r.op {
                Op::Eq(v) => value == Some(v.as_str()),
                // As upstream: `a!=b` also matches objects without label `a`.
                Op::NotEq(v) => value != Some(v.as_str()),
                Op::Exists => value.is_some(),
                Op::NotExists => value.is_none(),
            }
        });
        label_ok
            && self.fields.iter().all(|r| {
                let value = field_value(object, &r.key);
                match &r.op {
                    Op::Eq(v) => value == *v,
                    Op::NotEq(v) => value != *v,
                    Op::Exists | Op::NotExists => false,
                }
            })
    }
}

fn supported_field(res: Resource, key: &str) -> bool {
    matches!(key, "metadata.name" | "metadata.namespace")
        || matches!(
            (res, key),
            (
                Resource::Pods,
                "status.phase" | "spec.nodeName" | "spec.restartPolicy"
            ) | (Resource::Secrets, "type")
                | (Resource::Namespaces, "status.phase")
        )
}

fn field_value(object: &Value, path: &str) -> String {
    let v = path.split('.').fold(object, |v, part| &v[part]);
    v.as_str().unwrap_or_default().to_string()
}

fn parse(selector: &str, labels: bool) -> Result<Vec<Requirement>, ApiError> {
    let mut out = Vec::new();
    for part in selector.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || {
            ApiError::bad_request(format!(
                "unable to parse requirement: {part:?} (the sandbox supports only =, ==, != and existence)"
            ))
        };
        if part.contains(['(', ')']) || part.contains(" in ") || part.contains(" notin ") {
            return Err(bad());
        }
        let (key, op) = if let Some((k, v)) = part.split_once("!=") {
            (k, Op::NotEq(v.trim().to_string()))
        } else if let Some((k, v)) = part.split_once("==") {
            (k, Op::Eq(v.trim().to_string()))
        } else if let Some((k, v)) = part.split_once('=') {
            (k, Op::Eq(v.trim().to_string()))
        } else if !labels {
            return Err(bad());
        } else if let Some(k) = part.strip_prefix('!') {
            (k, Op::NotExists)
        } else {
            (part, Op::Exists)
        };
        let key = key.trim();
        if key.is_empty() || key.contains([' ', '!', '=']) {
            return Err(bad());
        }
        out.push(Requirement {
            key: key.to_string(),
            op,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod() -> Value {
        json!({"metadata": {"name": "web", "namespace": "dev", "labels": {"app": "web", "tier": "front"}},
               "status": {"phase": "Running"}})
    }

    fn sel(labels: Option<&str>, fields: Option<&str>) -> Selector {
        Selector::parse(Resource::Pods, labels, fields).unwrap()
    }

    #[test]
    fn label_selectors() {
        assert!(sel(Some("app=web,tier==front"), None).matches(&pod()));
        assert!(!sel(Some("app=db"), None).matches(&pod()));
        assert!(sel(Some("app!=db,missing!=x"), None).matches(&pod()));
        assert!(sel(Some("app,!missing"), None).matches(&pod()));
        assert!(!sel(Some("!app"), None).matches(&pod()));
        assert!(sel(Some(""), None).matches(&pod()));
        assert!(Selector::parse(Resource::Pods, Some("app in (web)"), None).is_err());
    }

    #[test]
    fn field_selectors() {
        assert!(sel(None, Some("metadata.name=web")).matches(&pod()));
        assert!(!sel(None, Some("metadata.name=other")).matches(&pod()));
        assert!(sel(None, Some("metadata.namespace==dev,status.phase!=Pending")).matches(&pod()));
        let err = Selector::parse(Resource::Pods, None, Some("spec.bogus=x")).unwrap_err();
        assert_eq!(err.reason, "BadRequest");
    }
}
