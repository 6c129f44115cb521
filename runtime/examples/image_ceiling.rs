//! The in-process ceiling of an image model: the server's own decoder/preprocessing and backend
//! called in a loop in one process, no network, no queue; the images of a batch are decoded on
//! every core at once, then the batch runs. `make bench` runs the server against it in the
//! same run.
//!
//! usage: image_ceiling ORT_LIBRARY VERSION_DIR onnx|candle SECONDS BATCH IMAGE...
//! prints one JSON line per batch size: images/s, and the share of each call spent decoding
//! and preprocessing vs in the model.

// The server's allocator (mimalloc), so that the ceiling and the server allocate alike.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::Path;
use std::time::{Duration, Instant};

use infergate_config::{ImageBackend, ImageInput};
use infergate_runtime::image::{ImageFactory, ImageProcessor, PIXELS_INPUT};
use infergate_runtime::ort::OrtRuntime;
use infergate_runtime::{BackendFactory, NamedTensor, StageTimings, Tensor};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [library, dir, backend, seconds, batches, images @ ..] = &args[..] else {
        return Err(
            "usage: image_ceiling ORT_LIBRARY VERSION_DIR onnx|candle SECONDS BATCHES IMAGE..."
                .into(),
        );
    };
    let config = ImageInput {
        backend: if backend == "candle" {
            ImageBackend::CandleEfficientnetLite0
        } else {
            ImageBackend::Onnx
        },
        ..ImageInput::default()
    };
    let runtime = OrtRuntime::init(Path::new(library))?;
    let factory = ImageFactory::load(Path::new(dir), &config, Some(&runtime), 0)?;
    let processor = ImageProcessor::new(config.clone());
    let mut model = factory.create()?;
    let images: Vec<Vec<u8>> = images.iter().map(std::fs::read).collect::<Result<_, _>>()?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let budget = Duration::from_secs_f64(seconds.parse()?);
    let s = i64::from(config.size);
    for batch in batches.split(',') {
        let batch: usize = batch.parse()?;
        let (mut done, mut at) = (0usize, 0usize);
        let (mut decode, mut infer, mut calls) = (Duration::ZERO, Duration::ZERO, Vec::new());
        let started = Instant::now();
        while started.elapsed() < budget {
            let call = Instant::now();
            let chunk: Vec<&[u8]> = (0..batch)
                .map(|i| images[(at + i) % images.len()].as_slice())
                .collect();
            at += batch;
            // Decode on every core: image i on thread i % cores, then in order.
            let per = batch.div_ceil(cores);
            let parts: Vec<Vec<f32>> = std::thread::scope(|scope| {
                let handles: Vec<_> = chunk
                    .chunks(per)
                    .map(|part| {
                        let processor = &processor;
                        scope.spawn(move || {
                            let mut v = Vec::new();
                            for (i, img) in part.iter().enumerate() {
                                processor.preprocess(i, img, &mut v).expect("a good image");
                            }
                            v
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("decoder thread"))
                    .collect()
            });
            let values: Vec<f32> = parts.concat();
            let decoded = Instant::now();
            let input = Tensor::from_slice(vec![batch as i64, 3, s, s], &values)?;
            let out = model.infer(
                &[NamedTensor::new(PIXELS_INPUT, input)],
                &mut StageTimings::default(),
            )?;
            std::hint::black_box(out);
            decode += decoded - call;
            infer += decoded.elapsed();
            calls.push(call.elapsed());
            done += batch;
        }
        let wall = started.elapsed().as_secs_f64();
        calls.sort();
        let p50 = calls[calls.len() / 2];
        println!(
            "{{\"batch\": {batch}, \"images_per_s\": {:.2}, \"call_p50_ms\": {:.2}, \"decode_ms_per_image\": {:.3}, \"infer_ms_per_image\": {:.3}, \"calls\": {}}}",
            done as f64 / wall,
            p50.as_secs_f64() * 1e3,
            decode.as_secs_f64() * 1e3 / done as f64,
            infer.as_secs_f64() * 1e3 / done as f64,
            calls.len()
        );
    }
    Ok(())
}
