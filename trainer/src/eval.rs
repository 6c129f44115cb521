//! Evaluation (accuracy, per-class precision/recall/F1, confusion matrix, expected calibration
//! error) and the SVG plots written next to the report.

use std::fmt::Write;

use serde::Serialize;

use crate::train::{History, argmax};

/// Precision, recall and F1 of one class.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ClassMetrics {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: u32,
}

/// Test-set quality of a model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evaluation {
    pub accuracy: f64,
    pub macro_f1: f64,
    /// Expected calibration error over 15 equal-width confidence bins.
    pub ece: f64,
    pub per_class: Vec<ClassMetrics>,
    /// `confusion[true][predicted]`.
    pub confusion: Vec<Vec<u32>>,
}

/// Evaluates row-major `logits` `[len, classes]` against `labels`.
pub fn evaluate(logits: &[f32], labels: &[u32], classes: usize) -> Evaluation {
    let mut confusion = vec![vec![0u32; classes]; classes];
    const BINS: usize = 15;
    let mut bins = [(0usize, 0f64, 0f64); BINS];
    for (row, &y) in logits.chunks(classes).zip(labels) {
        let pred = argmax(row);
        confusion[y as usize][pred] += 1;
        let max = row[pred];
        let sum: f64 = row.iter().map(|&v| f64::from(v - max).exp()).sum();
        let confidence = 1.0 / sum;
        let b = ((confidence * BINS as f64) as usize).min(BINS - 1);
        bins[b].0 += 1;
        bins[b].1 += confidence;
        bins[b].2 += f64::from(u8::from(pred == y as usize));
    }
    let n = labels.len().max(1) as f64;
    let ece = bins
        .iter()
        .filter(|b| b.0 > 0)
        .map(|&(count, conf, correct)| {
            (count as f64 / n) * (conf / count as f64 - correct / count as f64).abs()
        })
        .sum();
    let per_class: Vec<ClassMetrics> = (0..classes)
        .map(|c| {
            let tp = f64::from(confusion[c][c]);
            let predicted: f64 = (0..classes).map(|t| f64::from(confusion[t][c])).sum();
            let support: u32 = confusion[c].iter().sum();
            let precision = if predicted > 0.0 { tp / predicted } else { 0.0 };
            let recall = if support > 0 {
                tp / f64::from(support)
            } else {
                0.0
            };
            let f1 = if precision + recall > 0.0 {
                2.0 * precision * recall / (precision + recall)
            } else {
                0.0
            };
            ClassMetrics {
                precision,
                recall,
                f1,
                support,
            }
        })
        .collect();
    Evaluation {
        accuracy: (0..classes)
            .map(|c| f64::from(confusion[c][c]))
            .sum::<f64>()
            / n,
        macro_f1: per_class.iter().map(|m| m.f1).sum::<f64>() / classes.max(1) as f64,
        ece,
        per_class,
        confusion,
    }
}

/// Two panels per epoch, one line per run: validation accuracy, and training loss relative to
/// the run's first epoch (distillation and plain losses differ in scale).
pub fn curves_svg(runs: &[(&str, &History)]) -> String {
    let (pw, ph, pad) = (360.0, 280.0, 48.0);
    let colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];
    let epochs = runs
        .iter()
        .map(|(_, r)| r.epochs.len())
        .max()
        .unwrap_or(1)
        .max(2) as f64;
    let accs = runs
        .iter()
        .flat_map(|(_, r)| r.epochs.iter().map(|e| e.val_accuracy));
    let (lo, hi) = accs.fold((1.0f64, 0.0f64), |(lo, hi), a| (lo.min(a), hi.max(a)));
    let (lo, hi) = ((lo - 0.01).max(0.0), (hi + 0.01).min(1.0));
    let rel = |r: &History, e: &crate::train::EpochStats| {
        e.train_loss / r.epochs[0].train_loss.max(1e-12)
    };
    let max_rel = runs
        .iter()
        .flat_map(|(_, r)| r.epochs.iter().map(move |e| rel(r, e)))
        .fold(1.0f64, f64::max);
    let x = |left: f64, e: usize| left + pad + (e as f64 - 1.0) / (epochs - 1.0) * (pw - 1.5 * pad);
    let y = |v: f64| ph - pad - v * (ph - 2.0 * pad);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{ph}\" font-family=\"sans-serif\" font-size=\"12\">\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>",
        2.0 * pw
    );
    for (panel, title) in ["validation accuracy", "training loss / first epoch"]
        .iter()
        .enumerate()
    {
        let left = panel as f64 * pw;
        let _ = write!(
            svg,
            "<text x=\"{}\" y=\"20\">{title}</text>\
             <line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\
             <line x1=\"{}\" y1=\"{pad}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\
             <text x=\"{}\" y=\"{}\">epoch 1 … {epochs}</text>",
            left + pad,
            left + pad,
            ph - pad,
            left + pw - pad / 2.0,
            ph - pad,
            left + pad,
            left + pad,
            ph - pad,
            left + pw / 2.0 - 20.0,
            ph - 15.0
        );
        let (bottom, top) = if panel == 0 { (lo, hi) } else { (0.0, max_rel) };
        for (v, yy) in [(bottom, y(0.0)), (top, y(1.0))] {
            let _ = write!(
                svg,
                "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{v:.3}</text>",
                left + pad - 4.0,
                yy + 4.0
            );
        }
    }
    for (i, (name, run)) in runs.iter().enumerate() {
        let color = colors[i % colors.len()];
        let acc: Vec<String> = run
            .epochs
            .iter()
            .map(|e| {
                format!(
                    "{:.1},{:.1}",
                    x(0.0, e.epoch),
                    y((e.val_accuracy - lo) / (hi - lo))
                )
            })
            .collect();
        let loss: Vec<String> = run
            .epochs
            .iter()
            .map(|e| format!("{:.1},{:.1}", x(pw, e.epoch), y(rel(run, e) / max_rel)))
            .collect();
        let _ = write!(
            svg,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>\
             <polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>\
             <text x=\"{}\" y=\"{}\" fill=\"{color}\">{name}</text>",
            acc.join(" "),
            loss.join(" "),
            2.0 * pw - 90.0,
            40.0 + 16.0 * i as f64
        );
    }
    svg.push_str("</svg>");
    svg
}

/// The confusion matrix as a heat map with counts.
pub fn confusion_svg(eval: &Evaluation, names: &[String], title: &str) -> String {
    let k = eval.confusion.len();
    let (cell, left, top) = (44.0, 110.0, 40.0);
    let size = left + cell * k as f64 + 20.0;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{size}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"11\">\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/><text x=\"10\" y=\"20\">{title} (rows: true class, columns: predicted)</text>",
        top + cell * k as f64 + 20.0
    );
    for (t, row) in eval.confusion.iter().enumerate() {
        let total = row.iter().sum::<u32>().max(1) as f64;
        let _ = write!(
            svg,
            "<text x=\"5\" y=\"{}\">{}</text>",
            top + cell * t as f64 + cell / 2.0 + 4.0,
            names.get(t).map_or("", String::as_str)
        );
        for (p, &count) in row.iter().enumerate() {
            let shade = 255 - (f64::from(count) / total * 255.0) as u8;
            let _ = write!(
                svg,
                "<rect x=\"{:.0}\" y=\"{:.0}\" width=\"{cell}\" height=\"{cell}\" fill=\"rgb({shade},{shade},255)\" stroke=\"#ccc\"/>\
                 <text x=\"{:.0}\" y=\"{:.0}\" text-anchor=\"middle\" fill=\"{}\">{count}</text>",
                left + cell * p as f64,
                top + cell * t as f64,
                left + cell * p as f64 + cell / 2.0,
                top + cell * t as f64 + cell / 2.0 + 4.0,
                if shade < 128 { "white" } else { "black" }
            );
        }
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_of_a_known_confusion() {
        // Rows: (true 0, pred 0), (0, 1), (1, 1), (1, 1).
        let logits = [2.0, 0.0, 0.0, 2.0, 0.0, 3.0, 0.0, 1.0];
        let e = evaluate(&logits, &[0, 0, 1, 1], 2);
        assert_eq!(e.confusion, vec![vec![1, 1], vec![0, 2]]);
        assert!((e.accuracy - 0.75).abs() < 1e-12);
        assert!((e.per_class[0].precision - 1.0).abs() < 1e-12);
        assert!((e.per_class[0].recall - 0.5).abs() < 1e-12);
        assert!((e.per_class[1].precision - 2.0 / 3.0).abs() < 1e-12);
        assert!((e.per_class[1].f1 - 0.8).abs() < 1e-12);
        assert!(e.ece > 0.0 && e.ece < 1.0);
    }
}
