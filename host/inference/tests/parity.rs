//! Numerical parity with Hugging Face transformers (PyTorch, CPU, f32) on the same weights: the last prompt
//! position's logits within 1e-3, and 32 greedy tokens identical. One tiny random model per family, and SmolLM2.

mod common;

use kaito_inference::loader;
use kaito_inference::models::decoder::Span;
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use tch::{Device, Kind};

const PROMPT: &[i64] = &[1, 17, 245, 33, 401, 58, 9, 77, 120, 300, 5, 61, 88, 211, 19, 42, 7, 350];

fn reference(dir: &Path, prompt: &[i64], n: usize) -> (Vec<f32>, Vec<i64>) {
    let out = Command::new(common::python())
        .arg(common::script("reference.py"))
        .arg(dir)
        .arg(serde_json::to_string(prompt).unwrap())
        .arg(n.to_string())
        .output()
        .expect("python runs");
    assert!(out.status.success(), "reference.py failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("reference prints JSON");
    let logits = v["logits"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
    let greedy = v["greedy"].as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect();
    (logits, greedy)
}

fn ours(dir: &Path, prompt: &[i64], n: usize) -> (Vec<f32>, Vec<i64>) {
    tch::set_num_threads(1);
    let _guard = tch::no_grad_guard();
    let loaded = loader::load(dir, Device::Cpu, Kind::Float, 4096).expect("model loads");
    let model = loaded.model;
    let mut cache = model.new_cache();
    let logits = model.forward(prompt, &[Span { start: 0, len: prompt.len() }], &mut [&mut cache], &[]);
    let first: Vec<f32> = Vec::try_from(logits.get(0)).unwrap();
    let mut token = logits.get(0).argmax(0, false).int64_value(&[]);
    let mut greedy = vec![token];
    for _ in 1..n {
        let logits = model.forward(&[token], &[Span { start: 0, len: 1 }], &mut [&mut cache], &[]);
        token = logits.get(0).argmax(0, false).int64_value(&[]);
        greedy.push(token);
    }
    (first, greedy)
}

fn check(dir: &Path, prompt: &[i64]) {
    let (want_logits, want_greedy) = reference(dir, prompt, 32);
    let (got_logits, got_greedy) = ours(dir, prompt, 32);
    assert_eq!(want_logits.len(), got_logits.len());
    let max = want_logits.iter().zip(&got_logits).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    eprintln!("{}: max |logit difference| {max:.2e}", dir.display());
    assert!(max < 1e-3, "logits differ by {max} (> 1e-3)");
    assert_eq!(want_greedy, got_greedy, "greedy tokens differ");
}

fn tiny(arch: &'static str) {
    let dir = tempfile::tempdir().unwrap();
    common::tiny(arch).write(dir.path());
    check(dir.path(), PROMPT);
}

#[test]
fn tiny_llama_with_llama3_rope_matches_transformers() {
    tiny("LlamaForCausalLM");
}

#[test]
fn tiny_mistral_matches_transformers() {
    tiny("MistralForCausalLM");
}

#[test]
fn tiny_qwen2_with_qkv_bias_matches_transformers() {
    tiny("Qwen2ForCausalLM");
}

#[test]
fn tiny_phi3_with_longrope_matches_transformers() {
    // 18 prompt tokens and 32 more cross the 24-token original context: both factor sets run.
    tiny("Phi3ForCausalLM");
}

#[test]
fn smollm2_matches_transformers() {
    let dir = common::model("smollm2-135m-instruct");
    let text = kaito_inference::text::TextModel::load(&dir, &[2]).unwrap();
    let prompt: Vec<i64> =
        common::chat_prompt(&text, "What is the capital of France?").into_iter().map(i64::from).collect();
    check(&dir, &prompt);
}

#[test]
fn unknown_architecture_is_named_with_the_supported_ones() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = common::tiny("MistralForCausalLM");
    t.config["architectures"] = serde_json::json!(["GPTNeoXForCausalLM"]);
    t.write(dir.path());
    let err = loader::load(dir.path(), Device::Cpu, Kind::Float, 128).err().expect("refused").to_string();
    assert!(
        err.contains("GPTNeoXForCausalLM") && err.contains("LlamaForCausalLM") && err.contains("Phi3ForCausalLM"),
        "{err}"
    );
}
