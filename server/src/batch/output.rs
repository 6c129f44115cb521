//! What a batch job writes: one part file per input chunk (and a rejects file when rows were
//! refused), each made whole before it is renamed into place, and the shard's manifest,
//! rewritten atomically after every chunk: what it lists is done, and nothing else is.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, bail};
use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};

use super::input::{Format, InputFile, Shard};

/// What produced an output: written into every part file's metadata (Parquet) and the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Producer {
    pub model: String,
    pub version: String,
    /// The serving artifact's digest (`sha256:…`).
    pub digest: String,
}

impl Producer {
    fn key_values(&self) -> Vec<KeyValue> {
        vec![
            KeyValue::new("infergate.model".into(), self.model.clone()),
            KeyValue::new("infergate.version".into(), self.version.clone()),
            KeyValue::new("infergate.digest".into(), self.digest.clone()),
        ]
    }
}

/// One chunk done: its files (relative to the output folder) and row counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkDone {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub part: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejects: Option<String>,
    pub rows: u64,
    pub rejected: u64,
}

/// A shard's record of its run, the only thing `--resume` trusts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub producer: Producer,
    pub format: Format,
    pub shard: Shard,
    pub chunk_rows: usize,
    pub id_column: Option<String>,
    pub columns: Vec<(String, String)>,
    pub inputs: Vec<InputFile>,
    /// Chunks done, by key (`f0000-g00000-c00000`: file, row group, chunk).
    pub chunks: BTreeMap<String, ChunkDone>,
    pub complete: bool,
}

impl Manifest {
    /// The file name of shard `shard`'s manifest: shards may share an output folder.
    pub fn file_name(shard: Shard) -> String {
        format!("manifest-{}-of-{}.json", shard.index, shard.count)
    }

    pub fn rows(&self) -> (u64, u64) {
        self.chunks
            .values()
            .fold((0, 0), |(r, j), c| (r + c.rows, j + c.rejected))
    }

    /// Reads the manifest of `shard` in `dir`, if there is one.
    pub fn read(dir: &Path, shard: Shard) -> anyhow::Result<Option<Self>> {
        let path = dir.join(Self::file_name(shard));
        match std::fs::read(&path) {
            Ok(bytes) => {
                Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
                    format!("{}: not a batch manifest", path.display())
                })?))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Whether a resumed run is the same job as the one this manifest records.
    pub fn check_same_job(&self, other: &Self) -> anyhow::Result<()> {
        let differs = |what: &str| {
            bail!(
                "cannot resume: the {what} differs from the run recorded in {} (start again in an empty folder)",
                Self::file_name(self.shard)
            )
        };
        if self.producer != other.producer {
            return differs(&format!(
                "model ({} {} {} now, {} {} {} then)",
                other.producer.model,
                other.producer.version,
                other.producer.digest,
                self.producer.model,
                self.producer.version,
                self.producer.digest
            ));
        }
        if self.inputs != other.inputs {
            return differs("input (its files, sizes or row groups)");
        }
        if (self.format, self.chunk_rows) != (other.format, other.chunk_rows) {
            return differs("output format or chunk size");
        }
        if (&self.id_column, &self.columns) != (&other.id_column, &other.columns) {
            return differs("column mapping");
        }
        Ok(())
    }

    /// Writes the manifest to a temporary file, flushes it and renames it over the last one.
    pub fn commit(&self, dir: &Path) -> anyhow::Result<()> {
        let bytes = serde_json::to_vec_pretty(self)?;
        write_atomically(dir, &Self::file_name(self.shard), &bytes)
    }
}

/// Writes `name` in `dir` whole or not at all: a temporary file, synced, renamed, the folder
/// synced.
fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut file = File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))?;
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// Encodes `batch` as a part file in `format`.
pub fn encode(batch: &RecordBatch, format: Format, producer: &Producer) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    match format {
        Format::Parquet => {
            let props = WriterProperties::builder()
                .set_compression(Compression::SNAPPY)
                .set_key_value_metadata(Some(producer.key_values()))
                .build();
            let mut writer = ArrowWriter::try_new(&mut out, batch.schema(), Some(props))?;
            writer.write(batch)?;
            writer.close()?;
        }
        Format::Jsonl => {
            let mut writer = arrow::json::LineDelimitedWriter::new(&mut out);
            writer.write(batch)?;
            writer.finish()?;
        }
        Format::Csv => {
            let mut writer = arrow::csv::Writer::new(&mut out);
            writer.write(&flatten(batch)?)?;
        }
    }
    Ok(out)
}

/// CSV holds scalars only: a fixed-size list column `x` becomes `x_0`, `x_1`, …
fn flatten(batch: &RecordBatch) -> anyhow::Result<RecordBatch> {
    let mut fields = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        match column.data_type() {
            arrow::datatypes::DataType::FixedSizeList(item, size) => {
                let list = column.as_fixed_size_list();
                let values = list.values();
                let size = *size as usize;
                for e in 0..size {
                    let indices = arrow::array::UInt64Array::from_iter_values(
                        (0..list.len()).map(|r| ((list.offset() + r) * size + e) as u64),
                    );
                    columns.push(arrow::compute::take(values, &indices, None)?);
                    fields.push(Field::new(
                        format!("{}_{e}", field.name()),
                        item.data_type().clone(),
                        true,
                    ));
                }
            }
            _ => {
                fields.push(field.as_ref().clone());
                columns.push(Arc::clone(column));
            }
        }
    }
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

/// Writes a chunk's part file (and its rejects, JSON Lines) into `dir`, each atomically.
pub fn write_chunk(
    dir: &Path,
    key: &str,
    part: Option<(&RecordBatch, Format, &Producer)>,
    rejects: &[serde_json::Value],
) -> anyhow::Result<(Option<String>, Option<String>)> {
    let part = match part {
        Some((batch, format, producer)) if batch.num_rows() > 0 => {
            let name = format!("part-{key}.{}", format.extension());
            write_atomically(dir, &name, &encode(batch, format, producer)?)?;
            Some(name)
        }
        _ => None,
    };
    let rejects = if rejects.is_empty() {
        None
    } else {
        let name = format!("rejects-{key}.jsonl");
        let mut bytes = Vec::new();
        for r in rejects {
            serde_json::to_writer(&mut bytes, r)?;
            bytes.push(b'\n');
        }
        write_atomically(dir, &name, &bytes)?;
        Some(name)
    };
    Ok((part, rejects))
}

/// The output folder, made if missing.
pub fn prepare(dir: &PathBuf) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))
}
