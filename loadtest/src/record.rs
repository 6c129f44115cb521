//! Recording outcomes (HDR histograms, per-second timeline, errors by class) and the result
//! documents that `--json` prints.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::target::Outcome;

/// Latencies are recorded in microseconds: 1 µs to 1 h at 3 significant figures.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static bounds are valid")
}

/// Everything measured in one scenario.
pub struct Recorder {
    measure_from: Instant,
    deadline: Option<Instant>,
    /// Successes that finished inside `[measure_from, deadline]`, whenever they started.
    done_in_window: u64,
    latency: Histogram<u64>,
    ok: u64,
    errors: BTreeMap<String, u64>,
    seconds: Vec<(u64, u64, Histogram<u64>)>,
    last_done: Instant,
}

impl Recorder {
    /// Counts requests whose (intended) start is at or after `measure_from`; a run with a
    /// `deadline` also counts the successes that finish by then, for its throughput.
    pub fn new(measure_from: Instant, deadline: Option<Instant>) -> Self {
        Self {
            measure_from,
            deadline,
            done_in_window: 0,
            latency: histogram(),
            ok: 0,
            errors: BTreeMap::new(),
            seconds: Vec::new(),
            last_done: measure_from,
        }
    }

    /// Records one request that started (or was meant to start) at `start` and finished now.
    pub fn record(&mut self, start: Instant, done: Instant, outcome: &Outcome) {
        if outcome.is_ok() && done >= self.measure_from && self.deadline.is_some_and(|d| done <= d)
        {
            self.done_in_window += 1;
        }
        if start < self.measure_from {
            return;
        }
        self.last_done = self.last_done.max(done);
        let second = done.saturating_duration_since(self.measure_from).as_secs() as usize;
        if self.seconds.len() <= second {
            self.seconds.resize_with(second + 1, || (0, 0, histogram()));
        }
        let micros = done
            .saturating_duration_since(start)
            .as_micros()
            .clamp(1, 3_600_000_000) as u64;
        match outcome {
            Ok(()) => {
                self.ok += 1;
                let _ = self.latency.record(micros);
                self.seconds[second].0 += 1;
                let _ = self.seconds[second].2.record(micros);
            }
            Err(class) => {
                *self.errors.entry(class.clone()).or_default() += 1;
                self.seconds[second].1 += 1;
            }
        }
    }

    /// Requests counted so far.
    pub fn counted(&self) -> u64 {
        self.ok + self.errors.values().sum::<u64>()
    }

    /// Successes and errors so far, and the current p99 in ms (for progress lines).
    pub fn snapshot(&self) -> (u64, u64, f64) {
        (
            self.ok,
            self.errors.values().sum(),
            ms(self.latency.value_at_quantile(0.99)),
        )
    }

    /// The result over `[measure_from, end]`.
    ///
    /// Throughput of a run that reached its deadline is the successes that finished inside the
    /// measured window over its length: counting the requests started in it over the time until
    /// the last of them finished would add the final drain to the time and leave out the work on
    /// requests started during warm-up, `window / (window + latency)` too low when the latency is
    /// a fair part of the window. A run that stopped before it (a request count) divides
    /// its successes by the time until the last one finished.
    pub fn finish(self, end: Instant) -> RunResult {
        let window = self
            .deadline
            .filter(|&d| end >= d)
            .map(|d| d.saturating_duration_since(self.measure_from));
        let end = end.max(self.last_done);
        let wall = end
            .saturating_duration_since(self.measure_from)
            .max(Duration::from_micros(1));
        let throughput = match window {
            Some(w) if !w.is_zero() => self.done_in_window as f64 / w.as_secs_f64(),
            _ => self.ok as f64 / wall.as_secs_f64(),
        };
        let h = &self.latency;
        let quantile = |q: f64| {
            if h.is_empty() {
                0.0
            } else {
                ms(h.value_at_quantile(q))
            }
        };
        RunResult {
            protocol: String::new(),
            model: String::new(),
            concurrency: None,
            rate: None,
            duration_s: wall.as_secs_f64(),
            requests: self.counted(),
            successes: self.ok,
            throughput,
            p50_ms: quantile(0.50),
            p90_ms: quantile(0.90),
            p99_ms: quantile(0.99),
            p999_ms: quantile(0.999),
            max_ms: if h.is_empty() { 0.0 } else { ms(h.max()) },
            mean_ms: if h.is_empty() { 0.0 } else { h.mean() / 1000.0 },
            errors: self.errors.values().sum(),
            errors_by_class: self.errors,
            client_cpu_percent: 0.0,
            client_cpu_us_per_request: 0.0,
            client_threads: 0,
            timeline: self
                .seconds
                .iter()
                .enumerate()
                .map(|(i, (ok, err, h))| Second {
                    second: i as u64,
                    successes: *ok,
                    errors: *err,
                    p50_ms: if h.is_empty() {
                        0.0
                    } else {
                        ms(h.value_at_quantile(0.5))
                    },
                    p99_ms: if h.is_empty() {
                        0.0
                    } else {
                        ms(h.value_at_quantile(0.99))
                    },
                })
                .collect(),
            server: None,
        }
    }
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

/// One second of the timeline.
#[derive(Debug, Clone, Serialize)]
pub struct Second {
    pub second: u64,
    pub successes: u64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// Where the server says the time went, from its statistics API (deltas over the run).
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
pub struct ServerSplit {
    pub inference_count: u64,
    pub execution_count: u64,
    /// `inference_count / execution_count`.
    pub avg_batch_size: f64,
    pub avg_queue_us: f64,
    pub avg_compute_input_us: f64,
    pub avg_compute_infer_us: f64,
    pub avg_compute_output_us: f64,
}

/// One scenario's result; latency percentiles are of successful requests, measured from the
/// intended send time in open loop.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub protocol: String,
    pub model: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    pub duration_s: f64,
    pub requests: u64,
    pub successes: u64,
    /// Successful requests per second.
    pub throughput: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
    /// Failed requests.
    pub errors: u64,
    /// Failed requests by class: `http 503`, `grpc Unavailable`, `timeout`, `connection`, ...
    pub errors_by_class: BTreeMap<String, u64>,
    /// Client CPU time over wall time, in percent of one core.
    pub client_cpu_percent: f64,
    /// Client CPU time per request sent: the generator's own cost.
    pub client_cpu_us_per_request: f64,
    pub client_threads: usize,
    pub timeline: Vec<Second>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerSplit>,
}

/// All scenarios of one invocation.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub results: Vec<RunResult>,
}

/// Process CPU time (user + system) so far.
pub fn cpu_time() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    #[allow(unsafe_code)]
    // SAFETY: getrusage writes a `rusage` into the pointer it is given; on failure we read zeros.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, (t.tv_usec as u32) * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A closed loop of 8 connections on a server that completes one request every 100 ms
    /// (10/s, each waiting 800 ms): 1 s of warm-up, then 2 s measured.
    #[test]
    fn closed_loop_throughput_is_the_servers_rate_when_latency_is_long() {
        let base = Instant::now();
        let at = |ms: u64| base + Duration::from_millis(ms);
        let (measure_from, deadline) = (at(1000), at(3000));
        let mut recorder = Recorder::new(measure_from, Some(deadline));
        // Job j completes at 100 (j + 1) ms; its connection then sends job j + 8.
        for j in 0u64.. {
            let start = if j < 8 { 0 } else { 100 * (j - 7) };
            if at(start) >= deadline {
                break;
            }
            recorder.record(at(start), at(100 * (j + 1)), &Ok(()));
        }
        let result = recorder.finish(deadline);
        assert!(
            (result.throughput - 10.0).abs() <= 0.6,
            "throughput {} /s, the server's rate is 10/s",
            result.throughput
        );
        assert_eq!(result.successes, 20, "requests started in the window");
        assert!(
            (result.p50_ms - 800.0).abs() < 1.0,
            "p50 {} ms",
            result.p50_ms
        );
    }

    /// A run that stops at a request count, before its deadline, divides by the time until
    /// its last request finished.
    #[test]
    fn a_run_stopped_by_count_divides_by_its_own_time() {
        let base = Instant::now();
        let at = |ms: u64| base + Duration::from_millis(ms);
        let mut recorder = Recorder::new(base, Some(at(10_000)));
        for j in 0..5u64 {
            recorder.record(at(100 * j), at(100 * (j + 1)), &Ok(()));
        }
        recorder.record(at(500), at(600), &Err("http 503".into()));
        let result = recorder.finish(at(600));
        assert!((result.throughput - 5.0 / 0.6).abs() < 1e-9);
        assert_eq!((result.successes, result.errors), (5, 1));
    }
}
