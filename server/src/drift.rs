//! Drift detection: live inputs and predictions against the training baseline the registry
//! keeps with a version (per-feature quantile bins and the class distribution).
//!
//! One request in `drift.sample_every` gives its first row; `drift.window_rows` sampled rows make
//! a window. When a window closes, the population stability index (PSI) is computed per
//! feature and for the predicted classes, published (metrics, `GET /admin/models/{m}/drift`),
//! and, when the largest crosses `drift.psi_threshold`, logged once as a warning. Sampling
//! keeps the cost off the hot path: a counter per request, a one-row copy for the sampled ones.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use infergate_config::DriftConfig;
use infergate_registry::Baseline;
use infergate_runtime::{DataType, NamedTensor};
use serde::Serialize;

/// Probability floor in PSI, so an empty bin does not make it infinite.
const EPSILON: f64 = 1e-4;

/// The population stability index of observed `counts` against `expected` fractions.
pub fn psi(expected: &[f64], counts: &[u64]) -> f64 {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return 0.0;
    }
    expected
        .iter()
        .zip(counts)
        .map(|(&e, &c)| {
            let e = e.max(EPSILON);
            let a = (c as f64 / total as f64).max(EPSILON);
            (a - e) * (a / e).ln()
        })
        .sum()
}

/// What a text model's drift compares per sampled input: its tokens, and the length of its
/// pooled vector before normalization.
pub const TEXT_FEATURES: [&str; 2] = ["tokens", "embedding_norm"];

/// One input's row of [`TEXT_FEATURES`]: `tokens` and the pooled (unnormalized) vector.
pub fn text_row(tokens: usize, pooled: &[f32]) -> [f32; 2] {
    let norm = pooled.iter().map(|x| x * x).sum::<f32>().sqrt();
    [tokens as f32, norm]
}

/// A closed window's comparison with the baseline.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DriftReport {
    pub rows: usize,
    /// The compared features' names, where they have names (text models: [`TEXT_FEATURES`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<&'static str>,
    /// PSI per input feature, in feature order.
    pub feature_psi: Vec<f64>,
    pub max_feature_psi: f64,
    pub mean_feature_psi: f64,
    /// Features whose PSI is over the threshold.
    pub features_over_threshold: usize,
    /// PSI of the predicted-class distribution against the training labels'.
    pub class_psi: f64,
    pub threshold: f64,
    /// Whether the largest PSI (features or classes) is over the threshold.
    pub drifted: bool,
}

/// One closed window, for the history the console plots.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DriftPoint {
    /// Unix milliseconds when the window closed.
    pub at_ms: u64,
    pub rows: usize,
    pub max_feature_psi: f64,
    pub mean_feature_psi: f64,
    pub class_psi: f64,
    pub drifted: bool,
}

/// The last closed window beside the training baseline: the predicted classes, and the
/// feature that moved most.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Distributions {
    pub baseline_classes: Vec<f64>,
    pub live_classes: Vec<f64>,
    /// Index (and name, for text models) of the feature with the largest PSI.
    pub feature: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feature_name: Option<&'static str>,
    pub feature_psi: f64,
    /// Interior bin edges of that feature; `edges.len() + 1` bins.
    pub edges: Vec<f64>,
    pub baseline_bins: Vec<f64>,
    pub live_bins: Vec<f64>,
}

/// Closed windows kept in the history.
const HISTORY: usize = 240;

struct Window {
    rows: usize,
    bins: Vec<Vec<u64>>,
    classes: Vec<u64>,
}

/// The drift monitor of one model version.
pub struct Drift {
    model: String,
    version: String,
    baseline: Baseline,
    /// The FP32 input whose rows are compared; empty for a text model, whose rows are
    /// [`TEXT_FEATURES`] (observed by the tokenize stage).
    input: String,
    config: DriftConfig,
    seen: AtomicU64,
    window: Mutex<Window>,
    last: Mutex<Option<DriftReport>>,
    /// Closed windows, oldest first, and the last one's distributions.
    history: Mutex<(
        std::collections::VecDeque<DriftPoint>,
        Option<Distributions>,
    )>,
}

impl std::fmt::Debug for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Drift({}:{})", self.model, self.version)
    }
}

impl Drift {
    /// A monitor when the version's signature has an FP32 input of as many features per row as
    /// the baseline has (else none: nothing to compare).
    pub fn new(
        model: &str,
        version: &str,
        baseline: Baseline,
        signature: &infergate_runtime::Signature,
        config: &DriftConfig,
    ) -> Option<Self> {
        let features = baseline.features.len();
        let input = signature.inputs.iter().find(|s| {
            s.dtype == DataType::Fp32
                && s.shape.len() >= 2
                && s.shape[1..].iter().all(|&d| d > 0)
                && s.shape[1..].iter().product::<i64>() as usize == features
        })?;
        Some(Self {
            model: model.to_string(),
            version: version.to_string(),
            input: input.name.clone(),
            window: Mutex::new(Window::empty(&baseline)),
            baseline,
            config: config.clone(),
            seen: AtomicU64::new(0),
            last: Mutex::new(None),
            history: Mutex::default(),
        })
    }

    /// A text model's monitor: [`TEXT_FEATURES`] against a baseline of as many features.
    pub fn for_text(
        model: &str,
        version: &str,
        baseline: Baseline,
        config: &DriftConfig,
    ) -> Option<Self> {
        (baseline.features.len() == TEXT_FEATURES.len()).then(|| Self {
            model: model.to_string(),
            version: version.to_string(),
            input: String::new(),
            window: Mutex::new(Window::empty(&baseline)),
            baseline,
            config: config.clone(),
            seen: AtomicU64::new(0),
            last: Mutex::new(None),
            history: Mutex::default(),
        })
    }

    /// Whether this monitors a text model (rows come from the tokenize stage, not an input).
    pub fn on_text(&self) -> bool {
        self.input.is_empty()
    }

    /// Whether this request is one of the sampled (one in `sample_every`).
    pub fn should_sample(&self) -> bool {
        let n = self.seen.fetch_add(1, Ordering::Relaxed);
        n.is_multiple_of(u64::from(self.config.sample_every.max(1)))
    }

    /// The first row of the compared input, copied (for a sampled request).
    pub fn first_row(&self, inputs: &[NamedTensor]) -> Option<Vec<f32>> {
        let tensor = &inputs.iter().find(|i| *i.name == *self.input)?.tensor;
        let features = self.baseline.features.len();
        let raw = tensor.to_raw();
        let row = raw.get(..features * 4)?;
        Some(
            row.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        )
    }

    /// Adds a sampled row and the prediction the model made for it (arg-max of the first
    /// output's first row); closes the window when it is full.
    pub fn observe(&self, row: &[f32], outputs: &[NamedTensor]) {
        let class = outputs.first().and_then(|o| {
            let classes = self.baseline.class_distribution.len();
            let raw = o.tensor.to_raw();
            if o.tensor.dtype() != DataType::Fp32 || raw.len() < classes * 4 || classes == 0 {
                return None;
            }
            raw[..classes * 4]
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .map(|(i, _)| i)
        });
        let closed = {
            let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
            for (f, &v) in row.iter().enumerate() {
                if let Some(feature) = self.baseline.features.get(f) {
                    w.bins[f][feature.bin(f64::from(v))] += 1;
                }
            }
            if let Some(c) = class {
                w.classes[c] += 1;
            }
            w.rows += 1;
            if w.rows >= self.config.window_rows {
                Some(std::mem::replace(&mut *w, Window::empty(&self.baseline)))
            } else {
                None
            }
        };
        if let Some(window) = closed {
            let report = self.report(&window);
            if report.drifted {
                tracing::warn!(
                    model = %self.model,
                    version = %self.version,
                    max_feature_psi = report.max_feature_psi,
                    class_psi = report.class_psi,
                    features_over_threshold = report.features_over_threshold,
                    threshold = report.threshold,
                    rows = report.rows,
                    "input drift: live traffic no longer looks like the training data"
                );
            }
            self.remember(&report, &window);
            *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(report);
        }
    }

    fn remember(&self, report: &DriftReport, window: &Window) {
        let fractions = |counts: &[u64]| {
            let total = counts.iter().sum::<u64>().max(1) as f64;
            counts
                .iter()
                .map(|&c| c as f64 / total)
                .collect::<Vec<f64>>()
        };
        let feature = report
            .feature_psi
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or(0, |(i, _)| i);
        let distributions = self.baseline.features.get(feature).map(|f| Distributions {
            baseline_classes: self.baseline.class_distribution.clone(),
            live_classes: fractions(&window.classes),
            feature,
            feature_name: report.features.get(feature).copied(),
            feature_psi: report.feature_psi.get(feature).copied().unwrap_or(0.0),
            edges: f.edges.clone(),
            baseline_bins: f.fractions.clone(),
            live_bins: fractions(&window.bins[feature]),
        });
        let point = DriftPoint {
            at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            rows: report.rows,
            max_feature_psi: report.max_feature_psi,
            mean_feature_psi: report.mean_feature_psi,
            class_psi: report.class_psi,
            drifted: report.drifted,
        };
        let mut h = self.history.lock().unwrap_or_else(|e| e.into_inner());
        if h.0.len() == HISTORY {
            h.0.pop_front();
        }
        h.0.push_back(point);
        h.1 = distributions;
    }

    /// Closed windows, oldest first (the last [`HISTORY`]), and the last one's distributions
    /// beside the baseline's.
    pub fn history(&self) -> (Vec<DriftPoint>, Option<Distributions>) {
        let h = self.history.lock().unwrap_or_else(|e| e.into_inner());
        (h.0.iter().cloned().collect(), h.1.clone())
    }

    fn report(&self, w: &Window) -> DriftReport {
        let feature_psi: Vec<f64> = self
            .baseline
            .features
            .iter()
            .zip(&w.bins)
            .map(|(f, counts)| psi(&f.fractions, counts))
            .collect();
        let max_feature_psi = feature_psi.iter().copied().fold(0.0, f64::max);
        let mean_feature_psi = feature_psi.iter().sum::<f64>() / feature_psi.len().max(1) as f64;
        let threshold = self.config.psi_threshold;
        let class_psi = psi(&self.baseline.class_distribution, &w.classes);
        DriftReport {
            rows: w.rows,
            features: if self.on_text() {
                TEXT_FEATURES.to_vec()
            } else {
                Vec::new()
            },
            features_over_threshold: feature_psi.iter().filter(|&&p| p > threshold).count(),
            drifted: max_feature_psi.max(class_psi) > threshold,
            feature_psi,
            max_feature_psi,
            mean_feature_psi,
            class_psi,
            threshold,
        }
    }

    /// The last closed window's report, and how many rows the open one holds.
    pub fn state(&self) -> (Option<DriftReport>, usize) {
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let open = self.window.lock().unwrap_or_else(|e| e.into_inner()).rows;
        (last, open)
    }
}

impl Window {
    fn empty(baseline: &Baseline) -> Self {
        Self {
            rows: 0,
            bins: baseline
                .features
                .iter()
                .map(|f| vec![0; f.fractions.len()])
                .collect(),
            classes: vec![0; baseline.class_distribution.len()],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::psi;

    #[test]
    fn psi_is_zero_for_the_same_distribution_and_grows_with_the_shift() {
        assert!(psi(&[0.25; 4], &[25, 25, 25, 25]).abs() < 1e-12);
        // Known value: (0.4-0.25)ln(0.4/0.25) + (0.1-0.25)ln(0.1/0.25), twice.
        let expected = 2.0 * (0.15 * (1.6f64).ln() + (-0.15) * (0.4f64).ln());
        assert!((psi(&[0.25; 4], &[40, 10, 40, 10]) - expected).abs() < 1e-12);
        assert!(psi(&[0.25; 4], &[100, 0, 0, 0]) > 2.0);
        assert_eq!(psi(&[0.5, 0.5], &[0, 0]), 0.0, "no rows, no drift");
    }
}
