//! GPU and node-count estimate, following KAITO's node estimator.
//!
//! All arithmetic is in bytes. Floating-point steps are kept in one fixed
//! order so that presets written in other languages can reproduce them bit
//! for bit.

use crate::{ErrorKind, GpuShape, Parallelism, PluginError};

/// One gibibyte.
pub const GIB: u64 = 1 << 30;
/// Context length assumed when the Workspace does not set one (KAITO's default).
pub const DEFAULT_MAX_MODEL_LEN: u32 = 2048;
/// Share of GPU memory the estimator counts on, for every GPU (KAITO's estimator), and the runtime's default cap
/// (vLLM `--gpu-memory-utilization`).
pub const GPU_MEMORY_UTILIZATION: f64 = 0.84;
/// Lower runtime cap on A10-class GPUs, whose CUDA context takes a larger share. A runtime flag only: KAITO sizes
/// A10 nodes with 0.84 like every other GPU, and so do we.
pub const GPU_MEMORY_UTILIZATION_A10: f64 = 0.82;
/// Weights grow by this factor once loaded (buffers, alignment).
pub const WEIGHT_EXPANSION: f64 = 1.02;
/// Activation and allocator overhead proportional to the weights.
pub const WEIGHT_OVERHEAD: f64 = 1.05;
/// Fixed per-GPU reserve for the CUDA context and runtime, in bytes (2.3 GiB).
pub const FIXED_RESERVE_BYTES: f64 = 2.3 * GIB as f64;

/// What the estimator needs to know about a model and a placement.
#[derive(Debug, Clone)]
pub struct SizingInput {
    pub weights_bytes: u64,
    pub bytes_per_token: u64,
    pub max_model_len: u32,
    pub shape: GpuShape,
    pub supports_multi_node: bool,
}

/// The estimator's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Sizing {
    pub node_count: u32,
    pub min_gpus: u32,
    /// GPU memory the loaded model occupies, in bytes.
    pub model_bytes: u64,
    pub parallelism: Parallelism,
    /// The runtime's `--gpu-memory-utilization` for this GPU (not the estimator's share).
    pub gpu_memory_utilization: f64,
}

/// Runtime memory-utilisation cap for a GPU model name.
pub fn utilization_for(gpu_model: &str) -> f64 {
    let m = gpu_model.to_ascii_uppercase().replace("NVIDIA", "").replace(['-', '_', ' '], "");
    if m == "A10" || m == "A10G" { GPU_MEMORY_UTILIZATION_A10 } else { GPU_MEMORY_UTILIZATION }
}

/// Render bytes as GiB with two decimals, for error messages.
pub fn gib(bytes: f64) -> String {
    format!("{:.2} GiB", bytes / GIB as f64)
}

/// Estimate GPUs, nodes and parallelism for one model on one GPU shape. As in KAITO, the model decides the node
/// count: a Workspace's `resource.count` neither raises nor caps it.
pub fn estimate(input: &SizingInput) -> Result<Sizing, PluginError> {
    let shape = &input.shape;
    if shape.gpus_per_node == 0 || shape.gpu_memory_bytes == 0 {
        return Err(PluginError::new(
            ErrorKind::InvalidInput,
            "resource.instanceType",
            format!(
                "the target nodes report no GPUs ({} GPUs of {} bytes)",
                shape.gpus_per_node, shape.gpu_memory_bytes
            ),
            Some(
                "pick a GPU instance type, or label BYO nodes with nvidia.com/gpu.count and nvidia.com/gpu.memory"
                    .into(),
            ),
        ));
    }
    let util = GPU_MEMORY_UTILIZATION;
    let model_bytes = input.weights_bytes as f64 * WEIGHT_EXPANSION;
    let per_gpu = shape.gpu_memory_bytes as f64;
    let available = per_gpu * util;
    let kv_bytes = input.max_model_len as f64 * input.bytes_per_token as f64 / shape.gpus_per_node as f64;
    let fixed = FIXED_RESERVE_BYTES + kv_bytes;
    if available <= fixed {
        return Err(PluginError::new(
            ErrorKind::DoesNotFit,
            "resource.instanceType",
            format!(
                "a {} GPU offers {} at {:.0}% utilisation, not more than the {} fixed reserve (2.30 GiB runtime + {} KV cache for {} tokens)",
                shape.gpu_model,
                gib(available),
                util * 100.0,
                gib(fixed),
                gib(kv_bytes),
                input.max_model_len
            ),
            Some("choose an instance type with larger GPUs, or lower the context length (vllm.max-model-len in inference.config)".into()),
        ));
    }
    let usable_per_gpu = (available - fixed) / WEIGHT_OVERHEAD;
    let min_gpus = (model_bytes / usable_per_gpu).floor() as u64 + 1;
    let gpn = shape.gpus_per_node as u64;
    let needed_nodes = min_gpus.div_ceil(gpn);
    let node_count = needed_nodes.max(1);
    if node_count > shape.max_nodes as u64 {
        return Err(PluginError::new(
            ErrorKind::DoesNotFit,
            "resource.instanceType",
            format!(
                "the model needs {} of GPU memory ({} GPUs with {} usable each), that is {} node(s) of {}x {}, but at most {} node(s) are available",
                gib(model_bytes),
                min_gpus,
                gib(usable_per_gpu),
                node_count,
                shape.gpus_per_node,
                shape.gpu_model,
                shape.max_nodes
            ),
            Some("choose an instance type with more or larger GPUs, or allow more nodes".into()),
        ));
    }
    if node_count > 1 && !input.supports_multi_node {
        return Err(PluginError::new(
            ErrorKind::Unsupported,
            "resource.instanceType",
            format!(
                "the model needs {node_count} nodes of {}x {} but does not support multi-node inference",
                shape.gpus_per_node, shape.gpu_model
            ),
            Some("choose an instance type whose GPUs hold the whole model on one node".into()),
        ));
    }
    let parallelism = if node_count == 1 && model_bytes < per_gpu / 2.0 {
        Parallelism { tensor: 1, pipeline: 1, data: shape.gpus_per_node }
    } else {
        Parallelism { tensor: shape.gpus_per_node, pipeline: node_count as u32, data: 1 }
    };
    Ok(Sizing {
        node_count: node_count as u32,
        min_gpus: min_gpus as u32,
        model_bytes: model_bytes as u64,
        parallelism,
        gpu_memory_utilization: utilization_for(&shape.gpu_model),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(model: &str, gpus: u32, gib_per_gpu: u64, max_nodes: u32) -> GpuShape {
        GpuShape {
            gpu_model: model.into(),
            gpus_per_node: gpus,
            gpu_memory_bytes: gib_per_gpu * GIB,
            max_nodes,
            nvme: false,
        }
    }

    fn input(weights_gib: f64, shape: GpuShape) -> SizingInput {
        SizingInput {
            weights_bytes: (weights_gib * GIB as f64) as u64,
            bytes_per_token: 393_216,
            max_model_len: DEFAULT_MAX_MODEL_LEN,
            shape,
            supports_multi_node: true,
        }
    }

    #[test]
    fn small_model_on_one_a100_is_one_gpu_one_node() {
        let s = estimate(&input(7.12, shape("A100", 1, 80, 1))).unwrap();
        assert_eq!((s.node_count, s.min_gpus), (1, 1));
        assert_eq!(s.parallelism, Parallelism { tensor: 1, pipeline: 1, data: 1 });
    }

    #[test]
    fn small_model_on_eight_gpus_is_data_parallel() {
        let s = estimate(&input(7.12, shape("H100", 8, 80, 1))).unwrap();
        assert_eq!(s.parallelism, Parallelism { tensor: 1, pipeline: 1, data: 8 });
    }

    #[test]
    fn large_model_spans_nodes_with_pipeline_parallelism() {
        // 134 GiB loaded over 61.1 GiB usable per A100 80 GiB: floor(2.19) + 1 = 3 GPUs.
        let s = estimate(&input(131.42, shape("A100", 1, 80, 4))).unwrap();
        assert_eq!((s.node_count, s.min_gpus), (3, 3));
        assert_eq!(s.parallelism, Parallelism { tensor: 1, pipeline: 3, data: 1 });
    }

    #[test]
    fn too_big_reports_numbers() {
        let e = estimate(&input(131.42, shape("A10", 1, 24, 1))).unwrap_err();
        assert_eq!(e.kind, ErrorKind::DoesNotFit);
        assert!(e.message.contains("at most 1 node"), "{}", e.message);
        assert!(e.message.contains("GiB"), "{}", e.message);
    }

    #[test]
    fn a10_runtime_cap_is_lower() {
        assert_eq!(utilization_for("NVIDIA-A10"), GPU_MEMORY_UTILIZATION_A10);
        assert_eq!(utilization_for("A100"), GPU_MEMORY_UTILIZATION);
    }

    /// Cases from KAITO v0.12's estimator and preset tests, with their model sizes (written here, not copied).
    #[test]
    fn node_counts_match_kaitos_estimator() {
        let case = |weights_gib: f64, bytes_per_token: u64, shape: GpuShape| {
            let s = estimate(&SizingInput { bytes_per_token, ..input(weights_gib, shape) }).unwrap();
            (s.node_count, s.parallelism)
        };
        // An 8 GiB model on 4x A100 80G: one node whatever count the Workspace asked for.
        assert_eq!(case(8.0, 393_216, shape("A100", 4, 80, 8)).0, 1);
        // 13.44 GiB on one A10: one node (the A10's runtime cap of 0.82 does not enter sizing).
        assert_eq!(case(13.44, 393_216, shape("A10", 1, 24, 8)).0, 1);
        // 62.5 GiB with 160 KiB of KV per token on one A100 80G: two nodes, pipeline 2.
        let (nodes, p) = case(62.5, 163_840, shape("A100", 1, 80, 8));
        assert_eq!((nodes, p), (2, Parallelism { tensor: 1, pipeline: 2, data: 1 }));
        // 64 GiB on one A10 24G with a small KV cache: four pipeline stages, even with eight nodes allowed.
        let (nodes, p) = case(64.0, 16_384, shape("A10", 1, 24, 8));
        assert_eq!((nodes, p), (4, Parallelism { tensor: 1, pipeline: 4, data: 1 }));
    }

    #[test]
    fn a10_sizing_uses_the_common_share_and_the_runtime_keeps_its_cap() {
        // 15.7 GiB (16.01 GiB loaded) fits one A10 at 0.84 (16.30 GiB usable after the reserve and overhead) but
        // would need two at 0.82 (15.84 GiB usable).
        let s = estimate(&input(15.7, shape("A10", 1, 24, 8))).unwrap();
        assert_eq!(s.node_count, 1);
        assert_eq!(s.gpu_memory_utilization, GPU_MEMORY_UTILIZATION_A10);
    }

    #[test]
    fn zero_gpu_shape_is_invalid_input() {
        let e = estimate(&input(1.0, shape("cpu", 0, 0, 1))).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidInput);
    }
}
