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

    /// An API call of the controller failed; the reconcile is retried.
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
