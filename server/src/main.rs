//! `infergate`: parse the command line and hand over to the library.

use clap::Parser;
use infergate_server::cli::{Cli, Command};

// Request handling allocates and frees small buffers on many threads (tokio workers, model
// workers). glibc's per-thread arenas kept freed memory: a 30-minute soak grew resident memory
// by 17% while the bytes in use stayed near 16 MB of 39 MB held (docs/reliability.md).
// mimalloc returns it.
#[cfg(not(any(feature = "heap-stats", feature = "system-alloc")))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

// Built with `--features heap-stats`, the same allocator, counted (see `infergate_server::heap`).
#[cfg(all(feature = "heap-stats", not(feature = "system-alloc")))]
#[global_allocator]
static GLOBAL: infergate_server::heap::Counting<mimalloc::MiMalloc> =
    infergate_server::heap::Counting(mimalloc::MiMalloc);

// Built with `--features system-alloc`, glibc's malloc, which heap profilers such as heaptrack
// intercept (`HEAPTRACK=FILE scripts/heap_isolate.sh`); counted as well with `heap-stats`.
#[cfg(all(feature = "heap-stats", feature = "system-alloc"))]
#[global_allocator]
static GLOBAL: infergate_server::heap::Counting<std::alloc::System> =
    infergate_server::heap::Counting(std::alloc::System);

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let env = std::env::vars().collect();
    match cli.command {
        // Builds its tokio runtime once the configuration says how many threads it gets; the
        // other commands are synchronous.
        Command::Serve(args) => infergate_server::cli::serve(args, env),
        Command::Batch(args) => infergate_server::batch::run(args, env),
        Command::Registry(args) => infergate_server::registry_cli::run(args, env),
        Command::Health { addr } => infergate_server::cli::probe_ready(addr),
        Command::Config(args) => infergate_server::cli::config_command(
            args,
            env,
            &mut std::io::stdin(),
            &mut std::io::stdout(),
        ),
    }
}
