//! `infergate-train`: trains the teacher, distills a student, quantizes to int8, registers all
//! three with lineage and metrics, promotes the teacher and writes a report.

use std::path::PathBuf;

// Training allocates and frees large activation buffers every step; mimalloc keeps them
// instead of returning them to the kernel and faulting them back in (about 1.5x faster).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use infergate_registry::Registry;
use infergate_runtime::ort::{OrtRuntime, discover};
use infergate_trainer::data::{self, FASHION_MNIST_DIR};
use infergate_trainer::pipeline::{self, Plan, Splits};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum DatasetName {
    FashionMnist,
    Digits,
}

/// Train, distill, quantize and register models for infergate.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The registry to write to.
    #[arg(long, default_value = "models/registry")]
    registry: PathBuf,
    #[arg(long, value_enum, default_value = "fashion-mnist")]
    dataset: DatasetName,
    /// Directory holding the Fashion-MNIST idx files.
    #[arg(long, default_value = FASHION_MNIST_DIR)]
    data_dir: PathBuf,
    /// Where the report and plots go.
    #[arg(long, default_value = "docs")]
    report: PathBuf,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Teacher epochs on Fashion-MNIST.
    #[arg(long, default_value_t = 4)]
    epochs: usize,
    /// Student (distillation) epochs on Fashion-MNIST.
    #[arg(long, default_value_t = 2)]
    student_epochs: usize,
    /// Use only this many training rows (0 = all).
    #[arg(long, default_value_t = 0)]
    train_rows: usize,
    /// Do nothing when the registry already has the model.
    #[arg(long)]
    if_empty: bool,
    /// Recorded as the author of the versions.
    #[arg(long, env = "USER", default_value = "infergate-train")]
    author: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let registry = Registry::open(&args.registry)?;
    let model = match args.dataset {
        DatasetName::Digits => Plan::digits(args.seed).model,
        DatasetName::FashionMnist => {
            Plan::fashion(args.seed, args.epochs, args.student_epochs).model
        }
    };
    if args.if_empty && registry.models()?.iter().any(|m| m.name == model) {
        eprintln!(
            "registry {} already has '{model}': nothing to train",
            args.registry.display()
        );
        return Ok(());
    }
    let (plan, splits, class_names) = match args.dataset {
        DatasetName::Digits => {
            let all = data::digits();
            let mut parts = all
                .stratified_split(&[0.7, 0.15, 0.15], args.seed)
                .into_iter();
            let (train, val, test) = (
                parts.next().unwrap(),
                parts.next().unwrap(),
                parts.next().unwrap(),
            );
            (
                Plan::digits(args.seed),
                Splits { train, val, test },
                all.class_names,
            )
        }
        DatasetName::FashionMnist => {
            let (train_all, test) = data::fashion_mnist(&args.data_dir)?;
            let train_all = if args.train_rows > 0 {
                train_all
                    .stratified_split(
                        &[args.train_rows as f64 / train_all.len() as f64, 0.0],
                        args.seed,
                    )
                    .swap_remove(0)
            } else {
                train_all
            };
            let mut parts = train_all
                .stratified_split(&[0.9, 0.1], args.seed)
                .into_iter();
            let (train, val) = (parts.next().unwrap(), parts.next().unwrap());
            let names = test.class_names.clone();
            (
                Plan::fashion(args.seed, args.epochs, args.student_epochs),
                Splits { train, val, test },
                names,
            )
        }
    };
    let library = discover(
        None,
        std::env::var_os("ORT_DYLIB_PATH")
            .as_deref()
            .map(std::path::Path::new),
    )?;
    let ort = OrtRuntime::init(&library)?;
    let outcome = pipeline::run(&plan, &splits, &ort, &registry, &args.author)
        .context("training pipeline")?;
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let report = pipeline::write_report(&args.report, &plan, &outcome, &class_names, &command)?;
    eprintln!(
        "registered {} versions {} (teacher), {} (distilled), {} (int8); production {}; report {}",
        plan.model,
        outcome.teacher.version,
        outcome.student.version,
        outcome.int8.version,
        match &outcome.promoted {
            Ok(()) => format!("-> {}", outcome.teacher.version),
            Err(_) => "unchanged (gate refused)".to_owned(),
        },
        report.display()
    );
    Ok(())
}
