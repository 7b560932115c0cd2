//! Prometheus metrics, served on `/metrics`.

use prometheus_client::encoding::{EncodeLabelSet, text::encode};
use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram};
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Label set naming an error reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

/// Label set naming a Workspace state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: String,
}

/// Label set naming a plugin.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginLabels {
    pub plugin: String,
}

/// Label of the plugin reload counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `swapped` (every new plugin accepted) or `refused` (some kept out; the old ones serve).
    pub outcome: String,
}

/// Every metric the operator exports.
pub struct Metrics {
    registry: Registry,
    reconciles: Counter,
    errors: Family<ReasonLabels, Counter>,
    duration: Histogram,
    workspaces: Family<StateLabels, Gauge>,
    plugin_latency: Family<PluginLabels, Histogram>,
    plugin_reloads: Family<OutcomeLabels, Counter>,
    /// The state each Workspace was last counted under, so the gauge moves instead of growing.
    states: Mutex<HashMap<String, String>>,
    plugin_nanos: AtomicU64,
}

fn seconds_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.000_01, 4.0, 12)
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("kaito");
        let reconciles = Counter::default();
        let errors = Family::<ReasonLabels, Counter>::default();
        let duration = Histogram::new(seconds_buckets());
        let workspaces = Family::<StateLabels, Gauge>::default();
        let plugin_latency =
            Family::<PluginLabels, Histogram>::new_with_constructor(|| Histogram::new(seconds_buckets()));
        registry.register("reconciles", "Workspace reconciles started", reconciles.clone());
        registry.register("reconcile_errors", "Workspace reconciles that failed, by reason", errors.clone());
        registry.register("reconcile_duration_seconds", "Time spent in one reconcile", duration.clone());
        registry.register("workspaces", "Workspaces by state", workspaces.clone());
        registry.register(
            "plugin_call_duration_seconds",
            "Time spent in plugin calls (a render) per reconcile, by preset plugin",
            plugin_latency.clone(),
        );
        let plugin_reloads = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "plugin_reloads",
            "Plugin-set reloads, by outcome (refused: a new plugin failed to load or conform)",
            plugin_reloads.clone(),
        );
        Metrics {
            plugin_reloads,
            registry,
            reconciles,
            errors,
            duration,
            workspaces,
            plugin_latency,
            states: Mutex::default(),
            plugin_nanos: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    /// Count a plugin-set reload.
    pub fn plugin_reload(&self, all_accepted: bool) {
        let outcome = if all_accepted { "swapped" } else { "refused" };
        self.plugin_reloads.get_or_create(&OutcomeLabels { outcome: outcome.into() }).inc();
    }

    /// Count a reconcile and its duration.
    pub fn reconciled(&self, took: Duration) {
        self.reconciles.inc();
        self.duration.observe(took.as_secs_f64());
    }

    /// Count a failed reconcile.
    pub fn failed(&self, reason: String) {
        self.errors.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// Record the time spent in one plugin render.
    pub fn plugin_call(&self, plugin: &str, took: Duration) {
        self.plugin_latency.get_or_create(&PluginLabels { plugin: plugin.into() }).observe(took.as_secs_f64());
        self.plugin_nanos.fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Total time spent in plugins since start.
    pub fn plugin_time(&self) -> Duration {
        Duration::from_nanos(self.plugin_nanos.load(Ordering::Relaxed))
    }

    /// Move `workspace` to `state` in the by-state gauge; `None` forgets it.
    pub fn set_state(&self, workspace: &str, state: Option<&str>) {
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        let old = match state {
            Some(s) => states.insert(workspace.to_string(), s.to_string()),
            None => states.remove(workspace),
        };
        if old.as_deref() == state {
            return;
        }
        if let Some(old) = old {
            self.workspaces.get_or_create(&StateLabels { state: old }).dec();
        }
        if let Some(s) = state {
            self.workspaces.get_or_create(&StateLabels { state: s.into() }).inc();
        }
    }

    /// Number of Workspaces counted under `state`.
    pub fn count_in_state(&self, state: &str) -> i64 {
        self.workspaces.get_or_create(&StateLabels { state: state.into() }).get()
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_gauge_moves() {
        let m = Metrics::default();
        m.set_state("ns/a", Some("Pending"));
        m.set_state("ns/b", Some("Pending"));
        m.set_state("ns/a", Some("Ready"));
        assert_eq!((m.count_in_state("Pending"), m.count_in_state("Ready")), (1, 1));
        m.set_state("ns/a", None);
        assert_eq!(m.count_in_state("Ready"), 0);
        m.failed("api_409".into());
        m.plugin_call("preset-phi", Duration::from_micros(20));
        let text = m.encode();
        assert!(text.contains("kaito_reconcile_errors_total{reason=\"api_409\"} 1"), "{text}");
        assert!(text.contains("kaito_workspaces{state=\"Pending\"} 1"), "{text}");
        assert!(text.contains("kaito_plugin_call_duration_seconds_count{plugin=\"preset-phi\"} 1"), "{text}");
    }
}
