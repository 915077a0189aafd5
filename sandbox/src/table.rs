//! Server-side printing: `meta.k8s.io/v1` Tables with the API server's default columns, so
//! `kubectl get` prints what it prints against a real cluster, and PartialObjectMetadata for
//! metadata-only clients.

use std::time::SystemTime;

use serde_json::{Value, json};

use crate::store::Resource;
use crate::time::age;

/// What each row's `object` holds (the `includeObject` query parameter).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) enum IncludeObject {
    None,
    #[default]
    Metadata,
    Object,
}

impl IncludeObject {
    pub(crate) fn parse(s: Option<&str>) -> Self {
        match s {
            Some("None") => IncludeObject::None,
            Some("Object") => IncludeObject::Object,
            _ => IncludeObject::Metadata,
        }
    }
}

fn column(name: &str, kind: &str, format: &str, description: &str) -> Value {
    json!({"name": name, "type": kind, "format": format, "description": description, "priority": 0})
}

fn columns(res: Resource) -> Vec<Value> {
    let name = column(
        "Name",
        "string",
        "name",
        "Name must be unique within a namespace. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names",
    );
    let age = column(
        "Age",
        "string",
        "",
        "CreationTimestamp is a timestamp representing the server time when this object was created.",
    );
    match res {
        Resource::Pods => vec![
            name,
            column(
                "Ready",
                "string",
                "",
                "The aggregate readiness state of this pod for accepting traffic.",
            ),
            column(
                "Status",
                "string",
                "",
                "The aggregate status of the containers in this pod.",
            ),
            column(
                "Restarts",
                "string",
                "",
                "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
            ),
            age,
        ],
        Resource::ConfigMaps => vec![
            name,
            column(
                "Data",
                "integer",
                "",
                "Data contains the configuration data.",
            ),
            age,
        ],
        Resource::Secrets => vec![
            name,
            column("Type", "string", "", "The type of the secret"),
            column("Data", "integer", "", "The number of keys in the secret"),
            age,
        ],
        Resource::Namespaces => vec![
            name,
            column("Status", "string", "", "The status of the namespace"),
            age,
        ],
    }
}

fn count(v: &Value) -> usize {
    v.as_object().map_or(0, |m| m.len())
}

fn cells(res: Resource, o: &Value, now: SystemTime) -> Vec<Value> {
    let name = json!(o["metadata"]["name"]);
    let age = json!(age(o["metadata"]["creationTimestamp"].as_str(), now));
    match res {
        Resource::Pods => {
            let total = o["spec"]["containers"].as_array().map_or(0, Vec::len);
            let statuses = o["status"]["containerStatuses"].as_array();
            let ready = statuses.map_or(0, |s| s.iter().filter(|c| c["ready"] == true).count());
            let restarts: u64 = statuses.map_or(0, |s| {
                s.iter().filter_map(|c| c["restartCount"].as_u64()).sum()
            });
            let status = if o["metadata"]["deletionTimestamp"].is_string() {
                "Terminating"
            } else if let Some(reason) = o["status"]["reason"].as_str() {
                reason
            } else {
                o["status"]["phase"].as_str().unwrap_or("Pending")
            };
            vec![
                name,
                json!(format!("{ready}/{total}")),
                json!(status),
                json!(restarts.to_string()),
                age,
            ]
        }
        Resource::ConfigMaps => vec![
            name,
            json!(count(&o["data"]) + count(&o["binaryData"])),
            age,
        ],
        Resource::Secrets => vec![name, o["type"].clone(), json!(count(&o["data"])), age],
        Resource::Namespaces => vec![name, o["status"]["phase"].clone(), age],
    }
}

/// `object` reduced to its metadata, as `PartialObjectMetadata`.
pub(crate) fn partial_metadata(object: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": object["metadata"],
    })
}

/// A Table of `objects`; `resource_version` goes into the Table's own metadata.
pub(crate) fn table<'a>(
    res: Resource,
    objects: impl IntoIterator<Item = &'a Value>,
    resource_version: &str,
    include: IncludeObject,
    now: SystemTime,
) -> Value {
    let rows: Vec<Value> = objects
        .into_iter()
        .map(|o| {
            let mut row = json!({"cells": cells(res, o, now)});
            match include {
                IncludeObject::None => {}
                IncludeObject::Metadata => row["object"] = partial_metadata(o),
                IncludeObject::Object => row["object"] = o.clone(),
            }
            row
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": columns(res),
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_rows_follow_upstream_columns() {
        let pod = json!({
            "metadata": {"name": "web", "creationTimestamp": "1970-01-01T00:00:00Z", "resourceVersion": "7"},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}]},
            "status": {"phase": "Running", "containerStatuses": [
                {"ready": true, "restartCount": 2}, {"ready": false, "restartCount": 1}]},
        });
        let now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(125);
        let t = table(Resource::Pods, [&pod], "7", IncludeObject::Metadata, now);
        let names: Vec<_> = t["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].clone())
            .collect();
        assert_eq!(names, ["Name", "Ready", "Status", "Restarts", "Age"]);
        assert_eq!(
            t["rows"][0]["cells"],
            json!(["web", "1/2", "Running", "3", "2m5s"])
        );
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(t["rows"][0]["object"]["metadata"]["name"], "web");
    }

    #[test]
    fn other_resources() {
        let now = SystemTime::now();
        let secret =
            json!({"metadata": {"name": "s"}, "type": "Opaque", "data": {"a": "", "b": ""}});
        let t = table(Resource::Secrets, [&secret], "1", IncludeObject::None, now);
        assert_eq!(
            t["rows"][0]["cells"],
            json!(["s", "Opaque", 2, "<unknown>"])
        );
        assert!(t["rows"][0].get("object").is_none());
        let cm = json!({"metadata": {"name": "c"}, "data": {"a": ""}, "binaryData": {"b": ""}});
        let t = table(Resource::ConfigMaps, [&cm], "1", IncludeObject::Object, now);
        assert_eq!(t["rows"][0]["cells"][1], 2);
        assert_eq!(t["rows"][0]["object"], cm);
    }
}
