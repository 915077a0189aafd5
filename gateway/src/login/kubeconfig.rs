//! The kubeconfig entry that uses the plugin (`kubegate kubeconfig`, `kubegate login`):
//! a cluster with the gateway's CA, a context, and an exec user that runs the bare
//! `kubegate get-token` from PATH with `interactiveMode: IfAvailable` and an install hint.
//! It holds no token and no secret, so one file serves a whole team.
//!
//! Merging reads the file as plain YAML values, replaces the three entries of the same
//! name and leaves every other entry and field as it was.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde_json::{Value, json};

use super::args::EntryArgs;
use super::error::LoginError;
use super::exec_credential::API_VERSION;
use super::plugin::Environment;

/// What kubectl prints when `kubegate` is not on PATH.
pub const INSTALL_HINT: &str = "kubegate get-token signs you in for this cluster. Install the kubegate binary on your PATH (see the README of your gateway's operators).";

/// The exec user's `get-token` arguments for `entry`.
pub fn plugin_args(entry: &EntryArgs) -> Vec<String> {
    let mut args = vec!["get-token".to_string()];
    args.extend(entry.provider().command_line("--certificate-authority"));
    args
}

/// The three entries (cluster, user, context) as YAML-ready values.
pub fn entries(entry: &EntryArgs) -> Result<(Value, Value, Value), LoginError> {
    let server = entry.server.as_ref().ok_or_else(|| {
        LoginError::BadArgument("--server (the gateway's URL) is required".into())
    })?;
    let mut cluster = json!({ "server": server.as_str() });
    if let Some(ca) = &entry.certificate_authority {
        let pem = std::fs::read(ca).map_err(|e| {
            LoginError::BadArgument(format!("--certificate-authority {}: {e}", ca.display()))
        })?;
        if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
            return Err(LoginError::BadArgument(format!(
                "--certificate-authority {} holds no PEM certificate",
                ca.display()
            )));
        }
        cluster["certificate-authority-data"] =
            Value::String(base64::engine::general_purpose::STANDARD.encode(pem));
    }
    let name = &entry.context;
    let cluster = json!({ "name": name, "cluster": cluster });
    let user = json!({
        "name": name,
        "user": {
            "exec": {
                "apiVersion": API_VERSION,
                "command": "kubegate",
                "args": plugin_args(entry),
                "interactiveMode": "IfAvailable",
                "provideClusterInfo": false,
                "installHint": INSTALL_HINT,
            }
        }
    });
    let mut context = json!({ "cluster": name, "user": name });
    if let Some(ns) = &entry.namespace {
        context["namespace"] = Value::String(ns.clone());
    }
    let context = json!({ "name": name, "context": context });
    Ok((cluster, user, context))
}

/// A whole kubeconfig holding only `entry`, as YAML.
pub fn render(entry: &EntryArgs) -> Result<String, LoginError> {
    let (cluster, user, context) = entries(entry)?;
    let doc = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [user],
        "contexts": [context],
        "current-context": entry.context,
        "preferences": {},
    });
    to_yaml(&doc)
}

fn to_yaml(doc: &Value) -> Result<String, LoginError> {
    serde_saphyr::to_string(doc).map_err(|e| LoginError::BadArgument(format!("YAML: {e}")))
}

/// The kubeconfig `login` writes: the first file of `$KUBECONFIG`, else ~/.kube/config.
pub fn path(env: &Environment) -> Result<PathBuf, LoginError> {
    if let Some(list) = &env.kubeconfig
        && let Some(first) = std::env::split_paths(list).find(|p| !p.as_os_str().is_empty())
    {
        return Ok(first);
    }
    env.home
        .as_ref()
        .map(|h| h.join(".kube/config"))
        .ok_or_else(|| LoginError::BadArgument("neither KUBECONFIG nor HOME is set".into()))
}

/// Reads a kubeconfig as plain values (an empty document when the file is missing).
pub fn read(path: &Path) -> Result<Value, LoginError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(json!({})),
        Err(e) => {
            return Err(LoginError::Kubeconfig {
                path: path.to_path_buf(),
                reason: e.to_string(),
            });
        }
    };
    if text.trim().is_empty() {
        return Ok(json!({}));
    }
    let doc: Value = serde_saphyr::from_str(&text).map_err(|e| LoginError::Kubeconfig {
        path: path.to_path_buf(),
        reason: format!("not YAML: {e}"),
    })?;
    if !doc.is_object() {
        return Err(LoginError::Kubeconfig {
            path: path.to_path_buf(),
            reason: "not a kubeconfig (the top level is not a mapping)".into(),
        });
    }
    Ok(doc)
}

fn upsert(doc: &mut Value, list: &str, entry: Value) -> Result<(), String> {
    let items = doc
        .as_object_mut()
        .ok_or("the top level is not a mapping")?
        .entry(list)
        .or_insert_with(|| Value::Array(vec![]));
    if items.is_null() {
        *items = Value::Array(vec![]);
    }
    let items = items
        .as_array_mut()
        .ok_or_else(|| format!("`{list}` is not a list"))?;
    let name = entry["name"].clone();
    match items.iter_mut().find(|i| i["name"] == name) {
        Some(existing) => *existing = entry,
        None => items.push(entry),
    }
    Ok(())
}

/// Writes `entry` into the kubeconfig at `path`, keeping everything else; makes it the
/// current context when there is none.
pub fn merge(path: &Path, entry: &EntryArgs) -> Result<(), LoginError> {
    let (cluster, user, context) = entries(entry)?;
    let mut doc = read(path)?;
    let bad = |reason: String| LoginError::Kubeconfig {
        path: path.to_path_buf(),
        reason,
    };
    upsert(&mut doc, "clusters", cluster).map_err(bad)?;
    upsert(&mut doc, "users", user).map_err(bad)?;
    upsert(&mut doc, "contexts", context).map_err(bad)?;
    let obj = doc
        .as_object_mut()
        .ok_or_else(|| bad("the top level is not a mapping".into()))?;
    obj.entry("apiVersion").or_insert_with(|| json!("v1"));
    obj.entry("kind").or_insert_with(|| json!("Config"));
    let current = obj.entry("current-context").or_insert(Value::Null);
    if current.as_str().is_none_or(str::is_empty) {
        *current = Value::String(entry.context.clone());
    }
    write(path, &to_yaml(&doc)?)
}

fn write(path: &Path, text: &str) -> Result<(), LoginError> {
    let io = |e: std::io::Error| LoginError::Kubeconfig {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let tmp = path.with_extension(format!("kubegate-{}.tmp", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io(e)
        })
}

/// The exec user's `get-token` arguments of `context` in the kubeconfig at `path`.
pub fn context_plugin_args(path: &Path, context: &str) -> Result<Vec<String>, LoginError> {
    let doc = read(path)?;
    let bad = |reason: String| LoginError::Kubeconfig {
        path: path.to_path_buf(),
        reason,
    };
    let find = |list: &str, name: &str| {
        doc[list]
            .as_array()
            .and_then(|items| items.iter().find(|i| i["name"] == name))
            .cloned()
    };
    let ctx = find("contexts", context).ok_or_else(|| bad(format!("no context `{context}`")))?;
    let user_name = ctx["context"]["user"]
        .as_str()
        .ok_or_else(|| bad(format!("context `{context}` names no user")))?;
    let user = find("users", user_name).ok_or_else(|| bad(format!("no user `{user_name}`")))?;
    let exec = &user["user"]["exec"];
    let args: Vec<String> = exec["args"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if args.first().map(String::as_str) != Some("get-token") {
        return Err(bad(format!(
            "the user of context `{context}` does not run `kubegate get-token`"
        )));
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        entry: EntryArgs,
    }

    fn entry(extra: &[&str]) -> EntryArgs {
        let mut argv = vec![
            "t",
            "--server=https://gw.example:8443",
            "--oidc-issuer-url=https://idp.example",
            "--oidc-client-id=kubegate-cli",
        ];
        argv.extend(extra);
        Cli::parse_from(argv).entry
    }

    #[test]
    fn the_entry_runs_the_plugin_and_holds_no_secret() {
        let text = render(&entry(&["--oidc-extra-scope=offline_access"])).unwrap();
        let doc: Value = serde_saphyr::from_str(&text).unwrap();
        let exec = &doc["users"][0]["user"]["exec"];
        assert_eq!(exec["command"], "kubegate");
        assert_eq!(exec["apiVersion"], API_VERSION);
        assert_eq!(exec["interactiveMode"], "IfAvailable");
        assert!(exec["installHint"].as_str().unwrap().contains("kubegate"));
        assert_eq!(exec["args"][0], "get-token");
        assert_eq!(exec["args"][3], "--oidc-extra-scope=offline_access");
        assert!(doc["users"][0]["user"].get("token").is_none());
        assert_eq!(doc["current-context"], "kubegate");
    }

    #[test]
    fn merging_keeps_other_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        std::fs::write(
            &path,
            "apiVersion: v1\nkind: Config\ncurrent-context: other\nclusters:\n- name: other\n  cluster:\n    server: https://other\ncontexts:\n- name: other\n  context:\n    cluster: other\n    user: other\nusers:\n- name: other\n  user:\n    token: keep-me\n",
        )
        .unwrap();
        merge(&path, &entry(&[])).unwrap();
        merge(&path, &entry(&["--namespace=dev"])).unwrap();
        let doc = read(&path).unwrap();
        assert_eq!(doc["current-context"], "other");
        assert_eq!(doc["clusters"].as_array().unwrap().len(), 2);
        assert_eq!(doc["users"][0]["user"]["token"], "keep-me");
        assert_eq!(doc["contexts"][1]["context"]["namespace"], "dev");
        let args = context_plugin_args(&path, "kubegate").unwrap();
        assert_eq!(args[0], "get-token");
        assert!(context_plugin_args(&path, "other").is_err());
    }
}
