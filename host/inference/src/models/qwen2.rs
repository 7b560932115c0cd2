//! `Qwen2ForCausalLM`: Qwen2.5 and DeepSeek-R1-Distill-Qwen (biases on q, k and v projections).

use super::decoder::{Decoder, LoadOptions, Weights, build, split_attention, split_mlp};
use crate::config::ModelConfig;

/// Hugging Face architecture names this file serves.
pub const ARCHITECTURES: &[&str] = &["Qwen2ForCausalLM"];

/// Build a Qwen2 model.
pub fn load(config: ModelConfig, weights: Weights, opts: &LoadOptions) -> anyhow::Result<Decoder> {
    build(config, weights, opts, |w, p| split_attention(w, p, true), split_mlp)
}
