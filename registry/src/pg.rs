//! PostgreSQL metadata: the connection, where the schema version is kept, and value conversion
//! for [`crate::sql`].

use postgres::types::{ToSql, Type};

use crate::sql::{Row, SCHEMA_VERSION, Value, schema};
use crate::{RegistryError, Result};

/// The advisory lock every write transaction holds ("infergate" in ASCII, as a number).
pub(crate) const WRITE_LOCK: i64 = 0x696e_6665_7267_6174;

/// The schema version, where SQLite keeps it in `user_version`.
const META: &str = "
CREATE TABLE IF NOT EXISTS registry_meta (
    key         TEXT PRIMARY KEY,
    value       BIGINT NOT NULL
);
";

/// A connection that reconnects when the server dropped it.
pub(crate) struct PgConn {
    /// The connection string as logs may show it (`redact_url`).
    redacted_url: String,
    target: crate::pg_tls::Target,
    client: Option<postgres::Client>,
}

impl PgConn {
    /// Connects and creates (or checks) the schema.
    pub(crate) fn open(url: &str) -> Result<Self> {
        let redacted_url = infergate_config::redact_url(url);
        let target = crate::pg_tls::Target::parse(url).map_err(|e| {
            RegistryError::invalid("registry database", format!("{e} (in {redacted_url})"))
        })?;
        let mut conn = Self {
            redacted_url,
            target,
            client: None,
        };
        conn.run(|client| {
            let mut tx = client.transaction()?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])?;
            tx.batch_execute(META)?;
            tx.batch_execute(&schema("BIGSERIAL PRIMARY KEY"))?;
            let found: Option<i64> = tx
                .query_opt(
                    "SELECT value FROM registry_meta WHERE key = 'schema_version'",
                    &[],
                )?
                .map(|r| r.get(0));
            match found {
                Some(v) if v > SCHEMA_VERSION => {
                    return Err(RegistryError::invalid(
                        "registry database",
                        format!(
                            "schema version {v} is newer than this build understands ({SCHEMA_VERSION})"
                        ),
                    ));
                }
                Some(_) => {}
                None => {
                    tx.execute(
                        "INSERT INTO registry_meta (key, value) VALUES ('schema_version', $1)",
                        &[&SCHEMA_VERSION],
                    )?;
                }
            }
            tx.commit()?;
            Ok(())
        })?;
        Ok(conn)
    }

    /// Runs `f` with a live client. The synchronous client drives its own small runtime, which
    /// must not start on a thread that is already inside one (a server's async task): there,
    /// `f` runs on a short-lived thread of its own.
    pub(crate) fn run<T: Send>(
        &mut self,
        f: impl FnOnce(&mut postgres::Client) -> Result<T> + Send,
    ) -> Result<T> {
        crate::sync::off_runtime(|| {
            if self.client.as_ref().is_none_or(postgres::Client::is_closed) {
                let connected =
                    self.target
                        .connect()
                        .map_err(|source| RegistryError::PostgresConnect {
                            url: self.redacted_url.clone(),
                            source,
                        })?;
                self.client = Some(connected);
            }
            let client = self.client.as_mut().expect("connected above");
            f(client)
        })
    }
}

impl Drop for PgConn {
    /// The client owns a runtime, which tokio refuses to drop inside another one.
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            crate::sync::off_runtime(move || drop(client));
        }
    }
}

/// `?1` placeholders as PostgreSQL's `$1`.
pub(crate) fn placeholders(sql: &str) -> String {
    sql.replace('?', "$")
}

pub(crate) fn params(values: &[Value]) -> Vec<Box<dyn ToSql + Sync>> {
    values
        .iter()
        .map(|v| -> Box<dyn ToSql + Sync> {
            match v {
                Value::Null => Box::new(None::<String>),
                Value::Int(i) => Box::new(*i),
                Value::Text(s) => Box::new(s.clone()),
            }
        })
        .collect()
}

pub(crate) fn row(r: &postgres::Row) -> Result<Row> {
    let mut out = Vec::with_capacity(r.len());
    for (i, column) in r.columns().iter().enumerate() {
        let value = match *column.type_() {
            Type::INT8 => r.try_get::<_, Option<i64>>(i)?.map(Value::Int),
            Type::INT4 => r
                .try_get::<_, Option<i32>>(i)?
                .map(|v| Value::Int(i64::from(v))),
            Type::TEXT | Type::VARCHAR => r.try_get::<_, Option<String>>(i)?.map(Value::Text),
            ref other => {
                return Err(RegistryError::invalid(
                    "query",
                    format!("column {i} has unexpected type {other}"),
                ));
            }
        };
        out.push(value.unwrap_or(Value::Null));
    }
    Ok(Row::new(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_for_postgres() {
        assert_eq!(
            placeholders("SELECT a FROM t WHERE b = ?1 AND c = ?2"),
            "SELECT a FROM t WHERE b = $1 AND c = $2"
        );
    }
}
