//! OpenTelemetry traces: the OTLP exporter (gRPC or HTTP/protobuf) behind a bounded batch
//! processor, and W3C trace-context propagation for the front ends.
//!
//! Requests are `tracing` spans; `tracing-opentelemetry` turns them into OpenTelemetry spans.
//! Export runs on the batch processor's own thread: a full queue drops spans, the request path
//! never waits for a collector. Every span is counted once in `infergate_trace_spans_total`:
//! exported, dropped (queue full) or failed (the collector could not be reached or refused).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use infergate_config::TelemetryConfig;
use opentelemetry::propagation::{Extractor, TextMapPropagator as _};
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _, WithTonicConfig as _};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider, SpanData, SpanExporter,
    SpanProcessor,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::metrics::SpanLabels;

/// The response header carrying the request's trace id.
pub const TRACE_ID_HEADER: &str = "x-trace-id";

/// The tracer provider built from `[telemetry]`; none without an endpoint. Call inside a tokio
/// runtime (the gRPC exporter keeps its handle). What becomes of every span is counted in
/// `counts` (`result` = exported, dropped, failed).
pub fn provider(
    config: &TelemetryConfig,
    counts: &Family<SpanLabels, Counter>,
) -> anyhow::Result<Option<SdkTracerProvider>> {
    let Some(endpoint) = config.traces_url() else {
        return Ok(None);
    };
    let exporter = if config.otlp_protocol == "grpc" {
        let mut metadata = tonic::metadata::MetadataMap::new();
        for (k, v) in &config.otlp_headers {
            let key = tonic::metadata::MetadataKey::from_bytes(k.as_bytes())
                .with_context(|| format!("telemetry.otlp_headers: invalid name {k:?}"))?;
            let value = v
                .parse()
                .with_context(|| format!("telemetry.otlp_headers: invalid value for {k:?}"))?;
            metadata.insert(key, value);
        }
        opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .with_metadata(metadata)
            .build()?
    } else {
        // The HTTP client's TLS needs a process-wide crypto provider (already there when a
        // listener uses TLS).
        let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
        opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(endpoint)
            .with_headers(
                config
                    .otlp_headers
                    .clone()
                    .into_iter()
                    .collect::<HashMap<_, _>>(),
            )
            .build()?
    };
    let counts = SpanCounts::new(counts);
    let batch = BatchConfigBuilder::default()
        .with_max_queue_size(config.max_queue)
        .with_scheduled_delay(Duration::from_millis(500))
        .build();
    let processor = BatchSpanProcessor::builder(CountingExporter {
        inner: exporter,
        counts: counts.clone(),
        runtime: tokio::runtime::Handle::try_current().ok(),
    })
    .with_batch_config(batch)
    .build();
    Ok(Some(
        SdkTracerProvider::builder()
            .with_span_processor(BoundedProcessor {
                inner: processor,
                limit: config.max_queue,
                counts,
            })
            // The front ends sample (`request_span_with`) before any span exists; every span
            // made after that is one to record.
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name(config.service_name.clone())
                    .build(),
            )
            .build(),
    ))
}

/// Spans waiting for export (queued or in an export under way) and what became of the others.
#[derive(Debug, Clone)]
struct SpanCounts {
    waiting: Arc<AtomicUsize>,
    exported: Counter,
    dropped: Counter,
    failed: Counter,
}

impl SpanCounts {
    fn new(family: &Family<SpanLabels, Counter>) -> Self {
        let counter = |result| family.get_or_create(&SpanLabels { result }).clone();
        Self {
            waiting: Arc::default(),
            exported: counter("exported"),
            dropped: counter("dropped"),
            failed: counter("failed"),
        }
    }
}

/// The batch processor behind a bound of its own, so that every span it would drop is counted
/// (the SDK keeps its drop count to itself). The batch processor's queue is as long as the
/// bound, so it never drops on its own.
#[derive(Debug)]
struct BoundedProcessor {
    inner: BatchSpanProcessor,
    limit: usize,
    counts: SpanCounts,
}

impl SpanProcessor for BoundedProcessor {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &opentelemetry::Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.counts.waiting.fetch_add(1, Ordering::AcqRel) >= self.limit {
            self.counts.waiting.fetch_sub(1, Ordering::AcqRel);
            self.counts.dropped.inc();
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

/// Counts the spans of each export as exported or failed when it ends (an export abandoned
/// on timeout counts as failed), and runs the export inside the server's tokio runtime: the
/// batch processor polls it on a thread of its own, where the HTTP client would find no
/// reactor.
#[derive(Debug)]
struct CountingExporter<E> {
    inner: E,
    counts: SpanCounts,
    runtime: Option<tokio::runtime::Handle>,
}

pin_project_lite::pin_project! {
    /// A future polled inside a tokio runtime's context.
    struct InRuntime<F> {
        runtime: Option<tokio::runtime::Handle>,
        #[pin]
        inner: F,
    }
}

impl<F: std::future::Future> std::future::Future for InRuntime<F> {
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let this = self.project();
        let _entered = this.runtime.as_ref().map(tokio::runtime::Handle::enter);
        this.inner.poll(cx)
    }
}

/// Settles one export's spans when dropped.
struct Settle<'a> {
    counts: &'a SpanCounts,
    spans: usize,
    ok: bool,
}

impl Drop for Settle<'_> {
    fn drop(&mut self) {
        self.counts.waiting.fetch_sub(self.spans, Ordering::AcqRel);
        let counter = if self.ok {
            &self.counts.exported
        } else {
            &self.counts.failed
        };
        counter.inc_by(self.spans as u64);
    }
}

impl<E: SpanExporter> SpanExporter for CountingExporter<E> {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let settle = Settle {
            counts: &self.counts,
            spans: batch.len(),
            ok: false,
        };
        let export = InRuntime {
            runtime: self.runtime.clone(),
            inner: self.inner.export(batch),
        };
        async move {
            // Moved whole (not just the field set below), so it settles when the export ends.
            let mut settle = settle;
            let result = export.await;
            settle.ok = result.is_ok();
            result
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

/// HTTP headers as a propagation carrier.
struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// gRPC metadata as a propagation carrier (read in place, not copied into headers).
struct Metadata<'a>(&'a tonic::metadata::MetadataMap);

impl Extractor for Metadata<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

/// The caller's trace context (W3C `traceparent`/`tracestate`) in HTTP headers.
pub fn caller_context(headers: &http::HeaderMap) -> opentelemetry::Context {
    TraceContextPropagator::new().extract(&Headers(headers))
}

/// The caller's trace context in gRPC metadata.
pub fn caller_context_grpc(metadata: &tonic::metadata::MetadataMap) -> opentelemetry::Context {
    TraceContextPropagator::new().extract(&Metadata(metadata))
}

/// A request's span and the trace id its answer carries.
#[derive(Debug)]
pub struct RequestTrace {
    /// The request span; none when the request is not sampled (or nothing traces), so that
    /// neither it nor any stage beneath it costs the request path anything.
    pub span: tracing::Span,
    /// For the `x-trace-id` header: the span's trace, or for a request that is not sampled,
    /// the caller's trace or a fresh id. None when nothing traces.
    pub trace_id: Option<String>,
}

/// A request span that joins the caller's trace (W3C `traceparent`/`tracestate` in `headers`)
/// and carries the model and protocol; the rest of its attributes are recorded as they become
/// known. Whether it is sampled is decided here, before any span exists (see
/// [`request_span_with`]).
pub fn request_span(
    headers: &http::HeaderMap,
    model: &str,
    protocol: &'static str,
    ratio: f64,
) -> RequestTrace {
    request_span_with(|| caller_context(headers), model, protocol, ratio)
}

/// [`request_span`] with the caller's context read only when something traces.
///
/// Sampling is parent-based: a caller's `traceparent` decides by its sampled flag, and a
/// request without one is sampled with probability `ratio` (`telemetry.sampling_ratio`). A
/// request that is not sampled gets no spans at all (stages use [`stage_span!`]), rather than
/// spans the SDK would build and then not record: those cost about two thirds of what a
/// sampled request's spans cost.
pub fn request_span_with(
    caller: impl FnOnce() -> opentelemetry::Context,
    model: &str,
    protocol: &'static str,
    ratio: f64,
) -> RequestTrace {
    if !tracing::span_enabled!(tracing::Level::INFO) {
        return RequestTrace {
            span: tracing::Span::none(),
            trace_id: None,
        };
    }
    let parent = caller();
    let remote = parent.span().span_context().clone();
    let (sampled, id) = if remote.is_valid() {
        (remote.is_sampled(), remote.trace_id())
    } else if ratio >= 1.0 {
        (true, opentelemetry::trace::TraceId::INVALID)
    } else {
        let id = random_trace_id();
        (ratio_admits(ratio, id), id)
    };
    if !sampled {
        return RequestTrace {
            span: tracing::Span::none(),
            trace_id: Some(id.to_string()),
        };
    }
    let span = tracing::info_span!(
        "infer",
        otel.name = %format!("infer {model}"),
        otel.kind = "server",
        model = %model,
        protocol = protocol,
        version = tracing::field::Empty,
        variant = tracing::field::Empty,
        artifact_digest = tracing::field::Empty,
        platform = tracing::field::Empty,
        lineage_parent = tracing::field::Empty,
        quantization = tracing::field::Empty,
        distillation_teacher = tracing::field::Empty,
        dataset_digest = tracing::field::Empty,
        outcome = tracing::field::Empty,
    );
    if remote.is_valid() {
        let _ = span.set_parent(parent);
    }
    let trace_id = trace_id(&span);
    RequestTrace { span, trace_id }
}

/// A trace id from the SDK's own generator (a thread-local random source).
fn random_trace_id() -> opentelemetry::trace::TraceId {
    use opentelemetry_sdk::trace::IdGenerator as _;
    opentelemetry_sdk::trace::RandomIdGenerator::default().new_trace_id()
}

/// Whether a root request is sampled at `ratio`, from the low 63 bits of a random trace id
/// (what the SDK's `TraceIdRatioBased` sampler compares).
fn ratio_admits(ratio: f64, id: opentelemetry::trace::TraceId) -> bool {
    if ratio <= 0.0 {
        return false;
    }
    let bound = (ratio * (1u64 << 63) as f64) as u64;
    let bytes = id.to_bytes();
    let low = u64::from_be_bytes(bytes[8..].try_into().expect("8 bytes")) >> 1;
    low < bound
}

/// The span of one stage of a request: `tracing::info_span!` with the same arguments when the
/// current span is recorded, none otherwise, so that an unsampled request makes no spans.
#[macro_export]
macro_rules! stage_span {
    ($($arg:tt)+) => {
        if $crate::telemetry::in_recorded_span() {
            tracing::info_span!($($arg)+)
        } else {
            tracing::Span::none()
        }
    };
}
pub use stage_span;

/// Whether the current span is a recorded one (a stage beneath it should have a span).
pub fn in_recorded_span() -> bool {
    tracing::dispatcher::get_default(|d| d.current_span().id().is_some())
}

/// Records what the stack's answer says about who served the request.
pub fn record_response(
    span: &tracing::Span,
    g: &crate::Gateway,
    resp: &crate::core::InferResponse,
) {
    if span.is_disabled() {
        return;
    }
    span.record("version", resp.model_version.as_str());
    span.record("outcome", "success");
    if let Some(variant) = crate::http::variant_of(resp) {
        span.record("variant", variant);
    }
    if let Ok(v) = g
        .repository
        .resolve(&resp.model_name, Some(&resp.model_version))
    {
        span.record("artifact_digest", v.digest.as_str());
        span.record("platform", v.model.platform());
        if let Some(lineage) = &v.lineage {
            if let Some(parent) = lineage.parent {
                span.record("lineage_parent", parent);
            }
            if let Some(q) = &lineage.quantization {
                span.record("quantization", q.as_str());
            }
            if let Some(t) = &lineage.distillation_teacher {
                span.record("distillation_teacher", t.as_str());
            }
            if let Some(d) = &lineage.dataset_digest {
                span.record("dataset_digest", d.as_str());
            }
        }
    }
}

/// The OpenTelemetry identity of a recorded span, for linking other spans to it without
/// keeping it open.
pub fn span_context(span: &tracing::Span) -> Option<opentelemetry::trace::SpanContext> {
    if span.is_disabled() {
        return None;
    }
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then_some(span_context)
}

/// The span's trace id when its trace is sampled (what an exemplar may point at).
pub fn sampled_trace_id(span: &tracing::Span) -> Option<String> {
    span_context(span)
        .filter(opentelemetry::trace::SpanContext::is_sampled)
        .map(|c| c.trace_id().to_string())
}

/// The span's trace id as 32 hex digits, when the span is recorded.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    span_context(span).map(|c| c.trace_id().to_string())
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{Tracer as _, TracerProvider as _};

    use super::*;

    /// A subscriber that records spans as OpenTelemetry spans, as `serve` installs with an
    /// endpoint (no exporter: only the span contexts are looked at).
    fn traced() -> impl tracing::Subscriber + Send + Sync {
        use tracing_subscriber::layer::SubscriberExt as _;
        let provider = SdkTracerProvider::builder()
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
            .build();
        tracing_subscriber::registry().with(crate::logging::otel_layer(provider.tracer("test")))
    }

    fn traceparent(trace: &str, flags: &str) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        let value = format!("00-{trace}-00f067aa0ba902b7-{flags}");
        headers.insert("traceparent", value.parse().unwrap());
        headers
    }

    const CALLER: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

    #[test]
    fn sampled_requests_get_spans_and_the_rest_none_with_a_trace_id_all_the_same() {
        tracing::subscriber::with_default(traced(), || {
            let none = http::HeaderMap::new();
            // Ratio 1: a recorded span, and the header names its trace.
            let t = request_span(&none, "m", "http", 1.0);
            let context = span_context(&t.span).expect("a recorded span");
            assert!(context.is_sampled());
            assert_eq!(t.trace_id, Some(context.trace_id().to_string()));
            // Inside it a stage gets a span of its own; outside, none.
            t.span.in_scope(|| {
                let stage = crate::telemetry::stage_span!("decode");
                assert!(!stage.is_none());
                assert_ne!(span_context(&stage).unwrap().span_id(), context.span_id());
            });
            assert!(crate::telemetry::stage_span!("decode").is_none());

            // Ratio 0: no span, so no stage beneath it either, but still a trace id to answer with.
            let t = request_span(&none, "m", "http", 0.0);
            assert!(t.span.is_none());
            assert_eq!(t.trace_id.as_ref().map(String::len), Some(32));
            t.span
                .in_scope(|| assert!(crate::telemetry::stage_span!("decode").is_none()));

            // A caller's decision wins over the ratio either way.
            let t = request_span(&traceparent(CALLER, "01"), "m", "http", 0.0);
            let context = span_context(&t.span).expect("a sampled caller is followed");
            assert_eq!(context.trace_id().to_string(), CALLER);
            assert_eq!(t.trace_id.as_deref(), Some(CALLER));
            let t = request_span(&traceparent(CALLER, "00"), "m", "http", 1.0);
            assert!(t.span.is_none(), "an unsampled caller is followed");
            assert_eq!(t.trace_id.as_deref(), Some(CALLER));
        });
    }

    #[test]
    fn the_ratio_admits_the_share_of_trace_ids_it_names() {
        let id = |low: u64| opentelemetry::trace::TraceId::from(u128::from(low));
        // The low 63 bits against ratio x 2^63, as the SDK's TraceIdRatioBased sampler does.
        assert!(ratio_admits(0.5, id(0)));
        assert!(ratio_admits(0.5, id((1 << 63) - 2)));
        assert!(!ratio_admits(0.5, id(1 << 63)));
        assert!(!ratio_admits(0.5, id(u64::MAX)));
        assert!(ratio_admits(0.01, id(0)));
        assert!(!ratio_admits(0.0, id(0)));
        // And random ids are admitted at about the ratio.
        let admitted = (0..20_000)
            .filter(|_| ratio_admits(0.25, random_trace_id()))
            .count();
        assert!((4_000..6_000).contains(&admitted), "{admitted} of 20000");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn spans_are_exported_over_http_protobuf() {
        // The body size of every export, by the path it was posted to.
        let received = Arc::new(std::sync::Mutex::new(Vec::<(String, usize)>::new()));
        let app = {
            let received = Arc::clone(&received);
            axum::Router::new().fallback(
                move |uri: axum::http::Uri, body: axum::body::Bytes| async move {
                    received
                        .lock()
                        .unwrap()
                        .push((uri.path().to_owned(), body.len()));
                    (
                        [("content-type", "application/x-protobuf")],
                        Vec::<u8>::new(),
                    )
                },
            )
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        // The endpoint gets `/v1/traces` added; the traces endpoint is used as given.
        let configs = [
            (
                TelemetryConfig {
                    otlp_endpoint: Some(format!("http://{addr}/")),
                    ..TelemetryConfig::default()
                },
                "/v1/traces",
            ),
            (
                TelemetryConfig {
                    otlp_endpoint: Some(format!("http://{addr}/ignored")),
                    otlp_traces_endpoint: Some(format!("http://{addr}/tenant/a/spans")),
                    ..TelemetryConfig::default()
                },
                "/tenant/a/spans",
            ),
        ];
        for (config, path) in configs {
            let family = Family::<SpanLabels, Counter>::default();
            let config = TelemetryConfig {
                otlp_protocol: "http/protobuf".into(),
                ..config
            };
            let provider = provider(&config, &family)
                .unwrap()
                .expect("an endpoint makes a provider");
            let tracer = provider.tracer("test");
            for i in 0..10 {
                drop(tracer.start(format!("span {i}")));
            }
            let flushed = tokio::task::spawn_blocking(move || provider.force_flush()).await;
            assert!(flushed.unwrap().is_ok());
            let count = |result| family.get_or_create(&SpanLabels { result }).get();
            assert_eq!((count("exported"), count("failed")), (10, 0), "{path}");
            let mut received = received.lock().unwrap();
            assert!(!received.is_empty(), "{path}");
            for (posted, len) in received.drain(..) {
                assert_eq!((posted.as_str(), len > 0), (path, true));
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_span_is_counted_once_as_exported_dropped_or_failed() {
        // A port nobody listens on: every export fails.
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let family = Family::<SpanLabels, Counter>::default();
        let provider = provider(
            &TelemetryConfig {
                otlp_endpoint: Some(format!("http://127.0.0.1:{port}")),
                max_queue: 8,
                ..TelemetryConfig::default()
            },
            &family,
        )
        .unwrap()
        .expect("an endpoint makes a provider");
        let tracer = provider.tracer("test");
        const SPANS: u64 = 200;
        for i in 0..SPANS {
            drop(tracer.start(format!("span {i}")));
        }
        let shut = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        assert!(shut.is_ok());
        let count = |result| family.get_or_create(&SpanLabels { result }).get();
        let (exported, dropped, failed) = (count("exported"), count("dropped"), count("failed"));
        assert_eq!(exported, 0, "nothing can reach a closed port");
        assert!(
            dropped > 0,
            "a queue of 8 cannot take {SPANS} spans at once"
        );
        assert!(failed > 0, "the queued spans were tried and failed");
        assert_eq!(exported + dropped + failed, SPANS, "each span counted once");
    }
}
