//! Where the operator keeps snapshot objects: its flags, and credentials from a Secret (the
//! S3 client itself is `fim_s3`, shared with the agent).

pub use fim_s3::{Bucket, Credentials};

/// Operator flags (or env) of the snapshot storage.
#[derive(clap::Args, Clone, Debug)]
pub struct StorageArgs {
    /// S3 endpoint of snapshot objects (MinIO: `http://minio.minio:9000`); without it Snapshots
    /// are validated but not uploaded (`Uploaded=False`, reason `StorageNotConfigured`).
    #[arg(long = "s3-endpoint", env = "S3_ENDPOINT")]
    pub endpoint: Option<String>,
    /// Bucket of snapshot objects, created if missing.
    #[arg(long = "s3-bucket", env = "S3_BUCKET", default_value = "integrity")]
    pub bucket: String,
    #[arg(long = "s3-region", env = "AWS_REGION", default_value = "us-east-1")]
    pub region: String,
    /// Secret in the operator namespace with the S3 credentials (keys `accessKey` and
    /// `secretKey`, or `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`); read at every upload so a
    /// rotation needs no restart. Without it: the AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY env.
    #[arg(long = "s3-credentials-secret", env = "S3_CREDENTIALS_SECRET")]
    pub credentials_secret: Option<String>,
    /// Longest wait between upload retries while S3 is unreachable (they start at 1 s and double).
    #[arg(long = "snapshot-retry-max-seconds", default_value_t = 30)]
    pub retry_max_seconds: u64,
    /// Reconcile Snapshots of every namespace (the default: the operator's namespace only).
    #[arg(long = "snapshot-all-namespaces")]
    pub all_namespaces: bool,
}
