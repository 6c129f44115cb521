//! Typed configuration: the server's TOML file layered with `INFERGATE_…` environment
//! overrides and CLI flags, and the per-model `config.toml` of a model repository.

mod consumer;
mod example;
mod layered;
mod model;
mod security;

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use consumer::ConsumerConfig;
pub use example::example;
pub use layered::{ENV_PREFIX, Overrides};
pub use model::{
    DynamicBatching, ImageBackend, ImageInput, ModelConfig, ModelDefaults, Pooling, ResponseCache,
    TextBackend, TextEmbedding, VersionPolicy,
};
pub use security::{Scope, SecurityConfig, TlsConfig, TokenConfig};

/// Everything wrong with a configuration, reported together.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// TOML syntax or type errors.
    #[error("invalid config {origin}: {message}")]
    Parse { origin: String, message: String },
    /// Semantic problems, all of them at once.
    #[error("invalid config:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

/// The whole server configuration. Every field has a default, so an empty file is valid.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema, Default, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Listeners and request limits.
    pub server: ServerConfig,
    /// Where models come from.
    pub models: ModelsConfig,
    /// Execution defaults (per-model `config.toml` overrides them).
    pub runtime: RuntimeConfig,
    /// Admission control: concurrency limits and client rate limits.
    pub limits: LimitsConfig,
    /// Defaults for the keys a model's `[dynamic_batching]` leaves out (batching itself is
    /// turned on per model, in its `config.toml`).
    pub batching: DynamicBatching,
    /// Defaults for the keys a model's `[response_cache]` leaves out (the cache itself is
    /// turned on per model).
    pub cache: ResponseCache,
    /// Logging.
    pub log: LogConfig,
    /// Drift detection against the training baselines of registry versions.
    pub drift: DriftConfig,
    /// OpenTelemetry traces (OTLP export).
    pub telemetry: TelemetryConfig,
    /// Bearer tokens and scopes, TLS, the audit log.
    pub security: SecurityConfig,
    /// A/B routes: clients call the route's name; each request goes to one variant in
    /// proportion to the weights. A route key (header or gRPC metadata `x-infergate-route-key`,
    /// or the request parameter `route_key`) keeps one user on one variant. The served variant
    /// comes back as the response parameter `variant` and the header `x-infergate-variant`.
    /// Routes can be replaced at run time with `PUT /admin/routes` (admin scope).
    pub routes: Vec<RouteConfig>,
    /// Consumers of asynchronous inference requests on a message broker (NATS JetStream).
    pub consumers: Vec<ConsumerConfig>,
}

/// A route: requests to `name` go to one of the variants, in proportion to the weights.
/// A route key (header `x-infergate-route-key`, gRPC metadata of the same name, or the
/// request parameter `route_key`) makes the choice sticky: one key, one variant.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The name clients call, like a model name.
    pub name: String,
    /// The arms of the split.
    pub variants: Vec<VariantConfig>,
    /// Also send a sample of the requests to another model through a bounded queue (full:
    /// dropped and counted, never waited for), compare its answers with the primary's
    /// (`GET /admin/routes/<name>/shadow`), and throw them away.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowConfig>,
    /// Move traffic to one variant step by step while its SLOs hold; roll back to 0% at once
    /// when one breaks (`GET /admin/routes/<name>/canary` shows the state and transitions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryConfig>,
    /// When the chosen variant is overloaded, answer from this variant instead of rejecting
    /// (the response says so).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
}

/// A canary rollout over a route's variants.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CanaryConfig {
    /// The variant being rolled out; its configured weight is ignored.
    pub variant: String,
    /// Its share of the traffic at each step, in percent, ascending (e.g. 1, 5, 25, 100).
    pub steps: Vec<u32>,
    /// Least time spent at a step before the next.
    pub step_ms: u64,
    /// Least canary requests seen at a step before the next.
    pub min_requests: u64,
    /// Largest share of failed canary requests (0 to 1).
    pub max_error_rate: f64,
    /// Largest 95th-percentile latency of canary requests, milliseconds.
    #[serde(default)]
    pub max_p95_ms: Option<f64>,
}

/// Shadow traffic of a route.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ShadowConfig {
    /// The model that answers in the shadow.
    pub model: String,
    /// A version number or registry alias; none: the default.
    #[serde(default)]
    pub version: Option<String>,
    /// Share of the route's requests mirrored, 0 to 1.
    pub fraction: f64,
    /// Mirrored requests waiting for the shadow; more are dropped (and counted), never
    /// waited for.
    #[serde(default = "default_shadow_queue")]
    pub queue: usize,
}

fn default_shadow_queue() -> usize {
    64
}

/// One arm of a route.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VariantConfig {
    /// Returned to clients (response parameter `variant`, header `x-infergate-variant`).
    pub name: String,
    /// The model that answers.
    pub model: String,
    /// A version number or registry alias (`production`, `distilled`…); none: the default.
    #[serde(default)]
    pub version: Option<String>,
    /// Relative share of the traffic.
    pub weight: u32,
}

/// Listener addresses and request-level limits.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// KServe V2 HTTP/REST listener.
    pub http_addr: SocketAddr,
    /// KServe V2 gRPC listener.
    pub grpc_addr: SocketAddr,
    /// Admin listener: `/metrics` and the management API.
    pub admin_addr: SocketAddr,
    /// Largest accepted request body (after decompression), in bytes. Larger: 413.
    pub max_body_bytes: usize,
    /// Serve RepositoryModelLoad/Unload on the public gRPC port (otherwise PERMISSION_DENIED).
    pub grpc_repository_control: bool,
    /// How long graceful shutdown waits for in-flight requests, in milliseconds.
    pub drain_timeout_ms: u64,
    /// An HTTP/1 connection must send a request's complete headers within this many
    /// milliseconds (slow-header clients are disconnected).
    pub header_timeout_ms: u64,
    /// A request body must arrive completely within this many milliseconds of its headers
    /// (slower: 408).
    pub body_timeout_ms: u64,
    /// Concurrent HTTP/2 streams per connection, on the gRPC and HTTP listeners.
    pub max_concurrent_streams: u32,
    /// Largest request header block, in bytes (at least 8192). Larger: 431 on HTTP/1; the
    /// stream is refused on HTTP/2 and gRPC.
    pub max_header_bytes: usize,
    /// Most elements in one input tensor. More: 413 / RESOURCE_EXHAUSTED, before the model
    /// sees it.
    pub max_tensor_elements: usize,
    /// HTTP responses smaller than this many bytes are sent uncompressed even when the client
    /// accepts gzip or deflate: they fit in one TCP segment either way, and compressing them
    /// costs more CPU than the inference of a small model.
    pub compress_min_bytes: u16,
    /// Threads of the async runtime that runs the listeners and the gateway stack; 0: one per
    /// CPU core the process may use. Model execution runs on threads of its own (`instances`
    /// per loaded version), so on a small machine fewer front-end threads can leave the model
    /// threads a core each.
    pub worker_threads: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            http_addr: SocketAddr::from(([0, 0, 0, 0], 8000)),
            grpc_addr: SocketAddr::from(([0, 0, 0, 0], 8001)),
            admin_addr: SocketAddr::from(([0, 0, 0, 0], 8002)),
            max_body_bytes: 64 * 1024 * 1024,
            grpc_repository_control: false,
            drain_timeout_ms: 30_000,
            header_timeout_ms: 30_000,
            body_timeout_ms: 30_000,
            max_concurrent_streams: 1024,
            max_header_bytes: 64 * 1024,
            max_tensor_elements: 1 << 26,
            compress_min_bytes: 1024,
            worker_threads: 0,
        }
    }
}

/// Model sources.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ModelsConfig {
    /// A Triton-layout repository: `<dir>/<model>/<version>/model.onnx`.
    pub repository: Option<PathBuf>,
    /// A model registry (`infergate registry`, `infergate-train`): every model's `production`
    /// alias is served as its default version, every version by number.
    pub registry: Option<PathBuf>,
    /// How often the server checks the registry for new versions and moved aliases (hot
    /// swap), in milliseconds; 0 turns following off.
    pub registry_poll_ms: u64,
    /// Which registry versions serve: `all` (every version, by number) or `aliased` (only
    /// versions an alias names; when an alias moves away from a version, the version is
    /// dropped once its in-flight requests finish, and its memory is freed).
    pub registry_versions: RegistryVersions,
    /// The registry's metadata in PostgreSQL instead of `<registry>/registry.db`:
    /// `postgres://user:password@host:port/database`. Every server and registry client given
    /// the same database shares one registry and follows the same aliases.
    pub registry_database_url: Option<String>,
    /// The registry's artifacts in S3-compatible object storage instead of
    /// `<registry>/artifacts`: `s3://bucket/prefix`.
    pub registry_store_url: Option<String>,
    /// Settings of the S3 client: `endpoint`, `region`, `allow_http`, `access_key_id`,
    /// `secret_access_key`, … (the `AWS_*` environment variables fill in what is not set
    /// here).
    pub registry_store_options: std::collections::BTreeMap<String, String>,
}

impl Default for ModelsConfig {
    fn default() -> Self {
        Self {
            repository: None,
            registry: None,
            registry_poll_ms: 2000,
            registry_versions: RegistryVersions::All,
            registry_database_url: None,
            registry_store_url: None,
            registry_store_options: Default::default(),
        }
    }
}

/// OpenTelemetry traces: one span per request with its stages, joined to the caller's trace
/// (W3C `traceparent`), exported over OTLP. The standard `OTEL_…` variables fill what this
/// section leaves unset ([`TelemetryConfig::apply_otel_env`]).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// OTLP collector endpoint, e.g. `http://otel-collector:4317` (gRPC) or
    /// `http://otel-collector:4318` (HTTP, which posts to `/v1/traces` under it); none (and
    /// no `otlp_traces_endpoint`): traces are not exported.
    pub otlp_endpoint: Option<String>,
    /// The traces endpoint in full, used as given (OTLP/HTTP adds no `/v1/traces`); wins over
    /// `otlp_endpoint`.
    pub otlp_traces_endpoint: Option<String>,
    /// `grpc` or `http/protobuf`.
    pub otlp_protocol: String,
    /// Headers sent with every export (an API key, say).
    pub otlp_headers: std::collections::BTreeMap<String, String>,
    /// Share of new traces recorded, 0 to 1; a caller's sampling decision is followed.
    pub sampling_ratio: f64,
    /// The `service.name` of the spans.
    pub service_name: String,
    /// Finished spans waiting for export; more are dropped, never waited for.
    pub max_queue: usize,
    /// Record the per-request Prometheus series (request counts and latency, queue, compute
    /// and batch-size histograms). Off saves their cost; gauges, rejection counters and the
    /// statistics API stay.
    pub request_metrics: bool,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            otlp_traces_endpoint: None,
            otlp_protocol: "grpc".into(),
            otlp_headers: Default::default(),
            sampling_ratio: 1.0,
            service_name: "infergate".into(),
            max_queue: 2048,
            request_metrics: true,
        }
    }
}

impl TelemetryConfig {
    /// Fills unset settings from the standard `OTEL_…` variables of `env`, as the
    /// OpenTelemetry specification reads them:
    /// - `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as given) before `OTEL_EXPORTER_OTLP_ENDPOINT`
    ///   (to which OTLP/HTTP adds `/v1/traces`);
    /// - `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` before `OTEL_EXPORTER_OTLP_PROTOCOL`;
    /// - `OTEL_EXPORTER_OTLP_HEADERS` and then `OTEL_EXPORTER_OTLP_TRACES_HEADERS` (which wins
    ///   for a name in both): `name=value` pairs split by commas, percent-decoded;
    /// - `OTEL_SERVICE_NAME`;
    /// - `OTEL_TRACES_SAMPLER`: `always_on` and `always_off` are ratios 1 and 0, a
    ///   `traceidratio` sampler takes `OTEL_TRACES_SAMPLER_ARG` (1 without it); each is
    ///   parent-based here (a caller's decision is followed). Without it the argument alone
    ///   sets the ratio;
    /// - `OTEL_SDK_DISABLED=true` turns the export off, whatever else is set.
    pub fn apply_otel_env(&mut self, env: &[(String, String)]) {
        let var = |name: &str| {
            env.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let defaults = Self::default();
        if self.otlp_endpoint.is_none() && self.otlp_traces_endpoint.is_none() {
            self.otlp_traces_endpoint = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
            self.otlp_endpoint = var("OTEL_EXPORTER_OTLP_ENDPOINT");
        }
        if self.otlp_protocol == defaults.otlp_protocol
            && let Some(p) = var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                .or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"))
        {
            self.otlp_protocol = p;
        }
        if self.otlp_headers.is_empty() {
            for name in [
                "OTEL_EXPORTER_OTLP_HEADERS",
                "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
            ] {
                self.otlp_headers
                    .extend(var(name).iter().flat_map(|h| otel_headers(h)));
            }
        }
        if self.service_name == defaults.service_name
            && let Some(n) = var("OTEL_SERVICE_NAME")
        {
            self.service_name = n;
        }
        let ratio = || var("OTEL_TRACES_SAMPLER_ARG").and_then(|r| r.parse().ok());
        let sampled = match var("OTEL_TRACES_SAMPLER").as_deref() {
            Some("always_on" | "parentbased_always_on") => Some(1.0),
            Some("always_off" | "parentbased_always_off") => Some(0.0),
            Some("traceidratio" | "parentbased_traceidratio") => Some(ratio().unwrap_or(1.0)),
            Some(_) => None,
            None => ratio(),
        };
        if self.sampling_ratio == defaults.sampling_ratio
            && let Some(r) = sampled
        {
            self.sampling_ratio = r;
        }
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            self.otlp_endpoint = None;
            self.otlp_traces_endpoint = None;
        }
    }

    /// Where spans go: the traces endpoint as given, else the endpoint (with `/v1/traces`
    /// added for OTLP/HTTP); none when neither is set.
    pub fn traces_url(&self) -> Option<String> {
        if let Some(url) = &self.otlp_traces_endpoint {
            return Some(url.clone());
        }
        let endpoint = self.otlp_endpoint.as_ref()?;
        Some(if self.otlp_protocol == "grpc" {
            endpoint.clone()
        } else {
            format!("{}/v1/traces", endpoint.trim_end_matches('/'))
        })
    }
}

/// `OTEL_EXPORTER_OTLP_HEADERS`: `name=value` pairs split by commas, each part
/// percent-decoded (`Authorization=Basic%20…`; a part that does not decode is kept as
/// written); a pair without '=' is skipped.
fn otel_headers(text: &str) -> Vec<(String, String)> {
    let decode = |s: &str| percent_decode(s.trim()).unwrap_or_else(|| s.trim().to_owned());
    text.split(',')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .filter(|(k, _)| !k.is_empty())
        .collect()
}

/// `text` with its `%XX` escapes decoded; `None` for an escape that is not two hex digits or
/// a result that is not UTF-8. A '+' stays a '+'.
pub fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Drift detection: live inputs and predictions of registry versions that carry a training
/// baseline, compared window by window (population stability index).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DriftConfig {
    /// Compare live traffic with the baseline at all.
    pub enabled: bool,
    /// One request in this many gives its first row to the comparison.
    pub sample_every: u32,
    /// Sampled rows per window; each closed window is compared and reported.
    pub window_rows: usize,
    /// PSI above which a window counts as drifted (0.1 some shift, 0.25 a large one, by the
    /// usual rule of thumb); a drifted window logs one warning.
    pub psi_threshold: f64,
}

impl Default for DriftConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            sample_every: 8,
            window_rows: 512,
            psi_threshold: 0.2,
        }
    }
}

/// Which registry versions a server loads.
#[derive(
    Debug, Clone, Copy, Serialize, Deserialize, schemars::JsonSchema, PartialEq, Eq, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum RegistryVersions {
    /// Every version, each by number.
    #[default]
    All,
    /// Only versions that an alias names (and the current default).
    Aliased,
}

/// Execution defaults for every model.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Path to `libonnxruntime.so`; first in the discovery order.
    pub ort_dylib_path: Option<PathBuf>,
    /// Worker threads (each with its own session) per model version.
    pub instances: usize,
    /// ONNX Runtime intra-op threads per session; 0 lets ONNX Runtime decide.
    pub intra_op_threads: usize,
    /// Capacity of each model version's request channel; a full channel answers 503.
    pub queue_capacity: usize,
    /// Model weights loaded at once, in bytes, counted as the serving artifacts' sizes across
    /// every model and version; a load that would go over it fails (the reason is in the
    /// repository index) and leaves what serves untouched. 0 = no budget.
    pub memory_budget_bytes: u64,
    /// Every this many milliseconds, memory that glibc's malloc (where ONNX Runtime allocates)
    /// holds unused beyond 4 MiB is given back to the system. Without it, resident memory
    /// creeps up under sustained load. 0 = never.
    pub heap_trim_ms: u64,
    /// At most this many glibc malloc arenas (ONNX Runtime allocates there); 0 = glibc's
    /// default of eight per core. Each thread that allocates may otherwise get an arena of its
    /// own, whose freed memory only that arena can reuse. Set once, when the server starts.
    pub malloc_arena_max: usize,
    /// glibc malloc serves blocks of at least this many bytes with their own mappings, which
    /// go back to the system when freed; 0 = glibc's sliding threshold, which rises to the size
    /// of each such block freed and moves later ones into the arenas. Set once, when the
    /// server starts.
    pub malloc_mmap_threshold_bytes: u64,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            ort_dylib_path: None,
            instances: 1,
            intra_op_threads: 0,
            queue_capacity: 1024,
            memory_budget_bytes: 0,
            heap_trim_ms: 10_000,
            malloc_arena_max: 2,
            malloc_mmap_threshold_bytes: 128 << 10,
        }
    }
}

/// Admission control, applied before a request body is read or decoded.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Inference requests in flight across all models before new ones get 503; 0 = no limit.
    pub max_concurrent_requests: usize,
    /// Per-client token bucket refill rate (requests per second); 0 = no rate limit.
    pub rate_limit_per_second: f64,
    /// Per-client bucket size (the burst allowed).
    pub rate_limit_burst: u32,
    /// Header whose value identifies a client for rate limiting (else the client address).
    pub client_key_header: String,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_concurrent_requests: 4096,
            rate_limit_per_second: 0.0,
            rate_limit_burst: 100,
            client_key_header: "x-api-key".into(),
        }
    }
}

/// Logging.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `tracing` filter directive, e.g. `info` or `infergate_server=debug`.
    pub level: String,
    /// `text` or `json`.
    pub format: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

impl Config {
    /// Loads the file (if any), applies `INFERGATE_…` variables from `env`, then CLI overrides,
    /// and validates. `env` is passed in because domain crates never read the environment.
    pub fn load<I>(
        file: Option<&std::path::Path>,
        env: I,
        cli: &Overrides,
    ) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let config: Config = layered::load(file, env, cli)?;
        config.validate()?;
        Ok(config)
    }

    /// Parses and checks the text of a configuration file (no environment, no flags);
    /// `origin` names it in error messages.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let config: Config =
            layered::load_text(Some((origin, text)), Vec::new(), &Overrides::default())?;
        config.validate()?;
        Ok(config)
    }

    /// The defaults that models' `config.toml` files fill their sections from.
    pub fn model_defaults(&self) -> ModelDefaults {
        ModelDefaults {
            batching: self.batching.clone(),
            cache: self.cache.clone(),
        }
    }

    /// The configuration as it may be logged: secrets (token digests) replaced.
    pub fn redacted(&self) -> Self {
        let mut models = self.models.clone();
        models.registry_database_url = models.registry_database_url.as_deref().map(redact_url);
        models.registry_store_url = models.registry_store_url.as_deref().map(redact_url);
        for (key, value) in &mut models.registry_store_options {
            if ["secret", "token", "password"]
                .iter()
                .any(|s| key.to_ascii_lowercase().contains(s))
            {
                *value = "<redacted>".into();
            }
        }
        let mut telemetry = self.telemetry.clone();
        for value in telemetry.otlp_headers.values_mut() {
            *value = "<redacted>".into();
        }
        // A collector's URL may carry credentials too (`https://user:key@collector:4318`).
        for url in [
            &mut telemetry.otlp_endpoint,
            &mut telemetry.otlp_traces_endpoint,
        ] {
            *url = url.as_deref().map(redact_url);
        }
        Self {
            security: self.security.redacted(),
            models,
            telemetry,
            ..self.clone()
        }
    }

    /// Checks semantic rules and reports every violation together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut errors = Vec::new();
        if self.server.max_body_bytes == 0 {
            errors.push("server.max_body_bytes must be greater than 0".to_string());
        }
        for (key, value) in [
            ("server.header_timeout_ms", self.server.header_timeout_ms),
            ("server.body_timeout_ms", self.server.body_timeout_ms),
            (
                "server.max_concurrent_streams",
                u64::from(self.server.max_concurrent_streams),
            ),
        ] {
            if value == 0 {
                errors.push(format!("{key} must be greater than 0"));
            }
        }
        if self.server.max_header_bytes < 8192 {
            errors.push("server.max_header_bytes must be at least 8192".to_string());
        }
        if self.server.max_tensor_elements == 0 {
            errors.push("server.max_tensor_elements must be greater than 0".to_string());
        }
        if self.runtime.instances == 0 {
            errors.push("runtime.instances must be at least 1".to_string());
        }
        if self.runtime.queue_capacity == 0 {
            errors.push("runtime.queue_capacity must be at least 1".to_string());
        }
        if self.limits.rate_limit_per_second < 0.0 || !self.limits.rate_limit_per_second.is_finite()
        {
            errors.push("limits.rate_limit_per_second must be a non-negative number".to_string());
        }
        if self.limits.rate_limit_per_second > 0.0 && self.limits.rate_limit_burst == 0 {
            errors
                .push("limits.rate_limit_burst must be at least 1 when rate limiting".to_string());
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            errors.push(format!(
                "log.format must be \"text\" or \"json\", not {:?}",
                self.log.format
            ));
        }
        let addrs = [
            ("server.http_addr", self.server.http_addr),
            ("server.grpc_addr", self.server.grpc_addr),
            ("server.admin_addr", self.server.admin_addr),
        ];
        for (i, (a, addr_a)) in addrs.iter().enumerate() {
            for (b, addr_b) in &addrs[i + 1..] {
                if addr_a == addr_b && addr_a.port() != 0 {
                    errors.push(format!("{a} and {b} are both {addr_a}"));
                }
            }
        }
        errors.extend(self.model_defaults().check());
        if !matches!(
            self.telemetry.otlp_protocol.as_str(),
            "grpc" | "http/protobuf"
        ) {
            errors.push(format!(
                "telemetry.otlp_protocol must be \"grpc\" or \"http/protobuf\", not {:?}",
                self.telemetry.otlp_protocol
            ));
        }
        if !(0.0..=1.0).contains(&self.telemetry.sampling_ratio) {
            errors.push("telemetry.sampling_ratio must be between 0 and 1".to_string());
        }
        if self.drift.sample_every == 0 || self.drift.window_rows == 0 {
            errors.push("drift.sample_every and drift.window_rows must be at least 1".to_string());
        }
        if self.drift.psi_threshold.is_nan() || self.drift.psi_threshold <= 0.0 {
            errors.push("drift.psi_threshold must be greater than 0".to_string());
        }
        self.security.validate(&mut errors);
        let models = &self.models;
        if let Some(url) = &models.registry_database_url
            && !(url.starts_with("postgres://")
                || url.starts_with("postgresql://")
                || url.contains("host="))
        {
            errors.push(format!(
                "models.registry_database_url must be a PostgreSQL URL (postgres://…), not {:?}",
                redact_url(url)
            ));
        }
        if let Some(url) = &models.registry_store_url
            && !url.starts_with("s3://")
        {
            errors.push(format!(
                "models.registry_store_url must be s3://bucket/prefix, not {url:?}"
            ));
        }
        let remote = models.registry_database_url.is_some() || models.registry_store_url.is_some();
        let complete = models.registry.is_some()
            || (models.registry_database_url.is_some() && models.registry_store_url.is_some());
        if remote && !complete {
            errors.push(
                "a registry with only its metadata or only its artifacts elsewhere needs models.registry for the other part (or set both models.registry_database_url and models.registry_store_url)"
                    .to_string(),
            );
        }
        errors.extend(validate_routes(&self.routes));
        consumer::validate(&self.consumers, &mut errors);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(errors))
        }
    }
}

/// A connection string with its password replaced by `***`, for logs and messages: the
/// password of a URL's user (`postgres://user:***@host/db`), a `password=` in a URL's query, and
/// a `password=` pair of libpq's `key=value` form, quoted (`password='a b'`) or not.
pub fn redact_url(url: &str) -> String {
    let Some(scheme) = url.find("://") else {
        return redact_password_pairs(url, char::is_whitespace, true);
    };
    // The authority ends at the path, the query or the fragment; its user info at its last '@'
    // (an '@' in a password is percent-encoded).
    let start = scheme + 3;
    let end = url[start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |e| start + e);
    let authority = &url[start..end];
    let authority = match authority.rfind('@') {
        Some(at) => match authority[..at].split_once(':') {
            Some((user, _)) => format!("{user}:***{}", &authority[at..]),
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    let rest = redact_password_pairs(&url[end..], |c| c == '&' || c == '#', false);
    format!("{}{authority}{rest}", &url[..start])
}

/// `text` with the value of every `password=` pair replaced by `***`. A pair starts the text
/// or follows a separator, a '?' or a space. With `quoted` (libpq's `key=value` form) spaces
/// may surround the '=', and a value that opens with a quote ends at the closing one (a
/// backslash escapes the next character); any other value ends at a separator.
fn redact_password_pairs(text: &str, separator: impl Fn(char) -> bool, quoted: bool) -> String {
    const KEY: &str = "password";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(KEY) {
        let starts_pair = rest[..at]
            .chars()
            .next_back()
            .is_none_or(|c| separator(c) || c == '?' || c == ' ');
        let after = &rest[at + KEY.len()..];
        let spaced = if quoted { after.trim_start() } else { after };
        let Some(value) = spaced.strip_prefix('=').filter(|_| starts_pair) else {
            out.push_str(&rest[..at + KEY.len()]);
            rest = after;
            continue;
        };
        let value = if quoted { value.trim_start() } else { value };
        let len = if quoted && value.starts_with('\'') {
            let mut chars = value.char_indices().skip(1);
            let mut end = value.len();
            while let Some((i, c)) = chars.next() {
                if c == '\\' {
                    chars.next();
                } else if c == '\'' {
                    end = i + 1;
                    break;
                }
            }
            end
        } else {
            value.find(&separator).unwrap_or(value.len())
        };
        out.push_str(&rest[..rest.len() - value.len()]);
        out.push_str("***");
        rest = &value[len..];
    }
    out.push_str(rest);
    out
}

/// Problems with a set of routes (empty when valid); `Config::validate` reports them too, and
/// the admin API checks a replacement set with it.
pub fn validate_routes(routes: &[RouteConfig]) -> Vec<String> {
    let mut errors = Vec::new();
    let mut route_names = std::collections::HashSet::new();
    for (i, route) in routes.iter().enumerate() {
        let at = format!("routes[{i}] ({})", route.name);
        if route.name.is_empty() {
            errors.push(format!("{at}: name must not be empty"));
        }
        if !route_names.insert(&route.name) {
            errors.push(format!("{at}: another route has this name"));
        }
        if route
            .variants
            .iter()
            .map(|v| u64::from(v.weight))
            .sum::<u64>()
            == 0
        {
            errors.push(format!(
                "{at}: needs at least one variant with a weight above 0"
            ));
        }
        let mut variant_names = std::collections::HashSet::new();
        for v in &route.variants {
            if !variant_names.insert(&v.name) {
                errors.push(format!("{at}: two variants are called '{}'", v.name));
            }
            if v.model == route.name {
                errors.push(format!(
                    "{at}: variant '{}' routes to the route itself",
                    v.name
                ));
            }
        }
        if let Some(canary) = &route.canary {
            if !route.variants.iter().any(|v| v.name == canary.variant) {
                errors.push(format!(
                    "{at}: canary.variant '{}' is not a variant",
                    canary.variant
                ));
            }
            if route.variants.len() < 2 {
                errors.push(format!("{at}: a canary needs a variant to fall back to"));
            }
            if canary.steps.is_empty()
                || canary.steps.windows(2).any(|w| w[0] >= w[1])
                || canary.steps.iter().any(|&p| p == 0 || p > 100)
            {
                errors.push(format!(
                    "{at}: canary.steps must rise strictly within 1..=100"
                ));
            }
            if !(0.0..=1.0).contains(&canary.max_error_rate) {
                errors.push(format!(
                    "{at}: canary.max_error_rate must be between 0 and 1"
                ));
            }
        }
        if let Some(fallback) = &route.fallback
            && !route.variants.iter().any(|v| &v.name == fallback)
        {
            errors.push(format!("{at}: fallback '{fallback}' is not a variant"));
        }
        if let Some(shadow) = &route.shadow {
            if !(0.0..=1.0).contains(&shadow.fraction) {
                errors.push(format!("{at}: shadow.fraction must be between 0 and 1"));
            }
            if shadow.queue == 0 {
                errors.push(format!("{at}: shadow.queue must be at least 1"));
            }
        }
    }
    errors
}

#[cfg(test)]
mod tests;
