//! The infergate server: one tower stack behind a KServe V2 HTTP front end and a gRPC front
//! end, plus the admin listener (metrics and the management API).

mod admin;
pub mod admission;
pub mod batch;
pub mod cli;
pub mod console;
pub mod consume;
pub mod core;
pub mod drift;
pub mod error;
mod grpc;
pub mod heap;
mod http;
pub mod image;
pub mod layers;
pub mod logging;
pub mod metrics;
pub mod pool;
pub mod registry_cli;
pub mod repository;
pub mod security;
pub mod stack;
pub mod stats;
pub mod telemetry;
pub mod text;
pub mod tls;
pub mod views;

/// The front ends' decoders of untrusted bytes, for the fuzz targets under `fuzz/`: exactly
/// the code a request body or message goes through before the stack sees it.
pub mod decode {
    use bytes::Bytes;
    use prost::Message as _;

    use crate::core::InferRequest;
    use crate::error::ServeError;

    /// An HTTP infer body: JSON header, then the binary-extension tail (possibly empty).
    pub fn http(json: &[u8], binary: Bytes) -> Result<InferRequest, ServeError> {
        let (mut req, _) = crate::http::codec::decode("fuzz".into(), None, json, binary)?;
        req.apply_parameters()?;
        Ok(req)
    }

    /// [`http`] with the JSON read by serde_json alone: the reference that the one-pass reader
    /// must agree with.
    pub fn http_serde(json: &[u8], binary: Bytes) -> Result<InferRequest, ServeError> {
        let (mut req, _) = crate::http::codec::decode_serde("fuzz".into(), None, json, binary)?;
        req.apply_parameters()?;
        Ok(req)
    }

    /// What a decoded request comes to, for comparing two decoders: its id, parameters (sorted:
    /// they come from a map), inputs (name, datatype, shape and bytes) and requested outputs.
    pub fn summary(req: &InferRequest) -> String {
        let mut parameters = req.parameters.clone();
        parameters.sort_by(|a, b| a.0.cmp(&b.0));
        let inputs: Vec<_> = req
            .inputs
            .iter()
            .map(|i| format!("{} {:?}", i.name, i.tensor))
            .collect();
        format!("{:?} {parameters:?} {inputs:?} {:?}", req.id, req.outputs)
    }

    /// A serialized gRPC `ModelInferRequest`.
    pub fn grpc(message: &[u8]) -> Result<InferRequest, ServeError> {
        let message = infergate_proto::inference::ModelInferRequest::decode(message)
            .map_err(|e| ServeError::invalid(format!("malformed message: {e}")))?;
        let mut req = crate::grpc::convert::request(message)?;
        req.apply_parameters()?;
        Ok(req)
    }
}

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use infergate_config::Config;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::repository::Repository;
use crate::stack::Stack;

/// What every front end shares: the stack, the repository, metrics, config and readiness.
pub struct Gateway {
    pub stack: Stack,
    pub admission: admission::Admission,
    pub repository: Arc<Repository>,
    pub metrics: Arc<Metrics>,
    pub config: Config,
    /// Routes in force, replaceable through the admin API (the stack routes; front ends ask
    /// whether a name is one).
    pub routes: Arc<layers::route::RouteTable>,
    /// Tokens, scopes and the audit log.
    pub security: security::Security,
    /// The log filter, changeable through the admin API (absent when the embedding program
    /// installed its own subscriber).
    pub log: std::sync::OnceLock<Arc<logging::LogControl>>,
    /// The console's live series, sampled once a second while the server runs.
    pub traffic: console::Traffic,
    ready: watch::Sender<bool>,
}

impl Gateway {
    pub fn new(config: Config, repository: Arc<Repository>) -> anyhow::Result<Arc<Self>> {
        Self::with_metrics(config, repository, Arc::default())
    }

    /// [`Gateway::new`] exporting into `metrics` (made earlier, e.g. for the trace exporter's
    /// counters).
    pub fn with_metrics(
        config: Config,
        repository: Arc<Repository>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Arc<Self>> {
        let security = security::Security::new(&config.security)?;
        metrics.per_request.store(
            config.telemetry.request_metrics,
            std::sync::atomic::Ordering::Relaxed,
        );
        let routes = Arc::new(layers::route::RouteTable::new(&config.routes));
        if let Some(registry) = repository.registry() {
            routes.on_canary_transition(canary_audit(Arc::clone(registry)));
        }
        Ok(Arc::new(Self {
            security,
            log: std::sync::OnceLock::new(),
            stack: stack::build(
                Arc::clone(&repository),
                Arc::clone(&metrics),
                Arc::clone(&routes),
            ),
            routes,
            admission: admission::Admission::new(&config.limits),
            repository,
            metrics,
            config,
            traffic: console::Traffic::default(),
            ready: watch::Sender::new(false),
        }))
    }

    /// Runs a decoded request through the stack in the current (request) span, recording on
    /// it who served the answer: what every front end does once it has an [`InferRequest`].
    pub async fn infer(
        &self,
        mut req: core::InferRequest,
    ) -> Result<core::InferResponse, error::ServeError> {
        use tower::ServiceExt as _;
        req.span = tracing::Span::current();
        let resp = self
            .stack
            .clone()
            .oneshot(req)
            .await
            .map_err(error::ServeError::from)?;
        telemetry::record_response(&tracing::Span::current(), self, &resp);
        Ok(resp)
    }

    /// Ready to serve inference (false before start and while shutting down).
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    fn set_ready(&self, ready: bool) {
        self.ready.send_replace(ready);
    }

    fn watch_ready(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }
}

/// The three bound listeners. Binding is the caller's job, so tests can use port 0.
pub struct Listeners {
    pub http: TcpListener,
    pub grpc: TcpListener,
    pub admin: TcpListener,
}

/// Where the listeners ended up.
#[derive(Debug, Clone, Copy)]
pub struct BoundAddrs {
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
}

impl Listeners {
    /// Binds the configured addresses.
    pub async fn bind(config: &infergate_config::ServerConfig) -> anyhow::Result<Self> {
        let bind = |addr: SocketAddr, what: &'static str| async move {
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot bind the {what} listener to {addr}"))
        };
        Ok(Self {
            http: bind(config.http_addr, "http").await?,
            grpc: bind(config.grpc_addr, "grpc").await?,
            admin: bind(config.admin_addr, "admin").await?,
        })
    }

    pub fn addrs(&self) -> std::io::Result<BoundAddrs> {
        Ok(BoundAddrs {
            http: self.http.local_addr()?,
            grpc: self.grpc.local_addr()?,
            admin: self.admin.local_addr()?,
        })
    }
}

/// Everything `run` needs.
pub struct RunArgs {
    pub config: Config,
    pub repository: Arc<Repository>,
    pub listeners: Listeners,
    /// Cancel to shut down gracefully: stop accepting, answer what was accepted, return.
    pub shutdown: CancellationToken,
    /// The log filter the admin API may change.
    pub log: Option<Arc<logging::LogControl>>,
    /// The metrics to export into (fresh ones when none).
    pub metrics: Option<Arc<Metrics>>,
}

/// Serves until `shutdown` is cancelled, then drains in-flight requests (bounded by
/// `server.drain_timeout_ms`).
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let RunArgs {
        config,
        repository,
        listeners,
        shutdown,
        log,
        metrics,
    } = args;
    let addrs = listeners.addrs()?;
    let drain = Duration::from_millis(config.server.drain_timeout_ms);
    let gateway = Gateway::with_metrics(config, repository, metrics.unwrap_or_default())?;
    if let Some(log) = log {
        let _ = gateway.log.set(log);
    }
    gateway
        .metrics
        .loaded_versions
        .set(gateway.repository.all_versions().len() as i64);

    let mut servers = tokio::task::JoinSet::new();
    let poll = Duration::from_millis(gateway.config.models.registry_poll_ms);
    if gateway.repository.has_registry() && !poll.is_zero() {
        tokio::spawn(follow_registry(
            Arc::clone(&gateway),
            poll,
            shutdown.clone(),
        ));
    }
    tokio::spawn(console::traffic::run(
        Arc::clone(&gateway),
        shutdown.clone(),
    ));
    let trim = Duration::from_millis(gateway.config.runtime.heap_trim_ms);
    if !trim.is_zero() {
        tokio::spawn(trim_heap(
            Arc::clone(&gateway.metrics),
            trim,
            shutdown.clone(),
        ));
    }
    let limits = http::ConnLimits::from_config(&gateway.config.server);
    let tls = match &gateway.config.security.tls {
        Some(tls) => Some(tls::http_acceptor(tls)?),
        None => None,
    };
    let http = http::serve(
        listeners.http,
        http::router(Arc::clone(&gateway)),
        limits,
        tls.clone(),
        shutdown.clone(),
    );
    servers.spawn(async move { http.await.context("http listener failed") });
    let admin = http::serve(
        listeners.admin,
        admin::router(Arc::clone(&gateway)),
        limits,
        tls,
        shutdown.clone(),
    );
    servers.spawn(async move { admin.await.context("admin listener failed") });
    let grpc = grpc::serve(Arc::clone(&gateway), listeners.grpc, shutdown.clone())?;
    servers.spawn(async move { grpc.await.context("grpc listener failed") });

    gateway.set_ready(true);
    let consumers = consume::start(&gateway, &shutdown);
    // The runtime's worker threads (`server.worker_threads`; model threads are apart).
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    println!(
        "infergate serving: http={} grpc={} admin={} workers={workers}",
        addrs.http, addrs.grpc, addrs.admin
    );
    tracing::info!(http = %addrs.http, grpc = %addrs.grpc, admin = %addrs.admin, workers, "infergate serving");
    let scheme = if gateway.config.security.tls.is_some() {
        "https"
    } else {
        "http"
    };
    println!("console: {scheme}://{}/ui", addrs.admin);

    tokio::select! {
        _ = shutdown.cancelled() => {}
        Some(result) = servers.join_next() => {
            shutdown.cancel();
            result.context("listener task panicked")??;
        }
    }
    gateway.set_ready(false);
    tracing::info!(
        drain_ms = drain.as_millis() as u64,
        "shutting down: draining in-flight requests"
    );
    let drained = tokio::time::timeout(drain, async {
        while let Some(result) = servers.join_next().await {
            if let Err(e) = result.context("listener task panicked").and_then(|r| r) {
                tracing::error!(error = %e, "listener stopped with an error");
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!("drain timeout reached; exiting with requests still in flight");
    }
    // Broker consumers finish and acknowledge what they took (what is not acknowledged by the
    // drain timeout is delivered again, to this server or another).
    let consumers = futures::future::join_all(consumers);
    if tokio::time::timeout(drain, consumers).await.is_err() {
        tracing::warn!(
            "drain timeout reached with broker messages unacknowledged; the broker delivers them again"
        );
    }
    tracing::info!("infergate stopped");
    Ok(())
}

/// Writes canary transitions of registry models to the registry's audit log, beside the
/// alias moves and promotions of the same model.
fn canary_audit(registry: Arc<infergate_registry::Registry>) -> layers::route::CanaryHook {
    Arc::new(move |event: layers::route::CanaryEvent| {
        let registry = Arc::clone(&registry);
        tokio::task::spawn_blocking(move || {
            if !registry
                .models()
                .is_ok_and(|models| models.iter().any(|m| m.name == event.model))
            {
                return;
            }
            let detail = serde_json::json!({
                "route": event.route,
                "variant": event.variant,
                "version": event.version,
                "from_percent": event.from_percent,
                "to_percent": event.to_percent,
                "reason": event.reason,
            });
            if let Err(e) =
                registry.record_event("canary", "canary_transition", &event.model, &detail)
            {
                tracing::error!(error = %e, route = %event.route, "cannot audit a canary transition");
            }
        });
    })
}

/// A period's ticks until shutdown, the first one period from now; a late tick delays the next.
struct Ticks {
    interval: tokio::time::Interval,
    shutdown: CancellationToken,
}

impl Ticks {
    async fn new(every: Duration, shutdown: CancellationToken) -> Self {
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval.tick().await;
        Self { interval, shutdown }
    }

    /// Waits for the next tick: false once shut down.
    async fn next(&mut self) -> bool {
        tokio::select! {
            _ = self.shutdown.cancelled() => false,
            _ = self.interval.tick() => true,
        }
    }
}

/// Gives glibc's unused heap back to the system every `every` until shutdown
/// (`runtime.heap_trim_ms`).
async fn trim_heap(metrics: Arc<Metrics>, every: Duration, shutdown: CancellationToken) {
    let mut ticks = Ticks::new(every, shutdown).await;
    while ticks.next().await {
        // Walking the arenas takes their locks: off the request threads.
        if let Ok(true) =
            tokio::task::spawn_blocking(|| heap::trim_c_heap(heap::TRIM_SLACK_BYTES)).await
        {
            metrics.heap_trims.inc();
        }
    }
}

/// Polls the registry and hot-swaps what changed until shutdown.
async fn follow_registry(gateway: Arc<Gateway>, every: Duration, shutdown: CancellationToken) {
    let mut ticks = Ticks::new(every, shutdown).await;
    while ticks.next().await {
        let changed = match gateway.repository.sync_registry().await {
            Ok(changed) => changed,
            Err(e) => {
                gateway.metrics.registry_poll_errors.inc();
                tracing::error!(error = %e, "registry poll failed; serving what is loaded");
                continue;
            }
        };
        if !changed.is_empty() {
            gateway
                .metrics
                .loaded_versions
                .set(gateway.repository.all_versions().len() as i64);
            tracing::info!(models = ?changed, "registry changes applied");
        }
    }
}
