//! DeepSeek presets: the R1 distills (dense Llama/Qwen2) and R1/V3 (MoE with
//! multi-head latent attention, so their KV cache is a 512+64 latent per layer).

use kaito_plugin_sdk::catalog::{KvCache, ModelSpec};
use kaito_plugin_sdk::runtime::Runtime;

const fn distill(
    name: &'static str,
    hf_id: &'static str,
    architecture: &'static str,
    weights_centi_gib: u64,
    layers: u32,
) -> ModelSpec {
    ModelSpec {
        name,
        aliases: &[],
        hf_id,
        family: "deepseek",
        architecture,
        weights_centi_gib,
        context_length: 131_072,
        kv: KvCache::Gqa { layers, kv_heads: 8, head_dim: 128 },
        license: "mit",
        runtimes: &[Runtime::Tch, Runtime::Vllm],
        chat_template: None,
        tool_call_parser: Some("deepseek_v3"),
        reasoning_parser: Some("deepseek_r1"),
        supports_tuning: false,
        supports_multi_node: true,
        supports_lora: true,
        vllm_args: &[],
    }
}

const fn v3(name: &'static str, hf_id: &'static str, reasoning_parser: &'static str) -> ModelSpec {
    ModelSpec {
        architecture: "DeepseekV3ForCausalLM",
        weights_centi_gib: 64130,
        context_length: 163_840,
        kv: KvCache::Mla { layers: 61, kv_lora_rank: 512, rope_dim: 64 },
        runtimes: &[Runtime::Vllm],
        reasoning_parser: Some(reasoning_parser),
        supports_lora: false,
        ..distill(name, hf_id, "", 0, 0)
    }
}

/// Every model of the family.
pub const MODELS: &[ModelSpec] = &[
    distill("deepseek-r1-distill-llama-8b", "deepseek-ai/DeepSeek-R1-Distill-Llama-8B", "LlamaForCausalLM", 1496, 32),
    distill("deepseek-r1-distill-qwen-14b", "deepseek-ai/DeepSeek-R1-Distill-Qwen-14B", "Qwen2ForCausalLM", 2751, 48),
    v3("deepseek-r1-0528", "deepseek-ai/DeepSeek-R1-0528", "deepseek_r1"),
    v3("deepseek-v3-0324", "deepseek-ai/DeepSeek-V3-0324", "deepseek_v3"),
    // Served by Hugging Face id only (KAITO catalog).
    ModelSpec::vllm_only(
        "deepseek-ai/deepseek-v4-flash-0731",
        "deepseek-ai/DeepSeek-V4-Flash-0731",
        "deepseek",
        "DeepseekV4ForCausalLM",
        15543,
        1_048_576,
        KvCache::Gqa { layers: 43, kv_heads: 1, head_dim: 512 },
        "mit",
        (Some("deepseek_v4"), Some("deepseek_v4")),
    ),
    ModelSpec::vllm_only(
        "deepseek-ai/deepseek-v4-pro",
        "deepseek-ai/DeepSeek-V4-Pro",
        "deepseek",
        "DeepseekV4ForCausalLM",
        80534,
        1_048_576,
        KvCache::Gqa { layers: 61, kv_heads: 1, head_dim: 512 },
        "mit",
        (Some("deepseek_v4"), Some("deepseek_v4")),
    ),
    ModelSpec::vllm_only(
        "deepseek-ai/deepseek-v3.2",
        "deepseek-ai/DeepSeek-V3.2",
        "deepseek",
        "DeepseekV32ForCausalLM",
        64214,
        163_840,
        KvCache::Mla { layers: 61, kv_lora_rank: 512, rope_dim: 64 },
        "mit",
        (Some("deepseek_v32"), Some("deepseek_v3")),
    ),
];

kaito_plugin_sdk::catalog_preset!(DeepSeek, "preset-deepseek", "DeepSeek R1, V3 and R1 distills", MODELS);
