//! The in-process ceiling for benchmarks: one ONNX Runtime session with one intra-op thread,
//! called in a loop on this thread (no server, no channel). Prints one JSON line.
//!
//! cargo run --release -p infergate-runtime --example ort_ceiling -- MODEL.onnx BATCH SECONDS

// The server's allocator (mimalloc), so that the ceiling and the server allocate alike.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use infergate_runtime::ort::{OrtRuntime, discover};
use infergate_runtime::{BackendFactory, DataType, NamedTensor, StageTimings, Tensor};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, model, batch, seconds] = args.as_slice() else {
        return Err("usage: ort_ceiling MODEL.onnx BATCH SECONDS".into());
    };
    let batch: i64 = batch.parse()?;
    let seconds: f64 = seconds.parse()?;
    let env = std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from);
    let runtime = OrtRuntime::init(&discover(None, env.as_deref())?)?;
    let factory = runtime.load(model.as_ref(), 1)?;
    let spec = factory.signature().inputs[0].clone();
    assert_eq!(spec.dtype, DataType::Fp32, "the ceiling bench feeds FP32");
    let mut shape = spec.shape.clone();
    shape[0] = batch;
    let count: usize = shape.iter().map(|&d| d as usize).product();
    let data: Vec<f32> = (0..count)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let inputs = vec![NamedTensor::new(
        spec.name.as_str(),
        Tensor::from_slice(shape, &data)?,
    )];
    let mut backend = factory.create()?;
    let mut timings = StageTimings::default();
    for _ in 0..50 {
        backend.infer(&inputs, &mut timings)?;
    }
    let mut latencies = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs_f64(seconds) {
        let t = Instant::now();
        backend.infer(&inputs, &mut timings)?;
        latencies.push(t.elapsed());
    }
    let wall = start.elapsed().as_secs_f64();
    latencies.sort();
    let calls = latencies.len() as f64;
    println!(
        "{{\"model\":\"{model}\",\"batch\":{batch},\"calls_per_s\":{:.1},\"rows_per_s\":{:.1},\"p50_ms\":{:.4},\"p99_ms\":{:.4}}}",
        calls / wall,
        calls * batch as f64 / wall,
        latencies[latencies.len() / 2].as_secs_f64() * 1e3,
        latencies[latencies.len() * 99 / 100].as_secs_f64() * 1e3,
    );
    Ok(())
}
