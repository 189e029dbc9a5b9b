//! The S3 bucket of snapshot objects (path-style, for MinIO), credentials from a Secret.

use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::ByteStream;

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

/// Access and secret key.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key: String,
    pub secret_key: String,
}

/// The two keys from a Secret's data, under either naming.
pub fn credentials_from_secret(
    data: &std::collections::BTreeMap<String, Vec<u8>>,
) -> Option<Credentials> {
    let get = |a: &str, b: &str| {
        data.get(a)
            .or_else(|| data.get(b))
            .and_then(|v| String::from_utf8(v.clone()).ok())
            .map(|s| s.trim().to_string())
    };
    Some(Credentials {
        access_key: get("accessKey", "AWS_ACCESS_KEY_ID")?,
        secret_key: get("secretKey", "AWS_SECRET_ACCESS_KEY")?,
    })
}

#[derive(Clone)]
pub struct Bucket {
    client: aws_sdk_s3::Client,
    pub name: String,
}

impl Bucket {
    pub fn new(endpoint: &str, region: &str, bucket: &str, credentials: &Credentials) -> Bucket {
        let credentials = aws_credential_types::Credentials::new(
            credentials.access_key.clone(),
            credentials.secret_key.clone(),
            None,
            None,
            "fim-operator",
        );
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .endpoint_url(endpoint)
            .region(aws_sdk_s3::config::Region::new(region.to_string()))
            .credentials_provider(credentials)
            .force_path_style(true)
            // Our own backoff retries across reconciles; one quick attempt here.
            .retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled())
            .timeout_config(
                aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                    .connect_timeout(std::time::Duration::from_secs(3))
                    .operation_timeout(std::time::Duration::from_secs(60))
                    .build(),
            )
            .build();
        Bucket {
            client: aws_sdk_s3::Client::from_conf(config),
            name: bucket.to_string(),
        }
    }

    /// Creates the bucket unless it exists.
    pub async fn ensure(&self) -> Result<(), String> {
        if self
            .client
            .head_bucket()
            .bucket(&self.name)
            .send()
            .await
            .is_ok()
        {
            return Ok(());
        }
        match self.client.create_bucket().bucket(&self.name).send().await {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error().is_some_and(|s| {
                    s.is_bucket_already_owned_by_you() || s.is_bucket_already_exists()
                }) =>
            {
                Ok(())
            }
            Err(e) => Err(format!(
                "create bucket {}: {}",
                self.name,
                DisplayErrorContext(e)
            )),
        }
    }

    pub async fn put(&self, key: &str, data: Vec<u8>) -> Result<(), String> {
        self.client
            .put_object()
            .bucket(&self.name)
            .key(key)
            .body(ByteStream::from(data))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| format!("put {key}: {}", DisplayErrorContext(e)))
    }

    /// `Ok(None)` when the object does not exist.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        match self
            .client
            .get_object()
            .bucket(&self.name)
            .key(key)
            .send()
            .await
        {
            Ok(out) => out
                .body
                .collect()
                .await
                .map(|b| Some(b.into_bytes().to_vec()))
                .map_err(|e| format!("get {key}: {e}")),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(None),
            Err(e) => Err(format!("get {key}: {}", DisplayErrorContext(e))),
        }
    }

    /// Deleting a missing object is not an error (S3 semantics).
    pub async fn delete(&self, key: &str) -> Result<(), String> {
        self.client
            .delete_object()
            .bucket(&self.name)
            .key(key)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| format!("delete {key}: {}", DisplayErrorContext(e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_keys_in_either_naming() {
        let data = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect()
        };
        let c =
            credentials_from_secret(&data(&[("accessKey", "a"), ("secretKey", "s\n")])).unwrap();
        assert_eq!((c.access_key.as_str(), c.secret_key.as_str()), ("a", "s"));
        let c = credentials_from_secret(&data(&[
            ("AWS_ACCESS_KEY_ID", "a2"),
            ("AWS_SECRET_ACCESS_KEY", "s2"),
        ]))
        .unwrap();
        assert_eq!(c.access_key, "a2");
        assert!(credentials_from_secret(&data(&[("accessKey", "a")])).is_none());
    }
}
