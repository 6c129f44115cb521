//! The table of routes in force: replaced atomically through the admin API, with each set's
//! background work (shadow workers, the canary controller) started with it.

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use infergate_config::RouteConfig;
use tower::Service;

use super::{CanaryHook, Routes, shadow};
use crate::core::{InferRequest, InferResponse};
use crate::error::BoxError;
use crate::layers::canary::CanaryReport;

/// The routes in force, replaceable at run time (atomically: a request sees the old set or
/// the new one). Each set's shadow workers and canary controller start with it and stop when
/// it is replaced and its last request is done.
pub struct RouteTable {
    pub(super) current: ArcSwap<Routes>,
    /// Starts the background work of a route set; installed when the stack is built.
    pub(super) start: OnceLock<StartBackground>,
    /// Told about every canary transition of every route set.
    pub(super) on_canary: Arc<OnceLock<CanaryHook>>,
}

/// Starts a route set's shadow workers and canary controller.
pub(super) type StartBackground = Box<dyn Fn(&Arc<Routes>) + Send + Sync>;

impl std::fmt::Debug for RouteTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteTable").finish_non_exhaustive()
    }
}

impl RouteTable {
    /// Routes from validated config.
    pub fn new(config: &[RouteConfig]) -> Self {
        Self {
            current: ArcSwap::from_pointee(Routes::new(config)),
            start: OnceLock::new(),
            on_canary: Arc::default(),
        }
    }

    /// Installs the receiver of canary transitions (once; later calls are ignored).
    pub fn on_canary_transition(&self, hook: CanaryHook) {
        let _ = self.on_canary.set(hook);
    }

    /// Rolls a route's canary back to 0% now, and reports the transition like the gates' own.
    pub fn roll_back_canary(
        &self,
        route: &str,
        reason: &str,
    ) -> Result<CanaryReport, crate::error::ServeError> {
        use crate::error::ServeError;
        let routes = self.load();
        let event = routes.roll_back_canary(route, reason).map_err(|e| {
            if routes.is_route(route) && routes.canary_report(route).is_some() {
                ServeError::new(crate::error::ErrorKind::Conflict, e)
            } else {
                ServeError::not_found(e)
            }
        })?;
        if let Some(hook) = self.on_canary.get() {
            hook(event);
        }
        routes
            .canary_report(route)
            .ok_or_else(|| ServeError::not_found(format!("'{route}' is not a route with a canary")))
    }

    /// The set in force.
    pub fn load(&self) -> Arc<Routes> {
        self.current.load_full()
    }

    /// Replaces every route at once, after validating the new set (all problems reported).
    pub fn replace(&self, config: Vec<RouteConfig>) -> Result<(), crate::error::ServeError> {
        let errors = infergate_config::validate_routes(&config);
        if !errors.is_empty() {
            return Err(crate::error::ServeError::invalid(format!(
                "invalid routes: {}",
                errors.join("; ")
            )));
        }
        let routes = Arc::new(Routes::replacing(&config, Some(&self.current.load())));
        if let Some(start) = self.start.get() {
            start(&routes);
        }
        self.current.store(routes);
        tracing::info!(routes = ?config.iter().map(|r| &r.name).collect::<Vec<_>>(), "routes replaced");
        Ok(())
    }
}

/// Starts the shadow workers (each with its own handle on the rest of the stack) and the
/// canary controller (it stops when the set is dropped) of a route set.
pub(super) fn start_background<S>(
    routes: &Arc<Routes>,
    inner: &S,
    on_canary: &Arc<OnceLock<CanaryHook>>,
) where
    S: Service<InferRequest, Response = InferResponse, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    let tick = routes
        .routes
        .values()
        .filter_map(|r| r.canary.as_ref())
        .map(|c| Duration::from_millis((c.step_ms() / 4).clamp(10, 200)))
        .min();
    if let Some(tick) = tick
        && !routes.controller.swap(true, Ordering::Relaxed)
    {
        let weak = Arc::downgrade(routes);
        let on_canary = Arc::clone(on_canary);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(tick).await;
                let Some(routes) = weak.upgrade() else {
                    return;
                };
                for event in routes.evaluate_canaries() {
                    if let Some(hook) = on_canary.get() {
                        hook(event);
                    }
                }
            }
        });
    }
    for shadow in routes.routes.values().filter_map(|r| r.shadow.as_ref()) {
        shadow
            .sender
            .get_or_init(|| shadow::spawn(inner.clone(), shadow.queue, Arc::clone(&shadow.stats)));
    }
}
