//! Route: A/B splits and shadow traffic. A request to a route's name goes to one of its
//! variants (model and version or alias) in proportion to the weights; a route key makes the
//! choice sticky. The response names the route and carries the served variant. A sampled
//! share is also mirrored to the route's shadow model (see [`super::shadow`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use futures::FutureExt;
use futures::future::{BoxFuture, Either};
use infergate_config::RouteConfig;
use tower::{Layer, Service, ServiceExt};

use arc_swap::ArcSwap;

use super::canary::{Canary, CanaryReport};
use super::experiment::{self, ExperimentReport, VariantStats};
use super::shadow::{self, ShadowJob, ShadowReport, ShadowStats};
use crate::core::{InferRequest, InferResponse, ParamValue};
use crate::error::BoxError;

mod table;

pub use table::RouteTable;
use table::start_background;

/// Header and gRPC metadata key of the sticky routing key.
pub const ROUTE_KEY_HEADER: &str = "x-infergate-route-key";
/// Response header naming the served variant.
pub const VARIANT_HEADER: &str = "x-infergate-variant";
/// Response parameter naming the served variant.
pub const VARIANT_PARAM: &str = "variant";
/// Response parameter set (true) when the fallback variant answered because the chosen one
/// was overloaded.
pub const FALLBACK_PARAM: &str = "fallback";

/// A canary transition, for the audit log.
#[derive(Debug, Clone, PartialEq)]
pub struct CanaryEvent {
    pub route: String,
    pub variant: String,
    pub model: String,
    pub version: Option<String>,
    pub from_percent: u32,
    pub to_percent: u32,
    pub reason: String,
}

/// Receives every canary transition (the server writes them to the registry's audit log).
pub type CanaryHook = Arc<dyn Fn(CanaryEvent) + Send + Sync>;

/// A route's variants with their cumulative weights.
#[derive(Debug)]
struct Route {
    variants: Vec<Variant>,
    /// Configured weights.
    base: Vec<u64>,
    /// `cumulative[i]` = sum of the effective weights of variants `0..=i` (a canary moves them).
    cumulative: ArcSwap<Vec<u64>>,
    shadow: Option<Shadow>,
    canary: Option<Canary>,
    /// Variant that answers when the chosen one is overloaded.
    fallback: Option<usize>,
    /// Per-variant outcomes for experiment reports (carried over when routes are replaced
    /// and the variant stays the same).
    stats: Vec<Arc<VariantStats>>,
}

impl Route {
    /// Gives the canary `c` its new share at once; the event for the audit log.
    fn apply_canary(
        &self,
        name: &str,
        c: &Canary,
        transition: super::canary::Transition,
    ) -> CanaryEvent {
        self.cumulative.store(Arc::new(cumulative(
            &self.base,
            Some((c.variant, transition.to_percent)),
        )));
        let variant = &self.variants[c.variant];
        CanaryEvent {
            route: name.to_string(),
            variant: variant.name.clone(),
            model: variant.model.clone(),
            version: variant.version.clone(),
            from_percent: transition.from_percent,
            to_percent: transition.to_percent,
            reason: transition.reason,
        }
    }
}

/// Cumulative weights: with a canary at `percent`, it gets that share and the other variants
/// split the rest in proportion to their configured weights.
fn cumulative(base: &[u64], canary: Option<(usize, u32)>) -> Vec<u64> {
    let effective: Vec<u64> = match canary {
        None => base.to_vec(),
        Some((c, percent)) => {
            const SCALE: u64 = 1_000_000;
            let others: u64 = base
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != c)
                .map(|(_, w)| w)
                .sum();
            let rest = SCALE * u64::from(100 - percent.min(100)) / 100;
            base.iter()
                .enumerate()
                .map(|(i, &w)| {
                    if i == c {
                        SCALE * u64::from(percent.min(100)) / 100
                    } else {
                        (rest * w).checked_div(others).unwrap_or(0)
                    }
                })
                .collect()
        }
    };
    let mut total = 0;
    effective
        .iter()
        .map(|w| {
            total += w;
            total
        })
        .collect()
}

#[derive(Debug)]
struct Shadow {
    model: String,
    version: Option<String>,
    /// Mirrored requests per million.
    per_million: u64,
    queue: usize,
    stats: Arc<ShadowStats>,
    /// The worker's queue, started with the stack.
    sender: OnceLock<tokio::sync::mpsc::Sender<ShadowJob>>,
}

#[derive(Debug, PartialEq)]
struct Variant {
    name: String,
    model: String,
    version: Option<String>,
}

/// Every configured route by name.
#[derive(Debug, Default)]
pub struct Routes {
    routes: HashMap<String, Route>,
    /// Spreads requests without a key.
    counter: AtomicU64,
    /// Whether the canary controller runs.
    controller: std::sync::atomic::AtomicBool,
    /// Recent routed requests with an id, awaiting feedback.
    predictions: std::sync::Mutex<Predictions>,
    /// As configured.
    config: Vec<RouteConfig>,
}

/// How many routed predictions wait for feedback (the oldest are forgotten first).
const MAX_PREDICTIONS: usize = 100_000;

/// `(route, request id)` → (variant index, predicted class per row), oldest first.
#[derive(Debug, Default)]
struct Predictions {
    by_id: HashMap<(String, String), (usize, Vec<u32>)>,
    order: std::collections::VecDeque<(String, String)>,
}

/// Ground truth for a routed request.
#[derive(Debug, Clone, PartialEq)]
pub enum Feedback {
    /// The true class of each row.
    Labels(Vec<u32>),
    /// Whether the answer was good (a business outcome).
    Outcome(bool),
}

/// The predicted class of each row of the first output (`[N, classes]` or `[classes]`).
fn predicted_classes(resp: &InferResponse) -> Vec<u32> {
    let Some(out) = resp.outputs.first() else {
        return Vec::new();
    };
    let values: Vec<f32> = match (out.tensor.to_vec::<f32>(), out.tensor.to_vec::<f64>()) {
        (Some(v), _) => v,
        (None, Some(v)) => v.into_iter().map(|x| x as f32).collect(),
        _ => return Vec::new(),
    };
    let width = out.tensor.shape().last().copied().unwrap_or(0).max(1) as usize;
    values
        .chunks(width)
        .map(|row| shadow::argmax(row) as u32)
        .collect()
}

impl Routes {
    /// Routes from validated config.
    pub fn new(config: &[RouteConfig]) -> Self {
        Self::replacing(config, None)
    }

    /// Routes from validated config that take over from `previous`: a variant that stays the
    /// same (route, variant name, model and version) keeps its statistics, and so does a
    /// shadow of the same model and version, so experiment reports survive a weight change.
    fn replacing(config: &[RouteConfig], previous: Option<&Routes>) -> Self {
        let routes = config
            .iter()
            .map(|r| {
                let before = previous.and_then(|p| p.routes.get(&r.name));
                let base: Vec<u64> = r.variants.iter().map(|v| u64::from(v.weight)).collect();
                let canary = r.canary.as_ref().and_then(|c| {
                    let index = r.variants.iter().position(|v| v.name == c.variant)?;
                    Some(Canary::new(index, c.clone()))
                });
                let weights = cumulative(&base, canary.as_ref().map(|c| (c.variant, c.percent())));
                let fallback = r
                    .fallback
                    .as_ref()
                    .and_then(|f| r.variants.iter().position(|v| &v.name == f));
                let variants: Vec<Variant> = r
                    .variants
                    .iter()
                    .map(|v| Variant {
                        name: v.name.clone(),
                        model: v.model.clone(),
                        version: v.version.clone(),
                    })
                    .collect();
                let stats = variants
                    .iter()
                    .map(|v| {
                        before
                            .and_then(|b| {
                                let j = b.variants.iter().position(|old| old == v)?;
                                Some(Arc::clone(&b.stats[j]))
                            })
                            .unwrap_or_default()
                    })
                    .collect();
                let shadow = r.shadow.as_ref().map(|s| Shadow {
                    model: s.model.clone(),
                    version: s.version.clone(),
                    per_million: (s.fraction.clamp(0.0, 1.0) * 1e6).round() as u64,
                    queue: s.queue.max(1),
                    stats: before
                        .and_then(|b| b.shadow.as_ref())
                        .filter(|old| old.model == s.model && old.version == s.version)
                        .map(|old| Arc::clone(&old.stats))
                        .unwrap_or_default(),
                    sender: OnceLock::new(),
                });
                (
                    r.name.clone(),
                    Route {
                        variants,
                        base,
                        cumulative: ArcSwap::from_pointee(weights),
                        shadow,
                        canary,
                        fallback,
                        stats,
                    },
                )
            })
            .collect();
        Self {
            routes,
            counter: AtomicU64::new(0),
            controller: std::sync::atomic::AtomicBool::new(false),
            predictions: std::sync::Mutex::default(),
            config: config.to_vec(),
        }
    }

    /// The routes as configured.
    pub fn configs(&self) -> &[RouteConfig] {
        &self.config
    }

    pub fn is_route(&self, name: &str) -> bool {
        self.routes.contains_key(name)
    }

    /// The model (and version) whose interface a route presents: its first variant's.
    pub fn interface(&self, name: &str) -> Option<(String, Option<String>)> {
        let first = self.routes.get(name)?.variants.first()?;
        Some((first.model.clone(), first.version.clone()))
    }

    fn remember(&self, route: &str, id: String, variant: usize, classes: Vec<u32>) {
        let mut p = self.predictions.lock().unwrap_or_else(|e| e.into_inner());
        let key = (route.to_string(), id);
        if p.by_id.insert(key.clone(), (variant, classes)).is_none() {
            p.order.push_back(key);
        }
        while p.order.len() > MAX_PREDICTIONS {
            if let Some(old) = p.order.pop_front() {
                p.by_id.remove(&old);
            }
        }
    }

    /// Attaches ground truth to the routed request `id`; returns the variant that served it.
    pub fn feedback(
        &self,
        route: &str,
        id: &str,
        feedback: &Feedback,
    ) -> Result<String, crate::error::ServeError> {
        use crate::error::ServeError;
        let r = self
            .routes
            .get(route)
            .ok_or_else(|| ServeError::not_found(format!("unknown route '{route}'")))?;
        let (variant, classes) = {
            let mut p = self.predictions.lock().unwrap_or_else(|e| e.into_inner());
            let key = (route.to_string(), id.to_string());
            let found = p.by_id.remove(&key).ok_or_else(|| {
                ServeError::not_found(format!(
                    "no recent request '{id}' on route '{route}' (or feedback was given already)"
                ))
            })?;
            p.order.retain(|k| k != &key);
            found
        };
        let (judged, correct) = match feedback {
            Feedback::Outcome(good) => (1, u64::from(*good)),
            Feedback::Labels(labels) => {
                if labels.len() != classes.len() {
                    return Err(ServeError::invalid(format!(
                        "request '{id}' had {} rows, the feedback has {} labels",
                        classes.len(),
                        labels.len()
                    )));
                }
                let right = labels.iter().zip(&classes).filter(|(a, b)| a == b).count();
                (labels.len() as u64, right as u64)
            }
        };
        r.stats[variant].feedback(judged, correct);
        Ok(r.variants[variant].name.clone())
    }

    /// Per-variant statistics and comparisons of a route (`None`: no such route).
    pub fn experiment_report(&self, name: &str) -> Option<ExperimentReport> {
        let route = self.routes.get(name)?;
        let pairs: Vec<(&str, &VariantStats)> = route
            .variants
            .iter()
            .zip(&route.stats)
            .map(|(v, s)| (v.name.as_str(), &**s))
            .collect();
        Some(experiment::report(&pairs))
    }

    /// Every route's variants with their live statistics: `(route, variant, stats)`.
    pub fn variant_stats(&self) -> Vec<(String, String, Arc<VariantStats>)> {
        let mut out: Vec<_> = self
            .routes
            .iter()
            .flat_map(|(name, r)| {
                r.variants
                    .iter()
                    .zip(&r.stats)
                    .map(|(v, s)| (name.clone(), v.name.clone(), Arc::clone(s)))
            })
            .collect();
        out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        out
    }

    /// The state and history of a route's canary (`None`: no such route or no canary).
    pub fn canary_report(&self, name: &str) -> Option<CanaryReport> {
        Some(self.routes.get(name)?.canary.as_ref()?.report())
    }

    /// Rolls a route's canary back now; the share moves to 0% at once.
    fn roll_back_canary(&self, name: &str, reason: &str) -> Result<CanaryEvent, String> {
        let route = self
            .routes
            .get(name)
            .ok_or_else(|| format!("unknown route '{name}'"))?;
        let c = route
            .canary
            .as_ref()
            .ok_or_else(|| format!("'{name}' is not a route with a canary"))?;
        let transition = c
            .roll_back(reason)
            .ok_or_else(|| format!("the canary of '{name}' is not running"))?;
        Ok(route.apply_canary(name, c, transition))
    }

    /// Applies the canary gates of every route; changed shares take effect at once. Returns
    /// the transitions made.
    fn evaluate_canaries(&self) -> Vec<CanaryEvent> {
        let mut events = Vec::new();
        for (name, route) in &self.routes {
            if let Some(c) = &route.canary
                && let Some(transition) = c.evaluate()
            {
                events.push(route.apply_canary(name, c, transition));
            }
        }
        events
    }

    /// The live shadow comparison of a route (`None`: no such route or no shadow).
    pub fn shadow_report(&self, name: &str) -> Option<ShadowReport> {
        Some(self.routes.get(name)?.shadow.as_ref()?.stats.report())
    }

    /// Whether this request is mirrored (an even spread at the configured rate).
    fn mirror(&self, shadow: &Shadow) -> bool {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        xxhash_rust::xxh3::xxh3_64(&n.to_le_bytes()) % 1_000_000 < shadow.per_million
    }

    /// The variant index for `key` (hashed: the same key always gets the same variant) or,
    /// without a key, for the next request in a well-spread sequence.
    fn pick(&self, route: &Route, key: Option<&str>) -> usize {
        let cumulative = route.cumulative.load();
        let total = *cumulative.last().unwrap_or(&0);
        if total == 0 {
            return 0;
        }
        let hash = match key {
            Some(k) => xxhash_rust::xxh3::xxh3_64(k.as_bytes()),
            None => xxhash_rust::xxh3::xxh3_64(
                &self.counter.fetch_add(1, Ordering::Relaxed).to_le_bytes(),
            ),
        };
        let point = hash % total;
        cumulative.partition_point(|&c| c <= point)
    }
}

/// Adds [`RouteService`].
#[derive(Clone)]
pub struct RouteLayer {
    table: Arc<RouteTable>,
}

impl RouteLayer {
    pub fn new(table: Arc<RouteTable>) -> Self {
        Self { table }
    }
}

impl<S> Layer<S> for RouteLayer
where
    S: Service<InferRequest, Response = InferResponse, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Service = RouteService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        if tokio::runtime::Handle::try_current().is_ok() {
            let on_canary = Arc::clone(&self.table.on_canary);
            start_background(&self.table.load(), &inner, &on_canary);
            // A service need not be Sync; the handle kept for later route sets is locked.
            let for_later = std::sync::Mutex::new(inner.clone());
            let _ = self.table.start.set(Box::new(move |routes| {
                let inner = for_later.lock().unwrap_or_else(|e| e.into_inner()).clone();
                start_background(routes, &inner, &on_canary);
            }));
        }
        RouteService {
            inner,
            table: Arc::clone(&self.table),
        }
    }
}

/// Rewrites requests to a route into requests to the chosen variant.
#[derive(Clone)]
pub struct RouteService<S> {
    inner: S,
    table: Arc<RouteTable>,
}

impl<S> Service<InferRequest> for RouteService<S>
where
    S: Service<InferRequest, Response = InferResponse, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = InferResponse;
    type Error = BoxError;
    type Future = Either<S::Future, BoxFuture<'static, Result<InferResponse, BoxError>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: InferRequest) -> Self::Future {
        // Most requests name a model: peek without taking a reference on the route set.
        if !self.table.current.load().routes.contains_key(&req.model) {
            return Either::Left(self.inner.call(req));
        }
        let routes = self.table.load();
        let Some(route) = routes.routes.get(&req.model) else {
            return Either::Left(self.inner.call(req));
        };
        let key = req.route_key.clone().or_else(|| {
            req.parameters.iter().find_map(|(k, v)| match v {
                ParamValue::String(s) if k == "route_key" => Some(s.clone()),
                _ => None,
            })
        });
        let chosen = routes.pick(route, key.as_deref());
        let variant = &route.variants[chosen];
        let decision = crate::telemetry::stage_span!(
            "route",
            route = %req.model,
            variant = %variant.name,
            mirrored = tracing::field::Empty,
        )
        .entered();
        let route_name = std::mem::replace(&mut req.model, variant.model.clone());
        req.version = variant.version.clone();
        let mut name = variant.name.clone();
        // The mirror is a copy (tensor data is shared, not copied) sent after the primary
        // answered, so the comparison has both sides.
        let mirror = route
            .shadow
            .as_ref()
            .filter(|s| routes.mirror(s))
            .and_then(|s| {
                let sender = s.sender.get()?.clone();
                let mut copy = req.clone();
                copy.model = s.model.clone();
                copy.version = s.version.clone();
                // The shadow call gets a span of its own, linked to this one: holding this
                // span would keep the request's span open until the shadow ran.
                copy.span = tracing::Span::none();
                Some((copy, sender, Arc::clone(&s.stats)))
            });
        decision.record("mirrored", mirror.is_some());
        drop(decision);
        // A copy for the fallback variant, used only if the chosen one is overloaded.
        let fallback = route.fallback.filter(|&f| f != chosen).map(|f| {
            let v = &route.variants[f];
            let mut copy = req.clone();
            copy.model = v.model.clone();
            copy.version = v.version.clone();
            (copy, v.name.clone(), self.inner.clone())
        });
        let routes = Arc::clone(&routes);
        let route_key = route_name.clone();
        let request_id = req.id.clone().filter(|id| !id.is_empty());
        let started = Instant::now();
        let call = self.inner.call(req);
        Either::Right(
            async move {
                let mut result = call.await;
                let route = &routes.routes[&route_key];
                if let Some(c) = &route.canary
                    && c.variant == chosen
                {
                    c.record(result.is_ok(), started.elapsed());
                }
                if let Some((request, sender, stats)) = mirror {
                    let job = ShadowJob {
                        primary_span: crate::telemetry::span_context(&tracing::Span::current()),
                        request,
                        primary: result.as_ref().ok().map(|r| r.outputs.clone()),
                        primary_latency: started.elapsed(),
                    };
                    stats.sent(sender.try_send(job).is_ok());
                }
                let mut fell_back = None;
                if let (Err(e), Some((request, fallback_name, mut inner))) = (&result, fallback)
                    && crate::error::ServeError::classify(e.as_ref()).kind
                        == crate::error::ErrorKind::Overloaded
                {
                    tracing::debug!(route = %route_key, from = %name, to = %fallback_name, "overloaded: answering from the fallback");
                    result = match inner.ready().await {
                        Ok(svc) => svc.call(request).await,
                        Err(e) => Err(e),
                    };
                    name = fallback_name;
                    fell_back = route.fallback;
                }
                let served = fell_back.unwrap_or(chosen);
                route.stats[served].record(result.is_ok(), started.elapsed());
                if let (Some(id), Ok(resp)) = (request_id, &result) {
                    routes.remember(&route_key, id, served, predicted_classes(resp));
                }
                let mut resp = result?;
                resp.model_name = route_name;
                resp.parameters
                    .push((VARIANT_PARAM.to_string(), ParamValue::String(name)));
                if fell_back.is_some() {
                    resp.parameters
                        .push((FALLBACK_PARAM.to_string(), ParamValue::Bool(true)));
                }
                Ok(resp)
            }
            .boxed(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use infergate_config::VariantConfig;

    fn routes(weights: &[u32]) -> Routes {
        Routes::new(&[RouteConfig {
            name: "r".into(),
            variants: weights
                .iter()
                .enumerate()
                .map(|(i, &weight)| VariantConfig {
                    name: format!("v{i}"),
                    model: "m".into(),
                    version: None,
                    weight,
                })
                .collect(),
            shadow: None,
            canary: None,
            fallback: None,
        }])
    }

    proptest::proptest! {
        #[test]
        fn keyed_choices_are_sticky_and_follow_the_weights(w0 in 0u32..20, w1 in 1u32..20, w2 in 0u32..20) {
            let r = routes(&[w0, w1, w2]);
            let route = &r.routes["r"];
            let total = f64::from(w0 + w1 + w2);
            let mut counts = [0usize; 3];
            for user in 0..6000 {
                let key = format!("user-{user}");
                let pick = r.pick(route, Some(&key));
                proptest::prop_assert_eq!(pick, r.pick(route, Some(&key)));
                counts[pick] += 1;
            }
            for (i, w) in [w0, w1, w2].into_iter().enumerate() {
                let share = counts[i] as f64 / 6000.0;
                let expected = f64::from(w) / total;
                // Binomial standard deviation at 6000 draws is under 0.007; allow 5 of them.
                proptest::prop_assert!((share - expected).abs() < 0.035, "variant {i}: {share} vs {expected}");
                if w == 0 {
                    proptest::prop_assert_eq!(counts[i], 0);
                }
            }
        }
    }

    #[tokio::test]
    async fn a_stuck_shadow_never_holds_up_the_primary_and_overflow_is_counted() {
        use crate::core::Protocol;
        use tower::ServiceExt;
        let config = RouteConfig {
            name: "r".into(),
            variants: vec![VariantConfig {
                name: "a".into(),
                model: "primary".into(),
                version: None,
                weight: 1,
            }],
            shadow: Some(infergate_config::ShadowConfig {
                model: "shadow".into(),
                version: None,
                fraction: 1.0,
                queue: 1,
            }),
            canary: None,
            fallback: None,
        };
        let table = Arc::new(RouteTable::new(&[config]));
        // The primary answers at once; the shadow never does.
        let inner = tower::service_fn(|req: InferRequest| async move {
            if req.model == "shadow" {
                std::future::pending::<()>().await;
            }
            Ok::<_, BoxError>(InferResponse {
                model_name: req.model,
                model_version: "1".into(),
                id: None,
                parameters: Vec::new(),
                outputs: Vec::new(),
                timings: Default::default(),
            })
        });
        let svc = RouteLayer::new(Arc::clone(&table)).layer(inner);
        for _ in 0..10 {
            let resp = tokio::time::timeout(
                std::time::Duration::from_secs(1),
                svc.clone()
                    .oneshot(InferRequest::new("r", None, Protocol::Http)),
            )
            .await
            .expect("the primary must not wait for the shadow")
            .unwrap();
            assert_eq!(resp.model_name, "r");
            tokio::task::yield_now().await;
        }
        let report = table.load().shadow_report("r").unwrap();
        // One mirror is stuck in the worker, one waits in the queue of one; the rest dropped.
        assert_eq!((report.sent, report.dropped), (2, 8), "{report:?}");
    }

    #[test]
    fn a_canary_takes_its_share_and_the_others_split_the_rest_by_weight() {
        assert_eq!(cumulative(&[3, 1, 0], None), vec![3, 4, 4]);
        assert_eq!(
            cumulative(&[3, 1, 0], Some((2, 25))),
            vec![562_500, 750_000, 1_000_000]
        );
        assert_eq!(
            cumulative(&[3, 1, 0], Some((2, 0))),
            vec![750_000, 1_000_000, 1_000_000]
        );
        assert_eq!(
            cumulative(&[3, 1, 0], Some((2, 100))),
            vec![0, 0, 1_000_000]
        );
    }

    #[test]
    fn ten_thousand_users_split_90_10_within_two_points() {
        let r = routes(&[90, 10]);
        let route = &r.routes["r"];
        let second = (0..10_000)
            .filter(|u| r.pick(route, Some(&format!("user-{u}"))) == 1)
            .count();
        assert!((second as f64 / 10_000.0 - 0.10).abs() < 0.02, "{second}");
    }

    #[test]
    fn requests_without_a_key_spread_over_the_variants() {
        let r = routes(&[1, 3]);
        let route = &r.routes["r"];
        let ones = (0..4000).filter(|_| r.pick(route, None) == 1).count();
        assert!((ones as f64 / 4000.0 - 0.75).abs() < 0.03, "{ones}");
    }
}
