//! Promotion gates: rules a version's recorded metrics must satisfy before an alias moves to it.

use serde::{Deserialize, Serialize};

use crate::VersionRecord;

/// A model's promotion rules. Unset rules are not checked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateRules {
    /// The metric compared (default `accuracy`, higher is better).
    #[serde(default = "default_metric")]
    pub metric: String,
    /// The candidate may be at most this far below the alias's current version (0.01 = one
    /// point of accuracy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_drop: Option<f64>,
    /// The candidate's metric must be at least this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_value: Option<f64>,
    /// Upper bound on the serving artifact's size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_size_bytes: Option<u64>,
    /// Upper bound on the recorded `latency_ms_b1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_latency_ms: Option<f64>,
}

fn default_metric() -> String {
    "accuracy".to_owned()
}

impl Default for GateRules {
    /// A candidate may not be more than half a point worse than what it replaces.
    fn default() -> Self {
        Self {
            metric: default_metric(),
            max_drop: Some(0.005),
            min_value: None,
            max_size_bytes: None,
            max_latency_ms: None,
        }
    }
}

/// The outcome of checking a candidate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateVerdict {
    /// Why the candidate fails; empty when it passes.
    pub reasons: Vec<String>,
}

impl GateVerdict {
    pub fn passed(&self) -> bool {
        self.reasons.is_empty()
    }
}

impl GateRules {
    /// Checks `candidate` against the rules, comparing with `current` (the version the alias
    /// points at now, if any).
    pub fn check(&self, candidate: &VersionRecord, current: Option<&VersionRecord>) -> GateVerdict {
        let mut reasons = Vec::new();
        let metric = &self.metric;
        let value = candidate.metrics.get(metric).copied();
        if let Some(min) = self.min_value {
            match value {
                None => reasons.push(format!(
                    "version {} has no recorded {metric}",
                    candidate.version
                )),
                Some(v) if v < min => {
                    reasons.push(format!("{metric} {v:.4} is below the minimum {min:.4}"))
                }
                Some(_) => {}
            }
        }
        if let (Some(max_drop), Some(current)) = (self.max_drop, current)
            && let Some(base) = current.metrics.get(metric).copied()
        {
            match value {
                None => reasons.push(format!(
                    "version {} has no recorded {metric} to compare with version {} ({base:.4})",
                    candidate.version, current.version
                )),
                Some(v) if v < base - max_drop => reasons.push(format!(
                    "{metric} {v:.4} is more than {max_drop:.4} below version {} ({base:.4})",
                    current.version
                )),
                Some(_) => {}
            }
        }

        if let Some(max) = self.max_size_bytes {
            let size = candidate.serving_artifact().map_or(0, |a| a.size);
            if size > max {
                reasons.push(format!(
                    "serving artifact is {size} bytes, over the bound of {max}"
                ));
            }
        }
        if let Some(max) = self.max_latency_ms {
            match candidate.metrics.get("latency_ms_b1") {
                None => reasons.push(format!(
                    "version {} has no recorded latency_ms_b1",
                    candidate.version
                )),
                Some(&l) if l > max => reasons.push(format!(
                    "latency_ms_b1 {l:.3} is over the bound of {max:.3}"
                )),
                Some(_) => {}
            }
        }
        GateVerdict { reasons }
    }
}
