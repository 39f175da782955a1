//! Structured logs (JSON by default off a terminal) and traces. Every
//! reconcile runs in a `reconcile` span carrying the object's name, namespace
//! and generation, so each log line of a reconcile names its object.
//!
//! Spans are exported over OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` is set
//! (the pattern of `services/platform/src/telemetry.rs`): sampler
//! `OTEL_TRACES_SAMPLER_ARG` (ratio, default 1.0, parent-based), resource
//! `service.name=stockmesh-operator` plus `OTEL_RESOURCE_ATTRIBUTES`
//! (`key=value,...`). `OTEL_SDK_DISABLED=true` turns export off. Without an
//! endpoint only logs are written, as before.

use std::io::IsTerminal;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

pub const SERVICE_NAME: &str = "stockmesh-operator";
/// Target of the `exception` span events; the log layer skips them.
pub const EXCEPTION_TARGET: &str = "stockmesh::exception";

/// Where and how much to export, from the standard OpenTelemetry variables.
#[derive(Clone, Debug, PartialEq)]
pub struct OtlpSettings {
    pub endpoint: String,
    pub sample_ratio: f64,
    pub resource_attributes: Vec<(String, String)>,
}

impl OtlpSettings {
    /// `None` when export is off (no endpoint, or `OTEL_SDK_DISABLED=true`).
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> anyhow::Result<Option<Self>> {
        let Some(endpoint) = get("OTEL_EXPORTER_OTLP_ENDPOINT").filter(|e| !e.trim().is_empty())
        else {
            return Ok(None);
        };
        if get("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        let sample_ratio = match get("OTEL_TRACES_SAMPLER_ARG") {
            None => 1.0,
            Some(raw) => match raw.trim().parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => r,
                _ => anyhow::bail!(
                    "OTEL_TRACES_SAMPLER_ARG must be a number between 0 and 1, is {raw:?}"
                ),
            },
        };
        let resource_attributes = get("OTEL_RESOURCE_ATTRIBUTES")
            .map(|raw| {
                raw.split(',')
                    .filter_map(|pair| {
                        let (k, v) = pair.split_once('=')?;
                        Some((k.trim().to_owned(), v.trim().to_owned()))
                    })
                    .filter(|(k, _)| !k.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        Ok(Some(Self {
            endpoint: endpoint.trim().to_owned(),
            sample_ratio,
            resource_attributes,
        }))
    }
}

/// Keeps the tracer provider alive; [`Telemetry::shutdown`] flushes spans.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Flushes and stops span export (bounded, never hangs shutdown).
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(err) = provider.shutdown_with_timeout(Duration::from_secs(5))
        {
            eprintln!("telemetry shutdown: {err}");
        }
    }
}

fn tracer_provider(settings: &OtlpSettings) -> anyhow::Result<SdkTracerProvider> {
    use opentelemetry_otlp::WithExportConfig;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(settings.endpoint.clone())
        .with_timeout(Duration::from_secs(5))
        .build()?;
    let mut attrs = vec![
        KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        KeyValue::new("service.namespace", "stockmesh"),
    ];
    for (k, v) in &settings.resource_attributes {
        attrs.push(KeyValue::new(k.clone(), v.clone()));
    }
    let resource = Resource::builder()
        .with_service_name(SERVICE_NAME)
        .with_attributes(attrs)
        .build();
    Ok(SdkTracerProvider::builder()
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            settings.sample_ratio,
        ))))
        .with_resource(resource)
        .with_batch_exporter(exporter)
        .build())
}

/// Installs the global subscriber: logs, and the OTLP span exporter when
/// configured. Call inside the Tokio runtime (the batch exporter uses it).
pub fn init() -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new("info,kube=warn"))
        .map_err(|e| anyhow::anyhow!("RUST_LOG is malformed: {e}"))?;
    let json = match std::env::var("LOG_FORMAT").as_deref() {
        Ok("json") => true,
        Ok("text") => false,
        _ => !std::io::stdout().is_terminal(),
    };
    let log_layer = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer().boxed()
    };
    let settings = OtlpSettings::from_env(|k| std::env::var(k).ok())?;
    let provider = settings.as_ref().map(tracer_provider).transpose()?;
    let otel_layer = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer(SERVICE_NAME))
            .with_error_records_to_exceptions(true)
    });
    // The exception events of failed spans are for traces; the failure is
    // already logged where it is handled.
    let log_layer = log_layer.with_filter(tracing_subscriber::filter::filter_fn(|meta| {
        meta.target() != EXCEPTION_TARGET
    }));
    tracing_subscriber::registry()
        .with(filter)
        .with(log_layer)
        .with(otel_layer)
        .try_init()
        .map_err(|e| anyhow::anyhow!("installing the log subscriber: {e}"))?;
    if let Some(s) = &settings {
        tracing::info!(
            endpoint = %s.endpoint,
            ratio = s.sample_ratio,
            "exporting reconcile spans over OTLP"
        );
    }
    Ok(Telemetry { provider })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(vars: &[(&str, &str)]) -> anyhow::Result<Option<OtlpSettings>> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        OtlpSettings::from_env(|k| map.get(k).cloned())
    }

    #[test]
    fn export_only_with_an_endpoint() {
        assert_eq!(settings(&[]).expect("ok"), None);
        assert_eq!(
            settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")]).expect("ok"),
            None
        );
        assert_eq!(
            settings(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://jaeger:4317"),
                ("OTEL_SDK_DISABLED", "true"),
            ])
            .expect("ok"),
            None
        );
        let s = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://jaeger:4317"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "k8s.pod.name=op-1,k8s.namespace.name=stockmesh-system",
            ),
        ])
        .expect("ok")
        .expect("export on");
        assert_eq!(s.endpoint, "http://jaeger:4317");
        assert_eq!(s.sample_ratio, 0.25);
        assert_eq!(
            s.resource_attributes,
            vec![
                ("k8s.pod.name".to_owned(), "op-1".to_owned()),
                (
                    "k8s.namespace.name".to_owned(),
                    "stockmesh-system".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn a_bad_ratio_is_an_error() {
        for bad in ["2", "-0.1", "half"] {
            assert!(
                settings(&[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://jaeger:4317"),
                    ("OTEL_TRACES_SAMPLER_ARG", bad),
                ])
                .is_err(),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn the_exporter_builds_for_an_endpoint() {
        let s = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")])
            .expect("ok")
            .expect("on");
        let provider = tracer_provider(&s).expect("provider");
        let _ = provider.shutdown_with_timeout(Duration::from_secs(1));
    }
}
