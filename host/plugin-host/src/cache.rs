//! On-disk cache of precompiled components.
//!
//! Compiling a component is milliseconds for a Rust guest but seconds for a
//! Python or JavaScript one, so the host keeps the native artifact. The file
//! name carries the sha256 of the `.wasm`, the wasmtime version and a hash of
//! the engine settings; an artifact is only ever read back by the same kind
//! of engine that wrote it. `Component::deserialize_file` trusts its input,
//! so the cache directory must be writable by the host alone.

use crate::limits::WASMTIME_VERSION;
use anyhow::Context;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Where a component came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Read back from a precompiled artifact.
    Hit,
    /// Compiled now and stored.
    Compiled,
    /// Compiled now; caching is off.
    Uncached,
}

/// A directory of precompiled artifacts for one engine configuration.
#[derive(Debug, Clone)]
pub struct ArtifactCache {
    dir: PathBuf,
    engine_key: String,
}

impl ArtifactCache {
    /// A cache in `dir` for artifacts of `engine`.
    pub fn new(dir: impl Into<PathBuf>, engine: &Engine) -> Self {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        ArtifactCache { dir: dir.into(), engine_key: format!("{:016x}", h.finish()) }
    }

    /// The default location: `$KAITO_PLUGIN_CACHE`, else `$XDG_CACHE_HOME/kaito/plugins`, else `~/.cache/kaito/plugins`.
    pub fn default_dir() -> Option<PathBuf> {
        if let Some(d) = std::env::var_os("KAITO_PLUGIN_CACHE") {
            return Some(PathBuf::from(d));
        }
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))?;
        Some(base.join("kaito").join("plugins"))
    }

    /// Artifact path for a component digest.
    pub fn path_for(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{digest}-wasmtime{WASMTIME_VERSION}-{}.cwasm", self.engine_key))
    }

    /// Load the artifact for `digest`, or compile `bytes` and store it.
    pub fn load_or_compile(
        &self,
        engine: &Engine,
        bytes: &[u8],
        digest: &str,
    ) -> anyhow::Result<(Component, CacheOutcome)> {
        let path = self.path_for(digest);
        if path.is_file() {
            // SAFETY: only files this host wrote live under this name (digest + engine key).
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(c) => return Ok((c, CacheOutcome::Hit)),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "discarding unreadable precompiled plugin");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let artifact = engine.precompile_component(bytes).map_err(|e| anyhow::anyhow!("{e:#}"))?;
        std::fs::create_dir_all(&self.dir).with_context(|| format!("creating {}", self.dir.display()))?;
        // A private temporary file and a rename: concurrent loaders of the
        // same plugin never see a half-written artifact.
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir)
            .with_context(|| format!("creating a file in {}", self.dir.display()))?;
        std::io::Write::write_all(&mut tmp, &artifact).context("writing precompiled plugin")?;
        tmp.persist(&path).with_context(|| format!("storing {}", path.display()))?;
        // SAFETY: `artifact` was produced by this engine a moment ago.
        let component = unsafe { Component::deserialize(engine, &artifact) }.map_err(|e| anyhow::anyhow!("{e:#}"))?;
        Ok((component, CacheOutcome::Compiled))
    }
}
