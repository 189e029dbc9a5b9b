//! Errors of the operator's pure logic.

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
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
