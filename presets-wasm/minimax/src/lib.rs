//! MiniMax M2 (MoE, fp8).
//! Served by vLLM under their Hugging Face ids; facts from KAITO's model catalog.

use kaito_plugin_sdk::catalog::{KvCache, ModelSpec};

/// Every model of the family.
pub const MODELS: &[ModelSpec] = &[ModelSpec::vllm_only(
    "minimaxai/minimax-m2.7",
    "MiniMaxAI/MiniMax-M2.7",
    "minimax",
    "MiniMaxM2ForCausalLM",
    21434,
    204_800,
    KvCache::Gqa { layers: 62, kv_heads: 8, head_dim: 128 },
    "other",
    (Some("minimax_m2"), Some("minimax_m2_append_think")),
)];

kaito_plugin_sdk::catalog_preset!(MiniMax, "preset-minimax", "MiniMax M2 models", MODELS);
