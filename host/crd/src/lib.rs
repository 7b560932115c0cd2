//! KAITO custom resources: the Workspace, the InferenceSet and the RAGEngine. The Workspace follows KAITO's `kaito.sh/v1beta1`
//! shape: `resource`, `inference` and `tuning` sit at the top level, beside
//! `metadata`, with no `spec` wrapper.

pub mod crd;
pub mod inferenceset;
pub mod ragengine;
pub mod ragengine_conversion;
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

/// `v` with every object's keys sorted, whatever `serde_json` was built with: a crate in the workspace (llguidance)
/// turns on `preserve_order`, which Cargo then unifies into every crate of a workspace build, so without this a hash
/// or a rendered file would depend on which packages were built together.
pub fn sorted_keys(mut v: serde_json::Value) -> serde_json::Value {
    fn sort(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                m.sort_keys();
                m.values_mut().for_each(sort);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(sort),
            _ => {}
        }
    }
    sort(&mut v);
    v
}

#[cfg(test)]
mod sorted_keys_tests {
    #[test]
    fn keys_come_out_sorted_at_every_depth() {
        let v = serde_json::json!({"b": 1, "a": [{"z": 0, "y": {"d": 1, "c": 2}}]});
        assert_eq!(
            serde_json::to_string(&super::sorted_keys(v)).unwrap(),
            r#"{"a":[{"y":{"c":2,"d":1},"z":0}],"b":1}"#
        );
    }
}
