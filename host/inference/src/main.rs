//! `kaito-inference --model DIR|HF_ID`: serve a model over the OpenAI API.

use clap::Parser;
use kaito_inference::engine::{Engine, EngineConfig};
use kaito_inference::metrics::Metrics;
use kaito_inference::server::{AppState, Lora, Serving, router};
use kaito_inference::{download, loader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

#[derive(Debug, Parser)]
#[command(name = "kaito-inference", version, about = "OpenAI-compatible inference on libtorch")]
struct Args {
    /// A Hugging Face model directory, a hub id (org/name) to download, or `oci://REF` (a model artifact, as
    /// `kaito models push` makes) to pull.
    #[arg(long)]
    model: String,
    /// Talk to the model's registry over plain HTTP (a registry without TLS).
    #[arg(long)]
    plain_http: bool,
    /// Docker config with registry credentials for `--model oci://`.
    #[arg(long, value_name = "FILE", env = "KAITO_REGISTRY_CONFIG")]
    registry_config: Option<PathBuf>,
    /// Layers of an `oci://` model pulled at once.
    #[arg(long, default_value_t = 4)]
    pull_concurrency: usize,
    /// Names clients use in `model`, as with vLLM: the first is reported, the others are accepted too (default:
    /// the directory or hub id).
    #[arg(long, num_args = 1..)]
    served_model_name: Vec<String>,
    #[arg(long, default_value = "0.0.0.0")]
    host: String,
    #[arg(long, default_value_t = 5000)]
    port: u16,
    /// auto (bf16 on GPU, f32 on CPU), float32, float16, bfloat16.
    #[arg(long, default_value = "auto")]
    dtype: String,
    /// Weight-only quantization of the projections and the output head: none, or int8 (per output channel,
    /// libtorch's int8 kernel with bf16 activations; CPU). A quarter of f32's weight bytes per token.
    #[arg(long, default_value = "none")]
    quantization: String,
    /// auto, cpu, cuda, cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Where hub downloads go.
    #[arg(long, env = "KAITO_DOWNLOAD_DIR", default_value = "/tmp/kaito-models")]
    download_dir: PathBuf,
    /// Hub revision to download.
    #[arg(long, default_value = "main")]
    revision: String,
    /// Longest prompt plus output (default and cap: the model's max_position_embeddings).
    #[arg(long)]
    max_model_len: Option<usize>,
    /// Sequences decoded together.
    #[arg(long, default_value_t = 32)]
    max_num_seqs: usize,
    /// Requests allowed to wait; more get HTTP 429.
    #[arg(long, default_value_t = 256)]
    max_waiting: usize,
    /// Tokens per engine step (decode tokens plus prompt chunks).
    #[arg(long, default_value_t = 512)]
    max_num_batched_tokens: usize,
    /// KV cache bound, in tokens across all sequences.
    #[arg(long, default_value_t = 32_768)]
    kv_cache_tokens: usize,
    /// Serve LoRA adapters (as vLLM's flag): needed for --lora-modules and runtime loading.
    #[arg(long)]
    enable_lora: bool,
    /// Adapters served from the start, each `NAME=PATH` or vLLM's JSON `{"name": ..., "path": ...}`; PATH is a
    /// PEFT adapter directory or `oci://REF` (an artifact `kaito models push` made).
    #[arg(long, num_args = 1.., value_name = "NAME=PATH")]
    lora_modules: Vec<String>,
    /// Serve POST /v1/load_lora_adapter and /v1/unload_lora_adapter (they load paths the caller names; also
    /// turned on by VLLM_ALLOW_RUNTIME_LORA_UPDATING=true, as in vLLM).
    #[arg(long)]
    allow_runtime_lora_updating: bool,
    /// How the model writes tool calls, by vLLM's parser names (hermes, llama3_json, mistral); without it, requests
    /// with tools are refused. The preset's plan passes the one its model uses.
    #[arg(long, value_name = "NAME")]
    tool_call_parser: Option<String>,
    /// vLLM's switch for `tool_choice: auto`; accepted for the same command lines, as auto is served whenever a
    /// parser is named.
    #[arg(long)]
    enable_auto_tool_choice: bool,
    /// Intra-op CPU threads of the engine (default: the CPUs this process may use, its cgroup's quota included).
    #[arg(long)]
    threads: Option<i32>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let args = Args::parse();
    // Intra-op threads: as asked, else the CPUs this process may use (the pod's CPU limit through the cgroup quota,
    // which std reads, not the node's cores libtorch would count).
    let threads = match args.threads {
        Some(t) => t,
        None => std::thread::available_parallelism().map_or(1, |n| n.get() as i32),
    };
    let device = loader::device(&args.device)?;
    let kind = loader::kind(&args.dtype, device)?;
    let quantization = kaito_inference::models::decoder::Quantization::parse(&args.quantization)?;
    let mut names = args.served_model_name.clone().into_iter();
    let name = names.next().unwrap_or_else(|| args.model.trim_end_matches('/').to_string());
    let aliases: Vec<String> = names.collect();
    let metrics = Arc::new(Metrics::default());
    let modules = args.lora_modules.iter().map(|m| lora_module(m)).collect::<anyhow::Result<Vec<_>>>()?;
    let runtime_updates = args.allow_runtime_lora_updating
        || std::env::var("VLLM_ALLOW_RUNTIME_LORA_UPDATING").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
    anyhow::ensure!(
        args.enable_lora || (modules.is_empty() && !runtime_updates),
        "--lora-modules and runtime adapter loading need --enable-lora"
    );
    let options = kaito_oci::Options {
        plain_http: args.plain_http,
        docker_config: args.registry_config.clone(),
        ..kaito_oci::Options::new()
    };
    let fetch: kaito_inference::server::Fetch = {
        let (dir, options, concurrency, metrics) =
            (args.download_dir.clone(), options.clone(), args.pull_concurrency, metrics.clone());
        Arc::new(move |reference: &str| {
            download::pull_oci(reference, &dir.join("adapters"), options.clone(), concurrency, &metrics)
        })
    };
    let tool_parser = match args.tool_call_parser.as_deref() {
        None => None,
        Some(name) => Some(kaito_inference::tools::Parser::named(name).ok_or_else(|| {
            anyhow::anyhow!(
                "--tool-call-parser {name}: this server reads {}",
                kaito_names::tool_parsers::TCH.join(", ")
            )
        })?),
    };
    anyhow::ensure!(
        !args.enable_auto_tool_choice || tool_parser.is_some(),
        "--enable-auto-tool-choice needs --tool-call-parser"
    );
    let lora = Lora { runtime_updates, fetch: Some(fetch), ..Lora::default() };
    let state = AppState {
        serving: Arc::new(OnceLock::new()),
        failed: Arc::new(OnceLock::new()),
        model_name: name.clone(),
        aliases,
        metrics: metrics.clone(),
        lora: lora.clone(),
        tool_parser,
    };
    let addr: SocketAddr = format!("{}:{}", args.host, args.port).parse()?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, model = %name, ?device, ?kind, "listening; /health answers 503 until the model is loaded");
    let loading = state.clone();
    tokio::task::spawn_blocking(move || {
        let result = (|| -> anyhow::Result<Serving> {
            let dir = download::resolve_model(
                &args.model,
                &args.revision,
                &args.download_dir,
                options,
                args.pull_concurrency,
                &metrics,
            )?;
            let max = args.max_model_len.unwrap_or(usize::MAX);
            let text = loader::load_text(&dir)?;
            let config = EngineConfig {
                max_batch: args.max_num_seqs,
                max_waiting: args.max_waiting,
                step_tokens: args.max_num_batched_tokens,
                kv_tokens: args.kv_cache_tokens,
            };
            let stop = text.stop_ids.clone();
            // The model is built on the engine thread, which then runs every libtorch op (see Engine::spawn).
            let build = Box::new(move || {
                let mut model = loader::load_model(&dir, device, kind, max)?;
                if let Some(q) = quantization {
                    model.quantize(q)?;
                    tracing::info!(quantization = ?q, "projections and output head quantized");
                }
                tracing::info!(
                    architecture = model.config.architecture().unwrap_or("?"),
                    context = model.max_context,
                    "model loaded"
                );
                Ok((model, stop))
            });
            let engine = Engine::spawn(Some(threads), config, metrics, build)?;
            // The adapters named at start serve before the server says it is ready, or it does not start.
            for (name, path, strength) in &modules {
                tokio::runtime::Handle::current()
                    .block_on(lora.load(&engine, name, path, *strength))
                    .map_err(|e| anyhow::anyhow!("--lora-modules {name}={path}: {e}"))?;
                tracing::info!(adapter = %name, %path, "LoRA adapter loaded");
            }
            Ok(Serving { engine, text: Arc::new(text) })
        })();
        match result {
            Ok(s) => {
                let _ = loading.serving.set(s);
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "model failed to load");
                let _ = loading.failed.set(format!("{e:#}"));
            }
        }
    });
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

/// One `--lora-modules` value: `NAME=PATH`, or vLLM's JSON form (`name`, `path`), which may also carry a
/// `strength` between 0 and 1 (KAITO's `inference.adapters[].strength`) scaling the adapter.
fn lora_module(value: &str) -> anyhow::Result<(String, String, f64)> {
    if value.trim_start().starts_with('{') {
        let v: serde_json::Value =
            serde_json::from_str(value).map_err(|e| anyhow::anyhow!("--lora-modules {value}: {e}"))?;
        let field = |k: &str| v[k].as_str().map(str::to_string);
        let strength = match &v["strength"] {
            serde_json::Value::Null => 1.0,
            s => s
                .as_f64()
                .or_else(|| s.as_str().and_then(|s| s.trim().parse().ok()))
                .filter(|s| (0.0..=1.0).contains(s))
                .ok_or_else(|| anyhow::anyhow!("--lora-modules {value}: strength is a number between 0 and 1"))?,
        };
        return match (field("name"), field("path")) {
            (Some(name), Some(path)) => Ok((name, path, strength)),
            _ => anyhow::bail!("--lora-modules {value}: the JSON form needs \"name\" and \"path\""),
        };
    }
    match value.split_once('=') {
        Some((name, path)) if !name.is_empty() && !path.is_empty() => Ok((name.to_string(), path.to_string(), 1.0)),
        _ => anyhow::bail!("--lora-modules {value}: write NAME=PATH"),
    }
}

#[cfg(test)]
mod tests {
    use super::lora_module;

    #[test]
    fn lora_modules_take_both_forms_and_a_strength() {
        assert_eq!(lora_module("sql=/adapters/sql").unwrap(), ("sql".into(), "/adapters/sql".into(), 1.0));
        let json = r#"{"name": "sql", "path": "oci://r.example/a:1", "strength": "0.5"}"#;
        assert_eq!(lora_module(json).unwrap(), ("sql".into(), "oci://r.example/a:1".into(), 0.5));
        assert_eq!(lora_module(r#"{"name": "a", "path": "/p", "strength": 1}"#).unwrap().2, 1.0);
        for bad in ["sql", "=/p", r#"{"name": "a"}"#, r#"{"name": "a", "path": "/p", "strength": 2}"#] {
            assert!(lora_module(bad).is_err(), "{bad}");
        }
    }
}
