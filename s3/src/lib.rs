//! The S3 bucket that holds snapshot objects, one client for the agent and the operator.
//!
//! Path-style addressing (MinIO), no SDK retries (callers retry on their own schedule: the
//! operator with its backoff across reconciles, the agent at the next check) and short
//! timeouts, so an unreachable endpoint costs seconds, not minutes.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::ByteStream;

/// Access and secret key.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key: String,
    pub secret_key: String,
}

impl std::fmt::Debug for Credentials {
    /// Never prints the secret key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key", &self.access_key)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// The two keys from a Secret's data, under either naming (`accessKey`/`secretKey`, or
    /// `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`).
    pub fn from_secret_data(data: &BTreeMap<String, Vec<u8>>) -> Option<Credentials> {
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
}

/// A failed S3 operation, naming the operation and the object.
#[derive(Debug, thiserror::Error)]
#[error("S3 {op} s3://{bucket}/{key}: {message}")]
pub struct S3Error {
    pub op: &'static str,
    pub bucket: String,
    pub key: String,
    pub message: String,
}

/// One bucket at one endpoint.
#[derive(Clone)]
pub struct Bucket {
    client: aws_sdk_s3::Client,
    pub name: String,
}

impl Bucket {
    /// A client for bucket `name` at `endpoint` (the rustls crypto provider must be installed
    /// first); `app` names the caller in the credentials' provider name.
    pub fn new(
        endpoint: &str,
        region: &str,
        name: &str,
        credentials: &Credentials,
        app: &'static str,
    ) -> Bucket {
        let credentials = aws_credential_types::Credentials::new(
            credentials.access_key.clone(),
            credentials.secret_key.clone(),
            None,
            None,
            app,
        );
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .endpoint_url(endpoint)
            .region(aws_sdk_s3::config::Region::new(region.to_string()))
            .credentials_provider(credentials)
            .force_path_style(true)
            .retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled())
            .timeout_config(
                aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(3))
                    .operation_timeout(Duration::from_secs(60))
                    .build(),
            )
            .build();
        Bucket {
            client: aws_sdk_s3::Client::from_conf(config),
            name: name.to_string(),
        }
    }

    fn err(&self, op: &'static str, key: &str, message: impl std::fmt::Display) -> S3Error {
        S3Error {
            op,
            bucket: self.name.clone(),
            key: key.to_string(),
            message: message.to_string(),
        }
    }

    /// Creates the bucket unless it exists.
    pub async fn ensure(&self) -> Result<(), S3Error> {
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
            Err(e) => Err(self.err("CREATE BUCKET", "", DisplayErrorContext(e))),
        }
    }

    /// The object's bytes; `Ok(None)` when it does not exist.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, S3Error> {
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
                .map_err(|e| self.err("GET", key, e)),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(None),
            Err(e) => Err(self.err("GET", key, DisplayErrorContext(e))),
        }
    }

    pub async fn put(&self, key: &str, data: Vec<u8>) -> Result<(), S3Error> {
        self.client
            .put_object()
            .bucket(&self.name)
            .key(key)
            .body(ByteStream::from(data))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| self.err("PUT", key, DisplayErrorContext(e)))
    }

    /// Deleting a missing object is not an error (S3 semantics).
    pub async fn delete(&self, key: &str) -> Result<(), S3Error> {
        self.client
            .delete_object()
            .bucket(&self.name)
            .key(key)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| self.err("DELETE", key, DisplayErrorContext(e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn secret_keys_in_either_naming() {
        let c = Credentials::from_secret_data(&data(&[("accessKey", "a"), ("secretKey", "s\n")]))
            .unwrap();
        assert_eq!((c.access_key.as_str(), c.secret_key.as_str()), ("a", "s"));
        let c = Credentials::from_secret_data(&data(&[
            ("AWS_ACCESS_KEY_ID", "a2"),
            ("AWS_SECRET_ACCESS_KEY", "s2"),
        ]))
        .unwrap();
        assert_eq!(c.access_key, "a2");
        assert!(Credentials::from_secret_data(&data(&[("accessKey", "a")])).is_none());
    }

    #[test]
    fn debug_output_never_shows_the_secret_key() {
        let c = Credentials {
            access_key: "AKIA".into(),
            secret_key: "very-secret".into(),
        };
        let shown = format!("{c:?}");
        assert!(
            shown.contains("AKIA") && !shown.contains("very-secret"),
            "{shown}"
        );
    }

    #[test]
    fn errors_name_the_operation_and_the_object() {
        let e = S3Error {
            op: "GET",
            bucket: "integrity".into(),
            key: "images/x".into(),
            message: "connection refused".into(),
        };
        assert_eq!(
            e.to_string(),
            "S3 GET s3://integrity/images/x: connection refused"
        );
    }
}
