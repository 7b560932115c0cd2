//! RAG search benchmark, side by side with FAISS in one run.
//!
//! `cargo bench -p kaito-rag --bench search` (after `cargo xtask models`).
//!
//! Datasets, 384-d unit vectors, queries held out of the index:
//! - **real**: all-MiniLM-L6-v2 embeddings of English sentences from the
//!   docstrings of the Python packages on this machine
//!   (`tests/python/rag_corpus.py`, embedded once and cached under
//!   `~/.cache/kaito/rag-corpus/`); `KAITO_BENCH_REAL` rows (default 100000);
//! - **synthetic**: embedding-like clustered vectors (a shared offset, a
//!   48-dimensional signal with decaying weights, noise); `KAITO_BENCH_SIZES`
//!   rows (default 100000; add 1000000 for the 1M row).
//!
//! For each it prints, per method: build time, RAM the search holds
//! (anonymous memory; LMDB's page cache aside), cold start (open the stored
//! index and answer one query), p50/p99 of one query at a time on one
//! thread, recall@10 against an exact scan, and queries/s with every core
//! busy. Methods: ours with the vectors in the RAM cache and ours on disk
//! through arroy (no cache), each calibrated to recall@10 targets 0.95 and
//! 0.99; FAISS flat, HNSW (M=32) and IVF-PQ with exact refinement
//! (`tests/python/bench_faiss.py`). Then hybrid (dense + BM25) against dense
//! on the real sentences, and `/index` throughput end to end against
//! sentence-transformers + FAISS. Ratios are the numbers to read.
//!
//! Knobs for long runs: `KAITO_BENCH_DISK_ONLY_ABOVE`, `KAITO_BENCH_ONE_BUILD_ABOVE`,
//! `KAITO_BENCH_FAISS_UP_TO` (sizes), `KAITO_BENCH_SKIP_INGEST`, `KAITO_BENCH_HYBRID_ONLY`,
//! `KAITO_BENCH_HYBRID_SIZES`; each is explained where it is read.

#[path = "../tests/common/mod.rs"]
mod common;

use kaito_rag::store::{NewDoc, SearchConfig, Store, StoreOptions};
use kaito_rag::vectors::{SearchParams, VectorIndex};
use serde_json::{Value, json};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

const DIM: usize = 384;
const K: usize = 10;
const QUERIES: usize = 400;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f32 / (1u64 << 53) as f32 - 0.5
    }
}

fn normalize(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= n.max(1e-12));
}

fn synthetic(n: usize, seed: u64) -> Vec<Vec<f32>> {
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

fn read_f32(path: &Path) -> Vec<Vec<f32>> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    bytes
        .chunks_exact(4 * DIM)
        .map(|r| r.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect())
        .collect()
}

/// The real corpus.
struct Corpus {
    base: Vec<Vec<f32>>,
    queries: Vec<Vec<f32>>,
    texts: Vec<String>,
    query_texts: Vec<String>,
}

fn real(n: usize, python: &Path) -> Corpus {
    let home = PathBuf::from(std::env::var_os("HOME").expect("HOME"));
    let dir = home.join(format!(".cache/kaito/rag-corpus/v1-minilm-{n}-{QUERIES}"));
    let status = Command::new(python)
        .arg(common::script("rag_corpus.py"))
        .arg(&dir)
        .args([n.to_string(), QUERIES.to_string()])
        .arg(common::model("all-minilm-l6-v2"))
        .status()
        .expect("python runs");
    assert!(status.success(), "rag_corpus.py failed");
    let lines = |name: &str| -> Vec<String> {
        std::fs::read_to_string(dir.join(name)).unwrap().lines().map(str::to_string).collect()
    };
    Corpus {
        base: read_f32(&dir.join("base.f32")),
        queries: read_f32(&dir.join("queries.f32")),
        texts: lines("base.txt"),
        query_texts: lines("queries.txt"),
    }
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

/// Anonymous resident memory of this process, bytes (what the heap holds; mmapped LMDB pages are not in it).
fn rss_anon() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb * 1024.0)
        .unwrap_or(f64::NAN)
}

struct Row {
    method: String,
    build_s: f64,
    ram_mb: f64,
    cold_ms: f64,
    p50: f64,
    p99: f64,
    recall: f64,
    qps_all: f64,
}

fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// p50, p99 (ms, one query at a time) and recall@10 of `search`.
fn measure(search: &(dyn Fn(&[f32]) -> Vec<u32> + Sync), queries: &[Vec<f32>], truth: &[Vec<u32>]) -> (f64, f64, f64) {
    let mut times = Vec::with_capacity(queries.len());
    let mut hits = 0;
    for (q, t) in queries.iter().zip(truth) {
        let start = Instant::now();
        let found = search(q);
        times.push(start.elapsed().as_secs_f64() * 1000.0);
        hits += found.iter().filter(|id| t.contains(id)).count();
    }
    times.sort_by(f64::total_cmp);
    (percentile(&times, 0.5), percentile(&times, 0.99), hits as f64 / (K * queries.len()) as f64)
}

/// Queries per second with one searching thread per core.
fn qps_all(search: &(dyn Fn(&[f32]) -> Vec<u32> + Sync), queries: &[Vec<f32>]) -> f64 {
    let threads = cores();
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                for q in queries.iter().skip(t).step_by(threads) {
                    std::hint::black_box(search(q));
                }
            });
        }
    });
    queries.len() as f64 / start.elapsed().as_secs_f64()
}

fn options(cache: bool, target: f32) -> StoreOptions {
    StoreOptions {
        map_size: 64 << 30,
        vector_cache_bytes: if cache { usize::MAX } else { 0 },
        search: SearchConfig { target_recall: target, ..SearchConfig::default() },
        cached: SearchParams { target_recall: target, ..SearchParams::default() },
    }
}

/// Stores `base` as one chunk per document, in requests of 10k chunks (each
/// one write transaction, trees built at its end).
fn fill(store: &Store, base: &[Vec<f32>], texts: Option<&[String]>) {
    for (part, rows) in base.chunks(10_000).enumerate() {
        let docs: Vec<NewDoc> = rows
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let n = part * 10_000 + i;
                let text = texts.map(|t| t[n].clone()).unwrap_or_else(|| format!("document {n}"));
                NewDoc {
                    doc_id: format!("d{n}"),
                    text: text.clone(),
                    metadata: Default::default(),
                    chunks: vec![(text, v.clone())],
                }
            })
            .collect();
        store.index_documents("bench", "bench", DIM, docs).unwrap();
    }
}

fn ours(name: &str, base: &[Vec<f32>], texts: Option<&[String]>, queries: &[Vec<f32>], truth: &[Vec<u32>]) -> Vec<Row> {
    let mut rows = Vec::new();
    // KAITO_BENCH_DISK_ONLY_ABOVE=n: above n vectors only the on-disk rows (the cache's rows need the vectors in RAM).
    let disk_only = std::env::var("KAITO_BENCH_DISK_ONLY_ABOVE")
        .ok()
        .and_then(|v| v.parse().ok())
        .is_some_and(|n: usize| base.len() > n);
    // KAITO_BENCH_ONE_BUILD_ABOVE=n: above n vectors one store is built (without the cache) and the cache's rows
    // open it with the cache on, so their cold start is the cache's fill (a 1M build takes 15 minutes on 2 cores).
    let one_build = std::env::var("KAITO_BENCH_ONE_BUILD_ABOVE")
        .ok()
        .and_then(|v| v.parse().ok())
        .is_some_and(|n: usize| base.len() > n);
    let build = |cache: bool| {
        let dir = tempfile::tempdir().unwrap();
        let start = Instant::now();
        {
            let store = Store::open(&dir.path().join("lmdb"), options(cache, 0.95)).unwrap();
            fill(&store, base, texts);
        }
        (dir, start.elapsed().as_secs_f64())
    };
    let shared = one_build.then(|| build(false));
    for cache in [true, false].into_iter().filter(|&c| !(c && disk_only)) {
        let own;
        let (dir, build_s) = match &shared {
            Some((dir, secs)) => (dir, *secs),
            None => {
                own = build(cache);
                (&own.0, own.1)
            }
        };
        let path = dir.path().join("lmdb");
        for target in [0.95f32, 0.99] {
            // Reopening with another target recalibrates; the timed cold start is a reopen at the same target.
            drop(Store::open(&path, options(cache, target)).unwrap());
            let before = rss_anon();
            let start = Instant::now();
            let store = Arc::new(Store::open(&path, options(cache, target)).unwrap());
            store.dense_search("bench", &queries[0], K).unwrap();
            let cold_ms = start.elapsed().as_secs_f64() * 1000.0;
            let search =
                |q: &[f32]| -> Vec<u32> { store.dense_search("bench", q, K).unwrap().iter().map(|h| h.id).collect() };
            let (p50, p99, recall) = measure(&search, queries, truth);
            let qps = qps_all(&search, queries);
            let ram_mb = (rss_anon() - before).max(0.0) / 1e6;
            let how = match (cache, one_build) {
                (true, true) => "vectors in RAM cache (store built without it)",
                (true, false) => "vectors in RAM cache",
                (false, _) => "on disk (LMDB), no cache",
            };
            if !cache {
                // Which on-disk search calibration kept (arroy's walk or the partition's probe), and why.
                let tuning = store.index_meta("bench").unwrap().and_then(|m| m.tuning);
                eprintln!("{name}, on disk, target {target}: {tuning:?}");
            }
            rows.push(Row {
                method: format!("ours: {how}, target {target}"),
                build_s,
                ram_mb,
                cold_ms,
                p50,
                p99,
                recall,
                qps_all: qps,
            });
        }
    }
    eprintln!("{name}: our rows done");
    rows
}

fn faiss(python: &Path, base: &[Vec<f32>], queries: &[Vec<f32>], truth: &[Vec<u32>]) -> Vec<Row> {
    let dir = tempfile::tempdir().unwrap();
    write_f32(&dir.path().join("base.f32"), base);
    write_f32(&dir.path().join("queries.f32"), queries);
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
        ram_mb: v["bytes"].as_f64().unwrap() / 1e6,
        cold_ms: v["cold_ms"].as_f64().unwrap(),
        p50: v["p50_ms"].as_f64().unwrap(),
        p99: v["p99_ms"].as_f64().unwrap(),
        recall: v["recall"].as_f64().unwrap(),
        qps_all: v["qps_all"].as_f64().unwrap(),
    };
    let mut rows = vec![row("faiss: flat (exact)".into(), &faiss["flat"])];
    for h in faiss["hnsw"].as_array().unwrap() {
        rows.push(row(format!("faiss: HNSW M=32 ef={}", h["ef"]), h));
    }
    for h in faiss["ivfpq"].as_array().unwrap() {
        rows.push(row(format!("faiss: IVF{}-PQ48 + refine, nprobe {}", h["nlist"], h["nprobe"]), h));
    }
    rows
}

fn exact_truth(base: &[Vec<f32>], queries: &[Vec<f32>]) -> Vec<Vec<u32>> {
    // Only exact scans: no partition trained or calibrated on the way.
    let params = SearchParams { exact_below: usize::MAX, ivf_above: usize::MAX, ..SearchParams::default() };
    let mut exact = VectorIndex::bulk(DIM, params);
    for (i, v) in base.iter().enumerate() {
        exact.push(i as u32, v);
    }
    let exact = exact.finish();
    queries.iter().map(|q| exact.exact(q, K, None).iter().map(|h| h.id).collect()).collect()
}

fn table(title: &str, rows: &[Row]) {
    // The reference: the fastest HNSW row meeting each recall target.
    let hnsw_at = |target: f64| {
        rows.iter()
            .filter(|r| r.method.starts_with("faiss: HNSW") && r.recall >= target)
            .map(|r| r.p50)
            .fold(f64::NAN, f64::min)
    };
    let (h95, h99) = (hnsw_at(0.95), hnsw_at(0.99));
    println!("\n{title}; p50/p99 one query at a time on 1 thread, QPS with all {} cores:", cores());
    println!(
        "| method | build s | RAM MB | cold start ms | p50 ms | p99 ms | recall@10 | QPS all cores | p50 vs fastest HNSW at ≥0.95 / ≥0.99 |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    // No HNSW row at a target (FAISS not run at this size, or none reached it): no ratio.
    let ratio = |p50: f64, h: f64| if h.is_nan() { "—".to_string() } else { format!("{:.2}x", p50 / h) };
    for r in rows {
        println!(
            "| {} | {:.1} | {:.0} | {:.0} | {:.3} | {:.3} | {:.3} | {:.0} | {} / {} |",
            r.method,
            r.build_s,
            r.ram_mb,
            r.cold_ms,
            r.p50,
            r.p99,
            r.recall,
            r.qps_all,
            ratio(r.p50, h95),
            ratio(r.p50, h99)
        );
    }
}

/// Hybrid (dense + BM25, KAITO's fusion) against dense alone through the
/// store's retrieval, on the real sentences, cache on and off; also on the
/// first `KAITO_BENCH_HYBRID_SIZES` sentences (e.g. `25000,50000`), to see
/// how the ratio moves with the corpus.
fn hybrid(base: &[Vec<f32>], texts: &[String], queries: &[Vec<f32>], query_texts: &[String]) {
    println!(
        "\nHybrid vs dense retrieval, real sentences (the first n of {}), {} queries, k={K}, one thread:",
        base.len(),
        queries.len()
    );
    println!(
        "| n | vectors | dense p50 ms | hybrid p50 ms | hybrid p99 ms | hybrid / dense p50 | hybrid top-10 ∩ dense top-10 | its parts: dense k={pool} p50 ms | BM25 k={pool} p50 ms |",
        pool = 3 * K
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|");
    let mut ns: Vec<usize> = sizes("KAITO_BENCH_HYBRID_SIZES", base.len());
    ns.retain(|&n| n > 0 && n <= base.len());
    ns.sort_unstable();
    ns.dedup();
    for (n, cache) in ns.into_iter().flat_map(|n| [(n, true), (n, false)]) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("lmdb"), options(cache, 0.95)).unwrap();
        fill(&store, &base[..n], Some(&texts[..n]));
        let (mut dense_t, mut hybrid_t, mut overlap) = (Vec::new(), Vec::new(), 0usize);
        let (mut pool_t, mut bm25_t) = (Vec::new(), Vec::new());
        for (q, text) in queries.iter().zip(query_texts) {
            // Both through the store's retrieval, chunk text and metadata included, as /retrieve answers.
            let start = Instant::now();
            let d: Vec<u32> = store.retrieve_dense("bench", q, K).unwrap().iter().map(|r| r.candidate.id).collect();
            dense_t.push(start.elapsed().as_secs_f64() * 1000.0);
            let start = Instant::now();
            let h = store.retrieve("bench", text, q, K, None).unwrap();
            hybrid_t.push(start.elapsed().as_secs_f64() * 1000.0);
            overlap += h.iter().filter(|r| d.contains(&r.candidate.id)).count();
            // The two retrievers alone, at the pool size hybrid asks each of them for.
            let start = Instant::now();
            store.dense_search("bench", q, 3 * K).unwrap();
            pool_t.push(start.elapsed().as_secs_f64() * 1000.0);
            let start = Instant::now();
            store.keyword_search("bench", text, 3 * K).unwrap();
            bm25_t.push(start.elapsed().as_secs_f64() * 1000.0);
        }
        pool_t.sort_by(f64::total_cmp);
        bm25_t.sort_by(f64::total_cmp);
        dense_t.sort_by(f64::total_cmp);
        hybrid_t.sort_by(f64::total_cmp);
        let (d50, h50, h99) = (percentile(&dense_t, 0.5), percentile(&hybrid_t, 0.5), percentile(&hybrid_t, 0.99));
        println!(
            "| {n} | {} | {d50:.3} | {h50:.3} | {h99:.3} | {:.2}x | {:.2} | {:.3} | {:.3} |",
            if cache { "RAM cache" } else { "on disk (LMDB)" },
            h50 / d50,
            overlap as f64 / (K * queries.len()) as f64,
            percentile(&pool_t, 0.5),
            percentile(&bm25_t, 0.5)
        );
    }
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
    let chunks = state.store.counts("ingest").unwrap().unwrap().1;
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

fn sizes(var: &str, default: usize) -> Vec<usize> {
    std::env::var(var)
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![default])
}

fn main() {
    tch::set_num_threads(1);
    let python = common::python();
    for n in sizes("KAITO_BENCH_REAL", 100_000).into_iter().filter(|&n| n > 0) {
        let Corpus { base, queries, texts, query_texts } = real(n, &python);
        // KAITO_BENCH_HYBRID_ONLY=1: only the hybrid-vs-dense table on the real corpus.
        if std::env::var("KAITO_BENCH_HYBRID_ONLY").is_ok() {
            hybrid(&base, &texts, &queries, &query_texts);
            continue;
        }
        let truth = exact_truth(&base, &queries);
        let mut rows = ours("real", &base, Some(&texts), &queries, &truth);
        rows.extend(faiss(&python, &base, &queries, &truth));
        table(
            &format!("Real: {n} all-MiniLM-L6-v2 embeddings of docstring sentences, {QUERIES} held-out queries, k={K}"),
            &rows,
        );
        hybrid(&base, &texts, &queries, &query_texts);
    }
    for n in sizes("KAITO_BENCH_SIZES", 100_000).into_iter().filter(|&n| n > 0) {
        let mut base = synthetic(n + QUERIES, 42 + n as u64);
        let queries = base.split_off(n);
        let truth = exact_truth(&base, &queries);
        let mut rows = ours("synthetic", &base, None, &queries, &truth);
        // KAITO_BENCH_FAISS_UP_TO=n: FAISS rows only up to n vectors (HNSW's build at 1M takes long on 2 cores).
        let faiss_up_to =
            std::env::var("KAITO_BENCH_FAISS_UP_TO").ok().and_then(|v| v.parse().ok()).unwrap_or(usize::MAX);
        if n <= faiss_up_to {
            rows.extend(faiss(&python, &base, &queries, &truth));
        }
        table(&format!("Synthetic: {n} clustered 384-d vectors, {QUERIES} queries, k={K}"), &rows);
    }
    if std::env::var("KAITO_BENCH_SKIP_INGEST").is_err() {
        ingest(&python);
    }
}
