//! Output guardrails benchmark: each scanner's cost per answer, ours against llm-guard 0.3.16's (what KAITO's
//! rag-output-guardrails runs), same settings and same answers, in one run.
//!
//! `cargo bench -p kaito-rag --bench guardrails` (after `cargo xtask models`: the torch venv has llm-guard and
//! the packages its scanners import).
//!
//! Answers are real text: `KAITO_BENCH_ANSWERS` (default 2000) prose answers of five consecutive docstring
//! sentences each, from the corpus the search benchmark embeds (`tests/python/rag_corpus.py`), and, for `json`,
//! the 70 answers an LLM asked for JSON writes (`tests/data/json_answers.json`). Per scanner it prints the mean
//! time per answer on one thread (ours) or one process (llm-guard), answers per second with every core busy
//! (threads; a process per core for llm-guard), and how many answers each found invalid (they should agree; an
//! answer llm-guard raises on, as tiktoken does on special-token text, is counted apart).

#[path = "../tests/common/mod.rs"]
mod common;

use kaito_rag::guardrails::Policy;
use kaito_rag::guardrails::scanners::Scanner;
use serde_json::{Value, json};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Instant;

/// One row: our policy entry and llm-guard's constructor settings for the same scanner.
struct Row {
    name: &'static str,
    ours: Value,
    reference: Option<Value>,
}

/// KAITO's default policy's regex patterns (the chart template's).
const PATTERNS: [&str; 6] = [
    "-----BEGIN (?:[A-Z ]+)?PRIVATE KEY-----",
    r"\bAKIA[0-9A-Z]{16}\b",
    r"\bAIza[0-9A-Za-z\-_]{35}\b",
    r"\bgh[pousr]_[A-Za-z0-9_]{20,}\b",
    r"(?i)\bsk-[A-Za-z0-9]{20,}\b",
    r"(?i)\bbearer\s+[A-Za-z0-9._\-]{20,}\b",
];

/// Words a policy might ban; several occur in docstrings.
const BANNED: [&str; 10] =
    ["password", "deprecated", "internal", "token", "secret", "private", "admin", "credentials", "unsafe", "hack"];

fn rows() -> Vec<Row> {
    vec![
        Row {
            name: "ban_substrings (10 words, redact)",
            ours: json!({"type": "ban_substrings", "action": "redact", "match_type": "word", "substrings": BANNED}),
            reference: Some(
                json!({"type": "ban_substrings", "match_type": "word", "redact": true, "substrings": BANNED}),
            ),
        },
        Row {
            name: "regex (KAITO's 6 patterns, redact)",
            ours: json!({"type": "regex", "action": "redact", "patterns": PATTERNS}),
            reference: Some(json!({"type": "regex", "redact": true, "patterns": PATTERNS})),
        },
        Row {
            name: "secrets (partial)",
            ours: json!({"type": "secrets", "action": "redact", "redact_mode": "partial"}),
            reference: Some(json!({"type": "secrets", "redact_mode": "partial"})),
        },
        Row {
            name: "sensitive (4 detectors)",
            ours: json!({"type": "sensitive", "action": "redact",
                         "detectors": ["email", "phone", "credit_card", "ip_address"]}),
            // llm-guard's Sensitive runs presidio with a transformers NER model from the hub: not here.
            reference: None,
        },
        Row {
            name: "invisible_text",
            ours: json!({"type": "invisible_text", "action": "redact"}),
            reference: Some(json!({"type": "invisible_text"})),
        },
        Row {
            name: "reading_time (15 s, truncate)",
            ours: json!({"type": "reading_time", "action": "redact", "max_time": 0.25, "truncate": true}),
            reference: Some(json!({"type": "reading_time", "max_time": 0.25, "truncate": true})),
        },
        Row {
            name: "json (repair), LLM JSON answers",
            ours: json!({"type": "json", "action": "redact", "required_elements": 0, "repair": true}),
            reference: Some(json!({"type": "json", "required_elements": 0, "repair": true})),
        },
        Row {
            name: "token_limit (64, cl100k_base)",
            ours: json!({"type": "token_limit", "action": "redact", "limit": 64, "encoding_name": "cl100k_base"}),
            reference: Some(json!({"type": "token_limit", "limit": 64, "encoding_name": "cl100k_base"})),
        },
    ]
}

/// Mean seconds per answer on this thread, over as many passes as take a second.
fn one_thread(scanner: &Scanner, texts: &[String]) -> f64 {
    let start = Instant::now();
    let mut passes = 0;
    loop {
        for t in texts {
            std::hint::black_box(scanner.scan(t, true).expect("scans"));
        }
        passes += 1;
        let elapsed = start.elapsed().as_secs_f64();
        if elapsed >= 1.0 {
            return elapsed / (passes * texts.len()) as f64;
        }
    }
}

/// Answers per second with a thread per core, each scanning every answer `passes` times (about a second).
fn all_cores(scanner: &Scanner, texts: &[String], per_answer: f64) -> f64 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let passes = ((1.0 / (per_answer * texts.len() as f64)).ceil() as usize).max(1);
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..cores {
            s.spawn(|| {
                for _ in 0..passes {
                    for t in texts {
                        std::hint::black_box(scanner.scan(t, true).expect("scans"));
                    }
                }
            });
        }
    });
    (cores * passes * texts.len()) as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let answers: usize = std::env::var("KAITO_BENCH_ANSWERS").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let json_answers: Vec<String> = serde_json::from_str(include_str!("../tests/data/json_answers.json"))
        .expect("json_answers.json is a list of strings");
    let rows = rows();

    eprintln!("llm-guard: building {answers} answers from the docstring corpus, then timing its scanners");
    let mut child = Command::new(common::python())
        .arg(common::script("bench_guardrails.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python starts");
    let request = json!({
        "tiktoken_assets": common::tiktoken_assets(),
        "answers": answers,
        "sentences": 5,
        "json_answers": json_answers,
        "rows": rows.iter().filter_map(|r| {
            let mut settings = r.reference.clone()?;
            settings["name"] = json!(r.name);
            Some(settings)
        }).collect::<Vec<_>>(),
    });
    child.stdin.take().unwrap().write_all(request.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "bench_guardrails.py failed");
    let reference: Value = serde_json::from_slice(&out.stdout).expect("bench_guardrails.py answers JSON");
    let prose: Vec<String> = serde_json::from_value(reference["answers"].clone()).expect("answers");
    let words = prose.iter().map(|a| a.split_whitespace().count()).sum::<usize>() as f64 / prose.len() as f64;

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "\nOutput guardrails, per answer ({} prose answers of {words:.0} words on average; json: {} LLM JSON answers); \
         {cores} cores",
        prose.len(),
        json_answers.len()
    );
    println!(
        "| scanner | ours µs, 1 thread | llm-guard µs, 1 process | ratio | ours answers/s, {cores} threads | \
         llm-guard answers/s, {cores} processes | ratio | flagged, ours / llm-guard |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for row in &rows {
        let policy = Policy::parse(&format!("scanners: [{}]", row.ours), "bench.yaml", &mut Vec::new())
            .unwrap_or_else(|e| panic!("{}: {e}", row.name));
        let scanner = &policy.scanners[0].scanner;
        let texts = if row.name.starts_with("json") { &json_answers } else { &prose };
        let flagged = texts.iter().filter(|t| !scanner.scan(t, true).expect("scans").valid).count();
        let one = one_thread(scanner, texts);
        let all = all_cores(scanner, texts, one);
        match reference["rows"].get(row.name) {
            Some(r) => {
                let (r_one, r_all) = (r["one_us"].as_f64().unwrap(), r["all_per_s"].as_f64().unwrap());
                let errors = match r["errors"].as_u64() {
                    Some(0) | None => String::new(),
                    Some(e) => format!(" (+{e} raised)"),
                };
                println!(
                    "| {} | {:.2} | {:.1} | {:.0}x | {:.0} | {:.0} | {:.0}x | {flagged} / {}{errors} |",
                    row.name,
                    one * 1e6,
                    r_one,
                    r_one / (one * 1e6),
                    all,
                    r_all,
                    all / r_all,
                    r["flagged"]
                );
            }
            None => println!("| {} | {:.2} | — | — | {all:.0} | — | — | {flagged} / — |", row.name, one * 1e6),
        }
    }
}
