//! Per-model-version statistics in Triton's shape (what perf_analyzer reads), lock-free.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use infergate_runtime::StageTimings;

/// A count and a total duration.
#[derive(Debug, Default)]
pub struct Duration2 {
    count: AtomicU64,
    ns: AtomicU64,
}

impl Duration2 {
    pub fn add(&self, d: Duration) {
        self.count.fetch_add(1, Relaxed);
        self.ns.fetch_add(d.as_nanos() as u64, Relaxed);
    }

    /// `(count, total ns)`.
    pub fn get(&self) -> (u64, u64) {
        (self.count.load(Relaxed), self.ns.load(Relaxed))
    }
}

/// Statistics of one batch size.
#[derive(Debug, Default)]
pub struct BatchStat {
    pub compute_input: Duration2,
    pub compute_infer: Duration2,
    pub compute_output: Duration2,
}

/// Statistics of one model version.
#[derive(Debug)]
pub struct Stats {
    pub success: Duration2,
    pub fail: Duration2,
    pub queue: Duration2,
    pub compute_input: Duration2,
    pub compute_infer: Duration2,
    pub compute_output: Duration2,
    pub cache_hit: Duration2,
    pub cache_miss: Duration2,
    pub inference_count: AtomicU64,
    pub execution_count: AtomicU64,
    /// Milliseconds since the epoch of the last inference, 0 if none.
    pub last_inference_ms: AtomicU64,
    /// Index = batch size; sizes beyond the table share the last slot.
    batches: Box<[BatchStat]>,
    /// Text models: tokens per execution.
    pub tokens: TokenStats,
    /// Request latencies (successes and failures), for the console's live percentiles.
    pub latency: LatencyHistogram,
}

/// Request latencies in buckets a quarter of an octave wide (about ±9%), from 1 µs to about
/// 16 s: an atomic add per request, and percentiles over any interval from two snapshots.
#[derive(Debug)]
pub struct LatencyHistogram {
    buckets: Box<[AtomicU64]>,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self {
            buckets: (0..LatencyHistogram::BUCKETS)
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }
}

impl LatencyHistogram {
    /// Four buckets per power of two of microseconds, up to 2^24 µs.
    pub const BUCKETS: usize = 96;

    fn index(d: Duration) -> usize {
        let us = (d.as_micros() as u64).max(1);
        let octave = 63 - us.leading_zeros() as usize;
        let sub = if octave >= 2 {
            ((us >> (octave - 2)) & 3) as usize
        } else {
            (us as usize).saturating_sub(1) % 4
        };
        (octave * 4 + sub).min(Self::BUCKETS - 1)
    }

    /// The middle of bucket `i`, in milliseconds.
    fn middle_ms(i: usize) -> f64 {
        let (octave, sub) = (i / 4, i % 4);
        let (low, width) = if octave >= 2 {
            (
                ((4 + sub) << (octave - 2)) as f64,
                (1u64 << (octave - 2)) as f64,
            )
        } else {
            ((sub + 1) as f64, 1.0)
        };
        (low + width / 2.0) / 1e3
    }

    pub fn record(&self, d: Duration) {
        self.buckets[Self::index(d)].fetch_add(1, Relaxed);
    }

    /// The counts per bucket now.
    pub fn snapshot(&self) -> Vec<u64> {
        self.buckets.iter().map(|b| b.load(Relaxed)).collect()
    }

    /// The `q` quantile (milliseconds) of the requests between two snapshots, `None` when
    /// there were none.
    pub fn quantile_between(before: &[u64], after: &[u64], q: f64) -> Option<f64> {
        let delta: Vec<u64> = after
            .iter()
            .zip(before.iter().chain(std::iter::repeat(&0)))
            .map(|(a, b)| a.saturating_sub(*b))
            .collect();
        let total: u64 = delta.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64 * q).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (i, n) in delta.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(Self::middle_ms(i));
            }
        }
        None
    }
}

/// Token counts of a text model's executions: what a token budget and length grouping did.
#[derive(Debug, Default)]
pub struct TokenStats {
    /// Real tokens executed (padding not counted).
    pub real: AtomicU64,
    /// Tokens executed, padding included (rows × longest row, per execution).
    pub padded: AtomicU64,
    /// The most padded tokens one execution ran.
    pub max_padded: AtomicU64,
    /// The latest executions, oldest first: (rows, real tokens, padded tokens).
    recent: std::sync::Mutex<std::collections::VecDeque<[u64; 3]>>,
}

impl TokenStats {
    /// Executions kept in [`TokenStats::recent`].
    pub const KEEP: usize = 256;

    /// Records one execution of `rows` rows of `seq` tokens holding `real` real ones.
    pub fn record(&self, rows: usize, seq: usize, real: usize) {
        let padded = (rows * seq) as u64;
        self.real.fetch_add(real as u64, Relaxed);
        self.padded.fetch_add(padded, Relaxed);
        self.max_padded.fetch_max(padded, Relaxed);
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent.len() == Self::KEEP {
            recent.pop_front();
        }
        recent.push_back([rows as u64, real as u64, padded]);
    }

    /// The latest executions, oldest first: (rows, real tokens, padded tokens).
    pub fn recent(&self) -> Vec<[u64; 3]> {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.iter().copied().collect()
    }
}

impl Stats {
    /// Statistics for a model whose batches are at most `max_batch` rows.
    pub fn new(max_batch: usize) -> Self {
        Self {
            success: Duration2::default(),
            fail: Duration2::default(),
            queue: Duration2::default(),
            compute_input: Duration2::default(),
            compute_infer: Duration2::default(),
            compute_output: Duration2::default(),
            cache_hit: Duration2::default(),
            cache_miss: Duration2::default(),
            inference_count: AtomicU64::new(0),
            execution_count: AtomicU64::new(0),
            last_inference_ms: AtomicU64::new(0),
            batches: (0..=max_batch.max(1))
                .map(|_| BatchStat::default())
                .collect(),
            tokens: TokenStats::default(),
            latency: LatencyHistogram::default(),
        }
    }

    /// Records one backend execution of `rows` rows (a batch of one or more requests).
    pub fn record_execution(&self, rows: usize, timings: &StageTimings) {
        self.inference_count.fetch_add(rows as u64, Relaxed);
        self.execution_count.fetch_add(1, Relaxed);
        let slot = &self.batches[rows.min(self.batches.len() - 1)];
        slot.compute_input.add(timings.input);
        slot.compute_infer.add(timings.infer);
        slot.compute_output.add(timings.output);
    }

    /// Records one successful request: its total time and its share of each stage.
    pub fn record_request(&self, total: Duration, timings: &StageTimings) {
        self.success.add(total);
        self.latency.record(total);
        self.queue.add(timings.queue);
        self.compute_input.add(timings.input);
        self.compute_infer.add(timings.infer);
        self.compute_output.add(timings.output);
        self.touch();
    }

    /// Records a cache lookup (hit or miss) and its duration.
    pub fn record_cache(&self, hit: bool, took: Duration) {
        if hit {
            &self.cache_hit
        } else {
            &self.cache_miss
        }
        .add(took);
    }

    /// Records one failed request.
    pub fn record_failure(&self, total: Duration) {
        self.fail.add(total);
        self.latency.record(total);
        self.touch();
    }

    fn touch(&self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        self.last_inference_ms
            .store(now.as_millis() as u64, Relaxed);
    }

    /// `(batch size, stats)` for every batch size seen.
    pub fn batch_stats(&self) -> impl Iterator<Item = (usize, &BatchStat)> {
        self.batches
            .iter()
            .enumerate()
            .filter(|(_, s)| s.compute_infer.get().0 > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::LatencyHistogram;
    use std::time::Duration;

    #[test]
    fn latency_quantiles_come_within_a_bucket_of_the_true_value() {
        let h = LatencyHistogram::default();
        let before = h.snapshot();
        // 1..=1000 ms: p50 is 500 ms, p99 990 ms.
        for ms in 1..=1000u64 {
            h.record(Duration::from_millis(ms));
        }
        let after = h.snapshot();
        let p50 = LatencyHistogram::quantile_between(&before, &after, 0.5).unwrap();
        let p99 = LatencyHistogram::quantile_between(&before, &after, 0.99).unwrap();
        assert!((p50 - 500.0).abs() / 500.0 < 0.1, "p50 {p50}");
        assert!((p99 - 990.0).abs() / 990.0 < 0.1, "p99 {p99}");
        // Only what happened between the snapshots counts.
        h.record(Duration::from_micros(3));
        let later = h.snapshot();
        let p = LatencyHistogram::quantile_between(&after, &later, 0.5).unwrap();
        assert!((0.002..0.005).contains(&p), "3 µs read as {p} ms");
        assert_eq!(
            LatencyHistogram::quantile_between(&later, &later, 0.5),
            None
        );
        // Beyond the last bucket, still counted.
        h.record(Duration::from_secs(3600));
        assert!(LatencyHistogram::quantile_between(&later, &h.snapshot(), 1.0).unwrap() > 10_000.0);
    }
}
