//! The admin listener (port 8002): Prometheus metrics and the management API
//! (repository index, load, unload, pinning a default version, shadow comparisons, canary
//! state, experiment reports and feedback), kept off the public port.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use crate::Gateway;
use crate::http::{error_response, json_response, repository_index};

mod registry;

pub fn router(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/ui", get(crate::console::page))
        .route("/ui/{file}", get(crate::console::asset))
        .route("/v2/health/live", get(|| async { StatusCode::OK }))
        .route("/v2/health/ready", get(ready))
        .route("/v2/repository/index", post(repository_index))
        .route("/v2/repository/models/{model}/load", post(load))
        .route("/v2/repository/models/{model}/unload", post(unload))
        .route("/admin/models/{model}/pin", axum::routing::delete(unpin))
        .route("/admin/models/{model}/pin/{version}", post(pin))
        .route("/admin/routes/{route}/shadow", get(shadow_report))
        .route("/admin/routes/{route}/canary", get(canary_report))
        .route(
            "/admin/routes/{route}/canary/rollback",
            post(roll_back_canary),
        )
        .route(
            "/admin/models/{model}/promotion",
            get(registry::promotion_check),
        )
        .route("/admin/models/{model}/promote", post(registry::promote))
        .route("/admin/registry/audit", get(registry::audit))
        .route("/admin/console/models", get(crate::console::models))
        .route("/admin/console/traffic", get(crate::console::traffic))
        .route("/admin/experiments/{route}", get(experiment_report))
        .route("/admin/feedback", post(feedback))
        .route("/admin/routes", get(list_routes).put(replace_routes))
        .route("/admin/audit", get(audit))
        .route("/admin/whoami", get(whoami))
        .route("/admin/models/{model}/drift", get(drift))
        .route("/admin/log-level", get(log_level).put(set_log_level))
        // every route: authenticate, and audit management calls (outermost, so a refused call
        // does no work and is still recorded)
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&gateway),
            crate::security::admin_guard,
        ))
        .with_state(gateway)
}

/// Drift of a model's loaded versions against their training baselines: the last closed
/// window's PSI per feature and for the predicted classes, and the open window's size.
async fn drift(State(g): State<Arc<Gateway>>, Path(model): Path<String>) -> Response {
    let versions = g.repository.versions(&model);
    if versions.is_empty() {
        return error_response(&crate::error::ServeError::not_found(format!(
            "model '{model}' is not loaded"
        )));
    }
    let reports: Vec<serde_json::Value> = versions
        .iter()
        .filter_map(|v| {
            let drift = v.drift.as_ref()?;
            let (last, open_rows) = drift.state();
            let (history, distributions) = drift.history();
            Some(json!({
                "version": v.version_label,
                "last_window": last,
                "open_window_rows": open_rows,
                "history": history,
                "distributions": distributions,
            }))
        })
        .collect();
    json_response(&json!({
        "model": model,
        "versions": reports,
        "note": if reports.is_empty() { "no loaded version has a training baseline" } else { "" },
    }))
}

/// The log filter in force.
async fn log_level(State(g): State<Arc<Gateway>>) -> Response {
    match g.log.get() {
        Some(log) => json_response(&json!({"level": log.level()})),
        None => error_response(&crate::error::ServeError::not_found(
            "this server's log filter is not under its control",
        )),
    }
}

/// Replaces the log filter: `{"level": "info,infergate_server=debug"}`.
async fn set_log_level(State(g): State<Arc<Gateway>>, body: axum::body::Bytes) -> Response {
    use crate::error::ServeError;
    let Some(log) = g.log.get() else {
        return error_response(&ServeError::not_found(
            "this server's log filter is not under its control",
        ));
    };
    let level = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["level"].as_str().map(str::to_string));
    let Some(level) = level else {
        return error_response(&ServeError::invalid(
            "the body must be {\"level\": \"<tracing filter directive>\"}",
        ));
    };
    match log.set(&level) {
        Ok(()) => json_response(&json!({"level": log.level()})),
        Err(e) => error_response(&ServeError::invalid(e)),
    }
}

/// Who the token belongs to and what it may do (the console shows or hides its actions).
async fn whoami(
    State(g): State<Arc<Gateway>>,
    principal: Option<axum::Extension<crate::security::Principal>>,
) -> Response {
    let principal =
        principal.map_or_else(|| crate::security::Principal("anonymous".into()), |p| p.0);
    json_response(&json!({"name": principal.0, "scopes": g.security.scopes_of(&principal)}))
}

/// The most recent management actions, oldest first.
async fn audit(State(g): State<Arc<Gateway>>) -> Response {
    json_response(&json!({"entries": g.security.audit.recent()}))
}

async fn ready(State(g): State<Arc<Gateway>>) -> StatusCode {
    if g.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    }
}

/// Prometheus metrics: OpenMetrics when the scraper asks for it (Prometheus does), the classic
/// text format otherwise.
async fn metrics(State(g): State<Arc<Gateway>>, headers: axum::http::HeaderMap) -> Response {
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    let m = &g.metrics;
    let versions = g.repository.all_versions();
    m.loaded_versions.set(versions.len() as i64);
    m.version_weight_bytes.clear();
    for v in &versions {
        m.version_weight_bytes
            .get_or_create(&v.labels)
            .set(v.weight_bytes as i64);
    }
    m.unavailable_versions
        .set(g.repository.failed_loads() as i64);
    crate::metrics::Metrics::catch_up(
        &m.swaps,
        g.repository
            .swaps
            .load(std::sync::atomic::Ordering::Relaxed),
    );
    let routes = g.routes.load();
    for route in routes.configs() {
        if let Some(r) = routes.shadow_report(&route.name) {
            for (result, total) in [
                ("compared", r.both_ok),
                ("dropped", r.dropped),
                ("shadow_failed", r.shadow_failed + r.both_failed),
                ("disagreed", r.rows - r.top1_agreement_rows),
            ] {
                let labels = crate::metrics::ShadowLabels {
                    route: route.name.clone(),
                    result,
                };
                crate::metrics::Metrics::catch_up(&m.shadow.get_or_create(&labels), total);
            }
        }
    }
    m.sample_process();
    for v in &versions {
        if let Some((Some(report), _)) = v.drift.as_ref().map(|d| d.state()) {
            for (kind, value) in [
                ("max_feature", report.max_feature_psi),
                ("mean_feature", report.mean_feature_psi),
                ("class", report.class_psi),
            ] {
                m.drift_psi
                    .get_or_create(&crate::metrics::DriftLabels {
                        model: v.name.clone(),
                        version: v.version_label.clone(),
                        kind,
                    })
                    .set(value);
            }
        }
    }
    let queued: usize = versions
        .iter()
        .filter_map(|v| v.batcher.get())
        .map(|b| b.queued())
        .sum();
    g.metrics.queued_requests.set(queued as i64);
    let (content_type, body) = if openmetrics {
        (
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            g.metrics.encode(),
        )
    } else {
        (
            "text/plain; version=0.0.4; charset=utf-8",
            g.metrics.encode_text(),
        )
    };
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        body,
    )
        .into_response()
}

async fn load(State(g): State<Arc<Gateway>>, Path(model): Path<String>) -> Response {
    match g.repository.load(&model).await {
        Ok(()) => json_response(&serde_json::json!({})),
        Err(e) => error_response(&e),
    }
}

async fn unload(State(g): State<Arc<Gateway>>, Path(model): Path<String>) -> Response {
    match g.repository.unload(&model).await {
        Ok(()) => json_response(&serde_json::json!({})),
        Err(e) => error_response(&e),
    }
}

/// Makes `version` the model's default (over the registry's `production`) until unpinned.
async fn pin(
    State(g): State<Arc<Gateway>>,
    Path((model, version)): Path<(String, String)>,
) -> Response {
    let Ok(number) = version.parse::<u64>() else {
        return error_response(&crate::error::ServeError::invalid(format!(
            "version '{version}' is not a number"
        )));
    };
    match g.repository.pin(&model, Some(number)).await {
        Ok(default) => json_response(
            &json!({"model": model, "default_version": default.map(|v| v.to_string()), "pinned": true}),
        ),
        Err(e) => error_response(&e),
    }
}

/// Removes a pin: the default follows `production` again.
async fn unpin(State(g): State<Arc<Gateway>>, Path(model): Path<String>) -> Response {
    match g.repository.pin(&model, None).await {
        Ok(default) => json_response(
            &json!({"model": model, "default_version": default.map(|v| v.to_string()), "pinned": false}),
        ),
        Err(e) => error_response(&e),
    }
}

/// The live comparison of a route's shadow with its primary.
async fn shadow_report(State(g): State<Arc<Gateway>>, Path(route): Path<String>) -> Response {
    match g.routes.load().shadow_report(&route) {
        Some(report) => json_response(&json!({"route": route, "shadow": report})),
        None => error_response(&crate::error::ServeError::not_found(format!(
            "'{route}' is not a route with a shadow"
        ))),
    }
}

/// A route's canary: phase, current share, step counters and every transition.
async fn canary_report(State(g): State<Arc<Gateway>>, Path(route): Path<String>) -> Response {
    match g.routes.load().canary_report(&route) {
        Some(report) => json_response(&json!({"route": route, "canary": report})),
        None => error_response(&crate::error::ServeError::not_found(format!(
            "'{route}' is not a route with a canary"
        ))),
    }
}

/// Rolls a route's canary back to 0% at once (an operator's decision, with an optional
/// `{"reason": "…"}`); the transition is kept in the canary's history and audited.
async fn roll_back_canary(
    State(g): State<Arc<Gateway>>,
    Path(route): Path<String>,
    principal: Option<axum::Extension<crate::security::Principal>>,
    body: axum::body::Bytes,
) -> Response {
    let reason = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["reason"].as_str().map(str::to_string))
        .filter(|r| !r.trim().is_empty())
        .unwrap_or_else(|| "no reason given".to_string());
    let actor = principal.map_or_else(|| "anonymous".to_string(), |p| p.0.0.clone());
    match g
        .routes
        .roll_back_canary(&route, &format!("rolled back by {actor}: {reason}"))
    {
        Ok(report) => json_response(&json!({"route": route, "canary": report})),
        Err(e) => error_response(&e),
    }
}

/// A route's experiment: per-variant counts, error rates, latency percentiles, comparisons
/// with the first variant, and the shadow and canary state when the route has them.
async fn experiment_report(State(g): State<Arc<Gateway>>, Path(route): Path<String>) -> Response {
    match g.routes.load().experiment_report(&route) {
        Some(report) => json_response(&json!({
            "route": route,
            "variants": report.variants,
            "comparisons": report.comparisons,
            "shadow": g.routes.load().shadow_report(&route),
            "canary": g.routes.load().canary_report(&route),
        })),
        None => error_response(&crate::error::ServeError::not_found(format!(
            "'{route}' is not a route"
        ))),
    }
}

/// Ground truth for a routed request, by its id: `{"route", "id", "labels": [..]}` (true class
/// per row) or `{"route", "id", "outcome": true|false}`.
async fn feedback(State(g): State<Arc<Gateway>>, body: axum::body::Bytes) -> Response {
    use crate::error::ServeError;
    use crate::layers::route::Feedback;
    let parsed: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return error_response(&ServeError::invalid(format!("feedback is not JSON: {e}")));
        }
    };
    let (Some(route), Some(id)) = (parsed["route"].as_str(), parsed["id"].as_str()) else {
        return error_response(&ServeError::invalid("feedback needs \"route\" and \"id\""));
    };
    let fb = if let Some(labels) = parsed["labels"].as_array() {
        match labels
            .iter()
            .map(|l| l.as_u64().and_then(|l| u32::try_from(l).ok()))
            .collect()
        {
            Some(labels) => Feedback::Labels(labels),
            None => {
                return error_response(&ServeError::invalid("\"labels\" must be class numbers"));
            }
        }
    } else if let Some(good) = parsed["outcome"].as_bool() {
        Feedback::Outcome(good)
    } else {
        return error_response(&ServeError::invalid(
            "feedback needs \"labels\" or \"outcome\"",
        ));
    };
    match g.routes.load().feedback(route, id, &fb) {
        Ok(variant) => json_response(&json!({"route": route, "id": id, "variant": variant})),
        Err(e) => error_response(&e),
    }
}

/// The routes in force, as configured.
async fn list_routes(State(g): State<Arc<Gateway>>) -> Response {
    json_response(&json!({"routes": g.routes.load().configs()}))
}

/// Replaces every route at once with the JSON list in the body (`[RouteConfig, …]`, the
/// config file's `[[routes]]` as JSON); all problems are reported and nothing changes when
/// one is invalid. Statistics start again for the new set.
async fn replace_routes(State(g): State<Arc<Gateway>>, body: axum::body::Bytes) -> Response {
    let routes: Vec<infergate_config::RouteConfig> = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error_response(&crate::error::ServeError::invalid(format!(
                "routes must be a JSON list of routes: {e}"
            )));
        }
    };
    match g.routes.replace(routes) {
        Ok(()) => json_response(&json!({"routes": g.routes.load().configs()})),
        Err(e) => error_response(&e),
    }
}
