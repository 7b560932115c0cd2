//! IBM Granite 4.
//! Served by vLLM under their Hugging Face ids; facts from KAITO's model catalog.

use kaito_plugin_sdk::catalog::{KvCache, ModelSpec};

/// Every model of the family.
pub const MODELS: &[ModelSpec] = &[ModelSpec::vllm_only(
    "ibm-granite/granite-4.1-8b",
    "ibm-granite/granite-4.1-8b",
    "granite",
    "GraniteForCausalLM",
    1638,
    131_072,
    KvCache::Gqa { layers: 40, kv_heads: 8, head_dim: 128 },
    "apache-2.0",
    (Some("granite4"), Some("granite")),
)];

kaito_plugin_sdk::catalog_preset!(Granite, "preset-granite", "IBM Granite models", MODELS);
