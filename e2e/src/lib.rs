//! Helpers for end-to-end tests against the local control plane that `make cluster-up` starts
//! (e2e/scripts): a client from its kubeconfig, a namespace per test, waiting for a condition with a
//! deadline, S3 (MinIO) access, and Prometheus.
//!
//! Every helper fails loudly: if the control plane is not running, the test fails with the reason and
//! the command that starts it. Nothing here skips.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

pub mod agents;
pub mod containers;
pub mod fixtures;
pub mod metrics;
pub mod prometheus;
pub mod proxy;
pub mod real_node;
pub mod rsyslog;

/// Why an e2e helper could not do its job.
#[derive(Debug, thiserror::Error)]
pub enum E2eError {
    #[error(
        "the local control plane is not running ({0}); start it with `make cluster-up` (make test does)"
    )]
    NoCluster(String),
    #[error("timed out after {timeout:?} waiting for {what}; last observation: {last}")]
    Timeout {
        what: String,
        timeout: Duration,
        last: String,
    },
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = E2eError> = std::result::Result<T, E>;

/// The directory cluster-up writes its state to (`e2e/.cluster`), overridable with `KUBE_FIM_CLUSTER_DIR` (as the scripts).
pub fn state_dir() -> PathBuf {
    std::env::var_os("KUBE_FIM_CLUSTER_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest_dir().join(".cluster"))
}

/// `e2e/` of the checkout under test. Read at run time (cargo test sets it): a helper library
/// compiled in another checkout sharing the target dir must not point the tests at that checkout.
fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// The repository root (for config/crd and friends).
pub fn repo_root() -> PathBuf {
    manifest_dir().join("..")
}

/// Runs `program` in the repository root, without make's jobserver variables (a script that runs
/// make starts its own); returns (success, stdout, stderr).
pub fn run_in_repo(
    program: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> (bool, String, String) {
    let out = std::process::Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .current_dir(repo_root())
        .env_remove("MAKEFLAGS")
        .env_remove("MFLAGS")
        .env_remove("MAKELEVEL")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// [`run_in_repo`], failing the test with both outputs unless it succeeds; returns stdout.
pub fn must_run(program: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let (ok, stdout, stderr) = run_in_repo(program, args, env);
    assert!(
        ok,
        "{} {args:?} failed:\n{stdout}\n{stderr}",
        program.display()
    );
    stdout
}

/// `KEY=VALUE` lines of `e2e/.cluster/env`.
pub fn cluster_env() -> Result<BTreeMap<String, String>> {
    let path = state_dir().join("env");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| E2eError::NoCluster(format!("cannot read {}: {e}", path.display())))?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('"').to_string()))
        .collect())
}

/// rustls needs exactly one process-wide crypto provider; kube and aws-sdk-s3 both use aws-lc-rs.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

pub fn kubeconfig_path() -> PathBuf {
    state_dir().join("kubeconfig")
}

/// An admin client for the local control plane, checked with a round trip.
pub async fn client() -> Result<Client> {
    install_crypto_provider();
    let path = kubeconfig_path();
    let kubeconfig = Kubeconfig::read_from(&path)
        .map_err(|e| E2eError::NoCluster(format!("cannot read {}: {e}", path.display())))?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|e| E2eError::NoCluster(format!("bad kubeconfig {}: {e}", path.display())))?;
    let client = Client::try_from(config)?;
    client
        .apiserver_version()
        .await
        .map_err(|e| E2eError::NoCluster(format!("API server does not answer: {e}")))?;
    Ok(client)
}

/// A client that authenticates with a bearer token (for example a pod-bound service-account token),
/// against the same API server as the admin kubeconfig.
pub async fn client_with_token(token: &str) -> Result<Client> {
    install_crypto_provider();
    let kubeconfig =
        Kubeconfig::read_from(kubeconfig_path()).map_err(|e| E2eError::NoCluster(e.to_string()))?;
    let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|e| E2eError::NoCluster(e.to_string()))?;
    config.auth_info = kube::config::AuthInfo {
        token: Some(token.to_string().into()),
        ..Default::default()
    };
    Ok(Client::try_from(config)?)
}

/// The names of the kwok nodes cluster-up started (label `type=kwok`), sorted.
pub async fn kwok_nodes(client: &Client) -> Result<Vec<String>> {
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    let list = nodes
        .list(&kube::api::ListParams::default().labels("type=kwok"))
        .await?;
    let mut names: Vec<String> = list
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    names.sort();
    Ok(names)
}

/// A namespace of its own for one test, labelled so leftovers are easy to find. Call `delete` at
/// the end; cluster-down removes everything anyway.
pub struct TestNamespace {
    pub name: String,
    client: Client,
}

impl TestNamespace {
    pub async fn create(client: &Client, prefix: &str) -> Result<TestNamespace> {
        let name = format!("{prefix}-{}", unique_suffix());
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(BTreeMap::from([(
                    "kube-fim-e2e".to_string(),
                    "true".to_string(),
                )])),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await?;
        Ok(TestNamespace {
            name,
            client: client.clone(),
        })
    }

    pub async fn delete(self) -> Result<()> {
        Api::<Namespace>::all(self.client)
            .delete(&self.name, &DeleteParams::background())
            .await?;
        Ok(())
    }
}

/// A short random-enough suffix (time and pid based; no rand dependency needed).
pub fn unique_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "{:x}",
        (nanos ^ (std::process::id() as u128) << 40) & 0xff_ffff_ffff
    )
}

/// Polls `probe` until it returns `Ok(Some(value))`, backing off from 50 ms to 1 s, and fails with
/// the last observation after `timeout`. `probe` returns `Ok(None)` with a description in `last`
/// while the condition does not hold yet.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Poll<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut delay = Duration::from_millis(50);
    let mut last;
    loop {
        match probe().await {
            Ok(Poll::Ready(v)) => return Ok(v),
            Ok(Poll::Pending(observed)) => last = observed,
            Err(e) => last = format!("error: {e}"),
        }
        if Instant::now() >= deadline {
            return Err(E2eError::Timeout {
                what: what.to_string(),
                timeout,
                last,
            });
        }
        tokio::time::sleep(delay.min(deadline.saturating_duration_since(Instant::now()))).await;
        delay = (delay * 2).min(Duration::from_secs(1));
    }
}

/// What a `wait_for` probe saw.
pub enum Poll<T> {
    Ready(T),
    /// Not yet; the string says what was observed (shown if the wait times out).
    Pending(String),
}

/// kube-fim's S3 client (`fim_s3`) for the MinIO that cluster-up started: its default bucket,
/// or `bucket` when given.
pub fn s3(bucket: Option<&str>) -> Result<fim_s3::Bucket> {
    install_crypto_provider();
    let env = cluster_env()?;
    let get = |k: &str| {
        env.get(k).cloned().ok_or_else(|| {
            E2eError::NoCluster(format!(
                "{k} missing from {}",
                state_dir().join("env").display()
            ))
        })
    };
    let credentials = fim_s3::Credentials {
        access_key: get("AWS_ACCESS_KEY_ID")?,
        secret_key: get("AWS_SECRET_ACCESS_KEY")?,
    };
    let bucket = match bucket {
        Some(b) => b.to_owned(),
        None => get("S3_BUCKET")?,
    };
    Ok(fim_s3::Bucket::new(
        &get("S3_ENDPOINT")?,
        &get("AWS_REGION")?,
        &bucket,
        &credentials,
        "kube-fim-e2e",
    ))
}

/// A free TCP port on 127.0.0.1 (bound and released; good enough for test processes).
pub fn free_port() -> Result<u16> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| E2eError::Other(e.to_string()))?;
    Ok(listener
        .local_addr()
        .map_err(|e| E2eError::Other(e.to_string()))?
        .port())
}

/// Applies config/crd/fim.kubefim.io_*.yaml (server-side apply) and waits until each CRD is
/// Established; returns their names.
pub async fn apply_crds(client: &Client) -> Result<Vec<String>> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let dir = repo_root().join("config/crd");
    let mut names = Vec::new();
    let entries = std::fs::read_dir(&dir)
        .map_err(|e| E2eError::Other(format!("cannot read {}: {e}", dir.display())))?;
    for entry in entries {
        let path = entry.map_err(|e| E2eError::Other(e.to_string()))?.path();
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        if !name.starts_with("fim.kubefim.io_") {
            continue;
        }
        let text = std::fs::read_to_string(&path)
            .map_err(|e| E2eError::Other(format!("cannot read {}: {e}", path.display())))?;
        let crd: CustomResourceDefinition = serde_saphyr::from_str(&text)
            .map_err(|e| E2eError::Other(format!("bad CRD {}: {e}", path.display())))?;
        let crd_name = crd
            .metadata
            .name
            .clone()
            .ok_or_else(|| E2eError::Other(format!("CRD {} has no name", path.display())))?;
        crds.patch(
            &crd_name,
            &PatchParams::apply("fim-e2e").force(),
            &Patch::Apply(&crd),
        )
        .await?;
        names.push(crd_name);
    }
    for name in &names {
        wait_for(
            &format!("CRD {name} Established"),
            Duration::from_secs(60),
            || async {
                let crd = crds.get(name).await?;
                let established = crd
                    .status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True");
                Ok(if established {
                    Poll::Ready(())
                } else {
                    Poll::Pending("not established".into())
                })
            },
        )
        .await?;
    }
    Ok(names)
}

/// Nodes a test created for itself (kwok-managed, so they turn Ready and run pods), deleted when
/// dropped, even when the test panics. Tests that taint, relabel or delete a node use these and
/// never touch the shared `kwok-node-N`. They do not carry `type=kwok`, so [`kwok_nodes`] (and
/// the suites that count on exactly three) never see them.
pub struct KwokNodes {
    pub names: Vec<String>,
}

impl KwokNodes {
    /// Creates `count` nodes `<prefix>-n<i>` with `labels` and `taints` and waits until kwok
    /// reports them Ready.
    pub async fn create(
        client: &Client,
        prefix: &str,
        count: usize,
        labels: &BTreeMap<String, String>,
        taints: &[k8s_openapi::api::core::v1::Taint],
    ) -> Result<KwokNodes> {
        use k8s_openapi::api::core::v1::{Node, NodeSpec};
        let api: Api<Node> = Api::all(client.clone());
        let mut nodes = KwokNodes { names: Vec::new() };
        for i in 0..count {
            let name = format!("{prefix}-n{i}");
            let mut node_labels = BTreeMap::from([
                ("kubernetes.io/hostname".to_string(), name.clone()),
                ("kubernetes.io/os".to_string(), "linux".to_string()),
                ("kubernetes.io/arch".to_string(), "amd64".to_string()),
                ("kube-fim-e2e".to_string(), "true".to_string()),
            ]);
            node_labels.extend(labels.clone());
            let node = Node {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    annotations: Some(BTreeMap::from([
                        ("kwok.x-k8s.io/node".to_string(), "fake".to_string()),
                        ("node.alpha.kubernetes.io/ttl".to_string(), "0".to_string()),
                    ])),
                    labels: Some(node_labels),
                    ..Default::default()
                },
                spec: Some(NodeSpec {
                    taints: (!taints.is_empty()).then(|| taints.to_vec()),
                    ..Default::default()
                }),
                ..Default::default()
            };
            api.create(&PostParams::default(), &node).await?;
            nodes.names.push(name);
        }
        for name in &nodes.names {
            wait_for(
                &format!("node {name} Ready"),
                Duration::from_secs(60),
                || async {
                    let node = api.get(name).await?;
                    let ready = node
                        .status
                        .and_then(|s| s.conditions)
                        .unwrap_or_default()
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True");
                    Ok(if ready {
                        Poll::Ready(())
                    } else {
                        Poll::Pending("not Ready".into())
                    })
                },
            )
            .await?;
        }
        Ok(nodes)
    }
}

impl Drop for KwokNodes {
    fn drop(&mut self) {
        if self.names.is_empty() {
            return;
        }
        // Drop cannot await: kubectl does it, without waiting.
        let Ok(env) = cluster_env() else { return };
        let Some(kubectl) = env.get("KUBECTL") else {
            return;
        };
        let _ = std::process::Command::new(kubectl)
            .arg("--kubeconfig")
            .arg(kubeconfig_path())
            .args(["delete", "node", "--wait=false", "--ignore-not-found"])
            .args(&self.names)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// A token of service account `service_account` bound to `pod` (TokenRequest with a
/// boundObjectRef): it carries the pod's node, as the token a kubelet mounts into the pod.
pub async fn pod_bound_token(
    client: &Client,
    namespace: &str,
    service_account: &str,
    pod: &k8s_openapi::api::core::v1::Pod,
) -> Result<String> {
    service_account_token(client, namespace, service_account, Some(pod)).await
}

/// A 10-minute token of service account `service_account`, bound to `pod` when given.
pub async fn service_account_token(
    client: &Client,
    namespace: &str,
    service_account: &str,
    pod: Option<&k8s_openapi::api::core::v1::Pod>,
) -> Result<String> {
    use k8s_openapi::api::authentication::v1::{
        BoundObjectReference, TokenRequest, TokenRequestSpec,
    };
    use k8s_openapi::api::core::v1::ServiceAccount;
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![],
            bound_object_ref: pod.map(|pod| BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
            expiration_seconds: Some(600),
        },
        ..Default::default()
    };
    let status = Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create_token_request(service_account, &PostParams::default(), &request)
        .await?
        .status
        .ok_or_else(|| E2eError::Other("TokenRequest returned no token".into()))?;
    Ok(status.token)
}
