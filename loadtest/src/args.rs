//! Command-line flags.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::duration::parse_duration;

/// Wire format of the requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// KServe V2 HTTP with JSON tensors.
    HttpJson,
    /// KServe V2 HTTP with Triton's binary tensor extension (inputs and outputs binary).
    HttpBinary,
    /// KServe V2 gRPC with `raw_input_contents`.
    Grpc,
    /// OpenAI's `POST /v1/embeddings`, texts from `--text-file`.
    Openai,
    /// text-embeddings-inference's `POST /embed`, texts from `--text-file`.
    Tei,
}

/// Open-loop arrival process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Arrivals {
    Poisson,
    Uniform,
}

/// Load generator for KServe V2 / Open Inference Protocol servers.
#[derive(Debug, Clone, Parser)]
#[command(name = "infergate-loadtest", about, disable_version_flag = true)]
pub struct Args {
    /// Server: http://HOST:PORT or grpc://HOST:PORT.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub url: String,
    /// Wire format.
    #[arg(long, value_enum, default_value = "http-json")]
    pub protocol: Protocol,
    /// Model name.
    #[arg(long)]
    pub model: String,
    /// Model version (default: the server's choice).
    #[arg(long)]
    pub version: Option<String>,
    /// Closed loop: requests in flight; a comma list runs a sweep (1,8,32,128).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub concurrency: Vec<usize>,
    /// Open loop: requests per second (overrides --concurrency).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Open-loop arrival process.
    #[arg(long, value_enum, default_value = "poisson")]
    pub arrivals: Arrivals,
    /// Measured duration of each scenario (e.g. 10s, 2m).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Measured requests of each scenario (with --duration, whichever comes first).
    #[arg(long)]
    pub requests: Option<u64>,
    /// Warm-up before each scenario, not counted.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    pub warmup: Duration,
    /// Rows per request (replaces a dynamic first dimension).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Input shape, NAME:D1,D2,... (repeatable) for inputs with other dynamic dimensions.
    #[arg(long, value_name = "NAME:DIMS")]
    pub shape: Vec<String>,
    /// File of request bodies (one HTTP JSON body per line), used round-robin (http-json only).
    #[arg(long)]
    pub input_file: Option<PathBuf>,
    /// Texts for --protocol openai|tei, one per line; each request carries `--batch` of them,
    /// taken in turn.
    #[arg(long)]
    pub text_file: Option<PathBuf>,
    /// Encoded images (repeatable) for an image model's BYTES input over http-binary or grpc;
    /// each request carries `--batch` of them, taken in turn.
    #[arg(long)]
    pub image_file: Vec<PathBuf>,
    /// Different random requests to cycle through.
    #[arg(long, default_value_t = 16)]
    pub distinct: usize,
    /// Client runtime threads (default: the available cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Per-request timeout.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub timeout: Duration,
    /// Open loop: most requests in flight before new ones count as `client_overload` errors.
    #[arg(long, default_value_t = 4096)]
    pub max_in_flight: usize,
    /// Print one JSON document on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Write an SVG plot: percentiles against throughput for a sweep, the timeline for a run.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Do not query the server's statistics API.
    #[arg(long)]
    pub no_server_stats: bool,
    /// Random seed for generated inputs and arrivals.
    #[arg(long, default_value_t = 0x1f2e3d4c)]
    pub seed: u64,
}

impl Args {
    /// Runtime threads: `--threads` or the available cores.
    pub fn threads(&self) -> usize {
        self.threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .max(1)
    }

    /// Measured duration when neither bound is given.
    pub fn effective_duration(&self) -> Option<Duration> {
        match (self.duration, self.requests) {
            (None, None) => Some(Duration::from_secs(10)),
            (d, _) => d,
        }
    }
}
