//! Image snapshots beyond the local file: the Snapshot manifest `fim-agent snapshot --output-cr`
//! writes, the S3 object `--upload` writes, and the trusted loader agents read snapshots with.
//!
//! Trust: the operator alone writes `status.controlHash` (the SHA-256 of the data it validated and
//! stored); agents have no write access to Snapshots, and S3 credentials that can only read. The
//! loader accepts data, from S3 or from the resource, only when its SHA-256 equals that value, so
//! an object replaced in S3 behind the operator's back is refused.

use fim_engine::image::ImageRef;
use kube::ResourceExt;
use kube_fim_crds::{Algorithm, Snapshot, SnapshotSource, SnapshotSpec};
use sha2::{Digest, Sha256};

/// Where snapshot objects live: flags, else the usual environment variables.
#[derive(clap::Args, Clone, Debug)]
pub struct S3Args {
    /// S3 endpoint (MinIO: `http://minio:9000`); path-style addressing is used.
    #[arg(long = "s3-endpoint", env = "S3_ENDPOINT")]
    pub endpoint: Option<String>,
    /// Bucket of snapshot objects.
    #[arg(long = "s3-bucket", env = "S3_BUCKET", default_value = "integrity")]
    pub bucket: String,
    #[arg(long = "s3-region", env = "AWS_REGION", default_value = "us-east-1")]
    pub region: String,
    /// Access key; the secret key comes from AWS_SECRET_ACCESS_KEY only.
    #[arg(long = "s3-access-key", env = "AWS_ACCESS_KEY_ID")]
    pub access_key: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no S3 endpoint: set --s3-endpoint or S3_ENDPOINT")]
    NoEndpoint,
    #[error("S3 credentials missing: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")]
    NoCredentials,
    #[error(transparent)]
    S3(#[from] fim_s3::S3Error),
}

/// The bucket of snapshot objects (the client shared with the operator, `fim_s3`).
pub type Store = fim_s3::Bucket;

/// A client for `args`, the secret key from AWS_SECRET_ACCESS_KEY (the crypto provider must be
/// installed first).
pub fn store(args: &S3Args) -> Result<Store, StoreError> {
    let endpoint = args.endpoint.as_deref().ok_or(StoreError::NoEndpoint)?;
    let access_key = args.access_key.clone().ok_or(StoreError::NoCredentials)?;
    let secret_key =
        std::env::var("AWS_SECRET_ACCESS_KEY").map_err(|_| StoreError::NoCredentials)?;
    let credentials = fim_s3::Credentials {
        access_key,
        secret_key,
    };
    Ok(Store::new(
        endpoint,
        &args.region,
        &args.bucket,
        &credentials,
        "fim-agent",
    ))
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// What `--output-cr` needs besides the data.
pub struct ManifestInput<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub image: &'a str,
    pub image_digest: Option<&'a str>,
    pub algorithm: Algorithm,
}

/// A Snapshot manifest (YAML) carrying `data` inline, or pointing at `source` when uploaded.
pub fn manifest(input: &ManifestInput<'_>, data: &[u8], source: Option<SnapshotSource>) -> String {
    use base64::Engine;
    let hashes = match source {
        Some(_) => None,
        None => Some(base64::engine::general_purpose::STANDARD.encode(data)),
    };
    let mut snapshot = Snapshot::new(
        input.name,
        SnapshotSpec {
            image: input.image.to_string(),
            image_digest: input.image_digest.map(str::to_string),
            algorithm: input.algorithm,
            hashes,
            source,
        },
    );
    snapshot.metadata.namespace = Some(input.namespace.to_string());
    serde_saphyr::to_string(&snapshot).unwrap_or_default()
}

/// The object key `--upload` writes, the one the operator computes for the same Snapshot.
pub fn upload_key(input: &ManifestInput<'_>) -> Result<String, fim_engine::image::ReferenceError> {
    let reference = ImageRef::parse(input.image)?;
    Ok(reference.object_key(
        input.namespace,
        input.algorithm.extension(),
        input.image_digest,
    ))
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    #[error(
        "Snapshot {snapshot}: no status.controlHash yet (the operator has not validated it); not trusted"
    )]
    Unverified { snapshot: String },
    #[error(
        "Snapshot {snapshot}: data SHA-256 {actual} does not match status.controlHash {expected}; refusing it (changed behind the operator's back?)"
    )]
    Mismatch {
        snapshot: String,
        expected: String,
        actual: String,
    },
    #[error("Snapshot {snapshot}: {message}")]
    Unavailable { snapshot: String, message: String },
}

/// `namespace/name` of a Snapshot, for messages.
pub fn snapshot_name(snapshot: &Snapshot) -> String {
    format!(
        "{}/{}",
        snapshot.namespace().unwrap_or_default(),
        snapshot.name_any()
    )
}

/// Accepts `data` only when its SHA-256 is the operator's `status.controlHash`.
pub fn verify(snapshot: &Snapshot, data: Vec<u8>) -> Result<Vec<u8>, LoadError> {
    let name = snapshot_name(snapshot);
    let expected = snapshot
        .status
        .as_ref()
        .and_then(|s| s.control_hash.clone())
        .ok_or_else(|| LoadError::Unverified {
            snapshot: name.clone(),
        })?;
    let actual = sha256_hex(&data);
    if !actual.eq_ignore_ascii_case(&expected) {
        return Err(LoadError::Mismatch {
            snapshot: name,
            expected,
            actual,
        });
    }
    Ok(data)
}

/// The trusted loader: the Snapshot's data from the resource (inline `spec.hashes`) or from S3
/// (`status.objectKey`, read with the agent's read-only credentials), verified by [`verify`].
pub async fn load(snapshot: &Snapshot, store: Option<&Store>) -> Result<Vec<u8>, LoadError> {
    let name = snapshot_name(snapshot);
    let unavailable = |message: String| LoadError::Unavailable {
        snapshot: name.clone(),
        message,
    };
    let data = if snapshot.spec.hashes.is_some() {
        snapshot
            .inline_data()
            .ok_or_else(|| unavailable("spec.hashes is not valid base64".into()))?
    } else {
        let key = snapshot
            .status
            .as_ref()
            .and_then(|s| s.object_key.clone())
            .ok_or_else(|| unavailable("no status.objectKey yet".into()))?;
        let store = store.ok_or_else(|| unavailable("no S3 storage configured".into()))?;
        store
            .get(&key)
            .await
            .map_err(|e| unavailable(e.to_string()))?
            .ok_or_else(|| unavailable(format!("object {key} is missing")))?
    };
    verify(snapshot, data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube_fim_crds::SnapshotStatus;

    fn snapshot(data: &[u8], control: Option<String>) -> Snapshot {
        let input = ManifestInput {
            name: "app-1",
            namespace: "team",
            image: "registry:5000/app:1",
            image_digest: None,
            algorithm: Algorithm::Sha256,
        };
        let mut s: Snapshot = serde_saphyr::from_str(&manifest(&input, data, None)).unwrap();
        s.status = Some(SnapshotStatus {
            control_hash: control,
            ..Default::default()
        });
        s
    }

    #[test]
    fn manifest_round_trips_inline_and_source() {
        let input = ManifestInput {
            name: "app-1",
            namespace: "team",
            image: "registry:5000/app:1",
            image_digest: Some(
                "sha256:0000000000000000000000000000000000000000000000000000000000000000",
            ),
            algorithm: Algorithm::Bee2,
        };
        let text = manifest(&input, b"x", None);
        assert!(text.contains("kind: Snapshot"), "{text}");
        assert!(!text.contains("status"), "{text}");
        let s: Snapshot = serde_saphyr::from_str(&text).unwrap();
        assert_eq!(s.spec.hashes.as_deref(), Some("eA=="));
        assert_eq!(s.spec.algorithm, Algorithm::Bee2);
        assert_eq!(s.namespace().as_deref(), Some("team"));
        let source = SnapshotSource {
            key: upload_key(&input).unwrap(),
            sha256: sha256_hex(b"x"),
        };
        assert_eq!(
            source.key,
            "team/registry:5000/app/sha256:0000000000000000000000000000000000000000000000000000000000000000.bee2"
        );
        let s: Snapshot =
            serde_saphyr::from_str(&manifest(&input, b"x", Some(source.clone()))).unwrap();
        assert_eq!((s.spec.hashes, s.spec.source), (None, Some(source)));
    }

    #[test]
    fn verify_accepts_only_the_control_hash() {
        let data = b"0123  a\n".to_vec();
        let good = snapshot(&data, Some(sha256_hex(&data)));
        assert_eq!(verify(&good, data.clone()), Ok(data.clone()));
        let err = verify(&good, b"tampered".to_vec()).unwrap_err();
        assert!(matches!(err, LoadError::Mismatch { .. }));
        assert!(err.to_string().contains("Snapshot team/app-1"), "{err}");
        let unverified = snapshot(&data, None);
        assert_eq!(
            verify(&unverified, data),
            Err(LoadError::Unverified {
                snapshot: "team/app-1".into()
            })
        );
    }
}
