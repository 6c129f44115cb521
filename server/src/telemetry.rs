//! OpenTelemetry traces: the OTLP exporter (gRPC or HTTP/protobuf) behind a bounded batch
//! processor, and W3C trace-context propagation for the front ends.
//!
//! Requests are `tracing` spans; `tracing-opentelemetry` turns them into OpenTelemetry spans.
//! Export runs on the batch processor's own thread: a full queue drops spans, the request path
//! never waits for a collector.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context as _;
use infergate_config::TelemetryConfig;
use opentelemetry::propagation::{Extractor, TextMapPropagator as _};
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _, WithTonicConfig as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider,
};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The response header carrying the request's trace id.
pub const TRACE_ID_HEADER: &str = "x-trace-id";

/// The tracer provider built from `[telemetry]`; none without an endpoint. Call inside a tokio
/// runtime (the gRPC exporter keeps its handle).
pub fn provider(config: &TelemetryConfig) -> anyhow::Result<Option<SdkTracerProvider>> {
    let Some(endpoint) = &config.otlp_endpoint else {
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
            .with_endpoint(endpoint.clone())
            .with_metadata(metadata)
            .build()?
    } else {
        let traces = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
        opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(traces)
            .with_headers(
                config
                    .otlp_headers
                    .clone()
                    .into_iter()
                    .collect::<HashMap<_, _>>(),
            )
            .build()?
    };
    let batch = BatchConfigBuilder::default()
        .with_max_queue_size(config.max_queue)
        .with_scheduled_delay(Duration::from_millis(500))
        .build();
    let processor = BatchSpanProcessor::builder(exporter)
        .with_batch_config(batch)
        .build();
    Ok(Some(
        SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                config.sampling_ratio,
            ))))
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name(config.service_name.clone())
                    .build(),
            )
            .build(),
    ))
}

/// HTTP headers (or gRPC metadata as headers) as a propagation carrier.
struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// A request span that joins the caller's trace (W3C `traceparent`/`tracestate` in `headers`)
/// and carries the model and protocol; the rest of its attributes are recorded as they become
/// known.
pub fn request_span(
    headers: &http::HeaderMap,
    model: &str,
    protocol: &'static str,
) -> tracing::Span {
    request_span_with(|| headers.clone(), model, protocol)
}

/// [`request_span`] with the headers produced only when the span is recorded (gRPC metadata
/// must be copied into headers to be read).
pub fn request_span_with(
    headers: impl FnOnce() -> http::HeaderMap,
    model: &str,
    protocol: &'static str,
) -> tracing::Span {
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
        outcome = tracing::field::Empty,
    );
    if span.is_disabled() {
        return span;
    }
    let headers = headers();
    let parent = TraceContextPropagator::new().extract(&Headers(&headers));
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
    span
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
    }
}

/// The span's trace id as 32 hex digits, when the span is recorded.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    let id = context.span().span_context().trace_id();
    (id != opentelemetry::trace::TraceId::INVALID).then(|| id.to_string())
}
