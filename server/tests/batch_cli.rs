//! `infergate batch` as users run it: a separate process scoring files with the demo
//! repository's iris classifier, killed and resumed, sharded, with bad rows.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{AsArray, FixedSizeListArray, Float32Array, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Float32Type, Int64Type, Schema};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::properties::WriterProperties;

fn repository() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../models/repository")
}

/// Row `i`'s four flower measurements; row 17 is null, row 123 holds a NaN (the model refuses
/// non-finite inputs), every other row is valid.
fn measurements(i: usize) -> Option<[f32; 4]> {
    let x = i as f32;
    match i {
        17 => None,
        123 => Some([f32::NAN, 1.0, 1.0, 1.0]),
        _ => Some([
            4.0 + (x * 0.37) % 4.0,
            2.0 + (x * 0.11) % 2.5,
            1.0 + (x * 0.53) % 6.0,
            0.1 + (x * 0.07) % 2.4,
        ]),
    }
}

/// A Parquet file of `rows` rows (`id`, `input` as a fixed-size list), `group` rows a row group.
fn write_parquet(path: &Path, rows: usize, group: usize) {
    let item = Arc::new(Field::new("item", DataType::Float32, true));
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("input", DataType::FixedSizeList(Arc::clone(&item), 4), true),
    ]));
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(group))
        .build();
    let mut writer =
        ArrowWriter::try_new(File::create(path).unwrap(), schema.clone(), Some(props)).unwrap();
    let ids = Int64Array::from_iter_values((0..rows).map(|i| 1_000_000 + i as i64));
    let values: Vec<f32> = (0..rows)
        .flat_map(|i| measurements(i).unwrap_or([0.0; 4]))
        .collect();
    let nulls = arrow::buffer::NullBuffer::from_iter((0..rows).map(|i| measurements(i).is_some()));
    let list = FixedSizeListArray::new(item, 4, Arc::new(Float32Array::from(values)), Some(nulls));
    let batch = RecordBatch::try_new(schema, vec![Arc::new(ids), Arc::new(list)]).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

fn batch_command(input: &Path, output: &Path, extra: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_infergate"));
    command
        .args([
            "batch",
            "--model",
            "iris_mlp:1",
            "--model-repository",
            repository(),
        ])
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(output)
        .args(["--progress", "none"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

fn run_ok(mut command: Command) -> String {
    let out = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "infergate batch failed: {stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn run_err(mut command: Command) -> String {
    let out = command.output().unwrap();
    assert!(!out.status.success(), "infergate batch succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn manifest(dir: &Path, name: &str) -> Option<serde_json::Value> {
    let bytes = std::fs::read(dir.join(name)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn chunks_done(dir: &Path) -> usize {
    manifest(dir, "manifest-0-of-1.json")
        .and_then(|m| m["chunks"].as_object().map(|c| c.len()))
        .unwrap_or(0)
}

/// Waits until the run has committed `chunks` chunks, then kills it with SIGKILL.
fn kill_after(mut child: Child, dir: &Path, chunks: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(120);
    while chunks_done(dir) < chunks {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be killed"
        );
        assert!(Instant::now() < deadline, "no progress in 120 s");
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    chunks_done(dir)
}

/// Every scored row of the Parquet parts in `dir`, by id: the three probabilities.
fn scored(dir: &Path) -> BTreeMap<i64, Vec<f32>> {
    let mut rows = BTreeMap::new();
    let mut parts: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    parts.sort();
    for part in parts {
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&part).unwrap()).unwrap();
        let kv = reader
            .metadata()
            .file_metadata()
            .key_value_metadata()
            .unwrap();
        let get = |k: &str| kv.iter().find(|e| e.key == k).and_then(|e| e.value.clone());
        assert_eq!(get("infergate.model").as_deref(), Some("iris_mlp"));
        assert_eq!(get("infergate.version").as_deref(), Some("1"));
        assert!(get("infergate.digest").unwrap().starts_with("sha256:"));
        for batch in reader.build().unwrap() {
            let batch = batch.unwrap();
            let ids = batch.column(0).as_primitive::<Int64Type>();
            let probs = batch.column(1).as_fixed_size_list();
            for r in 0..batch.num_rows() {
                let row = probs.value(r);
                let row = row.as_primitive::<Float32Type>().values().to_vec();
                assert!(
                    rows.insert(ids.value(r), row).is_none(),
                    "row {} scored twice",
                    ids.value(r)
                );
            }
        }
    }
    rows
}

/// The rejects in `dir`: source row -> reason.
fn rejects(dir: &Path) -> BTreeMap<u64, String> {
    let mut rows = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if !path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("rejects-")
        {
            continue;
        }
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let row = v["source_row"].as_u64().unwrap();
            assert!(
                rows.insert(row, v["reason"].as_str().unwrap().to_string())
                    .is_none()
            );
        }
    }
    rows
}

/// The model run directly with the `ort` crate, as a second implementation.
fn direct(rows: &[[f32; 4]]) -> Vec<f32> {
    let env = std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from);
    let lib = infergate_runtime::ort::discover(None, env.as_deref()).unwrap();
    let runtime = infergate_runtime::ort::OrtRuntime::init(&lib).unwrap();
    let model = Path::new(repository()).join("iris_mlp/1/model.onnx");
    let mut session = ort::session::Session::builder(runtime.environment())
        .unwrap()
        .commit_from_file(model)
        .unwrap();
    let data: Vec<f32> = rows.iter().flatten().copied().collect();
    let array = ndarray::ArrayD::from_shape_vec(vec![rows.len(), 4], data).unwrap();
    let value = ort::value::Tensor::from_array(array).unwrap();
    let outputs = session.run(vec![("input", value)]).unwrap();
    outputs[0].try_extract_tensor::<f32>().unwrap().1.to_vec()
}

#[test]
fn a_run_killed_twice_resumes_to_every_row_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("flowers.parquet");
    let rows = 60_000;
    write_parquet(&input, rows, 4_000);
    let chunking = ["--id-column", "id", "--chunk-rows", "250"];

    // Uninterrupted.
    let reference = dir.path().join("reference");
    let summary = run_ok(batch_command(&input, &reference, &chunking));
    assert!(
        summary.contains(&format!("{} rows scored, 2 rejected", rows - 2)),
        "{summary}"
    );
    let expected = scored(&reference);
    assert_eq!(expected.len(), rows - 2);

    // Killed (SIGKILL) twice mid-run, then resumed to the end.
    let out = dir.path().join("killed");
    let first = batch_command(&input, &out, &chunking).spawn().unwrap();
    let done = kill_after(first, &out, 5);
    let manifest_after_kill = manifest(&out, "manifest-0-of-1.json").unwrap();
    assert_eq!(manifest_after_kill["complete"], false);
    let mut resume = chunking.to_vec();
    resume.push("--resume");
    let second = batch_command(&input, &out, &resume).spawn().unwrap();
    let done_again = kill_after(second, &out, done + 20);
    assert!(
        done_again < rows / 250,
        "the second run was not interrupted"
    );
    let summary = run_ok(batch_command(&input, &out, &resume));
    assert!(
        summary.contains(&format!("{} rows scored", rows - 2)),
        "{summary}"
    );

    let got = scored(&out);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "the same rows, each once"
    );
    for (id, probs) in &expected {
        let other = &got[id];
        let close = probs.iter().zip(other).all(|(a, b)| (a - b).abs() <= 1e-6);
        assert!(close, "row {id}: {probs:?} against {other:?}");
    }
    // The rejects, once each, with their reasons; with the scored rows they cover the input.
    let refused = rejects(&out);
    assert_eq!(refused.keys().copied().collect::<Vec<_>>(), [17, 123]);
    assert_eq!(refused[&17], "input 'input' is null");
    assert!(refused[&123].contains("finite"), "{}", refused[&123]);
    assert_eq!(rejects(&reference), refused);
    assert_eq!(got.len() + refused.len(), rows);

    // Against the model run directly.
    let sample = [0usize, 1, 500, 59_999];
    let inputs: Vec<[f32; 4]> = sample.iter().map(|&i| measurements(i).unwrap()).collect();
    let want = direct(&inputs);
    for (k, &i) in sample.iter().enumerate() {
        let probs = &got[&(1_000_000 + i as i64)];
        for (a, b) in probs.iter().zip(&want[k * 3..k * 3 + 3]) {
            assert!(
                (a - b).abs() <= 1e-6,
                "row {i}: {probs:?} against {:?}",
                &want[k * 3..]
            );
        }
    }

    // A finished run is not run again; a second run into the same folder is refused.
    let again = run_ok(batch_command(&input, &out, &resume));
    assert!(again.contains("already complete"), "{again}");
    let refused = run_err(batch_command(&input, &out, &chunking));
    assert!(refused.contains("--resume"), "{refused}");
    // Resuming with another chunk size would misalign the chunks: refused.
    let other = ["--id-column", "id", "--chunk-rows", "300", "--resume"];
    std::fs::write(
        out.join("manifest-0-of-1.json"),
        serde_json::to_vec(&{
            let mut m = manifest(&out, "manifest-0-of-1.json").unwrap();
            m["complete"] = false.into();
            m
        })
        .unwrap(),
    )
    .unwrap();
    let refused = run_err(batch_command(&input, &out, &other));
    assert!(refused.contains("chunk size differs"), "{refused}");
}

#[test]
fn shards_of_json_lines_cover_it_once_and_write_csv() {
    let dir = tempfile::tempdir().unwrap();
    // Two files, one column per feature, and a row that is not numbers.
    let mut lines = Vec::new();
    for i in 0..300usize {
        let m = measurements(i + 200).unwrap();
        let f0 = if i == 42 {
            serde_json::json!("wide")
        } else {
            serde_json::json!(m[0])
        };
        lines.push(
            serde_json::json!({"key": format!("k{i}"), "f0": f0, "f1": m[1], "f2": m[2], "f3": m[3]})
                .to_string(),
        );
    }
    let inputs = dir.path().join("in");
    std::fs::create_dir(&inputs).unwrap();
    std::fs::write(inputs.join("a.jsonl"), lines[..150].join("\n")).unwrap();
    std::fs::write(inputs.join("b.jsonl"), lines[150..].join("\n")).unwrap();

    let out = dir.path().join("out");
    let mut ids = Vec::new();
    for k in 0..2 {
        let shard = format!("{k}/2");
        let args = [
            "--columns",
            "input=f*",
            "--id-column",
            "key",
            "--format",
            "csv",
            "--shard",
            &shard,
        ];
        let summary = run_ok(batch_command(&inputs, &out, &args));
        assert!(summary.contains(&format!("shard {k}/2")), "{summary}");
        assert!(out.join(format!("manifest-{k}-of-2.json")).exists());
    }
    let mut rejected = rejects(&out);
    for entry in std::fs::read_dir(&out).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "csv") {
            let text = std::fs::read_to_string(&path).unwrap();
            let mut lines = text.lines();
            assert_eq!(
                lines.next(),
                Some("key,probabilities_0,probabilities_1,probabilities_2")
            );
            for line in lines {
                let fields: Vec<&str> = line.split(',').collect();
                let sum: f32 = fields[1..].iter().map(|f| f.parse::<f32>().unwrap()).sum();
                assert!((sum - 1.0).abs() < 1e-4, "{line}");
                ids.push(fields[0].to_string());
            }
        }
    }
    // Row 42 of a.jsonl is not a number: rejected, the rest scored once across the shards.
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    let (row, reason) = rejected.pop_first().unwrap();
    assert_eq!(row, 42);
    assert!(reason.contains("not a number"), "{reason}");
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 299);
    assert!(!ids.contains(&"k42".to_string()));
}

#[test]
fn clear_errors_for_a_wrong_column_or_model() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("flowers.csv");
    std::fs::write(&input, "a,b\n1,2\n").unwrap();
    let err = run_err(batch_command(&input, &dir.path().join("o1"), &[]));
    assert!(
        err.contains("input 'input' takes 4 values a row, and 2 columns are bound to it"),
        "{err}"
    );
    let err = run_err(batch_command(
        &input,
        &dir.path().join("o2"),
        &["--columns", "input=c"],
    ));
    assert!(err.contains("no column 'c'"), "{err}");
    let mut command = Command::new(env!("CARGO_BIN_EXE_infergate"));
    command
        .args([
            "batch",
            "--model",
            "nope",
            "--model-repository",
            repository(),
        ])
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(dir.path().join("o3"));
    let err = run_err(command);
    assert!(err.contains("cannot load model 'nope'"), "{err}");
}
