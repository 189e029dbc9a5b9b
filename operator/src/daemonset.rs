//! The agent DaemonSet of a FileIntegrity, and when to create it (`spec.config.initialDelay`).

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::{
    api::{
        apps::v1::{DaemonSet, DaemonSetSpec, DaemonSetUpdateStrategy, RollingUpdateDaemonSet},
        core::v1::{
            Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
            HostPathVolumeSource, ObjectFieldSelector, PodSecurityContext, PodSpec,
            PodTemplateSpec, ResourceRequirements, SeccompProfile, SecurityContext, Volume,
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
                env: Some(vec![
                    field_env("NODE_NAME", "spec.nodeName"),
                    field_env("POD_NAME", "metadata.name"),
                    field_env("POD_NAMESPACE", "metadata.namespace"),
                ]),
                ports: Some(vec![ContainerPort {
                    name: Some("metrics".to_owned()),
                    container_port: opts.metrics_port,
                    protocol: Some("TCP".to_owned()),
                    ..ContainerPort::default()
                }]),
                resources: Some(spec.resources.clone().unwrap_or_else(default_resources)),
                security_context: Some(container_security_context(
                    spec.realtime,
                    spec.containers_enabled(),
                )),
                volume_mounts: Some(vec![
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
                ]),
                ..Container::default()
            }],
            volumes: Some(vec![
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
            ]),
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
/// --grace-period N --max-backups N --metrics-addr 0.0.0.0:<port> [--full-scan-every N]
/// [--realtime] [--containers --container-algorithm X] [--debug]`. Scan timing comes from the
/// spec, so changing it rolls the pods; the rules do not (the agent reads them live).
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
        "--grace-period".into(),
        spec.config.grace_period.to_string(),
        "--max-backups".into(),
        spec.config.max_backups.to_string(),
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
        ]);
    }
    if spec.debug {
        args.push("--debug".into());
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
///   process requires ptrace access to it.
pub fn container_security_context(realtime: bool, containers: bool) -> SecurityContext {
    let mut add = vec!["DAC_READ_SEARCH".to_owned()];
    if realtime {
        add.push("SYS_ADMIN".to_owned());
    }
    if containers {
        add.push("SYS_PTRACE".to_owned());
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
    }

    #[test]
    fn args_follow_the_spec() {
        let minimal = desired_daemonset(&fi(MINIMAL), &opts()).unwrap();
        assert_eq!(
            container(&minimal).args.as_ref().unwrap().join(" "),
            "daemon --file-integrity example --root /host --db-dir /baseline \
             --config-map fim-config-example --grace-period 900 --max-backups 5 \
             --metrics-addr 0.0.0.0:8080 --realtime"
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
             --config-map fim-config-example --grace-period 60 --max-backups 2 \
             --metrics-addr 0.0.0.0:8080 --full-scan-every 3600 --containers \
             --container-algorithm sha512 --debug"
        );
        assert_eq!(pod_spec(&ds).host_pid, Some(true));
        assert_eq!(caps(&ds), ["DAC_READ_SEARCH", "SYS_PTRACE"]);
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
