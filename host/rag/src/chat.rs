//! `/v1/chat/completions`: retrieval-augmented chat through an
//! OpenAI-compatible LLM, or a straight pass-through without `index_name`.

use crate::api::{AppState, embed_query};
use crate::error::{Error, Result};
use crate::store::Node;
use axum::body::{Body, Bytes};
use axum::response::Response;
use serde_json::{Value, json};
use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

/// Chunks considered for the context before the token budget cuts them.
const CONTEXT_CANDIDATES: usize = 20;

/// The LLM the service talks to.
#[derive(Clone)]
pub struct Llm {
    /// Chat completions endpoint.
    pub url: String,
    /// Bearer token, when the endpoint needs one.
    pub secret: Option<String>,
    /// The model's context window, in tokens.
    pub context_window: usize,
    agent: ureq::Agent,
}

impl Llm {
    /// An LLM at `url` (the chat completions endpoint, or a base URL that
    /// `/v1/chat/completions` is appended to).
    pub fn new(url: &str, secret: Option<String>, context_window: usize) -> Self {
        let url = url.trim_end_matches('/');
        let url = if url.ends_with("/chat/completions") {
            url.to_string()
        } else if url.ends_with("/v1") {
            format!("{url}/chat/completions")
        } else {
            format!("{url}/v1/chat/completions")
        };
        let agent = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .timeout_connect(Some(Duration::from_secs(10)))
                .http_status_as_error(false)
                .build(),
        );
        Llm { url, secret, context_window, agent }
    }

    /// Sends `body` and returns the status, content type and a reader of the answer (blocking).
    fn send(&self, body: &[u8]) -> Result<(u16, String, Box<dyn Read + Send>)> {
        let mut req = self.agent.post(&self.url).header("content-type", "application/json");
        if let Some(s) = &self.secret {
            req = req.header("Authorization", &format!("Bearer {s}"));
        }
        let resp =
            req.send(body).map_err(|e| Error::Upstream(format!("the LLM at {} is unreachable: {e}", self.url)))?;
        let status = resp.status().as_u16();
        let ctype =
            resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("application/json").to_string();
        Ok((status, ctype, Box::new(resp.into_body().into_reader())))
    }
}

/// Handles one chat request.
pub async fn handle(state: Arc<AppState>, body: Bytes) -> Result<Response> {
    let mut req: Value = crate::api::parse(&body)?;
    let obj =
        req.as_object_mut().ok_or_else(|| Error::bad("body", "must be a JSON object (an OpenAI chat request)"))?;
    let index_name = obj.remove("index_name");
    let ratio = obj.remove("context_token_ratio");
    let llm = state.llm.clone().ok_or_else(|| {
        Error::Unavailable(
            "no LLM is configured: start kaito-rag with --llm-url (RAGEngine spec.inferenceService.url); /retrieve works without one".into(),
        )
    })?;
    if obj.get("n").and_then(Value::as_u64).is_some_and(|n| n > 1) {
        return Err(Error::bad("n", "only n=1 is supported"));
    }
    let messages = obj
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| Error::bad("messages", "must be a list of chat messages"))?;
    let text_only = messages.iter().all(|m| m["content"].is_string() || m["content"].is_null());
    let index_name = match index_name {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => return Err(Error::bad("index_name", "must be a string")),
    };
    // Without an index, with tools, or with non-text content, KAITO forwards
    // the request as is; so do we, streaming included.
    let Some(index_name) = index_name.filter(|_| text_only && obj.get("tools").is_none()) else {
        let forwarded = serde_json::to_vec(&req).map_err(anyhow::Error::from)?;
        return pass_through(llm, forwarded).await;
    };
    if obj.get("stream").and_then(Value::as_bool) == Some(true) {
        return Err(Error::bad("stream", "streaming is only supported for requests without index_name"));
    }
    let ratio = match ratio {
        None | Some(Value::Null) => 0.5,
        Some(v) => v
            .as_f64()
            .filter(|r| (0.2..=0.8).contains(r))
            .ok_or_else(|| Error::bad("context_token_ratio", "must be a number between 0.2 and 0.8"))?,
    };
    if state.store.index_meta(&index_name).is_none() {
        return Err(Error::IndexNotFound(index_name));
    }
    let query = messages
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .and_then(|m| m["content"].as_str())
        .ok_or_else(|| Error::bad("messages", "must contain a user message to retrieve context for"))?
        .to_string();
    let st = state.clone();
    let (status, answer) = tokio::task::spawn_blocking(move || -> Result<(u16, Value)> {
        let vector = embed_query(&st, &query)?;
        let nodes = st.store.retrieve(&index_name, &query, &vector, CONTEXT_CANDIDATES, None)?;
        let budget = (llm.context_window as f64 * ratio) as usize;
        let used = fit_context(&st, &nodes, budget);
        let obj = req.as_object_mut().expect("checked above");
        insert_context(obj, &used);
        let prompt_tokens = prompt_tokens(&st, obj);
        let room = llm.context_window.saturating_sub(prompt_tokens);
        if room == 0 {
            return Err(Error::bad(
                "messages",
                format!("the prompt with its context takes {prompt_tokens} tokens, the LLM's context window is {}", llm.context_window),
            ));
        }
        for key in ["max_tokens", "max_completion_tokens"] {
            if let Some(n) = obj.get(key).and_then(Value::as_u64) {
                obj.insert(key.into(), json!(n.min(room as u64)));
            }
        }
        let body = serde_json::to_vec(&req).map_err(anyhow::Error::from)?;
        let (status, _, mut reader) = llm.send(&body)?;
        let mut text = String::new();
        reader.read_to_string(&mut text).map_err(|e| Error::Upstream(format!("reading the LLM's answer: {e}")))?;
        let mut answer: Value = serde_json::from_str(&text)
            .map_err(|_| Error::Upstream(format!("the LLM answered {status} with non-JSON: {}", text.chars().take(200).collect::<String>())))?;
        if (200..300).contains(&status) {
            let sources: Vec<Value> = used
                .iter()
                .map(|n| json!({"doc_id": n.doc_id, "node_id": n.node_id, "text": n.text, "score": n.score, "metadata": n.metadata}))
                .collect();
            answer["source_nodes"] = Value::Array(sources);
        }
        Ok((status, answer))
    })
    .await
    .map_err(|e| Error::Internal(anyhow::anyhow!("worker failed: {e}")))??;
    let mut resp = axum::response::IntoResponse::into_response(axum::Json(answer));
    *resp.status_mut() = axum::http::StatusCode::from_u16(status).unwrap_or(axum::http::StatusCode::BAD_GATEWAY);
    Ok(resp)
}

/// The best nodes whose texts fit in `budget` tokens, in score order.
fn fit_context(state: &AppState, nodes: &[Node], budget: usize) -> Vec<Node> {
    let mut used = Vec::new();
    let mut tokens = 0;
    for n in nodes {
        let t = state.counter.count(&n.text);
        if tokens + t > budget {
            continue;
        }
        tokens += t;
        used.push(n.clone());
    }
    used
}

/// Puts the retrieved context in a system message (after any system prompt the client sent).
fn insert_context(req: &mut serde_json::Map<String, Value>, nodes: &[Node]) {
    let mut context = String::from(
        "Answer the user's question using the context below. If the context does not contain the answer, say so.\n\nContext:\n",
    );
    for (i, n) in nodes.iter().enumerate() {
        context.push_str(&format!("[{}] {}\n", i + 1, n.text));
    }
    let messages = req.get_mut("messages").and_then(Value::as_array_mut).expect("checked by the caller");
    match messages.first_mut() {
        Some(first) if first["role"] == "system" => {
            let existing = first["content"].as_str().unwrap_or_default().to_string();
            first["content"] = json!(format!("{existing}\n\n{context}"));
        }
        _ => messages.insert(0, json!({"role": "system", "content": context})),
    }
}

fn prompt_tokens(state: &AppState, req: &serde_json::Map<String, Value>) -> usize {
    req["messages"]
        .as_array()
        .map(|ms| ms.iter().map(|m| state.counter.count(m["content"].as_str().unwrap_or_default()) + 4).sum())
        .unwrap_or(0)
}

/// Forwards a request unchanged and streams the LLM's answer back.
async fn pass_through(llm: Llm, body: Vec<u8>) -> Result<Response> {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(16);
    let (head_tx, head_rx) = tokio::sync::oneshot::channel::<Result<(u16, String)>>();
    tokio::task::spawn_blocking(move || {
        let (status, ctype, mut reader) = match llm.send(&body) {
            Ok(r) => r,
            Err(e) => {
                let _ = head_tx.send(Err(e));
                return;
            }
        };
        if head_tx.send(Ok((status, ctype))).is_err() {
            return;
        }
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    // A closed receiver means the client went away: stop reading.
                    if tx.blocking_send(Ok(Bytes::copy_from_slice(&buf[..n]))).is_err() {
                        break;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    break;
                }
            }
        }
    });
    let (status, ctype) = head_rx.await.map_err(|_| Error::Internal(anyhow::anyhow!("LLM worker stopped")))??;
    let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    Response::builder()
        .status(status)
        .header("content-type", ctype)
        .body(Body::from_stream(stream))
        .map_err(|e| Error::Internal(anyhow::anyhow!("building the response: {e}")))
}
