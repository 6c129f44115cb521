//! `POST /v2/models/{m}[/versions/{v}]/infer`: bounded body reading, decompression, and the
//! JSON / binary-extension / raw-binary request forms.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, header};

use crate::layers::route::{ROUTE_KEY_HEADER, VARIANT_HEADER, VARIANT_PARAM};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};

use super::{ModelPath, codec, error_response};
use crate::Gateway;
use crate::error::{ErrorKind, ServeError};

/// The header that splits a body into its JSON part and its binary tail.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// Admission before the body is read: concurrency limits and the client's rate limit.
pub(crate) async fn admit(
    State(g): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    // /v2/models/{model}/...
    let model = req
        .uri()
        .path()
        .split('/')
        .nth(3)
        .unwrap_or_default()
        .to_string();
    let client = req
        .headers()
        .get(g.admission.client_key_header.as_str())
        .and_then(|v| v.to_str().ok())
        .map_or_else(|| peer.ip().to_string(), str::to_string);
    match g
        .admission
        .admit(&g.repository, &g.metrics, &model, &client)
    {
        Ok(admitted) => {
            let response = next.run(req).await;
            drop(admitted);
            response
        }
        Err(e) => error_response(&e),
    }
}

pub(crate) async fn infer(
    State(g): State<Arc<Gateway>>,
    Path(path): Path<ModelPath>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    use tracing::Instrument as _;
    let crate::telemetry::RequestTrace { span, trace_id } = crate::telemetry::request_span(
        &headers,
        &path.model,
        "http",
        g.config.telemetry.sampling_ratio,
    );
    let mut response = match handle(&g, path, &headers, body)
        .instrument(span.clone())
        .await
    {
        Ok(response) => response,
        Err(e) => {
            span.record("outcome", e.kind.as_str());
            error_response(&e)
        }
    };
    if let Some(id) = trace_id.and_then(|id| HeaderValue::from_str(&id).ok()) {
        response.headers_mut().insert(
            header::HeaderName::from_static(crate::telemetry::TRACE_ID_HEADER),
            id,
        );
    }
    response
}

async fn handle(
    g: &Gateway,
    path: ModelPath,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ServeError> {
    let limit = g.config.server.max_body_bytes;
    let patience = Duration::from_millis(g.config.server.body_timeout_ms);
    // A client that trickles its body (slowloris) must not hold a connection and an admission
    // permit forever.
    let body = tokio::time::timeout(patience, read_body(body, headers, limit))
        .await
        .map_err(|_| {
            ServeError::new(
                ErrorKind::RequestTimeout,
                format!(
                    "request body not received within {} ms (server.body_timeout_ms)",
                    patience.as_millis()
                ),
            )
        })??;
    let header_len = match headers.get(HEADER_LENGTH) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .ok_or_else(|| {
                    ServeError::invalid("Inference-Header-Content-Length is not a number")
                })?,
        ),
    };
    let decode = crate::telemetry::stage_span!("decode").entered();
    let (mut req, prefs) = match header_len {
        Some(0) if g.routes.load().is_route(&path.model) => {
            return Err(ServeError::invalid(format!(
                "'{}' is a route: a raw binary request (Inference-Header-Content-Length: 0) must name a model",
                path.model
            )));
        }
        Some(0) => {
            let target = g.repository.resolve(&path.model, path.version.as_deref())?;
            codec::decode_raw(path.model, path.version, &target, body)?
        }
        Some(n) if n > body.len() => {
            return Err(ServeError::invalid(format!(
                "Inference-Header-Content-Length {n} exceeds the body length {}",
                body.len()
            )));
        }
        Some(n) => codec::decode(path.model, path.version, &body[..n], body.slice(n..))?,
        None => codec::decode(path.model, path.version, &body, Bytes::new())?,
    };
    req.check_limits(g.config.server.max_tensor_elements)?;
    req.apply_parameters()?;
    req.route_key = headers
        .get(ROUTE_KEY_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    drop(decode);
    let resp = g.infer(req).await?;
    let encode = crate::telemetry::stage_span!("encode").entered();
    let (json, binary) = codec::encode(&resp, &prefs);
    let mut response = encode_http(json, binary);
    drop(encode);
    if let Some(variant) = variant_of(&resp).and_then(|v| HeaderValue::from_str(v).ok()) {
        response
            .headers_mut()
            .insert(header::HeaderName::from_static(VARIANT_HEADER), variant);
    }
    Ok(response)
}

/// The variant an A/B route served, if any.
pub(crate) fn variant_of(resp: &crate::core::InferResponse) -> Option<&str> {
    resp.parameters.iter().find_map(|(k, v)| match v {
        crate::core::ParamValue::String(s) if k == VARIANT_PARAM => Some(s.as_str()),
        _ => None,
    })
}

fn encode_http(json: Vec<u8>, binary: Vec<Bytes>) -> Response {
    if binary.is_empty() {
        return (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            json,
        )
            .into_response();
    }
    let json_len = json.len();
    let mut out = Vec::with_capacity(json_len + binary.iter().map(Bytes::len).sum::<usize>());
    out.extend_from_slice(&json);
    for part in &binary {
        out.extend_from_slice(part);
    }
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            ),
            (
                header::HeaderName::from_static(HEADER_LENGTH),
                HeaderValue::from(json_len),
            ),
        ],
        out,
    )
        .into_response()
}

fn too_large(limit: usize) -> ServeError {
    ServeError::new(
        ErrorKind::TooLarge,
        format!("request body exceeds the limit of {limit} bytes (server.max_body_bytes)"),
    )
}

/// Reads at most `limit` bytes, refusing a larger declared length before reading anything,
/// and inflates gzip/deflate bodies within the same limit.
async fn read_body(body: Body, headers: &HeaderMap, limit: usize) -> Result<Bytes, ServeError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large(limit));
    }
    let body = Limited::new(body, limit)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<LengthLimitError>().is_some() {
                too_large(limit)
            } else {
                ServeError::invalid(format!("cannot read the request body: {e}"))
            }
        })?
        .to_bytes();
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase());
    let inflated = match encoding.as_deref() {
        None | Some("") | Some("identity") => return Ok(body),
        Some("gzip") | Some("x-gzip") => {
            inflate(flate2::read::GzDecoder::new(&body[..]), limit, "gzip")?
        }
        Some("deflate") => {
            // HTTP "deflate" is zlib-wrapped; some clients send raw deflate.
            inflate(flate2::read::ZlibDecoder::new(&body[..]), limit, "deflate").or_else(|_| {
                inflate(
                    flate2::read::DeflateDecoder::new(&body[..]),
                    limit,
                    "deflate",
                )
            })?
        }
        Some(other) => {
            return Err(ServeError::invalid(format!(
                "unsupported Content-Encoding '{other}' (supported: gzip, deflate)"
            )));
        }
    };
    Ok(Bytes::from(inflated))
}

fn inflate(reader: impl Read, limit: usize, name: &str) -> Result<Vec<u8>, ServeError> {
    let mut out = Vec::new();
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| ServeError::invalid(format!("cannot decode {name} request body: {e}")))?;
    if out.len() > limit {
        return Err(too_large(limit));
    }
    Ok(out)
}
