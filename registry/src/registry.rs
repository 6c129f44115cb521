//! The `Registry` handle: registration, aliases, promotion, verification and garbage collection.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, TransactionBehavior, params};
use serde_json::json;

use crate::store::read_file;
use crate::time::now_millis;
use crate::{
    Artifact, ArtifactKind, ArtifactStore, AuditEntry, Baseline, FsStore, GateRules, Lineage,
    ModelSummary, PLATFORM_CANDLE, PLATFORM_ONNX, RegistryError, Result, Signature, VersionRecord,
    db, inspect,
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

/// A registry rooted at a directory: `registry.db` (SQLite) and `artifacts/` (the store).
#[derive(Debug)]
pub struct Registry {
    dir: PathBuf,
    store: Box<dyn ArtifactStore>,
    conn: Mutex<Connection>,
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
        let conn = db::open(&dir.join("registry.db"))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            store,
            conn: Mutex::new(conn),
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
        let conn = self.conn();
        db::audit(&conn, now_millis(), actor, action, model, detail)
    }

    /// How long a write waits for another writer's lock before failing with "database is
    /// locked" (default 30 s).
    pub fn set_busy_timeout(&self, timeout: std::time::Duration) -> Result<()> {
        self.conn().busy_timeout(timeout)?;
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
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
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let now = record.created_at;
        tx.execute(
            "INSERT OR IGNORE INTO models (name, gate, created_at) VALUES (?1, NULL, ?2)",
            params![record.model, now],
        )?;
        if let Some(parent) = record.lineage.parent
            && db::version(&tx, &record.model, parent)?.is_none()
        {
            return Err(RegistryError::invalid(
                "lineage",
                format!(
                    "parent version {parent} of '{}' does not exist",
                    record.model
                ),
            ));
        }
        let last: Option<u32> = tx.query_row(
            "SELECT MAX(version) FROM versions WHERE model = ?1",
            [&record.model],
            |r| r.get(0),
        )?;
        record.version = last.unwrap_or(0) + 1;
        tx.execute(
            "INSERT INTO versions (model, version, record, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![
                record.model,
                record.version,
                serde_json::to_string(&record)?,
                now
            ],
        )?;
        for a in &record.artifacts {
            tx.execute(
                "INSERT INTO artifacts (model, version, kind, digest, size) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![record.model, record.version, a.kind.as_str(), a.digest, a.size as i64],
            )?;
        }
        db::audit(
            &tx,
            now,
            &record.author,
            "register",
            &record.model,
            &json!({"version": record.version, "platform": record.platform,
                    "artifacts": record.artifacts.iter().map(|a| format!("{}:sha256:{}", a.kind.as_str(), a.digest)).collect::<Vec<_>>()}),
        )?;
        tx.commit()?;
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
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT name FROM models ORDER BY name")?;
        let names: Vec<String> = stmt
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let mut vs =
                conn.prepare("SELECT version FROM versions WHERE model = ?1 ORDER BY version")?;
            let versions = vs
                .query_map([&name], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            let mut al =
                conn.prepare("SELECT alias, version FROM aliases WHERE model = ?1 ORDER BY alias")?;
            let aliases = al
                .query_map([&name], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            out.push(ModelSummary {
                name,
                versions,
                aliases,
            });
        }
        Ok(out)
    }

    /// Every version of `model`, oldest first.
    pub fn versions(&self, model: &str) -> Result<Vec<VersionRecord>> {
        let conn = self.conn();
        if !db::model_exists(&conn, model)? {
            return Err(RegistryError::UnknownModel(model.to_owned()));
        }
        let mut stmt =
            conn.prepare("SELECT record FROM versions WHERE model = ?1 ORDER BY version")?;
        let rows = stmt.query_map([model], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for row in rows {
            out.push(serde_json::from_str(&row?)?);
        }
        Ok(out)
    }

    /// The version named by a number (`3`) or an alias (`production`).
    pub fn resolve(&self, model: &str, spec: &str) -> Result<VersionRecord> {
        let conn = self.conn();
        let unknown = || RegistryError::UnknownVersion {
            model: model.to_owned(),
            version: spec.to_owned(),
        };
        if !db::model_exists(&conn, model)? {
            return Err(RegistryError::UnknownModel(model.to_owned()));
        }
        let number = match spec.parse::<u32>() {
            Ok(n) => n,
            Err(_) => db::alias(&conn, model, spec)?.ok_or_else(unknown)?,
        };
        db::version(&conn, model, number)?.ok_or_else(unknown)
    }

    /// The aliases of `model`.
    pub fn aliases(&self, model: &str) -> Result<BTreeMap<String, u32>> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT alias, version FROM aliases WHERE model = ?1")?;
        let rows = stmt.query_map([model], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
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
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let previous = db::alias(&tx, model, alias)?;
        if previous.is_some() {
            tx.execute(
                "DELETE FROM aliases WHERE model = ?1 AND alias = ?2",
                params![model, alias],
            )?;
            db::audit(
                &tx,
                now_millis(),
                actor,
                "alias.remove",
                model,
                &json!({"alias": alias, "from": previous}),
            )?;
        }
        tx.commit()?;
        Ok(previous)
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
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if !db::model_exists(&tx, model)? {
            return Err(RegistryError::UnknownModel(model.to_owned()));
        }
        if db::version(&tx, model, version)?.is_none() {
            return Err(RegistryError::UnknownVersion {
                model: model.to_owned(),
                version: version.to_string(),
            });
        }
        let previous = db::alias(&tx, model, alias)?;
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
        db::audit(&tx, now, actor, action, model, &detail)?;
        tx.commit()?;
        Ok(previous)
    }

    /// The promotion rules of `model` (the defaults when none were set).
    pub fn gate(&self, model: &str) -> Result<GateRules> {
        db::gate(&self.conn(), model)
    }

    /// Replaces the promotion rules of `model`, audited.
    pub fn set_gate(&self, model: &str, rules: &GateRules, actor: &str) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let json = serde_json::to_value(rules)?;
        if tx.execute(
            "UPDATE models SET gate = ?2 WHERE name = ?1",
            params![model, json.to_string()],
        )? == 0
        {
            return Err(RegistryError::UnknownModel(model.to_owned()));
        }
        db::audit(&tx, now_millis(), actor, "gate", model, &json)?;
        tx.commit()?;
        Ok(())
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
        let (verdict, rules) = {
            let conn = self.conn();
            let rules = db::gate(&conn, model)?;
            let candidate = db::version(&conn, model, version)?.ok_or_else(|| {
                RegistryError::UnknownVersion {
                    model: model.to_owned(),
                    version: version.to_string(),
                }
            })?;
            let current = match db::alias(&conn, model, alias)? {
                Some(v) => db::version(&conn, model, v)?,
                None => None,
            };
            (rules.check(&candidate, current.as_ref()), rules)
        };
        if !verdict.passed() && !force {
            db::audit(
                &self.conn(),
                now_millis(),
                actor,
                "promote.refused",
                model,
                &json!({"alias": alias, "version": version, "reasons": verdict.reasons, "rules": rules}),
            )?;
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
        db::audit_entries(&self.conn(), model)
    }

    /// Reads an artifact, refusing it unless its size and sha256 match the record.
    pub fn read_artifact(&self, artifact: &Artifact) -> Result<Vec<u8>> {
        self.store.get(&artifact.digest, artifact.size)
    }

    /// Re-hashes every recorded artifact.
    pub fn verify(&self) -> Result<VerifyReport> {
        let rows: Vec<(String, u32, String, String, i64)> = {
            let conn = self.conn();
            let mut stmt = conn.prepare("SELECT model, version, kind, digest, size FROM artifacts ORDER BY model, version, kind")?;
            stmt.query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })?
            .collect::<Result<_, _>>()?
        };
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
        let referenced: BTreeSet<String> = {
            let conn = self.conn();
            let mut stmt = conn.prepare("SELECT DISTINCT digest FROM artifacts")?;
            stmt.query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?
        };
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
            db::audit(
                &self.conn(),
                now_millis(),
                "gc",
                "gc",
                "",
                &json!({"removed": report.removed, "bytes": report.bytes}),
            )?;
        }
        Ok(report)
    }
}
