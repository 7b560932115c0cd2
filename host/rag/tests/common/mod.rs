//! Shared test helpers: the prepared all-MiniLM model, a service state over a temporary directory, and requests.

#![allow(dead_code)]

use axum::body::Body;
use http_body_util::BodyExt;
use kaito_rag::api::{AppState, router};
use kaito_rag::chat::Llm;
use kaito_rag::chunk::{ChunkParams, TokenCounter};
use kaito_rag::embed::{Embedder, LocalEmbedder};
use kaito_rag::metrics::Metrics;
use kaito_rag::store::Store;
use kaito_rag::vectors::SearchParams;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use tower::ServiceExt;

/// `$KAITO_MODELS_DIR/<name>` (default `~/.cache/kaito/models`), checked to be prepared.
pub fn model(name: &str) -> PathBuf {
    let base = std::env::var_os("KAITO_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache/kaito/models"));
    let dir = base.join(name);
    assert!(dir.join(".complete").exists(), "{} is missing: run `cargo xtask models`", dir.display());
    dir
}

/// The Python with torch and sentence-transformers (`$KAITO_PYTHON`, else the venv `cargo xtask models` makes).
pub fn python() -> PathBuf {
    let p = std::env::var_os("KAITO_PYTHON").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache/kaito/torch-venv/bin/python")
    });
    assert!(p.exists(), "{} is missing: run `cargo xtask models`", p.display());
    p
}

/// A script under tests/python.
pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/python").join(name)
}

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
    let store = Store::open(&dir.join("lmdb"), 1 << 30, SearchParams::default()).expect("store opens");
    Arc::new(AppState {
        store: Arc::new(store),
        embedder: minilm(),
        counter: Arc::new(TokenCounter::from_dir(&model("all-minilm-l6-v2")).expect("tokenizer loads")),
        chunking: ChunkParams { size, overlap: 8 },
        snapshot_dir: dir.join("snapshots"),
        llm,
        metrics: Arc::new(Metrics::default()),
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
