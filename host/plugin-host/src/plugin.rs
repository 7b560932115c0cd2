//! One loaded plugin: its `InstancePre`, its metadata and its health.

use crate::cache::CacheOutcome;
use crate::error::{CallError, Fault, LoadError};
use crate::host::Shared;
use crate::registry::ManifestEntry;
use crate::validate;
use crate::wit::latest::*;
use crate::wit::{compat_v0_1_0 as compat, v0_1_0, v0_2_0};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use wasmtime::component::Component;
use wasmtime::{ResourceLimiter, Store, Trap};

/// Per-call store data: the limiter and the log budget.
pub(crate) struct CallState {
    plugin: Arc<str>,
    limiter: Limiter,
    log_lines_left: u32,
    log_line_bytes: usize,
}

struct Limiter {
    memory_cap: usize,
    table_cap: usize,
    memory_denied: bool,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.memory_cap {
            // An error (not `Ok(false)`) traps at once, so a hog cannot keep
            // retrying smaller growths; the flag tells the trap apart.
            self.memory_denied = true;
            wasmtime::bail!("memory growth to {desired} bytes is over the {} byte cap", self.memory_cap);
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= self.table_cap)
    }
}

impl v0_1_0::preset::kaito::plugin::log::Host for CallState {
    fn emit(&mut self, level: v0_1_0::preset::kaito::plugin::log::Level, message: String) {
        use v0_1_0::preset::kaito::plugin::log::Level as Old;
        let level = match level {
            Old::Debug => Level::Debug,
            Old::Info => Level::Info,
            Old::Warn => Level::Warn,
            Old::Error => Level::Error,
        };
        v0_2_0::preset::kaito::plugin::log::Host::emit(self, level, message)
    }
}

impl v0_2_0::preset::kaito::plugin::log::Host for CallState {
    fn emit(&mut self, level: Level, message: String) {
        if self.log_lines_left == 0 {
            return;
        }
        self.log_lines_left -= 1;
        let mut message = message;
        if message.len() > self.log_line_bytes {
            let mut cut = self.log_line_bytes;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        let plugin = &*self.plugin;
        match level {
            Level::Debug => tracing::debug!(plugin, "{message}"),
            Level::Info => tracing::info!(plugin, "{message}"),
            Level::Warn => tracing::warn!(plugin, "{message}"),
            Level::Error => tracing::error!(plugin, "{message}"),
        }
    }
}

/// Which contract a plugin implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginKind {
    Preset,
    Provisioner,
}

impl PluginKind {
    /// Lowercase name for listings.
    pub fn as_str(self) -> &'static str {
        match self {
            PluginKind::Preset => "preset",
            PluginKind::Provisioner => "provisioner",
        }
    }
}

/// Pre-linked component, by contract version and kind.
enum Pre {
    PresetV0_1_0(v0_1_0::preset::PresetPre<CallState>),
    ProvisionerV0_1_0(v0_1_0::provisioner::ProvisionerPre<CallState>),
    PresetV0_2_0(v0_2_0::preset::PresetPre<CallState>),
    ProvisionerV0_2_0(v0_2_0::provisioner::ProvisionerPre<CallState>),
}

/// What a plugin said about itself when it was loaded.
#[derive(Debug, Clone)]
pub enum Metadata {
    Preset { info: PluginInfo, models: Vec<ModelInfo> },
    Provisioner { info: ProvisionerInfo, instance_types: Vec<InstanceType> },
}

/// A loaded plugin.
pub struct Plugin {
    shared: Arc<Shared>,
    file: PathBuf,
    digest: String,
    contract: &'static str,
    kind: PluginKind,
    cache: CacheOutcome,
    pre: Pre,
    memory_bytes: usize,
    deadline: Duration,
    label: Arc<str>,
    metadata: OnceLock<Metadata>,
    quarantine: Mutex<Option<String>>,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.name())
            .field("file", &self.file)
            .field("kind", &self.kind)
            .finish()
    }
}

fn short(s: String, max: usize) -> String {
    if s.len() <= max {
        return s;
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &s[..cut])
}

impl Plugin {
    pub(crate) fn new(
        shared: Arc<Shared>,
        file: &Path,
        digest: String,
        component: Component,
        cache: CacheOutcome,
        entry: Option<&ManifestEntry>,
    ) -> Result<Arc<Plugin>, LoadError> {
        let engine = &shared.engine;
        let ty = component.component_type();
        let exports: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_string()).collect();
        let imports: Vec<String> = ty.imports(engine).map(|(n, _)| n.to_string()).collect();
        let allowed = [v0_2_0::LOG_IMPORT, v0_2_0::TYPES_IMPORT, v0_1_0::LOG_IMPORT, v0_1_0::TYPES_IMPORT];
        let denied: Vec<&String> = imports.iter().filter(|i| !allowed.contains(&i.as_str())).collect();
        if !denied.is_empty() {
            return Err(LoadError::Imports {
                file: file.to_path_buf(),
                imports: denied.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "),
                allowed: allowed.join(", "),
            });
        }
        let instantiate_err =
            |e: wasmtime::Error| LoadError::Instantiate { file: file.to_path_buf(), detail: format!("{e:#}") };
        let has = |name: &str| exports.iter().any(|e| e == name);
        // The contract version is read off the component's exports before anything is instantiated.
        let pre_of = || shared.linker.instantiate_pre(&component).map_err(instantiate_err);
        let (kind, contract, pre) = if has(v0_2_0::PRESET_EXPORT) {
            let pre = v0_2_0::preset::PresetPre::new(pre_of()?).map_err(instantiate_err)?;
            (PluginKind::Preset, v0_2_0::VERSION, Pre::PresetV0_2_0(pre))
        } else if has(v0_2_0::PROVISIONER_EXPORT) {
            let pre = v0_2_0::provisioner::ProvisionerPre::new(pre_of()?).map_err(instantiate_err)?;
            (PluginKind::Provisioner, v0_2_0::VERSION, Pre::ProvisionerV0_2_0(pre))
        } else if has(v0_1_0::PRESET_EXPORT) {
            let pre = v0_1_0::preset::PresetPre::new(pre_of()?).map_err(instantiate_err)?;
            (PluginKind::Preset, v0_1_0::VERSION, Pre::PresetV0_1_0(pre))
        } else if has(v0_1_0::PROVISIONER_EXPORT) {
            let pre = v0_1_0::provisioner::ProvisionerPre::new(pre_of()?).map_err(instantiate_err)?;
            (PluginKind::Provisioner, v0_1_0::VERSION, Pre::ProvisionerV0_1_0(pre))
        } else {
            return Err(LoadError::NoContract {
                file: file.to_path_buf(),
                exports: if exports.is_empty() { "nothing".into() } else { exports.join(", ") },
                expected: [
                    v0_2_0::PRESET_EXPORT,
                    v0_2_0::PROVISIONER_EXPORT,
                    v0_1_0::PRESET_EXPORT,
                    v0_1_0::PROVISIONER_EXPORT,
                ]
                .join(" or "),
            });
        };
        let limits = &shared.limits;
        let memory_bytes = entry
            .and_then(|e| e.memory_mib)
            .map(|m| ((m as usize) << 20).min(limits.max_memory_override))
            .unwrap_or(limits.memory_bytes);
        let deadline = entry
            .and_then(|e| e.deadline_ms)
            .map(Duration::from_millis)
            .map(|d| d.min(Duration::from_secs(10)))
            .unwrap_or(limits.deadline);
        let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or("plugin").to_string();
        let mut plugin = Plugin {
            shared: shared.clone(),
            file: file.to_path_buf(),
            digest,
            contract,
            kind,
            cache,
            pre,
            memory_bytes,
            deadline,
            label: Arc::from(stem.as_str()),
            metadata: OnceLock::new(),
            quarantine: Mutex::new(None),
        };
        // Metadata failures quarantine the plugin but still list it, so the
        // user sees why its models are missing.
        if let Ok(meta) = plugin.read_metadata() {
            let name = match &meta {
                Metadata::Preset { info, .. } => info.name.clone(),
                Metadata::Provisioner { info, .. } => info.plugin.name.clone(),
            };
            plugin.label = Arc::from(name.as_str());
            let _ = plugin.metadata.set(meta);
        }
        Ok(Arc::new(plugin))
    }

    fn read_metadata(&self) -> Result<Metadata, CallError> {
        let invalid = |e: String| self.fault(Fault::InvalidOutput(e));
        match &self.pre {
            Pre::PresetV0_1_0(pre) => {
                let (info, models) = self.call(|store| {
                    let api = pre.instantiate(&mut *store)?;
                    let api = api.kaito_plugin_preset_api();
                    Ok((api.call_info(&mut *store)?, api.call_models(&mut *store)?))
                })?;
                let (info, models) = (compat::same(&info).map_err(invalid)?, compat::same(&models).map_err(invalid)?);
                self.preset_metadata(info, models)
            }
            Pre::PresetV0_2_0(pre) => {
                let (info, models) = self.call(|store| {
                    let api = pre.instantiate(&mut *store)?;
                    let api = api.kaito_plugin_preset_api();
                    Ok((api.call_info(&mut *store)?, api.call_models(&mut *store)?))
                })?;
                self.preset_metadata(info, models)
            }
            Pre::ProvisionerV0_1_0(pre) => {
                let (info, types) = self.call(|store| {
                    let api = pre.instantiate(&mut *store)?;
                    let api = api.kaito_plugin_provisioner_api();
                    Ok((api.call_info(&mut *store)?, api.call_instance_types(&mut *store)?))
                })?;
                let (info, types) = (compat::same(&info).map_err(invalid)?, compat::same(&types).map_err(invalid)?);
                self.provisioner_metadata(info, types)
            }
            Pre::ProvisionerV0_2_0(pre) => {
                let (info, types) = self.call(|store| {
                    let api = pre.instantiate(&mut *store)?;
                    let api = api.kaito_plugin_provisioner_api();
                    Ok((api.call_info(&mut *store)?, api.call_instance_types(&mut *store)?))
                })?;
                self.provisioner_metadata(info, types)
            }
        }
    }

    fn preset_metadata(&self, info: PluginInfo, models: Vec<ModelInfo>) -> Result<Metadata, CallError> {
        let limits = &self.shared.limits;
        validate::plugin_info(&info, limits)
            .and_then(|_| validate::models(&models, limits))
            .map_err(|e| self.fault(Fault::InvalidOutput(e)))?;
        Ok(Metadata::Preset { info, models })
    }

    fn provisioner_metadata(
        &self,
        info: ProvisionerInfo,
        instance_types: Vec<InstanceType>,
    ) -> Result<Metadata, CallError> {
        let limits = &self.shared.limits;
        validate::plugin_info(&info.plugin, limits)
            .and_then(|_| validate::instance_types(&instance_types, limits))
            .map_err(|e| self.fault(Fault::InvalidOutput(e)))?;
        Ok(Metadata::Provisioner { info, instance_types })
    }

    /// Plugin name (from its metadata; the file stem if that failed).
    pub fn name(&self) -> &str {
        &self.label
    }

    /// File the plugin was loaded from.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// sha256 of the component file.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Contract version it implements.
    pub fn contract(&self) -> &'static str {
        self.contract
    }

    /// Preset or provisioner.
    pub fn kind(&self) -> PluginKind {
        self.kind
    }

    /// Whether the artifact cache served this plugin.
    pub fn cache_outcome(&self) -> CacheOutcome {
        self.cache
    }

    /// Metadata read at load time; `None` if the plugin failed while giving it.
    pub fn metadata(&self) -> Option<&Metadata> {
        self.metadata.get()
    }

    /// Name, version and description, for plugins whose metadata loaded.
    pub fn info(&self) -> Option<&PluginInfo> {
        match self.metadata.get()? {
            Metadata::Preset { info, .. } => Some(info),
            Metadata::Provisioner { info, .. } => Some(&info.plugin),
        }
    }

    /// Models of a preset plugin.
    pub fn models(&self) -> &[ModelInfo] {
        match self.metadata.get() {
            Some(Metadata::Preset { models, .. }) => models,
            _ => &[],
        }
    }

    /// Instance types of a provisioner plugin.
    pub fn instance_types(&self) -> &[InstanceType] {
        match self.metadata.get() {
            Some(Metadata::Provisioner { instance_types, .. }) => instance_types,
            _ => &[],
        }
    }

    /// Provisioner facts, for provisioner plugins that loaded cleanly.
    pub fn provisioner_info(&self) -> Option<&ProvisionerInfo> {
        match self.metadata.get() {
            Some(Metadata::Provisioner { info, .. }) => Some(info),
            _ => None,
        }
    }

    /// Instance type by name, ignoring case.
    pub fn instance_type(&self, name: &str) -> Option<&InstanceType> {
        self.instance_types().iter().find(|t| t.name.eq_ignore_ascii_case(name))
    }

    /// Why the plugin is quarantined, if it is.
    pub fn quarantined(&self) -> Option<String> {
        self.quarantine.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Quarantine the plugin for `fault` and return the matching call error.
    fn fault(&self, fault: Fault) -> CallError {
        tracing::error!(plugin = %self.name(), file = %self.file.display(), %fault, "plugin quarantined");
        let mut q = self.quarantine.lock().unwrap_or_else(|p| p.into_inner());
        q.get_or_insert_with(|| fault.to_string());
        CallError::Fault { plugin: self.name().to_string(), fault }
    }

    /// Run `f` in a fresh store under the plugin's limits, turning any
    /// failure into a quarantine.
    fn call<R>(&self, f: impl FnOnce(&mut Store<CallState>) -> wasmtime::Result<R>) -> Result<R, CallError> {
        if let Some(reason) = self.quarantined() {
            return Err(CallError::Quarantined { plugin: self.name().to_string(), reason });
        }
        let limits = &self.shared.limits;
        let state = CallState {
            plugin: self.label.clone(),
            limiter: Limiter { memory_cap: self.memory_bytes, table_cap: limits.table_elements, memory_denied: false },
            log_lines_left: limits.log_lines_per_call,
            log_line_bytes: limits.log_line_bytes,
        };
        let mut store = Store::new(&self.shared.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.set_epoch_deadline(limits.deadline_ticks(self.deadline));
        store.epoch_deadline_trap();
        match f(&mut store) {
            Ok(r) => Ok(r),
            Err(e) if e.downcast_ref::<wasmtime::PoolConcurrencyLimitError>().is_some() => {
                Err(CallError::Busy { plugin: self.name().to_string() })
            }
            Err(e) => {
                let fault = if store.data().limiter.memory_denied {
                    Fault::OutOfMemory(self.memory_bytes)
                } else if matches!(e.downcast_ref::<Trap>(), Some(Trap::Interrupt)) {
                    Fault::Timeout(self.deadline)
                } else {
                    Fault::Trap(short(format!("{e:#}"), 512))
                };
                Err(self.fault(fault))
            }
        }
    }

    /// A request converted for an older contract; failing is the host's bug, never the plugin's, so it is not a fault.
    fn down<T>(&self, converted: Result<T, String>) -> Result<T, CallError> {
        converted.map_err(|detail| CallError::InvalidInput { plugin: self.name().to_string(), detail })
    }

    /// An older contract's answer in `latest` terms, its value through `convert` (its error keeps its shape); one that
    /// does not convert is the plugin's invalid output.
    fn up<T, E: serde::Serialize, U, F: serde::de::DeserializeOwned>(
        &self,
        answer: Result<T, E>,
        convert: impl FnOnce(&T) -> Result<U, String>,
    ) -> Result<Result<U, F>, CallError> {
        let invalid = |e: String| self.fault(Fault::InvalidOutput(e));
        Ok(match answer {
            Ok(v) => Ok(convert(&v).map_err(invalid)?),
            Err(e) => Err(compat::same(&e).map_err(invalid)?),
        })
    }

    fn wrong_kind(&self, want: PluginKind) -> CallError {
        CallError::WrongKind { plugin: self.name().to_string(), actual: self.kind.as_str(), wanted: want.as_str() }
    }

    fn typed_error(&self, error: PluginError) -> CallError {
        match validate::plugin_error(&error, &self.shared.limits) {
            Ok(()) => CallError::Plugin { plugin: self.name().to_string(), error },
            Err(e) => self.fault(Fault::InvalidOutput(e)),
        }
    }

    /// Instantiate in a fresh store without calling an export (health checks, benchmarks).
    pub fn instantiate_check(&self) -> Result<(), CallError> {
        match &self.pre {
            Pre::PresetV0_1_0(pre) => self.call(|store| pre.instantiate(&mut *store).map(drop)),
            Pre::ProvisionerV0_1_0(pre) => self.call(|store| pre.instantiate(&mut *store).map(drop)),
            Pre::PresetV0_2_0(pre) => self.call(|store| pre.instantiate(&mut *store).map(drop)),
            Pre::ProvisionerV0_2_0(pre) => self.call(|store| pre.instantiate(&mut *store).map(drop)),
        }
    }

    /// Ask a preset plugin to size and plan one model.
    pub fn plan(&self, request: &PlanRequest, shape: &GpuShape) -> Result<PresetPlan, CallError> {
        let answer = match &self.pre {
            Pre::PresetV0_2_0(pre) => self.call(|store| {
                pre.instantiate(&mut *store)?.kaito_plugin_preset_api().call_plan(&mut *store, request, shape)
            })?,
            Pre::PresetV0_1_0(pre) => {
                let (request, shape) =
                    (self.down(compat::plan_request(request))?, self.down(compat::gpu_shape(shape))?);
                let answer = self.call(|store| {
                    pre.instantiate(&mut *store)?.kaito_plugin_preset_api().call_plan(&mut *store, &request, &shape)
                })?;
                self.up(answer, compat::same)?
            }
            _ => return Err(self.wrong_kind(PluginKind::Preset)),
        };
        let plan = answer.map_err(|e| self.typed_error(e))?;
        validate::preset_plan(&plan, shape, &self.shared.limits, &self.shared.policy)
            .map_err(|e| self.fault(Fault::InvalidOutput(e)))?;
        Ok(plan)
    }

    /// Ask a preset plugin to plan a fine-tuning Job for one model. Contract 0.1.0 has no tuning plan: its plugins
    /// answer `unsupported`, naming `tuning.preset.name`.
    pub fn tune(&self, request: &TuneRequest, shape: &GpuShape) -> Result<TunePlan, CallError> {
        let answer = match &self.pre {
            Pre::PresetV0_2_0(pre) => self.call(|store| {
                pre.instantiate(&mut *store)?.kaito_plugin_preset_api().call_tune(&mut *store, request, shape)
            })?,
            Pre::PresetV0_1_0(_) => {
                return Err(CallError::Plugin {
                    plugin: self.name().to_string(),
                    error: PluginError {
                        kind: crate::ErrorKind::Unsupported,
                        field: "tuning.preset.name".into(),
                        message: format!(
                            "the {} plugin speaks contract {}, which has no tuning plan",
                            self.name(),
                            self.contract
                        ),
                        hint: Some("load a build of the plugin against contract 0.2.0".into()),
                    },
                });
            }
            _ => return Err(self.wrong_kind(PluginKind::Preset)),
        };
        let plan = answer.map_err(|e| self.typed_error(e))?;
        validate::tune_plan(&plan, shape, &self.shared.limits, &self.shared.policy)
            .map_err(|e| self.fault(Fault::InvalidOutput(e)))?;
        Ok(plan)
    }

    /// Ask a provisioner plugin for the nodes of one Workspace.
    pub fn plan_nodes(&self, request: &NodeRequest) -> Result<NodePlan, CallError> {
        let mode = self.provisioner_info().map(|i| i.mode).ok_or_else(|| self.wrong_kind(PluginKind::Provisioner))?;
        // Output copied from an invalid request would be invalid through no fault of the plugin's.
        validate::node_request(request, &self.shared.limits)
            .map_err(|detail| CallError::InvalidInput { plugin: self.name().to_string(), detail })?;
        let answer = match &self.pre {
            Pre::ProvisionerV0_2_0(pre) => self.call(|store| {
                pre.instantiate(&mut *store)?.kaito_plugin_provisioner_api().call_plan_nodes(&mut *store, request)
            })?,
            Pre::ProvisionerV0_1_0(pre) => {
                let old = self.down(compat::node_request(request))?;
                let answer = self.call(|store| {
                    pre.instantiate(&mut *store)?.kaito_plugin_provisioner_api().call_plan_nodes(&mut *store, &old)
                })?;
                self.up(answer, |plan| compat::node_plan(plan, &request.owner))?
            }
            _ => return Err(self.wrong_kind(PluginKind::Provisioner)),
        };
        let plan = answer.map_err(|e| self.typed_error(e))?;
        validate::node_plan(&plan, request, mode, &self.shared.limits)
            .map_err(|e| self.fault(Fault::InvalidOutput(e)))?;
        Ok(plan)
    }

    /// Ask a provisioner plugin to read a node's GPU shape from its labels.
    pub fn gpu_from_labels(&self, labels: &[KeyValue]) -> Result<NodeGpu, CallError> {
        let answer = match &self.pre {
            Pre::ProvisionerV0_2_0(pre) => self.call(|store| {
                pre.instantiate(&mut *store)?.kaito_plugin_provisioner_api().call_gpu_from_labels(&mut *store, labels)
            })?,
            Pre::ProvisionerV0_1_0(pre) => {
                let old = self.down(compat::key_values(labels))?;
                let answer = self.call(|store| {
                    pre.instantiate(&mut *store)?.kaito_plugin_provisioner_api().call_gpu_from_labels(&mut *store, &old)
                })?;
                self.up(answer, compat::same)?
            }
            _ => return Err(self.wrong_kind(PluginKind::Provisioner)),
        };
        let gpu = answer.map_err(|e| self.typed_error(e))?;
        validate::node_gpu(&gpu, &self.shared.limits).map_err(|e| self.fault(Fault::InvalidOutput(e)))?;
        Ok(gpu)
    }
}
