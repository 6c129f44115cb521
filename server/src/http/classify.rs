//! `POST /v2/models/{model}/classify` (and `/versions/{version}/classify`): an image classifier
//! for curl users. The body is one encoded image (any content type but multipart) or a
//! `multipart/form-data` form whose file fields are the images; `?top_k=5` (default 5). The
//! answer: per image, the top classes with index, label, probability (softmax of the output)
//! and raw score. Runs through admission and the whole stack like a V2 request.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::extract::{ConnectInfo, FromRequest, Multipart, Path, Query, Request, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use infergate_runtime::image::IMAGE_INPUT;
use infergate_runtime::{NamedTensor, Tensor};
use serde::Deserialize;
use serde_json::{Value, json};

use super::ModelPath;
use super::error_response;
use super::submit::submit;
use crate::Gateway;
use crate::core::{InferRequest, Protocol};
use crate::error::ServeError;
use crate::layers::classify::top_k;

#[derive(Debug, Deserialize)]
pub(crate) struct ClassifyQuery {
    top_k: Option<usize>,
}

pub(crate) async fn classify(
    State(g): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(path): Path<ModelPath>,
    query: Result<Query<ClassifyQuery>, axum::extract::rejection::QueryRejection>,
    request: Request,
) -> Response {
    match run(&g, peer, path, query, request).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => error_response(&e),
    }
}

async fn run(
    g: &Gateway,
    peer: SocketAddr,
    path: ModelPath,
    query: Result<Query<ClassifyQuery>, axum::extract::rejection::QueryRejection>,
    request: Request,
) -> Result<Value, ServeError> {
    let Query(query) =
        query.map_err(|e| ServeError::invalid(format!("invalid query: {}", e.body_text())))?;
    let k = query.top_k.unwrap_or(5);
    if k == 0 {
        return Err(ServeError::invalid("top_k must be at least 1"));
    }
    let headers = request.headers().clone();
    let images = images(request).await?;
    if images.is_empty() {
        return Err(ServeError::invalid(
            "no image: send one as the body, or as file fields of a multipart/form-data form",
        ));
    }
    let n = images.len();
    let mut req = InferRequest::new(path.model, path.version, Protocol::Http);
    req.inputs.push(NamedTensor::new(
        IMAGE_INPUT,
        Tensor::from_elements(vec![n as i64], images)
            .map_err(|e| ServeError::internal(e.to_string()))?,
    ));
    let resp = submit(g, &headers, peer, req).await?;
    let output = resp
        .outputs
        .first()
        .ok_or_else(|| ServeError::internal("no output"))?;
    let scores = output.tensor.to_vec::<f32>().ok_or_else(|| {
        ServeError::invalid(format!(
            "model '{}' answers {} '{}': not class scores",
            resp.model_name,
            output.tensor.dtype(),
            output.name
        ))
    })?;
    let classes = scores.len() / n.max(1);
    let names = g
        .repository
        .resolve(&resp.model_name, Some(&resp.model_version))
        .ok()
        .and_then(|v| v.class_names.clone());
    let predictions: Vec<Value> = scores
        .chunks_exact(classes.max(1))
        .map(|row| {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let total: f64 = row.iter().map(|v| f64::from(v - max).exp()).sum();
            top_k(row, k)
                .into_iter()
                .map(|(index, score)| {
                    json!({
                        "index": index,
                        "label": names.as_ref().and_then(|n| n.get(index)),
                        "probability": f64::from(score - max).exp() / total,
                        "score": score,
                    })
                })
                .collect::<Value>()
        })
        .collect();
    Ok(json!({
        "model_name": resp.model_name,
        "model_version": resp.model_version,
        "predictions": predictions,
    }))
}

/// The body as one image, or a multipart form's file fields (and fields named `image`).
async fn images(request: Request) -> Result<Vec<Bytes>, ServeError> {
    let multipart = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    let bad = |e: &dyn std::fmt::Display| ServeError::invalid(format!("invalid request body: {e}"));
    if !multipart {
        let body = Bytes::from_request(request, &())
            .await
            .map_err(|e| bad(&e.body_text()))?;
        return Ok(if body.is_empty() {
            Vec::new()
        } else {
            vec![body]
        });
    }
    let mut form = Multipart::from_request(request, &())
        .await
        .map_err(|e| bad(&e.body_text()))?;
    let mut images = Vec::new();
    while let Some(field) = form.next_field().await.map_err(|e| bad(&e.body_text()))? {
        if field.file_name().is_some() || field.name() == Some("image") {
            images.push(field.bytes().await.map_err(|e| bad(&e.body_text()))?);
        }
    }
    Ok(images)
}
