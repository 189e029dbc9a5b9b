use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Algorithm;

/// Pattern of `spec.hashes`: standard, padded base64 on one line.
pub const BASE64_PATTERN: &str = "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$";

/// RE2 pattern of an image reference (the distribution grammar: `[host[:port]/]path[:tag][@digest]`),
/// the same as `fim_engine::image::reference::REFERENCE_PATTERN` (a test keeps them equal).
pub const REFERENCE_PATTERN: &str = concat!(
    r"^(?:(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?/)?",
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*",
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?",
    r"(?:@(?:sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128}))?$",
);

/// RE2 pattern of `spec.imageDigest`.
pub const DIGEST_PATTERN: &str = r"^(?:sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})$";

/// Longest `spec.hashes`: what fits in one etcd object (1.5 MiB) with room for the rest; bigger
/// snapshots go through `fim-agent snapshot --upload` and `spec.source`.
pub const MAX_INLINE_HASHES: u32 = 1_400_000;

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
#[x_kube(validation = Rule::new("has(self.hashes) != has(self.source)")
    .message("spec.hashes or spec.source must be set (exactly one of them)"))]
pub struct SnapshotSpec {
    /// Image the checksums belong to: `[registry[:port]/]path[:tag][@sha256:<hex>]`, e.g.
    /// `registry.example.com:5000/team/app:1.2`; `nginx` means `docker.io/library/nginx:latest`.
    #[schemars(length(max = 520))]
    #[x_kube(
        validation = Rule::new("self != ''").message("spec.image must not be empty"),
        validation = Rule::new(format!("self == '' || self.matches(r'{REFERENCE_PATTERN}')"))
            .message("spec.image must be an image reference like registry:5000/team/app:1.2 or app@sha256:<64 hex>")
    )]
    pub image: String,

    /// Digest of the image manifest (`sha256:<64 hex>`), when the reference has none; recorded by
    /// `fim-agent snapshot --image-archive` from an OCI archive. It names the object instead of the tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 135))]
    #[x_kube(validation = Rule::new(format!("self.matches(r'{DIGEST_PATTERN}')"))
        .message("spec.imageDigest must be sha256:<64 lowercase hex> or sha512:<128 lowercase hex>"))]
    pub image_digest: Option<String>,

    /// Hash algorithm of the checksums.
    #[serde(default)]
    pub algorithm: Algorithm,

    /// Base64 (standard alphabet, padded, one line) of `<hex digest>  <path>` lines as written
    /// by `fim-agent snapshot` (integrity-sum compatible). Exclusive with `source`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(BASE64_PATTERN), length(max = MAX_INLINE_HASHES))]
    #[x_kube(
        validation = Rule::new("size(self) > 0").message("spec.hashes must not be empty"),
        validation = Rule::new("size(self) % 4 == 0").message("spec.hashes must be padded base64 (length a multiple of 4)")
    )]
    pub hashes: Option<String>,

    /// The lines in the operator's bucket instead, as written by `fim-agent snapshot --upload`
    /// (for snapshots too big for a resource). Exclusive with `hashes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SnapshotSource>,
}

/// An object with snapshot lines in the operator's bucket.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotSource {
    /// Object key in the operator's bucket.
    #[schemars(length(max = 1024))]
    #[x_kube(validation = Rule::new("self != '' && !self.startsWith('/')")
        .message("spec.source.key must be a non-empty key without a leading /"))]
    pub key: String,

    /// SHA-256 (lowercase hex) of the object as uploaded: the operator refuses an object that
    /// differs, so what it vouches for (`status.controlHash`) is what the uploader wrote.
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("self.matches('^[0-9a-f]{64}$')")
        .message("spec.source.sha256 must be 64 lowercase hex digits"))]
    pub sha256: String,
}

/// Observed state of a Snapshot, written by the operator.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotStatus {
    /// The decoded hashes are in storage at `objectKey`.
    #[serde(default)]
    pub uploaded: bool,

    /// SHA-256 (lowercase hex) of the decoded lines, computed by the operator from the bytes it
    /// validated and stored. Agents accept snapshot data only when its SHA-256 equals this value
    /// (integrity-sum's controlHash is an MD5 of the base64 text, which proves nothing about S3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_hash: Option<String>,

    /// Object key in the bucket: `<namespace>/<registry>/<path>/<tag or digest>.<algorithm>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_key: Option<String>,

    /// Number of files (lines) in the snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<i64>,

    /// `Valid` (content checks) and `Uploaded` (storage), keyed by type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// `metadata.generation` the status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

impl Snapshot {
    /// The decoded lines of an inline snapshot (`None` for `spec.source` or bad base64).
    pub fn inline_data(&self) -> Option<Vec<u8>> {
        use base64::Engine;
        let text = self.spec.hashes.as_deref()?;
        base64::engine::general_purpose::STANDARD.decode(text).ok()
    }
}
