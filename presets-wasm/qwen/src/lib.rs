//! Qwen presets: Qwen2.5 Coder (dense Qwen2) and Qwen3-8B-AWQ (4-bit, by HF id).

use kaito_plugin_sdk::catalog::{KvCache, ModelSpec};
use kaito_plugin_sdk::runtime::Runtime;

const fn coder(
    name: &'static str,
    hf_id: &'static str,
    weights_centi_gib: u64,
    layers: u32,
    kv_heads: u32,
) -> ModelSpec {
    ModelSpec {
        name,
        aliases: &[],
        hf_id,
        family: "qwen",
        architecture: "Qwen2ForCausalLM",
        weights_centi_gib,
        context_length: 32_768,
        kv: KvCache::Gqa { layers, kv_heads, head_dim: 128 },
        license: "apache-2.0",
        runtimes: &[Runtime::Tch, Runtime::Vllm],
        chat_template: None,
        tool_call_parser: Some("hermes"),
        reasoning_parser: None,
        supports_tuning: true,
        supports_multi_node: true,
        supports_lora: true,
        vllm_args: &[],
    }
}

/// Every model of the family.
pub const MODELS: &[ModelSpec] = &[
    coder("qwen2.5-coder-7b-instruct", "Qwen/Qwen2.5-Coder-7B-Instruct", 1419, 28, 4),
    coder("qwen2.5-coder-32b-instruct", "Qwen/Qwen2.5-Coder-32B-Instruct", 6103, 64, 8),
    ModelSpec {
        architecture: "Qwen3ForCausalLM",
        context_length: 40_960,
        runtimes: &[Runtime::Vllm],
        reasoning_parser: Some("qwen3"),
        supports_tuning: false,
        supports_lora: false,
        ..coder("qwen/qwen3-8b-awq", "Qwen/Qwen3-8B-AWQ", 568, 36, 8)
    },
];

kaito_plugin_sdk::catalog_preset!(Qwen, "preset-qwen", "Qwen2.5 Coder and Qwen3 models", MODELS);
