//! Logging: the `tracing` subscriber (text or JSON on stderr) with a filter that the admin API
//! can change while the server runs (`GET`/`PUT /admin/log-level`).

use std::sync::Mutex;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::reload;
use tracing_subscriber::util::SubscriberInitExt as _;

type Setter = Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>;

/// The filter in force and the means to replace it.
pub struct LogControl {
    current: Mutex<String>,
    set: Setter,
}

impl std::fmt::Debug for LogControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LogControl({})", self.level())
    }
}

impl LogControl {
    /// Controls the filter behind `handle`, whose directive is `initial` now.
    pub fn new<S: 'static>(initial: &str, handle: reload::Handle<EnvFilter, S>) -> Self {
        Self {
            current: Mutex::new(initial.to_string()),
            set: Box::new(move |filter| handle.reload(filter).map_err(|e| e.to_string())),
        }
    }

    /// The directive in force (e.g. `info,infergate_server=debug`).
    pub fn level(&self) -> String {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the filter; an invalid directive changes nothing and says why.
    pub fn set(&self, directive: &str) -> Result<(), String> {
        let filter = EnvFilter::try_new(directive)
            .map_err(|e| format!("invalid log level directive {directive:?}: {e}"))?;
        (self.set)(filter)?;
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = directive.to_string();
        tracing::warn!(level = directive, "log level changed");
        Ok(())
    }
}

/// Installs the process-wide subscriber from `[log]` (and, with `tracer`, OpenTelemetry
/// export of spans) and returns its control.
pub fn init(
    config: &infergate_config::LogConfig,
    tracer: Option<opentelemetry_sdk::trace::Tracer>,
) -> LogControl {
    let initial = if EnvFilter::try_new(&config.level).is_ok() {
        config.level.clone()
    } else {
        "info".to_string()
    };
    let (filter, handle) = reload::Layer::new(EnvFilter::new(&initial));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let otel = tracer.map(|t| tracing_opentelemetry::layer().with_tracer(t));
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    let _ = if config.format == "json" {
        registry.with(fmt.json()).try_init()
    } else {
        registry.with(fmt).try_init()
    };
    LogControl::new(&initial, handle)
}
