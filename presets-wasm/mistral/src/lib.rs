//! Mistral presets: Mistral 7B v0.3, Ministral 3 (multimodal, fp8) and Mistral
//! Large 3 (MoE with latent attention). All ship Mistral's native format,
//! which vLLM reads with the three `mistral` format flags.

use kaito_plugin_sdk::catalog::{KvCache, ModelSpec};
use kaito_plugin_sdk::runtime::Runtime;

const MISTRAL_FORMAT: &[&str] = &["--tokenizer-mode=mistral", "--config-format=mistral", "--load-format=mistral"];

const fn mistral7b(name: &'static str, hf_id: &'static str, supports_tuning: bool) -> ModelSpec {
    ModelSpec {
        name,
        aliases: &[],
        hf_id,
        family: "mistral",
        architecture: "MistralForCausalLM",
        weights_centi_gib: 1350,
        context_length: 32_768,
        kv: KvCache::Gqa { layers: 32, kv_heads: 8, head_dim: 128 },
        license: "apache-2.0",
        runtimes: &[Runtime::Tch, Runtime::Vllm],
        chat_template: None,
        tool_call_parser: Some("mistral"),
        reasoning_parser: None,
        supports_tuning,
        supports_multi_node: true,
        supports_lora: true,
        vllm_args: MISTRAL_FORMAT,
    }
}

const fn ministral(name: &'static str, hf_id: &'static str, weights_centi_gib: u64, layers: u32) -> ModelSpec {
    ModelSpec {
        architecture: "Mistral3ForConditionalGeneration",
        weights_centi_gib,
        context_length: 262_144,
        kv: KvCache::Gqa { layers, kv_heads: 8, head_dim: 128 },
        runtimes: &[Runtime::Vllm],
        tool_call_parser: None,
        supports_lora: false,
        ..mistral7b(name, hf_id, false)
    }
}

/// Every model of the family.
pub const MODELS: &[ModelSpec] = &[
    mistral7b("mistral-7b", "mistralai/Mistral-7B-v0.3", true),
    mistral7b("mistral-7b-instruct", "mistralai/Mistral-7B-Instruct-v0.3", false),
    ministral("ministral-3-3b-instruct", "mistralai/Ministral-3-3B-Instruct-2512", 435, 26),
    ministral("ministral-3-8b-instruct", "mistralai/Ministral-3-8B-Instruct-2512", 970, 34),
    ministral("ministral-3-14b-instruct", "mistralai/Ministral-3-14B-Instruct-2512", 1465, 40),
    ModelSpec {
        architecture: "MistralLarge3ForCausalLM",
        weights_centi_gib: 63470,
        context_length: 294_912,
        kv: KvCache::Mla { layers: 61, kv_lora_rank: 512, rope_dim: 64 },
        runtimes: &[Runtime::Vllm],
        supports_lora: false,
        ..mistral7b("mistral-large-3-675b-instruct", "mistralai/Mistral-Large-3-675B-Instruct-2512", false)
    },
    // Served by Hugging Face id only (KAITO catalog).
    ModelSpec {
        vllm_args: MISTRAL_FORMAT,
        ..ModelSpec::vllm_only(
            "mistralai/mistral-small-4-119b-2603",
            "mistralai/Mistral-Small-4-119B-2603",
            "mistral",
            "Mistral3ForConditionalGeneration",
            11263,
            1_048_576,
            KvCache::Mla { layers: 36, kv_lora_rank: 256, rope_dim: 64 },
            "apache-2.0",
            (Some("mistral"), Some("mistral")),
        )
    },
    ModelSpec {
        vllm_args: MISTRAL_FORMAT,
        ..ModelSpec::vllm_only(
            "mistralai/mistral-small-4-119b-2603-nvfp4",
            "mistralai/Mistral-Small-4-119B-2603-NVFP4",
            "mistral",
            "Mistral3ForConditionalGeneration",
            6595,
            1_048_576,
            KvCache::Mla { layers: 36, kv_lora_rank: 256, rope_dim: 64 },
            "apache-2.0",
            (Some("mistral"), Some("mistral")),
        )
    },
    ModelSpec {
        vllm_args: MISTRAL_FORMAT,
        ..ModelSpec::vllm_only(
            "mistralai/mistral-medium-3.5-128b",
            "mistralai/Mistral-Medium-3.5-128B",
            "mistral",
            "Mistral3ForConditionalGeneration",
            12443,
            262_144,
            KvCache::Gqa { layers: 88, kv_heads: 8, head_dim: 128 },
            "other",
            (Some("mistral"), Some("mistral")),
        )
    },
];

kaito_plugin_sdk::catalog_preset!(Mistral, "preset-mistral", "Mistral 7B, Ministral 3 and Mistral Large 3", MODELS);
