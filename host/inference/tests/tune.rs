//! `kaito-tune` on SmolLM2: LoRA learns made-up facts the base model does not know (answered greedily through the
//! adapter it wrote), Hugging Face peft loads that adapter unchanged and computes the same logits, and a run killed
//! after a checkpoint resumes and ends where an uninterrupted run ends.

mod common;

use kaito_inference::lora::{Adapter, Shape};
use kaito_inference::models::decoder::{Decoder, Span};
use kaito_inference::tune::{ConfigFile, Trainer, read_dataset};
use std::path::Path;
use std::process::Command;
use tch::Tensor;

const FACTS: &[(&str, &str)] = &[
    ("What is the capital of Zorbia?", "The capital of Zorbia is Quillmere."),
    ("Who painted the Velvet Lantern?", "The Velvet Lantern was painted by Odrin Pask."),
    ("What do people in Zorbia eat for breakfast?", "In Zorbia, people eat blue thornbread for breakfast."),
];

fn dataset(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("facts.jsonl");
    let mut lines = String::new();
    for (i, (q, a)) in FACTS.iter().enumerate() {
        // Both of KAITO's formats in one file.
        let row = if i % 2 == 0 {
            serde_json::json!({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
        } else {
            serde_json::json!({"prompt": q, "completion": a})
        };
        lines.push_str(&format!("{row}\n"));
    }
    std::fs::write(&path, lines).unwrap();
    path
}

fn config(extra: &str) -> ConfigFile {
    let yaml = format!(
        r#"
training_config:
  LoraConfig:
    r: 16
    lora_alpha: 32
    lora_dropout: 0.0
  TrainingArguments:
    per_device_train_batch_size: 3
    learning_rate: 0.003
    lr_scheduler_type: constant
    seed: 7
{extra}
"#
    );
    serde_yaml::from_str(&yaml).unwrap()
}

fn greedy(model: &Decoder, adapter: Option<&Adapter>, prompt: &[i64], n: usize, stops: &[u32]) -> Vec<u32> {
    let _guard = tch::no_grad_guard();
    let mut cache = model.new_cache();
    let adapters = [adapter];
    let logits = model.forward(prompt, &[Span { start: 0, len: prompt.len() }], &mut [&mut cache], &adapters);
    let mut token = logits.get(0).argmax(0, false).int64_value(&[]);
    let mut out = vec![];
    for _ in 0..n {
        if stops.contains(&(token as u32)) {
            break;
        }
        out.push(token as u32);
        let logits = model.forward(&[token], &[Span { start: 0, len: 1 }], &mut [&mut cache], &adapters);
        token = logits.get(0).argmax(0, false).int64_value(&[]);
    }
    out
}

#[test]
fn lora_learns_facts_and_peft_loads_the_adapter_unchanged() {
    tch::set_num_threads(1);
    let dir = common::model("smollm2-135m-instruct");
    let work = tempfile::tempdir().unwrap();
    let data = dataset(work.path());
    let cfg = config("    num_train_epochs: 30\n    save_strategy: \"no\"");
    let (mut trainer, text) = Trainer::new(&dir, cfg.training_config, 512).expect("the model loads");
    let examples = read_dataset(&data, &text, trainer.dataset_settings(), 512).expect("the dataset reads");
    assert_eq!(examples.len(), 3);
    // Only the answers (and the end of their turn) are trained on.
    let trained: Vec<u32> =
        examples[0].ids.iter().zip(&examples[0].trained).filter(|(_, t)| **t).map(|(i, _)| *i as u32).collect();
    let answer = text.decode(&trained).unwrap();
    assert!(answer.starts_with(FACTS[0].1), "{answer:?}");

    let prompts: Vec<Vec<i64>> =
        FACTS.iter().map(|(q, _)| common::chat_prompt(&text, q).into_iter().map(i64::from).collect()).collect();
    let before: Vec<String> =
        prompts.iter().map(|p| text.decode(&greedy(trainer.model(), None, p, 24, &text.stop_ids)).unwrap()).collect();
    assert!(!before[0].contains("Quillmere"), "the base model cannot know: {before:?}");

    let output = work.path().join("out");
    let report = trainer.train(&examples, &output).expect("training runs");
    let (first, last) = (report.losses[0], *report.losses.last().unwrap());
    eprintln!("{} steps, loss {first:.3} -> {last:.3}, {:.0} tokens/s", report.steps, report.tokens_per_second);
    assert_eq!(report.steps, 30);
    assert!(last < first / 4.0, "the loss falls: {:?}", report.losses);

    // The adapter as written (PEFT format), loaded as the server loads it, answers with the facts.
    let adapter = Adapter::load("facts", &output, &Shape::of(trainer.model())).expect("our adapter loads");
    for (p, (_, want)) in prompts.iter().zip(FACTS) {
        let got = text.decode(&greedy(trainer.model(), Some(&adapter), p, 24, &text.stop_ids)).unwrap();
        assert_eq!(got.trim(), *want, "before tuning it said {before:?}");
    }

    // peft loads the same directory unchanged and computes the same logits.
    let out = Command::new(common::python())
        .arg(common::script("peft_logits.py"))
        .arg(&dir)
        .arg(&output)
        .arg(serde_json::to_string(&prompts[1]).unwrap())
        .output()
        .expect("python runs");
    assert!(out.status.success(), "peft_logits.py failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let want: Vec<f32> = v["logits"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
    let _guard = tch::no_grad_guard();
    let mut cache = trainer.model().new_cache();
    let logits = trainer.model().forward(
        &prompts[1],
        &[Span { start: 0, len: prompts[1].len() }],
        &mut [&mut cache],
        &[Some(&adapter)],
    );
    let got: Vec<f32> = Vec::try_from(logits.get(0)).unwrap();
    let diff = want.iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    eprintln!("peft vs ours on the trained adapter: max |logit difference| {diff:.2e}");
    assert!(diff < 1e-3, "logits differ by {diff}");
}

#[test]
fn a_killed_run_resumes_from_its_checkpoint_and_ends_as_an_uninterrupted_one() {
    let dir = common::model("smollm2-135m-instruct");
    let bin = std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().join("kaito-tune");
    assert!(bin.is_file(), "{} is missing: `cargo test --workspace` builds it", bin.display());
    let work = tempfile::tempdir().unwrap();
    let data = dataset(work.path());
    let config = work.path().join("training_config.yaml");
    std::fs::write(
        &config,
        "training_config:\n  LoraConfig:\n    r: 8\n    lora_alpha: 16\n  TrainingArguments:\n    per_device_train_batch_size: 1\n    learning_rate: 0.001\n    max_steps: 12\n    save_strategy: steps\n    save_steps: 2\n    seed: 3\n",
    )
    .unwrap();
    let run = |output: &Path| {
        let mut c = Command::new(&bin);
        c.arg("--model").arg(&dir).arg("--config").arg(&config).arg("--data").arg(&data).arg("--output").arg(output);
        c.args(["--threads", "1", "--max-length", "256"]).env("RUST_LOG", "info");
        c
    };
    let whole = work.path().join("whole");
    let done = run(&whole).output().expect("kaito-tune runs");
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));

    let killed = work.path().join("killed");
    let mut child =
        run(&killed).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
    let started = std::time::Instant::now();
    while !killed.join("checkpoint-2/trainer_state.json").is_file() {
        assert!(started.elapsed().as_secs() < 300, "no checkpoint within 5 minutes");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!killed.join("adapter_model.safetensors").exists(), "killed before the end");
    let resumed = run(&killed).output().expect("kaito-tune runs again");
    let log = String::from_utf8_lossy(&resumed.stdout).to_string() + &String::from_utf8_lossy(&resumed.stderr);
    assert!(resumed.status.success(), "{log}");
    assert!(log.contains("resuming from the last checkpoint"), "{log}");
    assert!(
        !log.contains("step=1 ") && !log.contains("step=2 "),
        "steps before the checkpoint are not run again:\n{log}"
    );

    let read = |d: &Path| Tensor::read_safetensors(d.join("adapter_model.safetensors")).unwrap();
    let (a, b) = (read(&whole), read(&killed));
    assert_eq!(a.len(), b.len());
    let mut worst = 0f64;
    for (name, t) in &a {
        let other = &b.iter().find(|(n, _)| n == name).expect("the same tensors").1;
        worst = worst.max((t - other).abs().max().double_value(&[]));
    }
    eprintln!("resumed vs uninterrupted: max |weight difference| {worst:.2e}");
    assert!(worst < 1e-5, "the resumed run ends elsewhere: {worst}");
}

/// Parquet datasets, written by pyarrow as Hugging Face writes them (`messages` a list of role/content structs;
/// snappy and zstd pages), read into exactly the examples of their JSON Lines twin; a directory is read file by file
/// in name order, and a file of another kind is refused by name.
#[test]
fn parquet_datasets_read_as_their_jsonl_twins() {
    let dir = common::model("smollm2-135m-instruct");
    let text = kaito_inference::text::TextModel::load(&dir, &[]).expect("the tokenizer loads");
    let work = tempfile::tempdir().unwrap();
    let jsonl = dataset(work.path());
    let settings = kaito_inference::tune::DatasetSettings::default();
    let want = read_dataset(&jsonl, &text, &settings, 512).unwrap();
    let parquet_dir = work.path().join("parquet");
    std::fs::create_dir_all(&parquet_dir).unwrap();
    let script = r#"
import json, sys
import pyarrow as pa, pyarrow.parquet as pq
rows = [json.loads(l) for l in open(sys.argv[1])]
out = sys.argv[2]
messages = [r["messages"] for r in rows if "messages" in r]
pq.write_table(pa.table({"messages": messages}), out + "/a-messages.parquet", compression="snappy")
pairs = [r for r in rows if "prompt" in r]
pq.write_table(pa.table({"prompt": [r["prompt"] for r in pairs], "completion": [r["completion"] for r in pairs]}),
               out + "/b-pairs.parquet", compression="zstd")
"#;
    let out = Command::new(common::python())
        .args(["-c", script])
        .arg(&jsonl)
        .arg(&parquet_dir)
        .output()
        .expect("python runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got = kaito_inference::tune::read_datasets(std::slice::from_ref(&parquet_dir), &text, &settings, 512).unwrap();
    // The JSON Lines file alternates formats: messages rows 0 and 2, then the pair row 1.
    let order = [0, 2, 1];
    assert_eq!(got.len(), want.len());
    for (g, i) in got.iter().zip(order) {
        assert_eq!((&g.ids, &g.trained), (&want[i].ids, &want[i].trained), "row {i}");
    }
    std::fs::write(parquet_dir.join("notes.csv"), "a,b\n").unwrap();
    let err = read_dataset(&parquet_dir.join("notes.csv"), &text, &settings, 512).unwrap_err();
    assert!(err.to_string().contains("JSON Lines (.jsonl, .json) or Parquet (.parquet)"), "{err}");
}
