//! Helpers shared by the integration tests.
#![allow(dead_code)] // each test crate uses a different subset

use std::path::PathBuf;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use serde_json::Value;

/// Text of `tests/samples/<name>`.
pub fn sample(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/samples")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `tests/samples/<name>` as JSON.
pub fn sample_json(name: &str) -> Value {
    serde_saphyr::from_str(&sample(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The openAPIV3Schema of `K`'s CRD, as JSON.
pub fn schema<K: CustomResourceExt>() -> Value {
    schema_of(&K::crd())
}

pub fn schema_of(crd: &CustomResourceDefinition) -> Value {
    let version = &crd.spec.versions[0];
    let schema = version
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref());
    serde_json::to_value(schema.expect("CRD has a schema")).unwrap()
}

/// The schema node at a dotted property path, e.g. `spec.config.gracePeriod`; `[]` steps into
/// array items.
pub fn node<'a>(schema: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(schema, |s, part| match part {
        "[]" => s
            .get("items")
            .unwrap_or_else(|| panic!("{path}: no items at {part}")),
        _ => s
            .get("properties")
            .and_then(|p| p.get(part))
            .unwrap_or_else(|| panic!("{path}: no property {part}")),
    })
}

/// Paths in `value` that `schema` does not declare: the apiserver would prune them silently.
/// The root's apiVersion, kind and metadata are implicit.
pub fn unknown_fields(schema: &Value, value: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let mut root = value.clone();
    if let Some(map) = root.as_object_mut() {
        for implicit in ["apiVersion", "kind", "metadata"] {
            map.remove(implicit);
        }
    }
    walk_unknown(schema, &root, "", &mut out);
    out
}

fn walk_unknown(schema: &Value, value: &Value, path: &str, out: &mut Vec<String>) {
    if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
        return;
    }
    match value {
        Value::Object(map) => {
            let properties = schema.get("properties");
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            for (key, child) in map {
                let child_path = format!("{path}.{key}");
                match properties.and_then(|p| p.get(key)).or(additional) {
                    Some(s) => walk_unknown(s, child, &child_path, out),
                    None => out.push(child_path),
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    walk_unknown(s, item, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}
