//! Who may call what, and the record of what they did.
//!
//! Bearer tokens (only their SHA-256 digests are configured) carry scopes: `read`, `infer`,
//! `admin`. The admin listener's management API always wants a token (unless the server was
//! started with `--insecure-admin`); the public listeners want one only with
//! `security.require_infer_token`. Health routes are always open, so probes need no secret.
//! Every management call, allowed or refused, goes to the audit log.

use std::collections::VecDeque;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderValue, Method, header};
use axum::response::Response;
use infergate_config::{Scope, SecurityConfig};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::Gateway;
use crate::error::{ErrorKind, ServeError};
use crate::http::error_response;

/// Audit entries kept in memory for `GET /admin/audit`.
const RECENT_AUDIT: usize = 512;

/// The caller a request was authenticated as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal(pub String);

impl Principal {
    fn anonymous() -> Self {
        Self("anonymous".into())
    }
}

struct Token {
    name: String,
    digest: [u8; 32],
    scopes: Vec<Scope>,
}

/// Tokens, the two switches and the audit log, built once from `[security]`.
pub struct Security {
    tokens: Vec<Token>,
    insecure_admin: bool,
    require_infer_token: bool,
    pub audit: Audit,
}

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Health: nothing.
    Open,
    /// Metadata, statistics, reports: `read` (or `infer` on the public listeners).
    Read,
    /// Inference: `infer`.
    Infer,
    /// Load, unload, pin, routes, feedback: `admin`.
    Admin,
}

impl Security {
    pub fn new(config: &SecurityConfig) -> anyhow::Result<Self> {
        let tokens = config
            .tokens
            .iter()
            .map(|t| {
                let mut digest = [0u8; 32];
                for (i, byte) in digest.iter_mut().enumerate() {
                    *byte = u8::from_str_radix(&t.sha256[2 * i..2 * i + 2], 16)?;
                }
                Ok(Token {
                    name: t.name.clone(),
                    digest,
                    scopes: t.scopes.clone(),
                })
            })
            .collect::<Result<_, std::num::ParseIntError>>()?;
        if config.insecure_admin {
            tracing::warn!(
                "INSECURE: the admin listener's management API accepts calls without a token (--insecure-admin); never run like this outside local development"
            );
        } else if config.tokens.is_empty() {
            tracing::warn!(
                "no tokens in security.tokens: the management API refuses every call (use `infergate config hash-token` to make one)"
            );
        }
        Ok(Self {
            tokens,
            insecure_admin: config.insecure_admin,
            require_infer_token: config.require_infer_token,
            audit: Audit::open(config.audit_log.as_deref())?,
        })
    }

    /// Checks a request for a route of the admin listener.
    pub fn admin(&self, authorization: Option<&HeaderValue>, need: Need) -> Auth {
        if need == Need::Open {
            return Ok(Principal::anonymous());
        }
        if self.insecure_admin {
            return Ok(Principal("insecure-admin".into()));
        }
        self.check(authorization, need)
    }

    /// The scopes of the caller `principal` was authenticated as (every scope for
    /// `--insecure-admin`).
    pub fn scopes_of(&self, principal: &Principal) -> Vec<&'static str> {
        if self.insecure_admin {
            return vec!["read", "infer", "admin"];
        }
        self.tokens
            .iter()
            .find(|t| t.name == principal.0)
            .map(|t| t.scopes.iter().map(|s| s.as_str()).collect())
            .unwrap_or_default()
    }

    /// Checks a request for a route of the public HTTP or gRPC listener.
    pub fn public(&self, authorization: Option<&HeaderValue>, need: Need) -> Auth {
        match need {
            Need::Open => Ok(Principal::anonymous()),
            Need::Admin => self.admin(authorization, need),
            Need::Read | Need::Infer if !self.require_infer_token => Ok(Principal::anonymous()),
            Need::Read | Need::Infer => self.check(authorization, need),
        }
    }

    fn check(&self, authorization: Option<&HeaderValue>, need: Need) -> Auth {
        let refuse = |message: String| Err(ServeError::new(ErrorKind::Unauthenticated, message));
        let Some(value) = authorization else {
            return refuse(if self.tokens.is_empty() {
                "a bearer token is required and none is configured: add one to security.tokens (or start with --insecure-admin for local development)".into()
            } else {
                "missing bearer token (Authorization: Bearer <token>)".into()
            });
        };
        let Some(presented) = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer ").or(v.strip_prefix("bearer ")))
        else {
            return refuse("the authorization header must be 'Bearer <token>'".into());
        };
        let digest: [u8; 32] = Sha256::digest(presented.trim().as_bytes()).into();
        // Every stored digest is compared in full, so timing tells nothing about which
        // token came close.
        let token = self.tokens.iter().fold(None, |found, t| {
            let equal = t
                .digest
                .iter()
                .zip(&digest)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
            if equal { Some(t) } else { found }
        });
        let Some(token) = token else {
            return refuse("invalid token".into());
        };
        let wanted: &[Scope] = match need {
            Need::Open => return Ok(Principal(token.name.clone())),
            Need::Read => &[Scope::Read, Scope::Infer, Scope::Admin],
            Need::Infer => &[Scope::Infer],
            Need::Admin => &[Scope::Admin],
        };
        if token.scopes.iter().any(|s| wanted.contains(s)) {
            Ok(Principal(token.name.clone()))
        } else {
            Err(ServeError::new(
                ErrorKind::Forbidden,
                format!(
                    "token '{}' lacks the '{}' scope",
                    token.name,
                    wanted[0].as_str()
                ),
            ))
        }
    }
}

/// The outcome of an authentication check.
pub type Auth = Result<Principal, ServeError>;

/// The SHA-256 hex digest to configure for `token`.
pub fn hash_token(token: &str) -> String {
    infergate_registry::sha256_hex(token.trim().as_bytes())
}

/// Management actions: a JSON line each in the audit file (when configured), a log event,
/// and the most recent ones in memory.
pub struct Audit {
    file: Option<Mutex<std::fs::File>>,
    recent: Mutex<VecDeque<Value>>,
}

/// One management action.
#[derive(Debug)]
pub struct AuditEntry<'a> {
    pub actor: &'a str,
    pub protocol: &'a str,
    pub action: &'a str,
    pub peer: Option<SocketAddr>,
    /// HTTP status, or the gRPC code's number.
    pub outcome: u16,
}

impl Audit {
    fn open(path: Option<&std::path::Path>) -> anyhow::Result<Self> {
        let file = match path {
            Some(path) => Some(Mutex::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| {
                        anyhow::anyhow!("cannot open the audit log {}: {e}", path.display())
                    })?,
            )),
            None => None,
        };
        Ok(Self {
            file,
            recent: Mutex::new(VecDeque::with_capacity(RECENT_AUDIT)),
        })
    }

    pub fn record(&self, entry: &AuditEntry<'_>) {
        let now = infergate_registry::now_millis();
        let value = json!({
            "time": infergate_registry::format_millis(now),
            "actor": entry.actor,
            "protocol": entry.protocol,
            "action": entry.action,
            "peer": entry.peer.map(|p| p.to_string()),
            "outcome": entry.outcome,
        });
        tracing::info!(
            target: "infergate::audit",
            actor = entry.actor,
            protocol = entry.protocol,
            action = entry.action,
            peer = ?entry.peer,
            outcome = entry.outcome,
            "management action"
        );
        if let Some(file) = &self.file {
            let mut line = value.to_string();
            line.push('\n');
            let mut file = file.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = file.write_all(line.as_bytes()) {
                tracing::error!(error = %e, "cannot write the audit log");
            }
        }
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent.len() == RECENT_AUDIT {
            recent.pop_front();
        }
        recent.push_back(value);
    }

    /// The most recent entries, oldest first.
    pub fn recent(&self) -> Vec<Value> {
        self.recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

/// What a route of the admin listener needs: health and the console's static page are open, reading is `read`, and anything
/// else (load, unload, pin, routes, feedback) is `admin`. The repository index is a POST that
/// only reads.
fn admin_need(method: &Method, path: &str) -> Need {
    // The console's page and assets hold no data: the data comes from the API, with a token.
    let console_asset = method == Method::GET && (path == "/ui" || path.starts_with("/ui/"));
    if path.starts_with("/v2/health/") || console_asset {
        Need::Open
    } else if method == Method::GET || method == Method::HEAD || path == "/v2/repository/index" {
        Need::Read
    } else {
        Need::Admin
    }
}

/// What a route of the public HTTP listener needs.
fn public_need(path: &str) -> Need {
    if path.starts_with("/v2/health/") {
        Need::Open
    } else if path.ends_with("/infer") {
        Need::Infer
    } else {
        Need::Read
    }
}

/// A 401 says how to authenticate.
fn refusal(e: &ServeError) -> Response {
    let mut response = error_response(e);
    if e.kind == ErrorKind::Unauthenticated {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

/// Middleware of the admin listener: authenticate, then audit every management call.
pub(crate) async fn admin_guard(
    State(g): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let need = admin_need(req.method(), req.uri().path());
    let action = format!("{} {}", req.method(), req.uri().path());
    let checked = g
        .security
        .admin(req.headers().get(header::AUTHORIZATION), need);
    let (actor, response) = match checked {
        Ok(principal) => {
            let actor = principal.0.clone();
            req.extensions_mut().insert(principal);
            (actor, next.run(req).await)
        }
        Err(e) => ("anonymous".to_string(), refusal(&e)),
    };
    if need == Need::Admin {
        g.security.audit.record(&AuditEntry {
            actor: &actor,
            protocol: "http",
            action: &action,
            peer: Some(peer),
            outcome: response.status().as_u16(),
        });
    }
    response
}

/// Middleware of the public HTTP listener (installed when tokens are required there).
pub(crate) async fn public_guard(
    State(g): State<Arc<Gateway>>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let need = public_need(req.uri().path());
    match g
        .security
        .public(req.headers().get(header::AUTHORIZATION), need)
    {
        Ok(principal) => {
            req.extensions_mut().insert(principal);
            next.run(req).await
        }
        Err(e) => refusal(&e),
    }
}

/// In front of the gRPC services: the same rules by method name, before a message is
/// decoded. Model load and unload are management actions and are audited.
#[derive(Clone)]
pub struct GrpcAuthLayer {
    pub gateway: Arc<Gateway>,
}

impl<S> tower::Layer<S> for GrpcAuthLayer {
    type Service = GrpcAuth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcAuth {
            inner,
            gateway: Arc::clone(&self.gateway),
        }
    }
}

/// See [`GrpcAuthLayer`].
#[derive(Clone)]
pub struct GrpcAuth<S> {
    inner: S,
    gateway: Arc<Gateway>,
}

fn grpc_need(path: &str) -> Need {
    let method = path.strip_prefix("/inference.GRPCInferenceService/");
    match method {
        None => Need::Open,
        Some("RepositoryModelLoad" | "RepositoryModelUnload") => Need::Admin,
        Some("ModelInfer" | "ModelStreamInfer") => Need::Infer,
        Some(_) => Need::Read,
    }
}

impl<S, B> tower::Service<http::Request<B>> for GrpcAuth<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::Either<
        S::Future,
        futures::future::BoxFuture<'static, Result<S::Response, S::Error>>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let need = grpc_need(req.uri().path());
        // Model control switched off on this port: the service answers PERMISSION_DENIED, token
        // or not, as the public HTTP port answers 403.
        let control_off =
            need == Need::Admin && !self.gateway.config.server.grpc_repository_control;
        let checked = if control_off {
            Ok(Principal::anonymous())
        } else {
            self.gateway
                .security
                .public(req.headers().get(header::AUTHORIZATION), need)
        };
        // The common case: nothing to audit, no allocation.
        if need != Need::Admin && checked.is_ok() {
            return futures::future::Either::Left(self.inner.call(req));
        }
        let path = req.uri().path().to_string();
        let peer = req
            .extensions()
            .get::<tonic::transport::server::TcpConnectInfo>()
            .and_then(|info| info.remote_addr())
            .or_else(|| {
                req.extensions()
                    .get::<tonic::transport::server::TlsConnectInfo<
                        tonic::transport::server::TcpConnectInfo,
                    >>()
                    .and_then(|info| info.get_ref().remote_addr())
            });
        let gateway = Arc::clone(&self.gateway);
        match checked {
            Ok(principal) => {
                let fut = self.inner.call(req);
                futures::future::Either::Right(Box::pin(async move {
                    let response = fut.await?;
                    if need == Need::Admin {
                        audit_grpc(&gateway, &principal.0, &path, peer, &response);
                    }
                    Ok(response)
                }))
            }
            Err(e) => {
                let response = e.to_status().into_http();
                if need == Need::Admin {
                    audit_grpc(&gateway, "anonymous", &path, peer, &response);
                }
                futures::future::Either::Right(Box::pin(futures::future::ready(Ok(response))))
            }
        }
    }
}

/// gRPC puts a failure's code in the response headers (trailers-only); no code there means the
/// call succeeded (its OK comes in the trailers).
fn audit_grpc<B>(
    gateway: &Gateway,
    actor: &str,
    path: &str,
    peer: Option<SocketAddr>,
    response: &http::Response<B>,
) {
    let code = response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    gateway.security.audit.record(&AuditEntry {
        actor,
        protocol: "grpc",
        action: path,
        peer,
        outcome: code,
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use infergate_config::TokenConfig;

    fn security(require_infer_token: bool, insecure_admin: bool) -> Security {
        let token = |name: &str, secret: &str, scopes: Vec<Scope>| TokenConfig {
            name: name.into(),
            sha256: hash_token(secret),
            scopes,
        };
        Security::new(&SecurityConfig {
            tokens: vec![
                token("ops", "s3cret-ops", vec![Scope::Admin]),
                token("reader", "s3cret-read", vec![Scope::Read]),
                token("app", "s3cret-app", vec![Scope::Infer]),
            ],
            require_infer_token,
            insecure_admin,
            ..SecurityConfig::default()
        })
        .unwrap()
    }

    fn bearer(token: &str) -> HeaderValue {
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap()
    }

    fn kind(auth: Auth) -> Result<String, ErrorKind> {
        auth.map(|p| p.0).map_err(|e| e.kind)
    }

    #[test]
    fn tokens_are_checked_against_their_digests_and_scopes() {
        let s = security(false, false);
        let admin = |t: Option<&HeaderValue>, need| kind(s.admin(t, need));
        assert_eq!(
            admin(None, Need::Admin),
            Err(ErrorKind::Unauthenticated),
            "no token"
        );
        assert_eq!(
            admin(Some(&bearer("guess")), Need::Admin),
            Err(ErrorKind::Unauthenticated)
        );
        assert_eq!(
            admin(
                Some(&HeaderValue::from_static("Basic b3BzOng=")),
                Need::Admin
            ),
            Err(ErrorKind::Unauthenticated)
        );
        assert_eq!(
            admin(Some(&bearer("s3cret-ops")), Need::Admin),
            Ok("ops".into())
        );
        assert_eq!(
            admin(Some(&bearer("s3cret-read")), Need::Admin),
            Err(ErrorKind::Forbidden)
        );
        assert_eq!(
            admin(Some(&bearer("s3cret-read")), Need::Read),
            Ok("reader".into())
        );
        assert_eq!(
            admin(Some(&bearer("s3cret-app")), Need::Admin),
            Err(ErrorKind::Forbidden)
        );
        assert_eq!(admin(None, Need::Open), Ok("anonymous".into()));
        // The token itself is never what is stored.
        assert_ne!(hash_token("s3cret-ops"), "s3cret-ops");
        assert_eq!(hash_token("s3cret-ops").len(), 64);
    }

    #[test]
    fn public_routes_are_open_unless_tokens_are_required() {
        let open = security(false, false);
        assert_eq!(kind(open.public(None, Need::Infer)), Ok("anonymous".into()));
        assert_eq!(
            kind(open.public(None, Need::Admin)),
            Err(ErrorKind::Unauthenticated),
            "management is never open on a public port"
        );
        let closed = security(true, false);
        assert_eq!(
            kind(closed.public(None, Need::Infer)),
            Err(ErrorKind::Unauthenticated)
        );
        assert_eq!(
            kind(closed.public(Some(&bearer("s3cret-read")), Need::Infer)),
            Err(ErrorKind::Forbidden)
        );
        assert_eq!(
            kind(closed.public(Some(&bearer("s3cret-app")), Need::Infer)),
            Ok("app".into())
        );
        assert_eq!(
            kind(closed.public(Some(&bearer("s3cret-app")), Need::Read)),
            Ok("app".into()),
            "an inference token may read metadata"
        );
        assert_eq!(
            kind(closed.public(None, Need::Open)),
            Ok("anonymous".into())
        );
    }

    #[test]
    fn insecure_admin_opens_only_the_admin_routes() {
        let s = security(true, true);
        assert_eq!(
            kind(s.admin(None, Need::Admin)),
            Ok("insecure-admin".into())
        );
        assert_eq!(
            kind(s.public(None, Need::Infer)),
            Err(ErrorKind::Unauthenticated)
        );
    }

    #[test]
    fn routes_need_what_they_do() {
        assert_eq!(admin_need(&Method::GET, "/metrics"), Need::Read);
        assert_eq!(admin_need(&Method::GET, "/v2/health/ready"), Need::Open);
        assert_eq!(
            admin_need(&Method::POST, "/v2/repository/index"),
            Need::Read
        );
        assert_eq!(
            admin_need(&Method::POST, "/v2/repository/models/m/load"),
            Need::Admin
        );
        assert_eq!(admin_need(&Method::PUT, "/admin/routes"), Need::Admin);
        assert_eq!(
            admin_need(&Method::DELETE, "/admin/models/m/pin"),
            Need::Admin
        );
        assert_eq!(public_need("/v2/models/m/versions/1/infer"), Need::Infer);
        assert_eq!(public_need("/v2/models/m"), Need::Read);
        assert_eq!(
            grpc_need("/inference.GRPCInferenceService/RepositoryModelLoad"),
            Need::Admin
        );
        assert_eq!(grpc_need("/grpc.health.v1.Health/Check"), Need::Open);
        assert_eq!(
            grpc_need("/inference.GRPCInferenceService/ModelMetadata"),
            Need::Read
        );
    }
}
