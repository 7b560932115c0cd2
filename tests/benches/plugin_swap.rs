//! Plugin hot swap through the ConfigMap of plugin references, on the real control plane and the real registry:
//! the operator's own watch (`reload::watch_references`), reloader and reload loop run in this process against the
//! API server, and the Phi preset's entry is pointed at another build (`kubectl patch` as a user would, here by the
//! same API call). Measured: the time from the ConfigMap write to the new build serving a plan, and the latency of
//! a Workspace plan (preset `plan` + provisioner `plan-nodes` + rendering, what a reconcile calls) with and without
//! swaps running, at 1 planning thread and at all cores. Both Phi builds are real (the Rust preset and its Python
//! port); the Workspace is the shipped Phi example.
//!
//! `cargo xtask cluster up`, `cargo xtask registry up`, then `KAITO_E2E_KUBECONFIG=<admin.kubeconfig>
//! KAITO_E2E_REGISTRY=<host:port> cargo bench -p kaito-tests --bench plugin_swap [-- SWAPS]` (default 6 per row).

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ObjectReference};
use kaito_crd::Workspace;
use kaito_operator::reload::{Reloader, first_load, run, watch_references};
use kaito_tests::cluster::Cluster;
use kaito_tests::{operator_context, plugin_dir, root};
use kaito_workload::RenderOptions;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const NAMESPACE: &str = "bench-plugin-swap";
const CONFIGMAP: &str = "plugin-refs";
const MODEL: &str = "phi-3.5-mini-instruct";

fn sha256(file: &Path) -> String {
    let out = std::process::Command::new("sha256sum").arg(file).output().expect("sha256sum runs");
    String::from_utf8(out.stdout).unwrap().split_whitespace().next().unwrap().to_string()
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

/// Plans the Workspace on `threads` threads until `stop`, returning every plan's latency.
fn plan_while(ctx: &Arc<kaito_operator::Context>, ws: &Workspace, threads: usize, stop: &AtomicBool) -> Vec<Duration> {
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let t = Instant::now();
                        kaito_workload::render(&ctx.registry(), ws, &RenderOptions::default()).expect("the plan");
                        out.push(t.elapsed());
                    }
                    out
                })
            })
            .collect();
        let mut all: Vec<Duration> = workers.into_iter().flat_map(|w| w.join().unwrap()).collect();
        all.sort();
        all
    })
}

fn main() {
    let kubeconfig = std::env::var_os("KAITO_E2E_KUBECONFIG")
        .expect("KAITO_E2E_KUBECONFIG: start the control plane with `cargo xtask cluster up` and set it to the admin kubeconfig it prints");
    let registry = std::env::var("KAITO_E2E_REGISTRY")
        .expect("KAITO_E2E_REGISTRY: start a registry with `cargo xtask registry up` and set it to the address");
    let swaps: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(6);
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let _guard = runtime.enter();
    let client = runtime.block_on(kaito_tests::e2e::admin(Path::new(&kubeconfig)));

    // Two real builds of the Phi preset, pushed and pinned.
    let oci = kaito_oci::Oci::new(kaito_oci::Options { plain_http: true, ..kaito_oci::Options::new() });
    let builds: Vec<(String, String)> = [
        (plugin_dir("presets-wasm/dist").join("preset-phi.wasm"), "preset-phi"),
        (plugin_dir("plugins/polyglot/phi-py/dist").join("preset-phi-py.wasm"), "preset-phi-py"),
    ]
    .into_iter()
    .map(|(file, repo)| {
        let reference = kaito_oci::parse(&format!("{registry}/bench-swap/{repo}:1")).unwrap();
        let pinned = runtime.block_on(oci.push_wasm(&std::fs::read(&file).unwrap(), &reference, repo)).expect("push");
        (format!("oci://{pinned}"), sha256(&file))
    })
    .collect();

    // The ConfigMap, fresh, pointing at the first build.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = serde_json::from_value(serde_json::json!({"metadata": {"name": NAMESPACE}})).unwrap();
    let _ = runtime.block_on(namespaces.create(&PostParams::default(), &ns));
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), NAMESPACE);
    let _ = runtime.block_on(configmaps.delete(CONFIGMAP, &DeleteParams::default()));
    let cm = serde_json::from_value(serde_json::json!({"metadata": {"name": CONFIGMAP}, "data": {"phi": builds[0].0}}))
        .unwrap();
    runtime.block_on(configmaps.create(&PostParams::default(), &cm)).expect("the ConfigMap");

    // The operator's reload pieces, as `kaito-operator --plugin-configmap` wires them.
    let cache = tempfile::tempdir().unwrap();
    let plugins = kaito_tests::shipped_plugin_args(cache.path(), &["--plain-http"]);
    let host = plugins.host().unwrap();
    let set = Arc::new(plugins.registry(&host, &mut std::io::sink()).unwrap());
    let cluster = Cluster::new();
    let ctx = operator_context(&cluster, set, "gpu-provisioner");
    let refs = watch_references(client.clone(), NAMESPACE, CONFIGMAP);
    let reloader = Reloader::new(plugins.clone(), host, Some(refs));
    let reloader = runtime.block_on(first_load(reloader, &ctx)).expect("first load");
    // Directories are not looked at during the run (an hour between ticks): only ConfigMap changes swap.
    runtime.spawn(run(reloader, ctx.clone(), Duration::from_secs(3600), ObjectReference::default()));
    let serving = || ctx.registry().find_model(MODEL).expect("phi is served").0.digest().to_string();
    assert_eq!(serving(), builds[0].1, "the ConfigMap's build serves from the start");

    let text =
        std::fs::read_to_string(root().join("examples/inference/kaito_workspace_phi_3.5-instruct.yaml")).unwrap();
    let ws = Workspace::from_yaml(&text).unwrap();
    let mut current = 0;

    println!(
        "| planning threads | plan p50 ms (no swap) | plan p99 ms (no swap) | plan p50 ms (swapping) | plan p99 ms (swapping) | p99 swapping / no swap | plans/s no swap | plans/s swapping | ConfigMap write to serving, median s | max s |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for threads in [1, cores] {
        let stop = AtomicBool::new(false);
        let window = Duration::from_secs(4);
        let quiet = std::thread::scope(|s| {
            let planner = s.spawn(|| plan_while(&ctx, &ws, threads, &stop));
            std::thread::sleep(window);
            stop.store(true, Ordering::Relaxed);
            planner.join().unwrap()
        });
        let quiet_rate = quiet.len() as f64 / window.as_secs_f64();

        let stop = AtomicBool::new(false);
        let mut to_serving = Vec::new();
        let started = Instant::now();
        let busy = std::thread::scope(|s| {
            let planner = s.spawn(|| plan_while(&ctx, &ws, threads, &stop));
            for _ in 0..swaps {
                current = (current + 1) % builds.len();
                let (reference, digest) = &builds[current];
                let patch = serde_json::json!({"data": {"phi": reference}});
                let t = Instant::now();
                runtime
                    .block_on(configmaps.patch(CONFIGMAP, &PatchParams::default(), &Patch::Merge(&patch)))
                    .expect("the ConfigMap write");
                while &serving() != digest {
                    assert!(t.elapsed() < Duration::from_secs(120), "the new build did not serve within 2 minutes");
                    std::thread::sleep(Duration::from_millis(1));
                }
                to_serving.push(t.elapsed());
            }
            stop.store(true, Ordering::Relaxed);
            planner.join().unwrap()
        });
        let busy_rate = busy.len() as f64 / started.elapsed().as_secs_f64();
        to_serving.sort();
        let (q99, b99) = (percentile(&quiet, 0.99), percentile(&busy, 0.99));
        println!(
            "| {threads} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2}x | {:.0} | {:.0} | {:.2} | {:.2} |",
            percentile(&quiet, 0.5),
            q99,
            percentile(&busy, 0.5),
            b99,
            b99 / q99,
            quiet_rate,
            busy_rate,
            percentile(&to_serving, 0.5) / 1e3,
            to_serving.last().unwrap().as_secs_f64(),
        );
    }
    runtime.block_on(namespaces.delete(NAMESPACE, &DeleteParams::default())).ok();
}
