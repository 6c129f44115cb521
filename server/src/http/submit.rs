//! What the JSON routes that are not KServe V2 (embeddings, image classification) share: the
//! request goes through admission control and the whole stack, traced, like a V2 request.

use std::net::SocketAddr;

use axum::http::HeaderMap;
use tower::ServiceExt;

use crate::Gateway;
use crate::core::{InferRequest, InferResponse};
use crate::error::{ErrorKind, ServeError};
use crate::layers::route::ROUTE_KEY_HEADER;

/// Admits `req` for its model (per client: the client-key header, else the peer address),
/// checks the input limits, and runs it through the stack under a request span.
pub(crate) async fn submit(
    g: &Gateway,
    headers: &HeaderMap,
    peer: SocketAddr,
    mut req: InferRequest,
) -> Result<InferResponse, ServeError> {
    use tracing::Instrument as _;
    let client = headers
        .get(g.admission.client_key_header.as_str())
        .and_then(|v| v.to_str().ok())
        .map_or_else(|| peer.ip().to_string(), str::to_string);
    let _admitted = g
        .admission
        .admit(&g.repository, &g.metrics, &req.model, &client)?;
    let limit = g.config.server.max_tensor_elements;
    for input in &req.inputs {
        if input.tensor.len() > limit {
            return Err(ServeError::new(
                ErrorKind::TooLarge,
                format!(
                    "{} inputs are over the limit of {limit} (server.max_tensor_elements)",
                    input.tensor.len()
                ),
            ));
        }
    }
    let trace = crate::telemetry::request_span(
        headers,
        &req.model,
        "http",
        g.config.telemetry.sampling_ratio,
    );
    req.route_key = headers
        .get(ROUTE_KEY_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    req.span = trace.span.clone();
    g.stack
        .clone()
        .oneshot(req)
        .instrument(trace.span)
        .await
        .map_err(ServeError::from)
}
