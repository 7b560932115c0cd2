//! Where plugins come from and the limits they run under, as command-line options: shared by `kaito` and
//! `kaito-operator`, so the operator does not depend on the CLI.

use clap::Args;
use kaito_plugin_host::{HostConfig, Limits, PluginHost, Policy, Registry};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One place plugins come from: a directory of `.wasm` files, or a Wasm artifact in an OCI registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginSource {
    Dir(PathBuf),
    /// `oci://REF`, pinned by digest unless `--allow-unpinned-plugins`.
    Oci(String),
}

impl std::str::FromStr for PluginSource {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.strip_prefix(kaito_oci::SCHEME) {
            Some(reference) => {
                kaito_oci::parse(reference).map_err(|e| e.to_string())?;
                Ok(PluginSource::Oci(reference.to_string()))
            }
            None => Ok(PluginSource::Dir(PathBuf::from(s))),
        }
    }
}

/// How OCI plugin references are fetched.
#[derive(Debug, Clone, Default, Args)]
pub struct RegistryArgs {
    /// Talk to registries over plain HTTP (a local registry without TLS), as `oras --plain-http`.
    #[arg(long)]
    pub plain_http: bool,
    /// Docker config with registry credentials (`{"auths": ...}`; a Secret's .dockerconfigjson).
    #[arg(long, value_name = "FILE", env = "KAITO_REGISTRY_CONFIG")]
    pub registry_config: Option<PathBuf>,
}

impl RegistryArgs {
    /// The OCI client options these flags describe.
    pub fn options(&self) -> kaito_oci::Options {
        kaito_oci::Options {
            plain_http: self.plain_http,
            docker_config: self.registry_config.clone(),
            ..kaito_oci::Options::new()
        }
    }
}

/// Runs `future` to completion on a runtime of its own, on a thread of its own, so that sync callers work inside
/// and outside an async runtime (the operator loads plugins from within its own).
pub fn block_on<T: Send>(future: impl Future<Output = T> + Send) -> anyhow::Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            Ok(runtime.block_on(future))
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the registry client thread panicked"))?
    })
}

/// Where plugins come from and the limits they run under.
#[derive(Debug, Clone, Args)]
pub struct PluginArgs {
    /// Plugin directory or `oci://REGISTRY/REPO@sha256:DIGEST` (repeatable). Default: $KAITO_PLUGIN_DIRS
    /// (':'-separated), else the repository's built plugins.
    #[arg(long = "plugins", value_name = "DIR|oci://REF")]
    pub dirs: Vec<PluginSource>,
    /// Accept `oci://` plugin references without a digest (a tag can move under a running operator).
    #[arg(long)]
    pub allow_unpinned_plugins: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
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
    /// Where plugins come from: the `--plugins` given, else the default directories.
    pub fn sources(&self) -> Vec<PluginSource> {
        if self.dirs.is_empty() {
            default_plugin_dirs().into_iter().map(PluginSource::Dir).collect()
        } else {
            self.dirs.clone()
        }
    }

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

    /// Load the plugin directories and OCI references, reporting files that failed on `err`. An OCI reference that
    /// cannot be pulled is an error: it was named explicitly.
    pub fn registry(&self, host: &PluginHost, err: &mut dyn Write) -> anyhow::Result<Registry> {
        let sources = self.sources();
        let (mut dirs, mut oci) = (Vec::new(), Vec::new());
        for source in &sources {
            match source {
                PluginSource::Dir(d) => dirs.push(d.clone()),
                PluginSource::Oci(r) => oci.push(r.as_str()),
            }
        }
        let present: Vec<PathBuf> = dirs.iter().filter(|d| d.is_dir()).cloned().collect();
        if present.is_empty() && oci.is_empty() {
            anyhow::bail!(
                "no plugin directory found (looked in {}); build the plugins with `cargo xtask plugins`, or pass --plugins DIR",
                dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
            );
        }
        let mut registry = host.load_dirs(&present);
        for (reference, pulled) in oci.iter().zip(self.pull(&oci)?) {
            registry.add(load_pulled(host, reference, &pulled)?);
        }
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

/// Loads a pulled Wasm artifact; the digest was verified against the pinned manifest, so it pins the file as
/// plugins.yaml would.
fn load_pulled(
    host: &PluginHost,
    reference: &str,
    pulled: &kaito_oci::PulledWasm,
) -> anyhow::Result<std::sync::Arc<kaito_plugin_host::Plugin>> {
    let entry = kaito_plugin_host::ManifestEntry {
        file: pulled.path.file_name().unwrap_or_default().to_string_lossy().into_owned(),
        sha256: Some(pulled.digest.trim_start_matches("sha256:").to_string()),
        memory_mib: None,
        deadline_ms: None,
    };
    host.load_file(&pulled.path, Some(&entry)).map_err(|e| anyhow::anyhow!("{reference}: {e}"))
}

impl PluginArgs {
    /// Pulls and loads one `oci://` plugin reference (`reference` without the scheme), under the same pinning rule
    /// as `--plugins`: the operator's ConfigMap of references loads each entry on its own, so one bad entry fails
    /// alone.
    pub fn load_reference(
        &self,
        host: &PluginHost,
        reference: &str,
    ) -> anyhow::Result<std::sync::Arc<kaito_plugin_host::Plugin>> {
        let pulled = self.pull(&[reference])?;
        load_pulled(host, reference, &pulled[0])
    }

    /// Pulls the `oci://` plugin references into the blob cache, refusing unpinned ones unless allowed.
    fn pull(&self, references: &[&str]) -> anyhow::Result<Vec<kaito_oci::PulledWasm>> {
        if references.is_empty() {
            return Ok(vec![]);
        }
        let parsed = references.iter().map(|r| kaito_oci::parse(r)).collect::<Result<Vec<_>, _>>()?;
        for (text, r) in references.iter().zip(&parsed) {
            if r.digest().is_none() && !self.allow_unpinned_plugins {
                return Err(kaito_oci::Error::Unpinned { reference: text.to_string() }.into());
            }
        }
        let oci = kaito_oci::Oci::new(self.registry.options());
        let pulled = block_on(async {
            let mut out = Vec::new();
            for r in &parsed {
                out.push(oci.pull_wasm(r).await?);
            }
            Ok::<_, kaito_oci::Error>(out)
        })??;
        Ok(pulled)
    }
}
