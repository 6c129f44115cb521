//! The in-process ceiling of a text-embedding model: the server's own tokenizer and backend
//! called in a loop in one process, no network, no queue. `make bench` runs the server against
//! it in the same run.
//!
//! usage: embed_ceiling ORT_LIBRARY VERSION_DIR onnx|candle TEXT_FILE SECONDS BATCH...
//! prints one JSON line per batch size: embeddings/s and the p50 of one call.

// The server's allocator (mimalloc), so that the ceiling and the server allocate alike.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::Path;
use std::time::{Duration, Instant};

use infergate_config::{TextBackend, TextEmbedding};
use infergate_runtime::ort::OrtRuntime;
use infergate_runtime::text::{EmbeddingFactory, TEXT_INPUT, TextModelFiles};
use infergate_runtime::{BackendFactory, NamedTensor, StageTimings, Tensor};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [library, dir, backend, texts, seconds, batches @ ..] = &args[..] else {
        return Err(
            "usage: embed_ceiling ORT_LIBRARY VERSION_DIR onnx|candle TEXT_FILE SECONDS BATCH..."
                .into(),
        );
    };
    let config = TextEmbedding {
        backend: if backend == "candle" {
            TextBackend::Candle
        } else {
            TextBackend::Onnx
        },
        ..TextEmbedding::default()
    };
    let runtime = OrtRuntime::init(Path::new(library))?;
    let files = TextModelFiles::read(Path::new(dir))?;
    let factory = EmbeddingFactory::load(&files, &config, Some(&runtime), 0)?;
    let mut model = factory.create()?;
    let text = std::fs::read_to_string(texts)?;
    let texts: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let budget = Duration::from_secs_f64(seconds.parse()?);
    for batch in batches {
        let batch: usize = batch.parse()?;
        let (mut done, mut at, mut calls) = (0usize, 0usize, Vec::new());
        let started = Instant::now();
        while started.elapsed() < budget {
            let chunk: Vec<bytes::Bytes> = (0..batch)
                .map(|i| bytes::Bytes::from(texts[(at + i) % texts.len()].to_owned()))
                .collect();
            at += batch;
            let call = Instant::now();
            // The text input: tokenized, padded, run and pooled by the backend itself.
            let input = Tensor::from_elements(vec![batch as i64], chunk)?;
            let out = model.infer(
                &[NamedTensor::new(TEXT_INPUT, input)],
                &mut StageTimings::default(),
            )?;
            std::hint::black_box(out);
            calls.push(call.elapsed());
            done += batch;
        }
        let wall = started.elapsed().as_secs_f64();
        calls.sort();
        let p50 = calls[calls.len() / 2];
        println!(
            "{{\"batch\": {batch}, \"embeddings_per_s\": {:.1}, \"call_p50_ms\": {:.3}, \"calls\": {}}}",
            done as f64 / wall,
            p50.as_secs_f64() * 1e3,
            calls.len()
        );
    }
    Ok(())
}
