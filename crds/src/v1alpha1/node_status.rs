use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// At most this many paths are listed in `changedPaths`.
pub const MAX_CHANGED_PATHS: usize = 100;

/// Scan results of one FileIntegrity on one node, written by the agent on that node.
///
/// Like the file-integrity-operator's object, the fields sit at the top level (no `spec` or
/// `status`): `kube(no_spec)` flattens [`FileIntegrityNodeStatusFields`] onto the root, so in
/// Rust they are reached through `.spec`. Named `<fileintegrity>-<node>` (see
/// [`FileIntegrityNodeStatus::name_for`]), owned by the FileIntegrity.
// Repeated `printcolumn(type_ = ..)` keys trip clippy's duplicated_attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Deserialize, Serialize, JsonSchema, Clone, Debug, PartialEq)]
#[kube(
    group = "fim.kubefim.io",
    version = "v1alpha1",
    kind = "FileIntegrityNodeStatus",
    plural = "fileintegritynodestatuses",
    namespaced,
    no_spec,
    shortname = "fins",
    category = "fim",
    derive = "PartialEq",
    selectable = ".nodeName",
    doc = "FileIntegrityNodeStatus holds the scan results of one FileIntegrity on one node.",
    printcolumn(name = "Node", type_ = "string", json_path = ".nodeName"),
    printcolumn(name = "Status", type_ = "string", json_path = ".lastResult.condition"),
    printcolumn(
        name = "Added",
        type_ = "integer",
        json_path = ".lastResult.filesAdded",
        priority = 1
    ),
    printcolumn(
        name = "Changed",
        type_ = "integer",
        json_path = ".lastResult.filesChanged",
        priority = 1
    ),
    printcolumn(
        name = "Removed",
        type_ = "integer",
        json_path = ".lastResult.filesRemoved",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct FileIntegrityNodeStatusFields {
    /// Node the results are for.
    #[schemars(length(max = 253))]
    pub node_name: String,

    /// Latest result per condition: at most one Succeeded, one Failed and one Errored. The one
    /// with the newest `lastProbeTime` is current.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 3))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["condition"]))]
    pub results: Vec<ScanResult>,

    /// The current result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_result: Option<ScanResult>,

    /// Digest of the baseline database the node compares against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub baseline_digest: Option<String>,

    /// When that baseline was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_created: Option<Time>,

    /// Statistics of the latest completed scan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scan: Option<ScanStatistics>,

    /// The first changed paths of the current result (added, changed or removed), at most 100;
    /// the full list is in the result ConfigMap.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100), inner(length(max = 16384)))]
    pub changed_paths: Vec<String>,

    /// Latest result per monitored container on the node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000))]
    #[schemars(extend(
        "x-kubernetes-list-type" = "map",
        "x-kubernetes-list-map-keys" = ["namespace", "pod", "container"]
    ))]
    pub containers: Vec<ContainerResult>,

    /// Pods on the node whose monitoring annotations have problems.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub pod_problems: Vec<PodProblems>,

    /// How changes are noticed between periodic checks when `spec.realtime` is on: `fanotify`,
    /// `inotify` (fanotify refused, e.g. without CAP_SYS_ADMIN: new files in new directories
    /// may wait for the next check) or `off` (no watcher could start: periodic checks only).
    /// Absent when realtime detection is not requested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub realtime_watcher: Option<RealtimeWatcher>,
}

/// The realtime watcher an agent runs (`realtimeWatcher`).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
// No doc comments on variants: schemars would turn the enum into a non-structural `oneOf`.
pub enum RealtimeWatcher {
    #[serde(rename = "fanotify")]
    Fanotify,
    #[serde(rename = "inotify")]
    Inotify,
    #[serde(rename = "off")]
    Off,
}

impl FileIntegrityNodeStatus {
    /// Object name of the status of FileIntegrity `file_integrity` on node `node`.
    pub fn name_for(file_integrity: &str, node: &str) -> String {
        format!("{file_integrity}-{node}")
    }
}

impl FileIntegrityNodeStatusFields {
    /// Fields with only `nodeName` set.
    pub fn new(node_name: impl Into<String>) -> Self {
        Self {
            node_name: node_name.into(),
            results: Vec::new(),
            last_result: None,
            baseline_digest: None,
            baseline_created: None,
            last_scan: None,
            changed_paths: Vec::new(),
            containers: Vec::new(),
            realtime_watcher: None,
            pod_problems: Vec::new(),
        }
    }

    /// Records `result` as the current result, replacing the previous one with its condition.
    pub fn record(&mut self, result: ScanResult) {
        self.results.retain(|r| r.condition != result.condition);
        self.results.push(result.clone());
        self.results.sort_by_key(|r| r.condition);
        self.last_result = Some(result);
    }
}

/// Outcome of a scan (file-integrity-operator values).
#[derive(
    Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
// No doc comments on variants: schemars would turn the enum into a non-structural `oneOf`.
pub enum ScanCondition {
    // No changes against the baseline.
    Succeeded,
    // Files were added, changed or removed.
    Failed,
    // The scan could not complete.
    Errored,
}

impl ScanCondition {
    pub const fn as_str(self) -> &'static str {
        match self {
            ScanCondition::Succeeded => "Succeeded",
            ScanCondition::Failed => "Failed",
            ScanCondition::Errored => "Errored",
        }
    }
}

impl std::fmt::Display for ScanCondition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One scan result (`results[]`, `lastResult`).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ScanResult {
    pub condition: ScanCondition,

    /// When the scan finished.
    pub last_probe_time: Time,

    #[serde(default, skip_serializing_if = "is_zero")]
    pub files_added: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub files_changed: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub files_removed: i64,

    /// ConfigMap with the full report (Failed and Errored results).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub result_config_map_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub result_config_map_namespace: Option<String>,

    /// Why the scan could not complete (Errored results).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32768))]
    pub error_message: Option<String>,
}

impl ScanResult {
    pub fn new(condition: ScanCondition, last_probe_time: Time) -> Self {
        Self {
            condition,
            last_probe_time,
            files_added: 0,
            files_changed: 0,
            files_removed: 0,
            result_config_map_name: None,
            result_config_map_namespace: None,
            error_message: None,
        }
    }
}

/// Statistics of a scan (`lastScan`).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ScanStatistics {
    /// Files checked.
    #[serde(default)]
    pub files: i64,
    /// Bytes hashed.
    #[serde(default)]
    pub bytes: i64,
    /// Wall-clock duration in milliseconds.
    #[serde(default)]
    pub duration_milliseconds: i64,
}

/// At most this many paths are listed per container in `containers[].changedPaths`.
pub const MAX_CONTAINER_CHANGED_PATHS: usize = 10;
/// At most this many monitored containers are reported per node.
pub const MAX_CONTAINERS: usize = 1000;
/// At most this many pods with bad annotations are reported per node.
pub const MAX_POD_PROBLEMS: usize = 100;

/// Latest result of a monitored container (`containers[]`).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ContainerResult {
    #[schemars(length(max = 63))]
    pub namespace: String,
    #[schemars(length(max = 253))]
    pub pod: String,
    #[schemars(length(max = 63))]
    pub container: String,
    /// UID of the pod (remediation acts only on this very pod).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 64))]
    pub pod_uid: String,
    /// `containerID` of the pod status (`containerd://<id>`) that was checked.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 128))]
    pub container_id: String,
    /// Image of the container, as in the pod spec.
    #[schemars(length(max = 4096))]
    pub image: String,
    /// `imageID` of the pod status (the digest the runtime resolved).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 4096))]
    pub image_id: String,
    /// What the files were compared with: `Snapshot/<namespace>/<name>` or `FirstObserved`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 512))]
    pub baseline_source: String,

    pub condition: ScanCondition,
    pub last_probe_time: Time,

    #[serde(default, skip_serializing_if = "is_zero")]
    pub files_added: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub files_changed: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub files_removed: i64,

    /// The first changed, removed, then added paths (at most 10).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10), inner(length(max = 4096)))]
    pub changed_paths: Vec<String>,

    /// Why the container could not be checked (Errored results).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub error_message: Option<String>,

    /// The last remediation the agent did itself (`kill`), e.g. `kill at 2026-12-02T09:00:00Z`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub last_remediation: Option<String>,
}

/// Bad monitoring annotations of a pod on the node (`podProblems[]`), published by the operator
/// as a Warning event on the pod.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodProblems {
    #[schemars(length(max = 63))]
    pub namespace: String,
    #[schemars(length(max = 253))]
    pub pod: String,
    #[schemars(length(max = 16), inner(length(max = 1024)))]
    pub problems: Vec<String>,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}
