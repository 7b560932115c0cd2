//! Moonshot AI Kimi K2.x (MoE with latent attention).
//! Served by vLLM under their Hugging Face ids; facts from KAITO's model catalog.

use kaito_plugin_sdk::catalog::{KvCache, ModelSpec};

/// Every model of the family.
pub const MODELS: &[ModelSpec] = &[
    ModelSpec::vllm_only(
        "moonshotai/kimi-k2.5",
        "moonshotai/Kimi-K2.5",
        "kimi",
        "KimiK25ForConditionalGeneration",
        55432,
        262_144,
        KvCache::Mla { layers: 61, kv_lora_rank: 512, rope_dim: 64 },
        "modified-mit",
        (Some("kimi_k2"), Some("kimi_k2")),
    ),
    ModelSpec::vllm_only(
        "moonshotai/kimi-k2.6",
        "moonshotai/Kimi-K2.6",
        "kimi",
        "KimiK25ForConditionalGeneration",
        55432,
        262_144,
        KvCache::Mla { layers: 61, kv_lora_rank: 512, rope_dim: 64 },
        "modified-mit",
        (Some("kimi_k2"), Some("kimi_k2")),
    ),
    ModelSpec::vllm_only(
        "moonshotai/kimi-k2.7-code",
        "moonshotai/Kimi-K2.7-Code",
        "kimi",
        "KimiK25ForConditionalGeneration",
        55432,
        262_144,
        KvCache::Mla { layers: 61, kv_lora_rank: 512, rope_dim: 64 },
        "modified-mit",
        (Some("kimi_k2"), Some("kimi_k2")),
    ),
];

kaito_plugin_sdk::catalog_preset!(Kimi, "preset-kimi", "Moonshot AI Kimi K2.x models", MODELS);
