//! Real YAML objects of each kind parse into the types, with the documented defaults.

mod common;

use std::collections::BTreeMap;

use common::{sample, sample_json, schema, unknown_fields};
use k8s_openapi::{
    api::core::v1::Toleration, apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp,
};
use kube::core::cel::{Validator, apply_defaults};
use kube_fim_crds::{
    Algorithm, FileIntegrity, FileIntegrityConfig, FileIntegrityNodeStatus,
    FileIntegrityNodeStatusFields, FileIntegrityPhase, FileIntegritySpec, ScanCondition,
    ScanResult, Snapshot, SyslogFormat, SyslogFraming, SyslogProtocol, default_tolerations,
};
use serde_json::{Value, json};

const SAMPLES: [&str; 6] = [
    "fileintegrity-fio.yaml",
    "fileintegrity-minimal.yaml",
    "fileintegrity-full.yaml",
    "fileintegritynodestatus-fio.yaml",
    "fileintegritynodestatus-full.yaml",
    "snapshot.yaml",
];

fn schema_for(sample: &str) -> Value {
    match sample_json(sample)["kind"].as_str().unwrap() {
        "FileIntegrity" => schema::<FileIntegrity>(),
        "FileIntegrityNodeStatus" => schema::<FileIntegrityNodeStatus>(),
        "Snapshot" => schema::<Snapshot>(),
        other => panic!("{sample}: unknown kind {other}"),
    }
}

fn toleration(key: &str, operator: &str, effect: &str) -> Toleration {
    Toleration {
        key: Some(key.into()),
        operator: Some(operator.into()),
        effect: Some(effect.into()),
        ..Default::default()
    }
}

fn time(s: &str) -> Time {
    Time(s.parse::<Timestamp>().unwrap())
}

#[test]
fn samples_have_no_fields_the_apiserver_would_prune() {
    for name in SAMPLES {
        let unknown = unknown_fields(&schema_for(name), &sample_json(name));
        assert!(
            unknown.is_empty(),
            "{name}: fields not in the schema: {unknown:?}"
        );
    }
}

#[test]
fn samples_pass_the_cel_rules() {
    let validator = Validator::new();
    for name in SAMPLES {
        if let Err(errors) = validator.validate(&schema_for(name), &sample_json(name), None) {
            panic!("{name}: {errors}");
        }
    }
}

#[test]
fn file_integrity_operator_object_keeps_its_values() {
    let fi: FileIntegrity = serde_saphyr::from_str(&sample("fileintegrity-fio.yaml")).unwrap();
    let spec = &fi.spec;
    assert_eq!(
        spec.node_selector,
        BTreeMap::from([(
            "kubernetes.io/hostname".to_owned(),
            "ip-10-10-10-1".to_owned()
        )])
    );
    assert_eq!(
        spec.tolerations,
        [toleration("myNode", "Exists", "NoSchedule")]
    );
    assert_eq!(
        spec.config,
        FileIntegrityConfig {
            name: Some("myconfig".into()),
            namespace: Some("openshift-file-integrity".into()),
            key: "config".into(),
            grace_period: 20,
            max_backups: 5,
            initial_delay: 0,
        }
    );
    assert!(!spec.debug);
    // Our additions default to the documented values.
    assert!(spec.realtime);
    assert_eq!(spec.full_scan_every, None);
    assert!(!spec.containers_enabled());
    assert_eq!(spec.alerts, None);
    let status = fi.status.unwrap();
    assert_eq!(status.phase, FileIntegrityPhase::Active);
    assert_eq!((status.nodes, status.failed), (0, 0));
}

#[test]
fn minimal_file_integrity_gets_the_defaults() {
    let fi: FileIntegrity = serde_saphyr::from_str(&sample("fileintegrity-minimal.yaml")).unwrap();
    let config = &fi.spec.config;
    assert_eq!(config.key, "aide.conf");
    assert_eq!(config.grace_period, 900);
    assert_eq!(config.max_backups, 5);
    assert_eq!(config.initial_delay, 0);
    assert_eq!(
        (config.name.as_deref(), config.namespace.as_deref()),
        (None, None)
    );
    assert_eq!(
        fi.spec.tolerations,
        [
            toleration(
                "node-role.kubernetes.io/control-plane",
                "Exists",
                "NoSchedule"
            ),
            toleration("node-role.kubernetes.io/master", "Exists", "NoSchedule"),
        ]
    );
    assert!(fi.spec.realtime);
    assert!(!fi.spec.debug);
    assert_eq!(fi.spec, FileIntegritySpec::default());
    assert_eq!(fi.status, None);

    // Without `config` at all.
    let spec: FileIntegritySpec = serde_json::from_value(json!({})).unwrap();
    assert_eq!(spec, FileIntegritySpec::default());
    assert_eq!(spec.config.grace_period, 900);
    assert_eq!(spec.tolerations, default_tolerations());
}

/// The apiserver applies the schema's defaults, the operator deserializes with serde's: both must
/// give the same object.
#[test]
fn schema_defaults_agree_with_serde_defaults() {
    let fi_schema = schema::<FileIntegrity>();
    for raw in [
        sample_json("fileintegrity-minimal.yaml"),
        sample_json("fileintegrity-fio.yaml"),
        json!({"apiVersion": "fim.kubefim.io/v1alpha1", "kind": "FileIntegrity", "metadata": {"name": "x"}, "spec": {}}),
        json!({"apiVersion": "fim.kubefim.io/v1alpha1", "kind": "FileIntegrity", "metadata": {"name": "x"},
               "spec": {"containers": {}, "alerts": {"syslog": {"host": "h"}}}}),
    ] {
        let defaulted = apply_defaults(&fi_schema, &raw);
        assert_ne!(defaulted, raw, "schema defaults were not applied to {raw}");
        assert_eq!(
            defaulted["spec"]["config"]["gracePeriod"],
            raw["spec"]["config"]["gracePeriod"].as_i64().unwrap_or(900)
        );
        let by_schema: FileIntegrity = serde_json::from_value(defaulted.clone()).unwrap();
        let by_serde: FileIntegrity = serde_json::from_value(raw).unwrap();
        assert_eq!(by_schema, by_serde);
        // And what the apiserver stores is what the operator would write back.
        let mut written = serde_json::to_value(&by_serde).unwrap();
        written["metadata"] = defaulted["metadata"].clone();
        assert_eq!(apply_defaults(&fi_schema, &written), written);
    }
}

#[test]
fn full_file_integrity() {
    let fi: FileIntegrity = serde_saphyr::from_str(&sample("fileintegrity-full.yaml")).unwrap();
    let spec = &fi.spec;
    // An explicit empty list is kept, not replaced by the defaults.
    assert!(spec.tolerations.is_empty());
    assert_eq!(
        spec.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    assert!(spec.debug);
    assert_eq!(spec.config.name.as_deref(), Some("worker-rules"));
    assert_eq!(spec.config.namespace, None);
    assert_eq!(
        (
            spec.config.grace_period,
            spec.config.max_backups,
            spec.config.initial_delay
        ),
        (300, 2, 30)
    );
    let resources = spec.resources.as_ref().unwrap();
    assert_eq!(resources.requests.as_ref().unwrap()["cpu"].0, "100m");
    assert!(!spec.realtime);
    assert_eq!(spec.full_scan_every, Some(3600));
    assert!(spec.containers_enabled());
    assert_eq!(
        spec.containers.as_ref().unwrap().algorithm,
        Algorithm::Sha512
    );
    let syslog = spec.alerts.as_ref().unwrap().syslog.as_ref().unwrap();
    assert_eq!(syslog.host, "syslog.logging.svc");
    assert_eq!(syslog.port, 6514);
    assert_eq!(syslog.protocol, SyslogProtocol::Tls);
    assert_eq!(syslog.format, SyslogFormat::Rfc5424);
    assert_eq!(syslog.framing, SyslogFraming::OctetCounting);
    assert_eq!(syslog.heartbeat_seconds, 600);
    assert_eq!(syslog.cluster, "prod-eu");
    assert_eq!(syslog.ca_secret.as_deref(), Some("syslog-ca"));

    let syslog: kube_fim_crds::SyslogAlert = serde_json::from_value(json!({"host": "h"})).unwrap();
    assert_eq!(
        (
            syslog.port,
            syslog.protocol,
            syslog.framing,
            syslog.heartbeat_seconds
        ),
        (514, SyslogProtocol::Tcp, SyslogFraming::Newline, 1200)
    );
}

#[test]
fn file_integrity_round_trips() {
    for name in [
        "fileintegrity-fio.yaml",
        "fileintegrity-minimal.yaml",
        "fileintegrity-full.yaml",
    ] {
        let fi: FileIntegrity = serde_saphyr::from_str(&sample(name)).unwrap();
        let again: FileIntegrity =
            serde_json::from_value(serde_json::to_value(&fi).unwrap()).unwrap();
        assert_eq!(again, fi, "{name}");
    }
}

#[test]
fn node_status_fields_sit_at_the_top_level() {
    let raw = sample_json("fileintegritynodestatus-fio.yaml");
    let fins: FileIntegrityNodeStatus = serde_json::from_value(raw.clone()).unwrap();
    assert_eq!(
        fins.spec.node_name,
        "ip-10-0-139-137.us-east-2.compute.internal"
    );
    let conditions: Vec<_> = fins.spec.results.iter().map(|r| r.condition).collect();
    assert_eq!(
        conditions,
        [ScanCondition::Succeeded, ScanCondition::Failed]
    );
    let last = fins.spec.last_result.as_ref().unwrap();
    assert_eq!(last.condition, ScanCondition::Failed);
    assert_eq!(
        (last.files_added, last.files_changed, last.files_removed),
        (1, 1, 0)
    );
    assert_eq!(last.last_probe_time, time("2020-06-18T01:28:57Z"));
    assert_eq!(
        last.result_config_map_namespace.as_deref(),
        Some("openshift-file-integrity")
    );

    // Serializes back to exactly the file-integrity-operator shape: no `spec`, zero counts omitted.
    let written = serde_json::to_value(&fins).unwrap();
    assert_eq!(written.get("spec"), None);
    assert_eq!(written, raw);
}

#[test]
fn full_node_status() {
    let raw = sample_json("fileintegritynodestatus-full.yaml");
    let fins: FileIntegrityNodeStatus = serde_json::from_value(raw.clone()).unwrap();
    let f = &fins.spec;
    assert_eq!(
        f.last_result.as_ref().unwrap().condition,
        ScanCondition::Errored
    );
    assert!(f.baseline_digest.as_deref().unwrap().starts_with("blake3:"));
    assert_eq!(f.baseline_created, Some(time("2025-01-01T00:00:00Z")));
    let scan = f.last_scan.as_ref().unwrap();
    assert_eq!(
        (scan.files, scan.bytes, scan.duration_milliseconds),
        (29447, 1_234_567_890, 8120)
    );
    assert_eq!(f.changed_paths.len(), 2);
    assert_eq!(f.containers.len(), 2);
    assert_eq!(f.containers[0].container, "nginx");
    assert_eq!(f.containers[0].condition, ScanCondition::Failed);
    assert_eq!(f.containers[0].files_changed, 1);
    assert_eq!(serde_json::to_value(&fins).unwrap(), raw);
}

#[test]
fn new_node_status_serializes_flat() {
    let mut fields = FileIntegrityNodeStatusFields::new("node-a");
    fields.record(ScanResult::new(
        ScanCondition::Succeeded,
        time("2025-01-01T00:00:00Z"),
    ));
    let fins = FileIntegrityNodeStatus::new(
        &FileIntegrityNodeStatus::name_for("workers", "node-a"),
        fields,
    );
    assert_eq!(
        serde_json::to_value(&fins).unwrap(),
        json!({
            "apiVersion": "fim.kubefim.io/v1alpha1",
            "kind": "FileIntegrityNodeStatus",
            "metadata": {"name": "workers-node-a"},
            "nodeName": "node-a",
            "results": [{"condition": "Succeeded", "lastProbeTime": "2025-01-01T00:00:00Z"}],
            "lastResult": {"condition": "Succeeded", "lastProbeTime": "2025-01-01T00:00:00Z"},
        })
    );
}

#[test]
fn record_keeps_one_result_per_condition() {
    let mut fields = FileIntegrityNodeStatusFields::new("node-a");
    let mut failed = ScanResult::new(ScanCondition::Failed, time("2025-01-01T00:10:00Z"));
    failed.files_added = 3;
    fields.record(ScanResult::new(
        ScanCondition::Succeeded,
        time("2025-01-01T00:00:00Z"),
    ));
    fields.record(failed.clone());
    fields.record(ScanResult::new(
        ScanCondition::Errored,
        time("2025-01-01T00:20:00Z"),
    ));
    let latest = ScanResult::new(ScanCondition::Succeeded, time("2025-01-01T00:30:00Z"));
    fields.record(latest.clone());

    assert_eq!(fields.results.len(), 3);
    assert_eq!(fields.results[0], latest);
    assert_eq!(fields.results[1], failed);
    assert_eq!(fields.results[2].condition, ScanCondition::Errored);
    assert_eq!(fields.last_result, Some(latest));
}

#[test]
fn snapshot_sample() {
    let raw = sample_json("snapshot.yaml");
    let snap: Snapshot = serde_json::from_value(raw.clone()).unwrap();
    assert_eq!(snap.spec.image, "integrity:latest");
    assert_eq!(snap.spec.algorithm, Algorithm::Md5);
    let status = snap.status.as_ref().unwrap();
    assert!(status.uploaded);
    assert_eq!(
        status.control_hash.as_deref(),
        Some("7d378587aa4b2b7a300f7a25f9cd574d3bcc2a8a2aa6fdc2d29cb47fc5b8a734")
    );
    assert_eq!(serde_json::to_value(&snap).unwrap(), raw);

    use base64::Engine;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(snap.spec.hashes.as_deref().unwrap())
        .unwrap();
    assert_eq!(snap.inline_data().unwrap(), decoded);
    let text = String::from_utf8(decoded).unwrap();
    assert!(
        text.starts_with(
            "f731846ea75e8bc9f76e7014b0518976  app/db/migrations/000001_init.down.sql\n"
        )
    );
}

#[test]
fn snapshot_algorithm_defaults_to_sha256_and_is_case_sensitive() {
    let spec: kube_fim_crds::SnapshotSpec =
        serde_json::from_value(json!({"image": "a:1", "hashes": "YQ=="})).unwrap();
    assert_eq!(spec.algorithm, Algorithm::Sha256);
    let lower = serde_json::from_value::<kube_fim_crds::SnapshotSpec>(
        json!({"image": "a:1", "hashes": "YQ==", "algorithm": "md5"}),
    );
    assert!(lower.is_err());
}
