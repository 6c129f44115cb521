//! `infergate batch`: offline scoring of Parquet, JSON Lines and CSV files through the same
//! repository, stack and batching as the server, resumable chunk by chunk.

mod columns;
mod input;
mod output;
mod progress;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use arrow::array::{ArrayRef, RecordBatch, StringArray, UInt32Array, UInt64Array};
use arrow::datatypes::{DataType as ArrowType, Field, Schema};
use clap::Args;
use futures::StreamExt as _;
use infergate_config::Config;
use infergate_runtime::NamedTensor;
use tower::ServiceExt as _;

use crate::core::{InferRequest, InferResponse, Protocol};
use crate::error::{ErrorKind, ServeError};
use crate::repository::ModelVersion;
use columns::{Binding, InputValues, OutputValues};
pub use input::{Format, Shard};
use input::{InputFile, Unit};
use output::{ChunkDone, Manifest, Producer};

/// `infergate batch` flags.
#[derive(Debug, Args)]
pub struct BatchArgs {
    /// The model to score with: NAME, NAME:VERSION or NAME:ALIAS (a registry alias).
    #[arg(long, value_name = "NAME[:VERSION|ALIAS]")]
    pub model: String,
    /// Model repository in the Triton layout.
    #[arg(long, value_name = "DIR")]
    pub model_repository: Option<PathBuf>,
    /// Model registry.
    #[arg(long, value_name = "DIR")]
    pub registry: Option<PathBuf>,
    /// TOML configuration file (the server's).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Input files, or folders of them: .parquet, .jsonl or .csv, one format a run.
    #[arg(long, value_name = "PATH", num_args = 1.., required = true)]
    pub input: Vec<PathBuf>,
    /// Output folder: a part file per input chunk, rejects, and the shard's manifest.
    #[arg(long, value_name = "DIR")]
    pub output: PathBuf,
    /// Format of the part files.
    #[arg(long, value_enum, default_value = "parquet")]
    pub format: Format,
    /// Which columns feed which inputs: input=column,… (a column ending in * takes every
    /// column with that prefix, one per feature). Default: the column named like the input.
    #[arg(long, value_name = "INPUT=COLUMN,...", default_value = "")]
    pub columns: String,
    /// A column copied to the output to tell rows apart; default: source_file and source_row.
    #[arg(long, value_name = "COLUMN")]
    pub id_column: Option<String>,
    /// Score shard K of N (0-based): input units (Parquet row groups, other files whole) u
    /// with u mod N = K.
    #[arg(long, value_name = "K/N", default_value = "0/1")]
    pub shard: Shard,
    /// Continue the run recorded in the output folder's manifest.
    #[arg(long)]
    pub resume: bool,
    /// Stop at the first row that cannot be scored instead of writing it to the rejects.
    #[arg(long)]
    pub fail_fast: bool,
    /// Rows a chunk: the unit of output and of resumption.
    #[arg(long, value_name = "ROWS", default_value_t = 4096)]
    pub chunk_rows: usize,
    /// Progress: a bar on a terminal, plain lines otherwise, or none.
    #[arg(long, value_enum, default_value = "auto")]
    pub progress: progress::Mode,
}

/// Runs `infergate batch` on a tokio runtime of its own.
pub fn run(args: BatchArgs, env: Vec<(String, String)>) -> anyhow::Result<()> {
    let overrides =
        crate::cli::model_overrides(args.model_repository.as_deref(), args.registry.as_deref());
    let config = Config::load(args.config.as_deref(), env.clone(), &overrides)?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(score(args, config, env))
}

/// The job's fixed parts, shared by every chunk.
struct Job {
    gateway: Arc<crate::Gateway>,
    target: Arc<ModelVersion>,
    asked: Vec<(String, String)>,
    batched: bool,
    rows_per_request: usize,
    in_flight: usize,
    args: BatchArgs,
}

async fn score(args: BatchArgs, config: Config, env: Vec<(String, String)>) -> anyhow::Result<()> {
    anyhow::ensure!(args.chunk_rows > 0, "--chunk-rows must be positive");
    let (name, version) = match args.model.rsplit_once(':') {
        Some((n, v)) => (n.to_string(), Some(v.to_string())),
        None => (args.model.clone(), None),
    };
    let asked = columns::parse_bindings(&args.columns).map_err(anyhow::Error::msg)?;
    let files = input::list(&args.input)?;
    let units = input::units(&files, args.shard);

    let repository = Arc::new(crate::cli::open_repository(&config, &env, "score")?);
    repository
        .load(&name)
        .await
        .map_err(|e| anyhow::anyhow!("cannot load model '{name}': {}", e.message))?;
    let target = repository
        .resolve(&name, version.as_deref())
        .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    let producer = Producer {
        model: name.clone(),
        version: target.version_label.clone(),
        digest: target.digest.clone(),
    };
    let batched = target.config.max_batch_size > 0;
    let job = Job {
        rows_per_request: (target.config.max_batch_size as usize).max(1),
        // Enough requests in flight to keep every instance busy while the next ones are
        // built (2 a worker measured 82-88% busy on mlp_large, 4 86-90%: bench/ANALYSIS.md).
        in_flight: 4 * target.instances.max(1),
        batched,
        gateway: crate::Gateway::new(config, Arc::clone(&repository))?,
        target,
        asked: asked.clone(),
        args,
    };
    let args = &job.args;

    output::prepare(&args.output)?;
    let fresh = Manifest {
        producer,
        format: args.format,
        shard: args.shard,
        chunk_rows: args.chunk_rows,
        id_column: args.id_column.clone(),
        columns: asked,
        inputs: files.clone(),
        chunks: Default::default(),
        complete: false,
    };
    let manifest = match (Manifest::read(&args.output, args.shard)?, args.resume) {
        (Some(_), false) => bail!(
            "{} already holds the output of a run ({}): pass --resume to continue it, or use an empty folder",
            args.output.display(),
            Manifest::file_name(args.shard)
        ),
        (Some(done), true) => {
            fresh.check_same_job(&done)?;
            done
        }
        (None, _) => fresh,
    };
    if manifest.complete {
        let (rows, rejected) = manifest.rows();
        println!("batch: already complete: {rows} rows scored, {rejected} rejected");
        return Ok(());
    }

    let total = files
        .iter()
        .all(|f| f.format == Format::Parquet)
        .then(|| units.iter().filter_map(|u| u.rows).sum::<u64>());
    let progress = progress::Progress::new(args.progress, total);
    let (done_rows, done_rejected) = manifest.rows();
    progress.advance(done_rows + done_rejected);
    let started = std::time::Instant::now();
    let mut writer = Writer::new(manifest);
    for unit in &units {
        score_unit(&job, &files[unit.file], unit, &mut writer, &progress).await?;
    }
    let mut manifest = writer.settle().await?;
    manifest.complete = true;
    manifest.commit(&args.output)?;
    progress.finish();
    let (rows, rejected) = manifest.rows();
    let seconds = started.elapsed().as_secs_f64();
    let stats = &job.target.stats;
    let compute: u64 = [
        &stats.compute_input,
        &stats.compute_infer,
        &stats.compute_output,
    ]
    .iter()
    .map(|d| d.get().1)
    .sum();
    let executions = stats
        .execution_count
        .load(std::sync::atomic::Ordering::Relaxed);
    let inferences = stats
        .inference_count
        .load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "batch: the model ran {executions} batches of {:.1} rows on average, {:.2} s in all ({:.0}% of the run)",
        inferences as f64 / executions.max(1) as f64,
        compute as f64 / 1e9,
        100.0 * compute as f64 / 1e9 / seconds.max(1e-9)
    );
    println!(
        "batch: {rows} rows scored, {rejected} rejected{}, shard {}/{}, in {seconds:.1} s ({:.0} rows/s this run) -> {}",
        if rejected > 0 {
            " (rejects-*.jsonl)"
        } else {
            ""
        },
        args.shard.index,
        args.shard.count,
        (rows + rejected - done_rows - done_rejected) as f64 / seconds.max(1e-9),
        args.output.display()
    );
    Ok(())
}

async fn score_unit(
    job: &Job,
    file: &InputFile,
    unit: &Unit,
    writer: &mut Writer,
    progress: &progress::Progress,
) -> anyhow::Result<()> {
    let args = &job.args;
    let (schema, chunks) = input::chunks(file, unit, args.chunk_rows)?;
    let id_columns: Vec<&str> = args.id_column.iter().map(String::as_str).collect();
    if let Some(id) = &args.id_column
        && schema.field_with_name(id).is_err()
    {
        bail!("{}: no id column '{id}'", file.path.display());
    }
    let signature = job.target.model.signature();
    let bindings = columns::bind(&signature.inputs, &schema, &job.asked, &id_columns)
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.path.display()))?;
    // The next chunks are read and decoded on the blocking pool while this one is scored.
    let (send, mut chunks_ahead) = tokio::sync::mpsc::channel(2);
    tokio::task::spawn_blocking(move || {
        for chunk in chunks {
            if send.blocking_send(chunk).is_err() {
                break;
            }
        }
    });
    let mut first_row = unit.first_row.unwrap_or(0);
    let mut c = 0;
    while let Some(chunk) = chunks_ahead.recv().await {
        let key = format!("f{:04}-g{:05}-c{:05}", unit.file, unit.group, c);
        c += 1;
        if let Some(done) = writer.resumed.get(&key) {
            first_row += done.rows + done.rejected;
            continue;
        }
        let chunk = chunk?;
        let rows = chunk.num_rows() as u64;
        let (batch, rejects) = score_chunk(job, file, &chunk, &bindings, first_row).await?;
        writer.write(key, batch, rejects, args).await?;
        progress.advance(rows);
        first_row += rows;
    }
    Ok(())
}

/// Writes each chunk's files and commits the manifest on the blocking pool, one chunk behind
/// the scoring, in order: the manifest never lists a chunk before its files are whole.
struct Writer {
    /// Chunks done before this run (`--resume`).
    resumed: std::collections::BTreeMap<String, ChunkDone>,
    manifest: Option<Manifest>,
    pending: Option<tokio::task::JoinHandle<anyhow::Result<Manifest>>>,
}

impl Writer {
    fn new(manifest: Manifest) -> Self {
        Self {
            resumed: manifest.chunks.clone(),
            manifest: Some(manifest),
            pending: None,
        }
    }

    /// The manifest, once the chunk being written is committed.
    async fn settle(&mut self) -> anyhow::Result<Manifest> {
        match (self.manifest.take(), self.pending.take()) {
            (Some(manifest), None) => Ok(manifest),
            (None, Some(pending)) => pending.await.context("the writer panicked")?,
            _ => unreachable!("the manifest is either here or with the writer"),
        }
    }

    async fn write(
        &mut self,
        key: String,
        batch: RecordBatch,
        rejects: Vec<serde_json::Value>,
        args: &BatchArgs,
    ) -> anyhow::Result<()> {
        let mut manifest = self.settle().await?;
        let (dir, format) = (args.output.clone(), args.format);
        self.pending = Some(tokio::task::spawn_blocking(move || {
            let (part, rejects_file) = output::write_chunk(
                &dir,
                &key,
                Some((&batch, format, &manifest.producer)),
                &rejects,
            )?;
            manifest.chunks.insert(
                key,
                ChunkDone {
                    part,
                    rejects: rejects_file,
                    rows: batch.num_rows() as u64,
                    rejected: rejects.len() as u64,
                },
            );
            manifest.commit(&dir)?;
            Ok(manifest)
        }));
        Ok(())
    }
}

/// Scores one chunk: its rows that fit go through the stack in requests of the model's
/// largest batch; the others, and rows the model refuses, become rejects.
async fn score_chunk(
    job: &Job,
    file: &InputFile,
    chunk: &RecordBatch,
    bindings: &[Binding],
    first_row: u64,
) -> anyhow::Result<(RecordBatch, Vec<serde_json::Value>)> {
    let signature = job.target.model.signature();
    let values = bindings
        .iter()
        .zip(&signature.inputs)
        .map(|(binding, spec)| {
            let shape = columns::row_shape(spec, job.batched)?;
            InputValues::read(chunk, binding, spec, shape)
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.path.display()))?;
    let mut rejects = Vec::new();
    let mut reject = |row: usize, reason: String| -> anyhow::Result<()> {
        let at = first_row + row as u64;
        if job.args.fail_fast {
            bail!("{} row {at}: {reason} (--fail-fast)", file.path.display());
        }
        rejects.push(serde_json::json!({
            "source_file": file.path.display().to_string(),
            "source_row": at,
            "id": job.args.id_column.as_ref().map(|c| id_value(chunk, c, row)),
            "reason": reason,
        }));
        Ok(())
    };
    let mut accepted = Vec::with_capacity(chunk.num_rows());
    for row in 0..chunk.num_rows() {
        match values.iter().find_map(|v| v.row_error(row)) {
            Some(reason) => reject(row, reason)?,
            None => accepted.push(row),
        }
    }
    let groups: Vec<Vec<usize>> = accepted
        .chunks(job.rows_per_request)
        .map(<[usize]>::to_vec)
        .collect();
    let mut answers = futures::stream::iter(groups)
        .map(|rows| infer_rows(job, &values, rows))
        .buffered(job.in_flight);
    let mut outputs: Vec<OutputValues> = signature
        .outputs
        .iter()
        .map(|o| OutputValues::new(&o.name, o.dtype))
        .collect();
    let mut scored = Vec::with_capacity(accepted.len());
    while let Some(answer) = answers.next().await {
        for (rows, result) in answer {
            match result {
                Ok(response) => {
                    for out in &mut outputs {
                        let tensor = response.output(out.name()).ok_or_else(|| {
                            anyhow::anyhow!("the model answered without output '{}'", out.name())
                        })?;
                        out.push(tensor, rows.len(), job.batched)
                            .map_err(anyhow::Error::msg)?;
                    }
                    scored.extend(rows);
                }
                Err(e) => {
                    for row in rows {
                        reject(row, e.message.clone())?;
                    }
                }
            }
        }
    }
    drop(answers);
    let batch = output_batch(job, file, chunk, &scored, first_row, outputs)?;
    Ok((batch, rejects))
}

/// Runs `rows` as one request; if the model refuses it, runs them one by one, so that only
/// the rows at fault are rejected.
async fn infer_rows(
    job: &Job,
    values: &[InputValues],
    rows: Vec<usize>,
) -> Vec<(Vec<usize>, Result<InferResponse, ServeError>)> {
    let result = infer(job, values, &rows).await;
    match result {
        Err(_) if rows.len() > 1 => {
            let mut each = Vec::with_capacity(rows.len());
            for row in rows {
                let result = infer(job, values, &[row]).await;
                each.push((vec![row], result));
            }
            each
        }
        result => vec![(rows, result)],
    }
}

/// One request through the stack; a full queue is waited out, not counted against the rows.
async fn infer(
    job: &Job,
    values: &[InputValues],
    rows: &[usize],
) -> Result<InferResponse, ServeError> {
    let target = &job.target;
    let mut wait = std::time::Duration::from_millis(5);
    loop {
        let mut req = InferRequest::new(
            target.name.clone(),
            Some(target.version.to_string()),
            Protocol::Batch,
        );
        req.inputs = values
            .iter()
            .map(|v| NamedTensor {
                name: Arc::from(v.name.as_str()),
                tensor: v.tensor(rows, job.batched),
            })
            .collect();
        match job.gateway.stack.clone().oneshot(req).await {
            Err(e) => {
                let e = ServeError::from(e);
                if matches!(e.kind, ErrorKind::Overloaded | ErrorKind::RateLimited) {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(std::time::Duration::from_secs(1));
                    continue;
                }
                return Err(e);
            }
            Ok(response) => return Ok(response),
        }
    }
}

/// The id column (or `source_file`, `source_row`) of the scored rows, then the outputs.
fn output_batch(
    job: &Job,
    file: &InputFile,
    chunk: &RecordBatch,
    scored: &[usize],
    first_row: u64,
    outputs: Vec<OutputValues>,
) -> anyhow::Result<RecordBatch> {
    let mut fields = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    match &job.args.id_column {
        Some(id) => {
            let (index, field) = chunk
                .schema()
                .column_with_name(id)
                .map(|(i, f)| (i, f.clone()))
                .expect("checked");
            let indices = UInt32Array::from_iter_values(scored.iter().map(|&r| r as u32));
            columns.push(arrow::compute::take(chunk.column(index), &indices, None)?);
            fields.push(field);
        }
        None => {
            let path = file.path.display().to_string();
            columns.push(Arc::new(StringArray::from_iter_values(
                scored.iter().map(|_| path.as_str()),
            )));
            fields.push(Field::new("source_file", ArrowType::Utf8, false));
            columns.push(Arc::new(UInt64Array::from_iter_values(
                scored.iter().map(|&r| first_row + r as u64),
            )));
            fields.push(Field::new("source_row", ArrowType::UInt64, false));
        }
    }
    for out in outputs {
        let (field, column) = out.finish().map_err(anyhow::Error::msg)?;
        fields.push(field);
        columns.push(column);
    }
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

/// Row `row` of column `column`, as JSON for the rejects file.
fn id_value(chunk: &RecordBatch, column: &str, row: usize) -> serde_json::Value {
    let Some(array) = chunk.column_by_name(column) else {
        return serde_json::Value::Null;
    };
    let text = arrow::util::display::array_value_to_string(array, row).unwrap_or_default();
    serde_json::Value::String(text)
}
