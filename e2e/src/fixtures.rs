//! Fixtures shared by the suites that run kube-fim's binaries against the local cluster: the
//! operator as a child process, test namespaces with the agent's service account and RBAC, nodes
//! of a test's own, and waits on FileIntegrity status, events and metrics.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod, ServiceAccount, Taint};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use kube::api::{ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use kube_fim_crds::{FileIntegrity, FileIntegrityPhase, labels};
use serde_json::json;

use crate::{
    KwokNodes, Poll, TestNamespace, apply_crds, free_port, kubeconfig_path, repo_root, state_dir,
    wait_for,
};

pub const WAIT: Duration = Duration::from_secs(60);

/// `<target dir>/debug/fim-operator`; the target dir is `CARGO_TARGET_DIR` (relative to the
/// repository root when relative) or `<repo>/target`.
pub fn operator_binary() -> PathBuf {
    binary("fim-operator", "kube-fim-operator")
}

/// `<target dir>/debug/fim-agent`.
pub fn agent_binary() -> PathBuf {
    binary("fim-agent", "kube-fim-agent")
}

/// `<target dir>/debug/<name>`, built from `package` (`make e2e` builds both), or
/// `$KUBE_FIM_BIN_DIR/<name>` when set (private copies, when several worktrees share a target dir).
pub fn binary(name: &str, package: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("KUBE_FIM_BIN_DIR") {
        let path = PathBuf::from(dir).join(name);
        assert!(path.is_file(), "{} is missing", path.display());
        return path;
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| {
            if p.is_absolute() {
                p
            } else {
                repo_root().join(p)
            }
        })
        .unwrap_or_else(|| repo_root().join("target"));
    let path = target.join("debug").join(name);
    assert!(
        path.is_file(),
        "{} is missing: build it with `cargo build -p {package}` (make e2e does)",
        path.display()
    );
    path
}

/// The operator as a child process; killed when dropped. Its log is
/// `e2e/.cluster/logs/operator-<namespace>[-<identity>].log`.
pub struct Operator {
    /// Its Lease identity (`POD_NAME`) when started as a named replica.
    pub identity: String,
    pub child: Child,
    pub metrics_port: u16,
    pub log_path: PathBuf,
}

impl Operator {
    /// The operator watching `namespace`.
    pub fn start(namespace: &str) -> Operator {
        Operator::spawn(namespace, None, &[])
    }

    /// One of several replicas: `POD_NAME=<identity>` (its Lease identity and the events'
    /// reportingInstance), with `extra_args`.
    pub fn start_replica(namespace: &str, identity: &str, extra_args: &[&str]) -> Operator {
        Operator::spawn(namespace, Some(identity), extra_args)
    }

    /// The operator watching `namespace` with agents from `agent_image` (a real image, for the
    /// real node), with `extra_args`.
    pub fn start_with_agent_image(
        namespace: &str,
        agent_image: &str,
        extra_args: &[&str],
    ) -> Operator {
        Operator::spawn_with(namespace, None, agent_image, extra_args)
    }

    fn spawn(namespace: &str, identity: Option<&str>, extra_args: &[&str]) -> Operator {
        Operator::spawn_with(namespace, identity, "kube-fim/agent:e2e", extra_args)
    }

    fn spawn_with(
        namespace: &str,
        identity: Option<&str>,
        agent_image: &str,
        extra_args: &[&str],
    ) -> Operator {
        let metrics_port = free_port().unwrap();
        let logs = state_dir().join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        let log_path = match identity {
            Some(id) => logs.join(format!("operator-{namespace}-{id}.log")),
            None => logs.join(format!("operator-{namespace}.log")),
        };
        let log = std::fs::File::create(&log_path).unwrap();
        let mut command = Command::new(operator_binary());
        command
            .args([
                "--namespace",
                namespace,
                "--metrics-addr",
                &format!("127.0.0.1:{metrics_port}"),
                "--agent-image",
                agent_image,
            ])
            .args(extra_args)
            .env("KUBECONFIG", kubeconfig_path())
            .env("RUST_LOG", "info,fim_operator=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Some(id) = identity {
            command.env("POD_NAME", id);
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", operator_binary().display()));
        Operator {
            identity: identity.unwrap_or("operator").to_owned(),
            child,
            metrics_port,
            log_path,
        }
    }

    /// GET `path` on the metrics and health endpoint over HTTPS: (status code, body). `/metrics`
    /// is asked with the shared scraper's token (`fim-metrics-reader`); health endpoints with
    /// none, as the kubelet's probes.
    pub async fn get(&self, path: &str) -> crate::Result<(u16, String)> {
        if path.starts_with("/metrics") {
            return crate::metrics::scrape(self.metrics_port, path).await;
        }
        let r = crate::metrics::https_get(self.metrics_port, path, None).await?;
        Ok((r.status, r.body))
    }

    /// `/readyz` as (code, body); an unreachable operator is (0, error).
    pub async fn readyz(&self) -> (u16, String) {
        self.get("/readyz")
            .await
            .unwrap_or_else(|e| (0, e.to_string()))
    }

    /// SIGKILL: a Lease it holds is not released.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then waits for the process to exit (as a pod's termination does).
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM failed");
        wait_for("the operator to exit after SIGTERM", WAIT, || {
            let polled = match self.child.try_wait() {
                Ok(Some(status)) => Poll::Ready(status),
                Ok(None) => Poll::Pending("still running".into()),
                Err(e) => Poll::Pending(e.to_string()),
            };
            async move { Ok(polled) }
        })
        .await
        .unwrap()
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A namespace with the agents' service account (pods are refused without it).
pub async fn namespace_with_agent_account(client: &Client, prefix: &str) -> TestNamespace {
    apply_crds(client).await.unwrap();
    let ns = TestNamespace::create(client, prefix).await.unwrap();
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns.name);
    sas.create(
        &PostParams::default(),
        &ServiceAccount {
            metadata: ObjectMeta {
                name: Some("fim-agent".into()),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await
    .unwrap();
    ns
}

pub fn file_integrity(name: &str, spec: serde_json::Value) -> FileIntegrity {
    serde_json::from_value(json!({
        "apiVersion": "fim.kubefim.io/v1alpha1", "kind": "FileIntegrity",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .unwrap()
}

pub async fn label_nodes(client: &Client, nodes: &[String], label: &str, value: Option<&str>) {
    let api: Api<Node> = Api::all(client.clone());
    for n in nodes {
        let patch = json!({"metadata": {"labels": {label: value}}});
        api.patch(n, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
    }
}

/// Waits until `fi` satisfies `check`, describing its status meanwhile.
pub async fn wait_for_fi(
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
            Poll::Pending(format!("status: {:?}", fi.status))
        })
    })
    .await
    .unwrap()
}

pub fn phase(fi: &FileIntegrity) -> Option<FileIntegrityPhase> {
    fi.status.as_ref().map(|s| s.phase)
}

pub fn condition<'a>(
    fi: &'a FileIntegrity,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    fi.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

pub async fn wait_for_metric(operator: &Operator, want: &str) {
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

pub async fn grant_agent_rbac(client: &Client, ns: &str) {
    let rule = |group: &str, resources: &[&str], verbs: &[&str]| PolicyRule {
        api_groups: Some(vec![group.into()]),
        resources: Some(resources.iter().map(|r| (*r).into()).collect()),
        verbs: verbs.iter().map(|v| (*v).into()).collect(),
        ..Default::default()
    };
    let meta = ObjectMeta {
        name: Some("fim-agent".into()),
        namespace: Some(ns.into()),
        ..Default::default()
    };
    Api::<Role>::namespaced(client.clone(), ns)
        .create(
            &PostParams::default(),
            &Role {
                metadata: meta.clone(),
                rules: Some(vec![
                    rule(
                        "fim.kubefim.io",
                        &["fileintegritynodestatuses"],
                        &["get", "list", "watch", "create", "patch", "update"],
                    ),
                    rule(
                        "fim.kubefim.io",
                        &["fileintegrities"],
                        &["get", "list", "watch"],
                    ),
                    rule(
                        "",
                        &["configmaps"],
                        &["get", "list", "watch", "create", "patch", "update"],
                    ),
                    rule("events.k8s.io", &["events"], &["create", "patch"]),
                ]),
            },
        )
        .await
        .unwrap();
    Api::<RoleBinding>::namespaced(client.clone(), ns)
        .create(
            &PostParams::default(),
            &RoleBinding {
                metadata: meta,
                role_ref: RoleRef {
                    api_group: "rbac.authorization.k8s.io".into(),
                    kind: "Role".into(),
                    name: "fim-agent".into(),
                },
                subjects: Some(vec![Subject {
                    kind: "ServiceAccount".into(),
                    name: "fim-agent".into(),
                    namespace: Some(ns.into()),
                    ..Default::default()
                }]),
            },
        )
        .await
        .unwrap();
    // The agent's metrics endpoint reviews scrapers' tokens (as config/rbac binds kube-fim's).
    crate::metrics::apply_metrics_roles(client).await.unwrap();
    crate::metrics::bind_cluster_role(client, ns, "fim-agent", crate::metrics::AUTH_ROLE)
        .await
        .unwrap();
}

/// A namespace with the agent account and its RBAC, `count` nodes of its own labelled
/// `e2e.kubefim.io/<ns>=yes`, and the label.
pub async fn namespace_with_nodes(
    client: &Client,
    prefix: &str,
    count: usize,
    taints: &[Taint],
) -> (TestNamespace, KwokNodes, String) {
    let ns = namespace_with_agent_account(client, prefix).await;
    grant_agent_rbac(client, &ns.name).await;
    let label = format!("e2e.kubefim.io/{}", ns.name);
    let nodes = KwokNodes::create(
        client,
        &ns.name,
        count,
        &BTreeMap::from([(label.clone(), "yes".to_owned())]),
        taints,
    )
    .await
    .unwrap();
    (ns, nodes, label)
}

/// Waits until an agent pod of `fi` runs on each of `nodes`; returns them by node.
pub async fn agent_pods(
    client: &Client,
    ns: &str,
    fi: &str,
    nodes: &[String],
) -> BTreeMap<String, Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    wait_for(
        &format!("agent pods Running on {nodes:?}"),
        WAIT,
        || async {
            let running: BTreeMap<String, Pod> = pods
                .list(&ListParams::default().labels(&format!("{}={fi}", labels::OWNER)))
                .await?
                .items
                .into_iter()
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .filter_map(|p| Some((p.spec.as_ref()?.node_name.clone()?, p)))
                .collect();
            Ok(if nodes.iter().all(|n| running.contains_key(n)) {
                Poll::Ready(running)
            } else {
                Poll::Pending(format!("running on {:?}", running.keys()))
            })
        },
    )
    .await
    .unwrap()
}

pub async fn wait_for_event(
    client: &Client,
    ns: &str,
    fi: &str,
    reason: &str,
    type_: &str,
    note: impl Fn(&str) -> bool,
) -> String {
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    wait_for(&format!("{type_} event {reason} on {fi}"), WAIT, || async {
        let seen: Vec<(Option<String>, Option<String>)> = events
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter(|e| {
                e.reason.as_deref() == Some(reason)
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(fi)
            })
            .map(|e| (e.type_, e.note))
            .collect();
        Ok(
            match seen
                .iter()
                .find(|(t, n)| t.as_deref() == Some(type_) && n.as_deref().is_some_and(&note))
            {
                Some((_, n)) => Poll::Ready(n.clone().unwrap_or_default()),
                None => Poll::Pending(format!("{reason} events: {seen:?}")),
            },
        )
    })
    .await
    .unwrap()
}
