//! `MistralForCausalLM`: Mistral 7B v0.x (Llama layout; its sliding window caps the context when set).

use super::decoder::{Decoder, LoadOptions, Weights, build, split_attention, split_mlp};
use crate::config::ModelConfig;

/// Hugging Face architecture names this file serves.
pub const ARCHITECTURES: &[&str] = &["MistralForCausalLM"];

/// Build a Mistral model.
pub fn load(config: ModelConfig, weights: Weights, opts: &LoadOptions) -> anyhow::Result<Decoder> {
    build(config, weights, opts, |w, p| split_attention(w, p, false), split_mlp)
}
