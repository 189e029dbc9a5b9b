use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{ResourceRequirements, Toleration},
    apimachinery::pkg::apis::meta::v1::Condition,
};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Algorithm;

/// Default ConfigMap key holding the rules (`spec.config.key`).
pub const DEFAULT_CONFIG_KEY: &str = "aide.conf";
/// Default seconds between scans (`spec.config.gracePeriod`).
pub const DEFAULT_GRACE_PERIOD: i64 = 900;
/// Smallest accepted `spec.config.gracePeriod`.
pub const MIN_GRACE_PERIOD: i64 = 10;
/// Default number of baseline/log backups kept per node (`spec.config.maxBackups`).
pub const DEFAULT_MAX_BACKUPS: i32 = 5;
/// Default syslog port.
pub const DEFAULT_SYSLOG_PORT: i32 = 514;

/// Node taints tolerated when `spec.tolerations` is absent.
pub const DEFAULT_TOLERATED_TAINTS: [&str; 2] = [
    "node-role.kubernetes.io/control-plane",
    "node-role.kubernetes.io/master",
];

/// Runs file integrity checks on the selected nodes (and, optionally, in annotated pods on them).
///
/// Field-compatible with the file-integrity-operator's `FileIntegrity`.
// Repeated `printcolumn(type_ = ..)` keys trip clippy's duplicated_attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "fim.kubefim.io",
    version = "v1alpha1",
    kind = "FileIntegrity",
    namespaced,
    shortname = "fi",
    category = "fim",
    status = "FileIntegrityStatus",
    derive = "PartialEq",
    doc = "FileIntegrity runs file integrity checks on the selected nodes and reports changes.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Nodes",
        type_ = "integer",
        json_path = ".status.nodes",
        priority = 1
    ),
    printcolumn(
        name = "Failed",
        type_ = "integer",
        json_path = ".status.failed",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "!has(self.fullScanEvery) || !has(self.config) || !has(self.config.gracePeriod) || self.fullScanEvery >= self.config.gracePeriod"
).message("spec.fullScanEvery must be at least spec.config.gracePeriod").field_path(".fullScanEvery"))]
pub struct FileIntegritySpec {
    /// Selects the nodes to scan; all nodes when empty.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// Tolerations of the agent pods. When absent, control-plane/master NoSchedule taints are
    /// tolerated; set `[]` to tolerate nothing.
    #[serde(default = "default_tolerations")]
    pub tolerations: Vec<Toleration>,

    /// PriorityClass of the agent pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,

    /// Verbose agent logging.
    #[serde(default)]
    pub debug: bool,

    /// Rules and scan timing.
    #[serde(default)]
    pub config: FileIntegrityConfig,

    /// Resources of the agent container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Detect changes as they happen, where the node kernel allows it, in addition to the
    /// periodic scans.
    #[serde(default = "default_true")]
    pub realtime: bool,

    /// Seconds between full rehashes of every file; scans in between only rehash files whose
    /// metadata changed. At least `config.gracePeriod`. Every scan is full when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_scan_every: Option<i64>,

    /// Monitoring of containers in pods annotated `fim.kubefim.io/monitor: "true"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub containers: Option<ContainerMonitoring>,

    /// Where to send alerts besides events and metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerts: Option<Alerts>,
}

impl Default for FileIntegritySpec {
    /// Same as deserializing `{}`.
    fn default() -> Self {
        Self {
            node_selector: BTreeMap::new(),
            tolerations: default_tolerations(),
            priority_class_name: None,
            debug: false,
            config: FileIntegrityConfig::default(),
            resources: None,
            realtime: true,
            full_scan_every: None,
            containers: None,
            alerts: None,
        }
    }
}

impl FileIntegritySpec {
    /// Whether annotated pods on the selected nodes are monitored.
    pub fn containers_enabled(&self) -> bool {
        self.containers.as_ref().is_some_and(|c| c.enabled)
    }
}

/// Tolerations used when `spec.tolerations` is absent: NoSchedule taints of control-plane nodes.
pub fn default_tolerations() -> Vec<Toleration> {
    DEFAULT_TOLERATED_TAINTS
        .iter()
        .map(|key| Toleration {
            key: Some((*key).to_owned()),
            operator: Some("Exists".to_owned()),
            effect: Some("NoSchedule".to_owned()),
            ..Toleration::default()
        })
        .collect()
}

fn default_true() -> bool {
    true
}

/// Rules and scan timing (`spec.config`).
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FileIntegrityConfig {
    /// ConfigMap with the rules (AIDE syntax); the built-in rules when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,

    /// Namespace of that ConfigMap; the FileIntegrity's namespace when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,

    /// Key of the rules in that ConfigMap.
    #[serde(default = "default_config_key")]
    pub key: String,

    /// Seconds to pause between scans (at least 10).
    #[serde(default = "default_grace_period")]
    #[x_kube(validation = Rule::new("self >= 10").message("spec.config.gracePeriod must be at least 10 seconds"))]
    pub grace_period: i64,

    /// Baseline and log backups to keep per node; older ones are pruned.
    #[serde(default = "default_max_backups")]
    #[x_kube(validation = Rule::new("self >= 0").message("spec.config.maxBackups must not be negative"))]
    pub max_backups: i32,

    /// Seconds to wait before the first scan.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self >= 0").message("spec.config.initialDelay must not be negative"))]
    pub initial_delay: i64,
}

impl Default for FileIntegrityConfig {
    fn default() -> Self {
        Self {
            name: None,
            namespace: None,
            key: default_config_key(),
            grace_period: DEFAULT_GRACE_PERIOD,
            max_backups: DEFAULT_MAX_BACKUPS,
            initial_delay: 0,
        }
    }
}

fn default_config_key() -> String {
    DEFAULT_CONFIG_KEY.to_owned()
}

fn default_grace_period() -> i64 {
    DEFAULT_GRACE_PERIOD
}

fn default_max_backups() -> i32 {
    DEFAULT_MAX_BACKUPS
}

/// Container monitoring (`spec.containers`).
///
/// Pods on the selected nodes opt in with the annotation `fim.kubefim.io/monitor: "true"` and
/// list the paths per container in `<container>.fim.kubefim.io/paths`;
/// `fim.kubefim.io/remediation` chooses what happens on tampering.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ContainerMonitoring {
    /// Monitor annotated pods.
    #[serde(default)]
    pub enabled: bool,

    /// Hash algorithm of container file checksums (compared with Snapshots of the image).
    #[serde(default)]
    pub algorithm: Algorithm,

    /// Allow `fim.kubefim.io/remediation: kill`: the agents then get the KILL capability to
    /// SIGKILL a tampered container's processes (of any user). Without it `kill` is refused with
    /// an event and nothing else happens.
    #[serde(default)]
    pub allow_kill: bool,

    /// At most this many remediations per workload within `remediationWindowSeconds`; more are
    /// suppressed (`RemediationSuppressed`), so a remediation can never loop.
    #[serde(default = "default_max_remediations")]
    #[schemars(range(min = 1))]
    pub max_remediations: i32,

    /// The window of `maxRemediations`, in seconds.
    #[serde(default = "default_remediation_window")]
    #[schemars(range(min = 1))]
    pub remediation_window_seconds: i64,
}

/// Default `spec.containers.maxRemediations`.
pub const DEFAULT_MAX_REMEDIATIONS: i32 = 3;
/// Default `spec.containers.remediationWindowSeconds` (10 minutes).
pub const DEFAULT_REMEDIATION_WINDOW: i64 = 600;

fn default_max_remediations() -> i32 {
    DEFAULT_MAX_REMEDIATIONS
}

fn default_remediation_window() -> i64 {
    DEFAULT_REMEDIATION_WINDOW
}

impl Default for ContainerMonitoring {
    /// Same as deserializing `{}`.
    fn default() -> Self {
        Self {
            enabled: false,
            algorithm: Algorithm::default(),
            allow_kill: false,
            max_remediations: DEFAULT_MAX_REMEDIATIONS,
            remediation_window_seconds: DEFAULT_REMEDIATION_WINDOW,
        }
    }
}

/// Alert sinks (`spec.alerts`).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Alerts {
    /// Send one syslog message per detected change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub syslog: Option<SyslogAlert>,
}

/// Syslog sink (`spec.alerts.syslog`): integrity-sum's lines (see docs/agent.md) for every
/// finding, and heartbeats.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.protocol != 'tls' || has(self.caSecret)")
    .message("spec.alerts.syslog.caSecret is required when spec.alerts.syslog.protocol is tls")
    .field_path(".caSecret"))]
pub struct SyslogAlert {
    /// Host name or IP address of the syslog server.
    #[x_kube(validation = Rule::new("self != ''").message("spec.alerts.syslog.host must not be empty"))]
    pub host: String,

    /// Port of the syslog server.
    #[serde(default = "default_syslog_port")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 65535").message("spec.alerts.syslog.port must be between 1 and 65535"))]
    pub port: i32,

    /// Transport: `tcp` (default, as integrity-sum), `udp`, or `tls` (RFC 5425).
    #[serde(default)]
    pub protocol: SyslogProtocol,

    /// Framing of TCP messages (RFC 6587); TLS always counts octets, UDP sends datagrams.
    #[serde(default)]
    pub framing: SyslogFraming,

    /// Message format.
    #[serde(default)]
    pub format: SyslogFormat,

    /// Seconds between heartbeat lines (event type 0004); integrity-sum sends one every 20 minutes.
    #[serde(default = "default_heartbeat_seconds")]
    #[x_kube(validation = Rule::new("self >= 1").message("spec.alerts.syslog.heartbeatSeconds must be at least 1"))]
    pub heartbeat_seconds: i64,

    /// Cluster name written in `cluster=`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cluster: String,

    /// Secret in the FileIntegrity's namespace whose `ca.crt` (PEM) holds the CAs trusted for
    /// `tls`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret: Option<String>,
}

/// Default `spec.alerts.syslog.heartbeatSeconds` (integrity-sum's 20 minutes).
pub const DEFAULT_SYSLOG_HEARTBEAT_SECONDS: i64 = 1200;
/// Key of the CA bundle in `spec.alerts.syslog.caSecret`.
pub const SYSLOG_CA_KEY: &str = "ca.crt";
/// Where the operator mounts `spec.alerts.syslog.caSecret` in the agent pods (agents may not
/// read Secrets through the API).
pub const SYSLOG_CA_MOUNT_DIR: &str = "/etc/kube-fim/syslog-ca";

fn default_syslog_port() -> i32 {
    DEFAULT_SYSLOG_PORT
}

fn default_heartbeat_seconds() -> i64 {
    DEFAULT_SYSLOG_HEARTBEAT_SECONDS
}

/// Syslog transport.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SyslogProtocol {
    #[default]
    Tcp,
    Udp,
    Tls,
}

/// Framing of syslog over TCP (RFC 6587).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum SyslogFraming {
    /// Each message ends with a newline (what integrity-sum sends).
    #[default]
    Newline,
    /// `LENGTH SP MESSAGE`.
    OctetCounting,
}

/// Syslog message format.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SyslogFormat {
    #[default]
    Rfc3164,
    Rfc5424,
}

/// Observed state of a FileIntegrity, written by the operator.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct FileIntegrityStatus {
    /// Pending, Initializing, Active or Error.
    #[serde(default)]
    pub phase: FileIntegrityPhase,

    /// Standard conditions, keyed by type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// `metadata.generation` the status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Selected nodes.
    #[serde(default)]
    pub nodes: i32,
    /// Nodes still initialising their baseline.
    #[serde(default)]
    pub initializing: i32,
    /// Nodes whose latest scan found no changes.
    #[serde(default)]
    pub succeeded: i32,
    /// Nodes whose latest scan found changes.
    #[serde(default)]
    pub failed: i32,
    /// Nodes whose latest scan could not complete (or whose baseline was replaced).
    #[serde(default)]
    pub errored: i32,

    /// The baseline anchor of each node: the digest of the baseline database the operator saw
    /// the node create (first baseline or acknowledged re-init). Agents cannot write this
    /// status, so root on a node cannot rewrite its node's anchor (issue 10, item 2).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 5000))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["nodeName"]))]
    pub baselines: Vec<BaselineAnchor>,

    /// The container remediations the operator carried out, attempted or suppressed recently
    /// (at most 100, each kept 10 minutes):
    /// the agent of `nodeName` sends a syslog line for each (`spec.alerts.syslog`). Agents cannot
    /// write this status, so a line says what the operator did. Written by the operator's
    /// containers step under its own field manager, apart from the rest of the status.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub container_remediations: Vec<ContainerRemediationRecord>,
}

/// Most entries of `status.containerRemediations`.
pub const MAX_CONTAINER_REMEDIATIONS: usize = 100;
/// How long an entry of `status.containerRemediations` stays (seconds).
pub const CONTAINER_REMEDIATION_TTL_SECONDS: i64 = 600;
/// Field manager of `status.containerRemediations`.
pub const CONTAINER_REMEDIATIONS_MANAGER: &str = "fim-operator-remediations";

/// One remediation of a tampered container by the operator (`status.containerRemediations[]`).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ContainerRemediationRecord {
    /// The node whose agent reported the finding (and sends the line).
    #[schemars(length(max = 253))]
    pub node_name: String,
    #[schemars(length(max = 253))]
    pub namespace: String,
    #[schemars(length(max = 253))]
    pub pod: String,
    #[schemars(length(max = 128))]
    pub pod_uid: String,
    #[schemars(length(max = 253))]
    pub container: String,
    /// The container's image reference (pod status `image`).
    #[schemars(length(max = 1024))]
    pub image: String,
    /// `restart`, `rollback` or `suppressed`.
    #[schemars(length(max = 32))]
    pub action: String,
    /// The workload the remediation counts against for `maxRemediations`
    /// (`<namespace>/<controller kind>/<name>`): a new operator leader continues the count.
    #[serde(default)]
    #[schemars(length(max = 1024))]
    pub workload: String,
    /// What happened, as the syslog `message=` (`Restart pod web-1`, ... `failed: ...`).
    #[schemars(length(max = 1024))]
    pub message: String,
    /// The first tampered path (as in `changedPaths`).
    #[serde(default)]
    #[schemars(length(max = 4096))]
    pub file: String,
    /// When the operator acted.
    pub time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
}

/// The operator's record of one node's baseline (`status.baselines[]`).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BaselineAnchor {
    #[schemars(length(max = 253))]
    pub node_name: String,
    /// Digest of the node's baseline database; absent while the node creates its first one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub digest: Option<String>,
    /// The re-init request whose acknowledgement recorded `digest` (absent for a first
    /// baseline). Each request records at most one digest per node. (Request ids are u64; the
    /// API stores int64, and ids are times in milliseconds or follow one: far below 2^63.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reinit_id: Option<i64>,
    /// A digest the node reported without a matching re-init: the node counts as Errored
    /// ("baseline replaced") until a re-init request for it is acknowledged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub rejected_digest: Option<String>,
}

impl BaselineAnchor {
    /// An entry waiting for the node's first baseline.
    pub fn awaiting(node: impl Into<String>) -> Self {
        Self {
            node_name: node.into(),
            digest: None,
            reinit_id: None,
            rejected_digest: None,
        }
    }
}

/// Phase of a FileIntegrity (file-integrity-operator values plus `Error`).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum FileIntegrityPhase {
    #[default]
    Pending,
    Initializing,
    Active,
    Error,
}

impl FileIntegrityPhase {
    pub const fn as_str(self) -> &'static str {
        match self {
            FileIntegrityPhase::Pending => "Pending",
            FileIntegrityPhase::Initializing => "Initializing",
            FileIntegrityPhase::Active => "Active",
            FileIntegrityPhase::Error => "Error",
        }
    }
}

impl std::fmt::Display for FileIntegrityPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
