//! `kaito-rag --data-dir DIR`: KAITO's RAG API over LMDB, arroy and rust-bert.

use anyhow::Context;
use clap::Parser;
use kaito_rag::api::router;
use kaito_rag::chunk::{ChunkParams, TokenCounter};
use kaito_rag::embed::{Embedder, LocalEmbedder, RemoteEmbedder};
use kaito_rag::guardrails::Guardrails;
use kaito_rag::llm::Llm;
use kaito_rag::metrics::Metrics;
use kaito_rag::service::AppState;
use kaito_rag::store::{SearchConfig, Store, StoreOptions};
use kaito_rag::vectors::SearchParams;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, Parser)]
#[command(name = "kaito-rag", version, about = "KAITO's RAG API over LMDB (heed + arroy) with rust-bert embeddings")]
struct Args {
    #[arg(long, default_value = "0.0.0.0")]
    host: String,
    #[arg(long, default_value_t = 5000)]
    port: u16,
    /// Where the LMDB environment and snapshots live (the RAGEngine's volume).
    #[arg(long, env = "KAITO_RAG_DATA_DIR", default_value = "/mnt/data")]
    data_dir: PathBuf,
    /// Where `/persist` and `/load` put an index by default (`<this>/<index>`),
    /// relative to --data-dir (KAITO's variable and default).
    #[arg(long, env = "DEFAULT_VECTOR_DB_PERSIST_DIR", default_value = "storage")]
    persist_dir: String,
    /// A sentence-transformers directory embedded locally with rust-bert
    /// (default: $KAITO_MODELS_DIR/all-minilm-l6-v2).
    #[arg(long, env = "EMBEDDING_MODEL_DIR")]
    embedding_model: Option<PathBuf>,
    /// An OpenAI-compatible embeddings endpoint used instead of a local model.
    #[arg(long, env = "EMBEDDING_URL", conflicts_with = "embedding_model")]
    embedding_url: Option<String>,
    /// `model` sent to the remote embeddings endpoint.
    #[arg(long, env = "EMBEDDING_MODEL_NAME")]
    embedding_model_name: Option<String>,
    /// Bearer token for the remote embeddings endpoint.
    #[arg(long, env = "EMBEDDING_ACCESS_SECRET", hide_env_values = true)]
    embedding_access_secret: Option<String>,
    /// A directory with tokenizer.json for chunk sizes (default: the local embedding model's).
    #[arg(long, env = "CHUNK_TOKENIZER_DIR")]
    tokenizer: Option<PathBuf>,
    /// OpenAI-compatible chat completions endpoint; without it the service is retrieve-only.
    #[arg(long, env = "LLM_INFERENCE_URL")]
    llm_url: Option<String>,
    /// Bearer token for the LLM.
    #[arg(long, env = "LLM_ACCESS_SECRET", hide_env_values = true)]
    llm_access_secret: Option<String>,
    /// The LLM's context window in tokens.
    #[arg(long, env = "LLM_CONTEXT_WINDOW", default_value_t = 4096)]
    llm_context_window: usize,
    /// KAITO's RAG_SIMILARITY_THRESHOLD: the largest squared L2 distance
    /// between unit vectors (2 - 2 cos) a chunk may have to enter a chat's
    /// context; 0.85 admits cosine similarity >= 0.575. Depends on the model.
    #[arg(long, env = "RAG_SIMILARITY_THRESHOLD", default_value_t = 0.85)]
    similarity_threshold: f32,
    /// Chunk size in tokens (all-MiniLM-L6-v2 reads at most 256).
    #[arg(long, default_value_t = 256)]
    chunk_size: usize,
    /// Tokens repeated between consecutive chunks.
    #[arg(long, default_value_t = 32)]
    chunk_overlap: usize,
    /// Documents of an `/index` request chunked, embedded and committed
    /// together: memory holds one batch's vectors, a crash loses at most the
    /// batch in flight.
    #[arg(long, default_value_t = 256)]
    ingest_batch_docs: usize,
    /// LMDB map size in GiB (address space, not disk).
    #[arg(long, default_value_t = 64)]
    map_size_gib: usize,
    /// Largest request body in MiB.
    #[arg(long, default_value_t = 256)]
    max_body_mib: usize,
    /// Indexes (or filtered subsets) with fewer chunks are searched exactly.
    #[arg(long, default_value_t = SearchConfig::default().exact_below)]
    exact_search_below: usize,
    /// Bytes of vectors kept in RAM and searched there; indexes beyond it are
    /// searched on disk through arroy (0: everything on disk, memory flat).
    #[arg(long, env = "VECTOR_CACHE_BYTES", default_value_t = 1 << 30)]
    vector_cache_bytes: usize,
    /// recall@10 every approximate search is calibrated to meet (0.5-1.0).
    #[arg(long, default_value_t = SearchConfig::default().target_recall)]
    target_recall: f32,
    /// Output guardrails on (KAITO's variable): every chat answer, RAG or pass-through, goes through the policy.
    #[arg(long, env = "OUTPUT_GUARDRAILS_ENABLED", default_value = "false", num_args = 0..=1,
          default_missing_value = "true", value_parser = kaito_bool)]
    output_guardrails: bool,
    /// The guardrail policy (YAML: action, blockMessage, scanners); unset or empty: the built-in default, the
    /// same scanners as KAITO's template policy.
    #[arg(long, env = "OUTPUT_GUARDRAILS_POLICY_PATH")]
    output_guardrails_policy: Option<PathBuf>,
    /// Re-read the policy when its file changes (a ConfigMap update); a policy that cannot be used is logged and
    /// the current one kept.
    #[arg(long, env = "OUTPUT_GUARDRAILS_HOT_RELOAD_ENABLED", default_value = "true", value_parser = kaito_bool)]
    output_guardrails_hot_reload: bool,
    /// libtorch intra-op threads (default: libtorch's choice).
    #[arg(long)]
    threads: Option<i32>,
}

/// KAITO's reading of its boolean variables: `true` in any case is true, anything else false.
fn kaito_bool(s: &str) -> Result<bool, std::convert::Infallible> {
    Ok(s.eq_ignore_ascii_case("true"))
}

fn models_dir() -> PathBuf {
    std::env::var_os("KAITO_MODELS_DIR").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/".into())).join(".cache/kaito/models")
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let args = Args::parse();
    if let Some(n) = args.threads {
        tch::set_num_threads(n);
    }
    if args.chunk_overlap >= args.chunk_size {
        anyhow::bail!(
            "--chunk-overlap ({}) must be smaller than --chunk-size ({})",
            args.chunk_overlap,
            args.chunk_size
        );
    }
    let (embedder, tokenizer_dir) = match &args.embedding_url {
        Some(url) => {
            let remote =
                RemoteEmbedder::connect(url, args.embedding_model_name.clone(), args.embedding_access_secret.clone())
                    .with_context(|| format!("connecting to the embeddings endpoint {url}"))?;
            (Embedder::Remote(remote), args.tokenizer.clone())
        }
        None => {
            let dir = args.embedding_model.clone().unwrap_or_else(|| models_dir().join("all-minilm-l6-v2"));
            let local = LocalEmbedder::load(&dir)?;
            (Embedder::Local(Box::new(local)), Some(args.tokenizer.clone().unwrap_or(dir)))
        }
    };
    let counter = match tokenizer_dir {
        Some(dir) => TokenCounter::from_dir(&dir)?,
        None => TokenCounter::Words,
    };
    tracing::info!(model = embedder.model_id(), dim = embedder.dim(), chunks = counter.describe(), "embedding ready");
    if !(0.5..=1.0).contains(&args.target_recall) {
        anyhow::bail!("--target-recall ({}) must be between 0.5 and 1.0", args.target_recall);
    }
    let options = StoreOptions {
        map_size: args.map_size_gib << 30,
        vector_cache_bytes: args.vector_cache_bytes,
        search: SearchConfig { exact_below: args.exact_search_below, target_recall: args.target_recall },
        cached: SearchParams {
            exact_below: args.exact_search_below,
            target_recall: args.target_recall,
            ..SearchParams::default()
        },
    };
    // Absolute, so /persist and /load can tell paths inside it from escapes.
    std::fs::create_dir_all(&args.data_dir).with_context(|| format!("creating {}", args.data_dir.display()))?;
    let mut args = args;
    args.data_dir = args.data_dir.canonicalize().with_context(|| format!("resolving {}", args.data_dir.display()))?;
    let data_dir = args.data_dir.clone();
    let store = tokio::task::spawn_blocking(move || Store::open(&data_dir.join("lmdb"), options)).await??;
    for name in store.index_names()? {
        let (docs, chunks) = store.counts(&name)?.unwrap_or_default();
        tracing::info!(index = name, docs, chunks, cached = store.is_cached(&name), "index loaded");
    }
    let llm = args.llm_url.as_deref().map(|u| Llm::new(u, args.llm_access_secret.clone(), args.llm_context_window));
    match &llm {
        Some(l) => tracing::info!(url = l.url, context_window = l.context_window, "LLM configured"),
        None => tracing::info!("no --llm-url: retrieve-only, /v1/chat/completions answers 503"),
    }
    let metrics = Arc::new(Metrics::default());
    let guardrails = match args.output_guardrails {
        false => None,
        true => {
            let path = args.output_guardrails_policy.clone().filter(|p| !p.as_os_str().is_empty());
            let g = Arc::new(Guardrails::load(path, metrics.clone())?);
            if args.output_guardrails_hot_reload && g.path.is_some() {
                tokio::spawn(g.clone().watch(std::time::Duration::from_secs(2)));
            }
            Some(g)
        }
    };
    let state = Arc::new(AppState {
        store: Arc::new(store),
        embedder: Arc::new(embedder),
        counter: Arc::new(counter),
        chunking: ChunkParams { size: args.chunk_size, overlap: args.chunk_overlap },
        data_dir: args.data_dir.clone(),
        persist_dir: args.persist_dir.clone(),
        min_similarity: 1.0 - args.similarity_threshold / 2.0,
        ingest_batch: args.ingest_batch_docs,
        llm,
        metrics,
        guardrails,
    });
    let addr: SocketAddr = format!("{}:{}", args.host, args.port).parse().context("--host/--port")?;
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
    tracing::info!(%addr, "kaito-rag listening");
    axum::serve(listener, router(state, args.max_body_mib << 20))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
