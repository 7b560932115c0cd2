//! Fetching a model from the Hugging Face hub (or any server speaking its
//! file API, `HF_ENDPOINT`): resumable, `HF_TOKEN` honoured, progress in logs
//! and metrics.

use crate::metrics::Metrics;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Files a model directory needs besides the weights.
const WANTED: &[&str] = &[
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "model.safetensors.index.json",
];

fn get(url: &str, range_from: u64) -> anyhow::Result<ureq::http::Response<ureq::Body>> {
    kaito_hub::get(url, range_from).map_err(|e| anyhow::anyhow!("GET {url}: {e}"))
}

/// Download `repo` (`org/name`) at `revision` into `<dir>/<org>--<name>` and return that directory.
pub fn download(repo: &str, revision: &str, dir: &Path, metrics: &Metrics) -> anyhow::Result<PathBuf> {
    let base = kaito_hub::endpoint();
    let target = dir.join(repo.replace('/', "--"));
    std::fs::create_dir_all(&target)?;
    let info: serde_json::Value =
        get(&format!("{base}/api/models/{repo}/revision/{revision}"), 0)?.body_mut().read_json()?;
    let files: Vec<(String, u64)> = info["siblings"]
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("{repo}: the hub listed no files"))?
        .iter()
        .filter_map(|s| Some((s["rfilename"].as_str()?.to_string(), s["size"].as_u64().unwrap_or(0))))
        .filter(|(f, _)| WANTED.contains(&f.as_str()) || (f.ends_with(".safetensors") && !f.contains('/')))
        .collect();
    anyhow::ensure!(
        files.iter().any(|(f, _)| f.ends_with(".safetensors")),
        "{repo}: no safetensors weights on the hub"
    );
    let total: u64 = files.iter().map(|(_, s)| s).sum();
    let started = Instant::now();
    let mut done = 0u64;
    for (file, _) in &files {
        let dest = target.join(file);
        if dest.exists() {
            done += std::fs::metadata(&dest)?.len();
            continue;
        }
        let part = target.join(format!("{file}.part"));
        let have = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
        let mut response = get(&format!("{base}/{repo}/resolve/{revision}/{file}"), have)?;
        // A server that ignores Range sends the whole file: start over.
        let resumed = have > 0 && response.status() == 206;
        let mut out =
            std::fs::OpenOptions::new().create(true).append(resumed).write(true).truncate(!resumed).open(&part)?;
        done += if resumed { have } else { 0 };
        let mut reader = response.body_mut().as_reader();
        let mut buf = vec![0u8; 1 << 20];
        let mut last_log = Instant::now();
        loop {
            let n = reader.read(&mut buf)?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n])?;
            done += n as u64;
            metrics.download_bytes.set(done);
            let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-3);
            let remaining = total.saturating_sub(done) as f64 / rate.max(1.0);
            metrics.download_remaining_seconds.set(remaining.ceil() as i64);
            if last_log.elapsed().as_secs() >= 5 {
                tracing::info!(
                    file,
                    done_mb = done >> 20,
                    total_mb = total >> 20,
                    remaining_s = remaining as u64,
                    "downloading"
                );
                last_log = Instant::now();
            }
        }
        out.sync_all()?;
        std::fs::rename(&part, &dest)?;
        tracing::info!(file, "downloaded");
    }
    metrics.download_bytes.set(done);
    metrics.download_remaining_seconds.set(0);
    Ok(target)
}

/// The directory of `--model`: `model` itself when it is one, else the artifact it names (`oci://REF`) pulled with
/// `concurrency` layers at once, else the hub repository (`org/name`) at `revision` downloaded, both into `dir`.
pub fn resolve_model(
    model: &str,
    revision: &str,
    dir: &Path,
    options: kaito_oci::Options,
    concurrency: usize,
    metrics: &Metrics,
) -> anyhow::Result<PathBuf> {
    let local = PathBuf::from(model);
    if local.is_dir() {
        Ok(local)
    } else if let Some(reference) = model.strip_prefix(kaito_oci::SCHEME) {
        pull_oci(reference, dir, options, concurrency, metrics)
    } else if model.contains('/') && !model.starts_with(['.', '/']) {
        download(model, revision, dir, metrics)
    } else {
        anyhow::bail!("--model {model}: no such directory, and not a hub id (org/name)")
    }
}

/// Pull the model artifact `reference` (a ModelPack directory, as `kaito models push` makes) into
/// `<dir>/<registry>--<repository>@<digest hex>` with `concurrency` layers at once, progress in logs and metrics;
/// return that directory. Called from a blocking thread of the server's runtime.
pub fn pull_oci(
    reference: &str,
    dir: &Path,
    options: kaito_oci::Options,
    concurrency: usize,
    metrics: &Metrics,
) -> anyhow::Result<PathBuf> {
    let parsed = kaito_oci::parse(reference)?;
    let oci = kaito_oci::Oci::new(options);
    let started = Instant::now();
    let last_log = std::sync::Mutex::new(Instant::now());
    let pulled = tokio::runtime::Handle::current().block_on(async {
        let (_, digest) = oci.manifest(&parsed).await?;
        let name = format!("{}--{}@{}", parsed.registry(), parsed.repository(), digest.trim_start_matches("sha256:"))
            .replace(['/', ':'], "-");
        let target = dir.join(name);
        oci.pull_dir(&parsed, &target, concurrency, |done, total| {
            metrics.download_bytes.set(done);
            let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-3);
            metrics.download_remaining_seconds.set((total.saturating_sub(done) as f64 / rate.max(1.0)).ceil() as i64);
            let mut last = last_log.lock().expect("progress lock");
            if last.elapsed().as_secs() >= 5 || done == total {
                tracing::info!(reference, done_mb = done >> 20, total_mb = total >> 20, "pulling model layers");
                *last = Instant::now();
            }
        })
        .await
    })?;
    tracing::info!(reference, pinned = %pulled.pinned, mb = pulled.bytes >> 20, seconds = started.elapsed().as_secs_f64(), "model pulled");
    Ok(pulled.dir)
}

/// Download `url` (http or https; no credentials are sent) into `dir`, named by the last segment of its path, with up
/// to three attempts as KAITO's data downloader makes; an empty body is a failure. Returns the file.
pub fn fetch_url(url: &str, dir: &Path) -> anyhow::Result<PathBuf> {
    anyhow::ensure!(url.starts_with("https://") || url.starts_with("http://"), "{url}: only http(s) URLs are fetched");
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let name = path.rsplit('/').next().filter(|n| !n.is_empty() && *n != "." && *n != "..");
    let name = name.ok_or_else(|| anyhow::anyhow!("{url}: the URL path names no file"))?;
    std::fs::create_dir_all(dir)?;
    let dest = dir.join(name);
    let part = dir.join(format!(".{name}.part"));
    let mut last = None;
    for attempt in 1..=3 {
        let result = (|| -> anyhow::Result<u64> {
            let mut response = ureq::get(url).call().map_err(|e| anyhow::anyhow!("GET {url}: {e}"))?;
            let mut out = std::fs::File::create(&part)?;
            let n = std::io::copy(&mut response.body_mut().as_reader(), &mut out)?;
            out.sync_all()?;
            Ok(n)
        })();
        match result {
            Ok(n) if n > 0 => {
                std::fs::rename(&part, &dest)?;
                tracing::info!(url, bytes = n, file = %dest.display(), "dataset downloaded");
                return Ok(dest);
            }
            Ok(_) => last = Some(anyhow::anyhow!("GET {url}: the body is empty")),
            Err(e) => last = Some(e),
        }
        let _ = std::fs::remove_file(&part);
        tracing::warn!(url, attempt, error = %format!("{:#}", last.as_ref().expect("set")), "download failed");
        if attempt < 3 {
            std::thread::sleep(std::time::Duration::from_secs(2));
        }
    }
    Err(last.expect("three attempts failed"))
}

/// One Docker config holding the `auths` of every file in `configs` (the pull and push secrets a pod mounts, one file
/// each), written to `out`; the first file naming a registry wins.
pub fn merge_docker_configs(configs: &[PathBuf], out: &Path) -> anyhow::Result<()> {
    let mut auths = serde_json::Map::new();
    for path in configs {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let config: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: not a Docker config: {e}", path.display()))?;
        let found = config["auths"]
            .as_object()
            .ok_or_else(|| anyhow::anyhow!("{}: a Docker config needs an \"auths\" object", path.display()))?;
        for (registry, auth) in found {
            auths.entry(registry.clone()).or_insert_with(|| auth.clone());
        }
    }
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(out, serde_json::to_vec(&serde_json::json!({ "auths": auths }))?)?;
    Ok(())
}
