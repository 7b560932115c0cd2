//! The operator's one error enum.

/// Everything a reconcile can fail with. Plugin and validation failures are
/// not errors here: they become conditions on the Workspace.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("serialising {what}: {source}")]
    Serialize { what: &'static str, source: serde_json::Error },
    #[error("the plugin worker thread failed: {0}")]
    Worker(#[from] tokio::task::JoinError),
    #[error("Workspace has no {0}")]
    MissingField(&'static str),
}

impl Error {
    /// Short label for the errors-by-reason metric.
    pub fn metric_label(&self) -> String {
        match self {
            Error::Kube(kube::Error::Api(status)) => format!("api_{}", status.code),
            Error::Kube(_) => "kube".into(),
            Error::Serialize { .. } => "serialize".into(),
            Error::Worker(_) => "worker".into(),
            Error::MissingField(_) => "missing_field".into(),
        }
    }
}

/// Result of a reconcile step.
pub type Result<T, E = Error> = std::result::Result<T, E>;
