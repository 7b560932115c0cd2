//! Pulling model artifacts from the local registry: `kaito-oci` (what `kaito models pull` and
//! `kaito-inference --model oci://` use) against `oras pull`, in the same run, on the same artifacts.
//!
//! `cargo xtask registry up`, then `KAITO_E2E_REGISTRY=<host:port> KAITO_ORAS=<dir>/oras cargo bench -p kaito-tests
//! --bench oci_pull`. Artifacts: the SmolLM2-135M test model (real weights, 6 files) and 1 GiB of random bytes in
//! four 256 MiB files. Each is pulled into a fresh directory (and, for kaito, a fresh blob cache) with one layer at a
//! time and with as many as there are cores; the table gives seconds (best of 3), MB/s of model files written and
//! kaito's speed over oras's at the same concurrency. Raw layers are the like-for-like rows (both write the files);
//! SmolLM2 is also pushed with zstd layers (KAITO's format), where kaito downloads and unpacks the files and oras
//! only downloads the compressed blobs (it does not unpack them), so oras does less work in those rows.

use kaito_oci::{Compression, Oci, Options};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

fn best_of<F: FnMut() -> f64>(n: usize, mut f: F) -> f64 {
    (0..n).map(|_| f()).fold(f64::INFINITY, f64::min)
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).unwrap().flatten().map(|e| e.metadata().unwrap().len()).sum()
}

fn main() {
    let registry = std::env::var("KAITO_E2E_REGISTRY")
        .expect("KAITO_E2E_REGISTRY: start a registry with `cargo xtask registry up` and set it to the address");
    let oras =
        PathBuf::from(std::env::var_os("KAITO_ORAS").expect("KAITO_ORAS: the oras `cargo xtask registry build` made"));
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let work = tempfile::tempdir().unwrap();
    let smollm = std::env::var_os("KAITO_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/kaito/models"))
        .join("smollm2-135m-instruct");
    let random = work.path().join("random-1gib");
    std::fs::create_dir_all(&random).unwrap();
    for i in 0..4 {
        // Random bytes: weights do not compress, and neither should the benchmark's.
        let mut data = vec![0u8; 256 << 20];
        let mut x: u64 = 0x9e3779b97f4a7c15 ^ i;
        for chunk in data.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        std::fs::write(random.join(format!("shard-{i}.safetensors")), data).unwrap();
    }
    println!(
        "| artifact | layers | layer MB | layers at once | kaito s | oras s | kaito MB/s | oras MB/s | kaito / oras speed |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for (name, dir, compression) in [
        ("SmolLM2-135M (real weights)", smollm.as_path(), Compression::None),
        ("SmolLM2-135M (real weights)", smollm.as_path(), Compression::Zstd),
        ("1 GiB random, 4 files", random.as_path(), Compression::None),
    ] {
        let push = Oci::new(Options { plain_http: true, ..Options::new() });
        let reference = kaito_oci::parse(&format!(
            "{registry}/bench/{}:{compression:?}",
            dir.file_name().unwrap().to_string_lossy().to_lowercase()
        ))
        .unwrap();
        let pinned = runtime.block_on(push.push_dir(dir, &reference, "bench", compression)).unwrap();
        let (manifest, _) = runtime.block_on(push.manifest(&kaito_oci::parse(&pinned).unwrap())).unwrap();
        let layer_mb = manifest.layers.iter().map(|l| l.size as f64).sum::<f64>() / 1e6;
        let layers = if compression == Compression::Zstd { "zstd" } else { "raw" };
        let bytes = dir_bytes(dir) as f64;
        for concurrency in [1, cores] {
            let ours = best_of(3, || {
                let cache = tempfile::tempdir_in(work.path()).unwrap();
                let out = tempfile::tempdir_in(work.path()).unwrap();
                let oci =
                    Oci::new(Options { plain_http: true, cache_dir: cache.path().to_path_buf(), ..Options::new() });
                let started = Instant::now();
                runtime
                    .block_on(oci.pull_dir(&kaito_oci::parse(&pinned).unwrap(), out.path(), concurrency, |_, _| {}))
                    .unwrap();
                started.elapsed().as_secs_f64()
            });
            let theirs = best_of(3, || {
                let out = tempfile::tempdir_in(work.path()).unwrap();
                let started = Instant::now();
                let status = Command::new(&oras)
                    .args(["pull", "--plain-http", "--concurrency", &concurrency.to_string(), &pinned, "-o"])
                    .arg(out.path())
                    .stdout(std::process::Stdio::null())
                    .status()
                    .unwrap();
                assert!(status.success());
                started.elapsed().as_secs_f64()
            });
            let mbs = |s: f64| bytes / s / 1e6;
            println!(
                "| {name} | {layers} | {layer_mb:.0} | {concurrency} | {ours:.2} | {theirs:.2} | {:.0} | {:.0} | {:.2}x |",
                mbs(ours),
                mbs(theirs),
                theirs / ours
            );
        }
    }
}
