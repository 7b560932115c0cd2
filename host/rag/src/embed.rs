//! Embeddings: locally with rust-bert's sentence-embeddings pipeline, or
//! remotely through any OpenAI-compatible `/v1/embeddings` endpoint.

use anyhow::{Context, Result, bail};
use rust_bert::Config as _;
use rust_bert::pipelines::common::ModelType;
use rust_bert::pipelines::sentence_embeddings::{
    SentenceEmbeddingsConfig, SentenceEmbeddingsModel, SentenceEmbeddingsModulesConfig,
};
use rust_bert::resources::ResourceProvider;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// Chunks embedded per model call.
pub const BATCH: usize = 32;

/// Turns texts into vectors.
pub enum Embedder {
    /// rust-bert on libtorch, in-process.
    Local(Box<LocalEmbedder>),
    /// An OpenAI-compatible embeddings endpoint.
    Remote(RemoteEmbedder),
}

impl Embedder {
    /// Name recorded with every index, so vectors of two models never mix.
    pub fn model_id(&self) -> &str {
        match self {
            Embedder::Local(l) => &l.id,
            Embedder::Remote(r) => &r.id,
        }
    }

    /// Vector length.
    pub fn dim(&self) -> usize {
        match self {
            Embedder::Local(l) => l.dim,
            Embedder::Remote(r) => r.dim,
        }
    }

    /// Embeds `texts` in batches of [`BATCH`], calling `progress` with the
    /// number done after each batch. Blocking.
    pub fn embed(&self, texts: &[String], mut progress: impl FnMut(usize)) -> Result<Vec<Vec<f32>>> {
        // Batches of similar lengths pad less (sentence-transformers does the same).
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(texts[i].len()));
        let mut out: Vec<Vec<f32>> = vec![Vec::new(); texts.len()];
        let mut done = 0;
        for batch in order.chunks(BATCH) {
            let inputs: Vec<&str> = batch.iter().map(|&i| texts[i].as_str()).collect();
            let vectors = match self {
                Embedder::Local(l) => l.embed(&inputs)?,
                Embedder::Remote(r) => r.embed(&inputs)?,
            };
            if vectors.len() != batch.len() || vectors.iter().any(|v| v.len() != self.dim()) {
                bail!(
                    "the embedding model returned {} vectors for {} texts (or a vector not of {} dimensions)",
                    vectors.len(),
                    batch.len(),
                    self.dim()
                );
            }
            for (&i, v) in batch.iter().zip(vectors) {
                out[i] = v;
            }
            done += batch.len();
            progress(done);
        }
        Ok(out)
    }
}

/// A sentence-transformers directory loaded with rust-bert.
pub struct LocalEmbedder {
    id: String,
    dim: usize,
    model: Mutex<SentenceEmbeddingsModel>,
}

impl LocalEmbedder {
    /// Loads a sentence-transformers directory (`modules.json`, `config.json`,
    /// the pooling module, `tokenizer_config.json`, the vocabulary, and
    /// `rust_model.ot` or `model.safetensors`) on the CPU.
    pub fn load(dir: &Path) -> Result<Self> {
        let need = |name: &str| -> Result<PathBuf> {
            let p = dir.join(name);
            if !p.exists() {
                bail!(
                    "{} is missing: --embedding-model must be a sentence-transformers directory (run `cargo xtask models` for all-MiniLM-L6-v2)",
                    p.display()
                );
            }
            Ok(p)
        };
        let modules = SentenceEmbeddingsModulesConfig::from_file(need("modules.json")?)
            .validate()
            .map_err(|e| anyhow::anyhow!("{}: {e}", dir.join("modules.json").display()))?;
        let config: Value = serde_json::from_str(&std::fs::read_to_string(need("config.json")?)?)?;
        let model_type = match config["model_type"].as_str() {
            Some("bert") => ModelType::Bert,
            Some("distilbert") => ModelType::DistilBert,
            other => bail!(
                "{}: model_type {other:?} is not supported for local embeddings (supported: bert, distilbert); use --embedding-url for other models",
                dir.join("config.json").display()
            ),
        };
        // rust-bert reads either format; tch picks the reader by extension.
        let weights = ["rust_model.ot", "model.safetensors"]
            .iter()
            .map(|f| dir.join(f))
            .find(|p| p.exists())
            .with_context(|| format!("{}: neither rust_model.ot nor model.safetensors", dir.display()))?;
        let dense = modules.dense_module().map(|m| dir.join(&m.path));
        let res = |p: PathBuf| -> Box<dyn ResourceProvider + Send> { p.into() };
        let cfg = SentenceEmbeddingsConfig {
            modules_config_resource: res(dir.join("modules.json")),
            transformer_type: model_type,
            transformer_config_resource: res(dir.join("config.json")),
            transformer_weights_resource: res(weights),
            pooling_config_resource: res(dir.join(&modules.pooling_module().path).join("config.json")),
            dense_config_resource: dense.as_ref().map(|d| res(d.join("config.json"))),
            dense_weights_resource: dense.as_ref().map(|d| res(d.join("rust_model.ot"))),
            sentence_bert_config_resource: res(need("sentence_bert_config.json")?),
            tokenizer_config_resource: res(need("tokenizer_config.json")?),
            tokenizer_vocab_resource: res(need("vocab.txt")?),
            tokenizer_merges_resource: None,
            device: tch::Device::Cpu,
            kind: None,
        };
        let model = SentenceEmbeddingsModel::new(cfg).with_context(|| format!("loading {}", dir.display()))?;
        let dim = model.get_embedding_dim().context("embedding dimension")? as usize;
        let id = format!("local:{}", dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
        Ok(LocalEmbedder { id, dim, model: Mutex::new(model) })
    }

    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let model = self.model.lock().map_err(|_| anyhow::anyhow!("embedding model lock poisoned"))?;
        let _guard = tch::no_grad_guard();
        model.encode(texts).context("rust-bert encode")
    }
}

/// An OpenAI-compatible embeddings endpoint.
pub struct RemoteEmbedder {
    id: String,
    dim: usize,
    url: String,
    model: Option<String>,
    secret: Option<String>,
    agent: ureq::Agent,
}

impl RemoteEmbedder {
    /// Connects to `url` (the embeddings endpoint, or a base URL that
    /// `/v1/embeddings` is appended to) and learns the dimension from one call.
    pub fn connect(url: &str, model: Option<String>, secret: Option<String>) -> Result<Self> {
        let url = embeddings_url(url);
        let agent = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .timeout_global(Some(Duration::from_secs(120)))
                .http_status_as_error(false)
                .build(),
        );
        let mut this = RemoteEmbedder { id: format!("remote:{url}"), dim: 0, url, model, secret, agent };
        if let Some(m) = &this.model {
            this.id = format!("remote:{m}");
        }
        let probe = this.embed(&["dimension probe"])?;
        this.dim = probe.first().map(Vec::len).context("the embeddings endpoint returned no vector")?;
        Ok(this)
    }

    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let mut body = json!({"input": texts, "encoding_format": "float"});
        if let Some(m) = &self.model {
            body["model"] = json!(m);
        }
        let mut req = self.agent.post(&self.url);
        if let Some(s) = &self.secret {
            req = req.header("Authorization", &format!("Bearer {s}"));
        }
        let mut resp = req.send_json(&body).with_context(|| format!("POST {}", self.url))?;
        let status = resp.status();
        let text = resp.body_mut().read_to_string().with_context(|| format!("reading {}", self.url))?;
        if !status.is_success() {
            bail!("POST {} answered {status}: {}", self.url, text.chars().take(300).collect::<String>());
        }
        let v: Value = serde_json::from_str(&text).with_context(|| format!("{} answered non-JSON", self.url))?;
        let mut data: Vec<(usize, Vec<f32>)> = v["data"]
            .as_array()
            .with_context(|| format!("{} answered without `data`", self.url))?
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let index = d["index"].as_u64().map(|x| x as usize).unwrap_or(i);
                let vec =
                    d["embedding"].as_array().map(|a| a.iter().filter_map(|x| x.as_f64()).map(|x| x as f32).collect());
                vec.map(|v| (index, v))
                    .with_context(|| format!("{}: data[{i}].embedding is not a list of numbers", self.url))
            })
            .collect::<Result<_>>()?;
        data.sort_by_key(|(i, _)| *i);
        Ok(data.into_iter().map(|(_, v)| v).collect())
    }
}

/// The embeddings endpoint for a configured URL.
pub fn embeddings_url(url: &str) -> String {
    let url = url.trim_end_matches('/');
    if url.ends_with("/embeddings") {
        url.to_string()
    } else if url.ends_with("/v1") {
        format!("{url}/embeddings")
    } else {
        format!("{url}/v1/embeddings")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embeddings_url_accepts_endpoint_or_base() {
        assert_eq!(embeddings_url("http://e:80/v1/embeddings"), "http://e:80/v1/embeddings");
        assert_eq!(embeddings_url("http://e:80/v1/"), "http://e:80/v1/embeddings");
        assert_eq!(embeddings_url("http://e:80"), "http://e:80/v1/embeddings");
    }
}
