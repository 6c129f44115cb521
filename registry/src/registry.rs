//! The `Registry` handle: registration, aliases, promotion, verification and garbage collection.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::json;

use crate::sql::{Db, params};
use crate::store::read_file;
use crate::time::now_millis;
use crate::{
    Artifact, ArtifactKind, ArtifactStore, AuditEntry, Baseline, FsStore, GateRules, Lineage,
    ModelSummary, ObjectStoreArtifacts, ObjectStoreConfig, PLATFORM_CANDLE, PLATFORM_ONNX,
    RegistryError, Result, Signature, VersionRecord, db, inspect,
};

/// A file to store with a new version.
#[derive(Debug, Clone)]
pub struct NewArtifact {
    pub kind: ArtifactKind,
    pub bytes: Vec<u8>,
}

/// A version to register; the registry numbers it and stamps its creation time.
#[derive(Debug, Clone, Default)]
pub struct NewVersion {
    pub model: String,
    pub platform: String,
    pub artifacts: Vec<NewArtifact>,
    pub signature: Signature,
    pub metrics: BTreeMap<String, f64>,
    pub lineage: Lineage,
    pub baseline: Option<Baseline>,
    pub architecture: serde_json::Value,
    pub description: String,
    pub author: String,
}

/// The result of a promotion.
#[derive(Debug, Clone, PartialEq)]
pub struct Promotion {
    pub previous: Option<u32>,
    /// Gate reasons overridden by `--force` (empty when the gates passed).
    pub overridden: Vec<String>,
}

/// What `verify` found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VerifyReport {
    pub checked: usize,
    /// `(model:version kind, error)` for every artifact that failed.
    pub failures: Vec<(String, String)>,
}

/// What `gc` removed (or would remove).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GcReport {
    pub removed: Vec<String>,
    pub bytes: u64,
    /// Unreferenced blobs kept because they are younger than the grace period (possibly a
    /// registration in progress).
    pub kept_young: usize,
}

/// Where a registry keeps its metadata and its artifacts. By default both are in one directory
/// (`registry.db`, SQLite, and `artifacts/`); for many servers sharing one registry, the
/// metadata can be in PostgreSQL and the artifacts in S3-compatible object storage.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RegistryLocation {
    /// The directory of whatever is not elsewhere.
    pub dir: Option<PathBuf>,
    /// `postgres://user:password@host:port/database` (or a key=value connection string).
    pub database_url: Option<String>,
    /// Artifacts in object storage.
    pub store: Option<ObjectStoreConfig>,
}

impl std::fmt::Display for RegistryLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dir = self.dir.as_ref().map(|d| d.display().to_string());
        let metadata = match &self.database_url {
            Some(url) => infergate_config::redact_url(url),
            None => format!("{}/registry.db", dir.as_deref().unwrap_or("?")),
        };
        let artifacts = match &self.store {
            Some(store) => store.url.clone(),
            None => format!("{}/artifacts", dir.as_deref().unwrap_or("?")),
        };
        write!(f, "metadata {metadata}, artifacts {artifacts}")
    }
}

/// A model registry: metadata (SQLite or PostgreSQL) over an artifact store (a directory or
/// object storage).
#[derive(Debug)]
pub struct Registry {
    dir: Option<PathBuf>,
    store: Box<dyn ArtifactStore>,
    db: Db,
}

fn check_name(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(RegistryError::invalid(
            what,
            format!("'{name}' must be 1-128 characters of letters, digits, '_', '-' or '.'"),
        ))
    }
}

impl Registry {
    /// Opens the registry in `dir` with the filesystem artifact store, creating it if needed.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| RegistryError::io(&dir, e))?;
        let store = FsStore::new(dir.join("artifacts"))?;
        Self::with_store(&dir, Box::new(store))
    }

    /// Opens the metadata in `dir` over another artifact store.
    pub fn with_store(dir: &Path, store: Box<dyn ArtifactStore>) -> Result<Self> {
        let conn = db::open_sqlite(&dir.join("registry.db"))?;
        Ok(Self {
            dir: Some(dir.to_path_buf()),
            store,
            db: Db::Sqlite(Mutex::new(conn)),
        })
    }

    /// Opens the registry wherever `location` says, creating what is missing.
    pub fn connect(location: &RegistryLocation) -> Result<Self> {
        let need_dir = |what: &str| {
            location.dir.clone().ok_or_else(|| {
                RegistryError::invalid(
                    "registry location",
                    format!("{what} needs a registry directory (or a remote setting)"),
                )
            })
        };
        let store: Box<dyn ArtifactStore> = match &location.store {
            Some(config) => Box::new(ObjectStoreArtifacts::new(config)?),
            None => {
                let dir = need_dir("the artifact store")?;
                Box::new(FsStore::new(dir.join("artifacts"))?)
            }
        };
        let db = match &location.database_url {
            Some(url) => Db::Postgres(Box::new(Mutex::new(crate::pg::PgConn::open(url)?))),
            None => {
                let dir = need_dir("the metadata database")?;
                std::fs::create_dir_all(&dir).map_err(|e| RegistryError::io(&dir, e))?;
                Db::Sqlite(Mutex::new(db::open_sqlite(&dir.join("registry.db"))?))
            }
        };
        Ok(Self {
            dir: location.dir.clone(),
            store,
            db,
        })
    }

    /// Appends an entry to the audit log for something that happened outside the registry
    /// (e.g. a canary transition in a server), so one log tells a model's story.
    pub fn record_event(
        &self,
        actor: &str,
        action: &str,
        model: &str,
        detail: &serde_json::Value,
    ) -> Result<()> {
        self.db
            .write(|conn| db::audit(conn, now_millis(), actor, action, model, detail))
    }

    /// How long a write waits for another writer's lock before failing with "database is
    /// locked" (default 30 s).
    pub fn set_busy_timeout(&self, timeout: std::time::Duration) -> Result<()> {
        self.db.set_busy_timeout(timeout)
    }

    /// The registry's directory, when something is kept in one.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// Stores the artifacts and records the version, numbered one past the model's last.
    pub fn register(&self, new: NewVersion) -> Result<VersionRecord> {
        check_name("model name", &new.model)?;
        if new.artifacts.is_empty() {
            return Err(RegistryError::invalid("version", "it has no artifacts"));
        }
        if new.platform != PLATFORM_ONNX && new.platform != PLATFORM_CANDLE {
            return Err(RegistryError::invalid(
                "platform",
                format!(
                    "'{}' is not {PLATFORM_ONNX} or {PLATFORM_CANDLE}",
                    new.platform
                ),
            ));
        }
        let mut artifacts = Vec::with_capacity(new.artifacts.len());
        for a in &new.artifacts {
            if artifacts.iter().any(|b: &Artifact| b.kind == a.kind) {
                return Err(RegistryError::invalid(
                    "version",
                    format!("two {} artifacts", a.kind.as_str()),
                ));
            }
            // Blobs go in first: a crash before the commit below leaves only an unreferenced
            // blob, which `gc` removes.
            let digest = self.store.put(&a.bytes)?;
            artifacts.push(Artifact {
                kind: a.kind,
                digest,
                size: a.bytes.len() as u64,
            });
        }
        let mut record = VersionRecord {
            model: new.model,
            version: 0,
            platform: new.platform,
            artifacts,
            signature: new.signature,
            metrics: new.metrics,
            lineage: new.lineage,
            baseline: new.baseline,
            architecture: new.architecture,
            description: new.description,
            created_at: now_millis(),
            author: new.author,
        };
        if record.serving_artifact().is_none() {
            return Err(RegistryError::invalid(
                "version",
                format!(
                    "platform {} needs a {} artifact",
                    record.platform,
                    if record.platform == PLATFORM_CANDLE {
                        "safetensors"
                    } else {
                        "onnx"
                    }
                ),
            ));
        }
        if let Some(size) = record.serving_artifact().map(|a| a.size) {
            record
                .metrics
                .entry("size_bytes".to_owned())
                .or_insert(size as f64);
        }
        self.db.write(|tx| {
            let now = record.created_at;
            tx.execute(
                "INSERT INTO models (name, gate, created_at) VALUES (?1, NULL, ?2) ON CONFLICT DO NOTHING",
                params![&record.model, now],
            )?;
            if let Some(parent) = record.lineage.parent
                && db::version(tx, &record.model, parent)?.is_none()
            {
                return Err(RegistryError::invalid(
                    "lineage",
                    format!(
                        "parent version {parent} of '{}' does not exist",
                        record.model
                    ),
                ));
            }
            let last = tx
                .query_opt(
                    "SELECT MAX(version) FROM versions WHERE model = ?1",
                    params![&record.model],
                )?
                .map(|r| r.opt_int(0))
                .transpose()?
                .flatten();
            record.version = u32::try_from(last.unwrap_or(0) + 1)
                .map_err(|_| RegistryError::invalid("version", "too many versions"))?;
            tx.execute(
                "INSERT INTO versions (model, version, record, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![&record.model, record.version, serde_json::to_string(&record)?, now],
            )?;
            for a in &record.artifacts {
                tx.execute(
                    "INSERT INTO artifacts (model, version, kind, digest, size) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![&record.model, record.version, a.kind.as_str(), &a.digest, a.size],
                )?;
            }
            db::audit(
                tx,
                now,
                &record.author,
                "register",
                &record.model,
                &json!({"version": record.version, "platform": record.platform,
                        "artifacts": record.artifacts.iter().map(|a| format!("{}:sha256:{}", a.kind.as_str(), a.digest)).collect::<Vec<_>>()}),
            )?;
            Ok(())
        })?;
        Ok(record)
    }

    /// Registers an existing ONNX or safetensors file as the model's next version; the
    /// signature (and for safetensors, the architecture) is read from the file.
    pub fn import(&self, model: &str, file: &Path, author: &str) -> Result<VersionRecord> {
        let bytes = read_file(file)?;
        let kind = inspect::detect(&bytes)?;
        let (signature, architecture, platform) = match kind {
            ArtifactKind::Onnx => (
                inspect::onnx_signature(&bytes)?,
                serde_json::Value::Null,
                PLATFORM_ONNX,
            ),
            ArtifactKind::Safetensors => {
                let (s, a) = inspect::safetensors_signature(&bytes)?;
                (s, a, PLATFORM_CANDLE)
            }
            ArtifactKind::Tokenizer => {
                return Err(RegistryError::invalid(
                    "file",
                    "a tokenizer is registered with its model's folder, not alone",
                ));
            }
        };
        self.register(NewVersion {
            model: model.to_owned(),
            platform: platform.to_owned(),
            artifacts: vec![NewArtifact { kind, bytes }],
            signature,
            architecture,
            description: format!("imported from {}", file.display()),
            author: author.to_owned(),
            ..NewVersion::default()
        })
    }

    /// Every model with its versions and aliases, by name.
    pub fn models(&self) -> Result<Vec<ModelSummary>> {
        self.db.read(|conn| {
            let names = conn.query("SELECT name FROM models ORDER BY name", params![])?;
            let mut out = Vec::with_capacity(names.len());
            for name in names {
                let name = name.text(0)?;
                let versions = conn
                    .query(
                        "SELECT version FROM versions WHERE model = ?1 ORDER BY version",
                        params![&name],
                    )?
                    .iter()
                    .map(|r| r.u32(0))
                    .collect::<Result<_>>()?;
                let aliases = conn
                    .query(
                        "SELECT alias, version FROM aliases WHERE model = ?1 ORDER BY alias",
                        params![&name],
                    )?
                    .iter()
                    .map(|r| Ok((r.text(0)?, r.u32(1)?)))
                    .collect::<Result<_>>()?;
                out.push(ModelSummary {
                    name,
                    versions,
                    aliases,
                });
            }
            Ok(out)
        })
    }

    /// Every version of `model`, oldest first.
    pub fn versions(&self, model: &str) -> Result<Vec<VersionRecord>> {
        self.db.read(|conn| {
            if !db::model_exists(conn, model)? {
                return Err(RegistryError::UnknownModel(model.to_owned()));
            }
            conn.query(
                "SELECT record FROM versions WHERE model = ?1 ORDER BY version",
                params![model],
            )?
            .iter()
            .map(|r| Ok(serde_json::from_str(&r.text(0)?)?))
            .collect()
        })
    }

    /// The version named by a number (`3`) or an alias (`production`).
    pub fn resolve(&self, model: &str, spec: &str) -> Result<VersionRecord> {
        let unknown = || RegistryError::UnknownVersion {
            model: model.to_owned(),
            version: spec.to_owned(),
        };
        self.db.read(|conn| {
            if !db::model_exists(conn, model)? {
                return Err(RegistryError::UnknownModel(model.to_owned()));
            }
            let number = match spec.parse::<u32>() {
                Ok(n) => n,
                Err(_) => db::alias(conn, model, spec)?.ok_or_else(unknown)?,
            };
            db::version(conn, model, number)?.ok_or_else(unknown)
        })
    }

    /// The aliases of `model`.
    pub fn aliases(&self, model: &str) -> Result<BTreeMap<String, u32>> {
        self.db.read(|conn| {
            conn.query(
                "SELECT alias, version FROM aliases WHERE model = ?1",
                params![model],
            )?
            .iter()
            .map(|r| Ok((r.text(0)?, r.u32(1)?)))
            .collect()
        })
    }

    /// Points `alias` at `version` (atomically, audited) and returns where it pointed before.
    pub fn set_alias(
        &self,
        model: &str,
        alias: &str,
        version: u32,
        actor: &str,
    ) -> Result<Option<u32>> {
        self.move_alias(model, alias, version, actor, "alias", &[])
    }

    /// Removes `alias`, audited; returns where it pointed.
    pub fn remove_alias(&self, model: &str, alias: &str, actor: &str) -> Result<Option<u32>> {
        self.db.write(|tx| {
            let previous = db::alias(tx, model, alias)?;
            if previous.is_some() {
                tx.execute(
                    "DELETE FROM aliases WHERE model = ?1 AND alias = ?2",
                    params![model, alias],
                )?;
                db::audit(
                    tx,
                    now_millis(),
                    actor,
                    "alias.remove",
                    model,
                    &json!({"alias": alias, "from": previous}),
                )?;
            }
            Ok(previous)
        })
    }

    fn move_alias(
        &self,
        model: &str,
        alias: &str,
        version: u32,
        actor: &str,
        action: &str,
        overridden: &[String],
    ) -> Result<Option<u32>> {
        check_name("alias", alias)?;
        if alias.bytes().all(|b| b.is_ascii_digit()) {
            return Err(RegistryError::invalid(
                "alias",
                format!("'{alias}' would read as a version number"),
            ));
        }
        self.db.write(|tx| {
            if !db::model_exists(tx, model)? {
                return Err(RegistryError::UnknownModel(model.to_owned()));
            }
            if db::version(tx, model, version)?.is_none() {
                return Err(RegistryError::UnknownVersion {
                    model: model.to_owned(),
                    version: version.to_string(),
                });
            }
            let previous = db::alias(tx, model, alias)?;
            let now = now_millis();
            tx.execute(
                "INSERT INTO aliases (model, alias, version, updated_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (model, alias) DO UPDATE SET version = excluded.version, updated_at = excluded.updated_at",
                params![model, alias, version, now],
            )?;
            let mut detail = json!({"alias": alias, "from": previous, "to": version});
            if !overridden.is_empty() {
                detail["overridden"] = json!(overridden);
            }
            db::audit(tx, now, actor, action, model, &detail)?;
            Ok(previous)
        })
    }

    /// The promotion rules of `model` (the defaults when none were set).
    pub fn gate(&self, model: &str) -> Result<GateRules> {
        self.db.read(|conn| db::gate(conn, model))
    }

    /// Replaces the promotion rules of `model`, audited.
    pub fn set_gate(&self, model: &str, rules: &GateRules, actor: &str) -> Result<()> {
        let json = serde_json::to_value(rules)?;
        self.db.write(|tx| {
            if tx.execute(
                "UPDATE models SET gate = ?2 WHERE name = ?1",
                params![model, json.to_string()],
            )? == 0
            {
                return Err(RegistryError::UnknownModel(model.to_owned()));
            }
            db::audit(tx, now_millis(), actor, "gate", model, &json)
        })
    }

    /// Moves `alias` to `version` if the version passes the model's gates against the alias's
    /// current version. A refusal is audited and returned as [`RegistryError::GateRefused`];
    /// `force` moves it anyway and records the overridden reasons.
    pub fn promote(
        &self,
        model: &str,
        version: u32,
        alias: &str,
        force: bool,
        actor: &str,
    ) -> Result<Promotion> {
        let (verdict, rules) = self.db.read(|conn| {
            let rules = db::gate(conn, model)?;
            let candidate = db::version(conn, model, version)?.ok_or_else(|| {
                RegistryError::UnknownVersion {
                    model: model.to_owned(),
                    version: version.to_string(),
                }
            })?;
            let current = match db::alias(conn, model, alias)? {
                Some(v) => db::version(conn, model, v)?,
                None => None,
            };
            Ok((rules.check(&candidate, current.as_ref()), rules))
        })?;
        if !verdict.passed() && !force {
            let detail = json!({"alias": alias, "version": version, "reasons": verdict.reasons, "rules": rules});
            self.db.write(|tx| {
                db::audit(tx, now_millis(), actor, "promote.refused", model, &detail)
            })?;
            return Err(RegistryError::GateRefused {
                model: model.to_owned(),
                version,
                alias: alias.to_owned(),
                reasons: verdict.reasons,
            });
        }
        let action = if verdict.passed() {
            "promote"
        } else {
            "promote.forced"
        };
        let previous = self.move_alias(model, alias, version, actor, action, &verdict.reasons)?;
        Ok(Promotion {
            previous,
            overridden: verdict.reasons,
        })
    }

    /// The audit log, oldest first, for one model or all.
    pub fn audit(&self, model: Option<&str>) -> Result<Vec<AuditEntry>> {
        self.db.read(|conn| db::audit_entries(conn, model))
    }

    /// Reads an artifact, refusing it unless its size and sha256 match the record.
    pub fn read_artifact(&self, artifact: &Artifact) -> Result<Vec<u8>> {
        self.store.get(&artifact.digest, artifact.size)
    }

    /// Re-hashes every recorded artifact.
    pub fn verify(&self) -> Result<VerifyReport> {
        let rows: Vec<(String, u32, String, String, i64)> = self.db.read(|conn| {
            conn.query(
                "SELECT model, version, kind, digest, size FROM artifacts ORDER BY model, version, kind",
                params![],
            )?
            .iter()
            .map(|r| Ok((r.text(0)?, r.u32(1)?, r.text(2)?, r.text(3)?, r.int(4)?)))
            .collect()
        })?;
        let mut report = VerifyReport::default();
        for (model, version, kind, digest, size) in rows {
            report.checked += 1;
            if let Err(e) = self.store.get(&digest, size as u64) {
                report
                    .failures
                    .push((format!("{model}:{version} {kind}"), e.to_string()));
            }
        }
        Ok(report)
    }

    /// Deletes stored blobs no version references, except those younger than `grace_secs`
    /// (a registration in another process may not have committed yet).
    pub fn gc(&self, grace_secs: u64, dry_run: bool) -> Result<GcReport> {
        let referenced: BTreeSet<String> = self.db.read(|conn| {
            conn.query("SELECT DISTINCT digest FROM artifacts", params![])?
                .iter()
                .map(|r| r.text(0))
                .collect()
        })?;
        let mut report = GcReport::default();
        for (digest, age) in self.store.list()? {
            if referenced.contains(&digest) {
                continue;
            }
            if age < grace_secs {
                report.kept_young += 1;
                continue;
            }
            let size = self
                .store
                .get_unverified(&digest)
                .map_or(0, |b| b.len() as u64);
            if !dry_run {
                self.store.delete(&digest)?;
            }
            report.bytes += size;
            report.removed.push(digest);
        }
        if !dry_run && !report.removed.is_empty() {
            let detail = json!({"removed": report.removed, "bytes": report.bytes});
            self.db
                .write(|tx| db::audit(tx, now_millis(), "gc", "gc", "", &detail))?;
        }
        Ok(report)
    }
}
