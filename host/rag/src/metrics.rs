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

/// Every metric the service exports.
pub struct Metrics {
    registry: Registry,
    /// Requests by route and status.
    pub requests: Family<RouteLabels, Counter>,
    /// Request latency by route.
    pub latency: Family<Route, Histogram>,
    /// Chunks embedded since start.
    pub chunks_embedded: Counter,
    /// Chunks waiting to be embedded by requests in flight.
    pub chunks_pending: Gauge,
    /// Documents stored, all indexes.
    pub documents: Gauge,
    /// Chunks stored, all indexes.
    pub chunks: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("kaito_rag");
        let requests = Family::<RouteLabels, Counter>::default();
        registry.register("requests", "HTTP requests by route and status", requests.clone());
        let latency =
            Family::<Route, Histogram>::new_with_constructor(|| Histogram::new(exponential_buckets(0.001, 2.0, 16)));
        registry.register("request_duration_seconds", "HTTP request latency", latency.clone());
        let chunks_embedded = Counter::default();
        registry.register("chunks_embedded", "Chunks embedded since start", chunks_embedded.clone());
        let chunks_pending = Gauge::default();
        registry.register("chunks_pending", "Chunks of requests in flight not yet embedded", chunks_pending.clone());
        let documents = Gauge::default();
        registry.register("documents", "Documents stored", documents.clone());
        let chunks = Gauge::default();
        registry.register("chunks", "Chunks stored", chunks.clone());
        Metrics { registry, requests, latency, chunks_embedded, chunks_pending, documents, chunks }
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
