//! The operator's one error enum.

/// Everything a reconcile can fail with. Plugin and validation failures are
/// not errors here: they become conditions on the owner.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("serialising {what}: {source}")]
    Serialize { what: &'static str, source: serde_json::Error },
    #[error("the plugin worker thread failed: {0}")]
    Worker(#[from] tokio::task::JoinError),
    #[error("object has no {0}")]
    MissingField(&'static str),
    /// Not a failure: a cleanup waits for what it deleted to be gone (the finalizer stays until then).
    #[error("waiting: {0}")]
    Waiting(String),
    #[error(transparent)]
    Finalizer(Box<kube::runtime::finalizer::Error<Error>>),
}

impl Error {
    /// The error inside the finalizer's wrapping, if there is one.
    fn inner(&self) -> &Error {
        use kube::runtime::finalizer::Error as F;
        match self {
            Error::Finalizer(f) => match f.as_ref() {
                F::ApplyFailed(e) | F::CleanupFailed(e) => e.inner(),
                _ => self,
            },
            _ => self,
        }
    }

    /// Whether this is a cleanup waiting, not a failure.
    pub fn is_waiting(&self) -> bool {
        matches!(self.inner(), Error::Waiting(_))
    }

    /// Short label for the errors-by-reason metric.
    pub fn metric_label(&self) -> String {
        use kube::runtime::finalizer::Error as F;
        match self.inner() {
            Error::Kube(kube::Error::Api(status)) => format!("api_{}", status.code),
            Error::Kube(_) => "kube".into(),
            Error::Serialize { .. } => "serialize".into(),
            Error::Worker(_) => "worker".into(),
            Error::MissingField(_) => "missing_field".into(),
            Error::Waiting(_) => "waiting".into(),
            Error::Finalizer(f) => match f.as_ref() {
                F::AddFinalizer(kube::Error::Api(s)) | F::RemoveFinalizer(kube::Error::Api(s)) => {
                    format!("finalizer_api_{}", s.code)
                }
                _ => "finalizer".into(),
            },
        }
    }
}

/// Result of a reconcile step.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::finalizer::Error as F;

    #[test]
    fn a_waiting_cleanup_is_not_a_failure() {
        let waiting = Error::Finalizer(Box::new(F::CleanupFailed(Error::Waiting("2 NodeClaims left".into()))));
        assert!(waiting.is_waiting());
        assert_eq!(waiting.metric_label(), "waiting");
        let failed = Error::Finalizer(Box::new(F::ApplyFailed(Error::MissingField("name"))));
        assert!(!failed.is_waiting());
        assert_eq!(failed.metric_label(), "missing_field");
    }
}
