//! The HTTP layer: KAITO's RAG API, request parsing and validation.

use crate::chat;
use crate::chunk;
use crate::error::{Error, Result};
use crate::metrics::{Route, RouteLabels, Status};
use crate::service::{AppState, blocking, embed_query, parse};
use crate::store::{self, NewDoc};
use crate::wire::{doc_json, node_json};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, RawQuery, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{delete, get, post};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// Most documents one listing page returns.
pub const MAX_PAGE: usize = 100;
/// Most chunks one retrieval returns.
pub const MAX_NODES: usize = 300;

type Shared = State<Arc<AppState>>;

/// The service's routes.
pub fn router(state: Arc<AppState>, max_body: usize) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/index", post(index))
        .route("/indexes", get(list_indexes))
        .route("/indexes/{name}", delete(delete_index))
        .route("/indexes/{name}/documents", get(list_documents).post(update_documents))
        .route("/indexes/{name}/documents/delete", post(delete_documents))
        .route("/persist/{name}", post(persist))
        .route("/load/{name}", post(load))
        .route("/retrieve", post(retrieve))
        .route("/v1/chat/completions", post(chat_completions))
        .fallback(|req: Request| async move {
            Error::NoRoute(format!("{} {}", req.method(), req.uri().path())).into_response()
        })
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

async fn observe(State(state): Shared, req: Request, next: Next) -> Response {
    let route =
        req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or_else(|| "unmatched".into());
    let series = crate::metrics::kaito_series(req.method().as_str(), &route);
    let start = Instant::now();
    let resp = next.run(req).await;
    let elapsed = start.elapsed().as_secs_f64();
    if let Some(series) = series.and_then(|s| state.metrics.kaito.get(s)) {
        let status = Status { status: if resp.status().as_u16() < 400 { "success" } else { "failure" } };
        series.requests.get_or_create(&status).inc();
        series.latency.get_or_create(&status).observe(elapsed);
    }
    state.metrics.latency.get_or_create(&Route { route: route.clone() }).observe(elapsed);
    state.metrics.requests.get_or_create(&RouteLabels { route, code: resp.status().as_u16() }).inc();
    resp
}

fn query_params(raw: Option<String>) -> Vec<(String, String)> {
    raw.map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect()).unwrap_or_default()
}

fn param<T: std::str::FromStr>(params: &[(String, String)], name: &str) -> Result<Option<T>> {
    match params.iter().find(|(k, _)| k == name) {
        None => Ok(None),
        Some((_, v)) => v.parse().map(Some).map_err(|_| Error::bad(name, format!("{v:?} is not a valid {name}"))),
    }
}

fn metadata_filter(field: &str, v: Option<Value>) -> Result<Option<Map<String, Value>>> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(_) => Err(Error::bad(field, "must be a JSON object of metadata keys and the values they must equal")),
    }
}

async fn health(State(state): Shared) -> Json<Value> {
    Json(
        // KAITO's body, and what else a probe may want to see.
        json!({"status": "Healthy", "detail": null, "indexes": state.store.index_names().map(|n| n.len()).unwrap_or(0), "embedding_model": state.embedder.model_id()}),
    )
}

async fn metrics(State(state): Shared) -> Response {
    let names = state.store.index_names().unwrap_or_default();
    let (docs, chunks) =
        names.iter().filter_map(|n| state.store.counts(n).ok().flatten()).fold((0, 0), |a, c| (a.0 + c.0, a.1 + c.1));
    state.metrics.documents.set(docs as i64);
    state.metrics.chunks.set(chunks as i64);
    ([("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")], state.metrics.encode())
        .into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DocIn {
    #[serde(default)]
    doc_id: Option<String>,
    text: String,
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
    #[serde(default)]
    #[allow(dead_code)]
    hash_value: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    is_truncated: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct IndexRequest {
    index_name: String,
    documents: Vec<DocIn>,
}

/// Chunks and embeds documents (blocking: run off the async threads).
fn prepare(state: &AppState, docs: Vec<(String, String, Map<String, Value>)>) -> Result<Vec<NewDoc>> {
    let mut all_chunks: Vec<String> = Vec::new();
    let mut spans = Vec::with_capacity(docs.len());
    for (_, text, metadata) in docs.iter() {
        let chunks = match metadata.get("split_type").and_then(Value::as_str) {
            Some("code") => {
                // Checked by check_split before anything was stored.
                let language = metadata.get("language").and_then(Value::as_str).unwrap_or("");
                chunk::split_code(text, language, state.chunking, &state.counter)
            }
            _ => chunk::split_text(text, state.chunking, &state.counter),
        };
        spans.push(all_chunks.len()..all_chunks.len() + chunks.len());
        all_chunks.extend(chunks);
    }
    let total = all_chunks.len();
    state.metrics.chunks_pending.inc_by(total as i64);
    let started = Instant::now();
    let mut reported = 0;
    let result = state.embedder.embed(&all_chunks, |done| {
        state.metrics.chunks_embedded.inc_by((done - reported) as u64);
        state.metrics.chunks_pending.dec_by((done - reported) as i64);
        reported = done;
        if total >= 256 && (done % 256 < crate::embed::BATCH || done == total) {
            tracing::info!(done, total, elapsed_s = started.elapsed().as_secs_f32(), "embedding chunks");
        }
    });
    state.metrics.chunks_pending.dec_by((total - reported) as i64);
    let vectors = result.map_err(|e| Error::Upstream(format!("embedding failed: {e:#}")))?;
    let mut vectors = vectors.into_iter();
    Ok(docs
        .into_iter()
        .zip(spans)
        .map(|((doc_id, text, metadata), span)| {
            let chunks = all_chunks[span.clone()].iter().cloned().zip(vectors.by_ref().take(span.len())).collect();
            NewDoc { doc_id, text, metadata, chunks }
        })
        .collect())
}

/// Chunks and embeds, in one batch, the documents `needs` picks given
/// whether the stored copy is unchanged (`None`: not stored); the others are
/// passed on without chunks.
fn prepare_changed(
    state: &AppState,
    index: &str,
    docs: Vec<(String, String, Map<String, Value>)>,
    needs: impl Fn(Option<bool>) -> bool,
) -> Result<Vec<NewDoc>> {
    let stored = state.store.unchanged(index, &docs)?;
    let mut slots: Vec<Option<NewDoc>> = Vec::with_capacity(docs.len());
    let mut fresh = Vec::new();
    for ((id, text, metadata), stored) in docs.into_iter().zip(stored) {
        if needs(stored) {
            fresh.push((id, text, metadata));
            slots.push(None);
        } else {
            slots.push(Some(NewDoc { doc_id: id, text, metadata, chunks: Vec::new() }));
        }
    }
    let mut prepared = prepare(state, fresh)?.into_iter();
    Ok(slots
        .into_iter()
        .map(|s| s.or_else(|| prepared.next()).expect("one prepared document per empty slot"))
        .collect())
}

fn check_docs(docs: &[DocIn], need_id: bool) -> Result<()> {
    if docs.is_empty() {
        return Err(Error::bad("documents", "must list at least one document"));
    }
    for (i, d) in docs.iter().enumerate() {
        if d.text.trim().is_empty() {
            return Err(Error::bad(format!("documents[{i}].text"), "must not be empty"));
        }
        match &d.doc_id {
            Some(id) if id.is_empty() => return Err(Error::bad(format!("documents[{i}].doc_id"), "must not be empty")),
            None if need_id => {
                return Err(Error::bad(format!("documents[{i}].doc_id"), "is required to update a document"));
            }
            _ => {}
        }
    }
    Ok(())
}

async fn index(State(state): Shared, body: Bytes) -> Result<Json<Value>> {
    let req: IndexRequest = parse(&body)?;
    check_index_name("index_name", &req.index_name)?;
    check_docs(&req.documents, false)?;
    for (i, d) in req.documents.iter().enumerate() {
        check_split(i, d.metadata.as_ref())?;
    }
    let docs: Vec<_> = req
        .documents
        .into_iter()
        .map(|d| (d.doc_id.unwrap_or_else(|| store::sha256(&d.text)), d.text, d.metadata.unwrap_or_default()))
        .collect();
    let st = state.clone();
    let records = blocking(move || {
        // Streamed: each batch is chunked, embedded and committed before the
        // next is read, so only one batch's vectors are in memory, and a
        // crash loses at most the batch in flight (progress in the log and
        // in kaito_rag_documents_committed_total).
        let total = docs.len();
        let batch = st.ingest_batch.max(1);
        let started = Instant::now();
        let mut records = Vec::with_capacity(total);
        let mut docs = docs.into_iter();
        loop {
            let slice: Vec<_> = docs.by_ref().take(batch).collect();
            if slice.is_empty() {
                break;
            }
            let n = slice.len();
            // Documents already stored as given are not embedded again.
            let todo = prepare_changed(&st, &req.index_name, slice, |stored| stored != Some(true))
                .map_err(|e| partial(e, records.len(), total))?;
            let stored = st
                .store
                .index_documents(&req.index_name, st.embedder.model_id(), st.embedder.dim(), todo)
                .map_err(|e| partial(e, records.len(), total))?;
            records.extend(stored);
            st.metrics.documents_committed.inc_by(n as u64);
            if total > batch {
                tracing::info!(
                    index = req.index_name,
                    committed = records.len(),
                    total,
                    elapsed_s = started.elapsed().as_secs_f32(),
                    "indexing documents"
                );
            }
        }
        Ok(records)
    })
    .await?;
    Ok(Json(Value::Array(records.iter().map(|r| doc_json(r, None)).collect())))
}

/// An error after some batches were committed says how many stay stored.
fn partial(e: Error, committed: usize, total: usize) -> Error {
    if committed == 0 {
        return e;
    }
    let note = format!(" ({committed} of {total} documents were committed before this failure and stay stored)");
    match e {
        Error::Upstream(m) => Error::Upstream(m + &note),
        Error::Conflict(m) => Error::Conflict(m + &note),
        Error::Internal(m) => Error::Internal(m.context(note)),
        other => other,
    }
}

/// Checks a document's splitter settings before anything is stored.
fn check_split(i: usize, metadata: Option<&Map<String, Value>>) -> Result<()> {
    if metadata.and_then(|m| m.get("split_type")).and_then(Value::as_str) == Some("code") {
        let language = metadata.and_then(|m| m.get("language")).and_then(Value::as_str).unwrap_or("");
        if !chunk::CODE_LANGUAGES.contains(&language) {
            return Err(Error::bad(
                format!("documents[{i}].metadata.language"),
                format!(
                    "{language:?} is not a language the code splitter knows; use one of {}",
                    chunk::CODE_LANGUAGES.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

async fn list_indexes(State(state): Shared) -> Result<Json<Vec<String>>> {
    Ok(Json(blocking(move || state.store.index_names()).await?))
}

async fn list_documents(State(state): Shared, Path(name): Path<String>, RawQuery(q): RawQuery) -> Result<Json<Value>> {
    let params = query_params(q);
    let limit: usize = param(&params, "limit")?.unwrap_or(10);
    if limit == 0 || limit > MAX_PAGE {
        return Err(Error::bad("limit", format!("must be between 1 and {MAX_PAGE}; page with offset")));
    }
    let offset: usize = param(&params, "offset")?.unwrap_or(0);
    let max_text_length: Option<usize> = param(&params, "max_text_length")?;
    let filter = match params.iter().find(|(k, _)| k == "metadata_filter") {
        Some((_, raw)) => {
            let v: Value = serde_json::from_str(raw)
                .map_err(|e| Error::bad("metadata_filter", format!("must be a JSON object: {e}")))?;
            metadata_filter("metadata_filter", Some(v))?
        }
        None => None,
    };
    let page = blocking(move || state.store.list_documents(&name, limit, offset, filter.as_ref())).await?;
    let documents: Vec<Value> = page.documents.iter().map(|d| doc_json(d, max_text_length)).collect();
    Ok(Json(json!({"documents": documents, "count": documents.len(), "total_items": page.total_items})))
}

#[derive(Debug, Deserialize)]
struct UpdateRequest {
    documents: Vec<DocIn>,
}

async fn update_documents(State(state): Shared, Path(name): Path<String>, body: Bytes) -> Result<Json<Value>> {
    let req: UpdateRequest = parse(&body)?;
    check_docs(&req.documents, true)?;
    for (i, d) in req.documents.iter().enumerate() {
        check_split(i, d.metadata.as_ref())?;
    }
    let summaries: Vec<Value> = req
        .documents
        .iter()
        .map(|d| json!({"doc_id": d.doc_id, "text": d.text, "metadata": d.metadata.clone().unwrap_or_default()}))
        .collect();
    let st = state.clone();
    let outcome = blocking(move || {
        if st.store.index_meta(&name)?.is_none() {
            return Err(Error::IndexNotFound(name));
        }
        let docs = req
            .documents
            .into_iter()
            .map(|d| (d.doc_id.unwrap_or_default(), d.text, d.metadata.unwrap_or_default()))
            .collect();
        // Only documents that exist and changed are embedded.
        let todo = prepare_changed(&st, &name, docs, |stored| stored == Some(false))?;
        st.store.update_documents(&name, todo)
    })
    .await?;
    let pick = |ids: &[String]| -> Vec<Value> {
        ids.iter().filter_map(|id| summaries.iter().find(|s| s["doc_id"] == id.as_str()).cloned()).collect()
    };
    Ok(Json(json!({
        "updated_documents": outcome.updated.iter().map(|d| doc_json(d, None)).collect::<Vec<_>>(),
        "unchanged_documents": pick(&outcome.unchanged),
        "not_found_documents": pick(&outcome.not_found),
    })))
}

#[derive(Debug, Deserialize)]
struct DeleteRequest {
    doc_ids: Vec<String>,
}

async fn delete_documents(State(state): Shared, Path(name): Path<String>, body: Bytes) -> Result<Json<Value>> {
    let req: DeleteRequest = parse(&body)?;
    if req.doc_ids.is_empty() {
        return Err(Error::bad("doc_ids", "must list at least one document id"));
    }
    let (deleted, missing) = blocking(move || state.store.delete_documents(&name, &req.doc_ids)).await?;
    Ok(Json(json!({"deleted_doc_ids": deleted, "not_found_doc_ids": missing})))
}

async fn delete_index(State(state): Shared, Path(name): Path<String>) -> Result<Json<Value>> {
    let n = name.clone();
    blocking(move || state.store.delete_index(&n)).await?;
    Ok(Json(json!({"message": format!("Successfully deleted index {name}."), "index_name": name})))
}

/// File a snapshot directory holds (KAITO's paths name directories).
pub const SNAPSHOT_FILE: &str = "kaito-rag-snapshot.jsonl";

/// Resolves a `/persist` or `/load` path as KAITO names it (relative paths
/// under the data directory, absolute ones inside it); only paths that
/// would leave the data directory are refused.
fn resolve(state: &AppState, path: &str) -> Result<PathBuf> {
    use std::path::Component;
    let given = std::path::Path::new(path);
    let rel = given.strip_prefix(&state.data_dir).unwrap_or(given);
    let mut out = state.data_dir.clone();
    let mut depth = 0usize;
    let escape = || {
        Error::bad(
            "path",
            format!(
                "{path:?} leaves the data directory {}; use a path inside it, like the default {}/<index>",
                state.data_dir.display(),
                state.persist_dir
            ),
        )
    };
    for c in rel.components() {
        match c {
            Component::CurDir => {}
            Component::Normal(part) => {
                out.push(part);
                depth += 1;
            }
            Component::ParentDir if depth > 0 => {
                out.pop();
                depth -= 1;
            }
            _ => return Err(escape()),
        }
    }
    if path.is_empty() {
        return Err(Error::bad("path", "must not be empty"));
    }
    Ok(out)
}

async fn persist(State(state): Shared, Path(name): Path<String>, RawQuery(q): RawQuery) -> Result<Json<Value>> {
    let params = query_params(q);
    // KAITO: the default directory (also when passed explicitly) gets the index name appended.
    let path = match params.iter().find(|(k, _)| k == "path") {
        Some((_, p)) if *p != state.persist_dir => p.clone(),
        _ => format!("{}/{name}", state.persist_dir),
    };
    let dir = resolve(&state, &path)?;
    let n = name.clone();
    let docs = blocking(move || state.store.persist(&n, &dir.join(SNAPSHOT_FILE))).await?;
    Ok(Json(
        json!({"message": format!("Successfully persisted index {name} to {path}."), "path": path, "documents": docs}),
    ))
}

async fn load(State(state): Shared, Path(name): Path<String>, RawQuery(q): RawQuery) -> Result<Json<Value>> {
    check_index_name("name", &name)?;
    let params = query_params(q);
    let path = match params.iter().find(|(k, _)| k == "path") {
        Some((_, p)) => p.clone(),
        None => format!("{}/{name}", state.persist_dir),
    };
    let resolved = resolve(&state, &path)?;
    let file = if resolved.is_dir() { resolved.join(SNAPSHOT_FILE) } else { resolved };
    if !file.is_file() {
        return Err(Error::PathNotFound(path));
    }
    let overwrite: bool = param(&params, "overwrite")?.unwrap_or(false);
    let n = name.clone();
    let docs =
        blocking(move || state.store.load(&n, &file, overwrite, state.embedder.model_id(), state.embedder.dim()))
            .await?;
    Ok(Json(
        json!({"message": format!("Successfully loaded index {name} from {path}."), "path": path, "documents": docs}),
    ))
}

#[derive(Debug, Deserialize)]
struct RetrieveRequest {
    index_name: String,
    query: String,
    #[serde(default = "default_nodes")]
    max_node_count: usize,
    #[serde(default)]
    metadata_filter: Option<Value>,
}

fn default_nodes() -> usize {
    5
}

async fn retrieve(State(state): Shared, body: Bytes) -> Result<Json<Value>> {
    let req: RetrieveRequest = parse(&body)?;
    if req.max_node_count == 0 || req.max_node_count > MAX_NODES {
        return Err(Error::bad("max_node_count", format!("must be between 1 and {MAX_NODES}")));
    }
    if req.query.trim().is_empty() {
        return Err(Error::invalid("query", "Query string cannot be empty."));
    }
    let filter = metadata_filter("metadata_filter", req.metadata_filter)?;
    let query = req.query.clone();
    let nodes = blocking(move || {
        if state.store.index_meta(&req.index_name)?.is_none() {
            return Err(Error::IndexNotFound(req.index_name));
        }
        let vector = embed_query(&state, &req.query)?;
        state.store.retrieve(&req.index_name, &req.query, &vector, req.max_node_count, filter.as_ref())
    })
    .await?;
    let results: Vec<Value> = nodes.iter().map(node_json).collect();
    Ok(Json(json!({"query": query, "count": results.len(), "results": results})))
}

async fn chat_completions(State(state): Shared, body: Bytes) -> Response {
    match chat::handle(state, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// Checks an index name: 1–128 characters of letters, digits, `-`, `_`, `.`.
pub fn check_index_name(field: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Error::bad(
            field,
            format!("{name:?} is not a valid index name: use 1-128 letters, digits, '-', '_' or '.'"),
        ))
    }
}
