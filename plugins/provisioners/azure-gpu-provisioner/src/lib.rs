//! Azure gpu-provisioner: one Karpenter `NodeClaim` per GPU node, which the
//! gpu-provisioner controller turns into a single-VM AKS agent pool.

use kaito_plugin_sdk::sizing::GIB;
use kaito_plugin_sdk::{
    InstanceType, KeyValue, NodeClassRef, NodeGpu, NodeObject, NodeObjectKind, NodePlan, NodeRequest, PluginError,
    PluginInfo, Provisioner, ProvisionerInfo, ProvisionerMode, Requirement, RequirementOperator, Taint, TaintEffect,
    Toleration, TolerationOperator, gfd, kv, lookup,
};
use kaito_plugin_sdk::{names, provisioning};

/// (SKU, GPU model, GPUs, node GPU memory in GiB, local NVMe).
const SKUS: &[(&str, &str, u32, u64, bool)] = &[
    ("Standard_NV36ads_A10_v5", "A10", 1, 24, false),
    ("Standard_NV72ads_A10_v5", "A10", 2, 48, false),
    ("Standard_NC24ads_A100_v4", "A100", 1, 80, true),
    ("Standard_NC48ads_A100_v4", "A100", 2, 160, true),
    ("Standard_NC96ads_A100_v4", "A100", 4, 320, true),
    ("Standard_ND96asr_A100_v4", "A100", 8, 320, false),
    ("Standard_ND96amsr_A100_v4", "A100", 8, 640, true),
    ("Standard_NC40ads_H100_v5", "H100", 1, 94, true),
    ("Standard_NC80adis_H100_v5", "H100", 2, 188, true),
    ("Standard_ND96isr_H100_v5", "H100", 8, 640, true),
    ("Standard_NCC40ads_H100_v5", "H100", 1, 94, false),
    ("Standard_ND96isr_H200_v5", "H200", 8, 1128, true),
    ("Standard_NG32ads_V620_v1", "V620", 1, 32, false),
    ("Standard_NG32adms_V620_v1", "V620", 1, 32, false),
];

/// Label every KAITO NodeClaim carries so gpu-provisioner picks it up.
pub const NODEPOOL_LABEL: &str = "karpenter.sh/nodepool";
/// Most nodes one Workspace may ask for.
pub const MAX_NODES: u32 = 64;
/// Disk requested when the preset did not size one (KAITO's default).
pub const DEFAULT_DISK_BYTES: u64 = 1024 * GIB;

/// FNV-1a, for short stable names: the same Workspace always plans the same claims.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// NodeClaim name: `ws` + 9 hex digits (AKS agent-pool names are at most 11 alphanumerics).
pub fn claim_name(namespace: &str, workspace: &str, index: u32) -> String {
    format!("ws{:09x}", fnv1a(&format!("{namespace}/{workspace}/{index}")) & 0xf_ffff_ffff)
}

fn sku(name: &str) -> Option<&'static (&'static str, &'static str, u32, u64, bool)> {
    SKUS.iter().find(|s| s.0.eq_ignore_ascii_case(name))
}

/// Azure VM size names are case-insensitive; KAITO accepts any N- or D-series size it has no table entry for.
fn is_n_or_d_series(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    ["standard_n", "standard_d"].iter().any(|p| lower.starts_with(p) && lower.len() > p.len())
}

fn requirement(key: &str, value: &str) -> Requirement {
    Requirement { key: key.into(), operator: RequirementOperator::IsIn, values: vec![value.into()] }
}

/// The Azure gpu-provisioner plugin.
pub struct Azure;

impl Provisioner for Azure {
    fn info() -> ProvisionerInfo {
        ProvisionerInfo {
            plugin: PluginInfo {
                name: "gpu-provisioner".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                description: "Azure gpu-provisioner NodeClaims (one single-VM agent pool per node)".into(),
            },
            mode: ProvisionerMode::NodeClaims,
            cloud: "azure".into(),
        }
    }

    fn instance_types() -> Vec<InstanceType> {
        SKUS.iter()
            .map(|&(name, gpu, count, gib, nvme)| InstanceType {
                name: name.into(),
                gpu_model: gpu.into(),
                gpu_count: count,
                node_gpu_memory_bytes: gib * GIB,
                nvme,
            })
            .collect()
    }

    fn plan_nodes(request: NodeRequest) -> Result<NodePlan, PluginError> {
        // As KAITO on Azure: any N- or D-series name may be provisioned (a template Workspace needs no GPU facts);
        // only a preset needs the table, and the host asks the table for its GPU shape before it gets here.
        let sku_name = match sku(&request.instance_type) {
            Some(&(name, ..)) => name,
            None if is_n_or_d_series(&request.instance_type) => request.instance_type.as_str(),
            None => {
                return Err(provisioning::unknown_instance_type(
                    &request.instance_type,
                    SKUS.iter().map(|s| s.0),
                    "gpu-provisioner (nor is it a Standard_N* or Standard_D* name)",
                ));
            }
        };
        provisioning::check_node_count(&request, MAX_NODES)?;
        let image_family = lookup(&request.annotations, "kaito.sh/node-image-family").unwrap_or("ubuntu");
        if !matches!(image_family, "ubuntu" | "azurelinux") {
            return Err(PluginError::invalid(
                "metadata.annotations[kaito.sh/node-image-family]",
                format!("{image_family:?} is not ubuntu or azurelinux"),
            ));
        }
        // Unset or empty: the default class, as KAITO does (an empty name would make an invalid object).
        let class = names::node_class(lookup(&request.annotations, names::annotations::NODE_CLASS_NAME));
        let owner = provisioning::owner_labels(&request);
        let mut labels: Vec<KeyValue> = vec![kv(NODEPOOL_LABEL, "kaito")];
        labels.extend(owner.iter().cloned());
        labels.extend(request.match_labels.iter().cloned());
        let disk = if request.disk_bytes == 0 { DEFAULT_DISK_BYTES } else { request.disk_bytes };
        let objects = (0..request.node_count)
            .map(|i| NodeObject {
                kind: NodeObjectKind::NodeClaim,
                name: claim_name(&request.owner.namespace, &provisioning::owner_name(&request), i),
                labels: labels.clone(),
                annotations: vec![
                    kv("karpenter.sh/do-not-disrupt", "true"),
                    kv("kaito.sh/node-image-family", image_family),
                ],
                taints: vec![Taint { key: "sku".into(), value: "gpu".into(), effect: TaintEffect::NoSchedule }],
                requirements: vec![
                    requirement(NODEPOOL_LABEL, "kaito"),
                    requirement("node.kubernetes.io/instance-type", sku_name),
                    requirement("kubernetes.io/os", "linux"),
                    requirement("karpenter.azure.com/sku-name", sku_name),
                ],
                node_class_ref: Some(NodeClassRef {
                    group: "kaito.sh".into(),
                    kind: "KaitoNodeClass".into(),
                    name: class.into(),
                }),
                storage_bytes: Some(disk),
                node_limit: None,
            })
            .collect();
        // As KAITO on Azure: pods also tolerate the spot taint, so a node pool of spot VMs can run them.
        let spot = Toleration {
            key: "kubernetes.azure.com/scalesetpriority".into(),
            operator: TolerationOperator::Equal,
            value: "spot".into(),
            effect: Some(TaintEffect::NoSchedule),
        };
        Ok(NodePlan { objects, pod_node_labels: owner, pod_tolerations: vec![spot] })
    }

    fn gpu_from_labels(labels: Vec<KeyValue>) -> Result<NodeGpu, PluginError> {
        // Provisioned nodes carry their SKU; its table entry beats GFD labels, which may lag.
        if let Some(&(_, gpu, count, gib, _)) = lookup(&labels, "node.kubernetes.io/instance-type").and_then(sku) {
            return Ok(NodeGpu { gpu_model: gpu.into(), gpu_count: count, gpu_memory_bytes: gib * GIB / count as u64 });
        }
        gfd::node_gpu(&labels)
    }
}

kaito_plugin_sdk::export_provisioner!(Azure);

#[cfg(test)]
mod tests {
    use super::*;
    use kaito_plugin_sdk::ErrorKind;

    fn request(sku: &str, count: u32) -> NodeRequest {
        NodeRequest {
            owner: provisioning::workspace_owner("workspace-phi-3-5-mini", "default"),
            instance_type: sku.into(),
            node_count: count,
            match_labels: vec![kv("apps", "phi-3-5")],
            disk_bytes: 0,
            annotations: vec![],
        }
    }

    #[test]
    fn plans_one_claim_per_node_with_stable_names() {
        let plan = Azure::plan_nodes(request("standard_nc24ads_a100_v4", 2)).unwrap();
        assert_eq!(plan.objects.len(), 2);
        let names: Vec<_> = plan.objects.iter().map(|o| o.name.clone()).collect();
        assert_ne!(names[0], names[1]);
        assert!(
            names.iter().all(|n| n.len() == 11 && n.starts_with("ws") && n.chars().all(|c| c.is_ascii_alphanumeric()))
        );
        assert_eq!(
            names,
            Azure::plan_nodes(request("Standard_NC24ads_A100_v4", 2))
                .unwrap()
                .objects
                .iter()
                .map(|o| o.name.clone())
                .collect::<Vec<_>>()
        );
        let req = &plan.objects[0].requirements;
        assert!(
            req.iter().any(|r| r.key == "karpenter.azure.com/sku-name" && r.values == ["Standard_NC24ads_A100_v4"])
        );
        assert_eq!(plan.objects[0].storage_bytes, Some(DEFAULT_DISK_BYTES));
    }

    #[test]
    fn any_n_or_d_series_name_is_provisioned_as_written() {
        for sku in ["Standard_D4s_v5", "standard_nd96amsr_a100_v4_new", "Standard_NV36ads_A10_v5"] {
            let plan = Azure::plan_nodes(request(sku, 1)).unwrap();
            let req = &plan.objects[0].requirements;
            assert!(req.iter().any(|r| r.key == "karpenter.azure.com/sku-name" && r.values == [sku]), "{sku}");
        }
        for sku in ["Standard_E4s_v5", "Standard_", "p4d.24xlarge"] {
            let e = Azure::plan_nodes(request(sku, 1)).unwrap_err();
            assert_eq!(e.kind, ErrorKind::UnknownInstanceType, "{sku}");
        }
    }

    #[test]
    fn an_empty_node_class_annotation_means_the_default_class() {
        for value in ["", "  "] {
            let mut req = request("Standard_NC24ads_A100_v4", 1);
            req.annotations = vec![kv("kaito.sh/node-class-name", value)];
            let plan = Azure::plan_nodes(req).unwrap();
            assert_eq!(plan.objects[0].node_class_ref.as_ref().unwrap().name, "default");
        }
        let mut req = request("Standard_NC24ads_A100_v4", 1);
        req.annotations = vec![kv("kaito.sh/node-class-name", "gpu-class")];
        assert_eq!(Azure::plan_nodes(req).unwrap().objects[0].node_class_ref.as_ref().unwrap().name, "gpu-class");
    }

    #[test]
    fn unknown_sku_names_close_ones() {
        // Not N- or D-series, so neither the table nor KAITO's name rule lets it through.
        assert!(
            Azure::plan_nodes(request("Standard_NC24ads_A100", 1)).is_ok(),
            "an N-series name is provisioned as written"
        );
        let e = Azure::plan_nodes(request("Standard_MC24ads_A100_v4", 1)).unwrap_err();
        assert_eq!(e.kind, ErrorKind::UnknownInstanceType);
        assert!(e.hint.unwrap().contains("Standard_NC24ads_A100_v4"));
    }

    #[test]
    fn sku_table_matches_reference() {
        let t = Azure::instance_types();
        let h100 = t.iter().find(|i| i.name == "Standard_ND96isr_H100_v5").unwrap();
        assert_eq!((h100.gpu_count, h100.node_gpu_memory_bytes, h100.nvme), (8, 640 * GIB, true));
    }
}
