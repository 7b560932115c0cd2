//! Plugin hot reload: the operator looks at its plugin sources (directories and `oci://` references) while it runs;
//! when they change it loads the new set beside the old, runs the conformance suite on every plugin it has not
//! seen (by digest), and swaps the set in one step. A reconcile in flight keeps the set it started with (it holds an
//! `Arc`); a new plugin that fails to load or fails conformance is refused, counted and logged, and the plugin it
//! would have replaced keeps serving.

use crate::context::Context;
use kaito_plugin_host::{Plugin, PluginHost, Registry, conformance};
use kaito_workload::plugin_args::{PluginArgs, PluginSource};
use std::path::PathBuf;
use std::sync::Arc;

/// What one look at the sources did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Plugins new to the set (by name and digest) that now serve.
    pub added: Vec<String>,
    /// Plugins refused, each with why; what they would have replaced keeps serving.
    pub refused: Vec<String>,
}

/// Watches plugin sources and swaps the operator's plugin set.
pub struct Reloader {
    args: PluginArgs,
    host: PluginHost,
    fingerprint: String,
}

impl Reloader {
    /// A reloader for `args`, whose current sources are what `ctx` was started with.
    pub fn new(args: PluginArgs, host: PluginHost) -> Reloader {
        let fingerprint = fingerprint(&args);
        Reloader { args, host, fingerprint }
    }

    /// Looks at the sources once: `None` when they did not change, else what the swap did. Blocking (plugin
    /// compilation and conformance are CPU work): call it from a blocking thread.
    pub fn check(&mut self, ctx: &Context) -> anyhow::Result<Option<Outcome>> {
        let now = fingerprint(&self.args);
        if now == self.fingerprint {
            return Ok(None);
        }
        let mut log = Vec::new();
        let loaded = self.args.registry(&self.host, &mut log)?;
        let old = ctx.registry();
        let mut outcome = Outcome::default();
        let mut next = Registry::default();
        let mut keep: Vec<Arc<Plugin>> = Vec::new();
        for failure in &loaded.failures {
            outcome.refused.push(format!("{}: {}", failure.file.display(), failure.error));
            // The file's previous contents keep serving.
            keep.extend(old.plugins.iter().filter(|p| p.file() == failure.file).cloned());
        }
        for plugin in &loaded.plugins {
            let known = old.plugins.iter().any(|p| p.digest() == plugin.digest());
            if !known {
                let report = conformance::run(&self.host, plugin.file());
                if !report.passed() {
                    let why: Vec<String> =
                        report.failures().iter().map(|c| format!("{}: {}", c.name, c.detail)).collect();
                    outcome.refused.push(format!(
                        "{} ({}): {}",
                        plugin.name(),
                        plugin.file().display(),
                        why.join("; ")
                    ));
                    // What it would replace: the same file's previous build, or a plugin of the same name and kind.
                    keep.extend(
                        old.plugins
                            .iter()
                            .filter(|p| {
                                p.file() == plugin.file() || (p.name() == plugin.name() && p.kind() == plugin.kind())
                            })
                            .cloned(),
                    );
                    continue;
                }
                outcome.added.push(format!("{} sha256:{}", plugin.name(), plugin.digest()));
            }
            next.add(plugin.clone());
        }
        for plugin in keep {
            if !next.plugins.iter().any(|p| p.name() == plugin.name() && p.kind() == plugin.kind()) {
                next.add(plugin);
            }
        }
        self.fingerprint = now;
        for line in String::from_utf8_lossy(&log).lines() {
            tracing::warn!(line, "plugin reload");
        }
        ctx.metrics.plugin_reload(outcome.refused.is_empty());
        for refused in &outcome.refused {
            tracing::warn!(plugin = %refused, "plugin refused by the reload; the one it would replace keeps serving");
        }
        ctx.swap_registry(Arc::new(next));
        tracing::info!(added = ?outcome.added, refused = outcome.refused.len(), "plugin set swapped");
        Ok(Some(outcome))
    }
}

/// What the sources hold, cheaply: each directory's entries with size and modification time, and the references.
fn fingerprint(args: &PluginArgs) -> String {
    let mut out = String::new();
    for source in args.sources() {
        match source {
            PluginSource::Oci(reference) => out.push_str(&format!("oci {reference}\n")),
            PluginSource::Dir(dir) => {
                let mut entries: Vec<(PathBuf, u64, u128)> = std::fs::read_dir(&dir)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter_map(|e| {
                        // Through symlinks, as a mounted ConfigMap swaps its files.
                        let meta = std::fs::metadata(e.path()).ok()?;
                        let mtime = meta.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?.as_nanos();
                        Some((e.path(), meta.len(), mtime))
                    })
                    .collect();
                entries.sort();
                for (path, len, mtime) in entries {
                    out.push_str(&format!("{} {len} {mtime}\n", path.display()));
                }
            }
        }
    }
    out
}
