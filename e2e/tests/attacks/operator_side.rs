//! Attacks from the threat model of issue 10 (root on one node, holding that node's agent
//! pod-bound token; whoever may write a FileIntegrity), each against the real deployment
//! (`make deploy`: RBAC and admission policies of config/) on the local cluster.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, PodSpec};
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use kube_fim_crds::{FileIntegrity, FileIntegrityNodeStatus, FileIntegrityPhase, labels};
use kube_fim_e2e::fixtures::{
    Operator, file_integrity, label_nodes, phase, wait_for_fi, wait_for_metric,
};
use kube_fim_e2e::{
    Poll, client, client_with_token, cluster_env, kubeconfig_path, kwok_nodes, repo_root,
    unique_suffix, wait_for,
};
use serde_json::json;

const OP_NS: &str = "kube-fim";
const OP_WAIT: Duration = Duration::from_secs(60);

/// `make deploy` once per test binary: the real RBAC and admission policies.
fn op_deployed() {
    static DEPLOYED: OnceLock<()> = OnceLock::new();
    DEPLOYED.get_or_init(|| {
        let env = cluster_env().unwrap();
        let kubectl = PathBuf::from(env.get("KUBECTL").expect("KUBECTL in e2e/.cluster/env"));
        let out = Command::new("make")
            .args(["--no-print-directory", "deploy"])
            .current_dir(repo_root())
            .env("KUBECONFIG", kubeconfig_path())
            .env("KUBECTL", kubectl)
            .env_remove("MAKEFLAGS")
            .env_remove("MFLAGS")
            .env_remove("MAKELEVEL")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "make deploy: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

/// Asserts that `write` is refused with a 403 whose message contains every one of `want`, and
/// returns the message. The policies take effect a moment after `make deploy` applied them
/// (the API server reloads its policy set every second), so the write is first tried as a dry
/// run (`write(true)`: admission runs, nothing is stored) until refused, then made for real
/// (`write(false)`), which must be refused too. A write accepted in that moment would otherwise
/// stay behind: a status under B's name saying node A, which once made this test fail.
async fn op_refused<T, F>(what: &str, write: F, want: &[&str]) -> String
where
    F: AsyncFn(bool) -> kube::Result<T>,
{
    let refusal = |result: kube::Result<T>| match result {
        Err(kube::Error::Api(s)) if s.code == 403 && want.iter().all(|w| s.message.contains(w)) => {
            Ok(s.message)
        }
        Err(e) => Err(e.to_string()),
        Ok(_) => Err("accepted".to_owned()),
    };
    wait_for(&format!("{what} (dry run)"), OP_WAIT, || async {
        Ok(match refusal(write(true).await) {
            Ok(message) => Poll::Ready(message),
            Err(e) => Poll::Pending(e),
        })
    })
    .await
    .unwrap();
    refusal(write(false).await)
        .unwrap_or_else(|e| panic!("{what}: refused as a dry run, but not for real: {e}"))
}

/// `params` as a dry run when `dry_run`.
fn patch_params(params: &PatchParams, dry_run: bool) -> PatchParams {
    PatchParams {
        dry_run,
        ..params.clone()
    }
}

/// A fim-agent pod on `node` in kube-fim (kwok runs nothing) and a client with a token bound to
/// it, as the agent of that node holds.
async fn op_agent_on(admin: &Client, node: &str, name: &str) -> (Client, Pod) {
    let pods: Api<Pod> = Api::namespaced(admin.clone(), OP_NS);
    let pod = pods
        .create(
            &PostParams::default(),
            &Pod {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    ..Default::default()
                },
                spec: Some(PodSpec {
                    node_name: Some(node.into()),
                    service_account_name: Some("fim-agent".into()),
                    containers: vec![Container {
                        name: "agent".into(),
                        image: Some("kube-fim/agent:e2e".into()),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let token = kube_fim_e2e::service_account_token(admin, OP_NS, "fim-agent", Some(&pod))
        .await
        .unwrap();
    (client_with_token(&token).await.unwrap(), pod)
}

/// A node status as the agent applies it (server-side apply by fim-agent).
fn op_status_body(
    fi: &FileIntegrity,
    name: &str,
    node: &str,
    condition: &str,
) -> serde_json::Value {
    let fi_name = fi.metadata.name.as_deref().unwrap();
    let result = json!({"condition": condition, "lastProbeTime": "2026-01-01T00:00:00Z"});
    json!({
        "apiVersion": "fim.kubefim.io/v1alpha1", "kind": "FileIntegrityNodeStatus",
        "metadata": {
            "name": name,
            "labels": {labels::OWNER: fi_name, labels::NODE: node},
            "ownerReferences": [{
                "apiVersion": "fim.kubefim.io/v1alpha1", "kind": "FileIntegrity",
                "name": fi_name, "uid": fi.metadata.uid.as_deref().unwrap(), "controller": false,
            }],
        },
        "nodeName": node,
        "results": [result.clone()],
        "lastResult": result,
    })
}

fn op_failure_cm(fi: &str, name: &str, node: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(
                [(labels::OWNER, fi), (labels::NODE, node)]
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
            ),
            ..Default::default()
        },
        data: Some([("integritylog".to_owned(), "forged".to_owned())].into()),
        ..Default::default()
    }
}

/// Item 1: node A's pod-bound token can neither create node B's status or failure ConfigMap
/// (which blocked B's agent for ever and left B looking clean), nor objects under arbitrary
/// names, nor take over, relabel or delete anything; the operator creates each node's objects
/// and A can only update its own. Before the fix the first two creates were accepted.
#[tokio::test]
async fn op_agent_token_cannot_create_take_over_or_block_another_nodes_objects() {
    op_deployed();
    let admin = client().await.unwrap();
    let nodes = kwok_nodes(&admin).await.unwrap();
    assert!(nodes.len() >= 2, "need two kwok nodes, found {nodes:?}");
    let (a, b) = (nodes[0].clone(), nodes[1].clone());
    let u = unique_suffix();
    let fi_name = format!("atk{u}");
    let label = format!("e2e.kubefim.io/atk{u}");
    label_nodes(&admin, &[a.clone(), b.clone()], &label, Some("yes")).await;

    let fis: Api<FileIntegrity> = Api::namespaced(admin.clone(), OP_NS);
    let fi = fis
        .create(
            &PostParams::default(),
            &file_integrity(&fi_name, json!({"nodeSelector": {label.clone(): "yes"}})),
        )
        .await
        .unwrap();
    let (agent, pod) = op_agent_on(&admin, &a, &format!("fim-agent-atk{u}")).await;
    let agent_fins: Api<FileIntegrityNodeStatus> = Api::namespaced(agent.clone(), OP_NS);
    let agent_cms: Api<ConfigMap> = Api::namespaced(agent.clone(), OP_NS);
    let admin_fins: Api<FileIntegrityNodeStatus> = Api::namespaced(admin.clone(), OP_NS);
    let admin_cms: Api<ConfigMap> = Api::namespaced(admin.clone(), OP_NS);
    let apply = PatchParams::apply(labels::AGENT_MANAGER).force();
    let status_b = FileIntegrityNodeStatus::name_for(&fi_name, &b);
    let status_a = FileIntegrityNodeStatus::name_for(&fi_name, &a);
    let cm_b = format!("{fi_name}-{b}-failed");
    let cm_a = format!("{fi_name}-{a}-failed");

    // Before the operator made anything: B's names, taken first by A (nodeName / label A).
    op_refused(
        "A creating <fi>-<B> saying node A",
        async |dry| {
            agent_fins
                .patch(
                    &status_b,
                    &patch_params(&apply, dry),
                    &Patch::Apply(op_status_body(&fi, &status_b, &a, "Succeeded")),
                )
                .await
        },
        &["fim-agent"],
    )
    .await;
    op_refused(
        "A creating <fi>-<B>-failed labelled A",
        async |dry| {
            agent_cms
                .create(
                    &PostParams {
                        dry_run: dry,
                        ..Default::default()
                    },
                    &op_failure_cm(&fi_name, &cm_b, &a),
                )
                .await
        },
        &["fim-agent"],
    )
    .await;
    // Arbitrary names, even saying its own node.
    op_refused(
        "A creating a status under an arbitrary name",
        async |dry| {
            let name = format!("junk{u}");
            agent_fins
                .patch(
                    &name,
                    &patch_params(&apply, dry),
                    &Patch::Apply(op_status_body(&fi, &name, &a, "Succeeded")),
                )
                .await
        },
        &["fim-agent"],
    )
    .await;
    op_refused(
        "A creating a ConfigMap under an arbitrary name",
        async |dry| {
            agent_cms
                .create(
                    &PostParams {
                        dry_run: dry,
                        ..Default::default()
                    },
                    &op_failure_cm(&fi_name, &format!("junk{u}"), &a),
                )
                .await
        },
        &["fim-agent"],
    )
    .await;
    // Even its own status: the operator creates it.
    op_refused(
        "A creating its own status",
        async |dry| {
            agent_fins
                .patch(
                    &status_a,
                    &patch_params(&apply, dry),
                    &Patch::Apply(op_status_body(&fi, &status_a, &a, "Succeeded")),
                )
                .await
        },
        &["fim-agent"],
    )
    .await;

    // The operator creates both nodes' objects.
    let operator = Operator::start(OP_NS);
    for (status, cm) in [(&status_a, &cm_a), (&status_b, &cm_b)] {
        wait_for(
            &format!("operator creates {status} and {cm}"),
            OP_WAIT,
            || async {
                let s = admin_fins.get_opt(status).await?;
                let c = admin_cms.get_opt(cm).await?;
                Ok(if s.is_some() && c.is_some() {
                    Poll::Ready(())
                } else {
                    Poll::Pending(format!("status {} cm {}", s.is_some(), c.is_some()))
                })
            },
        )
        .await
        .unwrap();
    }
    // A updates its own, as the agent does.
    agent_fins
        .patch(
            &status_a,
            &apply,
            &Patch::Apply(op_status_body(&fi, &status_a, &a, "Succeeded")),
        )
        .await
        .expect("A updates its own status");
    agent_cms
        .patch(
            &cm_a,
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"integritylog": "report"}})),
        )
        .await
        .expect("A updates its own failure ConfigMap");
    // ... but cannot take over B's (node B's status and ConfigMap), relabel or delete its own.
    op_refused(
        "A writing B's status",
        async |dry| {
            agent_fins
                .patch(
                    &status_b,
                    &patch_params(&apply, dry),
                    &Patch::Apply(op_status_body(&fi, &status_b, &a, "Succeeded")),
                )
                .await
        },
        &[&format!("belongs to node {b}")],
    )
    .await;
    op_refused(
        "A writing B's failure ConfigMap",
        async |dry| {
            agent_cms
                .patch(
                    &cm_b,
                    &patch_params(&PatchParams::default(), dry),
                    &Patch::Merge(json!({"data": {"integritylog": "forged"}})),
                )
                .await
        },
        &[&format!("belongs to node {b}")],
    )
    .await;
    op_refused(
        "A moving its status to another FileIntegrity",
        async |dry| {
            agent_fins
                .patch(
                    &status_a,
                    &patch_params(&PatchParams::default(), dry),
                    &Patch::Merge(json!({"metadata": {"labels": {labels::OWNER: "other"}}})),
                )
                .await
        },
        &["fim-agent"],
    )
    .await;
    op_refused(
        "A deleting its own status",
        async |dry| {
            agent_fins
                .delete(
                    &status_a,
                    &DeleteParams {
                        dry_run: dry,
                        ..Default::default()
                    },
                )
                .await
        },
        &["fim-agent"],
    )
    .await;
    op_refused(
        "A deleting its own failure ConfigMap",
        async |dry| {
            agent_cms
                .delete(
                    &cm_a,
                    &DeleteParams {
                        dry_run: dry,
                        ..Default::default()
                    },
                )
                .await
        },
        &["fim-agent"],
    )
    .await;

    // The operator counts nodes: B has not reported, so it is not Active.
    let fi_now = wait_for_fi(&fis, &fi_name, "A succeeded, B initialising", |fi| {
        fi.status
            .as_ref()
            .is_some_and(|s| s.nodes == 2 && s.succeeded == 1 && s.initializing == 1)
    })
    .await;
    assert_eq!(phase(&fi_now), Some(FileIntegrityPhase::Initializing));

    // Item 4: A's result (lastProbeTime 2026-01-01) is far older than twice gracePeriod: A is
    // stale, in a condition naming it and in the gauge the NodeIntegrityCheckStale alert reads.
    wait_for_fi(&fis, &fi_name, "NodesStale names node A", |fi| {
        fi.status.as_ref().is_some_and(|s| {
            s.conditions.iter().any(|c| {
                c.type_ == "NodesStale" && c.status == "True" && c.message.contains(a.as_str())
            })
        })
    })
    .await;
    wait_for_metric(
        &operator,
        &format!("file_integrity_operator_node_stale{{node=\"{a}\"}} 1"),
    )
    .await;

    // Clean up.
    drop(operator);
    fis.delete(&fi_name, &DeleteParams::default())
        .await
        .unwrap();
    for name in [&status_a, &status_b] {
        let _ = admin_fins.delete(name, &DeleteParams::default()).await;
    }
    for name in [&cm_a, &cm_b] {
        let _ = admin_cms.delete(name, &DeleteParams::default()).await;
    }
    let _ = Api::<Pod>::namespaced(admin.clone(), OP_NS)
        .delete(
            &pod.metadata.name.unwrap(),
            &DeleteParams::default().grace_period(0),
        )
        .await;
    label_nodes(&admin, &[a, b], &label, None).await;
}
