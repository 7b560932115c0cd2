//! Decode speed, ours vs Hugging Face transformers `generate`, in one run on the same machine, same SmolLM2
//! weights, f32 on CPU, same thread count; then aggregate tokens/s at 1, 4 and 16 concurrent requests.
//!
//! `cargo bench -p kaito-inference --bench decode [-- THREADS]` (after `cargo xtask models`; default 1 thread).

#[path = "../tests/common/mod.rs"]
mod common;

use kaito_inference::engine::{Engine, EngineConfig, Event, GenRequest};
use kaito_inference::loader;
use kaito_inference::metrics::Metrics;
use kaito_inference::sampling::{Sampler, SamplingParams};
use std::sync::Arc;
use std::time::Instant;
use tch::{Device, Kind};

const NEW_TOKENS: usize = 64;

/// Time to first token and decode tokens/s of one request, from the engine's event stream.
async fn one(engine: &Engine, prompt: Vec<u32>) -> (f64, f64) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let params = SamplingParams { temperature: 0.0, max_tokens: NEW_TOKENS, ignore_eos: true, ..Default::default() };
    let start = Instant::now();
    engine.submit(GenRequest { prompt, sampler: Sampler::new(params), events: tx }).unwrap();
    let (mut first, mut count) = (None, 0);
    while let Some(e) = rx.recv().await {
        match e {
            Event::Token(_) => {
                count += 1;
                first.get_or_insert_with(|| start.elapsed().as_secs_f64());
            }
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
    let start = Instant::now();
    let runs = (0..n).map(|i| one(engine, prompts[i % prompts.len()].clone()));
    futures::future::join_all(runs).await;
    (n * NEW_TOKENS) as f64 / start.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let threads: i32 = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(1);
    let dir = common::model("smollm2-135m-instruct");
    tch::set_num_threads(threads);
    let loaded = loader::load(&dir, Device::Cpu, Kind::Float, 2048).expect("model loads");
    let text = loaded.text;
    let prompts: Vec<Vec<u32>> = [
        "What is the capital of France?",
        "Write a short poem about autumn leaves.",
        "Explain what a GPU is.",
        "List three fruits.",
    ]
    .iter()
    .map(|q| common::chat_prompt(&text, q))
    .collect();
    let engine =
        Engine::start(loaded.model, text.stop_ids.clone(), EngineConfig::default(), Arc::new(Metrics::default()));
    one(&engine, prompts[0].clone()).await; // warm-up
    let (ttft, decode) = one(&engine, prompts[0].clone()).await;

    let out = std::process::Command::new(common::python())
        .arg(common::script("bench_transformers.py"))
        .arg(&dir)
        .arg(serde_json::to_string(&prompts[0]).unwrap())
        .arg(NEW_TOKENS.to_string())
        .arg(threads.to_string())
        .output()
        .expect("python runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let reference: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
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
}
