//! Tokenizer, chat template and stop tokens of a model directory.

use crate::config::ids;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::Path;

/// One chat message as the OpenAI API sends it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Message {
    pub role: String,
    #[serde(default)]
    pub content: Content,
    /// An assistant turn's function calls (`[{"id", "type", "function": {"name", "arguments"}}]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<Value>>,
    /// A tool turn: the call it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// A tool turn: the function that answered (OpenAI's older field, which some templates print).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl Message {
    /// A turn of `role` saying `text`.
    pub fn text(role: &str, text: impl Into<String>) -> Message {
        Message { role: role.into(), content: Content::Text(text.into()), ..Default::default() }
    }

    /// The message as chat templates read it: text content, and call arguments as objects (Hugging Face templates
    /// write `arguments | tojson`; OpenAI sends them as JSON text).
    fn for_template(&self) -> Result<Value, String> {
        let mut m = serde_json::json!({"role": self.role, "content": self.content.text()?});
        if let Some(calls) = &self.tool_calls {
            let calls: Vec<Value> = calls
                .iter()
                .map(|c| {
                    let mut c = c.clone();
                    if let Some(args) =
                        c["function"]["arguments"].as_str().and_then(|a| serde_json::from_str::<Value>(a).ok())
                    {
                        c["function"]["arguments"] = args;
                    }
                    c
                })
                .collect();
            m["tool_calls"] = Value::Array(calls);
        }
        if let Some(id) = &self.tool_call_id {
            m["tool_call_id"] = Value::String(id.clone());
        }
        if let Some(name) = &self.name {
            m["name"] = Value::String(name.clone());
        }
        Ok(m)
    }
}

/// Message content: a string, or a list of parts of which the text ones are used.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Value>),
    #[default]
    Empty,
}

impl Content {
    /// The text of the content (text parts joined).
    pub fn text(&self) -> Result<String, String> {
        match self {
            Content::Text(s) => Ok(s.clone()),
            Content::Empty => Ok(String::new()),
            Content::Parts(parts) => parts
                .iter()
                .map(|p| match (p["type"].as_str(), p["text"].as_str()) {
                    (Some("text"), Some(t)) => Ok(t.to_string()),
                    (kind, _) => Err(format!("content part of type {kind:?} is not supported (only text)")),
                })
                .collect(),
        }
    }
}

/// What turns text into tokens and back, and chats into prompts.
pub struct TextModel {
    pub tokenizer: tokenizers::Tokenizer,
    /// The chat template, compiled once at load: `None` without one, `Err` with the reason when it does not parse
    /// (requests then get that reason, as they would from a per-request compile).
    chat: Option<Result<minijinja::Environment<'static>, String>>,
    /// Whether the chat template reads a `tools` variable (else tools are described in a system turn).
    pub template_takes_tools: bool,
    /// Structured output's grammar compiler for this tokenizer; `Err` says why it could not be built.
    pub grammars: Result<crate::grammar::Grammars, String>,
    bos_token: String,
    eos_token: String,
    /// Token ids that end generation (EOS from generation_config/config, the template's end-of-turn token).
    pub stop_ids: Vec<u32>,
}

fn token_text(v: &Value) -> Option<String> {
    v.as_str().map(str::to_string).or_else(|| v["content"].as_str().map(str::to_string))
}

/// A minijinja environment with Hugging Face's template helpers and `template` as "chat".
fn chat_environment(template: String) -> Result<minijinja::Environment<'static>, String> {
    let mut env = minijinja::Environment::new();
    minijinja_contrib::add_to_environment(&mut env);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |msg: String| -> Result<String, minijinja::Error> {
        Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
    });
    env.add_template_owned("chat", template).map_err(|e| format!("chat template does not parse: {e}"))?;
    Ok(env)
}

fn read_json(path: &Path) -> anyhow::Result<Option<Value>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::anyhow!("{}: {e}", path.display())),
    }
}

impl TextModel {
    /// Load `tokenizer.json`, `tokenizer_config.json` and `generation_config.json` from `dir`.
    pub fn load(dir: &Path, config_eos: &[u32]) -> anyhow::Result<TextModel> {
        let path = dir.join("tokenizer.json");
        let tokenizer =
            tokenizers::Tokenizer::from_file(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let tc = read_json(&dir.join("tokenizer_config.json"))?.unwrap_or(Value::Null);
        let template = match &tc["chat_template"] {
            Value::String(s) => Some(s.clone()),
            // Named templates: the default one serves chat.
            Value::Array(list) => list
                .iter()
                .find(|t| t["name"] == "default")
                .or(list.first())
                .and_then(|t| t["template"].as_str())
                .map(str::to_string),
            _ => None,
        };
        let bos_token = token_text(&tc["bos_token"]).unwrap_or_default();
        let eos_token = token_text(&tc["eos_token"]).unwrap_or_default();
        let mut stop_ids = config_eos.to_vec();
        if let Some(gc) = read_json(&dir.join("generation_config.json"))? {
            stop_ids.extend(ids(gc.get("eos_token_id")));
        }
        if let Some(id) = tokenizer.token_to_id(&eos_token) {
            stop_ids.push(id);
        }
        stop_ids.sort_unstable();
        stop_ids.dedup();
        anyhow::ensure!(!stop_ids.is_empty(), "{}: no EOS token in the tokenizer or generation config", dir.display());
        let template_takes_tools = template.as_deref().is_some_and(|t| t.contains("tools"));
        let chat = template.map(chat_environment);
        let grammars = crate::grammar::Grammars::load(dir, &tokenizer, &stop_ids).map_err(|e| format!("{e:#}"));
        if let Err(e) = &grammars {
            tracing::warn!(error = %e, "structured output is off for this tokenizer");
        }
        Ok(TextModel { tokenizer, chat, template_takes_tools, grammars, bos_token, eos_token, stop_ids })
    }

    /// The prompt text for `messages`, rendered with the model's chat template.
    pub fn render_chat(&self, messages: &[Message]) -> Result<String, String> {
        self.render_chat_with(messages, None)
    }

    /// The prompt text for `messages` with `tools` (OpenAI's tool list) in the template's `tools` variable.
    pub fn render_chat_with(&self, messages: &[Message], tools: Option<&[Value]>) -> Result<String, String> {
        let env = self
            .chat
            .as_ref()
            .ok_or("this model has no chat template (tokenizer_config.json chat_template); use /v1/completions")?
            .as_ref()
            .map_err(String::clone)?;
        let messages: Vec<Value> = messages.iter().map(Message::for_template).collect::<Result<_, String>>()?;
        let ctx = minijinja::context! {
            messages => messages,
            tools => tools,
            add_generation_prompt => true,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
        };
        env.get_template("chat").and_then(|t| t.render(ctx)).map_err(|e| format!("chat template failed: {e}"))
    }

    /// Token ids of `text`; `special` adds the tokenizer's BOS/EOS decorations (plain completions).
    pub fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>, String> {
        self.tokenizer.encode(text, special).map(|e| e.get_ids().to_vec()).map_err(|e| e.to_string())
    }

    /// Text of `ids`, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String, String> {
        self.tokenizer.decode(ids, true).map_err(|e| e.to_string())
    }

    /// Text of `ids` with special tokens written out (tool-call markers such as `[TOOL_CALLS]` are special).
    pub fn decode_special(&self, ids: &[u32]) -> Result<String, String> {
        self.tokenizer.decode(ids, false).map_err(|e| e.to_string())
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }
}

/// Turns a growing list of token ids into text deltas, holding back bytes of an unfinished character.
///
/// Each token decodes a short window (the tokens since the last emitted text, after a few before them for context,
/// as Hugging Face's text-generation-inference does), so a token costs the same at position 10 and 10,000.
#[derive(Default)]
pub struct Detokenizer {
    ids: Vec<u32>,
    /// Start of the context window: tokens before it are never decoded again.
    prefix: usize,
    /// End of the text already emitted.
    read: usize,
    /// Write special tokens out (a tool-call parser reads its markers).
    special: bool,
}

impl Detokenizer {
    /// A detokenizer that writes special tokens out too (`special`), for parsers that read them.
    pub fn new(special: bool) -> Self {
        Detokenizer { special, ..Detokenizer::default() }
    }

    /// Add one token; returns the new text, if any is complete.
    pub fn push(&mut self, text: &TextModel, id: u32) -> String {
        self.ids.push(id);
        let decode = |ids: &[u32]| if self.special { text.decode_special(ids) } else { text.decode(ids) };
        let (Ok(before), Ok(now)) = (decode(&self.ids[self.prefix..self.read]), decode(&self.ids[self.prefix..]))
        else {
            return String::new();
        };
        if now.len() <= before.len() || now.ends_with('\u{FFFD}') || !now.is_char_boundary(before.len()) {
            return String::new();
        }
        let delta = now[before.len()..].to_string();
        self.prefix = self.read;
        self.read = self.ids.len();
        delta
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A byte-level tokenizer with single-byte tokens (so one character may take several tokens) and a few words.
    fn model() -> TextModel {
        let mut vocab = serde_json::Map::new();
        let bytes = tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet();
        let mut chars: Vec<char> = bytes.into_iter().collect();
        chars.sort();
        for (i, c) in chars.iter().enumerate() {
            vocab.insert(c.to_string(), serde_json::json!(i));
        }
        let n = chars.len();
        for (i, w) in ["Hello", "\u{0120}world", "\u{0120}caf"].iter().enumerate() {
            vocab.insert(w.to_string(), serde_json::json!(n + i));
        }
        let json = serde_json::json!({
            "version": "1.0", "added_tokens": [], "normalizer": null,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
            "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "vocab": vocab, "merges": [], "dropout": null, "unk_token": null,
                      "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false}
        });
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tokenizer.json"), json.to_string()).unwrap();
        std::fs::write(dir.path().join("tokenizer_config.json"), r#"{"eos_token": "Hello"}"#).unwrap();
        TextModel::load(dir.path(), &[]).unwrap()
    }

    #[test]
    fn deltas_add_up_to_the_whole_text_and_wait_for_whole_characters() {
        let m = model();
        let text = "Hello world café, naïve — 東京 ✓ world";
        let ids = m.encode(text, false).unwrap();
        let mut d = Detokenizer::default();
        let deltas: Vec<String> = ids.iter().map(|&id| d.push(&m, id)).collect();
        assert_eq!(deltas.concat(), text);
        assert!(deltas.iter().all(|s| !s.contains('\u{FFFD}')), "no half characters: {deltas:?}");
        assert!(deltas.iter().filter(|s| s.is_empty()).count() >= 6, "multi-byte characters wait: {deltas:?}");
    }
}
