//! Model families, registered by their Hugging Face `architectures` name.

pub mod decoder;
pub mod llama;
pub mod mistral;
pub mod phi3;
pub mod qwen2;

use crate::config::ModelConfig;
use decoder::{Decoder, LoadOptions, Weights};

type Loader = fn(ModelConfig, Weights, &LoadOptions) -> anyhow::Result<Decoder>;

/// Every family: its architecture names and loader.
pub const FAMILIES: &[(&[&str], Loader)] = &[
    (llama::ARCHITECTURES, llama::load),
    (mistral::ARCHITECTURES, mistral::load),
    (qwen2::ARCHITECTURES, qwen2::load),
    (phi3::ARCHITECTURES, phi3::load),
];

/// Architecture names this server can run.
pub fn supported() -> Vec<&'static str> {
    FAMILIES.iter().flat_map(|(names, _)| names.iter().copied()).collect()
}

/// Build the model `config` names, or say which architectures are supported.
pub fn load(config: ModelConfig, weights: Weights, opts: &LoadOptions) -> anyhow::Result<Decoder> {
    let arch = config.architecture().unwrap_or("(none)").to_string();
    let loader = FAMILIES.iter().find(|(names, _)| names.contains(&arch.as_str())).map(|(_, l)| *l).ok_or_else(|| {
        anyhow::anyhow!(
            "architecture {arch:?} is not supported by kaito-inference (supported: {}); serve it with the vllm runtime instead",
            supported().join(", ")
        )
    })?;
    loader(config, weights, opts)
}
