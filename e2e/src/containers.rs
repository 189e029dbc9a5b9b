//! Helpers of the container suites on the real node (issue 14): the web test images, the
//! agent's extra RBAC, Deployments pinned to the node, waiting for pods and container results,
//! writing into a container as an intruder would; used by e2e/tests/containers.rs and
//! container_syslog.rs.

use std::process::Command;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{ListParams, PostParams};
use kube::{Api, Client, ResourceExt};
use kube_fim_crds::{ContainerResult, FileIntegrityNodeStatus};
use serde_json::json;

use crate::fixtures::WAIT;
use crate::real_node::RealNode;
use crate::{Poll, repo_root, wait_for};

pub const AGENT_IMAGE: &str = "localhost/fim-agent:test";
pub const WEB_1: &str = "localhost/kube-fim-web:1";
pub const WEB_2: &str = "localhost/kube-fim-web:2";
pub const WEB_ESCAPE: &str = "localhost/kube-fim-web:escape";
pub const INDEX: &str = "/srv/html/index.html";

/// Builds and imports the web images into the real node's containerd.
pub fn import_web_images(node: &RealNode) {
    let out = Command::new(repo_root().join("hack/build-test-images.sh"))
        .args([
            "--import",
            node.containerd_socket.to_str().unwrap(),
            "web-1",
            "web-2",
            "web-escape",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "build-test-images.sh web-1 web-2 web-escape: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The agent's reads beyond grant_agent_rbac: Snapshots of the namespace, pods cluster-wide (as
/// config/agent grants them).
pub async fn grant_container_rbac(client: &Client, ns: &str) {
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": "fim-agent-snapshots"},
        "rules": [{"apiGroups": ["fim.kubefim.io"], "resources": ["snapshots"], "verbs": ["get", "list", "watch"]}],
    }))
    .unwrap();
    Api::<Role>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "fim-agent-snapshots"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "fim-agent-snapshots"},
        "subjects": [{"kind": "ServiceAccount", "name": "fim-agent", "namespace": ns}],
    }))
    .unwrap();
    Api::<RoleBinding>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    let name = format!("fim-agent-pods-{ns}");
    let cr: ClusterRole = serde_json::from_value(json!({
        "metadata": {"name": name},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
                  {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]}],
    }))
    .unwrap();
    Api::<ClusterRole>::all(client.clone())
        .create(&PostParams::default(), &cr)
        .await
        .unwrap();
    let crb: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": "fim-agent", "namespace": ns}],
    }))
    .unwrap();
    Api::<ClusterRoleBinding>::all(client.clone())
        .create(&PostParams::default(), &crb)
        .await
        .unwrap();
}

pub fn deployment(
    name: &str,
    image: &str,
    annotations: serde_json::Value,
    args: &[&str],
    node: &str,
) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "revisionHistoryLimit": 10,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": annotations},
                "spec": {
                    "nodeSelector": {"kubernetes.io/hostname": node},
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{"name": "web", "image": image, "imagePullPolicy": "Never", "args": args}],
                },
            },
        },
    }))
    .unwrap()
}

/// The running pod of Deployment `app` other than `not` (a uid), once its container runs.
pub async fn running_pod(client: &Client, ns: &str, app: &str, not: Option<&str>) -> Pod {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    wait_for(&format!("a running pod of {app}"), WAIT * 2, || async {
        let list = pods
            .list(&ListParams::default().labels(&format!("app={app}")))
            .await?;
        let found = list.items.iter().find(|p| {
            p.metadata.deletion_timestamp.is_none()
                && p.uid().as_deref() != not
                && p.status
                    .as_ref()
                    .and_then(|s| s.container_statuses.as_ref())
                    .is_some_and(|cs| {
                        cs.iter()
                            .all(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()))
                    })
        });
        Ok(match found {
            Some(p) => Poll::Ready(p.clone()),
            None => Poll::Pending(format!(
                "{:?}",
                list.items
                    .iter()
                    .map(|p| (
                        p.name_any(),
                        p.status.as_ref().and_then(|s| s.phase.clone())
                    ))
                    .collect::<Vec<_>>()
            )),
        })
    })
    .await
    .unwrap()
}

pub fn container_id(pod: &Pod) -> String {
    pod.status
        .as_ref()
        .unwrap()
        .container_statuses
        .as_ref()
        .unwrap()[0]
        .container_id
        .clone()
        .unwrap_or_default()
}

/// The container result of `pod` once `ok` accepts it.
pub async fn wait_for_result(
    statuses: &Api<FileIntegrityNodeStatus>,
    status: &str,
    pod: &str,
    what: &str,
    ok: impl Fn(&ContainerResult) -> bool,
) -> ContainerResult {
    wait_for(&format!("{pod}: {what}"), WAIT * 2, || async {
        let st = statuses.get_opt(status).await?;
        let all: Vec<ContainerResult> = st.map(|s| s.spec.containers).unwrap_or_default();
        Ok(match all.iter().find(|r| r.pod == pod && ok(r)) {
            Some(r) => Poll::Ready(r.clone()),
            None => Poll::Pending(format!(
                "{:#?}",
                all.iter().filter(|r| r.pod == pod).collect::<Vec<_>>()
            )),
        })
    })
    .await
    .unwrap()
}

pub fn write_in_container(node: &RealNode, pod: &Pod, path: &str, text: &str) {
    let pid = node.container_pid(pod, "web").unwrap();
    std::fs::write(format!("/proc/{pid}/root{path}"), text).unwrap();
}
