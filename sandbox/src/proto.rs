//! Just enough of Kubernetes' protobuf encoding to read the request bodies kubectl's typed
//! commands send (`kubectl create namespace|configmap|secret`), which are protobuf and never
//! JSON. Only Namespace, ConfigMap and Secret are decoded, with the ObjectMeta fields a client
//! sets; a field the sandbox cannot represent is refused rather than silently dropped.
//! Responses stay JSON, which those clients accept too.

use base64::Engine as _;
use serde_json::{Map, Value, json};

use crate::store::Resource;

/// The media type of Kubernetes protobuf bodies.
pub(crate) const CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";

const MAGIC: &[u8] = b"k8s\0";

/// Decodes a `k8s\0`-prefixed `runtime.Unknown` envelope holding an object of `res`.
pub(crate) fn decode(res: Resource, bytes: &[u8]) -> Result<Value, String> {
    let envelope = bytes
        .strip_prefix(MAGIC)
        .ok_or("missing the k8s protobuf prefix")?;
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), None);
    for field in Fields(envelope) {
        match field? {
            (1, Wire::Bytes(type_meta)) => {
                for f in Fields(type_meta) {
                    match f? {
                        (1, Wire::Bytes(b)) => api_version = string(b)?,
                        (2, Wire::Bytes(b)) => kind = string(b)?,
                        _ => {}
                    }
                }
            }
            (2, Wire::Bytes(b)) => raw = Some(b),
            (3, Wire::Bytes(b)) if !b.is_empty() => {
                return Err("content encodings are not supported".into());
            }
            _ => {}
        }
    }
    let raw = raw.ok_or("the envelope holds no object")?;
    let mut object = match res {
        Resource::Namespaces => namespace(raw)?,
        Resource::ConfigMaps => config_map(raw)?,
        Resource::Secrets => secret(raw)?,
        Resource::Pods => {
            return Err("pods cannot be sent as protobuf to the sandbox; use JSON".into());
        }
    };
    object["apiVersion"] = json!(api_version);
    object["kind"] = json!(kind);
    Ok(object)
}

fn namespace(raw: &[u8]) -> Result<Value, String> {
    let mut object = json!({});
    for field in Fields(raw) {
        match field? {
            (1, Wire::Bytes(b)) => object["metadata"] = object_meta(b)?,
            (2, Wire::Bytes(b)) => {
                let mut finalizers = Vec::new();
                for f in Fields(b) {
                    match f? {
                        (1, Wire::Bytes(s)) => finalizers.push(json!(string(s)?)),
                        (n, _) => return Err(unsupported("NamespaceSpec", n)),
                    }
                }
                object["spec"] = json!({"finalizers": finalizers});
            }
            // Status is the server's to set.
            (3, _) => {}
            (n, _) => return Err(unsupported("Namespace", n)),
        }
    }
    Ok(object)
}

fn config_map(raw: &[u8]) -> Result<Value, String> {
    let mut object = json!({});
    for field in Fields(raw) {
        match field? {
            (1, Wire::Bytes(b)) => object["metadata"] = object_meta(b)?,
            (2, Wire::Bytes(b)) => insert_entry(&mut object, "data", b, Text)?,
            (3, Wire::Bytes(b)) => insert_entry(&mut object, "binaryData", b, Base64)?,
            (4, Wire::Varint(v)) => object["immutable"] = json!(v != 0),
            (n, _) => return Err(unsupported("ConfigMap", n)),
        }
    }
    Ok(object)
}

fn secret(raw: &[u8]) -> Result<Value, String> {
    let mut object = json!({});
    for field in Fields(raw) {
        match field? {
            (1, Wire::Bytes(b)) => object["metadata"] = object_meta(b)?,
            (2, Wire::Bytes(b)) => insert_entry(&mut object, "data", b, Base64)?,
            (3, Wire::Bytes(b)) => object["type"] = json!(string(b)?),
            (4, Wire::Bytes(b)) => insert_entry(&mut object, "stringData", b, Text)?,
            (5, Wire::Varint(v)) => object["immutable"] = json!(v != 0),
            (n, _) => return Err(unsupported("Secret", n)),
        }
    }
    Ok(object)
}

fn object_meta(raw: &[u8]) -> Result<Value, String> {
    let mut meta = json!({});
    for field in Fields(raw) {
        match field? {
            (1, Wire::Bytes(b)) => meta["name"] = json!(string(b)?),
            (2, Wire::Bytes(b)) => meta["generateName"] = json!(string(b)?),
            (3, Wire::Bytes(b)) => meta["namespace"] = json!(string(b)?),
            (11, Wire::Bytes(b)) => insert_entry(&mut meta, "labels", b, Text)?,
            (12, Wire::Bytes(b)) => insert_entry(&mut meta, "annotations", b, Text)?,
            (14, Wire::Bytes(b)) => {
                if !meta["finalizers"].is_array() {
                    meta["finalizers"] = json!([]);
                }
                if let Some(list) = meta["finalizers"].as_array_mut() {
                    list.push(json!(string(b)?));
                }
            }
            // selfLink, uid, resourceVersion, generation, timestamps, deletion grace period and
            // managedFields are set by the server, which overwrites or ignores them.
            (4..=10 | 17, _) => {}
            (n, _) => return Err(unsupported("ObjectMeta", n)),
        }
    }
    Ok(meta)
}

/// How a map value is written into JSON.
#[derive(Clone, Copy)]
enum ValueAs {
    Text,
    Base64,
}
use ValueAs::{Base64, Text};

/// Adds one protobuf map entry (`key = 1`, `value = 2`) to the JSON map `object[field]`.
fn insert_entry(object: &mut Value, field: &str, entry: &[u8], as_: ValueAs) -> Result<(), String> {
    let (mut key, mut value): (String, &[u8]) = (String::new(), &[]);
    for f in Fields(entry) {
        match f? {
            (1, Wire::Bytes(b)) => key = string(b)?,
            (2, Wire::Bytes(b)) => value = b,
            _ => {}
        }
    }
    let value = match as_ {
        Text => json!(string(value)?),
        Base64 => json!(base64::engine::general_purpose::STANDARD.encode(value)),
    };
    if !object[field].is_object() {
        object[field] = Value::Object(Map::new());
    }
    object[field][key] = value;
    Ok(())
}

fn unsupported(message: &str, field: u64) -> String {
    format!("{message} field {field} is not supported by the sandbox's protobuf decoder")
}

fn string(bytes: &[u8]) -> Result<String, String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| "a string field is not UTF-8".to_string())
}

/// A field's value by wire type; fixed-width values are only skipped.
enum Wire<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

/// Iterates over the fields of one message.
struct Fields<'a>(&'a [u8]);

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u64, Wire<'a>), String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty() {
            return None;
        }
        let result = self.field();
        if result.is_err() {
            // Stop after the first error: the rest cannot be framed.
            self.0 = &[];
        }
        Some(result)
    }
}

impl<'a> Fields<'a> {
    fn varint(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for (i, byte) in self.0.iter().enumerate().take(10) {
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                self.0 = &self.0[i + 1..];
                return Ok(value);
            }
        }
        Err("malformed varint".into())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.0.len() {
            return Err("truncated message".into());
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn field(&mut self) -> Result<(u64, Wire<'a>), String> {
        let key = self.varint()?;
        let wire = match key & 7 {
            0 => Wire::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Wire::Fixed
            }
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| "length overflow")?;
                Wire::Bytes(self.take(len)?)
            }
            5 => {
                self.take(4)?;
                Wire::Fixed
            }
            other => return Err(format!("unsupported wire type {other}")),
        };
        Ok((key >> 3, wire))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_field(n: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![(n << 3 | 2) as u8, payload.len() as u8];
        out.extend_from_slice(payload);
        out
    }

    fn entry(k: &str, v: &[u8]) -> Vec<u8> {
        [bytes_field(1, k.as_bytes()), bytes_field(2, v)].concat()
    }

    fn envelope(kind: &str, raw: &[u8]) -> Vec<u8> {
        let type_meta = [bytes_field(1, b"v1"), bytes_field(2, kind.as_bytes())].concat();
        [
            MAGIC.to_vec(),
            bytes_field(1, &type_meta),
            bytes_field(2, raw),
        ]
        .concat()
    }

    #[test]
    fn decodes_a_secret() {
        let meta = [
            bytes_field(1, b"sec"),
            bytes_field(8, b""),
            bytes_field(11, &entry("app", b"web")),
        ]
        .concat();
        let raw = [
            bytes_field(1, &meta),
            bytes_field(2, &entry("pw", b"\x00\xff")),
            bytes_field(3, b"Opaque"),
        ]
        .concat();
        let secret = decode(Resource::Secrets, &envelope("Secret", &raw)).unwrap();
        assert_eq!(
            secret,
            json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                   "metadata": {"name": "sec", "labels": {"app": "web"}}, "data": {"pw": "AP8="}})
        );
    }

    #[test]
    fn refuses_what_it_cannot_represent() {
        let meta = [bytes_field(1, b"c"), bytes_field(13, b"")].concat();
        let raw = bytes_field(1, &meta);
        let err = decode(Resource::ConfigMaps, &envelope("ConfigMap", &raw)).unwrap_err();
        assert!(err.contains("ObjectMeta field 13"), "{err}");
        assert!(decode(Resource::ConfigMaps, b"{}").is_err());
        assert!(decode(Resource::ConfigMaps, &[MAGIC, &[0x12, 0x05, 0x01]].concat()).is_err());
    }
}
