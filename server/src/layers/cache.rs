//! Cache: a per-model-version response cache (moka), opt-in per model. The key is a 128-bit
//! hash of the artifact digest and a canonical encoding of the request (input names,
//! datatypes, shapes and bytes, requested outputs); a hit is only served when the stored
//! canonical request equals this one, so a hash collision can never answer with another
//! request's output. Identical requests in flight together are computed once.
//!
//! The single flight is this module's own (a map of shared futures), not moka's
//! `try_get_with`: under a steady stream of misses, moka's waiter records (each holding the
//! computed entry) were freed late, and the live heap grew by about 45 KiB a minute in the soak
//! (docs/reliability.md). Plain `get` and `insert` do not grow.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::{BoxFuture, Either, FutureExt as _, Shared, WeakShared};
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
    /// The response's parameters (a text model's token count, say).
    parameters: crate::core::Parameters,
    /// How long computing it took (reported to the request that computed it).
    timings: StageTimings,
}

/// A computation of an entry: the entry, or the error every caller waiting for it gets.
type Computation = BoxFuture<'static, Result<Arc<Entry>, Arc<BoxError>>>;

/// A computation that callers with the same key share.
type Flight = Shared<Computation>;

/// Computations in flight, by key, each with its id. Weak: when every caller of one has gone,
/// it is dropped (and removes itself).
type Flights = Arc<Mutex<HashMap<u128, (u64, WeakShared<Computation>)>>>;

/// One model version's cache.
pub struct ResponseCache {
    cache: moka::future::Cache<u128, Arc<Entry>>,
    digest: String,
    key_fn: KeyFn,
    flights: Flights,
    next_flight: AtomicU64,
}

impl std::fmt::Debug for ResponseCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseCache")
            .field("entries", &self.cache.entry_count())
            .finish()
    }
}

/// Removes its flight from the map when the flight ends or is dropped unfinished.
struct Landing {
    flights: Flights,
    key: u128,
    id: u64,
}

impl Drop for Landing {
    fn drop(&mut self) {
        let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
        if flights.get(&self.key).is_some_and(|(id, _)| *id == self.id) {
            flights.remove(&self.key);
        }
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
            flights: Flights::default(),
            next_flight: AtomicU64::new(0),
        }
    }

    /// The flight computing `key`: one in progress (`false`: joined) or a new one started with
    /// `compute` (`true`).
    fn flight(
        &self,
        key: u128,
        compute: impl FnOnce() -> BoxFuture<'static, Result<Entry, BoxError>>,
    ) -> (Flight, bool) {
        let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(flight) = flights.get(&key).and_then(|(_, weak)| weak.upgrade()) {
            return (flight, false);
        }
        let id = self.next_flight.fetch_add(1, Ordering::Relaxed);
        let landing = Landing {
            flights: Arc::clone(&self.flights),
            key,
            id,
        };
        let computation = compute();
        let cache = self.cache.clone();
        let flight = async move {
            let entry = Arc::new(computation.await.map_err(Arc::new)?);
            // Cached before the flight leaves the map, so a caller that misses the cache from
            // here on still finds the flight. One that missed just before this insert and
            // reaches the map after the removal computes again: a rare second run, never a
            // wrong answer (hits compare the stored request).
            cache.insert(key, Arc::clone(&entry)).await;
            drop(landing);
            Ok(entry)
        }
        .boxed()
        .shared();
        let weak = flight.downgrade().expect("not polled yet");
        flights.insert(key, (id, weak));
        (flight, true)
    }

    /// Computations in flight.
    pub fn flights(&self) -> usize {
        self.flights.lock().unwrap_or_else(|e| e.into_inner()).len()
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
        // Parameters that change the answer (a text model's options) are part of the request.
        for (key, value) in &req.parameters {
            if crate::text::OUTPUT_PARAMETERS.contains(&key.as_str()) {
                put(key.as_bytes());
                put(format!("{value:?}").as_bytes());
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
        let span = crate::telemetry::stage_span!("cache", result = tracing::field::Empty);
        let future = async move {
            let cache = target.cache.as_ref().expect("checked above");
            let lookup = Instant::now();
            let canonical = cache.canonical(&req);
            let key = (cache.key_fn)(&canonical);
            let (entry, hit) = match cache.cache.get(&key).await {
                Some(entry) => (entry, true),
                None => {
                    let (flight, started) = cache.flight(key, || {
                        let (inner, req) = (inner.clone(), req.clone());
                        let canonical = canonical.clone();
                        async move {
                            let resp = inner.oneshot(req).await?;
                            Ok(Entry {
                                canonical,
                                outputs: resp.outputs,
                                parameters: resp.parameters,
                                timings: resp.timings,
                            })
                        }
                        .boxed()
                    });
                    let entry = flight
                        .await
                        .map_err(|e| BoxError::from(ServeError::classify(e.as_ref().as_ref())))?;
                    (entry, !started)
                }
            };
            let (outputs, mut parameters, hit, timings) = if entry.canonical == canonical {
                let timings = if hit {
                    StageTimings::default()
                } else {
                    entry.timings
                };
                (
                    entry.outputs.clone(),
                    entry.parameters.clone(),
                    hit,
                    timings,
                )
            } else {
                // Same key, different request: never serve it; compute this one uncached.
                let resp = inner.oneshot(req.clone()).await?;
                (resp.outputs, resp.parameters, false, resp.timings)
            };
            parameters.push(("cache_hit".to_string(), ParamValue::Bool(hit)));
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
                parameters,
                outputs,
                timings,
            })
        };
        Either::Right(Box::pin(future.instrument(span)))
    }
}
