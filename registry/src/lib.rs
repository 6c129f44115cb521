//! The model registry: content-addressed artifacts, versions with signature, metrics, lineage
//! and drift baselines, aliases that the server follows, promotion gates and an audit log.

mod baseline;
mod db;
mod gate;
pub mod inspect;
mod object;
pub mod onnx;
mod pg;
mod pg_tls;
mod registry;
mod sql;
mod store;
mod sync;
#[doc(hidden)]
pub mod testing;
mod time;
mod types;

pub use baseline::{Baseline, FeatureBaseline};
pub use gate::{GateRules, GateVerdict};
pub use object::{ObjectStoreArtifacts, ObjectStoreConfig};
pub use registry::{
    GcReport, NewArtifact, NewVersion, Promotion, Registry, RegistryLocation, VerifyReport,
};
pub use store::{ArtifactStore, FsStore, sha256_file, sha256_hex};
pub use time::{format_millis, now_millis};
pub use types::{
    Artifact, ArtifactKind, AuditEntry, Lineage, ModelSummary, Signature, TensorSig, VersionRecord,
};

/// The key of a version's architecture that holds the model's `config.toml` (its text): the
/// serving settings (batching, cache, processing) the version was registered with.
pub const MODEL_CONFIG_KEY: &str = "model_config";

/// The KServe platform of versions served by ONNX Runtime.
pub const PLATFORM_ONNX: &str = "onnxruntime_onnx";
/// The KServe platform of versions served by the candle backend from safetensors.
pub const PLATFORM_CANDLE: &str = "candle_safetensors";

/// Errors of the registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("registry i/o on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("registry database: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("registry database: {}", pg_message(.0))]
    Postgres(#[from] postgres::Error),
    #[error("cannot connect to registry database {url}: {}", pg_message(.source))]
    PostgresConnect {
        url: String,
        #[source]
        source: postgres::Error,
    },
    #[error("registry artifact store {0}")]
    ObjectStore(String),
    #[error("corrupt registry record: {0}")]
    Json(#[from] serde_json::Error),
    #[error("model '{0}' is not in the registry")]
    UnknownModel(String),
    #[error("model '{model}' has no version or alias '{version}'")]
    UnknownVersion { model: String, version: String },
    #[error("artifact {digest} failed verification: {reason}")]
    Corrupt { digest: String, reason: String },
    #[error("artifact {0} is missing from the store")]
    MissingArtifact(String),
    #[error("invalid {what}: {reason}")]
    Invalid { what: String, reason: String },
    #[error("promotion of {model} version {version} to '{alias}' refused: {}", reasons.join("; "))]
    GateRefused {
        model: String,
        version: u32,
        alias: String,
        reasons: Vec<String>,
    },
}

/// A PostgreSQL error with the server's own message, which `Display` leaves out.
fn pg_message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => match std::error::Error::source(e) {
            Some(source) => format!("{e}: {source}"),
            None => e.to_string(),
        },
    }
}

impl RegistryError {
    pub(crate) fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }

    pub(crate) fn invalid(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            what: what.into(),
            reason: reason.into(),
        }
    }
}

pub type Result<T, E = RegistryError> = std::result::Result<T, E>;
