//! Names and label values of the operator's Prometheus metrics.
//!
//! The names are the file-integrity-operator's, so existing alerts and dashboards
//! keep working. Label values must stay bounded: an error message is free text (paths, object
//! names, API responses) and would create one series per distinct message, so the `error`
//! label is a typed error's bounded reason, never its message.

/// Counter: transitions to a phase; label `phase`.
pub const PHASE_TOTAL: &str = "file_integrity_operator_phase_total";
/// Counter: FileIntegrity phase errors; label `error`.
pub const ERROR_TOTAL: &str = "file_integrity_operator_error_total";
/// Counter: scan pauses during node updates; label `node`.
pub const PAUSE_TOTAL: &str = "file_integrity_operator_pause_total";
/// Counter: scan unpauses after node updates; label `node`.
pub const UNPAUSE_TOTAL: &str = "file_integrity_operator_unpause_total";
/// Counter: re-init triggers; labels `by` (`demand`, `node`, `config`) and `node`.
pub const REINIT_TOTAL: &str = "file_integrity_operator_reinit_total";
/// Counter: node status transitions; labels `condition` and `node`.
pub const NODE_STATUS_TOTAL: &str = "file_integrity_operator_node_status_total";
/// Counter: node status errors; labels `error` and `node`.
pub const NODE_STATUS_ERROR_TOTAL: &str = "file_integrity_operator_node_status_error_total";
/// Counter: agent DaemonSet updates; label `operation` (`update`, `delete`, `podkill`).
pub const DAEMONSET_UPDATE_TOTAL: &str = "file_integrity_operator_daemonset_update_total";
/// Counter: re-init signalling updates; label `operation` (`update`, `delete`).
pub const REINIT_DAEMONSET_UPDATE_TOTAL: &str =
    "file_integrity_operator_reinit_daemonset_update_total";
/// Gauge: 1 while a node has unresolved integrity failures, 0 when healthy; label `node`.
pub const NODE_FAILED: &str = "file_integrity_operator_node_failed";

/// Gauge (kube-fim, issue 10): 1 while a node's latest result is older than twice
/// gracePeriod (its agent stopped reporting), 0 otherwise; label `node`.
pub const NODE_STALE: &str = "file_integrity_operator_node_stale";
/// Gauge (kube-fim, issue 10): 1 while a node's latest result is Errored; label `node`.
pub const NODE_ERRORED: &str = "file_integrity_operator_node_errored";

/// Gauge (kube-fim, issue 10): 1 while a node reports a baseline the operator did not see it
/// create (replaced without a re-init), 0 otherwise; label `node`.
pub const BASELINE_REPLACED: &str = "file_integrity_operator_baseline_replaced";
/// Gauge (kube-fim, issue 14): 1 while a monitored container's latest result is Failed; labels
/// `namespace`, `pod`, `container`.
pub const CONTAINER_FAILED: &str = "file_integrity_operator_container_failed";
/// Counter (kube-fim, issue 14): container remediations; labels `action`, `result`.
pub const CONTAINER_REMEDIATION_TOTAL: &str = "file_integrity_operator_container_remediation_total";

/// Every metric name of the file-integrity-operator, for registration checks.
pub const ALL: [&str; 10] = [
    PHASE_TOTAL,
    ERROR_TOTAL,
    PAUSE_TOTAL,
    UNPAUSE_TOTAL,
    REINIT_TOTAL,
    NODE_STATUS_TOTAL,
    NODE_STATUS_ERROR_TOTAL,
    DAEMONSET_UPDATE_TOTAL,
    REINIT_DAEMONSET_UPDATE_TOTAL,
    NODE_FAILED,
];

/// Label names.
pub const LABEL_PHASE: &str = "phase";
pub const LABEL_ERROR: &str = "error";
pub const LABEL_NODE: &str = "node";
pub const LABEL_BY: &str = "by";
pub const LABEL_CONDITION: &str = "condition";
pub const LABEL_OPERATION: &str = "operation";

/// `by` value of a re-init caused by a config change (`demand` and `node` come from
/// `ReinitTargets::by`).
pub const REINIT_BY_CONFIG: &str = "config";
/// `by` value of a re-init of the Failed nodes (`fim.kubefim.io/re-init-on-failed`).
pub const REINIT_BY_FAILED: &str = "failed";

/// `error` label values of [`ERROR_TOTAL`]: the only values
/// [`crate::config::ConfigError::reason`] returns.
pub const ERROR_REASONS: [&str; 3] = ["config_not_found", "config_key_missing", "config_invalid"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_keep_the_file_integrity_operator_prefix() {
        for name in ALL {
            assert!(name.starts_with("file_integrity_operator_"), "{name}");
        }
        assert_eq!(
            ALL.iter().collect::<std::collections::BTreeSet<_>>().len(),
            ALL.len()
        );
    }
}
