//! `status.containerRemediations` (pure): what the operator did about a tampered container, for
//! the agent of that node to send as a syslog remediation line (issue 15). The operator performs
//! `restart` and `rollback` but sends no syslog itself: the agents hold the destination, the CA
//! and the queue, and they read this status, which only the operator can write.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube_fim_crds::{
    CONTAINER_REMEDIATION_TTL_SECONDS, ContainerRemediationRecord, MAX_CONTAINER_REMEDIATIONS,
};

use super::plan::{Action, Reported};

/// Between what was tried and the error, in the message of a remediation that failed (no
/// object name contains a space).
const FAILED: &str = " failed: ";

/// Cuts `s` to at most `max` bytes on a character boundary.
fn cut(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// The `action` and `message=` of a carried-out (or failed) remediation: integrity-sum's
/// `Restart pod <pod>` (seed 000), `Rollback deployment <d> of pod <pod> to revision <n>`, with
/// `failed: <error>` appended when the API refused.
pub fn action_message(action: &Action, error: Option<&str>) -> (&'static str, String) {
    let (kind, text) = match action {
        Action::DeletePod { pod, .. } => ("restart", format!("Restart pod {pod}")),
        Action::Rollback {
            deployment,
            revision,
            ..
        } => (
            "rollback",
            format!("Rollback deployment {deployment} to revision {revision}"),
        ),
    };
    match error {
        Some(e) => (kind, cut(&format!("{text}{FAILED}{e}"), 1024)),
        None => (kind, text),
    }
}

/// The `message=` of a remediation the backoff stopped.
pub fn suppressed_message(pod: &str, workload: &str, max: u32, window: i64) -> String {
    cut(
        &format!(
            "Remediation of pod {pod} suppressed: {max} remediations of {workload} within \
             {window}s already"
        ),
        1024,
    )
}

/// The entry for `rep`'s container, whose pod belongs to `workload`.
pub fn record(
    rep: &Reported,
    workload: &str,
    action: &str,
    message: String,
    now: Timestamp,
) -> ContainerRemediationRecord {
    let r = &rep.result;
    ContainerRemediationRecord {
        node_name: rep.node.clone(),
        namespace: r.namespace.clone(),
        pod: r.pod.clone(),
        pod_uid: r.pod_uid.clone(),
        container: r.container.clone(),
        image: cut(&r.image, 1024),
        action: action.to_owned(),
        workload: cut(workload, 1024),
        message,
        file: r
            .changed_paths
            .first()
            .map(|p| cut(p, 4096))
            .unwrap_or_default(),
        time: Time(now),
    }
}

/// What `records` (an earlier leader's, in the FileIntegrity's status) say the operator already
/// did: the pods remediated or suppressed (not again for the same pod), and the times of the
/// remediations carried out per workload (the `maxRemediations` count). A remediation that
/// failed counts for neither: it is tried again.
pub fn remembered(
    records: &[ContainerRemediationRecord],
) -> (BTreeSet<String>, BTreeMap<String, Vec<i64>>) {
    let mut pods = BTreeSet::new();
    let mut history: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for r in records {
        let failed = r.message.contains(FAILED);
        match r.action.as_str() {
            "suppressed" => {
                pods.insert(r.pod_uid.clone());
            }
            "restart" | "rollback" if !failed => {
                pods.insert(r.pod_uid.clone());
                if !r.workload.is_empty() {
                    history
                        .entry(r.workload.clone())
                        .or_default()
                        .push(r.time.0.as_second());
                }
            }
            _ => {}
        }
    }
    (pods, history)
}

/// The new list: `old` without entries past the TTL, then `new`; the newest
/// [`MAX_CONTAINER_REMEDIATIONS`] kept. `None` when nothing changes (no write).
pub fn merge(
    old: &[ContainerRemediationRecord],
    new: Vec<ContainerRemediationRecord>,
    now: Timestamp,
) -> Option<Vec<ContainerRemediationRecord>> {
    let fresh = |r: &ContainerRemediationRecord| {
        now.as_second() - r.time.0.as_second() < CONTAINER_REMEDIATION_TTL_SECONDS
    };
    let mut out: Vec<_> = old.iter().filter(|r| fresh(r)).cloned().collect();
    out.extend(new);
    let excess = out.len().saturating_sub(MAX_CONTAINER_REMEDIATIONS);
    out.drain(..excess);
    (out != old).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube_fim_crds::{ContainerResult, ScanCondition};

    fn reported() -> Reported {
        Reported {
            node: "worker-1".into(),
            result: ContainerResult {
                namespace: "team".into(),
                pod: "web-1".into(),
                container: "web".into(),
                pod_uid: "p1".into(),
                container_id: "containerd://abc".into(),
                image: "localhost/web:2".into(),
                image_id: String::new(),
                baseline_source: "FirstObserved".into(),
                condition: ScanCondition::Failed,
                last_probe_time: Time(Timestamp::from_second(1000).unwrap()),
                files_added: 0,
                files_changed: 2,
                files_removed: 0,
                changed_paths: vec!["/srv/html/index.html".into(), "/etc/web/web.conf".into()],
                error_message: None,
                last_remediation: None,
            },
        }
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    #[test]
    fn messages_say_what_the_operator_did() {
        let delete = Action::DeletePod {
            namespace: "team".into(),
            pod: "web-1".into(),
            uid: "p1".into(),
        };
        assert_eq!(
            action_message(&delete, None),
            ("restart", "Restart pod web-1".to_owned())
        );
        assert_eq!(
            action_message(&delete, Some("pods \"web-1\" is forbidden")).1,
            "Restart pod web-1 failed: pods \"web-1\" is forbidden"
        );
        let rollback = Action::Rollback {
            namespace: "team".into(),
            deployment: "web".into(),
            resource_version: "7".into(),
            revision: 3,
            template: Box::default(),
        };
        assert_eq!(
            action_message(&rollback, None),
            (
                "rollback",
                "Rollback deployment web to revision 3".to_owned()
            )
        );
        assert_eq!(
            suppressed_message("web-1", "team/ReplicaSet/web-6d4f", 3, 600),
            "Remediation of pod web-1 suppressed: 3 remediations of team/ReplicaSet/web-6d4f \
             within 600s already"
        );
        let long = "é".repeat(2000);
        assert!(action_message(&delete, Some(&long)).1.len() <= 1024);
    }

    #[test]
    fn a_record_names_the_container_and_its_first_tampered_file() {
        let r = record(
            &reported(),
            "team/ReplicaSet/web-6d4f",
            "restart",
            "Restart pod web-1".into(),
            at(2000),
        );
        assert_eq!(
            (
                r.node_name.as_str(),
                r.namespace.as_str(),
                r.pod.as_str(),
                r.pod_uid.as_str(),
                r.container.as_str(),
                r.image.as_str(),
                r.file.as_str()
            ),
            (
                "worker-1",
                "team",
                "web-1",
                "p1",
                "web",
                "localhost/web:2",
                "/srv/html/index.html"
            )
        );
        assert_eq!(r.time.0, at(2000));
        assert_eq!(r.workload, "team/ReplicaSet/web-6d4f");
    }

    #[test]
    fn what_an_earlier_leader_did_is_remembered_but_not_its_failures() {
        let workload = "team/ReplicaSet/web-6d4f";
        let rec = |uid: &str, action: &str, message: &str, t: i64| {
            let mut rep = reported();
            rep.result.pod_uid = uid.into();
            record(&rep, workload, action, message.into(), at(t))
        };
        let (failed_kind, failed) = action_message(
            &Action::DeletePod {
                namespace: "team".into(),
                pod: "web-4".into(),
                uid: "p4".into(),
            },
            Some("connection refused"),
        );
        let records = [
            rec("p1", "restart", "Restart pod web-1", 1000),
            rec(
                "p2",
                "rollback",
                "Rollback deployment web to revision 1",
                1100,
            ),
            rec(
                "p3",
                "suppressed",
                "Remediation of pod web-3 suppressed",
                1200,
            ),
            rec("p4", failed_kind, &failed, 1300),
        ];
        let (pods, history) = remembered(&records);
        assert_eq!(
            pods,
            BTreeSet::from(["p1".into(), "p2".into(), "p3".into()])
        );
        assert_eq!(
            history,
            BTreeMap::from([(workload.into(), vec![1000, 1100])])
        );
        // Entries written before the workload was recorded count for the pod only.
        let mut old = rec("p5", "restart", "Restart pod web-5", 1400);
        old.workload.clear();
        let (pods, history) = remembered(&[old]);
        assert!(pods.contains("p5") && history.is_empty());
    }

    #[test]
    fn old_entries_expire_and_the_list_is_capped() {
        let rec = |t: i64| record(&reported(), "w", "restart", format!("r{t}"), at(t));
        // Nothing new, nothing expired: no write.
        let old = vec![rec(1000)];
        assert_eq!(merge(&old, vec![], at(1500)), None);
        // Expired (600 s) entries go, new ones are appended.
        let got = merge(&old, vec![rec(1700)], at(1700)).unwrap();
        assert_eq!(got, [rec(1700)]);
        assert_eq!(merge(&old, vec![], at(1600)), Some(vec![]));
        // The newest 100 stay.
        let many: Vec<_> = (0..100).map(|i| rec(2000 + i)).collect();
        let got = merge(&many, vec![rec(2100), rec(2101)], at(2101)).unwrap();
        assert_eq!(got.len(), 100);
        assert_eq!(got[0], rec(2002));
        assert_eq!(got[99], rec(2101));
    }
}
