//! The whole loop for one dataset: train the teacher, distill a student, quantize the teacher,
//! check every export against candle, measure, register with lineage, promote, report.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, ensure};
use infergate_registry::{
    ArtifactKind, Baseline, Lineage, NewArtifact, NewVersion, PLATFORM_CANDLE, PLATFORM_ONNX,
    Registry, RegistryError, VersionRecord,
};
use infergate_runtime::candle::{Arch, Net};
use infergate_runtime::ort::OrtRuntime;
use infergate_runtime::{BackendFactory, NamedTensor, StageTimings, Tensor};
use serde::Serialize;

use crate::data::Dataset;
use crate::eval::{Evaluation, confusion_svg, curves_svg, evaluate};
use crate::train::{Distill, History, TrainConfig, logits, train};
use crate::{export, quantize};

/// Which data, which networks, how long.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub model: String,
    pub teacher: Arch,
    pub student: Arch,
    pub teacher_train: TrainConfig,
    pub student_train: TrainConfig,
    /// Training rows used to calibrate int8 activation ranges.
    pub calibration_rows: usize,
    /// A fully connected network trained on its own (no teacher), registered beside the
    /// others under the alias `mlp`.
    pub mlp: Option<(Arch, TrainConfig)>,
}

impl Plan {
    /// Fashion-MNIST: a small CNN teacher; a student with the teacher's convolutions (started
    /// from the teacher's) under a classifier 5× narrower (5× fewer parameters); int8 of the
    /// teacher. Sized so that all three train in under five minutes on two cores.
    pub fn fashion(seed: u64, epochs: usize, student_epochs: usize) -> Self {
        let optimizer = |seed, epochs, distill| TrainConfig {
            epochs,
            batch_size: 128,
            learning_rate: 3e-3,
            weight_decay: 1e-4,
            patience: 2,
            seed,
            distill,
        };
        Self {
            model: "fashion".to_owned(),
            teacher: Arch::Cnn {
                height: 28,
                width: 28,
                channels: vec![12, 24],
                hidden: 128,
                classes: 10,
            },
            // The teacher's convolutional trunk (inherited) under a 5x narrower classifier.
            student: Arch::Cnn {
                height: 28,
                width: 28,
                channels: vec![12, 24],
                hidden: 24,
                classes: 10,
            },
            teacher_train: optimizer(seed, epochs, None),
            student_train: optimizer(
                seed + 1,
                student_epochs,
                Some(Distill {
                    temperature: 4.0,
                    alpha: 0.7,
                    inherit_layers: true,
                }),
            ),
            calibration_rows: 2000,
            mlp: Some((
                Arch::Mlp {
                    inputs: 784,
                    hidden: vec![256],
                    classes: 10,
                },
                TrainConfig {
                    epochs: 10,
                    batch_size: 128,
                    learning_rate: 2e-3,
                    weight_decay: 1e-4,
                    patience: 3,
                    seed: seed + 2,
                    distill: None,
                },
            )),
        }
    }

    /// The 8×8 digits: an MLP teacher and a 4×-smaller MLP student (seconds, for tests).
    pub fn digits(seed: u64) -> Self {
        Self {
            model: "digits".to_owned(),
            teacher: Arch::Mlp {
                inputs: 64,
                hidden: vec![256, 128],
                classes: 10,
            },
            student: Arch::Mlp {
                inputs: 64,
                hidden: vec![48],
                classes: 10,
            },
            teacher_train: TrainConfig {
                epochs: 40,
                batch_size: 32,
                learning_rate: 2e-3,
                weight_decay: 1e-4,
                patience: 8,
                seed,
                distill: None,
            },
            student_train: TrainConfig {
                epochs: 60,
                batch_size: 32,
                learning_rate: 3e-3,
                weight_decay: 1e-4,
                patience: 10,
                seed: seed + 1,
                distill: Some(Distill {
                    temperature: 4.0,
                    alpha: 0.7,
                    inherit_layers: false,
                }),
            },
            calibration_rows: 600,
            mlp: None,
        }
    }
}

/// Data for one run.
#[derive(Debug)]
pub struct Splits {
    pub train: Dataset,
    pub val: Dataset,
    pub test: Dataset,
}

/// One trained variant.
#[derive(Debug, Clone, Serialize)]
pub struct Variant {
    pub name: String,
    pub params: usize,
    pub eval: Evaluation,
    pub onnx_bytes: usize,
    pub safetensors_bytes: usize,
    /// ONNX Runtime latency per request (ms) at batch 1 and 64.
    pub latency_ms_b1: f64,
    pub latency_ms_b64: f64,
    /// Largest |ort − candle| over the test set (float exports only).
    pub parity_max_abs: Option<f64>,
    pub version: u32,
}

/// What a run produced.
#[derive(Debug, Serialize)]
pub struct Outcome {
    pub dataset: String,
    pub dataset_digest: String,
    pub rows: (usize, usize, usize),
    pub teacher: Variant,
    pub student: Variant,
    pub int8: Variant,
    pub mlp: Option<Variant>,
    pub teacher_history: History,
    pub student_history: History,
    /// Whether the teacher became `production` (the gate's reasons when not).
    pub promoted: Result<(), Vec<String>>,
    pub seconds: f64,
}

/// Logits from ONNX Runtime for every row of `data`.
pub fn ort_logits(
    ort: &OrtRuntime,
    onnx: &[u8],
    data: &Dataset,
    classes: usize,
) -> anyhow::Result<Vec<f32>> {
    let factory = ort.load_bytes(Arc::from(onnx), "export", 1)?;
    let mut backend = factory.create()?;
    let mut out = Vec::with_capacity(data.len() * classes);
    let idx: Vec<usize> = (0..data.len()).collect();
    for chunk in idx.chunks(1000) {
        let rows: Vec<f32> = chunk
            .iter()
            .flat_map(|&i| data.row(i).iter().copied())
            .collect();
        let input = Tensor::from_slice(vec![chunk.len() as i64, data.features as i64], &rows)?;
        let outputs = backend.infer(
            &[NamedTensor::new("input", input)],
            &mut StageTimings::default(),
        )?;
        out.extend(
            outputs[0]
                .tensor
                .to_vec::<f32>()
                .context("logits are not FP32")?,
        );
    }
    Ok(out)
}

/// Median ONNX Runtime time per call (ms) of each model at `batch` rows, one intra-op thread.
pub fn ort_latencies(
    ort: &OrtRuntime,
    models: &[&[u8]],
    data: &Dataset,
    batch: usize,
) -> anyhow::Result<Vec<f64>> {
    let mut backends = models
        .iter()
        .map(|m| ort.load_bytes(Arc::from(*m), "export", 1)?.create())
        .collect::<Result<Vec<_>, _>>()?;
    let rows: Vec<f32> = (0..batch)
        .flat_map(|i| data.row(i % data.len()).iter().copied())
        .collect();
    let input = [NamedTensor::new(
        "input",
        Tensor::from_slice(vec![batch as i64, data.features as i64], &rows)?,
    )];
    let mut t = StageTimings::default();
    for backend in &mut backends {
        for _ in 0..20 {
            backend.infer(&input, &mut t)?;
        }
    }
    // Rounds alternate between the models, so the machine's noise falls on all of them alike.
    let (rounds, per_round) = if batch == 1 { (10, 50) } else { (10, 8) };
    let mut samples = vec![Vec::with_capacity(rounds * per_round); backends.len()];
    for _ in 0..rounds {
        for (backend, out) in backends.iter_mut().zip(&mut samples) {
            for _ in 0..per_round {
                let start = Instant::now();
                backend.infer(&input, &mut t)?;
                out.push(start.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    Ok(samples
        .into_iter()
        .map(|mut s| {
            s.sort_by(f64::total_cmp);
            s[s.len() / 2]
        })
        .collect())
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| f64::from((x - y).abs()))
        .fold(0.0, f64::max)
}

struct Exported {
    variant: Variant,
    onnx: Vec<u8>,
    safetensors: Option<Vec<u8>>,
}

fn export_float(
    ort: &OrtRuntime,
    name: &str,
    net: &Net,
    splits: &Splits,
) -> anyhow::Result<Exported> {
    let classes = net.arch().classes();
    let candle_logits = logits(net, &splits.test)?;
    let onnx = export::onnx(net)?;
    let ort_out = ort_logits(ort, &onnx, &splits.test, classes)?;
    let parity = max_abs_diff(&candle_logits, &ort_out);
    ensure!(
        parity <= 1e-4,
        "{name}: ONNX export differs from candle by {parity:e} (> 1e-4)"
    );
    let safetensors = export::safetensors(net)?;
    Ok(Exported {
        variant: Variant {
            name: name.to_owned(),
            params: net.arch().param_count(),
            eval: evaluate(&candle_logits, &splits.test.y, classes),
            onnx_bytes: onnx.len(),
            safetensors_bytes: safetensors.len(),
            latency_ms_b1: 0.0,
            latency_ms_b64: 0.0,
            parity_max_abs: Some(parity),
            version: 0,
        },
        onnx,
        safetensors: Some(safetensors),
    })
}

fn metrics(v: &Variant) -> BTreeMap<String, f64> {
    BTreeMap::from([
        ("accuracy".to_owned(), v.eval.accuracy),
        ("macro_f1".to_owned(), v.eval.macro_f1),
        ("ece".to_owned(), v.eval.ece),
        ("params".to_owned(), v.params as f64),
        ("latency_ms_b1".to_owned(), v.latency_ms_b1),
        ("latency_ms_b64".to_owned(), v.latency_ms_b64),
    ])
}

/// Runs the plan on `splits`, registers the three variants in `registry` and points
/// `production` at the teacher (and `distilled`, `int8` at the others).
pub fn run(
    plan: &Plan,
    splits: &Splits,
    ort: &OrtRuntime,
    registry: &Registry,
    author: &str,
) -> anyhow::Result<Outcome> {
    let start = Instant::now();
    let classes = plan.teacher.classes();
    ensure!(
        plan.student.param_count() * 4 <= plan.teacher.param_count(),
        "the student ({} parameters) must be at least 4x smaller than the teacher ({})",
        plan.student.param_count(),
        plan.teacher.param_count()
    );
    let (teacher, teacher_history) = train(
        &plan.teacher,
        &plan.teacher_train,
        &splits.train,
        &splits.val,
        None,
        "teacher",
    )?;
    let mut t = export_float(ort, "teacher", &teacher, splits)?;

    let soft = logits(&teacher, &splits.train)?;
    let (student, student_history) = train(
        &plan.student,
        &plan.student_train,
        &splits.train,
        &splits.val,
        Some((&teacher, &soft)),
        "student",
    )?;
    let mut s = export_float(ort, "student (distilled)", &student, splits)?;

    let calibration = splits
        .train
        .subset(&(0..plan.calibration_rows.min(splits.train.len())).collect::<Vec<_>>());
    let int8 = quantize::quantize(&teacher, &calibration)?;
    let int8_logits = ort_logits(ort, &int8, &splits.test, classes)?;
    let q = Variant {
        name: "teacher int8".to_owned(),
        params: t.variant.params,
        eval: evaluate(&int8_logits, &splits.test.y, classes),
        onnx_bytes: int8.len(),
        safetensors_bytes: 0,
        latency_ms_b1: 0.0,
        latency_ms_b64: 0.0,
        parity_max_abs: None,
        version: 0,
    };

    let mut qe = Exported {
        variant: q,
        onnx: int8,
        safetensors: None,
    };
    let mut m = match &plan.mlp {
        Some((arch, cfg)) => {
            let (net, _) = train(arch, cfg, &splits.train, &splits.val, None, "mlp")?;
            Some((export_float(ort, "mlp", &net, splits)?, arch, cfg))
        }
        None => None,
    };
    {
        let mut all: Vec<&mut Exported> = vec![&mut t, &mut s, &mut qe];
        if let Some((e, _, _)) = &mut m {
            all.push(e);
        }
        let models: Vec<&[u8]> = all.iter().map(|e| e.onnx.as_slice()).collect();
        let b1 = ort_latencies(ort, &models, &splits.test, 1)?;
        let b64 = ort_latencies(ort, &models, &splits.test, 64)?;
        for ((e, b1), b64) in all.into_iter().zip(b1).zip(b64) {
            e.variant.latency_ms_b1 = b1;
            e.variant.latency_ms_b64 = b64;
        }
    }

    let digest = splits.train.digest();
    let baseline = Baseline::from_rows(
        &splits.train.x,
        splits.train.features,
        10,
        &splits.train.y,
        classes,
    );
    let lineage = |cfg: Option<&TrainConfig>, arch: &Arch| Lineage {
        dataset_digest: Some(digest.clone()),
        dataset: Some(splits.train.name.clone()),
        training_config: serde_json::json!({"train": cfg, "architecture": arch}),
        code_version: Some(concat!("infergate-train ", env!("CARGO_PKG_VERSION")).to_owned()),
        ..Lineage::default()
    };
    let register = |platform: &str,
                    e: &Exported,
                    lineage: Lineage,
                    arch: &Arch,
                    what: &str|
     -> anyhow::Result<VersionRecord> {
        let mut artifacts = vec![NewArtifact {
            kind: ArtifactKind::Onnx,
            bytes: e.onnx.clone(),
        }];
        if let Some(st) = &e.safetensors {
            artifacts.push(NewArtifact {
                kind: ArtifactKind::Safetensors,
                bytes: st.clone(),
            });
        }
        Ok(registry.register(NewVersion {
            model: plan.model.clone(),
            platform: platform.to_owned(),
            artifacts,
            signature: export::signature(arch),
            metrics: metrics(&e.variant),
            lineage,
            baseline: Some(baseline.clone()),
            architecture: serde_json::to_value(arch)?,
            description: what.to_owned(),
            author: author.to_owned(),
        })?)
    };
    let tv = register(
        PLATFORM_ONNX,
        &t,
        lineage(Some(&plan.teacher_train), &plan.teacher),
        &plan.teacher,
        "teacher",
    )?;
    let mut student_lineage = lineage(Some(&plan.student_train), &plan.student);
    student_lineage.distillation_teacher = Some(format!("{}:{}", plan.model, tv.version));
    let sv = register(
        PLATFORM_CANDLE,
        &s,
        student_lineage,
        &plan.student,
        "student distilled from the teacher",
    )?;
    let mut int8_lineage = lineage(None, &plan.teacher);
    int8_lineage.parent = Some(tv.version);
    int8_lineage.quantization = Some(quantize::SCHEME.to_owned());
    let qv = register(
        PLATFORM_ONNX,
        &qe,
        int8_lineage,
        &plan.teacher,
        "teacher quantized to int8",
    )?;
    // A retrained teacher replaces production only if the model's gates allow it.
    let promoted = match registry.promote(&plan.model, tv.version, "production", false, author) {
        Ok(_) => Ok(()),
        Err(RegistryError::GateRefused { reasons, .. }) => {
            eprintln!(
                "teacher version {} stays unpromoted: {}",
                tv.version,
                reasons.join("; ")
            );
            Err(reasons)
        }
        Err(e) => return Err(e.into()),
    };
    registry.set_alias(&plan.model, "distilled", sv.version, author)?;
    registry.set_alias(&plan.model, "int8", qv.version, author)?;
    t.variant.version = tv.version;
    s.variant.version = sv.version;
    qe.variant.version = qv.version;
    let mlp = match m {
        Some((mut e, arch, cfg)) => {
            let v = register(
                PLATFORM_ONNX,
                &e,
                lineage(Some(cfg), arch),
                arch,
                "fully connected network",
            )?;
            registry.set_alias(&plan.model, "mlp", v.version, author)?;
            e.variant.version = v.version;
            Some(e.variant)
        }
        None => None,
    };
    Ok(Outcome {
        dataset: splits.train.name.clone(),
        dataset_digest: digest,
        rows: (splits.train.len(), splits.val.len(), splits.test.len()),
        teacher: t.variant,
        student: s.variant,
        int8: qe.variant,
        mlp,
        teacher_history,
        student_history,
        promoted,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Writes `training-report.md` and its plots into `dir`; returns the report's path.
pub fn write_report(
    dir: &Path,
    plan: &Plan,
    out: &Outcome,
    class_names: &[String],
    command: &str,
) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let prefix = &plan.model;
    std::fs::write(
        dir.join(format!("{prefix}-curves.svg")),
        curves_svg(&[
            ("teacher", &out.teacher_history),
            ("student", &out.student_history),
        ]),
    )?;
    std::fs::write(
        dir.join(format!("{prefix}-confusion-teacher.svg")),
        confusion_svg(&out.teacher.eval, class_names, "teacher"),
    )?;
    std::fs::write(
        dir.join(format!("{prefix}-confusion-student.svg")),
        confusion_svg(&out.student.eval, class_names, "student"),
    )?;
    let pts = |a: f64, b: f64| (a - b) * 100.0;
    let mut md = format!(
        "# Training report: {prefix}\n\nProduced by `{command}` on a 2-core shared machine in {:.0} s \
         (train/validation/test rows: {} / {} / {}, dataset `{}` sha256 `{}`).\n\n\
         | variant | version | parameters | test accuracy | macro F1 | ECE | ONNX bytes | ort ms/req b1 | ort ms/req b64 | ort vs candle max abs |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
        out.seconds,
        out.rows.0,
        out.rows.1,
        out.rows.2,
        out.dataset,
        &out.dataset_digest[..16]
    );
    for v in [&out.teacher, &out.student, &out.int8]
        .into_iter()
        .chain(&out.mlp)
    {
        md += &format!(
            "| {} | {} | {} | {:.4} | {:.4} | {:.4} | {} | {:.3} | {:.3} | {} |\n",
            v.name,
            v.version,
            v.params,
            v.eval.accuracy,
            v.eval.macro_f1,
            v.eval.ece,
            v.onnx_bytes,
            v.latency_ms_b1,
            v.latency_ms_b64,
            v.parity_max_abs
                .map_or("n/a (int8)".to_owned(), |p| format!("{p:.1e}"))
        );
    }
    md += &match &out.promoted {
        Ok(()) => format!(
            "\nThe teacher (version {}) was promoted to `production`; `distilled` and `int8` point at versions {} and {}.\n",
            out.teacher.version, out.student.version, out.int8.version
        ),
        Err(reasons) => format!(
            "\nThe promotion gate kept the previous `production`: {}.\n",
            reasons.join("; ")
        ),
    };
    md += &format!(
        "\n## Distillation\n\nStudent: {:.1}× fewer parameters than the teacher; accuracy cost {:.2} points \
         (target ≤ 1.5); ort speed-up {:.2}× at batch 1, {:.2}× at batch 64.\n\n\
         ## int8 quantization ({})\n\nAccuracy delta {:+.2} points (target ≥ −0.5); ONNX size {:.2}× smaller (target ≥ 3.5×); \
         ort speed-up {:.2}× at batch 1, {:.2}× at batch 64.\n\n",
        out.teacher.params as f64 / out.student.params.max(1) as f64,
        pts(out.teacher.eval.accuracy, out.student.eval.accuracy),
        out.teacher.latency_ms_b1 / out.student.latency_ms_b1,
        out.teacher.latency_ms_b64 / out.student.latency_ms_b64,
        quantize::SCHEME,
        pts(out.int8.eval.accuracy, out.teacher.eval.accuracy),
        out.teacher.onnx_bytes as f64 / out.int8.onnx_bytes as f64,
        out.teacher.latency_ms_b1 / out.int8.latency_ms_b1,
        out.teacher.latency_ms_b64 / out.int8.latency_ms_b64,
    );
    md += &format!(
        "## Curves and confusion matrices\n\n![curves]({prefix}-curves.svg)\n\n![teacher]({prefix}-confusion-teacher.svg)\n\n![student]({prefix}-confusion-student.svg)\n\n\
         ## Per-class metrics of the teacher\n\n| class | precision | recall | F1 | support |\n|---|---|---|---|---|\n"
    );
    for (c, m) in out.teacher.eval.per_class.iter().enumerate() {
        md += &format!(
            "| {} | {:.3} | {:.3} | {:.3} | {} |\n",
            class_names.get(c).map_or("?", String::as_str),
            m.precision,
            m.recall,
            m.f1,
            m.support
        );
    }
    md += &format!(
        "\n## Training runs\n\nTeacher: {} epochs run, best epoch {}{}. Student: {} epochs run, best epoch {}{}.\n\n\
         Plan (architectures and optimizer settings):\n\n```json\n{}\n```\n",
        out.teacher_history.epochs.len(),
        out.teacher_history.best_epoch,
        if out.teacher_history.stopped_early {
            " (early stop)"
        } else {
            ""
        },
        out.student_history.epochs.len(),
        out.student_history.best_epoch,
        if out.student_history.stopped_early {
            " (early stop)"
        } else {
            ""
        },
        serde_json::to_string_pretty(plan)?
    );
    let path = dir.join("training-report.md");
    std::fs::write(&path, md)?;
    Ok(path)
}
