//! The preset catalog as the Wasm plugins serve it: every alias sized on the
//! reference GPU shapes, as a golden table, and every alias has an example.

use kaito_plugin_host::{CallError, GpuShape, HostConfig, PluginHost, PluginKind};
use kaito_tests::{golden, kaito_estimate, plugin_dir, root};

const GIB: u64 = 1 << 30;

/// KAITO's curated aliases (reference inventory §3).
const ALIASES: &[&str] = &[
    "phi-4",
    "phi-4-mini-instruct",
    "deepseek-r1-distill-llama-8b",
    "deepseek-r1-distill-qwen-14b",
    "phi-3-mini-4k-instruct",
    "phi-3-mini-128k-instruct",
    "phi-3-medium-4k-instruct",
    "phi-3-medium-128k-instruct",
    "phi-3.5-mini-instruct",
    "qwen2.5-coder-7b-instruct",
    "qwen2.5-coder-32b-instruct",
    "gpt-oss-20b",
    "gpt-oss-120b",
    "llama-3.1-8b-instruct",
    "llama-3.3-70b-instruct",
    "mistral-7b",
    "mistral-7b-instruct",
    "ministral-3-3b-instruct",
    "ministral-3-8b-instruct",
    "ministral-3-14b-instruct",
    "gemma-3-4b-instruct",
    "gemma-3-27b-instruct",
    "deepseek-r1-0528",
    "deepseek-v3-0324",
    "mistral-large-3-675b-instruct",
];

/// KAITO's other catalog models, served by Hugging Face id (reference inventory §3).
const BY_HF_ID: &[&str] = &[
    "nvidia/NVIDIA-Nemotron-3-Super-120B-A12B-BF16",
    "nvidia/Nemotron-Cascade-2-30B-A3B",
    "nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16",
    "nvidia/NVIDIA-Nemotron-Nano-12B-v2-VL-BF16",
    "nvidia/NVIDIA-Nemotron-Nano-9B-v2",
    "nvidia/NVIDIA-Nemotron-3-Nano-4B-BF16",
    "Qwen/Qwen3-8B-AWQ",
    "google/gemma-4-31B-it",
    "google/gemma-4-26B-A4B-it",
    "google/gemma-4-E4B-it",
    "google/gemma-4-E2B-it",
    "mistralai/Mistral-Small-4-119B-2603",
    "mistralai/Mistral-Small-4-119B-2603-NVFP4",
    "Qwen/Qwen3.5-2B",
    "Qwen/Qwen3.5-4B",
    "Qwen/Qwen3.5-9B",
    "Qwen/Qwen3.5-122B-A10B-GPTQ-Int4",
    "Qwen/Qwen3.5-122B-A10B",
    "Qwen/Qwen3.6-35B-A3B-FP8",
    "Qwen/Qwen3.6-35B-A3B",
    "Qwen/Qwen3.6-27B",
    "Qwen/Qwen3.5-397B-A17B-GPTQ-Int4",
    "moonshotai/Kimi-K2.5",
    "moonshotai/Kimi-K2.6",
    "MiniMaxAI/MiniMax-M2.7",
    "mistralai/Mistral-Medium-3.5-128B",
    "deepseek-ai/DeepSeek-V4-Flash-0731",
    "deepseek-ai/DeepSeek-V4-Pro",
    "google/gemma-4-12B-it",
    "zai-org/GLM-5.2-FP8",
    "moonshotai/Kimi-K2.7-Code",
    "nvidia/NVIDIA-Nemotron-3-Ultra-550B-A55B-NVFP4",
    "deepseek-ai/DeepSeek-V3.2",
    "ibm-granite/granite-4.1-8b",
    "Qwen/Qwen3.8-27B",
];

fn shapes() -> Vec<(&'static str, GpuShape)> {
    let s = |m: &str, n: u32, gib: u64| GpuShape {
        gpu_model: m.into(),
        gpus_per_node: n,
        gpu_memory_bytes: gib * GIB,
        max_nodes: 8,
        nvme: false,
    };
    vec![
        ("1x A10 24G", s("A10", 1, 24)),
        ("1x A100 80G", s("A100", 1, 80)),
        ("8x A100 40G", s("A100", 8, 40)),
        ("8x H100 80G", s("H100", 8, 80)),
    ]
}

#[test]
fn every_catalog_model_is_served_by_a_preset_plugin() {
    let cache = tempfile::tempdir().unwrap();
    let host = PluginHost::new(HostConfig { cache_dir: Some(cache.path().into()), ..Default::default() }).unwrap();
    let registry = host.load_dirs(&[plugin_dir("presets-wasm/dist")]);
    assert!(registry.failures.is_empty(), "{:?}", registry.failures);
    let mut table = String::from(
        "# Sizing of every KAITO catalog model (max 8 nodes), as the preset plugins plan it\n\n\
         Cells: nodes x GPUs/node, tensor/pipeline/data parallelism, runtime; or the error kind; then, in brackets, \
         KAITO v0.12's own estimate (its estimator's arithmetic, computed independently in tests/tests/catalog.rs; KAITO \
         runs vLLM). The node counts must agree in every cell; the parallelism differs only where we choose the tch \
         server, which serves from one GPU. Regenerate with KAITO_BLESS=1.\n\n| alias |",
    );
    for (name, _) in shapes() {
        table.push_str(&format!(" {name} |"));
    }
    table.push_str("\n|---|");
    table.push_str(&"---|".repeat(shapes().len()));
    table.push('\n');
    for alias in ALIASES.iter().chain(BY_HF_ID) {
        let (plugin, model) = registry.find_model(&alias.to_uppercase()).unwrap_or_else(|e| panic!("{alias}: {e}"));
        assert!(model.name == *alias || model.hf_id == *alias, "{alias} resolved to {}", model.name);
        table.push_str(&format!("| {alias} |"));
        let mut fits = 0;
        for (_, shape) in shapes() {
            let req = kaito_plugin_host::conformance::reference_request(&model.name);
            let describe = |p: &kaito_plugin_host::PresetPlan| {
                let (r, par) = (&p.resources, &p.resources.parallelism);
                format!(
                    "{}x{} {}/{}/{} {}",
                    r.node_count, r.gpus_per_node, par.tensor, par.pipeline, par.data, p.runtime
                )
            };
            let kaito = kaito_estimate(model.weights_bytes, model.bytes_per_token, &shape);
            let theirs = match kaito {
                Some((n, t, p, d)) => format!("{n}x{} {t}/{p}/{d}", shape.gpus_per_node),
                None => "DoesNotFit".into(),
            };
            let cell = match plugin.plan(&req, &shape) {
                Ok(p) => {
                    fits += 1;
                    let kaito_nodes = kaito.map(|k| k.0);
                    assert_eq!(
                        Some(p.resources.node_count),
                        kaito_nodes,
                        "{alias} on {shape:?}: node count differs from KAITO's"
                    );
                    format!("{} [KAITO: {theirs}]", describe(&p))
                }
                Err(CallError::Plugin { error, .. }) => {
                    format!("{} [KAITO: {theirs}]", format!("{:?}", error.kind).replace("ErrorKind::", ""))
                }
                Err(e) => panic!("{alias}: plugin fault: {e}"),
            };
            table.push_str(&format!(" {cell} |"));
        }
        table.push('\n');
        assert!(
            fits > 0
                || alias.contains("675b")
                || alias.starts_with("deepseek-r1-0528")
                || alias.starts_with("deepseek-v3"),
            "{alias} fits no shape"
        );
    }
    assert_eq!(registry.of_kind(PluginKind::Preset).count(), 12);
    golden("sizing.md", &table);
}

#[test]
fn every_alias_has_an_example() {
    for alias in ALIASES {
        let file = if *alias == "phi-3.5-mini-instruct" {
            "kaito_workspace_phi_3.5-instruct.yaml".to_string()
        } else {
            format!("kaito_workspace_{alias}.yaml")
        };
        let path = root().join("examples/inference").join(&file);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|_| panic!("{} missing", path.display()));
        assert!(text.contains(&format!("name: {alias}\n")), "{file} does not name {alias}");
    }
}
