//! The per-node objects the operator creates for each node a FileIntegrity monitors: its
//! FileIntegrityNodeStatus `<fi>-<node>` and its failure ConfigMap `<fi>-<node>-failed`, both
//! labelled with the owning FileIntegrity and the node.
//!
//! Why the operator and not the agent: an agent may only update these objects (admission policy
//! in config/agent), never create them, so a stolen agent token cannot create, take over or block
//! the objects of another node, nor fill the namespace with objects under arbitrary names. The
//! objects match what the agent applies (labels, owner reference), so its server-side apply
//! changes nothing but its own fields.

use std::collections::BTreeMap;

use fim_engine::hash::{Algorithm, digest_bytes};
use k8s_openapi::{
    api::core::v1::ConfigMap,
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
};
use kube::{Resource, ResourceExt};
use kube_fim_crds::{
    FileIntegrity, FileIntegrityNodeStatus, FileIntegrityNodeStatusFields, labels,
};

use crate::{Error, Result};

const MAX_NAME_LEN: usize = 253;
const NAME_SUFFIX: &str = "-failed";
const NAME_HASH_LEN: usize = 10;

/// Name of the failure ConfigMap of `fi` on `node`; the agent's `failure_report::config_map_name`
/// (same rule, checked equal by a test): `<fi>-<node>-failed`, or shortened with a hash when that
/// is no valid object name.
pub fn failure_config_map_name(fi: &str, node: &str) -> String {
    let full = format!("{fi}-{node}{NAME_SUFFIX}");
    if full.len() <= MAX_NAME_LEN && is_dns_subdomain(&full) {
        return full;
    }
    let digest = hex::encode(digest_bytes(Algorithm::Sha256, full.as_bytes()));
    let hash = &digest[..NAME_HASH_LEN];
    let mut base = sanitize(&format!("{fi}-{node}"));
    base.truncate(MAX_NAME_LEN - 1 - NAME_HASH_LEN - NAME_SUFFIX.len());
    let base = base.trim_end_matches(['-', '.']);
    if base.is_empty() {
        format!("{hash}{NAME_SUFFIX}")
    } else {
        format!("{base}-{hash}{NAME_SUFFIX}")
    }
}

fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        })
}

fn sanitize(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if c == '.' {
            while out.ends_with('-') {
                out.pop();
            }
            if !out.is_empty() && !out.ends_with('.') {
                out.push('.');
            }
        } else if !out.is_empty() && !out.ends_with(['.', '-']) {
            out.push('-');
        }
    }
    out.trim_end_matches(['-', '.']).to_owned()
}

/// The owner reference the agent writes too (not controller): equal values, so the agent's
/// server-side apply does not change it.
fn owner_reference(fi: &FileIntegrity) -> Result<OwnerReference> {
    Ok(OwnerReference {
        api_version: FileIntegrity::api_version(&()).into_owned(),
        kind: FileIntegrity::kind(&()).into_owned(),
        name: fi.name_any(),
        uid: fi.uid().ok_or(Error::MissingObjectKey("metadata.uid"))?,
        controller: Some(false),
        block_owner_deletion: None,
    })
}

fn metadata(fi: &FileIntegrity, name: String, node: &str) -> Result<ObjectMeta> {
    Ok(ObjectMeta {
        name: Some(name),
        namespace: fi.namespace(),
        labels: Some(BTreeMap::from([
            (labels::OWNER.to_owned(), fi.name_any()),
            (labels::NODE.to_owned(), node.to_owned()),
        ])),
        owner_references: Some(vec![owner_reference(fi)?]),
        ..ObjectMeta::default()
    })
}

/// The empty node status `<fi>-<node>` the agent of `node` fills in.
pub fn node_status(fi: &FileIntegrity, node: &str) -> Result<FileIntegrityNodeStatus> {
    let name = FileIntegrityNodeStatus::name_for(&fi.name_any(), node);
    Ok(FileIntegrityNodeStatus {
        metadata: metadata(fi, name, node)?,
        spec: FileIntegrityNodeStatusFields::new(node),
    })
}

/// The empty failure ConfigMap the agent of `node` writes its report into.
pub fn failure_config_map(fi: &FileIntegrity, node: &str) -> Result<ConfigMap> {
    let mut metadata = metadata(fi, failure_config_map_name(&fi.name_any(), node), node)?;
    if let Some(l) = metadata.labels.as_mut() {
        l.insert(labels::RESULT_LOG.to_owned(), "true".to_owned());
    }
    Ok(ConfigMap {
        metadata,
        ..ConfigMap::default()
    })
}

/// Whether `s` is the status of its node under the one name the operator gives it: statuses
/// under other names (planted, or left from another scheme) are neither counted nor trusted.
pub fn is_canonical(s: &FileIntegrityNodeStatus, fi: &str) -> bool {
    s.metadata.name.as_deref()
        == Some(FileIntegrityNodeStatus::name_for(fi, &s.spec.node_name).as_str())
        && s.labels().get(labels::NODE) == Some(&s.spec.node_name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fi() -> FileIntegrity {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "fim.kubefim.io/v1alpha1", "kind": "FileIntegrity",
            "metadata": {"name": "fi", "namespace": "kube-fim", "uid": "u-1"},
            "spec": {},
        }))
        .unwrap()
    }

    #[test]
    fn the_failure_config_map_name_is_the_agents() {
        let long = format!("{}.ec2.internal", "ip-10-0-1-2".repeat(25));
        for (fi, node) in [
            (
                "example-fileintegrity",
                "ip-10-0-139-137.us-east-2.compute.internal",
            ),
            ("My_FI", "Node..One-.x"),
            ("", ""),
            ("example-fileintegrity", long.as_str()),
        ] {
            assert_eq!(
                failure_config_map_name(fi, node),
                fim_agent::failure_report::config_map_name(fi, node),
                "{fi} {node}"
            );
        }
    }

    #[test]
    fn node_objects_are_named_and_labelled_for_their_node() {
        let s = node_status(&fi(), "node-a").unwrap();
        assert_eq!(s.metadata.name.as_deref(), Some("fi-node-a"));
        assert_eq!(s.spec.node_name, "node-a");
        assert_eq!(s.labels()[labels::OWNER], "fi");
        assert_eq!(s.labels()[labels::NODE], "node-a");
        assert!(is_canonical(&s, "fi"));
        let cm = failure_config_map(&fi(), "node-a").unwrap();
        assert_eq!(cm.metadata.name.as_deref(), Some("fi-node-a-failed"));
        assert_eq!(cm.labels()[labels::NODE], "node-a");
        assert_eq!(cm.data, None);
    }

    #[test]
    fn a_status_under_another_name_is_not_canonical() {
        // A status named for node b that says node a (the confinement attack), and one under an
        // arbitrary name.
        let mut s = node_status(&fi(), "node-a").unwrap();
        s.metadata.name = Some("fi-node-b".into());
        assert!(!is_canonical(&s, "fi"));
        s.metadata.name = Some("anything".into());
        assert!(!is_canonical(&s, "fi"));
        let mut s = node_status(&fi(), "node-a").unwrap();
        s.metadata
            .labels
            .as_mut()
            .unwrap()
            .insert(labels::NODE.into(), "node-b".into());
        assert!(!is_canonical(&s, "fi"));
    }
}
