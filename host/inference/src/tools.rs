//! Tool calling: a request's `tools` and `tool_choice`, the prompt they add when the chat template knows no tools,
//! and the model's output read back as calls by the parser the preset names (vLLM's `--tool-call-parser`).
//!
//! `auto` lets the model choose and parses what it writes; `required` and a named function constrain decoding with
//! a JSON grammar (as vLLM does), so even a model never trained on the format answers with a valid call.

use crate::text::{Content, Message};
use kaito_names::tool_parsers;
use serde::Deserialize;
use serde_json::{Value, json};

/// How a model writes its calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parser {
    Hermes,
    Llama3Json,
    Mistral,
}

impl Parser {
    /// The parser vLLM knows by `name`, when the tch server implements it.
    pub fn named(name: &str) -> Option<Parser> {
        match name {
            tool_parsers::HERMES => Some(Parser::Hermes),
            tool_parsers::LLAMA3_JSON => Some(Parser::Llama3Json),
            tool_parsers::MISTRAL => Some(Parser::Mistral),
            _ => None,
        }
    }

    /// Whether the call markers are special tokens, which text decoding would otherwise drop.
    pub fn needs_special_tokens(self) -> bool {
        matches!(self, Parser::Llama3Json | Parser::Mistral)
    }

    /// What starts the calls in the output (for `Llama3Json`, one of these at the very start).
    fn markers(self) -> &'static [&'static str] {
        match self {
            Parser::Hermes => &["<tool_call>"],
            Parser::Llama3Json => &["<|python_tag|>", "{"],
            Parser::Mistral => &["[TOOL_CALLS]"],
        }
    }

    /// Calls as this model writes them (assistant turns of the history, for templates that know no tools).
    pub fn format_calls(self, calls: &[Call]) -> String {
        let args = |c: &Call| serde_json::from_str::<Value>(&c.arguments).unwrap_or(Value::String(c.arguments.clone()));
        match self {
            Parser::Hermes => calls
                .iter()
                .map(|c| format!("<tool_call>\n{}\n</tool_call>", json!({"name": c.name, "arguments": args(c)})))
                .collect::<Vec<_>>()
                .join("\n"),
            Parser::Llama3Json => calls
                .iter()
                .map(|c| json!({"name": c.name, "parameters": args(c)}).to_string())
                .collect::<Vec<_>>()
                .join("; "),
            Parser::Mistral => {
                let list: Vec<Value> = calls.iter().map(|c| json!({"name": c.name, "arguments": args(c)})).collect();
                format!("[TOOL_CALLS]{}", Value::Array(list))
            }
        }
    }

    /// The instructions a system turn carries when the chat template has no place for tools.
    pub fn instructions(self, tools: &[Value]) -> String {
        let listed: Vec<String> = tools.iter().map(Value::to_string).collect();
        let how = match self {
            Parser::Hermes => {
                "For each call, write a JSON object with the function's name and arguments inside \
                <tool_call></tool_call> tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <arguments-object>}\n</tool_call>"
            }
            Parser::Llama3Json => {
                "To call a function, answer with only a JSON object \
                {\"name\": <function-name>, \"parameters\": <arguments-object>}; separate several calls with \"; \"."
            }
            Parser::Mistral => {
                "To call functions, answer with [TOOL_CALLS] followed by a JSON list of \
                {\"name\": <function-name>, \"arguments\": <arguments-object>}."
            }
        };
        format!(
            "You can call functions to answer. The functions, as JSON schemas:\n<tools>\n{}\n</tools>\n{how}\n\
             Answer in plain text when no function helps.",
            listed.join("\n")
        )
    }

    /// Calls written in `text`, the output after a marker (the marker included for `Llama3Json`'s `{`); `None` when
    /// they are not well-formed.
    fn parse_calls(self, text: &str) -> Option<Vec<Call>> {
        match self {
            Parser::Hermes => {
                // Several calls: each closed, the last one possibly not (the model stopped at EOS).
                let mut calls = Vec::new();
                for part in text.split("<tool_call>") {
                    let body = part.trim();
                    let body = body.strip_suffix("</tool_call>").unwrap_or(body).trim();
                    if body.is_empty() {
                        continue;
                    }
                    calls.push(call_object(&serde_json::from_str(body).ok()?, "arguments")?);
                }
                (!calls.is_empty()).then_some(calls)
            }
            Parser::Llama3Json => {
                let body = text.trim().trim_start_matches("<|python_tag|>").trim();
                let mut calls = Vec::new();
                let mut rest = body;
                // Objects one after another, separated by ";" (a JSON stream reader finds where each ends).
                while !rest.is_empty() {
                    let mut stream = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
                    let value = stream.next()?.ok()?;
                    let at = stream.byte_offset();
                    calls.push(call_object(&value, "parameters").or_else(|| call_object(&value, "arguments"))?);
                    rest = rest[at..].trim_start().trim_start_matches(';').trim_start();
                }
                (!calls.is_empty()).then_some(calls)
            }
            Parser::Mistral => {
                let body = text.trim();
                if body.starts_with('[') {
                    let list: Vec<Value> = serde_json::from_str(body).ok()?;
                    let calls: Option<Vec<Call>> = list.iter().map(|v| call_object(v, "arguments")).collect();
                    return calls.filter(|c| !c.is_empty());
                }
                // The v11 form: `name[ARGS]{...}`, repeated after further [TOOL_CALLS] markers.
                let mut calls = Vec::new();
                for part in body.split("[TOOL_CALLS]") {
                    let (name, args) = part.split_once("[ARGS]")?;
                    let args: Value = serde_json::from_str(args.trim()).ok()?;
                    calls.push(Call { name: name.trim().to_string(), arguments: args.to_string() });
                }
                (!calls.is_empty()).then_some(calls)
            }
        }
    }
}

/// `{"name": ..., <key>: {...}}` as a call.
fn call_object(v: &Value, key: &str) -> Option<Call> {
    let name = v.get("name")?.as_str()?.to_string();
    let arguments = match v.get(key)? {
        Value::String(s) => serde_json::from_str::<Value>(s).ok().filter(Value::is_object)?.to_string(),
        a @ Value::Object(_) => a.to_string(),
        _ => return None,
    };
    Some(Call { name, arguments })
}

/// One function call: its name and its arguments as JSON text (what OpenAI's `function.arguments` holds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub name: String,
    pub arguments: String,
}

/// A `tools` entry.
#[derive(Debug, Clone, Deserialize)]
pub struct Tool {
    #[serde(rename = "type")]
    pub kind: String,
    pub function: Function,
}

/// A function a model may call.
#[derive(Debug, Clone, Deserialize)]
pub struct Function {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// Its arguments' JSON schema (absent: no arguments).
    #[serde(default)]
    pub parameters: Option<Value>,
}

impl Tool {
    /// The tool as chat templates and the tool instructions show it.
    pub fn for_prompt(&self) -> Value {
        let mut f = json!({"name": self.function.name, "parameters": self.function.schema()});
        if let Some(d) = &self.function.description {
            f["description"] = json!(d);
        }
        json!({"type": "function", "function": f})
    }
}

impl Function {
    /// The arguments' schema, an empty object's when the function declares none.
    pub fn schema(&self) -> Value {
        self.parameters.clone().unwrap_or_else(|| json!({"type": "object", "properties": {}}))
    }
}

/// `tool_choice`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    None,
    Auto,
    Required,
    Named(String),
}

impl ToolChoice {
    /// `"none"`, `"auto"`, `"required"` or `{"type": "function", "function": {"name": ...}}`; `Err` says what is
    /// wrong.
    pub fn parse(v: &Value) -> Result<ToolChoice, String> {
        match v {
            Value::String(s) => match s.as_str() {
                "none" => Ok(ToolChoice::None),
                "auto" => Ok(ToolChoice::Auto),
                "required" => Ok(ToolChoice::Required),
                other => Err(format!("{other:?} is not one of none, auto, required")),
            },
            Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .map(|n| ToolChoice::Named(n.to_string()))
                .ok_or_else(|| "a named choice is {\"type\": \"function\", \"function\": {\"name\": ...}}".into()),
            _ => {
                Err("tool_choice is none, auto, required or {\"type\": \"function\", \"function\": {\"name\": ...}}"
                    .into())
            }
        }
    }
}

/// Checks `tools` as OpenAI does: functions only, names of 1 to 64 letters, digits, `_` or `-`, each once, object
/// schemas; `Err` is (field, reason).
pub fn validate(tools: &[Tool]) -> Result<(), (String, String)> {
    let mut seen = std::collections::BTreeSet::new();
    for (i, t) in tools.iter().enumerate() {
        if t.kind != "function" {
            return Err((format!("tools[{i}].type"), format!("{:?}: only function tools are supported", t.kind)));
        }
        let name = &t.function.name;
        let valid =
            (1..=64).contains(&name.len()) && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !valid {
            return Err((
                format!("tools[{i}].function.name"),
                format!("{name:?}: a function name is 1 to 64 letters, digits, underscores or dashes"),
            ));
        }
        if !seen.insert(name.as_str()) {
            return Err((format!("tools[{i}].function.name"), format!("{name:?} is declared twice")));
        }
        if let Some(p) = &t.function.parameters
            && !p.is_object()
        {
            return Err((format!("tools[{i}].function.parameters"), "parameters is a JSON schema object".into()));
        }
    }
    Ok(())
}

/// `messages` for a chat template that has no place for tools: the tools and how to call them in a system turn
/// (before the caller's own system text), past calls written as the model would write them, tool answers as turns
/// of their own (Hermes models read them inside `<tool_response>` tags).
pub fn describe(parser: Parser, tools: &[Value], messages: Vec<Message>) -> Vec<Message> {
    let instructions = parser.instructions(tools);
    let mut out = Vec::with_capacity(messages.len() + 1);
    let mut messages = messages.into_iter().peekable();
    match messages.peek() {
        Some(m) if m.role == "system" => {
            let own = m.content.text().unwrap_or_default();
            messages.next();
            out.push(Message::text("system", format!("{instructions}\n\n{own}")));
        }
        _ => out.push(Message::text("system", instructions)),
    }
    for mut m in messages {
        if let Some(calls) = m.tool_calls.take() {
            let calls: Vec<Call> = calls
                .iter()
                .filter_map(|c| {
                    let f = &c["function"];
                    Some(Call {
                        name: f["name"].as_str()?.to_string(),
                        arguments: f["arguments"].as_str()?.to_string(),
                    })
                })
                .collect();
            let own = m.content.text().unwrap_or_default();
            let sep = if own.is_empty() { "" } else { "\n" };
            m.content = Content::Text(format!("{own}{sep}{}", parser.format_calls(&calls)));
        }
        if m.role == "tool" && parser == Parser::Hermes {
            let own = m.content.text().unwrap_or_default();
            m.content = Content::Text(format!("<tool_response>\n{own}\n</tool_response>"));
        }
        out.push(m);
    }
    out
}

/// The JSON schema `tool_choice: required` constrains the output to: a list of calls to the given functions, as
/// `{"name": ..., "parameters": {...}}` (one call unless `parallel`).
pub fn required_schema(tools: &[Tool], parallel: bool) -> Value {
    let each: Vec<Value> = tools
        .iter()
        .map(|t| {
            json!({"type": "object", "properties": {"name": {"const": t.function.name}, "parameters": t.function.schema()},
                   "required": ["name", "parameters"], "additionalProperties": false})
        })
        .collect();
    let mut schema = json!({"type": "array", "items": {"anyOf": each}, "minItems": 1});
    if !parallel {
        schema["maxItems"] = json!(1);
    }
    schema
}

/// What the output of a request with tools is read as.
#[derive(Debug, Clone)]
pub enum Reading {
    /// `auto`: text, calls where the parser finds them (`parallel`: more than one kept).
    Auto { parser: Parser, names: Vec<String>, parallel: bool },
    /// A named function: the output is its arguments (constrained to its schema).
    Named(String),
    /// `required`: the output is a JSON list of `{"name", "parameters"}` (constrained).
    Required,
}

/// A piece of a streamed answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Content(String),
    /// A call's opening delta: its index, id and name (arguments follow).
    Start {
        index: usize,
        id: String,
        name: String,
    },
    /// More of call `index`'s arguments.
    Arguments {
        index: usize,
        delta: String,
    },
}

/// Reads one choice's output as it streams: content passes through, except text that may open a call, which is
/// held until it is known; calls are emitted whole (`auto`, `required`) or as their arguments arrive (named).
pub struct Reader {
    reading: Reading,
    /// Text not yet given out.
    held: String,
    /// Inside the calls (`auto`): after the marker.
    in_calls: bool,
    /// Content seen (`Llama3Json` looks for its object at the start only).
    started: bool,
    calls: usize,
    /// Ids in the form the parser's model family accepts back (Mistral: 9 letters and digits).
    short_ids: bool,
}

impl Reader {
    /// A reader for one choice.
    pub fn new(reading: Reading) -> Reader {
        let short_ids = matches!(reading, Reading::Auto { parser: Parser::Mistral, .. });
        Reader { reading, held: String::new(), in_calls: false, started: false, calls: 0, short_ids }
    }

    /// Whether any call was given out (the choice then finishes with `tool_calls`).
    pub fn called(&self) -> bool {
        self.calls > 0
    }

    fn id(&self) -> String {
        const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        let n = if self.short_ids { 9 } else { 24 };
        let tail: String = (0..n).map(|_| ALNUM[rand::random_range(0..ALNUM.len())] as char).collect();
        if self.short_ids { tail } else { format!("call_{tail}") }
    }

    fn emit(&mut self, calls: Vec<Call>, out: &mut Vec<Piece>) {
        for c in calls {
            if self.calls > 0 && matches!(self.reading, Reading::Auto { parallel: false, .. }) {
                break;
            }
            let index = self.calls;
            self.calls += 1;
            out.push(Piece::Start { index, id: self.id(), name: c.name });
            out.push(Piece::Arguments { index, delta: c.arguments });
        }
    }

    /// A named function's one call opens (its id and name) before its first arguments.
    fn open_named(&mut self, out: &mut Vec<Piece>) {
        if let Reading::Named(name) = &self.reading
            && self.calls == 0
        {
            let start = Piece::Start { index: 0, id: self.id(), name: name.clone() };
            self.calls = 1;
            out.push(start);
        }
    }

    /// Calls in `text` that name declared functions, or `None`.
    fn known(&self, parser: Parser, text: &str) -> Option<Vec<Call>> {
        let Reading::Auto { names, .. } = &self.reading else { return None };
        parser.parse_calls(text).filter(|calls| calls.iter().all(|c| names.contains(&c.name)))
    }

    /// Takes `delta`, the next text of the output; returns what can be given out now.
    pub fn push(&mut self, delta: &str) -> Vec<Piece> {
        let mut out = Vec::new();
        match &self.reading {
            Reading::Named(_) => {
                self.open_named(&mut out);
                if !delta.is_empty() {
                    out.push(Piece::Arguments { index: 0, delta: delta.to_string() });
                }
            }
            Reading::Required => self.held.push_str(delta),
            Reading::Auto { parser, .. } => {
                let parser = *parser;
                self.held.push_str(delta);
                if parser == Parser::Hermes && self.in_calls {
                    // Each closed call goes out as soon as it closes.
                    while let Some(end) = self.held.find("</tool_call>") {
                        let body: String = self.held.drain(..end + "</tool_call>".len()).collect();
                        match self.known(parser, &body) {
                            Some(calls) => self.emit(calls, &mut out),
                            None => out.push(Piece::Content(format!("<tool_call>{body}"))),
                        }
                        let rest = self.held.trim_start().to_string();
                        match rest.strip_prefix("<tool_call>") {
                            Some(r) => self.held = r.to_string(),
                            None if "<tool_call>".starts_with(rest.as_str()) => self.held = rest,
                            None => {
                                // Text after the calls: content again.
                                self.in_calls = false;
                                self.held = rest;
                                break;
                            }
                        }
                    }
                }
                if self.in_calls {
                    return out;
                }
                let markers = parser.markers();
                if parser == Parser::Llama3Json {
                    if self.started {
                        out.push(Piece::Content(std::mem::take(&mut self.held)));
                        return out;
                    }
                    let t = self.held.trim_start();
                    if t.is_empty() || markers.iter().any(|m| m.starts_with(t) && t.len() < m.len()) {
                        return out; // Not known yet.
                    }
                    self.started = true;
                    if markers.iter().any(|m| t.starts_with(m)) {
                        self.in_calls = true;
                    } else {
                        out.push(Piece::Content(std::mem::take(&mut self.held)));
                    }
                    return out;
                }
                let marker = markers[0];
                if let Some(at) = self.held.find(marker) {
                    let before: String = self.held.drain(..at + marker.len()).collect();
                    let content = &before[..at];
                    if !content.trim().is_empty() {
                        out.push(Piece::Content(content.to_string()));
                    }
                    self.in_calls = true;
                    // Hermes calls may already be complete in what is held.
                    out.extend(self.push(""));
                    return out;
                }
                // Hold back the longest tail that could still become the marker.
                let keep = (1..marker.len()).rev().find(|&k| self.held.ends_with(&marker[..k])).unwrap_or(0);
                let give = self.held.len() - keep;
                if give > 0 {
                    out.push(Piece::Content(self.held.drain(..give).collect()));
                }
            }
        }
        out
    }

    /// The output ended: gives out what was held (calls that parse, else the text as content: a malformed call is
    /// never an error).
    pub fn finish(&mut self) -> Vec<Piece> {
        let mut out = Vec::new();
        let held = std::mem::take(&mut self.held);
        match &self.reading {
            // A call with no arguments text still opens.
            Reading::Named(_) => self.open_named(&mut out),
            Reading::Required => {
                let calls: Option<Vec<Call>> = serde_json::from_str::<Vec<Value>>(&held)
                    .ok()
                    .and_then(|list| list.iter().map(|v| call_object(v, "parameters")).collect());
                match calls {
                    Some(calls) if !calls.is_empty() => self.emit(calls, &mut out),
                    _ if held.is_empty() => {}
                    _ => out.push(Piece::Content(held)),
                }
            }
            Reading::Auto { parser, .. } => {
                let parser = *parser;
                if !self.in_calls {
                    if !held.is_empty() {
                        out.push(Piece::Content(held));
                    }
                    return out;
                }
                match self.known(parser, &held) {
                    Some(calls) => self.emit(calls, &mut out),
                    None if held.trim().is_empty() => {}
                    None => {
                        // Llama 3's marker is still in what is held; the others were taken off.
                        let marker = if parser == Parser::Llama3Json { "" } else { parser.markers()[0] };
                        out.push(Piece::Content(format!("{marker}{held}")));
                    }
                }
            }
        }
        out
    }
}

/// A whole answer's content and calls (the streamed pieces, put together).
pub fn collect(pieces: Vec<Piece>) -> (Option<String>, Vec<(String, Call)>) {
    let mut content = String::new();
    let mut calls: Vec<(String, Call)> = Vec::new();
    for p in pieces {
        match p {
            Piece::Content(t) => content.push_str(&t),
            Piece::Start { id, name, .. } => calls.push((id, Call { name, arguments: String::new() })),
            Piece::Arguments { index, delta } => calls[index].1.arguments.push_str(&delta),
        }
    }
    let content = if calls.is_empty() || !content.trim().is_empty() { Some(content) } else { None };
    (content, calls)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auto(parser: Parser) -> Reader {
        Reader::new(Reading::Auto { parser, names: vec!["get_weather".into(), "add".into()], parallel: true })
    }

    /// The output fed `chunk` bytes at a time, as the detokenizer would give it.
    fn read(mut r: Reader, text: &str, chunk: usize) -> (Option<String>, Vec<Call>) {
        let mut pieces = Vec::new();
        let chars: Vec<char> = text.chars().collect();
        for part in chars.chunks(chunk) {
            pieces.extend(r.push(&part.iter().collect::<String>()));
        }
        pieces.extend(r.finish());
        let (content, calls) = collect(pieces);
        (content, calls.into_iter().map(|(_, c)| c).collect())
    }

    fn call(name: &str, args: &str) -> Call {
        Call { name: name.into(), arguments: args.into() }
    }

    #[test]
    fn hermes_calls_are_read_whole_or_streamed() {
        let text = "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 1, \"b\": 2}}\n</tool_call>";
        for chunk in [1, 3, 7, 1000] {
            let (content, calls) = read(auto(Parser::Hermes), text, chunk);
            assert_eq!(content.as_deref(), Some("Let me check.\n"), "chunk {chunk}");
            assert_eq!(calls, [call("get_weather", r#"{"city":"Paris"}"#), call("add", r#"{"a":1,"b":2}"#)]);
        }
        // No closing tag: the model stopped at EOS after the call.
        let (content, calls) =
            read(auto(Parser::Hermes), "<tool_call>{\"name\": \"add\", \"arguments\": {\"a\": 1}}", 2);
        assert_eq!((content, calls), (None, vec![call("add", r#"{"a":1}"#)]));
        // Plain text, with a `<` that could have opened a call.
        let (content, calls) = read(auto(Parser::Hermes), "1 < 2 and <b>bold</b> <tool", 1);
        assert_eq!((content.as_deref(), calls.len()), (Some("1 < 2 and <b>bold</b> <tool"), 0));
    }

    #[test]
    fn malformed_or_unknown_calls_are_content() {
        let bad = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": }\n</tool_call>";
        assert_eq!(read(auto(Parser::Hermes), bad, 4), (Some(bad.to_string()), vec![]));
        let unknown = "<tool_call>{\"name\": \"rm_rf\", \"arguments\": {}}</tool_call>";
        assert_eq!(read(auto(Parser::Hermes), unknown, 5), (Some(unknown.to_string()), vec![]));
        let cut = "{\"name\": \"add\", \"parameters\": {\"a\": 1";
        assert_eq!(read(auto(Parser::Llama3Json), cut, 3), (Some(cut.to_string()), vec![]));
        let cut = "[TOOL_CALLS][{\"name\": \"add\", \"arguments\": {\"a\"";
        assert_eq!(read(auto(Parser::Mistral), cut, 3), (Some(cut.to_string()), vec![]));
        let not_object = "<tool_call>[1, 2]</tool_call>";
        assert_eq!(read(auto(Parser::Hermes), not_object, 3).1, vec![]);
    }

    #[test]
    fn llama3_json_calls_start_the_output() {
        let text = "<|python_tag|>{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\"}}; {\"name\": \"add\", \"parameters\": {\"a\": 1, \"b\": 2}}";
        let (content, calls) = read(auto(Parser::Llama3Json), text, 2);
        assert_eq!(content, None);
        assert_eq!(calls, [call("get_weather", r#"{"city":"Oslo"}"#), call("add", r#"{"a":1,"b":2}"#)]);
        let (content, calls) =
            read(auto(Parser::Llama3Json), " {\"name\": \"add\", \"arguments\": \"{\\\"a\\\": 3}\"}", 5);
        assert_eq!((content, calls), (None, vec![call("add", r#"{"a":3}"#)]), "arguments given as a JSON string");
        let (content, calls) = read(auto(Parser::Llama3Json), "It is {sunny} today.", 2);
        assert_eq!((content.as_deref(), calls.len()), (Some("It is {sunny} today."), 0), "an object later is text");
    }

    #[test]
    fn mistral_calls_in_both_forms() {
        let text = "[TOOL_CALLS][{\"name\": \"add\", \"arguments\": {\"a\": 1, \"b\": 2}}, {\"name\": \"get_weather\", \"arguments\": {\"city\": \"Rome\"}}]";
        let (content, calls) = read(auto(Parser::Mistral), text, 3);
        assert_eq!(content, None);
        assert_eq!(calls, [call("add", r#"{"a":1,"b":2}"#), call("get_weather", r#"{"city":"Rome"}"#)]);
        let (content, calls) = read(auto(Parser::Mistral), "[TOOL_CALLS]add[ARGS]{\"a\": 5}", 4);
        assert_eq!((content, calls), (None, vec![call("add", r#"{"a":5}"#)]));
    }

    #[test]
    fn one_call_unless_parallel() {
        let r = Reader::new(Reading::Auto { parser: Parser::Hermes, names: vec!["add".into()], parallel: false });
        let text = "<tool_call>{\"name\": \"add\", \"arguments\": {\"a\": 1}}</tool_call><tool_call>{\"name\": \"add\", \"arguments\": {\"a\": 2}}</tool_call>";
        assert_eq!(read(r, text, 6).1, [call("add", r#"{"a":1}"#)]);
    }

    #[test]
    fn forced_calls_read_the_constrained_json() {
        let (content, calls) = read(Reader::new(Reading::Named("add".into())), r#"{"a": 1, "b": 2}"#, 3);
        assert_eq!((content, calls), (None, vec![call("add", r#"{"a": 1, "b": 2}"#)]));
        let mut r = Reader::new(Reading::Named("add".into()));
        let first = r.push("{\"a\"");
        assert!(
            matches!(&first[..], [Piece::Start { index: 0, name, .. }, Piece::Arguments { index: 0, delta }]
            if name == "add" && delta == "{\"a\""),
            "{first:?}"
        );
        let text =
            r#"[{"name": "add", "parameters": {"a": 1}}, {"name": "get_weather", "parameters": {"city": "Nice"}}]"#;
        let (content, calls) = read(Reader::new(Reading::Required), text, 5);
        assert_eq!(content, None);
        assert_eq!(calls, [call("add", r#"{"a":1}"#), call("get_weather", r#"{"city":"Nice"}"#)]);
        let cut = r#"[{"name": "add", "param"#;
        assert_eq!(read(Reader::new(Reading::Required), cut, 5), (Some(cut.to_string()), vec![]), "cut by max_tokens");
    }

    #[test]
    fn ids_are_openai_shaped_or_mistral_shaped() {
        let r = auto(Parser::Hermes);
        assert!(r.id().starts_with("call_") && r.id().len() == 29);
        let r = auto(Parser::Mistral);
        assert!(r.id().len() == 9 && r.id().chars().all(|c| c.is_ascii_alphanumeric()));
    }

    #[test]
    fn history_calls_round_trip_through_each_parser() {
        let calls = vec![call("add", r#"{"a":1}"#), call("get_weather", r#"{"city":"Paris"}"#)];
        for p in [Parser::Hermes, Parser::Llama3Json, Parser::Mistral] {
            let written = p.format_calls(&calls);
            assert_eq!(read(auto(p), &written, 3), (None, calls.clone()), "{p:?}: {written}");
        }
    }

    #[test]
    fn tool_choice_and_tools_are_checked() {
        assert_eq!(ToolChoice::parse(&json!("required")), Ok(ToolChoice::Required));
        assert_eq!(
            ToolChoice::parse(&json!({"type": "function", "function": {"name": "add"}})),
            Ok(ToolChoice::Named("add".into()))
        );
        assert!(ToolChoice::parse(&json!("sometimes")).is_err());
        let tool = |name: &str| Tool {
            kind: "function".into(),
            function: Function { name: name.into(), description: None, parameters: None },
        };
        assert!(validate(&[tool("add"), tool("get-weather_2")]).is_ok());
        assert_eq!(validate(&[tool("add"), tool("add")]).unwrap_err().0, "tools[1].function.name");
        assert_eq!(validate(&[tool("no spaces")]).unwrap_err().0, "tools[0].function.name");
        let schema = required_schema(&[tool("add")], false);
        assert_eq!(schema["maxItems"], 1);
        assert_eq!(schema["items"]["anyOf"][0]["properties"]["name"]["const"], "add");
    }
}
