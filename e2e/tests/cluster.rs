//! The local control plane itself: the pieces later suites rely on, proven against the real
//! kube-apiserver, controller-manager, scheduler, kwok, MinIO and Prometheus.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec};
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Node, Pod, PodSpec, PodTemplateSpec, ServiceAccount, Taint, Toleration,
};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::Api;
use kube::api::{ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube_fim_e2e::{Poll, TestNamespace, apply_crds, client, client_with_token, s3, wait_for};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

fn meta(name: &str, ns: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(ns.into()),
        ..Default::default()
    }
}

#[tokio::test]
async fn crds_become_established_and_admission_names_the_bad_field() {
    let client = client().await.unwrap();
    let names = apply_crds(&client).await.unwrap();
    assert_eq!(names.len(), 3, "{names:?}");
    let ns = TestNamespace::create(&client, "crds").await.unwrap();
    let fis: Api<kube_fim_crds::FileIntegrity> = Api::namespaced(client.clone(), &ns.name);

    let good: kube_fim_crds::FileIntegrity = serde_json::from_value(json!({
        "apiVersion": "fim.kubefim.io/v1alpha1", "kind": "FileIntegrity",
        "metadata": {"name": "good"},
        "spec": {"config": {"gracePeriod": 20}}
    }))
    .unwrap();
    let created = fis.create(&PostParams::default(), &good).await.unwrap();
    // Defaults come from the schema, applied by the API server.
    assert_eq!(created.spec.config.max_backups, 5);

    let mut bad = good.clone();
    bad.metadata.name = Some("bad".into());
    bad.spec.config.grace_period = 5;
    let err = fis.create(&PostParams::default(), &bad).await.unwrap_err();
    let kube::Error::Api(status) = err else {
        panic!("expected a refusal, got {err}")
    };
    assert_eq!(status.code, 422, "{status:?}");
    assert!(
        status.message.contains("spec.config.gracePeriod"),
        "{}",
        status.message
    );
    assert!(status.message.contains("at least 10"), "{}", status.message);
    ns.delete().await.unwrap();
}

/// A stand-in agent container: kwok runs pods without pulling images.
fn agent_container() -> Container {
    Container {
        name: "agent".into(),
        image: Some("kube-fim/agent:e2e".into()),
        ..Default::default()
    }
}

fn daemonset(
    name: &str,
    ns: &str,
    selector: BTreeMap<String, String>,
    tolerations: Vec<Toleration>,
) -> DaemonSet {
    let labels = BTreeMap::from([("app".to_string(), name.to_string())]);
    DaemonSet {
        metadata: meta(name, ns),
        spec: Some(DaemonSetSpec {
            selector: LabelSelector {
                match_labels: Some(labels.clone()),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    node_selector: Some(selector),
                    tolerations: Some(tolerations),
                    containers: vec![agent_container()],
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Nodes the DaemonSet's pods are Running on.
async fn running_pod_nodes(pods: &Api<Pod>, app: &str) -> kube_fim_e2e::Result<Vec<String>> {
    let list = pods
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await?;
    let mut nodes: Vec<String> = list
        .items
        .into_iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .filter_map(|p| p.spec.and_then(|s| s.node_name))
        .collect();
    nodes.sort();
    Ok(nodes)
}

#[tokio::test]
async fn daemonset_runs_on_matching_nodes_and_needs_a_toleration_for_a_taint() {
    let client = client().await.unwrap();
    let all = kube_fim_e2e::kwok_nodes(&client).await.unwrap();
    assert!(
        all.len() >= 3,
        "cluster-up starts 3 kwok nodes, found {all:?}"
    );
    let ns = TestNamespace::create(&client, "ds").await.unwrap();
    let label = format!("e2e.kubefim.io/{}", ns.name);
    let nodes: Api<Node> = Api::all(client.clone());
    let selected = &all[..2];
    for n in selected {
        let patch = json!({"metadata": {"labels": {label.clone(): "yes"}}});
        nodes
            .patch(n, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
    }
    // The second selected node is tainted: without a toleration the DaemonSet must skip it.
    let taint = Taint {
        key: label.clone(),
        value: Some("x".into()),
        effect: "NoSchedule".into(),
        ..Default::default()
    };
    let tainted = &selected[1];
    let mut node = nodes.get(tainted).await.unwrap();
    node.spec
        .get_or_insert_default()
        .taints
        .get_or_insert_default()
        .push(taint.clone());
    nodes
        .replace(tainted, &PostParams::default(), &node)
        .await
        .unwrap();

    let dss: Api<DaemonSet> = Api::namespaced(client.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let selector = BTreeMap::from([(label.clone(), "yes".to_string())]);
    dss.create(
        &PostParams::default(),
        &daemonset("plain", &ns.name, selector.clone(), vec![]),
    )
    .await
    .unwrap();
    let toleration = Toleration {
        key: Some(label.clone()),
        operator: Some("Exists".into()),
        effect: Some("NoSchedule".into()),
        ..Default::default()
    };
    dss.create(
        &PostParams::default(),
        &daemonset("tolerant", &ns.name, selector, vec![toleration]),
    )
    .await
    .unwrap();

    let expect = |app: &'static str, want: Vec<String>| {
        let pods = pods.clone();
        async move {
            wait_for(&format!("{app} pods Running on {want:?}"), WAIT, || async {
                let got = running_pod_nodes(&pods, app).await?;
                Ok(if got == want {
                    Poll::Ready(())
                } else {
                    Poll::Pending(format!("running on {got:?}"))
                })
            })
            .await
            .unwrap()
        }
    };
    expect("plain", vec![selected[0].clone()]).await;
    expect("tolerant", selected.to_vec()).await;
    // And never on the unselected node.
    assert!(
        !running_pod_nodes(&pods, "tolerant")
            .await
            .unwrap()
            .contains(&all[2])
    );

    let mut node = nodes.get(tainted).await.unwrap();
    if let Some(t) = node.spec.as_mut().and_then(|s| s.taints.as_mut()) {
        t.retain(|t| t.key != label);
    }
    nodes
        .replace(tainted, &PostParams::default(), &node)
        .await
        .unwrap();
    for n in selected {
        let patch = json!({"metadata": {"labels": {label.clone(): null}}});
        nodes
            .patch(n, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
    }
    ns.delete().await.unwrap();
}

#[tokio::test]
async fn pod_bound_token_carries_the_node_and_an_admission_policy_can_use_it() {
    let client = client().await.unwrap();
    let node = kube_fim_e2e::kwok_nodes(&client)
        .await
        .unwrap()
        .into_iter()
        .next()
        .expect("a kwok node");
    let ns = TestNamespace::create(&client, "token").await.unwrap();
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns.name);
    sas.create(
        &PostParams::default(),
        &ServiceAccount {
            metadata: meta("agent", &ns.name),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let pod = Pod {
        metadata: meta("agent", &ns.name),
        spec: Some(PodSpec {
            node_name: Some(node.clone()),
            service_account_name: Some("agent".into()),
            containers: vec![agent_container()],
            ..Default::default()
        }),
        ..Default::default()
    };
    let pod = pods.create(&PostParams::default(), &pod).await.unwrap();

    let token = kube_fim_e2e::pod_bound_token(&client, &ns.name, "agent", &pod)
        .await
        .unwrap();
    let agent = client_with_token(&token).await.unwrap();
    let review: SelfSubjectReview = Api::all(agent.clone())
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .unwrap();
    let user = review.status.and_then(|s| s.user_info).expect("user info");
    assert_eq!(
        user.username.as_deref(),
        Some(format!("system:serviceaccount:{}:agent", ns.name).as_str())
    );
    let extra = user.extra.unwrap_or_default();
    assert_eq!(
        extra.get("authentication.kubernetes.io/node-name"),
        Some(&vec![node.clone()]),
        "{extra:?}"
    );

    // RBAC lets the agent create ConfigMaps; the policy lets it only write its own node's.
    let roles: Api<Role> = Api::namespaced(client.clone(), &ns.name);
    roles
        .create(
            &PostParams::default(),
            &Role {
                metadata: meta("cm-writer", &ns.name),
                rules: Some(vec![PolicyRule {
                    api_groups: Some(vec!["".into()]),
                    resources: Some(vec!["configmaps".into()]),
                    verbs: vec!["create".into()],
                    ..Default::default()
                }]),
            },
        )
        .await
        .unwrap();
    Api::<RoleBinding>::namespaced(client.clone(), &ns.name)
        .create(
            &PostParams::default(),
            &RoleBinding {
                metadata: meta("cm-writer", &ns.name),
                role_ref: RoleRef {
                    api_group: "rbac.authorization.k8s.io".into(),
                    kind: "Role".into(),
                    name: "cm-writer".into(),
                },
                subjects: Some(vec![Subject {
                    kind: "ServiceAccount".into(),
                    name: "agent".into(),
                    namespace: Some(ns.name.clone()),
                    ..Default::default()
                }]),
            },
        )
        .await
        .unwrap();
    let policy_name = format!("own-node-{}", ns.name);
    let policy: serde_json::Value = json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": policy_name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["configmaps"]}]},
            "matchConditions": [{"name": "node-bound-token", "expression": "'authentication.kubernetes.io/node-name' in request.userInfo.extra"}],
            "validations": [{
                "expression": "has(object.metadata.labels) && 'e2e.kubefim.io/node' in object.metadata.labels && object.metadata.labels['e2e.kubefim.io/node'] == request.userInfo.extra['authentication.kubernetes.io/node-name'][0]",
                "message": "an agent may only write objects of its own node"
            }]
        }
    });
    let binding: serde_json::Value = json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": policy_name},
        "spec": {
            "policyName": policy_name,
            "validationActions": ["Deny"],
            "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns.name}}}
        }
    });
    let dyn_api = |kind: &str| {
        let gvk = kube::api::GroupVersionKind::gvk("admissionregistration.k8s.io", "v1", kind);
        let ar = kube::api::ApiResource::from_gvk(&gvk);
        Api::<kube::api::DynamicObject>::all_with(client.clone(), &ar)
    };
    let policy_obj: kube::api::DynamicObject = serde_json::from_value(policy).unwrap();
    let binding_obj: kube::api::DynamicObject = serde_json::from_value(binding).unwrap();
    dyn_api("ValidatingAdmissionPolicy")
        .create(&PostParams::default(), &policy_obj)
        .await
        .unwrap();
    dyn_api("ValidatingAdmissionPolicyBinding")
        .create(&PostParams::default(), &binding_obj)
        .await
        .unwrap();

    let agent_cms: Api<ConfigMap> = Api::namespaced(agent, &ns.name);
    let cm = |name: &str, for_node: &str| ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(BTreeMap::from([(
                "e2e.kubefim.io/node".to_string(),
                for_node.to_string(),
            )])),
            ..Default::default()
        },
        ..Default::default()
    };
    // Policies take effect asynchronously: wait until a write for another node is refused.
    let refusal = wait_for(
        "the admission policy to refuse another node's object",
        WAIT,
        || async {
            let name = format!("other-{}", kube_fim_e2e::unique_suffix());
            Ok(
                match agent_cms
                    .create(&PostParams::default(), &cm(&name, "some-other-node"))
                    .await
                {
                    Err(kube::Error::Api(s)) if s.code == 422 || s.code == 403 => {
                        Poll::Ready(s.message)
                    }
                    Err(e) => Poll::Pending(e.to_string()),
                    Ok(_) => Poll::Pending(
                        "write for another node accepted (policy not active yet)".into(),
                    ),
                },
            )
        },
    )
    .await
    .unwrap();
    assert!(
        refusal.contains("only write objects of its own node"),
        "{refusal}"
    );
    agent_cms
        .create(&PostParams::default(), &cm("mine", &node))
        .await
        .expect("own node's object is allowed");

    dyn_api("ValidatingAdmissionPolicyBinding")
        .delete(&policy_name, &Default::default())
        .await
        .unwrap();
    dyn_api("ValidatingAdmissionPolicy")
        .delete(&policy_name, &Default::default())
        .await
        .unwrap();
    ns.delete().await.unwrap();
}

#[tokio::test]
async fn s3_object_reads_back_identical() {
    let bucket = s3(None).unwrap();
    let key = format!("e2e/{}/blob.bin", kube_fim_e2e::unique_suffix());
    let data: Vec<u8> = (0..3 * 1024 * 1024 + 17)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    bucket.ensure().await.unwrap();
    bucket.put(&key, data.clone()).await.unwrap();
    let body = bucket
        .get(&key)
        .await
        .unwrap()
        .expect("object just written");
    assert_eq!(body.len(), data.len());
    assert!(body[..] == data[..], "object content differs");
    bucket.delete(&key).await.unwrap();
    assert_eq!(
        bucket.get(&key).await.unwrap(),
        None,
        "deleted object still readable"
    );
}

#[tokio::test]
async fn prometheus_scrapes_a_local_target() {
    // A minimal exporter: one gauge whose value the test chooses.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = listener.local_addr().unwrap().to_string();
    let value = 4242;
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let mut buf = [0u8; 2048];
            let _ = sock.read(&mut buf).await;
            let body = format!("# TYPE fim_e2e_probe gauge\nfim_e2e_probe {value}\n");
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        }
    });
    // Plain HTTP: this exporter is the test's, not a kube-fim endpoint.
    let prom = kube_fim_e2e::prometheus::Prometheus::start_with(
        |_| {
            Ok(format!(
                "  - job_name: e2e\n    static_configs:\n      - targets: ['{target}']\n"
            ))
        },
        &[],
    )
    .await
    .unwrap();
    let got = prom.wait_for_value("fim_e2e_probe", WAIT).await.unwrap();
    assert_eq!(got, f64::from(value));
    let up = prom.wait_for_value("up{job=\"e2e\"}", WAIT).await.unwrap();
    assert_eq!(up, 1.0);
}
