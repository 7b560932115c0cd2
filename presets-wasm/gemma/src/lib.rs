//! Google Gemma 3 presets (multimodal; served by vLLM).

use kaito_plugin_sdk::catalog::{KvCache, ModelSpec};
use kaito_plugin_sdk::runtime::Runtime;

const fn gemma3(name: &'static str, hf_id: &'static str, weights_centi_gib: u64, kv: KvCache) -> ModelSpec {
    ModelSpec {
        name,
        aliases: &[],
        hf_id,
        family: "gemma",
        architecture: "Gemma3ForConditionalGeneration",
        weights_centi_gib,
        context_length: 131_072,
        kv,
        license: "gemma",
        runtimes: &[Runtime::Vllm],
        chat_template: None,
        tool_call_parser: Some("functiongemma"),
        reasoning_parser: None,
        supports_tuning: false,
        supports_multi_node: true,
        supports_lora: false,
        vllm_args: &[],
    }
}

/// Every model of the family.
pub const MODELS: &[ModelSpec] = &[
    gemma3("gemma-3-4b-instruct", "google/gemma-3-4b-it", 801, KvCache::Gqa { layers: 34, kv_heads: 4, head_dim: 256 }),
    gemma3(
        "gemma-3-27b-instruct",
        "google/gemma-3-27b-it",
        5110,
        KvCache::Gqa { layers: 62, kv_heads: 16, head_dim: 128 },
    ),
    // Served by Hugging Face id only (KAITO catalog).
    ModelSpec::vllm_only(
        "google/gemma-4-31b-it",
        "google/gemma-4-31B-it",
        "gemma",
        "Gemma4ForConditionalGeneration",
        5825,
        262_144,
        KvCache::Gqa { layers: 60, kv_heads: 16, head_dim: 256 },
        "apache-2.0",
        (Some("gemma4"), Some("gemma4")),
    ),
    ModelSpec::vllm_only(
        "google/gemma-4-26b-a4b-it",
        "google/gemma-4-26B-A4B-it",
        "gemma",
        "Gemma4ForConditionalGeneration",
        4807,
        262_144,
        KvCache::Gqa { layers: 30, kv_heads: 8, head_dim: 256 },
        "apache-2.0",
        (Some("gemma4"), Some("gemma4")),
    ),
    ModelSpec::vllm_only(
        "google/gemma-4-e4b-it",
        "google/gemma-4-E4B-it",
        "gemma",
        "Gemma4ForConditionalGeneration",
        1489,
        131_072,
        KvCache::Gqa { layers: 42, kv_heads: 2, head_dim: 256 },
        "apache-2.0",
        (Some("gemma4"), Some("gemma4")),
    ),
    ModelSpec::vllm_only(
        "google/gemma-4-e2b-it",
        "google/gemma-4-E2B-it",
        "gemma",
        "Gemma4ForConditionalGeneration",
        954,
        131_072,
        KvCache::Gqa { layers: 35, kv_heads: 1, head_dim: 256 },
        "apache-2.0",
        (Some("gemma4"), Some("gemma4")),
    ),
    ModelSpec::vllm_only(
        "google/gemma-4-12b-it",
        "google/gemma-4-12B-it",
        "gemma",
        "Gemma4UnifiedForConditionalGeneration",
        2228,
        262_144,
        KvCache::Gqa { layers: 48, kv_heads: 8, head_dim: 256 },
        "apache-2.0",
        (Some("gemma4"), Some("gemma4")),
    ),
];

kaito_plugin_sdk::catalog_preset!(Gemma, "preset-gemma", "Google Gemma 3 instruct models", MODELS);
