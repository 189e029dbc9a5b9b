//! The committed OLM bundle (bundle/) is exactly what `make bundle` generates from config/, and it
//! carries what OLM and the issue ask for.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
};

use kube_fim_crds::bundle::{BundleOptions, generate};
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn generated(opts: &BundleOptions) -> Vec<(String, String)> {
    let root = root();
    let read = |p: &str| fs::read_to_string(root.join(p)).map_err(|e| e.to_string());
    generate(&read, opts).unwrap()
}

fn committed_options() -> BundleOptions {
    BundleOptions::for_version(env!("CARGO_PKG_VERSION"))
}

fn files_under(dir: &Path, prefix: &str, out: &mut BTreeSet<String>) {
    for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let entry = entry.unwrap();
        let name = format!("{prefix}{}", entry.file_name().to_string_lossy());
        if entry.file_type().unwrap().is_dir() {
            files_under(&entry.path(), &format!("{name}/"), out);
        } else {
            out.insert(name);
        }
    }
}

#[test]
fn committed_bundle_is_what_make_bundle_generates() {
    let dir = root().join("bundle");
    let mut problems = Vec::new();
    let mut expected = BTreeSet::new();
    for (name, want) in generated(&committed_options()) {
        match fs::read_to_string(dir.join(&name)) {
            Ok(have) if have == want => {}
            Ok(_) => problems.push(format!("{name} differs")),
            Err(e) => problems.push(format!("{name}: {e}")),
        }
        expected.insert(name);
    }
    let mut present = BTreeSet::new();
    files_under(&dir, "", &mut present);
    for name in present.difference(&expected) {
        problems.push(format!("{name} is not generated"));
    }
    assert!(
        problems.is_empty(),
        "bundle/ is out of date with config/ ({}); run `make bundle`",
        problems.join("; ")
    );
}

fn csv(opts: &BundleOptions) -> Value {
    let files = generated(opts);
    let (_, text) = files
        .iter()
        .find(|(n, _)| n == "manifests/kube-fim.clusterserviceversion.yaml")
        .unwrap();
    serde_saphyr::from_str(text).unwrap()
}

#[test]
fn the_csv_carries_what_olm_needs() {
    let opts = committed_options();
    let csv = csv(&opts);
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(csv["metadata"]["name"], format!("kube-fim.v{version}"));
    assert_eq!(csv["spec"]["version"], version);
    let annotations = &csv["metadata"]["annotations"];
    assert_eq!(annotations["olm.skipRange"], format!("<{version}"));
    assert_eq!(annotations["capabilities"], "Basic Install");
    // alm-examples: the samples' FileIntegrities and Snapshot, without a namespace.
    let examples: Vec<Value> =
        serde_json::from_str(annotations["alm-examples"].as_str().unwrap()).unwrap();
    let kinds: Vec<&str> = examples
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["FileIntegrity", "FileIntegrity", "Snapshot"]);
    assert!(
        examples
            .iter()
            .all(|e| e["metadata"]["namespace"].is_null())
    );

    let spec = &csv["spec"];
    for key in [
        "displayName",
        "description",
        "keywords",
        "maturity",
        "links",
        "minKubeVersion",
        "provider",
        "icon",
    ] {
        assert!(!spec[key].is_null(), "spec.{key} missing");
    }
    let modes: Vec<(String, bool)> = spec["installModes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["type"].as_str().unwrap().to_owned(),
                m["supported"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        modes,
        [
            ("OwnNamespace".into(), true),
            ("SingleNamespace".into(), true),
            ("MultiNamespace".into(), false),
            ("AllNamespaces".into(), false)
        ]
    );
    assert_eq!(
        spec["relatedImages"],
        serde_json::json!([
            {"name": "fim-operator", "image": format!("ghcr.io/kube-fim/fim-operator:v{version}")},
            {"name": "fim-agent", "image": format!("ghcr.io/kube-fim/fim-agent:v{version}")},
        ])
    );

    // Owned CRDs with descriptors from the schemas.
    let owned = spec["customresourcedefinitions"]["owned"]
        .as_array()
        .unwrap();
    let names: Vec<&str> = owned.iter().map(|o| o["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "fileintegrities.fim.kubefim.io",
            "fileintegritynodestatuses.fim.kubefim.io",
            "snapshots.fim.kubefim.io"
        ]
    );
    let fi = &owned[0];
    assert_eq!(fi["kind"], "FileIntegrity");
    assert_eq!(fi["version"], "v1alpha1");
    assert_eq!(fi["displayName"], "File Integrity");
    assert!(
        fi["description"]
            .as_str()
            .unwrap()
            .starts_with("FileIntegrity")
    );
    let spec_paths: Vec<&str> = fi["specDescriptors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["path"].as_str().unwrap())
        .collect();
    for want in ["nodeSelector", "config", "tolerations", "realtime"] {
        assert!(spec_paths.contains(&want), "{want} not in {spec_paths:?}");
    }
    let phase = fi["statusDescriptors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["path"] == "phase")
        .unwrap();
    assert_eq!(
        phase["x-descriptors"],
        serde_json::json!(["urn:alm:descriptor:io.kubernetes.phase"])
    );

    // The install strategy: the operator Deployment and both service accounts' permissions.
    let install = &spec["install"];
    assert_eq!(install["strategy"], "deployment");
    let deployment = &install["spec"]["deployments"][0];
    assert_eq!(deployment["name"], "fim-operator");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        container["image"],
        format!("ghcr.io/kube-fim/fim-operator:v{version}")
    );
    assert!(
        container["args"]
            .as_array()
            .unwrap()
            .contains(&Value::String(format!(
                "--agent-image=ghcr.io/kube-fim/fim-agent:v{version}"
            )))
    );
    let accounts = |key: &str| -> Vec<String> {
        install["spec"][key]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["serviceAccountName"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(accounts("permissions"), ["fim-operator", "fim-agent"]);
    assert_eq!(
        accounts("clusterPermissions"),
        ["fim-operator", "fim-agent"]
    );
    // The operator may apply the agents' admission policies (issue 16).
    let operator_cluster =
        serde_json::to_string(&install["spec"]["clusterPermissions"][0]).unwrap();
    assert!(
        operator_cluster.contains("validatingadmissionpolicies"),
        "{operator_cluster}"
    );
}

#[test]
fn another_version_replaces_the_first() {
    let mut opts = BundleOptions::for_version("0.9.0");
    opts.replaces = Some("kube-fim.v0.1.0".into());
    opts.operator_image = Some("localhost/op:1".into());
    let csv = csv(&opts);
    assert_eq!(csv["metadata"]["name"], "kube-fim.v0.9.0");
    assert_eq!(csv["spec"]["replaces"], "kube-fim.v0.1.0");
    assert_eq!(csv["metadata"]["annotations"]["olm.skipRange"], "<0.9.0");
    assert_eq!(
        csv["metadata"]["annotations"]["containerImage"],
        "localhost/op:1"
    );
    assert_eq!(
        csv["spec"]["relatedImages"][1]["image"],
        "ghcr.io/kube-fim/fim-agent:v0.9.0"
    );
}

#[test]
fn annotations_and_dockerfile_agree() {
    let files = generated(&committed_options());
    let get = |n: &str| files.iter().find(|(name, _)| name == n).unwrap().1.clone();
    let annotations: Value = serde_saphyr::from_str(&get("metadata/annotations.yaml")).unwrap();
    let a = annotations["annotations"].as_object().unwrap();
    assert_eq!(
        a["operators.operatorframework.io.bundle.package.v1"],
        "kube-fim"
    );
    assert_eq!(
        a["operators.operatorframework.io.bundle.channels.v1"],
        "alpha"
    );
    assert_eq!(
        a["operators.operatorframework.io.bundle.channel.default.v1"],
        "alpha"
    );
    let dockerfile = get("bundle.Dockerfile");
    for (k, v) in a {
        assert!(
            dockerfile.contains(&format!("{k}={}", v.as_str().unwrap())),
            "label {k} missing:\n{dockerfile}"
        );
    }
    assert!(dockerfile.contains("COPY manifests /manifests/"));
    assert!(dockerfile.contains("COPY metadata /metadata/"));
}
