//! The `json` and `token_limit` guardrail scanners against llm-guard 0.3.16's own (KAITO's rag-output-guardrails
//! runs them), on the same answers in one run: the text each leaves and whether the answer passed must agree.
//! llm-guard uses json_repair 0.44.1 and tiktoken 0.14.0; kaito-rag has its own port of json_repair's parser and
//! tiktoken-rs (tiktoken's Rust core with the same OpenAI encodings).

mod common;

use kaito_rag::guardrails::Policy;
use serde_json::{Value, json};
use std::io::Write;
use std::process::{Command, Stdio};

/// Answers for token_limit: prose, code, other scripts, emoji.
const TOKEN_ANSWERS: [&str; 5] = [
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France.",
    "fn main() {\n    println!(\"hello, world\");\n}\n",
    "日本語のテキストは複数のバイトで書かれます。",
    "Emoji 😀🎉 and accents: déjà vu, naïve, Ångström.",
    "hello world",
];

#[test]
fn json_and_token_limit_agree_with_llm_guard() {
    // (policy entry, answer) per case; the reference gets the same settings.
    let mut cases: Vec<(String, Value)> = Vec::new();
    // Answers as an LLM asked for JSON writes them: valid, repairable and hopeless (70, in tests/data).
    let answers: Vec<String> =
        serde_json::from_str(include_str!("data/json_answers.json")).expect("json_answers.json is a list of strings");
    for text in &answers {
        for (required, repair) in [(0, true), (0, false), (2, true)] {
            cases.push((
                format!("{{type: json, required_elements: {required}, repair: {repair}}}"),
                json!({"scanner": "json", "required": required, "repair": repair, "text": text}),
            ));
        }
    }
    for text in TOKEN_ANSWERS {
        for encoding in ["cl100k_base", "o200k_base", "p50k_base", "r50k_base", "gpt2"] {
            for limit in [1, 2, 5, 12, 4096] {
                cases.push((
                    format!("{{type: token_limit, limit: {limit}, encoding_name: {encoding}}}"),
                    json!({"scanner": "token_limit", "limit": limit, "encoding": encoding, "text": text}),
                ));
            }
        }
    }

    let mut child = Command::new(common::python())
        .arg(common::script("guardrails_reference.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python starts");
    let request = json!({
        "tiktoken_assets": common::tiktoken_assets(),
        "cases": cases.iter().map(|c| &c.1).collect::<Vec<_>>(),
    });
    child.stdin.take().unwrap().write_all(request.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "guardrails_reference.py failed: {}", String::from_utf8_lossy(&out.stderr));
    let reference: Vec<(String, bool)> = serde_json::from_slice(&out.stdout).expect("reference JSON");
    assert_eq!(reference.len(), cases.len());

    let mut disagreements = Vec::new();
    for ((entry, case), (want_text, want_valid)) in cases.iter().zip(&reference) {
        let policy = Policy::parse(&format!("scanners: [{entry}]"), "p.yaml", &mut Vec::new()).unwrap();
        let scanner = &policy.scanners[0].scanner;
        let got = scanner.scan(case["text"].as_str().unwrap(), true).expect("scans");
        if (&got.text, got.valid) != (want_text, *want_valid) {
            disagreements.push(format!(
                "{entry} on {:?}:\n  llm-guard: {want_valid} {want_text:?}\n  ours:      {} {:?}",
                case["text"], got.valid, got.text
            ));
        }
    }
    let rejected_by_both = reference.iter().filter(|r| !r.1).count();
    assert!(rejected_by_both > 20 && rejected_by_both < reference.len() - 20, "the cases exercise both verdicts");
    assert!(
        disagreements.is_empty(),
        "{} of {} cases differ:\n{}",
        disagreements.len(),
        cases.len(),
        disagreements.join("\n")
    );
}
