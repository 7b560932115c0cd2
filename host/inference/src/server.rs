//! The OpenAI-compatible HTTP layer: request parsing and validation, prompts,
//! streaming. Generation itself is the engine's.

use crate::engine::{Engine, Event, FinishReason, GenRequest, SubmitError};
use crate::grammar::Constraint;
use crate::metrics::Metrics;
use crate::sampling::{Sampler, SamplingParams, TokenLogprob};
use crate::text::{Detokenizer, Message, TextModel};
use crate::tools::{Piece, Reader, Reading, Tool, ToolChoice};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use std::convert::Infallible;
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

/// The model once loaded.
pub struct Serving {
    pub engine: Engine,
    pub text: Arc<TextModel>,
}

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    /// Set when the model is loaded; until then everything but /health, /version and /metrics answers 503.
    pub serving: Arc<OnceLock<Serving>>,
    /// Set when loading failed, so /health says why.
    pub failed: Arc<OnceLock<String>>,
    /// The served model name: listed first and reported in every response.
    pub model_name: String,
    /// Further names requests may use for the same model (e.g. a preset alias beside KAITO's name).
    pub aliases: Vec<String>,
    pub metrics: Arc<Metrics>,
    /// LoRA adapters served beside the base model.
    pub lora: Lora,
    /// How the model writes tool calls (`--tool-call-parser`); `None`: requests with tools are refused.
    pub tool_parser: Option<crate::tools::Parser>,
}

/// A loaded adapter as the HTTP layer knows it (the tensors live on the engine thread).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterCard {
    /// Where it was loaded from.
    pub source: String,
}

/// Pulls an adapter artifact (an `oci://` path's reference, without the scheme) into a local directory.
pub type Fetch = Arc<dyn Fn(&str) -> anyhow::Result<std::path::PathBuf> + Send + Sync>;

/// The LoRA side of the server.
#[derive(Clone, Default)]
pub struct Lora {
    /// Loaded adapters by name: the names requests may put in `model`.
    pub cards: Arc<std::sync::Mutex<std::collections::BTreeMap<String, AdapterCard>>>,
    /// Whether `/v1/load_lora_adapter` and `/v1/unload_lora_adapter` are served (vLLM's
    /// `VLLM_ALLOW_RUNTIME_LORA_UPDATING`): off by default, as they read paths the caller names.
    pub runtime_updates: bool,
    /// How `oci://` adapter paths are pulled; `None`: refused.
    pub fetch: Option<Fetch>,
}

impl Lora {
    /// Loads the adapter at `path` (a PEFT directory, or `oci://REF` when fetching is set up) under `name` into
    /// `engine`, and lists it.
    pub async fn load(&self, engine: &Engine, name: &str, path: &str, strength: f64) -> Result<(), ApiError> {
        let bad = |param: &str, m: String| ApiError::bad(param, m);
        if name.is_empty() || name.chars().any(char::is_whitespace) {
            return Err(bad("lora_name", format!("{name:?}: an adapter name is one word")));
        }
        if self.cards.lock().expect("lora cards").contains_key(name) {
            return Err(bad("lora_name", format!("the adapter {name:?} is loaded already; unload it first")));
        }
        // The artifact is pulled here (network and disk); its tensors are built on the engine thread.
        let fetch = self.fetch.clone();
        let owned = path.to_string();
        let dir = tokio::task::spawn_blocking(move || match owned.strip_prefix(kaito_oci::SCHEME) {
            Some(reference) => match fetch {
                Some(fetch) => fetch(reference),
                None => anyhow::bail!("{owned}: oci:// adapters need the registry options of this server"),
            },
            None => Ok(std::path::PathBuf::from(&owned)),
        })
        .await
        .map_err(|e| bad("lora_path", e.to_string()))?
        .map_err(|e| bad("lora_path", format!("{e:#}")))?;
        let (shape, owned_name) = (engine.shape.clone(), name.to_string());
        let build = Box::new(move || crate::lora::Adapter::load_with_strength(&owned_name, &dir, &shape, strength));
        engine.load_adapter(build).await.map_err(|e| {
            // A name taken is the caller's name; anything else is what the path holds.
            if e.contains("loaded already") { bad("lora_name", e) } else { bad("lora_path", e) }
        })?;
        let card = AdapterCard { source: path.to_string() };
        self.cards.lock().expect("lora cards").insert(name.to_string(), card);
        Ok(())
    }
}

/// An OpenAI-style error.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    param: Option<String>,
    code: Option<&'static str>,
}

impl ApiError {
    fn bad(param: &str, message: impl Into<String>) -> Self {
        ApiError { status: StatusCode::BAD_REQUEST, message: message.into(), param: Some(param.into()), code: None }
    }
    fn code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.param {
            Some(p) => write!(f, "{p}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let kind = match self.status {
            StatusCode::NOT_FOUND => "not_found_error",
            StatusCode::TOO_MANY_REQUESTS => "rate_limit_exceeded",
            StatusCode::SERVICE_UNAVAILABLE => "service_unavailable",
            s if s.is_server_error() => "server_error",
            _ => "invalid_request_error",
        };
        let body = json!({"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}});
        (self.status, axum::Json(body)).into_response()
    }
}

/// `stop`: one string or a list.
#[derive(Debug, Deserialize, Default)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
    #[default]
    None,
}

#[derive(Debug, Deserialize, Default)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// Fields shared by chat and completion requests.
#[derive(Debug, Deserialize)]
struct Common {
    model: String,
    max_tokens: Option<i64>,
    max_completion_tokens: Option<i64>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<i64>,
    seed: Option<u64>,
    #[serde(default)]
    stop: Stop,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    n: Option<i64>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    /// vLLM's extension: generate past EOS.
    #[serde(default)]
    ignore_eos: bool,
}

/// `response_format`.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ResponseFormat {
    Text,
    JsonObject,
    JsonSchema { json_schema: JsonSchemaFormat },
}

#[derive(Debug, Deserialize)]
struct JsonSchemaFormat {
    #[allow(dead_code)]
    name: String,
    schema: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct ChatRequest {
    messages: Vec<Message>,
    /// Functions the model may call.
    tools: Option<Vec<Tool>>,
    /// `none`, `auto`, `required` or a named function (checked by [`ToolChoice::parse`]).
    tool_choice: Option<Value>,
    /// Whether an `auto` answer may hold several calls (default true).
    parallel_tool_calls: Option<bool>,
    /// Output constrained to JSON (`json_object`) or to a JSON schema (`json_schema`).
    response_format: Option<ResponseFormat>,
    /// Report the chosen tokens' log probabilities.
    logprobs: Option<bool>,
    /// With `logprobs`, this many alternatives per token (0 to 20).
    top_logprobs: Option<i64>,
    #[serde(flatten)]
    common: Common,
}

/// `prompt`: a string, a one-element list of strings, or token ids.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Ids(Vec<u32>),
}

#[derive(Debug, Deserialize)]
struct CompletionRequest {
    prompt: Prompt,
    #[serde(default)]
    echo: bool,
    /// Report the chosen tokens' log probabilities and this many alternatives (0 to 5).
    logprobs: Option<i64>,
    /// Generate this many and answer the `n` best by total log probability.
    best_of: Option<i64>,
    #[serde(flatten)]
    common: Common,
}

/// Request fields this server reads, by endpoint (`Common`'s fields plus the endpoint's own), and OpenAI fields that
/// change nothing here (`user`, `metadata`, `store`, `service_tier`, `parallel_tool_calls` without tools).
const COMMON_FIELDS: &[&str] = &[
    "model",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "n",
    "stream",
    "stream_options",
    "ignore_eos",
    "user",
    "metadata",
    "store",
    "service_tier",
    "parallel_tool_calls",
];
const CHAT_FIELDS: &[&str] =
    &["messages", "logprobs", "top_logprobs", "tools", "tool_choice", "parallel_tool_calls", "response_format"];
const COMPLETION_FIELDS: &[&str] = &["prompt", "echo", "logprobs", "best_of"];

/// OpenAI fields this server recognises but cannot honour yet, each with the values that ask for nothing: any other
/// value is refused with a 400 naming the field, so a client never mistakes a dropped feature for a served one.
fn unsupported(field: &str, value: &Value) -> Option<&'static str> {
    let empty = value.is_null()
        || value == &Value::Bool(false)
        || value.as_array().is_some_and(|a| a.is_empty())
        || value.as_object().is_some_and(|o| o.is_empty())
        || value.as_str() == Some("")
        || value.as_u64() == Some(0);
    let why = match field {
        "tools" => "tool calling is served by /v1/chat/completions",
        "tool_choice" if value.as_str() == Some("none") => return None,
        "tool_choice" => "tool calling is served by /v1/chat/completions",
        "functions" | "function_call" if value.as_str() == Some("none") => return None,
        "functions" | "function_call" => {
            "functions and function_call are OpenAI's deprecated form; send tools and tool_choice"
        }
        "response_format" if value.get("type").and_then(Value::as_str) == Some("text") => return None,
        "response_format" => "structured output (json_object, json_schema) is served by /v1/chat/completions",
        "best_of" if value.as_u64() == Some(1) => return None,
        "best_of" => "best_of is served by /v1/completions only",
        "logit_bias" => "logit_bias is not supported yet",
        "suffix" => "suffix (insertion) is not supported",
        "prediction" => "predicted outputs are not supported",
        "modalities" if value == &json!(["text"]) => return None,
        "audio" | "modalities" => "only text output is supported",
        _ => return None,
    };
    (!empty).then_some(why)
}

/// Refuse what cannot be honoured (above); log, and otherwise ignore, fields no OpenAI-compatible server reads, as
/// vLLM does.
fn check_fields(body: &Bytes, endpoint_fields: &[&str]) -> Result<(), ApiError> {
    let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(body) else { return Ok(()) };
    for (field, value) in &fields {
        // An endpoint's own fields are served there, whatever the other endpoint cannot do with them.
        if let Some(why) = unsupported(field, value).filter(|_| !endpoint_fields.contains(&field.as_str())) {
            return Err(ApiError::bad(field, format!("{field}: {why} by this server (kaito-inference)")));
        }
        let known = COMMON_FIELDS.contains(&field.as_str()) || endpoint_fields.contains(&field.as_str());
        // `true` asks for something of every field `unsupported` lists, so it probes membership of that list.
        let recognised = known || unsupported(field, &Value::Bool(true)).is_some();
        if !recognised {
            tracing::warn!(field, "ignoring a request field this server does not know");
        }
    }
    Ok(())
}

fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let param = if path == "." || path == "?" { "(body)".to_string() } else { path };
        ApiError::bad(&param, format!("{param}: {}", e.into_inner()))
    })
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

fn request_id(prefix: &str) -> String {
    format!("{prefix}-{:016x}{:08x}", rand::random::<u64>(), rand::random::<u32>())
}

impl AppState {
    fn serving(&self) -> Result<&Serving, ApiError> {
        self.serving.get().ok_or_else(|| ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: self.failed.get().cloned().unwrap_or_else(|| "the model is still loading".into()),
            param: None,
            code: None,
        })
    }

    /// The adapter `model` names (`None`: the base model), or 404.
    fn check_model(&self, model: &str) -> Result<Option<String>, ApiError> {
        if model == self.model_name || self.aliases.iter().any(|a| a == model) {
            return Ok(None);
        }
        let cards = self.lora.cards.lock().expect("lora cards");
        if cards.contains_key(model) {
            return Ok(Some(model.to_string()));
        }
        let adapters = if cards.is_empty() {
            String::new()
        } else {
            format!(" and the adapters {:?}", cards.keys().collect::<Vec<_>>())
        };
        Err(ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!("the model `{model}` does not exist; this server serves `{}`{adapters}", self.model_name),
            param: Some("model".into()),
            code: Some("model_not_found"),
        })
    }
}

/// Validated generation settings.
struct Plan {
    params: SamplingParams,
    stops: Vec<String>,
    stream: bool,
    include_usage: bool,
    /// Choices to generate: `best_of` when asked (completions), else `n`.
    n: usize,
    /// Choices to answer (`n`): the `answer` of the `n` generated with the highest total log probability.
    answer: usize,
    /// The client asked for log probabilities (they may be computed for `best_of` alone).
    logprobs_shown: bool,
    /// The grammar every choice's output follows (structured output, forced tool calls).
    constraint: Option<Constraint>,
    /// How the output is read when the request has tools.
    reading: Option<Reading>,
}

/// Most choices one request may ask for (`n`).
const MAX_N: i64 = 64;

/// Most alternatives per token: OpenAI's `top_logprobs` bound for chat, its `logprobs` bound for completions.
const MAX_TOP_LOGPROBS_CHAT: i64 = 20;
const MAX_LOGPROBS_COMPLETION: i64 = 5;

/// Completions' `best_of`: generate `best_of` sequences and answer the `n` with the highest total log probability, as
/// OpenAI does (not streamed; usage counts every sequence generated).
fn with_best_of(mut plan: Plan, best_of: Option<i64>) -> Result<Plan, ApiError> {
    let Some(b) = best_of else { return Ok(plan) };
    if b < plan.answer as i64 || b > MAX_N {
        return Err(ApiError::bad(
            "best_of",
            format!("best_of must be between n ({}) and {MAX_N}, got {b}", plan.answer),
        ));
    }
    if b as usize > plan.answer {
        if plan.stream {
            return Err(ApiError::bad("best_of", "best_of cannot be streamed: the best are known only at the end"));
        }
        plan.n = b as usize;
        plan.params.logprobs.get_or_insert(0);
    }
    Ok(plan)
}

/// Chat's `logprobs` and `top_logprobs` as the number of alternatives to report (`None`: no log probabilities).
fn chat_logprobs_asked(logprobs: Option<bool>, top: Option<i64>) -> Result<Option<usize>, ApiError> {
    let on = logprobs.unwrap_or(false);
    match top {
        Some(k) if !(0..=MAX_TOP_LOGPROBS_CHAT).contains(&k) => Err(ApiError::bad(
            "top_logprobs",
            format!("top_logprobs must be between 0 and {MAX_TOP_LOGPROBS_CHAT}, got {k}"),
        )),
        Some(_) if !on => Err(ApiError::bad("top_logprobs", "top_logprobs needs logprobs: true")),
        k => Ok(on.then(|| k.unwrap_or(0) as usize)),
    }
}

/// The completions endpoint's `logprobs` (the number of alternatives).
fn completion_logprobs_asked(logprobs: Option<i64>) -> Result<Option<usize>, ApiError> {
    match logprobs {
        Some(k) if !(0..=MAX_LOGPROBS_COMPLETION).contains(&k) => {
            Err(ApiError::bad("logprobs", format!("logprobs must be between 0 and {MAX_LOGPROBS_COMPLETION}, got {k}")))
        }
        k => Ok(k.map(|k| k as usize)),
    }
}

/// Refuses prompt ids the model cannot embed (a tokenizer larger than the model's vocabulary), naming `field`.
fn check_ids(prompt: &[u32], engine: &Engine, field: &str) -> Result<(), ApiError> {
    match prompt.iter().find(|&&t| t as usize >= engine.vocab) {
        Some(bad) => {
            Err(ApiError::bad(field, format!("token id {bad} is past the model's {} embeddings", engine.vocab)))
        }
        None => Ok(()),
    }
}

/// The engine ended a request's events without saying it finished: its thread stopped (a fault), a 500.
fn engine_stopped() -> ApiError {
    ApiError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        message: "the engine stopped before this request finished".into(),
        param: None,
        code: None,
    }
}

fn plan(
    c: &Common,
    prompt_len: usize,
    engine: &Engine,
    prompt_field: &str,
    logprobs: Option<usize>,
) -> Result<Plan, ApiError> {
    let n = c.n.unwrap_or(1);
    if !(1..=MAX_N).contains(&n) {
        return Err(ApiError::bad("n", format!("n must be between 1 and {MAX_N}, got {n}")));
    }
    let context = engine.max_context;
    if prompt_len >= context {
        return Err(ApiError::bad(
            prompt_field,
            format!("the prompt is {prompt_len} tokens; this model's context is {context} tokens, so shorten it"),
        )
        .code("context_length_exceeded"));
    }
    if prompt_len >= engine.kv_tokens {
        return Err(ApiError::bad(
            prompt_field,
            format!(
                "the prompt is {prompt_len} tokens but the server's KV cache holds {} (--kv-cache-tokens); shorten it",
                engine.kv_tokens
            ),
        )
        .code("context_length_exceeded"));
    }
    let (field, asked) = match (c.max_completion_tokens, c.max_tokens) {
        (Some(m), _) => ("max_completion_tokens", Some(m)),
        (None, m) => ("max_tokens", m),
    };
    let max_tokens = match asked {
        Some(m) if m < 1 => return Err(ApiError::bad(field, format!("{field} must be at least 1, got {m}"))),
        Some(m) if prompt_len + m as usize > context => {
            return Err(ApiError::bad(
                field,
                format!("{prompt_len} prompt tokens plus {field}={m} exceed the {context}-token context; ask for at most {}", context - prompt_len),
            )
            .code("context_length_exceeded"));
        }
        Some(m) => m as usize,
        None => context - prompt_len,
    };
    let temperature = c.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::bad("temperature", format!("temperature must be between 0 and 2, got {temperature}")));
    }
    let top_p = c.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::bad("top_p", format!("top_p must be in (0, 1], got {top_p}")));
    }
    let top_k = match c.top_k {
        None | Some(-1) | Some(0) => 0,
        Some(k) if k > 0 => k as usize,
        Some(k) => return Err(ApiError::bad("top_k", format!("top_k must be positive, or -1 for no limit; got {k}"))),
    };
    for (name, v) in [("presence_penalty", c.presence_penalty), ("frequency_penalty", c.frequency_penalty)] {
        if let Some(v) = v.filter(|v| !(-2.0..=2.0).contains(v)) {
            return Err(ApiError::bad(name, format!("{name} must be between -2 and 2, got {v}")));
        }
    }
    let stops = match &c.stop {
        Stop::None => vec![],
        Stop::One(s) => vec![s.clone()],
        Stop::Many(v) => v.clone(),
    };
    if stops.len() > 4 || stops.iter().any(String::is_empty) {
        return Err(ApiError::bad("stop", "stop takes up to 4 non-empty strings"));
    }
    if c.stream_options.is_some() && !c.stream {
        return Err(ApiError::bad("stream_options", "stream_options is only allowed with stream: true"));
    }
    Ok(Plan {
        params: SamplingParams {
            temperature,
            top_p,
            top_k,
            presence_penalty: c.presence_penalty.unwrap_or(0.0),
            frequency_penalty: c.frequency_penalty.unwrap_or(0.0),
            seed: c.seed,
            max_tokens,
            ignore_eos: c.ignore_eos,
            logprobs,
            prompt_logprobs: None,
        },
        stops,
        stream: c.stream,
        include_usage: c.stream_options.as_ref().is_some_and(|o| o.include_usage),
        n: n as usize,
        answer: n as usize,
        logprobs_shown: logprobs.is_some(),
        constraint: None,
        reading: None,
    })
}

/// Output text so far, with stop strings applied.
struct Output {
    detok: Detokenizer,
    text: String,
    /// Bytes of `text` already sent (streaming).
    sent: usize,
    tokens: usize,
    finish: Option<FinishReason>,
    /// Log probabilities of the tokens so far, when asked for.
    logprobs: Vec<(u32, TokenLogprob)>,
    /// Of `logprobs`, those already sent (streaming).
    logprobs_sent: usize,
    /// Reads tool calls out of the text, when the request has tools.
    reader: Option<Reader>,
    /// The prompt's log probabilities (completions' `echo` with `logprobs`), once the engine sent them.
    prompt_logprobs: Option<Vec<TokenLogprob>>,
}

impl Output {
    fn new(reading: Option<&Reading>) -> Self {
        // Llama 3's and Mistral's call markers are special tokens: their parsers read them in the text.
        let special = matches!(reading, Some(Reading::Auto { parser, .. }) if parser.needs_special_tokens());
        Output {
            detok: Detokenizer::new(special),
            reader: reading.cloned().map(Reader::new),
            prompt_logprobs: None,
            text: String::new(),
            sent: 0,
            tokens: 0,
            finish: None,
            logprobs: Vec::new(),
            logprobs_sent: 0,
        }
    }

    /// The log probabilities not sent yet (streaming), marked sent.
    fn unsent_logprobs(&mut self) -> &[(u32, TokenLogprob)] {
        let from = self.logprobs_sent;
        self.logprobs_sent = self.logprobs.len();
        &self.logprobs[from..]
    }

    /// Take one engine event; true when generation is over.
    fn push(&mut self, text: &TextModel, event: Event, stops: &[String]) -> Result<bool, ApiError> {
        match event {
            Event::Token(id, logprob) => {
                self.tokens += 1;
                if let Some(lp) = logprob {
                    self.logprobs.push((id, lp));
                }
                self.text.push_str(&self.detok.push(text, id));
                if let Some(at) = stops.iter().filter_map(|s| self.text.find(s.as_str())).min() {
                    self.text.truncate(at);
                    self.finish = Some(FinishReason::Stop);
                    return Ok(true);
                }
                Ok(false)
            }
            Event::PromptLogprobs(lps) => {
                self.prompt_logprobs = Some(lps);
                Ok(false)
            }
            Event::Finished(reason) => {
                if reason == FinishReason::Stop {
                    self.tokens += 1; // The EOS token counts as generated, as OpenAI counts it.
                }
                self.finish = Some(reason);
                Ok(true)
            }
            Event::Failed(message) => {
                Err(ApiError { status: StatusCode::INTERNAL_SERVER_ERROR, message, param: None, code: None })
            }
        }
    }

    /// Text safe to send now: everything but a tail that might still become a stop string.
    fn ready(&mut self, stops: &[String], done: bool) -> String {
        let hold = if done { 0 } else { stops.iter().map(|s| s.len().saturating_sub(1)).max().unwrap_or(0) };
        let mut end = self.text.len().saturating_sub(hold).max(self.sent);
        while !self.text.is_char_boundary(end) {
            end -= 1;
        }
        let out = self.text[self.sent..end].to_string();
        self.sent = end;
        out
    }
}

/// A token as OpenAI shows it: its text alone and that text's UTF-8 bytes (a token that is part of a character shows
/// U+FFFD, as vLLM's do).
fn token_text(text: &TextModel, id: u32) -> String {
    text.decode(&[id]).unwrap_or_default()
}

/// Chat's `logprobs` object for `items`.
fn chat_logprobs(text: &TextModel, items: &[(u32, TokenLogprob)]) -> Value {
    let entry = |id: u32, logprob: f32| {
        let t = token_text(text, id);
        json!({"token": t, "logprob": logprob, "bytes": t.as_bytes()})
    };
    let content: Vec<Value> = items
        .iter()
        .map(|(id, lp)| {
            let mut e = entry(*id, lp.logprob);
            e["top_logprobs"] = lp.top.iter().map(|(t, l)| entry(*t, *l)).collect();
            e
        })
        .collect();
    json!({"content": content, "refusal": null})
}

/// The prompt's tokens and their log probabilities (from the second token on), for `echo`.
type PromptLogprobs<'a> = Option<(&'a [u32], &'a [TokenLogprob])>;

/// The completions endpoint's `logprobs` object for `items`, text offsets counted from `offset` (the echoed prompt's
/// length); with `prompt` (`echo`), the prompt's tokens first, from offset 0, the first one without a log probability
/// (nothing precedes it), as OpenAI and vLLM show it.
fn completion_logprobs(
    text: &TextModel,
    prompt: PromptLogprobs,
    items: &[(u32, TokenLogprob)],
    offset: usize,
) -> Value {
    let (mut tokens, mut values, mut tops, mut offsets) = (vec![], vec![], vec![], vec![]);
    // One token at text offset `at` (moved past it); no log probability: null, as the prompt's first token shows.
    let mut entry = |id: u32, lp: Option<&TokenLogprob>, at: &mut usize| {
        let t = token_text(text, id);
        offsets.push(*at);
        *at += t.len();
        tokens.push(t);
        values.push(lp.map_or(Value::Null, |lp| json!(lp.logprob)));
        tops.push(lp.map_or(Value::Null, |lp| {
            Value::Object(lp.top.iter().map(|(tid, l)| (token_text(text, *tid), json!(l))).collect())
        }));
    };
    if let Some((ids, lps)) = prompt {
        let mut at = 0;
        for (k, id) in ids.iter().enumerate() {
            entry(*id, k.checked_sub(1).and_then(|j| lps.get(j)), &mut at);
        }
    }
    let mut at = offset;
    for (id, lp) in items {
        entry(*id, Some(lp), &mut at);
    }
    json!({"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets})
}

/// A choice's `logprobs` in the endpoint's shape, or null when the client did not ask for them.
fn choice_logprobs(
    shown: bool,
    kind: Kind,
    text: &TextModel,
    prompt: PromptLogprobs,
    items: &[(u32, TokenLogprob)],
    offset: usize,
) -> Value {
    match (shown, kind) {
        (false, _) => Value::Null,
        (true, Kind::Chat) => chat_logprobs(text, items),
        (true, Kind::Completion) => completion_logprobs(text, prompt, items, offset),
    }
}

fn usage(prompt: usize, completion: usize) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Chat,
    Completion,
}

/// What a refused submission answers.
fn submit_error(e: SubmitError) -> ApiError {
    match e {
        SubmitError::Overloaded(_) => ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: e.to_string(),
            param: None,
            code: Some("overloaded"),
        },
        SubmitError::Stopped => {
            ApiError { status: StatusCode::SERVICE_UNAVAILABLE, message: e.to_string(), param: None, code: None }
        }
    }
}

/// Submits `plan.n` sequences of `prompt` (seeds `seed`, `seed+1`, ... when one is given) as one engine request
/// whose prompt is computed once for all choices, and returns their event receivers, choice by choice.
fn submit_choices(
    serving: &Serving,
    prompt: &[u32],
    plan: &Plan,
    adapter: &Option<String>,
) -> Result<Vec<tokio::sync::mpsc::UnboundedReceiver<Event>>, ApiError> {
    let mut receivers = Vec::with_capacity(plan.n);
    let mut choices = Vec::with_capacity(plan.n);
    for i in 0..plan.n {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut params = plan.params.clone();
        params.seed = params.seed.map(|s| s.wrapping_add(i as u64));
        choices.push((Sampler::new(params).constrained(plan.constraint.as_ref().map(Constraint::fork)), tx));
        receivers.push(rx);
    }
    let mut choices = choices.into_iter();
    let (sampler, events) = choices.next().expect("n is at least 1");
    let request =
        GenRequest { prompt: prompt.to_vec(), adapter: adapter.clone(), sampler, events, siblings: choices.collect() };
    serving.engine.submit(request).map_err(submit_error)?;
    Ok(receivers)
}

/// The next event of any live choice, with its index (`None` once every receiver is gone); a receiver that closed
/// without finishing yields `Event::Failed`. Polling starts after the choice served last, so no choice starves.
async fn next_event(
    receivers: &mut [Option<tokio::sync::mpsc::UnboundedReceiver<Event>>],
    start: &mut usize,
) -> Option<(usize, Event)> {
    std::future::poll_fn(|cx| {
        let n = receivers.len();
        let mut live = false;
        for k in 0..n {
            let i = (*start + k) % n;
            let Some(rx) = receivers[i].as_mut() else { continue };
            live = true;
            match rx.poll_recv(cx) {
                std::task::Poll::Ready(Some(e)) => {
                    *start = i + 1;
                    return std::task::Poll::Ready(Some((i, e)));
                }
                std::task::Poll::Ready(None) => {
                    receivers[i] = None;
                    return std::task::Poll::Ready(Some((i, Event::Failed(engine_stopped().message))));
                }
                std::task::Poll::Pending => {}
            }
        }
        if live { std::task::Poll::Pending } else { std::task::Poll::Ready(None) }
    })
    .await
}

/// A chat delta's JSON for a streamed piece of an answer with tools.
fn piece_delta(piece: Piece) -> Value {
    match piece {
        Piece::Content(t) => json!({"content": t}),
        Piece::Start { index, id, name } => json!({"tool_calls": [{"index": index, "id": id, "type": "function",
            "function": {"name": name, "arguments": ""}}]}),
        Piece::Arguments { index, delta } => {
            json!({"tool_calls": [{"index": index, "function": {"arguments": delta}}]})
        }
    }
}

/// A choice's finish reason: `tool_calls` when it called a function, else the engine's.
fn finish_reason(out: &Output) -> &'static str {
    if out.reader.as_ref().is_some_and(Reader::called) {
        return "tool_calls";
    }
    out.finish.unwrap_or(FinishReason::Length).as_str()
}

async fn generate(
    state: &AppState,
    kind: Kind,
    prompt: Vec<u32>,
    plan: Plan,
    echo: Option<String>,
    adapter: Option<String>,
) -> Result<Response, ApiError> {
    let serving = state.serving()?;
    if !plan.stream {
        return generate_choices(state, kind, prompt, plan, echo, adapter).await;
    }
    let prompt_len = prompt.len();
    // Responses name what was asked for: the adapter, else the served model name.
    let model = adapter.clone().unwrap_or_else(|| state.model_name.clone());
    let mut receivers: Vec<Option<_>> =
        submit_choices(serving, &prompt, &plan, &adapter)?.into_iter().map(Some).collect();
    let n = receivers.len();
    let (id, created) = (request_id(if kind == Kind::Chat { "chatcmpl" } else { "cmpl" }), now());
    let text = serving.text.clone();
    let text_for_logprobs = serving.text.clone();
    // `delta`: chat's delta object, or the completion's text.
    let chunk = move |index: usize, delta: Value, finish: Option<&str>, logprobs: Value| -> Value {
        match kind {
            Kind::Chat => json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                       "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]}),
            Kind::Completion => json!({"id": id, "object": "text_completion", "created": created, "model": model,
                       "choices": [{"index": index, "text": delta.as_str().unwrap_or_default(), "logprobs": logprobs, "finish_reason": finish}]}),
        }
    };
    let stops = plan.stops.clone();
    let include_usage = plan.include_usage;
    let shown = plan.logprobs_shown;
    let reading = plan.reading.clone();
    let echo_logprobs = plan.params.prompt_logprobs.is_some();
    let prompt_ids = prompt.clone();
    // Each chunk carries the log probabilities of the tokens that arrived since the last one.
    let logprobs_of = move |out: &mut Output, offset: usize| -> Value {
        let items = out.unsent_logprobs().to_vec();
        choice_logprobs(shown, kind, &text_for_logprobs, None, &items, offset)
    };
    // Dropping the response (client gone) drops this stream and its receivers, which frees the engine's sequences.
    let stream = async_stream::stream! {
        let mut outs: Vec<Output> = (0..n).map(|_| Output::new(reading.as_ref())).collect();
        let opening = if kind == Kind::Chat { Some(String::new()) } else { echo };
        let mut offsets = vec![opening.as_ref().map_or(0, String::len); n];
        for i in 0..n {
            match kind {
                Kind::Chat => yield chunk(i, json!({"role": "assistant", "content": ""}), None, Value::Null),
                // With the prompt's log probabilities, the echo waits for them.
                Kind::Completion => if let Some(o) = opening.as_ref().filter(|_| !echo_logprobs) {
                    yield chunk(i, json!(o), None, Value::Null);
                }
            }
        }
        let mut start = 0;
        while let Some((i, event)) = next_event(&mut receivers, &mut start).await {
            let out = &mut outs[i];
            let done = match out.push(&text, event, &stops) {
                Ok(d) => d,
                Err(e) => {
                    yield json!({"error": {"message": e.message, "type": "server_error"}});
                    return;
                }
            };
            if let (Some(lps), Some(o)) = (out.prompt_logprobs.take(), opening.as_ref()) {
                let logprobs = completion_logprobs(&text, Some((&prompt_ids[..], &lps[..])), &[], 0);
                yield chunk(i, json!(o), None, logprobs);
            }
            let delta = out.ready(&stops, done);
            let pieces: Vec<Value> = match out.reader.as_mut() {
                None if delta.is_empty() => vec![],
                None if kind == Kind::Chat => vec![json!({"content": delta})],
                None => vec![json!(delta)],
                Some(reader) => {
                    let mut pieces = reader.push(&delta);
                    if done {
                        pieces.extend(reader.finish());
                    }
                    pieces.into_iter().map(piece_delta).collect()
                }
            };
            for delta_json in pieces {
                let logprobs = logprobs_of(out, offsets[i]);
                offsets[i] += delta_json.as_str().or(delta_json["content"].as_str()).map_or(0, str::len);
                yield chunk(i, delta_json, None, logprobs);
            }
            if done {
                // Ends the engine's sequence early when a stop string hit first.
                receivers[i] = None;
                let logprobs =
                    if out.logprobs_sent < out.logprobs.len() { logprobs_of(out, offsets[i]) } else { Value::Null };
                let empty = if kind == Kind::Chat { json!({}) } else { json!("") };
                yield chunk(i, empty, Some(finish_reason(out)), logprobs);
            }
        }
        if include_usage {
            let mut last = chunk(0, Value::Null, None, Value::Null);
            last["choices"] = json!([]);
            last["usage"] = usage(prompt_len, outs.iter().map(|o| o.tokens).sum());
            yield last;
        }
    };
    let events = stream
        .map(|v| Ok::<_, Infallible>(SseEvent::default().data(v.to_string())))
        .chain(futures::stream::once(async { Ok(SseEvent::default().data("[DONE]")) }));
    Ok(Sse::new(events).keep_alive(KeepAlive::default()).into_response())
}

/// A whole (not streamed) answer: `n` sequences of the same prompt in the engine's batch (seeds `seed`, `seed+1`,
/// ... when one is given), answered as one response with a choice each; usage counts the prompt once.
async fn generate_choices(
    state: &AppState,
    kind: Kind,
    prompt: Vec<u32>,
    plan: Plan,
    echo: Option<String>,
    adapter: Option<String>,
) -> Result<Response, ApiError> {
    let serving = state.serving()?;
    let prompt_len = prompt.len();
    let model = adapter.clone().unwrap_or_else(|| state.model_name.clone());
    let receivers = submit_choices(serving, &prompt, &plan, &adapter)?;
    let text = serving.text.clone();
    let outputs = futures::future::join_all(receivers.into_iter().map(|mut rx| {
        let (text, stops, reading) = (text.clone(), plan.stops.clone(), plan.reading.clone());
        async move {
            let mut out = Output::new(reading.as_ref());
            while let Some(event) = rx.recv().await {
                if out.push(&text, event, &stops)? {
                    break;
                }
            }
            // A closed channel without an end: the engine died; never a 200 with a cut answer.
            if out.finish.is_none() {
                return Err(engine_stopped());
            }
            Ok::<_, ApiError>(out)
        }
    }))
    .await;
    let mut outs = outputs.into_iter().collect::<Result<Vec<Output>, ApiError>>()?;
    // Every sequence generated counts, as OpenAI bills `best_of`.
    let completion_tokens: usize = outs.iter().map(|o| o.tokens).sum();
    if plan.answer < outs.len() {
        let total = |o: &Output| o.logprobs.iter().map(|(_, lp)| lp.logprob as f64).sum::<f64>();
        // Stable: among equals the earlier sequence wins.
        let mut ranked: Vec<(f64, Output)> = outs.into_iter().map(|o| (total(&o), o)).collect();
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
        outs = ranked.into_iter().take(plan.answer).map(|(_, o)| o).collect();
    }
    let mut choices = Vec::with_capacity(outs.len());
    for (index, mut out) in outs.into_iter().enumerate() {
        let echoed = echo.clone().unwrap_or_default();
        let prompt_lps = out.prompt_logprobs.as_deref().map(|lps| (&prompt[..], lps));
        let logprobs = choice_logprobs(plan.logprobs_shown, kind, &text, prompt_lps, &out.logprobs, echoed.len());
        let mut message = json!({"role": "assistant", "content": out.text});
        if let Some(reader) = out.reader.as_mut() {
            let mut pieces = reader.push(&out.text);
            pieces.extend(reader.finish());
            let (content, calls) = crate::tools::collect(pieces);
            message["content"] = json!(content);
            if !calls.is_empty() {
                message["tool_calls"] = calls
                    .into_iter()
                    .map(|(id, c)| json!({"id": id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}))
                    .collect();
            }
        }
        let finish = finish_reason(&out);
        choices.push(match kind {
            Kind::Chat => json!({"index": index, "message": message, "logprobs": logprobs, "finish_reason": finish}),
            Kind::Completion => json!({"index": index, "text": format!("{echoed}{}", out.text), "logprobs": logprobs, "finish_reason": finish}),
        });
    }
    let (object, prefix) = match kind {
        Kind::Chat => ("chat.completion", "chatcmpl"),
        Kind::Completion => ("text_completion", "cmpl"),
    };
    let body = json!({
        "id": request_id(prefix), "object": object, "created": now(), "model": model,
        "choices": choices, "usage": usage(prompt_len, completion_tokens),
    });
    Ok(axum::Json(body).into_response())
}

/// The grammar compiler, or a 400 naming `field` when this tokenizer has none.
fn grammars<'a>(text: &'a TextModel, field: &str) -> Result<&'a crate::grammar::Grammars, ApiError> {
    text.grammars
        .as_ref()
        .map_err(|e| ApiError::bad(field, format!("structured output is unavailable for this model's tokenizer: {e}")))
}

/// Checks the history's roles and tool turns; `developer` becomes `system`, as templates know only the latter.
fn chat_messages(messages: Vec<Message>) -> Result<Vec<Message>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::bad("messages", "messages must hold at least one message"));
    }
    messages
        .into_iter()
        .enumerate()
        .map(|(i, mut m)| {
            let field = |f: &str| format!("messages[{i}].{f}");
            if !matches!(m.role.as_str(), "system" | "user" | "assistant" | "developer" | "tool") {
                return Err(ApiError::bad(
                    &field("role"),
                    format!("role {:?} is not supported (system, developer, user, assistant, tool)", m.role),
                ));
            }
            m.content.text().map_err(|e| ApiError::bad(&field("content"), e))?;
            if m.role == "tool" && m.tool_call_id.is_none() {
                return Err(ApiError::bad(&field("tool_call_id"), "a tool message names the call it answers"));
            }
            if m.tool_calls.is_some() && m.role != "assistant" {
                return Err(ApiError::bad(&field("tool_calls"), "only assistant messages carry tool_calls"));
            }
            for (j, c) in m.tool_calls.iter().flatten().enumerate() {
                if c["function"]["name"].as_str().is_none() || c["function"]["arguments"].as_str().is_none() {
                    return Err(ApiError::bad(
                        &field(&format!("tool_calls[{j}]")),
                        "a call is {\"id\", \"type\": \"function\", \"function\": {\"name\", \"arguments\": JSON text}}",
                    ));
                }
            }
            if m.role == "developer" {
                m.role = "system".into();
            }
            Ok(m)
        })
        .collect()
}

/// What a chat request's tools ask for: how its output is read and the grammar that forces a call, if any.
fn tool_reading(
    state: &AppState,
    text: &TextModel,
    tools: &[Tool],
    choice: Option<&Value>,
    parallel: Option<bool>,
) -> Result<(Option<Reading>, Option<Constraint>), ApiError> {
    crate::tools::validate(tools).map_err(|(field, m)| ApiError::bad(&field, m))?;
    let choice = match choice {
        Some(v) => ToolChoice::parse(v).map_err(|m| ApiError::bad("tool_choice", m))?,
        None => ToolChoice::Auto,
    };
    if tools.is_empty() {
        return match choice {
            ToolChoice::None | ToolChoice::Auto => Ok((None, None)),
            _ => Err(ApiError::bad("tool_choice", "tool_choice asks for a call, but the request has no tools")),
        };
    }
    if choice == ToolChoice::None {
        return Ok((None, None));
    }
    let Some(parser) = state.tool_parser else {
        return Err(ApiError::bad(
            "tools",
            "this model's preset names no tool-call parser (kaito-inference --tool-call-parser), so it cannot call \
             tools; drop tools or set tool_choice to none",
        ));
    };
    let parallel = parallel.unwrap_or(true);
    let names: Vec<String> = tools.iter().map(|t| t.function.name.clone()).collect();
    Ok(match choice {
        ToolChoice::None => unreachable!("answered above"),
        ToolChoice::Auto => (Some(Reading::Auto { parser, names, parallel }), None),
        ToolChoice::Required => {
            let schema = crate::tools::required_schema(tools, parallel);
            let c = grammars(text, "tool_choice")?.json(&schema).map_err(|e| ApiError::bad("tools", e))?;
            (Some(Reading::Required), Some(c))
        }
        ToolChoice::Named(name) => {
            let Some(i) = names.iter().position(|n| *n == name) else {
                return Err(ApiError::bad(
                    "tool_choice.function.name",
                    format!("{name:?} is not one of the request's tools ({})", names.join(", ")),
                ));
            };
            let c = grammars(text, "tool_choice")?
                .json(&tools[i].function.schema())
                .map_err(|e| ApiError::bad(&format!("tools[{i}].function.parameters"), e))?;
            (Some(Reading::Named(name)), Some(c))
        }
    })
}

/// The grammar `response_format` asks for.
fn format_constraint(text: &TextModel, format: Option<&ResponseFormat>) -> Result<Option<Constraint>, ApiError> {
    let schema = match format {
        None | Some(ResponseFormat::Text) => return Ok(None),
        Some(ResponseFormat::JsonObject) => json!({"type": "object"}),
        Some(ResponseFormat::JsonSchema { json_schema }) => json_schema
            .schema
            .clone()
            .ok_or_else(|| ApiError::bad("response_format.json_schema.schema", "json_schema needs its schema"))?,
    };
    let c = grammars(text, "response_format")?.json(&schema).map_err(|e| {
        ApiError::bad("response_format.json_schema.schema", format!("the schema does not compile: {e}"))
    })?;
    Ok(Some(c))
}

async fn chat(State(state): State<AppState>, body: Bytes) -> Response {
    let result = async {
        check_fields(&body, CHAT_FIELDS)?;
        let req: ChatRequest = parse(&body)?;
        let adapter = state.check_model(&req.common.model)?;
        let serving = state.serving()?;
        let text = &serving.text;
        let messages = chat_messages(req.messages)?;
        let tools = req.tools.unwrap_or_default();
        let (reading, forced) = tool_reading(&state, text, &tools, req.tool_choice.as_ref(), req.parallel_tool_calls)?;
        let format = format_constraint(text, req.response_format.as_ref())?;
        if format.is_some() && reading.is_some() {
            return Err(ApiError::bad(
                "response_format",
                "response_format constrains the whole answer, which leaves no room for a tool call; send tools \
                 with tool_choice none, or no response_format",
            ));
        }
        // A reading exists only with a parser (tool_reading refuses tools without one).
        let prompt_text = match reading.as_ref().and(state.tool_parser) {
            Some(parser) => {
                let tool_list: Vec<Value> = tools.iter().map(Tool::for_prompt).collect();
                if text.template_takes_tools {
                    text.render_chat_with(&messages, Some(&tool_list))
                } else {
                    // The template has no place for tools: they and past calls are written in the parser's format.
                    text.render_chat(&crate::tools::describe(parser, &tool_list, messages))
                }
            }
            None => text.render_chat(&messages),
        }
        .map_err(|e| ApiError::bad("messages", e))?;
        let prompt = text.encode(&prompt_text, false).map_err(|e| ApiError::bad("messages", e))?;
        check_ids(&prompt, &serving.engine, "messages")?;
        let logprobs = chat_logprobs_asked(req.logprobs, req.top_logprobs)?;
        let mut plan = plan(&req.common, prompt.len(), &serving.engine, "messages", logprobs)?;
        plan.constraint = forced.or(format);
        plan.reading = reading;
        generate(&state, Kind::Chat, prompt, plan, None, adapter).await
    }
    .await;
    finish(&state, "/v1/chat/completions", result)
}

async fn completions(State(state): State<AppState>, body: Bytes) -> Response {
    let result = async {
        check_fields(&body, COMPLETION_FIELDS)?;
        let req: CompletionRequest = parse(&body)?;
        let adapter = state.check_model(&req.common.model)?;
        let serving = state.serving()?;
        let (prompt, text) = match req.prompt {
            Prompt::Text(t) => (serving.text.encode(&t, true).map_err(|e| ApiError::bad("prompt", e))?, t),
            Prompt::Texts(v) if v.len() == 1 => {
                (serving.text.encode(&v[0], true).map_err(|e| ApiError::bad("prompt", e))?, v[0].clone())
            }
            Prompt::Texts(v) => {
                return Err(ApiError::bad("prompt", format!("{} prompts given; send one per request", v.len())));
            }
            Prompt::Ids(ids) => {
                let vocab = serving.text.vocab_size() as u32;
                if let Some(bad) = ids.iter().find(|i| **i >= vocab) {
                    return Err(ApiError::bad(
                        "prompt",
                        format!("token id {bad} is outside the vocabulary (size {vocab})"),
                    ));
                }
                let text = serving.text.decode(&ids).map_err(|e| ApiError::bad("prompt", e))?;
                (ids, text)
            }
        };
        if prompt.is_empty() {
            return Err(ApiError::bad("prompt", "the prompt is empty"));
        }
        check_ids(&prompt, &serving.engine, "prompt")?;
        let logprobs = completion_logprobs_asked(req.logprobs)?;
        let mut plan =
            with_best_of(plan(&req.common, prompt.len(), &serving.engine, "prompt", logprobs)?, req.best_of)?;
        // `echo` with `logprobs`: the prompt's tokens are scored too.
        plan.params.prompt_logprobs = logprobs.filter(|_| req.echo);
        generate(&state, Kind::Completion, prompt, plan, req.echo.then_some(text), adapter).await
    }
    .await;
    finish(&state, "/v1/completions", result)
}

fn finish(state: &AppState, endpoint: &str, result: Result<Response, ApiError>) -> Response {
    let response = result.unwrap_or_else(IntoResponse::into_response);
    state.metrics.request(endpoint, response.status().as_u16());
    response
}

async fn models(State(state): State<AppState>) -> Response {
    let max = state.serving.get().map(|s| s.engine.max_context);
    let mut cards: Vec<Value> = std::iter::once(&state.model_name)
        .chain(&state.aliases)
        .map(|id| json!({"id": id, "object": "model", "created": now(), "owned_by": "kaito", "max_model_len": max}))
        .collect();
    // Adapters as vLLM lists them: `parent` is the base model, `root` where the adapter came from.
    for (name, card) in state.lora.cards.lock().expect("lora cards").iter() {
        cards.push(json!({"id": name, "object": "model", "created": now(), "owned_by": "kaito",
                          "root": card.source, "parent": state.model_name, "max_model_len": max}));
    }
    axum::Json(json!({"object": "list", "data": cards})).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoadAdapterRequest {
    lora_name: String,
    lora_path: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UnloadAdapterRequest {
    lora_name: String,
    #[serde(default)]
    #[allow(dead_code)]
    lora_int_id: Option<u64>,
}

/// `POST /v1/load_lora_adapter`, as vLLM: `{"lora_name", "lora_path"}`, answered in plain text.
async fn load_adapter(State(state): State<AppState>, body: Bytes) -> Response {
    let result = async {
        let req: LoadAdapterRequest = parse(&body)?;
        let serving = state.serving()?;
        state.lora.load(&serving.engine, &req.lora_name, &req.lora_path, 1.0).await?;
        tracing::info!(adapter = %req.lora_name, path = %req.lora_path, "LoRA adapter loaded");
        Ok(format!("Success: LoRA adapter '{}' added successfully.", req.lora_name).into_response())
    }
    .await;
    finish(&state, "/v1/load_lora_adapter", result)
}

/// `POST /v1/unload_lora_adapter`, as vLLM: `{"lora_name"}`; requests already using it finish with it.
async fn unload_adapter(State(state): State<AppState>, body: Bytes) -> Response {
    let result = async {
        let req: UnloadAdapterRequest = parse(&body)?;
        let serving = state.serving()?;
        let missing = || ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!("no adapter {:?} is loaded", req.lora_name),
            param: Some("lora_name".into()),
            code: Some("model_not_found"),
        };
        if state.lora.cards.lock().expect("lora cards").remove(&req.lora_name).is_none() {
            return Err(missing());
        }
        serving.engine.unload_adapter(&req.lora_name).await.map_err(|_| missing())?;
        tracing::info!(adapter = %req.lora_name, "LoRA adapter unloaded");
        Ok(format!("Success: LoRA adapter '{}' removed successfully.", req.lora_name).into_response())
    }
    .await;
    finish(&state, "/v1/unload_lora_adapter", result)
}

#[derive(Deserialize)]
struct TokenizeRequest {
    prompt: Option<String>,
    messages: Option<Vec<Message>>,
    #[serde(default = "yes")]
    add_special_tokens: bool,
}

fn yes() -> bool {
    true
}

async fn tokenize(State(state): State<AppState>, body: Bytes) -> Response {
    let result = async {
        let req: TokenizeRequest = parse(&body)?;
        let s = state.serving()?;
        let tokens = match (req.prompt, req.messages) {
            (Some(p), None) => s.text.encode(&p, req.add_special_tokens).map_err(|e| ApiError::bad("prompt", e))?,
            (None, Some(m)) => {
                let text = s.text.render_chat(&m).map_err(|e| ApiError::bad("messages", e))?;
                s.text.encode(&text, false).map_err(|e| ApiError::bad("messages", e))?
            }
            _ => return Err(ApiError::bad("prompt", "send exactly one of prompt or messages")),
        };
        Ok(axum::Json(json!({"tokens": tokens, "count": tokens.len(), "max_model_len": s.engine.max_context}))
            .into_response())
    }
    .await;
    finish(&state, "/tokenize", result)
}

#[derive(Deserialize)]
struct DetokenizeRequest {
    tokens: Vec<u32>,
}

async fn detokenize(State(state): State<AppState>, body: Bytes) -> Response {
    let result = async {
        let req: DetokenizeRequest = parse(&body)?;
        let s = state.serving()?;
        let vocab = s.text.vocab_size() as u32;
        if let Some(bad) = req.tokens.iter().find(|t| **t >= vocab) {
            return Err(ApiError::bad("tokens", format!("token id {bad} is outside the vocabulary (size {vocab})")));
        }
        let prompt = s.text.decode(&req.tokens).map_err(|e| ApiError::bad("tokens", e))?;
        Ok(axum::Json(json!({"prompt": prompt})).into_response())
    }
    .await;
    finish(&state, "/detokenize", result)
}

async fn health(State(state): State<AppState>) -> Response {
    match (state.serving.get(), state.failed.get()) {
        (Some(_), _) => (StatusCode::OK, "ok").into_response(),
        (None, Some(why)) => (StatusCode::SERVICE_UNAVAILABLE, format!("model failed to load: {why}")).into_response(),
        (None, None) => (StatusCode::SERVICE_UNAVAILABLE, "loading").into_response(),
    }
}

async fn version() -> Response {
    axum::Json(json!({"version": env!("CARGO_PKG_VERSION"), "engine": "kaito-inference (tch)", "libtorch": "2.4.0"}))
        .into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], state.metrics.encode())
        .into_response()
}

async fn not_found() -> Response {
    ApiError { status: StatusCode::NOT_FOUND, message: "no such endpoint".into(), param: None, code: None }
        .into_response()
}

/// Every route.
pub fn router(state: AppState) -> Router {
    let runtime_updates = state.lora.runtime_updates;
    let router = Router::new();
    // Without the opt-in these routes do not exist (404), as in vLLM.
    let router = if runtime_updates {
        router.route("/v1/load_lora_adapter", post(load_adapter)).route("/v1/unload_lora_adapter", post(unload_adapter))
    } else {
        router
    };
    router
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .route("/health", get(health))
        .route("/version", get(version))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(state)
}
