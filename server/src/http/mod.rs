//! The KServe V2 HTTP/REST front end: translates HTTP to the core request and back.

mod classify;
pub(crate) mod codec;
mod embeddings;
mod infer;
mod listen;
mod numbers;
mod onepass;
mod submit;

pub(crate) use infer::variant_of;
pub use listen::{ConnLimits, serve};

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use infergate_proto::inference as pb;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::Gateway;
use crate::error::{ErrorKind, ServeError};
use crate::views;

/// `{model}` and optional `{version}` path segments.
#[derive(Debug, Deserialize)]
pub(crate) struct ModelPath {
    model: String,
    version: Option<String>,
}

/// The public router (port 8000).
pub fn router(gateway: Arc<Gateway>) -> Router {
    let body_limit = gateway.config.server.max_body_bytes;
    let router = Router::new()
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2", get(server_metadata))
        .route("/v2/models/{model}", get(model_metadata))
        .route("/v2/models/{model}/versions/{version}", get(model_metadata))
        .route("/v2/models/{model}/ready", get(model_ready))
        .route(
            "/v2/models/{model}/versions/{version}/ready",
            get(model_ready),
        )
        .route(
            "/v2/models/{model}/infer",
            post(infer::infer).route_layer(from_fn_with_state(Arc::clone(&gateway), infer::admit)),
        )
        .route(
            "/v2/models/{model}/versions/{version}/infer",
            post(infer::infer).route_layer(from_fn_with_state(Arc::clone(&gateway), infer::admit)),
        )
        .route("/v2/models/{model}/config", get(model_config))
        .route(
            "/v2/models/{model}/versions/{version}/config",
            get(model_config),
        )
        .route("/v2/models/stats", get(all_stats))
        .route("/v2/models/{model}/stats", get(model_stats))
        .route(
            "/v2/models/{model}/versions/{version}/stats",
            get(model_stats),
        )
        .route("/v2/repository/index", post(repository_index))
        // image classification for curl users: an upload in, top-k labels out
        .route(
            "/v2/models/{model}/classify",
            post(classify::classify).layer(DefaultBodyLimit::max(body_limit)),
        )
        .route(
            "/v2/models/{model}/versions/{version}/classify",
            post(classify::classify).layer(DefaultBodyLimit::max(body_limit)),
        )
        // OpenAI's and text-embeddings-inference's APIs for text-embedding models
        .route("/v1/embeddings", post(embeddings::openai))
        .route("/embed", post(embeddings::tei))
        .route("/info", get(embeddings::info))
        .route(
            "/v2/repository/models/{model}/load",
            post(control_elsewhere),
        )
        .route(
            "/v2/repository/models/{model}/unload",
            post(control_elsewhere),
        )
        .fallback(not_found)
        .layer(
            tower_http::compression::CompressionLayer::new()
                .gzip(true)
                .deflate(true)
                .compress_when(compress_when(gateway.config.server.compress_min_bytes)),
        );
    // Tokens on the public port are optional; without them the check is not installed at all.
    let router = if gateway.config.security.require_infer_token {
        router.layer(from_fn_with_state(
            Arc::clone(&gateway),
            crate::security::public_guard,
        ))
    } else {
        router
    };
    router.with_state(gateway)
}

/// tower-http's default choice of what to compress (not gRPC, images or event streams), with
/// the size floor from `server.compress_min_bytes` instead of its 32 bytes: a small JSON
/// answer gains nothing on the wire and its gzip costs the server more than a small model's
/// inference.
fn compress_when(min_bytes: u16) -> impl tower_http::compression::Predicate {
    use tower_http::compression::predicate::{NotForContentType, Predicate as _, SizeAbove};
    SizeAbove::new(min_bytes)
        .and(NotForContentType::GRPC)
        .and(NotForContentType::IMAGES)
        .and(NotForContentType::SSE)
}

/// `{"error": message}` with the class's status (and Retry-After when overloaded).
pub(crate) fn error_response(e: &ServeError) -> Response {
    let mut response = (
        e.kind.http_status(),
        json_bytes(&json!({ "error": e.message })),
    )
        .into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if matches!(e.kind, ErrorKind::Overloaded | ErrorKind::NotReady) {
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

pub(crate) fn json_response(value: &Value) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        json_bytes(value),
    )
        .into_response()
}

fn json_bytes(value: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(value).unwrap_or_default())
}

fn result(r: Result<Value, ServeError>) -> Response {
    match r {
        Ok(v) => json_response(&v),
        Err(e) => error_response(&e),
    }
}

async fn not_found() -> Response {
    error_response(&ServeError::not_found("no such endpoint"))
}

async fn live() -> StatusCode {
    StatusCode::OK
}

async fn ready(State(g): State<Arc<Gateway>>) -> StatusCode {
    if g.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    }
}

async fn server_metadata() -> Response {
    json_response(&json!({
        "name": views::SERVER_NAME,
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": views::EXTENSIONS,
    }))
}

async fn model_metadata(State(g): State<Arc<Gateway>>, Path(p): Path<ModelPath>) -> Response {
    result(
        views::metadata_or_route(
            &g.repository,
            &g.routes.load(),
            &p.model,
            p.version.as_deref(),
        )
        .map(|m| metadata_json(&m)),
    )
}

pub(crate) fn metadata_json(m: &pb::ModelMetadataResponse) -> Value {
    let tensors = |ts: &[pb::model_metadata_response::TensorMetadata]| -> Vec<Value> {
        ts.iter()
            .map(|t| json!({"name": t.name, "datatype": t.datatype, "shape": t.shape}))
            .collect()
    };
    let mut body = json!({
        "name": m.name,
        "versions": m.versions,
        "platform": m.platform,
        "inputs": tensors(&m.inputs),
        "outputs": tensors(&m.outputs),
    });
    if !m.properties.is_empty() {
        let sorted: std::collections::BTreeMap<_, _> = m.properties.iter().collect();
        body["parameters"] = json!(sorted);
    }
    body
}

async fn model_ready(State(g): State<Arc<Gateway>>, Path(p): Path<ModelPath>) -> Response {
    match g.repository.resolve(&p.model, p.version.as_deref()) {
        Ok(_) if g.is_ready() => StatusCode::OK.into_response(),
        Ok(_) => StatusCode::BAD_REQUEST.into_response(),
        Err(e) => {
            let mut response = error_response(&e);
            *response.status_mut() = StatusCode::BAD_REQUEST;
            response
        }
    }
}

async fn model_config(State(g): State<Arc<Gateway>>, Path(p): Path<ModelPath>) -> Response {
    result(
        g.repository
            .resolve(&p.model, p.version.as_deref())
            .map(|t| config_json(&views::model_config(&t))),
    )
}

fn dtype_name(code: i32) -> &'static str {
    pb::DataType::try_from(code).map_or("TYPE_INVALID", |d| d.as_str_name())
}

fn config_json(c: &pb::ModelConfig) -> Value {
    let policy = match c
        .version_policy
        .as_ref()
        .and_then(|p| p.policy_choice.as_ref())
    {
        Some(pb::model_version_policy::PolicyChoice::Latest(l)) => {
            json!({"latest": {"num_versions": l.num_versions}})
        }
        Some(pb::model_version_policy::PolicyChoice::Specific(s)) => {
            json!({"specific": {"versions": s.versions}})
        }
        _ => json!({"all": {}}),
    };
    let mut config = json!({
        "name": c.name,
        "platform": c.platform,
        "backend": c.backend,
        "version_policy": policy,
        "max_batch_size": c.max_batch_size,
        "input": c.input.iter().map(|i| json!({"name": i.name, "data_type": dtype_name(i.data_type), "format": "FORMAT_NONE", "dims": i.dims})).collect::<Vec<_>>(),
        "output": c.output.iter().map(|o| json!({"name": o.name, "data_type": dtype_name(o.data_type), "dims": o.dims})).collect::<Vec<_>>(),
        "instance_group": c.instance_group.iter().map(|g| json!({"name": g.name, "kind": "KIND_CPU", "count": g.count})).collect::<Vec<_>>(),
    });
    if let Some(b) = &c.dynamic_batching {
        config["dynamic_batching"] = json!({
            "preferred_batch_size": b.preferred_batch_size,
            "max_queue_delay_microseconds": b.max_queue_delay_microseconds,
        });
    }
    config
}

fn duration_json(d: Option<pb::StatisticDuration>) -> Value {
    let d = d.unwrap_or_default();
    json!({"count": d.count, "ns": d.ns})
}

fn stats_json(s: &pb::ModelStatisticsResponse) -> Value {
    let models: Vec<Value> = s
        .model_stats
        .iter()
        .map(|m| {
            let i = m.inference_stats.unwrap_or_default();
            json!({
                "name": m.name,
                "version": m.version,
                "last_inference": m.last_inference,
                "inference_count": m.inference_count,
                "execution_count": m.execution_count,
                "inference_stats": {
                    "success": duration_json(i.success),
                    "fail": duration_json(i.fail),
                    "queue": duration_json(i.queue),
                    "compute_input": duration_json(i.compute_input),
                    "compute_infer": duration_json(i.compute_infer),
                    "compute_output": duration_json(i.compute_output),
                    "cache_hit": duration_json(i.cache_hit),
                    "cache_miss": duration_json(i.cache_miss),
                },
                "batch_stats": m.batch_stats.iter().map(|b| json!({
                    "batch_size": b.batch_size,
                    "compute_input": duration_json(b.compute_input),
                    "compute_infer": duration_json(b.compute_infer),
                    "compute_output": duration_json(b.compute_output),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({ "model_stats": models })
}

async fn all_stats(State(g): State<Arc<Gateway>>) -> Response {
    result(views::statistics(&g.repository, None, None).map(|s| stats_json(&s)))
}

async fn model_stats(State(g): State<Arc<Gateway>>, Path(p): Path<ModelPath>) -> Response {
    result(
        views::statistics(&g.repository, Some(&p.model), p.version.as_deref()).map(|s| {
            let mut json = stats_json(&s);
            add_token_stats(&g.repository, &mut json);
            json
        }),
    )
}

/// Text models' entries gain `token_stats`: real and padded tokens executed, and the latest
/// executions as `[rows, real tokens, padded tokens]`.
fn add_token_stats(repo: &crate::repository::Repository, json: &mut Value) {
    use std::sync::atomic::Ordering::Relaxed;
    let Some(models) = json.get_mut("model_stats").and_then(Value::as_array_mut) else {
        return;
    };
    for entry in models {
        let (Some(name), Some(version)) = (entry["name"].as_str(), entry["version"].as_str())
        else {
            continue;
        };
        let Some(v) = repo
            .versions(name)
            .into_iter()
            .find(|v| v.version_label == version && v.text.is_some())
        else {
            continue;
        };
        let t = &v.stats.tokens;
        entry["token_stats"] = json!({
            "real_tokens": t.real.load(Relaxed),
            "padded_tokens": t.padded.load(Relaxed),
            "max_padded_tokens": t.max_padded.load(Relaxed),
            "executions": t.recent(),
        });
    }
}

pub(crate) fn index_json(index: &pb::RepositoryIndexResponse) -> Value {
    Value::Array(
        index
            .models
            .iter()
            .map(|m| {
                let mut entry = json!({"name": m.name, "state": m.state});
                if !m.version.is_empty() {
                    entry["version"] = json!(m.version);
                }
                if !m.reason.is_empty() {
                    entry["reason"] = json!(m.reason);
                }
                entry
            })
            .collect(),
    )
}

/// `POST /v2/repository/index` with an optional `{"ready": bool}` body.
pub(crate) async fn repository_index(State(g): State<Arc<Gateway>>, body: Bytes) -> Response {
    let ready = if body.iter().all(u8::is_ascii_whitespace) {
        false
    } else {
        match serde_json::from_slice::<Value>(&body) {
            Ok(v) => v.get("ready").and_then(Value::as_bool).unwrap_or(false),
            Err(e) => {
                return error_response(&ServeError::invalid(format!(
                    "malformed request JSON: {e}"
                )));
            }
        }
    };
    json_response(&index_json(&views::index(&g.repository, ready)))
}

async fn control_elsewhere() -> Response {
    error_response(&ServeError::new(
        ErrorKind::Forbidden,
        "model load/unload is served on the admin listener, not the public port",
    ))
}
