//! [`plan`] on objects shaped as the API server returns them.

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::{ConfigMap, Node},
    },
    jiff::Timestamp,
};
use kube::runtime::events::EventType;
use kube_fim_crds::{
    FileIntegrity, FileIntegrityNodeStatus, FileIntegrityPhase, ScanCondition,
    reinit::{ACK_ANNOTATION, REQUEST_ANNOTATION, ReinitRequest},
};
use serde_json::{Value, json};

use super::*;
use crate::{config::DEFAULT_RULES, events::NodeEventKey, phase::PriorityClassCheck};

const NS: &str = "kube-fim";
const FI: &str = "worker-fi";
const CREATED: &str = "2026-01-01T00:00:00Z";

fn settings() -> OperatorConfig {
    OperatorConfig {
        namespace: NS.into(),
        agent_image: "ghcr.io/kube-fim/fim-agent:test".into(),
        agent_service_account: "fim-agent".into(),
        resync: Duration::from_secs(300),
        retry: Duration::from_secs(1),
        retry_max: Duration::from_secs(300),
    }
}

/// A FileIntegrity as read back from the API server: uid, resourceVersion, generation and
/// creationTimestamp set, the spec's defaults filled in by deserialization.
fn fi(spec: Value, annotations: Value) -> FileIntegrity {
    serde_json::from_value(json!({
        "apiVersion": "fim.kubefim.io/v1alpha1", "kind": "FileIntegrity",
        "metadata": {
            "name": FI, "namespace": NS, "uid": "6f1c9a52-0000-4000-8000-000000000001",
            "resourceVersion": "1001", "generation": 1, "creationTimestamp": CREATED,
            "annotations": annotations,
        },
        "spec": spec,
    }))
    .expect("valid FileIntegrity")
}

fn workers() -> Value {
    json!({"nodeSelector": {"node-role.kubernetes.io/worker": ""}})
}

fn node(name: &str, worker: bool, taints: Value) -> Arc<Node> {
    let mut labels = json!({"kubernetes.io/hostname": name, "type": "kwok"});
    if worker {
        labels["node-role.kubernetes.io/worker"] = json!("");
    }
    // As the operator caches them: no status, no managed fields, no annotations.
    Arc::new(
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {
                "name": name, "uid": format!("uid-{name}"), "resourceVersion": "500",
                "creationTimestamp": CREATED, "labels": labels,
            },
            "spec": {"taints": taints},
        }))
        .expect("valid Node"),
    )
}

fn result(condition: &str, added: i64, changed: i64) -> Value {
    let mut r = json!({"condition": condition, "lastProbeTime": "2026-01-01T01:00:00Z"});
    if condition == "Failed" {
        r["filesAdded"] = json!(added);
        r["filesChanged"] = json!(changed);
        r["resultConfigMapName"] = json!(format!("aide-{FI}-{condition}"));
        r["resultConfigMapNamespace"] = json!(NS);
    }
    if condition == "Errored" {
        r["errorMessage"] = json!("open /host/etc: permission denied");
    }
    r
}

/// A node status as the agent writes it (named `<fi>-<node>`, labelled and owned).
fn node_status(
    node: &str,
    result: Option<Value>,
    ack: Option<u64>,
) -> Arc<FileIntegrityNodeStatus> {
    let mut s = json!({
        "apiVersion": "fim.kubefim.io/v1alpha1", "kind": "FileIntegrityNodeStatus",
        "metadata": {
            "name": format!("{FI}-{node}"), "namespace": NS, "resourceVersion": "700",
            "labels": {"fim.kubefim.io/owner": FI, "fim.kubefim.io/node": node},
            "ownerReferences": [{
                "apiVersion": "fim.kubefim.io/v1alpha1", "kind": "FileIntegrity",
                "name": FI, "uid": "6f1c9a52-0000-4000-8000-000000000001",
                "controller": true, "blockOwnerDeletion": true,
            }],
        },
        "nodeName": node,
    });
    if let Some(r) = result {
        s["results"] = json!([r.clone()]);
        s["lastResult"] = r;
    }
    if let Some(id) = ack {
        s["metadata"]["annotations"] = json!({ACK_ANNOTATION: id.to_string()});
    }
    Arc::new(serde_json::from_value(s).expect("valid node status"))
}

/// The agent DaemonSet once the DaemonSet controller has observed it.
fn daemonset(desired: i32, ready: i32) -> DaemonSet {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": format!("fim-agent-{FI}"), "namespace": NS, "generation": 1},
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/name": "fim-agent"}},
            "template": {"spec": {"containers": [{"name": "agent"}]}},
        },
        "status": {
            "currentNumberScheduled": desired, "desiredNumberScheduled": desired,
            "numberMisscheduled": 0, "numberReady": ready, "observedGeneration": 1,
        },
    }))
    .expect("valid DaemonSet")
}

fn config_map(name: &str, key: &str, text: &str) -> ConfigMap {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": NS, "resourceVersion": "300"},
        "data": {key: text},
    }))
    .expect("valid ConfigMap")
}

fn observed(fi: FileIntegrity) -> Observed {
    Observed {
        fi: Arc::new(fi),
        now: "2026-01-01T01:00:00Z".parse::<Timestamp>().unwrap(),
        user_config_map: None,
        rendered_config_map: None,
        priority_class: PriorityClassCheck::NotRequested,
        daemonset: None,
        node_statuses: Vec::new(),
        nodes: vec![
            node("node-a", true, json!(null)),
            node("node-b", true, json!(null)),
            node("infra-1", false, json!(null)),
        ],
        gone_nodes: BTreeSet::new(),
        announced: BTreeMap::new(),
    }
}

/// `observed` with the status the plan wrote stored on the FileIntegrity, as the next reconcile
/// sees it.
fn after(mut observed: Observed, plan: &Plan) -> Observed {
    let mut fi = (*observed.fi).clone();
    if let Some(update) = &plan.status {
        fi.status = Some(update.status.clone());
    }
    observed.fi = Arc::new(fi);
    observed
}

fn phase_of(plan: &Plan) -> FileIntegrityPhase {
    plan.status.as_ref().expect("a status write").status.phase
}

fn condition<'a>(
    plan: &'a Plan,
    type_: &str,
) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    let status = &plan.status.as_ref().expect("a status write").status;
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {:?}", status.conditions))
}

fn nodes(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

#[test]
fn a_new_file_integrity_gets_its_rules_and_agents_and_is_pending() {
    let plan = plan(&observed(fi(workers(), json!({}))), &settings()).unwrap();

    let cm = plan.config_map.as_ref().expect("rules ConfigMap");
    assert_eq!(cm.metadata.name.as_deref(), Some("fim-config-worker-fi"));
    assert_eq!(
        cm.data.as_ref().unwrap()["aide.conf"],
        DEFAULT_RULES,
        "no spec.config: the default rules"
    );
    assert_eq!(
        cm.metadata.annotations.as_ref().unwrap()[daemonset::CONFIG_HASH_ANNOTATION],
        config::config_hash(DEFAULT_RULES)
    );
    let owner = &cm.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.controller),
        ("FileIntegrity", FI, Some(true))
    );
    let ds = plan.daemonset.as_ref().expect("agent DaemonSet");
    assert_eq!(ds.metadata.name, Some(daemonset::daemonset_name(FI)));

    // No DaemonSet observed yet: Pending, announced and counted once.
    assert_eq!(phase_of(&plan), FileIntegrityPhase::Pending);
    let change = plan.status.as_ref().unwrap().phase_change.as_ref().unwrap();
    assert_eq!(change.phase, "Pending");
    assert_eq!(change.error, None);
    assert_eq!(change.event.message.reason, events::PHASE_REASON);
    assert_eq!(change.event.message.message, "Pending");
    assert_eq!(change.event.action, "Pending");
    assert_eq!(condition(&plan, phase::CONFIG_VALID).status, "True");
    assert!(
        plan.reinit.count.is_none() && plan.reinit.events.is_empty(),
        "the first rules need no re-init"
    );
    assert!(plan.deletions.is_empty() && plan.node_events.is_empty());
    assert!(plan.warnings.is_empty());
    assert_eq!(plan.next, Next::After(Duration::from_secs(300)));
}

#[test]
fn the_first_rules_are_recorded_for_later_config_changes() {
    let plan = plan(&observed(fi(workers(), json!({}))), &settings()).unwrap();
    let patch = plan.reinit.patch.as_ref();
    // The digest annotation is written without making a request.
    assert_eq!(
        plan.reinit.step.config_hash.as_deref(),
        Some(config::config_hash(DEFAULT_RULES).as_str())
    );
    assert!(patch.is_some_and(|p| p["metadata"]["resourceVersion"] == "1001"));
    assert!(plan.reinit.events.is_empty() && plan.reinit.count.is_none());
}

#[test]
fn phases_follow_the_agents_reports_and_an_unchanged_status_is_not_written() {
    let hash = config::config_hash(DEFAULT_RULES);
    let base = fi(
        workers(),
        json!({reinit::CONFIG_HASH_ANNOTATION: hash.as_str()}),
    );
    let mut o = observed(base);
    o.daemonset = Some(daemonset(2, 2));

    // One node reported, the other not yet.
    o.node_statuses = vec![node_status("node-a", Some(result("Succeeded", 0, 0)), None)];
    let p = plan(&o, &settings()).unwrap();
    assert_eq!(phase_of(&p), FileIntegrityPhase::Initializing);
    let status = &p.status.as_ref().unwrap().status;
    assert_eq!(
        (status.nodes, status.initializing, status.succeeded),
        (2, 1, 1)
    );
    assert_eq!(
        p.status
            .as_ref()
            .unwrap()
            .phase_change
            .as_ref()
            .unwrap()
            .phase,
        "Initializing"
    );
    assert_eq!(p.reinit.patch, None);

    // Both reported: Active, one transition event.
    let mut o = after(o, &p);
    o.node_statuses
        .push(node_status("node-b", Some(result("Succeeded", 0, 0)), None));
    let p = plan(&o, &settings()).unwrap();
    assert_eq!(phase_of(&p), FileIntegrityPhase::Active);
    let change = p.status.as_ref().unwrap().phase_change.as_ref().unwrap();
    assert_eq!(
        (change.phase, change.event.message.type_),
        ("Active", EventType::Normal)
    );
    assert_eq!(condition(&p, phase::AVAILABLE).status, "True");

    // Nothing new: no status write, no event, no count.
    let o = after(o, &p);
    let p = plan(&o, &settings()).unwrap();
    assert_eq!(p.status, None);
    assert!(p.daemonset.is_some(), "the DaemonSet is applied every time");
}

#[test]
fn a_status_of_an_unselected_node_is_ignored() {
    let mut o = observed(fi(workers(), json!({})));
    o.daemonset = Some(daemonset(2, 2));
    o.node_statuses = vec![node_status("infra-1", Some(result("Failed", 3, 0)), None)];
    let p = plan(&o, &settings()).unwrap();
    assert!(p.node_events.is_empty());
    assert!(p.node_failed.is_empty());
    assert!(p.deletions.is_empty(), "infra-1 exists");
    assert_eq!(p.status.unwrap().status.failed, 0);
}

#[test]
fn a_new_result_is_announced_once_and_sets_the_failed_gauge() {
    let mut o = observed(fi(workers(), json!({})));
    o.daemonset = Some(daemonset(2, 2));
    o.node_statuses = vec![
        node_status("node-a", Some(result("Failed", 1, 2)), None),
        node_status("node-b", Some(result("Succeeded", 0, 0)), None),
    ];
    let p = plan(&o, &settings()).unwrap();
    assert_eq!(
        p.node_failed,
        BTreeMap::from([("node-a".to_owned(), true), ("node-b".to_owned(), false)])
    );
    let failed = &p.node_events[0];
    assert_eq!(failed.node, "node-a");
    assert_eq!(failed.event.message.type_, EventType::Warning);
    assert_eq!(failed.event.message.reason, events::NODE_REASON);
    assert_eq!(
        failed.event.message.message,
        "node node-a has changed! a:1,c:2,r:0 log:kube-fim/aide-worker-fi-Failed"
    );
    assert_eq!(failed.event.action, "Failed-a1-c2-r0");
    assert_eq!(failed.event.node.as_deref(), Some("node-a"));
    let related = failed.event.to_event().secondary.unwrap();
    assert_eq!(
        (related.kind.as_deref(), related.name.as_deref()),
        (Some("Node"), Some("node-a"))
    );
    assert_eq!(
        p.node_events[1].event.message.message,
        "no changes to node node-b"
    );
    // A failed node is a finding, not a malfunction: the phase stays Active.
    assert_eq!(phase_of(&p), FileIntegrityPhase::Active);
    assert_eq!(condition(&p, phase::INTEGRITY_FAILED).status, "True");

    // Once announced, the same results stay silent; a new count is news again.
    o.announced = p
        .node_events
        .iter()
        .map(|e| (e.node.clone(), e.key))
        .collect();
    assert!(plan(&o, &settings()).unwrap().node_events.is_empty());
    o.node_statuses[0] = node_status("node-a", Some(result("Failed", 1, 3)), None);
    let p = plan(&o, &settings()).unwrap();
    assert_eq!(p.node_events.len(), 1);
    assert_eq!(
        p.node_events[0].key,
        NodeEventKey {
            condition: ScanCondition::Failed,
            added: 1,
            changed: 3,
            removed: 0
        }
    );
}

#[test]
fn the_status_of_a_deleted_node_is_deleted_once_the_api_confirms() {
    let mut o = observed(fi(workers(), json!({})));
    o.daemonset = Some(daemonset(2, 2));
    o.node_statuses = vec![
        node_status("node-a", Some(result("Succeeded", 0, 0)), None),
        node_status("node-gone", Some(result("Failed", 1, 0)), None),
        node_status("node-new", None, None),
    ];
    // node-new is not cached yet but exists: kept.
    o.gone_nodes = nodes(&["node-gone"]);
    let p = plan(&o, &settings()).unwrap();
    assert_eq!(
        p.deletions,
        [Deletion {
            status: "worker-fi-node-gone".into(),
            node: "node-gone".into()
        }]
    );
    assert!(!p.node_failed.contains_key("node-gone"));
    assert!(p.node_events.iter().all(|e| e.node == "node-a"));
}

#[test]
fn bad_rules_keep_the_last_good_ones_and_wait_for_a_change() {
    let good = "ALL = p+u+g+sha256\n/etc ALL\n";
    let bad = "ALL = p+u+g+sha256\n/etc ALL\n/usr NOSUCHGROUP\n";
    let spec = json!({
        "nodeSelector": {"node-role.kubernetes.io/worker": ""},
        "config": {"name": "rules", "key": "aide.conf"},
    });
    let mut o = observed(fi(
        spec,
        json!({reinit::CONFIG_HASH_ANNOTATION: config::config_hash(good)}),
    ));
    o.user_config_map = Some(config_map("rules", "aide.conf", bad));
    o.rendered_config_map = Some(config_map("fim-config-worker-fi", "aide.conf", good));
    o.daemonset = Some(daemonset(2, 2));
    let p = plan(&o, &settings()).unwrap();

    assert_eq!(p.config_map, None, "the last good rules stay");
    assert_eq!(p.config_error.as_ref().unwrap().reason(), "config_invalid");
    assert!(
        p.daemonset.is_some(),
        "agents keep running the last good rules"
    );
    assert_eq!(p.reinit.patch, None, "the effective rules did not change");
    assert_eq!(phase_of(&p), FileIntegrityPhase::Error);
    let valid = condition(&p, phase::CONFIG_VALID);
    assert_eq!(valid.status, "False");
    assert!(
        valid.message.contains("ConfigMap kube-fim/rules"),
        "{}",
        valid.message
    );
    assert!(valid.message.contains("aide.conf:3"), "{}", valid.message);
    let change = p.status.as_ref().unwrap().phase_change.as_ref().unwrap();
    assert_eq!(change.error, Some("config_invalid"));
    assert_eq!(change.event.message.type_, EventType::Warning);
    assert_eq!(p.next, Next::AwaitChange);

    // Fixed with other rules: applied, and a re-init for every selected node.
    let fixed = "ALL = p+u+g+sha256\n/etc ALL\n/usr ALL\n";
    o.user_config_map = Some(config_map("rules", "aide.conf", fixed));
    let p = plan(&o, &settings()).unwrap();
    assert_eq!(p.config_error, None);
    assert_eq!(p.config_map.unwrap().data.unwrap()["aide.conf"], fixed);
    let (by, targets) = p.reinit.count.unwrap();
    assert_eq!(
        (by, targets),
        (vec!["config"], nodes(&["node-a", "node-b"]))
    );
    assert_eq!(p.next, Next::After(Duration::from_secs(300)));
}

#[test]
fn a_missing_config_map_runs_no_agents_until_it_exists() {
    let spec = json!({"config": {"name": "rules", "key": "aide.conf"}});
    let p = plan(&observed(fi(spec, json!({}))), &settings()).unwrap();
    let error = p.config_error.as_ref().unwrap();
    assert_eq!(error.reason(), "config_not_found");
    assert_eq!(
        error.to_string(),
        "config ConfigMap kube-fim/rules not found"
    );
    assert_eq!(
        (p.config_map.is_none(), p.daemonset.is_none()),
        (true, true)
    );
    assert_eq!(phase_of(&p), FileIntegrityPhase::Error);
    assert_eq!(p.next, Next::AwaitChange);

    // A key that is not there.
    let mut o = observed(fi(
        json!({"config": {"name": "rules", "key": "aide.conf"}}),
        json!({}),
    ));
    o.user_config_map = Some(config_map("rules", "other.conf", "/etc ALL\n"));
    let p = plan(&o, &settings()).unwrap();
    assert_eq!(p.config_error.unwrap().reason(), "config_key_missing");

    // A ConfigMap in a namespace the operator does not watch: looked at again periodically.
    let spec = json!({"config": {"name": "rules", "namespace": "elsewhere", "key": "aide.conf"}});
    let p = plan(&observed(fi(spec, json!({}))), &settings()).unwrap();
    assert_eq!(p.next, Next::After(Duration::from_secs(300)));
}

#[test]
fn a_missing_priority_class_warns_once_and_the_agents_run_without_it() {
    let spec = json!({"priorityClassName": "fim-critical"});
    let mut o = observed(fi(spec, json!({})));
    o.priority_class = PriorityClassCheck::Missing("fim-critical".into());
    let p = plan(&o, &settings()).unwrap();
    assert_eq!(p.warnings.len(), 1);
    let warning = &p.warnings[0];
    assert_eq!(warning.message.reason, events::PRIORITY_CLASS_REASON);
    assert_eq!(warning.message.type_, EventType::Warning);
    assert_eq!(warning.action, "PriorityClassNotFound-fim-critical");
    let pod = p.daemonset.as_ref().unwrap().spec.as_ref().unwrap();
    assert_eq!(
        pod.template.spec.as_ref().unwrap().priority_class_name,
        None
    );
    assert_eq!(condition(&p, phase::PRIORITY_CLASS_FOUND).status, "False");

    // Already said in the status: no second warning.
    let o = after(o, &p);
    assert!(plan(&o, &settings()).unwrap().warnings.is_empty());

    // Created: the agents get it.
    let mut o = o;
    o.priority_class = PriorityClassCheck::Found("fim-critical".into());
    let p = plan(&o, &settings()).unwrap();
    let pod = p.daemonset.as_ref().unwrap().spec.as_ref().unwrap();
    assert_eq!(
        pod.template
            .spec
            .as_ref()
            .unwrap()
            .priority_class_name
            .as_deref(),
        Some("fim-critical")
    );
    assert_eq!(condition(&p, phase::PRIORITY_CLASS_FOUND).status, "True");
}

#[test]
fn the_reinit_annotation_becomes_a_request_that_completes_when_acknowledged() {
    let hash = config::config_hash(DEFAULT_RULES);
    let annotations = json!({
        reinit::CONFIG_HASH_ANNOTATION: hash.as_str(),
        labels::REINIT: "node-a, node-b, node-x",
    });
    let mut o = observed(fi(workers(), annotations.clone()));
    o.daemonset = Some(daemonset(2, 2));
    o.node_statuses = vec![
        node_status("node-a", Some(result("Succeeded", 0, 0)), None),
        node_status("node-b", Some(result("Succeeded", 0, 0)), None),
    ];
    let p = plan(&o, &settings()).unwrap();
    let patch = p.reinit.patch.as_ref().unwrap();
    assert_eq!(patch["metadata"]["resourceVersion"], "1001");
    let recorded: ReinitRequest = serde_json::from_str(
        patch["metadata"]["annotations"][REQUEST_ANNOTATION]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        (recorded.id, &recorded.nodes, recorded.done),
        (1, &nodes(&["node-a", "node-b"]), false)
    );
    assert_eq!(
        p.reinit.count,
        Some((vec!["node"], nodes(&["node-a", "node-b"])))
    );
    let reasons: Vec<(&str, &str)> = p
        .reinit
        .events
        .iter()
        .map(|e| (e.message.reason, e.action.as_str()))
        .collect();
    assert_eq!(
        reasons,
        [
            (events::REINIT_REASON, "ReinitRequest-1"),
            (events::REINIT_UNKNOWN_REASON, "ReinitUnknownNodes-1")
        ]
    );
    // Both nodes re-create their baseline: Initializing despite their old results.
    assert_eq!(phase_of(&p), FileIntegrityPhase::Initializing);

    // Recorded; node-a acknowledged: still waiting for node-b, nothing to write.
    let mut annotations = annotations;
    annotations[REQUEST_ANNOTATION] = json!(recorded.to_annotation());
    let mut o = after(o, &p);
    let status = o.fi.status.clone();
    let mut next = fi(workers(), annotations);
    next.status = status;
    o.fi = Arc::new(next);
    o.node_statuses[0] = node_status("node-a", Some(result("Succeeded", 0, 0)), Some(1));
    let p = plan(&o, &settings()).unwrap();
    assert_eq!(p.reinit.patch, None);
    assert_eq!(p.reinit.step.pending, nodes(&["node-b"]));
    assert_eq!(p.status.as_ref().unwrap().status.initializing, 1);

    // Both acknowledged: done, the user's annotation removed, Active again.
    o.node_statuses[1] = node_status("node-b", Some(result("Succeeded", 0, 0)), Some(1));
    let p = plan(&o, &settings()).unwrap();
    let patch = p.reinit.patch.as_ref().unwrap();
    assert_eq!(
        patch["metadata"]["annotations"][labels::REINIT],
        Value::Null
    );
    let done: ReinitRequest = serde_json::from_str(
        patch["metadata"]["annotations"][REQUEST_ANNOTATION]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert!(done.done);
    assert!(p.reinit.events.is_empty() && p.reinit.count.is_none());
    assert_eq!(phase_of(&p), FileIntegrityPhase::Active);
}

#[test]
fn a_tainted_node_without_toleration_is_no_reinit_target() {
    let hash = config::config_hash(DEFAULT_RULES);
    let mut o = observed(fi(
        workers(),
        json!({reinit::CONFIG_HASH_ANNOTATION: hash.as_str(), labels::REINIT: ""}),
    ));
    o.nodes[1] = node(
        "node-b",
        true,
        json!([{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]),
    );
    let p = plan(&o, &settings()).unwrap();
    assert_eq!(p.reinit.count, Some((vec!["demand"], nodes(&["node-a"]))));
}

#[test]
fn the_initial_delay_postpones_the_daemonset() {
    let spec = json!({"config": {"initialDelay": 3700}});
    let mut o = observed(fi(spec, json!({})));
    // An agent DaemonSet that exists does not count while the delay runs.
    o.daemonset = Some(daemonset(2, 2));
    let p = plan(&o, &settings()).unwrap();
    assert_eq!(p.daemonset, None);
    assert!(p.config_map.is_some(), "the rules are written at once");
    assert_eq!(phase_of(&p), FileIntegrityPhase::Pending);
    // Created an hour ago: 100 s left, woken a second after.
    assert_eq!(p.next, Next::After(Duration::from_secs(101)));

    let spec = json!({"config": {"initialDelay": 86400}});
    let p = plan(&observed(fi(spec, json!({}))), &settings()).unwrap();
    assert_eq!(
        p.next,
        Next::After(Duration::from_secs(300)),
        "at most the resync"
    );
}

#[test]
fn an_unusable_file_integrity_is_an_error() {
    let mut fi = fi(workers(), json!({}));
    fi.metadata.uid = None;
    assert!(matches!(
        plan(&observed(fi), &settings()),
        Err(Error::MissingObjectKey("metadata.uid"))
    ));
    let broken = fi_with_request("{not json");
    assert!(matches!(
        plan(&observed(broken), &settings()),
        Err(Error::InvalidReinitRequest(_))
    ));
}

fn fi_with_request(value: &str) -> FileIntegrity {
    fi(workers(), json!({REQUEST_ANNOTATION: value}))
}

#[test]
fn node_selector_matches_labels() {
    let sel = BTreeMap::from([("role".to_owned(), "worker".to_owned())]);
    let worker = BTreeMap::from([
        ("role".to_owned(), "worker".to_owned()),
        ("zone".to_owned(), "a".to_owned()),
    ]);
    let other = BTreeMap::from([("role".to_owned(), "infra".to_owned())]);
    assert!(selects(&sel, Some(&worker)));
    assert!(!selects(&sel, Some(&other)));
    assert!(!selects(&sel, None));
    assert!(selects(&BTreeMap::new(), None), "empty selector: all nodes");
}

#[test]
fn taints_need_a_matching_toleration() {
    let taint = |key: &str, value: Option<&str>, effect: &str| Taint {
        key: key.into(),
        value: value.map(Into::into),
        effect: effect.into(),
        ..Taint::default()
    };
    let toleration =
        |key: Option<&str>, op: &str, value: Option<&str>, effect: Option<&str>| Toleration {
            key: key.map(Into::into),
            operator: Some(op.into()),
            value: value.map(Into::into),
            effect: effect.map(Into::into),
            ..Toleration::default()
        };
    let dedicated = [taint("dedicated", Some("db"), "NoSchedule")];
    assert!(tolerates(&[], &[]));
    assert!(!tolerates(&[], &dedicated));
    assert!(tolerates(&[], &[taint("soft", None, "PreferNoSchedule")]));
    assert!(tolerates(
        &[toleration(
            Some("dedicated"),
            "Equal",
            Some("db"),
            Some("NoSchedule")
        )],
        &dedicated
    ));
    assert!(!tolerates(
        &[toleration(Some("dedicated"), "Equal", Some("web"), None)],
        &dedicated
    ));
    assert!(tolerates(
        &[toleration(Some("dedicated"), "Exists", None, None)],
        &dedicated
    ));
    assert!(!tolerates(
        &[toleration(
            Some("dedicated"),
            "Exists",
            None,
            Some("NoExecute")
        )],
        &dedicated
    ));
    assert!(tolerates(
        &[toleration(None, "Exists", None, None)],
        &dedicated
    ));
}

#[test]
fn node_event_actions_tell_results_apart() {
    let key = |condition, added| NodeEventKey {
        condition,
        added,
        changed: 1,
        removed: 0,
    };
    assert_eq!(
        node_event_action(&key(ScanCondition::Failed, 1)),
        "Failed-a1-c1-r0"
    );
    assert_ne!(
        node_event_action(&key(ScanCondition::Failed, 1)),
        node_event_action(&key(ScanCondition::Failed, 3))
    );
    let max = node_event_action(&NodeEventKey {
        condition: ScanCondition::Succeeded,
        added: i64::MIN,
        changed: i64::MIN,
        removed: i64::MIN,
    });
    assert!(max.len() <= 128, "{max}");
    assert_eq!(truncate_action("é".repeat(100)).len(), 128);
}
