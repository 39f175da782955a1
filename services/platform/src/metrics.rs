//! Prometheus metrics: one registry per process, rendered at `/metrics`.
//!
//! The request metrics every service shares (HTTP per route, gRPC per method,
//! server and client side) are registered here; a service registers its own
//! domain metrics through [`Metrics::register`]. Gauges that mirror external
//! state (pool usage, backlog) are refreshed at scrape time by hooks.

use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use prometheus_client::encoding::{EncodeLabelSet, text::encode};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::{Metric, Registry};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Latency buckets in seconds, 1 ms to 10 s.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// A latency histogram whose buckets remember the trace id of their last
/// sampled observation (an OpenMetrics exemplar), so a slow bucket on a
/// dashboard leads straight to a trace in Jaeger.
pub type LatencyHistogram = HistogramWithExemplars<TraceExemplar>;

fn latency_histogram() -> LatencyHistogram {
    HistogramWithExemplars::new(LATENCY_BUCKETS.into_iter())
}

/// The exemplar label set: the trace an observation belongs to.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TraceExemplar {
    pub trace_id: String,
}

/// The exemplar for an observation made under `span`: its trace id when the
/// trace is sampled (an unsampled trace id would lead nowhere).
pub fn trace_exemplar(span: &tracing::Span) -> Option<TraceExemplar> {
    use opentelemetry::trace::TraceContextExt;
    let cx = span.context();
    let otel_span = cx.span();
    let sc = otel_span.span_context();
    (sc.is_valid() && sc.is_sampled()).then(|| TraceExemplar {
        trace_id: sc.trace_id().to_string(),
    })
}

/// Records `seconds` in `histogram` with the exemplar of `span`.
pub fn observe_latency(histogram: &LatencyHistogram, seconds: f64, span: &tracing::Span) {
    histogram.observe(seconds, trace_exemplar(span), None);
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: String,
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpRouteLabels {
    pub method: String,
    pub route: String,
}

/// Labels of a gRPC call. Named `grpc_*` (as go-grpc-prometheus does)
/// because every series already carries `service`, the emitting service's
/// name: a second `service` label makes Prometheus reject the whole scrape.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrpcLabels {
    pub grpc_service: String,
    pub grpc_method: String,
    pub grpc_code: String,
}

/// Labels of a gRPC method (see [`GrpcLabels`] for the names).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrpcMethodLabels {
    pub grpc_service: String,
    pub grpc_method: String,
}

/// Request metrics shared by every service.
#[derive(Clone)]
pub struct RequestMetrics {
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_duration: Family<HttpRouteLabels, LatencyHistogram>,
    pub grpc_server_handled: Family<GrpcLabels, Counter>,
    pub grpc_server_duration: Family<GrpcMethodLabels, LatencyHistogram>,
    pub grpc_client_handled: Family<GrpcLabels, Counter>,
    pub grpc_client_duration: Family<GrpcMethodLabels, LatencyHistogram>,
    pub shed: Family<TransportLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabels {
    pub transport: &'static str,
}

type ScrapeHook = Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>;

/// The process's metric registry plus the shared request metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    hooks: Arc<Mutex<Vec<ScrapeHook>>>,
    pub requests: RequestMetrics,
    /// Circuit breaker families, shared by every upstream of the process.
    pub breakers: crate::breaker::BreakerMetrics,
}

impl Metrics {
    /// A registry whose metric names all start with `stockmesh_`.
    pub fn new(service: &str) -> Self {
        let mut registry = Registry::with_prefix_and_labels(
            "stockmesh",
            [(
                std::borrow::Cow::Borrowed("service"),
                std::borrow::Cow::Owned(service.to_owned()),
            )]
            .into_iter(),
        );
        let requests = RequestMetrics {
            http_requests: Family::default(),
            http_duration: Family::new_with_constructor(latency_histogram),
            grpc_server_handled: Family::default(),
            grpc_server_duration: Family::new_with_constructor(latency_histogram),
            grpc_client_handled: Family::default(),
            grpc_client_duration: Family::new_with_constructor(latency_histogram),
            shed: Family::default(),
        };
        registry.register(
            "http_server_requests",
            "HTTP requests served, by method, route and status",
            requests.http_requests.clone(),
        );
        registry.register(
            "http_server_request_duration_seconds",
            "HTTP request duration, by method and route",
            requests.http_duration.clone(),
        );
        registry.register(
            "grpc_server_handled",
            "gRPC calls served, by service, method and status code",
            requests.grpc_server_handled.clone(),
        );
        registry.register(
            "grpc_server_handling_seconds",
            "gRPC server call duration, by service and method",
            requests.grpc_server_duration.clone(),
        );
        registry.register(
            "grpc_client_handled",
            "gRPC calls made, by upstream service, method and status code",
            requests.grpc_client_handled.clone(),
        );
        registry.register(
            "grpc_client_handling_seconds",
            "gRPC client call duration, by upstream service and method",
            requests.grpc_client_duration.clone(),
        );
        registry.register(
            "requests_shed",
            "Requests refused because the server was at its concurrency limit",
            requests.shed.clone(),
        );
        let mut this = Self {
            registry: Arc::new(Mutex::new(registry)),
            hooks: Arc::new(Mutex::new(Vec::new())),
            requests,
            breakers: crate::breaker::BreakerMetrics::default(),
        };
        this.breakers = crate::breaker::BreakerMetrics::register(&this);
        this
    }

    /// Registers a service-specific metric.
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        if let Ok(mut registry) = self.registry.lock() {
            registry.register(name, help, metric);
        }
    }

    /// Runs `hook` before each scrape (to refresh gauges from their source).
    pub fn on_scrape<F, Fut>(&self, hook: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        if let Ok(mut hooks) = self.hooks.lock() {
            hooks.push(Arc::new(move || Box::pin(hook())));
        }
    }

    /// Prometheus text exposition of every metric.
    pub async fn render(&self) -> String {
        let hooks: Vec<ScrapeHook> = self
            .hooks
            .lock()
            .map(|hooks| hooks.clone())
            .unwrap_or_default();
        for hook in hooks {
            hook().await;
        }
        let mut out = String::new();
        if let Ok(registry) = self.registry.lock() {
            // Writing into a String cannot fail.
            let _ = encode(&mut out, &registry);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::gauge::Gauge;

    #[tokio::test]
    async fn renders_shared_and_custom_metrics_with_scrape_hooks() {
        let metrics = Metrics::new("inventory");
        metrics
            .requests
            .http_requests
            .get_or_create(&HttpLabels {
                method: "GET".into(),
                route: "/x".into(),
                status: 200,
            })
            .inc();
        let gauge: Gauge = Gauge::default();
        metrics.register("things", "things", gauge.clone());
        metrics.on_scrape(move || {
            let gauge = gauge.clone();
            async move {
                gauge.set(7);
            }
        });
        let text = metrics.render().await;
        assert!(
            text.contains(
                r#"stockmesh_http_server_requests_total{service="inventory",method="GET",route="/x",status="200"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"stockmesh_things{service="inventory"} 7"#),
            "{text}"
        );
    }

    /// Every label name in the rendered exposition, per series line.
    fn label_names(line: &str) -> Vec<String> {
        let Some(open) = line.find('{') else {
            return Vec::new();
        };
        let Some(close) = line[open..].find('}') else {
            return Vec::new();
        };
        let mut names = Vec::new();
        let mut rest = &line[open + 1..open + close];
        while let Some(eq) = rest.find('=') {
            names.push(rest[..eq].trim_start_matches(',').to_owned());
            // Skip the quoted value (label values here hold no quotes).
            let after = &rest[eq + 2..];
            let end = after.find('"').map_or(after.len(), |i| i + 1);
            rest = &after[end..];
        }
        names
    }

    /// Prometheus rejects a whole scrape when one series repeats a label
    /// name; the gRPC families once added a second `service`.
    #[tokio::test]
    async fn no_series_repeats_a_label_name() {
        let metrics = Metrics::new("inventory");
        let grpc = GrpcLabels {
            grpc_service: "stockmesh.inventory.v1.InventoryService".into(),
            grpc_method: "GetStock".into(),
            grpc_code: "OK".into(),
        };
        let method = GrpcMethodLabels {
            grpc_service: grpc.grpc_service.clone(),
            grpc_method: grpc.grpc_method.clone(),
        };
        metrics
            .requests
            .grpc_server_handled
            .get_or_create(&grpc)
            .inc();
        metrics
            .requests
            .grpc_client_handled
            .get_or_create(&grpc)
            .inc();
        observe_latency(
            &metrics.requests.grpc_server_duration.get_or_create(&method),
            0.01,
            &tracing::Span::none(),
        );
        observe_latency(
            &metrics.requests.grpc_client_duration.get_or_create(&method),
            0.01,
            &tracing::Span::none(),
        );
        let text = metrics.render().await;
        assert!(
            text.contains("grpc_service=\"stockmesh.inventory.v1.InventoryService\""),
            "{text}"
        );
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let mut names = label_names(line);
            let count = names.len();
            names.sort();
            names.dedup();
            assert_eq!(names.len(), count, "a label name repeats in: {line}");
        }
    }
}
