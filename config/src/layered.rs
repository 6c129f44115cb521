//! Layering: TOML file, then `INFERGATE_…` variables, then CLI flags, merged as TOML tables
//! before one typed deserialization.

use std::path::Path;

use serde::de::DeserializeOwned;
use toml::{Table, Value};

use crate::ConfigError;

/// Prefix of environment overrides: `INFERGATE_SERVER__HTTP_ADDR` sets `server.http_addr`
/// (sections are separated by a double underscore).
pub const ENV_PREFIX: &str = "INFERGATE_";

/// CLI overrides as dotted key paths (`server.http_addr`) and their values, applied last.
#[derive(Debug, Clone, Default)]
pub struct Overrides(Vec<(String, String)>);

impl Overrides {
    /// An empty set of overrides.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `key = value` when `value` is present.
    pub fn set(&mut self, key: &str, value: Option<impl ToString>) -> &mut Self {
        if let Some(value) = value {
            self.0.push((key.to_string(), value.to_string()));
        }
        self
    }
}

pub(crate) fn load<T, I>(file: Option<&Path>, env: I, cli: &Overrides) -> Result<T, ConfigError>
where
    T: DeserializeOwned,
    I: IntoIterator<Item = (String, String)>,
{
    let text = match file {
        Some(path) => Some((
            path.display().to_string(),
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?,
        )),
        None => None,
    };
    load_text(
        text.as_ref().map(|(o, t)| (o.as_str(), t.as_str())),
        env,
        cli,
    )
}

/// [`load`] from the text of a file (`(origin, text)`) instead of its path.
pub(crate) fn load_text<T, I>(
    file: Option<(&str, &str)>,
    env: I,
    cli: &Overrides,
) -> Result<T, ConfigError>
where
    T: DeserializeOwned,
    I: IntoIterator<Item = (String, String)>,
{
    let mut table = match file {
        Some((origin, text)) => text.parse::<Table>().map_err(|e| ConfigError::Parse {
            origin: origin.to_string(),
            message: e.message().to_string(),
        })?,
        None => Table::new(),
    };
    let mut errors = Vec::new();
    let mut env: Vec<_> = env
        .into_iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(ENV_PREFIX)?.to_string(), v)))
        .collect();
    env.sort();
    for (key, value) in env {
        let path = key.to_ascii_lowercase().replace("__", ".");
        if let Err(e) = set_path(&mut table, &path, &value) {
            errors.push(format!("{ENV_PREFIX}{key}: {e}"));
        }
    }
    for (path, value) in &cli.0 {
        if let Err(e) = set_path(&mut table, path, value) {
            errors.push(format!("--{path}: {e}"));
        }
    }
    if !errors.is_empty() {
        return Err(ConfigError::Invalid(errors));
    }
    let origin = file.map_or_else(
        || "(defaults)".to_string(),
        |(origin, _)| origin.to_string(),
    );
    T::deserialize(Value::Table(table)).map_err(|e| ConfigError::Parse {
        origin,
        message: e.message().to_string(),
    })
}

/// Sets a dotted path in the table; the value is read as a TOML scalar when it parses as one
/// (numbers, booleans), otherwise as a string.
fn set_path(table: &mut Table, path: &str, raw: &str) -> Result<(), String> {
    let mut parts = path.split('.').peekable();
    let mut current = table;
    while let Some(part) = parts.next() {
        if part.is_empty() {
            return Err(format!("invalid key {path:?}"));
        }
        if parts.peek().is_none() {
            current.insert(part.to_string(), scalar(raw));
            return Ok(());
        }
        let entry = current
            .entry(part.to_string())
            .or_insert_with(|| Value::Table(Table::new()));
        current = entry
            .as_table_mut()
            .ok_or_else(|| format!("{part} is not a section"))?;
    }
    Err(format!("invalid key {path:?}"))
}

fn scalar(raw: &str) -> Value {
    format!("v = {raw}")
        .parse::<Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .filter(|v| !v.is_table())
        .unwrap_or_else(|| Value::String(raw.to_string()))
}
