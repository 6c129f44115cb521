//! Every Prometheus metric infergate exports, defined in this one place (`infergate_*`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of per-request series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub model: String,
    pub version: String,
    pub protocol: &'static str,
    pub outcome: &'static str,
}

/// Labels of per-model-version series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    pub model: String,
    pub version: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Sub-millisecond-friendly buckets: 50 µs doubling up to about 6.5 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 18))
}

/// The metric set and its registry.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: HistogramFamily<RequestLabels>,
    pub queue_duration: HistogramFamily<ModelLabels>,
    pub compute_duration: HistogramFamily<ModelLabels>,
    pub loaded_versions: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("infergate");
        let requests = Family::<RequestLabels, Counter>::default();
        let request_duration =
            HistogramFamily::new_with_constructor(latency_histogram as fn() -> Histogram);
        let queue_duration =
            HistogramFamily::new_with_constructor(latency_histogram as fn() -> Histogram);
        let compute_duration =
            HistogramFamily::new_with_constructor(latency_histogram as fn() -> Histogram);
        let loaded_versions = Gauge::default();
        registry.register(
            "requests",
            "Inference requests by model, version, protocol and outcome",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "End-to-end inference request latency inside the server",
            request_duration.clone(),
        );
        registry.register(
            "queue_duration_seconds",
            "Time requests waited for a model worker",
            queue_duration.clone(),
        );
        registry.register(
            "compute_duration_seconds",
            "Backend execution time (input preparation, inference, output extraction)",
            compute_duration.clone(),
        );
        registry.register(
            "loaded_model_versions",
            "Model versions loaded and ready",
            loaded_versions.clone(),
        );
        Self {
            registry,
            requests,
            request_duration,
            queue_duration,
            compute_duration,
            loaded_versions,
        }
    }
}

impl Metrics {
    /// Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
