//! Registry actions of the admin listener: the gates' verdict on a promotion before it is
//! made, the promotion itself (refused by the gates unless forced, audited in the registry
//! with the caller as actor), and the registry's audit log.

use std::sync::Arc;

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use infergate_registry::{Registry, RegistryError};
use serde::Deserialize;
use serde_json::json;

use crate::Gateway;
use crate::error::{ErrorKind, ServeError};
use crate::http::{error_response, json_response};
use crate::security::Principal;

/// The alias a promotion moves when the caller names none.
const PRODUCTION: &str = "production";

fn production() -> String {
    PRODUCTION.to_string()
}

#[derive(Debug, Deserialize)]
pub(crate) struct PromotionQuery {
    version: u32,
    #[serde(default = "production")]
    alias: String,
}

#[derive(Debug, Deserialize)]
struct PromoteBody {
    version: u32,
    #[serde(default = "production")]
    alias: String,
    #[serde(default)]
    force: bool,
}

fn registry_of(g: &Gateway) -> Result<Arc<Registry>, ServeError> {
    g.repository
        .registry()
        .cloned()
        .ok_or_else(|| ServeError::not_found("this server has no model registry (models.registry)"))
}

fn registry_error(e: RegistryError) -> ServeError {
    match e {
        RegistryError::UnknownModel(_) | RegistryError::UnknownVersion { .. } => {
            ServeError::not_found(e.to_string())
        }
        RegistryError::GateRefused { .. } => ServeError::new(ErrorKind::Conflict, e.to_string()),
        RegistryError::Invalid { .. } => ServeError::invalid(e.to_string()),
        other => ServeError::internal(other.to_string()),
    }
}

/// Runs a blocking registry call off the reactor.
async fn blocking<T: Send + 'static>(
    registry: Arc<Registry>,
    call: impl FnOnce(&Registry) -> Result<T, RegistryError> + Send + 'static,
) -> Result<T, ServeError> {
    tokio::task::spawn_blocking(move || call(&registry))
        .await
        .map_err(|e| ServeError::internal(format!("registry call failed: {e}")))?
        .map_err(registry_error)
}

/// `GET /admin/models/{model}/promotion?version=N[&alias=production]`: what the gates say
/// about moving `alias` to `version` now, without moving it.
pub(crate) async fn promotion_check(
    State(g): State<Arc<Gateway>>,
    Path(model): Path<String>,
    Query(q): Query<PromotionQuery>,
) -> Response {
    let registry = match registry_of(&g) {
        Ok(r) => r,
        Err(e) => return error_response(&e),
    };
    let name = model.clone();
    let alias = q.alias.clone();
    let checked = blocking(registry, move |r| {
        let rules = r.gate(&name)?;
        let versions = r.versions(&name)?;
        let current = r.aliases(&name)?.get(&alias).copied();
        let candidate = versions
            .iter()
            .find(|v| v.version == q.version)
            .ok_or_else(|| RegistryError::UnknownVersion {
                model: name.clone(),
                version: q.version.to_string(),
            })?;
        let current_record = current.and_then(|c| versions.iter().find(|v| v.version == c));
        let verdict = rules.check(candidate, current_record);
        Ok((rules, current, verdict.reasons))
    })
    .await;
    match checked {
        Ok((rules, current, reasons)) => json_response(&json!({
            "model": model,
            "alias": q.alias,
            "version": q.version,
            "current": current,
            "passed": reasons.is_empty(),
            "reasons": reasons,
            "rules": rules,
        })),
        Err(e) => error_response(&e),
    }
}

/// `POST /admin/models/{model}/promote` with `{"version": N, "alias": "production",
/// "force": false}`: moves the alias if the gates pass (409 with their reasons if not, unless
/// forced), then applies it to what this server serves at once.
pub(crate) async fn promote(
    State(g): State<Arc<Gateway>>,
    Path(model): Path<String>,
    principal: Option<Extension<Principal>>,
    body: axum::body::Bytes,
) -> Response {
    let body: PromoteBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return error_response(&ServeError::invalid(format!(
                "the body must be {{\"version\": N, \"alias\": \"production\", \"force\": false}}: {e}"
            )));
        }
    };
    let registry = match registry_of(&g) {
        Ok(r) => r,
        Err(e) => return error_response(&e),
    };
    let actor = principal.map_or_else(|| "anonymous".to_string(), |p| p.0.0.clone());
    let (name, alias) = (model.clone(), body.alias.clone());
    let promoted = blocking(registry, move |r| {
        r.promote(&name, body.version, &alias, body.force, &actor)
    })
    .await;
    match promoted {
        Ok(p) => {
            if let Err(e) = g.repository.sync_registry().await {
                tracing::error!(error = %e, "promotion made, but the registry could not be read back");
            }
            json_response(&json!({
                "model": model,
                "alias": body.alias,
                "version": body.version,
                "previous": p.previous,
                "forced": !p.overridden.is_empty(),
                "overridden": p.overridden,
            }))
        }
        Err(e) => error_response(&e),
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct AuditQuery {
    model: Option<String>,
}

/// `GET /admin/registry/audit[?model=NAME]`: the registry's audit log (registrations, alias
/// moves, refused and forced promotions, gates, canary transitions), oldest first.
pub(crate) async fn audit(State(g): State<Arc<Gateway>>, Query(q): Query<AuditQuery>) -> Response {
    let registry = match registry_of(&g) {
        Ok(r) => r,
        Err(e) => return error_response(&e),
    };
    match blocking(registry, move |r| r.audit(q.model.as_deref())).await {
        Ok(entries) => json_response(&json!({"entries": entries})),
        Err(e) => error_response(&e),
    }
}
