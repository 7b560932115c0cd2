//! Models no preset catalogs, named by Hugging Face id, sized from the hub's config as KAITO does: against a local
//! server speaking the hub's file API (`resolve/main/<file>`), with a token for a gated repository, a single-file
//! checkpoint, a missing repository, and the offline case.

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use kaito_hub::Hub;
use kaito_plugin_host::GpuShape;
use kaito_tests::{kaito_estimate, root};
use kaito_workload::{RenderOptions, render};
use serde_json::json;
use std::sync::{Arc, Mutex};

const GIB: u64 = 1 << 30;
const TOKEN: &str = "hf_test_token";

/// Authorization headers the server saw, by repository.
type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

fn qwen2_config(layers: u64, kv_heads: u64, context: u64) -> serde_json::Value {
    json!({
        "architectures": ["Qwen2ForCausalLM"],
        "num_hidden_layers": layers,
        "num_attention_heads": 64,
        "num_key_value_heads": kv_heads,
        "hidden_size": 8192,
        "max_position_embeddings": context,
        "torch_dtype": "bfloat16"
    })
}

async fn file(
    State(seen): State<Seen>,
    method: Method,
    UrlPath((org, repo, name)): UrlPath<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).map(str::to_string);
    seen.lock().unwrap().push((format!("{org}/{repo}"), auth.clone()));
    let json = |v: serde_json::Value| axum::Json(v).into_response();
    match (format!("{org}/{repo}").as_str(), name.as_str()) {
        ("acme/Giant-Qwen2-Instruct", "config.json") => json(qwen2_config(80, 8, 32768)),
        ("acme/Giant-Qwen2-Instruct", "model.safetensors.index.json") => {
            json(json!({"metadata": {"total_size": 135 * GIB + GIB / 2}, "weight_map": {}}))
        }
        ("acme/Gated-Qwen2", _) if auth.as_deref() != Some(&format!("Bearer {TOKEN}")) => {
            StatusCode::UNAUTHORIZED.into_response()
        }
        ("acme/Gated-Qwen2", "config.json") => json(qwen2_config(28, 4, 131072)),
        ("acme/Gated-Qwen2", "model.safetensors.index.json") => {
            json(json!({"metadata": {"total_size": 15 * GIB}, "weight_map": {}}))
        }
        ("acme/Small-Single-File", "config.json") => json(qwen2_config(24, 2, 8192)),
        ("acme/Compact-Qwen2", "config.json") => {
            let mut config = qwen2_config(28, 4, 32768);
            config["quantization_config"] = json!({"quant_method": "awq", "bits": 4});
            json(config)
        }
        ("acme/Compact-Qwen2", "model.safetensors.index.json") => {
            json(json!({"metadata": {"total_size": 5 * GIB}, "weight_map": {}}))
        }
        ("acme/Small-Single-File", "model.safetensors") if method == Method::HEAD => {
            ([("content-length", (3 * GIB).to_string())], "").into_response()
        }
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

/// The hub server on a free port; its address and what it saw.
async fn hub_server() -> (String, Seen) {
    let seen: Seen = Arc::default();
    let app = Router::new().route("/{org}/{repo}/resolve/main/{name}", get(file)).with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), seen)
}

/// The seed Workspace asking for `model` on `instance_type`.
fn workspace(model: &str, instance_type: &str) -> kaito_crd::Workspace {
    let seed =
        std::fs::read_to_string(root().join("examples/inference/kaito_workspace_phi_3.5-instruct.yaml")).unwrap();
    let text = seed
        .replace("name: phi-3.5-mini-instruct", &format!("name: {model}"))
        .replace("Standard_NC24ads_A100_v4", instance_type);
    kaito_crd::Workspace::from_yaml(&text).unwrap()
}

fn opts(hub: Option<Hub>) -> RenderOptions {
    RenderOptions { provisioner: Some("gpu-provisioner".into()), hub: hub.map(Arc::new), ..Default::default() }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_model_outside_the_catalog_is_sized_from_its_hub_config_as_kaito_does() {
    let (url, seen) = hub_server().await;
    let registry = kaito_tests::shipped_registry();
    let hub = Hub::new(&url, Some(TOKEN.into()));
    let ws = workspace("acme/Giant-Qwen2-Instruct", "Standard_NC48ads_A100_v4");
    let rendered = tokio::task::spawn_blocking(move || render(&registry, &ws, &opts(Some(hub)))).await.unwrap();
    let rendered = rendered.unwrap_or_else(|e| panic!("{e}"));
    let plan = rendered.plan.as_ref().unwrap();
    assert_eq!(plan.runtime, "vllm", "KAITO serves models outside its catalog with vLLM");
    // KAITO's estimator on the same facts, computed independently: 135.5 GiB of weights, KV 2 x 80 x 8 x 128 x 2.
    let shape =
        GpuShape { gpu_model: "A100".into(), gpus_per_node: 2, gpu_memory_bytes: 80 * GIB, max_nodes: 16, nvme: true };
    let (nodes, tensor, pipeline, data) = kaito_estimate(135 * GIB + GIB / 2, 2 * 80 * 8 * 128 * 2, &shape).unwrap();
    let p = &plan.resources.parallelism;
    assert_eq!((plan.resources.node_count, p.tensor, p.pipeline, p.data), (nodes, tensor, pipeline, data));
    assert_eq!(rendered.objects.nodes.len(), nodes as usize, "one NodeClaim per node");
    let args = [plan.workload.command.clone(), plan.workload.args.clone()].concat().join(" ");
    assert!(args.contains("giant-qwen2-instruct"), "KAITO's served name, the lower-cased last segment: {args}");
    assert!(args.contains("--dtype=bfloat16"), "an unquantised checkpoint: {args}");
    assert!(seen.lock().unwrap().iter().all(|(_, auth)| auth.as_deref() == Some(&format!("Bearer {TOKEN}")[..])));
}

#[tokio::test(flavor = "multi_thread")]
async fn gated_single_file_missing_and_offline_models() {
    let (url, seen) = hub_server().await;
    let registry = Arc::new(kaito_tests::shipped_registry());
    let run = |model: &str, hub: Option<Hub>| {
        let (registry, ws) = (registry.clone(), workspace(model, "Standard_NC24ads_A100_v4"));
        tokio::task::spawn_blocking(move || render(&registry, &ws, &opts(hub)).map_err(|e| e.to_string()))
    };
    let gated = run("acme/Gated-Qwen2", Some(Hub::new(&url, None))).await.unwrap().unwrap_err();
    assert!(gated.contains("needs a token with access (HTTP 401): set HF_TOKEN"), "{gated}");
    let with_token = run("acme/Gated-Qwen2", Some(Hub::new(&url, Some(TOKEN.into())))).await.unwrap().unwrap();
    assert_eq!(with_token.plan.unwrap().resources.node_count, 1);
    let single = run("acme/Small-Single-File", Some(Hub::new(&url, None))).await.unwrap().unwrap();
    assert_eq!(single.plan.unwrap().resources.node_count, 1, "3 GiB from model.safetensors' size");
    let awq = run("acme/Compact-Qwen2", Some(Hub::new(&url, None))).await.unwrap().unwrap().plan.unwrap();
    let line = [awq.workload.command.clone(), awq.workload.args.clone()].concat().join(" ");
    assert!(line.contains("--dtype=auto"), "quantised per its config: {line}");
    let missing = run("acme/No-Such-Model", Some(Hub::new(&url, None))).await.unwrap().unwrap_err();
    assert!(missing.contains("acme/No-Such-Model is not on http://127.0.0.1"), "{missing}");
    let before = seen.lock().unwrap().len();
    let offline = run("acme/Giant-Qwen2-Instruct", None).await.unwrap().unwrap_err();
    assert!(offline.contains("the hub is not read here (offline)"), "{offline}");
    assert_eq!(seen.lock().unwrap().len(), before, "offline means no request");
    // A catalog model never touches the hub, even with one configured.
    let catalog = run("microsoft/Phi-3.5-mini-instruct", Some(Hub::new(&url, None))).await.unwrap().unwrap();
    assert!(catalog.plan.is_some());
    assert_eq!(seen.lock().unwrap().len(), before);
}
