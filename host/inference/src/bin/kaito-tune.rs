//! `kaito-tune --model DIR|ORG/NAME|oci://REF [--config training_config.yaml] --data FILE|DIR|URL|oci://REF --output
//! DIR [--push oci://REF]`: LoRA fine-tuning on libtorch; writes a PEFT adapter directory, checkpoints per the
//! config's save strategy, resumes from the last checkpoint in `--output` after a kill, and can push the adapter.

use clap::Parser;
use kaito_inference::download;
use kaito_inference::tune::{ConfigFile, Trainer, TuneMetrics, read_datasets};
use std::path::{Path, PathBuf};

#[derive(Debug, Parser)]
#[command(name = "kaito-tune", version, about = "LoRA fine-tuning on libtorch, writing a PEFT adapter")]
struct Args {
    /// The base model: a Hugging Face directory, a hub id (`org/name`, downloaded) or `oci://REF` (a ModelPack
    /// artifact `kaito models push` made).
    #[arg(long)]
    model: String,
    /// Where downloads (the model, datasets, pulled artifacts) go.
    #[arg(long, env = "KAITO_DOWNLOAD_DIR", default_value = "/tmp/kaito-models")]
    download_dir: PathBuf,
    /// Hub revision of `--model`.
    #[arg(long, default_value = "main")]
    revision: String,
    /// KAITO's tuning ConfigMap value (`training_config:` with LoraConfig, TrainingArguments, DatasetConfig);
    /// without it, KAITO's LoRA defaults (r 8, alpha 8, no dropout, batch 1, 3 epochs, no checkpoints).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Training data, repeatable: a JSON Lines file, a directory of them, an http(s) URL (downloaded) or `oci://REF`
    /// (an artifact of data files, pulled). Each line is a `messages` conversation or a prompt/completion pair.
    #[arg(long, required = true, num_args = 1)]
    data: Vec<String>,
    /// Where checkpoints and the final adapter go (KAITO: /mnt/output).
    #[arg(long)]
    output: PathBuf,
    /// Push the final adapter as an OCI artifact here (`oci://REGISTRY/REPOSITORY:TAG`) once trained.
    #[arg(long, value_name = "oci://REF")]
    push: Option<String>,
    /// Docker config files with registry credentials (repeatable; merged, the first naming a registry wins).
    #[arg(long)]
    registry_config: Vec<PathBuf>,
    /// Speak plain HTTP to registries (a local registry without TLS).
    #[arg(long)]
    plain_http: bool,
    /// auto (the first GPU when there is one), cpu, cuda, cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Longest example, in tokens.
    #[arg(long, default_value_t = 2048)]
    max_length: usize,
    /// Intra-op CPU threads (default: libtorch's choice).
    #[arg(long)]
    threads: Option<i32>,
    /// Serve Prometheus metrics (`kaito_tune_step`, `_loss`, `_tokens_per_second`, `_eta_seconds`, ...) on
    /// this port at /metrics while training.
    #[arg(long)]
    metrics_port: Option<u16>,
}

/// KAITO's LoRA template (its `lora-params-template` ConfigMap), used when no `--config` is given.
const KAITO_LORA_DEFAULTS: &str = "training_config:
  LoraConfig: {r: 8, lora_alpha: 8, lora_dropout: 0.0}
  TrainingArguments: {save_strategy: \"no\", per_device_train_batch_size: 1}
  DatasetConfig: {shuffle_dataset: true, train_test_split: 1}
";

fn main() -> anyhow::Result<()> {
    kaito_inference::init_tool_logging();
    let args = Args::parse();
    if let Some(t) = args.threads {
        tch::set_num_threads(t);
    }
    let (text, source) = match &args.config {
        Some(path) => (
            std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("--config {}: {e}", path.display()))?,
            path.display().to_string(),
        ),
        None => (KAITO_LORA_DEFAULTS.to_string(), "KAITO's LoRA defaults".to_string()),
    };
    let config: ConfigFile = serde_yaml::from_str(&text).map_err(|e| anyhow::anyhow!("--config {source}: {e}"))?;
    if let Some(dir) = config.training_config.training.output_dir.as_deref().filter(|d| Path::new(d) != args.output) {
        tracing::info!(output_dir = dir, output = %args.output.display(), "TrainingArguments.output_dir is replaced by --output");
    }
    let mut options = kaito_oci::Options { plain_http: args.plain_http, ..kaito_oci::Options::new() };
    if !args.registry_config.is_empty() {
        let merged = args.download_dir.join(".registry-config.json");
        download::merge_docker_configs(&args.registry_config, &merged)?;
        options.docker_config = Some(merged);
    }
    // Pulls run on this runtime; training stays on the main thread.
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let _entered = runtime.enter();
    let fetched = kaito_inference::metrics::Metrics::default();
    let model = download::resolve_model(&args.model, &args.revision, &args.download_dir, options.clone(), 4, &fetched)?;
    let mut data = Vec::new();
    for (i, d) in args.data.iter().enumerate() {
        let into = args.download_dir.join("data").join(i.to_string());
        data.push(if let Some(reference) = d.strip_prefix(kaito_oci::SCHEME) {
            download::pull_oci(reference, &into, options.clone(), 4, &fetched)?
        } else if d.starts_with("https://") || d.starts_with("http://") {
            download::fetch_url(d, &into)?
        } else {
            PathBuf::from(d)
        });
    }
    let device = kaito_inference::loader::device(&args.device)?;
    let (mut trainer, tokenizer) = Trainer::new_on(&model, config.training_config, args.max_length, device)?;
    let dataset = read_datasets(&data, &tokenizer, trainer.dataset_settings(), args.max_length)?;
    let metrics = std::sync::Arc::new(TuneMetrics::default());
    if let Some(port) = args.metrics_port {
        serve_metrics(port, metrics.clone())?;
    }
    let report = trainer.train_with(&dataset, &args.output, &mut |p| metrics.record(p))?;
    tracing::info!(
        steps = report.steps,
        final_loss = report.losses.last().copied().unwrap_or(f64::NAN),
        tokens_per_second = report.tokens_per_second,
        output = %args.output.display(),
        "adapter written"
    );
    if let Some(target) = &args.push {
        let pinned = runtime.block_on(push_adapter(&args.output, target, options))?;
        tracing::info!(reference = %pinned, "adapter pushed");
        println!("{pinned}");
    }
    Ok(())
}

/// Pushes the final adapter files of `output` (not its checkpoints) as a ModelPack artifact; returns the reference
/// pinned by digest.
async fn push_adapter(output: &Path, target: &str, options: kaito_oci::Options) -> anyhow::Result<String> {
    let reference = kaito_oci::parse(target)?;
    let staging = output.join(".push");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging)?;
    for file in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(output.join(file), staging.join(file))?;
    }
    let name = reference.repository().rsplit('/').next().unwrap_or_default().to_string();
    let oci = kaito_oci::Oci::new(options);
    let pinned = oci.push_dir(&staging, &reference, &name, kaito_oci::Compression::Zstd).await?;
    std::fs::remove_dir_all(&staging)?;
    Ok(pinned)
}

/// Serves `metrics` at `http://0.0.0.0:PORT/metrics` from a thread of its own while the trainer runs.
fn serve_metrics(port: u16, metrics: std::sync::Arc<TuneMetrics>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let listener = runtime.block_on(tokio::net::TcpListener::bind(("0.0.0.0", port)))?;
    std::thread::Builder::new().name("metrics".into()).spawn(move || {
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        metrics.encode(),
                    )
                }
            }),
        );
        if let Err(e) = runtime.block_on(axum::serve(listener, app).into_future()) {
            tracing::error!(error = %e, "the metrics server stopped");
        }
    })?;
    Ok(())
}
