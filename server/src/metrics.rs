//! Every Prometheus metric infergate exports, defined in this one place (`infergate_*`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of per-request series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub model: String,
    pub version: String,
    /// The route variant that served it (empty when the model was called directly).
    pub variant: String,
    pub protocol: &'static str,
    pub outcome: &'static str,
}

/// Labels of shadow-traffic outcomes.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShadowLabels {
    pub route: String,
    /// `compared`, `dropped`, `shadow_failed`, `disagreed` (rows whose top-1 differed).
    pub result: &'static str,
}

/// Labels of broker consumers' message counts.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConsumerLabels {
    pub consumer: String,
    /// `consumed` (every delivery), `redelivered` (deliveries after the first), `answered`
    /// (a result published), `failed` (an error published: the request was wrong),
    /// `duplicate` (answered again from the reply window, not computed), `retried` (a failure
    /// that may pass: delivered again later), `dead_lettered`.
    pub result: &'static str,
}

/// Labels of a broker consumer's gauges.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConsumerName {
    pub consumer: String,
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

/// Labels of an exemplar: the trace of a request that was sampled.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TraceLabels {
    pub trace_id: String,
}

/// Labels of exported trace spans.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SpanLabels {
    /// `exported`, `dropped` (the export queue was full) or `failed` (the collector refused
    /// them or could not be reached).
    pub result: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;
type ExemplarHistogramFamily<L> =
    Family<L, HistogramWithExemplars<TraceLabels>, fn() -> HistogramWithExemplars<TraceLabels>>;

/// Batch sizes: powers of two up to 1024.
fn batch_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 11))
}

/// Sub-millisecond-friendly buckets: 50 µs doubling up to about 6.5 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 18))
}

/// [`latency_histogram`]'s buckets, each keeping the trace id of its last sampled request.
fn latency_histogram_with_exemplars() -> HistogramWithExemplars<TraceLabels> {
    HistogramWithExemplars::new(exponential_buckets(0.000_05, 2.0, 18))
}

/// The metric set and its registry.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    /// Request latency; in OpenMetrics each bucket carries the trace id of the last sampled
    /// request that fell in it (an exemplar).
    pub request_duration: ExemplarHistogramFamily<RequestLabels>,
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
    /// Inference requests inside the stack now.
    pub inflight: Gauge,
    /// Model weights of each loaded version (what `runtime.memory_budget_bytes` counts).
    pub version_weight_bytes: Family<ModelLabels, Gauge>,
    /// Versions that failed to load, as the repository index shows them.
    pub unavailable_versions: Gauge,
    /// Default-version swaps made while following the registry.
    pub swaps: Counter,
    /// Shadow traffic by route and result.
    pub shadow: Family<ShadowLabels, Counter>,
    pub process_resident_bytes: Gauge,
    /// Heap bytes by kind (`heap`): rust_live (only with the counting allocator), c_allocated,
    /// c_held (glibc's malloc, which ONNX Runtime uses).
    pub heap_bytes: Family<HeapLabels, Gauge>,
    /// Times glibc's unused heap was given back to the system (`runtime.heap_trim_ms`).
    pub heap_trims: Counter,
    pub process_cpu_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    /// The last closed drift window's PSI, by model, version and kind.
    pub drift_psi: Family<DriftLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// Trace spans by export result (the exporter's own counters; see `telemetry`).
    pub trace_spans: Family<SpanLabels, Counter>,
    /// Text models: real input tokens tokenized, and the tokens executions ran (padding
    /// included), by model and version.
    pub tokens: Family<ModelLabels, Counter>,
    pub padded_tokens: Family<ModelLabels, Counter>,
    /// Broker consumers: messages by result, and requests waiting in the broker.
    pub consumer_messages: Family<ConsumerLabels, Counter>,
    pub consumer_lag: Family<ConsumerName, Gauge>,
    /// Whether the per-request series are recorded (`telemetry.request_metrics`).
    pub per_request: std::sync::atomic::AtomicBool,
}

/// Labels of the heap series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HeapLabels {
    pub kind: &'static str,
}

/// Labels of drift series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DriftLabels {
    pub model: String,
    pub version: String,
    /// `max_feature`, `mean_feature` or `class`.
    pub kind: &'static str,
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
        let request_duration = ExemplarHistogramFamily::new_with_constructor(
            latency_histogram_with_exemplars as fn() -> HistogramWithExemplars<TraceLabels>,
        );
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
        let inflight = Gauge::default();
        let version_weight_bytes = Family::<ModelLabels, Gauge>::default();
        let unavailable_versions = Gauge::default();
        let swaps = Counter::default();
        let shadow = Family::<ShadowLabels, Counter>::default();
        let process_resident_bytes = Gauge::default();
        let heap_bytes = Family::<HeapLabels, Gauge>::default();
        let heap_trims = Counter::default();
        let process_cpu_seconds = Counter::<f64, std::sync::atomic::AtomicU64>::default();
        let drift_psi = Family::<DriftLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        let trace_spans = Family::<SpanLabels, Counter>::default();
        let tokens = Family::<ModelLabels, Counter>::default();
        let padded_tokens = Family::<ModelLabels, Counter>::default();
        let consumer_messages = Family::<ConsumerLabels, Counter>::default();
        let consumer_lag = Family::<ConsumerName, Gauge>::default();
        registry.register(
            "consumer_messages",
            "Broker consumer messages by result: consumed, redelivered, answered, failed (error published), duplicate (answered from the reply window), retried, dead_lettered",
            consumer_messages.clone(),
        );
        registry.register(
            "consumer_lag",
            "Requests waiting in the broker for a consumer (not yet delivered)",
            consumer_lag.clone(),
        );
        registry.register(
            "tokens",
            "Input tokens of text-model requests (special tokens included, padding not)",
            tokens.clone(),
        );
        registry.register(
            "padded_tokens",
            "Tokens text-model executions ran: rows times the longest row of each batch",
            padded_tokens.clone(),
        );
        registry.register(
            "trace_spans",
            "Trace spans by export result: exported, dropped (export queue full), failed (collector unreachable or refusing)",
            trace_spans.clone(),
        );
        registry.register(
            "drift_psi",
            "Population stability index of the last closed drift window against the training baseline",
            drift_psi.clone(),
        );
        registry.register(
            "inflight_requests",
            "Inference requests inside the server now",
            inflight.clone(),
        );
        registry.register(
            "model_weight_bytes",
            "Model weights of each loaded version, in bytes (what runtime.memory_budget_bytes counts)",
            version_weight_bytes.clone(),
        );
        registry.register(
            "unavailable_model_versions",
            "Model versions that failed to load (reasons in the repository index)",
            unavailable_versions.clone(),
        );
        registry.register(
            "default_version_swaps",
            "Default-version swaps made while following the registry",
            swaps.clone(),
        );
        registry.register(
            "shadow_requests",
            "Shadow traffic by route and result (compared, dropped, shadow_failed, disagreed rows)",
            shadow.clone(),
        );
        registry.register(
            "process_resident_memory_bytes",
            "Resident memory of the server process",
            process_resident_bytes.clone(),
        );
        registry.register(
            "heap_bytes",
            "Heap bytes: rust_live (built with the heap-stats feature), c_allocated and c_held (glibc malloc)",
            heap_bytes.clone(),
        );
        registry.register(
            "heap_trims",
            "Times glibc malloc's unused memory was given back to the system (runtime.heap_trim_ms)",
            heap_trims.clone(),
        );
        registry.register(
            "process_cpu_seconds",
            "CPU time the server process has used, user and system",
            process_cpu_seconds.clone(),
        );
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
            inflight,
            version_weight_bytes,
            unavailable_versions,
            swaps,
            shadow,
            process_resident_bytes,
            heap_bytes,
            heap_trims,
            process_cpu_seconds,
            drift_psi,
            trace_spans,
            tokens,
            padded_tokens,
            consumer_messages,
            consumer_lag,
            per_request: std::sync::atomic::AtomicBool::new(true),
        }
    }
}

/// A sample line without its exemplar (` # {labels} value` after the sample's value).
fn without_exemplar(line: &str) -> &str {
    let labels_end = line.find("} ").map_or(0, |i| i + 2);
    match line[labels_end..].find(" # ") {
        Some(i) => &line[..labels_end + i],
        None => line,
    }
}

impl Metrics {
    /// Whether per-request series are recorded.
    pub fn per_request(&self) -> bool {
        self.per_request.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Counts a text-model request's input tokens.
    pub fn record_tokens(&self, labels: &ModelLabels, n: usize) {
        self.tokens.get_or_create(labels).inc_by(n as u64);
    }

    /// Counts a request refused or dropped before execution.
    pub fn reject(&self, model: &str, cause: &'static str) {
        self.reject_many(model, cause, 1);
    }

    /// Counts `n` requests refused or dropped before execution together (a batch's); a
    /// series appears with its first count, not before.
    pub fn reject_many(&self, model: &str, cause: &'static str, n: usize) {
        if n == 0 {
            return;
        }
        self.rejected
            .get_or_create(&RejectLabels {
                model: model.to_string(),
                cause,
            })
            .inc_by(n as u64);
    }

    /// Brings a counter that mirrors a total kept elsewhere up to `total`.
    pub fn catch_up(counter: &Counter, total: u64) {
        let seen = counter.get();
        if total > seen {
            counter.inc_by(total - seen);
        }
    }

    /// Reads the process's resident memory and CPU time from /proc (Linux).
    pub fn sample_process(&self) {
        if let Ok(status) = std::fs::read_to_string("/proc/self/status")
            && let Some(kb) = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
        {
            self.process_resident_bytes.set(kb * 1024);
        }
        let heap = |kind| self.heap_bytes.get_or_create(&HeapLabels { kind }).clone();
        if let Some(live) = crate::heap::rust_live_bytes() {
            heap("rust_live").set(live);
        }
        if let Some((allocated, held)) = crate::heap::c_heap_bytes() {
            heap("c_allocated").set(allocated);
            heap("c_held").set(held);
        }
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat")
            && let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..])
        {
            // utime and stime are fields 14 and 15 of stat, in USER_HZ ticks (100 per second
            // in Linux's ABI).
            let fields: Vec<&str> = rest.split(' ').collect();
            let ticks: u64 = [11, 12]
                .iter()
                .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
                .sum();
            let seconds = ticks as f64 / 100.0;
            let seen = self.process_cpu_seconds.get();
            if seconds > seen {
                self.process_cpu_seconds.inc_by(seconds - seen);
            }
        }
    }

    /// The same metrics in Prometheus' classic text format (0.0.4), for scrapers that do not
    /// ask for OpenMetrics: a counter's HELP and TYPE name its `_total` series, and the
    /// OpenMetrics-only parts (`# UNIT`, `# EOF`, exemplars) are left out.
    pub fn encode_text(&self) -> String {
        let open = self.encode();
        let counters: std::collections::HashSet<&str> = open
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
            .collect();
        let mut out = String::with_capacity(open.len());
        for line in open.lines() {
            if line == "# EOF" || line.starts_with("# UNIT ") {
                continue;
            }
            let meta = ["# HELP ", "# TYPE "]
                .iter()
                .find_map(|p| Some((*p, line.strip_prefix(p)?)));
            match meta {
                Some((prefix, rest)) => {
                    let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                    if counters.contains(name) {
                        out.push_str(&format!("{prefix}{name}_total {tail}"));
                    } else {
                        out.push_str(line);
                    }
                }
                None => out.push_str(without_exemplar(line)),
            }
            out.push('\n');
        }
        out
    }

    /// OpenMetrics text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
