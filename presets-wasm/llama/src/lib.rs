//! Meta Llama 3.x presets (geometry from each model's `config.json`).

use kaito_plugin_sdk::catalog::{KvCache, ModelSpec};
use kaito_plugin_sdk::runtime::Runtime;

/// Llama 3 defaults: dense, GQA with 8 KV heads of 128 dims, 128k context.
const fn llama3(
    name: &'static str,
    hf_id: &'static str,
    weights_centi_gib: u64,
    layers: u32,
    license: &'static str,
) -> ModelSpec {
    ModelSpec {
        name,
        aliases: &[],
        hf_id,
        family: "llama",
        architecture: "LlamaForCausalLM",
        weights_centi_gib,
        context_length: 131_072,
        kv: KvCache::Gqa { layers, kv_heads: 8, head_dim: 128 },
        license,
        runtimes: &[Runtime::Tch, Runtime::Vllm],
        chat_template: None,
        tool_call_parser: Some("llama3_json"),
        reasoning_parser: None,
        supports_tuning: false,
        supports_multi_node: true,
        supports_lora: true,
        vllm_args: &[],
    }
}

/// Every model of the family.
pub const MODELS: &[ModelSpec] = &[
    llama3("llama-3.1-8b-instruct", "meta-llama/Llama-3.1-8B-Instruct", 1496, 32, "llama3.1"),
    llama3("llama-3.3-70b-instruct", "meta-llama/Llama-3.3-70B-Instruct", 13142, 80, "llama3.3"),
];

// KAITO's catalog marks both `downloadAuthRequired`: Meta's repositories are gated.
kaito_plugin_sdk::catalog_preset!(
    Llama,
    "preset-llama",
    "Meta Llama 3.1 and 3.3 instruct models",
    MODELS,
    gated = ["meta-llama/Llama-3.1-8B-Instruct", "meta-llama/Llama-3.3-70B-Instruct"]
);
