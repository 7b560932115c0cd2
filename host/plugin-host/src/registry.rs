//! The set of loaded plugins, and name resolution over it.

use crate::plugin::{Plugin, PluginKind};
use crate::wit::latest::ModelInfo;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Optional `plugins.yaml` in a plugin directory: pins and per-plugin limits.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Manifest {
    #[serde(default)]
    pub plugins: Vec<ManifestEntry>,
}

/// One file's entry in a [`Manifest`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ManifestEntry {
    /// File name inside the directory.
    pub file: String,
    /// Expected sha256 of the file, hex.
    pub sha256: Option<String>,
    /// Memory cap for this plugin, MiB (bounded by the host's maximum override).
    pub memory_mib: Option<u64>,
    /// Deadline per call for this plugin, ms (at most 10 s).
    pub deadline_ms: Option<u64>,
}

impl Manifest {
    /// File name of the manifest inside a plugin directory.
    pub const FILE: &'static str = "plugins.yaml";

    /// Read `dir/plugins.yaml`; a missing file is an empty manifest.
    pub fn read_dir(dir: &Path) -> Result<Manifest, String> {
        let path = dir.join(Self::FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Manifest::default()),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// The entry for a file name.
    pub fn entry(&self, file: &str) -> Option<&ManifestEntry> {
        self.plugins.iter().find(|e| e.file == file)
    }
}

/// A file that did not load, and why.
#[derive(Debug, Clone)]
pub struct LoadFailure {
    pub file: PathBuf,
    pub error: String,
}

/// Why a name did not resolve to a usable plugin.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ResolveError {
    #[error("inference.preset.name: no preset plugin provides a model named {query:?} (fix: use one of the closest names: {})", nearest.join(", "))]
    UnknownModel { query: String, nearest: Vec<String> },
    #[error("no provisioner plugin named {name:?} is loaded (fix: use one of: {})", available.join(", "))]
    UnknownProvisioner { name: String, available: Vec<String> },
    #[error("plugin {plugin}, which provides {what}, is quarantined: {reason}")]
    Quarantined { plugin: String, what: String, reason: String },
}

impl ResolveError {
    /// Short reason, usable as a condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            ResolveError::UnknownModel { .. } => "UnknownPreset",
            ResolveError::UnknownProvisioner { .. } => "UnknownProvisioner",
            ResolveError::Quarantined { .. } => "PluginQuarantined",
        }
    }
}

/// Loaded plugins plus the files that failed to load.
#[derive(Debug, Default)]
pub struct Registry {
    pub plugins: Vec<Arc<Plugin>>,
    pub failures: Vec<LoadFailure>,
}

/// Up to `n` candidates closest to `query`: names containing it first, then
/// by case-insensitive edit distance.
pub fn nearest(query: &str, candidates: impl IntoIterator<Item = String>, n: usize) -> Vec<String> {
    let q = query.to_lowercase();
    let mut scored: Vec<((bool, usize), String)> = candidates
        .into_iter()
        .map(|c| {
            let l = c.to_lowercase();
            ((!l.contains(&q), strsim::levenshtein(&q, &l)), c)
        })
        .collect();
    scored.sort();
    scored.dedup_by(|a, b| a.1 == b.1);
    scored.into_iter().take(n).map(|(_, c)| c).collect()
}

fn names_of(m: &ModelInfo) -> impl Iterator<Item = &str> {
    std::iter::once(m.name.as_str())
        .chain(m.aliases.iter().map(String::as_str))
        .chain(std::iter::once(m.hf_id.as_str()))
}

impl Registry {
    /// Add a plugin; a model or plugin name already provided by an earlier
    /// plugin keeps resolving to the earlier one, with a warning.
    pub fn add(&mut self, plugin: Arc<Plugin>) {
        if let Some(other) = self.plugins.iter().find(|p| p.name() == plugin.name() && p.kind() == plugin.kind()) {
            tracing::warn!(plugin = plugin.name(), first = %other.file().display(), second = %plugin.file().display(), "two plugins share a name; the first wins");
        }
        for model in plugin.models() {
            for name in names_of(model) {
                if let Some((other, _)) = self.find_model_any(name) {
                    tracing::warn!(
                        model = name,
                        first = other.name(),
                        second = plugin.name(),
                        "model provided twice; the first plugin wins"
                    );
                }
            }
        }
        self.plugins.push(plugin);
    }

    /// Plugins of one kind, in load order.
    pub fn of_kind(&self, kind: PluginKind) -> impl Iterator<Item = &Arc<Plugin>> {
        self.plugins.iter().filter(move |p| p.kind() == kind)
    }

    fn find_model_any(&self, query: &str) -> Option<(&Arc<Plugin>, &ModelInfo)> {
        let q = query.trim().to_lowercase();
        self.of_kind(PluginKind::Preset)
            .find_map(|p| p.models().iter().find(|m| names_of(m).any(|n| n.to_lowercase() == q)).map(|m| (p, m)))
    }

    /// Every model name and alias offered, for suggestions.
    pub fn model_names(&self) -> Vec<String> {
        self.of_kind(PluginKind::Preset)
            .flat_map(|p| p.models().iter().flat_map(|m| names_of(m).map(str::to_string).collect::<Vec<_>>()))
            .collect()
    }

    /// The preset plugin and model a Workspace's `inference.preset.name` names.
    pub fn find_model(&self, query: &str) -> Result<(Arc<Plugin>, ModelInfo), ResolveError> {
        match self.find_model_any(query) {
            Some((p, m)) => match p.quarantined() {
                Some(reason) => Err(ResolveError::Quarantined {
                    plugin: p.name().into(),
                    what: format!("model {}", m.name),
                    reason,
                }),
                None => Ok((p.clone(), m.clone())),
            },
            None => Err(ResolveError::UnknownModel {
                query: query.to_string(),
                nearest: nearest(query, self.model_names(), 3),
            }),
        }
    }

    /// The healthy preset plugins to ask, in order, to plan a model no catalog lists: those with a model of its
    /// architecture first (they know the family's runtime needs), then the rest (every preset built on the SDK plans
    /// any architecture on vLLM, as KAITO does).
    pub fn presets_for_architecture(&self, architecture: &str) -> Vec<Arc<Plugin>> {
        let (mut knowing, rest): (Vec<_>, Vec<_>) = self
            .of_kind(PluginKind::Preset)
            .filter(|p| p.quarantined().is_none())
            .cloned()
            .partition(|p| p.models().iter().any(|m| m.architecture == architecture));
        knowing.extend(rest);
        knowing
    }

    /// The provisioner plugin called `name`.
    pub fn provisioner(&self, name: &str) -> Result<Arc<Plugin>, ResolveError> {
        let found = self.of_kind(PluginKind::Provisioner).find(|p| p.name() == name);
        match found {
            Some(p) => match p.quarantined() {
                Some(reason) => {
                    Err(ResolveError::Quarantined { plugin: p.name().into(), what: "node provisioning".into(), reason })
                }
                None => Ok(p.clone()),
            },
            None => Err(ResolveError::UnknownProvisioner {
                name: name.to_string(),
                available: self.of_kind(PluginKind::Provisioner).map(|p| p.name().to_string()).collect(),
            }),
        }
    }
}
