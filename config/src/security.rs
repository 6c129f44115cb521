//! `[security]`: bearer tokens and their scopes, TLS for every listener, the audit log.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Authentication, TLS and the audit log. The defaults are safe: the admin listener refuses
/// every management call until a token is configured (or `insecure_admin` is set).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema, Default, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SecurityConfig {
    /// Bearer tokens (`Authorization: Bearer <token>`, gRPC metadata `authorization`). Only
    /// their SHA-256 digests are stored: `infergate config hash-token` prints one.
    pub tokens: Vec<TokenConfig>,
    /// The public listeners want a token too: scope `infer` for inference, `read` (or
    /// `infer`) for metadata, statistics and the repository index. Health stays open.
    pub require_infer_token: bool,
    /// Open the admin listener's management API without tokens. For local development only;
    /// the server logs a warning at start and on every management call.
    pub insecure_admin: bool,
    /// Append one JSON line per management action (who, what, when, outcome) to this file.
    /// Every action is also logged (target `infergate::audit`) and listed at `GET /admin/audit`.
    pub audit_log: Option<PathBuf>,
    /// TLS (rustls) on the HTTP, gRPC and admin listeners.
    pub tls: Option<TlsConfig>,
}

/// One bearer token.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Who holds it; the audit log names this.
    pub name: String,
    /// Hex SHA-256 digest of the token (64 characters).
    pub sha256: String,
    /// What it may do: `read` (metadata, statistics, metrics, reports), `infer`, `admin`
    /// (load, unload, pin, routes, feedback).
    pub scopes: Vec<Scope>,
}

/// A permission a token carries.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, schemars::JsonSchema, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Read,
    Infer,
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Infer => "infer",
            Self::Admin => "admin",
        }
    }
}

/// Certificates for every listener (PEM files).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Server certificate chain.
    pub cert: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// Client certificates signed by these CAs are required (mutual TLS); none: no client
    /// certificates asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
}

impl SecurityConfig {
    pub(crate) fn validate(&self, errors: &mut Vec<String>) {
        let mut names = std::collections::HashSet::new();
        for (i, token) in self.tokens.iter().enumerate() {
            let at = format!("security.tokens[{i}] ({})", token.name);
            if token.name.is_empty() {
                errors.push(format!("{at}: name must not be empty"));
            }
            if !names.insert(&token.name) {
                errors.push(format!("{at}: another token has this name"));
            }
            if token.sha256.len() != 64 || !token.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                errors.push(format!(
                    "{at}: sha256 must be 64 hex digits (the digest of the token, not the token)"
                ));
            }
            if token.scopes.is_empty() {
                errors.push(format!("{at}: needs at least one scope"));
            }
        }
        if self.require_infer_token && self.tokens.is_empty() {
            errors.push(
                "security.require_infer_token needs at least one token in security.tokens"
                    .to_string(),
            );
        }
        if let Some(tls) = &self.tls {
            let files = [("cert", Some(&tls.cert)), ("key", Some(&tls.key))];
            let ca = [("client_ca", tls.client_ca.as_ref())];
            for (key, path) in files.iter().chain(&ca) {
                if let Some(path) = path
                    && !path.is_file()
                {
                    errors.push(format!(
                        "security.tls.{key}: {} is not a readable file",
                        path.display()
                    ));
                }
            }
        }
    }

    /// The same settings with token digests replaced, for logs.
    pub fn redacted(&self) -> Self {
        let mut copy = self.clone();
        for token in &mut copy.tokens {
            token.sha256 = "<redacted>".into();
        }
        copy
    }
}
