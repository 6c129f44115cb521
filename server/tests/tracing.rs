//! Traces: a real OTLP/gRPC receiver runs in-process; requests carrying a W3C `traceparent`
//! produce spans in the caller's trace, with the stage children, the attributes, and a batch
//! span linked to the request it served.

use std::sync::{Arc, Mutex};

use infergate_config::TelemetryConfig;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use serde_json::json;
use tracing_subscriber::layer::SubscriberExt as _;

// In a test binary of its own: the subscriber set here is the only one in the process, so no
// other test's threads can cache a span site as uninteresting before it is installed.
#[allow(dead_code)]
#[path = "integration/common.rs"]
mod common;

use common::*;

#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes.iter().find(|a| a.key == key).and_then(|a| {
        match a.value.as_ref()?.value.as_ref()? {
            AnyValue::StringValue(s) => Some(s.clone()),
            AnyValue::IntValue(i) => Some(i.to_string()),
            other => Some(format!("{other:?}")),
        }
    })
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";
const GRPC_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const GRPC_PARENT: &str = "b7ad6b7169203331";

#[tokio::test]
async fn request_spans_join_the_callers_trace_with_stages_and_batch_links() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let provider = infergate_server::telemetry::provider(&TelemetryConfig {
        otlp_endpoint: Some(format!("http://{addr}")),
        ..TelemetryConfig::default()
    })
    .unwrap()
    .expect("an endpoint makes a provider");
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("infergate")));
    tracing::subscriber::set_global_default(subscriber).unwrap();

    // iris_mlp version 1 with dynamic batching, so execution happens in a batch span.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("iris_mlp/1")).unwrap();
    std::fs::copy(
        repo_dir().join("iris_mlp/1/model.onnx"),
        dir.path().join("iris_mlp/1/model.onnx"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("iris_mlp/config.toml"),
        "max_batch_size = 8\n[dynamic_batching]\n",
    )
    .unwrap();
    let s = TestServer::start_with(|c| c.models.repository = Some(dir.path().to_path_buf())).await;

    let body = json!({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]});
    let r = s
        .http
        .post(s.url("/v2/models/iris_mlp/infer"))
        .header("traceparent", format!("00-{TRACE}-{PARENT}-01"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-trace-id"], TRACE, "the trace id comes back");
    let mut grpc = s.grpc().await;
    let mut call = tonic::Request::new(iris_grpc(&[5.1, 3.5, 1.4, 0.2]));
    call.metadata_mut().insert(
        "traceparent",
        format!("00-{GRPC_TRACE}-{GRPC_PARENT}-01").parse().unwrap(),
    );
    let answer = grpc.model_infer(call).await.unwrap();
    assert_eq!(answer.metadata().get("x-trace-id").unwrap(), GRPC_TRACE);

    let flushed = tokio::task::spawn_blocking(move || provider.force_flush()).await;
    assert!(flushed.unwrap().is_ok());
    let spans = collector.0.lock().unwrap().clone();

    let request = spans
        .iter()
        .find(|s| hex(&s.trace_id) == TRACE && s.name == "infer iris_mlp")
        .unwrap_or_else(|| panic!("no request span in {:?}", names(&spans)));
    assert_eq!(
        hex(&request.parent_span_id),
        PARENT,
        "a child of the caller's span"
    );
    for (key, value) in [
        ("model", "iris_mlp"),
        ("protocol", "http"),
        ("version", "1"),
        ("outcome", "success"),
        ("platform", infergate_runtime::ort::PLATFORM),
    ] {
        assert_eq!(attribute(request, key).as_deref(), Some(value), "{key}");
    }
    assert!(
        attribute(request, "artifact_digest")
            .unwrap()
            .starts_with("sha256:")
    );
    let children: Vec<&str> = spans
        .iter()
        .filter(|s| s.parent_span_id == request.span_id)
        .map(|s| s.name.as_str())
        .collect();
    for stage in ["decode", "validate", "encode"] {
        assert!(
            children.contains(&stage),
            "{stage} missing from {children:?}"
        );
    }
    // The batch that served it: its own span, linked to the request span, with the model's
    // execution inside.
    let batch = spans
        .iter()
        .find(|s| {
            s.name == "batch_execute"
                && s.links
                    .iter()
                    .any(|l| hex(&l.trace_id) == TRACE && l.span_id == request.span_id)
        })
        .unwrap_or_else(|| panic!("no linked batch span in {:?}", names(&spans)));
    assert_eq!(attribute(batch, "batch_size").as_deref(), Some("1"));
    let execute = spans
        .iter()
        .find(|s| s.name == "execute" && s.parent_span_id == batch.span_id)
        .expect("an execute span inside the batch");
    assert!(attribute(execute, "compute_us").is_some());

    let grpc_request = spans
        .iter()
        .find(|s| hex(&s.trace_id) == GRPC_TRACE && s.name == "infer iris_mlp")
        .expect("the gRPC request span");
    assert_eq!(hex(&grpc_request.parent_span_id), GRPC_PARENT);
    assert_eq!(attribute(grpc_request, "protocol").as_deref(), Some("grpc"));
    s.stop().await;
}

fn names(spans: &[Span]) -> Vec<String> {
    spans
        .iter()
        .map(|s| format!("{} ({})", s.name, hex(&s.trace_id)))
        .collect()
}
