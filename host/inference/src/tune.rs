//! `kaito-tune`: LoRA fine-tuning on libtorch, reading KAITO's tuning ConfigMap (`training_config` with
//! `LoraConfig`, `TrainingArguments`, `DatasetConfig`, ...) and writing a PEFT adapter directory that Hugging Face
//! `peft` loads unchanged.
//!
//! The base model is the inference engine's own decoder with its weights frozen; the adapter is applied through the
//! same code that serves adapters, so what was trained is what is served. Loss is cross-entropy on the assistant's
//! tokens only (and the end-of-turn token that closes each answer), with the chat template rendered as at inference.
//! The optimiser is AdamW with a linear learning-rate decay and gradient-norm clipping, as the Hugging Face Trainer's
//! defaults; its state is checkpointed with the adapter, so a killed run resumes where its last checkpoint left off.

use crate::loader;
use crate::lora::{Adapter, Shape, peft_targets};
use crate::models::decoder::{Decoder, Span};
use crate::text::{Message, TextModel};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// KAITO's tuning ConfigMap value (`training_config: ...`).
#[derive(Debug, Deserialize)]
pub struct ConfigFile {
    pub training_config: TrainingConfig,
}

/// The sections of `training_config` this trainer reads; the others (`ModelConfig`, `DataCollator`) name
/// transformers settings with no meaning here and are ignored, saying so in the log.
#[derive(Debug, Default, Deserialize)]
pub struct TrainingConfig {
    #[serde(rename = "ModelConfig", default)]
    pub model: serde_json::Value,
    #[serde(rename = "QuantizationConfig", default)]
    pub quantization: serde_json::Value,
    #[serde(rename = "LoraConfig", default)]
    pub lora: LoraSettings,
    #[serde(rename = "TrainingArguments", default)]
    pub training: TrainingArguments,
    #[serde(rename = "DatasetConfig", default)]
    pub dataset: DatasetSettings,
}

/// `LoraConfig`, with peft's defaults.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct LoraSettings {
    #[serde(default = "eight")]
    pub r: usize,
    #[serde(default = "eight_f")]
    pub lora_alpha: f64,
    #[serde(default)]
    pub lora_dropout: f64,
    /// Default: every attention and MLP projection the model has.
    pub target_modules: Option<Vec<String>>,
    #[serde(default = "none")]
    pub bias: String,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default)]
    pub use_dora: bool,
}

impl Default for LoraSettings {
    fn default() -> Self {
        LoraSettings {
            r: 8,
            lora_alpha: 8.0,
            lora_dropout: 0.0,
            target_modules: None,
            bias: "none".into(),
            use_rslora: false,
            use_dora: false,
        }
    }
}

fn eight() -> usize {
    8
}
fn eight_f() -> f64 {
    8.0
}
fn none() -> String {
    "none".into()
}

/// `TrainingArguments`, with the Hugging Face Trainer's defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct TrainingArguments {
    pub num_train_epochs: f64,
    pub max_steps: i64,
    pub per_device_train_batch_size: usize,
    pub gradient_accumulation_steps: usize,
    pub learning_rate: f64,
    pub weight_decay: f64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_epsilon: f64,
    pub max_grad_norm: f64,
    pub warmup_steps: usize,
    pub lr_scheduler_type: String,
    /// `epoch`, `steps` or `no`.
    pub save_strategy: String,
    pub save_steps: usize,
    pub logging_steps: usize,
    pub seed: u64,
    /// KAITO's output directory; `kaito-tune --output` decides where the adapter goes, so this is only reported.
    pub output_dir: Option<String>,
}

impl Default for TrainingArguments {
    fn default() -> Self {
        TrainingArguments {
            num_train_epochs: 3.0,
            max_steps: -1,
            per_device_train_batch_size: 8,
            gradient_accumulation_steps: 1,
            learning_rate: 5e-5,
            weight_decay: 0.0,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_epsilon: 1e-8,
            max_grad_norm: 1.0,
            warmup_steps: 0,
            lr_scheduler_type: "linear".into(),
            save_strategy: "steps".into(),
            save_steps: 500,
            logging_steps: 1,
            seed: 42,
            output_dir: None,
        }
    }
}

/// `DatasetConfig`, KAITO's names.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct DatasetSettings {
    pub shuffle_dataset: bool,
    pub shuffle_seed: u64,
    /// Share of the examples trained on (the rest would be KAITO's evaluation split, which this trainer does not
    /// run: it is refused below 1).
    pub train_test_split: f64,
    /// Column of the instruction format's prompt (KAITO: `context_column`).
    pub context_column: String,
    /// Column of the instruction format's answer (KAITO: `response_column`).
    pub response_column: String,
    /// Column of the conversational format.
    pub messages_column: String,
}

impl Default for DatasetSettings {
    fn default() -> Self {
        DatasetSettings {
            shuffle_dataset: true,
            shuffle_seed: 42,
            train_test_split: 1.0,
            context_column: "prompt".into(),
            response_column: "completion".into(),
            messages_column: "messages".into(),
        }
    }
}

impl TrainingConfig {
    /// Refuses what this trainer does not do, naming the field.
    pub fn check(&self) -> anyhow::Result<()> {
        let q = &self.quantization;
        if ["load_in_4bit", "load_in_8bit"].iter().any(|k| q[k].as_bool() == Some(true)) {
            anyhow::bail!(
                "QuantizationConfig: QLoRA (4- or 8-bit base weights) is not implemented by kaito-tune; remove QuantizationConfig to train LoRA on full-precision weights"
            );
        }
        let l = &self.lora;
        anyhow::ensure!(l.r > 0, "LoraConfig.r: the rank must be positive");
        anyhow::ensure!((0.0..1.0).contains(&l.lora_dropout), "LoraConfig.lora_dropout: a probability below 1");
        anyhow::ensure!(l.bias == "none", "LoraConfig.bias: {:?}: only \"none\" is trained", l.bias);
        anyhow::ensure!(!l.use_dora, "LoraConfig.use_dora: DoRA is not trained");
        for m in l.target_modules.iter().flatten() {
            anyhow::ensure!(
                peft_targets(m).is_some(),
                "LoraConfig.target_modules: {m:?} is not an attention or MLP projection (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, qkv_proj, gate_up_proj)"
            );
        }
        let t = &self.training;
        anyhow::ensure!(t.per_device_train_batch_size > 0, "TrainingArguments.per_device_train_batch_size: at least 1");
        anyhow::ensure!(t.gradient_accumulation_steps > 0, "TrainingArguments.gradient_accumulation_steps: at least 1");
        anyhow::ensure!(t.learning_rate > 0.0, "TrainingArguments.learning_rate: positive");
        anyhow::ensure!(
            matches!(t.save_strategy.as_str(), "epoch" | "steps" | "no"),
            "TrainingArguments.save_strategy: {:?}: epoch, steps or no",
            t.save_strategy
        );
        anyhow::ensure!(
            matches!(t.lr_scheduler_type.as_str(), "linear" | "constant"),
            "TrainingArguments.lr_scheduler_type: {:?}: linear or constant",
            t.lr_scheduler_type
        );
        anyhow::ensure!(
            self.dataset.train_test_split >= 1.0,
            "DatasetConfig.train_test_split: {}: evaluation splits are not run; use 1",
            self.dataset.train_test_split
        );
        Ok(())
    }
}

/// One training example: its tokens and which of them are trained on (the assistant's).
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub ids: Vec<i64>,
    pub trained: Vec<bool>,
}

/// The dataset files at `path`: the file itself, or every `.jsonl`/`.json`/`.parquet` file in the directory (not hidden, in name
/// order). A directory with none is an error naming what it holds.
pub fn dataset_files(path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    let mut others = Vec::new();
    for entry in std::fs::read_dir(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !entry.file_type()?.is_file() {
            continue;
        }
        if name.ends_with(".jsonl") || name.ends_with(".json") || name.ends_with(".parquet") {
            files.push(entry.path());
        } else {
            others.push(name);
        }
    }
    files.sort();
    anyhow::ensure!(
        !files.is_empty(),
        "{}: no .jsonl, .json or .parquet dataset files (found: {})",
        path.display(),
        if others.is_empty() { "nothing".to_string() } else { others.join(", ") }
    );
    Ok(files)
}

/// Every example of every file at `paths` (each a file or a directory, [`dataset_files`]), in order.
pub fn read_datasets(
    paths: &[PathBuf],
    text: &TextModel,
    cfg: &DatasetSettings,
    max_len: usize,
) -> anyhow::Result<Vec<Example>> {
    let mut out = Vec::new();
    for path in paths {
        for file in dataset_files(path)? {
            out.extend(read_dataset(&file, text, cfg, max_len)?);
        }
    }
    Ok(out)
}

/// The rows of one dataset file as JSON objects, each with where it is (for messages): JSON Lines line by line, or
/// Parquet through the parquet crate's record reader (nested lists and structs, as Hugging Face writes `messages`,
/// become arrays and objects).
pub fn dataset_rows(path: &Path) -> anyhow::Result<Vec<(String, serde_json::Value)>> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or_default().to_ascii_lowercase();
    match ext.as_str() {
        "jsonl" | "json" => {
            let body = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            body.lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
                .map(|(n, line)| {
                    let at = format!("{} line {}", path.display(), n + 1);
                    let row = serde_json::from_str(line).map_err(|e| anyhow::anyhow!("{at}: {e}"))?;
                    Ok((at, row))
                })
                .collect()
        }
        "parquet" => {
            use parquet::file::reader::{FileReader, SerializedFileReader};
            let file = std::fs::File::open(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            let reader = SerializedFileReader::new(file).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            let rows = reader.get_row_iter(None).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            rows.enumerate()
                .map(|(n, row)| {
                    let at = format!("{} row {}", path.display(), n + 1);
                    Ok((at.clone(), row.map_err(|e| anyhow::anyhow!("{at}: {e}"))?.to_json_value()))
                })
                .collect()
        }
        _ => anyhow::bail!("{}: datasets are JSON Lines (.jsonl, .json) or Parquet (.parquet) files", path.display()),
    }
}

/// Examples of one dataset file ([`dataset_rows`]): each row a conversation (`messages`) or an instruction pair
/// (prompt and completion columns), rendered with the model's chat template.
pub fn read_dataset(
    path: &Path,
    text: &TextModel,
    cfg: &DatasetSettings,
    max_len: usize,
) -> anyhow::Result<Vec<Example>> {
    let mut out = Vec::new();
    for (at, row) in dataset_rows(path)? {
        let at = || at.clone();
        let messages: Vec<Message> = if let Some(m) = row.get(&cfg.messages_column) {
            serde_json::from_value(m.clone()).map_err(|e| anyhow::anyhow!("{}: {}: {e}", at(), cfg.messages_column))?
        } else {
            let field = |k: &str| {
                row[k].as_str().map(str::to_string).ok_or_else(|| {
                    anyhow::anyhow!(
                        "{}: neither a {:?} list nor {:?}/{:?} strings",
                        at(),
                        cfg.messages_column,
                        cfg.context_column,
                        cfg.response_column
                    )
                })
            };
            let (prompt, answer) = (field(&cfg.context_column)?, field(&cfg.response_column)?);
            vec![Message::text("user", prompt), Message::text("assistant", answer)]
        };
        let example = tokenize(text, &messages).map_err(|e| anyhow::anyhow!("{}: {e}", at()))?;
        anyhow::ensure!(example.trained.iter().any(|t| *t), "{}: no assistant message to learn from", at());
        anyhow::ensure!(
            example.ids.len() <= max_len,
            "{}: {} tokens, more than the {max_len} allowed",
            at(),
            example.ids.len()
        );
        out.push(example);
    }
    anyhow::ensure!(!out.is_empty(), "{}: no examples", path.display());
    Ok(out)
}

/// The conversation's tokens, marking the assistant's content and the token that ends each of its turns.
pub fn tokenize(text: &TextModel, messages: &[Message]) -> Result<Example, String> {
    let rendered = text.render_chat(messages)?;
    // Byte ranges of each assistant message's content in the rendered text, found in order.
    let mut ranges = Vec::new();
    let mut cursor = 0;
    for m in messages {
        let content = m.content.text()?;
        if content.is_empty() {
            continue;
        }
        let at = rendered[cursor..]
            .find(&content)
            .map(|i| cursor + i)
            .ok_or_else(|| format!("the chat template does not reproduce a {} message verbatim", m.role))?;
        cursor = at + content.len();
        if m.role == "assistant" {
            ranges.push(at..cursor);
        }
    }
    let encoding = text.tokenizer.encode(rendered.as_str(), false).map_err(|e| e.to_string())?;
    let ids: Vec<i64> = encoding.get_ids().iter().map(|&i| i64::from(i)).collect();
    let offsets = encoding.get_offsets();
    let mut trained: Vec<bool> =
        offsets.iter().map(|(start, end)| end > start && ranges.iter().any(|r| r.contains(start))).collect();
    // The end-of-turn token after each answer, so the model learns to stop.
    for i in 1..ids.len() {
        if trained[i - 1] && !trained[i] && text.stop_ids.contains(&(ids[i] as u32)) {
            trained[i] = true;
        }
    }
    Ok(Example { ids, trained })
}

/// One trained projection: PEFT's module name at a layer, `A` [r, in] and `B` [out, r].
struct Param {
    layer: usize,
    module: String,
    a: Tensor,
    b: Tensor,
}

impl Param {
    fn key(&self, half: &str) -> String {
        format!("base_model.model.model.layers.{}.{}.{}.{half}.weight", self.layer, block(&self.module), self.module)
    }
}

/// AdamW moments of one tensor.
struct Moments {
    m: Tensor,
    v: Tensor,
}

/// Progress a checkpoint records.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct TrainerState {
    /// Optimiser steps taken.
    pub global_step: usize,
    pub epoch: usize,
    /// Batches of `epoch` already done.
    pub batch_in_epoch: usize,
}

/// Training progress after an optimiser step (what the log line and the metrics say).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    pub step: usize,
    pub total_steps: usize,
    pub epoch: usize,
    pub loss: f64,
    pub learning_rate: f64,
    pub tokens_per_second: f64,
    pub eta_seconds: f64,
}

/// Prometheus gauges of a training run (`kaito_tune_*`), served by `kaito-tune --metrics-port`.
pub struct TuneMetrics {
    registry: prometheus_client::registry::Registry,
    step: prometheus_client::metrics::gauge::Gauge,
    total_steps: prometheus_client::metrics::gauge::Gauge,
    epoch: prometheus_client::metrics::gauge::Gauge,
    loss: prometheus_client::metrics::gauge::Gauge<f64, std::sync::atomic::AtomicU64>,
    learning_rate: prometheus_client::metrics::gauge::Gauge<f64, std::sync::atomic::AtomicU64>,
    tokens_per_second: prometheus_client::metrics::gauge::Gauge<f64, std::sync::atomic::AtomicU64>,
    eta_seconds: prometheus_client::metrics::gauge::Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl Default for TuneMetrics {
    fn default() -> Self {
        let mut registry = prometheus_client::registry::Registry::with_prefix("kaito_tune");
        let m = TuneMetrics {
            registry: Default::default(),
            step: Default::default(),
            total_steps: Default::default(),
            epoch: Default::default(),
            loss: Default::default(),
            learning_rate: Default::default(),
            tokens_per_second: Default::default(),
            eta_seconds: Default::default(),
        };
        registry.register("step", "Optimiser steps taken", m.step.clone());
        registry.register("total_steps", "Optimiser steps the run takes", m.total_steps.clone());
        registry.register("epoch", "Epoch in progress (from 0)", m.epoch.clone());
        registry.register("loss", "Training loss of the last step", m.loss.clone());
        registry.register("learning_rate", "Learning rate of the last step", m.learning_rate.clone());
        registry.register(
            "tokens_per_second",
            "Training tokens per second since the run started",
            m.tokens_per_second.clone(),
        );
        registry.register("eta_seconds", "Estimated seconds until the run ends", m.eta_seconds.clone());
        TuneMetrics { registry, ..m }
    }
}

impl TuneMetrics {
    /// Records `p`.
    pub fn record(&self, p: &Progress) {
        self.step.set(p.step as i64);
        self.total_steps.set(p.total_steps as i64);
        self.epoch.set(p.epoch as i64);
        self.loss.set(p.loss);
        self.learning_rate.set(p.learning_rate);
        self.tokens_per_second.set(p.tokens_per_second);
        self.eta_seconds.set(p.eta_seconds);
    }

    /// The OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("encoding to a String");
        out
    }
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct Report {
    pub steps: usize,
    pub losses: Vec<f64>,
    pub tokens_per_second: f64,
}

/// A LoRA trainer over a loaded model.
pub struct Trainer {
    model: Decoder,
    shape: Shape,
    config: TrainingConfig,
    targets: Vec<String>,
    params: Vec<Param>,
    moments: Vec<(Moments, Moments)>,
    scale: f64,
    base_model: String,
}

impl Trainer {
    /// Loads the model in `dir` (f32, CPU) and initialises the adapter as peft does (`A` uniform in
    /// ±1/√in, `B` zero, so training starts from the base model).
    pub fn new(dir: &Path, config: TrainingConfig, max_context: usize) -> anyhow::Result<(Trainer, TextModel)> {
        Self::new_on(dir, config, max_context, Device::Cpu)
    }

    /// [`Trainer::new`] on `device` (the weights, the adapter and its optimiser state live there; f32 throughout).
    pub fn new_on(
        dir: &Path,
        config: TrainingConfig,
        max_context: usize,
        device: Device,
    ) -> anyhow::Result<(Trainer, TextModel)> {
        config.check()?;
        if !config.model.is_null() {
            tracing::info!("ModelConfig is read by transformers; kaito-tune trains in float32 and ignores it");
        }
        let loaded = loader::load(dir, device, Kind::Float, max_context)?;
        let shape = Shape::of(&loaded.model);
        let fused = loaded.model.config.architecture() == Some("Phi3ForCausalLM");
        let targets: Vec<String> = match &config.lora.target_modules {
            Some(t) => t.clone(),
            None if fused => ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"].map(String::from).to_vec(),
            None => {
                ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"].map(String::from).to_vec()
            }
        };
        for t in &targets {
            // o_proj and down_proj exist in both layouts; the others in one only.
            let fused_only = matches!(t.as_str(), "qkv_proj" | "gate_up_proj");
            let split_only = matches!(t.as_str(), "q_proj" | "k_proj" | "v_proj" | "gate_proj" | "up_proj");
            anyhow::ensure!(
                !(fused_only && !fused || split_only && fused),
                "LoraConfig.target_modules: {t:?} is not a module of this {} checkpoint",
                loaded.model.config.architecture().unwrap_or("?")
            );
        }
        tch::manual_seed(config.training.seed as i64);
        let r = config.lora.r as i64;
        let mut params = Vec::new();
        for layer in 0..shape.layers() {
            for module in &targets {
                let parts = peft_targets(module).expect("checked");
                let inp = shape.dims(parts[0]).0;
                let out: i64 = parts.iter().map(|m| shape.dims(*m).1).sum();
                let bound = 1.0 / (inp as f64).sqrt();
                let a = Tensor::empty([r, inp], (Kind::Float, device)).uniform_(-bound, bound).set_requires_grad(true);
                let b = Tensor::zeros([out, r], (Kind::Float, device)).set_requires_grad(true);
                params.push(Param { layer, module: module.clone(), a, b });
            }
        }
        let moments = params
            .iter()
            .map(|p| {
                let zero = |t: &Tensor| Moments { m: t.zeros_like(), v: t.zeros_like() };
                (zero(&p.a), zero(&p.b))
            })
            .collect();
        let l = &config.lora;
        let scale = crate::lora::scale(l.lora_alpha, l.r, l.use_rslora);
        let base_model = dir.display().to_string();
        Ok((Trainer { model: loaded.model, shape, config, targets, params, moments, scale, base_model }, loaded.text))
    }

    /// The adapter the parameters make now (scale applied, dropout while `training`).
    fn adapter(&self, training: bool) -> Adapter {
        let mut layers: Vec<[Option<(Tensor, Tensor)>; 7]> =
            (0..self.shape.layers()).map(|_| Default::default()).collect();
        for p in &self.params {
            let parts = peft_targets(&p.module).expect("checked");
            let b = &p.b * self.scale;
            let mut row = 0;
            for m in parts {
                let out = self.shape.dims(*m).1;
                layers[p.layer][*m as usize] = Some((p.a.shallow_clone(), b.narrow(0, row, out)));
                row += out;
            }
        }
        let dropout = if training { self.config.lora.lora_dropout } else { 0.0 };
        Adapter::from_parts("training", self.config.lora.r, layers, dropout)
    }

    /// Mean cross-entropy over the trained tokens of `batch`, with the adapter (gradients flow to it).
    fn loss(&self, batch: &[&Example], training: bool) -> (Tensor, usize) {
        let adapter = self.adapter(training);
        let mut tokens = Vec::new();
        let mut spans = Vec::new();
        let (mut rows, mut targets) = (Vec::new(), Vec::new());
        for ex in batch {
            let start = tokens.len();
            spans.push(Span { start, len: ex.ids.len() });
            tokens.extend_from_slice(&ex.ids);
            for t in 1..ex.ids.len() {
                if ex.trained[t] {
                    rows.push((start + t - 1) as i64);
                    targets.push(ex.ids[t]);
                }
            }
        }
        let mut caches: Vec<_> = batch.iter().map(|_| self.model.new_cache()).collect();
        let adapters: Vec<Option<&Adapter>> = batch.iter().map(|_| Some(&adapter)).collect();
        let logits = self.model.forward_all(&tokens, &spans, &mut caches.iter_mut().collect::<Vec<_>>(), &adapters);
        let device = logits.device();
        let picked = logits.index_select(0, &Tensor::from_slice(&rows).to_device(device));
        let loss = picked.cross_entropy_for_logits(&Tensor::from_slice(&targets).to_device(device));
        (loss, tokens.len())
    }

    /// One optimiser step on `batch` at learning rate `lr` (`step` counts from 1, for Adam's bias correction);
    /// returns the batch's loss. What [`Trainer::train`] does per step, for benchmarks.
    pub fn train_step(&mut self, batch: &[Example], lr: f64, step: usize) -> f64 {
        let refs: Vec<&Example> = batch.iter().collect();
        let (loss, _) = self.loss(&refs, true);
        loss.backward();
        self.step(lr, step);
        loss.double_value(&[])
    }

    /// Trains on `examples`, checkpointing into `output` per the save strategy and resuming from its last
    /// checkpoint when there is one; writes the final adapter to `output`.
    pub fn train(&mut self, examples: &[Example], output: &Path) -> anyhow::Result<Report> {
        self.train_with(examples, output, &mut |_| {})
    }

    /// [`Trainer::train`], telling `on_step` the progress after every optimiser step.
    pub fn train_with(
        &mut self,
        examples: &[Example],
        output: &Path,
        on_step: &mut dyn FnMut(&Progress),
    ) -> anyhow::Result<Report> {
        std::fs::create_dir_all(output)?;
        let t = self.config.training.clone();
        let batch = t.per_device_train_batch_size;
        let batches_per_epoch = examples.len().div_ceil(batch);
        let steps_per_epoch = batches_per_epoch.div_ceil(t.gradient_accumulation_steps);
        let total_steps = if t.max_steps > 0 {
            t.max_steps as usize
        } else {
            (t.num_train_epochs * steps_per_epoch as f64).ceil() as usize
        };
        let epochs = total_steps.div_ceil(steps_per_epoch);
        let mut state = TrainerState::default();
        if let Some(dir) = &last_checkpoint(output) {
            state = self.load_checkpoint(dir)?;
            tracing::info!(checkpoint = %dir.display(), step = state.global_step, "resuming from the last checkpoint");
        }
        let mut losses = Vec::new();
        let started = Instant::now();
        let mut tokens_seen = 0usize;
        let mut accumulated = 0;
        'epochs: for epoch in state.epoch..epochs {
            let order = self.order(examples.len(), epoch);
            let first = if epoch == state.epoch { state.batch_in_epoch } else { 0 };
            for (bi, chunk) in order.chunks(batch).enumerate().skip(first) {
                if state.global_step >= total_steps {
                    break 'epochs;
                }
                let refs: Vec<&Example> = chunk.iter().map(|&i| &examples[i]).collect();
                let (loss, n) = self.loss(&refs, true);
                (&loss / t.gradient_accumulation_steps as f64).backward();
                tokens_seen += n;
                accumulated += 1;
                let end_of_epoch = bi + 1 == batches_per_epoch;
                if accumulated < t.gradient_accumulation_steps && !end_of_epoch {
                    continue;
                }
                accumulated = 0;
                let lr = self.learning_rate(state.global_step, total_steps);
                self.step(lr, state.global_step + 1);
                state.global_step += 1;
                state.epoch = epoch;
                state.batch_in_epoch = bi + 1;
                let value = loss.double_value(&[]);
                losses.push(value);
                let rate = tokens_seen as f64 / started.elapsed().as_secs_f64().max(1e-9);
                let left =
                    started.elapsed().as_secs_f64() / (losses.len() as f64) * (total_steps - state.global_step) as f64;
                on_step(&Progress {
                    step: state.global_step,
                    total_steps,
                    epoch,
                    loss: value,
                    learning_rate: lr,
                    tokens_per_second: rate,
                    eta_seconds: left,
                });
                if t.logging_steps > 0 && state.global_step % t.logging_steps == 0 {
                    tracing::info!(
                        step = state.global_step,
                        of = total_steps,
                        epoch,
                        loss = value,
                        lr,
                        tokens_per_second = rate,
                        eta_seconds = left.round(),
                        "training"
                    );
                }
                if t.save_strategy == "steps" && t.save_steps > 0 && state.global_step % t.save_steps == 0 {
                    self.save_checkpoint(output, state)?;
                }
            }
            state.epoch = epoch + 1;
            state.batch_in_epoch = 0;
            if t.save_strategy == "epoch" {
                self.save_checkpoint(output, state)?;
            }
        }
        self.save_adapter(output)?;
        let tokens_per_second = tokens_seen as f64 / started.elapsed().as_secs_f64().max(1e-9);
        Ok(Report { steps: state.global_step, losses, tokens_per_second })
    }

    /// The example order of `epoch`: shuffled by the dataset seed and the epoch, so a resumed run sees the same.
    fn order(&self, n: usize, epoch: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..n).collect();
        if self.config.dataset.shuffle_dataset {
            // Seeding per epoch keeps the order reproducible across a resume.
            tch::manual_seed((self.config.dataset.shuffle_seed + epoch as u64) as i64);
            let perm = Tensor::randperm(n as i64, (Kind::Int64, Device::Cpu));
            order = Vec::<i64>::try_from(perm).expect("a permutation").into_iter().map(|i| i as usize).collect();
        }
        order
    }

    fn learning_rate(&self, step: usize, total: usize) -> f64 {
        let t = &self.config.training;
        if step < t.warmup_steps {
            return t.learning_rate * (step + 1) as f64 / t.warmup_steps as f64;
        }
        match t.lr_scheduler_type.as_str() {
            "constant" => t.learning_rate,
            _ => {
                let span = total.saturating_sub(t.warmup_steps).max(1);
                t.learning_rate * (1.0 - (step - t.warmup_steps) as f64 / span as f64).max(0.0)
            }
        }
    }

    /// One AdamW step (decoupled weight decay), after clipping the gradients' global norm.
    fn step(&mut self, lr: f64, t: usize) {
        let c = self.config.training.clone();
        let _guard = tch::no_grad_guard();
        let grads: Vec<(Tensor, Tensor)> = self.params.iter().map(|p| (p.a.grad(), p.b.grad())).collect();
        let norm = grads
            .iter()
            .map(|(ga, gb)| {
                ga.square().sum(Kind::Double).double_value(&[]) + gb.square().sum(Kind::Double).double_value(&[])
            })
            .sum::<f64>()
            .sqrt();
        let clip = if c.max_grad_norm > 0.0 && norm > c.max_grad_norm { c.max_grad_norm / (norm + 1e-6) } else { 1.0 };
        let (b1, b2) = (c.adam_beta1, c.adam_beta2);
        let (bc1, bc2) = (1.0 - b1.powi(t as i32), 1.0 - b2.powi(t as i32));
        for (p, ((ga, gb), (ma, mb))) in self.params.iter_mut().zip(grads.iter().zip(self.moments.iter_mut())) {
            for (param, grad, mom) in [(&mut p.a, ga, ma), (&mut p.b, gb, mb)] {
                let g = grad * clip;
                mom.m = &mom.m * b1 + &g * (1.0 - b1);
                mom.v = &mom.v * b2 + g.square() * (1.0 - b2);
                let update = (&mom.m / bc1) / ((&mom.v / bc2).sqrt() + c.adam_epsilon);
                let next = &*param * (1.0 - lr * c.weight_decay) - update * lr;
                param.copy_(&next);
                let mut grad = param.grad();
                let _ = grad.zero_();
            }
        }
    }

    /// Writes the adapter in PEFT's format (`adapter_config.json`, `adapter_model.safetensors`) to `dir`.
    pub fn save_adapter(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        let l = &self.config.lora;
        let config = serde_json::json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": self.base_model,
            "r": l.r,
            "lora_alpha": l.lora_alpha,
            "lora_dropout": l.lora_dropout,
            "target_modules": self.targets,
            "bias": "none",
            "use_rslora": l.use_rslora,
            "use_dora": false,
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "modules_to_save": null,
            "layers_to_transform": null,
            "rank_pattern": {},
            "alpha_pattern": {},
        });
        let tensors: Vec<(String, Tensor)> = self
            .params
            .iter()
            .flat_map(|p| [(p.key("lora_A"), on_cpu(&p.a)), (p.key("lora_B"), on_cpu(&p.b))])
            .collect();
        // Through temporary names: a kill mid-write leaves the previous files, never half of new ones.
        let weights = dir.join("adapter_model.safetensors");
        let tmp = dir.join(".adapter_model.safetensors.partial");
        Tensor::write_safetensors(&tensors, &tmp)?;
        std::fs::rename(&tmp, &weights)?;
        let tmp = dir.join(".adapter_config.json.partial");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&config)?)?;
        std::fs::rename(&tmp, dir.join("adapter_config.json"))?;
        Ok(())
    }

    /// `output/checkpoint-<step>`: the adapter, the optimiser's moments and the trainer state; written beside
    /// and renamed into place, so a checkpoint directory is whole or absent.
    fn save_checkpoint(&self, output: &Path, state: TrainerState) -> anyhow::Result<()> {
        let dir = output.join(format!("checkpoint-{}", state.global_step));
        let tmp = output.join(format!(".checkpoint-{}.partial", state.global_step));
        let _ = std::fs::remove_dir_all(&tmp);
        self.save_adapter(&tmp)?;
        let moments: Vec<(String, Tensor)> = self
            .params
            .iter()
            .zip(&self.moments)
            .flat_map(|(p, (ma, mb))| {
                [
                    (format!("{}.m", p.key("lora_A")), on_cpu(&ma.m)),
                    (format!("{}.v", p.key("lora_A")), on_cpu(&ma.v)),
                    (format!("{}.m", p.key("lora_B")), on_cpu(&mb.m)),
                    (format!("{}.v", p.key("lora_B")), on_cpu(&mb.v)),
                ]
            })
            .collect();
        Tensor::write_safetensors(&moments, tmp.join("optimizer.safetensors"))?;
        std::fs::write(tmp.join("trainer_state.json"), serde_json::to_vec_pretty(&state)?)?;
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&tmp, &dir)?;
        tracing::info!(checkpoint = %dir.display(), "checkpoint saved");
        Ok(())
    }

    fn load_checkpoint(&mut self, dir: &Path) -> anyhow::Result<TrainerState> {
        let weights: BTreeMap<String, Tensor> =
            Tensor::read_safetensors(dir.join("adapter_model.safetensors"))?.into_iter().collect();
        let moments: BTreeMap<String, Tensor> =
            Tensor::read_safetensors(dir.join("optimizer.safetensors"))?.into_iter().collect();
        let _guard = tch::no_grad_guard();
        for (p, (ma, mb)) in self.params.iter_mut().zip(self.moments.iter_mut()) {
            let (key_a, key_b) = (p.key("lora_A"), p.key("lora_B"));
            for (param, mom, key) in [(&mut p.a, ma, key_a), (&mut p.b, mb, key_b)] {
                let saved = weights.get(&key).ok_or_else(|| anyhow::anyhow!("{}: no {key}", dir.display()))?;
                anyhow::ensure!(
                    saved.size() == param.size(),
                    "{}: {key} has another shape; the config changed",
                    dir.display()
                );
                param.copy_(saved);
                let device = param.device();
                let moment = |k: &str| {
                    moments
                        .get(&format!("{key}.{k}"))
                        .map(|t| t.to_device(device))
                        .ok_or_else(|| anyhow::anyhow!("{}: no moment {key}.{k}", dir.display()))
                };
                mom.m = moment("m")?;
                mom.v = moment("v")?;
            }
        }
        Ok(serde_json::from_slice(&std::fs::read(dir.join("trainer_state.json"))?)?)
    }

    /// The model (to generate with the adapter in tests).
    pub fn model(&self) -> &Decoder {
        &self.model
    }

    /// How the dataset is read.
    pub fn dataset_settings(&self) -> &DatasetSettings {
        &self.config.dataset
    }
}

/// A detached, contiguous CPU copy (safetensors files are written from host memory).
fn on_cpu(t: &Tensor) -> Tensor {
    t.detach().to_device(Device::Cpu).contiguous()
}

fn block(module: &str) -> &'static str {
    if ["gate_proj", "up_proj", "down_proj", "gate_up_proj"].contains(&module) { "mlp" } else { "self_attn" }
}

/// The highest-numbered whole `checkpoint-N` under `output`.
pub fn last_checkpoint(output: &Path) -> Option<PathBuf> {
    std::fs::read_dir(output)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let n: usize = name.strip_prefix("checkpoint-")?.parse().ok()?;
            e.path().join("trainer_state.json").is_file().then_some((n, e.path()))
        })
        .max_by_key(|(n, _)| *n)
        .map(|(_, p)| p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kaito_configs_parse_and_what_is_not_done_is_refused_by_field() {
        let yaml = r#"
training_config:
  ModelConfig:
    torch_dtype: "bfloat16"
    local_files_only: true
    device_map: "auto"
  QuantizationConfig:
    load_in_4bit: false
  LoraConfig:
    r: 16
    lora_alpha: 32
    lora_dropout: 0.05
    target_modules: ["q_proj", "v_proj"]
  TrainingArguments:
    output_dir: "/mnt/results"
    save_strategy: "epoch"
    per_device_train_batch_size: 1
    num_train_epochs: 2
  DataCollator:
    mlm: true
  DatasetConfig:
    shuffle_dataset: true
    train_test_split: 1
"#;
        let c: ConfigFile = serde_yaml::from_str(yaml).unwrap();
        let t = c.training_config;
        assert!(t.check().is_ok());
        assert_eq!((t.lora.r, t.lora.lora_alpha, t.training.per_device_train_batch_size), (16, 32.0, 1));
        assert_eq!(t.training.learning_rate, 5e-5, "Hugging Face's default");
        for (bad, field) in [
            ("  QuantizationConfig:\n    load_in_4bit: false", "  QuantizationConfig:\n    load_in_4bit: true"),
            ("    target_modules: [\"q_proj\", \"v_proj\"]", "    target_modules: [\"lm_head\"]"),
            ("    train_test_split: 1", "    train_test_split: 0.8"),
            ("    save_strategy: \"epoch\"", "    save_strategy: \"best\""),
        ]
        .map(|(from, to)| (yaml.replace(from, to), to.trim().split(':').next().unwrap().trim().to_string()))
        {
            let c: ConfigFile = serde_yaml::from_str(&bad).unwrap();
            let e = c.training_config.check().unwrap_err().to_string();
            let section = ["QuantizationConfig", "target_modules", "train_test_split", "save_strategy"];
            assert!(section.iter().any(|s| e.contains(s)), "{field}: {e}");
        }
    }
}
