//! Everything kaito distributes is an OCI artifact; this crate is the one place that talks to registries, on the
//! `oci-client` crate (no registry protocol written here).
//!
//! - Plugins use the Wasm OCI artifact layout the ecosystem uses (config `application/vnd.wasm.config.v0+json`, one
//!   `application/wasm` layer), so components pushed by `oras`, `wkg` or `wash` load, and ours pull with them.
//! - Blobs land in a content-addressed cache (`<cache>/blobs/sha256/<hex>`): a download goes to `<hex>.partial`,
//!   is resumed from its length after a transient failure, and becomes the blob only once its sha256 matches the
//!   descriptor, so nothing half-written is ever read as content.
//! - Credentials come from a docker config (`~/.docker/config.json` or a Secret's `.dockerconfigjson`): basic
//!   credentials, which oci-client also trades for a bearer token when the registry asks for one.

mod layers;
pub use layers::Compression;

use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::manifest::{OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// Config media type of a Wasm component artifact (CNCF TAG Runtime's Wasm OCI artifact layout).
pub const WASM_CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";
/// Media type of the one layer of a Wasm artifact: the component itself.
pub const WASM_LAYER_MEDIA_TYPE: &str = "application/wasm";
/// The layer annotation naming a file (what `oras pull` writes a layer to).
pub const TITLE_ANNOTATION: &str = "org.opencontainers.image.title";
/// Artifact type of a model directory (weights, or a LoRA adapter), as CNCF ModelPack names it.
pub const MODEL_ARTIFACT_TYPE: &str = "application/vnd.cncf.model.manifest.v1+json";
/// Config media type of a model artifact (ModelPack).
pub const MODEL_CONFIG_MEDIA_TYPE: &str = "application/vnd.cncf.model.config.v1+json";
/// Layer media types of a model artifact (ModelPack, raw: one file per layer, written as is by any client).
pub const MODEL_WEIGHT_MEDIA_TYPE: &str = "application/vnd.cncf.model.weight.v1.raw";
/// A model's configuration, tokenizer and adapter config files.
pub const MODEL_CONFIG_FILE_MEDIA_TYPE: &str = "application/vnd.cncf.model.weight.config.v1.raw";
/// A model's documentation (README, LICENSE).
pub const MODEL_DOC_MEDIA_TYPE: &str = "application/vnd.cncf.model.doc.v1.raw";

/// Scheme prefix of an OCI reference where a path is also accepted (`--plugins oci://REF@sha256:...`).
pub const SCHEME: &str = "oci://";

/// What can go wrong talking to a registry or the cache; each names the reference or digest involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{reference:?} is not an OCI reference: {message}")]
    Reference { reference: String, message: String },
    #[error("{reference:?} names no digest: pin it as {reference}@sha256:<digest> (or opt in to unpinned references)")]
    Unpinned { reference: String },
    #[error("{reference}: {source}")]
    Registry {
        reference: String,
        #[source]
        source: oci_client::errors::OciDistributionError,
    },
    #[error("{reference} is not a Wasm component artifact: {why}")]
    NotWasm { reference: String, why: String },
    #[error("{reference} is not a directory artifact (a model or an adapter): {why}")]
    NotDirectory { reference: String, why: String },
    #[error("blob {expected} from {reference} has digest {actual}: refused")]
    Digest { reference: String, expected: String, actual: String },
    #[error("{0:?} is not a sha256 digest")]
    BadDigest(String),
    #[error("registry credentials: {0}")]
    Auth(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Result of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.to_path_buf(), source }
}

/// How to reach registries.
#[derive(Debug, Clone)]
pub struct Options {
    /// Speak plain HTTP (a local registry without TLS), as `oras --plain-http` does.
    pub plain_http: bool,
    /// The content-addressed blob cache.
    pub cache_dir: PathBuf,
    /// A docker config (`{"auths": {...}}`) to read credentials from; `None`: anonymous.
    pub docker_config: Option<PathBuf>,
    /// How many times a transient failure (5xx, connection lost) of one blob is retried, resuming each time.
    pub retries: u32,
}

impl Options {
    /// Anonymous, over TLS, caching in [`default_cache_dir`].
    pub fn new() -> Options {
        Options { plain_http: false, cache_dir: default_cache_dir(), docker_config: None, retries: 4 }
    }
}

impl Default for Options {
    fn default() -> Self {
        Options::new()
    }
}

/// `$KAITO_OCI_CACHE`, else `~/.cache/kaito/oci`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KAITO_OCI_CACHE") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    home.join(".cache/kaito/oci")
}

/// Parses `reference` (with or without `oci://`), naming what is wrong.
pub fn parse(reference: &str) -> Result<Reference> {
    let text = reference.strip_prefix(SCHEME).unwrap_or(reference);
    text.parse::<Reference>().map_err(|e| Error::Reference { reference: reference.into(), message: e.to_string() })
}

/// `reference` pinned to `digest`: `registry/repository@sha256:...`, the form every client resolves identically.
pub fn pinned(reference: &Reference, digest: &str) -> String {
    format!("{}/{}@{digest}", reference.registry(), reference.repository())
}

/// The credentials `docker_config` holds for `registry` (basic from `auth` or `username`/`password`, or an identity
/// token), anonymous when it has none for that registry.
pub fn auth_from_docker_config(text: &str, registry: &str) -> Result<RegistryAuth> {
    use base64::Engine;
    let config: serde_json::Value =
        serde_json::from_str(text).map_err(|e| Error::Auth(format!("the docker config is not JSON: {e}")))?;
    let auths = config["auths"].as_object().cloned().unwrap_or_default();
    // Entries may be written as a bare host or a URL (`https://host/v1/`).
    let host_of = |k: &str| {
        k.trim_start_matches("https://").trim_start_matches("http://").split('/').next().unwrap_or_default().to_string()
    };
    let Some(entry) = auths.iter().find(|(k, _)| host_of(k) == registry).map(|(_, v)| v) else {
        return Ok(RegistryAuth::Anonymous);
    };
    if let Some(token) = entry["identitytoken"].as_str().filter(|t| !t.is_empty()) {
        return Ok(RegistryAuth::Bearer(token.into()));
    }
    if let (Some(user), Some(password)) = (entry["username"].as_str(), entry["password"].as_str()) {
        return Ok(RegistryAuth::Basic(user.into(), password.into()));
    }
    let encoded = entry["auth"].as_str().ok_or_else(|| Error::Auth(format!("the entry for {registry} has no auth")))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|e| Error::Auth(format!("the auth of {registry} is not base64: {e}")))?;
    let decoded =
        String::from_utf8(decoded).map_err(|_| Error::Auth(format!("the auth of {registry} is not UTF-8")))?;
    let (user, password) =
        decoded.split_once(':').ok_or_else(|| Error::Auth(format!("the auth of {registry} is not user:password")))?;
    Ok(RegistryAuth::Basic(user.into(), password.into()))
}

/// The hex of a `sha256:<64 hex>` digest.
fn digest_hex(digest: &str) -> Result<&str> {
    match digest.strip_prefix("sha256:") {
        Some(hex) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) => {
            Ok(hex)
        }
        _ => Err(Error::BadDigest(digest.into())),
    }
}

/// `sha256:<hex>` of a file.
fn sha256_file(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).map_err(io(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
}

/// Feeds what is written to a hasher.
struct HashWriter<'a>(&'a mut Sha256);

impl std::io::Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A Wasm component pulled into the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PulledWasm {
    /// The component in the blob cache (read-only content; copy it to change it).
    pub path: PathBuf,
    /// Digest of the component (its layer), which is the plugin's sha256.
    pub digest: String,
    /// The reference pinned to the manifest digest.
    pub pinned: String,
}

/// A model (or adapter) directory pulled out of the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PulledDir {
    /// Where its files are.
    pub dir: PathBuf,
    /// The reference pinned to the manifest digest.
    pub pinned: String,
    /// Bytes of all its files.
    pub bytes: u64,
}

/// The ModelPack layer media type of a file in a model directory.
fn model_media_type(name: &str) -> &'static str {
    let lower = name.to_ascii_lowercase();
    if [".safetensors", ".bin", ".pt", ".pth", ".gguf", ".onnx"].iter().any(|ext| lower.ends_with(ext)) {
        MODEL_WEIGHT_MEDIA_TYPE
    } else if lower.ends_with(".md") || lower.starts_with("license") || lower.starts_with("readme") {
        MODEL_DOC_MEDIA_TYPE
    } else {
        MODEL_CONFIG_FILE_MEDIA_TYPE
    }
}

/// A layer title as a path inside the output directory: relative, no `..`, no empty parts.
fn safe_title(title: &str) -> Option<PathBuf> {
    let path = Path::new(title);
    let ok = !title.is_empty()
        && path.components().all(|c| matches!(c, std::path::Component::Normal(_)))
        && !title.contains('\\');
    ok.then(|| path.to_path_buf())
}

/// The regular files under `dir`, as paths relative to it, sorted (hidden files and directories skipped).
fn files_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        let here = dir.join(&rel);
        for entry in std::fs::read_dir(&here).map_err(io(&here))? {
            let entry = entry.map_err(io(&here))?;
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            let kind = entry.file_type().map_err(io(&entry.path()))?;
            if kind.is_dir() {
                todo.push(rel.join(&name));
            } else if kind.is_file() {
                out.push(rel.join(&name));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// A registry client with a blob cache.
pub struct Oci {
    client: Client,
    options: Options,
}

impl Oci {
    /// A client with `options`.
    pub fn new(options: Options) -> Oci {
        // oci-client's reqwest is built without a crypto provider: use ring, as the rest of the operator does.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = ClientConfig {
            protocol: if options.plain_http { ClientProtocol::Http } else { ClientProtocol::Https },
            ..Default::default()
        };
        Oci { client: Client::new(config), options }
    }

    fn auth(&self, reference: &Reference) -> Result<RegistryAuth> {
        let Some(path) = &self.options.docker_config else { return Ok(RegistryAuth::Anonymous) };
        let text = std::fs::read_to_string(path).map_err(io(path))?;
        auth_from_docker_config(&text, reference.resolve_registry())
    }

    fn registry_error(reference: &Reference) -> impl FnOnce(oci_client::errors::OciDistributionError) -> Error + '_ {
        move |source| Error::Registry { reference: reference.whole(), source }
    }

    /// Runs `attempt` until it succeeds, fails for good, or has failed transiently `retries` times, waiting
    /// 0.4 s, 0.8 s, ... between tries.
    async fn retrying<T, F: Future<Output = Result<T>>>(
        &self,
        what: &str,
        mut attempt: impl FnMut() -> F,
    ) -> Result<T> {
        let mut failures = 0;
        loop {
            match attempt().await {
                Ok(v) => return Ok(v),
                Err(e) if failures < self.options.retries && transient(&e) => {
                    failures += 1;
                    tracing::warn!(what, attempt = failures, error = %e, "registry request failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200 << failures.min(5))).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The manifest `reference` names and its digest, checked against the reference's digest when it has one.
    pub async fn manifest(&self, reference: &Reference) -> Result<(OciImageManifest, String)> {
        let auth = self.auth(reference)?;
        let (manifest, digest) = self
            .retrying(&reference.whole(), || async {
                self.client.pull_image_manifest(reference, &auth).await.map_err(Self::registry_error(reference))
            })
            .await?;
        if let Some(want) = reference.digest()
            && want != digest
        {
            return Err(Error::Digest { reference: reference.whole(), expected: want.into(), actual: digest });
        }
        Ok((manifest, digest))
    }

    /// Where the blob `digest` lives in the cache (whether or not it is there).
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        Ok(self.options.cache_dir.join("blobs/sha256").join(digest_hex(digest)?))
    }

    /// The blob `layer` of `reference` in the cache, downloaded if missing: resumed after transient failures, and
    /// kept only if its sha256 is the descriptor's digest.
    pub async fn blob(&self, reference: &Reference, layer: &OciDescriptor) -> Result<PathBuf> {
        let path = self.blob_path(&layer.digest)?;
        if path.is_file() {
            return Ok(path);
        }
        let dir = path.parent().expect("blob paths have a parent");
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let partial = path.with_extension("partial");
        // Each retry resumes from what the last one wrote; a pull that fails for good leaves nothing behind.
        let actual = match self.retrying(&layer.digest, || self.download(reference, layer, &partial)).await {
            Ok(digest) => digest,
            Err(e) => {
                let _ = std::fs::remove_file(&partial);
                return Err(e);
            }
        };
        if actual != layer.digest {
            let _ = std::fs::remove_file(&partial);
            return Err(Error::Digest { reference: reference.whole(), expected: layer.digest.clone(), actual });
        }
        std::fs::rename(&partial, &path).map_err(io(&path))?;
        Ok(path)
    }

    /// Appends the rest of the blob to `partial` (from its current length), or rewrites it when the registry does not
    /// serve ranges.
    /// Returns the `sha256:` digest of the whole partial file. A whole-blob stream is verified against the layer's
    /// digest by oci-client as it arrives; a resumed one is hashed here as it is written, its prefix first.
    async fn download(&self, reference: &Reference, layer: &OciDescriptor, partial: &Path) -> Result<String> {
        use futures::StreamExt;
        use oci_client::client::BlobResponse;
        let offset = std::fs::metadata(partial).map(|m| m.len()).unwrap_or(0);
        let size = u64::try_from(layer.size).unwrap_or(0);
        if size > 0 && offset > size {
            std::fs::remove_file(partial).map_err(io(partial))?;
            return Box::pin(self.download(reference, layer, partial)).await;
        }
        if size > 0 && offset == size {
            return sha256_file(partial);
        }
        self.client.store_auth_if_needed(reference.resolve_registry(), &self.auth(reference)?).await;
        let (mut stream, append) = if offset == 0 {
            (self.client.pull_blob_stream(reference, layer).await.map_err(Self::registry_error(reference))?, false)
        } else {
            match self
                .client
                .pull_blob_stream_partial(reference, layer, offset, None)
                .await
                .map_err(Self::registry_error(reference))?
            {
                BlobResponse::Partial(s) => (s, true),
                BlobResponse::Full(s) => (s, false),
            }
        };
        let mut hasher = Sha256::new();
        if append {
            let mut prefix = std::fs::File::open(partial).map_err(io(partial))?;
            std::io::copy(&mut prefix, &mut HashWriter(&mut hasher)).map_err(io(partial))?;
        }
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(partial)
            .await
            .map_err(io(partial))?;
        // Large writes: each write of a tokio file is a hop to a blocking thread.
        let mut file = tokio::io::BufWriter::with_capacity(4 << 20, file);
        while let Some(chunk) = stream.stream.next().await {
            if chunk.is_err() {
                // What arrived before the break is kept for the resume.
                file.flush().await.map_err(io(partial))?;
            }
            let chunk = chunk.map_err(|e| {
                // oci-client checks a whole blob's digest at the end of its stream: a mismatch is final.
                match e.get_ref().and_then(|inner| inner.downcast_ref::<oci_client::errors::DigestError>()) {
                    Some(d) => Error::Digest {
                        reference: reference.whole(),
                        expected: layer.digest.clone(),
                        actual: d.to_string(),
                    },
                    None => Error::Io { path: partial.to_path_buf(), source: e },
                }
            })?;
            if append {
                hasher.update(&chunk);
            }
            file.write_all(&chunk).await.map_err(io(partial))?;
        }
        file.flush().await.map_err(io(partial))?;
        // On disk before it is renamed into the cache: a crash must not leave a named blob with missing bytes.
        file.get_ref().sync_data().await.map_err(io(partial))?;
        Ok(if append { format!("sha256:{}", hex::encode(hasher.finalize())) } else { layer.digest.clone() })
    }

    /// Pulls the Wasm component `reference` names into the cache. The manifest must be a Wasm artifact: config
    /// [`WASM_CONFIG_MEDIA_TYPE`] and exactly one [`WASM_LAYER_MEDIA_TYPE`] layer.
    pub async fn pull_wasm(&self, reference: &Reference) -> Result<PulledWasm> {
        let (manifest, manifest_digest) = self.manifest(reference).await?;
        let not_wasm = |why: String| Error::NotWasm { reference: reference.whole(), why };
        if manifest.config.media_type != WASM_CONFIG_MEDIA_TYPE {
            return Err(not_wasm(format!(
                "its config is {}, not {WASM_CONFIG_MEDIA_TYPE}",
                manifest.config.media_type
            )));
        }
        let layer = match manifest.layers.as_slice() {
            [layer] if layer.media_type == WASM_LAYER_MEDIA_TYPE => layer.clone(),
            layers => {
                let types: Vec<&str> = layers.iter().map(|l| l.media_type.as_str()).collect();
                return Err(not_wasm(format!("it has layers {types:?}, not one {WASM_LAYER_MEDIA_TYPE} layer")));
            }
        };
        let path = self.blob(reference, &layer).await?;
        Ok(PulledWasm { path, digest: layer.digest, pinned: pinned(reference, &manifest_digest) })
    }

    /// Pushes `component` as a Wasm artifact to `reference`, its layer titled `title` (the file name `oras pull`
    /// writes); returns the reference pinned to the pushed manifest.
    pub async fn push_wasm(&self, component: &[u8], reference: &Reference, title: &str) -> Result<String> {
        let layer_digest = format!("sha256:{}", hex::encode(Sha256::digest(component)));
        // The layout's config: what the component is, for tools that read it; the layer digests tie it to them.
        let config = serde_json::json!({
            "architecture": "wasm",
            "os": "wasip2",
            "layerDigests": [layer_digest],
        });
        let config =
            Config::new(serde_json::to_vec(&config).expect("config serialises"), WASM_CONFIG_MEDIA_TYPE.into(), None);
        let layer = ImageLayer::new(
            component.to_vec(),
            WASM_LAYER_MEDIA_TYPE.into(),
            Some(BTreeMap::from([(TITLE_ANNOTATION.to_string(), title.to_string())])),
        );
        self.push_artifact(reference, vec![layer], config, None).await
    }
}

impl Oci {
    /// Pushes every file under `dir` as one layer of a ModelPack artifact (weights, configs, docs by name), titled
    /// with its path, raw or as a zstd-compressed tar; returns the reference pinned to the manifest. `name` goes into
    /// the artifact's config.
    pub async fn push_dir(
        &self,
        dir: &Path,
        reference: &Reference,
        name: &str,
        compression: Compression,
    ) -> Result<String> {
        let files = files_under(dir)?;
        let mut layers = Vec::new();
        let mut diff_ids = Vec::new();
        for rel in &files {
            let path = dir.join(rel);
            let data = tokio::fs::read(&path).await.map_err(io(&path))?;
            let title = rel.to_string_lossy().replace(std::path::MAIN_SEPARATOR, "/");
            // The ModelPack config lists each file's uncompressed digest.
            diff_ids.push(format!("sha256:{}", hex::encode(Sha256::digest(&data))));
            let media_type = layers::packed_media_type(model_media_type(&title), compression);
            let data = match compression {
                Compression::None => data,
                Compression::Zstd => {
                    let t = title.clone();
                    tokio::task::spawn_blocking(move || layers::pack(&t, &data))
                        .await
                        .expect("the packing thread")
                        .map_err(io(&path))?
                }
            };
            layers.push(ImageLayer::new(
                data,
                media_type,
                Some(BTreeMap::from([(TITLE_ANNOTATION.to_string(), title)])),
            ));
        }
        let config = serde_json::json!({
            "descriptor": {"name": name},
            "config": {"format": if files.iter().any(|f| f.to_string_lossy().ends_with(".safetensors")) { "safetensors" } else { "" }},
            "modelfs": {"type": "layers", "diffIds": diff_ids},
        });
        let config =
            Config::new(serde_json::to_vec(&config).expect("config serialises"), MODEL_CONFIG_MEDIA_TYPE.into(), None);
        self.push_artifact(reference, layers, config, Some(MODEL_ARTIFACT_TYPE)).await
    }

    /// Pushes `layers` and `config` and then their manifest, as exactly the bytes whose digest is returned pinned.
    async fn push_artifact(
        &self,
        reference: &Reference,
        layers: Vec<ImageLayer>,
        config: Config,
        artifact_type: Option<&str>,
    ) -> Result<String> {
        let mut manifest = OciImageManifest::build(&layers, &config, None);
        manifest.artifact_type = artifact_type.map(String::from);
        let body = serde_json::to_vec(&manifest).expect("manifest serialises");
        let manifest_digest = format!("sha256:{}", hex::encode(Sha256::digest(&body)));
        self.client.store_auth_if_needed(reference.resolve_registry(), &self.auth(reference)?).await;
        for (layer, descriptor) in layers.into_iter().zip(&manifest.layers) {
            self.client
                .push_blob(reference, layer.data, &descriptor.digest)
                .await
                .map_err(Self::registry_error(reference))?;
        }
        self.client
            .push_blob(reference, config.data, &manifest.config.digest)
            .await
            .map_err(Self::registry_error(reference))?;
        let media_type = http::HeaderValue::from_static(oci_client::manifest::OCI_IMAGE_MEDIA_TYPE);
        self.client.push_manifest_raw(reference, body, media_type).await.map_err(Self::registry_error(reference))?;
        Ok(pinned(reference, &manifest_digest))
    }

    /// Pulls a directory artifact (a model or an adapter, any layer titled with a relative path) into `out`: up to
    /// `concurrency` layers at once into the blob cache (each verified), then each raw layer linked (or copied) to
    /// its path and each tar (`.tar`, `.tar+zstd`) layer unpacked there. `progress` hears `(bytes done, bytes in
    /// all)`, in layer bytes, after each layer.
    pub async fn pull_dir(
        &self,
        reference: &Reference,
        out: &Path,
        concurrency: usize,
        progress: impl Fn(u64, u64) + Send + Sync,
    ) -> Result<PulledDir> {
        use futures::{StreamExt, TryStreamExt};
        let (manifest, manifest_digest) = self.manifest(reference).await?;
        let mut wanted = Vec::new();
        for layer in &manifest.layers {
            let title = layer.annotations.as_ref().and_then(|a| a.get(TITLE_ANNOTATION)).cloned().unwrap_or_default();
            let rel = safe_title(&title).ok_or_else(|| Error::NotDirectory {
                reference: reference.whole(),
                why: format!("layer {} has no usable file name ({TITLE_ANNOTATION}: {title:?})", layer.digest),
            })?;
            let how = layers::Unpack::of(&layer.media_type)
                .map_err(|why| Error::NotDirectory { reference: reference.whole(), why })?;
            wanted.push((layer.clone(), rel, how));
        }
        let total: u64 = wanted.iter().map(|(l, _, _)| u64::try_from(l.size).unwrap_or(0)).sum();
        let done = std::sync::atomic::AtomicU64::new(0);
        let (done, progress) = (&done, &progress);
        let whole = reference.whole();
        let whole = &whole;
        let bytes = futures::stream::iter(wanted)
            .map(|(layer, rel, how)| async move {
                let blob = self.blob(reference, &layer).await?;
                let dest = out.join(&rel);
                let parent = dest.parent().expect("a joined path has a parent");
                std::fs::create_dir_all(parent).map_err(io(parent))?;
                let written = if how == layers::Unpack::Raw {
                    let _ = std::fs::remove_file(&dest);
                    // The cache holds the content once; a hard link costs nothing, a copy is the fallback across
                    // filesystems.
                    if std::fs::hard_link(&blob, &dest).is_err() {
                        let tmp = layers::partial(&dest);
                        std::fs::copy(&blob, &tmp).map_err(io(&tmp))?;
                        std::fs::rename(&tmp, &dest).map_err(io(&dest))?;
                    }
                    std::fs::metadata(&dest).map_err(io(&dest))?.len()
                } else {
                    // Decompression is CPU work: off the runtime, overlapping the other layers' downloads.
                    let reference = whole.clone();
                    tokio::task::spawn_blocking(move || layers::unpack(&blob, how, &rel, &dest, &reference))
                        .await
                        .expect("the unpacking thread")?
                };
                let size = u64::try_from(layer.size).unwrap_or(0);
                let now = done.fetch_add(size, std::sync::atomic::Ordering::SeqCst) + size;
                progress(now, total);
                Ok::<_, Error>(written)
            })
            .buffer_unordered(concurrency.max(1))
            .try_collect::<Vec<u64>>()
            .await?
            .into_iter()
            .sum();
        Ok(PulledDir { dir: out.to_path_buf(), pinned: pinned(reference, &manifest_digest), bytes })
    }
}

/// Whether a failure may clear on its own: a 5xx answer or a broken connection. Digest mismatches, 4xx answers and
/// local disk errors do not.
fn transient(e: &Error) -> bool {
    use oci_client::errors::OciDistributionError as E;
    match e {
        Error::Registry { source, .. } => match source {
            E::ServerError { code, .. } => *code >= 500,
            E::RequestError(_) | E::IoError(_) => true,
            _ => false,
        },
        // A stream that broke mid-body surfaces as an I/O error on the partial file's data.
        Error::Io { source, .. } => source.kind() != std::io::ErrorKind::PermissionDenied,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_with_or_without_the_scheme_and_pin() {
        let r = parse("oci://localhost:5000/kaito/preset-phi:0.1.0").unwrap();
        assert_eq!((r.registry(), r.repository(), r.tag()), ("localhost:5000", "kaito/preset-phi", Some("0.1.0")));
        let digest = format!("sha256:{}", "a".repeat(64));
        assert_eq!(pinned(&r, &digest), format!("localhost:5000/kaito/preset-phi@{digest}"));
        assert!(matches!(parse("oci://UPPER/Case::x"), Err(Error::Reference { .. })));
    }

    #[test]
    fn digests_are_checked_before_they_become_paths() {
        assert!(digest_hex(&format!("sha256:{}", "0".repeat(64))).is_ok());
        for bad in ["sha256:../../etc/passwd", "sha512:00", "sha256:ABC", &format!("sha256:{}", "G".repeat(64))] {
            assert!(matches!(digest_hex(bad), Err(Error::BadDigest(_))), "{bad}");
        }
    }

    #[test]
    fn model_files_get_modelpack_media_types_and_titles_stay_inside() {
        assert_eq!(model_media_type("model-00001-of-00002.safetensors"), MODEL_WEIGHT_MEDIA_TYPE);
        assert_eq!(model_media_type("tokenizer.json"), MODEL_CONFIG_FILE_MEDIA_TYPE);
        assert_eq!(model_media_type("README.md"), MODEL_DOC_MEDIA_TYPE);
        assert_eq!(safe_title("onnx/model.onnx"), Some(PathBuf::from("onnx/model.onnx")));
        for bad in ["", "../x", "/etc/passwd", "a/../../b", "./a"] {
            assert_eq!(safe_title(bad), None, "{bad}");
        }
    }

    #[test]
    fn docker_config_credentials() {
        use base64::Engine;
        let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
        let config = format!(
            r#"{{"auths": {{"https://registry.example:5000/v1/": {{"auth": "{auth}"}}, "other.example": {{"username": "bob", "password": "pw"}}, "token.example": {{"identitytoken": "t0k"}}}}}}"#
        );
        let basic = |u: &str, p: &str| RegistryAuth::Basic(u.into(), p.into());
        assert_eq!(auth_from_docker_config(&config, "registry.example:5000").unwrap(), basic("alice", "s3cret"));
        assert_eq!(auth_from_docker_config(&config, "other.example").unwrap(), basic("bob", "pw"));
        assert_eq!(auth_from_docker_config(&config, "token.example").unwrap(), RegistryAuth::Bearer("t0k".into()));
        assert_eq!(auth_from_docker_config(&config, "nowhere.example").unwrap(), RegistryAuth::Anonymous);
        assert!(matches!(auth_from_docker_config("{", "x"), Err(Error::Auth(_))));
    }
}
