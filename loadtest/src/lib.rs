//! A black-box load generator for KServe V2 servers: closed-loop sweeps and open-loop rates
//! (latency from the intended send time), HDR percentiles, per-second timelines, errors by
//! status, client CPU, and the server's own queue/compute split from its statistics API.

mod args;
mod drive;
mod duration;
mod inputs;
pub mod output;
mod record;
mod server_stats;
mod target;

pub use args::{Args, Arrivals, Protocol};
pub use duration::parse_duration;
pub use record::{Report, RunResult, Second, ServerSplit};

/// Runs every scenario the flags describe (one per concurrency of a sweep, or one rate).
pub async fn run(args: &Args) -> anyhow::Result<Report> {
    let target = target::Target::parse(&args.url, args.protocol)?;
    let prepared = inputs::prepare(&target, args).await?;
    let mut results = Vec::new();
    if let Some(rate) = args.rate {
        results.push(drive::open_loop(&target, &prepared, args, rate).await?);
    } else {
        for &concurrency in &args.concurrency {
            results.push(drive::closed_loop(&target, &prepared, args, concurrency).await?);
        }
    }
    Ok(Report { results })
}
