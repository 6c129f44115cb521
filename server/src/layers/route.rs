//! Route: A/B splits. A request to a route's name goes to one of its variants (model and
//! version or alias) in proportion to the weights; a route key makes the choice sticky. The
//! response names the route and carries the served variant.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use futures::FutureExt;
use futures::future::{BoxFuture, Either};
use infergate_config::RouteConfig;
use tower::{Layer, Service};

use crate::core::{InferRequest, InferResponse, ParamValue};
use crate::error::BoxError;

/// Header and gRPC metadata key of the sticky routing key.
pub const ROUTE_KEY_HEADER: &str = "x-infergate-route-key";
/// Response header naming the served variant.
pub const VARIANT_HEADER: &str = "x-infergate-variant";
/// Response parameter naming the served variant.
pub const VARIANT_PARAM: &str = "variant";

/// A route's variants with their cumulative weights.
#[derive(Debug)]
struct Route {
    variants: Vec<Variant>,
    /// `cumulative[i]` = sum of the weights of variants `0..=i`.
    cumulative: Vec<u64>,
}

#[derive(Debug)]
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
}

impl Routes {
    /// Routes from validated config.
    pub fn new(config: &[RouteConfig]) -> Self {
        let routes = config
            .iter()
            .map(|r| {
                let mut total = 0;
                let cumulative = r
                    .variants
                    .iter()
                    .map(|v| {
                        total += u64::from(v.weight);
                        total
                    })
                    .collect();
                let variants = r
                    .variants
                    .iter()
                    .map(|v| Variant {
                        name: v.name.clone(),
                        model: v.model.clone(),
                        version: v.version.clone(),
                    })
                    .collect();
                (
                    r.name.clone(),
                    Route {
                        variants,
                        cumulative,
                    },
                )
            })
            .collect();
        Self {
            routes,
            counter: AtomicU64::new(0),
        }
    }

    pub fn is_route(&self, name: &str) -> bool {
        self.routes.contains_key(name)
    }

    /// The variant index for `key` (hashed: the same key always gets the same variant) or,
    /// without a key, for the next request in a well-spread sequence.
    fn pick(&self, route: &Route, key: Option<&str>) -> usize {
        let total = *route.cumulative.last().unwrap_or(&0);
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
        route.cumulative.partition_point(|&c| c <= point)
    }
}

/// Adds [`RouteService`].
#[derive(Clone)]
pub struct RouteLayer {
    routes: Arc<Routes>,
}

impl RouteLayer {
    pub fn new(routes: Arc<Routes>) -> Self {
        Self { routes }
    }
}

impl<S> Layer<S> for RouteLayer {
    type Service = RouteService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RouteService {
            inner,
            routes: Arc::clone(&self.routes),
        }
    }
}

/// Rewrites requests to a route into requests to the chosen variant.
#[derive(Clone)]
pub struct RouteService<S> {
    inner: S,
    routes: Arc<Routes>,
}

impl<S> Service<InferRequest> for RouteService<S>
where
    S: Service<InferRequest, Response = InferResponse, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = InferResponse;
    type Error = BoxError;
    type Future = Either<S::Future, BoxFuture<'static, Result<InferResponse, BoxError>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: InferRequest) -> Self::Future {
        let Some(route) = self.routes.routes.get(&req.model) else {
            return Either::Left(self.inner.call(req));
        };
        let key = req.route_key.clone().or_else(|| {
            req.parameters.iter().find_map(|(k, v)| match v {
                ParamValue::String(s) if k == "route_key" => Some(s.clone()),
                _ => None,
            })
        });
        let variant = &route.variants[self.routes.pick(route, key.as_deref())];
        let route_name = std::mem::replace(&mut req.model, variant.model.clone());
        req.version = variant.version.clone();
        let name = variant.name.clone();
        let call = self.inner.call(req);
        Either::Right(
            async move {
                let mut resp = call.await?;
                resp.model_name = route_name;
                resp.parameters
                    .push((VARIANT_PARAM.to_string(), ParamValue::String(name)));
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

    #[test]
    fn requests_without_a_key_spread_over_the_variants() {
        let r = routes(&[1, 3]);
        let route = &r.routes["r"];
        let ones = (0..4000).filter(|_| r.pick(route, None) == 1).count();
        assert!((ones as f64 / 4000.0 - 0.75).abs() < 0.03, "{ones}");
    }
}
