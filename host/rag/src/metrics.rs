//! Prometheus metrics of the RAG service.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of per-route metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// Matched route, e.g. `/retrieve`.
    pub route: String,
    /// HTTP status code.
    pub code: u16,
}

/// Labels of per-route latency.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Route {
    /// Matched route.
    pub route: String,
}

/// The `status` label of KAITO's per-route series: `success` or `failure`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Status {
    /// `success` when the request was answered below 400.
    pub status: &'static str,
}

/// KAITO's series names for a route, by method and matched path.
pub fn kaito_series(method: &str, route: &str) -> Option<&'static str> {
    Some(match (method, route) {
        ("POST", "/v1/chat/completions") => "rag_chat",
        ("POST", "/index") => "rag_index",
        ("GET", "/indexes") => "rag_indexes",
        ("GET", "/indexes/{name}/documents") => "rag_indexes_document",
        ("POST", "/indexes/{name}/documents") => "rag_indexes_update_document",
        ("POST", "/indexes/{name}/documents/delete") => "rag_indexes_delete_document",
        ("POST", "/retrieve") => "rag_indexes_retrieve",
        ("POST", "/persist/{name}") => "rag_persist",
        ("POST", "/load/{name}") => "rag_load",
        ("DELETE", "/indexes/{name}") => "rag_delete_index",
        _ => return None,
    })
}

const KAITO_SERIES: [&str; 10] = [
    "rag_chat",
    "rag_index",
    "rag_indexes",
    "rag_indexes_document",
    "rag_indexes_update_document",
    "rag_indexes_delete_document",
    "rag_indexes_retrieve",
    "rag_persist",
    "rag_load",
    "rag_delete_index",
];

/// prometheus_client's (Python) default histogram buckets, which KAITO's series use.
const PYTHON_DEFAULT_BUCKETS: [f64; 14] =
    [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0];

/// KAITO's two series of one route.
pub struct KaitoRoute {
    /// `rag_<route>_requests_total{status}`.
    pub requests: Family<Status, Counter>,
    /// `rag_<route>_latency_seconds{status}`.
    pub latency: Family<Status, Histogram>,
}

/// Labels as name/value pairs (the guardrail series, whose label names are KAITO's).
pub type Labels = Vec<(String, String)>;

/// KAITO's output-guardrail series.
#[derive(Default)]
pub struct GuardrailMetrics {
    /// `ragengine_guardrails_response_actions_total{final_action}`: allow, redact, block, fail_closed.
    pub actions: Family<Labels, Counter>,
    /// `ragengine_guardrails_response_scanner_hits_total{scanner_type,action}`.
    pub hits: Family<Labels, Counter>,
    /// `output_guardrails_policy_load_total{policy_status}`: success, missing, invalid, load_failed.
    pub loads: Family<Labels, Counter>,
    /// `guardrails_policy_reload_total{result}`: success, failure, noop.
    pub reloads: Family<Labels, Counter>,
}

impl GuardrailMetrics {
    /// One answer's final action.
    pub fn count_action(&self, action: &str) {
        self.actions.get_or_create(&vec![("final_action".into(), action.into())]).inc();
    }
    /// One scanner's hit.
    pub fn count_hit(&self, scanner: &str, action: &str) {
        self.hits.get_or_create(&vec![("scanner_type".into(), scanner.into()), ("action".into(), action.into())]).inc();
    }
    /// One policy read.
    pub fn count_load(&self, status: &str) {
        self.loads.get_or_create(&vec![("policy_status".into(), status.into())]).inc();
    }
}

/// Every metric the service exports.
pub struct Metrics {
    registry: Registry,
    /// KAITO's per-route series, by series name.
    pub kaito: std::collections::HashMap<&'static str, KaitoRoute>,
    /// Requests by route and status.
    pub requests: Family<RouteLabels, Counter>,
    /// Request latency by route.
    pub latency: Family<Route, Histogram>,
    /// Chunks embedded since start.
    pub chunks_embedded: Counter,
    /// Chunks waiting to be embedded by requests in flight.
    pub chunks_pending: Gauge,
    /// Documents `/index` has committed since start (progress of large requests).
    pub documents_committed: Counter,
    /// Documents stored, all indexes.
    pub documents: Gauge,
    /// Chunks stored, all indexes.
    pub chunks: Gauge,
    /// Output guardrails (KAITO's series).
    pub guardrails: GuardrailMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut root = Registry::default();
        let mut kaito = std::collections::HashMap::new();
        for name in KAITO_SERIES {
            let requests = Family::<Status, Counter>::default();
            root.register(
                format!("{name}_requests"),
                format!("Requests to {name}, by outcome (KAITO's series)"),
                requests.clone(),
            );
            let latency = Family::<Status, Histogram>::new_with_constructor(|| Histogram::new(PYTHON_DEFAULT_BUCKETS));
            root.register(
                format!("{name}_latency_seconds"),
                format!("Latency of {name} (KAITO's series)"),
                latency.clone(),
            );
            kaito.insert(name, KaitoRoute { requests, latency });
        }
        let guardrails = GuardrailMetrics::default();
        for (name, help, family) in [
            ("ragengine_guardrails_response_actions", "Final guardrail action per answer", &guardrails.actions),
            ("ragengine_guardrails_response_scanner_hits", "Guardrail scanner hits", &guardrails.hits),
            ("output_guardrails_policy_load", "Guardrail policy reads by outcome", &guardrails.loads),
            ("guardrails_policy_reload", "Guardrail policy reloads by result", &guardrails.reloads),
        ] {
            root.register(name, help, family.clone());
        }
        let registry = root.sub_registry_with_prefix("kaito_rag");
        let requests = Family::<RouteLabels, Counter>::default();
        registry.register("requests", "HTTP requests by route and status", requests.clone());
        let latency =
            Family::<Route, Histogram>::new_with_constructor(|| Histogram::new(exponential_buckets(0.001, 2.0, 16)));
        registry.register("request_duration_seconds", "HTTP request latency", latency.clone());
        let chunks_embedded = Counter::default();
        registry.register("chunks_embedded", "Chunks embedded since start", chunks_embedded.clone());
        let documents_committed = Counter::default();
        registry.register(
            "documents_committed",
            "Documents /index has committed since start",
            documents_committed.clone(),
        );
        let chunks_pending = Gauge::default();
        registry.register("chunks_pending", "Chunks of requests in flight not yet embedded", chunks_pending.clone());
        let documents = Gauge::default();
        registry.register("documents", "Documents stored", documents.clone());
        let chunks = Gauge::default();
        registry.register("chunks", "Chunks stored", chunks.clone());
        Metrics {
            registry: root,
            kaito,
            requests,
            latency,
            chunks_embedded,
            chunks_pending,
            documents_committed,
            documents,
            chunks,
            guardrails,
        }
    }
}

impl Metrics {
    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}
