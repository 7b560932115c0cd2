//! Pieces every node provisioner needs: request checks and owner labels.

use crate::catalog::nearest;
use crate::{ErrorKind, KeyValue, NodeRequest, PluginError, kv};

/// Label naming the Workspace a node belongs to.
pub const WORKSPACE_LABEL: &str = "kaito.sh/workspace";
/// Label naming that Workspace's namespace.
pub const WORKSPACE_NAMESPACE_LABEL: &str = "kaito.sh/workspacenamespace";

/// Error for an instance type `who` does not know, naming the closest ones.
pub fn unknown_instance_type<'a>(asked: &str, known: impl IntoIterator<Item = &'a str>, who: &str) -> PluginError {
    let close = nearest(asked, known, 3);
    PluginError::new(
        ErrorKind::UnknownInstanceType,
        "resource.instanceType",
        format!("{asked:?} is not an instance type {who} knows"),
        Some(format!("closest: {}", close.join(", "))),
    )
}

/// Refuse a node count outside `1..=max`.
pub fn check_node_count(request: &NodeRequest, max: u32) -> Result<(), PluginError> {
    if request.node_count == 0 || request.node_count > max {
        return Err(PluginError::invalid(
            "resource.count",
            format!("node count {} is outside 1..={max}", request.node_count),
        ));
    }
    Ok(())
}

/// The labels that tie provisioned nodes (and the pods pinned to them) to a Workspace.
pub fn owner_labels(request: &NodeRequest) -> Vec<KeyValue> {
    vec![kv(WORKSPACE_LABEL, &request.workspace), kv(WORKSPACE_NAMESPACE_LABEL, &request.namespace)]
}
