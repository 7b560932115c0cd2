//! Plugin hot reload: the operator looks at its plugin sources (directories and `oci://` references) while it runs;
//! when they change it loads the new set beside the old, runs the conformance suite on every plugin it has not
//! seen (by digest), and swaps the set in one step. A reconcile in flight keeps the set it started with (it holds an
//! `Arc`); a new plugin that fails to load or fails conformance is refused, counted and logged, and the plugin it
//! would have replaced keeps serving.
//!
//! Besides directories and `--plugins oci://` flags, the operator can watch one ConfigMap of OCI references
//! (`--plugin-configmap`, which the chart creates from `plugins.oci`): each data entry is
//! `NAME: oci://REGISTRY/REPO@sha256:DIGEST`. An entry overrides a built-in plugin of the same name and kind, so a
//! preset is upgraded by editing one line; a bad entry (not `oci://`, unpinned, unpullable, failing conformance) is
//! refused on its own and the plugin it loaded before keeps serving.

use crate::context::Context;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference};
use kaito_plugin_host::{Plugin, PluginHost, Registry, conformance};
use kaito_workload::plugin_args::{PluginArgs, PluginSource};
use kube::runtime::{WatchStreamExt, watcher};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The entries of the plugin-reference ConfigMap: name to `oci://` reference.
pub type References = BTreeMap<String, String>;

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
    references: Option<watch::Receiver<Option<References>>>,
    /// The plugin each ConfigMap entry serves, so an entry whose new reference is refused keeps its old plugin.
    by_entry: BTreeMap<String, Arc<Plugin>>,
    /// The set the last swap replaced, held until the next look: whoever drops the last reference frees its
    /// compiled code, and that should be this thread, not a reconcile that happened to finish last.
    retired: Option<Arc<Registry>>,
}

impl Reloader {
    /// A reloader for `args`, whose current sources are what `ctx` was started with, and for the ConfigMap
    /// entries `references` delivers (`None` until the ConfigMap was first read; its entries are not loaded yet).
    pub fn new(
        args: PluginArgs,
        host: PluginHost,
        references: Option<watch::Receiver<Option<References>>>,
    ) -> Reloader {
        let fingerprint = fingerprint(&args, &References::new());
        Reloader { args, host, fingerprint, references, by_entry: BTreeMap::new(), retired: None }
    }

    fn references(&self) -> References {
        self.references.as_ref().and_then(|r| r.borrow().clone()).unwrap_or_default()
    }

    /// Looks at the sources once: `None` when they did not change, else what the swap did. Blocking (plugin
    /// compilation and conformance are CPU work): call it from a blocking thread.
    pub fn check(&mut self, ctx: &Context) -> anyhow::Result<Option<Outcome>> {
        // By now the reconciles that held the retired set have long finished.
        self.retired = None;
        let references = self.references();
        let now = fingerprint(&self.args, &references);
        if now == self.fingerprint {
            return Ok(None);
        }
        let mut log = Vec::new();
        let loaded = self.args.registry(&self.host, &mut log)?;
        let old = ctx.registry();
        let mut outcome = Outcome::default();
        // Candidates in the order they take names: ConfigMap entries first (they override), then the rest.
        let mut candidates: Vec<(Arc<Plugin>, Option<&str>)> = Vec::new();
        // What each refused entry or file would have replaced.
        let mut keep: Vec<(Arc<Plugin>, Option<&str>)> = Vec::new();
        for (entry, value) in &references {
            let loaded = match value.trim().strip_prefix(kaito_oci::SCHEME) {
                None => {
                    Err(anyhow::anyhow!("{value:?} is not a plugin reference; write oci://REGISTRY/REPO@sha256:DIGEST"))
                }
                Some(reference) => self.args.load_reference(&self.host, reference),
            };
            match loaded {
                Ok(plugin) => candidates.push((plugin, Some(entry))),
                Err(e) => {
                    outcome.refused.push(format!("ConfigMap entry {entry}: {e:#}"));
                    keep.extend(self.by_entry.get(entry).map(|p| (p.clone(), Some(entry.as_str()))));
                }
            }
        }
        for failure in &loaded.failures {
            outcome.refused.push(format!("{}: {}", failure.file.display(), failure.error));
            // The file's previous contents keep serving.
            keep.extend(old.plugins.iter().filter(|p| p.file() == failure.file).map(|p| (p.clone(), None)));
        }
        candidates.extend(loaded.plugins.iter().map(|p| (p.clone(), None)));
        let mut accepted: Vec<(Arc<Plugin>, Option<&str>)> = Vec::new();
        for (plugin, entry) in candidates {
            let known = old.plugins.iter().any(|p| p.digest() == plugin.digest());
            if !known {
                let report = conformance::run(&self.host, plugin.file());
                if !report.passed() {
                    let why: Vec<String> =
                        report.failures().iter().map(|c| format!("{}: {}", c.name, c.detail)).collect();
                    let place = match entry {
                        Some(entry) => format!("ConfigMap entry {entry}"),
                        None => plugin.file().display().to_string(),
                    };
                    outcome.refused.push(format!("{} ({place}): {}", plugin.name(), why.join("; ")));
                    // What it would replace: the entry's previous plugin, the same file's previous build, or a
                    // plugin of the same name and kind.
                    match entry.and_then(|e| self.by_entry.get(e)) {
                        Some(previous) => keep.push((previous.clone(), entry)),
                        None => keep.extend(
                            old.plugins
                                .iter()
                                .filter(|p| {
                                    p.file() == plugin.file()
                                        || (p.name() == plugin.name() && p.kind() == plugin.kind())
                                })
                                .map(|p| (p.clone(), None)),
                        ),
                    }
                    continue;
                }
                outcome.added.push(format!("{} sha256:{}", plugin.name(), plugin.digest()));
            }
            accepted.push((plugin, entry));
        }
        // Entries' plugins (accepted or kept) first, then the others; a later plugin of a taken name and kind is
        // overridden, not an error.
        let (entries, others): (Vec<_>, Vec<_>) =
            accepted.into_iter().chain(keep).partition(|(_, entry)| entry.is_some());
        let mut next = Registry::default();
        let mut by_entry = BTreeMap::new();
        for (plugin, entry) in entries.into_iter().chain(others) {
            if next.plugins.iter().any(|p| p.name() == plugin.name() && p.kind() == plugin.kind()) {
                continue;
            }
            if let Some(entry) = entry {
                by_entry.insert(entry.to_string(), plugin.clone());
            }
            next.add(plugin);
        }
        self.by_entry = by_entry;
        self.fingerprint = now;
        for line in String::from_utf8_lossy(&log).lines() {
            tracing::warn!(line, "plugin reload");
        }
        ctx.metrics.plugin_reload(outcome.refused.is_empty());
        for refused in &outcome.refused {
            tracing::warn!(plugin = %refused, "plugin refused by the reload; the one it would replace keeps serving");
        }
        ctx.swap_registry(Arc::new(next));
        self.retired = Some(old);
        tracing::info!(added = ?outcome.added, refused = outcome.refused.len(), "plugin set swapped");
        Ok(Some(outcome))
    }
}

/// Before the controllers start: waits for the first read of the plugin-reference ConfigMap (when there is one)
/// and loads its entries, so they serve from the first reconcile. A refused entry is logged; the rest load.
pub async fn first_load(reloader: Reloader, ctx: &Arc<Context>) -> anyhow::Result<Reloader> {
    let Some(mut references) = reloader.references.clone() else { return Ok(reloader) };
    match tokio::time::timeout(Duration::from_secs(60), references.wait_for(Option::is_some)).await {
        Err(_) => anyhow::bail!("the ConfigMap was not read within a minute"),
        Ok(Err(_)) => anyhow::bail!("its watch ended"),
        Ok(Ok(_)) => {}
    }
    let ctx = ctx.clone();
    let (reloader, outcome) = tokio::task::spawn_blocking(move || {
        let mut reloader = reloader;
        let outcome = reloader.check(&ctx);
        (reloader, outcome)
    })
    .await?;
    for refused in outcome?.map(|o| o.refused).unwrap_or_default() {
        tracing::warn!(%refused, "a plugin reference was refused at start");
    }
    Ok(reloader)
}

/// The reload loop: looks at the directories every `every`, and at once when the ConfigMap's entries change; each
/// refusal is also a Warning Event `PluginRefused` on `events_on` (the operator's pod), where `kubectl get events`
/// shows it.
pub async fn run(mut reloader: Reloader, ctx: Arc<Context>, every: Duration, events_on: ObjectReference) {
    // A receiver of its own to wake on; the reloader reads the entries through its clone.
    let mut references = reloader.references.clone();
    // Loading and conformance are CPU work: on a thread of their own, at a lower priority than the reconciles
    // (they share the operator's cores), one look at a time.
    let (ask, asks) = std::sync::mpsc::channel::<()>();
    let (tell, mut told) = tokio::sync::mpsc::unbounded_channel();
    let for_thread = ctx.clone();
    let spawned = std::thread::Builder::new().name("plugin-reload".into()).spawn(move || {
        lower_this_threads_priority();
        while asks.recv().is_ok() {
            if tell.send(reloader.check(&for_thread)).is_err() {
                return;
            }
        }
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "no plugin reload thread; reloading stops");
        return;
    }
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        match references.as_mut() {
            Some(refs) => {
                tokio::select! {
                    _ = tick.tick() => {}
                    seen = refs.changed() => if seen.is_err() { references = None },
                }
            }
            None => {
                tick.tick().await;
            }
        }
        let looked = match ask.send(()) {
            Ok(()) => told.recv().await,
            Err(_) => None,
        };
        match looked {
            Some(Err(e)) => {
                tracing::warn!(error = %format!("{e:#}"), "plugin sources could not be read; the set is unchanged");
            }
            Some(Ok(outcome)) => {
                for refused in outcome.map(|o| o.refused).unwrap_or_default() {
                    let note = format!("the plugin it would replace keeps serving; refused: {refused}");
                    let warning = kube::runtime::events::EventType::Warning;
                    crate::writes::publish(&ctx, &events_on, warning, "PluginRefused", "Reload", note).await;
                }
            }
            None => {
                tracing::error!("the plugin reload thread failed; reloading stops");
                return;
            }
        }
    }
}

/// Nice 10 for the calling thread (Linux nice values are per thread), so a reload's conformance run yields the CPU
/// to reconciles; a failure only loses that preference.
fn lower_this_threads_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain syscalls on the calling thread's own id; no memory is shared.
        let done = unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, 10)
        };
        if done != 0 {
            tracing::debug!("the plugin reload thread keeps the default priority");
        }
    }
}

/// Watches the ConfigMap `namespace/name` of plugin references: the receiver holds `None` until its first read,
/// then its entries (none when it does not exist). Only this one object is listed and watched (by name), so the
/// operator's Role can name it.
pub fn watch_references(client: kube::Client, namespace: &str, name: &str) -> watch::Receiver<Option<References>> {
    let (tx, rx) = watch::channel(None);
    let api: kube::Api<ConfigMap> = kube::Api::namespaced(client, namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let (namespace, name) = (namespace.to_string(), name.to_string());
    tokio::spawn(async move {
        let mut events = watcher(api, config).default_backoff().boxed();
        let mut listing = References::new();
        while let Some(event) = events.next().await {
            let entries = |cm: ConfigMap| cm.data.unwrap_or_default();
            let next = match event {
                Ok(watcher::Event::Init) => {
                    listing.clear();
                    continue;
                }
                Ok(watcher::Event::InitApply(cm)) => {
                    listing = entries(cm);
                    continue;
                }
                Ok(watcher::Event::InitDone) => std::mem::take(&mut listing),
                Ok(watcher::Event::Apply(cm)) => entries(cm),
                Ok(watcher::Event::Delete(_)) => References::new(),
                Err(e) => {
                    tracing::warn!(error = %e, configmap = %format!("{namespace}/{name}"), "watching the plugin references");
                    continue;
                }
            };
            tx.send_if_modified(|current| {
                let changed = current.as_ref() != Some(&next);
                *current = Some(next);
                changed
            });
        }
    });
    rx
}

/// What the sources hold, cheaply: each directory's entries with size and modification time, and the references.
fn fingerprint(args: &PluginArgs, references: &References) -> String {
    let mut out = String::new();
    for (entry, value) in references {
        out.push_str(&format!("entry {entry} {value}\n"));
    }
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
