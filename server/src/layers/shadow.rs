//! Shadow traffic: mirrored requests go through a bounded queue that never makes the client
//! wait (a full queue drops and counts), run on the shadow model off the request path, and
//! their outputs are compared with the primary's.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;
use tower::{Service, ServiceExt};

use crate::core::{InferRequest, InferResponse};
use crate::error::BoxError;
use infergate_runtime::NamedTensor;

/// A mirrored request with what the primary answered.
pub struct ShadowJob {
    pub request: InferRequest,
    /// The primary's outputs, or `None` when it failed.
    pub primary: Option<Vec<NamedTensor>>,
    pub primary_latency: Duration,
    /// The primary request's span, which the shadow call's span links to.
    pub primary_span: Option<opentelemetry::trace::SpanContext>,
}

/// Live comparison of shadow and primary.
#[derive(Debug, Default, Clone, Serialize, PartialEq)]
pub struct ShadowReport {
    /// Requests mirrored into the queue.
    pub sent: u64,
    /// Requests not mirrored because the queue was full.
    pub dropped: u64,
    /// Pairs by outcome.
    pub both_ok: u64,
    pub primary_failed: u64,
    pub shadow_failed: u64,
    pub both_failed: u64,
    /// Rows compared, and rows whose arg-max (top-1) agreed.
    pub rows: u64,
    pub top1_agreement_rows: u64,
    pub top1_agreement: f64,
    pub max_abs_diff: f64,
    pub max_rel_diff: f64,
    pub mean_cosine: f64,
    pub min_cosine: f64,
    /// Mean of shadow latency minus primary latency, milliseconds.
    pub mean_latency_delta_ms: f64,
    #[serde(skip)]
    cosine_sum: f64,
    #[serde(skip)]
    latency_delta_sum_ms: f64,
}

/// Shared statistics of one route's shadow.
#[derive(Debug, Default)]
pub struct ShadowStats(Mutex<ShadowReport>);

impl ShadowStats {
    pub fn report(&self) -> ShadowReport {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn sent(&self, queued: bool) {
        let mut r = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if queued {
            r.sent += 1;
        } else {
            r.dropped += 1;
        }
    }

    fn record(&self, job: &ShadowJob, shadow: &Result<InferResponse, BoxError>, latency: Duration) {
        let mut r = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let (primary, shadow) = match (&job.primary, shadow) {
            (Some(p), Ok(s)) => (p, s),
            (Some(_), Err(_)) => return r.shadow_failed += 1,
            (None, Ok(_)) => return r.primary_failed += 1,
            (None, Err(_)) => return r.both_failed += 1,
        };
        r.both_ok += 1;
        r.latency_delta_sum_ms += (latency.as_secs_f64() - job.primary_latency.as_secs_f64()) * 1e3;
        r.mean_latency_delta_ms = r.latency_delta_sum_ms / r.both_ok as f64;
        // Compare the first output both sides have, row by row ([N, classes] FP32).
        let pair = primary.iter().find_map(|p| {
            let s = shadow.outputs.iter().find(|s| s.name == p.name)?;
            Some((
                p.tensor.to_vec::<f32>()?,
                s.tensor.to_vec::<f32>()?,
                p.tensor.shape().to_vec(),
            ))
        });
        let Some((a, b, shape)) = pair else { return };
        if a.len() != b.len() || a.is_empty() {
            return;
        }
        let rows = usize::try_from(shape.first().copied().unwrap_or(1))
            .unwrap_or(1)
            .max(1);
        let width = a.len() / rows;
        if width == 0 {
            return;
        }
        for (x, y) in a.chunks(width).zip(b.chunks(width)) {
            r.rows += 1;
            if argmax(x) == argmax(y) {
                r.top1_agreement_rows += 1;
            }
            let (mut dot, mut nx, mut ny) = (0f64, 0f64, 0f64);
            for (&u, &v) in x.iter().zip(y) {
                let (u, v) = (f64::from(u), f64::from(v));
                let diff = (u - v).abs();
                r.max_abs_diff = r.max_abs_diff.max(diff);
                r.max_rel_diff = r.max_rel_diff.max(diff / u.abs().max(1e-12));
                dot += u * v;
                nx += u * u;
                ny += v * v;
            }
            let cosine = if nx > 0.0 && ny > 0.0 {
                dot / (nx.sqrt() * ny.sqrt())
            } else {
                1.0
            };
            r.min_cosine = if r.rows == 1 {
                cosine
            } else {
                r.min_cosine.min(cosine)
            };
            r.cosine_sum += cosine;
        }
        r.top1_agreement = r.top1_agreement_rows as f64 / r.rows.max(1) as f64;
        r.mean_cosine = r.cosine_sum / r.rows.max(1) as f64;
    }
}

/// Index of the largest value (the first on ties).
pub(crate) fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 { (i, v) } else { best }
        })
        .0
}

/// Starts the worker that runs mirrored requests on `service` one at a time (shadow work
/// never competes with itself for the machine) and returns the queue's sender.
pub fn spawn<S>(service: S, queue: usize, stats: Arc<ShadowStats>) -> mpsc::Sender<ShadowJob>
where
    S: Service<InferRequest, Response = InferResponse, Error = BoxError> + Send + 'static,
    S::Future: Send,
{
    let (tx, mut rx) = mpsc::channel::<ShadowJob>(queue);
    tokio::spawn(async move {
        let mut service = service;
        while let Some(mut job) = rx.recv().await {
            use tracing::Instrument as _;
            use tracing_opentelemetry::OpenTelemetrySpanExt as _;
            // A trace of its own (it is not part of the answer), linked to the primary's; none
            // when the primary was not sampled.
            let span = match job.primary_span.take() {
                Some(primary) => {
                    let span = tracing::info_span!(
                        parent: None,
                        "shadow",
                        otel.name = %format!("shadow {}", job.request.model),
                        model = %job.request.model,
                        outcome = tracing::field::Empty,
                    );
                    span.add_link(primary);
                    span
                }
                None => tracing::Span::none(),
            };
            job.request.span = span.clone();
            let start = std::time::Instant::now();
            let result = async {
                match service.ready().await {
                    Ok(svc) => svc.call(job.request.clone()).await,
                    Err(e) => Err(e),
                }
            }
            .instrument(span.clone())
            .await;
            span.record(
                "outcome",
                match &result {
                    Ok(_) => "success",
                    Err(e) => crate::error::ServeError::classify(e.as_ref()).kind.as_str(),
                },
            );
            stats.record(&job, &result, start.elapsed());
        }
    });
    tx
}
