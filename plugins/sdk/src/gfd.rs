//! GPU facts from NVIDIA GPU feature discovery node labels.

use crate::{ErrorKind, KeyValue, NodeGpu, PluginError, kv, lookup};

/// Label with the GPU product name, e.g. `NVIDIA-A100-SXM4-80GB`.
pub const PRODUCT: &str = "nvidia.com/gpu.product";
/// Label with the number of GPUs on the node.
pub const COUNT: &str = "nvidia.com/gpu.count";
/// Label with the memory of one GPU, in MiB.
pub const MEMORY_MIB: &str = "nvidia.com/gpu.memory";

fn missing(label: &str, what: &str) -> PluginError {
    PluginError::new(
        ErrorKind::InvalidInput,
        "resource.labelSelector",
        format!("the selected node has no usable {label} label ({what})"),
        Some("install NVIDIA GPU feature discovery, or label the node by hand: nvidia.com/gpu.product, nvidia.com/gpu.count, nvidia.com/gpu.memory (MiB)".into()),
    )
}

/// Read product, count and per-GPU memory from a node's labels.
pub fn node_gpu(labels: &[KeyValue]) -> Result<NodeGpu, PluginError> {
    let product = lookup(labels, PRODUCT).filter(|p| !p.trim().is_empty()).ok_or_else(|| missing(PRODUCT, "absent"))?;
    let count = lookup(labels, COUNT).ok_or_else(|| missing(COUNT, "absent"))?;
    let count: u32 =
        count.trim().parse().ok().filter(|c| *c > 0).ok_or_else(|| missing(COUNT, "not a positive integer"))?;
    let mib = lookup(labels, MEMORY_MIB).ok_or_else(|| missing(MEMORY_MIB, "absent"))?;
    let mib: u64 = mib
        .trim()
        .parse()
        .ok()
        .filter(|m| *m > 0)
        .ok_or_else(|| missing(MEMORY_MIB, "not a positive integer of MiB"))?;
    Ok(NodeGpu { gpu_model: product.trim().to_string(), gpu_count: count, gpu_memory_bytes: mib << 20 })
}

/// The labels [`node_gpu`] reads, for tests and fixtures.
pub fn labels(product: &str, count: u32, mib: u64) -> Vec<KeyValue> {
    vec![kv(PRODUCT, product), kv(COUNT, count.to_string()), kv(MEMORY_MIB, mib.to_string())]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_gfd_labels() {
        let gpu = node_gpu(&labels("NVIDIA-A100-SXM4-80GB", 8, 81920)).unwrap();
        assert_eq!((gpu.gpu_count, gpu.gpu_memory_bytes), (8, 80 << 30));
    }

    #[test]
    fn missing_label_names_it() {
        let e = node_gpu(&labels("A10", 1, 0)).unwrap_err();
        assert!(e.message.contains(MEMORY_MIB), "{}", e.message);
        assert_eq!(e.field, "resource.labelSelector");
    }
}
