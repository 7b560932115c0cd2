//! RAG search benchmark, side by side with FAISS in one run.
//!
//! `cargo bench -p kaito-rag --bench search` (after `cargo xtask models`).
//! Vectors: 384-d, embedding-like (a shared offset, a 48-dimensional signal
//! with decaying weights, noise), unit length; queries from the same
//! distribution, not in the index. For 10k and 100k vectors it prints build
//! time, index size, single-query p50/p99 and recall@10 for: our search path
//! (exact scan, and the binary-quantised prefilter with exact rescoring at
//! several candidate counts), and FAISS flat and HNSW (M=32) through
//! `tests/python/bench_faiss.py`, both on one thread. Then end-to-end `/index`
//! throughput (chunk + embed + store) against sentence-transformers encode +
//! FAISS add on the same texts. Ratios are the numbers to read.

#[path = "../tests/common/mod.rs"]
mod common;

use kaito_rag::store::{NewDoc, Store};
use kaito_rag::vectors::{SearchParams, VectorIndex, normalize};
use serde_json::{Value, json};
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

const DIM: usize = 384;
const K: usize = 10;
const QUERIES: usize = 300;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f32 / (1u64 << 53) as f32 - 0.5
    }
}

fn dataset(n: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = Rng(seed);
    let offset: Vec<f32> = (0..DIM).map(|_| rng.next() * 0.6).collect();
    let basis: Vec<Vec<f32>> = (0..48).map(|_| (0..DIM).map(|_| rng.next()).collect()).collect();
    (0..n)
        .map(|_| {
            let w: Vec<f32> = (0..48).map(|j| rng.next() * 3.0 / (1.0 + j as f32 * 0.15)).collect();
            let mut v: Vec<f32> = (0..DIM)
                .map(|i| offset[i] + basis.iter().zip(&w).map(|(b, w)| b[i] * w).sum::<f32>() + 0.25 * rng.next())
                .collect();
            normalize(&mut v);
            v
        })
        .collect()
}

fn write_f32(path: &Path, rows: &[Vec<f32>]) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for r in rows {
        for x in r {
            f.write_all(&x.to_le_bytes()).unwrap();
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

struct Row {
    method: String,
    build_s: f64,
    mb: f64,
    p50: f64,
    p99: f64,
    recall: f64,
}

fn measure(index: &VectorIndex, queries: &[Vec<f32>], truth: &[Vec<u32>]) -> (f64, f64, f64) {
    let mut times = Vec::with_capacity(queries.len());
    let mut hits = 0;
    for (q, t) in queries.iter().zip(truth) {
        let start = Instant::now();
        let found = index.search(q, K, None);
        times.push(start.elapsed().as_secs_f64() * 1000.0);
        hits += found.iter().filter(|h| t.contains(&h.id)).count();
    }
    times.sort_by(f64::total_cmp);
    (percentile(&times, 0.5), percentile(&times, 0.99), hits as f64 / (K * queries.len()) as f64)
}

fn run(n: usize, python: &Path) -> Vec<Row> {
    let mut all = dataset(n + QUERIES, 42 + n as u64);
    let queries = all.split_off(n);
    let base = all;
    let dir = tempfile::tempdir().unwrap();
    let mut rows = Vec::new();

    // Durable build: every vector through LMDB + arroy in one write
    // transaction, then the mirror, as /index and a restart do.
    let start = Instant::now();
    let store = Store::open(&dir.path().join("lmdb"), 8 << 30, SearchParams::default()).unwrap();
    let docs: Vec<NewDoc> = base
        .chunks(100)
        .enumerate()
        .map(|(d, vs)| NewDoc {
            doc_id: format!("doc{d}"),
            text: format!("document {d}"),
            metadata: Default::default(),
            chunks: vs.iter().enumerate().map(|(i, v)| (format!("chunk {i} of document {d}"), v.clone())).collect(),
        })
        .collect();
    store.index_documents("bench", "synthetic", DIM, docs).unwrap();
    let durable_s = start.elapsed().as_secs_f64();
    drop(store);
    let disk = std::fs::metadata(dir.path().join("lmdb/data.mdb")).map(|m| m.len()).unwrap_or(0) as f64 / 1e6;
    let start = Instant::now();
    let store = Store::open(&dir.path().join("lmdb"), 8 << 30, SearchParams::default()).unwrap();
    let reopen_s = start.elapsed().as_secs_f64();
    drop(store);

    let mut exact = VectorIndex::new(DIM, SearchParams { exact_below: usize::MAX, ..SearchParams::default() });
    let start = Instant::now();
    for (i, v) in base.iter().enumerate() {
        exact.insert(i as u32, v);
    }
    let mirror_s = start.elapsed().as_secs_f64();
    let truth: Vec<Vec<u32>> = queries.iter().map(|q| exact.exact(q, K, None).iter().map(|h| h.id).collect()).collect();
    let (p50, p99, recall) = measure(&exact, &queries, &truth);
    rows.push(Row {
        method: "ours: exact SIMD scan".into(),
        build_s: durable_s,
        mb: exact.memory_bytes() as f64 / 1e6,
        p50,
        p99,
        recall,
    });
    let off = usize::MAX;
    let configs: Vec<(String, SearchParams)> =
        [(false, 0, 200), (false, 0, 400), (true, 8, 200), (true, 16, 200), (true, 16, 400), (true, 32, 400)]
            .into_iter()
            .map(|(partitioned, nprobe, min_candidates)| {
                let ivf_above = if partitioned { 0 } else { off };
                let params = SearchParams { exact_below: 0, oversample: 1, min_candidates, ivf_above, nprobe };
                let method = if partitioned {
                    format!("ours: partitions, probe {nprobe}, rescore {min_candidates}")
                } else {
                    format!("ours: 384-bit codes, rescore {min_candidates}")
                };
                (method, params)
            })
            .collect();
    for (method, params) in configs {
        let start = Instant::now();
        let mut index = VectorIndex::new(DIM, params);
        for (i, v) in base.iter().enumerate() {
            index.insert(i as u32, v);
        }
        let mirror_build = start.elapsed().as_secs_f64();
        let (p50, p99, recall) = measure(&index, &queries, &truth);
        // Build: the durable write plus building this mirror (codes, and partitions where used).
        rows.push(Row {
            method,
            build_s: durable_s + mirror_build,
            mb: index.memory_bytes() as f64 / 1e6,
            p50,
            p99,
            recall,
        });
    }
    eprintln!(
        "n={n}: durable build (LMDB + arroy, one txn) {durable_s:.2} s, data.mdb {disk:.0} MB, reopen with mirror {reopen_s:.2} s, mirror inserts {mirror_s:.2} s"
    );

    write_f32(&dir.path().join("base.f32"), &base);
    write_f32(&dir.path().join("queries.f32"), &queries);
    let truth_bytes: Vec<u8> = truth.iter().flatten().flat_map(|x| x.to_le_bytes()).collect();
    std::fs::write(dir.path().join("truth.u32"), truth_bytes).unwrap();
    let out = Command::new(python)
        .arg(common::script("bench_faiss.py"))
        .arg(dir.path())
        .args([DIM.to_string(), K.to_string()])
        .output()
        .expect("python runs");
    assert!(out.status.success(), "bench_faiss.py: {}", String::from_utf8_lossy(&out.stderr));
    let faiss: Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = |name: String, v: &Value| Row {
        method: name,
        build_s: v["build_s"].as_f64().unwrap(),
        mb: v["bytes"].as_f64().unwrap() / 1e6,
        p50: v["p50_ms"].as_f64().unwrap(),
        p99: v["p99_ms"].as_f64().unwrap(),
        recall: v["recall"].as_f64().unwrap(),
    };
    rows.push(row("faiss: flat (exact)".into(), &faiss["flat"]));
    for h in faiss["hnsw"].as_array().unwrap() {
        rows.push(row(format!("faiss: HNSW M=32 ef={}", h["ef"]), h));
    }
    rows
}

fn ingest(python: &Path) {
    let sentences = [
        "Kubernetes schedules pods onto nodes with enough GPU capacity.",
        "The operator watches Workspace resources and creates StatefulSets.",
        "Embeddings map text into vectors for similarity search.",
        "LMDB commits every write transaction atomically.",
        "A preset describes the model's resource needs and its runtime.",
        "Retrieval narrows the context an LLM reads before answering.",
    ];
    let docs: Vec<String> = (0..256)
        .map(|i| {
            (0..4)
                .map(|j| format!("{} (note {i}.{j})", sentences[(i + j) % sentences.len()]))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("docs.json"), serde_json::to_string(&docs).unwrap()).unwrap();
    // The service's default chunk size: each document is one chunk, as on the reference side.
    let state = common::state_with_chunks(dir.path(), None, 256);
    let body =
        json!({"index_name": "ingest", "documents": docs.iter().map(|t| json!({"text": t})).collect::<Vec<_>>()});
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    // One warm-up request so both sides run with a loaded model.
    rt.block_on(common::call(
        &state,
        "POST",
        "/index",
        &json!({"index_name": "warm", "documents": [{"text": "warm up"}]}).to_string(),
    ));
    let start = Instant::now();
    let (code, _) = rt.block_on(common::call(&state, "POST", "/index", &body.to_string()));
    let ours = docs.len() as f64 / start.elapsed().as_secs_f64();
    assert_eq!(code, 200);
    let chunks = state.store.counts("ingest").unwrap().1;
    let out = Command::new(python)
        .arg(common::script("bench_faiss.py"))
        .arg(dir.path())
        .args(["384", "10"])
        .arg(common::model("all-minilm-l6-v2"))
        .env("KAITO_BENCH_INGEST_ONLY", "1")
        .output()
        .expect("python runs");
    assert!(out.status.success(), "bench_faiss.py: {}", String::from_utf8_lossy(&out.stderr));
    let reference: Value = serde_json::from_slice(&out.stdout).unwrap();
    let theirs = reference["ingest_docs_per_s"].as_f64().unwrap();
    println!("\n/index end to end, {} docs ({chunks} chunks of <= 256 tokens), one thread:", docs.len());
    println!("| pipeline | docs/s | ratio |\n|---|---:|---:|");
    println!("| ours: chunk + rust-bert embed + LMDB/arroy commit | {ours:.1} | {:.2} |", ours / theirs);
    println!("| sentence-transformers encode + faiss add (whole docs) | {theirs:.1} | 1.00 |");
}

fn main() {
    tch::set_num_threads(1);
    let python = common::python();
    let sizes: Vec<usize> = std::env::var("KAITO_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_else(|| vec![10_000, 100_000]);
    for n in sizes {
        let rows = run(n, &python);
        let hnsw64 = rows.iter().find(|r| r.method.ends_with("ef=64")).map(|r| r.p50).unwrap_or(f64::NAN);
        println!("\n{n} vectors x {DIM}-d, {QUERIES} queries, k={K}, one thread:");
        println!("| method | build s | index MB | p50 ms | p99 ms | recall@10 | p50 vs HNSW ef=64 |");
        println!("|---|---:|---:|---:|---:|---:|---:|");
        for r in rows {
            println!(
                "| {} | {:.2} | {:.1} | {:.3} | {:.3} | {:.3} | {:.2}x |",
                r.method,
                r.build_s,
                r.mb,
                r.p50,
                r.p99,
                r.recall,
                hnsw64 / r.p50
            );
        }
    }
    ingest(&python);
}
