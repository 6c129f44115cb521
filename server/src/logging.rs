//! Logging: the `tracing` subscriber (text or JSON on stderr) with a filter that the admin API
//! can change while the server runs (`GET`/`PUT /admin/log-level`). A line logged inside a
//! traced request, JSON or text, carries its `trace_id` and `span_id`.
//!
//! Spans are for traces, not for logs: the log layer sees events only. Formatting every
//! request span's fields into text for a log line that is almost never written cost the
//! request path more than exporting the span did.

use std::io::IsTerminal as _;
use std::sync::{Arc, Mutex, OnceLock};

use opentelemetry::trace::TraceContextExt as _;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::{FilterExt as _, LevelFilter};
use tracing_subscriber::fmt::format::{Format, Json, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::Registry;
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

/// tracing-subscriber's log lines, JSON or text, with the current span's name and, when
/// OpenTelemetry records the span, its trace and span ids added, so logs and traces join on
/// `trace_id`. JSON lines get `"span":{"name":…},"trace_id":…,"span_id":…` members; text lines
/// end in `span=… trace_id=… span_id=…`.
///
/// The log layer does not see spans (see the module's notes), so the current span is the
/// dispatcher's, and the ids live with the OpenTelemetry layer, which answers through the
/// dispatcher too; inside an event the current dispatcher cannot be asked for (tracing guards
/// against re-entry), so the formatter is told its own with [`Binder::bind`].
pub struct WithTraceIds<F> {
    format: F,
    json: bool,
    dispatch: Arc<OnceLock<tracing::dispatcher::WeakDispatch>>,
}

impl WithTraceIds<Format<Json>> {
    /// JSON lines (with `JsonFields`).
    pub fn json() -> Self {
        Self {
            format: Format::default().json(),
            json: true,
            dispatch: Arc::default(),
        }
    }
}

impl WithTraceIds<Format> {
    /// Text lines, in colour with `ansi`.
    pub fn text(ansi: bool) -> Self {
        Self {
            format: Format::default().with_ansi(ansi),
            json: false,
            dispatch: Arc::default(),
        }
    }
}

impl<F> WithTraceIds<F> {
    /// A handle that binds this formatter to the dispatcher it ends up in.
    pub fn binder(&self) -> Binder {
        Binder(Arc::clone(&self.dispatch))
    }
}

/// Tells a [`WithTraceIds`] which dispatcher holds the OpenTelemetry layer.
pub struct Binder(Arc<OnceLock<tracing::dispatcher::WeakDispatch>>);

impl Binder {
    pub fn bind(&self, dispatch: &tracing::Dispatch) {
        let _ = self.0.set(dispatch.downgrade());
    }
}

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let Some(dispatch) = self.dispatch.get().and_then(|d| d.upgrade()) else {
            return self.format.format_event(ctx, writer, event);
        };
        let current = dispatch.current_span();
        let (Some(id), Some(meta)) = (current.id(), current.metadata()) else {
            return self.format.format_event(ctx, writer, event);
        };
        let ids = tracing_opentelemetry::get_otel_context(id, &dispatch)
            .map(|context| context.span().span_context().clone())
            .filter(opentelemetry::trace::SpanContext::is_valid);
        let mut line = String::new();
        self.format
            .format_event(ctx, Writer::new(&mut line), event)?;
        // A span name is an identifier (a literal in the span macro): nothing to escape.
        let name = meta.name();
        if self.json {
            let Some(open) = line.trim_end().strip_suffix('}') else {
                return writer.write_str(&line);
            };
            write!(writer, r#"{open},"span":{{"name":"{name}"}}"#)?;
            if let Some(ids) = ids {
                let (trace, span) = (ids.trace_id(), ids.span_id());
                write!(writer, r#","trace_id":"{trace}","span_id":"{span}""#)?;
            }
            writeln!(writer, "}}")
        } else {
            write!(writer, "{} span={name}", line.trim_end_matches('\n'))?;
            if let Some(ids) = ids {
                write!(
                    writer,
                    " trace_id={} span_id={}",
                    ids.trace_id(),
                    ids.span_id()
                )?;
            }
            writeln!(writer)
        }
    }
}

/// The layer that turns `tracing` spans into OpenTelemetry spans, with only the attributes
/// infergate records itself. The layer's defaults add seven attributes to every span (source
/// location, thread, busy and idle time, target) and make every span entry activate an
/// OpenTelemetry context that nothing here reads; each costs the request path and the export.
pub fn otel_layer<S>(
    tracer: opentelemetry_sdk::trace::Tracer,
) -> tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_target(false)
        .with_context_activation(false)
}

/// Installs the process-wide subscriber from `[log]` (and, with `tracer`, OpenTelemetry
/// export of spans) and returns its control.
pub fn init(
    config: &infergate_config::LogConfig,
    tracer: Option<opentelemetry_sdk::trace::Tracer>,
) -> LogControl {
    let (dispatch, control) = build(
        config,
        tracer,
        std::io::stderr,
        std::io::stderr().is_terminal(),
    );
    let _ = dispatch.try_init();
    control
}

/// The subscriber [`init`] installs, writing its log lines to `writer`.
///
/// The level filter is the log layer's alone: a log level raised at run time must not silence
/// traces, and without a tracer no layer wants spans, so none are made.
pub fn build<W>(
    config: &infergate_config::LogConfig,
    tracer: Option<opentelemetry_sdk::trace::Tracer>,
    writer: W,
    ansi: bool,
) -> (tracing::Dispatch, LogControl)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let initial = if EnvFilter::try_new(&config.level).is_ok() {
        config.level.clone()
    } else {
        "info".to_string()
    };
    let (filter, handle) = reload::Layer::new(EnvFilter::new(&initial));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(ansi);
    // A list, not an `Option` layer: an absent `Option` layer wants every span.
    let mut layers: Vec<Box<dyn tracing_subscriber::Layer<Registry> + Send + Sync>> = Vec::new();
    if let Some(tracer) = tracer {
        layers.push(otel_layer(tracer).with_filter(LevelFilter::INFO).boxed());
    }
    let (fmt, binder) = if config.format == "json" {
        let format = WithTraceIds::json();
        let binder = format.binder();
        let fmt = fmt
            .event_format(format)
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new());
        (fmt.boxed(), binder)
    } else {
        let format = WithTraceIds::text(ansi);
        let binder = format.binder();
        (fmt.event_format(format).boxed(), binder)
    };
    layers.push(fmt.with_filter(events_only().and(filter)).boxed());
    let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(layers));
    binder.bind(&dispatch);
    (dispatch, LogControl::new(&initial, handle))
}

/// The log layer's own filter: events, no spans (see the module's notes).
pub fn events_only() -> tracing_subscriber::filter::FilterFn<impl Fn(&tracing::Metadata<'_>) -> bool>
{
    tracing_subscriber::filter::filter_fn(|meta| !meta.is_span())
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::WithTraceIds;

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    type BoxedLayer =
        Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync>;

    /// Logs one line outside any span and one inside a recorded `infer` span through the log
    /// layer `fmt` (writing to `lines`, its formatter bound with `binder`); the text written
    /// and the span's ids.
    fn log_two_lines(
        fmt: BoxedLayer,
        binder: super::Binder,
        lines: &Lines,
    ) -> (String, opentelemetry::trace::SpanContext) {
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let layers: Vec<BoxedLayer> = vec![
            super::otel_layer(provider.tracer("test")).boxed(),
            fmt.with_filter(super::events_only()).boxed(),
        ];
        let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(layers));
        binder.bind(&dispatch);
        let ids = tracing::dispatcher::with_default(&dispatch, || {
            tracing::info!(answer = 42, "outside any span");
            let span = tracing::info_span!("infer");
            let ids = crate::telemetry::span_context(&span).expect("a recorded span");
            span.in_scope(|| tracing::warn!(model = "iris", "inside the request"));
            ids
        });
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        (text, ids)
    }

    #[test]
    fn json_lines_inside_a_traced_span_carry_its_trace_and_span_ids() {
        let (lines, format) = (Lines::default(), WithTraceIds::json());
        let (binder, writer) = (format.binder(), lines.clone());
        let fmt = tracing_subscriber::fmt::layer()
            .event_format(format)
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .with_writer(move || writer.clone());
        let (text, ids) = log_two_lines(fmt.boxed(), binder, &lines);
        let parsed: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        assert_eq!(parsed.len(), 2, "{text}");
        assert_eq!(parsed[0]["fields"]["answer"], 42);
        assert!(parsed[0].get("trace_id").is_none(), "{}", parsed[0]);
        assert_eq!(parsed[1]["fields"]["model"], "iris");
        assert_eq!(parsed[1]["level"], "WARN");
        assert_eq!(parsed[1]["trace_id"], ids.trace_id().to_string());
        assert_eq!(parsed[1]["span_id"], ids.span_id().to_string());
        assert_eq!(parsed[1]["span"]["name"], "infer");
        // The log layer sees no spans: it formats none of their fields, lists none.
        assert!(parsed[1].get("spans").is_none(), "{}", parsed[1]);
    }

    #[test]
    fn text_lines_inside_a_traced_span_end_with_its_trace_and_span_ids() {
        let (lines, format) = (Lines::default(), WithTraceIds::text(false));
        let (binder, writer) = (format.binder(), lines.clone());
        let fmt = tracing_subscriber::fmt::layer()
            .event_format(format)
            .with_writer(move || writer.clone());
        let (text, ids) = log_two_lines(fmt.boxed(), binder, &lines);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].ends_with("outside any span answer=42"), "{text}");
        let suffix = format!(
            "WARN infergate_server::logging::tests: inside the request model=\"iris\" span=infer trace_id={} span_id={}",
            ids.trace_id(),
            ids.span_id()
        );
        assert!(
            lines[1].ends_with(&suffix),
            "{text}\nwanted the end: {suffix}"
        );
        assert!(!text.contains('\u{1b}'), "no colour asked for: {text}");
    }

    #[test]
    fn the_log_level_filters_log_lines_not_traces_and_without_a_tracer_no_span_is_made() {
        let lines = Lines::default();
        let writer = lines.clone();
        let config = infergate_config::LogConfig {
            level: "info".into(),
            format: "json".into(),
        };
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let (dispatch, control) = super::build(
            &config,
            Some(provider.tracer("test")),
            move || writer.clone(),
            false,
        );
        let none = http::HeaderMap::new();
        tracing::dispatcher::with_default(&dispatch, || {
            let first = crate::telemetry::request_span(&none, "m", "http", 1.0);
            first.span.in_scope(|| tracing::info!("first"));
            control.set("warn").unwrap();
            let second = crate::telemetry::request_span(&none, "m", "http", 1.0);
            assert!(
                crate::telemetry::span_context(&second.span).is_some(),
                "a raised log level leaves the traces alone"
            );
            second.span.in_scope(|| {
                tracing::info!("second");
                tracing::warn!("third");
            });
            let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
            let messages: Vec<(String, Option<String>)> = text
                .lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
                .map(|v| {
                    let message = v["fields"]["message"].as_str().unwrap_or("").to_string();
                    (message, v["trace_id"].as_str().map(str::to_string))
                })
                .collect();
            assert_eq!(
                messages,
                [
                    ("first".to_string(), first.trace_id.clone()),
                    ("log level changed".to_string(), None),
                    ("third".to_string(), second.trace_id.clone()),
                ],
                "{text}"
            );
        });

        drop((dispatch, control, provider));

        // Without a tracer nothing wants spans: the request makes none and answers no trace id.
        let (dispatch, _) = super::build(&config, None, std::io::sink, false);
        tracing::dispatcher::with_default(&dispatch, || {
            for ratio in [1.0, 0.5, 0.0] {
                let t = crate::telemetry::request_span(&none, "m", "http", ratio);
                assert!(t.span.is_disabled(), "ratio {ratio}");
                assert_eq!(t.trace_id, None, "ratio {ratio}");
                assert!(crate::telemetry::stage_span!("decode").is_disabled());
            }
        });
    }
}
