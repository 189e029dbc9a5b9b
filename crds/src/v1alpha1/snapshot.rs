use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Algorithm;

/// Pattern of `spec.hashes`: standard, padded base64 on one line.
pub const BASE64_PATTERN: &str = "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$";

/// Reference checksums of an image's files, uploaded by the operator to S3-compatible storage.
// Repeated `printcolumn(type_ = ..)` keys trip clippy's duplicated_attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "fim.kubefim.io",
    version = "v1alpha1",
    kind = "Snapshot",
    namespaced,
    shortname = "snap",
    category = "fim",
    status = "SnapshotStatus",
    derive = "PartialEq",
    doc = "Snapshot holds reference checksums of an image's files for container integrity checks.",
    printcolumn(name = "Image", type_ = "string", json_path = ".spec.image"),
    printcolumn(name = "Uploaded", type_ = "boolean", json_path = ".status.uploaded"),
    printcolumn(name = "Hash", type_ = "string", json_path = ".status.controlHash"),
    printcolumn(
        name = "Algorithm",
        type_ = "string",
        json_path = ".spec.algorithm",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotSpec {
    /// Image the checksums belong to, e.g. `registry.example.com/app:1.2`.
    #[x_kube(validation = Rule::new("self != ''").message("spec.image must not be empty"))]
    pub image: String,

    /// Hash algorithm of the checksums.
    #[serde(default)]
    pub algorithm: Algorithm,

    /// Base64 (standard alphabet, padded, one line) of `<hex digest>  <path>` lines as written
    /// by `fim-agent snapshot`.
    #[schemars(pattern(BASE64_PATTERN))]
    #[x_kube(
        validation = Rule::new("size(self) > 0").message("spec.hashes must not be empty"),
        validation = Rule::new("size(self) % 4 == 0").message("spec.hashes must be padded base64 (length a multiple of 4)")
    )]
    pub hashes: String,
}

/// Observed state of a Snapshot, written by the operator.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotStatus {
    /// The decoded hashes are in storage at `objectKey`.
    #[serde(default)]
    pub uploaded: bool,

    /// Digest of the decoded `spec.hashes`, to tell snapshots apart and detect changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_hash: Option<String>,

    /// Object key in the bucket: `<namespace>/<image>/<tag>.<algorithm>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_key: Option<String>,

    /// Standard conditions, keyed by type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// `metadata.generation` the status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
