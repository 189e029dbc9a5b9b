//! fim-operator's lifecycle on the local control plane: leader election between two replicas
//! (one leader, the only writer; a standby takes over when the leader is killed), a restart
//! that restores `node_failed` from the node statuses, a deleted node's status removed, and a
//! deleted FileIntegrity leaving nothing behind (garbage collection by kube-controller-manager).
//!
//! Every test has its own namespace (so its own Lease) and its own kwok node; the shared
//! kwok-node-N are never touched. The operator binary runs as a child process: build it first
//! with `cargo build -p kube-fim-operator` (`make e2e` does).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use kube_fim_crds::{FileIntegrity, FileIntegrityNodeStatus, FileIntegrityPhase, labels};
use kube_fim_e2e::fixtures::{Operator, namespace_with_agent_account};
use kube_fim_e2e::{KwokNodes, Poll, TestNamespace, apply_crds, client, wait_for};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);
/// The operator's Lease (operator/src/leader.rs).
const LEASE: &str = "fim-operator-leader";
/// A short lease so that a takeover after a kill is quick; the leader renews after 2/3 of it.
const LEASE_SECONDS: u64 = 10;

/// One operator replica with a short lease; see [`Operator::start_replica`].
fn replica(namespace: &str, identity: &str) -> Operator {
    Operator::start_replica(
        namespace,
        identity,
        &["--lease-seconds", &LEASE_SECONDS.to_string()],
    )
}

/// The `file_integrity_operator_leader` gauge, if the replica answers.
async fn leader_gauge(operator: &Operator) -> Option<u8> {
    let (code, body) = operator.get("/metrics").await.ok()?;
    if code != 200 {
        return None;
    }
    body.lines()
        .find_map(|l| l.strip_prefix("file_integrity_operator_leader "))
        .and_then(|v| v.trim().parse().ok())
}

/// A namespace with the agents' service account, a kwok node of its own (deleted when dropped)
/// and the label `e2e.kubefim.io/<namespace>=yes` on it.
async fn setup(client: &Client, prefix: &str) -> (TestNamespace, KwokNodes, String) {
    let ns = namespace_with_agent_account(client, prefix).await;
    let label = format!("e2e.kubefim.io/{}", ns.name);
    let labels = BTreeMap::from([(label.clone(), "yes".to_owned())]);
    let node = KwokNodes::create(client, &ns.name, 1, &labels, &[])
        .await
        .unwrap();
    (ns, node, label)
}

/// A FileIntegrity on the nodes labelled `label=yes`.
async fn create_file_integrity(fis: &Api<FileIntegrity>, name: &str, label: &str) -> FileIntegrity {
    let fi: FileIntegrity = serde_json::from_value(json!({
        "apiVersion": "fim.kubefim.io/v1alpha1", "kind": "FileIntegrity",
        "metadata": {"name": name},
        "spec": {"nodeSelector": {label: "yes"}, "config": {"gracePeriod": 20}},
    }))
    .unwrap();
    fis.create(&PostParams::default(), &fi).await.unwrap()
}

/// Waits until `fi` satisfies `check`, describing its status meanwhile.
async fn wait_for_fi(
    fis: &Api<FileIntegrity>,
    name: &str,
    what: &str,
    check: impl Fn(&FileIntegrity) -> bool,
) -> FileIntegrity {
    wait_for(what, WAIT, || async {
        let fi = fis.get(name).await?;
        Ok(if check(&fi) {
            Poll::Ready(fi)
        } else {
            Poll::Pending(format!(
                "generation {:?}, status: {:?}",
                fi.metadata.generation, fi.status
            ))
        })
    })
    .await
    .unwrap()
}

fn phase(fi: &FileIntegrity) -> Option<FileIntegrityPhase> {
    fi.status.as_ref().map(|s| s.phase)
}

/// A node status as the agent writes it: server-side apply by the agent's field manager,
/// named `<fi>-<node>`, labelled with and owned by the FileIntegrity. Written with the admin
/// client (the agent-token path is covered by operator.rs).
async fn apply_node_status(
    statuses: &Api<FileIntegrityNodeStatus>,
    fi: &FileIntegrity,
    node: &str,
    result: serde_json::Value,
) {
    let fi_name = fi.metadata.name.as_deref().unwrap();
    let name = FileIntegrityNodeStatus::name_for(fi_name, node);
    let body = json!({
        "apiVersion": "fim.kubefim.io/v1alpha1", "kind": "FileIntegrityNodeStatus",
        "metadata": {
            "name": name,
            "labels": {labels::OWNER: fi_name, labels::NODE: node},
            "ownerReferences": [owner_reference(fi)],
        },
        "nodeName": node,
        "results": [result.clone()],
        "lastResult": result,
    });
    statuses
        .patch(
            &name,
            &PatchParams::apply(labels::AGENT_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .unwrap();
}

fn owner_reference(fi: &FileIntegrity) -> serde_json::Value {
    json!({
        "apiVersion": "fim.kubefim.io/v1alpha1", "kind": "FileIntegrity",
        "name": fi.metadata.name.as_deref().unwrap(),
        "uid": fi.metadata.uid.as_deref().unwrap(),
    })
}

fn failed_result(ns: &str, log: &str) -> serde_json::Value {
    json!({
        "condition": "Failed", "lastProbeTime": "2026-01-01T00:00:00Z",
        "filesAdded": 1, "filesChanged": 1,
        "resultConfigMapName": log, "resultConfigMapNamespace": ns,
    })
}

/// Waits until `operator`'s `/metrics` contains `want`.
async fn wait_for_metric(operator: &Operator, want: &str) {
    wait_for(&format!("metric {want}"), WAIT, || async {
        let (code, body) = operator.get("/metrics").await?;
        Ok(if code == 200 && body.contains(want) {
            Poll::Ready(())
        } else {
            Poll::Pending(format!("HTTP {code}:\n{body}"))
        })
    })
    .await
    .unwrap();
}

async fn wait_ready(operator: &Operator, body: &str) {
    wait_for(
        &format!("{} /readyz 200 {body:?}", operator.identity),
        WAIT,
        || async {
            let (code, text) = operator.readyz().await;
            Ok(if code == 200 && text == body {
                Poll::Ready(())
            } else {
                Poll::Pending(format!("{code} {text}"))
            })
        },
    )
    .await
    .unwrap();
}

async fn lease_holder(leases: &Api<Lease>) -> kube_fim_e2e::Result<Option<String>> {
    Ok(leases
        .get_opt(LEASE)
        .await?
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity))
}

/// The reportingInstance of every event about FileIntegrity `fi`.
async fn event_reporters(events: &Api<Event>, fi: &str) -> kube_fim_e2e::Result<Vec<String>> {
    Ok(events
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(fi))
        .map(|e| e.reporting_instance.unwrap_or_default())
        .collect())
}

#[tokio::test]
async fn two_replicas_elect_one_writer_and_the_standby_takes_over_when_it_is_killed() {
    let client = client().await.unwrap();
    let (ns, _kwok, label) = setup(&client, "ha-leader").await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns.name);
    let mut a = replica(&ns.name, "replica-a");
    let mut b = replica(&ns.name, "replica-b");

    // Exactly one leads: it holds the Lease, says so on /readyz and in its leader gauge; the
    // other is a ready standby.
    let leader = wait_for(
        "one leader holding the Lease and one ready standby",
        WAIT,
        || async {
            let holder = lease_holder(&leases).await?;
            let mut seen = Vec::new();
            for op in [&a, &b] {
                let (code, body) = op.readyz().await;
                seen.push((op.identity.clone(), code, body, leader_gauge(op).await));
            }
            let role = |id: &str| {
                let (_, code, body, gauge) = seen.iter().find(|s| s.0 == id).unwrap();
                match (code, body.as_str(), gauge) {
                    (200, "ok: leader", Some(1)) => "leader",
                    (200, "ok: standby", Some(0)) => "standby",
                    _ => "other",
                }
            };
            Ok(match holder.as_deref() {
                Some(h @ ("replica-a" | "replica-b"))
                    if role(h) == "leader"
                        && seen.iter().all(|s| s.0 == h || role(&s.0) == "standby") =>
                {
                    Poll::Ready(h.to_owned())
                }
                _ => Poll::Pending(format!("lease holder {holder:?}, replicas {seen:?}")),
            })
        },
    )
    .await
    .unwrap();
    let (leading, standing_by) = if leader == "replica-a" {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };

    // Only the leader writes: the status, events (reportingInstance = its POD_NAME) and its
    // metrics come from it; the standby never started a controller.
    let fis: Api<FileIntegrity> = Api::namespaced(client.clone(), &ns.name);
    create_file_integrity(&fis, "ha", &label).await;
    wait_for_fi(&fis, "ha", "phase Initializing", |fi| {
        phase(fi) == Some(FileIntegrityPhase::Initializing)
    })
    .await;
    let events: Api<Event> = Api::namespaced(client.clone(), &ns.name);
    let reporters = wait_for("FileIntegrityStatus events", WAIT, || async {
        let r = event_reporters(&events, "ha").await?;
        Ok(if r.len() >= 2 {
            Poll::Ready(r)
        } else {
            Poll::Pending(format!("reporters {r:?}"))
        })
    })
    .await
    .unwrap();
    assert!(reporters.iter().all(|r| *r == leader), "{reporters:?}");
    wait_for_metric(
        leading,
        "file_integrity_operator_phase_total{phase=\"Initializing\"} 1",
    )
    .await;
    let (_, standby_metrics) = standing_by.get("/metrics").await.unwrap();
    assert!(
        !standby_metrics.contains("file_integrity_operator_phase_total{"),
        "the standby reconciled something:\n{standby_metrics}"
    );
    assert!(
        !standing_by.log().contains("starting the controller"),
        "{}",
        standing_by.log()
    );
    assert_eq!(
        lease_holder(&leases).await.unwrap().as_deref(),
        Some(leader.as_str())
    );

    // Kill the leader (SIGKILL: the Lease is not released) and change the FileIntegrity right
    // away. The standby takes the Lease once it expires (within LEASE_SECONDS of the last
    // renewal, plus up to 1 s of the lease manager's random back-off) and reconciles the change.
    leading.kill();
    let killed = Instant::now();
    let fi = fis
        .patch(
            "ha",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"fullScanEvery": 3600}})),
        )
        .await
        .unwrap();
    let generation = fi.metadata.generation;
    let survivor = standing_by.identity.clone();
    wait_for(
        "the standby holding the Lease and leading",
        Duration::from_secs(LEASE_SECONDS + 30),
        || async {
            let holder = lease_holder(&leases).await?;
            let (code, body) = standing_by.readyz().await;
            Ok(
                if holder.as_deref() == Some(survivor.as_str())
                    && code == 200
                    && body == "ok: leader"
                {
                    Poll::Ready(())
                } else {
                    Poll::Pending(format!(
                        "lease holder {holder:?}, survivor /readyz {code} {body}"
                    ))
                },
            )
        },
    )
    .await
    .unwrap();
    let took_over = killed.elapsed();
    eprintln!("takeover after the kill: {took_over:?}");
    assert!(
        took_over <= Duration::from_secs(LEASE_SECONDS + 3),
        "takeover took {took_over:?} with a {LEASE_SECONDS} s lease"
    );
    let fi = wait_for_fi(&fis, "ha", "the change after the kill reconciled", |fi| {
        fi.status.as_ref().and_then(|s| s.observed_generation) == generation
    })
    .await;
    assert_eq!(phase(&fi), Some(FileIntegrityPhase::Initializing));
    let dss: Api<DaemonSet> = Api::namespaced(client.clone(), &ns.name);
    let ds = dss.get("fim-agent-ha").await.unwrap();
    let ds_text = serde_json::to_string(&ds.spec).unwrap();
    assert!(
        ds_text.contains("\"--full-scan-every\""),
        "spec.fullScanEvery reached the DaemonSet: {ds_text}"
    );

    drop(a);
    drop(b);
    ns.delete().await.unwrap();
}

#[tokio::test]
async fn a_restarted_operator_restores_node_failed_from_the_node_statuses() {
    let client = client().await.unwrap();
    let (ns, kwok, label) = setup(&client, "ha-restart").await;
    let node = kwok.names[0].clone();
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns.name);
    let mut first = replica(&ns.name, "first");
    let fis: Api<FileIntegrity> = Api::namespaced(client.clone(), &ns.name);
    let fi = create_file_integrity(&fis, "rs", &label).await;
    let statuses: Api<FileIntegrityNodeStatus> = Api::namespaced(client.clone(), &ns.name);
    let log = format!("rs-{}-failed", node);
    apply_node_status(&statuses, &fi, &node, failed_result(&ns.name, &log)).await;
    let gauge = format!("file_integrity_operator_node_failed{{node=\"{}\"}} 1", node);
    wait_for_metric(&first, &gauge).await;

    // A graceful stop releases the Lease, so the next replica leads at once.
    let status = first.terminate().await;
    assert!(status.success(), "{status:?}: {}", first.log());
    assert_eq!(lease_holder(&leases).await.unwrap(), None);

    let second = replica(&ns.name, "second");
    wait_ready(&second, "ok: leader").await;
    wait_for_metric(&second, &gauge).await;
    // Nothing new was written in between: the gauge comes from the existing node status.
    let fi = fis.get("rs").await.unwrap();
    assert_eq!(fi.status.map(|s| s.failed), Some(1));

    drop(second);
    drop(node);
    ns.delete().await.unwrap();
}

#[tokio::test]
async fn the_status_of_a_deleted_node_is_removed() {
    let client = client().await.unwrap();
    let (ns, kwok, label) = setup(&client, "ha-node").await;
    let node = kwok.names[0].clone();
    let operator = replica(&ns.name, "only");
    let fis: Api<FileIntegrity> = Api::namespaced(client.clone(), &ns.name);
    let fi = create_file_integrity(&fis, "nd", &label).await;
    let statuses: Api<FileIntegrityNodeStatus> = Api::namespaced(client.clone(), &ns.name);
    apply_node_status(
        &statuses,
        &fi,
        &node,
        failed_result(&ns.name, &format!("nd-{}-failed", node)),
    )
    .await;
    wait_for_fi(&fis, "nd", "phase Active", |fi| {
        phase(fi) == Some(FileIntegrityPhase::Active)
    })
    .await;
    let name = FileIntegrityNodeStatus::name_for("nd", &node);
    assert!(statuses.get_opt(&name).await.unwrap().is_some());
    let gauge = format!("file_integrity_operator_node_failed{{node=\"{}\"}}", node);
    wait_for_metric(&operator, &format!("{gauge} 1")).await;

    let nodes: Api<Node> = Api::all(client.clone());
    nodes.delete(&node, &DeleteParams::default()).await.unwrap();
    wait_for(&format!("node status {name} deleted"), WAIT, || async {
        Ok(match statuses.get_opt(&name).await? {
            None => Poll::Ready(()),
            Some(s) => Poll::Pending(format!("still there: {:?}", s.spec)),
        })
    })
    .await
    .unwrap();
    // Its node_failed series goes too (an alert on a node that is gone clears).
    wait_for(
        "no node_failed series of the deleted node",
        WAIT,
        || async {
            let (code, body) = operator.get("/metrics").await?;
            Ok(if code == 200 && !body.contains(&gauge) {
                Poll::Ready(())
            } else {
                Poll::Pending(format!("HTTP {code}:\n{body}"))
            })
        },
    )
    .await
    .unwrap();

    drop(operator);
    drop(node);
    ns.delete().await.unwrap();
}

#[tokio::test]
async fn deleting_a_file_integrity_leaves_nothing_behind() {
    let client = client().await.unwrap();
    let (ns, kwok, label) = setup(&client, "ha-gc").await;
    let node = kwok.names[0].clone();
    let operator = replica(&ns.name, "only");
    let fis: Api<FileIntegrity> = Api::namespaced(client.clone(), &ns.name);
    let fi = create_file_integrity(&fis, "gc", &label).await;

    // What the operator creates: the rules ConfigMap, the DaemonSet and its pod on the node.
    let owned = format!("{}=gc", labels::OWNER);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    wait_for("the agent pod on the test's node", WAIT, || async {
        let on: Vec<String> = pods
            .list(&ListParams::default().labels(&owned))
            .await?
            .items
            .into_iter()
            .filter_map(|p| p.spec.and_then(|s| s.node_name))
            .collect();
        Ok(if on == [node.clone()] {
            Poll::Ready(())
        } else {
            Poll::Pending(format!("agent pods on {on:?}"))
        })
    })
    .await
    .unwrap();
    // What the agent creates: its node status and the failure ConfigMap, both owned by the
    // FileIntegrity and labelled with it and the node.
    let statuses: Api<FileIntegrityNodeStatus> = Api::namespaced(client.clone(), &ns.name);
    let log = format!("gc-{}-failed", node);
    apply_node_status(&statuses, &fi, &node, failed_result(&ns.name, &log)).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let failure: ConfigMap = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {
            "name": log,
            "labels": {labels::OWNER: "gc", labels::NODE: node},
            "ownerReferences": [owner_reference(&fi)],
        },
        "data": {"integritylog": "changed: /etc/passwd\n"},
    }))
    .unwrap();
    cms.patch(
        &log,
        &PatchParams::apply(labels::AGENT_MANAGER).force(),
        &Patch::Apply(&failure),
    )
    .await
    .unwrap();
    let dss: Api<DaemonSet> = Api::namespaced(client.clone(), &ns.name);
    wait_for_fi(&fis, "gc", "one failed node in the status", |fi| {
        fi.status.as_ref().is_some_and(|s| s.failed == 1)
    })
    .await;
    assert!(dss.get_opt("fim-agent-gc").await.unwrap().is_some());
    assert!(cms.get_opt("fim-config-gc").await.unwrap().is_some());

    // Everything goes with the FileIntegrity, by owner references (garbage collector).
    fis.delete("gc", &DeleteParams::default()).await.unwrap();
    wait_for("nothing left of FileIntegrity gc", WAIT, || async {
        let mut left = Vec::new();
        if fis.get_opt("gc").await?.is_some() {
            left.push("FileIntegrity gc".to_owned());
        }
        if dss.get_opt("fim-agent-gc").await?.is_some() {
            left.push("DaemonSet fim-agent-gc".to_owned());
        }
        for cm in ["fim-config-gc", log.as_str()] {
            if cms.get_opt(cm).await?.is_some() {
                left.push(format!("ConfigMap {cm}"));
            }
        }
        let by_label = ListParams::default().labels(&owned);
        for s in statuses.list(&by_label).await?.items {
            left.push(format!("FileIntegrityNodeStatus {:?}", s.metadata.name));
        }
        for p in pods.list(&by_label).await?.items {
            left.push(format!("Pod {:?}", p.metadata.name));
        }
        for cm in cms.list(&by_label).await?.items {
            left.push(format!("ConfigMap {:?}", cm.metadata.name));
        }
        Ok(if left.is_empty() {
            Poll::Ready(())
        } else {
            Poll::Pending(format!("left: {left:?}"))
        })
    })
    .await
    .unwrap();
    // And the operator does not bring anything back.
    let all: BTreeMap<&str, usize> = BTreeMap::from([
        (
            "daemonsets",
            dss.list(&ListParams::default()).await.unwrap().items.len(),
        ),
        (
            "node statuses",
            statuses
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .len(),
        ),
    ]);
    assert!(all.values().all(|n| *n == 0), "{all:?}");

    drop(operator);
    drop(node);
    ns.delete().await.unwrap();
}

#[tokio::test]
async fn a_leader_whose_lease_is_taken_stops_and_exits() {
    let client = client().await.unwrap();
    apply_crds(&client).await.unwrap();
    let ns = TestNamespace::create(&client, "ha-fence").await.unwrap();
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns.name);
    let mut operator = replica(&ns.name, "fenced");
    wait_ready(&operator, "ok: leader").await;

    // Someone else holds the Lease now (as after a partition in which a standby took over).
    let now = k8s_openapi::jiff::Timestamp::now();
    leases
        .patch(
            LEASE,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {
                "holderIdentity": "intruder",
                "renewTime": k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(now),
                "leaseDurationSeconds": 3600,
            }})),
        )
        .await
        .unwrap();
    let status = wait_for(
        "the former leader to exit",
        Duration::from_secs(LEASE_SECONDS + 10),
        || {
            let polled = match operator.child.try_wait() {
                Ok(Some(status)) => Poll::Ready(status),
                Ok(None) => Poll::Pending("still running".into()),
                Err(e) => Poll::Pending(e.to_string()),
            };
            async move { Ok(polled) }
        },
    )
    .await
    .unwrap();
    assert!(!status.success(), "{status:?}");
    let log = operator.log();
    assert!(log.contains("lost leadership"), "{log}");
    // It did not take the Lease back on its way out.
    assert_eq!(
        lease_holder(&leases).await.unwrap().as_deref(),
        Some("intruder")
    );
    ns.delete().await.unwrap();
}
