//! The service against scripted OpenAI-compatible upstreams on loopback: a
//! chat backend that records what it is sent (so the test sees the prompt
//! the LLM would see), and a remote embeddings endpoint.

mod common;

use axum::Router;
use axum::body::Bytes;
use axum::http::HeaderMap;
use axum::routing::post;
use common::call;
use kaito_rag::embed::RemoteEmbedder;
use kaito_rag::llm::Llm;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};

/// Requests the scripted backend received: headers' Authorization and body.
type Seen = Arc<Mutex<Vec<(Option<String>, Value)>>>;

async fn backend() -> (String, Seen) {
    let seen: Seen = Arc::default();
    let s = seen.clone();
    let app = Router::new().route(
        "/v1/chat/completions",
        post(move |headers: HeaderMap, body: Bytes| {
            let s = s.clone();
            async move {
                let v = record(&s, &headers, &body);
                let ok = axum::http::StatusCode::OK;
                if v["stream"] == true {
                    let sse = "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\ndata: [DONE]\n\n";
                    return (ok, [("content-type", "text/event-stream")], sse.to_string());
                }
                if v["model"] == "broken" {
                    let body = "{\"error\":{\"message\":\"no such model\",\"type\":\"auth\"}}";
                    return (axum::http::StatusCode::UNAUTHORIZED, [("content-type", "application/json")], body.to_string());
                }
                let answer = json!({
                    "id": "chatcmpl-1", "object": "chat.completion", "model": v["model"],
                    "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "Paris."}}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12},
                });
                (ok, [("content-type", "application/json")], answer.to_string())
            }
        }),
    );
    (format!("http://{}", spawn(app).await), seen)
}

/// Records one request's Authorization header and JSON body; returns the body.
fn record(seen: &Seen, headers: &HeaderMap, body: &[u8]) -> Value {
    let v: Value = serde_json::from_slice(body).unwrap();
    let auth = headers.get("authorization").map(|h| h.to_str().unwrap().to_string());
    seen.lock().unwrap().push((auth, v.clone()));
    v
}

/// Serves `app` on a free loopback port.
async fn spawn(app: Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(axum::serve(listener, app).into_future());
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rag_chat_puts_retrieved_chunks_in_the_prompt_and_returns_source_nodes() {
    let (url, seen) = backend().await;
    let dir = tempfile::tempdir().unwrap();
    let state = common::state(dir.path(), Some(Llm::new(&url, Some("s3cret".into()), 512)));
    let docs = json!({"index_name": "kb", "documents": [
        {"text": "The Eiffel Tower is in Paris, the capital of France.", "metadata": {"src": "a"}},
        {"text": "GPU nodes are provisioned by KAITO for inference workloads.", "metadata": {"src": "b"}},
    ]});
    assert_eq!(call(&state, "POST", "/index", &docs.to_string()).await.0, 200);

    let req = json!({
        "model": "phi", "index_name": "kb", "context_token_ratio": 0.5, "max_tokens": 100000,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Where is the Eiffel Tower?"}],
    });
    let (code, answer) = call(&state, "POST", "/v1/chat/completions", &req.to_string()).await;
    assert_eq!(code, 200, "{answer}");
    // The answer is built here with KAITO's fields around the LLM's message and usage.
    assert_eq!(answer["choices"][0]["message"]["content"], "Paris.");
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");
    assert_eq!(answer["object"], "chat.completion");
    assert_eq!(answer["model"], "phi");
    let id = answer["id"].as_str().unwrap();
    assert!(id.len() == 32 && id.chars().all(|c| c.is_ascii_hexdigit()) && id != "chatcmpl-1", "{id}");
    assert!(answer["created"].as_u64().unwrap() > 1_700_000_000);
    assert_eq!(answer["usage"]["total_tokens"], 12);
    // Only the similar chunk is context: the GPU sentence is below the similarity cut.
    let sources = answer["source_nodes"].as_array().unwrap();
    assert_eq!(sources.len(), 1, "{answer}");
    assert!(sources[0]["text"].as_str().unwrap().contains("Eiffel Tower"), "{answer}");
    assert_eq!(sources[0]["metadata"]["src"], "a");

    let (auth, sent) = seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(auth.as_deref(), Some("Bearer s3cret"));
    // Our fields are not forwarded; the context joins the client's system prompt.
    assert!(sent.get("index_name").is_none() && sent.get("context_token_ratio").is_none(), "{sent}");
    let system = sent["messages"][0]["content"].as_str().unwrap();
    assert!(system.starts_with("Be brief.\n\nUse the context information below to assist the user."), "{system}");
    assert!(system.contains("The Eiffel Tower is in Paris"), "{system}");
    assert!(!system.contains("GPU nodes"), "{system}");
    assert_eq!(sent["messages"][1]["content"], "Where is the Eiffel Tower?");
    // max_tokens is clamped to what is left of the 512-token window.
    let max = sent["max_tokens"].as_u64().unwrap();
    assert!(max < 512 && max > 100, "{max}");

    // Nothing similar in the index: KAITO answers without context, passing the request through.
    let req = json!({"model": "phi", "index_name": "kb", "messages": [{"role": "user", "content": "Recommend a chocolate cake recipe"}]});
    let (code, answer) = call(&state, "POST", "/v1/chat/completions", &req.to_string()).await;
    assert_eq!(code, 200, "{answer}");
    assert_eq!((answer["id"].as_str(), &answer["source_nodes"]), (Some("chatcmpl-1"), &Value::Null), "{answer}");
    let (_, sent) = seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(sent["messages"], req["messages"]);

    // The LLM's error status on the RAG path: relayed with KAITO's detail and the LLM's error object.
    let req = json!({"model": "broken", "index_name": "kb", "messages": [{"role": "user", "content": "Where is the Eiffel Tower?"}]});
    let (code, err) = call(&state, "POST", "/v1/chat/completions", &req.to_string()).await;
    assert_eq!(code, 401, "{err}");
    assert_eq!(err["detail"], r#"Chat completion failed: 401: b'{"error":{"message":"no such model","type":"auth"}}'"#);
    assert_eq!(err["error"]["message"], "no such model");

    // KAITO's checks and messages.
    let user = |c: &str| json!({"role": "user", "content": c});
    let long = "word ".repeat(600);
    for (body, code, param, detail) in [
        (
            json!({"index_name": "kb", "context_token_ratio": 0.9, "messages": [user("q")]}),
            400,
            "context_token_ratio",
            "Invalid context_token_ratio: 0.9. Must be between 0.2 and 0.8.",
        ),
        (
            json!({"index_name": "kb", "stream": true, "messages": [user("q")]}),
            400,
            "stream",
            "stream=true is only supported for passthrough chat completions.",
        ),
        (json!({"index_name": "kb", "n": 2, "messages": [user("q")]}), 400, "n", "n > 1 is not supported."),
        (
            json!({"n": 2, "tools": [{"type": "function"}], "messages": [user("q")]}),
            400,
            "tools",
            "tools and functions are not supported.",
        ),
        (json!({"index_name": "nope", "messages": [user("q")]}), 404, "", "No such index: 'nope' exists."),
        (
            json!({"index_name": "kb", "messages": [user("q"), {"role": "assistant", "content": "a"}]}),
            400,
            "messages",
            "There must be a user prompt since the latest assistant message.",
        ),
        (
            json!({"index_name": "kb", "messages": [{"content": "q"}]}),
            400,
            "messages",
            "Invalid request format: messages must contain 'role'.",
        ),
        (
            json!({"index_name": "kb", "messages": [{"role": "system"}, user("q")]}),
            400,
            "messages",
            "Invalid request format: messages must contain 'content' for role 'system'.",
        ),
        (
            json!({"index_name": "kb", "messages": [user("")]}),
            400,
            "messages",
            "Invalid request format: user messages must contain 'content'.",
        ),
        (
            json!({"index_name": "kb", "messages": [user(&long)]}),
            400,
            "messages",
            "Prompt length exceeds context window.",
        ),
    ] {
        let (got, err) = call(&state, "POST", "/v1/chat/completions", &body.to_string()).await;
        assert_eq!(got, code, "{body}: {err}");
        assert_eq!(err["detail"], detail, "{body}: {err}");
        if !param.is_empty() {
            assert_eq!(err["error"]["param"], param);
        }
    }
    // A tool turn is passed through as is, index or not.
    let req = json!({"model": "phi", "index_name": "kb", "messages": [user("q"), {"role": "tool", "content": "42", "tool_call_id": "c"}]});
    let (code, answer) = call(&state, "POST", "/v1/chat/completions", &req.to_string()).await;
    assert_eq!((code, &answer["source_nodes"]), (200, &Value::Null), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_an_index_pass_straight_through_streaming_included() {
    let (url, seen) = backend().await;
    let dir = tempfile::tempdir().unwrap();
    let state = common::state(dir.path(), Some(Llm::new(&format!("{url}/v1/chat/completions"), None, 4096)));
    let req = json!({"model": "phi", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let (code, body) = call(&state, "POST", "/v1/chat/completions", &req.to_string()).await;
    assert_eq!(code, 200);
    assert_eq!(body, "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\ndata: [DONE]\n\n");
    let (auth, sent) = seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!((auth, sent), (None, req));
    // A JSON answer gains KAITO's "source_nodes": null.
    let req = json!({"model": "phi", "messages": [{"role": "user", "content": "hi"}]});
    let (code, body) = call(&state, "POST", "/v1/chat/completions", &req.to_string()).await;
    assert_eq!((code, body["id"].as_str(), &body["source_nodes"]), (200, Some("chatcmpl-1"), &Value::Null), "{body}");
    // The backend's own errors come back with its status, its error object and KAITO's detail.
    let req = json!({"model": "broken", "messages": [{"role": "user", "content": "hi"}]});
    let (code, body) = call(&state, "POST", "/v1/chat/completions", &req.to_string()).await;
    assert_eq!(code, 401, "{body}");
    assert_eq!(body["error"]["message"], "no such model");
    assert_eq!(body["detail"], r#"b'{"error":{"message":"no such model","type":"auth"}}'"#);
    // An unreachable LLM is a 502 naming it.
    let dead = common::state(&dir.path().join("dead"), Some(Llm::new("http://127.0.0.1:9", None, 4096)));
    let (code, err) = call(&dead, "POST", "/v1/chat/completions", &req.to_string()).await;
    assert_eq!(code, 502, "{err}");
    assert!(err["detail"].as_str().unwrap().contains("127.0.0.1:9"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_embeddings_keep_order_and_send_the_secret() {
    let seen: Seen = Arc::default();
    let s = seen.clone();
    // Vectors derived from the text, returned in reverse order with their indexes.
    let app = Router::new().route(
        "/v1/embeddings",
        post(move |headers: HeaderMap, body: Bytes| {
            let s = s.clone();
            async move {
                let v = record(&s, &headers, &body);
                let inputs = v["input"].as_array().unwrap();
                let mut data: Vec<Value> = inputs
                    .iter()
                    .enumerate()
                    .map(|(i, t)| {
                        let len = t.as_str().unwrap().len() as f64;
                        json!({"index": i, "object": "embedding", "embedding": [len, 1.0, 0.0, -len]})
                    })
                    .collect();
                data.reverse();
                axum::Json(json!({"object": "list", "data": data, "model": v["model"]}))
            }
        }),
    );
    let addr = spawn(app).await;
    let embedder = tokio::task::spawn_blocking(move || {
        let e = RemoteEmbedder::connect(&format!("http://{addr}/v1"), Some("bge".into()), Some("tok".into())).unwrap();
        let e = kaito_rag::embed::Embedder::Remote(e);
        let vs = e.embed(&["a".into(), "abc".into()], |_| {}).unwrap();
        (e.dim(), e.model_id().to_string(), vs)
    })
    .await
    .unwrap();
    assert_eq!(embedder.0, 4);
    assert_eq!(embedder.1, "remote:bge");
    assert_eq!(embedder.2, vec![vec![1.0, 1.0, 0.0, -1.0], vec![3.0, 1.0, 0.0, -3.0]]);
    let (auth, body) = seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(auth.as_deref(), Some("Bearer tok"));
    assert_eq!(body["model"], "bge");
}
