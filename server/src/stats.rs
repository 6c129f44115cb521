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
