//! `kaito-tune --model DIR --config training_config.yaml --data DATA.jsonl --output DIR`: LoRA fine-tuning on
//! libtorch; writes a PEFT adapter directory, checkpoints per the config's save strategy, and resumes from the last
//! checkpoint in `--output` after a kill.

use clap::Parser;
use kaito_inference::tune::{ConfigFile, Trainer, TuneMetrics, read_dataset};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(name = "kaito-tune", version, about = "LoRA fine-tuning on libtorch, writing a PEFT adapter")]
struct Args {
    /// The base model: a Hugging Face directory.
    #[arg(long)]
    model: PathBuf,
    /// KAITO's tuning ConfigMap value (`training_config:` with LoraConfig, TrainingArguments, DatasetConfig).
    #[arg(long)]
    config: PathBuf,
    /// Training data: JSON Lines, each a `messages` conversation or a prompt/completion pair.
    #[arg(long)]
    data: PathBuf,
    /// Where checkpoints and the final adapter go (KAITO: /mnt/results).
    #[arg(long)]
    output: PathBuf,
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

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let args = Args::parse();
    if let Some(t) = args.threads {
        tch::set_num_threads(t);
    }
    let text = std::fs::read_to_string(&args.config)
        .map_err(|e| anyhow::anyhow!("--config {}: {e}", args.config.display()))?;
    let config: ConfigFile =
        serde_yaml::from_str(&text).map_err(|e| anyhow::anyhow!("--config {}: {e}", args.config.display()))?;
    let (mut trainer, tokenizer) = Trainer::new(&args.model, config.training_config, args.max_length)?;
    let dataset = trainer_dataset(&args, &tokenizer, &trainer)?;
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
    Ok(())
}

fn trainer_dataset(
    args: &Args,
    text: &kaito_inference::text::TextModel,
    trainer: &Trainer,
) -> anyhow::Result<Vec<kaito_inference::tune::Example>> {
    read_dataset(&args.data, text, trainer.dataset_settings(), args.max_length)
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
