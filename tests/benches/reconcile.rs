//! Reconcile throughput: many Workspaces from creation to Succeeded on the in-memory cluster.
//!
//! `cargo bench -p kaito-tests --bench reconcile [-- COUNT]` (default 500). The
//! Workspaces are copies of every example under `examples/inference/` (all
//! preset families, several instance types). Each round reconciles every
//! Workspace that is not Ready yet, 16 at a time as the Controller would,
//! then lets the simulated Karpenter and kubelet move the cluster on. The
//! API server is in the same process, so its time and memory are counted too.

use futures::StreamExt;
use kaito_crd::Workspace;
use kaito_tests::cluster::{Cluster, GPUS_PER_NODE, paths};
use kaito_tests::{operator_context, root, shipped_registry, yaml};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A memory figure of this process from /proc/self/status (`VmHWM` peak, `VmRSS` now), in MiB.
fn status_mib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok());
    kib.unwrap_or(f64::NAN) / 1024.0
}

fn peak_rss_mib() -> f64 {
    status_mib("VmHWM:")
}

/// User plus system CPU seconds of this process (Linux clock ticks, 100 per second).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th of those.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(f64::NAN);
    (tick(11) + tick(12)) / 100.0
}

fn rss_now_mib() -> f64 {
    status_mib("VmRSS:")
}

fn main() {
    let count: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(500);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    // kube::Client spawns its request buffer: it must be made inside the runtime.
    let _guard = runtime.enter();
    let registry = shipped_registry();
    let rss_loaded = peak_rss_mib();

    let mut examples: Vec<serde_json::Value> = std::fs::read_dir(root().join("examples/inference"))
        .expect("examples")
        .flatten()
        .map(|e| yaml(&std::fs::read_to_string(e.path()).expect("read example")))
        .collect();
    examples.sort_by_key(|e| e["metadata"]["name"].as_str().unwrap_or_default().to_string());
    let cluster = Cluster::new();
    let ctx = operator_context(&cluster, registry, "gpu-provisioner");
    let mut names = Vec::with_capacity(count);
    for i in 0..count {
        let mut ws = examples[i % examples.len()].clone();
        let name = format!("b{i}-{}", ws["metadata"]["name"].as_str().unwrap().trim_start_matches("workspace-"));
        let name: String = name.chars().take(63).collect::<String>().trim_end_matches('-').to_string();
        ws["metadata"]["name"] = json!(name);
        ws["metadata"]["namespace"] = json!("bench");
        // Distinct selectors, so each Workspace counts only its own nodes.
        ws["resource"]["labelSelector"] = json!({"matchLabels": {"bench": name}});
        cluster.create(paths::WORKSPACES, ws);
        names.push(name);
    }

    eprintln!("created: rss {:.0} MiB", rss_now_mib());
    let started = Instant::now();
    let cpu_start = cpu_seconds();
    let mut rounds = 0;
    let mut reconciles = 0usize;
    let mut pending = names.clone();
    while !pending.is_empty() {
        rounds += 1;
        assert!(rounds <= 10, "{} Workspaces never got Ready", pending.len());
        let batch: Vec<Workspace> = pending
            .iter()
            .map(|n| serde_json::from_value(cluster.get(paths::WORKSPACES, "bench", n).unwrap()).unwrap())
            .collect();
        reconciles += batch.len();
        runtime.block_on(
            futures::stream::iter(batch)
                .map(|ws| kaito_operator::reconcile(Arc::new(ws), ctx.clone()))
                .buffer_unordered(16)
                .for_each(|r| async move {
                    r.expect("reconcile succeeds");
                }),
        );
        cluster.provision(GPUS_PER_NODE * 8);
        cluster.run_pods();
        eprintln!("round {rounds}: rss {:.0} MiB, peak {:.0} MiB", rss_now_mib(), peak_rss_mib());
        pending.retain(|n| cluster.get(paths::WORKSPACES, "bench", n).unwrap()["status"]["state"] != "Ready");
    }
    let wall = started.elapsed();
    let cpu = cpu_seconds() - cpu_start;
    let plugin = ctx.metrics.plugin_time();
    let rss = peak_rss_mib();
    let claims = cluster.list(paths::NODECLAIMS).len();

    println!(
        "| Workspaces | rounds | reconciles | wall s | reconciles/s | CPU s | plugin s | plugin share of CPU | peak RSS MiB | RSS after plugin load MiB | NodeClaims |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {count} | {rounds} | {reconciles} | {:.2} | {:.0} | {cpu:.2} | {:.2} | {:.0}% | {rss:.0} | {rss_loaded:.0} | {claims} |",
        wall.as_secs_f64(),
        reconciles as f64 / wall.as_secs_f64(),
        plugin.as_secs_f64(),
        100.0 * plugin.as_secs_f64() / cpu.max(f64::MIN_POSITIVE),
    );
    println!(
        "(plugin s is time inside render calls, including waits for a CPU; CPU s covers the in-process API server too)"
    );
    let goal = Duration::from_secs(10);
    println!(
        "goal: <= {} s and <= 100 MiB for 500: {}",
        goal.as_secs(),
        if wall <= goal && rss <= 100.0 { "met" } else { "NOT met" }
    );
}
