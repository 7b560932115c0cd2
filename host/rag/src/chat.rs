//! `/v1/chat/completions`: retrieval-augmented chat through an
//! OpenAI-compatible LLM, or a straight pass-through, with KAITO's rules:
//! the same checks in the same order with the same messages, the same
//! choice of context (similar enough, fitting the token budget), the same
//! fallback to pass-through when nothing is similar, and an answer built
//! here (KAITO's fields) around the LLM's.

use crate::error::{Error, Result};
use crate::guardrails::stream::StreamGuard;
use crate::llm::Llm;
use crate::service::{AppState, embed_query, parse};
use crate::store::Retrieved;
use axum::body::{Body, Bytes};
use axum::response::Response;
use serde_json::{Map, Value, json};
use std::io::Read;
use std::sync::Arc;

/// Tokens KAITO reserves for its own prompt text around the context.
const ADDITION_PROMPT_TOKENS: usize = 150;
/// Tokens KAITO assumes one context node takes when choosing how many to retrieve.
const NODE_TOKEN_APPROXIMATION: usize = 500;
/// KAITO's fewest and most nodes retrieved for the context.
const MIN_CONTEXT_NODES: usize = 100;
const MAX_CONTEXT_NODES: usize = 300;
/// KAITO's default share of the budget the context may fill.
const DEFAULT_RATIO: f64 = 0.5;

/// What the LLM is asked with the context (KAITO's wording).
fn context_prompt(context: &str) -> String {
    format!(
        "Use the context information below to assist the user.\n--------------------\n{context}\n--------------------\n"
    )
}

/// How a chat request is answered.
enum Route {
    /// Forward unchanged (KAITO's pass-through), streaming when asked.
    PassThrough,
    /// Retrieve context from the index for the user prompt.
    Rag { index: String, user_prompt: String, prompt_tokens: usize, ratio: f64 },
}

/// Handles one chat request.
pub async fn handle(state: Arc<AppState>, body: Bytes) -> Result<Response> {
    let mut req: Value = parse(&body)?;
    let obj =
        req.as_object_mut().ok_or_else(|| Error::bad("body", "must be a JSON object (an OpenAI chat request)"))?;
    let index_name = obj.remove("index_name");
    let ratio = obj.remove("context_token_ratio");
    let llm = state.llm.clone().ok_or_else(|| {
        Error::Unavailable(
            "InferenceService not configured. This RAGEngine instance only supports document retrieve via /retrieve API. To use chat completions, configure an InferenceService in the RAGEngine spec.".into(),
        )
    })?;
    let route = route(&state, obj, index_name, ratio)?;
    let Route::Rag { index, user_prompt, prompt_tokens, ratio } = route else {
        let forwarded = serde_json::to_vec(&req).map_err(anyhow::Error::from)?;
        return pass_through(&state, llm, forwarded).await;
    };
    let st = state.clone();
    let answer = tokio::task::spawn_blocking(move || -> Result<Option<Value>> {
        let obj = req.as_object_mut().expect("checked above");
        let window = llm.context_window;
        let room = window.saturating_sub(prompt_tokens);
        // KAITO clamps max_tokens to what the window leaves after the prompt.
        for key in ["max_tokens", "max_completion_tokens"] {
            if obj.get(key).and_then(Value::as_u64).is_some_and(|n| n as usize > room) {
                obj.insert(key.into(), json!(room));
            }
        }
        let max_tokens = ["max_completion_tokens", "max_tokens"]
            .iter()
            .find_map(|k| obj.get(*k).and_then(Value::as_u64))
            .filter(|&n| n > 0)
            .map(|n| n as usize);
        let user_tokens = st.counter.count(&user_prompt);
        let budget = (max_tokens.unwrap_or(window).min(window.saturating_sub(user_tokens + ADDITION_PROMPT_TOKENS))
            as f64
            * ratio) as usize;
        let top_k = ((window.saturating_sub(prompt_tokens)) / NODE_TOKEN_APPROXIMATION)
            .clamp(MIN_CONTEXT_NODES, MAX_CONTEXT_NODES);
        let vector = embed_query(&st, &user_prompt)?;
        let nodes = st.store.retrieve_dense(&index, &vector, top_k)?;
        let used = select_context(&st, nodes, budget, st.min_similarity);
        if used.is_empty() {
            // KAITO answers without context when nothing is similar enough.
            return Ok(None);
        }
        insert_context(obj, &used);
        let model = obj.get("model").cloned();
        let body = serde_json::to_vec(&req).map_err(anyhow::Error::from)?;
        let (status, _, mut reader) = llm.send(&body)?;
        let mut text = String::new();
        reader.read_to_string(&mut text).map_err(|e| Error::Upstream(format!("reading the LLM's answer: {e}")))?;
        if !(200..300).contains(&status) {
            return Err(upstream_error(status, text.as_bytes(), true));
        }
        let upstream: Value = serde_json::from_str(&text).map_err(|_| {
            Error::Upstream(format!(
                "the LLM answered {status} with non-JSON: {}",
                text.chars().take(200).collect::<String>()
            ))
        })?;
        Ok(Some(rag_answer(&st, upstream, model, &used, &user_prompt)))
    })
    .await
    .map_err(|e| Error::Internal(anyhow::anyhow!("worker failed: {e}")))??;
    match answer {
        Some(mut a) => {
            guard(&state, &mut a)?;
            Ok(axum::response::IntoResponse::into_response(axum::Json(a)))
        }
        None => {
            let forwarded = serde_json::to_vec(&req_without_rag_keys(body)?).map_err(anyhow::Error::from)?;
            pass_through(&state, state.llm.clone().expect("checked above"), forwarded).await
        }
    }
}

/// Runs a whole answer through the output guardrails, when on; a scanner failure is KAITO's 500.
fn guard(state: &AppState, answer: &mut Value) -> Result<()> {
    if let Some(g) = &state.guardrails {
        g.guard_response(answer).map_err(|_| Error::Internal(anyhow::anyhow!(crate::guardrails::SCAN_FAILED)))?;
    }
    Ok(())
}

/// The request as sent, without the keys only this service reads.
fn req_without_rag_keys(body: Bytes) -> Result<Value> {
    let mut req: Value = parse(&body)?;
    if let Some(o) = req.as_object_mut() {
        o.remove("index_name");
        o.remove("context_token_ratio");
    }
    Ok(req)
}

/// KAITO's checks, in its order; decides between RAG and pass-through.
fn route(state: &AppState, obj: &Map<String, Value>, index_name: Option<Value>, ratio: Option<Value>) -> Result<Route> {
    let truthy = |v: Option<&Value>| match v {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Number(n)) => n.as_f64() != Some(0.0),
        Some(_) => true,
    };
    if truthy(obj.get("tools")) || truthy(obj.get("functions")) {
        return Err(Error::invalid("tools", "tools and functions are not supported."));
    }
    match obj.get("n") {
        None | Some(Value::Null) => {}
        Some(n) if n.as_u64().is_some_and(|n| n >= 1) => {
            if n.as_u64() > Some(1) {
                return Err(Error::invalid("n", "n > 1 is not supported."));
            }
        }
        Some(n) => return Err(Error::bad("n", format!("{n} is not a positive integer; only n=1 is supported"))),
    }
    // KAITO checks a streamed request against the policy before anything about the index.
    if obj.get("stream").and_then(Value::as_bool) == Some(true)
        && let Some(g) = &state.guardrails
    {
        g.current().check_streaming().map_err(|m| Error::invalid("stream", m))?;
    }
    let index = match index_name {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => return Err(Error::bad("index_name", "must be a string")),
    };
    if let Some(index) = &index
        && state.store.index_meta(index)?.is_none()
    {
        return Err(Error::IndexNotFound(index.clone()));
    }
    let ratio = match ratio {
        None | Some(Value::Null) => DEFAULT_RATIO,
        Some(v) => {
            let r =
                v.as_f64().ok_or_else(|| Error::bad("context_token_ratio", "must be a number between 0.2 and 0.8"))?;
            if r != 0.0 && !(0.2..=0.8).contains(&r) {
                return Err(Error::invalid(
                    "context_token_ratio",
                    format!("Invalid context_token_ratio: {v}. Must be between 0.2 and 0.8."),
                ));
            }
            r
        }
    };
    let Some(index) = index else { return Ok(Route::PassThrough) };
    if obj.get("stream").and_then(Value::as_bool) == Some(true) {
        return Err(Error::invalid("stream", "stream=true is only supported for passthrough chat completions."));
    }
    let messages = obj
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| Error::bad("messages", "must be a list of chat messages"))?;
    for (i, m) in messages.iter().enumerate() {
        let role = m
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::invalid("messages", "Invalid request format: messages must contain 'role'."))?;
        let content = m.get("content").filter(|c| !c.is_null());
        if role != "assistant" && content.is_none() {
            return Err(Error::invalid(
                "messages",
                format!("Invalid request format: messages must contain 'content' for role '{role}'."),
            ));
        }
        if !matches!(role, "user" | "system" | "assistant" | "developer") {
            // Tool and function turns: KAITO forwards the conversation as is.
            return Ok(Route::PassThrough);
        }
        if role == "user" {
            match content {
                Some(Value::String(s)) if s.is_empty() => {
                    return Err(Error::invalid(
                        "messages",
                        "Invalid request format: user messages must contain 'content'.",
                    ));
                }
                Some(Value::Array(parts)) if parts.is_empty() => {
                    return Err(Error::invalid(
                        "messages",
                        "Invalid request format: user messages must contain 'content'.",
                    ));
                }
                Some(Value::Array(parts)) if parts.iter().any(|p| !p.is_string() && p["type"] != "text") => {
                    // Images and audio: KAITO forwards as is.
                    return Ok(Route::PassThrough);
                }
                Some(Value::String(_)) | Some(Value::Array(_)) => {}
                Some(_) => {
                    return Err(Error::bad(
                        format!("messages[{i}].content"),
                        "must be a string or a list of content parts",
                    ));
                }
                None => unreachable!("checked above"),
            }
        }
    }
    // The user prompt: user turns after the last assistant turn (KAITO's split).
    let mut user_parts = Vec::new();
    let mut all = Vec::new();
    let mut after_assistant = true;
    for m in messages.iter().rev() {
        let text = content_text(m.get("content"));
        all.push(text.clone());
        match m["role"].as_str() {
            Some("assistant") => after_assistant = false,
            Some("user") if after_assistant => user_parts.push(text),
            _ => {}
        }
    }
    user_parts.reverse();
    let user_prompt = user_parts.join("\n\n");
    if user_prompt.is_empty() {
        return Err(Error::invalid("messages", "There must be a user prompt since the latest assistant message."));
    }
    let prompt_tokens = state.counter.count(&all.join("\n\n"));
    let window = state.llm.as_ref().map(|l| l.context_window).unwrap_or(0);
    if prompt_tokens > window {
        return Err(Error::invalid("messages", "Prompt length exceeds context window."));
    }
    Ok(Route::Rag { index, user_prompt, prompt_tokens, ratio })
}

/// A message's text: the string, or its text parts joined.
fn content_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => {
            parts.iter().filter_map(|p| p.as_str().or_else(|| p["text"].as_str())).collect::<Vec<_>>().join("\n")
        }
        _ => String::new(),
    }
}

/// KAITO's context selection: most similar first, only nodes at least
/// `min_similarity` close, each taken when it fits what is left of `budget`.
fn select_context(state: &AppState, nodes: Vec<Retrieved>, budget: usize, min_similarity: f32) -> Vec<Retrieved> {
    let mut left = budget;
    let mut used = Vec::new();
    for n in nodes {
        let similarity = n.candidate.dense.map(|d| d.score).unwrap_or(0.0);
        if similarity < min_similarity {
            continue;
        }
        let t = state.counter.count(&n.text);
        if t > left {
            continue;
        }
        left -= t;
        used.push(n);
    }
    used
}

/// Puts the context in a system message after any the client sent first.
fn insert_context(req: &mut Map<String, Value>, nodes: &[Retrieved]) {
    let context = nodes.iter().map(|n| n.text.as_str()).collect::<Vec<_>>().join("\n\n");
    let context = context_prompt(&context);
    let messages = req.get_mut("messages").and_then(Value::as_array_mut).expect("checked by the caller");
    match messages.first_mut() {
        Some(first) if first["role"] == "system" && first["content"].is_string() => {
            let existing = first["content"].as_str().unwrap_or_default().to_string();
            first["content"] = json!(format!("{existing}\n\n{context}"));
        }
        _ => messages.insert(0, json!({"role": "system", "content": context})),
    }
}

/// The answer KAITO builds around the LLM's: its own id, the request's
/// model, the LLM's message and usage, and the context it was given.
fn rag_answer(state: &AppState, upstream: Value, model: Option<Value>, used: &[Retrieved], prompt: &str) -> Value {
    let choice = &upstream["choices"][0];
    let content = choice["message"]["content"].clone();
    let usage = match upstream.get("usage").filter(|u| u.is_object()) {
        Some(u) => u.clone(),
        None => {
            let p = state.counter.count(prompt);
            let c = state.counter.count(content.as_str().unwrap_or_default());
            json!({"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c})
        }
    };
    let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    json!({
        "id": format!("{:032x}", rand::random::<u128>()),
        "object": "chat.completion",
        "created": created,
        "model": model.filter(|m| !m.is_null()).unwrap_or_else(|| upstream["model"].clone()),
        "choices": [{
            "index": 0,
            "finish_reason": choice.get("finish_reason").filter(|f| !f.is_null()).cloned().unwrap_or(json!("stop")),
            "logprobs": null,
            "message": {
                "role": "assistant", "content": content, "refusal": null, "annotations": null,
                "audio": null, "function_call": null, "tool_calls": null,
            },
        }],
        "service_tier": null,
        "system_fingerprint": null,
        "usage": usage,
        "source_nodes": used.iter().map(crate::wire::node_json).collect::<Vec<_>>(),
    })
}

/// An LLM error status relayed: KAITO's `detail` (Python's repr of the
/// body bytes; prefixed with `Chat completion failed: <status>: ` on the RAG
/// path) and the LLM's own `error` object when it sent one.
fn upstream_error(status: u16, body: &[u8], rag: bool) -> Error {
    let repr = crate::pyrepr::bytes_repr(body);
    let detail = if rag { format!("Chat completion failed: {status}: {repr}") } else { repr };
    let error = serde_json::from_slice::<Value>(body).ok().and_then(|v| v.get("error").cloned());
    Error::UpstreamStatus { status, detail, error }
}

/// The head of the LLM's answer: a whole body (JSON answers and errors) or a stream to follow.
enum Head {
    Whole(u16, String, Vec<u8>),
    Stream(u16, String),
}

/// Forwards a request unchanged (KAITO's pass-through): event streams are
/// relayed byte for byte; a JSON answer gets `"source_nodes": null`; an error
/// status is relayed with KAITO's `detail`.
async fn pass_through(state: &AppState, llm: Llm, body: Vec<u8>) -> Result<Response> {
    let mut stream_guard = state.guardrails.as_ref().map(|g| StreamGuard::new(g.current(), state.metrics.clone()));
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(16);
    let (head_tx, head_rx) = tokio::sync::oneshot::channel::<Result<Head>>();
    tokio::task::spawn_blocking(move || {
        let (status, ctype, mut reader) = match llm.send(&body) {
            Ok(r) => r,
            Err(e) => {
                let _ = head_tx.send(Err(e));
                return;
            }
        };
        if !(200..300).contains(&status) || !ctype.starts_with("text/event-stream") {
            let mut whole = Vec::new();
            let head = match reader.read_to_end(&mut whole) {
                Ok(_) => Ok(Head::Whole(status, ctype, whole)),
                Err(e) => Err(Error::Upstream(format!("reading the LLM's answer: {e}"))),
            };
            let _ = head_tx.send(head);
            return;
        }
        if head_tx.send(Ok(Head::Stream(status, ctype))).is_err() {
            return;
        }
        let mut buf = vec![0u8; 16 * 1024];
        // Under guardrails the client gets the guard's frames, not the LLM's bytes.
        let send = |bytes: Bytes| tx.blocking_send(Ok(bytes)).is_ok();
        let frames = |frames: Vec<String>| frames.into_iter().all(|f| send(Bytes::from(f)));
        loop {
            match reader.read(&mut buf) {
                Ok(0) => {
                    if let Some(g) = stream_guard.as_mut() {
                        frames(g.finish());
                    }
                    break;
                }
                Ok(n) => {
                    // A closed receiver means the client went away: stop reading.
                    let open = match stream_guard.as_mut() {
                        Some(g) => frames(g.feed(&buf[..n])) && !g.is_done(),
                        None => send(Bytes::copy_from_slice(&buf[..n])),
                    };
                    if !open {
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
    let head = head_rx.await.map_err(|_| Error::Internal(anyhow::anyhow!("LLM worker stopped")))??;
    let (status, ctype) = match head {
        Head::Whole(status, _, body) if !(200..300).contains(&status) => {
            return Err(upstream_error(status, &body, false));
        }
        Head::Whole(status, ctype, body) => {
            let body = match serde_json::from_slice::<Value>(&body) {
                Ok(Value::Object(mut answer)) => {
                    answer.insert("source_nodes".into(), Value::Null);
                    let mut answer = Value::Object(answer);
                    guard(state, &mut answer)?;
                    serde_json::to_vec(&answer).map_err(anyhow::Error::from)?
                }
                _ => body,
            };
            return Response::builder()
                .status(status)
                .header("content-type", ctype)
                .body(Body::from(body))
                .map_err(|e| Error::Internal(anyhow::anyhow!("building the response: {e}")));
        }
        Head::Stream(status, ctype) => (status, ctype),
    };
    let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    Response::builder()
        .status(status)
        .header("content-type", ctype)
        .header("cache-control", "no-cache")
        .header("x-accel-buffering", "no")
        .body(Body::from_stream(stream))
        .map_err(|e| Error::Internal(anyhow::anyhow!("building the response: {e}")))
}
