//! Live traffic for the console: once a second, the server's own counters (per model version
//! and per route variant) are read and turned into rates, percentiles and ratios over that
//! second; the last few minutes are kept. Nothing on the request path changes: it only reads
//! the atomics the statistics already keep.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::Gateway;
use crate::stats::LatencyHistogram;

/// How often the counters are read.
pub const INTERVAL: Duration = Duration::from_secs(1);
/// Points kept per series: five minutes.
pub const KEEP: usize = 300;

/// One series: a model version or a route's variant, a column per measure (uPlot's layout).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Series {
    /// `model` or `route`.
    pub kind: &'static str,
    /// The model, or the route.
    pub name: String,
    /// The version, or the variant.
    pub part: String,
    /// Unix seconds at the end of each interval.
    pub t: VecDeque<f64>,
    /// Requests answered (or failed) in each interval.
    pub requests: VecDeque<u64>,
    pub rps: VecDeque<f64>,
    pub p50_ms: VecDeque<Option<f64>>,
    pub p99_ms: VecDeque<Option<f64>>,
    pub error_rate: VecDeque<Option<f64>>,
    /// Rows per backend execution (model versions).
    pub batch_size: VecDeque<Option<f64>>,
    /// Requests waiting in the batch queue at the sample (model versions).
    pub queue: VecDeque<Option<f64>>,
    /// Cache hits over lookups (model versions with a response cache).
    pub cache_hit_rate: VecDeque<Option<f64>>,
}

/// Counters read at one sample.
#[derive(Debug, Clone, Default)]
struct Reading {
    ok: u64,
    failed: u64,
    rows: u64,
    executions: u64,
    hits: u64,
    misses: u64,
    latency: Vec<u64>,
}

#[derive(Debug, Default)]
struct State {
    series: BTreeMap<(&'static str, String, String), Series>,
    last: BTreeMap<(&'static str, String, String), Reading>,
    last_at: Option<Instant>,
}

/// The kept series.
#[derive(Debug, Default)]
pub struct Traffic {
    state: Mutex<State>,
}

fn ratio(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

impl Traffic {
    /// Every series, models first, by name.
    pub fn series(&self) -> Vec<Series> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.series.values().cloned().collect()
    }

    /// Reads every counter once and appends a point to each series.
    pub fn sample(&self, g: &Gateway) {
        let mut readings = Vec::new();
        for v in g.repository.all_versions() {
            let s = &v.stats;
            readings.push((
                ("model", v.name.clone(), v.version_label.clone()),
                Reading {
                    ok: s.success.get().0,
                    failed: s.fail.get().0,
                    rows: s.inference_count.load(Relaxed),
                    executions: s.execution_count.load(Relaxed),
                    hits: s.cache_hit.get().0,
                    misses: s.cache_miss.get().0,
                    latency: s.latency.snapshot(),
                },
                v.batcher.get().map(|b| b.queued() as f64),
            ));
        }
        for (route, variant, stats) in g.routes.load().variant_stats() {
            let (requests, errors) = stats.counts();
            readings.push((
                ("route", route, variant),
                Reading {
                    ok: requests - errors,
                    failed: errors,
                    latency: stats.latency.snapshot(),
                    ..Reading::default()
                },
                None,
            ));
        }
        let now = Instant::now();
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let seconds = state
            .last_at
            .map_or(INTERVAL.as_secs_f64(), |at| (now - at).as_secs_f64())
            .max(1e-3);
        state.last_at = Some(now);
        let present: Vec<_> = readings.iter().map(|(k, _, _)| k.clone()).collect();
        state.series.retain(|k, _| present.contains(k));
        state.last.retain(|k, _| present.contains(k));
        for (key, now, queue) in readings {
            let before = state.last.insert(key.clone(), now.clone());
            let series = state.series.entry(key.clone()).or_insert_with(|| Series {
                kind: key.0,
                name: key.1.clone(),
                part: key.2.clone(),
                ..Series::default()
            });
            // A new series (or counters that went back, a reloaded version) starts from here.
            let Some(before) = before.filter(|b| b.ok <= now.ok && b.failed <= now.failed) else {
                continue;
            };
            let requests = (now.ok - before.ok) + (now.failed - before.failed);
            let executions = now.executions.saturating_sub(before.executions);
            let lookups = (now.hits + now.misses).saturating_sub(before.hits + before.misses);
            if series.t.len() == KEEP {
                series.t.pop_front();
                series.requests.pop_front();
                series.rps.pop_front();
                series.p50_ms.pop_front();
                series.p99_ms.pop_front();
                series.error_rate.pop_front();
                series.batch_size.pop_front();
                series.queue.pop_front();
                series.cache_hit_rate.pop_front();
            }
            series.t.push_back(t);
            series.requests.push_back(requests);
            series.rps.push_back(requests as f64 / seconds);
            series.p50_ms.push_back(LatencyHistogram::quantile_between(
                &before.latency,
                &now.latency,
                0.5,
            ));
            series.p99_ms.push_back(LatencyHistogram::quantile_between(
                &before.latency,
                &now.latency,
                0.99,
            ));
            series
                .error_rate
                .push_back(ratio(now.failed - before.failed, requests));
            series
                .batch_size
                .push_back(ratio(now.rows.saturating_sub(before.rows), executions));
            series.queue.push_back(queue);
            series
                .cache_hit_rate
                .push_back(ratio(now.hits.saturating_sub(before.hits), lookups));
        }
    }
}

/// Samples every [`INTERVAL`] until `shutdown`.
pub async fn run(gateway: std::sync::Arc<Gateway>, shutdown: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => gateway.traffic.sample(&gateway),
        }
    }
}
