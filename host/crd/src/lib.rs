//! KAITO custom resources: the Workspace, the InferenceSet and the RAGEngine. The Workspace follows KAITO's `kaito.sh/v1beta1`
//! shape: `resource`, `inference` and `tuning` sit at the top level, beside
//! `metadata`, with no `spec` wrapper.

pub mod crd;
pub mod inferenceset;
pub mod ragengine;
pub mod workspace;

pub use crd::{WORKSPACE_CRD_PATH, workspace_crd, workspace_crd_yaml};
pub use inferenceset::{
    INFERENCESET_CRD_PATH, InferenceSet, InferenceSetSpec, InferenceSetStatus, inferenceset_crd, inferenceset_crd_yaml,
};
pub use ragengine::{RAGENGINE_CRD_PATH, RAGEngine, RAGEngineSpec, RAGEngineStatus, ragengine_crd, ragengine_crd_yaml};
pub use workspace::*;

/// API group of every KAITO resource.
pub const GROUP: &str = "kaito.sh";

/// A problem with one field of a resource, and how to fix it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}{}", hint.as_ref().map(|h| format!(" (fix: {h})")).unwrap_or_default())]
pub struct FieldError {
    /// Dotted path, e.g. `resource.labelSelector`.
    pub field: String,
    pub message: String,
    pub hint: Option<String>,
}

impl FieldError {
    /// An error at `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError { field: field.into(), message: message.into(), hint: None }
    }

    /// Add how to fix it.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}
