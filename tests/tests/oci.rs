//! Plugins as OCI artifacts against a real registry (CNCF Distribution, `cargo xtask registry up`) and a second,
//! independent client (`oras`): pushed by one, pulled by the other, both ways. Faults a real registry does not make
//! on demand (a corrupted or truncated blob, 500s, refused credentials) come from a small proxy in front of it that
//! forwards everything else unchanged.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use futures::StreamExt;
use kaito_oci::{Error, Oci, Options};
use kaito_tests::{Run, e2e, plugin_dir};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

/// `kaito` in-process with exactly `args`.
fn kaito(args: &[&str]) -> Run {
    let argv: Vec<String> = std::iter::once("kaito").chain(args.iter().copied()).map(String::from).collect();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = kaito_cli::run(argv, &mut out, &mut err);
    Run { code, stdout: String::from_utf8(out).unwrap(), stderr: String::from_utf8(err).unwrap() }
}

fn oras(bin: &Path, dir: &Path, args: &[&str]) -> String {
    let out = Command::new(bin).current_dir(dir).args(args).output().expect("oras runs");
    assert!(out.status.success(), "oras {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn phi() -> PathBuf {
    plugin_dir("presets-wasm/dist").join("preset-phi.wasm")
}

#[test]
fn plugins_interoperate_with_oras_both_ways() {
    let Some((registry, oras_bin)) = e2e::registry("plugins_interoperate_with_oras_both_ways") else { return };
    let work = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let cache_arg = cache.path().display().to_string();

    // Ours, pushed: the conformance suite runs first, the last line is the pinned reference; oras pulls the file.
    let target = format!("{registry}/interop/preset-phi:ours");
    let phi_path = phi().display().to_string();
    let push = kaito(&["plugins", "push", &phi_path, &target, "--plain-http", "--plugin-cache", &cache_arg]);
    assert_eq!(push.code, 0, "{}{}", push.stdout, push.stderr);
    assert!(push.stdout.contains("0 failed"), "conformance ran first: {}", push.stdout);
    let pinned = push.stdout.lines().last().unwrap().to_string();
    assert!(pinned.starts_with(&format!("{registry}/interop/preset-phi@sha256:")), "{pinned}");
    oras(&oras_bin, work.path(), &["pull", "--plain-http", &pinned, "-o", "by-oras"]);
    assert_eq!(std::fs::read(work.path().join("by-oras/preset-phi.wasm")).unwrap(), std::fs::read(phi()).unwrap());
    let manifest: serde_json::Value =
        serde_json::from_str(&oras(&oras_bin, work.path(), &["manifest", "fetch", "--plain-http", &pinned])).unwrap();
    assert_eq!(manifest["config"]["mediaType"], kaito_oci::WASM_CONFIG_MEDIA_TYPE);
    assert_eq!(manifest["layers"][0]["mediaType"], kaito_oci::WASM_LAYER_MEDIA_TYPE);

    // oras, pushed in the Wasm artifact layout: we pull it, and load it as a plugin by its pinned reference.
    let azure = plugin_dir("plugins/dist").join("provisioner-azure.wasm");
    std::fs::copy(&azure, work.path().join("provisioner-azure.wasm")).unwrap();
    std::fs::write(work.path().join("config.json"), r#"{"architecture":"wasm","os":"wasip2"}"#).unwrap();
    let theirs = format!("{registry}/interop/provisioner-azure:oras");
    oras(
        &oras_bin,
        work.path(),
        &[
            "push",
            "--plain-http",
            &theirs,
            "--config",
            "config.json:application/vnd.wasm.config.v0+json",
            "provisioner-azure.wasm:application/wasm",
        ],
    );
    let out = work.path().join("pulled.wasm");
    let pull = kaito(&["plugins", "pull", &theirs, "--plain-http", "-o", &out.display().to_string()]);
    assert_eq!(pull.code, 0, "{}", pull.stderr);
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&azure).unwrap());
    let their_pin = pull.stdout.trim().to_string();
    let list = kaito(&[
        "plugins",
        "list",
        "--plugins",
        &format!("oci://{their_pin}"),
        "--plugins",
        &format!("oci://{pinned}"),
        "--plain-http",
        "--plugin-cache",
        &cache_arg,
    ]);
    assert_eq!(list.code, 0, "{}", list.stderr);
    assert!(list.stdout.contains("gpu-provisioner") && list.stdout.contains("preset-phi"), "{}", list.stdout);
    // A Workspace renders through plugins that came from the registry alone.
    let seed = kaito_tests::root().join("examples/inference/kaito_workspace_phi_3.5-instruct.yaml");
    let render = kaito(&[
        "render",
        "-f",
        &seed.display().to_string(),
        "--plugins",
        &format!("oci://{pinned}"),
        "--plugins",
        &format!("oci://{their_pin}"),
        "--plain-http",
        "--plugin-cache",
        &cache_arg,
    ]);
    assert_eq!(render.code, 0, "{}", render.stderr);
    assert!(render.stdout.contains("kind: StatefulSet"));

    // A tag is refused as a plugin source unless the user opts in; a non-Wasm artifact is refused by name.
    let unpinned = kaito(&["plugins", "list", "--plugins", &format!("oci://{target}"), "--plain-http"]);
    assert_ne!(unpinned.code, 0);
    assert!(unpinned.stderr.contains("names no digest"), "{}", unpinned.stderr);
    let opted = kaito(&[
        "plugins",
        "list",
        "--plugins",
        &format!("oci://{target}"),
        "--allow-unpinned-plugins",
        "--plain-http",
        "--plugin-cache",
        &cache_arg,
    ]);
    assert_eq!(opted.code, 0, "{}", opted.stderr);
    std::fs::write(work.path().join("notes.txt"), "not a component").unwrap();
    let text = format!("{registry}/interop/notes:1");
    oras(&oras_bin, work.path(), &["push", "--plain-http", &text, "notes.txt"]);
    let refused =
        kaito(&["plugins", "pull", &text, "--plain-http", "-o", &work.path().join("x").display().to_string()]);
    assert_ne!(refused.code, 0);
    assert!(refused.stderr.contains("is not a Wasm component artifact"), "{}", refused.stderr);
    assert!(!work.path().join("x").exists());

    // A component that fails the conformance suite is not pushed.
    let broken = work.path().join("broken.wasm");
    std::fs::write(&broken, b"\0asm\x0d\0\x01\0").unwrap();
    let push = kaito(&[
        "plugins",
        "push",
        &broken.display().to_string(),
        &format!("{registry}/interop/broken:1"),
        "--plain-http",
    ]);
    assert_ne!(push.code, 0);
    assert!(push.stderr.contains("fails the conformance suite: not pushed"), "{}", push.stderr);
}

/// What the proxy does to the requests it forwards.
#[derive(Default)]
struct Faults {
    /// Answer 500 to this many requests first.
    errors: AtomicU32,
    /// Flip a byte of every blob.
    corrupt: AtomicBool,
    /// Cut the next blob off halfway.
    truncate: AtomicBool,
    /// Demand this `Authorization` header.
    basic: Mutex<Option<String>>,
    /// `Range` headers seen.
    ranges: Mutex<Vec<String>>,
}

async fn forward(State((upstream, faults)): State<(String, Arc<Faults>)>, req: Request) -> Response {
    let status = |code: u16| Response::builder().status(code);
    if let Some(want) = faults.basic.lock().unwrap().clone() {
        let have = req.headers().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default();
        if have != want {
            return status(401).header("www-authenticate", "Basic realm=\"test\"").body(Body::empty()).unwrap();
        }
    }
    if faults.errors.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
        return status(500).body(Body::from("injected")).unwrap();
    }
    let path = req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
    let blob = path.contains("/blobs/sha256:");
    let mut headers = vec![];
    for name in ["accept", "range"] {
        if let Some(v) = req.headers().get(name).and_then(|v| v.to_str().ok()) {
            headers.push((name, v.to_string()));
        }
    }
    if let Some((_, r)) = headers.iter().find(|(n, _)| *n == "range") {
        faults.ranges.lock().unwrap().push(r.clone());
    }
    let url = format!("http://{upstream}{path}");
    let (code, reply_headers, mut body) = tokio::task::spawn_blocking(move || {
        let agent = ureq::Agent::config_builder().http_status_as_error(false).build().new_agent();
        let mut request = agent.get(&url);
        for (n, v) in &headers {
            request = request.header(*n, v);
        }
        let mut response = request.call().expect("upstream answers");
        let keep = ["content-type", "docker-content-digest", "content-range"];
        let reply_headers: Vec<(String, String)> = response
            .headers()
            .iter()
            .filter(|(k, _)| keep.contains(&k.as_str()))
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string()))
            .collect();
        let body = response.body_mut().read_to_vec().expect("upstream body");
        (response.status().as_u16(), reply_headers, body)
    })
    .await
    .unwrap();
    let mut builder = status(code);
    for (k, v) in reply_headers {
        builder = builder.header(k, v);
    }
    if blob && code < 300 {
        if faults.corrupt.load(Ordering::SeqCst)
            && let Some(last) = body.last_mut()
        {
            *last ^= 0xff;
        }
        if faults.truncate.swap(false, Ordering::SeqCst) {
            // The promised length, half the bytes, then a broken connection.
            let half = body[..body.len() / 2].to_vec();
            // The pause lets the half reach the client before the connection breaks.
            let cut = async {
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                Err::<Vec<u8>, _>(std::io::Error::other("connection cut by the test"))
            };
            let chunks = futures::stream::once(async { Ok(half) }).chain(futures::stream::once(cut));
            return builder.header("content-length", body.len()).body(Body::from_stream(chunks)).unwrap();
        }
    }
    builder.body(Body::from(body)).unwrap()
}

/// A proxy in front of `upstream` with `faults`; returns its address.
async fn proxy(upstream: &str, faults: Arc<Faults>) -> String {
    let app = axum::Router::new().fallback(forward).with_state((upstream.to_string(), faults));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// No blob and no partial download is left in the cache.
fn cache_is_empty(cache: &Path) {
    let blobs = cache.join("blobs/sha256");
    let left: Vec<_> = std::fs::read_dir(&blobs).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "left in the cache: {left:?}");
}

#[tokio::test]
async fn faulty_registries_fail_clearly_and_leave_nothing_half_written() {
    let Some((registry, _)) = e2e::registry("faulty_registries_fail_clearly_and_leave_nothing_half_written") else {
        return;
    };
    let direct = Oci::new(Options { plain_http: true, ..Options::new() });
    let phi_bytes = std::fs::read(phi()).unwrap();
    let pinned = direct
        .push_wasm(
            &phi_bytes,
            &kaito_oci::parse(&format!("{registry}/faults/preset-phi:1")).unwrap(),
            "preset-phi.wasm",
        )
        .await
        .unwrap();
    let digest = pinned.split_once('@').unwrap().1.to_string();
    let faults = Arc::new(Faults::default());
    let front = proxy(&registry, faults.clone()).await;
    let through = |cache: &Path, retries: u32, docker_config: Option<PathBuf>| {
        Oci::new(Options { plain_http: true, cache_dir: cache.to_path_buf(), retries, docker_config })
    };
    let reference = kaito_oci::parse(&format!("{front}/faults/preset-phi@{digest}")).unwrap();

    // A blob whose bytes do not hash to its digest: refused, nothing kept.
    let cache = tempfile::tempdir().unwrap();
    faults.corrupt.store(true, Ordering::SeqCst);
    let err = through(cache.path(), 0, None).pull_wasm(&reference).await.unwrap_err();
    assert!(matches!(err, Error::Registry { .. } | Error::Digest { .. }), "{err}");
    assert!(err.to_string().contains("sha256"), "{err}");
    cache_is_empty(cache.path());
    faults.corrupt.store(false, Ordering::SeqCst);

    // A download cut off halfway resumes from where it stopped (a Range request) and verifies the whole.
    let cache = tempfile::tempdir().unwrap();
    faults.truncate.store(true, Ordering::SeqCst);
    let pulled = through(cache.path(), 3, None).pull_wasm(&reference).await.unwrap();
    assert_eq!(std::fs::read(&pulled.path).unwrap(), phi_bytes);
    let ranges = faults.ranges.lock().unwrap().clone();
    assert_eq!(ranges, [format!("bytes={}-", phi_bytes.len() / 2)], "resumed, not restarted");

    // 500s that clear up are retried; 500s that do not are a clear error, and nothing is kept.
    let cache = tempfile::tempdir().unwrap();
    faults.errors.store(2, Ordering::SeqCst);
    through(cache.path(), 3, None).pull_wasm(&reference).await.unwrap();
    let cache = tempfile::tempdir().unwrap();
    faults.errors.store(100, Ordering::SeqCst);
    let err = through(cache.path(), 1, None).pull_wasm(&reference).await.unwrap_err();
    assert!(err.to_string().contains("500"), "{err}");
    cache_is_empty(cache.path());
    faults.errors.store(0, Ordering::SeqCst);

    // Credentials: refused without them (naming the 401), accepted from a docker config.
    use base64::Engine;
    let token = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
    *faults.basic.lock().unwrap() = Some(format!("Basic {token}"));
    let cache = tempfile::tempdir().unwrap();
    let err = through(cache.path(), 0, None).pull_wasm(&reference).await.unwrap_err();
    assert!(err.to_string().contains("Not authorized"), "{err}");
    cache_is_empty(cache.path());
    let config = cache.path().join("config.json");
    std::fs::write(&config, format!(r#"{{"auths": {{"{front}": {{"auth": "{token}"}}}}}}"#)).unwrap();
    let pulled = through(cache.path(), 0, Some(config)).pull_wasm(&reference).await.unwrap();
    assert_eq!(std::fs::read(&pulled.path).unwrap(), phi_bytes);
}

fn models_dir(name: &str) -> PathBuf {
    let dir = std::env::var_os("KAITO_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/kaito/models"))
        .join(name);
    assert!(dir.join("config.json").is_file(), "{} is missing: run `cargo xtask models`", dir.display());
    dir
}

/// Every file under `dir` but hidden ones (`.complete`, `.gitattributes`: not pushed), relative, with its length.
fn tree(dir: &Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if e.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push((p.strip_prefix(dir).unwrap().display().to_string(), std::fs::metadata(&p).unwrap().len()));
            }
        }
    }
    out.sort();
    out
}

fn same_files(a: &Path, b: &Path) {
    assert_eq!(tree(a), tree(b));
    for (rel, _) in tree(a) {
        assert!(std::fs::read(a.join(&rel)).unwrap() == std::fs::read(b.join(&rel)).unwrap(), "{rel} differs");
    }
}

#[test]
fn model_directories_travel_as_modelpack_artifacts_both_ways() {
    let Some((registry, oras_bin)) = e2e::registry("model_directories_travel_as_modelpack_artifacts_both_ways") else {
        return;
    };
    let model = models_dir("all-minilm-l6-v2");
    let work = tempfile::tempdir().unwrap();
    let target = format!("{registry}/models/all-minilm:1");
    let push =
        kaito(&["models", "push", &model.display().to_string(), &target, "--plain-http", "--compression", "none"]);
    assert_eq!(push.code, 0, "{}", push.stderr);
    let pinned = push.stdout.trim().to_string();
    // Raw layers: oras writes every layer to its title: the same tree, subdirectories included.
    oras(&oras_bin, work.path(), &["pull", "--plain-http", &pinned, "-o", "by-oras"]);
    same_files(&model, &work.path().join("by-oras"));
    let manifest: serde_json::Value =
        serde_json::from_str(&oras(&oras_bin, work.path(), &["manifest", "fetch", "--plain-http", &pinned])).unwrap();
    assert_eq!(manifest["artifactType"], kaito_oci::MODEL_ARTIFACT_TYPE);
    assert_eq!(manifest["config"]["mediaType"], kaito_oci::MODEL_CONFIG_MEDIA_TYPE);
    let weights = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["annotations"][kaito_oci::TITLE_ANNOTATION] == "model.safetensors");
    assert_eq!(weights.unwrap()["mediaType"], kaito_oci::MODEL_WEIGHT_MEDIA_TYPE);

    // And the other way: oras pushes the directory's files, kaito pulls them concurrently.
    let theirs = format!("{registry}/models/all-minilm:oras");
    let mut args = vec!["push".to_string(), "--plain-http".into(), theirs.clone()];
    args.extend(tree(&model).into_iter().map(|(rel, _)| rel));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    oras(&oras_bin, &model, &args);
    let out = work.path().join("by-kaito");
    let pull =
        kaito(&["models", "pull", &theirs, "-o", &out.display().to_string(), "--plain-http", "--concurrency", "8"]);
    assert_eq!(pull.code, 0, "{}", pull.stderr);
    same_files(&model, &out);

    // zstd layers (the default): each file a zstd-compressed tar under the ModelPack `.tar+zstd` media type; kaito
    // unpacks the same tree, oras fetches the compressed blobs (zstd frames, smaller than the files).
    let zstd_target = format!("{registry}/models/all-minilm:zstd");
    let push = kaito(&["models", "push", &model.display().to_string(), &zstd_target, "--plain-http"]);
    assert_eq!(push.code, 0, "{}", push.stderr);
    let zstd_pinned = push.stdout.trim().to_string();
    let out = work.path().join("unpacked");
    let pull = kaito(&["models", "pull", &zstd_pinned, "-o", &out.display().to_string(), "--plain-http"]);
    assert_eq!(pull.code, 0, "{}", pull.stderr);
    same_files(&model, &out);
    let manifest: serde_json::Value =
        serde_json::from_str(&oras(&oras_bin, work.path(), &["manifest", "fetch", "--plain-http", &zstd_pinned]))
            .unwrap();
    let layer = |title: &str| {
        manifest["layers"].as_array().unwrap().iter().find(|l| l["annotations"][kaito_oci::TITLE_ANNOTATION] == title)
    };
    assert_eq!(layer("model.safetensors").unwrap()["mediaType"], "application/vnd.cncf.model.weight.v1.tar+zstd");
    assert_eq!(layer("config.json").unwrap()["mediaType"], "application/vnd.cncf.model.weight.config.v1.tar+zstd");
    oras(&oras_bin, work.path(), &["pull", "--plain-http", &zstd_pinned, "-o", "zstd-by-oras"]);
    let blob = std::fs::read(work.path().join("zstd-by-oras/model.safetensors")).unwrap();
    assert_eq!(blob[..4], [0x28, 0xb5, 0x2f, 0xfd], "a zstd frame");
    let raw = std::fs::metadata(model.join("model.safetensors")).unwrap().len();
    assert!((blob.len() as u64) < raw, "compressed: {} of {raw} bytes", blob.len());
    // Both pushes are reproducible: the same directory, the same manifest digest.
    let again = kaito(&["models", "push", &model.display().to_string(), &zstd_target, "--plain-http"]);
    assert_eq!(again.stdout.trim(), zstd_pinned);

    // A gzip layer (which we neither write nor read) is refused by name, and nothing is written.
    std::fs::write(work.path().join("w.tgz"), b"not really gzip").unwrap();
    let gzip = format!("{registry}/models/gzip:1");
    oras(
        &oras_bin,
        work.path(),
        &["push", "--plain-http", &gzip, "w.tgz:application/vnd.cncf.model.weight.v1.tar+gzip"],
    );
    let refused = work.path().join("refused");
    let pull = kaito(&["models", "pull", &gzip, "-o", &refused.display().to_string(), "--plain-http"]);
    assert_ne!(pull.code, 0);
    assert!(pull.stderr.contains("gzip layers are not read"), "{}", pull.stderr);
    assert!(!refused.join("w.tgz").exists());
}

#[tokio::test]
async fn the_inference_server_serves_a_model_pulled_from_the_registry() {
    let Some((registry, _)) = e2e::registry("the_inference_server_serves_a_model_pulled_from_the_registry") else {
        return;
    };
    let model = models_dir("smollm2-135m-instruct");
    let oci = Oci::new(Options { plain_http: true, ..Options::new() });
    let pinned = oci
        .push_dir(
            &model,
            &kaito_oci::parse(&format!("{registry}/models/smollm2:1")).unwrap(),
            "smollm2",
            kaito_oci::Compression::Zstd,
        )
        .await
        .unwrap();
    // A LoRA adapter for it, made by peft, travels the same way (zstd layers) and is served by name.
    let adapter = tempfile::tempdir().unwrap();
    let python = std::env::var_os("KAITO_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/kaito/torch-venv/bin/python"));
    let made = Command::new(python)
        .arg(kaito_tests::root().join("tests/python/lora_reference.py"))
        .arg(&model)
        .arg(adapter.path())
        .arg(r#"{"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}"#)
        .args(["[1, 2, 3]", "1"])
        .output()
        .expect("python runs");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let adapter_ref = kaito_oci::parse(&format!("{registry}/adapters/smollm2-tuned:1")).unwrap();
    let adapter_pinned =
        oci.push_dir(adapter.path(), &adapter_ref, "smollm2-tuned", kaito_oci::Compression::Zstd).await.unwrap();
    let bin = std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().join("kaito-inference");
    assert!(bin.is_file(), "{} is missing: `cargo test --workspace` builds it", bin.display());
    let downloads = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(&bin)
        .args(["--model", &format!("oci://{pinned}"), "--plain-http", "--served-model-name", "smollm2"])
        .args(["--enable-lora", "--lora-modules", &format!("tuned=oci://{adapter_pinned}")])
        .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--download-dir"])
        .arg(downloads.path())
        .env("OMP_NUM_THREADS", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("kaito-inference starts");
    // Killed however the test ends.
    struct Server(std::process::Child);
    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let server = Server(child);
    let agent = ureq::Agent::config_builder().http_status_as_error(false).build().new_agent();
    let health = format!("http://127.0.0.1:{port}/health");
    let ready = e2e::wait_for("the pulled model to load", 120, async || {
        let agent = agent.clone();
        let health = health.clone();
        let status =
            tokio::task::spawn_blocking(move || agent.get(&health).call().map(|r| r.status().as_u16())).await.unwrap();
        (status.ok()? == 200).then_some(())
    });
    ready.await;
    let url = format!("http://127.0.0.1:{port}/v1/chat/completions");
    let models_url = format!("http://127.0.0.1:{port}/v1/models");
    let ask = |model: &str| {
        format!(
            r#"{{"model": "{model}", "messages": [{{"role": "user", "content": "Say hi."}}], "max_tokens": 4, "temperature": 0}}"#
        )
    };
    let (base_body, adapter_body) = (ask("smollm2"), ask("tuned"));
    let (answer, tuned, models): (serde_json::Value, serde_json::Value, serde_json::Value) =
        tokio::task::spawn_blocking(move || {
            let post = |body: &str| {
                let mut r = agent.post(&url).header("content-type", "application/json").send(body).unwrap();
                assert_eq!(r.status().as_u16(), 200);
                r.body_mut().read_json::<serde_json::Value>().unwrap()
            };
            let (a, t) = (post(&base_body), post(&adapter_body));
            let m = agent.get(&models_url).call().unwrap().body_mut().read_json::<serde_json::Value>().unwrap();
            (a, t, m)
        })
        .await
        .unwrap();
    drop(server);
    let text = answer["choices"][0]["message"]["content"].as_str().unwrap_or_default();
    assert!(!text.is_empty(), "{answer}");
    assert_eq!(tuned["model"], "tuned", "{tuned}");
    assert!(!tuned["choices"][0]["message"]["content"].as_str().unwrap_or_default().is_empty(), "{tuned}");
    let card = &models["data"][1];
    assert_eq!((card["id"].as_str(), card["parent"].as_str()), (Some("tuned"), Some("smollm2")), "{models}");
    // The pulled directories hold the pushed files, byte for byte.
    let pulled = std::fs::read_dir(downloads.path())
        .unwrap()
        .flatten()
        .find(|e| e.file_name() != "adapters")
        .expect("a pulled directory")
        .path();
    same_files(&model, &pulled);
    let adapters = downloads.path().join("adapters");
    let pulled = std::fs::read_dir(&adapters).unwrap().flatten().next().expect("a pulled adapter").path();
    same_files(adapter.path(), &pulled);
}

/// Serves `body` at `http://127.0.0.1:PORT/<name>` to every request, from a thread, for as long as the test runs; a
/// stand-in for a dataset host (any URL: kaito-tune's downloader is what is tested, not the web).
fn serve_file(name: &'static str, body: Vec<u8>) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/{name}?download=true", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len());
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        }
    });
    url
}

/// The tuning Job's trainer as a Workspace plans it: data from a URL and from an artifact another client (`oras`)
/// pushed, credentials from several Docker configs, and the adapter pushed as a ModelPack artifact that `oras` sees
/// and `kaito models pull` and `kaito-pull` (the adapter init container) bring back byte for byte (checkpoints stay
/// behind).
#[test]
fn kaito_tune_reads_urls_and_artifacts_and_pushes_its_adapter() {
    let Some((registry, oras_bin)) = e2e::registry("kaito_tune_reads_urls_and_artifacts_and_pushes_its_adapter") else {
        return;
    };
    let model = models_dir("smollm2-135m-instruct");
    let work = tempfile::tempdir().unwrap();
    let row = |q: &str, a: &str| {
        serde_json::json!({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
            .to_string()
    };
    let url = serve_file("facts.jsonl", format!("{}\n", row("What colour is a zorblat?", "Teal.")).into_bytes());
    let data_dir = work.path().join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    std::fs::write(data_dir.join("more.jsonl"), format!("{}\n", row("Who named Quxville?", "Ada Mint."))).unwrap();
    let data_ref = format!("{registry}/datasets/facts:1");
    oras(&oras_bin, &data_dir, &["push", "--plain-http", &data_ref, "more.jsonl"]);
    let config = work.path().join("training_config.yaml");
    std::fs::write(
        &config,
        "training_config:\n  LoraConfig: {r: 4, lora_alpha: 8, target_modules: [q_proj, v_proj]}\n  TrainingArguments: {max_steps: 2, per_device_train_batch_size: 2, learning_rate: 0.001, save_strategy: steps, save_steps: 1}\n",
    )
    .unwrap();
    // Two secrets' configs as the pod mounts them: one for another registry, one for this one (which takes any
    // credentials: it has no auth configured).
    let (other, ours) = (work.path().join("other.json"), work.path().join("ours.json"));
    std::fs::write(&other, r#"{"auths": {"elsewhere.example.com": {"auth": "dTpw"}}}"#).unwrap();
    std::fs::write(&ours, format!(r#"{{"auths": {{"{registry}": {{"auth": "dTpw"}}}}}}"#)).unwrap();
    let bin = std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().join("kaito-tune");
    assert!(bin.is_file(), "{} is missing: `cargo test --workspace` builds it", bin.display());
    let output = work.path().join("output");
    let target = format!("oci://{registry}/adapters/facts:1");
    let run = Command::new(&bin)
        .args(["--model", &model.display().to_string(), "--config", &config.display().to_string()])
        .args(["--data", &url, "--data", &format!("oci://{data_ref}")])
        .args(["--output", &output.display().to_string(), "--push", &target, "--plain-http"])
        .args(["--registry-config", &other.display().to_string(), "--registry-config", &ours.display().to_string()])
        .args(["--download-dir", &work.path().join("downloads").display().to_string(), "--threads", "1"])
        .env("KAITO_OCI_CACHE", work.path().join("oci-cache"))
        .output()
        .expect("kaito-tune runs");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(stderr.contains("dataset downloaded") && stderr.contains("steps=2"), "{stderr}");
    assert!(output.join("checkpoint-1").is_dir(), "checkpoints stay in --output");
    let pinned = String::from_utf8(run.stdout).unwrap().trim().to_string();
    assert!(pinned.starts_with(&format!("{registry}/adapters/facts@sha256:")), "{pinned}");
    let manifest: serde_json::Value =
        serde_json::from_str(&oras(&oras_bin, work.path(), &["manifest", "fetch", "--plain-http", &pinned])).unwrap();
    assert_eq!(manifest["artifactType"], kaito_oci::MODEL_ARTIFACT_TYPE);
    let mut titles: Vec<&str> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["annotations"][kaito_oci::TITLE_ANNOTATION].as_str().unwrap())
        .collect();
    titles.sort();
    assert_eq!(titles, ["adapter_config.json", "adapter_model.safetensors"]);
    let back = work.path().join("back");
    let pull = kaito(&["models", "pull", &pinned, "-o", &back.display().to_string(), "--plain-http"]);
    assert_eq!(pull.code, 0, "{}", pull.stderr);
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        assert!(std::fs::read(back.join(f)).unwrap() == std::fs::read(output.join(f)).unwrap(), "{f} differs");
    }
    // `kaito-pull`, as the adapter init container of a serving pod runs it, brings the same files into the
    // adapter's directory and prints the same pinned reference.
    let puller = bin.with_file_name("kaito-pull");
    let dir = work.path().join("mnt/adapter/facts");
    let pulled = Command::new(&puller)
        .args([&format!("oci://{pinned}"), &dir.display().to_string(), "--plain-http"])
        .args(["--registry-config", &ours.display().to_string()])
        .env("KAITO_OCI_CACHE", work.path().join("puller-cache"))
        .output()
        .expect("kaito-pull runs");
    assert!(pulled.status.success(), "{}", String::from_utf8_lossy(&pulled.stderr));
    assert_eq!(String::from_utf8(pulled.stdout).unwrap().trim(), pinned);
    same_files(&back, &dir);
}
