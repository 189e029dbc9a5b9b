//! The agent DaemonSet of a FileIntegrity, and when to create it (`spec.config.initialDelay`).

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::{
    api::{
        apps::v1::{DaemonSet, DaemonSetSpec, DaemonSetUpdateStrategy, RollingUpdateDaemonSet},
        core::v1::{
            Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
            HTTPGetAction, HostPathVolumeSource, KeyToPath, ObjectFieldSelector,
            PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements,
            SeccompProfile, SecretKeySelector, SecretVolumeSource, SecurityContext, Volume,
            VolumeMount,
        },
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{LabelSelector, ObjectMeta},
        util::intstr::IntOrString,
    },
    jiff::Timestamp,
};
use kube::{Resource, ResourceExt};
use kube_fim_crds::{FileIntegrity, labels};

use crate::{Error, Result};

/// The agent's liveness endpoint: fails when its scanning worker has made no progress for twice
/// gracePeriod plus a minute, or has stopped (`fim_agent::health`).
pub const LIVENESS_PATH: &str = "/livez";
/// The agent's readiness endpoint: ready once the node's first result is published.
pub const READINESS_PATH: &str = "/readyz";

/// A probe of the agent's `metrics` port: HTTPS, as the agent serves it (the kubelet skips
/// certificate verification for probes and sends no credentials; the probe paths need none).
fn agent_probe(path: &str, period_seconds: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String("metrics".to_owned()),
            scheme: Some("HTTPS".to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period_seconds),
        timeout_seconds: Some(5),
        failure_threshold: Some(failure_threshold),
        ..Probe::default()
    }
}

/// `app.kubernetes.io/name` of the agent pods.
pub const AGENT_APP: &str = "fim-agent";
/// Name of the agent container.
pub const AGENT_CONTAINER: &str = "fim-agent";
/// Annotation of the operator's rules ConfigMap holding the digest of its content. (The agents
/// read the rules through the API and follow changes live; the pod template does not carry the
/// digest, so a config change does not roll the pods: it becomes a re-init request.)
pub const CONFIG_HASH_ANNOTATION: &str = "fim.kubefim.io/config-hash";
/// Node directory under which each FileIntegrity keeps its baselines.
pub const DEFAULT_BASELINE_ROOT: &str = "/var/lib/kube-fim";
/// Where the node's root filesystem is mounted in the agent container.
pub const DEFAULT_HOST_ROOT: &str = "/host";
/// Port the agent serves its metrics on.
pub const DEFAULT_METRICS_PORT: i32 = 8080;
/// Mount path of the baseline directory in the agent container.
pub const BASELINE_MOUNT: &str = "/baseline";
/// Key of the rendered rules in the operator's config ConfigMap.
pub const CONFIG_FILE: &str = "aide.conf";

/// Everything the DaemonSet needs that is not in the FileIntegrity: operator settings, the
/// config ConfigMap the operator rendered, and what the operator found in the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentOptions {
    /// Agent image.
    pub image: String,
    /// Namespace of the agents (the operator's); FileIntegrity objects must live there too.
    pub namespace: String,
    /// Service account of the agents (writes node statuses and result ConfigMaps).
    pub service_account: String,
    /// Port of the agent's metrics endpoint.
    pub metrics_port: i32,
    /// ConfigMap holding the rendered rules under [`CONFIG_FILE`]; the agent reads it through
    /// the API (`--config-map`) and follows its changes without a restart.
    pub config_map_name: String,
    /// Whether `spec.priorityClassName` names an existing PriorityClass. When it does not, the
    /// pods are created without a class (they would be refused with it) and the controller
    /// says so with a Warning event and the `PriorityClassFound` condition.
    pub priority_class_exists: bool,
    /// Node directory holding the baselines; each FileIntegrity gets
    /// `<root>/<namespace>/<name>` so two of them never share a database.
    pub baseline_root: String,
    /// Mount path of the node's `/` in the container.
    pub host_root: String,
    /// Where the agents reach the API server, when not through the in-cluster Service address
    /// (`fim-operator --agent-api-server`).
    pub api_server: Option<ApiServer>,
    /// Where agents read Snapshots kept in S3 (container monitoring only).
    pub s3: Option<AgentS3>,
}

/// The agents' read-only access to the snapshot bucket (`fim-operator --agent-s3-endpoint`,
/// `--agent-s3-credentials-secret`): what the trusted loader needs for Snapshots whose lines are
/// in S3 (`spec.source`). The keys come from a Secret of the agents' namespace through the
/// kubelet (`secretKeyRef`), since agents may not read Secrets through the API; they should be a
/// read-only pair, the operator's own keys write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentS3 {
    /// S3 endpoint as seen from the nodes.
    pub endpoint: String,
    pub bucket: String,
    pub region: String,
    /// Secret with `accessKey` and `secretKey`.
    pub credentials_secret: String,
}

/// The API server address agents use instead of the `kubernetes` Service (set as the
/// `KUBERNETES_SERVICE_HOST`/`_PORT` the in-cluster configuration reads). For clusters without a
/// working Service path on the nodes: a node-local API proxy on loopback, or the local test
/// cluster's real node. A loopback host means "this node", so those pods use the host network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiServer {
    pub host: String,
    pub port: u16,
}

impl ApiServer {
    /// Whether the host is a loopback address (then the pods need the node's network).
    pub fn is_loopback(&self) -> bool {
        self.host == "localhost"
            || self
                .host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }
}

impl std::str::FromStr for ApiServer {
    type Err = String;

    /// `https://HOST:PORT` (or `HOST:PORT`; an IPv6 host in brackets; port 443 by default).
    fn from_str(text: &str) -> std::result::Result<Self, String> {
        let rest = text.strip_prefix("https://").unwrap_or(text);
        let rest = rest.trim_end_matches('/');
        if rest.is_empty() || rest.contains('/') || text.starts_with("http://") {
            return Err(format!("{text:?}: expected https://HOST:PORT"));
        }
        let (host, port) = match rest.strip_prefix('[') {
            Some(v6) => {
                let (host, after) = v6
                    .split_once(']')
                    .ok_or_else(|| format!("{text:?}: unclosed ["))?;
                (host, after.strip_prefix(':'))
            }
            None => match rest.rsplit_once(':') {
                Some((h, p)) if !h.contains(':') => (h, Some(p)),
                _ => (rest, None),
            },
        };
        let port = match port {
            Some(p) => p.parse().map_err(|_| format!("{text:?}: bad port {p:?}"))?,
            None => 443,
        };
        if host.is_empty() || port == 0 {
            return Err(format!("{text:?}: expected https://HOST:PORT"));
        }
        Ok(ApiServer {
            host: host.to_owned(),
            port,
        })
    }
}

impl AgentOptions {
    /// Options with the default paths and port.
    pub fn new(
        image: impl Into<String>,
        namespace: impl Into<String>,
        service_account: impl Into<String>,
        config_map_name: impl Into<String>,
    ) -> Self {
        Self {
            image: image.into(),
            namespace: namespace.into(),
            service_account: service_account.into(),
            metrics_port: DEFAULT_METRICS_PORT,
            config_map_name: config_map_name.into(),
            priority_class_exists: true,
            baseline_root: DEFAULT_BASELINE_ROOT.to_owned(),
            host_root: DEFAULT_HOST_ROOT.to_owned(),
            api_server: None,
            s3: None,
        }
    }
}

/// Name of the agent DaemonSet of FileIntegrity `fi_name`.
pub fn daemonset_name(fi_name: &str) -> String {
    format!("fim-agent-{fi_name}")
}

/// Node directory holding the baseline of one FileIntegrity.
pub fn baseline_host_path(baseline_root: &str, fi_namespace: &str, fi_name: &str) -> String {
    format!(
        "{}/{fi_namespace}/{fi_name}",
        baseline_root.trim_end_matches('/')
    )
}

/// Labels selecting the agent pods of FileIntegrity `fi_name` (also the DaemonSet's selector,
/// which is immutable: never add to it).
pub fn selector_labels(fi_name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), AGENT_APP.to_owned()),
        (labels::OWNER.to_owned(), fi_name.to_owned()),
    ])
}

/// Default requests/limits of the agent when `spec.resources` is absent.
///
/// The agent is idle between scans and hashes with bounded buffers, so 50m/64Mi lets it be
/// scheduled on full nodes; the 128Mi memory limit stops a runaway (e.g. a huge baseline) from
/// pressuring the workloads it protects. No CPU limit: CFS throttling would only stretch the
/// scan, and the request already bounds its share under contention.
pub fn default_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), Quantity("50m".to_owned())),
            ("memory".to_owned(), Quantity("64Mi".to_owned())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_owned(),
            Quantity("128Mi".to_owned()),
        )])),
        ..ResourceRequirements::default()
    }
}

/// The agent DaemonSet of `fi`.
///
/// Fails when `fi` lacks name/namespace/uid, lives outside `opts.namespace` (owner references
/// cannot cross namespaces) or has a name too long for a label value.
pub fn desired_daemonset(fi: &FileIntegrity, opts: &AgentOptions) -> Result<DaemonSet> {
    let name = fi
        .meta()
        .name
        .clone()
        .ok_or(Error::MissingObjectKey("metadata.name"))?;
    let namespace = fi
        .namespace()
        .ok_or(Error::MissingObjectKey("metadata.namespace"))?;
    if namespace != opts.namespace {
        return Err(Error::ForeignNamespace {
            name,
            namespace,
            agent_namespace: opts.namespace.clone(),
        });
    }
    if name.len() > 63 {
        return Err(Error::NameTooLong(name));
    }
    let owner = fi
        .controller_owner_ref(&())
        .ok_or(Error::MissingObjectKey("metadata.uid"))?;
    let syslog_ca = syslog_ca_volume(fi);
    let spec = &fi.spec;

    let selector = selector_labels(&name);
    let mut object_labels = selector.clone();
    object_labels.insert(
        "app.kubernetes.io/managed-by".to_owned(),
        labels::OPERATOR_MANAGER.to_owned(),
    );
    object_labels.insert(
        "app.kubernetes.io/part-of".to_owned(),
        "kube-fim".to_owned(),
    );

    let mut node_selector = spec.node_selector.clone();
    // The agent is Linux-only (fanotify, /proc); keep it off Windows nodes unless told otherwise.
    node_selector
        .entry("kubernetes.io/os".to_owned())
        .or_insert_with(|| "linux".to_owned());

    let host_root = opts.host_root.as_str();
    let template = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(object_labels.clone()),
            annotations: Some(BTreeMap::from([(
                "kubectl.kubernetes.io/default-container".to_owned(),
                AGENT_CONTAINER.to_owned(),
            )])),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            service_account_name: Some(opts.service_account.clone()),
            // The agent writes its FileIntegrityNodeStatus and result ConfigMaps.
            automount_service_account_token: Some(true),
            // /proc/<pid>/root of other pods' containers is only reachable from the host PID
            // namespace, so it is shared only when container monitoring is on.
            host_pid: Some(spec.containers_enabled()),
            // Only for an API server on the node's loopback (see `ApiServer`).
            host_network: opts
                .api_server
                .as_ref()
                .is_some_and(ApiServer::is_loopback)
                .then_some(true),
            node_selector: Some(node_selector),
            tolerations: (!spec.tolerations.is_empty()).then(|| spec.tolerations.clone()),
            priority_class_name: spec
                .priority_class_name
                .clone()
                .filter(|c| !c.is_empty() && opts.priority_class_exists),
            security_context: Some(PodSecurityContext {
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".to_owned(),
                    ..SeccompProfile::default()
                }),
                ..PodSecurityContext::default()
            }),
            containers: vec![Container {
                name: AGENT_CONTAINER.to_owned(),
                image: Some(opts.image.clone()),
                args: Some(agent_args(fi, &name, opts)),
                env: Some(agent_env(
                    opts.api_server.as_ref(),
                    opts.s3.as_ref().filter(|_| spec.containers_enabled()),
                )),
                ports: Some(vec![ContainerPort {
                    name: Some("metrics".to_owned()),
                    container_port: opts.metrics_port,
                    protocol: Some("TCP".to_owned()),
                    ..ContainerPort::default()
                }]),
                liveness_probe: Some(agent_probe(LIVENESS_PATH, 30, 3)),
                readiness_probe: Some(agent_probe(READINESS_PATH, 10, 1)),
                resources: Some(spec.resources.clone().unwrap_or_else(default_resources)),
                security_context: Some(container_security_context(
                    spec.realtime,
                    spec.containers_enabled(),
                    spec.containers
                        .as_ref()
                        .is_some_and(|c| c.enabled && c.allow_kill),
                )),
                volume_mounts: Some(
                    vec![
                        VolumeMount {
                            name: "host-root".to_owned(),
                            mount_path: host_root.to_owned(),
                            read_only: Some(true),
                            // Mounts made on the host later (new volumes) become visible to scans.
                            mount_propagation: Some("HostToContainer".to_owned()),
                            ..VolumeMount::default()
                        },
                        VolumeMount {
                            name: "baseline".to_owned(),
                            mount_path: BASELINE_MOUNT.to_owned(),
                            read_only: Some(false),
                            ..VolumeMount::default()
                        },
                        // Scratch space, since the root filesystem is read-only.
                        VolumeMount {
                            name: "tmp".to_owned(),
                            mount_path: "/tmp".to_owned(),
                            ..VolumeMount::default()
                        },
                    ]
                    .into_iter()
                    .chain(syslog_ca.as_ref().map(|(mount, _)| mount.clone()))
                    .collect(),
                ),
                ..Container::default()
            }],
            volumes: Some(
                vec![
                    host_path_volume("host-root", "/", "Directory"),
                    host_path_volume(
                        "baseline",
                        &baseline_host_path(&opts.baseline_root, &namespace, &name),
                        "DirectoryOrCreate",
                    ),
                    Volume {
                        name: "tmp".to_owned(),
                        empty_dir: Some(EmptyDirVolumeSource::default()),
                        ..Volume::default()
                    },
                ]
                .into_iter()
                .chain(syslog_ca.map(|(_, volume)| volume))
                .collect(),
            ),
            ..PodSpec::default()
        }),
    };

    Ok(DaemonSet {
        metadata: ObjectMeta {
            name: Some(daemonset_name(&name)),
            namespace: Some(namespace),
            labels: Some(object_labels),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        spec: Some(DaemonSetSpec {
            selector: LabelSelector {
                match_labels: Some(selector),
                ..LabelSelector::default()
            },
            template,
            update_strategy: Some(DaemonSetUpdateStrategy {
                type_: Some("RollingUpdate".to_owned()),
                // One node at a time without monitoring while the config rolls out.
                rolling_update: Some(RollingUpdateDaemonSet {
                    max_unavailable: Some(IntOrString::Int(1)),
                    ..RollingUpdateDaemonSet::default()
                }),
            }),
            ..DaemonSetSpec::default()
        }),
        status: None,
    })
}

/// `fim-agent daemon` arguments (the agent's contract):
/// `daemon --file-integrity <fi> --root /host --db-dir /baseline --config-map fim-config-<fi>
/// --metrics-addr 0.0.0.0:<port> [--full-scan-every N] [--realtime]
/// [--containers --container-algorithm X]`. What the agent reads live from the FileIntegrity
/// stays out of the pod template, so changing it never rolls the pods: the rules,
/// `gracePeriod`, `maxBackups` and `debug` (see the agent's `daemon::live`).
fn agent_args(fi: &FileIntegrity, name: &str, opts: &AgentOptions) -> Vec<String> {
    let spec = &fi.spec;
    let mut args: Vec<String> = vec![
        "daemon".into(),
        "--file-integrity".into(),
        name.into(),
        "--root".into(),
        opts.host_root.clone(),
        "--db-dir".into(),
        BASELINE_MOUNT.into(),
        "--config-map".into(),
        opts.config_map_name.clone(),
        "--metrics-addr".into(),
        format!("0.0.0.0:{}", opts.metrics_port),
    ];
    if let Some(every) = spec.full_scan_every {
        args.extend(["--full-scan-every".into(), every.to_string()]);
    }
    if spec.realtime {
        args.push("--realtime".into());
    }
    if let Some(containers) = spec.containers.as_ref().filter(|c| c.enabled) {
        args.extend([
            "--containers".into(),
            "--container-algorithm".into(),
            containers.algorithm.extension().to_owned(),
            "--max-remediations".into(),
            containers.max_remediations.max(1).to_string(),
            "--remediation-window".into(),
            containers.remediation_window_seconds.max(1).to_string(),
        ]);
        if containers.allow_kill {
            args.push("--allow-kill".into());
        }
        if let Some(s3) = &opts.s3 {
            args.extend([
                "--s3-endpoint".into(),
                s3.endpoint.clone(),
                "--s3-bucket".into(),
                s3.bucket.clone(),
                "--s3-region".into(),
                s3.region.clone(),
            ]);
        }
    }
    args
}

/// Least privilege for a process that must read every file on the node.
///
/// - root (uid 0) so files it creates in the baseline hostPath are owned like the directory;
/// - `DAC_READ_SEARCH` bypasses read and search permission checks only (not write, unlike
///   `DAC_OVERRIDE`): enough to hash `0600` files of any owner;
/// - `SYS_ADMIN` only with `spec.realtime`: `fanotify_init` and filesystem-wide
///   `fanotify_mark` require it (and RuntimeDefault seccomp only allows them with it); without
///   realtime the periodic scans need no such power;
/// - `SYS_PTRACE` only with container monitoring: reading `/proc/<pid>/root` of another
///   process requires ptrace access to it;
/// - `KILL` only when `spec.containers.allowKill`: the `kill` remediation signals containers'
///   processes of any user.
pub fn container_security_context(realtime: bool, containers: bool, kill: bool) -> SecurityContext {
    let mut add = vec!["DAC_READ_SEARCH".to_owned()];
    if realtime {
        add.push("SYS_ADMIN".to_owned());
    }
    if containers {
        add.push("SYS_PTRACE".to_owned());
    }
    if kill {
        add.push("KILL".to_owned());
    }
    SecurityContext {
        run_as_user: Some(0),
        run_as_non_root: Some(false),
        privileged: Some(false),
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            add: Some(add),
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            ..SeccompProfile::default()
        }),
        ..SecurityContext::default()
    }
}

/// The agent's environment: its node and pod, the API server address when one is set
/// (explicit container variables override the Service variables the kubelet injects), and the
/// S3 keys from their Secret when agents read Snapshots from S3.
fn agent_env(api_server: Option<&ApiServer>, s3: Option<&AgentS3>) -> Vec<EnvVar> {
    let mut env = vec![
        field_env("NODE_NAME", "spec.nodeName"),
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_NAMESPACE", "metadata.namespace"),
    ];
    if let Some(api) = api_server {
        for (name, value) in [
            ("KUBERNETES_SERVICE_HOST", api.host.clone()),
            ("KUBERNETES_SERVICE_PORT", api.port.to_string()),
        ] {
            env.push(EnvVar {
                name: name.to_owned(),
                value: Some(value),
                ..EnvVar::default()
            });
        }
    }
    if let Some(s3) = s3 {
        for (name, key) in [
            ("AWS_ACCESS_KEY_ID", "accessKey"),
            ("AWS_SECRET_ACCESS_KEY", "secretKey"),
        ] {
            env.push(EnvVar {
                name: name.to_owned(),
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: s3.credentials_secret.clone(),
                        key: key.to_owned(),
                        // Missing keys are the agent's to report ("S3 credentials missing":
                        // inline Snapshots still work), not a pod stuck in
                        // CreateContainerConfigError.
                        optional: Some(true),
                    }),
                    ..EnvVarSource::default()
                }),
                ..EnvVar::default()
            });
        }
    }
    env
}

fn field_env(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field_path.to_owned(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// The volume and mount of `spec.alerts.syslog.caSecret`, when one is named: agents may not read
/// Secrets through the API, so the kubelet hands them the CA (and its rotations). Optional, so a
/// missing Secret leaves the agent running (it says which file it cannot read) instead of
/// holding every pod in ContainerCreating.
fn syslog_ca_volume(fi: &FileIntegrity) -> Option<(VolumeMount, Volume)> {
    let secret = fi
        .spec
        .alerts
        .as_ref()?
        .syslog
        .as_ref()?
        .ca_secret
        .clone()?;
    Some((
        VolumeMount {
            name: SYSLOG_CA_VOLUME.to_owned(),
            mount_path: kube_fim_crds::SYSLOG_CA_MOUNT_DIR.to_owned(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
        Volume {
            name: SYSLOG_CA_VOLUME.to_owned(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret),
                items: Some(vec![KeyToPath {
                    key: kube_fim_crds::SYSLOG_CA_KEY.to_owned(),
                    path: kube_fim_crds::SYSLOG_CA_KEY.to_owned(),
                    ..KeyToPath::default()
                }]),
                optional: Some(true),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        },
    ))
}

const SYSLOG_CA_VOLUME: &str = "syslog-ca";

fn host_path_volume(name: &str, path: &str, type_: &str) -> Volume {
    Volume {
        name: name.to_owned(),
        host_path: Some(HostPathVolumeSource {
            path: path.to_owned(),
            type_: Some(type_.to_owned()),
        }),
        ..Volume::default()
    }
}

/// Whether the DaemonSet may be created at `now`: `Ok(())`, or `Err(remaining)` while
/// `spec.config.initialDelay` seconds have not passed since the FileIntegrity was created.
///
/// Without a creation timestamp (not yet stored) there is nothing to wait from.
pub fn should_create_daemonset(fi: &FileIntegrity, now: Timestamp) -> Result<(), Duration> {
    let delay = fi.spec.config.initial_delay;
    let Some(created) = fi.meta().creation_timestamp.as_ref() else {
        return Ok(());
    };
    if delay <= 0 {
        return Ok(());
    }
    let elapsed = now.as_second().saturating_sub(created.0.as_second());
    let remaining = delay.saturating_sub(elapsed);
    if remaining > 0 {
        Err(Duration::from_secs(remaining.unsigned_abs()))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Toleration;

    fn fi(yaml: &str) -> FileIntegrity {
        serde_saphyr::from_str(yaml).expect("valid FileIntegrity YAML")
    }

    const MINIMAL: &str = "
apiVersion: fim.kubefim.io/v1alpha1
kind: FileIntegrity
metadata:
  name: example
  namespace: kube-fim
  uid: 1b4e28ba-2fa1-11d2-883f-0016d3cca427
  creationTimestamp: '2026-01-01T00:00:00Z'
spec: {}
";

    fn opts() -> AgentOptions {
        AgentOptions::new(
            "ghcr.io/kube-fim/fim-agent:v0.1.0",
            "kube-fim",
            "fim-agent",
            "fim-config-example",
        )
    }

    fn pod_spec(ds: &DaemonSet) -> &PodSpec {
        ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
    }

    fn container(ds: &DaemonSet) -> &Container {
        &pod_spec(ds).containers[0]
    }

    fn caps(ds: &DaemonSet) -> Vec<String> {
        let sc = container(ds).security_context.as_ref().unwrap();
        sc.capabilities.as_ref().unwrap().add.clone().unwrap()
    }

    #[test]
    fn minimal_spec_gets_names_labels_owner_and_defaults() {
        let ds = desired_daemonset(&fi(MINIMAL), &opts()).unwrap();
        assert_eq!(ds.metadata.name.as_deref(), Some("fim-agent-example"));
        assert_eq!(ds.metadata.namespace.as_deref(), Some("kube-fim"));
        let labels = ds.metadata.labels.as_ref().unwrap();
        assert_eq!(labels["app.kubernetes.io/name"], "fim-agent");
        assert_eq!(labels["fim.kubefim.io/owner"], "example");

        let owner = &ds.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(owner.kind, "FileIntegrity");
        assert_eq!(owner.api_version, "fim.kubefim.io/v1alpha1");
        assert_eq!(owner.name, "example");
        assert_eq!(owner.uid, "1b4e28ba-2fa1-11d2-883f-0016d3cca427");
        assert_eq!(owner.controller, Some(true));

        let spec = ds.spec.as_ref().unwrap();
        assert_eq!(
            spec.selector.match_labels.as_ref(),
            Some(&selector_labels("example"))
        );
        let template_labels = spec.template.metadata.as_ref().unwrap().labels.as_ref();
        for (k, v) in selector_labels("example") {
            assert_eq!(
                template_labels.unwrap()[&k],
                v,
                "selector must match the pods"
            );
        }
        let strategy = spec.update_strategy.as_ref().unwrap();
        assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
        assert_eq!(
            strategy.rolling_update.as_ref().unwrap().max_unavailable,
            Some(IntOrString::Int(1))
        );

        let pod = pod_spec(&ds);
        // Default tolerations of the CRD: control-plane and master NoSchedule.
        let tolerated: Vec<_> = pod
            .tolerations
            .as_ref()
            .unwrap()
            .iter()
            .map(|t| t.key.clone().unwrap())
            .collect();
        assert_eq!(
            tolerated,
            [
                "node-role.kubernetes.io/control-plane",
                "node-role.kubernetes.io/master"
            ]
        );
        assert_eq!(
            pod.node_selector.as_ref().unwrap()["kubernetes.io/os"],
            "linux"
        );
        assert_eq!(pod.host_pid, Some(false));
        assert_eq!(pod.automount_service_account_token, Some(true));
        assert_eq!(pod.service_account_name.as_deref(), Some("fim-agent"));
        assert_eq!(pod.priority_class_name, None);

        let c = container(&ds);
        assert_eq!(c.resources.as_ref(), Some(&default_resources()));
        let port = &c.ports.as_ref().unwrap()[0];
        assert_eq!(port.name.as_deref(), Some("metrics"));
        assert_eq!(port.container_port, DEFAULT_METRICS_PORT);
        // Issue 10, item 4: probes backed by the worker's progress, plain HTTP on that port.
        for (probe, path) in [
            (c.liveness_probe.as_ref(), "/livez"),
            (c.readiness_probe.as_ref(), "/readyz"),
        ] {
            let get = probe
                .and_then(|p| p.http_get.as_ref())
                .expect("httpGet probe");
            assert_eq!(get.path.as_deref(), Some(path));
            assert_eq!(get.port, IntOrString::String("metrics".into()));
            assert_eq!(get.scheme.as_deref(), Some("HTTPS"));
        }
        assert_eq!(
            c.liveness_probe.as_ref().unwrap().failure_threshold,
            Some(3)
        );
    }

    #[test]
    fn args_follow_the_spec() {
        let minimal = desired_daemonset(&fi(MINIMAL), &opts()).unwrap();
        assert_eq!(
            container(&minimal).args.as_ref().unwrap().join(" "),
            "daemon --file-integrity example --root /host --db-dir /baseline \
             --config-map fim-config-example --metrics-addr 0.0.0.0:8080 --realtime"
        );

        let full = fi(&MINIMAL.replace(
            "spec: {}",
            "spec:
  debug: true
  realtime: false
  fullScanEvery: 3600
  config:
    gracePeriod: 60
    maxBackups: 2
  containers:
    enabled: true
    algorithm: SHA512",
        ));
        let ds = desired_daemonset(&full, &opts()).unwrap();
        assert_eq!(
            container(&ds).args.as_ref().unwrap().join(" "),
            "daemon --file-integrity example --root /host --db-dir /baseline \
             --config-map fim-config-example --metrics-addr 0.0.0.0:8080 \
             --full-scan-every 3600 --containers --container-algorithm sha512 \
             --max-remediations 3 --remediation-window 600"
        );
        assert_eq!(pod_spec(&ds).host_pid, Some(true));
        assert_eq!(caps(&ds), ["DAC_READ_SEARCH", "SYS_PTRACE"]);

        // KILL only when some remediation may kill.
        let kill = fi(&MINIMAL.replace(
            "spec: {}",
            "spec:
  realtime: false
  containers:
    enabled: true
    allowKill: true
    maxRemediations: 5
    remediationWindowSeconds: 60",
        ));
        let ds = desired_daemonset(&kill, &opts()).unwrap();
        let args = container(&ds).args.as_ref().unwrap().join(" ");
        assert!(
            args.ends_with("--max-remediations 5 --remediation-window 60 --allow-kill"),
            "{args}"
        );
        assert_eq!(caps(&ds), ["DAC_READ_SEARCH", "SYS_PTRACE", "KILL"]);
        let minimal = desired_daemonset(&fi(MINIMAL), &opts()).unwrap();
        assert_eq!(pod_spec(&minimal).host_pid, Some(false));
        assert!(!caps(&minimal).contains(&"KILL".to_owned()));
    }

    #[test]
    fn agents_get_the_snapshot_bucket_only_for_container_monitoring() {
        let with_s3 = AgentOptions {
            s3: Some(AgentS3 {
                endpoint: "http://minio.minio:9000".into(),
                bucket: "integrity".into(),
                region: "us-east-1".into(),
                credentials_secret: "fim-agent-s3".into(),
            }),
            ..opts()
        };
        let s3_env = |ds: &DaemonSet| -> Vec<(String, String, String)> {
            container(ds)
                .env
                .clone()
                .unwrap_or_default()
                .into_iter()
                .filter_map(|e| {
                    let r = e.value_from?.secret_key_ref?;
                    Some((e.name, r.name, r.key))
                })
                .collect()
        };
        let containers = fi(&MINIMAL.replace(
            "spec: {}",
            "spec:
  containers:
    enabled: true",
        ));
        let ds = desired_daemonset(&containers, &with_s3).unwrap();
        let args = container(&ds).args.as_ref().unwrap().join(" ");
        assert!(
            args.ends_with(
                "--s3-endpoint http://minio.minio:9000 --s3-bucket integrity --s3-region us-east-1"
            ),
            "{args}"
        );
        assert_eq!(
            s3_env(&ds),
            [
                (
                    "AWS_ACCESS_KEY_ID".to_owned(),
                    "fim-agent-s3".to_owned(),
                    "accessKey".to_owned()
                ),
                (
                    "AWS_SECRET_ACCESS_KEY".to_owned(),
                    "fim-agent-s3".to_owned(),
                    "secretKey".to_owned()
                ),
            ]
        );
        // Node monitoring alone never reads Snapshots: no bucket, no keys.
        let node_only = desired_daemonset(&fi(MINIMAL), &with_s3).unwrap();
        assert!(
            !container(&node_only)
                .args
                .as_ref()
                .unwrap()
                .contains(&"--s3-endpoint".to_owned())
        );
        assert_eq!(s3_env(&node_only), []);
    }

    #[test]
    fn spec_scheduling_and_resources_are_copied() {
        let with = fi(&MINIMAL.replace(
            "spec: {}",
            "spec:
  nodeSelector:
    node-role.kubernetes.io/worker: ''
    kubernetes.io/os: linux
  tolerations:
  - key: myNode
    operator: Exists
    effect: NoSchedule
  priorityClassName: system-node-critical
  resources:
    requests: {cpu: 200m, memory: 256Mi}
    limits: {memory: 1Gi}",
        ));
        let ds = desired_daemonset(&with, &opts()).unwrap();
        let pod = pod_spec(&ds);
        assert_eq!(
            pod.node_selector.as_ref().unwrap(),
            &BTreeMap::from([
                ("kubernetes.io/os".to_owned(), "linux".to_owned()),
                ("node-role.kubernetes.io/worker".to_owned(), String::new()),
            ])
        );
        assert_eq!(
            pod.tolerations.as_deref(),
            Some(
                &[Toleration {
                    key: Some("myNode".into()),
                    operator: Some("Exists".into()),
                    effect: Some("NoSchedule".into()),
                    ..Toleration::default()
                }][..]
            )
        );
        assert_eq!(
            pod.priority_class_name.as_deref(),
            Some("system-node-critical")
        );
        let resources = container(&ds).resources.as_ref().unwrap();
        assert_eq!(
            resources.requests.as_ref().unwrap()["cpu"],
            Quantity("200m".into())
        );
        assert_eq!(
            resources.limits.as_ref().unwrap()["memory"],
            Quantity("1Gi".into())
        );

        let none = fi(&MINIMAL.replace("spec: {}", "spec:\n  tolerations: []"));
        let ds = desired_daemonset(&none, &opts()).unwrap();
        assert_eq!(pod_spec(&ds).tolerations, None);
    }

    #[test]
    fn security_context_is_least_privilege() {
        let ds = desired_daemonset(&fi(MINIMAL), &opts()).unwrap();
        let sc = container(&ds).security_context.as_ref().unwrap();
        assert_eq!(sc.run_as_user, Some(0));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.privileged, Some(false));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop.as_deref(),
            Some(&["ALL".to_owned()][..])
        );
        assert_eq!(sc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
        // realtime defaults to true: fanotify needs SYS_ADMIN.
        assert_eq!(caps(&ds), ["DAC_READ_SEARCH", "SYS_ADMIN"]);

        let periodic = fi(&MINIMAL.replace("spec: {}", "spec:\n  realtime: false"));
        let ds = desired_daemonset(&periodic, &opts()).unwrap();
        assert_eq!(caps(&ds), ["DAC_READ_SEARCH"]);
    }

    #[test]
    fn a_syslog_ca_secret_is_mounted_where_the_agent_reads_it() {
        let ds = desired_daemonset(&fi(MINIMAL), &opts()).unwrap();
        assert!(
            !pod_spec(&ds)
                .volumes
                .as_ref()
                .unwrap()
                .iter()
                .any(|v| v.secret.is_some()),
            "no Secret is mounted without a caSecret"
        );
        let tls = fi(&MINIMAL.replace(
            "spec: {}",
            "spec:\n  alerts:\n    syslog:\n      host: logs\n      protocol: tls\n      caSecret: syslog-ca",
        ));
        let ds = desired_daemonset(&tls, &opts()).unwrap();
        let volume = pod_spec(&ds)
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .find(|v| v.name == "syslog-ca")
            .expect("syslog-ca volume");
        let secret = volume.secret.as_ref().unwrap();
        assert_eq!(secret.secret_name.as_deref(), Some("syslog-ca"));
        assert_eq!(secret.optional, Some(true));
        assert_eq!(secret.items.as_ref().unwrap()[0].key, "ca.crt");
        let mount = container(&ds)
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.name == "syslog-ca")
            .expect("syslog-ca mount");
        // The agent's default --syslog-ca-dir.
        assert_eq!(mount.mount_path, kube_fim_crds::SYSLOG_CA_MOUNT_DIR);
        assert_eq!(mount.read_only, Some(true));
    }

    #[test]
    fn volumes_env_and_no_config_mount() {
        let ds = desired_daemonset(&fi(MINIMAL), &opts()).unwrap();
        let pod = pod_spec(&ds);
        let volumes = pod.volumes.as_ref().unwrap();
        let host = volumes.iter().find(|v| v.name == "host-root").unwrap();
        assert_eq!(host.host_path.as_ref().unwrap().path, "/");
        let baseline = volumes.iter().find(|v| v.name == "baseline").unwrap();
        let baseline = baseline.host_path.as_ref().unwrap();
        assert_eq!(baseline.path, "/var/lib/kube-fim/kube-fim/example");
        assert_eq!(baseline.type_.as_deref(), Some("DirectoryOrCreate"));
        // The agent reads its rules through the API: no ConfigMap volume.
        assert!(
            volumes.iter().all(|v| v.config_map.is_none()),
            "{volumes:?}"
        );
        let names: Vec<&str> = volumes.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["host-root", "baseline", "tmp"]);

        let mounts = container(&ds).volume_mounts.as_ref().unwrap();
        let mount = |name: &str| mounts.iter().find(|m| m.name == name).unwrap();
        assert_eq!(mount("host-root").mount_path, "/host");
        assert_eq!(mount("host-root").read_only, Some(true));
        assert_eq!(
            mount("host-root").mount_propagation.as_deref(),
            Some("HostToContainer")
        );
        assert_eq!(mount("baseline").mount_path, "/baseline");
        assert_eq!(mount("baseline").read_only, Some(false));
        assert_eq!(mount("tmp").mount_path, "/tmp");
        assert_eq!(mounts.len(), 3, "{mounts:?}");

        let env = container(&ds).env.as_ref().unwrap();
        let field = |name: &str| {
            let var = env.iter().find(|e| e.name == name).unwrap();
            let source = var.value_from.as_ref().unwrap().field_ref.as_ref().unwrap();
            source.field_path.clone()
        };
        assert_eq!(field("NODE_NAME"), "spec.nodeName");
        assert_eq!(field("POD_NAME"), "metadata.name");
        assert_eq!(field("POD_NAMESPACE"), "metadata.namespace");

        let annotations = |ds: &DaemonSet| {
            let template = &ds.spec.as_ref().unwrap().template;
            template
                .metadata
                .as_ref()
                .unwrap()
                .annotations
                .clone()
                .unwrap()
        };
        // No config digest on the template: a config change does not roll the pods.
        assert_eq!(
            annotations(&ds),
            BTreeMap::from([(
                "kubectl.kubernetes.io/default-container".to_owned(),
                AGENT_CONTAINER.to_owned()
            )])
        );
    }

    #[test]
    fn api_server_addresses_parse() {
        let parse = |t: &str| t.parse::<ApiServer>();
        let api = |host: &str, port| ApiServer {
            host: host.into(),
            port,
        };
        assert_eq!(parse("https://127.0.0.1:6443"), Ok(api("127.0.0.1", 6443)));
        assert_eq!(parse("127.0.0.1:6443"), Ok(api("127.0.0.1", 6443)));
        assert_eq!(
            parse("https://api.example:8443/"),
            Ok(api("api.example", 8443))
        );
        assert_eq!(parse("https://10.0.0.1"), Ok(api("10.0.0.1", 443)));
        assert_eq!(parse("https://[::1]:6443"), Ok(api("::1", 6443)));
        for bad in [
            "",
            "https://",
            "http://127.0.0.1:80",
            "https://h:notaport",
            "https://h:0",
            "https://h:1/path",
            "https://[::1:6443",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} must be refused");
        }
        assert!(api("127.0.0.1", 1).is_loopback());
        assert!(api("127.5.0.1", 1).is_loopback());
        assert!(api("::1", 1).is_loopback());
        assert!(api("localhost", 1).is_loopback());
        assert!(!api("10.0.0.1", 1).is_loopback());
        assert!(!api("api.example", 1).is_loopback());
    }

    #[test]
    fn an_api_server_address_sets_the_env_and_loopback_the_host_network() {
        let env_of = |ds: &DaemonSet| -> BTreeMap<String, Option<String>> {
            container(ds)
                .env
                .clone()
                .unwrap()
                .into_iter()
                .map(|e| (e.name, e.value))
                .collect()
        };
        let ds = desired_daemonset(&fi(MINIMAL), &opts()).unwrap();
        assert_eq!(pod_spec(&ds).host_network, None);
        assert!(!env_of(&ds).contains_key("KUBERNETES_SERVICE_HOST"));

        let with = |url: &str| AgentOptions {
            api_server: Some(url.parse().unwrap()),
            ..opts()
        };
        let ds = desired_daemonset(&fi(MINIMAL), &with("https://127.0.0.1:6443")).unwrap();
        assert_eq!(pod_spec(&ds).host_network, Some(true));
        let env = env_of(&ds);
        assert_eq!(env["KUBERNETES_SERVICE_HOST"].as_deref(), Some("127.0.0.1"));
        assert_eq!(env["KUBERNETES_SERVICE_PORT"].as_deref(), Some("6443"));
        assert!(env.contains_key("NODE_NAME"));

        let ds = desired_daemonset(&fi(MINIMAL), &with("https://10.0.0.1:6443")).unwrap();
        assert_eq!(
            pod_spec(&ds).host_network,
            None,
            "not loopback: pod network"
        );
        assert_eq!(
            env_of(&ds)["KUBERNETES_SERVICE_HOST"].as_deref(),
            Some("10.0.0.1")
        );
    }

    #[test]
    fn a_missing_priority_class_is_left_out() {
        let with = fi(&MINIMAL.replace("spec: {}", "spec:\n  priorityClassName: agents"));
        let ds = desired_daemonset(&with, &opts()).unwrap();
        assert_eq!(pod_spec(&ds).priority_class_name.as_deref(), Some("agents"));
        let missing = AgentOptions {
            priority_class_exists: false,
            ..opts()
        };
        let ds = desired_daemonset(&with, &missing).unwrap();
        assert_eq!(pod_spec(&ds).priority_class_name, None);
        let empty = fi(&MINIMAL.replace("spec: {}", "spec:\n  priorityClassName: ''"));
        let ds = desired_daemonset(&empty, &opts()).unwrap();
        assert_eq!(pod_spec(&ds).priority_class_name, None);
    }

    #[test]
    fn serializes_with_api_field_names() {
        let ds = desired_daemonset(&fi(MINIMAL), &opts()).unwrap();
        let json = serde_json::to_value(&ds).unwrap();
        let at = |pointer: &str| json.pointer(pointer).cloned().unwrap_or_default();
        let pod = "/spec/template/spec";
        assert_eq!(at(&format!("{pod}/hostPID")), false);
        assert_eq!(at(&format!("{pod}/automountServiceAccountToken")), true);
        assert_eq!(
            at(&format!("{pod}/securityContext/seccompProfile/type")),
            "RuntimeDefault"
        );
        let c = format!("{pod}/containers/0");
        assert_eq!(
            at(&format!("{c}/securityContext/capabilities/drop/0")),
            "ALL"
        );
        assert_eq!(
            at(&format!("{c}/securityContext/readOnlyRootFilesystem")),
            true
        );
        assert_eq!(
            at(&format!("{c}/volumeMounts/0/mountPropagation")),
            "HostToContainer"
        );
        assert_eq!(at("/spec/updateStrategy/rollingUpdate/maxUnavailable"), 1);
    }

    #[test]
    fn refuses_objects_it_cannot_own() {
        let no_uid = fi(&MINIMAL.replace("  uid: 1b4e28ba-2fa1-11d2-883f-0016d3cca427\n", ""));
        assert!(matches!(
            desired_daemonset(&no_uid, &opts()),
            Err(Error::MissingObjectKey("metadata.uid"))
        ));
        let elsewhere = fi(&MINIMAL.replace("namespace: kube-fim", "namespace: team-a"));
        let err = desired_daemonset(&elsewhere, &opts()).unwrap_err();
        assert!(matches!(err, Error::ForeignNamespace { .. }));
        assert!(err.to_string().contains("team-a"), "{err}");
        let long = fi(&MINIMAL.replace("name: example", &format!("name: {}", "a".repeat(64))));
        assert!(matches!(
            desired_daemonset(&long, &opts()),
            Err(Error::NameTooLong(_))
        ));
    }

    #[test]
    fn initial_delay_counts_from_creation() {
        let created: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let at = |secs: i64| created.checked_add(jiff_secs(secs)).unwrap();

        assert_eq!(should_create_daemonset(&fi(MINIMAL), created), Ok(()));

        let delayed = fi(&MINIMAL.replace("spec: {}", "spec:\n  config:\n    initialDelay: 60"));
        assert_eq!(
            should_create_daemonset(&delayed, at(0)),
            Err(Duration::from_secs(60))
        );
        assert_eq!(
            should_create_daemonset(&delayed, at(45)),
            Err(Duration::from_secs(15))
        );
        assert_eq!(should_create_daemonset(&delayed, at(60)), Ok(()));
        assert_eq!(should_create_daemonset(&delayed, at(3600)), Ok(()));

        let unsaved = fi(&MINIMAL
            .replace("  creationTimestamp: '2026-01-01T00:00:00Z'\n", "")
            .replace("spec: {}", "spec:\n  config:\n    initialDelay: 60"));
        assert_eq!(should_create_daemonset(&unsaved, at(0)), Ok(()));
    }

    fn jiff_secs(secs: i64) -> k8s_openapi::jiff::SignedDuration {
        k8s_openapi::jiff::SignedDuration::from_secs(secs)
    }
}
