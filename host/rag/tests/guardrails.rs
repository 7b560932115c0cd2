//! Output guardrails through the HTTP API, in front of a scripted LLM on loopback that answers with the user's
//! last message (so each test chooses the answer the guardrails see): pass-through and RAG answers, streamed
//! answers, KAITO's refusals and its fail-closed 500.

mod common;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::routing::post;
use common::call;
use http_body_util::BodyExt;
use kaito_rag::guardrails::{Guardrails, SCAN_FAILED};
use kaito_rag::llm::Llm;
use kaito_rag::service::AppState;
use serde_json::{Value, json};
use std::sync::Arc;
use tower::ServiceExt;

/// An LLM echoing the last user message: as JSON, or as three streamed pieces, a stop event and `[DONE]`.
async fn echo_llm() -> String {
    let app = Router::new().route(
        "/v1/chat/completions",
        post(|body: Bytes| async move {
            let v: Value = serde_json::from_slice(&body).unwrap();
            let text = v["messages"]
                .as_array()
                .unwrap()
                .iter()
                .rev()
                .find(|m| m["role"] == "user")
                .and_then(|m| m["content"].as_str())
                .unwrap_or_default()
                .to_string();
            if v["stream"] == true {
                let chars: Vec<char> = text.chars().collect();
                let third = chars.len().div_ceil(3).max(1);
                let mut sse = String::new();
                for piece in chars.chunks(third) {
                    let piece: String = piece.iter().collect();
                    let event = json!({"id": "s1", "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": null}]});
                    sse.push_str(&format!("data: {event}\n\n"));
                }
                sse.push_str("data: {\"id\":\"s1\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n");
                sse.push_str("data: [DONE]\n\n");
                return ([("content-type", "text/event-stream")], sse);
            }
            let answer = json!({"id": "chatcmpl-9", "object": "chat.completion", "model": v["model"],
                "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}});
            ([("content-type", "application/json")], answer.to_string())
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(axum::serve(listener, app).into_future());
    format!("http://{addr}")
}

/// A service in front of the echo LLM with guardrails on: `policy` as a file, or the built-in default.
async fn guarded(dir: &std::path::Path, policy: Option<&str>) -> Arc<AppState> {
    let url = echo_llm().await;
    let mut state = Arc::into_inner(common::state(dir, Some(Llm::new(&url, None, 2048)))).unwrap();
    let path = policy.map(|p| {
        let file = dir.join("guardrails.yaml");
        std::fs::write(&file, p).unwrap();
        file
    });
    state.guardrails = Some(Arc::new(Guardrails::load(path, state.metrics.clone()).unwrap()));
    Arc::new(state)
}

fn ask(content: &str) -> String {
    json!({"model": "m", "messages": [{"role": "user", "content": content}]}).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_policy_redacts_pass_through_answers() {
    let dir = tempfile::tempdir().unwrap();
    let state = guarded(dir.path(), None).await;
    let (status, body) =
        call(&state, "POST", "/v1/chat/completions", &ask("mail alice@example.com, key AKIA1234567890ABCDEF")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "mail <EMAIL>, key [REDACTED]");
    assert_eq!((body["id"].as_str(), body["source_nodes"].clone()), (Some("chatcmpl-9"), Value::Null));
    let clean = call(&state, "POST", "/v1/chat/completions", &ask("nothing to hide")).await.1;
    assert_eq!(clean["choices"][0]["message"]["content"], "nothing to hide");
    let (_, metrics) = call(&state, "GET", "/metrics", "").await;
    let metrics = metrics.as_str().unwrap();
    for line in [
        "ragengine_guardrails_response_actions_total{final_action=\"redact\"} 1",
        "ragengine_guardrails_response_actions_total{final_action=\"allow\"} 1",
        "ragengine_guardrails_response_scanner_hits_total{scanner_type=\"regex\",action=\"redact\"} 1",
        "ragengine_guardrails_response_scanner_hits_total{scanner_type=\"sensitive\",action=\"redact\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }
    // KAITO's default policy has a regex scanner, which its window cannot stream.
    let stream = json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]}).to_string();
    let (status, body) = call(&state, "POST", "/v1/chat/completions", &stream).await;
    assert_eq!(status, 400);
    assert_eq!(
        body["detail"],
        "stream=true with output guardrails only supports ['ban_substrings', 'invisible_text', 'secrets', 'sensitive'] scanners. Unsupported scanner: regex."
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_rag_answer_keeps_its_sources() {
    let dir = tempfile::tempdir().unwrap();
    let state = guarded(
        dir.path(),
        Some("action: block\nblockMessage: blocked-by-policy\nscanners: [{type: ban_substrings, substrings: [tower]}]"),
    )
    .await;
    let docs =
        json!({"index_name": "kb", "documents": [{"text": "The Eiffel Tower is in Paris, the capital of France."}]});
    assert_eq!(call(&state, "POST", "/index", &docs.to_string()).await.0, 200);
    let req = json!({"model": "m", "index_name": "kb",
        "messages": [{"role": "user", "content": "Where is the Eiffel Tower?"}]});
    let (status, body) = call(&state, "POST", "/v1/chat/completions", &req.to_string()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "blocked-by-policy");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["source_nodes"].as_array().map(Vec::len), Some(1), "{body}");
    // Streaming with an index stays refused, after the policy check passes.
    let req = json!({"model": "m", "index_name": "kb", "stream": true, "messages": [{"role": "user", "content": "x"}]});
    let (status, body) = call(&state, "POST", "/v1/chat/completions", &req.to_string()).await;
    assert_eq!(
        (status, body["detail"].as_str()),
        (400, Some("stream=true is only supported for passthrough chat completions."))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_answers_go_through_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let state = guarded(
        dir.path(),
        Some("blockMessage: blocked-by-policy\nscanners:\n  - {type: ban_substrings, action: redact, substrings: [classified]}\n  - {type: sensitive, action: block, detectors: [email]}"),
    )
    .await;
    let (headers, text) = streamed(&state, "this is classified material").await;
    assert_eq!(headers["cache-control"], "no-cache");
    let content: String = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| v["choices"][0]["delta"]["content"].as_str().map(str::to_string))
        .collect();
    assert_eq!(content, "this is [REDACTED] material");
    assert!(text.contains("\"finish_reason\":\"stop\"") && text.ends_with("data: [DONE]\n\n"), "{text}");

    let (_, text) = streamed(&state, "write to leaked@example.com").await;
    assert!(!text.contains("leaked"), "{text}");
    assert!(text.ends_with(
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"blocked-by-policy\"},\"finish_reason\":null}]}\n\n\
         data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"content_filter\"}]}\n\n\
         data: [DONE]\n\n"
    ), "{text}");
}

/// A streamed pass-through chat asking the echo LLM for `content`: the response headers and the whole event stream.
async fn streamed(state: &Arc<AppState>, content: &str) -> (axum::http::HeaderMap, String) {
    let body = json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": content}]});
    let request = axum::http::Request::builder()
        .method("POST")
        .uri("/v1/chat/completions")
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = kaito_rag::api::router(state.clone(), 1 << 20).oneshot(request).await.unwrap();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (headers, String::from_utf8(bytes.to_vec()).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scanner_that_fails_fails_the_answer_closed() {
    let dir = tempfile::tempdir().unwrap();
    // A back-reference after an ambiguous repetition: fancy-regex gives up past its backtracking limit.
    let state = guarded(dir.path(), Some("scanners: [{type: regex, patterns: ['(a|aa)+\\1b']}]")).await;
    let (status, body) = call(&state, "POST", "/v1/chat/completions", &ask(&"a".repeat(64))).await;
    assert_eq!((status, body["detail"].as_str()), (500, Some(SCAN_FAILED)), "{body}");
    let (_, metrics) = call(&state, "GET", "/metrics", "").await;
    assert!(
        metrics
            .as_str()
            .unwrap()
            .contains("ragengine_guardrails_response_actions_total{final_action=\"fail_closed\"} 1")
    );
}
