//! Execute: the innermost service. Hands validated inputs to the model version's worker
//! threads, records the execution (rows, compute split, batch size), and keeps the requested
//! outputs.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tokio::time::Instant;
use tower::Service;

use crate::core::{InferRequest, InferResponse};
use crate::error::{BoxError, ErrorKind, ServeError};
use crate::metrics::Metrics;

/// Runs a resolved, validated request (possibly a whole batch) on its model version.
#[derive(Clone)]
pub struct Execute {
    metrics: Arc<Metrics>,
}

impl Execute {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

/// The error of a request whose deadline passed before it could start.
pub fn deadline_exceeded(model: &str) -> ServeError {
    ServeError::new(
        ErrorKind::DeadlineExceeded,
        format!("request to model '{model}' timed out before it could start"),
    )
}

impl Service<InferRequest> for Execute {
    type Response = InferResponse;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<InferResponse, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: InferRequest) -> Self::Future {
        let metrics = Arc::clone(&self.metrics);
        Box::pin(async move {
            let target = req
                .target
                .take()
                .ok_or_else(|| ServeError::internal("request reached execution unresolved"))?;
            if req.deadline.is_some_and(|d| Instant::now() >= d) {
                metrics.reject_many(&target.name, "deadline", req.requests);
                return Err(deadline_exceeded(&target.name).into());
            }
            let rows = if target.config.max_batch_size > 0 {
                req.rows()
            } else {
                1
            };
            let inputs = std::mem::take(&mut req.inputs);
            let span = crate::telemetry::stage_span!(
                "execute",
                model = %target.name,
                version = %target.version_label,
                queue_us = tracing::field::Empty,
                compute_us = tracing::field::Empty,
            );
            // The deadline (and a batch's abandonment) is checked again when a worker picks the
            // job up: it may wait in the model's queue for a busy instance, or behind a batch
            // dispatched ahead.
            let start = infergate_runtime::StartIf {
                by: req.deadline.map(Instant::into_std),
                abandoned: req.abandoned.take(),
            };
            let output = {
                use tracing::Instrument as _;
                let run = target.model.infer_by(inputs, start)?;
                match run.instrument(span.clone()).await {
                    Ok(output) => output,
                    Err(infergate_runtime::RuntimeError::DeadlineExceeded(_)) => {
                        metrics.reject_many(&target.name, "deadline", req.requests);
                        return Err(deadline_exceeded(&target.name).into());
                    }
                    Err(e) => return Err(e.into()),
                }
            };
            span.record("queue_us", output.timings.queue.as_micros() as u64);
            span.record(
                "compute_us",
                (output.timings.input + output.timings.infer + output.timings.output).as_micros()
                    as u64,
            );
            target.stats.record_execution(rows, &output.timings);
            if let Some(tokens) = req.tokens {
                target.stats.tokens.record(rows, tokens.seq, tokens.real);
                metrics
                    .padded_tokens
                    .get_or_create(&target.labels)
                    .inc_by((rows * tokens.seq) as u64);
            }
            if metrics.per_request() {
                let t = &output.timings;
                metrics
                    .compute_duration
                    .get_or_create(&target.labels)
                    .observe((t.input + t.infer + t.output).as_secs_f64());
                metrics
                    .batch_size
                    .get_or_create(&target.labels)
                    .observe(rows as f64);
            }
            let mut outputs = output.outputs;
            if !req.outputs.is_empty() {
                outputs = req
                    .outputs
                    .iter()
                    .filter_map(|name| outputs.iter().find(|o| &*o.name == name).cloned())
                    .collect();
            }
            Ok(InferResponse {
                model_name: target.name.clone(),
                model_version: target.version_label.clone(),
                id: req.id,
                parameters: Vec::new(),
                outputs,
                timings: output.timings,
            })
        })
    }
}
