//! The ONNX Runtime backend on the committed test models: signatures read from the models,
//! every datatype through a real session, batched equals one-by-one.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use infergate_runtime::ort::{OrtRuntime, discover};
use infergate_runtime::{BackendFactory, DataType, Model, ModelOptions, NamedTensor, Tensor};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/repository")
}

fn runtime() -> OrtRuntime {
    let env = std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from);
    let lib = discover(None, env.as_deref()).expect("run `make ort` first");
    OrtRuntime::init(&lib).unwrap()
}

fn model(name: &str, version: u32) -> Model {
    let factory = runtime()
        .load(
            &repo()
                .join(name)
                .join(version.to_string())
                .join("model.onnx"),
            1,
        )
        .unwrap();
    let options = ModelOptions {
        name: format!("{name}:{version}"),
        instances: 1,
        queue_capacity: 16,
        nice: 0,
    };
    Model::start(Arc::new(factory), options).unwrap()
}

#[test]
fn signature_is_read_from_the_model() {
    let factory = runtime()
        .load(&repo().join("iris_mlp/1/model.onnx"), 1)
        .unwrap();
    let sig = factory.signature();
    assert_eq!(sig.inputs.len(), 1);
    assert_eq!(sig.inputs[0].name, "input");
    assert_eq!(sig.inputs[0].dtype, DataType::Fp32);
    assert_eq!(sig.inputs[0].shape, vec![-1, 4]);
    assert_eq!(sig.outputs[0].name, "probabilities");
    assert_eq!(sig.outputs[0].shape, vec![-1, 3]);
    assert_eq!(factory.platform(), "onnx_onnxv1");
}

#[test]
fn loading_a_corrupt_file_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.onnx");
    std::fs::write(&path, b"not a model").unwrap();
    let err = runtime().load(&path, 1).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!("cannot load model {}", path.display())),
        "{err}"
    );
}

#[tokio::test]
async fn simple_adds_and_subtracts() {
    let model = model("simple", 1);
    let a: Vec<i32> = (0..16).collect();
    let b: Vec<i32> = (0..16).map(|x| 100 - x).collect();
    let inputs = vec![
        NamedTensor::new("INPUT0", Tensor::from_slice(vec![1, 16], &a).unwrap()),
        NamedTensor::new("INPUT1", Tensor::from_slice(vec![1, 16], &b).unwrap()),
    ];
    let out = model.infer(inputs).unwrap().await.unwrap();
    let sum: Vec<i32> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
    let diff: Vec<i32> = a.iter().zip(&b).map(|(x, y)| x - y).collect();
    assert_eq!(&*out.outputs[0].name, "OUTPUT0");
    assert_eq!(out.outputs[0].tensor.to_vec::<i32>(), Some(sum));
    assert_eq!(out.outputs[1].tensor.to_vec::<i32>(), Some(diff));
    assert_eq!(out.outputs[1].tensor.shape(), &[1, 16]);
}

/// Deterministic bytes for `n` elements of `dtype`.
fn sample(dtype: DataType, n: usize) -> Tensor {
    let shape = vec![2, n as i64 / 2];
    match dtype.size() {
        Some(size) => {
            let mut raw: Vec<u8> = (0..n * size).map(|i| (i * 37 + 11) as u8).collect();
            if dtype == DataType::Bool {
                raw.iter_mut().for_each(|b| *b &= 1);
            }
            if matches!(
                dtype,
                DataType::Fp16 | DataType::Bf16 | DataType::Fp32 | DataType::Fp64
            ) {
                // Keep floats finite and non-NaN so equality is meaningful.
                for chunk in raw.chunks_mut(size) {
                    chunk[size - 1] = 0x3c;
                }
            }
            Tensor::from_raw(dtype, shape, Bytes::from(raw)).unwrap()
        }
        None => Tensor::from_elements(
            shape,
            (0..n)
                .map(|i| Bytes::from(format!("élément-{i}")))
                .collect(),
        )
        .unwrap(),
    }
}

#[tokio::test]
async fn every_datatype_round_trips_through_a_session() {
    let model = model("identity_all", 1);
    let names = [
        "bool", "uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64", "fp16",
        "bf16", "fp32", "fp64", "bytes",
    ];
    let inputs: Vec<NamedTensor> = DataType::ALL
        .iter()
        .zip(names)
        .map(|(&dtype, name)| NamedTensor::new(format!("in_{name}"), sample(dtype, 6)))
        .collect();
    let out = model.infer(inputs.clone()).unwrap().await.unwrap();
    assert_eq!(out.outputs.len(), 14);
    for (input, output) in inputs.iter().zip(&out.outputs) {
        assert_eq!(&output.name[4..], &input.name[3..]);
        assert_eq!(
            output.tensor, input.tensor,
            "{} changed on the way through",
            input.name
        );
    }
}

#[tokio::test]
async fn batched_outputs_equal_one_by_one_outputs() {
    let model = model("iris_mlp", 2);
    let rows: Vec<[f32; 4]> = (0..32)
        .map(|i| [i as f32 * 0.1, 1.0 - i as f32 * 0.05, 0.3, -0.2 * i as f32])
        .collect();
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    let batch = model
        .infer(vec![NamedTensor::new(
            "input",
            Tensor::from_slice(vec![32, 4], &flat).unwrap(),
        )])
        .unwrap()
        .await
        .unwrap();
    let batched = batch.outputs[0].tensor.to_vec::<f32>().unwrap();
    assert_eq!(batch.outputs[0].tensor.shape(), &[32, 3]);
    for (i, row) in rows.iter().enumerate() {
        let one = model
            .infer(vec![NamedTensor::new(
                "input",
                Tensor::from_slice(vec![1, 4], row).unwrap(),
            )])
            .unwrap()
            .await
            .unwrap();
        let single = one.outputs[0].tensor.to_vec::<f32>().unwrap();
        for (a, b) in single.iter().zip(&batched[i * 3..i * 3 + 3]) {
            assert!((a - b).abs() <= 1e-6, "row {i}: {a} vs {b}");
        }
        let total: f32 = single.iter().sum();
        assert!(
            (total - 1.0).abs() < 1e-5,
            "softmax row {i} sums to {total}"
        );
    }
}
