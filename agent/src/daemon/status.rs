//! What the agent writes to the API server, built without I/O: its FileIntegrityNodeStatus and the
//! failure ConfigMap `<fi>-<node>-failed`.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::ConfigMap,
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time},
    jiff::Timestamp,
};
use kube::Resource;
use kube_fim_crds::{
    FileIntegrity, FileIntegrityNodeStatus, FileIntegrityNodeStatusFields, MAX_CHANGED_PATHS,
    ScanCondition, ScanResult, ScanStatistics, labels, reinit::ACK_ANNOTATION,
};

use super::findings::Findings;
use crate::failure_report::{self, FailureData};
use fim_engine::display::display_bytes;
use fim_engine::scan::ScanStats;

/// The FileIntegrity the agent works for: what owner references and labels need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub name: String,
    pub namespace: String,
    pub uid: String,
}

impl Owner {
    pub fn of(fi: &FileIntegrity) -> Option<Owner> {
        Some(Owner {
            name: fi.metadata.name.clone()?,
            namespace: fi.metadata.namespace.clone()?,
            uid: fi.metadata.uid.clone()?,
        })
    }

    fn reference(&self) -> OwnerReference {
        OwnerReference {
            api_version: FileIntegrity::api_version(&()).into_owned(),
            kind: FileIntegrity::kind(&()).into_owned(),
            name: self.name.clone(),
            uid: self.uid.clone(),
            controller: Some(false),
            block_owner_deletion: None,
        }
    }

    fn metadata(&self, name: String, node: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.clone()),
            labels: Some(BTreeMap::from([
                (labels::OWNER.to_owned(), self.name.clone()),
                (labels::NODE.to_owned(), node.to_owned()),
            ])),
            owner_references: Some(vec![self.reference()]),
            ..ObjectMeta::default()
        }
    }
}

/// The baseline a status refers to.
#[derive(Clone, Debug, PartialEq)]
pub struct BaselineRecord {
    pub digest: String,
    pub created: Timestamp,
}

/// A result to record: a scan's findings, or why the agent cannot scan.
#[derive(Clone, Debug)]
pub enum Report<'a> {
    Scanned {
        findings: &'a Findings,
        stats: &'a ScanStats,
        /// The failure ConfigMap, when there are findings.
        failure_config_map: Option<&'a str>,
    },
    Errored {
        message: &'a str,
    },
}

/// Records `report` in `fields` (the agent's copy of its node status).
pub fn record(
    fields: &mut FileIntegrityNodeStatusFields,
    owner: &Owner,
    report: Report<'_>,
    now: Timestamp,
) {
    let probe = Time(now);
    match report {
        Report::Scanned {
            findings,
            stats,
            failure_config_map,
        } => {
            let (added, changed, removed) = findings.counts();
            let condition = if findings.is_clean() {
                ScanCondition::Succeeded
            } else {
                ScanCondition::Failed
            };
            let mut result = ScanResult::new(condition, probe);
            result.files_added = added as i64;
            result.files_changed = changed as i64;
            result.files_removed = removed as i64;
            if let Some(name) = failure_config_map.filter(|_| !findings.is_clean()) {
                result.result_config_map_name = Some(name.to_owned());
                result.result_config_map_namespace = Some(owner.namespace.clone());
            }
            fields.record(result);
            fields.changed_paths = findings
                .first_paths(MAX_CHANGED_PATHS)
                .into_iter()
                .map(display_bytes)
                .collect();
            fields.last_scan = Some(ScanStatistics {
                files: stats.entries as i64,
                bytes: stats.bytes_hashed as i64,
                duration_milliseconds: stats.duration.as_millis() as i64,
            });
        }
        Report::Errored { message } => {
            let mut result = ScanResult::new(ScanCondition::Errored, probe);
            result.error_message = Some(message.to_owned());
            fields.record(result);
            fields.changed_paths.clear();
        }
    }
}

/// Sets (or clears) the baseline the status refers to.
pub fn set_baseline(fields: &mut FileIntegrityNodeStatusFields, baseline: Option<&BaselineRecord>) {
    fields.baseline_digest = baseline.map(|b| b.digest.clone());
    fields.baseline_created = baseline.map(|b| Time(b.created));
}

/// The node status object to apply: `fields` under the agent's metadata, with the id of the
/// latest re-init request it completed.
pub fn node_status(
    owner: &Owner,
    node: &str,
    fields: &FileIntegrityNodeStatusFields,
    acknowledged: Option<u64>,
) -> FileIntegrityNodeStatus {
    let mut metadata = owner.metadata(FileIntegrityNodeStatus::name_for(&owner.name, node), node);
    if let Some(id) = acknowledged {
        metadata.annotations = Some(BTreeMap::from([(
            ACK_ANNOTATION.to_owned(),
            id.to_string(),
        )]));
    }
    FileIntegrityNodeStatus {
        metadata,
        spec: fields.clone(),
    }
}

/// The failure ConfigMap holding `report`.
pub fn failure_config_map(owner: &Owner, node: &str, data: FailureData) -> ConfigMap {
    let mut metadata = owner.metadata(failure_report::config_map_name(&owner.name, node), node);
    if let Some(labels) = metadata.labels.as_mut() {
        labels.insert(labels::RESULT_LOG.to_owned(), "true".to_owned());
    }
    metadata.annotations = Some(data.annotations);
    ConfigMap {
        metadata,
        data: Some(data.data),
        ..ConfigMap::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failure_report::{Limits, failure_config_map_data};
    use fim_engine::scan::Outcome;

    fn owner() -> Owner {
        Owner {
            name: "worker-fi".into(),
            namespace: "kube-fim".into(),
            uid: "uid-1".into(),
        }
    }

    fn findings_with_one_change() -> Findings {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), "x").unwrap();
        let entry = fim_engine::entry::collect(
            b"/etc/f\nx",
            &dir.path().join("f"),
            fim_engine::attrs::AttrSet::default(),
            None,
            &mut Vec::new(),
        )
        .unwrap()
        .unwrap()
        .entry;
        Findings::from_outcome(&Outcome {
            added: vec![entry],
            ..Outcome::default()
        })
    }

    #[test]
    fn a_clean_scan_succeeds_and_a_dirty_one_fails_with_counts_and_log() {
        let now = Timestamp::from_second(1_795_000_000).unwrap();
        let mut fields = FileIntegrityNodeStatusFields::new("node-a");
        let stats = ScanStats {
            entries: 10,
            bytes_hashed: 4096,
            ..ScanStats::default()
        };
        let clean = Findings::default();
        let report = Report::Scanned {
            findings: &clean,
            stats: &stats,
            failure_config_map: Some("worker-fi-node-a-failed"),
        };
        record(&mut fields, &owner(), report, now);
        let last = fields.last_result.clone().unwrap();
        assert_eq!(last.condition, ScanCondition::Succeeded);
        assert_eq!(last.result_config_map_name, None);
        assert_eq!(fields.last_scan.as_ref().unwrap().files, 10);

        let dirty = findings_with_one_change();
        let report = Report::Scanned {
            findings: &dirty,
            stats: &stats,
            failure_config_map: Some("worker-fi-node-a-failed"),
        };
        record(&mut fields, &owner(), report, now);
        let last = fields.last_result.clone().unwrap();
        assert_eq!(last.condition, ScanCondition::Failed);
        assert_eq!(last.files_added, 1);
        assert_eq!(
            last.result_config_map_name.as_deref(),
            Some("worker-fi-node-a-failed")
        );
        assert_eq!(
            last.result_config_map_namespace.as_deref(),
            Some("kube-fim")
        );
        assert_eq!(fields.results.len(), 2, "one per condition");
        assert_eq!(fields.changed_paths, ["/etc/f\\nx"]);

        record(
            &mut fields,
            &owner(),
            Report::Errored { message: "boom" },
            now,
        );
        assert_eq!(fields.results.len(), 3);
        assert_eq!(
            fields
                .last_result
                .as_ref()
                .unwrap()
                .error_message
                .as_deref(),
            Some("boom")
        );
    }

    #[test]
    fn objects_are_owned_labelled_and_acknowledge() {
        let fields = FileIntegrityNodeStatusFields::new("node-a");
        let status = node_status(&owner(), "node-a", &fields, Some(4));
        assert_eq!(status.metadata.name.as_deref(), Some("worker-fi-node-a"));
        let labels = status.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[labels::OWNER], "worker-fi");
        assert_eq!(labels[labels::NODE], "node-a");
        assert_eq!(
            status.metadata.annotations.as_ref().unwrap()[ACK_ANNOTATION],
            "4"
        );
        let reference = &status.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (reference.kind.as_str(), reference.uid.as_str()),
            ("FileIntegrity", "uid-1")
        );
        assert_eq!(reference.api_version, "fim.kubefim.io/v1alpha1");

        let big = "x".repeat(2 * 1024 * 1024);
        let data = failure_config_map_data(&big, &Limits::new("/baseline/fi/reports/latest.txt"));
        let cm = failure_config_map(&owner(), "node-a", data);
        assert_eq!(cm.metadata.name.as_deref(), Some("worker-fi-node-a-failed"));
        assert_eq!(
            cm.metadata.annotations.as_ref().unwrap()[labels::COMPRESSED],
            "true"
        );
        assert_eq!(
            cm.metadata.labels.as_ref().unwrap()[labels::RESULT_LOG],
            "true"
        );
        assert_eq!(cm.metadata.labels.as_ref().unwrap()[labels::NODE], "node-a");
    }
}
