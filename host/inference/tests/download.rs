//! Hub downloads against a local server speaking the Hugging Face file API (`HF_ENDPOINT`): the token is sent,
//! a partial file resumes with a Range request, and the result loads.

mod common;

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use kaito_inference::download::download;
use kaito_inference::metrics::Metrics;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// One file request: file name, Range header, Authorization header.
type Seen = (String, Option<String>, Option<String>);

#[derive(Clone)]
struct Hub {
    dir: PathBuf,
    /// (file, Range header, Authorization header) of every file request.
    seen: Arc<Mutex<Vec<Seen>>>,
}

async fn info(State(hub): State<Hub>) -> Response {
    let siblings: Vec<_> = std::fs::read_dir(&hub.dir)
        .unwrap()
        .flatten()
        .map(|e| serde_json::json!({"rfilename": e.file_name().to_string_lossy(), "size": e.metadata().unwrap().len()}))
        .collect();
    axum::Json(serde_json::json!({"id": "tiny/llama", "siblings": siblings})).into_response()
}

async fn file(
    State(hub): State<Hub>,
    UrlPath((_, _, _, name)): UrlPath<(String, String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let header = |h: &str| headers.get(h).and_then(|v| v.to_str().ok()).map(str::to_string);
    hub.seen.lock().unwrap().push((name.clone(), header("range"), header("authorization")));
    let Ok(bytes) = std::fs::read(hub.dir.join(&name)) else { return StatusCode::NOT_FOUND.into_response() };
    match header("range").and_then(|r| r.strip_prefix("bytes=")?.strip_suffix('-')?.parse::<usize>().ok()) {
        Some(from) => (StatusCode::PARTIAL_CONTENT, bytes[from..].to_vec()).into_response(),
        None => bytes.into_response(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_resume_and_send_the_token() {
    let source = tempfile::tempdir().unwrap();
    common::tiny("Qwen2ForCausalLM").write(source.path());
    let hub = Hub { dir: source.path().to_path_buf(), seen: Arc::default() };
    let app = Router::new()
        .route("/api/models/{org}/{name}/revision/{rev}", get(info))
        .route("/{org}/{name}/resolve/{rev}/{file}", get(file))
        .with_state(hub.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(axum::serve(listener, app).into_future());

    let target = tempfile::tempdir().unwrap();
    // A previous attempt left half the weights behind.
    let weights = std::fs::read(source.path().join("model.safetensors")).unwrap();
    let dest = target.path().join("tiny--llama");
    std::fs::create_dir_all(&dest).unwrap();
    std::fs::write(dest.join("model.safetensors.part"), &weights[..weights.len() / 2]).unwrap();

    // SAFETY: set before any other thread of this test reads the environment.
    unsafe {
        std::env::set_var("HF_ENDPOINT", format!("http://{addr}"));
        std::env::set_var("HF_TOKEN", "hf_test_token");
    }
    let metrics = Metrics::default();
    let dir = tokio::task::spawn_blocking({
        let target = target.path().to_path_buf();
        move || download("tiny/llama", "main", &target, &metrics).map(|d| (d, metrics.encode()))
    })
    .await
    .unwrap()
    .expect("download succeeds");
    let (dir, metrics_text) = dir;
    assert_eq!(dir, dest);
    assert_eq!(std::fs::read(dir.join("model.safetensors")).unwrap(), weights, "resumed file is whole");
    assert!(!dir.join("model.safetensors.part").exists());
    let seen = hub.seen.lock().unwrap().clone();
    let weights_request = seen.iter().find(|(f, _, _)| f == "model.safetensors").unwrap();
    assert_eq!(weights_request.1.as_deref(), Some(format!("bytes={}-", weights.len() / 2).as_str()));
    assert!(seen.iter().all(|(_, _, auth)| auth.as_deref() == Some("Bearer hf_test_token")), "{seen:?}");
    assert!(
        metrics_text.contains(&format!(
            "kaito_inference_download_bytes {}",
            std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.metadata().unwrap().len()).sum::<u64>()
        )),
        "{metrics_text}"
    );
    kaito_inference::loader::load(&dir, tch::Device::Cpu, tch::Kind::Float, 128).expect("the download loads");
}
