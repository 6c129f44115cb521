//! The two load modes. Closed loop: N workers, each sending its next request when the previous
//! one is answered. Open loop: requests leave at scheduled times whatever the server does, and
//! latency counts from the scheduled time, so a stall cannot hide behind fewer sends.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::inputs::{Prepared, Rng};
use crate::record::{Recorder, RunResult, cpu_time};
use crate::server_stats;
use crate::target::{Conn, Target};
use crate::{Args, Arrivals, Protocol};

fn lock(recorder: &Mutex<Recorder>) -> std::sync::MutexGuard<'_, Recorder> {
    recorder.lock().unwrap_or_else(|e| e.into_inner())
}

/// Prints a progress line each second on a terminal (never with --json).
fn progress(
    args: &Args,
    recorder: Arc<Mutex<Recorder>>,
    label: String,
    started: Instant,
) -> tokio::task::JoinHandle<()> {
    let show = !args.json && std::io::stderr().is_terminal();
    let total = args.effective_duration();
    tokio::spawn(async move {
        if !show {
            return;
        }
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let (ok, err, p99) = lock(&recorder).snapshot();
            let elapsed = started.elapsed().as_secs_f64();
            let of = total.map_or(String::new(), |t| format!("/{:.0}s", t.as_secs_f64()));
            eprint!("\r{label} [{elapsed:.0}s{of}] ok {ok}  errors {err}  p99 {p99:.3} ms   ");
        }
    })
}

fn finish(
    mut result: RunResult,
    args: &Args,
    cpu_before: Duration,
    wall: Duration,
    before: Option<server_stats::Snapshot>,
    after: Option<server_stats::Snapshot>,
) -> RunResult {
    let cpu = cpu_time().saturating_sub(cpu_before);
    result.client_cpu_percent = 100.0 * cpu.as_secs_f64() / wall.as_secs_f64().max(1e-9);
    // Includes warm-up requests, which are sent but not counted: divide by all of them.
    let sent = result.requests as f64 * wall.as_secs_f64() / result.duration_s.max(1e-9);
    result.client_cpu_us_per_request = cpu.as_secs_f64() * 1e6 / sent.max(1.0);
    result.client_threads = args.threads();
    result.model = args.model.clone();
    result.protocol = match args.protocol {
        Protocol::HttpJson => "http-json",
        Protocol::HttpBinary => "http-binary",
        Protocol::Grpc => "grpc",
        Protocol::Openai => "openai",
        Protocol::Tei => "tei",
    }
    .into();
    if let (Some(b), Some(a)) = (before, after) {
        result.server = Some(server_stats::split(&b, &a));
    }
    if !args.json && std::io::stderr().is_terminal() {
        eprintln!();
    }
    result
}

/// `concurrency` workers, each with its own connection (gRPC: channels shared by up to 8).
pub async fn closed_loop(
    target: &Target,
    prepared: &Prepared,
    args: &Args,
    concurrency: usize,
) -> anyhow::Result<RunResult> {
    let concurrency = concurrency.max(1);
    let mut conns = Vec::with_capacity(concurrency);
    for i in 0..concurrency {
        match (target.protocol, conns.first()) {
            (Protocol::Grpc, Some(Conn::Grpc(first))) if i % 8 != 0 => {
                conns.push(Conn::Grpc(first.clone()))
            }
            _ => conns.push(target.connect().await?),
        }
    }
    let before = server_stats::fetch(target, args).await;
    let start = Instant::now();
    let measure_from = start + args.warmup;
    let deadline = args.effective_duration().map(|d| measure_from + d);
    let recorder = Arc::new(Mutex::new(Recorder::new(measure_from, deadline)));
    let issued = Arc::new(AtomicU64::new(0));
    let requests = Arc::new(prepared.requests.clone());
    let cpu_before = cpu_time();
    let ticker = progress(
        args,
        Arc::clone(&recorder),
        format!("c={concurrency}"),
        start,
    );
    let mut workers = tokio::task::JoinSet::new();
    for (id, mut conn) in conns.into_iter().enumerate() {
        let (recorder, issued, requests) = (
            Arc::clone(&recorder),
            Arc::clone(&issued),
            Arc::clone(&requests),
        );
        let (limit, timeout) = (args.requests, args.timeout);
        workers.spawn(async move {
            let mut next = id;
            loop {
                let now = Instant::now();
                if deadline.is_some_and(|d| now >= d) {
                    break;
                }
                if now >= measure_from
                    && let Some(limit) = limit
                    && issued.fetch_add(1, Ordering::Relaxed) >= limit
                {
                    break;
                }
                let request = &requests[next % requests.len()];
                next += 1;
                let outcome = conn.send(request, timeout).await;
                lock(&recorder).record(now, Instant::now(), &outcome);
            }
        });
    }
    while workers.join_next().await.is_some() {}
    ticker.abort();
    let end = deadline.map_or_else(Instant::now, |d| d.min(Instant::now()));
    let after = server_stats::fetch(target, args).await;
    let recorder = Arc::into_inner(recorder)
        .expect("workers are done")
        .into_inner()
        .unwrap_or_else(|e| e.into_inner());
    let mut result = recorder.finish(end);
    result.concurrency = Some(concurrency);
    Ok(finish(
        result,
        args,
        cpu_before,
        start.elapsed(),
        before,
        after,
    ))
}

/// Connections for open-loop requests: reused when idle, opened when all are busy.
struct Pool {
    idle: Mutex<Vec<Conn>>,
    target: Target,
}

impl Pool {
    async fn take(&self) -> Result<Conn, String> {
        let reused = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            match (self.target.protocol, idle.last()) {
                // A gRPC channel multiplexes: share it instead of opening more.
                (Protocol::Grpc, Some(Conn::Grpc(c))) => Some(Conn::Grpc(c.clone())),
                _ => idle.pop(),
            }
        };
        match reused {
            Some(conn) => Ok(conn),
            None => self
                .target
                .connect()
                .await
                .map_err(|_| "connect".to_string()),
        }
    }

    fn give_back(&self, conn: Conn) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if self.target.protocol != Protocol::Grpc || idle.is_empty() {
            idle.push(conn);
        }
    }
}

/// Requests at `rate` per second with Poisson or uniform gaps, latency from the intended time.
pub async fn open_loop(
    target: &Target,
    prepared: &Prepared,
    args: &Args,
    rate: f64,
) -> anyhow::Result<RunResult> {
    anyhow::ensure!(
        rate > 0.0 && rate.is_finite(),
        "--rate must be a positive number"
    );
    let pool = Arc::new(Pool {
        idle: Mutex::new(Vec::new()),
        target: target.clone(),
    });
    for _ in 0..(rate / 100.0).clamp(1.0, 32.0) as usize {
        let conn = target.connect().await?;
        pool.give_back(conn);
    }
    let before = server_stats::fetch(target, args).await;
    let start = Instant::now();
    let measure_from = start + args.warmup;
    let deadline = args.effective_duration().map(|d| measure_from + d);
    let recorder = Arc::new(Mutex::new(Recorder::new(measure_from, deadline)));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(prepared.requests.clone());
    let cpu_before = cpu_time();
    let ticker = progress(args, Arc::clone(&recorder), format!("rate={rate}"), start);
    let mut rng = Rng::new(args.seed ^ 0x9e37_79b9_7f4a_7c15);
    let mut intended = start;
    let mut sent_measured = 0u64;
    for n in 0usize.. {
        let gap = match args.arrivals {
            Arrivals::Uniform => 1.0 / rate,
            Arrivals::Poisson => -(1.0 - rng.unit()).ln() / rate,
        };
        intended += Duration::from_secs_f64(gap);
        if deadline.is_some_and(|d| intended >= d) {
            break;
        }
        if intended >= measure_from {
            if args.requests.is_some_and(|limit| sent_measured >= limit) {
                break;
            }
            sent_measured += 1;
        }
        tokio::time::sleep_until(intended.into()).await;
        if in_flight.load(Ordering::Relaxed) >= args.max_in_flight {
            lock(&recorder).record(intended, Instant::now(), &Err("client_overload".into()));
            continue;
        }
        in_flight.fetch_add(1, Ordering::Relaxed);
        let (pool, recorder, in_flight, requests) = (
            Arc::clone(&pool),
            Arc::clone(&recorder),
            Arc::clone(&in_flight),
            Arc::clone(&requests),
        );
        let timeout = args.timeout;
        tokio::spawn(async move {
            let outcome = match pool.take().await {
                Ok(mut conn) => {
                    let outcome = conn.send(&requests[n % requests.len()], timeout).await;
                    if outcome.is_ok() {
                        pool.give_back(conn);
                    }
                    outcome
                }
                Err(e) => Err(e),
            };
            lock(&recorder).record(intended, Instant::now(), &outcome);
            in_flight.fetch_sub(1, Ordering::Relaxed);
        });
    }
    let drain_until = Instant::now() + args.timeout + Duration::from_secs(1);
    while in_flight.load(Ordering::Relaxed) > 0 && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    ticker.abort();
    let end = deadline.map_or_else(Instant::now, |d| d.min(Instant::now()));
    let after = server_stats::fetch(target, args).await;
    let snapshot = std::mem::replace(&mut *lock(&recorder), Recorder::new(measure_from, deadline));
    let mut result = snapshot.finish(end);
    result.rate = Some(rate);
    Ok(finish(
        result,
        args,
        cpu_before,
        start.elapsed(),
        before,
        after,
    ))
}
