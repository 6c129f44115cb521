//! `infergate-loadtest`: parse flags, run, print.

use clap::Parser;
use infergate_loadtest::Args;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads())
        .enable_all()
        .build()?;
    let report = runtime.block_on(infergate_loadtest::run(&args))?;
    infergate_loadtest::output::emit(&args, &report)
}
