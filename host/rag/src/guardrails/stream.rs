//! Streamed answers under guardrails, as KAITO streams them: the LLM's server-sent events are parsed, their text
//! goes through a window that holds back the last `max(256, longest banned substring)` characters (so a match
//! never straddles what was already sent), and what is safe is sent on as compact chunks. A block — or an event
//! the window cannot follow (malformed, several choices) — ends the stream with the block message, a
//! `content_filter` finish and `[DONE]`; text already sent stays sent.

use super::scanners::{REDACTED, Scanner, find_secrets, redact_secret, word_spans};
use super::{Action, Policy, SecretsMode};
use crate::metrics::Metrics;
use serde_json::{Value, json};
use std::sync::Arc;

/// The frame that ends an event stream.
const DONE: &str = "data: [DONE]\n\n";

/// Characters always held back (KAITO's floor).
const MIN_HOLDBACK: usize = 256;

/// The held-back window over one streamed answer.
#[derive(Debug)]
pub struct Window {
    pending: String,
    holdback: usize,
    preceding: Option<char>,
    blocked: bool,
    /// Whether any scan rewrote the text.
    pub redacted: bool,
}

/// The window's answer: a block, or text safe to send (possibly none yet).
type Fed = Result<Option<String>, Blocked>;

/// A scanner blocked the answer.
#[derive(Debug, PartialEq)]
pub struct Blocked;

impl Window {
    /// A window for `policy`.
    pub fn new(policy: &Policy) -> Window {
        let longest = policy
            .scanners
            .iter()
            .filter_map(|c| match &c.scanner {
                Scanner::BanSubstrings { terms, word, .. } => terms
                    .iter()
                    .map(|t| if *word { t.text.chars().count() } else { t.text.chars().count().saturating_sub(1) })
                    .max(),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        Window::with_holdback(longest.max(MIN_HOLDBACK))
    }

    /// A window holding back `holdback` characters.
    pub fn with_holdback(holdback: usize) -> Window {
        Window { pending: String::new(), holdback, preceding: None, blocked: false, redacted: false }
    }

    /// Adds text; returns what can be sent now.
    pub fn feed(&mut self, policy: &Policy, text: &str) -> Fed {
        if self.blocked {
            return Err(Blocked);
        }
        self.pending.push_str(text);
        if self.holdback > 0 && self.pending.chars().count() <= self.holdback {
            return Ok(None);
        }
        self.scan(policy, false)?;
        let n = self.pending.chars().count();
        if self.holdback > 0 && n <= self.holdback {
            return Ok(None);
        }
        let cut = self.pending.char_indices().nth(n - self.holdback).map_or(self.pending.len(), |(i, _)| i);
        let rest = self.pending.split_off(cut);
        let out = std::mem::replace(&mut self.pending, rest);
        self.preceding = out.chars().next_back().or(self.preceding);
        Ok(Some(out))
    }

    /// The end of the answer: the rest, scanned as final.
    pub fn flush(&mut self, policy: &Policy) -> Fed {
        if self.blocked {
            return Err(Blocked);
        }
        if self.pending.is_empty() {
            return Ok(None);
        }
        self.scan(policy, true)?;
        let out = std::mem::take(&mut self.pending);
        self.preceding = out.chars().next_back().or(self.preceding);
        Ok(Some(out))
    }

    fn scan(&mut self, policy: &Policy, flush: bool) -> Result<(), Blocked> {
        match scan_window(policy, &self.pending, self.preceding, flush) {
            Some(s) => {
                if s != self.pending {
                    self.pending = s;
                    self.redacted = true;
                }
                Ok(())
            }
            None => {
                self.blocked = true;
                self.pending.clear();
                Err(Blocked)
            }
        }
    }
}

/// Spans of a word-matched ban_substrings scanner in `s`, overlapping ones merged.
fn banned_words(scanner: &Scanner, s: &str, preceding: Option<char>, flush: bool) -> Option<Vec<(usize, usize)>> {
    let Scanner::BanSubstrings { terms, word: true, .. } = scanner else { return None };
    let mut spans: Vec<(usize, usize)> = terms.iter().flat_map(|t| word_spans(s, t, preceding, flush)).collect();
    spans.sort();
    let mut merged: Vec<(usize, usize)> = Vec::new();
    for (a, b) in spans {
        match merged.last_mut() {
            Some(last) if a < last.1 => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    Some(merged)
}

/// One scan of the window's text: redacting scanners first (each on the previous one's output), then blocking
/// ones on the result. `None`: blocked.
fn scan_window(policy: &Policy, text: &str, preceding: Option<char>, flush: bool) -> Option<String> {
    let mut s = text.to_string();
    for c in policy.scanners.iter().filter(|c| c.action == Action::Redact) {
        if let Scanner::Secrets { .. } = c.scanner {
            let found = find_secrets(&s);
            if !found.is_empty() {
                for f in &found {
                    s = s.replace(f.as_str(), &redact_secret(f, SecretsMode::All));
                }
                // What a redaction left must scan clean, or the answer is blocked.
                if !find_secrets(&s).is_empty() {
                    return None;
                }
            }
        } else if let Some(spans) = banned_words(&c.scanner, &s, preceding, flush) {
            let mut out = String::with_capacity(s.len());
            let mut at = 0;
            for (a, b) in spans {
                out.push_str(&s[at..a]);
                out.push_str(REDACTED);
                at = b;
            }
            out.push_str(&s[at..]);
            s = out;
        } else {
            let scan = c.scanner.scan(&s, true).ok()?;
            if !scan.valid && scan.text == s {
                return None;
            }
            s = scan.text;
        }
    }
    for c in policy.scanners.iter().filter(|c| c.action == Action::Block) {
        let hit = match banned_words(&c.scanner, &s, preceding, flush) {
            Some(spans) => !spans.is_empty(),
            None => !c.scanner.scan(&s, false).ok()?.valid,
        };
        if hit {
            return None;
        }
    }
    Some(s)
}

/// A chunk carrying `text`, as KAITO rebuilds them (no id or model).
fn chunk(text: &str) -> String {
    let v = json!({"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]});
    format!("data: {v}\n\n")
}

/// What one event of the LLM's stream is.
enum Event {
    Done,
    /// The text and finish reason of its only choice (index 0), with the event as received.
    Choice {
        content: Option<String>,
        finish: bool,
        raw: String,
    },
    /// No choice with text or a finish reason (a role-only delta, a usage chunk).
    Empty,
    /// Anything the window cannot follow.
    Refused,
}

fn parse_event(raw: &str) -> Event {
    let data: Vec<&str> =
        raw.lines().filter_map(|l| l.strip_prefix("data:").map(|d| d.strip_prefix(' ').unwrap_or(d))).collect();
    if data.is_empty() {
        return Event::Refused;
    }
    let data = data.join("\n");
    if data.trim() == "[DONE]" {
        return Event::Done;
    }
    let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(&data) else { return Event::Refused };
    let Some(choices) = obj.get("choices").and_then(Value::as_array) else { return Event::Refused };
    let mut parsed = Vec::new();
    for c in choices {
        let Some(c) = c.as_object() else { return Event::Refused };
        let Some(index) = c.get("index").filter(|i| !i.is_boolean()).and_then(Value::as_i64) else {
            return Event::Refused;
        };
        let delta = match c.get("delta") {
            None | Some(Value::Null) => &Value::Null,
            Some(d @ Value::Object(_)) => d,
            Some(_) => return Event::Refused,
        };
        let content = match delta.get("content") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Event::Refused,
        };
        let finish = match c.get("finish_reason") {
            None | Some(Value::Null) => false,
            Some(Value::String(_)) => true,
            Some(_) => return Event::Refused,
        };
        if content.is_some() || finish {
            parsed.push((index, content, finish));
        }
    }
    match parsed.as_slice() {
        [] => Event::Empty,
        [(0, content, finish)] => Event::Choice { content: content.clone(), finish: *finish, raw: raw.to_string() },
        _ => Event::Refused,
    }
}

/// Turns the LLM's event stream into the guarded one, a read at a time.
pub struct StreamGuard {
    policy: Arc<Policy>,
    window: Window,
    text: String,
    partial: Vec<u8>,
    done: bool,
    metrics: Arc<Metrics>,
}

impl StreamGuard {
    /// A guard under `policy` (the one in force when the request came).
    pub fn new(policy: Arc<Policy>, metrics: Arc<Metrics>) -> StreamGuard {
        let window = Window::new(&policy);
        StreamGuard { policy, window, text: String::new(), partial: Vec::new(), done: false, metrics }
    }

    /// Whether the guarded stream has ended (`[DONE]` or a refusal): stop reading the LLM.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Bytes from the LLM in; frames for the client out.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<String> {
        self.partial.extend_from_slice(bytes);
        // Keep an incomplete UTF-8 sequence for the next read.
        let valid = match std::str::from_utf8(&self.partial) {
            Ok(s) => s.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => return self.refuse(),
        };
        let rest = self.partial.split_off(valid);
        self.text.push_str(std::str::from_utf8(&self.partial).expect("checked"));
        self.partial = rest;
        let mut out = Vec::new();
        while !self.done {
            let cut = [self.text.find("\r\n\r\n").map(|i| (i, 4)), self.text.find("\n\n").map(|i| (i, 2))]
                .into_iter()
                .flatten()
                .min();
            let Some((at, sep)) = cut else { break };
            let raw: String = self.text.drain(..at + sep).collect();
            let raw = &raw[..at];
            if raw.trim().is_empty() {
                continue;
            }
            self.event(raw, &mut out);
        }
        out
    }

    /// The LLM closed the stream without `[DONE]`: send what is left (no `[DONE]`, as KAITO).
    pub fn finish(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.done {
            self.end(&mut out, false);
        }
        out
    }

    fn event(&mut self, raw: &str, out: &mut Vec<String>) {
        match parse_event(raw) {
            Event::Done => self.end(out, true),
            Event::Refused => out.extend(self.refuse()),
            Event::Empty => {}
            Event::Choice { content, finish, raw } => {
                if let Some(content) = content {
                    let fed = self.window.feed(&self.policy, &content);
                    if !self.pass(fed, out) {
                        return;
                    }
                }
                if finish {
                    let fed = self.window.flush(&self.policy);
                    if self.pass(fed, out) {
                        out.push(format!("{raw}\n\n"));
                    }
                }
            }
        }
    }

    /// Flushes the window and ends the stream, with `[DONE]` when the LLM sent one.
    fn end(&mut self, out: &mut Vec<String>, with_done: bool) {
        let fed = self.window.flush(&self.policy);
        if self.pass(fed, out) {
            if with_done {
                out.push(DONE.into());
            }
            self.done = true;
            self.count_redact();
        }
    }

    /// Sends what the window let through, or KAITO's refusal; `false` once refused.
    fn pass(&mut self, fed: Fed, out: &mut Vec<String>) -> bool {
        match fed {
            Ok(text) => {
                out.extend(text.map(|t| chunk(&t)));
                true
            }
            Err(Blocked) => {
                out.extend(self.refuse());
                false
            }
        }
    }

    fn count_redact(&self) {
        if self.window.redacted {
            self.metrics.guardrails.count_action("redact");
        }
    }

    /// KAITO's three closing frames.
    fn refuse(&mut self) -> Vec<String> {
        self.done = true;
        self.metrics.guardrails.count_action("block");
        let filter = json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "content_filter"}]});
        vec![chunk(&self.policy.block_message), format!("data: {filter}\n\n"), DONE.into()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> Arc<Policy> {
        Arc::new(Policy::parse(yaml, "p.yaml", &mut Vec::new()).unwrap())
    }

    fn event(content: &str) -> String {
        format!(
            "data: {}\n\n",
            json!({"id": "x", "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}]})
        )
    }

    /// Streams `contents` (then a stop event and `[DONE]`) through the guard; returns the text the client sees
    /// and its frames.
    fn stream(yaml: &str, contents: &[&str]) -> (String, Vec<String>) {
        let mut g = StreamGuard::new(policy(yaml), Arc::new(Metrics::default()));
        let mut frames = Vec::new();
        let mut upstream: String = contents.iter().map(|c| event(c)).collect();
        upstream.push_str(
            "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n",
        );
        // Split the bytes at awkward places: events and UTF-8 sequences arrive in pieces.
        for piece in upstream.as_bytes().chunks(7) {
            frames.extend(g.feed(piece));
        }
        frames.extend(g.finish());
        let text = frames
            .iter()
            .filter_map(|f| f.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
            .filter_map(|v| v["choices"][0]["delta"]["content"].as_str().map(str::to_string))
            .collect();
        (text, frames)
    }

    const BLOCK: &str = "action: block\nblockMessage: blocked-by-policy\n";

    #[test]
    fn substrings_across_chunks_are_redacted_or_blocked() {
        let ban = |a: &str, m: &str| {
            format!("scanners: [{{type: ban_substrings, action: {a}, matchType: {m}, substrings: [unsafe]}}]")
        };
        assert_eq!(stream(&ban("redact", "str"), &["prefix un", "safe suffix"]).0, "prefix [REDACTED] suffix");
        assert_eq!(stream(&ban("redact", "str"), &["UNSAFE unsafe"]).0, "[REDACTED] [REDACTED]");
        assert_eq!(stream(&ban("redact", "str"), &["unsafeish"]).0, "[REDACTED]ish");
        assert_eq!(stream(&ban("redact", "word"), &["unsafeish"]).0, "unsafeish");
        let p = "p".repeat(300);
        let (text, frames) = stream(&ban("redact", "word"), &[&format!("{p} unsafe"), "ish"]);
        assert_eq!(text, format!("{p} unsafeish"), "the word went on in the next chunk");
        assert_eq!(frames.last().unwrap(), "data: [DONE]\n\n");
        assert_eq!(
            stream(&ban("redact", "word"), &[&format!("{p} unsafe"), " suffix"]).0,
            format!("{p} [REDACTED] suffix")
        );
        assert_eq!(stream(&ban("redact", "word"), &[&format!("{p} unsafe")]).0, format!("{p} [REDACTED]"));

        let (text, frames) =
            stream(&format!("{BLOCK}{}", &ban("block", "word")[..]), &[&format!("{p} unsafe"), " suffix"]);
        assert!(text.ends_with("blocked-by-policy") && !text.contains("unsafe"), "{text}");
        let n = frames.len();
        assert_eq!(
            frames[n - 2],
            "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"content_filter\"}]}\n\n"
        );
        assert_eq!(frames[n - 1], "data: [DONE]\n\n");
    }

    #[test]
    fn secrets_sensitive_and_invisible_text_in_a_stream() {
        let secrets = "scanners: [{type: secrets, redactMode: all}]";
        assert_eq!(stream(secrets, &["AWS key: AKIA1234", "567890ABCDEF"]).0, "AWS key: ******");
        let a = "a".repeat(300);
        assert_eq!(
            stream(secrets, &[&format!("{a} token = AKIA1234567890ABCDEF"), " tail"]).0,
            format!("{a} token = ****** tail")
        );
        let sensitive = "scanners: [{type: sensitive}]";
        assert_eq!(stream(sensitive, &["Contact alice@", "example.com now"]).0, "Contact <EMAIL> now");
        let (text, frames) = stream("scanners: [{type: invisible_text}]", &["hello\u{200b}", "world"]);
        assert_eq!(text, "helloworld");
        assert!(frames.iter().any(|f| f.contains("\"finish_reason\":\"stop\"")), "the upstream finish event is kept");
        assert_eq!(
            stream(&format!("{BLOCK}scanners: [{{type: sensitive}}]"), &["Reach me at leaked@example.com anytime."]).0,
            "blocked-by-policy"
        );
        // The window sends all but 256 characters as soon as it can.
        let (_, frames) = stream("scanners: [{type: invisible_text}]", &[&format!("{}\u{200b}tail", "a".repeat(300))]);
        let first: Value = serde_json::from_str(frames[0].strip_prefix("data: ").unwrap().trim()).unwrap();
        assert_eq!(first["choices"][0]["delta"]["content"].as_str().unwrap().chars().count(), 304 - 256);
    }

    #[test]
    fn what_the_window_cannot_follow_ends_the_stream() {
        let p = policy("blockMessage: blocked-by-policy\nscanners: [{type: invisible_text}]");
        for bad in [
            "data: {\"choices\": [}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}},{\"index\":1,\"delta\":{\"content\":\"b\"}}]}\n\n",
            "data: {\"choices\":[{\"index\":1,\"delta\":{\"content\":\"a\"}}]}\n\n",
        ] {
            let mut g = StreamGuard::new(p.clone(), Arc::new(Metrics::default()));
            let frames = g.feed(bad.as_bytes());
            assert!(g.is_done() && frames.len() == 3 && frames[0].contains("blocked-by-policy"), "{bad}: {frames:?}");
        }
        // Role-only deltas and usage chunks pass without a frame; the end without [DONE] sends the rest only.
        let mut g = StreamGuard::new(p, Arc::new(Metrics::default()));
        assert!(
            g.feed(
                b"data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\"}}]}\n\ndata: {\"choices\":[]}\n\n"
            )
            .is_empty()
        );
        assert!(g.feed(event("short").as_bytes()).is_empty(), "held back");
        assert_eq!(g.finish(), [chunk("short")]);
    }
}
