//! Execute: the innermost service. Hands validated inputs to the model version's worker
//! threads, records Triton statistics, and keeps the requested outputs.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures::future::BoxFuture;
use tower::Service;

use crate::core::{InferRequest, InferResponse};
use crate::error::{BoxError, ServeError};
use crate::metrics::{Metrics, ModelLabels};

/// Runs a resolved, validated request on its model version.
#[derive(Clone)]
pub struct Execute {
    metrics: Arc<Metrics>,
}

impl Execute {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
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
            let start = Instant::now();
            let batch = if target.config.max_batch_size > 0 {
                req.inputs
                    .first()
                    .and_then(|i| i.tensor.shape().first())
                    .map_or(1, |&b| b.max(0) as usize)
            } else {
                1
            };
            let inputs = std::mem::take(&mut req.inputs);
            let result = match target.model.infer(inputs) {
                Ok(pending) => pending.await,
                Err(e) => Err(e),
            };
            let output = match result {
                Ok(output) => output,
                Err(e) => {
                    target.stats.record_failure(start.elapsed());
                    return Err(e.into());
                }
            };
            target
                .stats
                .record_success(batch, start.elapsed(), &output.timings);
            let labels = ModelLabels {
                model: target.name.clone(),
                version: target.version_label.clone(),
            };
            metrics
                .queue_duration
                .get_or_create(&labels)
                .observe(output.timings.queue.as_secs_f64());
            let compute = output.timings.input + output.timings.infer + output.timings.output;
            metrics
                .compute_duration
                .get_or_create(&labels)
                .observe(compute.as_secs_f64());
            let mut outputs = output.outputs;
            if !req.outputs.is_empty() {
                outputs = req
                    .outputs
                    .iter()
                    .filter_map(|name| {
                        outputs
                            .iter()
                            .position(|o| &*o.name == name)
                            .map(|i| outputs[i].clone())
                    })
                    .collect();
            }
            Ok(InferResponse {
                model_name: target.name.clone(),
                model_version: target.version_label.clone(),
                id: req.id,
                parameters: Vec::new(),
                outputs,
            })
        })
    }
}
