//! Bring-your-own nodes: which ones a Workspace selects, and their GPU shape.

use crate::RenderError;
use k8s_openapi::api::core::v1::Node;
use kaito_crd::{FieldError, Workspace};
use kaito_plugin_host::{GpuShape, Plugin};

/// Read nodes from YAML: several documents, each a Node or a List/NodeList of them.
pub fn parse_nodes(text: &str) -> Result<Vec<Node>, FieldError> {
    let mut nodes = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let yaml: serde_yaml::Value = serde::Deserialize::deserialize(doc)
            .map_err(|e| FieldError::new(format!("document {i}"), format!("not valid YAML: {e}")))?;
        let value = serde_json::to_value(yaml).map_err(|e| FieldError::new(format!("document {i}"), e.to_string()))?;
        if value.is_null() {
            continue;
        }
        let items = match value.get("kind").and_then(|k| k.as_str()) {
            Some("Node") => vec![value],
            Some("List" | "NodeList") => value.get("items").and_then(|i| i.as_array()).cloned().unwrap_or_default(),
            other => {
                return Err(FieldError::new(
                    format!("document {i}.kind"),
                    format!("expected Node, List or NodeList, found {other:?}"),
                ));
            }
        };
        for item in items {
            let node: Node = serde_json::from_value(item)
                .map_err(|e| FieldError::new(format!("document {i}"), format!("not a valid Node: {e}")))?;
            nodes.push(node);
        }
    }
    Ok(nodes)
}

/// Whether a node reports condition Ready=True.
pub fn node_is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// GPU shape of the Ready nodes a BYO Workspace selects; all must agree.
pub(crate) fn byo_shape(provisioner: &Plugin, ws: &Workspace, nodes: &[Node]) -> Result<GpuShape, RenderError> {
    let want = ws.match_labels();
    let shown: Vec<String> = want.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut matching: Vec<&Node> = nodes
        .iter()
        .filter(|n| {
            let labels = n.metadata.labels.clone().unwrap_or_default();
            want.iter().all(|(k, v)| labels.get(k) == Some(v))
        })
        .collect();
    let selected = matching.len();
    matching.retain(|n| node_is_ready(n));
    let ready = matching.len();
    matching.sort_by_key(|n| n.metadata.name.clone());
    let Some(first) = matching.first() else {
        return Err(FieldError::new(
            "resource.labelSelector.matchLabels",
            format!(
                "no Ready node matches {} ({} node(s) given, {selected} match, {ready} of them Ready)",
                shown.join(","),
                nodes.len()
            ),
        )
        .hint("label your GPU nodes with these labels, or change matchLabels")
        .into());
    };
    let read = |n: &Node| {
        let labels = n.metadata.labels.clone().unwrap_or_default();
        provisioner.gpu_from_labels(&labels.iter().map(|(k, v)| kaito_plugin_host::wit::kv(k, v)).collect::<Vec<_>>())
    };
    let gpu = read(first)?;
    for n in &matching[1..] {
        let other = read(n)?;
        if other != gpu {
            return Err(FieldError::new(
                "resource.labelSelector.matchLabels",
                format!(
                    "selected nodes differ: {} has {}x {} and {} has {}x {}",
                    first.metadata.name.as_deref().unwrap_or_default(),
                    gpu.gpu_count,
                    gpu.gpu_model,
                    n.metadata.name.as_deref().unwrap_or_default(),
                    other.gpu_count,
                    other.gpu_model
                ),
            )
            .hint("select nodes with identical GPUs")
            .into());
        }
    }
    Ok(GpuShape {
        gpu_model: gpu.gpu_model,
        gpus_per_node: gpu.gpu_count,
        gpu_memory_bytes: gpu.gpu_memory_bytes,
        max_nodes: matching.len() as u32,
        nvme: false,
    })
}
