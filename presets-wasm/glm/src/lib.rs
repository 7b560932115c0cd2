//! Z.ai GLM (MoE with latent attention, fp8).
//! Served by vLLM under their Hugging Face ids; facts from KAITO's model catalog.

use kaito_plugin_sdk::catalog::{KvCache, ModelSpec};

/// Every model of the family.
pub const MODELS: &[ModelSpec] = &[ModelSpec::vllm_only(
    "zai-org/glm-5.2-fp8",
    "zai-org/GLM-5.2-FP8",
    "glm",
    "GlmMoeDsaForCausalLM",
    70375,
    1_048_576,
    KvCache::Mla { layers: 78, kv_lora_rank: 512, rope_dim: 64 },
    "mit",
    (Some("glm47"), Some("glm45")),
)];

kaito_plugin_sdk::catalog_preset!(Glm, "preset-glm", "Z.ai GLM models", MODELS);
