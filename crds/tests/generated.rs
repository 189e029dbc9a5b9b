//! The committed YAML in config/crd/ matches the Rust types and is a valid apiextensions/v1 CRD.

mod common;

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube_fim_crds::{CRD_DIR, GENERATED_HEADER, crd_file_name, crds, generated_files};
use serde_json::Value;

fn crd_dir() -> PathBuf {
    let crds = Path::new(env!("CARGO_MANIFEST_DIR"));
    crds.parent().unwrap().join(CRD_DIR)
}

#[test]
fn committed_yaml_matches_the_rust_types() {
    let dir = crd_dir();
    let mut problems = Vec::new();
    let mut expected = BTreeSet::new();
    for (name, want) in generated_files() {
        match fs::read_to_string(dir.join(&name)) {
            Ok(have) if have == want => {}
            Ok(_) => problems.push(format!("{name} differs")),
            Err(e) => problems.push(format!("{name}: {e}")),
        }
        expected.insert(name);
    }
    for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".yaml") && !expected.contains(&name) {
            problems.push(format!("{name} is not generated any more"));
        }
    }
    assert!(
        problems.is_empty(),
        "{CRD_DIR}/ is out of date with the types in crds/src ({}); run `make crds`",
        problems.join("; ")
    );
}

#[test]
fn file_names_follow_the_kubebuilder_convention() {
    let names: Vec<String> = generated_files()
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    assert_eq!(
        names,
        [
            "fim.kubefim.io_fileintegrities.yaml",
            "fim.kubefim.io_fileintegritynodestatuses.yaml",
            "fim.kubefim.io_snapshots.yaml",
            "kustomization.yaml",
        ]
    );
    let kustomization: Value = serde_saphyr::from_str(&generated_files()[3].1).unwrap();
    assert_eq!(kustomization["kind"], "Kustomization");
    assert_eq!(kustomization["resources"], serde_json::json!(&names[..3]));
}

#[test]
fn generated_yaml_is_a_v1_crd_equal_to_the_types() {
    for crd in crds() {
        let name = crd_file_name(&crd);
        let yaml = &generated_files()
            .into_iter()
            .find(|(n, _)| *n == name)
            .unwrap()
            .1;
        assert!(yaml.starts_with(GENERATED_HEADER), "{name}: header");
        // k8s-openapi checks apiVersion apiextensions.k8s.io/v1 and kind CustomResourceDefinition.
        let parsed: CustomResourceDefinition =
            serde_saphyr::from_str(yaml).unwrap_or_else(|e| panic!("{name}: not a v1 CRD: {e}"));
        assert_eq!(parsed, crd, "{name}: YAML does not round-trip");
    }
}

#[test]
fn names_scope_and_subresources() {
    let crds = crds();
    let summary: Vec<_> = crds
        .iter()
        .map(|crd| {
            let names = &crd.spec.names;
            let version = &crd.spec.versions[0];
            (
                crd.metadata.name.clone().unwrap(),
                names.kind.clone(),
                names.short_names.clone().unwrap_or_default(),
                crd.spec.scope.clone(),
                version.name.clone(),
                version.served && version.storage,
                version
                    .subresources
                    .as_ref()
                    .is_some_and(|s| s.status.is_some()),
            )
        })
        .collect();
    let s = |v: &str| v.to_owned();
    assert_eq!(
        summary,
        [
            (
                s("fileintegrities.fim.kubefim.io"),
                s("FileIntegrity"),
                vec![s("fi")],
                s("Namespaced"),
                s("v1alpha1"),
                true,
                true
            ),
            (
                s("fileintegritynodestatuses.fim.kubefim.io"),
                s("FileIntegrityNodeStatus"),
                vec![s("fins")],
                s("Namespaced"),
                s("v1alpha1"),
                true,
                false
            ),
            (
                s("snapshots.fim.kubefim.io"),
                s("Snapshot"),
                vec![s("snap")],
                s("Namespaced"),
                s("v1alpha1"),
                true,
                true
            ),
        ]
    );
    for crd in &crds {
        assert_eq!(crd.spec.versions.len(), 1);
        assert_eq!(
            crd.spec.names.categories.as_deref(),
            Some(&["fim".to_owned()][..])
        );
    }
}

#[test]
fn printer_columns() {
    let columns: Vec<Vec<(String, String)>> = crds()
        .iter()
        .map(|crd| {
            crd.spec.versions[0]
                .additional_printer_columns
                .iter()
                .flatten()
                .filter(|c| c.priority.unwrap_or(0) == 0)
                .map(|c| (c.name.clone(), c.json_path.clone()))
                .collect()
        })
        .collect();
    let c = |n: &str, p: &str| (n.to_owned(), p.to_owned());
    assert_eq!(
        columns,
        [
            vec![
                c("Phase", ".status.phase"),
                c("Age", ".metadata.creationTimestamp")
            ],
            vec![
                c("Node", ".nodeName"),
                c("Status", ".lastResult.condition"),
                c("Age", ".metadata.creationTimestamp")
            ],
            vec![
                c("Image", ".spec.image"),
                c("Uploaded", ".status.uploaded"),
                c("Hash", ".status.controlHash"),
                c("Age", ".metadata.creationTimestamp")
            ],
        ]
    );
}

#[test]
fn printer_columns_point_at_schema_fields() {
    for crd in crds() {
        let schema = common::schema_of(&crd);
        for column in crd.spec.versions[0]
            .additional_printer_columns
            .iter()
            .flatten()
        {
            let path = column.json_path.trim_start_matches('.');
            if path.starts_with("metadata.") {
                continue;
            }
            let field = common::node(&schema, path);
            let ty = field["type"].as_str().unwrap();
            assert_eq!(
                ty,
                column.type_,
                "{}: column {}",
                crd_file_name(&crd),
                column.name
            );
        }
    }
}

/// The apiserver rejects CRDs whose schema is not structural, or whose defaults or list-map keys
/// are inconsistent; check what it would check.
#[test]
fn schemas_are_structural() {
    for crd in crds() {
        let name = crd_file_name(&crd);
        let schema = common::schema_of(&crd);
        let mut problems = Vec::new();
        check_structural(&schema, &name, &mut problems);
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }
}

fn check_structural(s: &Value, path: &str, problems: &mut Vec<String>) {
    let obj = s.as_object().unwrap();
    for forbidden in [
        "$ref",
        "$defs",
        "definitions",
        "oneOf",
        "anyOf",
        "allOf",
        "not",
        "const",
    ] {
        if obj.contains_key(forbidden) {
            problems.push(format!("{path}: has {forbidden}"));
        }
    }
    let int_or_string = obj.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    let preserve = obj.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    let ty = obj.get("type").and_then(Value::as_str);
    if ty.is_none() && !int_or_string && !preserve {
        problems.push(format!("{path}: no type"));
    }
    if let (Some(values), Some(default)) = (obj.get("enum"), obj.get("default"))
        && !values.as_array().unwrap().contains(default)
    {
        problems.push(format!("{path}: default {default} not in enum"));
    }
    if obj.contains_key("properties") && obj.get("additionalProperties").is_some_and(|a| a != false)
    {
        problems.push(format!("{path}: properties and additionalProperties"));
    }
    if obj.get("x-kubernetes-list-type").and_then(Value::as_str) == Some("map") {
        let items = &obj["items"];
        let required = items["required"].as_array().cloned().unwrap_or_default();
        for key in obj["x-kubernetes-list-map-keys"].as_array().unwrap() {
            let defaulted = items["properties"][key.as_str().unwrap()]
                .get("default")
                .is_some();
            if !required.contains(key) && !defaulted {
                problems.push(format!(
                    "{path}: list-map key {key} is neither required nor defaulted"
                ));
            }
        }
    }
    for (key, child) in obj
        .get("properties")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        check_structural(child, &format!("{path}.{key}"), problems);
    }
    if let Some(items) = obj.get("items") {
        check_structural(items, &format!("{path}[]"), problems);
    }
    if let Some(additional) = obj.get("additionalProperties").filter(|a| a.is_object()) {
        check_structural(additional, &format!("{path}{{}}"), problems);
    }
}
