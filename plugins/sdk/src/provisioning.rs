//! Pieces every node provisioner needs: request checks and owner labels.

use crate::catalog::nearest;
use crate::{ErrorKind, KeyValue, NodeRequest, Owner, PluginError, kv};

/// Label naming the Workspace a node belongs to.
pub const WORKSPACE_LABEL: &str = kaito_names::labels::WORKSPACE;
/// Label naming that Workspace's namespace.
pub const WORKSPACE_NAMESPACE_LABEL: &str = kaito_names::labels::WORKSPACE_NAMESPACE;

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

/// The labels that tie provisioned nodes (and the pods pinned to them) to their owner; the host chooses them.
pub fn owner_labels(request: &NodeRequest) -> Vec<KeyValue> {
    request.owner.labels.clone()
}

/// A Workspace as the host names it in a node request (for tests and native callers).
pub fn workspace_owner(name: &str, namespace: &str) -> Owner {
    Owner {
        kind: "Workspace".into(),
        name: name.into(),
        namespace: namespace.into(),
        labels: vec![kv(WORKSPACE_LABEL, name), kv(WORKSPACE_NAMESPACE_LABEL, namespace)],
    }
}

/// The name node objects are derived from: the owner's, with its kind unless it is a Workspace, so a RAGEngine and
/// a Workspace of one name never share node objects.
pub fn owner_name(request: &NodeRequest) -> String {
    kaito_names::owner_object_name(&request.owner.kind, &request.owner.name)
}
