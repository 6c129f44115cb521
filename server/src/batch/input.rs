//! The input files of a batch job: their format, the units a shard scores (a Parquet row
//! group, a whole JSON Lines or CSV file), and the chunks read from each, streamed.

use std::fs::File;
use std::io::{BufReader, Seek as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, bail};
use arrow::array::{RecordBatch, RecordBatchReader as _};
use arrow::datatypes::SchemaRef;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::{Deserialize, Serialize};

/// A file format read or written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Parquet,
    Jsonl,
    Csv,
}

impl Format {
    /// From a file's extension (`.parquet`/`.pq`, `.jsonl`/`.ndjson`/`.json`, `.csv`).
    pub fn of(path: &Path) -> anyhow::Result<Self> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or_default()
            .to_ascii_lowercase();
        Ok(match ext.as_str() {
            "parquet" | "pq" => Self::Parquet,
            "jsonl" | "ndjson" | "json" => Self::Jsonl,
            "csv" => Self::Csv,
            _ => bail!(
                "{}: cannot tell the format from the extension (use .parquet, .jsonl or .csv)",
                path.display()
            ),
        })
    }

    pub fn extension(self) -> &'static str {
        match self {
            Self::Parquet => "parquet",
            Self::Jsonl => "jsonl",
            Self::Csv => "csv",
        }
    }
}

/// Rows read to infer a JSON Lines or CSV file's schema.
const INFER_ROWS: usize = 1000;

/// One input file and its units.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InputFile {
    pub path: PathBuf,
    pub format: Format,
    pub bytes: u64,
    /// Rows in each unit: a Parquet file's row groups; one unit for other formats (rows
    /// unknown until read: `None`).
    pub units: Vec<Option<u64>>,
}

/// A unit of work: file `file`, row group `group` (0 for formats without row groups).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unit {
    pub file: usize,
    pub group: usize,
    /// The unit's first row within its file, when known ahead (Parquet).
    pub first_row: Option<u64>,
    pub rows: Option<u64>,
}

/// Lists the inputs (each path a file, or a folder of them, sorted by name).
pub fn list(paths: &[PathBuf]) -> anyhow::Result<Vec<InputFile>> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("cannot list {}", path.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && Format::of(p).is_ok())
                .collect();
            entries.sort();
            if entries.is_empty() {
                bail!("{}: no .parquet, .jsonl or .csv files", path.display());
            }
            files.extend(entries);
        } else {
            files.push(path.clone());
        }
    }
    let files: Vec<InputFile> = files
        .into_iter()
        .map(|path| {
            let format = Format::of(&path)?;
            let bytes = std::fs::metadata(&path)
                .with_context(|| format!("cannot read {}", path.display()))?
                .len();
            let units = match format {
                Format::Parquet => {
                    let file = File::open(&path)?;
                    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
                        .with_context(|| format!("{}: not a Parquet file", path.display()))?;
                    let meta = reader.metadata();
                    (0..meta.num_row_groups())
                        .map(|g| Some(meta.row_group(g).num_rows() as u64))
                        .collect()
                }
                Format::Jsonl | Format::Csv => vec![None],
            };
            Ok(InputFile {
                path,
                format,
                bytes,
                units,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    if let Some(f) = files.iter().find(|f| f.format != files[0].format) {
        bail!(
            "inputs mix formats ({} is {:?}, {} is {:?}): score them in separate runs",
            files[0].path.display(),
            files[0].format,
            f.path.display(),
            f.format
        );
    }
    Ok(files)
}

/// Shard `k` of `n`, as `--shard K/N` (0-based `K`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (k, n) = s
            .split_once('/')
            .ok_or_else(|| format!("--shard '{s}' is not K/N"))?;
        let (index, count) = (
            k.trim()
                .parse::<usize>()
                .map_err(|_| format!("--shard '{s}': K is not a number"))?,
            n.trim()
                .parse::<usize>()
                .map_err(|_| format!("--shard '{s}': N is not a number"))?,
        );
        if count == 0 || index >= count {
            return Err(format!("--shard '{s}': K must be below N (0-based)"));
        }
        Ok(Self { index, count })
    }
}

impl Default for Shard {
    fn default() -> Self {
        Self { index: 0, count: 1 }
    }
}

/// The units of `shard`: every unit is numbered in input order (row groups of Parquet files,
/// whole files otherwise) and unit `u` belongs to shard `u mod N`, so the shards of one input
/// are disjoint and together cover it, whatever N is.
pub fn units(files: &[InputFile], shard: Shard) -> Vec<Unit> {
    let mut all = Vec::new();
    for (f, file) in files.iter().enumerate() {
        let mut first = 0u64;
        for (g, rows) in file.units.iter().enumerate() {
            all.push(Unit {
                file: f,
                group: g,
                first_row: rows.map(|_| first),
                rows: *rows,
            });
            first += rows.unwrap_or(0);
        }
    }
    all.into_iter()
        .enumerate()
        .filter(|(u, _)| u % shard.count == shard.index)
        .map(|(_, unit)| unit)
        .collect()
}

/// A unit's chunks, read as they are asked for.
pub type Chunks = Box<dyn Iterator<Item = anyhow::Result<RecordBatch>> + Send>;

/// The chunks of a unit, `chunk_rows` rows each (the last may be shorter), streamed.
pub fn chunks(
    file: &InputFile,
    unit: &Unit,
    chunk_rows: usize,
) -> anyhow::Result<(SchemaRef, Chunks)> {
    let path = &file.path;
    let open = || File::open(path).with_context(|| format!("cannot open {}", path.display()));
    let context = move |e: arrow::error::ArrowError| anyhow::anyhow!("{}: {e}", path.display());
    Ok(match file.format {
        Format::Parquet => {
            let reader = ParquetRecordBatchReaderBuilder::try_new(open()?)?
                .with_row_groups(vec![unit.group])
                .with_batch_size(chunk_rows)
                .build()?;
            (reader.schema(), stream(path, reader))
        }
        Format::Jsonl => {
            let mut reader = BufReader::new(open()?);
            let (schema, _) =
                arrow::json::reader::infer_json_schema_from_seekable(&mut reader, Some(INFER_ROWS))
                    .map_err(context)?;
            reader.rewind()?;
            let schema = Arc::new(schema);
            // A column whose rows mix numbers and strings is read as strings, so that the
            // rows holding a number still score and the others are rejected one by one.
            let reader = arrow::json::ReaderBuilder::new(Arc::clone(&schema))
                .with_coerce_primitive(true)
                .with_batch_size(chunk_rows)
                .build(reader)
                .map_err(context)?;
            (schema, stream(path, reader))
        }
        Format::Csv => {
            let mut reader = BufReader::new(open()?);
            let (schema, _) = arrow::csv::reader::Format::default()
                .with_header(true)
                .infer_schema(&mut reader, Some(INFER_ROWS))
                .map_err(context)?;
            reader.rewind()?;
            let schema = Arc::new(schema);
            let reader = arrow::csv::ReaderBuilder::new(Arc::clone(&schema))
                .with_header(true)
                .with_batch_size(chunk_rows)
                .build(reader)
                .map_err(context)?;
            (schema, stream(path, reader))
        }
    })
}

/// A reader's batches, their errors naming the file.
fn stream(
    path: &Path,
    reader: impl Iterator<Item = Result<RecordBatch, arrow::error::ArrowError>> + Send + 'static,
) -> Chunks {
    let path = path.to_path_buf();
    Box::new(reader.map(move |b| b.map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(units: Vec<Option<u64>>) -> InputFile {
        InputFile {
            path: "x.parquet".into(),
            format: Format::Parquet,
            bytes: 0,
            units,
        }
    }

    #[test]
    fn shards_are_disjoint_and_cover_every_unit() {
        let files = [file(vec![Some(10), Some(10), Some(5)]), file(vec![Some(7)])];
        let all = units(&files, Shard::default());
        assert_eq!(all.len(), 4);
        assert_eq!(all[2].first_row, Some(20));
        assert_eq!(all[3].first_row, Some(0));
        for n in 1..=5 {
            let mut seen: Vec<(usize, usize)> = (0..n)
                .flat_map(|k| units(&files, Shard { index: k, count: n }))
                .map(|u| (u.file, u.group))
                .collect();
            seen.sort();
            let expected: Vec<_> = all.iter().map(|u| (u.file, u.group)).collect();
            assert_eq!(seen, expected, "N = {n}");
        }
        assert_eq!("1/3".parse::<Shard>(), Ok(Shard { index: 1, count: 3 }));
        assert!("3/3".parse::<Shard>().unwrap_err().contains("below N"));
        assert!("x".parse::<Shard>().is_err());
    }
}
