//! Traces: a real OTLP/gRPC receiver runs in-process; requests carrying a W3C `traceparent`
//! (HTTP, gRPC, a gRPC stream) produce spans in the caller's trace, with the stage children
//! (decode, validate, route, cache, queue wait, encode), the attributes (lineage included), a
//! batch span linked to the request it served and a shadow span linked to its primary; the
//! latency histogram carries the trace ids as exemplars; every span is counted as exported. A
//! server sampling nothing of its own makes no span for those requests, follows callers'
//! decisions, and still answers with trace ids.

use infergate_config::{RouteConfig, ShadowConfig, TelemetryConfig, VariantConfig};
use infergate_registry::{ArtifactKind, Lineage, NewArtifact, NewVersion, PLATFORM_ONNX, Registry};
use infergate_server::metrics::SpanLabels;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde_json::json;

// In a test binary of its own: the subscriber set here is the only one in the process, so no
// other test's threads can cache a span site as uninteresting before it is installed.
#[allow(dead_code)]
#[path = "integration/common.rs"]
mod common;

use common::*;

#[path = "integration/otlp.rs"]
mod otlp;

use otlp::{Collector, hex};

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes.iter().find(|a| a.key == key).and_then(|a| {
        match a.value.as_ref()?.value.as_ref()? {
            AnyValue::StringValue(s) => Some(s.clone()),
            AnyValue::IntValue(i) => Some(i.to_string()),
            AnyValue::BoolValue(b) => Some(b.to_string()),
            other => Some(format!("{other:?}")),
        }
    })
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";
const GRPC_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const GRPC_PARENT: &str = "b7ad6b7169203331";
const ROUTE_TRACE: &str = "11111111111111111111111111111111";
const STREAM_TRACE: &str = "22222222222222222222222222222222";
const STREAM_PARENT: &str = "2222222222222222";
const LINEAGE_TRACE: &str = "33333333333333333333333333333333";
const UNSAMPLED_TRACE: &str = "44444444444444444444444444444444";
const SAMPLED_TRACE: &str = "55555555555555555555555555555555";

fn traceparent(trace: &str, parent: &str) -> String {
    format!("00-{trace}-{parent}-01")
}

/// POSTs `body` to `path` as a child of span `PARENT` in `trace`; it must succeed.
async fn post_traced(s: &TestServer, path: &str, trace: &str, body: &serde_json::Value) {
    let r = s
        .http
        .post(s.url(path))
        .header("traceparent", traceparent(trace, PARENT))
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{path}: {}", r.text().await.unwrap());
}

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
    let counts = Family::<SpanLabels, Counter>::default();
    let provider = infergate_server::telemetry::provider(
        &TelemetryConfig {
            otlp_endpoint: Some(format!("http://{addr}")),
            ..TelemetryConfig::default()
        },
        &counts,
    )
    .unwrap()
    .expect("an endpoint makes a provider");
    // The subscriber `serve` installs: OpenTelemetry for spans, the log layer for events.
    let (dispatch, _) = infergate_server::logging::build(
        &infergate_config::LogConfig::default(),
        Some(provider.tracer("infergate")),
        std::io::sink,
        false,
    );
    tracing::dispatcher::set_global_default(dispatch).unwrap();

    // iris_mlp version 1 with dynamic batching, so execution happens in a batch span, and a
    // response cache.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("iris_mlp/1")).unwrap();
    std::fs::copy(
        repo_dir().join("iris_mlp/1/model.onnx"),
        dir.path().join("iris_mlp/1/model.onnx"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("iris_mlp/config.toml"),
        "max_batch_size = 8\n[dynamic_batching]\n[response_cache]\n",
    )
    .unwrap();
    // A registry version quantized from version 1, for the lineage attributes.
    let registry_dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(repo_dir().join("iris_mlp/1/model.onnx")).unwrap();
    let reg = Registry::open(registry_dir.path()).unwrap();
    for lineage in [
        Lineage::default(),
        Lineage {
            parent: Some(1),
            quantization: Some("int8-qdq-per-channel".into()),
            dataset_digest: Some("sha256:feed".into()),
            ..Lineage::default()
        },
    ] {
        reg.register(NewVersion {
            model: "iris_reg".into(),
            platform: PLATFORM_ONNX.into(),
            signature: infergate_registry::inspect::onnx_signature(&bytes).unwrap(),
            artifacts: vec![NewArtifact {
                kind: ArtifactKind::Onnx,
                bytes: bytes.clone(),
            }],
            lineage,
            author: "test".into(),
            ..NewVersion::default()
        })
        .unwrap();
    }
    let mut config = loopback_config();
    config.models.repository = Some(dir.path().to_path_buf());
    config.models.registry = Some(registry_dir.path().to_path_buf());
    config.routes = vec![RouteConfig {
        name: "iris-shadowed".into(),
        variants: vec![VariantConfig {
            name: "primary".into(),
            model: "iris_mlp".into(),
            version: Some("1".into()),
            weight: 1,
        }],
        shadow: Some(ShadowConfig {
            model: "iris_mlp".into(),
            version: Some("1".into()),
            fraction: 1.0,
            queue: 8,
        }),
        canary: None,
        fallback: None,
    }];
    let repository = infergate_server::repository::Repository::new(
        config.models.repository.clone(),
        Some(ort_runtime()),
        config.runtime.clone(),
    )
    .with_registry(std::sync::Arc::new(reg));
    let repository = std::sync::Arc::new(repository);
    repository.load_all().await.unwrap();
    // A second server over the same models that samples no request of its own.
    let mut unsampled_config = config.clone();
    unsampled_config.telemetry.sampling_ratio = 0.0;
    let s = TestServer::serve(config, std::sync::Arc::clone(&repository)).await;
    let s0 = TestServer::serve(unsampled_config, repository).await;

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

    // Through a route with a shadow; wait for the shadow call to finish.
    let routed = json!({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [6.7, 3.0, 5.2, 2.3]}]});
    post_traced(&s, "/v2/models/iris-shadowed/infer", ROUTE_TRACE, &routed).await;
    for _ in 0..200 {
        let report = s.admin_get_json("/admin/routes/iris-shadowed/shadow").await;
        if report["shadow"]["both_ok"] == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }

    // A stream: each message joins the trace the stream's metadata names.
    let mut stream_call =
        tonic::Request::new(tokio_stream::iter(vec![iris_grpc(&[5.9, 3.0, 5.1, 1.8])]));
    stream_call.metadata_mut().insert(
        "traceparent",
        traceparent(STREAM_TRACE, STREAM_PARENT).parse().unwrap(),
    );
    let mut answers = grpc
        .model_stream_infer(stream_call)
        .await
        .unwrap()
        .into_inner();
    let first = answers.message().await.unwrap().expect("one answer");
    assert_eq!(first.error_message, "");
    // The stream's metadata went out first: the message carries its trace id itself.
    let trace_param = first.infer_response.as_ref().unwrap().parameters["trace_id"].clone();
    assert_eq!(
        trace_param.parameter_choice,
        Some(
            infergate_proto::inference::infer_parameter::ParameterChoice::StringParam(
                STREAM_TRACE.into()
            )
        )
    );

    // A registry version with lineage.
    post_traced(
        &s,
        "/v2/models/iris_reg/versions/2/infer",
        LINEAGE_TRACE,
        &routed,
    )
    .await;

    // Sampling ratio 0: a request of its own makes no span but still answers with a trace id;
    // a caller's decision is followed both ways. Distinct inputs, so each one runs (no cache
    // hit) through the batcher.
    let mut unsampled_ids = vec![UNSAMPLED_TRACE.to_string()];
    for (traceparent, data) in [
        (None, [4.9, 3.0, 1.4, 0.2]),
        (
            Some(format!("00-{UNSAMPLED_TRACE}-{PARENT}-00")),
            [4.7, 3.2, 1.3, 0.2],
        ),
        (
            Some(traceparent(SAMPLED_TRACE, PARENT)),
            [4.6, 3.1, 1.5, 0.2],
        ),
    ] {
        let body = json!({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": data}]});
        let mut post = s0
            .http
            .post(s0.url("/v2/models/iris_mlp/infer"))
            .json(&body);
        if let Some(value) = &traceparent {
            post = post.header("traceparent", value);
        }
        let r = post.send().await.unwrap();
        assert_eq!(r.status(), 200);
        let id = r.headers()["x-trace-id"].to_str().unwrap().to_string();
        assert_eq!(id.len(), 32, "{id}");
        match traceparent {
            None => unsampled_ids.push(id),
            Some(t) => assert!(t.contains(&id), "{t} answered {id}"),
        }
    }
    s0.stop().await;

    // Exemplars: OpenMetrics buckets name the traces of sampled requests; the classic format
    // leaves them out.
    let open = s
        .http
        .get(s.admin_url("/metrics"))
        .header("accept", "application/openmetrics-text; version=1.0.0")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for trace in [TRACE, GRPC_TRACE, ROUTE_TRACE, STREAM_TRACE, LINEAGE_TRACE] {
        assert!(
            open.lines().any(
                |l| l.starts_with("infergate_request_duration_seconds_bucket{")
                    && l.contains(&format!(" # {{trace_id=\"{trace}\"}} "))
            ),
            "no exemplar for {trace} in\n{open}"
        );
    }
    let classic = s.admin_get_text("/metrics").await;
    assert!(classic.contains("infergate_request_duration_seconds_bucket{"));
    assert!(!classic.contains("trace_id"), "{classic}");

    let flushed = tokio::task::spawn_blocking(move || provider.force_flush()).await;
    assert!(flushed.unwrap().is_ok());
    let spans = collector.0.lock().unwrap().clone();
    let count = |result| counts.get_or_create(&SpanLabels { result }).get();
    assert_eq!(count("exported"), spans.len() as u64, "every span counted");
    assert_eq!(count("dropped") + count("failed"), 0);

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
    for stage in ["decode", "validate", "cache", "encode"] {
        assert!(
            children.contains(&stage),
            "{stage} missing from {children:?}"
        );
    }
    let cache = child(&spans, request, "cache");
    assert_eq!(attribute(cache, "result").as_deref(), Some("miss"));
    // Waiting for the batch happens under the cache lookup (a miss computes).
    child(&spans, cache, "queue_wait");
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
    // The same input again: answered from the cache.
    let cache = child(&spans, grpc_request, "cache");
    assert_eq!(attribute(cache, "result").as_deref(), Some("hit"));

    // The route: which variant, and that the request was mirrored.
    let routed = request_span(&spans, ROUTE_TRACE, "infer iris-shadowed");
    let route = child(&spans, routed, "route");
    assert_eq!(attribute(route, "variant").as_deref(), Some("primary"));
    assert_eq!(attribute(route, "mirrored").as_deref(), Some("true"));
    // The shadow call: a trace of its own, linked to the primary request's span.
    let shadow = spans
        .iter()
        .find(|s| {
            s.name == "shadow iris_mlp" && s.links.iter().any(|l| l.span_id == routed.span_id)
        })
        .unwrap_or_else(|| panic!("no linked shadow span in {:?}", names(&spans)));
    assert_ne!(hex(&shadow.trace_id), ROUTE_TRACE);
    assert_eq!(attribute(shadow, "outcome").as_deref(), Some("success"));
    // Its stages sit under it: the same input as the primary's, so a cache hit.
    let cache = child(&spans, shadow, "cache");
    assert_eq!(attribute(cache, "result").as_deref(), Some("hit"));

    let streamed = request_span(&spans, STREAM_TRACE, "infer iris_mlp");
    assert_eq!(hex(&streamed.parent_span_id), STREAM_PARENT);
    assert_eq!(
        attribute(streamed, "protocol").as_deref(),
        Some("grpc_stream")
    );
    assert_eq!(attribute(streamed, "outcome").as_deref(), Some("success"));

    // The server that samples nothing of its own: no span in the unsampled traces, all of them
    // in the sampled caller's, and every batch span linked to a sampled request.
    for id in &unsampled_ids {
        assert!(
            !spans.iter().any(|s| &hex(&s.trace_id) == id),
            "a span in unsampled trace {id}: {:?}",
            names(&spans)
        );
    }
    let sampled = request_span(&spans, SAMPLED_TRACE, "infer iris_mlp");
    for stage in ["decode", "validate", "encode"] {
        child(&spans, sampled, stage);
    }
    child(&spans, child(&spans, sampled, "cache"), "queue_wait");
    assert!(
        spans
            .iter()
            .filter(|s| s.name == "batch_execute")
            .all(|s| !s.links.is_empty())
    );

    let lineage = request_span(&spans, LINEAGE_TRACE, "infer iris_reg");
    for (key, value) in [
        ("version", "2"),
        ("lineage_parent", "1"),
        ("quantization", "int8-qdq-per-channel"),
        ("dataset_digest", "sha256:feed"),
    ] {
        assert_eq!(attribute(lineage, key).as_deref(), Some(value), "{key}");
    }
    s.stop().await;
}

fn request_span<'a>(spans: &'a [Span], trace: &str, name: &str) -> &'a Span {
    spans
        .iter()
        .find(|s| hex(&s.trace_id) == trace && s.name == name)
        .unwrap_or_else(|| panic!("no {name} in trace {trace}: {:?}", names(spans)))
}

fn child<'a>(spans: &'a [Span], parent: &Span, name: &str) -> &'a Span {
    spans
        .iter()
        .find(|s| s.parent_span_id == parent.span_id && s.name == name)
        .unwrap_or_else(|| panic!("no {name} under {}: {:?}", parent.name, names(spans)))
}

fn names(spans: &[Span]) -> Vec<String> {
    spans
        .iter()
        .map(|s| format!("{} ({})", s.name, hex(&s.trace_id)))
        .collect()
}
