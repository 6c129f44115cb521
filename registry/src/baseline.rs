//! Baseline input statistics recorded at training time, for drift detection when serving.

use serde::{Deserialize, Serialize};

/// Per-feature histograms over quantile bins of the training inputs, plus the predicted-class
/// distribution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    pub samples: u64,
    pub features: Vec<FeatureBaseline>,
    /// Fraction of training rows per class (labels), in class order.
    pub class_distribution: Vec<f64>,
}

/// One feature's distribution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureBaseline {
    pub mean: f64,
    pub std: f64,
    /// Interior bin edges (ascending, deduplicated); `edges.len() + 1` bins.
    pub edges: Vec<f64>,
    /// Fraction of rows per bin; sums to 1.
    pub fractions: Vec<f64>,
}

impl FeatureBaseline {
    /// The bin that `value` falls in.
    pub fn bin(&self, value: f64) -> usize {
        self.edges.partition_point(|&e| e <= value)
    }
}

impl Baseline {
    /// Statistics of `rows` (row-major, `features` values per row) with up to `bins` quantile
    /// bins per feature, and the class distribution of `labels`.
    pub fn from_rows(
        rows: &[f32],
        features: usize,
        bins: usize,
        labels: &[u32],
        classes: usize,
    ) -> Self {
        let n = rows.len().checked_div(features).unwrap_or(0);
        let mut out = Vec::with_capacity(features);
        let mut column = Vec::with_capacity(n);
        for f in 0..features {
            column.clear();
            column.extend((0..n).map(|r| f64::from(rows[r * features + f])));
            let mean = column.iter().sum::<f64>() / n.max(1) as f64;
            let var = column.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n.max(1) as f64;
            column.sort_by(f64::total_cmp);
            let mut edges: Vec<f64> = (1..bins)
                .map(|q| column.get(q * n / bins).copied().unwrap_or(0.0))
                .collect();
            edges.dedup();
            // An edge equal to the minimum would leave an empty first bin.
            if let Some(&min) = column.first() {
                edges.retain(|&e| e > min);
            }
            let mut feature = FeatureBaseline {
                mean,
                std: var.sqrt(),
                fractions: vec![0.0; edges.len() + 1],
                edges,
            };
            for &v in &column {
                let b = feature.bin(v);
                feature.fractions[b] += 1.0;
            }
            for p in &mut feature.fractions {
                *p /= n.max(1) as f64;
            }
            out.push(feature);
        }
        let mut class_distribution = vec![0.0; classes];
        for &l in labels {
            if let Some(c) = class_distribution.get_mut(l as usize) {
                *c += 1.0;
            }
        }
        for c in &mut class_distribution {
            *c /= labels.len().max(1) as f64;
        }
        Self {
            samples: n as u64,
            features: out,
            class_distribution,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_bins_hold_equal_shares() {
        let rows: Vec<f32> = (0..1000).map(|i| i as f32).collect();
        let b = Baseline::from_rows(&rows, 1, 4, &[0, 1, 1, 1], 2);
        let f = &b.features[0];
        assert_eq!(f.edges, vec![250.0, 500.0, 750.0]);
        assert_eq!(f.fractions, vec![0.25; 4]);
        assert!((f.mean - 499.5).abs() < 1e-9);
        assert_eq!(b.class_distribution, vec![0.25, 0.75]);
        assert_eq!(f.bin(-1.0), 0);
        assert_eq!(f.bin(250.0), 1);
        assert_eq!(f.bin(1e9), 3);
    }

    #[test]
    fn constant_feature_has_one_bin() {
        let b = Baseline::from_rows(&[0.0; 50], 1, 10, &[], 0);
        assert!(b.features[0].edges.is_empty());
        assert_eq!(b.features[0].fractions, vec![1.0]);
    }
}
