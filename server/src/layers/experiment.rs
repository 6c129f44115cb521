//! Experiment statistics of a route: per-variant counts, error rates and latency percentiles,
//! and each variant compared with the first (two-proportion z-test on error rates, Welch's
//! t-test on latency) with a plain-language verdict.

use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

/// Latency samples kept per variant (the oldest are overwritten).
const MAX_SAMPLES: usize = 50_000;

#[derive(Debug, Default)]
struct Samples {
    requests: u64,
    errors: u64,
    latencies_ms: Vec<f64>,
    next: usize,
    /// Ground truth attached afterwards: judged rows (or outcomes) and how many were right.
    judged: u64,
    correct: u64,
}

/// One variant's live counters.
#[derive(Debug, Default)]
pub struct VariantStats {
    samples: Mutex<Samples>,
    /// The same latencies in buckets, for live percentiles over a short interval.
    pub latency: crate::stats::LatencyHistogram,
}

impl VariantStats {
    pub fn record(&self, ok: bool, latency: Duration) {
        self.latency.record(latency);
        let mut s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        s.requests += 1;
        s.errors += u64::from(!ok);
        let ms = latency.as_secs_f64() * 1e3;
        if s.latencies_ms.len() < MAX_SAMPLES {
            s.latencies_ms.push(ms);
        } else {
            let i = s.next;
            s.latencies_ms[i] = ms;
            s.next = (i + 1) % MAX_SAMPLES;
        }
    }

    /// Counts feedback: `judged` rows or outcomes, `correct` of them right.
    pub fn feedback(&self, judged: u64, correct: u64) {
        let mut s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        s.judged += judged;
        s.correct += correct;
    }

    /// Requests and errors so far.
    pub fn counts(&self) -> (u64, u64) {
        let s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        (s.requests, s.errors)
    }

    fn snapshot(&self) -> Samples {
        let s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        Samples {
            requests: s.requests,
            errors: s.errors,
            latencies_ms: s.latencies_ms.clone(),
            next: 0,
            judged: s.judged,
            correct: s.correct,
        }
    }
}

/// One variant in the report.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct VariantReport {
    pub variant: String,
    pub requests: u64,
    pub errors: u64,
    pub error_rate: f64,
    /// 95% Wilson interval of the error rate.
    pub error_rate_ci: Option<[f64; 2]>,
    pub latency_ms: Percentiles,
    /// 95% confidence interval of the mean latency (normal approximation).
    pub latency_mean_ci_ms: Option<[f64; 2]>,
    /// Rows or outcomes with feedback, and the share judged right.
    pub feedback: u64,
    pub accuracy: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Percentiles {
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

/// A variant against the baseline (the route's first variant).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Comparison {
    pub variant: String,
    pub baseline: String,
    /// Two-proportion z-test on the error rates.
    pub error_rate_p_value: Option<f64>,
    /// Welch's t-test on the latencies.
    pub latency_p_value: Option<f64>,
    /// Two-proportion z-test on the accuracy from feedback.
    pub accuracy_p_value: Option<f64>,
    pub verdict: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ExperimentReport {
    pub variants: Vec<VariantReport>,
    pub comparisons: Vec<Comparison>,
}

/// The `q` quantile of ascending, non-empty `sorted`.
pub(crate) fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}

fn percentiles(sorted: &[f64]) -> Percentiles {
    if sorted.is_empty() {
        return Percentiles::default();
    }
    let at = |q| quantile(sorted, q);
    Percentiles {
        mean: sorted.iter().sum::<f64>() / sorted.len() as f64,
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
        max: sorted[sorted.len() - 1],
    }
}

/// The 95% Wilson score interval of `k` successes in `n` trials.
fn wilson(k: u64, n: u64) -> Option<[f64; 2]> {
    if n == 0 {
        return None;
    }
    let (z, n, p) = (1.96f64, n as f64, k as f64 / n as f64);
    let centre = (p + z * z / (2.0 * n)) / (1.0 + z * z / n);
    let half = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / (1.0 + z * z / n);
    Some([(centre - half).max(0.0), (centre + half).min(1.0)])
}

/// The 95% interval of the mean of `values` (at least two).
fn mean_interval(values: &[f64]) -> Option<[f64; 2]> {
    if values.len() < 2 {
        return None;
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    let half = 1.96 * (var / n).sqrt();
    Some([mean - half, mean + half])
}

/// The report over `(name, stats)` pairs; the first is the baseline.
pub fn report(variants: &[(&str, &VariantStats)]) -> ExperimentReport {
    let snaps: Vec<(String, Samples)> = variants
        .iter()
        .map(|(n, s)| ((*n).to_string(), s.snapshot()))
        .collect();
    let mut out = ExperimentReport {
        variants: Vec::new(),
        comparisons: Vec::new(),
    };
    for (name, s) in &snaps {
        let mut sorted = s.latencies_ms.clone();
        sorted.sort_by(f64::total_cmp);
        out.variants.push(VariantReport {
            variant: name.clone(),
            requests: s.requests,
            errors: s.errors,
            error_rate: s.errors as f64 / s.requests.max(1) as f64,
            error_rate_ci: wilson(s.errors, s.requests),
            latency_mean_ci_ms: mean_interval(&sorted),
            latency_ms: percentiles(&sorted),
            feedback: s.judged,
            accuracy: (s.judged > 0).then(|| s.correct as f64 / s.judged as f64),
        });
    }
    let Some((base_name, base)) = snaps.first() else {
        return out;
    };
    for (name, s) in &snaps[1..] {
        let errors = two_proportion_p(base.errors, base.requests, s.errors, s.requests);
        let latency = welch_p(&base.latencies_ms, &s.latencies_ms);
        let accuracy = two_proportion_p(base.correct, base.judged, s.correct, s.judged);
        let mut parts = Vec::new();
        let rate = |e: u64, n: u64| 100.0 * e as f64 / n.max(1) as f64;
        match errors {
            Some(p) if p < 0.05 => parts.push(format!(
                "{name} fails {} often than {base_name} ({:.2}% vs {:.2}%, p={p:.3})",
                if rate(s.errors, s.requests) > rate(base.errors, base.requests) {
                    "more"
                } else {
                    "less"
                },
                rate(s.errors, s.requests),
                rate(base.errors, base.requests)
            )),
            Some(p) => parts.push(format!(
                "no significant difference in error rate (p={p:.3})"
            )),
            None => parts.push("too few requests to compare error rates".to_string()),
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        match latency {
            Some(p) if p < 0.05 => parts.push(format!(
                "{name} is {} (mean {:.3} ms vs {:.3} ms, p={p:.3})",
                if mean(&s.latencies_ms) > mean(&base.latencies_ms) {
                    "slower"
                } else {
                    "faster"
                },
                mean(&s.latencies_ms),
                mean(&base.latencies_ms)
            )),
            Some(p) => parts.push(format!("no significant difference in latency (p={p:.3})")),
            None => parts.push("too few requests to compare latency".to_string()),
        }
        if let Some(p) = accuracy {
            parts.push(if p < 0.05 {
                format!(
                    "{name} is {} accurate ({:.2}% vs {:.2}%, p={p:.3})",
                    if rate(s.correct, s.judged) > rate(base.correct, base.judged) {
                        "more"
                    } else {
                        "less"
                    },
                    rate(s.correct, s.judged),
                    rate(base.correct, base.judged)
                )
            } else {
                format!("no significant difference in accuracy (p={p:.3})")
            });
        }
        out.comparisons.push(Comparison {
            variant: name.clone(),
            baseline: base_name.clone(),
            error_rate_p_value: errors,
            latency_p_value: latency,
            accuracy_p_value: accuracy,
            verdict: parts.join("; "),
        });
    }
    out
}

/// Two-sided p-value of the two-proportion z-test (None below 10 requests a side).
pub fn two_proportion_p(e1: u64, n1: u64, e2: u64, n2: u64) -> Option<f64> {
    if n1 < 10 || n2 < 10 {
        return None;
    }
    let (n1f, n2f) = (n1 as f64, n2 as f64);
    let pooled = (e1 + e2) as f64 / (n1f + n2f);
    let se = (pooled * (1.0 - pooled) * (1.0 / n1f + 1.0 / n2f)).sqrt();
    if se == 0.0 {
        return Some(1.0);
    }
    let z = (e1 as f64 / n1f - e2 as f64 / n2f) / se;
    Some(erfc(z.abs() / std::f64::consts::SQRT_2))
}

/// Two-sided p-value of Welch's t-test (None below 2 samples a side).
pub fn welch_p(a: &[f64], b: &[f64]) -> Option<f64> {
    if a.len() < 2 || b.len() < 2 {
        return None;
    }
    let stats = |v: &[f64]| {
        let n = v.len() as f64;
        let m = v.iter().sum::<f64>() / n;
        let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0);
        (n, m, var)
    };
    let ((na, ma, va), (nb, mb, vb)) = (stats(a), stats(b));
    let (sa, sb) = (va / na, vb / nb);
    if sa + sb == 0.0 {
        return Some(if ma == mb { 1.0 } else { 0.0 });
    }
    let t = (ma - mb) / (sa + sb).sqrt();
    let df = (sa + sb).powi(2) / (sa * sa / (na - 1.0) + sb * sb / (nb - 1.0));
    // P(|T| > t) = I_{df/(df+t²)}(df/2, 1/2).
    Some(beta_inc(df / 2.0, 0.5, df / (df + t * t)))
}

/// erfc by the Numerical Recipes Chebyshev fit (relative error below 1.2e-7).
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87
                                        + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

fn ln_gamma(x: f64) -> f64 {
    // Lanczos approximation (g = 7, n = 9).
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    let x = x - 1.0;
    let t = x + 7.5;
    let mut a = C[0];
    for (i, c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// The regularized incomplete beta function I_x(a, b).
fn beta_inc(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let front =
        (ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln()).exp();
    if x < (a + 1.0) / (a + b + 2.0) {
        front * beta_cf(a, b, x) / a
    } else {
        1.0 - front * beta_cf(b, a, 1.0 - x) / b
    }
}

/// Continued fraction for the incomplete beta function (Lentz's method).
fn beta_cf(a: f64, b: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..300 {
        let m = f64::from(m);
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        d = if d.abs() < TINY { TINY } else { d };
        c = 1.0 + aa / c;
        c = if c.abs() < TINY { TINY } else { c };
        d = 1.0 / d;
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        d = if d.abs() < TINY { TINY } else { d };
        c = 1.0 + aa / c;
        c = if c.abs() < TINY { TINY } else { c };
        d = 1.0 / d;
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() < 1e-12 {
            break;
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_hold_the_estimate_and_narrow_with_more_data() {
        // Wilson: 10 errors in 100 is about [0.055, 0.174].
        let [lo, hi] = super::wilson(10, 100).unwrap();
        assert!(
            (lo - 0.0552).abs() < 1e-3 && (hi - 0.1744).abs() < 1e-3,
            "{lo} {hi}"
        );
        let [lo2, hi2] = super::wilson(100, 1000).unwrap();
        assert!(lo2 > lo && hi2 < hi);
        assert_eq!(super::wilson(0, 0), None);
        assert!(super::wilson(0, 50).unwrap()[0] == 0.0);
        // Mean of 1..=100 is 50.5, sd 29.01: half-width 1.96 * 2.901.
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        let [lo, hi] = super::mean_interval(&values).unwrap();
        assert!((lo - (50.5 - 5.687)).abs() < 0.01 && (hi - (50.5 + 5.687)).abs() < 0.01);
        assert_eq!(super::mean_interval(&[1.0]), None);
    }

    #[test]
    fn p_values_match_reference_values() {
        // scipy.stats: two-sided normal tail at z = 1.96 is 0.0500; t with 10 df at 2.228 is 0.0500.
        assert!((erfc(1.96 / std::f64::consts::SQRT_2) - 0.0500).abs() < 1e-3);
        assert!((beta_inc(5.0, 0.5, 10.0 / (10.0 + 2.228 * 2.228)) - 0.0500).abs() < 1e-3);
        // 50/1000 vs 80/1000 errors: z = 2.72, p = 0.0065.
        let p = two_proportion_p(50, 1000, 80, 1000).unwrap();
        assert!((p - 0.0065).abs() < 2e-4, "{p}");
        assert_eq!(two_proportion_p(1, 5, 1, 5), None);
        // Welch on [1..5] vs [2,4..10]: t = -1.897, df = 5.88, p = 0.10753 (numerical integration
        // of the t density).
        let p = welch_p(&[1.0, 2.0, 3.0, 4.0, 5.0], &[2.0, 4.0, 6.0, 8.0, 10.0]).unwrap();
        assert!((p - 0.10753).abs() < 1e-4, "{p}");
    }

    #[test]
    fn the_verdict_names_a_slower_and_failing_variant() {
        let (a, b) = (VariantStats::default(), VariantStats::default());
        for i in 0..400 {
            a.record(i % 100 != 0, Duration::from_micros(1000 + (i % 7) * 10));
            b.record(i % 10 != 0, Duration::from_micros(2000 + (i % 7) * 10));
        }
        let r = report(&[("a", &a), ("b", &b)]);
        assert_eq!(r.variants[0].requests, 400);
        assert!((r.variants[1].error_rate - 0.1).abs() < 1e-9);
        let v = &r.comparisons[0].verdict;
        assert!(
            v.contains("b fails more often than a (10.00% vs 1.00%"),
            "{v}"
        );
        assert!(v.contains("b is slower"), "{v}");
    }
}
