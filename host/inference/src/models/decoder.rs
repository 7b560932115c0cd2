//! The decoder-only transformer all supported families share (RMSNorm, RoPE,
//! grouped-query attention, SwiGLU MLP). Family files map their checkpoint
//! names and quirks onto it.
//!
//! A forward pass takes a *flat* batch: the new tokens of every sequence in
//! the step, concatenated. Projections and MLPs run once over all of them
//! (where batching pays); attention runs per sequence against its own KV
//! cache, so prefill chunks and single decode tokens mix freely.

use crate::config::ModelConfig;
use crate::lora::{Adapter, Batch, Module};
use std::collections::HashMap;
use tch::{Device, Kind, Tensor};

/// Tensors of a checkpoint by name, taken out as layers are built.
pub struct Weights {
    map: HashMap<String, Tensor>,
    kind: Kind,
    device: Device,
}

impl Weights {
    /// Weights converted to `kind` on `device` as they are taken.
    pub fn new(map: HashMap<String, Tensor>, kind: Kind, device: Device) -> Self {
        Weights { map, kind, device }
    }

    /// A required tensor.
    pub fn take(&mut self, name: &str) -> anyhow::Result<Tensor> {
        self.opt(name).ok_or_else(|| anyhow::anyhow!("checkpoint has no tensor {name:?}"))
    }

    /// An optional tensor (biases, untied heads).
    pub fn opt(&mut self, name: &str) -> Option<Tensor> {
        self.map.remove(name).map(|t| t.to_device(self.device).to_kind(self.kind))
    }

    /// Names not used by the model (reported, never silently ignored).
    pub fn leftover(&self) -> Vec<String> {
        let mut v: Vec<String> = self.map.keys().cloned().collect();
        v.sort();
        v
    }
}

/// A linear layer (`y = x W^T + b`).
pub struct Linear {
    /// [out, in]: in the model's dtype, or int8 when quantized.
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    /// Per-output-channel scales (bf16) when `weight` is int8: row `i` of the real weight is `weight[i] * scales[i]`.
    pub scales: Option<Tensor>,
}

/// Weight-only quantization of the linear layers (`--quantization`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantization {
    /// Symmetric int8 per output channel, multiplied by libtorch's `_weight_int8pack_mm` (activations in bf16).
    Int8,
}

impl Quantization {
    /// `none` (`None`) or `int8`.
    pub fn parse(s: &str) -> anyhow::Result<Option<Quantization>> {
        match s {
            "none" => Ok(None),
            "int8" => Ok(Some(Quantization::Int8)),
            other => anyhow::bail!("--quantization {other:?}: use none or int8"),
        }
    }
}

impl Linear {
    /// A plain (unquantized) layer.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Linear {
        Linear { weight, bias, scales: None }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        match &self.scales {
            None => x.linear(&self.weight, self.bias.as_ref()),
            Some(scales) => {
                let xb = x.to_kind(Kind::BFloat16);
                // The int8 kernel reads bf16 activations (its f32 path is ~20x slower on CPU) and answers bf16; its
                // cost grows with every row, so past ~16 rows (prompt chunks, large batches) the int8 weight is
                // widened to bf16 (exact: integers up to 256) for one matmul, and the scales applied to its output.
                let y = if x.size()[0] > INT8_KERNEL_ROWS {
                    xb.linear::<Tensor>(&self.weight.to_kind(Kind::BFloat16), None) * scales
                } else {
                    xb.internal_weight_int8pack_mm(&self.weight, scales)
                };
                let y = y.to_kind(x.kind());
                match &self.bias {
                    Some(b) => y + b,
                    None => y,
                }
            }
        }
    }

    /// This layer with its weight quantized to int8 per output channel (symmetric: scale = max |row| / 127).
    pub fn quantized(&self) -> Linear {
        let (weight, scales) = quantize_rows(&self.weight);
        Linear { weight, bias: self.bias.as_ref().map(Tensor::shallow_clone), scales: Some(scales) }
    }

    /// Views of consecutive row ranges of `rows` sizes.
    fn split(&self, rows: &[i64]) -> Vec<Linear> {
        let mut at = 0;
        rows.iter()
            .map(|&n| {
                let part = |t: &Tensor| t.narrow(0, at, n);
                let l = Linear {
                    weight: part(&self.weight),
                    bias: self.bias.as_ref().map(part),
                    scales: self.scales.as_ref().map(part),
                };
                at += n;
                l
            })
            .collect()
    }

    /// The real weight this layer multiplies by, in f32 (a quantized one dequantized): the reference for tests.
    pub fn dequantized(&self) -> Tensor {
        match &self.scales {
            None => self.weight.to_kind(Kind::Float),
            Some(s) => self.weight.to_kind(Kind::Float) * s.to_kind(Kind::Float).unsqueeze(1),
        }
    }
}

/// Rows up to which libtorch's int8 kernel beats widening the weight to bf16 (measured on this machine's AVX-512
/// CPU: equal at 16 rows, the kernel 2x slower at 64).
const INT8_KERNEL_ROWS: i64 = 16;

/// `w` ([out, in]) as int8 rows and their bf16 scales; the rounding uses the bf16 scale the kernel will see.
fn quantize_rows(w: &Tensor) -> (Tensor, Tensor) {
    let w = w.to_kind(Kind::Float);
    let scales = (w.abs().amax([1].as_slice(), false) / 127.0).clamp_min(1e-12).to_kind(Kind::BFloat16);
    let q = (w / scales.to_kind(Kind::Float).unsqueeze(1)).round().clamp(-128.0, 127.0).to_kind(Kind::Int8);
    (q.contiguous(), scales)
}

/// RMSNorm, computed in f32 as the reference does.
pub struct RmsNorm {
    pub weight: Tensor,
    pub eps: f64,
}

impl RmsNorm {
    fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        let x32 = x.to_kind(Kind::Float);
        let var = x32.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
        let normed = (x32 * (var + self.eps).rsqrt()).to_kind(kind);
        &self.weight * normed
    }
}

/// Rotary position embedding tables (cos and sin per position), with the
/// scaling variants the supported configs use.
pub struct Rotary {
    cos: Tensor,
    sin: Tensor,
    /// LongRoPE: tables for sequences longer than the original context.
    long: Option<(Tensor, Tensor)>,
    original_max: usize,
    rot_dim: i64,
}

fn inv_freq(theta: f64, rot_dim: usize) -> Vec<f64> {
    (0..rot_dim / 2).map(|i| 1.0 / theta.powf(2.0 * i as f64 / rot_dim as f64)).collect()
}

fn tables(inv: &[f64], max_pos: usize, mscale: f64, device: Device) -> (Tensor, Tensor) {
    let inv = Tensor::from_slice(inv).to_kind(Kind::Double);
    let t = Tensor::arange(max_pos as i64, (Kind::Double, Device::Cpu));
    let freqs = t.outer(&inv);
    let emb = Tensor::cat(&[&freqs, &freqs], -1);
    (
        (emb.cos() * mscale).to_kind(Kind::Float).to_device(device),
        (emb.sin() * mscale).to_kind(Kind::Float).to_device(device),
    )
}

impl Rotary {
    /// Tables for positions below `max_pos`.
    pub fn new(cfg: &ModelConfig, max_pos: usize, device: Device) -> anyhow::Result<Rotary> {
        let rot_dim = ((cfg.head_dim() as f64) * cfg.partial_rotary_factor) as usize;
        let mut inv = inv_freq(cfg.rope_theta, rot_dim);
        let mut long = None;
        let mut mscale = 1.0;
        let original_max = cfg
            .rope_scaling
            .as_ref()
            .and_then(|s| s.original_max_position_embeddings)
            .or(cfg.original_max_position_embeddings)
            .unwrap_or(cfg.max_position_embeddings);
        if let Some(s) = &cfg.rope_scaling {
            match s.rope_type.as_str() {
                "default" => {}
                "linear" => {
                    let f = s.factor.unwrap_or(1.0);
                    inv.iter_mut().for_each(|x| *x /= f);
                }
                "llama3" => {
                    let factor = s.factor.unwrap_or(8.0);
                    let low = s.low_freq_factor.unwrap_or(1.0);
                    let high = s.high_freq_factor.unwrap_or(4.0);
                    let old = original_max as f64;
                    let (low_wavelen, high_wavelen) = (old / low, old / high);
                    for f in inv.iter_mut() {
                        let wavelen = 2.0 * std::f64::consts::PI / *f;
                        if wavelen > low_wavelen {
                            *f /= factor;
                        } else if wavelen >= high_wavelen {
                            let smooth = (old / wavelen - low) / (high - low);
                            *f = (1.0 - smooth) * *f / factor + smooth * *f;
                        }
                    }
                }
                "longrope" | "su" => {
                    let short =
                        s.short_factor.clone().ok_or_else(|| anyhow::anyhow!("rope_scaling.short_factor missing"))?;
                    let long_f =
                        s.long_factor.clone().ok_or_else(|| anyhow::anyhow!("rope_scaling.long_factor missing"))?;
                    anyhow::ensure!(
                        short.len() == rot_dim / 2 && long_f.len() == rot_dim / 2,
                        "rope_scaling factors must have {} entries",
                        rot_dim / 2
                    );
                    let scale = cfg.max_position_embeddings as f64 / original_max as f64;
                    mscale = if scale <= 1.0 { 1.0 } else { (1.0 + scale.ln() / (original_max as f64).ln()).sqrt() };
                    let base = inv.clone();
                    inv = base.iter().zip(&short).map(|(b, f)| b / f).collect();
                    let long_inv: Vec<f64> = base.iter().zip(&long_f).map(|(b, f)| b / f).collect();
                    long = Some(tables(&long_inv, max_pos, mscale, device));
                }
                other => anyhow::bail!(
                    "rope_scaling type {other:?} is not supported (supported: default, linear, llama3, longrope/su)"
                ),
            }
        }
        let (cos, sin) = tables(&inv, max_pos, mscale, device);
        Ok(Rotary { cos, sin, long, original_max, rot_dim: rot_dim as i64 })
    }

    /// Rotate `x` ([tokens, heads, dim]) at `positions`; `long` picks LongRoPE's long factors per token.
    fn apply(&self, x: &Tensor, positions: &Tensor, long: Option<&Tensor>) -> Tensor {
        let mut cos = self.cos.index_select(0, positions);
        let mut sin = self.sin.index_select(0, positions);
        if let (Some((lc, ls)), Some(mask)) = (&self.long, long) {
            let m = mask.unsqueeze(-1);
            cos = lc.index_select(0, positions).where_self(&m, &cos);
            sin = ls.index_select(0, positions).where_self(&m, &sin);
        }
        let kind = x.kind();
        let (cos, sin) = (cos.unsqueeze(1).to_kind(kind), sin.unsqueeze(1).to_kind(kind));
        let dim = x.size()[2];
        let rot = x.narrow(2, 0, self.rot_dim);
        let half = self.rot_dim / 2;
        let rotated = Tensor::cat(&[rot.narrow(2, half, half).neg(), rot.narrow(2, 0, half)], 2);
        let out = rot * cos + rotated * sin;
        if self.rot_dim == dim { out } else { Tensor::cat(&[out, x.narrow(2, self.rot_dim, dim - self.rot_dim)], 2) }
    }
}

/// One decoder layer.
pub struct Layer {
    pub input_norm: RmsNorm,
    pub post_norm: RmsNorm,
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    pub gate: Linear,
    pub up: Linear,
    pub down: Linear,
    /// q, k and v as one matrix (q, k, v are views of its rows): one matmul instead of three.
    pub qkv: Option<Linear>,
    /// gate and up as one matrix (gate and up are views of its rows).
    pub gate_up: Option<Linear>,
}

/// One linear layer of `parts` stacked by rows, and the parts again as views of its rows (no second copy).
fn fuse(parts: &[&Linear]) -> (Linear, Vec<Linear>) {
    let weight = Tensor::cat(&parts.iter().map(|p| &p.weight).collect::<Vec<_>>(), 0);
    let bias = parts
        .iter()
        .all(|p| p.bias.is_some())
        .then(|| Tensor::cat(&parts.iter().map(|p| p.bias.as_ref().expect("checked")).collect::<Vec<_>>(), 0));
    let scales = parts
        .iter()
        .all(|p| p.scales.is_some())
        .then(|| Tensor::cat(&parts.iter().map(|p| p.scales.as_ref().expect("checked")).collect::<Vec<_>>(), 0));
    let fused = Linear { weight, bias, scales };
    let views = fused.split(&parts.iter().map(|p| p.weight.size()[0]).collect::<Vec<_>>());
    (fused, views)
}

impl Layer {
    /// Stacks q/k/v and gate/up (when their biases agree: all or none), the parts becoming views of the stack.
    pub fn fuse(&mut self) {
        let same_bias = |ps: &[&Linear]| ps.iter().all(|p| p.bias.is_some()) || ps.iter().all(|p| p.bias.is_none());
        if self.qkv.is_none() && same_bias(&[&self.q, &self.k, &self.v]) {
            let (fused, mut views) = fuse(&[&self.q, &self.k, &self.v]);
            (self.v, self.k, self.q) = (views.pop().expect("3"), views.pop().expect("2"), views.pop().expect("1"));
            self.qkv = Some(fused);
        }
        if self.gate_up.is_none() && same_bias(&[&self.gate, &self.up]) {
            let (fused, mut views) = fuse(&[&self.gate, &self.up]);
            (self.up, self.gate) = (views.pop().expect("2"), views.pop().expect("1"));
            self.gate_up = Some(fused);
        }
    }
}

/// KV cache of one sequence: per layer, key and value buffers shaped [kv_heads, capacity, head_dim], grown by
/// doubling so appending a token copies nothing.
#[derive(Default)]
pub struct SeqCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    /// Tokens cached.
    pub len: usize,
}

impl SeqCache {
    /// An independent copy (the choices of `n` share a prompt: it is computed once and copied to each).
    pub fn fork(&self) -> SeqCache {
        let layers = self.layers.iter().map(|l| l.as_ref().map(|(k, v)| (k.copy(), v.copy()))).collect();
        SeqCache { layers, len: self.len }
    }

    /// Write `k`, `v` ([kv_heads, l, head_dim]) at position `at` of layer `li`; returns views of the first `at + l` entries.
    fn append(&mut self, li: usize, k: &Tensor, v: &Tensor, at: usize, max: usize) -> (Tensor, Tensor) {
        let l = k.size()[1] as usize;
        let need = at + l;
        let grow = self.layers[li].as_ref().is_none_or(|(kb, _)| (kb.size()[1] as usize) < need);
        if grow {
            let cap = need.next_power_of_two().clamp(16, max.max(need)) as i64;
            let shape = [k.size()[0], cap, k.size()[2]];
            let (kb, vb) = (Tensor::zeros(shape, (k.kind(), k.device())), Tensor::zeros(shape, (v.kind(), v.device())));
            if let Some((ok, ov)) = self.layers[li].take() {
                kb.narrow(1, 0, at as i64).copy_(&ok.narrow(1, 0, at as i64));
                vb.narrow(1, 0, at as i64).copy_(&ov.narrow(1, 0, at as i64));
            }
            self.layers[li] = Some((kb, vb));
        }
        let (kb, vb) = self.layers[li].as_ref().expect("allocated above");
        kb.narrow(1, at as i64, l as i64).copy_(k);
        vb.narrow(1, at as i64, l as i64).copy_(v);
        (kb.narrow(1, 0, need as i64), vb.narrow(1, 0, need as i64))
    }
}

/// One sequence's part of a flat batch.
#[derive(Debug, Clone, Copy)]
pub struct Span {
    /// Offset of its tokens in the flat batch.
    pub start: usize,
    /// New tokens in this step.
    pub len: usize,
}

/// A whole model.
pub struct Decoder {
    pub config: ModelConfig,
    pub embed: Tensor,
    pub layers: Vec<Layer>,
    pub norm: RmsNorm,
    /// Output head; `None` when tied to the embedding.
    pub lm_head: Option<Tensor>,
    /// The output head quantized (`--quantization`), used instead of `lm_head` or the embedding.
    pub head_q: Option<Linear>,
    pub rotary: Rotary,
    /// Longest sequence the KV cache may hold (context window, capped by a sliding window we do not implement).
    pub max_context: usize,
    pub device: Device,
    pub kind: Kind,
}

impl Decoder {
    /// Quantizes every projection and the output head (the embedding stays: a lookup reads one row per token).
    /// CPU only: the kernel's GPU path is untested here.
    pub fn quantize(&mut self, q: Quantization) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.device == Device::Cpu,
            "--quantization {q:?} is served on CPU only (this server has no GPU test for it)"
        );
        for l in &mut self.layers {
            anyhow::ensure!(l.o.scales.is_none(), "the model is quantized already");
            for lin in [&mut l.q, &mut l.k, &mut l.v, &mut l.o, &mut l.gate, &mut l.up, &mut l.down] {
                *lin = lin.quantized();
            }
            // Rows quantize on their own, so the stacks are the quantized parts stacked again.
            (l.qkv, l.gate_up) = (None, None);
            l.fuse();
        }
        let head = self.lm_head.take().unwrap_or_else(|| self.embed.shallow_clone());
        self.head_q = Some(Linear::new(head, None).quantized());
        Ok(())
    }

    /// An empty KV cache for a new sequence.
    pub fn new_cache(&self) -> SeqCache {
        SeqCache { layers: (0..self.layers.len()).map(|_| None).collect(), len: 0 }
    }

    /// Run `tokens` (flat, i64) for the sequences in `spans`, extending their caches; returns
    /// the last position's logits of each sequence, [spans, vocab] in f32. `adapters` gives each span's LoRA
    /// adapter (`None`, or an empty slice: the base model).
    pub fn forward(
        &self,
        tokens: &[i64],
        spans: &[Span],
        caches: &mut [&mut SeqCache],
        adapters: &[Option<&Adapter>],
    ) -> Tensor {
        let last: Vec<i64> = spans.iter().map(|s| (s.start + s.len - 1) as i64).collect();
        self.forward_rows(tokens, spans, caches, adapters, &last)
    }

    /// [`Decoder::forward`], returning the logits of the flat batch's positions `rows`, [rows, vocab] in f32 (a prompt
    /// whose log probabilities are asked for needs every position of its chunk).
    pub fn forward_rows(
        &self,
        tokens: &[i64],
        spans: &[Span],
        caches: &mut [&mut SeqCache],
        adapters: &[Option<&Adapter>],
        rows: &[i64],
    ) -> Tensor {
        let x = self.hidden(tokens, spans, caches, adapters);
        self.head(&x.index_select(0, &Tensor::from_slice(rows).to_device(self.device)))
    }

    /// [`Decoder::forward`], returning the logits of every position of the flat batch, [tokens, vocab] in f32:
    /// what training needs (the loss reads every position; gradients flow through adapters).
    pub fn forward_all(
        &self,
        tokens: &[i64],
        spans: &[Span],
        caches: &mut [&mut SeqCache],
        adapters: &[Option<&Adapter>],
    ) -> Tensor {
        let x = self.hidden(tokens, spans, caches, adapters);
        self.head(&x)
    }

    /// Final norm and output head over hidden states.
    fn head(&self, x: &Tensor) -> Tensor {
        let x = self.norm.forward(x);
        if let Some(q) = &self.head_q {
            return q.forward(&x).to_kind(Kind::Float);
        }
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        x.linear::<Tensor>(head, None).to_kind(Kind::Float)
    }

    /// The last layer's hidden state of every position of the flat batch, extending the caches.
    fn hidden(
        &self,
        tokens: &[i64],
        spans: &[Span],
        caches: &mut [&mut SeqCache],
        adapters: &[Option<&Adapter>],
    ) -> Tensor {
        assert_eq!(spans.len(), caches.len());
        assert!(adapters.is_empty() || adapters.len() == spans.len(), "one adapter (or none) per span");
        let bounds: Vec<(usize, usize)> = spans.iter().map(|s| (s.start, s.len)).collect();
        let lora = Batch::new(&bounds, adapters, self.kind, self.device);
        // The adapters' part for their tokens, added to a base projection's output `y` of input `x`.
        let adapt =
            |y: Tensor, x: &Tensor, li: usize, m: Module| if lora.is_empty() { y } else { lora.apply(y, x, li, m) };
        let project = |lin: &Linear, x: &Tensor, li: usize, m: Module| adapt(lin.forward(x), x, li, m);
        let cfg = &self.config;
        let (heads, kv_heads, head_dim) =
            (cfg.num_attention_heads as i64, cfg.kv_heads() as i64, cfg.head_dim() as i64);
        let mut positions = Vec::with_capacity(tokens.len());
        let mut long = Vec::with_capacity(tokens.len());
        for (span, cache) in spans.iter().zip(caches.iter()) {
            let total = cache.len + span.len;
            for p in cache.len..total {
                positions.push(p as i64);
                long.push(total > self.rotary.original_max);
            }
        }
        let positions = Tensor::from_slice(&positions).to_device(self.device);
        let long_mask = self.rotary.long.as_ref().map(|_| Tensor::from_slice(&long).to_device(self.device));
        let ids = Tensor::from_slice(tokens).to_device(self.device);
        let mut x = self.embed.index_select(0, &ids);
        let n = tokens.len() as i64;
        let scale = 1.0 / (head_dim as f64).sqrt();
        for (li, layer) in self.layers.iter().enumerate() {
            let h = layer.input_norm.forward(&x);
            let (q, k, v) = match &layer.qkv {
                Some(fused) => {
                    let y = fused.forward(&h);
                    let (qr, kr) = (heads * head_dim, kv_heads * head_dim);
                    let part = |from: i64, rows: i64, m: Module| adapt(y.narrow(1, from, rows), &h, li, m);
                    (part(0, qr, Module::Q), part(qr, kr, Module::K), part(qr + kr, kr, Module::V))
                }
                None => (
                    project(&layer.q, &h, li, Module::Q),
                    project(&layer.k, &h, li, Module::K),
                    project(&layer.v, &h, li, Module::V),
                ),
            };
            let q = self.rotary.apply(&q.reshape([n, heads, head_dim]), &positions, long_mask.as_ref());
            let k = self.rotary.apply(&k.reshape([n, kv_heads, head_dim]), &positions, long_mask.as_ref());
            let v = v.reshape([n, kv_heads, head_dim]);
            let groups = heads / kv_heads;
            let upcast = |t: &Tensor| if self.kind == Kind::Float { t.shallow_clone() } else { t.to_kind(Kind::Float) };
            let downcast = |t: Tensor| if self.kind == Kind::Float { t } else { t.to_kind(self.kind) };
            let mut views = Vec::with_capacity(spans.len());
            for (span, cache) in spans.iter().zip(caches.iter_mut()) {
                let (s, l) = (span.start as i64, span.len as i64);
                let at = cache.len;
                let ks = k.narrow(0, s, l).transpose(0, 1);
                let vs = v.narrow(0, s, l).transpose(0, 1);
                views.push(cache.append(li, &ks, &vs, at, self.max_context));
            }
            let mut outs: Vec<Option<Tensor>> = (0..spans.len()).map(|_| None).collect();
            // Prompt chunks: one sequence at a time, causal within the chunk. Query heads sharing a KV head
            // are stacked as extra rows, so K and V are never repeated.
            for (i, span) in spans.iter().enumerate().filter(|(_, s)| s.len > 1) {
                let (s, l) = (span.start as i64, span.len as i64);
                let (kc, vc) = &views[i];
                let qg = q.narrow(0, s, l).view([l, kv_heads, groups, head_dim]).permute([1, 2, 0, 3]).reshape([
                    kv_heads,
                    groups * l,
                    head_dim,
                ]);
                let total = kc.size()[1];
                let mask = Tensor::ones([l, total], (Kind::Bool, self.device)).triu(total - l + 1).repeat([groups, 1]);
                let scores =
                    (upcast(&qg).matmul(&upcast(kc).transpose(-2, -1)) * scale).masked_fill(&mask, f64::NEG_INFINITY);
                let probs = downcast(scores.softmax(-1, Kind::Float));
                let out = probs.matmul(vc).view([kv_heads, groups, l, head_dim]).permute([2, 0, 1, 3]);
                outs[i] = Some(out.reshape([l, heads * head_dim]));
            }
            // Decode tokens: all sequences at once over their caches padded to the longest.
            let decode: Vec<usize> = (0..spans.len()).filter(|&i| spans[i].len == 1).collect();
            if !decode.is_empty() {
                let b = decode.len() as i64;
                let rows: Vec<i64> = decode.iter().map(|&i| spans[i].start as i64).collect();
                let qd = q
                    .index_select(0, &Tensor::from_slice(&rows).to_device(self.device))
                    .view([b, kv_heads, groups, head_dim]);
                let lens: Vec<i64> = decode.iter().map(|&i| views[i].0.size()[1]).collect();
                let kp = Tensor::pad_sequence(
                    &decode.iter().map(|&i| views[i].0.transpose(0, 1)).collect::<Vec<_>>(),
                    true,
                    0.0,
                );
                let vp = Tensor::pad_sequence(
                    &decode.iter().map(|&i| views[i].1.transpose(0, 1)).collect::<Vec<_>>(),
                    true,
                    0.0,
                );
                let mut scores = upcast(&qd).matmul(&upcast(&kp).permute([0, 2, 3, 1])) * scale;
                let longest = *lens.iter().max().expect("non-empty");
                if lens.iter().any(|&n| n != longest) {
                    let lens = Tensor::from_slice(&lens).to_device(self.device).view([b, 1, 1, 1]);
                    let pad =
                        Tensor::arange(longest, (Kind::Int64, self.device)).view([1, 1, 1, longest]).ge_tensor(&lens);
                    scores = scores.masked_fill(&pad, f64::NEG_INFINITY);
                }
                let probs = downcast(scores.softmax(-1, Kind::Float));
                let out = probs.matmul(&vp.permute([0, 2, 1, 3])).reshape([b, heads * head_dim]);
                for (j, &i) in decode.iter().enumerate() {
                    outs[i] = Some(out.narrow(0, j as i64, 1));
                }
            }
            let outs: Vec<Tensor> = outs.into_iter().map(|o| o.expect("every span attended")).collect();
            let attn = Tensor::cat(&outs, 0);
            // Out of place: the norms keep `x` for their backward pass when kaito-tune trains through here.
            x = &x + project(&layer.o, &attn, li, Module::O);
            let h = layer.post_norm.forward(&x);
            let act = match &layer.gate_up {
                Some(fused) => {
                    let y = fused.forward(&h);
                    let inter = y.size()[1] / 2;
                    adapt(y.narrow(1, 0, inter), &h, li, Module::Gate).silu()
                        * adapt(y.narrow(1, inter, inter), &h, li, Module::Up)
                }
                None => project(&layer.gate, &h, li, Module::Gate).silu() * project(&layer.up, &h, li, Module::Up),
            };
            x = &x + project(&layer.down, &act, li, Module::Down);
        }
        for (span, cache) in spans.iter().zip(caches.iter_mut()) {
            cache.len += span.len;
        }
        x
    }
}

/// Options shared by every family's loader.
pub struct LoadOptions {
    pub device: Device,
    pub kind: Kind,
    /// Upper bound on the context the server will use (tables are built this long).
    pub max_context: usize,
}

/// Build the shared decoder from standard Llama-style tensor names, with
/// family hooks for biases and fused projections.
pub fn build(
    config: ModelConfig,
    mut w: Weights,
    opts: &LoadOptions,
    mut attention: impl FnMut(&mut Weights, &str) -> anyhow::Result<(Linear, Linear, Linear)>,
    mut mlp: impl FnMut(&mut Weights, &str) -> anyhow::Result<(Linear, Linear)>,
) -> anyhow::Result<Decoder> {
    let eps = config.rms_norm_eps;
    let mut layers = Vec::with_capacity(config.num_hidden_layers);
    for i in 0..config.num_hidden_layers {
        let p = format!("model.layers.{i}");
        let (q, k, v) = attention(&mut w, &p)?;
        let (gate, up) = mlp(&mut w, &p)?;
        layers.push(Layer {
            input_norm: RmsNorm { weight: w.take(&format!("{p}.input_layernorm.weight"))?, eps },
            post_norm: RmsNorm { weight: w.take(&format!("{p}.post_attention_layernorm.weight"))?, eps },
            q,
            k,
            v,
            o: Linear::new(
                w.take(&format!("{p}.self_attn.o_proj.weight"))?,
                w.opt(&format!("{p}.self_attn.o_proj.bias")),
            ),
            gate,
            up,
            down: Linear::new(w.take(&format!("{p}.mlp.down_proj.weight"))?, None),
            qkv: None,
            gate_up: None,
        });
        layers.last_mut().expect("pushed").fuse();
    }
    let embed = w.take("model.embed_tokens.weight")?;
    let lm_head = w.opt("lm_head.weight");
    anyhow::ensure!(
        lm_head.is_some() || config.tie_word_embeddings,
        "checkpoint has no lm_head.weight and tie_word_embeddings is false"
    );
    let norm = RmsNorm { weight: w.take("model.norm.weight")?, eps };
    let leftover: Vec<String> = w.leftover().into_iter().filter(|n| !n.ends_with("rotary_emb.inv_freq")).collect();
    anyhow::ensure!(leftover.is_empty(), "checkpoint tensors this family does not use: {}", leftover.join(", "));
    let mut max_context = opts.max_context.min(config.max_position_embeddings);
    let window = config.sliding_window.filter(|_| config.use_sliding_window != Some(false));
    if let Some(win) = window.filter(|w| *w < max_context) {
        tracing::warn!(
            sliding_window = win,
            "sliding-window attention is not implemented: context capped at the window"
        );
        max_context = win;
    }
    let rotary = Rotary::new(&config, max_context, opts.device)?;
    Ok(Decoder {
        config,
        embed,
        layers,
        norm,
        lm_head,
        head_q: None,
        rotary,
        max_context,
        device: opts.device,
        kind: opts.kind,
    })
}

/// Separate q, k, v projections (Llama, Mistral, Qwen2).
pub fn split_attention(w: &mut Weights, p: &str, bias: bool) -> anyhow::Result<(Linear, Linear, Linear)> {
    let mut lin = |name: &str| -> anyhow::Result<Linear> {
        let weight = w.take(&format!("{p}.self_attn.{name}.weight"))?;
        let b = if bias { Some(w.take(&format!("{p}.self_attn.{name}.bias"))?) } else { None };
        Ok(Linear::new(weight, b))
    };
    Ok((lin("q_proj")?, lin("k_proj")?, lin("v_proj")?))
}

/// Separate gate and up projections.
pub fn split_mlp(w: &mut Weights, p: &str) -> anyhow::Result<(Linear, Linear)> {
    Ok((
        Linear::new(w.take(&format!("{p}.mlp.gate_proj.weight"))?, None),
        Linear::new(w.take(&format!("{p}.mlp.up_proj.weight"))?, None),
    ))
}
