//! The training loop: seeded initialization, AdamW with a cosine learning-rate schedule,
//! early stopping on validation accuracy, and optional knowledge distillation.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::time::Instant;

use candle_core::{D, DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, loss, ops};
use infergate_runtime::candle::{Arch, Net};
use serde::{Deserialize, Serialize};

use crate::data::Dataset;
use crate::rng::Rng;

/// How to train one network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub weight_decay: f64,
    /// Stop after this many epochs without a better validation accuracy.
    pub patience: usize,
    pub seed: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distill: Option<Distill>,
}

/// Knowledge-distillation settings: the loss is `alpha·T²·CE(softmax(teacher/T),
/// softmax(student/T)) + (1−alpha)·CE(labels, student)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Distill {
    pub temperature: f64,
    pub alpha: f64,
    /// Start the student's layers that have the teacher's shape (its convolutions) from the
    /// teacher's weights, as DistilBERT starts from its teacher's layers.
    #[serde(default)]
    pub inherit_layers: bool,
}

/// One epoch of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochStats {
    pub epoch: usize,
    pub train_loss: f64,
    pub val_accuracy: f64,
    pub learning_rate: f64,
    pub seconds: f64,
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    pub epochs: Vec<EpochStats>,
    pub best_epoch: usize,
    pub stopped_early: bool,
}

/// Parameters drawn from `seed`: weights uniform in ±sqrt(6/fan_in) (He), biases zero.
pub fn init_params(arch: &Arch, seed: u64) -> candle_core::Result<Vec<(String, Var)>> {
    let mut rng = Rng::new(seed);
    arch.params()
        .into_iter()
        .map(|p| {
            let n: usize = p.shape.iter().product();
            let data: Vec<f32> = if p.name.ends_with(".bias") {
                vec![0.0; n]
            } else {
                let bound = (6.0 / p.fan_in as f64).sqrt();
                (0..n)
                    .map(|_| ((rng.uniform() * 2.0 - 1.0) * bound) as f32)
                    .collect()
            };
            Ok((
                p.name,
                Var::from_tensor(&Tensor::from_vec(data, p.shape, &Device::Cpu)?)?,
            ))
        })
        .collect()
}

fn net_of(arch: &Arch, vars: &[(String, Var)], detach: bool) -> anyhow::Result<Net> {
    let params: HashMap<String, Tensor> = vars
        .iter()
        .map(|(n, v)| {
            let t = if detach {
                v.as_tensor().detach().copy()?
            } else {
                v.as_tensor().clone()
            };
            Ok((n.clone(), t))
        })
        .collect::<candle_core::Result<_>>()?;
    Ok(Net::new(arch.clone(), params)?)
}

/// Rows `idx` of `data` as a `[len, features]` tensor.
fn batch(data: &Dataset, idx: &[usize]) -> candle_core::Result<Tensor> {
    let mut x = Vec::with_capacity(idx.len() * data.features);
    for &i in idx {
        x.extend_from_slice(data.row(i));
    }
    Tensor::from_vec(x, (idx.len(), data.features), &Device::Cpu)
}

/// Logits of `net` for every row of `data`, row-major `[len, classes]`.
pub fn logits(net: &Net, data: &Dataset) -> candle_core::Result<Vec<f32>> {
    let mut out = Vec::with_capacity(data.len() * net.arch().classes());
    let idx: Vec<usize> = (0..data.len()).collect();
    for chunk in idx.chunks(1000) {
        out.extend(
            net.forward(&batch(data, chunk)?)?
                .flatten_all()?
                .to_vec1::<f32>()?,
        );
    }
    Ok(out)
}

/// Share of rows whose arg-max logit is the label.
pub fn accuracy(logits: &[f32], labels: &[u32], classes: usize) -> f64 {
    let correct = logits
        .chunks(classes)
        .zip(labels)
        .filter(|(row, y)| argmax(row) == **y as usize)
        .count();
    correct as f64 / labels.len().max(1) as f64
}

pub fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 { (i, v) } else { best }
        })
        .0
}

/// Trains `arch` on `train`, early-stopping on `val`; `teacher` holds teacher logits for
/// every row of `train` when distilling. Returns the best network seen.
pub fn train(
    arch: &Arch,
    cfg: &TrainConfig,
    train: &Dataset,
    val: &Dataset,
    teacher: Option<(&Net, &[f32])>,
    label: &str,
) -> anyhow::Result<(Net, History)> {
    let mut vars = init_params(arch, cfg.seed)?;
    if let (Some(d), Some((net, _))) = (cfg.distill, teacher)
        && d.inherit_layers
    {
        for (name, var) in &mut vars {
            if let Some(t) = net.params().get(name).filter(|t| t.dims() == var.dims()) {
                *var = Var::from_tensor(&t.copy()?)?;
            }
        }
    }
    let teacher = teacher.map(|(_, logits)| logits);
    let mut opt = AdamW::new(
        vars.iter().map(|(_, v)| v.clone()).collect(),
        ParamsAdamW {
            lr: cfg.learning_rate,
            weight_decay: cfg.weight_decay,
            ..ParamsAdamW::default()
        },
    )?;
    let classes = arch.classes();
    let steps_per_epoch = train.len().div_ceil(cfg.batch_size);
    let total_steps = (steps_per_epoch * cfg.epochs).max(1);
    let mut rng = Rng::new(cfg.seed.wrapping_add(1));
    let mut order: Vec<usize> = (0..train.len()).collect();
    let mut history = History::default();
    let mut best: Option<(f64, Net)> = None;
    let mut step = 0;
    let tty = std::io::stderr().is_terminal();
    for epoch in 1..=cfg.epochs {
        let start = Instant::now();
        rng.shuffle(&mut order);
        let mut loss_sum = 0.0;
        let mut lr = cfg.learning_rate;
        for (b, idx) in order.chunks(cfg.batch_size).enumerate() {
            // Cosine decay to 5% of the initial rate.
            let progress = step as f64 / total_steps as f64;
            lr = cfg.learning_rate
                * (0.05 + 0.95 * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()));
            opt.set_learning_rate(lr);
            let net = net_of(arch, &vars, false)?;
            let x = batch(train, idx)?;
            let y = Tensor::from_vec(
                idx.iter().map(|&i| train.y[i]).collect::<Vec<_>>(),
                idx.len(),
                &Device::Cpu,
            )?;
            let out = net.forward(&x)?;
            let hard = loss::cross_entropy(&out, &y)?;
            let l = match (cfg.distill, teacher) {
                (Some(d), Some(t)) => {
                    let mut soft = Vec::with_capacity(idx.len() * classes);
                    for &i in idx {
                        soft.extend_from_slice(&t[i * classes..(i + 1) * classes]);
                    }
                    let t_logits = Tensor::from_vec(soft, (idx.len(), classes), &Device::Cpu)?;
                    let p_t = ops::softmax(&(t_logits / d.temperature)?, D::Minus1)?;
                    let log_p_s = ops::log_softmax(&(&out / d.temperature)?, D::Minus1)?;
                    let kd = ((p_t * log_p_s)?.sum(D::Minus1)?.mean_all()?.neg()?
                        * (d.temperature * d.temperature))?;
                    ((kd * d.alpha)? + (hard * (1.0 - d.alpha))?)?
                }
                _ => hard,
            };
            opt.backward_step(&l)?;
            loss_sum += f64::from(l.to_dtype(DType::F32)?.to_scalar::<f32>()?);
            step += 1;
            if tty && b % 10 == 0 {
                let done = (b + 1) * 30 / steps_per_epoch;
                eprint!(
                    "\r{label} epoch {epoch}/{} [{}{}] {:>3}%",
                    cfg.epochs,
                    "#".repeat(done),
                    ".".repeat(30 - done),
                    (b + 1) * 100 / steps_per_epoch
                );
                let _ = std::io::stderr().flush();
            }
        }
        let snapshot = net_of(arch, &vars, true)?;
        let val_accuracy = accuracy(&logits(&snapshot, val)?, &val.y, classes);
        let stats = EpochStats {
            epoch,
            train_loss: loss_sum / steps_per_epoch as f64,
            val_accuracy,
            learning_rate: lr,
            seconds: start.elapsed().as_secs_f64(),
        };
        eprintln!(
            "{}{label} epoch {epoch}/{}: loss {:.4}, val accuracy {:.4} ({:.1}s)",
            if tty { "\r" } else { "" },
            cfg.epochs,
            stats.train_loss,
            val_accuracy,
            stats.seconds
        );
        history.epochs.push(stats);
        if best.as_ref().is_none_or(|(acc, _)| val_accuracy > *acc) {
            best = Some((val_accuracy, snapshot));
            history.best_epoch = epoch;
        } else if epoch - history.best_epoch >= cfg.patience {
            history.stopped_early = true;
            break;
        }
    }
    let (_, net) = best.ok_or_else(|| anyhow::anyhow!("no epochs were run"))?;
    Ok((net, history))
}
