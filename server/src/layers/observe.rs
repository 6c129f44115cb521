//! Observe: request counts and latency per model, version, protocol and outcome.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use tower::{Layer, Service};

use crate::core::{InferRequest, InferResponse, Protocol};
use crate::error::{BoxError, ErrorKind, ServeError};
use crate::metrics::{Metrics, RequestLabels, TraceLabels};

/// Adds [`Observe`].
#[derive(Clone)]
pub struct ObserveLayer {
    metrics: Arc<Metrics>,
}

impl ObserveLayer {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observe {
            inner,
            metrics: Arc::clone(&self.metrics),
        }
    }
}

/// Records each request's outcome and latency when it completes.
#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S> Service<InferRequest> for Observe<S>
where
    S: Service<InferRequest, Response = InferResponse, Error = BoxError>,
{
    type Response = InferResponse;
    type Error = BoxError;
    type Future = ObserveFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: InferRequest) -> Self::Future {
        self.metrics.inflight.inc();
        ObserveFuture {
            _inflight: Inflight(Arc::clone(&self.metrics)),
            model: req.model.clone(),
            version: req.version.clone().unwrap_or_default(),
            protocol: req.protocol,
            start: Instant::now(),
            metrics: Arc::clone(&self.metrics),
            inner: self.inner.call(req),
        }
    }
}

/// Counts a request in `infergate_inflight_requests` until it is answered or dropped.
pub struct Inflight(Arc<Metrics>);

impl Drop for Inflight {
    fn drop(&mut self) {
        self.0.inflight.dec();
    }
}

pin_project_lite::pin_project! {
    /// Response future of [`Observe`].
    pub struct ObserveFuture<F> {
        #[pin]
        inner: F,
        _inflight: Inflight,
        model: String,
        version: String,
        protocol: Protocol,
        start: Instant,
        metrics: Arc<Metrics>,
    }
}

impl<F> Future for ObserveFuture<F>
where
    F: Future<Output = Result<InferResponse, BoxError>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        if !this.metrics.per_request() {
            return Poll::Ready(result);
        }
        let labels = match &result {
            Ok(resp) => RequestLabels {
                model: resp.model_name.clone(),
                version: resp.model_version.clone(),
                variant: resp
                    .parameters
                    .iter()
                    .find_map(|(k, v)| match v {
                        crate::core::ParamValue::String(s)
                            if k == crate::layers::route::VARIANT_PARAM =>
                        {
                            Some(s.clone())
                        }
                        _ => None,
                    })
                    .unwrap_or_default(),
                protocol: this.protocol.as_str(),
                outcome: "success",
            },
            Err(e) => {
                let kind = ServeError::classify(e.as_ref()).kind;
                // Unknown names must not become label values: hostile input would grow the series.
                let known = kind != ErrorKind::NotFound;
                RequestLabels {
                    model: if known {
                        std::mem::take(this.model)
                    } else {
                        "_unknown".into()
                    },
                    version: if known {
                        std::mem::take(this.version)
                    } else {
                        String::new()
                    },
                    variant: String::new(),
                    protocol: this.protocol.as_str(),
                    outcome: kind.as_str(),
                }
            }
        };
        this.metrics.requests.get_or_create(&labels).inc();
        // The request span is the current one here (the front ends instrument the call).
        let exemplar = crate::telemetry::sampled_trace_id(&tracing::Span::current())
            .map(|trace_id| TraceLabels { trace_id });
        this.metrics
            .request_duration
            .get_or_create(&labels)
            .observe(this.start.elapsed().as_secs_f64(), exemplar, None);
        Poll::Ready(result)
    }
}
