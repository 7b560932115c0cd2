//! KAITO webhook rules that need the operator's configuration or a plugin's facts, so CEL cannot run them at apply
//! time: the node-class allow-list and v1alpha1's total-GPU-memory check.

use kaito_crd::{FieldError, Workspace};
use kaito_names::annotations::{BYPASS_RESOURCE_CHECKS, NODE_CLASS_NAME};
use kaito_plugin_host::{InstanceType, KeyValue, ModelInfo};

/// The node classes Workspaces may name in `kaito.sh/node-class-name` (KAITO's `--karpenter-node-classes`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeClasses {
    /// Every allowed name.
    pub names: Vec<String>,
    /// The class used when a Workspace names none.
    pub default: String,
}

impl std::str::FromStr for NodeClasses {
    type Err = String;

    /// KAITO's JSON array (`[{"name": "ubuntu", "default": true, "spec": {...}}]`; `spec` is the provider's and is not
    /// read here), or a comma-separated list whose first name is the default.
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (names, default) = if s.starts_with('[') {
            #[derive(serde::Deserialize)]
            struct Entry {
                name: String,
                #[serde(default)]
                default: bool,
            }
            let entries: Vec<Entry> =
                serde_json::from_str(s).map_err(|e| format!("not a JSON array of classes: {e}"))?;
            let defaults: Vec<&Entry> = entries.iter().filter(|e| e.default).collect();
            let [default] = defaults.as_slice() else {
                return Err(format!("exactly one class must have \"default\": true, found {}", defaults.len()));
            };
            let default = default.name.clone();
            (entries.into_iter().map(|e| e.name).collect::<Vec<_>>(), default)
        } else {
            let names: Vec<String> = s.split(',').map(str::trim).filter(|n| !n.is_empty()).map(String::from).collect();
            let default = names.first().cloned().ok_or("no node class named")?;
            (names, default)
        };
        if let Some(bad) = names.iter().find(|n| !kaito_names::dns_subdomain(n)) {
            return Err(format!("{bad:?} is not a valid node class name"));
        }
        Ok(NodeClasses { names, default })
    }
}

/// The Workspace's annotations as the provisioner sees them: with an allow-list, the node class is checked against
/// it and an unset or empty one becomes the list's default.
pub(crate) fn node_annotations(ws: &Workspace, classes: Option<&NodeClasses>) -> Result<Vec<KeyValue>, FieldError> {
    let mut annotations = crate::kvs(ws.metadata.annotations.iter().flatten());
    let Some(classes) = classes else { return Ok(annotations) };
    let asked = ws.annotation(NODE_CLASS_NAME).map(str::trim).unwrap_or_default();
    let class = if asked.is_empty() {
        classes.default.clone()
    } else if classes.names.iter().any(|n| n == asked) {
        asked.to_string()
    } else {
        return Err(FieldError::new(
            format!("metadata.annotations[{NODE_CLASS_NAME}]"),
            format!("{asked:?} is not a node class this operator manages"),
        )
        .hint(format!(
            "use one of: {} (or remove the annotation for {})",
            classes.names.join(", "),
            classes.default
        )));
    };
    annotations.retain(|kv| kv.key != NODE_CLASS_NAME);
    annotations.push(KeyValue { key: NODE_CLASS_NAME.into(), value: class });
    Ok(annotations)
}

/// KAITO's v1alpha1 webhook refuses a Workspace whose `count` nodes of `instanceType` hold less GPU memory than the
/// model's weights, unless `kaito.sh/bypass-resource-checks` is set. v1beta1 sizes the node count instead.
pub(crate) fn v1alpha1_gpu_memory(ws: &Workspace, model: &ModelInfo, t: &InstanceType) -> Result<(), FieldError> {
    if !ws.written_as_v1alpha1() || ws.annotation(BYPASS_RESOURCE_CHECKS).is_some() {
        return Ok(());
    }
    let count = ws.resource.count.unwrap_or(1).max(1) as u64;
    let total = count * t.node_gpu_memory_bytes;
    if total >= model.weights_bytes {
        return Ok(());
    }
    let needed = model.weights_bytes.div_ceil(t.node_gpu_memory_bytes);
    Err(FieldError::new(
        "resource.count",
        format!(
            "insufficient total GPU memory: {count} x {} has {} but {} needs at least {} (KAITO's v1alpha1 rule)",
            t.name,
            gib(total),
            model.name,
            gib(model.weights_bytes)
        ),
    )
    .hint(format!(
        "set resource.count to {needed}, or use kaito.sh/v1beta1 (the estimator sizes the node count), or annotate \
         {BYPASS_RESOURCE_CHECKS}"
    )))
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_classes_parse_kaito_json_and_plain_lists() {
        let c: NodeClasses =
            r#"[{"name":"image-family-ubuntu","default":true,"spec":{"imageFamily":"Ubuntu"}},{"name":"azurelinux"}]"#
                .parse()
                .unwrap();
        assert_eq!(c.names, ["image-family-ubuntu", "azurelinux"]);
        assert_eq!(c.default, "image-family-ubuntu");
        let c: NodeClasses = "gpu, default-class".parse().unwrap();
        assert_eq!((c.names.len(), c.default.as_str()), (2, "gpu"));
        assert!(r#"[{"name":"a"},{"name":"b"}]"#.parse::<NodeClasses>().unwrap_err().contains("exactly one"));
        assert!("".parse::<NodeClasses>().is_err());
        assert!("Not_A_Name".parse::<NodeClasses>().is_err());
    }
}
