//! Output guardrails, as KAITO's `rag-output-guardrails`: a policy (YAML: `action`, `blockMessage`, `scanners`)
//! whose scanners look at every chat answer, RAG or pass-through, and redact what they find or replace the answer
//! with the block message; streamed answers go through a held-back window ([`stream`]).
//!
//! KAITO's policy rules are kept: keys in camelCase or snake_case, type names normalised (`ban-substrings`,
//! `BanSubstrings`), an invalid entry skipped with a warning, scanners run in policy order, each seeing the
//! previous one's output, a block ending the scan; all eight of KAITO's scanner types run. Where KAITO fails open
//! we fail loudly or keep what works: a policy file that cannot be read or parsed stops the service at start and
//! is not swapped in on reload (KAITO then allows everything).

mod json;
mod json_repair;
pub mod scanners;
pub mod stream;

use crate::metrics::Metrics;
use scanners::{Banned, Detector, Encoding, Pattern, RegexMode, Scanner, SecretsMode};
use serde_json::Value;
use serde_yaml::{Mapping, Value as Yaml};
use sha2::Digest;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// KAITO's block message when the policy gives none.
pub const DEFAULT_BLOCK_MESSAGE: &str = "The model output was blocked by output guardrails.";
/// KAITO's answer when a scanner fails while scanning (we fail closed, as KAITO's service does).
pub const SCAN_FAILED: &str = "Output guardrails failed while scanning the model response.";
/// The policy used when guardrails are on and no file is named: KAITO's chart template
/// (`ragengine-guardrails-policy-template`), which KAITO's controller copies for a RAGEngine without a ConfigMap.
pub const DEFAULT_POLICY: &str = include_str!("default-policy.yaml");
/// Scanners KAITO streams through its window, in its message's order.
/// The scanner types of KAITO's registry, all of which kaito-rag runs.
const SCANNERS: [&str; 8] =
    ["ban_substrings", "invisible_text", "regex", "json", "reading_time", "token_limit", "secrets", "sensitive"];

const STREAMABLE: [&str; 4] = ["ban_substrings", "invisible_text", "secrets", "sensitive"];

/// What a scanner's hit does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The answer becomes the block message.
    Block,
    /// The scanner's rewrite is kept.
    Redact,
}

impl Action {
    /// The policy's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Block => "block",
            Action::Redact => "redact",
        }
    }
}

/// A scanner with the action its hits take.
#[derive(Debug, Clone)]
pub struct Configured {
    /// The scanner.
    pub scanner: Scanner,
    /// Its action (its own, else the policy's).
    pub action: Action,
}

/// A parsed policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Scanners in policy order.
    pub scanners: Vec<Configured>,
    /// What a blocked answer says.
    pub block_message: String,
    /// sha256 of the file (empty for the built-in default).
    pub hash: String,
}

/// A policy that cannot be used, with the reason.
#[derive(Debug, thiserror::Error)]
#[error("output guardrails policy {path}: {message}")]
pub struct PolicyError {
    /// The file (or `built-in default`).
    pub path: String,
    /// Why.
    pub message: String,
}

/// `ban-substrings`, `BanSubstrings`, `banSubstrings` → `ban_substrings` (KAITO's normalisation).
fn normalize(key: &str) -> String {
    let mut out = String::new();
    for (i, c) in key.replace('-', "_").chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.extend(c.to_lowercase());
    }
    out
}

fn action(v: Option<&Yaml>, fallback: Action, warn: &mut Vec<String>) -> Action {
    match v.and_then(Yaml::as_str).filter(|s| !s.is_empty()).map(str::to_lowercase).as_deref() {
        None => fallback,
        Some("block") => Action::Block,
        Some("redact") => Action::Redact,
        Some(other) => {
            warn.push(format!("output_guardrails_policy_invalid_action action={other}"));
            fallback
        }
    }
}

fn flag(cfg: &Mapping, key: &str, default: bool) -> Result<bool, String> {
    match cfg.get(key) {
        None | Some(Yaml::Null) => Ok(default),
        Some(Yaml::Bool(b)) => Ok(*b),
        Some(other) => Err(format!("'{key}' must be a boolean (true/false), got {}", yaml_text(other))),
    }
}

fn yaml_text(v: &Yaml) -> String {
    serde_yaml::to_string(v).unwrap_or_default().trim().to_string()
}

fn strings(cfg: &Mapping, key: &str) -> Vec<String> {
    match cfg.get(key) {
        Some(Yaml::Sequence(items)) => {
            items.iter().filter_map(Yaml::as_str).filter(|s| !s.is_empty()).map(str::to_string).collect()
        }
        _ => Vec::new(),
    }
}

fn lower(cfg: &Mapping, key: &str, default: &str) -> String {
    match cfg.get(key) {
        None => default.into(),
        Some(Yaml::Null) => "none".into(),
        Some(v) => v.as_str().map(str::to_lowercase).unwrap_or_else(|| yaml_text(v).to_lowercase()),
    }
}

/// One scanner entry's configuration (keys normalised, `type` and `action` removed).
fn scanner(kind: &str, cfg: &Mapping) -> Result<Scanner, String> {
    let positive = |key: &str| -> Result<f64, String> {
        cfg.get(key)
            .and_then(Yaml::as_f64)
            .filter(|n| *n > 0.0)
            .ok_or_else(|| format!("{kind} '{key}' must be a positive number (minutes)"))
    };
    Ok(match kind {
        "ban_substrings" => {
            let substrings = strings(cfg, "substrings");
            if substrings.is_empty() {
                return Err("ban_substrings requires 'substrings' to be a non-empty list of strings".into());
            }
            let word = match lower(cfg, "match_type", "word").as_str() {
                "word" => true,
                "str" => false,
                other => {
                    return Err(format!("ban_substrings 'match_type' must be one of ['str', 'word'], got '{other}'"));
                }
            };
            let case_sensitive = flag(cfg, "case_sensitive", false)?;
            Scanner::BanSubstrings {
                terms: substrings.iter().map(|s| Banned::new(s, case_sensitive)).collect::<Result<_, _>>()?,
                word,
                case_sensitive,
                contains_all: flag(cfg, "contains_all", false)?,
            }
        }
        "regex" => {
            let sources = strings(cfg, "patterns");
            if sources.is_empty() {
                return Err("regex requires 'patterns' to be a non-empty list of strings".into());
            }
            let mode = match lower(cfg, "match_type", "search").as_str() {
                "search" => RegexMode::Search,
                "fullmatch" | "full_match" => RegexMode::FullMatch,
                "all" => RegexMode::All,
                other => {
                    return Err(format!(
                        "regex 'match_type' must be one of ['all', 'fullmatch', 'search'], got '{other}'"
                    ));
                }
            };
            let patterns = sources.iter().map(|s| Pattern::new(s)).collect::<Result<Vec<_>, _>>()?;
            Scanner::Regex { patterns, is_blocked: flag(cfg, "is_blocked", true)?, mode }
        }
        "secrets" => Scanner::Secrets {
            mode: match lower(cfg, "redact_mode", "all").as_str() {
                "all" => SecretsMode::All,
                "partial" => SecretsMode::Partial,
                "hash" => SecretsMode::Hash,
                other => {
                    return Err(format!(
                        "secrets 'redact_mode' must be one of ['all', 'hash', 'partial'], got '{other}'"
                    ));
                }
            },
        },
        "sensitive" => {
            let detectors = match cfg.get("detectors") {
                None | Some(Yaml::Null) => Detector::ALL.iter().map(|d| d.1).collect(),
                Some(_) => {
                    let names = strings(cfg, "detectors");
                    if names.is_empty() {
                        return Err("sensitive 'detectors' must be a non-empty list".into());
                    }
                    let mut out: Vec<Detector> = Vec::new();
                    for n in names {
                        let n = n.to_lowercase();
                        let d = Detector::ALL.iter().find(|d| d.0 == n).ok_or_else(|| {
                            format!("sensitive detector '{n}' is not one of email, phone, credit_card, ip_address")
                        })?;
                        if !out.contains(&d.1) {
                            out.push(d.1);
                        }
                    }
                    out
                }
            };
            Scanner::Sensitive { detectors }
        }
        "invisible_text" => {
            if !cfg.is_empty() {
                return Err("invisible_text does not accept any configuration fields".into());
            }
            Scanner::InvisibleText
        }
        "reading_time" => {
            Scanner::ReadingTime { max_time: positive("max_time")?, truncate: flag(cfg, "truncate", false)? }
        }
        "json" => Scanner::Json {
            required: match cfg.get("required_elements") {
                None => 0,
                Some(v) => v
                    .as_u64()
                    .ok_or("json 'required_elements' must be a non-negative integer")?
                    .try_into()
                    .map_err(|_| "json 'required_elements' is too large")?,
            },
            repair: flag(cfg, "repair", true)?,
        },
        "token_limit" => {
            let limit = match cfg.get("limit") {
                None => 4096,
                Some(v) => v
                    .as_u64()
                    .filter(|n| *n > 0)
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or("token_limit 'limit' must be a positive integer")?,
            };
            // KAITO takes `model_name: null` as unset, but not `encoding_name: null`.
            let text = |key: &str, null_is_unset: bool| match cfg.get(key) {
                None => Ok(None),
                Some(Yaml::Null) if null_is_unset => Ok(None),
                Some(Yaml::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
                Some(_) => Err(format!(
                    "token_limit '{key}' must be a non-empty string{}",
                    if null_is_unset { " when set" } else { "" }
                )),
            };
            let encoding_name = text("encoding_name", false)?.unwrap_or_else(|| "cl100k_base".into());
            // As tiktoken: a model name, when given, decides the encoding.
            let encoding = match text("model_name", true)? {
                Some(model) => Encoding::for_model(&model)?,
                None => Encoding::named(&encoding_name)?,
            };
            Scanner::TokenLimit { limit, encoding }
        }
        _ => unreachable!("checked by the caller"),
    })
}

impl Policy {
    /// Parses a policy document. Entries KAITO would skip are skipped, with KAITO's warnings in `warnings`; a
    /// document that is not a mapping, or that names a scanner kaito-rag does not run, is an error.
    pub fn parse(text: &str, path: &str, warnings: &mut Vec<String>) -> Result<Policy, PolicyError> {
        let err = |message: String| PolicyError { path: path.into(), message };
        let doc: Yaml = serde_yaml::from_str(text).map_err(|e| err(format!("not YAML: {e}")))?;
        let doc = match doc {
            Yaml::Null => Mapping::new(),
            Yaml::Mapping(m) => m,
            _ => return Err(err("the policy must be a mapping with action, blockMessage and scanners".into())),
        };
        let default_action = action(doc.get("action"), Action::Redact, warnings);
        let block_message = doc
            .get("blockMessage")
            .and_then(Yaml::as_str)
            .filter(|s| !s.is_empty())
            .unwrap_or(DEFAULT_BLOCK_MESSAGE)
            .to_string();
        let entries = match doc.get("scanners") {
            None | Some(Yaml::Null) => Vec::new(),
            Some(Yaml::Sequence(s)) => s.clone(),
            Some(_) => {
                warnings.push(format!("output_guardrails_policy_invalid_scanners path={path}"));
                Vec::new()
            }
        };
        let mut scanners = Vec::new();
        for entry in entries {
            let Yaml::Mapping(raw) = entry else { continue };
            let kind = normalize(
                raw.get("type").map(yaml_text).unwrap_or_default().trim().trim_matches('\'').trim_matches('"'),
            );
            if kind.is_empty() {
                continue;
            }
            if !SCANNERS.contains(&kind.as_str()) {
                warnings.push(format!("output_guardrails_policy_unknown_scanner type={kind}"));
                continue;
            }
            let action = action(raw.get("action"), default_action, warnings);
            let mut cfg = Mapping::new();
            for (k, v) in &raw {
                let Some(k) = k.as_str() else { continue };
                if k != "type" && k != "action" {
                    cfg.insert(Yaml::String(normalize(k)), v.clone());
                }
            }
            match scanner(&kind, &cfg) {
                Ok(scanner) => scanners.push(Configured { scanner, action }),
                Err(e) => {
                    warnings.push(format!("output_guardrails_policy_invalid_scanner_config type={kind} error={e}"))
                }
            }
        }
        let hash = if path.is_empty() { String::new() } else { hex::encode(sha2::Sha256::digest(text.as_bytes())) };
        Ok(Policy { scanners, block_message, hash })
    }

    /// KAITO's check before a streamed answer: only the window's scanners, with what the window can follow.
    pub fn check_streaming(&self) -> Result<(), String> {
        for c in &self.scanners {
            let kind = c.scanner.kind();
            if !STREAMABLE.contains(&kind) {
                return Err(format!(
                    "stream=true with output guardrails only supports ['ban_substrings', 'invisible_text', 'secrets', 'sensitive'] scanners. Unsupported scanner: {kind}."
                ));
            }
            match &c.scanner {
                Scanner::BanSubstrings { contains_all: true, .. } => {
                    return Err("stream=true does not support contains_all=true for scanner=ban_substrings because the current windowed implementation cannot track matches across the complete response.".into());
                }
                Scanner::Secrets { mode } if c.action == Action::Redact && *mode != SecretsMode::All => {
                    return Err(
                        "stream=true with action=redact for scanner=secrets only supports redact_mode=all.".into()
                    );
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// How one answer fared; ordered by severity, so a request's verdict is the `max` of its choices'.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    /// Nothing found.
    Allow,
    /// Something rewritten.
    Redact,
    /// Replaced by the block message.
    Block,
}

/// The guardrails of a running service: the policy in force, swapped whole on reload.
pub struct Guardrails {
    policy: RwLock<Arc<Policy>>,
    /// The file the policy comes from (`None`: the built-in default).
    pub path: Option<PathBuf>,
    metrics: Arc<Metrics>,
}

impl Guardrails {
    /// Loads the policy at `path` (or the built-in default); an unreadable or unusable policy is an error, so a
    /// service asked to guard its answers never starts unguarded.
    pub fn load(path: Option<PathBuf>, metrics: Arc<Metrics>) -> Result<Guardrails, PolicyError> {
        let policy = read_policy(path.as_deref(), &metrics)?;
        tracing::info!(path = %path.as_deref().map(Path::display).map(|d| d.to_string()).unwrap_or_else(|| "built-in default".into()),
            scanners = policy.scanners.len(), policy_hash = %policy.hash, "output guardrails on");
        Ok(Guardrails { policy: RwLock::new(Arc::new(policy)), path, metrics })
    }

    /// The policy in force.
    pub fn current(&self) -> Arc<Policy> {
        self.policy.read().expect("policy lock").clone()
    }

    /// Re-reads the file: a changed, usable policy replaces the current one; an unusable one is logged and the
    /// current one kept.
    pub fn reload(&self) -> &'static str {
        let result = match read_policy(self.path.as_deref(), &self.metrics) {
            Ok(new) if new.hash == self.current().hash => "noop",
            Ok(new) => {
                tracing::info!(policy_hash = %new.hash, scanners = new.scanners.len(), "output_guardrails_reload_succeeded");
                *self.policy.write().expect("policy lock") = Arc::new(new);
                "success"
            }
            Err(e) => {
                tracing::error!(error = %e, current_policy_hash = %self.current().hash, "output_guardrails_reload_failed fallback_action=keep_current");
                "failure"
            }
        };
        self.metrics.guardrails.reloads.get_or_create(&vec![("result".into(), result.into())]).inc();
        result
    }

    /// Polls the policy file every `every` and reloads it when its bytes change (a ConfigMap update swaps a
    /// symlink, which a read follows).
    pub async fn watch(self: Arc<Self>, every: std::time::Duration) {
        let Some(path) = self.path.clone() else { return };
        let mut seen = tokio::fs::read(&path).await.ok();
        loop {
            tokio::time::sleep(every).await;
            let now = tokio::fs::read(&path).await.ok();
            if now != seen {
                seen = now;
                let me = self.clone();
                let _ = tokio::task::spawn_blocking(move || me.reload()).await;
            }
        }
    }

    /// Scans every assistant message of a chat completion (RAG or pass-through), in place. An `Err` is a scanner
    /// failure: the caller answers 500 (KAITO's fail-closed).
    pub fn guard_response(&self, answer: &mut Value) -> Result<Verdict, scanners::ScanError> {
        let policy = self.current();
        let mut overall = Verdict::Allow;
        if policy.scanners.is_empty() {
            return Ok(overall);
        }
        let id = answer.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
        let Some(choices) = answer.get_mut("choices").and_then(Value::as_array_mut) else { return Ok(overall) };
        for choice in choices {
            let message = &mut choice["message"];
            if message.get("role").and_then(Value::as_str) != Some("assistant") {
                continue;
            }
            let Some(content) = message.get("content").and_then(Value::as_str).map(str::to_string) else { continue };
            let (verdict, out) = match run(&policy, &content) {
                Ok(v) => v,
                Err(e) => {
                    self.metrics.guardrails.count_action("fail_closed");
                    tracing::error!(error = %e, response_id = %id, "output_guardrails_failed fail_open=False");
                    return Err(e);
                }
            };
            for (kind, action) in &out.hits {
                self.metrics.guardrails.count_hit(kind, action.as_str());
            }
            let final_action = match verdict {
                Verdict::Allow => "allow",
                Verdict::Redact => "redact",
                Verdict::Block => "block",
            };
            self.metrics.guardrails.count_action(final_action);
            if verdict != Verdict::Allow {
                let scanners: Vec<String> = out.hits.iter().map(|(k, a)| format!("{k}:{}", a.as_str())).collect();
                tracing::info!(action = final_action, response_id = %id, scanners = ?scanners, policy_hash = %policy.hash, "output_guardrails_triggered");
                message["content"] =
                    Value::String(if verdict == Verdict::Block { policy.block_message.clone() } else { out.text });
            }
            overall = overall.max(verdict);
        }
        Ok(overall)
    }
}

/// The scanners' combined result on one text.
struct Outcome {
    text: String,
    hits: Vec<(&'static str, Action)>,
}

/// Runs the policy's scanners in order on a whole answer.
fn run(policy: &Policy, content: &str) -> Result<(Verdict, Outcome), scanners::ScanError> {
    let mut out = Outcome { text: content.to_string(), hits: Vec::new() };
    let mut verdict = Verdict::Allow;
    for c in &policy.scanners {
        let scan = c.scanner.scan(&out.text, c.action == Action::Redact)?;
        out.text = scan.text;
        if scan.valid {
            continue;
        }
        out.hits.push((c.scanner.kind(), c.action));
        if c.action == Action::Block {
            return Ok((Verdict::Block, out));
        }
        verdict = Verdict::Redact;
    }
    Ok((verdict, out))
}

/// Reads and parses the policy, counting the load as KAITO's `output_guardrails_policy_load_total` does.
fn read_policy(path: Option<&Path>, metrics: &Metrics) -> Result<Policy, PolicyError> {
    let (text, name) = match path {
        None => (DEFAULT_POLICY.to_string(), String::new()),
        Some(p) => match std::fs::read_to_string(p) {
            Ok(t) => (t, p.display().to_string()),
            Err(e) => {
                let status = if e.kind() == std::io::ErrorKind::NotFound { "missing" } else { "load_failed" };
                metrics.guardrails.count_load(status);
                return Err(PolicyError { path: p.display().to_string(), message: format!("cannot be read: {e}") });
            }
        },
    };
    let mut warnings = Vec::new();
    let parsed = Policy::parse(&text, &name, &mut warnings);
    for w in &warnings {
        tracing::warn!("{w}");
    }
    metrics.guardrails.count_load(if parsed.is_ok() { "success" } else { "invalid" });
    parsed
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy(yaml: &str) -> (Result<Policy, PolicyError>, Vec<String>) {
        let mut w = Vec::new();
        (Policy::parse(yaml, "p.yaml", &mut w), w)
    }

    fn guards(yaml: &str) -> (Guardrails, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("guardrails.yaml");
        std::fs::write(&file, yaml).unwrap();
        (Guardrails::load(Some(file), Arc::new(Metrics::default())).unwrap(), dir)
    }

    fn answer(content: &str) -> Value {
        json!({"id": "c1", "object": "chat.completion", "choices": [{"index": 0, "finish_reason": "stop",
            "message": {"role": "assistant", "content": content}}], "source_nodes": [{"node_id": "n"}]})
    }

    #[test]
    fn default_policy_is_kaitos_template() {
        let (p, warnings) = policy(DEFAULT_POLICY);
        let p = p.unwrap();
        let kinds: Vec<_> = p.scanners.iter().map(|c| (c.scanner.kind(), c.action)).collect();
        assert_eq!(kinds, [("regex", Action::Redact), ("secrets", Action::Redact), ("sensitive", Action::Redact)]);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(p.block_message, DEFAULT_BLOCK_MESSAGE);
        assert!(p.check_streaming().unwrap_err().ends_with("Unsupported scanner: regex."));
    }

    #[test]
    fn entries_kaito_skips_are_skipped_with_its_warnings() {
        let (p, w) = policy(
            "action: passthrough\nscanners:\n  - not-a-dict\n  - {type: Bogus}\n  - {type: regex}\n  - {type: regex, patterns: ['[unclosed']}\n  - {type: secrets, redactMode: bogus}\n  - {type: sensitive, detectors: [email, bogus]}\n  - {type: ban-substrings, substrings: [x], caseSensitive: 'false'}\n  - {type: invisible_text, extra: 1}\n  - {type: reading_time, max_time: 0}\n  - {type: BanSubstrings, substrings: [unsafe], matchType: WORD}\n",
        );
        let p = p.unwrap();
        assert_eq!(p.scanners.len(), 1, "{w:#?}");
        assert!(matches!(&p.scanners[0].scanner, Scanner::BanSubstrings { word: true, .. }));
        assert_eq!(p.scanners[0].action, Action::Redact, "an unknown action falls back to redact");
        assert!(w.iter().any(|w| w == "output_guardrails_policy_invalid_action action=passthrough"));
        assert!(w.iter().any(|w| w == "output_guardrails_policy_unknown_scanner type=bogus"));
        assert_eq!(w.iter().filter(|w| w.contains("invalid_scanner_config")).count(), 7, "{w:#?}");
        // Where KAITO would run unguarded, we refuse.
        assert!(policy("- a list").0.is_err());
        assert!(policy("scanners: [unclosed").0.is_err());
        // json and token_limit: KAITO's defaults, its validation, and an encoding tiktoken does not have.
        let (p, w) = policy(
            "scanners:\n  - {type: json}\n  - {type: token-limit}\n  - {type: json, required_elements: -1}\n  - {type: json, repair: 'yes'}\n  - {type: token_limit, limit: 0}\n  - {type: token_limit, encoding_name: ''}\n  - {type: token_limit, encodingName: klingon}\n  - {type: token_limit, model_name: gpt-4o, encoding_name: r50k_base}\n  - {type: token_limit, model_name: null, limit: 7}",
        );
        let p = p.unwrap();
        assert!(matches!(p.scanners[0].scanner, Scanner::Json { required: 0, repair: true }));
        let limits: Vec<(usize, &str)> = p.scanners[1..]
            .iter()
            .map(|c| match &c.scanner {
                Scanner::TokenLimit { limit, encoding } => (*limit, encoding.name),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(limits, [(4096, "cl100k_base"), (4096, "o200k_base"), (7, "cl100k_base")]);
        assert_eq!(w.len(), 5, "{w:#?}");
        assert!(w[4].contains("\"klingon\" is not a tiktoken encoding"), "{w:#?}");
        assert_eq!(policy("scanners: {type: regex}").1, ["output_guardrails_policy_invalid_scanners path=p.yaml"]);
    }

    #[test]
    fn redact_block_and_the_order_of_scanners() {
        let (g, _d) = guards("scanners: [{type: regex, patterns: ['https?://\\S+']}]");
        let mut a = answer("Visit http://evil.example now");
        assert_eq!(g.guard_response(&mut a).unwrap(), Verdict::Redact);
        assert_eq!(a["choices"][0]["message"]["content"], "Visit [REDACTED] now");
        assert_eq!(a["source_nodes"], json!([{"node_id": "n"}]), "source nodes untouched");

        let (g, _d) = guards(
            "action: block\nblockMessage: blocked-by-policy\nscanners: [{type: regex, patterns: ['https?://\\S+']}]",
        );
        let mut a = answer("Visit http://evil.example now");
        assert_eq!(g.guard_response(&mut a).unwrap(), Verdict::Block);
        assert_eq!(a["choices"][0]["message"]["content"], "blocked-by-policy");
        assert_eq!(a["choices"][0]["finish_reason"], "stop");

        // A redact hit, then a block scanner that finds nothing: the redacted text.
        let (g, _d) = guards(
            "scanners:\n  - {type: regex, action: redact, patterns: ['secret']}\n  - {type: ban_substrings, action: block, substrings: [forbidden]}",
        );
        let mut a = answer("the secret word");
        g.guard_response(&mut a).unwrap();
        assert_eq!(a["choices"][0]["message"]["content"], "the [REDACTED] word");
        // Tool-call answers (no content) are not scanned; clean answers are allowed and counted.
        let mut tool = json!({"choices": [{"message": {"role": "assistant", "content": null, "tool_calls": []}}]});
        assert_eq!(g.guard_response(&mut tool).unwrap(), Verdict::Allow);
        let text = g.metrics.encode();
        assert!(text.contains("ragengine_guardrails_response_actions_total{final_action=\"redact\"} 1"), "{text}");
        assert!(
            text.contains(
                "ragengine_guardrails_response_scanner_hits_total{scanner_type=\"regex\",action=\"redact\"} 1"
            )
        );
    }

    #[test]
    fn reload_swaps_a_good_policy_and_keeps_the_current_one_over_a_bad_one() {
        let (g, dir) = guards("scanners: [{type: ban_substrings, substrings: [alpha]}]");
        let file = dir.path().join("guardrails.yaml");
        assert_eq!(g.reload(), "noop");
        std::fs::write(&file, "scanners: [{type: ban_substrings, substrings: [beta]}]").unwrap();
        assert_eq!(g.reload(), "success");
        let mut a = answer("alpha beta");
        g.guard_response(&mut a).unwrap();
        assert_eq!(a["choices"][0]["message"]["content"], "alpha [REDACTED]");
        std::fs::write(&file, "scanners: [unclosed").unwrap();
        assert_eq!(g.reload(), "failure");
        std::fs::remove_file(&file).unwrap();
        assert_eq!(g.reload(), "failure");
        let mut a = answer("alpha beta");
        g.guard_response(&mut a).unwrap();
        assert_eq!(a["choices"][0]["message"]["content"], "alpha [REDACTED]", "the last good policy still applies");
        let text = g.metrics.encode();
        assert!(text.contains("guardrails_policy_reload_total{result=\"failure\"} 2"), "{text}");
        assert!(text.contains("output_guardrails_policy_load_total{policy_status=\"missing\"} 1"), "{text}");
    }

    #[test]
    fn streaming_checks_name_what_the_window_cannot_do() {
        let check = |y: &str| policy(y).0.unwrap().check_streaming();
        assert!(
            check("scanners: [{type: ban_substrings, substrings: [a]}, {type: sensitive}, {type: invisible_text}]")
                .is_ok()
        );
        assert!(
            check("scanners: [{type: ban_substrings, substrings: [a], contains_all: true}]")
                .unwrap_err()
                .contains("contains_all=true")
        );
        assert_eq!(
            check("scanners: [{type: secrets, redactMode: partial}]").unwrap_err(),
            "stream=true with action=redact for scanner=secrets only supports redact_mode=all."
        );
        assert!(check("scanners: [{type: secrets, action: block, redactMode: partial}]").is_ok());
    }
}
