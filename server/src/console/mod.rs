//! The operator's console at `/ui` on the admin listener: a static page (embedded in the
//! binary, no external network) that reads and acts through the admin API with the bearer
//! token the operator types in, plus the two views it needs that the API lacked (every model
//! with its versions and lineage; live traffic).
//!
//! The page and its assets carry no data and are served without a token. The token lives
//! in the page's memory only and travels in the `Authorization` header, never in a cookie, so
//! another site cannot make the browser act with it (no ambient credential, nothing to forge).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::Gateway;
use crate::http::{error_response, json_response};

pub mod traffic;

pub use traffic::Traffic;

/// `(file, content type, bytes)` of every asset under `/ui/`.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../console/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_bytes!("../../console/app.css"),
    ),
    (
        "uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../console/vendor/uplot/uPlot.iife.min.js"),
    ),
    (
        "uPlot.min.css",
        "text/css; charset=utf-8",
        include_bytes!("../../console/vendor/uplot/uPlot.min.css"),
    ),
];

const PAGE: &[u8] = include_bytes!("../../console/index.html");

/// Headers of everything under `/ui`: only this origin's scripts and styles, no framing.
fn with_security_headers(content_type: &str, body: &'static [u8]) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_str(content_type).unwrap_or(HeaderValue::from_static("application/octet-stream"))),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'",
                ),
            ),
            (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
            (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
            (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

/// `GET /ui`: the page (the login form until a token is entered).
pub(crate) async fn page() -> Response {
    with_security_headers("text/html; charset=utf-8", PAGE)
}

/// `GET /ui/{file}`: a script or style sheet of the page.
pub(crate) async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, content_type, body)) => with_security_headers(content_type, body),
        None => (StatusCode::NOT_FOUND, "no such console asset").into_response(),
    }
}

/// `GET /admin/console/traffic`: the live series (see [`traffic`]).
pub(crate) async fn traffic(State(g): State<Arc<Gateway>>) -> Response {
    json_response(&json!({
        "interval_ms": traffic::INTERVAL.as_millis() as u64,
        "series": g.traffic.series(),
    }))
}

/// `GET /admin/console/models`: every model with its versions (loaded or not), state, aliases,
/// default and pin, artifact, platform, recorded metrics, lineage and served counts.
pub(crate) async fn models(State(g): State<Arc<Gateway>>) -> Response {
    let records = match g.repository.registry().cloned() {
        None => BTreeMap::new(),
        Some(registry) => {
            let read = tokio::task::spawn_blocking(move || {
                registry.models().and_then(|models| {
                    models
                        .into_iter()
                        .map(|m| Ok((m.name.clone(), (registry.versions(&m.name)?, m.aliases))))
                        .collect::<Result<BTreeMap<_, _>, infergate_registry::RegistryError>>()
                })
            })
            .await;
            match read {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    return error_response(&crate::error::ServeError::internal(format!(
                        "registry: {e}"
                    )));
                }
                Err(e) => {
                    return error_response(&crate::error::ServeError::internal(e.to_string()));
                }
            }
        }
    };
    let mut by_name: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for row in g.repository.index(false) {
        let entry = by_name.entry(row.name.clone()).or_default();
        let loaded = row.version.parse::<u64>().ok().and_then(|n| {
            g.repository
                .versions(&row.name)
                .into_iter()
                .find(|v| v.version == n)
        });
        let mut version = json!({
            "version": row.version,
            "state": row.state,
            "reason": row.reason,
        });
        if let Some(v) = loaded {
            let (ok, ok_ns) = v.stats.success.get();
            version["digest"] = json!(v.digest);
            version["weight_bytes"] = json!(v.weight_bytes);
            version["platform"] = json!(v.model.platform());
            version["instances"] = json!(v.instances);
            version["max_batch_size"] = json!(v.config.max_batch_size);
            version["requests"] = json!(ok);
            version["failures"] = json!(v.stats.fail.get().0);
            version["mean_ms"] = json!((ok > 0).then(|| ok_ns as f64 / ok as f64 / 1e6));
            version["last_inference_ms"] = json!(
                v.stats
                    .last_inference_ms
                    .load(std::sync::atomic::Ordering::Relaxed)
            );
            version["kind"] = json!(if v.text.is_some() {
                "text embedding"
            } else if v.image.is_some() {
                "image"
            } else {
                "tensor"
            });
        }
        entry.push(version);
    }
    let mut out = Vec::new();
    let names: Vec<String> = by_name
        .keys()
        .cloned()
        .chain(records.keys().cloned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    for name in names {
        let mut versions = by_name.remove(&name).unwrap_or_default();
        let crate::repository::Defaults {
            default,
            pinned,
            mut aliases,
        } = g.repository.defaults_of(&name).unwrap_or_default();
        let registry = records.get(&name);
        if let Some((recorded, registry_aliases)) = registry {
            aliases = registry_aliases.clone();
            for record in recorded {
                let label = record.version.to_string();
                let at = versions.iter().position(|v| v["version"] == label);
                let v = match at {
                    Some(i) => &mut versions[i],
                    None => {
                        versions.push(json!({
                            "version": label,
                            "state": "REGISTERED",
                            "reason": "in the registry, not loaded here",
                            "platform": record.platform,
                        }));
                        versions.last_mut().expect("just pushed")
                    }
                };
                v["metrics"] = json!(record.metrics);
                v["lineage"] = json!(record.lineage);
                v["created_at"] = json!(record.created_at);
                v["author"] = json!(record.author);
                v["description"] = json!(record.description);
                v["has_baseline"] = json!(record.baseline.is_some());
                if let Some(a) = record.serving_artifact() {
                    v["artifact"] = json!({"digest": a.digest, "size": a.size, "kind": a.kind});
                }
            }
        }
        versions.sort_by_key(|v| v["version"].as_str().and_then(|s| s.parse::<u64>().ok()));
        for v in &mut versions {
            let label = v["version"].as_str().unwrap_or_default().to_string();
            v["aliases"] = json!(
                aliases
                    .iter()
                    .filter(|(_, n)| n.to_string() == label)
                    .map(|(a, _)| a)
                    .collect::<Vec<_>>()
            );
            v["default"] = json!(default.is_some_and(|d| d.to_string() == label));
        }
        out.push(json!({
            "name": name,
            "source": if registry.is_some() { "registry" } else { "repository" },
            "default_version": default.map(|d| d.to_string()),
            "pinned": pinned.map(|p| p.to_string()),
            "aliases": aliases,
            "versions": versions,
        }));
    }
    json_response(&json!({"models": out}))
}
