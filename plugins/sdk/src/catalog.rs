//! Table-driven presets: a family is a static list of [`ModelSpec`]s, and
//! [`plan`] does the resolution, sizing and runtime choice for all of them.

use crate::runtime::{self, Runtime};
use crate::sizing::{self, DEFAULT_MAX_MODEL_LEN, GIB, SizingInput};
use crate::{ErrorKind, GpuShape, ModelFacts, ModelInfo, PlanRequest, PluginError, PresetPlan, ResourcePlan};

/// Extra disk reserved beside the weights for the download cache (KAITO: +80 GiB).
pub const DISK_HEADROOM_GIB: u64 = 80;

/// Shape of a model's KV cache, for the bytes it needs per token.
#[derive(Debug, Clone, Copy)]
pub enum KvCache {
    /// Multi-head or grouped-query attention: K and V per KV head.
    Gqa { layers: u32, kv_heads: u32, head_dim: u32 },
    /// DeepSeek-style multi-head latent attention: one compressed latent plus the RoPE part.
    Mla { layers: u32, kv_lora_rank: u32, rope_dim: u32 },
    /// Elements per token as the host computed them from a Hugging Face config (model facts).
    Elements(u64),
}

impl KvCache {
    /// Elements cached per token, over all layers.
    pub fn elements_per_token(self) -> u64 {
        match self {
            KvCache::Gqa { layers, kv_heads, head_dim } => 2 * layers as u64 * kv_heads as u64 * head_dim as u64,
            KvCache::Mla { layers, kv_lora_rank, rope_dim } => layers as u64 * (kv_lora_rank as u64 + rope_dim as u64),
            KvCache::Elements(n) => n,
        }
    }
}

/// Bytes per cached element (fp16/bf16, as KAITO assumes).
pub const KV_DTYPE_BYTES: u64 = 2;

/// Static description of one model, written once per model in a family file.
#[derive(Debug, Clone, Copy)]
pub struct ModelSpec {
    pub name: &'static str,
    pub aliases: &'static [&'static str],
    pub hf_id: &'static str,
    pub family: &'static str,
    pub architecture: &'static str,
    /// Weights size in hundredths of a GiB, as catalogs list it (27.31 GiB = 2731).
    pub weights_centi_gib: u64,
    pub context_length: u32,
    pub kv: KvCache,
    pub license: &'static str,
    pub runtimes: &'static [Runtime],
    pub chat_template: Option<&'static str>,
    pub tool_call_parser: Option<&'static str>,
    pub reasoning_parser: Option<&'static str>,
    pub supports_tuning: bool,
    pub supports_multi_node: bool,
    pub supports_lora: bool,
    /// Extra vLLM arguments this model needs (e.g. Mistral's native format).
    pub vllm_args: &'static [&'static str],
}

/// Parsers of a model for vLLM: (tool-call, reasoning).
pub type Parsers = (Option<&'static str>, Option<&'static str>);

impl ModelSpec {
    /// The model name KAITO serves: the last segment of the Hugging Face id, lower-cased (`gemma-3-4b-it`,
    /// `mistral-7b-v0.3`). Clients written for KAITO call this name.
    pub fn served_name(&self) -> String {
        served_name(self.hf_id)
    }

    /// Every name the runtime answers to: KAITO's served name first, then the preset name if it differs.
    pub fn served_names(&self) -> Vec<String> {
        let mut names = vec![self.served_name()];
        if !names.contains(&self.name.to_string()) {
            names.push(self.name.to_string());
        }
        names
    }

    /// A model KAITO serves by Hugging Face id only: vLLM, multi-node, no tuning,
    /// no LoRA; its preset name is the lowercase HF id.
    #[allow(clippy::too_many_arguments)]
    pub const fn vllm_only(
        name: &'static str,
        hf_id: &'static str,
        family: &'static str,
        architecture: &'static str,
        weights_centi_gib: u64,
        context_length: u32,
        kv: KvCache,
        license: &'static str,
        parsers: Parsers,
    ) -> ModelSpec {
        ModelSpec {
            name,
            aliases: &[],
            hf_id,
            family,
            architecture,
            weights_centi_gib,
            context_length,
            kv,
            license,
            runtimes: &[Runtime::Vllm],
            chat_template: None,
            tool_call_parser: parsers.0,
            reasoning_parser: parsers.1,
            supports_tuning: false,
            supports_multi_node: true,
            supports_lora: false,
            vllm_args: &[],
        }
    }

    /// A model no family catalogs, from the facts the host read off its Hugging Face config: served by vLLM as KAITO
    /// serves such models, named by its lower-cased id. Its strings are leaked: a plugin instance lives for one call.
    pub fn from_facts(facts: &ModelFacts) -> ModelSpec {
        let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
        ModelSpec::vllm_only(
            leak(facts.hf_id.to_ascii_lowercase()),
            leak(facts.hf_id.clone()),
            "hub",
            leak(facts.architecture.clone()),
            facts.weights_bytes.saturating_mul(100).div_ceil(GIB),
            facts.context_length,
            KvCache::Elements(facts.bytes_per_token / KV_DTYPE_BYTES),
            // Unknown: a config carries no license.
            "",
            (None, None),
        )
    }

    /// Weights size in bytes.
    pub fn weights_bytes(&self) -> u64 {
        self.weights_centi_gib * GIB / 100
    }

    /// Disk to reserve for the weights cache: weights + 80 GiB, whole GiB rounded down (as KAITO).
    pub fn disk_bytes(&self) -> u64 {
        (self.weights_centi_gib / 100 + DISK_HEADROOM_GIB) * GIB
    }

    /// KV-cache bytes per token.
    pub fn bytes_per_token(&self) -> u64 {
        self.kv.elements_per_token() * KV_DTYPE_BYTES
    }

    /// Whether `query` (any case) names this model.
    pub fn matches(&self, query: &str) -> bool {
        let q = query.trim().to_ascii_lowercase();
        q == self.name || q == self.hf_id.to_ascii_lowercase() || self.aliases.iter().any(|a| *a == q)
    }

    /// The contract's view of this model.
    pub fn info(&self) -> ModelInfo {
        ModelInfo {
            name: self.name.into(),
            aliases: self.aliases.iter().map(|a| a.to_string()).collect(),
            hf_id: self.hf_id.into(),
            family: self.family.into(),
            architecture: self.architecture.into(),
            weights_bytes: self.weights_bytes(),
            disk_bytes: self.disk_bytes(),
            context_length: self.context_length,
            bytes_per_token: self.bytes_per_token(),
            license: self.license.into(),
            runtimes: self.runtimes.iter().map(|r| r.name().to_string()).collect(),
            chat_template: self.chat_template.map(Into::into),
            tool_call_parser: self.tool_call_parser.map(Into::into),
            reasoning_parser: self.reasoning_parser.map(Into::into),
            supports_tuning: self.supports_tuning,
            supports_multi_node: self.supports_multi_node,
            supports_lora: self.supports_lora,
        }
    }
}

/// Contract view of a whole table.
pub fn models(specs: &[ModelSpec]) -> Vec<ModelInfo> {
    specs.iter().map(ModelSpec::info).collect()
}

/// Levenshtein distance, for "did you mean" lists.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Up to `n` names closest to `query`, nearest first (ties by name).
pub fn nearest<'a>(query: &str, names: impl IntoIterator<Item = &'a str>, n: usize) -> Vec<&'a str> {
    let q = query.to_ascii_lowercase();
    let mut scored: Vec<(usize, &str)> =
        names.into_iter().map(|c| (edit_distance(&q, &c.to_ascii_lowercase()), c)).collect();
    scored.sort();
    scored.dedup_by(|a, b| a.1 == b.1);
    scored.into_iter().take(n).map(|(_, c)| c).collect()
}

/// Find the model a request names, or say which names are close.
pub fn resolve<'a>(specs: &'a [ModelSpec], query: &str) -> Result<&'a ModelSpec, PluginError> {
    resolve_at(specs, query, "inference.preset.name")
}

/// [`resolve`] for a name the Workspace gives at `field`.
pub fn resolve_at<'a>(specs: &'a [ModelSpec], query: &str, field: &str) -> Result<&'a ModelSpec, PluginError> {
    if let Some(spec) = specs.iter().find(|s| s.matches(query)) {
        return Ok(spec);
    }
    let close = nearest(query, specs.iter().flat_map(|s| std::iter::once(s.name).chain(s.aliases.iter().copied())), 3);
    Err(PluginError::new(
        ErrorKind::UnknownModel,
        field,
        format!("this plugin has no model named {query:?}"),
        Some(format!("closest names here: {}", close.join(", "))),
    ))
}

/// KAITO's served model name for a Hugging Face id: its last `/` segment, lower-cased.
pub fn served_name(hf_id: &str) -> String {
    hf_id.rsplit('/').next().unwrap_or(hf_id).to_lowercase()
}

/// Resolve, size and plan one request against a family table.
pub fn plan(specs: &[ModelSpec], request: PlanRequest, shape: GpuShape) -> Result<PresetPlan, PluginError> {
    plan_gated(specs, &[], request, shape)
}

/// [`plan`] for a family some of whose models (by Hugging Face id) the hub serves only with a token, KAITO's
/// `downloadAuthRequired`: a Workspace for one of them must name the Secret holding it, as KAITO's webhook demands.
pub fn plan_gated(
    specs: &[ModelSpec],
    gated: &[&str],
    request: PlanRequest,
    shape: GpuShape,
) -> Result<PresetPlan, PluginError> {
    // A catalog entry wins; the host's facts plan a model no family lists.
    let from_facts;
    let spec = match (resolve(specs, &request.model), &request.model_facts) {
        (Ok(spec), _) => spec,
        (Err(_), Some(facts)) if facts.hf_id.eq_ignore_ascii_case(&request.model) => {
            from_facts = ModelSpec::from_facts(facts);
            &from_facts
        }
        (Err(e), _) => return Err(e),
    };
    if gated.contains(&spec.hf_id) && request.model_access_secret.as_deref().is_none_or(str::is_empty) {
        return Err(PluginError::new(
            ErrorKind::InvalidInput,
            "inference.preset.presetOptions.modelAccessSecret",
            format!("{} is gated on Hugging Face: its weights download only with a token", spec.hf_id),
            Some(
                "create a Secret with the key HF_TOKEN and name it in inference.preset.presetOptions.modelAccessSecret"
                    .into(),
            ),
        ));
    }
    if request.workspace.is_empty() {
        return Err(PluginError::invalid("metadata.name", "the Workspace has no name"));
    }
    if request.min_nodes == 0 {
        return Err(PluginError::invalid("resource.count", "node count must be at least 1"));
    }
    if shape.max_nodes == 0 {
        return Err(PluginError::invalid("resource.instanceType", "no nodes are available for this Workspace"));
    }
    if let Some(len) = request.max_model_len.filter(|l| *l == 0 || *l > spec.context_length) {
        return Err(PluginError::new(
            ErrorKind::InvalidInput,
            "inference.config",
            format!("max-model-len {len} is outside 1..={} for {}", spec.context_length, spec.name),
            Some(format!("set vllm.max-model-len to at most {}", spec.context_length)),
        ));
    }
    for (i, a) in request.adapters.iter().enumerate() {
        if a.image.as_deref().is_none_or(|img| img.trim().is_empty()) {
            return Err(PluginError::new(
                ErrorKind::Unsupported,
                &format!("inference.adapters[{i}].source.volumeSource"),
                "adapters from a volume are not rendered yet",
                Some("push the adapter directory with `kaito models push DIR REF` and name REF in source.image".into()),
            ));
        }
        if let Some(s) = a.strength.as_deref()
            && !s.trim().parse::<f64>().is_ok_and(|v| (0.0..=1.0).contains(&v))
        {
            return Err(PluginError::invalid(
                &format!("inference.adapters[{i}].strength"),
                "the strength must be a number between 0 and 1",
            ));
        }
    }
    let sizing = sizing::estimate(&SizingInput {
        weights_bytes: spec.weights_bytes(),
        bytes_per_token: spec.bytes_per_token(),
        max_model_len: request.max_model_len.unwrap_or(DEFAULT_MAX_MODEL_LEN),
        shape: shape.clone(),
        supports_multi_node: spec.supports_multi_node,
    })?;
    let (runtime, notes) = runtime::choose(spec, &request, &shape, &sizing)?;
    let mut sizing = sizing;
    if runtime == Runtime::Tch {
        // The tch server runs one process on one GPU: no parallelism to report.
        sizing.parallelism = crate::Parallelism { tensor: 1, pipeline: 1, data: 1 };
    }
    let workload = runtime::workload(runtime, spec, &request, &shape, &sizing);
    Ok(PresetPlan {
        runtime: runtime.name().into(),
        notes,
        resources: ResourcePlan {
            node_count: sizing.node_count,
            gpus_per_node: shape.gpus_per_node,
            gpu_memory_bytes: sizing.model_bytes,
            disk_bytes: spec.disk_bytes(),
            parallelism: sizing.parallelism,
        },
        workload,
    })
}

#[cfg(test)]
mod tests {
    use super::served_name;

    /// The names KAITO v0.12 serves for these Hugging Face ids (the last segment, lower-cased).
    #[test]
    fn served_names_are_kaitos() {
        assert_eq!(served_name("google/gemma-3-4b-it"), "gemma-3-4b-it");
        assert_eq!(served_name("mistralai/Mistral-7B-v0.3"), "mistral-7b-v0.3");
        assert_eq!(served_name("mistralai/Ministral-3-8B-Instruct-2512"), "ministral-3-8b-instruct-2512");
        assert_eq!(served_name("Qwen/Qwen3-8B-AWQ"), "qwen3-8b-awq");
        assert_eq!(served_name("no-org"), "no-org");
    }
}
