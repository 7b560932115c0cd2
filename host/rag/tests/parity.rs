//! Embedding parity: rust-bert's all-MiniLM-L6-v2 against sentence-transformers
//! (PyTorch, CPU, f32) on the same 20 sentences; cosine at least 0.999 each.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

const SENTENCES: [&str; 20] = [
    "The cat sits on the mat.",
    "KAITO provisions GPU nodes for model inference on Kubernetes.",
    "A Workspace names a model preset and an instance type.",
    "Retrieval-augmented generation grounds answers in documents.",
    "Paris is the capital and most populous city of France.",
    "The quick brown fox jumps over the lazy dog.",
    "LMDB is a memory-mapped key-value store with ACID transactions.",
    "Vectors are compared by cosine similarity.",
    "She sells sea shells by the sea shore.",
    "Rust guarantees memory safety without a garbage collector.",
    "The operator reconciles custom resources into pods and services.",
    "How many tokens fit in the context window?",
    "Photosynthesis converts light energy into chemical energy.",
    "The stock market fell sharply on Tuesday.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "An embedding maps text to a point in a high-dimensional space.",
    "Mount Everest is the highest mountain on Earth.",
    "WebAssembly components run sandboxed plugins.",
    "He played the violin at the concert last night.",
    "Continuous batching lets new requests join between decode steps.",
];

#[test]
fn rust_bert_embeddings_match_sentence_transformers() {
    let dir = common::model("all-minilm-l6-v2");
    let sentences: Vec<String> = SENTENCES.iter().map(|s| s.to_string()).collect();
    let ours = common::minilm().embed(&sentences, |_| {}).expect("rust-bert embeds");

    let mut child = Command::new(common::python())
        .arg(common::script("embed_reference.py"))
        .arg(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python starts");
    child.stdin.take().unwrap().write_all(serde_json::to_string(&sentences).unwrap().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "embed_reference.py failed: {}", String::from_utf8_lossy(&out.stderr));
    let reference: Vec<Vec<f32>> = serde_json::from_slice(&out.stdout).expect("reference JSON");

    assert_eq!(ours.len(), reference.len());
    let mut worst = 1.0f32;
    for (i, (a, b)) in ours.iter().zip(&reference).enumerate() {
        assert_eq!(a.len(), 384);
        assert_eq!(a.len(), b.len());
        let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
        let cos = dot / (norm(a) * norm(b));
        assert!(cos >= 0.999, "sentence {i} {:?}: cosine {cos}", SENTENCES[i]);
        worst = worst.min(cos);
    }
    eprintln!("worst cosine over {} sentences: {worst:.7}", SENTENCES.len());
}
