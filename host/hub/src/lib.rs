//! The Hugging Face hub's file API (or any server speaking it, `HF_ENDPOINT`), with `HF_TOKEN` honoured: the one
//! client kaito-inference downloads weights with and the operator reads model facts with.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// The hub's address: `HF_ENDPOINT`, else huggingface.co.
pub fn endpoint() -> String {
    std::env::var("HF_ENDPOINT").unwrap_or_else(|_| "https://huggingface.co".into()).trim_end_matches('/').to_string()
}

/// A GET with `HF_TOKEN` as bearer token, from byte `range_from` on when it is not 0.
pub fn get(url: &str, range_from: u64) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
    request(&ureq::agent(), url, std::env::var("HF_TOKEN").ok().as_deref(), range_from, "GET")
}

fn request(
    agent: &ureq::Agent,
    url: &str,
    token: Option<&str>,
    range_from: u64,
    method: &str,
) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
    let with_headers = |mut req: ureq::RequestBuilder<ureq::typestate::WithoutBody>| {
        if let Some(token) = token {
            req = req.header("Authorization", &format!("Bearer {token}"));
        }
        if range_from > 0 {
            req = req.header("Range", &format!("bytes={range_from}-"));
        }
        req
    };
    if method == "HEAD" { with_headers(agent.head(url)).call() } else { with_headers(agent.get(url)).call() }
}

/// What sizing needs to know about a model, read from its `config.json` and safetensors index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFacts {
    /// The repository id as asked for.
    pub hf_id: String,
    /// `architectures[0]`.
    pub architecture: String,
    /// Size of the safetensors weights, in bytes.
    pub weights_bytes: u64,
    /// `max_position_embeddings`.
    pub context_length: u32,
    /// KV-cache bytes per token at 16 bits: 2 x layers x KV heads x head dim x 2.
    pub bytes_per_token: u64,
    /// `quantization_config.quant_method`, for pre-quantised checkpoints.
    pub quantization: Option<String>,
}

/// Why a model's facts could not be read; each says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HubError {
    #[error("{repo} is not on {endpoint} (404)")]
    NotFound { repo: String, endpoint: String },
    #[error("{repo} on {endpoint} needs a token with access (HTTP {status}): set HF_TOKEN for the operator")]
    Denied { repo: String, endpoint: String, status: u16 },
    #[error("cannot read {url}: {detail}")]
    Unreachable { url: String, detail: String },
    #[error("{repo}: {detail}")]
    Config { repo: String, detail: String },
}

/// A hub client that remembers the facts it read: a repository's config does not change between reconciles.
#[derive(Debug)]
pub struct Hub {
    endpoint: String,
    token: Option<String>,
    agent: ureq::Agent,
    facts: Mutex<HashMap<String, ModelFacts>>,
}

impl Hub {
    /// A client for `endpoint` (trailing `/` ignored), sending `token` if given.
    pub fn new(endpoint: &str, token: Option<String>) -> Hub {
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(20)))
            .http_status_as_error(false)
            .build();
        Hub {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            token: token.filter(|t| !t.is_empty()),
            agent: config.into(),
            facts: Mutex::new(HashMap::new()),
        }
    }

    /// The client the environment asks for (`HF_ENDPOINT`, `HF_TOKEN`), or `None` when `HF_HUB_OFFLINE` is set, as
    /// the hub's own libraries read it.
    pub fn from_env() -> Option<Hub> {
        let offline = std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| !matches!(v.as_str(), "" | "0" | "false"));
        (!offline).then(|| Hub::new(&endpoint(), std::env::var("HF_TOKEN").ok()))
    }

    /// Where this client reads from.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn fetch(&self, repo: &str, file: &str, head: bool) -> Result<Option<ureq::http::Response<ureq::Body>>, HubError> {
        let url = format!("{}/{repo}/resolve/main/{file}", self.endpoint);
        let method = if head { "HEAD" } else { "GET" };
        let response = request(&self.agent, &url, self.token.as_deref(), 0, method)
            .map_err(|e| HubError::Unreachable { url: url.clone(), detail: e.to_string() })?;
        match response.status().as_u16() {
            200..=299 => Ok(Some(response)),
            404 => Ok(None),
            status @ (401 | 403) => {
                Err(HubError::Denied { repo: repo.into(), endpoint: self.endpoint.clone(), status })
            }
            status => Err(HubError::Unreachable { url, detail: format!("HTTP {status}") }),
        }
    }

    /// The facts of `repo` (`org/name`) on its main revision.
    pub fn model_facts(&self, repo: &str) -> Result<ModelFacts, HubError> {
        if let Some(f) = self.facts.lock().unwrap_or_else(|p| p.into_inner()).get(repo) {
            return Ok(f.clone());
        }
        let config_error = |detail: String| HubError::Config { repo: repo.into(), detail };
        let not_found = || HubError::NotFound { repo: repo.into(), endpoint: self.endpoint.clone() };
        let mut config: serde_json::Value = self
            .fetch(repo, "config.json", false)?
            .ok_or_else(not_found)?
            .body_mut()
            .read_json()
            .map_err(|e| config_error(format!("config.json is not JSON: {e}")))?;
        let architecture = config["architectures"][0]
            .as_str()
            .ok_or_else(|| config_error("config.json names no architectures".into()))?
            .to_string();
        let quantization = config["quantization_config"]["quant_method"].as_str().map(str::to_string);
        // Multimodal configs keep the language model's geometry under text_config.
        if config.get("text_config").is_some_and(|t| t.get("num_hidden_layers").is_some()) {
            config = config["text_config"].take();
        }
        let field = |key: &str| config[key].as_u64();
        let need = |key: &str| field(key).ok_or_else(|| config_error(format!("config.json has no {key}")));
        let layers = need("num_hidden_layers")?;
        let heads = need("num_attention_heads")?;
        let kv_heads = field("num_key_value_heads").unwrap_or(heads);
        let head_dim = match field("head_dim") {
            Some(d) => d,
            None => need("hidden_size")? / heads.max(1),
        };
        let context_length = need("max_position_embeddings")?.min(u32::MAX as u64) as u32;
        let weights_bytes = self.weights_bytes(repo)?;
        let facts = ModelFacts {
            hf_id: repo.into(),
            architecture,
            weights_bytes,
            context_length,
            bytes_per_token: 2 * layers * kv_heads * head_dim * 2,
            quantization,
        };
        self.facts.lock().unwrap_or_else(|p| p.into_inner()).insert(repo.into(), facts.clone());
        Ok(facts)
    }

    /// `metadata.total_size` of the safetensors index, or the size of a single `model.safetensors`.
    fn weights_bytes(&self, repo: &str) -> Result<u64, HubError> {
        let config_error = |detail: String| HubError::Config { repo: repo.into(), detail };
        if let Some(mut index) = self.fetch(repo, "model.safetensors.index.json", false)? {
            let index: serde_json::Value = index
                .body_mut()
                .read_json()
                .map_err(|e| config_error(format!("model.safetensors.index.json is not JSON: {e}")))?;
            return index["metadata"]["total_size"]
                .as_u64()
                .filter(|n| *n > 0)
                .ok_or_else(|| config_error("model.safetensors.index.json has no metadata.total_size".into()));
        }
        let single = self
            .fetch(repo, "model.safetensors", true)?
            .ok_or_else(|| config_error("no safetensors weights (neither an index nor model.safetensors)".into()))?;
        // The hub answers a HEAD on an LFS file with its size in X-Linked-Size; a plain server in Content-Length.
        ["x-linked-size", "content-length"]
            .iter()
            .find_map(|h| single.headers().get(*h)?.to_str().ok()?.parse::<u64>().ok())
            .filter(|n| *n > 0)
            .ok_or_else(|| config_error("model.safetensors has no size".into()))
    }
}
