//! Where plugins come from and the limits they run under, as command-line options: shared by `kaito` and
//! `kaito-operator`, so the operator does not depend on the CLI.

use clap::Args;
use kaito_plugin_host::{HostConfig, Limits, PluginHost, Policy, Registry};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where plugins come from and the limits they run under.
#[derive(Debug, Clone, Args)]
pub struct PluginArgs {
    /// Plugin directory (repeatable). Default: $KAITO_PLUGIN_DIRS (':'-separated), else the repository's built plugins.
    #[arg(long = "plugins", value_name = "DIR")]
    pub dirs: Vec<PathBuf>,
    /// Directory for precompiled plugins (default: $KAITO_PLUGIN_CACHE or ~/.cache/kaito/plugins).
    #[arg(long, value_name = "DIR")]
    pub plugin_cache: Option<PathBuf>,
    /// Compile plugins on every start instead of caching them.
    #[arg(long)]
    pub no_plugin_cache: bool,
    /// Deadline of one plugin call, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub plugin_deadline_ms: u64,
    /// Memory cap of one plugin instance, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 64)]
    pub plugin_memory_mib: usize,
    /// Refuse plugins that no plugins.yaml pins by sha256.
    #[arg(long)]
    pub require_pins: bool,
    /// Node path workloads may mount with hostPath (repeatable; none by default).
    #[arg(long, value_name = "PATH")]
    pub allow_host_path: Vec<String>,
}

/// Plugin directories used when none are given.
pub fn default_plugin_dirs() -> Vec<PathBuf> {
    if let Some(v) = std::env::var_os("KAITO_PLUGIN_DIRS") {
        return std::env::split_paths(&v).filter(|p| !p.as_os_str().is_empty()).collect();
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    vec![repo.join("presets-wasm/dist"), repo.join("plugins/dist")]
}

impl PluginArgs {
    /// The host these options describe.
    pub fn host(&self) -> anyhow::Result<PluginHost> {
        let limits = Limits {
            deadline: Duration::from_millis(self.plugin_deadline_ms),
            memory_bytes: self.plugin_memory_mib << 20,
            ..Limits::default()
        };
        let cache_dir = if self.no_plugin_cache {
            None
        } else {
            self.plugin_cache.clone().or_else(kaito_plugin_host::ArtifactCache::default_dir)
        };
        PluginHost::new(HostConfig {
            limits,
            policy: Policy { allowed_host_paths: self.allow_host_path.clone() },
            cache_dir,
            require_pins: self.require_pins,
        })
    }

    /// Load the plugin directories, reporting files that failed on `err`.
    pub fn registry(&self, host: &PluginHost, err: &mut dyn Write) -> anyhow::Result<Registry> {
        let dirs = if self.dirs.is_empty() { default_plugin_dirs() } else { self.dirs.clone() };
        let present: Vec<PathBuf> = dirs.iter().filter(|d| d.is_dir()).cloned().collect();
        if present.is_empty() {
            anyhow::bail!(
                "no plugin directory found (looked in {}); build the plugins with `cargo xtask plugins`, or pass --plugins DIR",
                dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
            );
        }
        let registry = host.load_dirs(&present);
        for f in &registry.failures {
            writeln!(err, "kaito: warning: plugin {} not loaded: {}", f.file.display(), f.error)?;
        }
        for p in &registry.plugins {
            if let Some(reason) = p.quarantined() {
                writeln!(err, "kaito: warning: plugin {} is quarantined: {reason}", p.name())?;
            }
        }
        Ok(registry)
    }
}
