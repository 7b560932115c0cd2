//! Shared test helpers: the prepared all-MiniLM model, a service state over a temporary directory, and requests.

#![allow(dead_code)]

use axum::body::Body;
use http_body_util::BodyExt;
use kaito_rag::api::router;
use kaito_rag::chunk::{ChunkParams, TokenCounter};
use kaito_rag::embed::{Embedder, LocalEmbedder};
use kaito_rag::llm::Llm;
use kaito_rag::metrics::Metrics;
use kaito_rag::service::AppState;
use kaito_rag::store::{Store, StoreOptions};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use tower::ServiceExt;

#[path = "../../../../tests/support/models.rs"]
mod models;
#[allow(unused_imports)]
pub use models::{model, python, script};

/// all-MiniLM-L6-v2 loaded once per test binary.
pub fn minilm() -> Arc<Embedder> {
    static MODEL: OnceLock<Arc<Embedder>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            tch::set_num_threads(1);
            let local = LocalEmbedder::load(&model("all-minilm-l6-v2")).expect("all-MiniLM loads");
            Arc::new(Embedder::Local(Box::new(local)))
        })
        .clone()
}

/// A service over `dir` with all-MiniLM, small chunks (64 tokens), and `llm` when given.
pub fn state(dir: &Path, llm: Option<Llm>) -> Arc<AppState> {
    state_with_chunks(dir, llm, 64)
}

/// A service over `dir` with all-MiniLM and chunks of `size` tokens.
pub fn state_with_chunks(dir: &Path, llm: Option<Llm>, size: usize) -> Arc<AppState> {
    let store = Store::open(&dir.join("lmdb"), StoreOptions::default()).expect("store opens");
    Arc::new(AppState {
        store: Arc::new(store),
        embedder: minilm(),
        counter: Arc::new(TokenCounter::from_dir(&model("all-minilm-l6-v2")).expect("tokenizer loads")),
        chunking: ChunkParams { size, overlap: 8 },
        data_dir: dir.to_path_buf(),
        persist_dir: "storage".into(),
        min_similarity: 0.575,
        ingest_batch: 256,
        llm,
        metrics: Arc::new(Metrics::default()),
        guardrails: None,
    })
}

/// One request through the router: status and JSON body (a string when not JSON).
pub async fn call(state: &Arc<AppState>, method: &str, path: &str, body: &str) -> (u16, Value) {
    let req = axum::http::Request::builder().method(method).uri(path).body(Body::from(body.to_string())).unwrap();
    let resp = router(state.clone(), 64 << 20).oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into())))
}

/// The directory of OpenAI's encoding files that tiktoken-rs (at the version Cargo.lock pins) bundles.
pub fn tiktoken_assets() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).expect("Cargo.lock");
    let version = lock
        .split("[[package]]")
        .find(|p| p.contains("name = \"tiktoken-rs\""))
        .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = \"")))
        .map(|v| v.trim_end_matches('"').to_string())
        .expect("tiktoken-rs in Cargo.lock");
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cargo"));
    let registry = cargo_home.join("registry/src");
    std::fs::read_dir(&registry)
        .unwrap_or_else(|e| panic!("{}: {e}", registry.display()))
        .flatten()
        .map(|d| d.path().join(format!("tiktoken-rs-{version}/assets")))
        .find(|p| p.join("cl100k_base.tiktoken").is_file())
        .unwrap_or_else(|| panic!("tiktoken-rs {version}'s assets are not under {}", registry.display()))
}
