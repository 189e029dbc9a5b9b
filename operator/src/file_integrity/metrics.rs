//! The FileIntegrity controller's Prometheus metrics (names from [`crate::metrics_labels`]),
//! registered in the runtime's registry.

use std::collections::BTreeMap;

use kube_fim_crds::ScanCondition;
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};

use crate::metrics_labels as names;

/// Registered metrics; cheap to share behind an `Arc`.
#[derive(Clone)]
pub struct Metrics {
    /// Transitions to a phase; label `phase`.
    pub phase_total: IntCounterVec,
    /// FileIntegrity errors; label `error` (bounded by [`names::error_reason`]).
    pub error_total: IntCounterVec,
    /// 1 while a node's latest result is Failed, 0 otherwise; label `node`.
    pub node_failed: IntGaugeVec,
    /// Node events emitted for a new result; labels `condition` and `node`.
    pub node_status_total: IntCounterVec,
    /// 1 while a node's latest result is older than twice gracePeriod; label `node`.
    pub node_stale: IntGaugeVec,
    /// 1 while a node's latest result is Errored; label `node`.
    pub node_errored: IntGaugeVec,
    /// 1 while a node's baseline was replaced without a re-init; label `node`.
    pub baseline_replaced: IntGaugeVec,
    /// Re-init requests; labels `by` (`demand`, `node`, `config`) and `node` (the targeted
    /// node for `demand` and `node`, empty for `config`), as in file-integrity-operator.
    pub reinit_total: IntCounterVec,
    /// Failed reconciliations (not a file-integrity-operator metric); label `error`.
    pub reconcile_errors: IntCounterVec,
    /// 1 while a monitored container's latest result is Failed; labels `namespace`, `pod`,
    /// `container` (series dropped when the container is no longer reported).
    pub container_failed: IntGaugeVec,
    /// Container remediations; labels `action` (`restart`, `rollback`, `suppressed`) and
    /// `result` (`done`, `failed`).
    pub container_remediation_total: IntCounterVec,
}

impl Metrics {
    /// The metrics, registered in `registry`.
    ///
    /// # Panics
    ///
    /// When `registry` already holds metrics of these names.
    pub fn new(registry: &Registry) -> Self {
        let phase_total = IntCounterVec::new(
            Opts::new(
                names::PHASE_TOTAL,
                "Transitions of FileIntegrity objects to a phase",
            ),
            &[names::LABEL_PHASE],
        )
        .expect("valid metric");
        let error_total = IntCounterVec::new(
            Opts::new(names::ERROR_TOTAL, "FileIntegrity phase errors"),
            &[names::LABEL_ERROR],
        )
        .expect("valid metric");
        let node_failed = IntGaugeVec::new(
            Opts::new(
                names::NODE_FAILED,
                "1 while a node has unresolved integrity failures, 0 when healthy",
            ),
            &[names::LABEL_NODE],
        )
        .expect("valid metric");
        let node_stale = IntGaugeVec::new(
            Opts::new(
                names::NODE_STALE,
                "1 while a node has not reported a result for more than twice gracePeriod",
            ),
            &[names::LABEL_NODE],
        )
        .expect("valid metric");
        let node_errored = IntGaugeVec::new(
            Opts::new(
                names::NODE_ERRORED,
                "1 while a node's latest scan could not complete (Errored), 0 otherwise",
            ),
            &[names::LABEL_NODE],
        )
        .expect("valid metric");
        let baseline_replaced = IntGaugeVec::new(
            Opts::new(
                names::BASELINE_REPLACED,
                "1 while a node reports a baseline database the operator did not see it create \
                 (replaced without a re-init request), 0 otherwise",
            ),
            &[names::LABEL_NODE],
        )
        .expect("valid metric");
        let node_status_total = IntCounterVec::new(
            Opts::new(
                names::NODE_STATUS_TOTAL,
                "Node integrity status results announced, by condition",
            ),
            &[names::LABEL_CONDITION, names::LABEL_NODE],
        )
        .expect("valid metric");
        let reinit_total = IntCounterVec::new(
            Opts::new(
                names::REINIT_TOTAL,
                "The total number of FileIntegrity database re-initialization triggers \
                 (annotation or config change), per method and node",
            ),
            &[names::LABEL_BY, names::LABEL_NODE],
        )
        .expect("valid metric");
        let reconcile_errors = IntCounterVec::new(
            Opts::new(
                "file_integrity_operator_reconcile_errors_total",
                "Reconciliations of a FileIntegrity that failed and were retried",
            ),
            &[names::LABEL_ERROR],
        )
        .expect("valid metric");
        let container_failed = IntGaugeVec::new(
            Opts::new(
                names::CONTAINER_FAILED,
                "1 while a monitored container's files differ from its baseline, 0 otherwise",
            ),
            &["namespace", "pod", "container"],
        )
        .expect("valid metric");
        let container_remediation_total = IntCounterVec::new(
            Opts::new(
                names::CONTAINER_REMEDIATION_TOTAL,
                "Remediations of tampered containers by the operator, by action and result",
            ),
            &["action", "result"],
        )
        .expect("valid metric");
        for collector in [
            Box::new(container_failed.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(container_remediation_total.clone()),
            Box::new(phase_total.clone()),
            Box::new(error_total.clone()),
            Box::new(node_failed.clone()),
            Box::new(node_status_total.clone()),
            Box::new(node_stale.clone()),
            Box::new(node_errored.clone()),
            Box::new(baseline_replaced.clone()),
            Box::new(reinit_total.clone()),
            Box::new(reconcile_errors.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric registered once");
        }
        Self {
            phase_total,
            error_total,
            node_failed,
            node_status_total,
            node_stale,
            node_errored,
            baseline_replaced,
            reinit_total,
            reconcile_errors,
            container_failed,
            container_remediation_total,
        }
    }

    /// Counts a new re-init request made for `by` reasons targeting `nodes`: per node for
    /// `demand` and `node`, once with an empty node for `config`.
    pub fn count_reinit(&self, by: &[&str], nodes: &std::collections::BTreeSet<String>) {
        for by in by {
            if *by == names::REINIT_BY_CONFIG {
                self.reinit_total.with_label_values(&[*by, ""]).inc();
            } else {
                for node in nodes {
                    self.reinit_total
                        .with_label_values(&[*by, node.as_str()])
                        .inc();
                }
            }
        }
    }

    /// Sets `node_failed` for each node: `true` → 1, `false` → 0.
    pub fn set_node_failed(&self, nodes: &BTreeMap<String, bool>) {
        for (node, failed) in nodes {
            self.node_failed
                .with_label_values(&[node.as_str()])
                .set(i64::from(*failed));
        }
    }

    /// Sets a per-node 0/1 gauge (`node_stale`, `node_errored`) for each node.
    pub fn set_node_gauge(gauge: &IntGaugeVec, nodes: &BTreeMap<String, bool>) {
        for (node, on) in nodes {
            gauge
                .with_label_values(&[node.as_str()])
                .set(i64::from(*on));
        }
    }

    /// Drops the `node_failed` and `node_status_total` series of `node` (its status is gone),
    /// so label values stay bounded by the nodes that exist.
    pub fn forget_node(&self, node: &str) {
        // Absent series are fine: nothing to drop.
        let _ = self.node_failed.remove_label_values(&[node]);
        let _ = self.node_stale.remove_label_values(&[node]);
        let _ = self.node_errored.remove_label_values(&[node]);
        let _ = self.baseline_replaced.remove_label_values(&[node]);
        for condition in [
            ScanCondition::Succeeded,
            ScanCondition::Failed,
            ScanCondition::Errored,
        ] {
            let _ = self
                .node_status_total
                .remove_label_values(&[condition.as_str(), node]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_seed_names() {
        let registry = Registry::new();
        let m = Metrics::new(&registry);
        m.phase_total.with_label_values(&["Active"]).inc();
        m.set_node_failed(&BTreeMap::from([
            ("a".to_owned(), true),
            ("b".to_owned(), false),
        ]));
        m.node_status_total
            .with_label_values(&["Failed", "a"])
            .inc();
        m.set_node_failed(&BTreeMap::from([("c".to_owned(), true)]));
        m.node_status_total
            .with_label_values(&["Failed", "c"])
            .inc();
        m.node_status_total
            .with_label_values(&["Succeeded", "c"])
            .inc();
        m.forget_node("c");
        m.forget_node("never-seen");
        m.count_reinit(&["config", "node"], &["a".to_owned()].into());
        m.count_reinit(&["demand"], &["a".to_owned(), "b".to_owned()].into());
        let text = crate::runtime::http::render(&registry);
        assert!(
            text.contains(
                "file_integrity_operator_node_status_total{condition=\"Failed\",node=\"a\"} 1"
            ),
            "{text}"
        );
        assert!(!text.contains("node=\"c\""), "{text}");
        for want in [
            "file_integrity_operator_reinit_total{by=\"config\",node=\"\"} 1",
            "file_integrity_operator_reinit_total{by=\"node\",node=\"a\"} 1",
            "file_integrity_operator_reinit_total{by=\"demand\",node=\"b\"} 1",
        ] {
            assert!(text.contains(want), "{want} missing from {text}");
        }
        assert!(
            text.contains("file_integrity_operator_phase_total{phase=\"Active\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("file_integrity_operator_node_failed{node=\"a\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("file_integrity_operator_node_failed{node=\"b\"} 0"),
            "{text}"
        );
    }
}
