//! Errors of the operator: its pure logic and the controller's API calls.

/// Why a desired object could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The FileIntegrity lacks a field the API server always sets (name, namespace, uid).
    #[error("FileIntegrity has no {0}")]
    MissingObjectKey(&'static str),

    /// Owner references cannot cross namespaces: the garbage collector would treat the owner as
    /// absent and delete the DaemonSet.
    #[error(
        "FileIntegrity {name} is in namespace {namespace}, but agents run in {agent_namespace}; \
         create it there"
    )]
    ForeignNamespace {
        name: String,
        namespace: String,
        agent_namespace: String,
    },

    /// The FileIntegrity name is used as a label value, which is limited to 63 characters.
    #[error("FileIntegrity name {0:?} is longer than 63 characters")]
    NameTooLong(String),

    /// The operator's re-init bookkeeping annotation holds something it did not write.
    #[error("invalid re-init request annotation: {0}")]
    InvalidReinitRequest(#[source] serde_json::Error),

    /// An API call of the controller failed; the reconcile is retried with backoff unless the
    /// API server rejected the request itself (see [`Error::is_permanent`]).
    #[error("{action}: {source}")]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },
}

impl Error {
    /// Wraps an API error with what the operator was doing.
    pub fn kube(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Self {
        let action = action.into();
        move |source| Error::Kube { action, source }
    }

    /// Whether retrying cannot help until something changes: the FileIntegrity is unusable as
    /// it is, or the API server rejected what the operator derived from it (400 Bad Request,
    /// 422 Invalid). Everything else (connection errors, timeouts, conflicts, throttling,
    /// missing rights that an admin may grant) is transient.
    pub fn is_permanent(&self) -> bool {
        match self {
            Error::MissingObjectKey(_)
            | Error::ForeignNamespace { .. }
            | Error::NameTooLong(_)
            | Error::InvalidReinitRequest(_) => true,
            Error::Kube { source, .. } => {
                matches!(source, kube::Error::Api(status) if matches!(status.code, 400 | 422))
            }
        }
    }

    /// Bounded label value for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::MissingObjectKey(_) => "missing_object_key",
            Error::ForeignNamespace { .. } => "foreign_namespace",
            Error::NameTooLong(_) => "name_too_long",
            Error::InvalidReinitRequest(_) => "invalid_reinit_request",
            Error::Kube { .. } => "kube",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16) -> Error {
        let status: kube::core::Status = serde_json::from_value(serde_json::json!({
            "status": "Failure", "message": "m", "reason": "r", "code": code,
        }))
        .unwrap();
        Error::kube("applying DaemonSet x")(kube::Error::Api(Box::new(status)))
    }

    #[test]
    fn an_unusable_object_or_a_rejected_request_is_permanent() {
        assert!(Error::MissingObjectKey("metadata.uid").is_permanent());
        assert!(Error::NameTooLong("x".repeat(64)).is_permanent());
        assert!(api_error(422).is_permanent());
        assert!(api_error(400).is_permanent());
    }

    #[test]
    fn api_trouble_is_transient() {
        for code in [403, 404, 409, 429, 500, 503] {
            assert!(!api_error(code).is_permanent(), "{code}");
        }
        let timeout = Error::kube("reading x")(kube::Error::Service(Box::new(
            std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"),
        )));
        assert!(!timeout.is_permanent());
        assert_eq!(timeout.metric_label(), "kube");
    }
}
