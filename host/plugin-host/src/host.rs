//! The engine, its epoch ticker and the linkers: everything shared by calls.

use crate::cache::{ArtifactCache, CacheOutcome};
use crate::error::LoadError;
use crate::limits::{Limits, Policy};
use crate::plugin::{CallState, Plugin};
use crate::registry::{LoadFailure, Manifest, Registry};
use crate::wit::{v0_1_0, v0_2_0};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How to build a [`PluginHost`].
#[derive(Debug, Clone, Default)]
pub struct HostConfig {
    pub limits: Limits,
    pub policy: Policy,
    /// Precompiled-artifact directory; `None` compiles every time.
    pub cache_dir: Option<PathBuf>,
    /// Refuse plugins that no manifest pins by sha256.
    pub require_pins: bool,
}

pub(crate) struct Shared {
    pub engine: Engine,
    pub limits: Limits,
    pub policy: Policy,
    pub linker: Linker<CallState>,
    pub cache: Option<ArtifactCache>,
    pub require_pins: bool,
    stop: Arc<AtomicBool>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Loads plugins and owns the engine they run on.
#[derive(Clone)]
pub struct PluginHost {
    pub(crate) shared: Arc<Shared>,
}

fn engine(limits: &Limits) -> wasmtime::Result<Engine> {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.wasm_component_model_async(true);
    config.epoch_interruption(true);
    config.parallel_compilation(true);
    if limits.pooling {
        let mut pool = PoolingAllocationConfig::default();
        let n = limits.max_concurrent_instances;
        pool.total_component_instances(n)
            .total_core_instances(n * 16)
            .total_memories(n * 4)
            .total_tables(n * 4)
            .max_memories_per_component(limits.pool_memories_per_component)
            .max_tables_per_component(limits.pool_tables_per_component)
            .max_core_instances_per_component(limits.pool_core_instances_per_component)
            .max_memory_size(limits.max_memory_override.max(limits.memory_bytes))
            .table_elements(limits.table_elements)
            // Reusing a slot's first pages with memset beats madvise plus a
            // page fault per page on every fresh instance.
            .linear_memory_keep_resident(limits.keep_resident_bytes)
            .table_keep_resident(limits.keep_resident_bytes);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    Engine::new(&config)
}

impl PluginHost {
    /// Build the engine, start the epoch ticker and link the log import.
    pub fn new(config: HostConfig) -> anyhow::Result<Self> {
        let engine = engine(&config.limits).map_err(|e| anyhow::anyhow!("{e:#}"))?;
        let mut linker = Linker::new(&engine);
        // One log import per contract version: each is a distinct interface to the component model.
        v0_1_0::preset::kaito::plugin::log::add_to_linker::<CallState, HasSelf<CallState>>(&mut linker, |s| s)
            .map_err(|e| anyhow::anyhow!("{e:#}"))?;
        v0_2_0::preset::kaito::plugin::log::add_to_linker::<CallState, HasSelf<CallState>>(&mut linker, |s| s)
            .map_err(|e| anyhow::anyhow!("{e:#}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (engine, stop, tick) = (engine.clone(), stop.clone(), config.limits.epoch_tick);
            std::thread::Builder::new().name("kaito-plugin-epoch".into()).spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    engine.increment_epoch();
                }
            })?;
        }
        let cache = config.cache_dir.as_ref().map(|d| ArtifactCache::new(d, &engine));
        Ok(PluginHost {
            shared: Arc::new(Shared {
                engine,
                limits: config.limits,
                policy: config.policy,
                linker,
                cache,
                require_pins: config.require_pins,
                stop,
            }),
        })
    }

    /// The limits every call runs under.
    pub fn limits(&self) -> &Limits {
        &self.shared.limits
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.shared.engine
    }

    /// Compile (or fetch from cache) a component from bytes.
    pub fn compile(&self, file: &Path, bytes: &[u8], digest: &str) -> Result<(Component, CacheOutcome), LoadError> {
        let compiled = match &self.shared.cache {
            Some(cache) => cache.load_or_compile(&self.shared.engine, bytes, digest),
            None => Component::new(&self.shared.engine, bytes)
                .map(|c| (c, CacheOutcome::Uncached))
                .map_err(|e| anyhow::anyhow!("{e:#}")),
        };
        compiled.map_err(|e| LoadError::Compile { file: file.to_path_buf(), detail: format!("{e:#}") })
    }

    /// Load one plugin file, checking it against an optional sha256 pin.
    pub fn load_file(
        &self,
        file: &Path,
        entry: Option<&crate::registry::ManifestEntry>,
    ) -> Result<Arc<Plugin>, LoadError> {
        let io = |source| LoadError::Io { file: file.to_path_buf(), source };
        let size = std::fs::metadata(file).map_err(io)?.len();
        let max = self.shared.limits.max_component_bytes;
        if size > max {
            return Err(LoadError::TooLarge { file: file.to_path_buf(), size, max });
        }
        let bytes = std::fs::read(file).map_err(io)?;
        let digest = hex::encode(Sha256::digest(&bytes));
        match entry.and_then(|e| e.sha256.as_deref()) {
            Some(pin) if !pin.eq_ignore_ascii_case(&digest) => {
                return Err(LoadError::DigestMismatch {
                    file: file.to_path_buf(),
                    expected: pin.to_string(),
                    actual: digest,
                });
            }
            None if self.shared.require_pins => return Err(LoadError::Unpinned { file: file.to_path_buf() }),
            _ => {}
        }
        let (component, outcome) = self.compile(file, &bytes, &digest)?;
        Plugin::new(self.shared.clone(), file, digest, component, outcome, entry)
    }

    /// Load every `.wasm` in `dirs` (sorted by name), honouring each dir's `plugins.yaml`.
    /// Files that fail to load are reported in the registry, not fatal.
    pub fn load_dirs(&self, dirs: &[PathBuf]) -> Registry {
        let mut registry = Registry::default();
        for dir in dirs {
            let manifest = match Manifest::read_dir(dir) {
                Ok(m) => m,
                Err(e) => {
                    registry.failures.push(LoadFailure { file: dir.join(Manifest::FILE), error: e.to_string() });
                    continue;
                }
            };
            let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
                Ok(rd) => rd
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "wasm"))
                    .collect(),
                Err(e) => {
                    registry
                        .failures
                        .push(LoadFailure { file: dir.clone(), error: format!("cannot read plugin directory: {e}") });
                    continue;
                }
            };
            files.sort();
            for file in files {
                let name = file.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                match self.load_file(&file, manifest.entry(name)) {
                    Ok(p) => registry.add(p),
                    Err(e) => {
                        tracing::warn!(error = %e, "plugin not loaded");
                        registry.failures.push(LoadFailure { file, error: e.to_string() });
                    }
                }
            }
        }
        registry
    }
}
