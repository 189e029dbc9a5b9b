//! `fim.kubefim.io/v1alpha1`.

mod algorithm;
mod file_integrity;
mod node_status;
mod snapshot;

pub use algorithm::{Algorithm, UnknownAlgorithm};
pub use file_integrity::{
    Alerts, BaselineAnchor, CONTAINER_REMEDIATION_TTL_SECONDS, CONTAINER_REMEDIATIONS_MANAGER,
    ContainerMonitoring, ContainerRemediationRecord, DEFAULT_CONFIG_KEY, DEFAULT_GRACE_PERIOD,
    DEFAULT_MAX_BACKUPS, DEFAULT_MAX_REMEDIATIONS, DEFAULT_REMEDIATION_WINDOW,
    DEFAULT_SYSLOG_HEARTBEAT_SECONDS, DEFAULT_SYSLOG_PORT, DEFAULT_TOLERATED_TAINTS, FileIntegrity,
    FileIntegrityConfig, FileIntegrityPhase, FileIntegritySpec, FileIntegrityStatus,
    MAX_CONTAINER_REMEDIATIONS, MIN_GRACE_PERIOD, SYSLOG_CA_KEY, SYSLOG_CA_MOUNT_DIR, SyslogAlert,
    SyslogFormat, SyslogFraming, SyslogProtocol, default_tolerations,
};
pub use node_status::{
    ContainerResult, FileIntegrityNodeStatus, FileIntegrityNodeStatusFields, MAX_CHANGED_PATHS,
    MAX_CONTAINER_CHANGED_PATHS, MAX_CONTAINERS, MAX_POD_PROBLEMS, PodProblems, RealtimeWatcher,
    ScanCondition, ScanResult, ScanStatistics,
};
pub use snapshot::{
    BASE64_PATTERN, DIGEST_PATTERN, MAX_INLINE_HASHES, REFERENCE_PATTERN, Snapshot, SnapshotSource,
    SnapshotSpec, SnapshotStatus,
};
