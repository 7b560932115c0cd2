//! `LlamaForCausalLM`: Llama 3.x, SmolLM2, DeepSeek-R1-Distill-Llama (llama3 RoPE scaling, GQA, tied embeddings).

use super::decoder::{Decoder, LoadOptions, Weights, build, split_attention, split_mlp};
use crate::config::ModelConfig;

/// Hugging Face architecture names this file serves.
pub const ARCHITECTURES: &[&str] = &["LlamaForCausalLM"];

/// Build a Llama model.
pub fn load(config: ModelConfig, weights: Weights, opts: &LoadOptions) -> anyhow::Result<Decoder> {
    let bias = config.attention_bias;
    build(config, weights, opts, |w, p| split_attention(w, p, bias), split_mlp)
}
