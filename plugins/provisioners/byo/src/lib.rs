//! Bring-your-own nodes: nothing is created; GPU shape comes from the GPU
//! feature discovery labels on the nodes the Workspace selects.

use kaito_plugin_sdk::{
    InstanceType, KeyValue, NodeGpu, NodePlan, NodeRequest, PluginError, PluginInfo, Provisioner, ProvisionerInfo,
    ProvisionerMode, gfd,
};

/// The BYO provisioner plugin.
pub struct Byo;

impl Provisioner for Byo {
    fn info() -> ProvisionerInfo {
        ProvisionerInfo {
            plugin: PluginInfo {
                name: "byo".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                description: "Existing GPU nodes selected by resource.labelSelector; creates no nodes".into(),
            },
            mode: ProvisionerMode::BringYourOwn,
            cloud: "any".into(),
        }
    }

    fn instance_types() -> Vec<InstanceType> {
        Vec::new()
    }

    fn plan_nodes(request: NodeRequest) -> Result<NodePlan, PluginError> {
        if request.match_labels.is_empty() {
            return Err(PluginError::invalid(
                "resource.labelSelector.matchLabels",
                "bring-your-own nodes are found by labels, but no (non-reserved) matchLabels are set",
            ));
        }
        Ok(NodePlan { objects: Vec::new(), pod_node_labels: Vec::new(), pod_tolerations: Vec::new() })
    }

    fn gpu_from_labels(labels: Vec<KeyValue>) -> Result<NodeGpu, PluginError> {
        gfd::node_gpu(&labels)
    }
}

kaito_plugin_sdk::export_provisioner!(Byo);
