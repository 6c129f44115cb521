//! Admission control, applied by both front ends before a request body is read or decoded:
//! a global and a per-model concurrency limit that shed load (503 + Retry-After) instead of
//! queueing, and an optional per-client token bucket (429). The same permits are shared by
//! HTTP and gRPC, which is why this is one small module rather than a layer per front end.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use infergate_config::LimitsConfig;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::error::{ErrorKind, ServeError};
use crate::metrics::Metrics;
use crate::repository::Repository;

/// Permits held while a request is in flight; dropping them readmits.
#[derive(Debug, Default)]
pub struct Admitted {
    _global: Option<OwnedSemaphorePermit>,
    _model: Option<OwnedSemaphorePermit>,
}

/// Most clients tracked by the rate limiter before idle ones are forgotten.
const MAX_CLIENTS: usize = 100_000;

struct Bucket {
    tokens: f64,
    last: Instant,
}

/// The admission policy of one server.
pub struct Admission {
    global: Option<Arc<Semaphore>>,
    global_limit: usize,
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
    /// Header naming the client for rate limiting.
    pub client_key_header: String,
}

impl Admission {
    pub fn new(limits: &LimitsConfig) -> Self {
        Self {
            global: (limits.max_concurrent_requests > 0)
                .then(|| Arc::new(Semaphore::new(limits.max_concurrent_requests))),
            global_limit: limits.max_concurrent_requests,
            rate: limits.rate_limit_per_second,
            burst: f64::from(limits.rate_limit_burst),
            buckets: Mutex::new(HashMap::new()),
            client_key_header: limits.client_key_header.to_ascii_lowercase(),
        }
    }

    /// Takes a global permit, or says the server is at its limit.
    pub fn admit_global(
        &self,
        metrics: &Metrics,
        model: &str,
    ) -> Result<Option<OwnedSemaphorePermit>, ServeError> {
        match &self.global {
            None => Ok(None),
            Some(sem) => Arc::clone(sem).try_acquire_owned().map(Some).map_err(|_| {
                metrics.reject(model, "concurrency_limit");
                ServeError::new(
                    ErrorKind::Overloaded,
                    format!(
                        "server is at its concurrency limit ({} requests in flight)",
                        self.global_limit
                    ),
                )
            }),
        }
    }

    /// The client's rate limit and the model's concurrency limit (the global permit was
    /// taken before decoding).
    pub fn admit_model(
        &self,
        repo: &Repository,
        metrics: &Metrics,
        model: &str,
        client: &str,
    ) -> Result<Option<OwnedSemaphorePermit>, ServeError> {
        if self.rate > 0.0 && !self.take_token(client) {
            metrics.reject(model_label(repo, model), "rate_limit");
            return Err(ServeError::new(
                ErrorKind::RateLimited,
                format!("client rate limit of {} requests/s exceeded", self.rate),
            ));
        }
        match repo.admission(model) {
            None => Ok(None),
            Some(sem) => sem.try_acquire_owned().map(Some).map_err(|_| {
                metrics.reject(model, "concurrency_limit");
                ServeError::new(
                    ErrorKind::Overloaded,
                    format!(
                        "model '{model}' is at its concurrency limit (max_concurrent_requests)"
                    ),
                )
            }),
        }
    }

    /// Admits one request for `model` from `client`, or says why not.
    pub fn admit(
        &self,
        repo: &Repository,
        metrics: &Metrics,
        model: &str,
        client: &str,
    ) -> Result<Admitted, ServeError> {
        let global = self.admit_global(metrics, model_label(repo, model))?;
        let model_permit = self.admit_model(repo, metrics, model, client)?;
        Ok(Admitted {
            _global: global,
            _model: model_permit,
        })
    }

    fn take_token(&self, client: &str) -> bool {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_CLIENTS && !buckets.contains_key(client) {
            let idle = std::time::Duration::from_secs_f64((self.burst / self.rate).max(1.0));
            buckets.retain(|_, b| now.duration_since(b.last) < idle);
        }
        let bucket = buckets.entry(client.to_string()).or_insert(Bucket {
            tokens: self.burst,
            last: now,
        });
        bucket.tokens = (bucket.tokens + now.duration_since(bucket.last).as_secs_f64() * self.rate)
            .min(self.burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Unknown model names must not become metric labels.
fn model_label<'a>(repo: &Repository, model: &'a str) -> &'a str {
    if repo.versions(model).is_empty() {
        "_unknown"
    } else {
        model
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn token_bucket_refills_at_the_rate() {
        let limits = LimitsConfig {
            max_concurrent_requests: 0,
            rate_limit_per_second: 10.0,
            rate_limit_burst: 3,
            ..LimitsConfig::default()
        };
        let a = Admission::new(&limits);
        assert!(
            (0..3).all(|_| a.take_token("k")),
            "the burst is available at once"
        );
        assert!(!a.take_token("k"));
        assert!(a.take_token("other"), "buckets are per client");
        tokio::time::advance(std::time::Duration::from_millis(100)).await;
        assert!(a.take_token("k"), "one token per 100 ms at 10/s");
        assert!(!a.take_token("k"));
    }
}

/// In front of the gRPC routes: the global limit for inference calls, before tonic decodes
/// the message. A shed call is answered UNAVAILABLE at once.
#[derive(Clone)]
pub struct GrpcGlobalLimitLayer {
    pub gateway: Arc<crate::Gateway>,
}

impl<S> tower::Layer<S> for GrpcGlobalLimitLayer {
    type Service = GrpcGlobalLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcGlobalLimit {
            inner,
            gateway: Arc::clone(&self.gateway),
        }
    }
}

/// See [`GrpcGlobalLimitLayer`].
#[derive(Clone)]
pub struct GrpcGlobalLimit<S> {
    inner: S,
    gateway: Arc<crate::Gateway>,
}

impl<S, B> tower::Service<http::Request<B>> for GrpcGlobalLimit<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::Either<
        futures::future::Ready<Result<S::Response, S::Error>>,
        futures::future::BoxFuture<'static, Result<S::Response, S::Error>>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path();
        let infer =
            path.starts_with("/inference.GRPCInferenceService/Model") && path.ends_with("Infer");
        if !infer {
            return futures::future::Either::Right(Box::pin(self.inner.call(req)));
        }
        match self
            .gateway
            .admission
            .admit_global(&self.gateway.metrics, "_grpc")
        {
            Ok(permit) => {
                let fut = self.inner.call(req);
                futures::future::Either::Right(Box::pin(async move {
                    let response = fut.await;
                    drop(permit);
                    response
                }))
            }
            Err(e) => {
                futures::future::Either::Left(futures::future::ready(Ok(e.to_status().into_http())))
            }
        }
    }
}
