//! The metadata database behind one small interface: SQLite (a file beside the artifacts, the
//! default) or PostgreSQL (shared by many servers). Statements are written once, with `?N`
//! placeholders and SQL both engines accept; PostgreSQL gets them as `$N`.
//!
//! Every write runs in a transaction serialized against all other writers, in any process:
//! SQLite's `BEGIN IMMEDIATE`, PostgreSQL's transaction-scoped advisory lock. Version numbers
//! and alias moves therefore never race.

use std::sync::Mutex;

use rusqlite::TransactionBehavior;

use crate::{RegistryError, Result};

/// The version of [`schema`], which a newer build may raise; an older build refuses a newer
/// database.
pub(crate) const SCHEMA_VERSION: i64 = 1;

/// The metadata tables, written once for both engines. Integers are `BIGINT`, to which SQLite
/// gives integer affinity as to `INTEGER`; `audit_id` is each engine's auto-numbered key, since
/// only `INTEGER PRIMARY KEY` is SQLite's row id.
pub(crate) fn schema(audit_id: &str) -> String {
    format!(
        "
CREATE TABLE IF NOT EXISTS models (
    name        TEXT PRIMARY KEY,
    gate        TEXT,
    created_at  BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS versions (
    model       TEXT NOT NULL REFERENCES models(name),
    version     BIGINT NOT NULL,
    record      TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (model, version)
);
CREATE TABLE IF NOT EXISTS artifacts (
    model       TEXT NOT NULL,
    version     BIGINT NOT NULL,
    kind        TEXT NOT NULL,
    digest      TEXT NOT NULL,
    size        BIGINT NOT NULL,
    PRIMARY KEY (model, version, kind),
    FOREIGN KEY (model, version) REFERENCES versions(model, version)
);
CREATE INDEX IF NOT EXISTS artifacts_digest ON artifacts(digest);
CREATE TABLE IF NOT EXISTS aliases (
    model       TEXT NOT NULL,
    alias       TEXT NOT NULL,
    version     BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (model, alias),
    FOREIGN KEY (model, version) REFERENCES versions(model, version)
);
CREATE TABLE IF NOT EXISTS audit (
    id          {audit_id},
    at          BIGINT NOT NULL,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    model       TEXT NOT NULL,
    detail      TEXT NOT NULL
);
"
    )
}

/// A parameter or a column value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Null,
    Int(i64),
    Text(String),
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Self::Text(s.to_owned())
    }
}

impl From<&String> for Value {
    fn from(s: &String) -> Self {
        Self::Text(s.clone())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Self::Text(s)
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Self::Int(i)
    }
}

impl From<u32> for Value {
    fn from(i: u32) -> Self {
        Self::Int(i64::from(i))
    }
}

impl From<u64> for Value {
    fn from(i: u64) -> Self {
        Self::Int(i64::try_from(i).unwrap_or(i64::MAX))
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Self::Null, Into::into)
    }
}

/// `[a.into(), b.into(), …]`
macro_rules! params {
    ($($v:expr),* $(,)?) => { &[$($crate::sql::Value::from($v)),*][..] };
}
pub(crate) use params;

/// One result row.
#[derive(Debug)]
pub(crate) struct Row(Vec<Value>);

impl Row {
    pub(crate) fn new(values: Vec<Value>) -> Self {
        Self(values)
    }

    fn at(&self, i: usize) -> Result<&Value> {
        self.0
            .get(i)
            .ok_or_else(|| RegistryError::invalid("query", format!("no column {i}")))
    }

    pub(crate) fn int(&self, i: usize) -> Result<i64> {
        match self.at(i)? {
            Value::Int(v) => Ok(*v),
            other => Err(RegistryError::invalid(
                "query",
                format!("column {i} is {other:?}, not an integer"),
            )),
        }
    }

    pub(crate) fn opt_int(&self, i: usize) -> Result<Option<i64>> {
        match self.at(i)? {
            Value::Null => Ok(None),
            _ => self.int(i).map(Some),
        }
    }

    pub(crate) fn u32(&self, i: usize) -> Result<u32> {
        let v = self.int(i)?;
        u32::try_from(v)
            .map_err(|_| RegistryError::invalid("query", format!("{v} is not a version number")))
    }

    pub(crate) fn text(&self, i: usize) -> Result<String> {
        match self.at(i)? {
            Value::Text(v) => Ok(v.clone()),
            other => Err(RegistryError::invalid(
                "query",
                format!("column {i} is {other:?}, not text"),
            )),
        }
    }

    pub(crate) fn opt_text(&self, i: usize) -> Result<Option<String>> {
        match self.at(i)? {
            Value::Null => Ok(None),
            _ => self.text(i).map(Some),
        }
    }
}

/// What a statement runs on: a connection, or a transaction of one.
pub(crate) trait Conn {
    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>>;
    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64>;

    /// The first row, if any.
    fn query_opt(&mut self, sql: &str, params: &[Value]) -> Result<Option<Row>> {
        Ok(self.query(sql, params)?.into_iter().next())
    }
}

/// The metadata database.
pub(crate) enum Db {
    Sqlite(Mutex<rusqlite::Connection>),
    Postgres(Box<Mutex<crate::pg::PgConn>>),
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Sqlite(_) => "Db::Sqlite",
            Self::Postgres(_) => "Db::Postgres",
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Db {
    /// Runs `f` outside any transaction (each statement sees committed data).
    pub(crate) fn read<T: Send>(
        &self,
        f: impl FnOnce(&mut dyn Conn) -> Result<T> + Send,
    ) -> Result<T> {
        match self {
            Self::Sqlite(conn) => f(&mut SqliteConn(&lock(conn))),
            Self::Postgres(conn) => lock(conn).run(|client| f(&mut PgStatements(client))),
        }
    }

    /// Runs `f` in one write transaction, committed when it returns `Ok`, rolled back
    /// otherwise; writers are serialized.
    pub(crate) fn write<T: Send>(
        &self,
        f: impl FnOnce(&mut dyn Conn) -> Result<T> + Send,
    ) -> Result<T> {
        match self {
            Self::Sqlite(conn) => {
                let mut conn = lock(conn);
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let out = f(&mut SqliteConn(&tx))?;
                tx.commit()?;
                Ok(out)
            }
            Self::Postgres(conn) => lock(conn).run(|client| {
                let mut tx = client.transaction()?;
                // One lock for the whole registry, held until commit or rollback.
                tx.execute(
                    "SELECT pg_advisory_xact_lock($1)",
                    &[&crate::pg::WRITE_LOCK],
                )?;
                let out = f(&mut PgStatements(&mut tx))?;
                tx.commit()?;
                Ok(out)
            }),
        }
    }

    /// How long a SQLite write waits for another writer (PostgreSQL writers wait on the lock).
    pub(crate) fn set_busy_timeout(&self, timeout: std::time::Duration) -> Result<()> {
        if let Self::Sqlite(conn) = self {
            lock(conn).busy_timeout(timeout)?;
        }
        Ok(())
    }
}

struct SqliteConn<'a>(&'a rusqlite::Connection);

fn to_sqlite(v: &Value) -> rusqlite::types::Value {
    match v {
        Value::Null => rusqlite::types::Value::Null,
        Value::Int(i) => rusqlite::types::Value::Integer(*i),
        Value::Text(s) => rusqlite::types::Value::Text(s.clone()),
    }
}

impl Conn for SqliteConn<'_> {
    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        let mut stmt = self.0.prepare_cached(sql)?;
        let columns = stmt.column_count();
        let params: Vec<_> = params.iter().map(to_sqlite).collect();
        let rows = stmt.query_map(rusqlite::params_from_iter(params), |r| {
            (0..columns)
                .map(|i| {
                    Ok(match r.get::<_, rusqlite::types::Value>(i)? {
                        rusqlite::types::Value::Integer(v) => Value::Int(v),
                        rusqlite::types::Value::Text(s) => Value::Text(s),
                        _ => Value::Null,
                    })
                })
                .collect::<rusqlite::Result<Vec<_>>>()
                .map(Row)
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64> {
        let params: Vec<_> = params.iter().map(to_sqlite).collect();
        Ok(self
            .0
            .prepare_cached(sql)?
            .execute(rusqlite::params_from_iter(params))? as u64)
    }
}

/// Statements on a PostgreSQL client or transaction.
struct PgStatements<'a, C: postgres::GenericClient>(&'a mut C);

impl<C: postgres::GenericClient> Conn for PgStatements<'_, C> {
    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        let sql = crate::pg::placeholders(sql);
        let owned = crate::pg::params(params);
        let refs: Vec<&(dyn postgres::types::ToSql + Sync)> =
            owned.iter().map(|p| p.as_ref() as _).collect();
        let rows = self.0.query(sql.as_str(), &refs)?;
        rows.iter().map(crate::pg::row).collect()
    }

    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64> {
        let sql = crate::pg::placeholders(sql);
        let owned = crate::pg::params(params);
        let refs: Vec<&(dyn postgres::types::ToSql + Sync)> =
            owned.iter().map(|p| p.as_ref() as _).collect();
        Ok(self.0.execute(sql.as_str(), &refs)?)
    }
}
