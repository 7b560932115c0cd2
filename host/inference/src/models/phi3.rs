//! `Phi3ForCausalLM`: Phi-3, Phi-3.5 and Phi-4-mini (fused qkv and gate/up projections, LongRoPE, partial rotary).

use super::decoder::{Decoder, Linear, LoadOptions, Weights, build};
use crate::config::ModelConfig;

/// Hugging Face architecture names this file serves.
pub const ARCHITECTURES: &[&str] = &["Phi3ForCausalLM"];

/// Build a Phi-3 model. The checkpoint's fused projections are handed on as views of their rows; `build` stacks
/// each layer's parts into one matmul again (one copy, the checkpoint's tensor then freed).
pub fn load(config: ModelConfig, weights: Weights, opts: &LoadOptions) -> anyhow::Result<Decoder> {
    let d = config.head_dim() as i64;
    let (q_rows, kv_rows) = (config.num_attention_heads as i64 * d, config.kv_heads() as i64 * d);
    let inter = config.intermediate_size as i64;
    let plain = |weight: tch::Tensor| Linear::new(weight, None);
    build(
        config,
        weights,
        opts,
        |w, p| {
            let qkv = w.take(&format!("{p}.self_attn.qkv_proj.weight"))?;
            anyhow::ensure!(qkv.size()[0] == q_rows + 2 * kv_rows, "{p}.self_attn.qkv_proj.weight has the wrong shape");
            Ok((
                plain(qkv.narrow(0, 0, q_rows)),
                plain(qkv.narrow(0, q_rows, kv_rows)),
                plain(qkv.narrow(0, q_rows + kv_rows, kv_rows)),
            ))
        },
        |w, p| {
            let gate_up = w.take(&format!("{p}.mlp.gate_up_proj.weight"))?;
            anyhow::ensure!(gate_up.size()[0] == 2 * inter, "{p}.mlp.gate_up_proj.weight has the wrong shape");
            Ok((plain(gate_up.narrow(0, 0, inter)), plain(gate_up.narrow(0, inter, inter))))
        },
    )
}
