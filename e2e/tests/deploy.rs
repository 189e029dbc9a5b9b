//! The deploy manifests (config/) against the local control plane: every kustomization builds,
//! `make deploy` installs config/default with server-side apply, a sample FileIntegrity is
//! accepted and listed with its Phase column, the operator's RBAC grants what the controller
//! needs and nothing obviously more, the operator pod passes the `restricted` Pod Security level,
//! and, with the REAL admission policy and RBAC of config/agent, a token of the fim-agent service
//! account bound to a pod on node A writes node A's status and failure ConfigMap and is refused
//! for node B and for the operator's rules ConfigMaps.
//!
//! The manifests fix the namespace to kube-fim and the policies are cluster-scoped, so this suite
//! works in kube-fim with unique object names and removes only the objects it created: the
//! deployment itself (CRDs included) stays, since other suites share the cluster (cluster-down
//! drops everything).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{ConfigMap, Container, Namespace, Node, Pod, PodSpec};
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, ListParams, ObjectMeta, Patch, PatchParams,
    PostParams,
};
use kube::{Api, Client};
use kube_fim_e2e::{
    Poll, TestNamespace, client, client_with_token, cluster_env, kubeconfig_path, kwok_nodes,
    repo_root, unique_suffix, wait_for,
};
use serde_json::{Value, json};

const NS: &str = "kube-fim";
const WAIT: Duration = Duration::from_secs(60);
const AGENT_USER: &str = "system:serviceaccount:kube-fim:fim-agent";
const OPERATOR_USER: &str = "system:serviceaccount:kube-fim:fim-operator";

/// The kubectl cluster-up installed (`KUBECTL` in e2e/.cluster/env).
fn kubectl() -> PathBuf {
    let env = cluster_env().unwrap();
    PathBuf::from(
        env.get("KUBECTL")
            .expect("KUBECTL missing from e2e/.cluster/env; run `make cluster-up`"),
    )
}

/// Runs a command in the repository root against the local cluster; panics with its output
/// unless it succeeds. Returns stdout.
fn run(program: &std::path::Path, args: &[&str]) -> String {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .current_dir(repo_root())
        .env("KUBECONFIG", kubeconfig_path())
        .env("KUBECTL", kubectl())
        // A `make` run from `make e2e` must not hand its jobserver to the nested make.
        .env_remove("MAKEFLAGS")
        .env_remove("MFLAGS")
        .env_remove("MAKELEVEL");
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{} {args:?} failed ({}):\n{stdout}\n{}",
        program.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `kubectl kustomize config/<dir>`, parsed.
fn kustomize(dir: &str) -> Vec<Value> {
    let path = repo_root().join("config").join(dir);
    let yaml = run(&kubectl(), &["kustomize", path.to_str().unwrap()]);
    serde_saphyr::from_multiple::<Value>(&yaml)
        .unwrap_or_else(|e| panic!("kustomize config/{dir} printed bad YAML: {e}"))
        .into_iter()
        .filter(|v| !v.is_null())
        .collect()
}

fn kinds(objects: &[Value]) -> Vec<String> {
    let mut kinds: Vec<String> = objects
        .iter()
        .map(|o| {
            format!(
                "{}/{}",
                o["kind"].as_str().unwrap_or("?"),
                o["metadata"]["name"].as_str().unwrap_or("?")
            )
        })
        .collect();
    kinds.sort();
    kinds
}

/// `make deploy` once per test binary (the tests below all need it).
fn deployed() {
    static DEPLOYED: OnceLock<String> = OnceLock::new();
    DEPLOYED.get_or_init(|| {
        run(
            std::path::Path::new("make"),
            &["--no-print-directory", "deploy"],
        )
    });
}

/// Waits until the deployed CRDs serve (kubectl applied them; they take a moment to be
/// Established).
async fn crds_served(client: &Client) {
    let fins: Api<DynamicObject> = Api::namespaced_with(client.clone(), NS, &node_status_ar());
    wait_for("the deployed CRDs to serve", WAIT, || async {
        Ok(match fins.list(&ListParams::default().limit(1)).await {
            Ok(_) => Poll::Ready(()),
            Err(e) => Poll::Pending(e.to_string()),
        })
    })
    .await
    .unwrap();
}

#[test]
fn every_kustomization_builds_and_default_has_the_whole_install() {
    for dir in [
        "crd",
        "rbac",
        "agent",
        "manager",
        "samples",
        "prometheus",
        "default",
    ] {
        assert!(!kustomize(dir).is_empty(), "config/{dir} builds nothing");
    }
    let default = kustomize("default");
    let got = kinds(&default);
    for want in [
        "Namespace/kube-fim",
        "CustomResourceDefinition/fileintegrities.fim.kubefim.io",
        "CustomResourceDefinition/fileintegritynodestatuses.fim.kubefim.io",
        "CustomResourceDefinition/snapshots.fim.kubefim.io",
        "ServiceAccount/fim-operator",
        "ServiceAccount/fim-agent",
        "Role/fim-operator",
        "RoleBinding/fim-operator",
        "ClusterRole/fim-operator",
        "ClusterRoleBinding/fim-operator",
        "Role/fim-agent",
        "RoleBinding/fim-agent",
        "ClusterRole/fim-agent",
        "ClusterRoleBinding/fim-agent",
        "ClusterRole/fim-metrics-auth",
        "ClusterRoleBinding/fim-metrics-auth",
        "ClusterRole/fim-metrics-reader",
        "ValidatingAdmissionPolicy/fim-agent-own-node-status-kube-fim",
        "ValidatingAdmissionPolicyBinding/fim-agent-own-node-status-kube-fim",
        "ValidatingAdmissionPolicy/fim-agent-own-node-configmaps-kube-fim",
        "ValidatingAdmissionPolicyBinding/fim-agent-own-node-configmaps-kube-fim",
        "Deployment/fim-operator",
        "Service/fim-operator-metrics",
    ] {
        assert!(got.iter().any(|k| k == want), "{want} missing from {got:?}");
    }
    // The PrometheusRule needs the Prometheus operator's CRDs: it is optional, not in default.
    assert!(
        !got.iter().any(|k| k.starts_with("PrometheusRule/")),
        "{got:?}"
    );
    // Everything namespaced is in kube-fim.
    for o in &default {
        if let Some(ns) = o["metadata"]["namespace"].as_str() {
            assert_eq!(ns, NS, "{}", o["metadata"]["name"]);
        }
    }

    let deployment = default.iter().find(|o| o["kind"] == "Deployment").unwrap();
    let pod = &deployment["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(c["image"], "ghcr.io/kube-fim/fim-operator:latest");
    assert_eq!(pod["serviceAccountName"], "fim-operator");
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    for want in [
        "--namespace=$(POD_NAMESPACE)",
        "--metrics-addr=0.0.0.0:8585",
        "--agent-service-account=fim-agent",
    ] {
        assert!(args.contains(&want), "{want} not in {args:?}");
    }
    let env: BTreeMap<&str, &str> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| {
            Some((
                e["name"].as_str()?,
                e["valueFrom"]["fieldRef"]["fieldPath"].as_str()?,
            ))
        })
        .collect();
    assert_eq!(env.get("POD_NAME"), Some(&"metadata.name"));
    assert_eq!(env.get("POD_NAMESPACE"), Some(&"metadata.namespace"));
    assert_eq!(c["ports"][0]["containerPort"], 8585);
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    // The metrics port is HTTPS (issue 10, item 9): the probes must say so.
    assert_eq!(c["livenessProbe"]["httpGet"]["scheme"], "HTTPS");
    assert_eq!(c["readinessProbe"]["httpGet"]["scheme"], "HTTPS");
    assert!(
        !args.iter().any(|a| a.starts_with("--metrics-insecure")),
        "{args:?}"
    );
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert!(c["resources"]["requests"]["memory"].is_string(), "{c}");
    assert!(c["resources"]["limits"]["memory"].is_string(), "{c}");
}

#[tokio::test]
async fn make_deploy_installs_kube_fim_and_get_fi_shows_the_phase() {
    deployed();
    let client = client().await.unwrap();
    crds_served(&client).await;
    // The operator Deployment is accepted and its (kwok) pod becomes available.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
    wait_for("the fim-operator Deployment available", WAIT, || async {
        let d = deployments.get("fim-operator").await?;
        let available = d.status.and_then(|s| s.available_replicas).unwrap_or(0);
        Ok(if available >= 1 {
            Poll::Ready(())
        } else {
            Poll::Pending(format!("{available} available"))
        })
    })
    .await
    .unwrap();

    // Deploying again changes nothing and does not fail (server-side apply is idempotent).
    run(
        std::path::Path::new("make"),
        &["--no-print-directory", "deploy"],
    );

    // The samples are valid objects (admission checks them) and `kubectl get fi` has the Phase
    // column.
    let samples = repo_root().join("config/samples");
    let samples = samples.to_str().unwrap();
    run(
        &kubectl(),
        &[
            "apply",
            "--server-side",
            "--field-manager=kube-fim-e2e",
            "-k",
            samples,
        ],
    );
    let table = run(
        &kubectl(),
        &["get", "fi", "-n", NS, "example-fileintegrity"],
    );
    let header = table.lines().next().unwrap_or_default();
    assert!(
        header.split_whitespace().collect::<Vec<_>>() == ["NAME", "PHASE", "AGE"],
        "{table}"
    );
    assert!(table.contains("example-fileintegrity"), "{table}");
    let custom = run(
        &kubectl(),
        &[
            "get",
            "fi",
            "-n",
            NS,
            "example-fileintegrity-custom",
            "-o",
            "jsonpath={.spec.config.name}",
        ],
    );
    assert_eq!(custom, "example-aide-conf");
    run(
        &kubectl(),
        &[
            "delete",
            "--ignore-not-found",
            "--wait=false",
            "-k",
            samples,
        ],
    );

    // undeploy, as a server-side dry run (a real one would remove the CRDs other suites use):
    // it finds every object deploy installed.
    let out = run(
        std::path::Path::new("make"),
        &["--no-print-directory", "undeploy", "DRY_RUN=server"],
    );
    for want in [
        "namespace \"kube-fim\" deleted",
        "customresourcedefinition.apiextensions.k8s.io \"fileintegrities.fim.kubefim.io\" deleted",
        "deployment.apps \"fim-operator\" deleted",
        "validatingadmissionpolicy.admissionregistration.k8s.io \"fim-agent-own-node-status-kube-fim\" deleted",
    ] {
        assert!(
            out.contains(want),
            "`make undeploy` would not do {want}:\n{out}"
        );
    }
    assert!(
        deployments.get_opt("fim-operator").await.unwrap().is_some(),
        "the dry run deleted"
    );
}

/// The operator pod of config/manager passes the `restricted` Pod Security Standard.
#[tokio::test]
async fn operator_pod_passes_the_restricted_pod_security_level() {
    let client = client().await.unwrap();
    let ns = TestNamespace::create(&client, "psa").await.unwrap();
    let labels = json!({"metadata": {"labels": {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
    }}});
    Api::<Namespace>::all(client.clone())
        .patch(&ns.name, &PatchParams::default(), &Patch::Merge(&labels))
        .await
        .unwrap();
    let deployment = kustomize("manager")
        .into_iter()
        .find(|o| o["kind"] == "Deployment")
        .unwrap();
    let mut pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "operator"},
        "spec": deployment["spec"]["template"]["spec"],
    }))
    .unwrap();
    // The service account exists only in kube-fim; admission of the pod spec does not need it.
    pod.spec.as_mut().unwrap().service_account_name = None;
    // Pod admission needs the namespace's default service account, created asynchronously.
    let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(client.clone(), &ns.name);
    wait_for("the default service account", WAIT, || async {
        Ok(match sas.get_opt("default").await? {
            Some(_) => Poll::Ready(()),
            None => Poll::Pending("not there yet".into()),
        })
    })
    .await
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    pods.create(
        &PostParams {
            dry_run: true,
            ..Default::default()
        },
        &pod,
    )
    .await
    .expect("the operator pod violates the restricted Pod Security level");
    // And the check is real: a root container is refused there.
    let mut root = pod.clone();
    root.spec.as_mut().unwrap().containers[0]
        .security_context
        .as_mut()
        .unwrap()
        .run_as_user = Some(0);
    let err = pods
        .create(
            &PostParams {
                dry_run: true,
                ..Default::default()
            },
            &root,
        )
        .await
        .expect_err("a root pod passed the restricted level");
    assert!(err.to_string().contains("restricted"), "{err}");
    ns.delete().await.unwrap();
}

/// Asks the API server whether `user` (a service account of kube-fim) may do `verb` on
/// `group/resource[/subresource]` (named `name`) in `namespace` ("" = cluster-scoped).
async fn can(
    client: &Client,
    user: &str,
    verb: &str,
    resource: &str,
    namespace: &str,
    name: Option<&str>,
) -> bool {
    // "resource[.group][/subresource]", e.g. "daemonsets.apps", "events.events.k8s.io",
    // "fileintegrities.fim.kubefim.io/status".
    let (resource, subresource) = match resource.split_once('/') {
        Some((r, s)) => (r, Some(s.to_string())),
        None => (resource, None),
    };
    let (resource, group) = resource.split_once('.').unwrap_or((resource, ""));
    let (resource, group) = (resource.to_string(), group.to_string());
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.into()),
            groups: Some(vec![
                "system:serviceaccounts".into(),
                "system:serviceaccounts:kube-fim".into(),
                "system:authenticated".into(),
            ]),
            resource_attributes: Some(ResourceAttributes {
                group: Some(group),
                resource: Some(resource),
                subresource,
                verb: Some(verb.into()),
                namespace: (!namespace.is_empty()).then(|| namespace.into()),
                name: name.map(Into::into),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = Api::<SubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .unwrap();
    answer.status.map(|s| s.allowed).unwrap_or(false)
}

#[tokio::test]
async fn service_accounts_get_what_they_need_and_no_more() {
    deployed();
    let client = client().await.unwrap();
    // (verb, resource[.group][/subresource], namespace, name)
    type Check = (
        &'static str,
        &'static str,
        &'static str,
        Option<&'static str>,
    );
    let operator_allowed: &[Check] = &[
        ("watch", "fileintegrities.fim.kubefim.io", NS, None),
        ("patch", "fileintegrities.fim.kubefim.io", NS, None),
        ("patch", "fileintegrities.fim.kubefim.io/status", NS, None),
        (
            "update",
            "fileintegrities.fim.kubefim.io/finalizers",
            NS,
            None,
        ),
        ("list", "fileintegritynodestatuses.fim.kubefim.io", NS, None),
        (
            "watch",
            "fileintegritynodestatuses.fim.kubefim.io",
            NS,
            None,
        ),
        (
            "delete",
            "fileintegritynodestatuses.fim.kubefim.io",
            NS,
            None,
        ),
        // Each node's status is the operator's to create (issue 10, item 1).
        (
            "create",
            "fileintegritynodestatuses.fim.kubefim.io",
            NS,
            None,
        ),
        ("watch", "snapshots.fim.kubefim.io", NS, None),
        ("patch", "snapshots.fim.kubefim.io/status", NS, None),
        ("update", "snapshots.fim.kubefim.io/finalizers", NS, None),
        ("create", "daemonsets.apps", NS, None),
        ("patch", "daemonsets.apps", NS, None),
        ("watch", "daemonsets.apps", NS, None),
        ("create", "configmaps", NS, None),
        ("patch", "configmaps", NS, None),
        ("watch", "configmaps", NS, None),
        ("create", "events", NS, None),
        ("create", "events.events.k8s.io", NS, None),
        ("patch", "events.events.k8s.io", NS, None),
        ("create", "leases.coordination.k8s.io", NS, None),
        (
            "patch",
            "leases.coordination.k8s.io",
            NS,
            Some("fim-operator-leader"),
        ),
        (
            "get",
            "leases.coordination.k8s.io",
            NS,
            Some("fim-operator-leader"),
        ),
        ("watch", "nodes", "", None),
        ("list", "nodes", "", None),
        ("get", "priorityclasses.scheduling.k8s.io", "", Some("high")),
        ("watch", "priorityclasses.scheduling.k8s.io", "", None),
        // The secure /metrics endpoint reviews each scrape's token (issue 10, item 9).
        ("create", "tokenreviews.authentication.k8s.io", "", None),
        (
            "create",
            "subjectaccessreviews.authorization.k8s.io",
            "",
            None,
        ),
        // Container monitoring (issue 14): events on pods, restart and rollback.
        ("create", "events", "default", None),
        ("delete", "pods", "default", None),
        ("get", "replicasets.apps", "default", None),
        ("patch", "deployments.apps", "default", None),
        // The agents' admission policies, applied at start for its namespace (issue 16), owned
        // by that Namespace.
        (
            "create",
            "validatingadmissionpolicies.admissionregistration.k8s.io",
            "",
            None,
        ),
        (
            "patch",
            "validatingadmissionpolicybindings.admissionregistration.k8s.io",
            "",
            Some("fim-agent-own-node-status-kube-fim"),
        ),
        ("get", "namespaces", "", Some(NS)),
    ];
    let operator_denied: &[Check] = &[
        ("get", "secrets", NS, None),
        ("create", "daemonsets.apps", "default", None),
        ("get", "configmaps", "default", None),
        ("patch", "nodes", "", None),
        ("create", "priorityclasses.scheduling.k8s.io", "", None),
        (
            "patch",
            "leases.coordination.k8s.io",
            NS,
            Some("someone-elses-lease"),
        ),
        ("create", "pods", NS, None),
        ("patch", "pods", "default", None),
        ("patch", "replicasets.apps", "default", None),
        ("delete", "deployments.apps", "default", None),
        ("get", "pods/log", "default", None),
        (
            "delete",
            "validatingadmissionpolicies.admissionregistration.k8s.io",
            "",
            None,
        ),
        ("patch", "namespaces", "", Some(NS)),
    ];
    let agent_allowed: &[Check] = &[
        ("watch", "fileintegrities.fim.kubefim.io", NS, None),
        (
            "patch",
            "fileintegritynodestatuses.fim.kubefim.io",
            NS,
            None,
        ),
        ("get", "configmaps", NS, None),
        ("patch", "configmaps", NS, None),
        ("watch", "nodes", "", None),
        ("create", "tokenreviews.authentication.k8s.io", "", None),
        (
            "create",
            "subjectaccessreviews.authorization.k8s.io",
            "",
            None,
        ),
        // Container monitoring: the pods of its node (spec.nodeName field selector). RBAC cannot
        // require the selector, so this is every pod's spec and status (docs/threat-model.md).
        ("list", "pods", "", None),
        ("watch", "pods", "", None),
    ];
    let agent_denied: &[Check] = &[
        ("patch", "fileintegrities.fim.kubefim.io", NS, None),
        ("patch", "fileintegrities.fim.kubefim.io/status", NS, None),
        // Issue 10, item 2: status.baselines is the anchor an agent must not rewrite.
        ("update", "fileintegrities.fim.kubefim.io/status", NS, None),
        (
            "delete",
            "fileintegritynodestatuses.fim.kubefim.io",
            NS,
            None,
        ),
        ("get", "secrets", NS, None),
        ("create", "configmaps", "default", None),
        ("create", "daemonsets.apps", NS, None),
        ("patch", "nodes", "", None),
        ("delete", "pods", NS, None),
        // Issue 10, item 1: the operator creates each node's objects; no events, no pods.
        (
            "create",
            "fileintegritynodestatuses.fim.kubefim.io",
            NS,
            None,
        ),
        ("create", "configmaps", NS, None),
        ("delete", "configmaps", NS, None),
        ("create", "events", NS, None),
        ("create", "events.events.k8s.io", NS, None),
        // The reviews only: no reading of other objects through the authn/authz groups.
        ("list", "tokenreviews.authentication.k8s.io", "", None),
        (
            "create",
            "localsubjectaccessreviews.authorization.k8s.io",
            NS,
            None,
        ),
        // Pods are read, never changed or entered: restart and rollback are the operator's.
        ("delete", "pods", "default", None),
        ("patch", "pods", "default", None),
        ("get", "pods/log", "default", None),
        ("create", "pods/exec", "default", None),
        ("patch", "deployments.apps", "default", None),
    ];
    let mut wrong = Vec::new();
    for (user, checks, want) in [
        (OPERATOR_USER, operator_allowed, true),
        (OPERATOR_USER, operator_denied, false),
        (AGENT_USER, agent_allowed, true),
        (AGENT_USER, agent_denied, false),
    ] {
        for &(verb, resource, ns, name) in checks {
            // RBAC objects take effect at once, but the authorizer's cache may lag a moment
            // right after deploy: retry a denial a few times before calling it wrong.
            let mut got = can(&client, user, verb, resource, ns, name).await;
            for _ in 0..20 {
                if got == want || !want {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
                got = can(&client, user, verb, resource, ns, name).await;
            }
            if got != want {
                wrong.push(format!(
                    "{user} {verb} {resource} ns={ns:?} name={name:?}: allowed={got}, want {want}"
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "RBAC differs:\n{}", wrong.join("\n"));
}

fn node_status_ar() -> ApiResource {
    ApiResource::erase::<kube_fim_crds::FileIntegrityNodeStatus>(&())
}

/// A node status of FileIntegrity `e2e<u>` named `<owner>-<node>` as the operator names them
/// (`name` = `<owner>-<suffix>`: the owner label is the part before the last `-<node>`).
fn node_status(name: &str, node: &str) -> DynamicObject {
    let owner = name.strip_suffix(&format!("-{node}")).unwrap_or("none");
    serde_json::from_value(json!({
        "apiVersion": "fim.kubefim.io/v1alpha1", "kind": "FileIntegrityNodeStatus",
        "metadata": {"name": name, "labels": {"fim.kubefim.io/node": node, "fim.kubefim.io/owner": owner}},
        "nodeName": node,
    }))
    .unwrap()
}

fn config_map(name: &str, labels: &[(&str, &str)]) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "integritylog".to_string(),
            "report".to_string(),
        )])),
        ..Default::default()
    }
}

/// Waits until `write` is refused with a 403 whose message contains every one of `want`, and
/// returns the message. Every refusal is waited for, not asserted at once: an admission policy
/// (or a change to it) takes effect a moment after it is applied, and a write that a stale
/// policy accepts must not pass the test. A correct policy refuses at the first try; a wrong
/// one fails after WAIT with the last answer.
async fn eventually_refused<T, F, Fut>(what: &str, write: F, want: &[&str]) -> String
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = kube::Result<T>>,
{
    wait_for(what, WAIT, || async {
        Ok(match write().await {
            Err(kube::Error::Api(s))
                if s.code == 403 && want.iter().all(|w| s.message.contains(w)) =>
            {
                Poll::Ready(s.message)
            }
            Err(e) => Poll::Pending(e.to_string()),
            Ok(_) => Poll::Pending("accepted".into()),
        })
    })
    .await
    .unwrap()
}

/// A token for `sa` in kube-fim, bound to `pod` (so it carries the pod's node) or unbound.
async fn token(client: &Client, sa: &str, pod: Option<&Pod>) -> String {
    kube_fim_e2e::service_account_token(client, NS, sa, pod)
        .await
        .unwrap()
}

#[tokio::test]
async fn agent_token_writes_only_its_own_nodes_objects() {
    deployed();
    let admin = client().await.unwrap();
    crds_served(&admin).await;
    let nodes = kwok_nodes(&admin).await.unwrap();
    assert!(nodes.len() >= 2, "need two kwok nodes, found {nodes:?}");
    let (a, b) = (nodes[0].as_str(), nodes[1].as_str());
    let u = unique_suffix();

    // An agent pod on node A, as the operator's DaemonSet would run it (kwok: no image pulled).
    let pods: Api<Pod> = Api::namespaced(admin.clone(), NS);
    let pod_name = format!("fim-agent-e2e-{u}");
    let pod = pods
        .create(
            &PostParams::default(),
            &Pod {
                metadata: ObjectMeta {
                    name: Some(pod_name.clone()),
                    ..Default::default()
                },
                spec: Some(PodSpec {
                    node_name: Some(a.into()),
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
    let agent = client_with_token(&token(&admin, "fim-agent", Some(&pod)).await)
        .await
        .unwrap();
    let unbound = client_with_token(&token(&admin, "fim-agent", None).await)
        .await
        .unwrap();

    let ar = node_status_ar();
    let agent_fins: Api<DynamicObject> = Api::namespaced_with(agent.clone(), NS, &ar);
    let admin_fins: Api<DynamicObject> = Api::namespaced_with(admin.clone(), NS, &ar);
    let agent_cms: Api<ConfigMap> = Api::namespaced(agent.clone(), NS);
    let admin_cms: Api<ConfigMap> = Api::namespaced(admin.clone(), NS);
    let pp = PostParams::default();

    // Objects of node B, written by someone else (the operator for node B).
    let other = format!("e2e-{u}-{b}");
    admin_fins
        .create(&pp, &node_status(&other, b))
        .await
        .unwrap();
    let b_cm = format!("e2e-{u}-{b}-failed");
    admin_cms
        .create(&pp, &config_map(&b_cm, &[("fim.kubefim.io/node", b)]))
        .await
        .unwrap();
    let merge =
        json!({"lastResult": {"condition": "Succeeded", "lastProbeTime": "2026-01-01T00:00:00Z"}});

    // The policies were just applied (deploy) and take effect asynchronously (an update of
    // them too): wait until each refuses a write to node B's object with the message of the
    // current manifest; everything below then runs against the active policies.
    let status_refusal = eventually_refused(
        "the policy to refuse patching node B's status",
        || async {
            agent_fins
                .patch(&other, &PatchParams::default(), &Patch::Merge(&merge))
                .await
        },
        &[
            &format!("fim-agent on node {a} may only modify objects of its own node"),
            &format!("FileIntegrityNodeStatus {other} belongs to node {b}"),
        ],
    )
    .await;
    assert!(
        status_refusal.contains("ValidatingAdmissionPolicy 'fim-agent-own-node-status-kube-fim'"),
        "{status_refusal}"
    );
    eventually_refused(
        "the policy to refuse patching node B's failure ConfigMap",
        || async {
            agent_cms
                .patch(
                    &b_cm,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"data": {"integritylog": "forged"}})),
                )
                .await
        },
        &[
            &format!("fim-agent on node {a} may only modify objects of its own node"),
            &format!("ConfigMap {b_cm} belongs to node {b}"),
        ],
    )
    .await;

    // Node statuses: its own node's (created by the operator) can be patched and applied.
    let own = format!("e2e-{u}-{a}");
    admin_fins
        .create(&pp, &node_status(&own, a))
        .await
        .expect("the operator creates the node status");
    let merge =
        json!({"lastResult": {"condition": "Succeeded", "lastProbeTime": "2026-01-01T00:00:00Z"}});
    agent_fins
        .patch(&own, &PatchParams::default(), &Patch::Merge(&merge))
        .await
        .expect("patch own node status");
    let mut apply = node_status(&own, a);
    apply.data["lastResult"] =
        json!({"condition": "Failed", "lastProbeTime": "2026-01-01T00:01:00Z"});
    agent_fins
        .patch(
            &own,
            &PatchParams::apply("fim-agent").force(),
            &Patch::Apply(&apply),
        )
        .await
        .expect("server-side apply own node status");
    // ... but not moved to another node,
    eventually_refused(
        "moving own status to node B",
        || async {
            agent_fins
                .patch(
                    &own,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"nodeName": b})),
                )
                .await
        },
        &[&format!("has nodeName {b}")],
    )
    .await;
    // ... node B's cannot be created either (no status at all: the operator creates them), nor
    // taken over.
    eventually_refused(
        "creating a status for node B",
        || async {
            agent_fins
                .create(&pp, &node_status(&format!("e2e-{u}-b2-{b}"), b))
                .await
        },
        &["fim-agent"],
    )
    .await;
    eventually_refused(
        "taking over node B's status",
        || async {
            agent_fins
                .patch(
                    &other,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"nodeName": a})),
                )
                .await
        },
        &[&format!("belongs to node {b}")],
    )
    .await;
    // A token not bound to a pod names no node: refused even for "its own" node.
    eventually_refused(
        "unbound token",
        || async {
            Api::<DynamicObject>::namespaced_with(unbound.clone(), NS, &ar)
                .create(&pp, &node_status(&format!("e2e-{u}-unbound"), a))
                .await
        },
        &["fim-agent"],
    )
    .await;

    // Failure ConfigMaps: its own node's (created by the operator) can be patched, not deleted.
    let own_cm = format!("e2e-{u}-{a}-failed");
    let labels_a = [("fim.kubefim.io/node", a), ("fim.kubefim.io/owner", "e2e")];
    admin_cms
        .create(&pp, &config_map(&own_cm, &labels_a))
        .await
        .expect("the operator creates the failure ConfigMap");
    agent_cms
        .patch(
            &own_cm,
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"integritylog": "changed"}})),
        )
        .await
        .expect("patch own failure ConfigMap");
    eventually_refused(
        "deleting its own failure ConfigMap",
        || async { agent_cms.delete(&own_cm, &DeleteParams::default()).await },
        &["fim-agent"],
    )
    .await;
    eventually_refused(
        "node B's failure ConfigMap",
        || async {
            agent_cms
                .create(
                    &pp,
                    &config_map(
                        &format!("e2e-{u}-{b}-failed"),
                        &[("fim.kubefim.io/node", b), ("fim.kubefim.io/owner", "e2e")],
                    ),
                )
                .await
        },
        &["fim-agent"],
    )
    .await;
    eventually_refused(
        "a ConfigMap without the node label",
        || async {
            agent_cms
                .create(&pp, &config_map(&format!("e2e-{u}-unlabelled"), &[]))
                .await
        },
        &["fim-agent"],
    )
    .await;
    eventually_refused(
        "deleting node B's failure ConfigMap",
        || async { agent_cms.delete(&b_cm, &DeleteParams::default()).await },
        &["fim-agent"],
    )
    .await;
    eventually_refused(
        "relabelling node B's failure ConfigMap",
        || async {
            agent_cms
                .patch(
                    &b_cm,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"labels": {"fim.kubefim.io/node": a}}})),
                )
                .await
        },
        &[&format!("belongs to node {b}")],
    )
    .await;

    // The operator's rules ConfigMap: readable, never writable.
    let rules = format!("fim-config-e2e-{u}");
    admin_cms
        .create(&pp, &config_map(&rules, &[("fim.kubefim.io/owner", "e2e")]))
        .await
        .unwrap();
    agent_cms
        .get(&rules)
        .await
        .expect("the agent reads its rules");
    let fim_config = ["fim-config-e2e-"];
    eventually_refused(
        "patching a rules ConfigMap",
        || async {
            agent_cms
                .patch(
                    &rules,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"data": {"aide.conf": "/ R"}})),
                )
                .await
        },
        &fim_config,
    )
    .await;
    eventually_refused(
        "deleting a rules ConfigMap",
        || async { agent_cms.delete(&rules, &DeleteParams::default()).await },
        &fim_config,
    )
    .await;
    eventually_refused(
        "planting a rules ConfigMap",
        || async {
            agent_cms
                .create(
                    &pp,
                    &config_map(&format!("fim-config-e2e-{u}-2"), &labels_a),
                )
                .await
        },
        &["fim-agent"],
    )
    .await;

    // RBAC: nothing outside kube-fim, no FileIntegrity writes; cluster-wide reads work.
    let err = Api::<ConfigMap>::namespaced(agent.clone(), "default")
        .create(&pp, &config_map(&format!("e2e-{u}"), &labels_a))
        .await
        .expect_err("the agent wrote a ConfigMap outside kube-fim");
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 403),
        "{err}"
    );
    Api::<Node>::all(agent.clone())
        .list(&ListParams::default().limit(1))
        .await
        .expect("the agent lists nodes");
    // Container monitoring (issue 14) watches the pods of the agent's node by field selector;
    // RBAC cannot require the selector, so a stolen agent token reads every pod's spec and
    // status (docs/threat-model.md) but changes none (the denied list above).
    Api::<Pod>::all(agent.clone())
        .list(&ListParams::default().limit(1))
        .await
        .expect("the agent lists pods (container monitoring)");

    // Clean up what this test created (the deployment stays).
    for name in [&own, &other] {
        admin_fins
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }
    for name in [&b_cm, &rules, &own_cm] {
        admin_cms
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }
    pods.delete(&pod_name, &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
}

fn admission_ar(kind: &str) -> ApiResource {
    let gvk = kube::api::GroupVersionKind::gvk("admissionregistration.k8s.io", "v1", kind);
    let plural = match kind {
        "ValidatingAdmissionPolicy" => "validatingadmissionpolicies",
        _ => "validatingadmissionpolicybindings",
    };
    ApiResource::from_gvk_with_plural(&gvk, plural)
}

/// Issue 16: whatever installed it (kustomize, OLM, a test), the operator applies the agents'
/// admission policies for its own namespace and agent service account at start, owned by its
/// Namespace: a deleted binding is back after a restart, and deleting the namespace removes them.
#[tokio::test]
async fn the_operator_applies_the_agent_policies_of_its_own_namespace() {
    let client = client().await.unwrap();
    let ns = TestNamespace::create(&client, "vap").await.unwrap();
    let ns_name = ns.name.clone();
    let uid = Api::<Namespace>::all(client.clone())
        .get(&ns_name)
        .await
        .unwrap()
        .metadata
        .uid
        .unwrap();
    let policies: Api<DynamicObject> =
        Api::all_with(client.clone(), &admission_ar("ValidatingAdmissionPolicy"));
    let bindings: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &admission_ar("ValidatingAdmissionPolicyBinding"),
    );
    let names = [
        format!("fim-agent-own-node-status-{ns_name}"),
        format!("fim-agent-own-node-configmaps-{ns_name}"),
    ];
    let all_there = || async {
        let mut missing = Vec::new();
        for name in &names {
            if policies.get_opt(name).await?.is_none() {
                missing.push(format!("policy {name}"));
            }
            if bindings.get_opt(name).await?.is_none() {
                missing.push(format!("binding {name}"));
            }
        }
        Ok(if missing.is_empty() {
            Poll::Ready(())
        } else {
            Poll::Pending(format!("missing: {missing:?}"))
        })
    };

    let mut operator = kube_fim_e2e::fixtures::Operator::start(&ns_name);
    wait_for("the operator's admission policies", WAIT, all_there)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", operator.log()));
    for name in &names {
        let p = policies.get(name).await.unwrap();
        let expr = p.data["spec"]["matchConditions"][0]["expression"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(
            expr,
            format!("request.userInfo.username == 'system:serviceaccount:{ns_name}:fim-agent'")
        );
        let owners = p.metadata.owner_references.clone().unwrap_or_default();
        assert!(
            owners.len() == 1 && owners[0].kind == "Namespace" && owners[0].uid == uid,
            "{owners:?}"
        );
        let b = bindings.get(name).await.unwrap();
        assert_eq!(b.data["spec"]["policyName"], json!(name));
        assert_eq!(b.data["spec"]["validationActions"], json!(["Deny"]));
    }

    // A deleted binding comes back when the operator (re)starts.
    bindings
        .delete(&names[0], &DeleteParams::default())
        .await
        .unwrap();
    operator.kill();
    let mut operator = kube_fim_e2e::fixtures::Operator::start(&ns_name);
    wait_for("the deleted binding re-applied", WAIT, all_there)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", operator.log()));
    operator.kill();

    // The namespace owns them: deleting it lets the garbage collector remove them.
    ns.delete().await.unwrap();
    wait_for(
        "the policies of a deleted namespace removed",
        WAIT * 2,
        || async {
            let mut left = Vec::new();
            for name in &names {
                if policies.get_opt(name).await?.is_some()
                    || bindings.get_opt(name).await?.is_some()
                {
                    left.push(name.clone());
                }
            }
            Ok(if left.is_empty() {
                Poll::Ready(())
            } else {
                Poll::Pending(format!("still there: {left:?}"))
            })
        },
    )
    .await
    .unwrap();
}
