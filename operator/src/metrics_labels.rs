//! Names and label values of the operator's Prometheus metrics.
//!
//! The names are the file-integrity-operator's, so existing alerts and dashboards
//! keep working. Label values must stay bounded: an error message is free text (paths, object
//! names, API responses) and would create one series per distinct message, so it is mapped to a
//! fixed set of reasons first.

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

/// Every metric name, for registration checks.
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

/// `error` label values: the only values [`error_reason`] returns.
pub const ERROR_REASONS: [&str; 10] = [
    "config_not_found",
    "config_key_missing",
    "config_invalid",
    "baseline_corrupt",
    "baseline_changed",
    "permission_denied",
    "timeout",
    "api_error",
    "io_error",
    "other",
];

/// `(reason, keyword groups)`, most specific first: a message gets the reason of the first rule
/// with a keyword of every group in it (lower-cased).
const RULES: &[(&str, &[&[&str]])] = &[
    (
        "config_key_missing",
        &[
            &["configmap"],
            &["not found", "missing", "no key"],
            &["key"],
        ],
    ),
    (
        "config_not_found",
        &[&["configmap"], &["not found", "missing", "does not exist"]],
    ),
    (
        "baseline_corrupt",
        &[
            &["baseline", "database"],
            &["corrupt", "truncated", "checksum"],
        ],
    ),
    (
        "baseline_changed",
        &[
            &["baseline", "database"],
            &["changed", "replaced", "unexpected digest"],
        ],
    ),
    (
        "permission_denied",
        &[&[
            "permission denied",
            "forbidden",
            "eacces",
            "eperm",
            "unauthorized",
        ]],
    ),
    ("timeout", &[&["timeout", "timed out", "deadline"]]),
    ("config_invalid", &[&["config", "rule", "syntax", "parse"]]),
    (
        "api_error",
        &[&["api server", "apiserver", "conflict", "too many requests"]],
    ),
    (
        "io_error",
        &[&[
            "i/o",
            "no such file",
            "os error",
            "no space",
            "read-only file system",
        ]],
    ),
];

/// Maps a free-text error message to one of [`ERROR_REASONS`].
pub fn error_reason(message: &str) -> &'static str {
    let message = message.to_lowercase();
    RULES
        .iter()
        .find(|(_, groups)| {
            groups
                .iter()
                .all(|group| group.iter().any(|word| message.contains(word)))
        })
        .map_or("other", |(reason, _)| reason)
}

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

    #[test]
    fn every_rule_yields_a_listed_reason() {
        for (reason, _) in RULES {
            assert!(ERROR_REASONS.contains(reason), "{reason}");
        }
    }

    #[test]
    fn messages_map_to_bounded_reasons() {
        let cases = [
            ("configmap kube-fim/myconf not found", "config_not_found"),
            (
                "ConfigMap kube-fim/myconf has no key aide.conf (missing)",
                "config_key_missing",
            ),
            ("line 12: syntax error in rule '/etc R+x'", "config_invalid"),
            (
                "baseline /baseline/db is corrupt: checksum mismatch",
                "baseline_corrupt",
            ),
            (
                "baseline digest changed without a re-init request",
                "baseline_changed",
            ),
            (
                "open /host/etc/shadow: Permission denied (os error 13)",
                "permission_denied",
            ),
            ("scan timed out after 3600s", "timeout"),
            (
                "configmaps \"myconf\" is forbidden: User cannot get resource",
                "permission_denied",
            ),
            (
                "ApiError: Operation cannot be fulfilled: Conflict",
                "api_error",
            ),
            (
                "write /baseline/db.new: No space left on device",
                "io_error",
            ),
            ("something nobody anticipated", "other"),
            ("", "other"),
        ];
        for (message, reason) in cases {
            assert_eq!(error_reason(message), reason, "{message}");
            assert!(ERROR_REASONS.contains(&reason));
        }
    }
}
