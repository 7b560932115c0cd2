//! Decode speed, ours vs Hugging Face transformers `generate`, in one run on the same machine, same SmolLM2
//! weights, f32 on CPU, same thread count; then aggregate tokens/s at 1, 4 and 16 concurrent requests; then LoRA
//! serving: one request with a peft-made rank-16 adapter on every projection, ours vs transformers + peft
//! (unmerged), and 16 concurrent requests over 0, 1 and 4 such adapters in one batch.
//!
//! `cargo bench -p kaito-inference --bench decode [-- THREADS]` (after `cargo xtask models`; default 1 thread).

#[path = "../tests/common/mod.rs"]
mod common;

use kaito_inference::engine::{Engine, EngineConfig, Event, GenRequest};
use kaito_inference::loader;
use kaito_inference::metrics::Metrics;
use kaito_inference::models::decoder::Quantization;
use kaito_inference::sampling::{Sampler, SamplingParams};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
use tch::{Device, Kind};

const NEW_TOKENS: usize = 64;

/// Time to first token and decode tokens/s of one request, from the engine's event stream.
async fn one(engine: &Engine, prompt: Vec<u32>) -> (f64, f64) {
    one_with(engine, prompt, None).await
}

/// Greedy, [`NEW_TOKENS`] long whatever the model says.
fn greedy() -> Sampler {
    Sampler::new(SamplingParams { temperature: 0.0, max_tokens: NEW_TOKENS, ignore_eos: true, ..Default::default() })
}

/// [`one`], generating with the loaded adapter `adapter`.
async fn one_with(engine: &Engine, prompt: Vec<u32>, adapter: Option<String>) -> (f64, f64) {
    one_sampled(engine, prompt, adapter, greedy()).await
}

/// [`one_with`], choosing tokens with `sampler`.
async fn one_sampled(engine: &Engine, prompt: Vec<u32>, adapter: Option<String>, sampler: Sampler) -> (f64, f64) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let start = Instant::now();
    engine.submit(GenRequest { prompt, adapter, sampler, events: tx, siblings: vec![] }).unwrap();
    let (mut first, mut count) = (None, 0);
    while let Some(e) = rx.recv().await {
        match e {
            Event::Token(..) => {
                count += 1;
                first.get_or_insert_with(|| start.elapsed().as_secs_f64());
            }
            Event::PromptLogprobs(_) => {}
            Event::Finished(_) => break,
            Event::Failed(m) => panic!("{m}"),
        }
    }
    let total = start.elapsed().as_secs_f64();
    let ttft = first.unwrap();
    (ttft, (count - 1) as f64 / (total - ttft))
}

/// Aggregate generated tokens/s with `n` requests at once.
async fn aggregate(engine: &Engine, prompts: &[Vec<u32>], n: usize) -> f64 {
    aggregate_over(engine, prompts, n, &[]).await
}

/// [`aggregate`], request `i` using adapter `i % adapters.len()` (none when `adapters` is empty).
async fn aggregate_over(engine: &Engine, prompts: &[Vec<u32>], n: usize, adapters: &[String]) -> f64 {
    let start = Instant::now();
    let adapter = |i: usize| (!adapters.is_empty()).then(|| adapters[i % adapters.len()].clone());
    let runs = (0..n).map(|i| one_with(engine, prompts[i % prompts.len()].clone(), adapter(i)));
    futures::future::join_all(runs).await;
    (n * NEW_TOKENS) as f64 / start.elapsed().as_secs_f64()
}

/// transformers `generate` on the same weights and prompt (`tests/python/bench_transformers.py`), with the PEFT
/// adapter `adapter` when given: its JSON report (time to first token, decode tokens/s).
fn transformers(dir: &Path, prompt: &[u32], threads: i32, adapter: Option<&Path>) -> serde_json::Value {
    transformers_in(dir, prompt, threads, "float32", adapter)
}

/// [`transformers`] with the model in `dtype` (torch's name).
fn transformers_in(dir: &Path, prompt: &[u32], threads: i32, dtype: &str, adapter: Option<&Path>) -> serde_json::Value {
    let out = std::process::Command::new(common::python())
        .arg(common::script("bench_transformers.py"))
        .arg(dir)
        .arg(serde_json::to_string(prompt).unwrap())
        .arg(NEW_TOKENS.to_string())
        .arg(threads.to_string())
        .arg(dtype)
        .args(adapter)
        .output()
        .expect("python runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Aggregate tokens/s of `n` requests at once, each choosing tokens with `sampler()`.
async fn aggregate_sampled(engine: &Engine, prompt: &[u32], n: usize, sampler: impl Fn() -> Sampler) -> f64 {
    let start = Instant::now();
    futures::future::join_all((0..n).map(|_| one_sampled(engine, prompt.to_vec(), None, sampler()))).await;
    (n * NEW_TOKENS) as f64 / start.elapsed().as_secs_f64()
}

/// An engine serving the model of `dir` in `kind` (quantized as asked), built on its own thread as the server does.
fn start(dir: &Path, kind: Kind, quantization: Option<Quantization>, threads: i32) -> Engine {
    let dir = dir.to_path_buf();
    let build = Box::new(move || {
        let mut model = loader::load_model(&dir, Device::Cpu, kind, 2048)?;
        if let Some(q) = quantization {
            model.quantize(q)?;
        }
        Ok((model, loader::load_text(&dir)?.stop_ids))
    });
    Engine::spawn(Some(threads), EngineConfig::default(), Arc::new(Metrics::default()), build).expect("model loads")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let threads: i32 = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(1);
    let dir = common::model("smollm2-135m-instruct");
    let text = loader::load_text(&dir).expect("tokenizer loads");
    let prompts: Vec<Vec<u32>> = [
        "What is the capital of France?",
        "Write a short poem about autumn leaves.",
        "Explain what a GPU is.",
        "List three fruits.",
    ]
    .iter()
    .map(|q| common::chat_prompt(&text, q))
    .collect();
    let engine = start(&dir, Kind::Float, None, threads);
    one(&engine, prompts[0].clone()).await; // warm-up
    let (ttft, decode) = one(&engine, prompts[0].clone()).await;

    let reference = transformers(&dir, &prompts[0], threads, None);
    let (hf_ttft, hf_decode) = (reference["ttft_s"].as_f64().unwrap(), reference["decode_tok_s"].as_f64().unwrap());

    println!(
        "SmolLM2-135M-Instruct, f32, CPU, {threads} thread(s), prompt {} tokens, {NEW_TOKENS} new tokens",
        prompts[0].len()
    );
    println!("| batch 1 | kaito-inference | transformers generate | ours / transformers |");
    println!("|---|---:|---:|---:|");
    println!("| decode tokens/s | {decode:.1} | {hf_decode:.1} | {:.2}x |", decode / hf_decode);
    println!("| time to first token ms | {:.1} | {:.1} | {:.2}x faster |", ttft * 1e3, hf_ttft * 1e3, hf_ttft / ttft);
    let single = aggregate(&engine, &prompts, 1).await;
    println!();
    println!("| concurrent requests | aggregate tokens/s | vs 1 |");
    println!("|---:|---:|---:|");
    println!("| 1 | {single:.1} | 1.00x |");
    for n in [4, 16] {
        let agg = aggregate(&engine, &prompts, n).await;
        println!("| {n} | {agg:.1} | {:.2}x |", agg / single);
    }

    // Structured output: the same decoding under a JSON schema (llguidance's token mask on every step). The schema
    // asks for more items than fit, so every run is NEW_TOKENS long and ends on max_tokens, as the free one does.
    let schema = serde_json::json!({"type": "array", "items": {"type": "string", "maxLength": 24}, "minItems": 64});
    let grammars = text.grammars.as_ref().expect("grammars for SmolLM2");
    let json_prompt = common::chat_prompt(&text, "List fruits as a JSON array of strings.");
    let constrained = || greedy().constrained(Some(grammars.json(&schema).expect("schema compiles")));
    one_sampled(&engine, json_prompt.clone(), None, constrained()).await; // warm-up
    let (_, free) = one_sampled(&engine, json_prompt.clone(), None, greedy()).await;
    let (_, json) = one_sampled(&engine, json_prompt.clone(), None, constrained()).await;
    let free16 = aggregate_sampled(&engine, &json_prompt, 16, greedy).await;
    let json16 = aggregate_sampled(&engine, &json_prompt, 16, constrained).await;
    println!();
    println!("| structured output (json_schema) | free tokens/s | constrained tokens/s | constrained / free |");
    println!("|---|---:|---:|---:|");
    println!("| batch 1 decode | {free:.1} | {json:.1} | {:.2}x |", json / free);
    println!("| 16 concurrent, aggregate | {free16:.1} | {json16:.1} | {:.2}x |", json16 / free16);

    // LoRA: four peft-made adapters, rank 16 on all seven projections of every layer.
    let work = tempfile::tempdir().unwrap();
    let shape = engine.shape.clone();
    let mut names = Vec::new();
    for i in 0..4 {
        let adapter = work.path().join(format!("adapter-{i}"));
        let spec = serde_json::json!({"r": 16, "lora_alpha": 32, "seed": i, "target_modules":
            ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]});
        common::peft_adapter(&dir, &adapter, &spec, &[1, 2, 3], 1);
        let name = format!("adapter-{i}");
        let owned = name.clone();
        let shape = shape.clone();
        let build = Box::new(move || kaito_inference::lora::Adapter::load(&owned, &adapter, &shape));
        engine.load_adapter(build).await.unwrap();
        names.push(name);
    }
    one_with(&engine, prompts[0].clone(), Some(names[0].clone())).await; // warm-up
    let (_, lora_decode) = one_with(&engine, prompts[0].clone(), Some(names[0].clone())).await;
    let reference = transformers(&dir, &prompts[0], threads, Some(&work.path().join("adapter-0")));
    let peft_decode = reference["decode_tok_s"].as_f64().unwrap();
    println!();
    println!("| batch 1, rank-16 adapter on every projection | kaito-inference | transformers + peft | ours / peft |");
    println!("|---|---:|---:|---:|");
    println!("| decode tokens/s | {lora_decode:.1} | {peft_decode:.1} | {:.2}x |", lora_decode / peft_decode);
    println!("| vs the base model | {:.2}x | {:.2}x | |", lora_decode / decode, peft_decode / hf_decode);
    println!();
    println!("| 16 concurrent requests | aggregate tokens/s | vs no adapter |");
    println!("|---|---:|---:|");
    let none = aggregate_over(&engine, &prompts, 16, &[]).await;
    println!("| base model only | {none:.1} | 1.00x |");
    for k in [1, 4] {
        let agg = aggregate_over(&engine, &prompts, 16, &names[..k]).await;
        println!("| {k} adapter(s), round robin | {agg:.1} | {:.2}x |", agg / none);
    }

    // Fewer bytes per token: each weight format in its own engine, beside transformers in f32 and bf16 at the same
    // thread count (transformers has no CPU int8 path of its own here). One engine at a time: two engine threads
    // would be two OpenMP teams (see Engine::spawn).
    drop(engine);
    let hf_bf16 = transformers_in(&dir, &prompts[0], threads, "bfloat16", None)["decode_tok_s"].as_f64().unwrap();
    println!();
    println!("transformers decode tokens/s: f32 {hf_decode:.1}, bf16 {hf_bf16:.1}");
    println!(
        "| weights ({threads} thread(s)) | decode tokens/s | TTFT ms | vs transformers f32 | vs transformers bf16 | 16 concurrent tokens/s | 16 vs 1 |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let formats = [
        ("f32", Kind::Float, None),
        ("bf16 (weights, activations, KV cache)", Kind::BFloat16, None),
        ("int8 weights, f32 activations", Kind::Float, Some(Quantization::Int8)),
        ("int8 weights, bf16 activations", Kind::BFloat16, Some(Quantization::Int8)),
    ];
    for (name, kind, quantization) in formats {
        let e = start(&dir, kind, quantization, threads);
        one(&e, prompts[0].clone()).await; // warm-up
        let (ttft, decode) = one(&e, prompts[0].clone()).await;
        let single = aggregate(&e, &prompts, 1).await;
        let sixteen = aggregate(&e, &prompts, 16).await;
        println!(
            "| {name} | {decode:.1} | {:.1} | {:.2}x | {:.2}x | {sixteen:.1} | {:.2}x |",
            ttft * 1e3,
            decode / hf_decode,
            decode / hf_bf16,
            sixteen / single
        );
    }
}
