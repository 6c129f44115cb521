//! Re-quantizes a registered float version and compares it with the float model under ONNX
//! Runtime: `cargo run --release -p infergate-trainer --example quant_bench -- REGISTRY MODEL VERSION`.

use infergate_registry::{ArtifactKind, Registry};
use infergate_runtime::candle::{Arch, CandleFactory};
use infergate_runtime::ort::{OrtRuntime, discover};
use infergate_trainer::data::{self, FASHION_MNIST_DIR};
use infergate_trainer::eval::evaluate;
use infergate_trainer::{export, pipeline, quantize};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let registry = Registry::open(&args[1])?;
    let record = registry.resolve(&args[2], &args[3])?;
    let arch: Arch = serde_json::from_value(record.architecture.clone())?;
    let weights = registry.read_artifact(
        record
            .artifact(ArtifactKind::Safetensors)
            .expect("float version"),
    )?;
    let net = CandleFactory::net_from_safetensors(arch, &weights, "bench")?;
    let (train, test) = data::fashion_mnist(std::path::Path::new(FASHION_MNIST_DIR))?;
    let calibration = train.subset(&(0..2000).collect::<Vec<_>>());
    let lib = discover(
        None,
        std::env::var_os("ORT_DYLIB_PATH")
            .as_deref()
            .map(std::path::Path::new),
    )?;
    let ort = OrtRuntime::init(&lib)?;
    let float = export::onnx(&net)?;
    let int8 = quantize::quantize(&net, &calibration)?;
    if let Ok(path) = std::env::var("QUANT_BENCH_WRITE") {
        std::fs::write(format!("{path}.float.onnx"), export::onnx(&net)?)?;
        std::fs::write(format!("{path}.int8.onnx"), &int8)?;
    }
    let b1 = pipeline::ort_latencies(&ort, &[&float, &int8], &test, 1)?;
    let b64 = pipeline::ort_latencies(&ort, &[&float, &int8], &test, 64)?;
    for (i, (name, model)) in [("float", &float), ("int8", &int8)].into_iter().enumerate() {
        let logits = pipeline::ort_logits(&ort, model, &test, 10)?;
        let acc = evaluate(&logits, &test.y, 10).accuracy;
        println!(
            "{name}: {} bytes, accuracy {acc:.4}, {:.3} ms at batch 1, {:.3} ms at batch 64",
            model.len(),
            b1[i],
            b64[i]
        );
    }
    Ok(())
}
