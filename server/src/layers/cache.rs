//! Cache: a per-model-version response cache (moka), opt-in per model. The key is a 128-bit
//! hash of the artifact digest and a canonical encoding of the request (input names,
//! datatypes, shapes and bytes, requested outputs); a hit is only served when the stored
//! canonical request equals this one, so a hash collision can never answer with another
//! request's output. Identical requests in flight together are computed once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::{BoxFuture, Either};
use infergate_config::ResponseCache as Settings;
use infergate_runtime::{NamedTensor, StageTimings, TensorData};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

use crate::core::{InferRequest, InferResponse, ParamValue};
use crate::error::{BoxError, ServeError};
use crate::metrics::{CacheLabels, Metrics};

/// Computes the 128-bit key of a canonical request (replaceable in tests to force collisions).
pub type KeyFn = fn(&[u8]) -> u128;

struct Entry {
    canonical: Vec<u8>,
    outputs: Vec<NamedTensor>,
    /// How long computing it took (reported to the request that computed it).
    timings: StageTimings,
}

/// One model version's cache.
pub struct ResponseCache {
    cache: moka::future::Cache<u128, Arc<Entry>>,
    digest: String,
    key_fn: KeyFn,
}

impl std::fmt::Debug for ResponseCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseCache")
            .field("entries", &self.cache.entry_count())
            .finish()
    }
}

impl ResponseCache {
    /// A cache bounded by `settings.max_bytes` (requests and responses both count).
    pub fn new(settings: &Settings, digest: String) -> Self {
        Self::with_key_fn(settings, digest, xxhash_rust::xxh3::xxh3_128)
    }

    pub fn with_key_fn(settings: &Settings, digest: String, key_fn: KeyFn) -> Self {
        let mut builder = moka::future::Cache::builder()
            .max_capacity(settings.max_bytes)
            .weigher(|_k: &u128, e: &Arc<Entry>| {
                let outputs: usize = e
                    .outputs
                    .iter()
                    .map(|o| o.tensor.raw_len() + o.name.len() + 64)
                    .sum();
                u32::try_from(e.canonical.len() + outputs + 64).unwrap_or(u32::MAX)
            });
        if let Some(ttl) = settings.ttl_ms {
            builder = builder.time_to_live(Duration::from_millis(ttl));
        }
        Self {
            cache: builder.build(),
            digest,
            key_fn,
        }
    }

    /// Everything that decides the answer, in a fixed order, length-prefixed.
    fn canonical(&self, req: &InferRequest) -> Vec<u8> {
        let size: usize = req
            .inputs
            .iter()
            .map(|i| i.tensor.raw_len() + i.name.len() + 64)
            .sum();
        let mut out = Vec::with_capacity(self.digest.len() + size + 64);
        let mut put = |bytes: &[u8]| {
            out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
            out.extend_from_slice(bytes);
        };
        put(self.digest.as_bytes());
        let mut inputs: Vec<&NamedTensor> = req.inputs.iter().collect();
        inputs.sort_by(|a, b| a.name.cmp(&b.name));
        for input in inputs {
            put(input.name.as_bytes());
            put(input.tensor.dtype().as_str().as_bytes());
            let dims: Vec<u8> = input
                .tensor
                .shape()
                .iter()
                .flat_map(|d| d.to_le_bytes())
                .collect();
            put(&dims);
            match input.tensor.data() {
                TensorData::Fixed(b) => put(b),
                TensorData::Bytes(elements) => {
                    for e in elements {
                        put(e);
                    }
                }
            }
        }
        put(b"outputs");
        for name in &req.outputs {
            put(name.as_bytes());
        }
        out
    }

    /// Cached entries (after pending maintenance).
    pub async fn entries(&self) -> u64 {
        self.cache.run_pending_tasks().await;
        self.cache.entry_count()
    }
}

/// Adds [`Cache`].
#[derive(Clone)]
pub struct CacheLayer {
    metrics: Arc<Metrics>,
}

impl CacheLayer {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for CacheLayer {
    type Service = Cache<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Cache {
            inner,
            metrics: Arc::clone(&self.metrics),
        }
    }
}

/// Answers repeated requests of caching models from their version's cache.
#[derive(Clone)]
pub struct Cache<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S> Service<InferRequest> for Cache<S>
where
    S: Service<InferRequest, Response = InferResponse, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = InferResponse;
    type Error = BoxError;
    type Future = Either<S::Future, BoxFuture<'static, Result<InferResponse, BoxError>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: InferRequest) -> Self::Future {
        let Some(target) = req.target.clone().filter(|t| t.cache.is_some()) else {
            return Either::Left(self.inner.call(req));
        };
        use tracing::Instrument as _;
        let inner = self.inner.clone();
        let metrics = Arc::clone(&self.metrics);
        // The lookup and, on a miss, the computation beneath it.
        let span = tracing::info_span!("cache", result = tracing::field::Empty);
        let future = async move {
            let cache = target.cache.as_ref().expect("checked above");
            let lookup = Instant::now();
            let canonical = cache.canonical(&req);
            let key = (cache.key_fn)(&canonical);
            let computed = Arc::new(AtomicBool::new(false));
            let init = {
                let (inner, req, computed) = (inner.clone(), req.clone(), Arc::clone(&computed));
                let canonical = canonical.clone();
                async move {
                    computed.store(true, Ordering::Relaxed);
                    let resp = inner.oneshot(req).await?;
                    Ok::<_, BoxError>(Arc::new(Entry {
                        canonical,
                        outputs: resp.outputs,
                        timings: resp.timings,
                    }))
                }
            };
            let entry = cache
                .cache
                .try_get_with(key, init)
                .await
                .map_err(|e| BoxError::from(ServeError::classify(e.as_ref().as_ref())))?;
            let hit = !computed.load(Ordering::Relaxed);
            let (outputs, hit, timings) = if entry.canonical == canonical {
                let timings = if hit {
                    StageTimings::default()
                } else {
                    entry.timings
                };
                (entry.outputs.clone(), hit, timings)
            } else {
                // Same key, different request: never serve it; compute this one uncached.
                let resp = inner.oneshot(req.clone()).await?;
                (resp.outputs, false, resp.timings)
            };
            let took = lookup.elapsed();
            tracing::Span::current().record("result", if hit { "hit" } else { "miss" });
            target.stats.record_cache(hit, took);
            metrics
                .cache
                .get_or_create(&CacheLabels {
                    model: target.name.clone(),
                    version: target.version_label.clone(),
                    result: if hit { "hit" } else { "miss" },
                })
                .inc();
            Ok(InferResponse {
                model_name: target.name.clone(),
                model_version: target.version_label.clone(),
                id: req.id,
                parameters: vec![("cache_hit".to_string(), ParamValue::Bool(hit))],
                outputs,
                timings,
            })
        };
        Either::Right(Box::pin(future.instrument(span)))
    }
}
