//! The text-embedding HTTP surface clients already call: OpenAI's `POST /v1/embeddings`, and
//! text-embeddings-inference's `POST /embed` and `GET /info`. Each request becomes a core
//! `InferRequest` (a BYTES `text` input) and goes through the same stack as KServe V2.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use bytes::Bytes;
use infergate_runtime::{NamedTensor, Tensor, text};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::Gateway;
use crate::core::{InferRequest, InferResponse, ParamValue, Protocol};
use crate::error::{ErrorKind, ServeError};
use crate::layers::tokenize::PROMPT_TOKENS;

use super::submit::submit;

/// One input or a list of them: strings, or token ids (OpenAI's other form).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Inputs {
    One(String),
    Many(Vec<String>),
    Ids(Vec<i64>),
    ManyIds(Vec<Vec<i64>>),
}

impl Inputs {
    /// The `text` input's elements, and the parameter that says they are token ids
    /// ([`crate::text::TOKEN_IDS`]: each element the ids as little-endian int64).
    fn into_elements(self) -> (Vec<Bytes>, Option<(String, ParamValue)>) {
        let ids = |rows: Vec<Vec<i64>>| {
            let elements = rows
                .iter()
                .map(|r| {
                    r.iter()
                        .flat_map(|id| id.to_le_bytes())
                        .collect::<Vec<u8>>()
                })
                .map(Bytes::from)
                .collect();
            let flag = (crate::text::TOKEN_IDS.to_owned(), ParamValue::Bool(true));
            (elements, Some(flag))
        };
        match self {
            Self::One(s) => (vec![Bytes::from(s)], None),
            Self::Many(v) => (v.into_iter().map(Bytes::from).collect(), None),
            Self::Ids(v) => ids(vec![v]),
            Self::ManyIds(v) => ids(v),
        }
    }
}

/// `POST /v1/embeddings` (OpenAI).
#[derive(Debug, Deserialize)]
pub(crate) struct OpenAiRequest {
    input: Inputs,
    model: String,
    #[serde(default)]
    encoding_format: Option<String>,
    #[serde(default)]
    dimensions: Option<i64>,
    /// OpenAI's end-user id: accepted, not used.
    #[serde(default)]
    #[allow(dead_code)]
    user: Option<String>,
}

/// `POST /embed` (text-embeddings-inference); `model` is infergate's addition for servers with
/// more than one text model.
#[derive(Debug, Deserialize)]
pub(crate) struct TeiRequest {
    inputs: Inputs,
    #[serde(default)]
    normalize: Option<bool>,
    #[serde(default)]
    truncate: Option<bool>,
    #[serde(default)]
    dimensions: Option<i64>,
    #[serde(default)]
    model: Option<String>,
}

/// The error body OpenAI's clients read: `{"error": {"message", "type", "param", "code"}}`.
fn openai_error(e: &ServeError) -> Response {
    let kind = match e.kind {
        ErrorKind::InvalidInput | ErrorKind::TooLarge => "invalid_request_error",
        ErrorKind::NotFound => "not_found_error",
        ErrorKind::RateLimited => "rate_limit_error",
        ErrorKind::Unauthenticated => "authentication_error",
        ErrorKind::Forbidden => "permission_error",
        _ => "server_error",
    };
    with_status(
        e,
        json!({"error": {"message": e.message, "type": kind, "param": null, "code": null}}),
    )
}

/// TEI's error body: `{"error": message, "error_type": kind}`.
fn tei_error(e: &ServeError) -> Response {
    let kind = match e.kind {
        ErrorKind::InvalidInput | ErrorKind::TooLarge => "Validation",
        ErrorKind::Overloaded | ErrorKind::RateLimited => "Overloaded",
        ErrorKind::NotReady => "Unhealthy",
        _ => "Backend",
    };
    with_status(e, json!({"error": e.message, "error_type": kind}))
}

fn with_status(e: &ServeError, body: Value) -> Response {
    let mut response = (e.kind.http_status(), Json(body)).into_response();
    if matches!(e.kind, ErrorKind::Overloaded | ErrorKind::NotReady) {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

fn bad_json(e: &JsonRejection) -> ServeError {
    ServeError::invalid(format!("invalid request body: {}", e.body_text()))
}

/// The embedding text models served now, by name (ready default versions).
fn text_models(g: &Gateway) -> Vec<Arc<crate::repository::ModelVersion>> {
    let mut names: Vec<String> = g
        .repository
        .index(true)
        .into_iter()
        .map(|e| e.name)
        .collect();
    names.dedup();
    names
        .iter()
        .filter_map(|n| g.repository.resolve(n, None).ok())
        .filter(|v| v.text.is_some())
        .collect()
}

/// The model a TEI request is for: the one it names, else the only (first) text model.
fn tei_model(g: &Gateway, named: Option<String>) -> Result<String, ServeError> {
    if let Some(name) = named {
        return Ok(name);
    }
    text_models(g)
        .first()
        .map(|v| v.name.clone())
        .ok_or_else(|| ServeError::not_found("no text-embedding model is being served"))
}

/// Sends `inputs` through admission and the stack; returns the response, its `[n, dim]` values,
/// `dim` and the token count.
async fn embed(
    g: &Gateway,
    headers: &HeaderMap,
    peer: SocketAddr,
    model: String,
    inputs: Inputs,
    mut params: Vec<(String, ParamValue)>,
) -> Result<(InferResponse, Vec<f32>, usize, usize), ServeError> {
    let (elements, token_ids) = inputs.into_elements();
    if elements.is_empty() {
        return Err(ServeError::invalid(
            "input is empty: send at least one string",
        ));
    }
    params.extend(token_ids);
    let n = elements.len();
    let mut req = InferRequest::new(model, None, Protocol::Http);
    req.inputs.push(NamedTensor::new(
        text::TEXT_INPUT,
        Tensor::from_elements(vec![n as i64], elements)
            .map_err(|e| ServeError::internal(e.to_string()))?,
    ));
    req.parameters = params;
    let resp = submit(g, headers, peer, req).await?;
    let output = resp.output(text::EMBEDDING_OUTPUT);
    let dim = output
        .and_then(|t| t.shape().get(1).copied())
        .unwrap_or(1)
        .max(1) as usize;
    let values = output.and_then(|t| t.to_vec::<f32>()).ok_or_else(|| {
        ServeError::invalid(format!(
            "model '{}' is not a text-embedding model (it answers no '{}' output)",
            resp.model_name,
            text::EMBEDDING_OUTPUT
        ))
    })?;
    let tokens = resp
        .parameters
        .iter()
        .find_map(|(k, v)| match v {
            ParamValue::Int64(n) if k == PROMPT_TOKENS => Some(*n as usize),
            _ => None,
        })
        .unwrap_or(0);
    Ok((resp, values, dim, tokens))
}

fn dimensions(d: Option<i64>) -> Vec<(String, ParamValue)> {
    d.map(|d| ("dimensions".to_string(), ParamValue::Int64(d)))
        .into_iter()
        .collect()
}

/// `POST /v1/embeddings`.
pub(crate) async fn openai(
    State(g): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Json<OpenAiRequest>, JsonRejection>,
) -> Response {
    let run = async {
        let Json(body) = body.map_err(|e| bad_json(&e))?;
        let base64 = match body.encoding_format.as_deref() {
            None | Some("float") => false,
            Some("base64") => true,
            Some(other) => {
                return Err(ServeError::invalid(format!(
                    "encoding_format must be 'float' or 'base64', not '{other}'"
                )));
            }
        };
        let params = dimensions(body.dimensions);
        let (resp, values, dim, tokens) =
            embed(&g, &headers, peer, body.model, body.input, params).await?;
        let data: Vec<Value> = values
            .chunks_exact(dim)
            .enumerate()
            .map(|(index, row)| {
                let embedding = if base64 {
                    let bytes: Vec<u8> = row.iter().flat_map(|x| x.to_le_bytes()).collect();
                    Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
                } else {
                    json!(row)
                };
                json!({"object": "embedding", "index": index, "embedding": embedding})
            })
            .collect();
        Ok(json!({
            "object": "list",
            "data": data,
            "model": resp.model_name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }))
    };
    match run.await {
        Ok(v) => Json(v).into_response(),
        Err(e) => openai_error(&e),
    }
}

/// `POST /embed`: a list of vectors, one per input.
pub(crate) async fn tei(
    State(g): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Json<TeiRequest>, JsonRejection>,
) -> Response {
    let run = async {
        let Json(body) = body.map_err(|e| bad_json(&e))?;
        let model = tei_model(&g, body.model)?;
        let mut params = dimensions(body.dimensions);
        if let Some(n) = body.normalize {
            params.push(("normalize".into(), ParamValue::Bool(n)));
        }
        if let Some(t) = body.truncate {
            params.push(("truncate".into(), ParamValue::Bool(t)));
        }
        let (_, values, dim, _) = embed(&g, &headers, peer, model, body.inputs, params).await?;
        let vectors: Vec<&[f32]> = values.chunks_exact(dim).collect();
        Ok(json!(vectors))
    };
    match run.await {
        Ok(v) => Json(v).into_response(),
        Err(e) => tei_error(&e),
    }
}

/// `GET /info`: TEI's description of the served text model.
pub(crate) async fn info(State(g): State<Arc<Gateway>>) -> Response {
    let models = text_models(&g);
    let Some(first) = models.first() else {
        return tei_error(&ServeError::not_found(
            "no text-embedding model is being served",
        ));
    };
    let processor = &first.text.as_ref().expect("text models only").processor;
    let batching = first.config.batching();
    Json(json!({
        "model_id": first.name,
        "model_sha": first.digest,
        "model_dtype": first.model.platform(),
        "model_type": {"embedding": {"pooling": format!("{:?}", processor.pooling).to_lowercase()}},
        "max_input_length": processor.max_tokens,
        "max_batch_tokens": batching.map_or(0, |b| b.max_batch_tokens),
        "max_batch_requests": first.config.max_batch_size,
        "max_client_batch_size": g.config.server.max_tensor_elements,
        "max_concurrent_requests": first.config.max_concurrent_requests,
        "tokenization_workers": first.config.embedding.as_ref().and_then(|e| e.tokenizer_threads),
        "dimensions": processor.dim,
        "models": models.iter().map(|m| m.name.clone()).collect::<Vec<_>>(),
        "version": env!("CARGO_PKG_VERSION"),
    }))
    .into_response()
}
