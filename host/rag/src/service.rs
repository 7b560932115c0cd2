//! What every handler shares: the service state, body parsing, and the
//! blocking helpers the HTTP layer and the chat proxy both call.

use crate::chunk::{ChunkParams, TokenCounter};
use crate::embed::Embedder;
use crate::error::{Error, Result};
use crate::llm::Llm;
use crate::metrics::Metrics;
use crate::store::Store;
use serde::de::DeserializeOwned;
use std::path::PathBuf;
use std::sync::Arc;

/// Everything handlers share.
pub struct AppState {
    /// Storage and search.
    pub store: Arc<Store>,
    /// Embedding model.
    pub embedder: Arc<Embedder>,
    /// Token counting for chunk sizes and context budgets.
    pub counter: Arc<TokenCounter>,
    /// Chunk size and overlap.
    pub chunking: ChunkParams,
    /// The data directory: `/persist` and `/load` paths resolve inside it.
    pub data_dir: PathBuf,
    /// KAITO's `DEFAULT_VECTOR_DB_PERSIST_DIR`: where `/persist` and `/load`
    /// put an index by default (`<this>/<index>`), relative to `data_dir`.
    pub persist_dir: String,
    /// The LLM behind `/v1/chat/completions`, when configured.
    pub llm: Option<Llm>,
    /// Documents of an `/index` request chunked, embedded and committed together.
    pub ingest_batch: usize,
    /// Least cosine similarity a chunk needs to enter a chat's context.
    pub min_similarity: f32,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Output guardrails every chat answer goes through, when on.
    pub guardrails: Option<Arc<crate::guardrails::Guardrails>>,
}

/// Parses a JSON body; errors name the field (`documents[2].text`).
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." || path == "?" { "body".to_string() } else { path };
        Error::bad(field, format!("{} (the body must be JSON as KAITO's RAG API documents)", e.inner()))
    })
}

/// Runs blocking work (LMDB, embedding) off the async threads.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Error::Internal(anyhow::anyhow!("worker failed: {e}")))?
}

/// Embeds one query (blocking).
pub fn embed_query(state: &AppState, query: &str) -> Result<Vec<f32>> {
    state
        .embedder
        .embed(&[query.to_string()], |_| {})
        .map_err(|e| Error::Upstream(format!("embedding the query failed: {e:#}")))?
        .pop()
        .ok_or_else(|| Error::Upstream("the embedding model returned nothing".into()))
}
