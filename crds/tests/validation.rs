//! Admission-time validation: the schema carries the CEL rules, enums, patterns and defaults, and
//! the CEL rules accept good objects and refuse bad ones with a message naming the field.

mod common;

use base64::Engine;
use common::{node, sample_json, schema};
use kube::core::cel::{ScopeContext, Validator, analyze_rule, compile_schema};
use kube_fim_crds::{
    BASE64_PATTERN, DIGEST_PATTERN, FileIntegrity, FileIntegrityNodeStatus, MAX_INLINE_HASHES,
    MIN_GRACE_PERIOD, REFERENCE_PATTERN, Snapshot, crds,
};
use serde_json::{Value, json};

fn rules(node: &Value) -> Vec<(String, String)> {
    node["x-kubernetes-validations"]
        .as_array()
        .map(|rules| {
            rules
                .iter()
                .map(|r| {
                    (
                        r["rule"].as_str().unwrap().to_owned(),
                        r["message"].as_str().unwrap().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn file_integrity_schema_has_rules_and_defaults() {
    let s = schema::<FileIntegrity>();
    let grace = node(&s, "spec.config.gracePeriod");
    assert_eq!(grace["default"], 900);
    assert_eq!(
        rules(grace),
        [(
            format!("self >= {MIN_GRACE_PERIOD}"),
            format!("spec.config.gracePeriod must be at least {MIN_GRACE_PERIOD} seconds")
        )]
    );
    let backups = node(&s, "spec.config.maxBackups");
    assert_eq!(backups["default"], 5);
    assert_eq!(rules(backups)[0].0, "self >= 0");
    assert_eq!(
        rules(node(&s, "spec.config.initialDelay"))[0].0,
        "self >= 0"
    );
    assert_eq!(node(&s, "spec.config.key")["default"], "aide.conf");
    assert_eq!(node(&s, "spec.config")["default"]["gracePeriod"], 900);
    assert_eq!(node(&s, "spec.realtime")["default"], true);
    let tolerations = node(&s, "spec.tolerations")["default"].as_array().unwrap();
    assert_eq!(tolerations.len(), 2);
    assert_eq!(
        tolerations[0]["key"],
        "node-role.kubernetes.io/control-plane"
    );

    let spec_rules = rules(node(&s, "spec"));
    assert_eq!(spec_rules.len(), 1);
    assert!(
        spec_rules[0]
            .0
            .contains("self.fullScanEvery >= self.config.gracePeriod")
    );
    assert_eq!(
        node(&s, "spec")["x-kubernetes-validations"][0]["fieldPath"],
        ".fullScanEvery"
    );

    let syslog = "spec.alerts.syslog";
    assert_eq!(
        rules(node(&s, &format!("{syslog}.port")))[0].0,
        "self >= 1 && self <= 65535"
    );
    assert_eq!(node(&s, &format!("{syslog}.port"))["default"], 514);
    assert_eq!(
        node(&s, &format!("{syslog}.protocol"))["enum"],
        json!(["tcp", "udp", "tls"])
    );
    assert_eq!(
        node(&s, &format!("{syslog}.format"))["enum"],
        json!(["rfc3164", "rfc5424"])
    );
    assert_eq!(
        node(&s, &format!("{syslog}.framing"))["enum"],
        json!(["newline", "octetCounting"])
    );
    assert_eq!(node(&s, &format!("{syslog}.protocol"))["default"], "tcp");
    assert_eq!(
        node(&s, &format!("{syslog}.heartbeatSeconds"))["default"],
        1200
    );
    assert_eq!(
        node(&s, syslog)["x-kubernetes-validations"][0]["fieldPath"],
        ".caSecret"
    );
    assert_eq!(node(&s, syslog)["required"], json!(["host"]));
    assert_eq!(
        node(&s, "spec.containers.algorithm")["enum"],
        json!([
            "MD5", "SHA1", "SHA224", "SHA256", "SHA384", "SHA512", "BEE2"
        ])
    );
    assert_eq!(
        node(&s, "status.phase")["enum"],
        json!(["Pending", "Initializing", "Active", "Error"])
    );
    assert_eq!(
        node(&s, "status.conditions")["x-kubernetes-list-map-keys"],
        json!(["type"])
    );
}

#[test]
fn node_status_schema_is_flat_and_bounded() {
    let s = schema::<FileIntegrityNodeStatus>();
    assert!(s["properties"].get("spec").is_none());
    assert!(s["properties"].get("status").is_none());
    assert_eq!(s["required"], json!(["nodeName"]));
    let results = node(&s, "results");
    assert_eq!(results["x-kubernetes-list-type"], "map");
    assert_eq!(results["x-kubernetes-list-map-keys"], json!(["condition"]));
    assert_eq!(results["maxItems"], 3);
    assert_eq!(
        node(&s, "results.[].condition")["enum"],
        json!(["Succeeded", "Failed", "Errored"])
    );
    assert_eq!(node(&s, "lastResult.lastProbeTime")["format"], "date-time");
    assert_eq!(
        node(&s, "changedPaths")["maxItems"],
        kube_fim_crds::MAX_CHANGED_PATHS
    );
    assert_eq!(
        node(&s, "containers")["x-kubernetes-list-map-keys"],
        json!(["namespace", "pod", "container"])
    );
    let crd = <FileIntegrityNodeStatus as kube::CustomResourceExt>::crd();
    let selectable = crd.spec.versions[0].selectable_fields.clone().unwrap();
    assert_eq!(selectable[0].json_path, ".nodeName");
}

#[test]
fn snapshot_schema_validates_image_and_hashes() {
    let s = schema::<Snapshot>();
    let image = rules(node(&s, "spec.image"));
    assert_eq!(image.len(), 2);
    assert_eq!(
        image[0],
        ("self != ''".into(), "spec.image must not be empty".into())
    );
    assert!(image[1].0.contains(REFERENCE_PATTERN), "{}", image[1].0);
    let hashes = node(&s, "spec.hashes");
    assert_eq!(hashes["pattern"], BASE64_PATTERN);
    assert_eq!(hashes["maxLength"], MAX_INLINE_HASHES);
    assert_eq!(rules(hashes).len(), 2);
    assert_eq!(node(&s, "spec.algorithm")["default"], "SHA256");
    assert_eq!(node(&s, "spec")["required"], json!(["image"]));
    assert_eq!(
        node(&s, "spec.source")["required"],
        json!(["key", "sha256"])
    );
}

/// The CEL rule's pattern is the engine's grammar, so admission and the controller agree.
#[test]
fn reference_patterns_are_the_engines() {
    use fim_engine::image::reference as engine;
    assert_eq!(REFERENCE_PATTERN, engine::REFERENCE_PATTERN);
    assert_eq!(DIGEST_PATTERN, engine::DIGEST_PATTERN);
}

/// Every CEL rule compiles, uses only CRD variables and stays within the apiserver's cost budget,
/// and every message names the field it is about.
#[test]
fn every_cel_rule_compiles_and_is_cheap() {
    let mut total = 0;
    for crd in crds() {
        let s = common::schema_of(&crd);
        let compiled = compile_schema(&s);
        let mut problems = Vec::new();
        collect_rules(&s, &compiled, "", &mut problems, &mut total);
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }
    assert_eq!(total, 16, "number of CEL rules changed; update this test");
}

fn collect_rules(
    s: &Value,
    compiled: &kube::core::cel::CompiledSchema,
    path: &str,
    problems: &mut Vec<String>,
    total: &mut usize,
) {
    for err in compiled.compilation_errors() {
        problems.push(format!("{path}: {err}"));
    }
    for rule in s["x-kubernetes-validations"]
        .as_array()
        .into_iter()
        .flatten()
    {
        *total += 1;
        let text = rule["rule"].as_str().unwrap();
        for warning in analyze_rule(text, compiled, ScopeContext::CrdValidation) {
            problems.push(format!("{path}: {text}: {}", warning.message));
        }
        let message = rule["message"].as_str().unwrap_or_default();
        let field = format!("{path}{}", rule["fieldPath"].as_str().unwrap_or_default());
        if !message.starts_with(field.trim_start_matches('.')) {
            problems.push(format!("{path}: message {message:?} does not name {field}"));
        }
    }
    for (key, child) in s["properties"].as_object().into_iter().flatten() {
        let child_compiled = &compiled.properties[key];
        collect_rules(
            child,
            child_compiled,
            &format!("{path}.{key}"),
            problems,
            total,
        );
    }
    if let (Some(items), Some(compiled_items)) = (s.get("items"), compiled.items.as_deref()) {
        collect_rules(items, compiled_items, &format!("{path}[]"), problems, total);
    }
}

/// Validates `object` after applying `change` (a JSON merge into it) and returns the messages.
fn refusals(schema: &Value, mut object: Value, change: Value) -> Vec<String> {
    merge(&mut object, change);
    match Validator::new().validate(schema, &object, None) {
        Ok(()) => Vec::new(),
        Err(errors) => errors.iter().map(|e| e.message.clone()).collect(),
    }
}

fn merge(target: &mut Value, change: Value) {
    match (target, change) {
        (Value::Object(target), Value::Object(change)) => {
            for (key, value) in change {
                merge(target.entry(key).or_insert(Value::Null), value);
            }
        }
        (target, change) => *target = change,
    }
}

#[test]
fn bad_file_integrities_are_refused_with_the_field_named() {
    let s = schema::<FileIntegrity>();
    let base = sample_json("fileintegrity-full.yaml");
    let cases = [
        (
            json!({"spec": {"config": {"gracePeriod": 9}}}),
            "spec.config.gracePeriod must be at least 10 seconds",
        ),
        (
            json!({"spec": {"config": {"maxBackups": -1}}}),
            "spec.config.maxBackups must not be negative",
        ),
        (
            json!({"spec": {"config": {"initialDelay": -5}}}),
            "spec.config.initialDelay must not be negative",
        ),
        (
            json!({"spec": {"fullScanEvery": 299}}),
            "spec.fullScanEvery must be at least spec.config.gracePeriod",
        ),
        (
            json!({"spec": {"alerts": {"syslog": {"port": 0}}}}),
            "spec.alerts.syslog.port must be between 1 and 65535",
        ),
        (
            json!({"spec": {"alerts": {"syslog": {"port": 65536}}}}),
            "spec.alerts.syslog.port must be between 1 and 65535",
        ),
        (
            json!({"spec": {"alerts": {"syslog": {"host": ""}}}}),
            "spec.alerts.syslog.host must not be empty",
        ),
        (
            json!({"spec": {"alerts": {"syslog": {"heartbeatSeconds": 0}}}}),
            "spec.alerts.syslog.heartbeatSeconds must be at least 1",
        ),
    ];
    // TLS needs a CA; the other transports do not.
    let mut no_ca = base.clone();
    no_ca["spec"]["alerts"]["syslog"]
        .as_object_mut()
        .unwrap()
        .remove("caSecret");
    assert_eq!(
        refusals(&s, no_ca.clone(), json!({})),
        ["spec.alerts.syslog.caSecret is required when spec.alerts.syslog.protocol is tls"]
    );
    assert!(
        refusals(
            &s,
            no_ca,
            json!({"spec": {"alerts": {"syslog": {"protocol": "udp"}}}})
        )
        .is_empty()
    );
    for (change, message) in cases {
        assert_eq!(
            refusals(&s, base.clone(), change.clone()),
            [message],
            "{change}"
        );
    }
    // Limits themselves are accepted.
    for change in [
        json!({"spec": {"config": {"gracePeriod": 10, "maxBackups": 0, "initialDelay": 0}, "fullScanEvery": 10}}),
        json!({"spec": {"alerts": {"syslog": {"port": 1}}}}),
        json!({"spec": {"alerts": {"syslog": {"port": 65535}}}}),
    ] {
        assert_eq!(
            refusals(&s, base.clone(), change.clone()),
            Vec::<String>::new(),
            "{change}"
        );
    }
    // fullScanEvery is compared with the defaulted gracePeriod (900) when config is omitted.
    let minimal =
        json!({"apiVersion": "fim.kubefim.io/v1alpha1", "kind": "FileIntegrity", "spec": {}});
    assert_eq!(
        refusals(&s, minimal.clone(), json!({"spec": {"fullScanEvery": 600}})),
        ["spec.fullScanEvery must be at least spec.config.gracePeriod"]
    );
    assert!(refusals(&s, minimal, json!({"spec": {"fullScanEvery": 900}})).is_empty());
}

#[test]
fn bad_snapshots_are_refused_with_the_field_named() {
    let s = schema::<Snapshot>();
    let base = sample_json("snapshot.yaml");
    let digest = format!("sha256:{}", "a".repeat(64));
    let reference = "spec.image must be an image reference like registry:5000/team/app:1.2 or app@sha256:<64 hex>";
    let cases = [
        (
            json!({"spec": {"image": ""}}),
            "spec.image must not be empty",
        ),
        (json!({"spec": {"image": "App:1"}}), reference),
        (json!({"spec": {"image": "app:"}}), reference),
        (json!({"spec": {"image": "app@sha256:abc"}}), reference),
        (json!({"spec": {"image": "host:port/app"}}), reference),
        (
            json!({"spec": {"imageDigest": "sha256:ABC"}}),
            "spec.imageDigest must be sha256:<64 lowercase hex> or sha512:<128 lowercase hex>",
        ),
        (
            json!({"spec": {"hashes": ""}}),
            "spec.hashes must not be empty",
        ),
        (
            json!({"spec": {"hashes": "YWJj="}}),
            "spec.hashes must be padded base64 (length a multiple of 4)",
        ),
        (
            json!({"spec": {"hashes": null}}),
            "spec.hashes or spec.source must be set (exactly one of them)",
        ),
        (
            json!({"spec": {"source": {"key": "k", "sha256": "a".repeat(64)}}}),
            "spec.hashes or spec.source must be set (exactly one of them)",
        ),
        (
            json!({"spec": {"hashes": null, "source": {"key": "/k", "sha256": "a".repeat(64)}}}),
            "spec.source.key must be a non-empty key without a leading /",
        ),
        (
            json!({"spec": {"hashes": null, "source": {"key": "k", "sha256": "A".repeat(64)}}}),
            "spec.source.sha256 must be 64 lowercase hex digits",
        ),
    ];
    // A null in a change removes the field (as a merge patch does).
    let apply = |change: &Value| {
        let mut object = base.clone();
        merge(&mut object, change.clone());
        object["spec"]
            .as_object_mut()
            .unwrap()
            .retain(|_, v| !v.is_null());
        object
    };
    for (change, message) in cases {
        assert_eq!(
            refusals(&s, apply(&change), json!({})),
            [message],
            "{change}"
        );
    }
    for change in [
        json!({"spec": {"hashes": "YQ=="}}),
        json!({"spec": {"image": "registry:5000/app:1"}}),
        json!({"spec": {"image": "ghcr.io/a/b/c:tag", "imageDigest": digest}}),
        json!({"spec": {"image": "nginx"}}),
        json!({"spec": {"image": format!("app@{digest}")}}),
        json!({"spec": {"image": format!("host/app:tag@{digest}")}}),
        json!({"spec": {"hashes": null, "source": {"key": "ns/docker.io/library/app/1.sha256", "sha256": "a".repeat(64)}}}),
    ] {
        assert_eq!(
            refusals(&s, apply(&change), json!({})),
            Vec::<String>::new(),
            "{change}"
        );
    }
}

#[test]
fn base64_pattern_accepts_exactly_padded_standard_base64() {
    let pattern = regex::Regex::new(BASE64_PATTERN).unwrap();
    let engine = base64::engine::general_purpose::STANDARD;
    let data: Vec<u8> = (0..=255).collect();
    for len in 0..=64 {
        let encoded = engine.encode(&data[..len]);
        assert!(pattern.is_match(&encoded), "{encoded}");
    }
    for bad in [
        "YQ",       // unpadded
        "YQ=",      // short padding
        "Y===",     // too much padding
        "YQ==YQ==", // padding in the middle
        "YW Jj",    // whitespace
        "YWJj\n",   // line break
        "YW-j",     // URL-safe alphabet
        "YW_j", "%%%%",
    ] {
        assert!(!pattern.is_match(bad), "{bad:?} matched");
        assert!(
            engine.decode(bad).is_err(),
            "{bad:?} is valid base64 after all"
        );
    }
}
