//! Loading a Hugging Face model directory onto a device.

use crate::config::ModelConfig;
use crate::models::{
    self,
    decoder::{Decoder, LoadOptions, Weights},
};
use crate::text::TextModel;
use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// `--device`: `auto` (CUDA when present), `cpu`, `cuda` or `cuda:N`.
pub fn device(spec: &str) -> anyhow::Result<Device> {
    Ok(match spec {
        "auto" => Device::cuda_if_available(),
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda(0),
        s => match s.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
            Some(n) => Device::Cuda(n),
            None => anyhow::bail!("--device {s:?}: use auto, cpu, cuda or cuda:N"),
        },
    })
}

/// `--dtype`: `auto` (bf16 on GPU, f32 on CPU), `float32`/`f32`, `float16`/`f16`, `bfloat16`/`bf16`.
pub fn kind(spec: &str, device: Device) -> anyhow::Result<Kind> {
    Ok(match spec {
        "auto" if device.is_cuda() => Kind::BFloat16,
        "auto" | "float32" | "f32" => Kind::Float,
        "float16" | "f16" | "half" => Kind::Half,
        "bfloat16" | "bf16" => Kind::BFloat16,
        s => anyhow::bail!("--dtype {s:?}: use auto, float32, float16 or bfloat16"),
    })
}

/// Every tensor of the checkpoint: the shards named by `model.safetensors.index.json`, else every `*.safetensors`.
pub fn read_weights(dir: &Path) -> anyhow::Result<HashMap<String, Tensor>> {
    let index = dir.join("model.safetensors.index.json");
    let files: BTreeSet<String> = if index.exists() {
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&index)?)?;
        let map = v["weight_map"].as_object().ok_or_else(|| anyhow::anyhow!("{}: no weight_map", index.display()))?;
        map.values().filter_map(|f| f.as_str().map(str::to_string)).collect()
    } else {
        std::fs::read_dir(dir)?
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.ends_with(".safetensors"))
            .collect()
    };
    anyhow::ensure!(
        !files.is_empty(),
        "{}: no *.safetensors weights (only safetensors checkpoints are read)",
        dir.display()
    );
    let mut out = HashMap::new();
    for f in files {
        let path = dir.join(&f);
        let tensors = Tensor::read_safetensors(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        out.extend(tensors);
    }
    Ok(out)
}

/// A loaded model with its tokenizer.
pub struct Loaded {
    pub model: Decoder,
    pub text: TextModel,
}

/// Load config, tokenizer and weights from `dir`.
pub fn load(dir: &Path, device: Device, kind: Kind, max_context: usize) -> anyhow::Result<Loaded> {
    Ok(Loaded { text: load_text(dir)?, model: load_model(dir, device, kind, max_context)? })
}

/// The tokenizer, chat template and stop tokens of `dir` (no tensors: any thread may load them).
pub fn load_text(dir: &Path) -> anyhow::Result<TextModel> {
    TextModel::load(dir, &ModelConfig::read(dir)?.eos_ids())
}

/// The model of `dir` (run it on the thread that builds it: see `Engine::spawn`).
pub fn load_model(
    dir: &Path,
    device: Device,
    kind: Kind,
    max_context: usize,
) -> anyhow::Result<crate::models::decoder::Decoder> {
    let config = ModelConfig::read(dir)?;
    let weights = Weights::new(read_weights(dir)?, kind, device);
    models::load(config, weights, &LoadOptions { device, kind, max_context })
}
