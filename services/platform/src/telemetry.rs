//! Logs and traces.
//!
//! One `tracing` subscriber per process: a log layer (JSON when stdout is not
//! a terminal; every line inside a span carries `trace_id` and `span_id`) and
//! an OpenTelemetry layer. The OpenTelemetry SDK always runs so that ids exist
//! for log correlation and propagation; spans are *exported* over OTLP/gRPC
//! only when `OTEL_EXPORTER_OTLP_ENDPOINT` is set. Context travels as W3C
//! `traceparent`/`tracestate` plus `baggage`.

use std::fmt;
use std::io::IsTerminal;
use std::time::Duration;

use http::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector, TextMapCompositePropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::{Context, KeyValue, global};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{CommonConfig, LogFormat};

/// Keeps the tracer provider alive; call [`Telemetry::shutdown`] before exit
/// so buffered spans are flushed.
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Flushes and stops span export (bounded, never hangs shutdown).
    pub fn shutdown(self) {
        if let Err(err) = self.provider.shutdown_with_timeout(Duration::from_secs(5)) {
            // Nothing to flush or nowhere to send it; not worth failing exit over.
            eprintln!("telemetry shutdown: {err}");
        }
    }
}

/// The OpenTelemetry resource for a service.
pub fn resource(config: &CommonConfig) -> Resource {
    let mut attrs = vec![
        KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        KeyValue::new("service.namespace", "stockmesh"),
        KeyValue::new("deployment.environment", config.otel.environment.clone()),
        KeyValue::new(
            "deployment.environment.name",
            config.otel.environment.clone(),
        ),
    ];
    for (key, value) in &config.otel.resource_attributes {
        attrs.push(KeyValue::new(key.clone(), value.clone()));
    }
    Resource::builder()
        .with_service_name(config.service_name)
        .with_attributes(attrs)
        .build()
}

/// Installs the global subscriber, tracer provider and propagator.
pub fn init(config: &CommonConfig) -> anyhow::Result<Telemetry> {
    let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
        config.otel.sample_ratio,
    )));
    let mut builder = SdkTracerProvider::builder()
        .with_sampler(sampler)
        .with_resource(resource(config));
    if let Some(endpoint) = &config.otel.endpoint {
        use opentelemetry_otlp::WithExportConfig;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .with_timeout(Duration::from_secs(5))
            .build()?;
        builder = builder.with_batch_exporter(exporter);
    }
    let provider = builder.build();
    let tracer = provider.tracer(config.service_name);
    global::set_tracer_provider(provider.clone());
    global::set_text_map_propagator(TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ]));

    let json = match config.log_format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stdout().is_terminal(),
    };
    let filter = EnvFilter::try_new(&config.log_filter)
        .map_err(|e| anyhow::anyhow!("RUST_LOG is malformed: {e}"))?;
    let log_layer = if json {
        tracing_subscriber::fmt::layer()
            .event_format(JsonWithTrace {
                service: config.service_name,
            })
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .event_format(TextWithTrace)
            .boxed()
    };
    let log_layer = log_layer.with_filter(tracing_subscriber::filter::filter_fn(|meta| {
        meta.target() != EXCEPTION_TARGET
    }));
    tracing_subscriber::registry()
        .with(filter)
        .with(log_layer)
        .with(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_error_records_to_exceptions(true),
        )
        .try_init()?;
    if let Some(endpoint) = &config.otel.endpoint {
        tracing::info!(
            endpoint,
            ratio = config.otel.sample_ratio,
            "exporting traces over OTLP"
        );
    }
    Ok(Telemetry { provider })
}

/// Trace and span id of the OpenTelemetry span behind a `tracing` span.
fn ids_of<S>(
    ctx: &FmtContext<'_, S, impl for<'w> FormatFields<'w> + 'static>,
) -> Option<(String, String)>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let span = ctx.parent_span()?;
    let dispatch = tracing::dispatcher::get_default(|d| d.clone());
    let cx = tracing_opentelemetry::get_otel_context(&span.id(), &dispatch)?;
    let otel_span = cx.span();
    let sc = otel_span.span_context();
    sc.is_valid()
        .then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
}

/// One JSON object per line: time, level, target, message, fields, span,
/// `trace_id`, `span_id`.
struct JsonWithTrace {
    service: &'static str,
}

impl<S, N> FormatEvent<S, N> for JsonWithTrace
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut fields = JsonVisitor::default();
        event.record(&mut fields);
        let mut line = Map::new();
        line.insert(
            "timestamp".into(),
            Value::String(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
        );
        line.insert("level".into(), Value::String(meta.level().to_string()));
        line.insert("service".into(), Value::String(self.service.to_owned()));
        line.insert("target".into(), Value::String(meta.target().to_owned()));
        if let Some(message) = fields.message.take() {
            line.insert("message".into(), Value::String(message));
        }
        if !fields.fields.is_empty() {
            line.insert(
                "fields".into(),
                Value::Object(std::mem::take(&mut fields.fields)),
            );
        }
        if let Some(span) = ctx.parent_span() {
            line.insert("span".into(), Value::String(span.name().to_owned()));
        }
        if let Some((trace_id, span_id)) = ids_of(ctx) {
            line.insert("trace_id".into(), Value::String(trace_id));
            line.insert("span_id".into(), Value::String(span_id));
        }
        let text = serde_json::to_string(&Value::Object(line)).map_err(|_| fmt::Error)?;
        writeln!(writer, "{text}")
    }
}

/// Human-readable lines for a terminal, still with the trace id.
struct TextWithTrace;

impl<S, N> FormatEvent<S, N> for TextWithTrace
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut fields = JsonVisitor::default();
        event.record(&mut fields);
        write!(
            writer,
            "{} {:>5} {}",
            chrono::Utc::now().format("%H:%M:%S%.3f"),
            meta.level(),
            meta.target()
        )?;
        if let Some(span) = ctx.parent_span() {
            write!(writer, " [{}]", span.name())?;
        }
        write!(writer, ": {}", fields.message.unwrap_or_default())?;
        for (key, value) in fields.fields {
            write!(writer, " {key}={value}")?;
        }
        if let Some((trace_id, _)) = ids_of(ctx) {
            write!(writer, " trace_id={trace_id}")?;
        }
        writeln!(writer)
    }
}

#[derive(Default)]
struct JsonVisitor {
    message: Option<String>,
    fields: Map<String, Value>,
}

impl Visit for JsonVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = Some(value.to_owned());
        } else {
            self.fields
                .insert(field.name().to_owned(), Value::String(value.to_owned()));
        }
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.fields
            .insert(field.name().to_owned(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.fields
            .insert(field.name().to_owned(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.fields
            .insert(field.name().to_owned(), Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.fields
            .insert(field.name().to_owned(), Value::from(value));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = format!("{value:?}");
        if field.name() == "message" {
            self.message = Some(text);
        } else {
            self.fields
                .insert(field.name().to_owned(), Value::String(text));
        }
    }
}

/// Reads W3C trace context (and baggage) from HTTP headers or gRPC metadata.
pub fn extract_context(headers: &HeaderMap) -> Context {
    global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)))
}

/// Writes the context of the current span into outgoing headers.
pub fn inject_current_context(headers: &mut HeaderMap) {
    let cx = tracing::Span::current().context();
    global::get_text_map_propagator(|p| p.inject_context(&cx, &mut HeaderInjector(headers)));
}

/// Makes `span` a child of the remote context in `headers` (if any).
pub fn set_remote_parent(span: &tracing::Span, headers: &HeaderMap) {
    let parent = extract_context(headers);
    if parent.span().span_context().is_valid() {
        // Fails only when the span is disabled; nothing to do then.
        let _ = span.set_parent(parent);
    }
}

/// Target of the events [`record_error`] emits; the log layer skips it (the
/// failure is logged where it is handled), the trace keeps it.
pub const EXCEPTION_TARGET: &str = "stockmesh::exception";

/// Marks `span` failed the OpenTelemetry way: status Error with `message`
/// as its description, `error.type` set (when the span declares it), and an
/// `exception` span event carrying `exception.type` and `exception.message`.
/// The breaker's fast failures use `error_type = "circuit_open"`, so they
/// read as such in Jaeger.
pub fn record_error(span: &tracing::Span, error_type: &str, message: &str) {
    span.record("otel.status_code", "ERROR");
    span.record("error.type", error_type);
    // An event whose only text is an `error` field becomes the OpenTelemetry
    // `exception` event and sets the span's status description.
    tracing::event!(
        target: EXCEPTION_TARGET,
        parent: span,
        tracing::Level::ERROR,
        "exception.type" = error_type,
        // As Display: the bridge renders fields with `{:?}`, which would
        // put a plain string in quotes.
        error = tracing::field::display(message),
    );
}

/// The current trace id, for responses and error reports.
pub fn current_trace_id() -> Option<String> {
    let cx = tracing::Span::current().context();
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::header::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use opentelemetry::trace::{SpanKind, Status};
    use opentelemetry_sdk::error::OTelSdkResult;
    use opentelemetry_sdk::trace::{SpanData, SpanExporter};
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    /// Keeps exported spans in memory.
    #[derive(Clone, Debug, Default)]
    struct Captured(Arc<Mutex<Vec<SpanData>>>);

    impl SpanExporter for Captured {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            if let Ok(mut spans) = self.0.lock() {
                spans.extend(batch);
            }
            Ok(())
        }
    }

    impl Captured {
        fn named(&self, name: &str) -> SpanData {
            self.0
                .lock()
                .expect("spans")
                .iter()
                .find(|s| s.name == name)
                .cloned()
                .unwrap_or_else(|| panic!("no span {name}"))
        }
    }

    /// Runs `f` under a subscriber exporting to a [`Captured`], with the W3C
    /// propagators installed.
    fn traced<T>(f: impl FnOnce() -> T) -> (T, Captured) {
        global::set_text_map_propagator(TextMapCompositePropagator::new(vec![
            Box::new(TraceContextPropagator::new()),
            Box::new(BaggagePropagator::new()),
        ]));
        let captured = Captured::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(captured.clone())
            .build();
        let subscriber = tracing_subscriber::registry().with(
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("test"))
                .with_error_records_to_exceptions(true),
        );
        let out = tracing::subscriber::with_default(subscriber, f);
        let _ = provider.force_flush();
        (out, captured)
    }

    #[test]
    fn record_error_sets_status_error_type_and_an_exception_event() {
        let (_, captured) = traced(|| {
            let span = tracing::info_span!(
                "call",
                otel.kind = "client",
                otel.status_code = tracing::field::Empty,
                error.type = tracing::field::Empty,
            );
            record_error(&span, "circuit_open", "inventory circuit breaker open");
        });
        let span = captured.named("call");
        assert_eq!(span.span_kind, SpanKind::Client);
        assert!(
            matches!(&span.status, Status::Error { description } if description.contains("circuit breaker open")),
            "{:?}",
            span.status
        );
        assert!(
            span.attributes
                .iter()
                .any(|kv| kv.key.as_str() == "error.type" && kv.value.as_str() == "circuit_open"),
            "{:?}",
            span.attributes
        );
        let exception = span
            .events
            .iter()
            .find(|e| e.name == "exception")
            .expect("an exception event");
        let attr = |key: &str| {
            exception
                .attributes
                .iter()
                .find(|kv| kv.key.as_str() == key)
                .map(|kv| kv.value.as_str().into_owned())
        };
        assert_eq!(
            attr("exception.message").as_deref(),
            Some("inventory circuit breaker open")
        );
        assert_eq!(attr("exception.type").as_deref(), Some("circuit_open"));
    }

    #[test]
    fn a_span_without_failure_stays_unset() {
        let (_, captured) = traced(|| {
            let span = tracing::info_span!("fine", otel.status_code = tracing::field::Empty);
            span.in_scope(|| tracing::info!("all good"));
        });
        let span = captured.named("fine");
        assert_eq!(span.status, Status::Unset);
        assert!(span.events.iter().all(|e| e.name != "exception"));
    }

    #[test]
    fn outgoing_headers_carry_the_current_trace_and_continue_it_remotely() {
        let ((sent, received_trace), captured) = traced(|| {
            let client = tracing::info_span!("client", otel.kind = "client");
            let mut headers = HeaderMap::new();
            client.in_scope(|| inject_current_context(&mut headers));
            // The receiving side: a server span parented by the headers.
            let server = tracing::info_span!("server", otel.kind = "server");
            set_remote_parent(&server, &headers);
            let received = server.in_scope(current_trace_id);
            (headers, received)
        });
        let client = captured.named("client");
        let traceparent = sent
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .expect("a traceparent header");
        let trace_id = client.span_context.trace_id().to_string();
        assert_eq!(
            traceparent,
            format!("00-{trace_id}-{}-01", client.span_context.span_id())
        );
        assert_eq!(received_trace.as_deref(), Some(trace_id.as_str()));
        let server = captured.named("server");
        assert_eq!(server.parent_span_id, client.span_context.span_id());
        assert!(server.parent_span_is_remote);
    }

    #[test]
    fn nothing_is_injected_outside_a_trace() {
        let mut headers = HeaderMap::new();
        inject_current_context(&mut headers);
        assert!(headers.get("traceparent").is_none());
    }
}
