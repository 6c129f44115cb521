//! The metadata queries, the same on both engines, and the SQLite file's connection settings
//! (PostgreSQL's are in `pg.rs`; the schema, in `sql.rs`, is both engines').

use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use crate::sql::{Conn, SCHEMA_VERSION, params, schema};
use crate::{AuditEntry, GateRules, RegistryError, Result, VersionRecord};

/// Opens (creating if needed) the database: WAL so readers never block the writer, a busy
/// timeout so concurrent writers (other processes included) wait instead of failing, and
/// full fsync on commit.
pub(crate) fn open_sqlite(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(30))?;
    // Switching a new database to WAL answers SQLITE_BUSY at once (the busy timeout does not
    // apply) while another process is doing the same: retry.
    retry_busy(|| conn.pragma_update(None, "journal_mode", "WAL"))?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(RegistryError::invalid(
            "registry database",
            format!(
                "schema version {version} is newer than this build understands ({SCHEMA_VERSION})"
            ),
        ));
    }
    if version < SCHEMA_VERSION {
        retry_busy(|| {
            conn.execute_batch(&format!(
                "BEGIN IMMEDIATE; {} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;",
                schema("INTEGER PRIMARY KEY AUTOINCREMENT")
            ))
        })?;
    }
    Ok(conn)
}

/// Runs `f` again while SQLite reports the database busy, for up to 30 seconds.
fn retry_busy<T>(mut f: impl FnMut() -> rusqlite::Result<T>) -> rusqlite::Result<T> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match f() {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            result => return result,
        }
    }
}

pub(crate) fn model_exists(conn: &mut dyn Conn, model: &str) -> Result<bool> {
    Ok(conn
        .query_opt("SELECT 1 FROM models WHERE name = ?1", params![model])?
        .is_some())
}

pub(crate) fn version(
    conn: &mut dyn Conn,
    model: &str,
    version: u32,
) -> Result<Option<VersionRecord>> {
    conn.query_opt(
        "SELECT record FROM versions WHERE model = ?1 AND version = ?2",
        params![model, version],
    )?
    .map(|row| Ok(serde_json::from_str(&row.text(0)?)?))
    .transpose()
}

pub(crate) fn alias(conn: &mut dyn Conn, model: &str, alias: &str) -> Result<Option<u32>> {
    conn.query_opt(
        "SELECT version FROM aliases WHERE model = ?1 AND alias = ?2",
        params![model, alias],
    )?
    .map(|row| row.u32(0))
    .transpose()
}

pub(crate) fn gate(conn: &mut dyn Conn, model: &str) -> Result<GateRules> {
    let row = conn
        .query_opt("SELECT gate FROM models WHERE name = ?1", params![model])?
        .ok_or_else(|| RegistryError::UnknownModel(model.to_owned()))?;
    match row.opt_text(0)? {
        None => Ok(GateRules::default()),
        Some(j) => Ok(serde_json::from_str(&j)?),
    }
}

pub(crate) fn audit(
    conn: &mut dyn Conn,
    at: i64,
    actor: &str,
    action: &str,
    model: &str,
    detail: &serde_json::Value,
) -> Result<()> {
    conn.execute(
        "INSERT INTO audit (at, actor, action, model, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![at, actor, action, model, detail.to_string()],
    )?;
    Ok(())
}

pub(crate) fn audit_entries(conn: &mut dyn Conn, model: Option<&str>) -> Result<Vec<AuditEntry>> {
    let rows = match model {
        Some(model) => conn.query(
            "SELECT id, at, actor, action, model, detail FROM audit WHERE model = ?1 ORDER BY id",
            params![model],
        )?,
        None => conn.query(
            "SELECT id, at, actor, action, model, detail FROM audit ORDER BY id",
            params![],
        )?,
    };
    rows.iter()
        .map(|r| {
            Ok(AuditEntry {
                id: r.int(0)?,
                at: r.int(1)?,
                actor: r.text(2)?,
                action: r.text(3)?,
                model: r.text(4)?,
                detail: serde_json::from_str(&r.text(5)?)?,
            })
        })
        .collect()
}
