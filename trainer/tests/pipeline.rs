//! The trainer end to end on the 8×8 digits: exports checked against candle through ONNX
//! Runtime, distillation and quantization targets, and what lands in the registry.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use infergate_registry::onnx::ModelProto;
use infergate_registry::{ArtifactKind, Registry};
use infergate_runtime::candle::{Arch, CandleFactory, Net};
use infergate_runtime::ort::{OrtRuntime, discover};
use infergate_runtime::{BackendFactory, NamedTensor, StageTimings, Tensor};
use infergate_trainer::data::{self, Dataset};
use infergate_trainer::pipeline::{self, Plan, Splits};
use infergate_trainer::{export, quantize, train};
use prost::Message;

fn ort() -> OrtRuntime {
    let env = std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from);
    let lib = discover(None, env.as_deref()).expect("run `make ort` first");
    OrtRuntime::init(&lib).unwrap()
}

fn splits(seed: u64) -> Splits {
    let mut parts = data::digits()
        .stratified_split(&[0.7, 0.15, 0.15], seed)
        .into_iter();
    Splits {
        train: parts.next().unwrap(),
        val: parts.next().unwrap(),
        test: parts.next().unwrap(),
    }
}

fn random_net(arch: Arch, seed: u64) -> Net {
    let params: HashMap<_, _> = train::init_params(&arch, seed)
        .unwrap()
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().clone()))
        .collect();
    Net::new(arch, params).unwrap()
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn onnx_exports_match_candle_within_1e4() {
    let ort = ort();
    let digits = data::digits();
    for arch in [
        Arch::Mlp {
            inputs: 64,
            hidden: vec![32, 16],
            classes: 10,
        },
        Arch::Cnn {
            height: 8,
            width: 8,
            channels: vec![4, 8],
            hidden: 16,
            classes: 10,
        },
    ] {
        let net = random_net(arch.clone(), 3);
        let candle = train::logits(&net, &digits).unwrap();
        let onnx = export::onnx(&net).unwrap();
        let model = ModelProto::decode(onnx.as_slice()).unwrap();
        assert!(model.opset_import[0].version >= 13);
        let via_ort = pipeline::ort_logits(&ort, &onnx, &digits, 10).unwrap();
        let diff = max_abs(&candle, &via_ort);
        assert!(diff <= 1e-4, "{arch:?}: max |ort - candle| = {diff}");
        // Not trivially equal: the logits vary across rows.
        assert!(candle.iter().any(|&v| (v - candle[0]).abs() > 1e-3));
    }
}

#[test]
fn candle_and_ort_backends_agree_on_the_same_model() {
    let ort = ort();
    let arch = Arch::Cnn {
        height: 8,
        width: 8,
        channels: vec![4],
        hidden: 16,
        classes: 10,
    };
    let net = random_net(arch.clone(), 9);
    let safetensors = export::safetensors(&net).unwrap();
    let (sig, arch_json) =
        infergate_registry::inspect::safetensors_signature(&safetensors).unwrap();
    assert_eq!(sig, export::signature(&arch));
    let arch_back: Arch = serde_json::from_value(arch_json).unwrap();
    let candle = CandleFactory::from_safetensors(arch_back, &safetensors, "test").unwrap();
    let onnx = ort
        .load_bytes(Arc::from(export::onnx(&net).unwrap()), "test", 1)
        .unwrap();
    assert_eq!(candle.signature(), onnx.signature());

    let digits = data::digits();
    let rows: Vec<f32> = (0..50).flat_map(|i| digits.row(i).to_vec()).collect();
    let input = [NamedTensor::new(
        "input",
        Tensor::from_slice(vec![50, 64], &rows).unwrap(),
    )];
    let a = candle
        .create()
        .unwrap()
        .infer(&input, &mut StageTimings::default())
        .unwrap();
    let b = onnx
        .create()
        .unwrap()
        .infer(&input, &mut StageTimings::default())
        .unwrap();
    assert_eq!(
        (&*a[0].name, a[0].tensor.shape()),
        (&*b[0].name, b[0].tensor.shape())
    );
    let diff = max_abs(
        &a[0].tensor.to_vec::<f32>().unwrap(),
        &b[0].tensor.to_vec::<f32>().unwrap(),
    );
    assert!(diff <= 1e-4, "max |candle - ort| = {diff}");

    // A bad input is a clear error, not a panic.
    let wrong = [NamedTensor::new(
        "input",
        Tensor::from_slice(vec![1, 3], &[0f32; 3]).unwrap(),
    )];
    let err = candle
        .create()
        .unwrap()
        .infer(&wrong, &mut StageTimings::default())
        .unwrap_err();
    assert!(err.to_string().contains("must be FP32 [N, 64]"), "{err}");
}

#[test]
fn quantized_model_uses_integer_operators_and_tracks_the_float_model() {
    let ort = ort();
    let net = random_net(
        Arch::Cnn {
            height: 8,
            width: 8,
            channels: vec![4, 8],
            hidden: 16,
            classes: 10,
        },
        1,
    );
    let digits = data::digits();
    let calib: Dataset = digits.subset(&(0..300).collect::<Vec<_>>());
    let int8 = quantize::quantize(&net, &calib).unwrap();
    let model = ModelProto::decode(int8.as_slice()).unwrap();
    let graph = model.graph.as_ref().unwrap();
    let ops: Vec<&str> = graph.node.iter().map(|n| n.op_type.as_str()).collect();
    // The one-channel first convolution stays float; every other weighted layer is integer.
    assert_eq!(ops.iter().filter(|op| **op == "Conv").count(), 1, "{ops:?}");
    assert_eq!(
        ops.iter().filter(|op| **op == "QLinearConv").count(),
        1,
        "{ops:?}"
    );
    assert_eq!(
        ops.iter().filter(|op| **op == "QLinearMatMul").count(),
        2,
        "{ops:?}"
    );
    assert!(
        !ops.iter().any(|op| matches!(*op, "Gemm" | "MatMul")),
        "{ops:?}"
    );
    let int8_weights = graph
        .initializer
        .iter()
        .filter(|t| t.name.ends_with(".w_int8"))
        .count();
    assert_eq!(int8_weights, 3);
    // It computes nearly what the float network computes: the same class for almost every row.
    let float = train::logits(&net, &digits).unwrap();
    let quant = pipeline::ort_logits(&ort, &int8, &digits, 10).unwrap();
    let same = float
        .chunks(10)
        .zip(quant.chunks(10))
        .filter(|(a, b)| train::argmax(a) == train::argmax(b))
        .count();
    assert!(
        same as f64 >= 0.97 * digits.len() as f64,
        "{same} of {} rows agree",
        digits.len()
    );
}

#[test]
fn digits_pipeline_meets_its_targets_and_registers_lineage() {
    let ort = ort();
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::open(dir.path()).unwrap();
    let plan = Plan::digits(7);
    let out = pipeline::run(&plan, &splits(7), &ort, &registry, "ci").unwrap();

    assert!(
        out.teacher.eval.accuracy >= 0.95,
        "teacher {}",
        out.teacher.eval.accuracy
    );
    assert!(out.teacher.params >= 4 * out.student.params);
    let distill_cost = (out.teacher.eval.accuracy - out.student.eval.accuracy) * 100.0;
    assert!(
        distill_cost <= 1.5,
        "distillation cost {distill_cost:.2} points"
    );
    let quant_cost = (out.teacher.eval.accuracy - out.int8.eval.accuracy) * 100.0;
    assert!(quant_cost <= 0.5, "int8 cost {quant_cost:.2} points");
    let ratio = out.teacher.onnx_bytes as f64 / out.int8.onnx_bytes as f64;
    assert!(ratio >= 3.5, "int8 is only {ratio:.2}x smaller");
    assert!(out.teacher.parity_max_abs.unwrap() <= 1e-4);

    // Same seed, same model: training is deterministic.
    let dir2 = tempfile::tempdir().unwrap();
    let again = Registry::open(dir2.path()).unwrap();
    let out2 = pipeline::run(&plan, &splits(7), &ort, &again, "ci").unwrap();
    assert_eq!(out2.teacher.eval, out.teacher.eval);
    let digest = |r: &Registry, v: u32| {
        r.resolve("digits", &v.to_string())
            .unwrap()
            .artifact(ArtifactKind::Onnx)
            .unwrap()
            .digest
            .clone()
    };
    assert_eq!(digest(&registry, 1), digest(&again, 1));

    let versions = registry.versions("digits").unwrap();
    assert_eq!(versions.len(), 3);
    let (teacher, student, int8) = (&versions[0], &versions[1], &versions[2]);
    assert_eq!(
        registry.resolve("digits", "production").unwrap().version,
        teacher.version
    );
    assert_eq!(
        registry.resolve("digits", "distilled").unwrap().version,
        student.version
    );
    assert_eq!(student.platform, infergate_registry::PLATFORM_CANDLE);
    assert_eq!(
        student.lineage.distillation_teacher.as_deref(),
        Some("digits:1")
    );
    assert_eq!(int8.lineage.parent, Some(1));
    assert_eq!(int8.lineage.quantization.as_deref(), Some(quantize::SCHEME));
    assert_eq!(
        teacher.lineage.dataset_digest.as_deref(),
        Some(out.dataset_digest.as_str())
    );
    assert!(teacher.lineage.training_config["train"]["seed"] == 7);
    assert!((teacher.metrics["accuracy"] - out.teacher.eval.accuracy).abs() < 1e-12);
    let baseline = teacher.baseline.as_ref().unwrap();
    assert_eq!(
        (baseline.features.len(), baseline.samples),
        (64, out.rows.0 as u64)
    );
    assert!((baseline.class_distribution.iter().sum::<f64>() - 1.0).abs() < 1e-9);
    assert_eq!(registry.verify().unwrap().failures, vec![]);
}
