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
];

kaito_plugin_sdk::catalog_preset!(Gemma, "preset-gemma", "Google Gemma 3 instruct models", MODELS);
