//! The Prometheus alerting rules in config/prometheus/: promtool validates rules.yaml and runs
//! its unit tests (rules_test.yaml), and the PrometheusRule object carries exactly the same
//! groups as the plain rule file.

use std::io::ErrorKind;
use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

const PROMTOOL_MISSING: &str =
    "promtool not found (Debian package prometheus; make test installs it)";

fn prometheus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("config")
        .join("prometheus")
}

/// Runs `promtool <args> <file>` from the repository root and panics, with promtool's output,
/// unless it succeeds. A missing promtool is a failure, not a skip.
fn promtool(args: &[&str], file: &str) {
    let path = prometheus_dir().join(file);
    let output = match Command::new("promtool")
        .args(args)
        .arg(&path)
        .current_dir(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".."))
        .output()
    {
        Ok(output) => output,
        Err(e) if e.kind() == ErrorKind::NotFound => panic!("{PROMTOOL_MISSING}"),
        Err(e) => panic!("running promtool: {e}"),
    };
    assert!(
        output.status.success(),
        "`promtool {} {}` failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}",
        args.join(" "),
        path.display(),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
}

fn load_yaml(file: &str) -> Value {
    let path = prometheus_dir().join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

#[test]
fn promtool_check_rules() {
    promtool(&["check", "rules"], "rules.yaml");
}

#[test]
fn promtool_test_rules() {
    promtool(&["test", "rules"], "rules_test.yaml");
}

#[test]
fn prometheusrule_groups_match_rule_file() {
    let rules = load_yaml("rules.yaml");
    let object = load_yaml("prometheusrule.yaml");

    assert_eq!(object["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(object["kind"], "PrometheusRule");
    assert_eq!(object["metadata"]["name"], "kube-fim-alerts");
    assert_eq!(object["metadata"]["namespace"], "kube-fim");

    let groups = &rules["groups"];
    assert!(
        groups.as_array().is_some_and(|g| !g.is_empty()),
        "rules.yaml has no groups: {rules}"
    );
    assert_eq!(
        &object["spec"]["groups"], groups,
        "spec.groups of config/prometheus/prometheusrule.yaml differs from groups of \
         config/prometheus/rules.yaml; keep the two in sync"
    );
}

#[test]
fn kustomization_lists_prometheusrule() {
    let kustomization = load_yaml("kustomization.yaml");
    let resources = kustomization["resources"]
        .as_array()
        .expect("kustomization.yaml has resources");
    assert!(
        resources.iter().any(|r| r == "prometheusrule.yaml"),
        "kustomization.yaml does not list prometheusrule.yaml: {resources:?}"
    );
}
