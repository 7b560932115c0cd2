//! Karpenter on AWS: one `NodePool` per Workspace, sized by `replicas`, on an
//! `EC2NodeClass`. Instance types are the NVIDIA GPU ones of KAITO's AWS table.

use kaito_plugin_sdk::sizing::GIB;
use kaito_plugin_sdk::{
    InstanceType, KeyValue, NodeClassRef, NodeGpu, NodeObject, NodeObjectKind, NodePlan, NodeRequest, PluginError,
    PluginInfo, Provisioner, ProvisionerInfo, ProvisionerMode, Requirement, RequirementOperator, Taint, TaintEffect,
    gfd, lookup,
};
use kaito_plugin_sdk::{names, provisioning};

/// (instance type, GPU model, GPUs, GPU memory per GPU in GiB).
const SKUS: &[(&str, &str, u32, u64)] = &[
    ("p4d.24xlarge", "A100", 8, 40),
    ("p4de.24xlarge", "A100", 8, 80),
    ("p5.48xlarge", "H100", 8, 80),
    ("p5e.48xlarge", "H200", 8, 141),
    ("p5en.48xlarge", "H200", 8, 141),
    ("g5.xlarge", "A10G", 1, 24),
    ("g5.2xlarge", "A10G", 1, 24),
    ("g5.4xlarge", "A10G", 1, 24),
    ("g5.8xlarge", "A10G", 1, 24),
    ("g5.16xlarge", "A10G", 1, 24),
    ("g5.12xlarge", "A10G", 4, 24),
    ("g5.24xlarge", "A10G", 4, 24),
    ("g5.48xlarge", "A10G", 8, 24),
    ("g6.xlarge", "L4", 1, 24),
    ("g6.2xlarge", "L4", 1, 24),
    ("g6.4xlarge", "L4", 1, 24),
    ("g6.8xlarge", "L4", 1, 24),
    ("g6.16xlarge", "L4", 1, 24),
    ("g6.12xlarge", "L4", 4, 24),
    ("g6.24xlarge", "L4", 4, 24),
    ("g6.48xlarge", "L4", 8, 24),
    ("gr6.4xlarge", "L4", 1, 24),
    ("gr6.8xlarge", "L4", 1, 24),
];

/// Most nodes one Workspace's NodePool may hold.
pub const MAX_NODES: u32 = 64;
/// Karpenter's instance-type label.
const INSTANCE_TYPE: &str = "node.kubernetes.io/instance-type";

fn sku(name: &str) -> Option<&'static (&'static str, &'static str, u32, u64)> {
    SKUS.iter().find(|s| s.0.eq_ignore_ascii_case(name))
}

/// NodePool name: `<namespace>-<workspace>`, cut to a 63-character DNS label.
pub fn pool_name(namespace: &str, workspace: &str) -> String {
    let mut name: String = format!("{namespace}-{workspace}").chars().take(63).collect();
    while name.ends_with('-') {
        name.pop();
    }
    name
}

fn requirement(key: &str, operator: RequirementOperator, values: &[&str]) -> Requirement {
    Requirement { key: key.into(), operator, values: values.iter().map(|v| v.to_string()).collect() }
}

/// The Karpenter (AWS) provisioner plugin.
pub struct Karpenter;

impl Provisioner for Karpenter {
    fn info() -> ProvisionerInfo {
        ProvisionerInfo {
            plugin: PluginInfo {
                name: "karpenter".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                description: "Karpenter on AWS: one NodePool per Workspace on an EC2NodeClass".into(),
            },
            mode: ProvisionerMode::NodePool,
            cloud: "aws".into(),
        }
    }

    fn instance_types() -> Vec<InstanceType> {
        SKUS.iter()
            .map(|&(name, gpu, count, gib)| InstanceType {
                name: name.into(),
                gpu_model: gpu.into(),
                gpu_count: count,
                node_gpu_memory_bytes: count as u64 * gib * GIB,
                nvme: false,
            })
            .collect()
    }

    fn plan_nodes(request: NodeRequest) -> Result<NodePlan, PluginError> {
        let Some(&(sku_name, ..)) = sku(&request.instance_type) else {
            return Err(provisioning::unknown_instance_type(
                &request.instance_type,
                SKUS.iter().map(|s| s.0),
                "the karpenter plugin (NVIDIA GPU types only)",
            ));
        };
        provisioning::check_node_count(&request, MAX_NODES)?;
        // Unset or empty: the default class, as KAITO does (an empty name would make an invalid object).
        let class = names::node_class(lookup(&request.annotations, names::annotations::NODE_CLASS_NAME));
        let owner = provisioning::owner_labels(&request);
        let mut labels: Vec<KeyValue> = owner.clone();
        labels.extend(request.match_labels.iter().cloned());
        let pool = NodeObject {
            kind: NodeObjectKind::NodePool,
            name: pool_name(&request.owner.namespace, &provisioning::owner_name(&request)),
            labels,
            annotations: Vec::new(),
            taints: vec![Taint { key: "sku".into(), value: "gpu".into(), effect: TaintEffect::NoSchedule }],
            requirements: vec![
                requirement(INSTANCE_TYPE, RequirementOperator::IsIn, &[sku_name]),
                requirement("kubernetes.io/os", RequirementOperator::IsIn, &["linux"]),
                requirement("karpenter.k8s.aws/instance-gpu-count", RequirementOperator::Gt, &["0"]),
            ],
            node_class_ref: Some(NodeClassRef {
                group: "karpenter.k8s.aws".into(),
                kind: "EC2NodeClass".into(),
                name: class.into(),
            }),
            storage_bytes: None,
            node_limit: Some(request.node_count),
        };
        Ok(NodePlan { objects: vec![pool], pod_node_labels: owner, pod_tolerations: Vec::new() })
    }

    fn gpu_from_labels(labels: Vec<KeyValue>) -> Result<NodeGpu, PluginError> {
        if let Some(&(_, gpu, count, gib)) = lookup(&labels, INSTANCE_TYPE).and_then(sku) {
            return Ok(NodeGpu { gpu_model: gpu.into(), gpu_count: count, gpu_memory_bytes: gib * GIB });
        }
        gfd::node_gpu(&labels)
    }
}

kaito_plugin_sdk::export_provisioner!(Karpenter);

#[cfg(test)]
mod tests {
    use super::*;
    use kaito_plugin_sdk::{ErrorKind, kv};

    fn request(sku: &str, count: u32) -> NodeRequest {
        NodeRequest {
            owner: provisioning::workspace_owner("workspace-llama-3-3-70b", "models"),
            instance_type: sku.into(),
            node_count: count,
            match_labels: vec![kv("apps", "llama")],
            disk_bytes: 0,
            annotations: vec![],
        }
    }

    #[test]
    fn one_pool_per_workspace_sized_by_replicas() {
        let plan = Karpenter::plan_nodes(request("P5.48xlarge", 2)).unwrap();
        assert_eq!(plan.objects.len(), 1);
        let pool = &plan.objects[0];
        assert_eq!(pool.name, "models-workspace-llama-3-3-70b");
        assert_eq!(pool.node_limit, Some(2));
        assert_eq!(pool.node_class_ref.as_ref().unwrap().kind, "EC2NodeClass");
        assert!(pool.requirements.iter().any(|r| r.values == ["p5.48xlarge"]));
    }

    #[test]
    fn an_empty_node_class_annotation_means_the_default_class() {
        let mut req = request("p5.48xlarge", 1);
        req.annotations = vec![kv("kaito.sh/node-class-name", "")];
        let plan = Karpenter::plan_nodes(req).unwrap();
        assert_eq!(plan.objects[0].node_class_ref.as_ref().unwrap().name, "default");
    }

    #[test]
    fn long_names_are_cut_to_a_dns_label() {
        let name = pool_name(&"n".repeat(40), &"w".repeat(40));
        assert_eq!(name.len(), 63);
    }

    #[test]
    fn unknown_sku_and_table() {
        assert_eq!(Karpenter::plan_nodes(request("p5.4xlarge", 1)).unwrap_err().kind, ErrorKind::UnknownInstanceType);
        let p4d = Karpenter::instance_types().into_iter().find(|t| t.name == "p4d.24xlarge").unwrap();
        assert_eq!(p4d.node_gpu_memory_bytes, 320 * GIB);
    }
}
