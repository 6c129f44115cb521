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

/// Labels of rejected or dropped requests.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    pub model: String,
    /// `queue_full`, `deadline`, `cancelled`, `concurrency_limit`, `rate_limit`.
    pub cause: &'static str,
}

/// Labels of cache lookups.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    pub model: String,
    pub version: String,
    /// `hit` or `miss`.
    pub result: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Batch sizes: powers of two up to 1024.
fn batch_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 11))
}

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
    pub batch_size: HistogramFamily<ModelLabels>,
    pub rejected: Family<RejectLabels, Counter>,
    pub cache: Family<CacheLabels, Counter>,
    pub loaded_versions: Gauge,
    /// Requests waiting in batch queues, all models (set when scraped; the autoscaler's
    /// queue-depth signal).
    pub queued_requests: Gauge,
    pub registry_poll_errors: Counter,
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
        let batch_size =
            HistogramFamily::new_with_constructor(batch_histogram as fn() -> Histogram);
        let rejected = Family::<RejectLabels, Counter>::default();
        let cache = Family::<CacheLabels, Counter>::default();
        let loaded_versions = Gauge::default();
        let queued_requests = Gauge::default();
        let registry_poll_errors = Counter::default();
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
            "batch_size",
            "Rows per backend execution (dynamic batches included)",
            batch_size.clone(),
        );
        registry.register(
            "rejected_requests",
            "Requests refused or dropped before execution, by cause",
            rejected.clone(),
        );
        registry.register(
            "cache_lookups",
            "Response cache lookups by result",
            cache.clone(),
        );
        registry.register(
            "loaded_model_versions",
            "Model versions loaded and ready",
            loaded_versions.clone(),
        );
        registry.register(
            "queued_requests",
            "Requests waiting in the batch queues of every model version",
            queued_requests.clone(),
        );
        registry.register(
            "registry_poll_errors",
            "Registry polls that could not read the registry (what is loaded keeps serving)",
            registry_poll_errors.clone(),
        );
        Self {
            registry,
            requests,
            request_duration,
            queue_duration,
            compute_duration,
            batch_size,
            rejected,
            cache,
            loaded_versions,
            queued_requests,
            registry_poll_errors,
        }
    }
}

impl Metrics {
    /// Counts a request refused or dropped before execution.
    pub fn reject(&self, model: &str, cause: &'static str) {
        self.rejected
            .get_or_create(&RejectLabels {
                model: model.to_string(),
                cause,
            })
            .inc();
    }

    /// Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
