//! The HTTP contract: the official `openai` Python client against the real server with SmolLM2, and the error
//! paths (malformed JSON, overload, loading) checked on the router directly.

mod common;

use axum::body::Body;
use http_body_util::BodyExt;
use kaito_inference::engine::{Engine, EngineConfig};
use kaito_inference::loader;
use kaito_inference::metrics::Metrics;
use kaito_inference::server::{AppState, Serving, router};
use serde_json::{Value, json};
use std::path::Path;
use std::sync::{Arc, OnceLock};
use tch::{Device, Kind};
use tower::ServiceExt;

fn state(dir: &Path, config: EngineConfig) -> AppState {
    tch::set_num_threads(1);
    let loaded = loader::load(dir, Device::Cpu, Kind::Float, 2048).expect("model loads");
    let metrics = Arc::new(Metrics::default());
    let stop = loaded.text.stop_ids.clone();
    let serving =
        Serving { engine: Engine::start(loaded.model, stop, config, metrics.clone()), text: Arc::new(loaded.text) };
    let state = AppState {
        serving: Arc::new(OnceLock::new()),
        failed: Arc::new(OnceLock::new()),
        model_name: "smollm2".into(),
        aliases: vec![],
        metrics,
        lora: Default::default(),
        tool_parser: Some(kaito_inference::tools::Parser::Hermes),
    };
    let _ = state.serving.set(serving);
    state
}

async fn call(state: &AppState, method: &str, path: &str, body: &str) -> (u16, Value) {
    let req = axum::http::Request::builder().method(method).uri(path).body(Body::from(body.to_string())).unwrap();
    let resp = router(state.clone()).oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into())))
}

/// Serves the model in `dir` as `smollm2` on a free port and runs the Python client `script` against it with
/// `extra` arguments after the base URL and the name; returns its stdout once it printed "all checks passed".
async fn run_client(dir: &std::path::Path, script: &str, extra: &[&std::ffi::OsStr]) -> String {
    let state = state(dir, EngineConfig::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(axum::serve(listener, router(state)).into_future());
    let (python, path) = (common::python(), common::script(script));
    let extra: Vec<std::ffi::OsString> = extra.iter().map(|a| a.to_os_string()).collect();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(path)
            .arg(format!("http://{addr}/v1"))
            .arg("smollm2")
            .args(extra)
            .output()
    })
    .await
    .unwrap()
    .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{script} failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("all checks passed"), "{stdout}");
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_client_gets_what_it_expects() {
    run_client(&common::model("smollm2-135m-instruct"), "openai_contract.py", &[]).await;
}

/// `logprobs` (chat: with `top_logprobs`; completions: a number) through the official client: every chosen token's
/// log probability and its alternatives equal transformers' log-softmax over the same context, streamed or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logprobs_match_transformers() {
    let dir = common::model("smollm2-135m-instruct");
    let stdout = run_client(&dir, "openai_logprobs.py", &[dir.as_os_str()]).await;
    eprintln!("{stdout}");
}

/// Tool calls (forced, required, auto; whole and streamed; the round trip through a `tool` message) and structured
/// output (20 sampled json_schema answers valid under the schema) through the official client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_and_structured_output_through_the_openai_client() {
    let stdout = run_client(&common::model("smollm2-135m-instruct"), "openai_tools.py", &[]).await;
    eprintln!("{stdout}");
}

#[tokio::test]
async fn bad_requests_get_json_errors_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    common::tiny("MistralForCausalLM").write(dir.path());
    let s = state(dir.path(), EngineConfig::default());
    let (code, body) = call(&s, "POST", "/v1/chat/completions", "{not json").await;
    assert_eq!(code, 400);
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    let (code, body) = call(
        &s,
        "POST",
        "/v1/chat/completions",
        r#"{"model": "smollm2", "messages": [{"role": "robot", "content": "hi"}]}"#,
    )
    .await;
    assert_eq!((code, body["error"]["param"].as_str()), (400, Some("messages[0].role")), "{body}");
    let (code, body) = call(&s, "POST", "/v1/chat/completions", r#"{"model": "smollm2", "messages": "hi"}"#).await;
    assert_eq!((code, body["error"]["param"].as_str()), (400, Some("messages")), "{body}");
    let long: Vec<u32> = vec![5; 300];
    let (code, body) =
        call(&s, "POST", "/v1/completions", &json!({"model": "smollm2", "prompt": long}).to_string()).await;
    assert_eq!((code, body["error"]["code"].as_str()), (400, Some("context_length_exceeded")), "{body}");
    let (code, body) = call(&s, "POST", "/v1/completions", r#"{"model": "smollm2", "prompt": [70000]}"#).await;
    assert_eq!(code, 400, "{body}");
    let (code, body) = call(&s, "POST", "/detokenize", r#"{"tokens": [1, 2, 3]}"#).await;
    assert_eq!(code, 200, "{body}");
    // A tokenizer larger than the model (this tiny model embeds 512 ids): refused naming the field, not a crash.
    let (code, body) = call(
        &s,
        "POST",
        "/v1/chat/completions",
        r#"{"model": "smollm2", "messages": [{"role": "user", "content": "hi"}]}"#,
    )
    .await;
    assert_eq!((code, body["error"]["param"].as_str()), (400, Some("messages")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("past the model's 512 embeddings"), "{body}");
    let (code, _) = call(&s, "GET", "/v1/nope", "").await;
    assert_eq!(code, 404);
    let (code, body) = call(&s, "GET", "/metrics", "").await;
    assert_eq!(code, 200);
    assert!(
        body.as_str()
            .unwrap()
            .contains("kaito_inference_requests_total{endpoint=\"/v1/chat/completions\",status=\"400\"}"),
        "{body}"
    );
}

/// OpenAI features the server cannot honour are refused with a 400 naming the field, never silently dropped; the
/// values that ask for nothing (`tools: []`, `tool_choice: "none"`, `response_format: text`, `logprobs: false`) pass.
/// Tools and structured output are served; what they cannot do is refused the same way.
#[tokio::test]
async fn unsupported_openai_fields_are_refused_not_dropped() {
    // SmolLM2 itself: the chat prompts here must reach a model that can embed them.
    let s = state(&common::model("smollm2-135m-instruct"), EngineConfig::default());
    let chat = |extra: Value| {
        let mut body = json!({"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        body.to_string()
    };
    let tool = json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]);
    let schema = |s: Value| json!({"type": "json_schema", "json_schema": {"name": "x", "schema": s}});
    for (extra, field, says) in [
        (json!({"tool_choice": "required"}), "tool_choice", "no tools"),
        (
            json!({"tools": tool, "tool_choice": {"type": "function", "function": {"name": "g"}}}),
            "tool_choice.function.name",
            "not one of",
        ),
        (json!({"tools": tool, "tool_choice": "sometimes"}), "tool_choice", "not one of"),
        (json!({"tools": [{"type": "retrieval"}]}), "tools[0]", "missing field `function`"),
        (json!({"tools": [{"type": "code", "function": {"name": "f"}}]}), "tools[0].type", "only function"),
        (json!({"tools": [{"type": "function", "function": {"name": "a b"}}]}), "tools[0].function.name", "letters"),
        (json!({"tools": tool, "response_format": {"type": "json_object"}}), "response_format", "no room"),
        (
            json!({"response_format": schema(json!({"$ref": "#/nowhere"}))}),
            "response_format.json_schema.schema",
            "does not compile",
        ),
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}),
            "response_format.json_schema.schema",
            "needs its schema",
        ),
        (json!({"response_format": {"type": "yaml"}}), "response_format.type", "unknown variant"),
        (json!({"functions": tool}), "functions", "deprecated"),
        (json!({"logit_bias": {"42": 5}}), "logit_bias", "not supported"),
        (json!({"messages": [{"role": "tool", "content": "21C"}]}), "messages[0].tool_call_id", "names the call"),
        (
            json!({"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f"}}]}]}),
            "messages[0].tool_calls[0]",
            "arguments",
        ),
    ] {
        let (code, body) = call(&s, "POST", "/v1/chat/completions", &chat(extra.clone())).await;
        assert_eq!((code, body["error"]["param"].as_str()), (400, Some(field)), "{extra}: {body}");
        assert!(body["error"]["message"].as_str().unwrap().contains(says), "{extra}: {body}");
    }
    // Chat's own features asked of /v1/completions.
    for (extra, field) in
        [(json!({"tools": tool}), "tools"), (json!({"response_format": {"type": "json_object"}}), "response_format")]
    {
        let mut body = json!({"model": "smollm2", "prompt": "hi", "max_tokens": 2});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let (code, body) = call(&s, "POST", "/v1/completions", &body.to_string()).await;
        assert_eq!((code, body["error"]["param"].as_str()), (400, Some(field)), "{body}");
        assert!(body["error"]["message"].as_str().unwrap().contains("/v1/chat/completions"), "{body}");
    }
    // A model whose preset names no tool-call parser refuses tools, naming the field; tool_choice none still passes.
    let no_parser = AppState { tool_parser: None, ..s.clone() };
    let (code, body) = call(&no_parser, "POST", "/v1/chat/completions", &chat(json!({"tools": tool}))).await;
    assert_eq!((code, body["error"]["param"].as_str()), (400, Some("tools")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("--tool-call-parser"), "{body}");
    let (code, body) =
        call(&no_parser, "POST", "/v1/chat/completions", &chat(json!({"tools": tool, "tool_choice": "none"}))).await;
    assert_eq!(code, 200, "{body}");
    // Log probabilities are served; out-of-range requests for them are refused naming the field.
    let (code, body) =
        call(&s, "POST", "/v1/completions", r#"{"model": "smollm2", "prompt": "hi", "max_tokens": 2, "logprobs": 9}"#)
            .await;
    assert_eq!((code, body["error"]["param"].as_str()), (400, Some("logprobs")), "{body}");
    let (code, body) = call(&s, "POST", "/v1/chat/completions", &chat(json!({"top_logprobs": 2}))).await;
    assert_eq!((code, body["error"]["param"].as_str()), (400, Some("top_logprobs")), "{body}");
    let (code, body) =
        call(&s, "POST", "/v1/chat/completions", &chat(json!({"logprobs": true, "top_logprobs": 3}))).await;
    assert_eq!(code, 200, "{body}");
    let content = body["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!((content.len(), content[0]["top_logprobs"].as_array().unwrap().len()), (2, 3), "{body}");
    let noop = json!({
        "tools": [], "tool_choice": "none", "response_format": {"type": "text"}, "logprobs": false,
        "user": "u", "some_vendor_extension": 1
    });
    let (code, body) = call(&s, "POST", "/v1/chat/completions", &chat(noop)).await;
    assert_eq!(code, 200, "no-op values and unknown extras pass: {body}");
}

/// As vLLM with several `--served-model-name` values: KAITO's name first, an alias accepted too, both listed.
#[tokio::test]
async fn a_second_served_name_is_accepted_and_listed() {
    let loading = AppState {
        serving: Arc::new(OnceLock::new()),
        failed: Arc::new(OnceLock::new()),
        model_name: "phi-3.5-mini-instruct".into(),
        aliases: vec!["phi-3.5-mini".into()],
        metrics: Arc::new(Metrics::default()),
        lora: Default::default(),
        tool_parser: None,
    };
    let (_, list) = call(&loading, "GET", "/v1/models", "").await;
    let ids: Vec<&str> = list["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["phi-3.5-mini-instruct", "phi-3.5-mini"]);
    // Both names reach the model (503 while it loads); another name is 404 model_not_found.
    for name in ["phi-3.5-mini-instruct", "phi-3.5-mini"] {
        let body = format!(r#"{{"model": "{name}", "prompt": "x"}}"#);
        assert_eq!(call(&loading, "POST", "/v1/completions", &body).await.0, 503, "{name}");
    }
    let (code, body) = call(&loading, "POST", "/v1/completions", r#"{"model": "other", "prompt": "x"}"#).await;
    assert_eq!((code, body["error"]["code"].as_str()), (404, Some("model_not_found")), "{body}");
}

#[tokio::test]
async fn overload_is_429_and_loading_is_503() {
    let dir = tempfile::tempdir().unwrap();
    common::tiny("LlamaForCausalLM").write(dir.path());
    let s = state(dir.path(), EngineConfig { max_waiting: 0, ..Default::default() });
    let (code, body) =
        call(&s, "POST", "/v1/completions", r#"{"model": "smollm2", "prompt": [1, 2, 3], "max_tokens": 4}"#).await;
    assert_eq!((code, body["error"]["type"].as_str()), (429, Some("rate_limit_exceeded")), "{body}");

    let loading = AppState {
        serving: Arc::new(OnceLock::new()),
        failed: Arc::new(OnceLock::new()),
        model_name: "smollm2".into(),
        aliases: vec![],
        metrics: Arc::new(Metrics::default()),
        lora: Default::default(),
        tool_parser: None,
    };
    assert_eq!(call(&loading, "GET", "/health", "").await.0, 503);
    assert_eq!(call(&loading, "GET", "/version", "").await.0, 200);
    let (code, body) = call(&loading, "POST", "/v1/completions", r#"{"model": "smollm2", "prompt": "x"}"#).await;
    assert_eq!((code, body["error"]["type"].as_str()), (503, Some("service_unavailable")), "{body}");
    assert_eq!(call(&s, "GET", "/health", "").await.0, 200);
}

/// A peft-made adapter loaded at run time (`POST /v1/load_lora_adapter`, as vLLM), asked for by name through the
/// official `openai` client: its greedy answer is the one peft computes for the same adapter; unloaded, its name is
/// a 404 again. Without the opt-in the two routes do not exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lora_adapters_load_serve_by_name_and_unload_at_run_time() {
    let dir = common::model("smollm2-135m-instruct");
    let mut state = state(&dir, EngineConfig::default());
    let load = |path: &str| json!({"lora_name": "tuned", "lora_path": path}).to_string();
    assert_eq!(call(&state, "POST", "/v1/load_lora_adapter", &load("/nowhere")).await.0, 404, "no opt-in, no route");
    state.lora.runtime_updates = true;

    // peft's adapter and its greedy answer to the question the client asks.
    let text = kaito_inference::text::TextModel::load(&dir, &[2]).unwrap();
    let prompt: Vec<i64> =
        common::chat_prompt(&text, "What is the capital of France?").into_iter().map(i64::from).collect();
    let adapter = tempfile::tempdir().unwrap();
    let spec = json!({"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj", "down_proj"], "seed": 3, "b_scale": 1.0});
    let (_, reference) = common::peft_adapter(&dir, adapter.path(), &spec, &prompt, 16);
    let greedy: Vec<u32> = reference.iter().map(|&t| t as u32).collect();
    let until_eos: Vec<u32> = greedy.iter().copied().take_while(|t| !text.stop_ids.contains(t)).collect();
    let want = text.decode(&until_eos).unwrap();

    let path = adapter.path().display().to_string();
    let (status, body) = call(&state, "POST", "/v1/load_lora_adapter", &load(&path)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, Value::String("Success: LoRA adapter 'tuned' added successfully.".into()));
    let (status, body) = call(&state, "POST", "/v1/load_lora_adapter", &load(&path)).await;
    assert_eq!((status, body["error"]["param"].as_str()), (400, Some("lora_name")), "loaded twice: {body}");
    let (status, body) =
        call(&state, "POST", "/v1/load_lora_adapter", &json!({"lora_name": "x", "lora_path": "/nowhere"}).to_string())
            .await;
    assert!(status == 400 && body["error"]["message"].as_str().unwrap().contains("adapter_config.json"), "{body}");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(axum::serve(listener, router(state.clone())).into_future());
    let (python, script) = (common::python(), common::script("openai_lora.py"));
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(script)
            .arg(format!("http://{addr}/v1"))
            .args(["smollm2", "tuned"])
            .output()
    })
    .await
    .unwrap()
    .expect("python runs");
    assert!(out.status.success(), "openai_lora.py failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let answers: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answers["adapter"].as_str(), Some(want.as_str()), "the adapter answers as peft computes it");
    assert_ne!(answers["adapter"], answers["base"], "and not as the base model");

    let unload = json!({"lora_name": "tuned"}).to_string();
    assert_eq!(call(&state, "POST", "/v1/unload_lora_adapter", &unload).await.0, 200);
    assert_eq!(call(&state, "POST", "/v1/unload_lora_adapter", &unload).await.0, 404);
    let ask = json!({"model": "tuned", "messages": [{"role": "user", "content": "hi"}]}).to_string();
    let (status, body) = call(&state, "POST", "/v1/chat/completions", &ask).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("model_not_found")), "{body}");
}
