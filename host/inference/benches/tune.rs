//! LoRA training throughput: `kaito-tune`'s trainer against transformers + peft (a plain training loop with the
//! same examples, LoRA settings, AdamW and gradient clipping, f32 on CPU, same thread count) in one run, on the
//! real SmolLM2 weights and real text (question/answer pairs rendered with the model's chat template).
//!
//! `cargo bench -p kaito-inference --bench tune [-- THREADS]` (after `cargo xtask models`; default: 1 and all
//! cores).

#[path = "../tests/common/mod.rs"]
mod common;

use kaito_inference::tune::{ConfigFile, Trainer, read_dataset};
use std::time::Instant;

const STEPS: usize = 8;

const PAIRS: &[(&str, &str)] = &[
    ("What is the capital of France?", "The capital of France is Paris, on the Seine."),
    ("Name three primary colours.", "Red, yellow and blue are the traditional primary colours."),
    ("How many days are in a leap year?", "A leap year has 366 days; February gets a 29th day."),
    (
        "What does a GPU do?",
        "A GPU runs many arithmetic operations in parallel, which suits graphics and neural networks.",
    ),
    ("Who wrote Pride and Prejudice?", "Jane Austen wrote Pride and Prejudice, published in 1813."),
    ("What is the boiling point of water at sea level?", "Water boils at 100 degrees Celsius at sea level."),
];

fn main() {
    let threads: Vec<i32> = match std::env::args().skip(1).find_map(|a| a.parse().ok()) {
        Some(t) => vec![t],
        None => vec![1, std::thread::available_parallelism().map_or(2, |n| n.get() as i32)],
    };
    let dir = common::model("smollm2-135m-instruct");
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("pairs.jsonl");
    let lines: String =
        PAIRS.iter().map(|(q, a)| format!("{}\n", serde_json::json!({"prompt": q, "completion": a}))).collect();
    std::fs::write(&data, lines).unwrap();
    let targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];
    println!(
        "SmolLM2-135M-Instruct, f32, CPU, LoRA r=16 on all seven projections, batch 3, {STEPS} steps (the first is warm-up)"
    );
    println!("| threads | kaito-tune tokens/s | transformers + peft tokens/s | ours / peft |");
    println!("|---:|---:|---:|---:|");
    for t in threads {
        tch::set_num_threads(t);
        let yaml = format!(
            "training_config:\n  LoraConfig:\n    r: 16\n    lora_alpha: 32\n  TrainingArguments:\n    per_device_train_batch_size: 3\n    learning_rate: 0.003\n    max_steps: {STEPS}\n    save_strategy: \"no\"\n    logging_steps: 0\n  DatasetConfig:\n    shuffle_dataset: false\n"
        );
        let cfg: ConfigFile = serde_yaml::from_str(&yaml).unwrap();
        let (mut trainer, text) = Trainer::new(&dir, cfg.training_config, 512).unwrap();
        let examples = read_dataset(&data, &text, trainer.dataset_settings(), 512).unwrap();
        // Ours: the same step loop kaito-tune runs; the first step is timed apart as warm-up.
        let mut ours = Vec::new();
        for step in 0..STEPS {
            let batch = &examples[(step * 3) % examples.len()..][..3];
            let started = Instant::now();
            trainer.train_step(batch, 0.003, step + 1);
            let tokens: usize = batch.iter().map(|e| e.ids.len()).sum();
            if step > 0 {
                ours.push((tokens, started.elapsed().as_secs_f64()));
            }
        }
        let ours_rate = ours.iter().map(|(n, _)| *n as f64).sum::<f64>() / ours.iter().map(|(_, s)| s).sum::<f64>();
        let batches: Vec<serde_json::Value> = examples
            .chunks(3)
            .map(|c| {
                serde_json::json!(
                    c.iter().map(|e| serde_json::json!({"ids": e.ids, "trained": e.trained})).collect::<Vec<_>>()
                )
            })
            .collect();
        let spec = work.path().join("spec.json");
        let body = serde_json::json!({"batches": batches, "r": 16, "alpha": 32, "lr": 0.003, "targets": targets});
        std::fs::write(&spec, body.to_string()).unwrap();
        let out = std::process::Command::new(common::python())
            .arg(common::script("bench_peft_train.py"))
            .arg(&dir)
            .arg(&spec)
            .arg(t.to_string())
            .arg(STEPS.to_string())
            .output()
            .expect("python runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let reference: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let peft_rate = reference["tokens_per_second"].as_f64().unwrap();
        println!("| {t} | {ours_rate:.0} | {peft_rate:.0} | {:.2}x |", ours_rate / peft_rate);
    }
}
