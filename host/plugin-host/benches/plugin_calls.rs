//! Plugin call and load costs, printed as a table.
//!
//! `cargo bench -p kaito-plugin-host --bench plugin_calls` (after
//! `cargo xtask plugins`). Every row runs in the same process, so the
//! ratios between rows are what matters, not the absolute times.

use kaito_plugin_host::conformance::{reference_request, reference_shapes};
use kaito_plugin_host::{HostConfig, Limits, PluginHost, Policy, validate};
use kaito_plugin_sdk::Preset;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn phi_wasm() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../presets-wasm/dist/preset-phi.wasm");
    assert!(p.is_file(), "{} missing: run `cargo xtask plugins` first", p.display());
    p
}

struct Stats {
    p50: Duration,
    p99: Duration,
    mean: Duration,
}

fn measure(iters: usize, mut f: impl FnMut()) -> Stats {
    for _ in 0..iters / 10 {
        f();
    }
    let mut samples: Vec<Duration> = (0..iters)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    samples.sort();
    let mean = samples.iter().sum::<Duration>() / iters as u32;
    Stats { p50: samples[iters / 2], p99: samples[iters * 99 / 100], mean }
}

fn us(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e6)
}

/// The Phi preset in three languages, side by side: fresh Store per call, precompiled.
fn polyglot(iters: usize) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let req = reference_request("phi-3.5-mini-instruct");
    let shape = reference_shapes()[1].clone();
    println!();
    println!("polyglot: the same preset in three languages, same request, fresh Store per call, precompiled");
    println!(
        "{:<12} {:>10} {:>14} {:>14} {:>12} {:>12} {:>10}",
        "language", "size KB", "instantiate p50", "instantiate p99", "plan p50 us", "plan p99 us", "calls"
    );
    for (lang, rel, n) in [
        ("Rust", "presets-wasm/dist/preset-phi.wasm", iters),
        ("JavaScript", "plugins/polyglot/phi-js/dist/preset-phi-js.wasm", iters / 10),
        ("Python", "plugins/polyglot/phi-py/dist/preset-phi-py.wasm", iters / 20),
    ] {
        let file = root.join(rel);
        if !file.is_file() {
            println!("{lang:<12} missing {rel}: run `cargo xtask plugin-js` / `plugin-py`");
            continue;
        }
        let cache = tempfile::tempdir().unwrap();
        let host = PluginHost::new(HostConfig { cache_dir: Some(cache.path().into()), ..Default::default() }).unwrap();
        let plugin = host.load_file(&file, None).unwrap();
        let inst = measure(n, || plugin.instantiate_check().unwrap());
        let plan = measure(n, || {
            std::hint::black_box(plugin.plan(&req, &shape).unwrap());
        });
        println!(
            "{:<12} {:>10} {:>14} {:>14} {:>12} {:>12} {:>10}",
            lang,
            std::fs::metadata(&file).unwrap().len() / 1024,
            us(inst.p50),
            us(inst.p99),
            us(plan.p50),
            us(plan.p99),
            n
        );
    }
}

fn main() {
    let iters: usize = std::env::var("KAITO_BENCH_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let file = phi_wasm();
    let req = reference_request("phi-3.5-mini-instruct");
    let shape = reference_shapes()[1].clone();

    let native_req = kaito_plugin_sdk::PlanRequest {
        workspace: req.workspace.clone(),
        namespace: req.namespace.clone(),
        model: req.model.clone(),
        runtime: None,
        model_access_secret: None,
        adapters: vec![],
        max_model_len: None,
        min_nodes: 1,
        image_registry: req.image_registry.clone(),
        config_map: None,
        annotations: vec![],
        model_facts: None,
    };
    let native_shape = kaito_plugin_sdk::GpuShape {
        gpu_model: shape.gpu_model.clone(),
        gpus_per_node: shape.gpus_per_node,
        gpu_memory_bytes: shape.gpu_memory_bytes,
        max_nodes: shape.max_nodes,
        nvme: shape.nvme,
    };
    let native = measure(iters, || {
        std::hint::black_box(kaito_preset_phi::Phi::plan(native_req.clone(), native_shape.clone()).unwrap());
    });

    let mut rows = vec![("native Rust plan (same code, no sandbox)", native)];
    for pooling in [true, false] {
        let cache = tempfile::tempdir().unwrap();
        let host = PluginHost::new(HostConfig {
            limits: Limits { pooling, ..Limits::default() },
            cache_dir: Some(cache.path().into()),
            ..Default::default()
        })
        .unwrap();
        let plugin = host.load_file(&file, None).unwrap();
        let plan = plugin.plan(&req, &shape).unwrap();
        let stats = measure(iters, || {
            std::hint::black_box(plugin.plan(&req, &shape).unwrap());
        });
        if pooling {
            rows.push((
                "  of which: fresh Store + instantiate",
                measure(iters, || plugin.instantiate_check().unwrap()),
            ));
            let limits = Limits::default();
            let policy = Policy::default();
            rows.push((
                "  of which: validating the plan",
                measure(iters, || validate::preset_plan(&plan, &shape, &limits, &policy).unwrap()),
            ));
        }
        rows.insert(
            rows.len() - 2 * usize::from(pooling),
            (
                if pooling {
                    "wasm plan, fresh Store, pooling allocator"
                } else {
                    "wasm plan, fresh Store, on-demand allocator"
                },
                stats,
            ),
        );
    }

    println!("plugin call: preset-phi plan(phi-3.5-mini-instruct, 1x A100 80 GiB), {iters} calls each");
    println!("{:<46} {:>10} {:>10} {:>10} {:>10}", "path", "p50 us", "p99 us", "mean us", "p50/native");
    for (name, s) in &rows {
        println!(
            "{:<46} {:>10} {:>10} {:>10} {:>10.1}",
            name,
            us(s.p50),
            us(s.p99),
            us(s.mean),
            s.p50.as_secs_f64() / rows[0].1.p50.as_secs_f64()
        );
    }

    polyglot(iters);

    let loads = 20;
    let cold = measure(loads, || {
        let host = PluginHost::new(HostConfig::default()).unwrap();
        std::hint::black_box(host.load_file(&file, None).unwrap());
    });
    let cache = tempfile::tempdir().unwrap();
    let warm_host =
        || PluginHost::new(HostConfig { cache_dir: Some(cache.path().into()), ..Default::default() }).unwrap();
    warm_host().load_file(&file, None).unwrap();
    let warm = measure(loads, || {
        std::hint::black_box(warm_host().load_file(&file, None).unwrap());
    });
    println!();
    println!(
        "plugin load: preset-phi.wasm ({} bytes), {loads} loads each, including the metadata call",
        std::fs::metadata(&file).unwrap().len()
    );
    println!("{:<46} {:>10} {:>10} {:>10}", "path", "p50 ms", "p99 ms", "cold/warm");
    println!(
        "{:<46} {:>10.2} {:>10.2} {:>10}",
        "cold: compile with cranelift",
        cold.p50.as_secs_f64() * 1e3,
        cold.p99.as_secs_f64() * 1e3,
        ""
    );
    println!(
        "{:<46} {:>10.2} {:>10.2} {:>10.1}",
        "warm: precompiled artifact from disk cache",
        warm.p50.as_secs_f64() * 1e3,
        warm.p99.as_secs_f64() * 1e3,
        cold.p50.as_secs_f64() / warm.p50.as_secs_f64()
    );
}
