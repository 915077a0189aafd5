//! The object store: every object by (resource, namespace, name), one global resourceVersion
//! counter, a short event history for watches that resume, and a broadcast channel for live
//! watches. Mutations and watch subscriptions take the same lock, so a watch never misses or
//! repeats an event between its snapshot and its live stream.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, VecDeque};
use std::hash::BuildHasher as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use base64::Engine as _;
use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

use crate::status::ApiError;
use crate::time::rfc3339;

/// The resources the sandbox serves, all in the core `v1` group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Resource {
    Namespaces,
    Pods,
    ConfigMaps,
    Secrets,
}

impl Resource {
    pub(crate) const ALL: [Resource; 4] = [
        Resource::Namespaces,
        Resource::Pods,
        Resource::ConfigMaps,
        Resource::Secrets,
    ];

    pub(crate) fn from_plural(plural: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.plural() == plural)
    }

    pub(crate) fn plural(self) -> &'static str {
        match self {
            Resource::Namespaces => "namespaces",
            Resource::Pods => "pods",
            Resource::ConfigMaps => "configmaps",
            Resource::Secrets => "secrets",
        }
    }

    pub(crate) fn singular(self) -> &'static str {
        match self {
            Resource::Namespaces => "namespace",
            Resource::Pods => "pod",
            Resource::ConfigMaps => "configmap",
            Resource::Secrets => "secret",
        }
    }

    pub(crate) fn kind(self) -> &'static str {
        match self {
            Resource::Namespaces => "Namespace",
            Resource::Pods => "Pod",
            Resource::ConfigMaps => "ConfigMap",
            Resource::Secrets => "Secret",
        }
    }

    pub(crate) fn namespaced(self) -> bool {
        self != Resource::Namespaces
    }

    pub(crate) fn short_names(self) -> &'static [&'static str] {
        match self {
            Resource::Namespaces => &["ns"],
            Resource::Pods => &["po"],
            Resource::ConfigMaps => &["cm"],
            Resource::Secrets => &[],
        }
    }
}

/// A watch event type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change to one object; `object` is its state after the change (for DELETED: the last
/// state, carrying the deletion's resourceVersion).
#[derive(Clone, Debug)]
pub(crate) struct Event {
    pub(crate) kind: EventType,
    pub(crate) resource: Resource,
    pub(crate) namespace: String,
    pub(crate) object: Arc<Value>,
    pub(crate) rv: u64,
}

/// What a new watch starts from.
pub(crate) struct WatchStart {
    /// Events to send before the live ones.
    pub(crate) initial: Vec<Event>,
    pub(crate) live: broadcast::Receiver<Event>,
}

// Enough for tests and dev sessions; an older resume gets 410 Expired and re-lists.
const HISTORY: usize = 1024;
// Live watchers that fall this far behind are closed, and re-list as with a real server.
const BROADCAST_CAPACITY: usize = 1024;

type Key = (Resource, String, String);

struct Inner {
    objects: BTreeMap<Key, Arc<Value>>,
    rv: u64,
    history: VecDeque<Event>,
    /// The newest resourceVersion dropped from `history`.
    compacted: u64,
}

pub(crate) struct Store {
    inner: Mutex<Inner>,
    events: broadcast::Sender<Event>,
}

impl Store {
    /// A store holding the namespaces every cluster has, plus `dev` for tests and demos.
    pub(crate) fn new() -> Self {
        let store = Store {
            inner: Mutex::new(Inner {
                objects: BTreeMap::new(),
                rv: 0,
                history: VecDeque::new(),
                compacted: 0,
            }),
            events: broadcast::channel(BROADCAST_CAPACITY).0,
        };
        for name in ["default", "dev", "kube-system"] {
            store
                .create(
                    Resource::Namespaces,
                    "",
                    json!({"metadata": {"name": name}}),
                    false,
                )
                .expect("seed namespaces are valid and distinct");
        }
        store
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn get(&self, res: Resource, ns: &str, name: &str) -> Result<Arc<Value>, ApiError> {
        self.lock()
            .objects
            .get(&key(res, ns, name))
            .cloned()
            .ok_or_else(|| ApiError::not_found(res.plural(), name))
    }

    /// Objects of `res` in `ns` (every namespace for `None`), by namespace then name, and the
    /// current resourceVersion.
    pub(crate) fn list(&self, res: Resource, ns: Option<&str>) -> (Vec<Arc<Value>>, u64) {
        let inner = self.lock();
        let items = inner
            .objects
            .iter()
            .filter(|((r, n, _), _)| *r == res && ns.is_none_or(|ns| ns == n))
            .map(|(_, v)| v.clone())
            .collect();
        (items, inner.rv)
    }

    pub(crate) fn create(
        &self,
        res: Resource,
        ns: &str,
        object: Value,
        dry_run: bool,
    ) -> Result<Arc<Value>, ApiError> {
        let mut inner = self.lock();
        let object = prepare_new(res, ns, object)?;
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if res.namespaced()
            && !inner
                .objects
                .contains_key(&key(Resource::Namespaces, "", ns))
        {
            return Err(ApiError::not_found("namespaces", ns));
        }
        let k = key(res, ns, &name);
        if inner.objects.contains_key(&k) {
            return Err(ApiError::already_exists(res.plural(), &name));
        }
        Ok(self.store_version(&mut inner, (res, ns), k, object, EventType::Added, dry_run))
    }

    /// Replaces an existing object with `change(current)`. Identity fields (name, namespace,
    /// uid, creationTimestamp) are kept, and so is `status` for pods and namespaces, because
    /// the API server only changes those through the status subresource. A stale
    /// `metadata.resourceVersion` in the new object is a conflict.
    pub(crate) fn update(
        &self,
        res: Resource,
        ns: &str,
        name: &str,
        dry_run: bool,
        change: impl FnOnce(&Value) -> Result<Value, ApiError>,
    ) -> Result<Arc<Value>, ApiError> {
        let mut inner = self.lock();
        let k = key(res, ns, name);
        let current = inner
            .objects
            .get(&k)
            .cloned()
            .ok_or_else(|| ApiError::not_found(res.plural(), name))?;
        let mut object = change(&current)?;
        if !object.is_object() {
            return Err(ApiError::bad_request("the object must be a JSON object"));
        }
        check_type(res, &object)?;
        if !object["metadata"].is_object() {
            object["metadata"] = json!({});
        }
        let meta = &object["metadata"];
        if let Some(new_name) = meta["name"].as_str()
            && new_name != name
        {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({new_name}) does not match the name on the URL ({name})"
            )));
        }
        if let Some(given) = meta["resourceVersion"].as_str()
            && !given.is_empty()
            && Some(given) != current["metadata"]["resourceVersion"].as_str()
        {
            return Err(ApiError::conflict(
                res.plural(),
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            ));
        }
        object["kind"] = json!(res.kind());
        object["apiVersion"] = json!("v1");
        for field in ["name", "namespace", "uid", "creationTimestamp"] {
            match current["metadata"].get(field) {
                Some(v) => object["metadata"][field] = v.clone(),
                None => remove(&mut object["metadata"], field),
            }
        }
        if matches!(res, Resource::Pods | Resource::Namespaces) {
            object["status"] = current["status"].clone();
        }
        if res == Resource::Secrets {
            fold_string_data(&mut object);
        }
        Ok(self.store_version(
            &mut inner,
            (res, ns),
            k,
            object,
            EventType::Modified,
            dry_run,
        ))
    }

    /// Removes an object at once (no graceful termination or finalizers) and returns its last
    /// state. Deleting a namespace deletes everything in it first.
    pub(crate) fn delete(
        &self,
        res: Resource,
        ns: &str,
        name: &str,
        dry_run: bool,
    ) -> Result<Arc<Value>, ApiError> {
        let mut inner = self.lock();
        let k = key(res, ns, name);
        let Some(current) = inner.objects.get(&k).cloned() else {
            return Err(ApiError::not_found(res.plural(), name));
        };
        if dry_run {
            return Ok(current);
        }
        if res == Resource::Namespaces {
            let contained: Vec<Key> = inner
                .objects
                .keys()
                .filter(|(r, n, _)| r.namespaced() && n == name)
                .cloned()
                .collect();
            for k in contained {
                self.remove_locked(&mut inner, &k);
            }
        }
        Ok(self
            .remove_locked(&mut inner, &k)
            .expect("the object was present under the same lock"))
    }

    fn remove_locked(&self, inner: &mut Inner, k: &Key) -> Option<Arc<Value>> {
        let mut object = Arc::unwrap_or_clone(inner.objects.remove(k)?);
        inner.rv += 1;
        object["metadata"]["resourceVersion"] = Value::String(inner.rv.to_string());
        let object = Arc::new(object);
        self.publish(inner, EventType::Deleted, k.0, &k.1, object.clone());
        Some(object)
    }

    /// Starts a watch on `res` in `ns` (every namespace for `None`). Without `since` (or with
    /// 0) the current objects come first as ADDED events; with `since` the recorded changes
    /// after that resourceVersion do, or 410 Expired when they are no longer kept.
    pub(crate) fn watch(
        &self,
        res: Resource,
        ns: Option<&str>,
        since: Option<u64>,
    ) -> Result<WatchStart, ApiError> {
        let inner = self.lock();
        let in_scope = |r: Resource, n: &str| r == res && ns.is_none_or(|ns| ns == n);
        let initial = match since.filter(|rv| *rv > 0) {
            None => inner
                .objects
                .iter()
                .filter(|((r, n, _), _)| in_scope(*r, n))
                .map(|((r, n, _), object)| Event {
                    kind: EventType::Added,
                    resource: *r,
                    namespace: n.clone(),
                    object: object.clone(),
                    rv: object_rv(object),
                })
                .collect(),
            Some(rv) if rv < inner.compacted => return Err(ApiError::expired(rv)),
            Some(rv) => inner
                .history
                .iter()
                .filter(|e| e.rv > rv && in_scope(e.resource, &e.namespace))
                .cloned()
                .collect(),
        };
        Ok(WatchStart {
            initial,
            live: self.events.subscribe(),
        })
    }

    /// Gives `object` the next resourceVersion and, unless `dry_run`, stores it under `k`
    /// and tells the watchers.
    fn store_version(
        &self,
        inner: &mut Inner,
        (res, ns): (Resource, &str),
        k: Key,
        mut object: Value,
        kind: EventType,
        dry_run: bool,
    ) -> Arc<Value> {
        let rv = inner.rv + 1;
        object["metadata"]["resourceVersion"] = Value::String(rv.to_string());
        let object = Arc::new(object);
        if !dry_run {
            inner.rv = rv;
            inner.objects.insert(k, object.clone());
            self.publish(inner, kind, res, ns, object.clone());
        }
        object
    }

    fn publish(
        &self,
        inner: &mut Inner,
        kind: EventType,
        res: Resource,
        ns: &str,
        object: Arc<Value>,
    ) {
        let event = Event {
            kind,
            resource: res,
            namespace: ns.to_string(),
            rv: inner.rv,
            object,
        };
        if inner.history.len() == HISTORY
            && let Some(old) = inner.history.pop_front()
        {
            inner.compacted = old.rv;
        }
        inner.history.push_back(event.clone());
        // No receivers is normal: nobody is watching.
        let _ = self.events.send(event);
    }
}

fn key(res: Resource, ns: &str, name: &str) -> Key {
    let ns = if res.namespaced() { ns } else { "" };
    (res, ns.to_string(), name.to_string())
}

pub(crate) fn object_rv(object: &Value) -> u64 {
    object["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn remove(value: &mut Value, field: &str) {
    if let Some(map) = value.as_object_mut() {
        map.remove(field);
    }
}

/// `kind`/`apiVersion`, when given, must be the resource's.
fn check_type(res: Resource, object: &Value) -> Result<(), ApiError> {
    if let Some(kind) = object.get("kind").and_then(Value::as_str)
        && !kind.is_empty()
        && kind != res.kind()
    {
        return Err(ApiError::bad_request(format!(
            "the kind of the object ({kind}) does not match the expected kind ({})",
            res.kind()
        )));
    }
    if let Some(version) = object.get("apiVersion").and_then(Value::as_str)
        && !version.is_empty()
        && version != "v1"
    {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({version}) does not match the expected API version (v1)"
        )));
    }
    Ok(())
}

/// Validates and fills in a new object the way the API server would, minus the
/// resourceVersion, which the store assigns.
fn prepare_new(res: Resource, ns: &str, object: Value) -> Result<Value, ApiError> {
    let Value::Object(_) = object else {
        return Err(ApiError::bad_request("the object must be a JSON object"));
    };
    let mut object = object;
    check_type(res, &object)?;
    object["kind"] = json!(res.kind());
    object["apiVersion"] = json!("v1");
    if !object["metadata"].is_object() {
        object["metadata"] = json!({});
    }
    let meta = &mut object["metadata"];

    let name = match (meta["name"].as_str(), meta["generateName"].as_str()) {
        (Some(name), _) if !name.is_empty() => name.to_string(),
        (_, Some(prefix)) if !prefix.is_empty() => format!("{prefix}{}", random_suffix()),
        _ => {
            return Err(ApiError::invalid(
                res.kind(),
                "",
                "metadata.name: Required value: name or generateName is required",
            ));
        }
    };
    let max = if res == Resource::Namespaces { 63 } else { 253 };
    if !is_dns1123(&name, max, res != Resource::Namespaces) {
        return Err(ApiError::invalid(
            res.kind(),
            &name,
            &format!(
                "metadata.name: Invalid value: \"{name}\": a lowercase RFC 1123 name must consist of \
                 lower case alphanumeric characters, '-' or '.', start and end with an alphanumeric \
                 character, and be at most {max} characters long"
            ),
        ));
    }
    meta["name"] = json!(name);

    if res.namespaced() {
        match meta["namespace"].as_str() {
            Some(given) if !given.is_empty() && given != ns => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            _ => meta["namespace"] = json!(ns),
        }
    } else {
        remove(meta, "namespace");
    }
    let now = rfc3339(SystemTime::now());
    meta["uid"] = json!(new_uid());
    meta["creationTimestamp"] = json!(now);
    for field in [
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "resourceVersion",
    ] {
        remove(meta, field);
    }

    match res {
        Resource::Namespaces => {
            let labels = &mut meta["labels"];
            if !labels.is_object() {
                *labels = json!({});
            }
            labels["kubernetes.io/metadata.name"] = json!(name);
            object["spec"] = json!({"finalizers": ["kubernetes"]});
            object["status"] = json!({"phase": "Active"});
        }
        Resource::Pods => {
            let containers = object["spec"]["containers"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if containers.is_empty() {
                return Err(ApiError::invalid(
                    "Pod",
                    &name,
                    "spec.containers: Required value",
                ));
            }
            let mut statuses = Vec::new();
            for (i, c) in containers.iter().enumerate() {
                for field in ["name", "image"] {
                    if c[field].as_str().is_none_or(str::is_empty) {
                        return Err(ApiError::invalid(
                            "Pod",
                            &name,
                            &format!("spec.containers[{i}].{field}: Required value"),
                        ));
                    }
                }
                statuses.push(json!({
                    "name": c["name"],
                    "image": c["image"],
                    "imageID": "",
                    "ready": true,
                    "started": true,
                    "restartCount": 0,
                    "state": {"running": {"startedAt": now}},
                }));
            }
            // Pods look alive: clients waiting for Running or Ready are not stuck.
            let condition = |t: &str| json!({"type": t, "status": "True", "lastProbeTime": null, "lastTransitionTime": now});
            object["status"] = json!({
                "phase": "Running",
                "conditions": [
                    condition("Initialized"),
                    condition("Ready"),
                    condition("ContainersReady"),
                    condition("PodScheduled"),
                ],
                "startTime": now,
                "containerStatuses": statuses,
                "qosClass": "BestEffort",
            });
        }
        Resource::Secrets => {
            if object["type"].as_str().is_none_or(str::is_empty) {
                object["type"] = json!("Opaque");
            }
            fold_string_data(&mut object);
        }
        Resource::ConfigMaps => {}
    }
    Ok(object)
}

/// Secrets' write-only `stringData` is merged into `data` (base64), as the API server does.
fn fold_string_data(secret: &mut Value) {
    let Some(Value::Object(strings)) = secret.as_object_mut().and_then(|m| m.remove("stringData"))
    else {
        return;
    };
    if !secret["data"].is_object() {
        secret["data"] = Value::Object(Map::new());
    }
    for (k, v) in strings {
        let text = v.as_str().unwrap_or_default();
        secret["data"][k] = json!(base64::engine::general_purpose::STANDARD.encode(text));
    }
}

/// RFC 1123 label (`allow_dots == false`) or subdomain.
fn is_dns1123(name: &str, max: usize, allow_dots: bool) -> bool {
    let ok_label = |l: &str| {
        !l.is_empty()
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    name.len() <= max
        && if allow_dots {
            name.split('.').all(ok_label)
        } else {
            ok_label(name)
        }
}

fn random_u64() -> u64 {
    // RandomState is seeded from the OS; hashing a counter gives distinct unpredictable values
    // without a random-number dependency.
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    RandomState::new().hash_one(COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// A version-4-shaped UUID.
fn new_uid() -> String {
    let (a, b) = (random_u64(), random_u64());
    let b = (b & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000;
    let a = (a & 0xffff_ffff_ffff_0fff) | 0x0000_0000_0000_4000;
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xffff,
        b >> 48,
        b & 0xffff_ffff_ffff
    )
}

/// Five characters from the alphabet the API server uses for generateName.
fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut n = random_u64();
    (0..5)
        .map(|_| {
            let c = ALPHABET[(n % ALPHABET.len() as u64) as usize] as char;
            n /= ALPHABET.len() as u64;
            c
        })
        .collect()
}

/// Applies an RFC 7386 JSON merge patch.
pub(crate) fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(target) = target else {
        unreachable!("made an object just above")
    };
    for (k, v) in patch {
        if v.is_null() {
            target.remove(k);
        } else {
            merge_patch(target.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_namespaces_and_counts_versions() {
        let store = Store::new();
        let (items, rv) = store.list(Resource::Namespaces, None);
        let names: Vec<_> = items
            .iter()
            .map(|o| o["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["default", "dev", "kube-system"]);
        assert_eq!(rv, 3);
    }

    #[test]
    fn create_fills_in_metadata_and_rejects_duplicates() {
        let store = Store::new();
        let pod = json!({"metadata": {"name": "web"}, "spec": {"containers": [{"name": "c", "image": "nginx"}]}});
        let created = store
            .create(Resource::Pods, "dev", pod.clone(), false)
            .unwrap();
        assert_eq!(created["kind"], "Pod");
        assert_eq!(created["metadata"]["namespace"], "dev");
        assert_eq!(created["metadata"]["resourceVersion"], "4");
        assert_eq!(created["status"]["phase"], "Running");
        assert_eq!(created["metadata"]["uid"].as_str().unwrap().len(), 36);
        let err = store
            .create(Resource::Pods, "dev", pod.clone(), false)
            .unwrap_err();
        assert_eq!(err.reason, "AlreadyExists");
        let err = store
            .create(Resource::Pods, "nope", pod, false)
            .unwrap_err();
        assert_eq!(err.reason, "NotFound");
        let err = store
            .create(
                Resource::Pods,
                "dev",
                json!({"metadata": {"name": "x"}, "spec": {}}),
                false,
            )
            .unwrap_err();
        assert_eq!(err.reason, "Invalid");
    }

    #[test]
    fn generate_name_and_string_data() {
        let store = Store::new();
        let s = store
            .create(
                Resource::Secrets,
                "dev",
                json!({"metadata": {"generateName": "s-"}, "stringData": {"k": "hi"}}),
                false,
            )
            .unwrap();
        let name = s["metadata"]["name"].as_str().unwrap();
        assert!(name.starts_with("s-") && name.len() == 7, "{name}");
        assert_eq!(s["data"]["k"], "aGk=");
        assert_eq!(s["type"], "Opaque");
        assert!(s.get("stringData").is_none());
    }

    #[test]
    fn update_conflicts_on_stale_version_and_keeps_identity() {
        let store = Store::new();
        let cm = store
            .create(
                Resource::ConfigMaps,
                "dev",
                json!({"metadata": {"name": "c"}}),
                false,
            )
            .unwrap();
        let updated = store
            .update(Resource::ConfigMaps, "dev", "c", false, |cur| {
                let mut next = cur.clone();
                merge_patch(
                    &mut next,
                    &json!({"data": {"a": "b"}, "metadata": {"uid": "forged"}}),
                );
                Ok(next)
            })
            .unwrap();
        assert_eq!(updated["data"]["a"], "b");
        assert_eq!(updated["metadata"]["uid"], cm["metadata"]["uid"]);
        let err = store
            .update(Resource::ConfigMaps, "dev", "c", false, |_| {
                Ok(json!({"metadata": {"name": "c", "resourceVersion": "1"}}))
            })
            .unwrap_err();
        assert_eq!(err.reason, "Conflict");
    }

    #[test]
    fn watch_resumes_from_history_and_namespace_delete_cascades() {
        let store = Store::new();
        store
            .create(
                Resource::ConfigMaps,
                "dev",
                json!({"metadata": {"name": "c"}}),
                false,
            )
            .unwrap();
        let start = store
            .watch(Resource::ConfigMaps, Some("dev"), Some(3))
            .unwrap();
        assert_eq!(start.initial.len(), 1);
        assert_eq!(start.initial[0].kind, EventType::Added);
        let mut live = start.live;
        store
            .delete(Resource::Namespaces, "", "dev", false)
            .unwrap();
        let ev = live.try_recv().unwrap();
        assert_eq!(
            (ev.kind, ev.resource),
            (EventType::Deleted, Resource::ConfigMaps)
        );
        assert_eq!(ev.object["metadata"]["resourceVersion"], "5");
        assert!(store.get(Resource::ConfigMaps, "dev", "c").is_err());
        assert!(store.get(Resource::Namespaces, "", "dev").is_err());
    }

    #[test]
    fn merge_patch_follows_rfc7386() {
        let mut doc = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(&mut doc, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(doc, json!({"a": "z", "c": {"d": "e"}}));
    }

    #[test]
    fn names_are_validated() {
        assert!(is_dns1123("a.b-c", 253, true));
        assert!(!is_dns1123("A", 253, true));
        assert!(!is_dns1123("a.b", 63, false));
        assert!(!is_dns1123("-a", 63, false));
    }
}
