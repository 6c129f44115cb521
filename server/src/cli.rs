//! The `infergate` command line and the start-up sequence behind `infergate serve`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use infergate_config::{Config, Overrides};
use infergate_runtime::ort::{OrtRuntime, discover};
use tokio_util::sync::CancellationToken;

use crate::repository::Repository;
use crate::{Listeners, RunArgs};

/// infergate: a KServe V2 inference server and gateway.
#[derive(Debug, Parser)]
#[command(name = "infergate", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve a model repository and/or registry over KServe V2 HTTP and gRPC.
    Serve(ServeArgs),
    /// Score files offline (Parquet, JSON Lines, CSV) with a model: resumable, shardable.
    Batch(crate::batch::BatchArgs),
    /// Manage the model registry.
    Registry(crate::registry_cli::RegistryArgs),
    /// Check a configuration file, print the commented example, hash a token.
    Config(ConfigArgs),
    /// Exit 0 when the server at ADDR answers 200 on /v2/health/ready (for container
    /// health checks, where no curl is installed).
    Health {
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8000")]
        addr: SocketAddr,
    },
}

/// One plain-HTTP readiness probe of `addr`, bounded to two seconds.
pub fn probe_ready(addr: SocketAddr) -> anyhow::Result<()> {
    use std::io::{Read as _, Write as _};
    let timeout = std::time::Duration::from_secs(2);
    let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET /v2/health/ready HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = [0u8; 64];
    let n = stream.read(&mut head)?;
    let status_line = String::from_utf8_lossy(&head[..n]);
    let status = status_line.split_whitespace().nth(1).unwrap_or("none");
    anyhow::ensure!(status == "200", "{addr} is not ready (status {status})");
    Ok(())
}

/// `infergate config …`
#[derive(Debug, Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    pub command: ConfigCommand,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate FILE with the `INFERGATE_…` variables applied; print every problem, or the
    /// effective configuration (secrets redacted).
    Check {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Print a configuration file with every setting, its documentation and its default.
    Example,
    /// Print the SHA-256 digest to put in `security.tokens` for a token read from stdin.
    HashToken,
}

/// `infergate serve` flags; each overrides the config file and `INFERGATE_…` variables.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Model repository in the Triton layout: DIR/<model>/<version>/model.onnx.
    #[arg(long, value_name = "DIR")]
    pub model_repository: Option<PathBuf>,
    /// Model registry: serve every model's `production` alias (and every version by number).
    #[arg(long, value_name = "DIR")]
    pub registry: Option<PathBuf>,
    /// TOML configuration file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// HTTP/REST listener [default: 0.0.0.0:8000].
    #[arg(long, value_name = "ADDR")]
    pub http_addr: Option<SocketAddr>,
    /// gRPC listener [default: 0.0.0.0:8001].
    #[arg(long, value_name = "ADDR")]
    pub grpc_addr: Option<SocketAddr>,
    /// Admin listener: /metrics and the management API [default: 0.0.0.0:8002].
    #[arg(long, value_name = "ADDR")]
    pub admin_addr: Option<SocketAddr>,
    /// Open the management API without tokens: local development only (logged loudly).
    #[arg(long)]
    pub insecure_admin: bool,
}

/// Runs `infergate config …`; the output goes to `out`.
pub fn config_command(
    args: ConfigArgs,
    env: Vec<(String, String)>,
    input: &mut dyn std::io::Read,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<()> {
    match args.command {
        ConfigCommand::Check { file } => {
            let config = Config::load(Some(&file), env, &Overrides::new())?;
            let text = toml::to_string(&config.redacted())?;
            writeln!(out, "# {}: valid\n{text}", file.display())?;
        }
        ConfigCommand::Example => write!(out, "{}", infergate_config::example())?,
        ConfigCommand::HashToken => {
            let mut token = String::new();
            input.read_to_string(&mut token)?;
            anyhow::ensure!(!token.trim().is_empty(), "no token on stdin");
            writeln!(out, "{}", crate::security::hash_token(&token))?;
        }
    }
    Ok(())
}

/// The `--model-repository` and `--registry` flags as config overrides.
pub fn model_overrides(
    repository: Option<&std::path::Path>,
    registry: Option<&std::path::Path>,
) -> Overrides {
    let mut overrides = Overrides::new();
    overrides
        .set("models.repository", repository.map(|p| p.display()))
        .set("models.registry", registry.map(|p| p.display()));
    overrides
}

/// Loads config (file, then `env`, then flags), then serves until SIGINT/SIGTERM on a tokio
/// runtime of `server.worker_threads` threads (see [`serve_config`]).
pub fn serve(args: ServeArgs, env: Vec<(String, String)>) -> anyhow::Result<()> {
    let mut overrides = model_overrides(args.model_repository.as_deref(), args.registry.as_deref());
    overrides
        .set("server.http_addr", args.http_addr)
        .set("server.grpc_addr", args.grpc_addr)
        .set("server.admin_addr", args.admin_addr)
        .set(
            "security.insecure_admin",
            args.insecure_admin.then_some(true),
        );
    let mut config = Config::load(args.config.as_deref(), env.clone(), &overrides)?;
    config.telemetry.apply_otel_env(&env);
    // Before any thread starts or model loads: ONNX Runtime allocates through glibc's malloc.
    let heap = crate::heap::tune_c_heap(
        config.runtime.malloc_arena_max,
        config.runtime.malloc_mmap_threshold_bytes,
    );
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if config.server.worker_threads > 0 {
        runtime.worker_threads(config.server.worker_threads);
    }
    runtime.build()?.block_on(serve_config(config, env, heap))
}

/// Finds ONNX Runtime, loads the repository, binds, and serves until SIGINT/SIGTERM; `heap` is
/// what became of the glibc malloc settings, logged once logging is up.
async fn serve_config(
    config: Config,
    env: Vec<(String, String)>,
    heap: Result<(), String>,
) -> anyhow::Result<()> {
    let metrics = Arc::new(crate::metrics::Metrics::default());
    let traces = crate::telemetry::provider(&config.telemetry, &metrics.trace_spans)?;
    let tracer = traces
        .as_ref()
        .map(|p| opentelemetry::trace::TracerProvider::tracer(p, "infergate"));
    let log = Arc::new(crate::logging::init(&config.log, tracer));
    tracing::info!(config = ?config.redacted(), "effective configuration");
    if let Err(e) = heap {
        tracing::warn!(error = %e, "glibc malloc settings left as they were");
    }

    let repository = open_repository(&config, &env, "serve")?;
    let repository = Arc::new(repository);
    let loaded = repository.load_all().await?;
    tracing::info!(versions = loaded, "model repository loaded");

    let listeners = Listeners::bind(&config.server).await?;
    let shutdown = CancellationToken::new();
    tokio::spawn(signal_shutdown(shutdown.clone()));
    let served = crate::run(RunArgs {
        log: Some(log),
        metrics: Some(metrics),
        config,
        repository,
        listeners,
        shutdown,
    })
    .await;
    if let Some(traces) = traces {
        // Export what is still queued before the process ends.
        let _ = tokio::task::spawn_blocking(move || traces.shutdown()).await;
    }
    served
}

/// The configured repository and/or registry with ONNX Runtime loaded, as `infergate serve`
/// and `infergate batch` open it; `what` ("serve", "score") words the error when neither is set.
pub fn open_repository(
    config: &Config,
    env: &[(String, String)],
    what: &str,
) -> anyhow::Result<Repository> {
    let root = config.models.repository.clone();
    let location = registry_location(config, env);
    if root.is_none() && location.is_none() {
        anyhow::bail!(
            "nothing to {what}: pass --model-repository DIR and/or --registry DIR (or set models.repository / models.registry)"
        );
    }
    let ort_env = env
        .iter()
        .find(|(k, _)| k == "ORT_DYLIB_PATH")
        .map(|(_, v)| PathBuf::from(v));
    let library = discover(config.runtime.ort_dylib_path.as_deref(), ort_env.as_deref())?;
    let runtime = OrtRuntime::init(&library)?;
    tracing::info!(library = %library.display(), "onnx runtime loaded");
    let mut repository = Repository::new(root, Some(runtime), config.runtime.clone())
        .with_model_defaults(config.model_defaults())
        .with_registry_versions(config.models.registry_versions)
        .with_drift(config.drift.clone());
    if let Some(location) = location {
        let registry = infergate_registry::Registry::connect(&location)
            .with_context(|| format!("cannot open the registry ({location})"))?;
        repository = repository.with_registry(Arc::new(registry));
    }
    Ok(repository)
}

/// Where the configured registry is: a directory, PostgreSQL and/or object storage (with the
/// `AWS_…` variables of `env` for the S3 client). None when no registry is configured.
pub fn registry_location(
    config: &Config,
    env: &[(String, String)],
) -> Option<infergate_registry::RegistryLocation> {
    let models = &config.models;
    if models.registry.is_none()
        && models.registry_database_url.is_none()
        && models.registry_store_url.is_none()
    {
        return None;
    }
    Some(infergate_registry::RegistryLocation {
        dir: models.registry.clone(),
        database_url: models.registry_database_url.clone(),
        store: models.registry_store_url.as_ref().map(|url| {
            infergate_registry::ObjectStoreConfig::new(url, &models.registry_store_options, env)
        }),
    })
}

async fn signal_shutdown(token: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received"),
        _ = term => tracing::info!("SIGTERM received"),
    }
    token.cancel();
}
