//! `infergate`: parse the command line and hand over to the library.

use clap::Parser;
use infergate_server::cli::{Cli, Command};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            infergate_server::cli::serve(args, std::env::vars().collect()).await
        }
        Command::Registry(args) => {
            infergate_server::registry_cli::run(args, std::env::vars().collect())
        }
    }
}
