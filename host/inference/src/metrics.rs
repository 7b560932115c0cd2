//! Prometheus metrics of the inference server.

use prometheus_client::encoding::{EncodeLabelSet, text::encode};
use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

/// Labels of a finished HTTP request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub endpoint: String,
    pub status: u16,
}

/// Every metric the server exports (names follow vLLM's where one exists).
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    prompt_tokens: Counter,
    generation_tokens: Counter,
    ttft: Histogram,
    itl: Histogram,
    step: Histogram,
    running: Gauge,
    waiting: Gauge,
    /// Bytes of weights downloaded so far.
    pub download_bytes: Gauge<u64, AtomicU64>,
    /// Estimated seconds until the download completes.
    pub download_remaining_seconds: Gauge,
}

fn latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 16)
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("kaito_inference");
        let m = Metrics {
            requests: Family::default(),
            prompt_tokens: Counter::default(),
            generation_tokens: Counter::default(),
            ttft: Histogram::new(latency_buckets()),
            itl: Histogram::new(latency_buckets()),
            step: Histogram::new(latency_buckets()),
            running: Gauge::default(),
            waiting: Gauge::default(),
            download_bytes: Gauge::default(),
            download_remaining_seconds: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register("requests", "HTTP requests by endpoint and status", m.requests.clone());
        registry.register("prompt_tokens", "Prompt tokens processed", m.prompt_tokens.clone());
        registry.register("generation_tokens", "Tokens generated", m.generation_tokens.clone());
        registry.register("time_to_first_token_seconds", "Time from arrival to the first token", m.ttft.clone());
        registry.register("inter_token_latency_seconds", "Time between two tokens of a sequence", m.itl.clone());
        registry.register("step_duration_seconds", "Duration of one engine step", m.step.clone());
        registry.register("num_requests_running", "Sequences in the running batch", m.running.clone());
        registry.register("num_requests_waiting", "Sequences waiting to be scheduled", m.waiting.clone());
        registry.register("download_bytes", "Weight bytes downloaded so far", m.download_bytes.clone());
        registry.register(
            "download_remaining_seconds",
            "Estimated seconds left in the weight download",
            m.download_remaining_seconds.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// Count a finished request.
    pub fn request(&self, endpoint: &str, status: u16) {
        self.requests.get_or_create(&RequestLabels { endpoint: endpoint.into(), status }).inc();
    }
    pub(crate) fn prompt_tokens(&self, n: usize) {
        self.prompt_tokens.inc_by(n as u64);
    }
    pub(crate) fn generated(&self, n: usize) {
        self.generation_tokens.inc_by(n as u64);
    }
    pub(crate) fn first_token(&self, d: Duration) {
        self.ttft.observe(d.as_secs_f64());
    }
    pub(crate) fn inter_token(&self, d: Duration) {
        self.itl.observe(d.as_secs_f64());
    }
    pub(crate) fn step(&self, d: Duration) {
        self.step.observe(d.as_secs_f64());
    }
    pub(crate) fn set_queue(&self, running: usize, waiting: usize) {
        self.running.set(running as i64);
        self.waiting.set(waiting as i64);
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
