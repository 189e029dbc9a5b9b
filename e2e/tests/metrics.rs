//! The secure metrics endpoints of fim-operator and fim-agent (issue 10, item 9) and the
//! metrics scenarios of file-integrity-operator's e2e suite (issue 11): MetricsHTTPVersion,
//! CertRotation, ServiceMonitoringMetricsTarget, MetricsResetPersistence. Each test runs the
//! operator and one real agent (kwok node, pod-bound token) in a namespace of its own.
//!
//! Build first: `cargo build -p kube-fim-operator -p kube-fim-agent` (`make e2e` does).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use kube_fim_crds::{FileIntegrity, FileIntegrityPhase};
use kube_fim_e2e::agents::{AgentProcess, AgentSpec};
use kube_fim_e2e::fixtures::*;
use kube_fim_e2e::metrics::{
    Response, Verify, account_token, get_request, https_get, plain_exchange, tls_exchange,
};
use kube_fim_e2e::prometheus::Prometheus;
use kube_fim_e2e::{KwokNodes, Poll, TestNamespace, client, repo_root, wait_for};
use serde_json::{Value, json};

const RULES: &str = "\
CONTENT = sha256+ftype+p+u+g+n+s+m+c
/etc f CONTENT
";

fn node_tree(root: &Path) {
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::write(root.join("etc/hosts"), "127.0.0.1 localhost\n").unwrap();
}

/// A namespace with one node, the operator, a FileIntegrity and its agent; Active when returned.
struct Setup {
    client: Client,
    ns: TestNamespace,
    _nodes: KwokNodes,
    node: String,
    operator: Operator,
    agent: AgentProcess,
    _dir: tempfile::TempDir,
}

impl Setup {
    async fn new(prefix: &str, operator_args: &[&str], agent_args: &[String]) -> Setup {
        let client = client().await.unwrap();
        let (ns, kwok, label) = namespace_with_nodes(&client, prefix, 1, &[]).await;
        let node = kwok.names[0].clone();
        Api::<ConfigMap>::namespaced(client.clone(), &ns.name)
            .create(
                &PostParams::default(),
                &ConfigMap {
                    metadata: ObjectMeta {
                        name: Some("rules".into()),
                        ..Default::default()
                    },
                    data: Some([("aide.conf".to_string(), RULES.to_string())].into()),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let operator = Operator::start_replica(&ns.name, "operator", operator_args);
        let fis: Api<FileIntegrity> = Api::namespaced(client.clone(), &ns.name);
        fis.create(
            &PostParams::default(),
            &file_integrity(
                "nodes",
                json!({
                    "nodeSelector": {label: "yes"},
                    "config": {"name": "rules", "namespace": ns.name, "key": "aide.conf",
                               "gracePeriod": 10},
                    "realtime": true,
                }),
            ),
        )
        .await
        .unwrap();
        let pods = agent_pods(&client, &ns.name, "nodes", std::slice::from_ref(&node)).await;
        let dir = tempfile::tempdir().unwrap();
        let agent = AgentProcess::start_with_args(
            &client,
            AgentSpec {
                file_integrity: "nodes".into(),
                namespace: ns.name.clone(),
                node: node.clone(),
                grace_period: 10,
                max_backups: 1,
                realtime: true,
                realtime_backend: None,
            },
            &pods[&node],
            dir.path(),
            None,
            agent_args.to_vec(),
            node_tree,
        )
        .await
        .unwrap();
        wait_for_fi(&fis, "nodes", "phase Active", |fi| {
            fi.status
                .as_ref()
                .is_some_and(|s| s.phase == FileIntegrityPhase::Active && s.nodes == 1)
        })
        .await;
        Setup {
            client,
            ns,
            _nodes: kwok,
            node,
            operator,
            agent,
            _dir: dir,
        }
    }

    /// (name, port) of both endpoints.
    fn endpoints(&self) -> [(&'static str, u16); 2] {
        [
            ("operator", self.operator.metrics_port),
            ("agent", self.agent.metrics_port),
        ]
    }
}

/// GET `path` until the endpoint answers at all (the agent binds its port a moment after start).
async fn get_when_up(port: u16, path: &str, token: Option<&str>) -> Response {
    wait_for(&format!("127.0.0.1:{port} to answer"), WAIT, || async {
        Ok(match https_get(port, path, token).await {
            Ok(r) => Poll::Ready(r),
            Err(e) => Poll::Pending(e.to_string()),
        })
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn metrics_need_a_token_allowed_to_get_metrics() {
    let s = Setup::new("metrics-authz", &[], &[]).await;
    let reader = account_token(&s.client, &s.ns.name, "reader", Some("fim-metrics-reader"))
        .await
        .unwrap();
    let nobody = account_token(&s.client, &s.ns.name, "nobody", None)
        .await
        .unwrap();
    for (name, port) in s.endpoints() {
        // No token, or one the API server does not know: 401.
        let r = get_when_up(port, "/metrics", None).await;
        assert_eq!(r.status, 401, "{name} without a token: {r:?}");
        assert!(!r.body.contains("# TYPE"), "{name} leaked metrics: {r:?}");
        let r = https_get(port, "/metrics", Some("not-a-token"))
            .await
            .unwrap();
        assert_eq!(r.status, 401, "{name} with a bad token: {r:?}");
        // A valid token whose account may not get /metrics: 403.
        let r = https_get(port, "/metrics", Some(&nobody)).await.unwrap();
        assert_eq!(r.status, 403, "{name} with a token without the role: {r:?}");
        assert!(
            r.body
                .contains(&format!("system:serviceaccount:{}:nobody", s.ns.name)),
            "{name}: {r:?}"
        );
        // fim-metrics-reader, as config/rbac ships it: 200 and the metrics.
        let r = https_get(port, "/metrics", Some(&reader)).await.unwrap();
        assert_eq!(r.status, 200, "{name} with the reader role: {r:?}");
        let want = if name == "operator" {
            "file_integrity_operator_leader 1"
        } else {
            "# TYPE fim_agent_scans_total counter"
        };
        assert!(r.body.contains(want), "{name}: {want} missing:\n{}", r.body);
        // The kubelet's probes carry no token: health stays open.
        let r = https_get(port, "/healthz", None).await.unwrap();
        assert_eq!(r.status, 200, "{name} /healthz: {r:?}");
        // Plain HTTP on the HTTPS port gets nothing.
        let reply = plain_exchange(port, &get_request("/metrics", Some(&reader)))
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&reply);
        assert!(
            !text.contains("# TYPE") && !text.starts_with("HTTP/1.1 200"),
            "{name} answered plain HTTP: {text:?}"
        );
    }
    let (code, _) = s.operator.get("/readyz").await.unwrap();
    assert_eq!(code, 200, "operator /readyz without a token");
}

#[tokio::test]
async fn metrics_http_version_is_http1_only() {
    let s = Setup::new("metrics-http1", &[], &[]).await;
    let reader = account_token(&s.client, &s.ns.name, "reader", Some("fim-metrics-reader"))
        .await
        .unwrap();
    for (name, port) in s.endpoints() {
        get_when_up(port, "/healthz", None).await;
        // A client offering h2 first gets http/1.1, and an HTTP/1.1 answer.
        let x = tls_exchange(
            port,
            &[b"h2", b"http/1.1"],
            &Verify::Nothing,
            &get_request("/metrics", Some(&reader)),
        )
        .await
        .unwrap();
        assert_eq!(
            x.alpn.as_deref(),
            Some(&b"http/1.1"[..]),
            "{name}: ALPN settled on {:?}",
            x.alpn
                .as_ref()
                .map(|p| String::from_utf8_lossy(p).into_owned())
        );
        let r = Response::parse(&x.reply).unwrap();
        assert_eq!((r.version.as_str(), r.status), ("HTTP/1.1", 200), "{name}");
        // A client that speaks only h2 is refused at the handshake (no common protocol).
        let h2_only = tls_exchange(
            port,
            &[b"h2"],
            &Verify::Nothing,
            &get_request("/healthz", None),
        )
        .await;
        match h2_only {
            Err(e) => assert!(
                e.to_string().contains("NoApplicationProtocol")
                    || e.to_string().contains("no_application_protocol")
                    || e.to_string().contains("alert"),
                "{name}: {e}"
            ),
            Ok(x) => panic!(
                "{name}: an h2-only client was served (ALPN {:?}): {:?}",
                x.alpn,
                String::from_utf8_lossy(&x.reply)
            ),
        }
        // HTTP/2 with prior knowledge (no ALPN): the connection preface and a SETTINGS frame
        // get no HTTP/2 frames back (an h2 server answers with its own SETTINGS frame).
        let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        preface.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        let x = tls_exchange(port, &[], &Verify::Nothing, &preface)
            .await
            .unwrap();
        assert!(x.alpn.is_none(), "{name}: {:?}", x.alpn);
        assert!(
            x.reply.is_empty() || x.reply.starts_with(b"HTTP/1.1 "),
            "{name} answered an HTTP/2 preface with {:?}",
            String::from_utf8_lossy(&x.reply)
        );
    }
}

/// A CA and a serving certificate for `localhost` / 127.0.0.1 signed by it: (CA PEM, cert PEM,
/// key PEM, cert DER).
fn issue(ca_name: &str) -> (String, String, String, Vec<u8>) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, ca_name);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    (
        ca.pem(),
        cert.pem(),
        key.serialize_pem(),
        cert.der().to_vec(),
    )
}

/// Writes the pair as the kubelet updates a Secret volume: into a new hidden directory, then
/// an atomic rename of the `..data` symlink; `tls.crt`/`tls.key` are symlinks through it.
fn publish_secret(dir: &Path, generation: u32, cert: &str, key: &str) {
    let version = format!("..v{generation}");
    fs::create_dir_all(dir.join(&version)).unwrap();
    fs::write(dir.join(&version).join("tls.crt"), cert).unwrap();
    fs::write(dir.join(&version).join("tls.key"), key).unwrap();
    let tmp = dir.join("..data_tmp");
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&version, &tmp).unwrap();
    fs::rename(&tmp, dir.join("..data")).unwrap();
    for f in ["tls.crt", "tls.key"] {
        if fs::symlink_metadata(dir.join(f)).is_err() {
            std::os::unix::fs::symlink(format!("..data/{f}"), dir.join(f)).unwrap();
        }
    }
}

fn verify(ca: &str) -> Verify {
    Verify::Ca {
        pem: ca.to_owned(),
        server_name: "localhost".into(),
    }
}

#[tokio::test]
async fn cert_rotation_is_picked_up_without_restart() {
    let certs = tempfile::tempdir().unwrap();
    let (op_dir, agent_dir): (PathBuf, PathBuf) =
        (certs.path().join("operator"), certs.path().join("agent"));
    let (ca1, cert1, key1, der1) = issue("e2e CA one");
    for d in [&op_dir, &agent_dir] {
        fs::create_dir_all(d).unwrap();
        publish_secret(d, 1, &cert1, &key1);
    }
    let s = Setup::new(
        "metrics-certs",
        &["--metrics-cert-dir", op_dir.to_str().unwrap()],
        &["--metrics-cert-dir".into(), agent_dir.display().to_string()],
    )
    .await;
    let agent_pid = s.agent.pid().unwrap();
    let operator_pid = s.operator.child.id();
    let health = get_request("/healthz", None);
    for (name, port) in s.endpoints() {
        get_when_up(port, "/healthz", None).await;
        let x = tls_exchange(port, &[b"http/1.1"], &verify(&ca1), &health)
            .await
            .unwrap_or_else(|e| panic!("{name} with the first certificate: {e}"));
        assert_eq!(x.certificate, der1, "{name} serves another certificate");
    }

    // Rotate to a certificate of another CA, as cert-manager renewing into the Secret would.
    let (ca2, cert2, key2, der2) = issue("e2e CA two");
    for d in [&op_dir, &agent_dir] {
        publish_secret(d, 2, &cert2, &key2);
    }
    for (name, port) in s.endpoints() {
        wait_for(
            &format!("{name} to serve the rotated certificate"),
            Duration::from_secs(30),
            || async {
                Ok(
                    match tls_exchange(port, &[b"http/1.1"], &verify(&ca2), &health).await {
                        Ok(x) if x.certificate == der2 => Poll::Ready(()),
                        Ok(x) => {
                            Poll::Pending(format!("{} bytes of another cert", x.certificate.len()))
                        }
                        Err(e) => Poll::Pending(e.to_string()),
                    },
                )
            },
        )
        .await
        .unwrap();
        // The old certificate is gone: a client trusting only the old CA is refused.
        let old = tls_exchange(port, &[b"http/1.1"], &verify(&ca1), &health).await;
        assert!(old.is_err(), "{name} still serves the old certificate");
        // And /metrics still works with a token.
        let (code, body) = kube_fim_e2e::metrics::scrape(port, "/metrics")
            .await
            .unwrap();
        assert_eq!(code, 200, "{name}: {body}");
    }
    // No restart: the same processes, still running.
    assert_eq!(s.agent.pid(), Some(agent_pid));
    assert_eq!(s.operator.child.id(), operator_pid);
    let mut operator = s.operator;
    assert!(
        operator.child.try_wait().unwrap().is_none(),
        "the operator exited"
    );
    assert!(
        operator.log().contains("serving certificate reloaded"),
        "{}",
        operator.log()
    );
    operator.kill();
}

/// The objects of a manifest file (documents split on `---`).
fn manifests(path: &Path) -> Vec<Value> {
    let text = fs::read_to_string(path).unwrap();
    text.split("\n---\n")
        .map(|doc| serde_saphyr::from_str::<Value>(doc).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{kind}/{name} not shipped"))
}

/// A Prometheus scrape config for one ServiceMonitor endpoint or PodMonitor podMetricsEndpoint,
/// as the Prometheus operator writes it: scheme, path, TLS settings and the bearer credentials
/// read from the referenced Secret (here written to `token_file`). The target is given: the
/// operator and agent run as processes of this machine, not behind the Service's Endpoints.
fn scrape_config(job: &str, endpoint: &Value, token_file: &Path, target: &str) -> String {
    let scheme = endpoint["scheme"].as_str().unwrap_or("http");
    let path = endpoint["path"].as_str().unwrap_or("/metrics");
    let tls = &endpoint["tlsConfig"];
    let mut tls_yaml = String::new();
    if tls["insecureSkipVerify"] == true {
        tls_yaml.push_str("      insecure_skip_verify: true\n");
    }
    if let Some(name) = tls["serverName"].as_str() {
        tls_yaml.push_str(&format!("      server_name: '{name}'\n"));
    }
    let auth = &endpoint["authorization"];
    let auth_yaml = if auth["credentials"].is_object() {
        format!(
            "    authorization:\n      type: {}\n      credentials_file: '{}'\n",
            auth["type"].as_str().unwrap_or("Bearer"),
            token_file.display()
        )
    } else {
        String::new()
    };
    let tls_block = if tls_yaml.is_empty() {
        String::new()
    } else {
        format!("    tls_config:\n{tls_yaml}")
    };
    format!(
        "  - job_name: '{job}'\n    scheme: {scheme}\n    metrics_path: '{path}'\n{tls_block}{auth_yaml}    static_configs:\n      - targets: ['{target}']\n"
    )
}

#[tokio::test]
async fn service_monitoring_metrics_target() {
    let s = Setup::new("metrics-sm", &[], &[]).await;
    let monitors = manifests(&repo_root().join("config/prometheus/monitors.yaml"));
    let sm = find(&monitors, "ServiceMonitor", "fim-operator");
    let pm = find(&monitors, "PodMonitor", "fim-agent");
    // The ServiceMonitor selects the operator's Service by its labels and names its port.
    let service = &manifests(&repo_root().join("config/manager/service.yaml"))[0];
    for (k, v) in sm["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(&service["metadata"]["labels"][k], v, "Service label {k}");
    }
    let sm_endpoint = &sm["spec"]["endpoints"][0];
    assert!(
        service["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == sm_endpoint["port"]),
        "the ServiceMonitor's port {} is not a port of the Service",
        sm_endpoint["port"]
    );
    let pm_endpoint = &pm["spec"]["podMetricsEndpoints"][0];
    assert_eq!(
        pm_endpoint["port"], "metrics",
        "the agent container's port name"
    );
    assert_eq!(
        pm["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"],
        "fim-agent"
    );

    // The credentials: the shipped ServiceAccount, its binding to fim-metrics-reader and its
    // token Secret, created here in the test's namespace; the token controller fills the Secret.
    let secret_name = sm_endpoint["authorization"]["credentials"]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    let key = sm_endpoint["authorization"]["credentials"]["key"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        pm_endpoint["authorization"]["credentials"]["name"], secret_name,
        "both monitors use the same token Secret"
    );
    let reader = manifests(&repo_root().join("config/prometheus/metrics_reader.yaml"));
    let sa = find(&reader, "ServiceAccount", "fim-metrics-reader");
    let binding = find(&reader, "ClusterRoleBinding", "fim-metrics-reader");
    assert_eq!(binding["roleRef"]["name"], "fim-metrics-reader");
    assert_eq!(binding["subjects"][0]["name"], sa["metadata"]["name"]);
    let secret = find(&reader, "Secret", &secret_name);
    assert_eq!(secret["type"], "kubernetes.io/service-account-token");
    kube_fim_e2e::metrics::ensure_service_account(&s.client, &s.ns.name, "fim-metrics-reader")
        .await
        .unwrap();
    kube_fim_e2e::metrics::apply_metrics_roles(&s.client)
        .await
        .unwrap();
    kube_fim_e2e::metrics::bind_cluster_role(
        &s.client,
        &s.ns.name,
        "fim-metrics-reader",
        binding["roleRef"]["name"].as_str().unwrap(),
    )
    .await
    .unwrap();
    let mut secret_obj: Secret = serde_json::from_value(secret.clone()).unwrap();
    secret_obj.metadata.namespace = Some(s.ns.name.clone());
    let secrets: Api<Secret> = Api::namespaced(s.client.clone(), &s.ns.name);
    secrets
        .create(&PostParams::default(), &secret_obj)
        .await
        .unwrap();
    let token = wait_for("the token controller to fill the Secret", WAIT, || async {
        let got = secrets.get(&secret_name).await?;
        Ok(match got.data.as_ref().and_then(|d| d.get(&key)) {
            Some(t) if !t.0.is_empty() => Poll::Ready(String::from_utf8(t.0.clone()).unwrap()),
            _ => Poll::Pending("no token yet".into()),
        })
    })
    .await
    .unwrap();

    let operator_target = format!("127.0.0.1:{}", s.operator.metrics_port);
    let agent_target = format!("127.0.0.1:{}", s.agent.metrics_port);
    let (sm_yaml, pm_yaml) = (sm_endpoint.clone(), pm_endpoint.clone());
    let prometheus = Prometheus::start_with(
        |dir| {
            let token_file = dir.join("token");
            fs::write(&token_file, &token)?;
            let empty = dir.join("empty");
            fs::write(&empty, "")?;
            // The same operator endpoint without the credentials: must be down (401), or the
            // bearer token is not what protects it.
            let mut anonymous = sm_yaml.clone();
            anonymous["authorization"] = Value::Null;
            Ok([
                scrape_config(
                    "serviceMonitor/fim-operator",
                    &sm_yaml,
                    &token_file,
                    &operator_target,
                ),
                scrape_config("podMonitor/fim-agent", &pm_yaml, &token_file, &agent_target),
                scrape_config("anonymous", &anonymous, &empty, &operator_target),
            ]
            .concat())
        },
        &[],
    )
    .await
    .unwrap();
    for job in ["serviceMonitor/fim-operator", "podMonitor/fim-agent"] {
        let up = prometheus
            .wait_for_value(&format!("up{{job=\"{job}\"}} == 1"), WAIT)
            .await;
        let targets = prometheus.targets().await.unwrap();
        assert_eq!(up.ok(), Some(1.0), "{job} not up; targets: {targets:#?}");
    }
    let leader = prometheus
        .wait_for_value(
            "file_integrity_operator_leader{job=\"serviceMonitor/fim-operator\"}",
            WAIT,
        )
        .await
        .unwrap();
    assert_eq!(leader, 1.0);
    prometheus
        .wait_for_value(
            "fim_agent_last_successful_scan_timestamp_seconds{job=\"podMonitor/fim-agent\"}",
            WAIT,
        )
        .await
        .unwrap();
    let anonymous = prometheus
        .wait_for_value("up{job=\"anonymous\"}", WAIT)
        .await
        .unwrap();
    let targets = prometheus.targets().await.unwrap();
    assert_eq!(anonymous, 0.0, "scraped without a token: {targets:#?}");
    let error = targets
        .iter()
        .find(|t| t["labels"]["job"] == "anonymous")
        .map(|t| t["lastError"].to_string())
        .unwrap_or_default();
    assert!(error.contains("401"), "{error}");
}

#[tokio::test]
async fn metrics_reset_persistence() {
    let s = Setup::new("metrics-reset", &[], &[]).await;
    let node = s.node.clone();
    let ok = format!("file_integrity_operator_node_failed{{node=\"{node}\"}} 0");
    let failed = format!("file_integrity_operator_node_failed{{node=\"{node}\"}} 1");
    wait_for_metric(&s.operator, &ok).await;
    // A file changes on the node: the node fails and its gauge says so.
    fs::write(s.agent.root.join("etc/hosts"), "10.0.0.1 evil\n").unwrap();
    wait_for_metric(&s.operator, &failed).await;

    // The operator crashes (SIGKILL) and another process takes over: the gauge is rebuilt
    // from the node statuses, not reset to 0 or forgotten.
    let mut old = s.operator;
    let old_pid = old.child.id();
    old.kill();
    // The new one must wait for the old Lease to expire (15 s): the same identity takes it over
    // at once.
    let new = Operator::start_replica(&s.ns.name, "operator", &[]);
    assert_ne!(new.child.id(), old_pid);
    wait_for_metric(&new, &failed).await;
    let (code, body) = new.get("/metrics").await.unwrap();
    assert_eq!(code, 200);
    assert!(!body.contains(&ok), "{body}");
    drop(s.agent);
}
