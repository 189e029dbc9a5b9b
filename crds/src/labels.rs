//! Label, annotation, finalizer and field-manager names shared by the operator and the agent.
//!
//! Everything lives under the `fim.kubefim.io/` prefix (the API group).

/// API group of all kube-fim kinds.
pub const GROUP: &str = "fim.kubefim.io";
/// API version of all kube-fim kinds.
pub const VERSION: &str = "v1alpha1";
/// Prefix of every kube-fim label and annotation key.
pub const PREFIX: &str = "fim.kubefim.io/";

/// Namespace the operator, the agents and their objects live in by default.
pub const DEFAULT_NAMESPACE: &str = "kube-fim";

/// Field manager used by the operator for server-side apply.
pub const OPERATOR_MANAGER: &str = "fim-operator";
/// Field manager used by the node agent for server-side apply.
pub const AGENT_MANAGER: &str = "fim-agent";

/// Annotation on a FileIntegrity: re-initialise the baseline on its nodes; removed once handled.
pub const REINIT: &str = "fim.kubefim.io/re-init";
/// Annotation on a FileIntegrity: re-initialise only the nodes whose latest result is Failed
/// (file-integrity-operator's `re-init-on-failed`); removed once the request is recorded.
pub const REINIT_ON_FAILED: &str = "fim.kubefim.io/re-init-on-failed";
/// Annotation on a result ConfigMap: the log is gzip-compressed and base64-encoded.
pub const COMPRESSED: &str = "fim.kubefim.io/compressed";
/// Annotation on a Pod: `"true"` makes the agent monitor its containers (needs `spec.containers`).
pub const MONITOR: &str = "fim.kubefim.io/monitor";
/// Annotation on a Pod: what to do when a monitored container is tampered with
/// (`none`, `restart`, `kill` or `rollback`; `none` when absent).
pub const REMEDIATION: &str = "fim.kubefim.io/remediation";
/// Annotation on a FileIntegrity: scanning is paused while present (e.g. during node updates).
pub const HOLDOFF: &str = "fim.kubefim.io/holdoff";
/// Suffix of the per-container paths annotation on a Pod: `<container>.fim.kubefim.io/paths`,
/// a comma-separated list of paths to monitor in that container.
pub const PATHS_SUFFIX: &str = ".fim.kubefim.io/paths";

/// Label: name of the FileIntegrity an object (node status, ConfigMap, DaemonSet) belongs to.
pub const OWNER: &str = "fim.kubefim.io/owner";
/// Label: node an object (node status, result ConfigMap) describes.
pub const NODE: &str = "fim.kubefim.io/node";
/// Label on result ConfigMaps holding a scan log.
pub const RESULT_LOG: &str = "fim.kubefim.io/result-log";

/// Finalizer the operator puts on a Snapshot to delete its object from storage first.
pub const SNAPSHOT_FINALIZER: &str = "fim.kubefim.io/snapshot";

/// Pod annotation key listing the paths to monitor in `container`.
pub fn paths_annotation(container: &str) -> String {
    format!("{container}{PATHS_SUFFIX}")
}

/// The container name of a `<container>.fim.kubefim.io/paths` annotation key.
pub fn container_of_paths_annotation(key: &str) -> Option<&str> {
    key.strip_suffix(PATHS_SUFFIX).filter(|c| !c.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_use_the_group_prefix() {
        assert_eq!(PREFIX, format!("{GROUP}/"));
        for key in [
            REINIT,
            REINIT_ON_FAILED,
            COMPRESSED,
            MONITOR,
            REMEDIATION,
            HOLDOFF,
            OWNER,
            NODE,
            RESULT_LOG,
            SNAPSHOT_FINALIZER,
        ] {
            assert!(key.starts_with(PREFIX), "{key}");
        }
        assert_eq!(PATHS_SUFFIX, format!(".{GROUP}/paths"));
    }

    #[test]
    fn paths_annotation_round_trips() {
        let key = paths_annotation("nginx");
        assert_eq!(key, "nginx.fim.kubefim.io/paths");
        assert_eq!(container_of_paths_annotation(&key), Some("nginx"));
        assert_eq!(container_of_paths_annotation(".fim.kubefim.io/paths"), None);
        assert_eq!(container_of_paths_annotation(MONITOR), None);
    }
}
