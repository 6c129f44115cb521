//! Account: per-request statistics of the resolved model version (Triton's success, fail,
//! queue and compute split) and the queue-time histogram, recorded when a request completes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::time::Instant;
use tower::{Layer, Service};

use crate::core::{InferRequest, InferResponse};
use crate::error::BoxError;
use crate::metrics::Metrics;
use crate::repository::ModelVersion;

/// Adds [`Account`].
#[derive(Clone)]
pub struct AccountLayer {
    metrics: Arc<Metrics>,
}

impl AccountLayer {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for AccountLayer {
    type Service = Account<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Account {
            inner,
            metrics: Arc::clone(&self.metrics),
        }
    }
}

/// Records each resolved request's outcome in its model version's statistics.
#[derive(Clone)]
pub struct Account<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S> Service<InferRequest> for Account<S>
where
    S: Service<InferRequest, Response = InferResponse, Error = BoxError>,
{
    type Response = InferResponse;
    type Error = BoxError;
    type Future = AccountFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: InferRequest) -> Self::Future {
        // A sampled request lends its first row to drift detection (read back on success).
        let drift_row = req
            .target
            .as_ref()
            .and_then(|t| t.drift.as_ref())
            .filter(|d| !d.on_text() && d.should_sample())
            .and_then(|d| d.first_row(&req.inputs));
        AccountFuture {
            drift_row,
            target: req.target.clone(),
            start: req.received,
            metrics: Arc::clone(&self.metrics),
            inner: self.inner.call(req),
        }
    }
}

pin_project_lite::pin_project! {
    /// Response future of [`Account`].
    pub struct AccountFuture<F> {
        #[pin]
        inner: F,
        target: Option<Arc<ModelVersion>>,
        drift_row: Option<Vec<f32>>,
        start: Instant,
        metrics: Arc<Metrics>,
    }
}

impl<F> Future for AccountFuture<F>
where
    F: Future<Output = Result<InferResponse, BoxError>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        if let Some(target) = this.target.take() {
            let total = this.start.elapsed();
            match &result {
                Ok(resp) => {
                    if let (Some(drift), Some(row)) = (&target.drift, this.drift_row.take()) {
                        drift.observe(&row, &resp.outputs);
                    }
                    target.stats.record_request(total, &resp.timings);
                    if this.metrics.per_request() {
                        this.metrics
                            .queue_duration
                            .get_or_create(&target.labels)
                            .observe(resp.timings.queue.as_secs_f64());
                    }
                }
                Err(_) => target.stats.record_failure(total),
            }
        }
        Poll::Ready(result)
    }
}
