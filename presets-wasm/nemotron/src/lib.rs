//! NVIDIA Nemotron (hybrid Mamba-Transformer; KV sized for every layer, as KAITO does, which overestimates).
//! Served by vLLM under their Hugging Face ids; facts from KAITO's model catalog.

use kaito_plugin_sdk::catalog::{KvCache, ModelSpec};

/// Every model of the family.
pub const MODELS: &[ModelSpec] = &[
    ModelSpec::vllm_only(
        "nvidia/nvidia-nemotron-3-super-120b-a12b-bf16",
        "nvidia/NVIDIA-Nemotron-3-Super-120B-A12B-BF16",
        "nemotron",
        "NemotronHForCausalLM",
        23025,
        262_144,
        KvCache::Gqa { layers: 88, kv_heads: 2, head_dim: 128 },
        "nvidia-nemotron-open-model-license",
        (Some("qwen3_coder"), Some("nemotron_v3")),
    ),
    ModelSpec::vllm_only(
        "nvidia/nemotron-cascade-2-30b-a3b",
        "nvidia/Nemotron-Cascade-2-30B-A3B",
        "nemotron",
        "NemotronHForCausalLM",
        5882,
        262_144,
        KvCache::Gqa { layers: 52, kv_heads: 2, head_dim: 128 },
        "nvidia-open-model-license",
        (Some("qwen3_coder"), Some("nemotron_v3")),
    ),
    ModelSpec::vllm_only(
        "nvidia/nvidia-nemotron-3-nano-30b-a3b-bf16",
        "nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16",
        "nemotron",
        "NemotronHForCausalLM",
        5882,
        262_144,
        KvCache::Gqa { layers: 52, kv_heads: 2, head_dim: 128 },
        "nvidia-nemotron-open-model-license",
        (Some("qwen3_coder"), Some("nemotron_v3")),
    ),
    ModelSpec::vllm_only(
        "nvidia/nvidia-nemotron-nano-12b-v2-vl-bf16",
        "nvidia/NVIDIA-Nemotron-Nano-12B-v2-VL-BF16",
        "nemotron",
        "NemotronH_Nano_VL_V2",
        2455,
        131_072,
        KvCache::Gqa { layers: 62, kv_heads: 8, head_dim: 128 },
        "nvidia-open-model-license",
        (Some("qwen3_coder"), Some("nemotron_v3")),
    ),
    ModelSpec::vllm_only(
        "nvidia/nvidia-nemotron-nano-9b-v2",
        "nvidia/NVIDIA-Nemotron-Nano-9B-v2",
        "nemotron",
        "NemotronHForCausalLM",
        1656,
        131_072,
        KvCache::Gqa { layers: 56, kv_heads: 8, head_dim: 128 },
        "nvidia-open-model-license",
        (Some("qwen3_coder"), Some("nemotron_v3")),
    ),
    ModelSpec::vllm_only(
        "nvidia/nvidia-nemotron-3-nano-4b-bf16",
        "nvidia/NVIDIA-Nemotron-3-Nano-4B-BF16",
        "nemotron",
        "NemotronHForCausalLM",
        740,
        262_144,
        KvCache::Gqa { layers: 42, kv_heads: 8, head_dim: 128 },
        "nvidia-nemotron-open-model-license",
        (Some("qwen3_coder"), Some("nemotron_v3")),
    ),
    ModelSpec::vllm_only(
        "nvidia/nvidia-nemotron-3-ultra-550b-a55b-nvfp4",
        "nvidia/NVIDIA-Nemotron-3-Ultra-550B-A55B-NVFP4",
        "nemotron",
        "NemotronHForCausalLM",
        32813,
        262_144,
        KvCache::Gqa { layers: 108, kv_heads: 2, head_dim: 128 },
        "openmdw-1.1",
        (Some("qwen3_coder"), Some("nemotron_v3")),
    ),
];

kaito_plugin_sdk::catalog_preset!(
    Nemotron,
    "preset-nemotron",
    "NVIDIA Nemotron hybrid Mamba-Transformer models",
    MODELS
);
