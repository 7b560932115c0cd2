//! OpenAI gpt-oss presets (MoE, MXFP4 weights; served by vLLM).

use kaito_plugin_sdk::catalog::{KvCache, ModelSpec};
use kaito_plugin_sdk::runtime::Runtime;

const fn gpt_oss(name: &'static str, hf_id: &'static str, weights_centi_gib: u64, layers: u32) -> ModelSpec {
    ModelSpec {
        name,
        aliases: &[],
        hf_id,
        family: "gpt-oss",
        architecture: "GptOssForCausalLM",
        weights_centi_gib,
        context_length: 131_072,
        kv: KvCache::Gqa { layers, kv_heads: 8, head_dim: 64 },
        license: "apache-2.0",
        runtimes: &[Runtime::Vllm],
        chat_template: None,
        tool_call_parser: Some("openai"),
        reasoning_parser: Some("openai_gptoss"),
        supports_tuning: false,
        supports_multi_node: true,
        supports_lora: false,
        vllm_args: &[],
    }
}

/// Every model of the family.
pub const MODELS: &[ModelSpec] = &[
    gpt_oss("gpt-oss-20b", "openai/gpt-oss-20b", 2563, 24),
    gpt_oss("gpt-oss-120b", "openai/gpt-oss-120b", 12154, 36),
];

kaito_plugin_sdk::catalog_preset!(GptOss, "preset-gpt-oss", "OpenAI gpt-oss open-weight models", MODELS);
