//! One trace per order: the five real binaries export spans over OTLP/gRPC
//! to a receiver started inside this test; one order must give one trace
//! with the edges ARCHITECTURE.md describes, no orphans, and the trace id
//! in every service's logs.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Stack, Svc, eventually};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use reqwest::StatusCode;

/// One received span, flattened.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    name: String,
    kind: i32,
    trace_id: String,
    span_id: String,
    parent: String,
    attributes: HashMap<String, String>,
    /// OTLP status code: 0 unset, 1 ok, 2 error.
    status: i32,
    /// Span events: name and attributes.
    events: Vec<(String, HashMap<String, String>)>,
}

impl Received {
    fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }

    /// The `exception` event's message, if the span has one.
    fn exception(&self) -> Option<&str> {
        self.events
            .iter()
            .find(|(name, _)| name == "exception")
            .and_then(|(_, attrs)| attrs.get("exception.message"))
            .map(String::as_str)
    }
}

const STATUS_ERROR: i32 = 2;

#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Received>>>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(value: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                .map(|a| text(&a.value))
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    received.push(Received {
                        service: service.clone(),
                        name: span.name.clone(),
                        kind: span.kind,
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent: hex(&span.parent_span_id),
                        attributes: span
                            .attributes
                            .iter()
                            .map(|a| (a.key.clone(), text(&a.value)))
                            .collect(),
                        status: span.status.as_ref().map_or(0, |s| s.code),
                        events: span
                            .events
                            .iter()
                            .map(|e| {
                                let attrs = e
                                    .attributes
                                    .iter()
                                    .map(|a| (a.key.clone(), text(&a.value)))
                                    .collect();
                                (e.name.clone(), attrs)
                            })
                            .collect(),
                    });
                }
            }
        }
        self.spans.lock().expect("collector lock").extend(received);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

async fn start_collector() -> (Collector, String) {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind collector");
    let addr = listener.local_addr().expect("collector addr");
    let service = TraceServiceServer::new(collector.clone());
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await;
    });
    (collector, format!("http://{addr}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_order_is_one_trace_across_every_service() {
    let (collector, endpoint) = start_collector().await;
    let mut builder = Stack::builder();
    for svc in Svc::ALL {
        builder = builder
            .env(svc, "OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
            .env(svc, "OTEL_BSP_SCHEDULE_DELAY", "100")
            .env(svc, "RUST_LOG", "info,stockmesh_product=debug");
    }
    let mut stack = builder.start().await;
    let (token, _) = stack.register("traced").await;
    let admin = stack.admin_token().await;
    let product = stack.create_product(&admin, 5).await;
    let order = stack.place_order(&token, product, 1).await;
    assert_eq!(order.status, StatusCode::CREATED, "{}", order.body);

    // The trace of the order: the order service's POST /api/orders server span.
    let root = eventually("the order's server span", Duration::from_secs(15), || {
        let spans = collector.spans.lock().expect("lock").clone();
        async move {
            spans.into_iter().find(|s| {
                s.service == "order"
                    && s.name == "POST /api/orders"
                    && s.kind == SpanKind::Server as i32
            })
        }
    })
    .await;
    // The order and the answer's header name that trace, for the console's
    // link to Jaeger.
    assert_eq!(
        order.body["trace_id"].as_str(),
        Some(root.trace_id.as_str()),
        "the order carries its trace id: {}",
        order.body
    );
    assert_eq!(
        order
            .headers
            .get("x-trace-id")
            .and_then(|v| v.to_str().ok()),
        Some(root.trace_id.as_str())
    );
    // Wait until the notification's database span arrived (or give up and
    // let the assertions below say what is missing).
    for _ in 0..150 {
        let done = collector.spans.lock().expect("lock").iter().any(|s| {
            s.trace_id == root.trace_id
                && s.service == "notification"
                && s.kind == SpanKind::Client as i32
        });
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let late batches arrive, then take the final picture.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let trace: Vec<Received> = collector
        .spans
        .lock()
        .expect("lock")
        .iter()
        .filter(|s| s.trace_id == root.trace_id)
        .cloned()
        .collect();
    let by_id: HashMap<&str, &Received> = trace.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let describe = || {
        trace
            .iter()
            .map(|s| format!("{}:{}({})<-{}", s.service, s.name, s.span_id, s.parent))
            .collect::<Vec<_>>()
            .join("\n")
    };

    // One root, and no orphans: every other span's parent is in the trace.
    assert!(root.parent.is_empty(), "the HTTP server span is the root");
    for span in &trace {
        if span.span_id != root.span_id {
            assert!(
                by_id.contains_key(span.parent.as_str()),
                "orphan span {}:{}\n{}",
                span.service,
                span.name,
                describe()
            );
        }
    }
    let services: std::collections::BTreeSet<&str> =
        trace.iter().map(|s| s.service.as_str()).collect();
    for svc in ["order", "product", "inventory", "notification"] {
        assert!(
            services.contains(svc),
            "{svc} missing from the trace:\n{}",
            describe()
        );
    }

    let is_ancestor = |ancestor: &Received, span: &Received| {
        let mut current = span.parent.as_str();
        while let Some(parent) = by_id.get(current) {
            if parent.span_id == ancestor.span_id {
                return true;
            }
            current = parent.parent.as_str();
        }
        false
    };
    let find = |service: &str, kind: SpanKind, name: &str| {
        trace
            .iter()
            .find(|s| s.service == service && s.kind == kind as i32 && s.name.contains(name))
            .unwrap_or_else(|| panic!("no {kind:?} span {name} in {service}:\n{}", describe()))
    };
    // HTTP server → gRPC client → gRPC server, for product and for inventory.
    for (upstream, method) in [
        ("product", "ProductService/GetProduct"),
        ("inventory", "InventoryService/Reserve"),
    ] {
        let client = find("order", SpanKind::Client, method);
        assert!(
            is_ancestor(&root, client),
            "{method} client span under the HTTP span"
        );
        let server = find(upstream, SpanKind::Server, method);
        assert_eq!(
            server.parent, client.span_id,
            "{upstream} server span is the client span's child"
        );
        assert_eq!(
            server.attributes.get("rpc.system").map(String::as_str),
            Some("grpc")
        );
    }
    // Database spans under the inventory server span.
    let reserve_server = find("inventory", SpanKind::Server, "InventoryService/Reserve");
    let reserve_db = trace
        .iter()
        .find(|s| s.service == "inventory" && s.name.starts_with("reserve"))
        .expect("inventory db span");
    assert!(is_ancestor(reserve_server, reserve_db));
    // request → publish → process → db insert.
    let publish = find("order", SpanKind::Producer, "publish");
    assert!(
        is_ancestor(&root, publish),
        "publish is a child of the stored request context"
    );
    let process = find("notification", SpanKind::Consumer, "process");
    assert_eq!(
        process.parent, publish.span_id,
        "process is the publish span's child"
    );
    let insert = trace
        .iter()
        .find(|s| {
            s.service == "notification"
                && s.kind == SpanKind::Client as i32
                && s.name.contains("notifications")
        })
        .unwrap_or_else(|| panic!("no notification db span:\n{}", describe()));
    assert!(
        is_ancestor(process, insert),
        "the insert runs under process"
    );

    // Every service's logs carry the trace id.
    for svc in [Svc::Order, Svc::Product, Svc::Inventory, Svc::Notification] {
        let log = std::fs::read_to_string(&stack.process(svc).log).unwrap_or_default();
        assert!(
            log.lines()
                .any(|l| l.contains(&format!("\"trace_id\":\"{}\"", root.trace_id))),
            "{} logged nothing with trace id {}",
            svc.name(),
            root.trace_id
        );
    }
}

/// Failures are error spans: status Error plus an `exception` event, on the
/// HTTP server span that answered 5xx and on each failed gRPC client span;
/// the breaker's fast failures say `error.type = circuit_open`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_error_spans_with_exception_events() {
    let (collector, endpoint) = start_collector().await;
    let mut builder = Stack::builder()
        .env(Svc::Order, "BREAKER_FAILURE_THRESHOLD", "3")
        .env(Svc::Order, "BREAKER_OPEN_MS", "5000")
        .env(Svc::Order, "INVENTORY_CONNECT_TIMEOUT_MS", "300")
        .env(Svc::Order, "INVENTORY_TIMEOUT_MS", "1000");
    for svc in Svc::ALL {
        builder = builder
            .env(svc, "OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
            .env(svc, "OTEL_BSP_SCHEDULE_DELAY", "100");
    }
    let mut stack = builder.start().await;
    let (token, _) = stack.register("failing").await;
    let admin = stack.admin_token().await;
    let product = stack.create_product(&admin, 5).await;
    stack.kill_hard(Svc::Inventory);
    // Reserve fails (attempts count towards the breaker), then the breaker
    // opens and the compensating Release, or a later order, fails fast.
    for _ in 0..3 {
        let answer = stack.place_order(&token, product, 1).await;
        assert!(
            answer.status.is_server_error(),
            "{} {}",
            answer.status,
            answer.body
        );
    }

    let spans = |filter: &dyn Fn(&Received) -> bool| -> Vec<Received> {
        collector
            .spans
            .lock()
            .expect("lock")
            .iter()
            .filter(|s| filter(s))
            .cloned()
            .collect()
    };
    let failed_client = |s: &Received| {
        s.service == "order" && s.kind == SpanKind::Client as i32 && s.status == STATUS_ERROR
    };
    eventually("failed client spans", Duration::from_secs(15), || {
        let found = spans(&failed_client);
        async move {
            (found
                .iter()
                .any(|s| s.attribute("error.type") == Some("circuit_open"))
                && found
                    .iter()
                    .any(|s| s.attribute("error.type") == Some("UNAVAILABLE")))
            .then_some(())
        }
    })
    .await;

    // The upstream failure: status Error, error.type, an exception event.
    let unreachable = spans(&failed_client)
        .into_iter()
        .find(|s| s.attribute("error.type") == Some("UNAVAILABLE"))
        .expect("an UNAVAILABLE client span");
    assert!(
        unreachable.name.contains("InventoryService/"),
        "{unreachable:?}"
    );
    let message = unreachable
        .exception()
        .unwrap_or_else(|| panic!("no exception event on {unreachable:?}"));
    assert!(
        message.contains("inventory"),
        "exception message {message:?}"
    );

    // The breaker's fast failure reads as such.
    let fast = spans(&failed_client)
        .into_iter()
        .find(|s| s.attribute("error.type") == Some("circuit_open"))
        .expect("a circuit_open client span");
    let message = fast
        .exception()
        .unwrap_or_else(|| panic!("no exception event on {fast:?}"));
    assert!(message.contains("circuit breaker open"), "{message:?}");
    assert_eq!(fast.attribute("rpc.grpc.status_code"), Some("14"));

    // The HTTP server span that answered 503, in the same trace.
    let server = eventually("the 503 server span", Duration::from_secs(10), || {
        let found = spans(&|s: &Received| {
            s.service == "order"
                && s.name == "POST /api/orders"
                && s.attribute("http.response.status_code") == Some("503")
        });
        async move { found.into_iter().next() }
    })
    .await;
    assert_eq!(server.status, STATUS_ERROR, "{server:?}");
    assert_eq!(server.attribute("error.type"), Some("503"));
    assert!(
        server.exception().is_some(),
        "no exception event on {server:?}"
    );
    assert!(
        spans(&failed_client)
            .iter()
            .any(|s| s.trace_id == server.trace_id),
        "the failed client spans belong to the 503's trace"
    );
    // A successful span is not marked.
    let product_create = spans(&|s: &Received| {
        s.service == "product" && s.kind == SpanKind::Server as i32 && s.name.starts_with("POST")
    });
    assert!(
        product_create
            .iter()
            .all(|s| s.status != STATUS_ERROR && s.exception().is_none()),
        "{product_create:?}"
    );
}

/// Outgoing HTTP propagation: `loadgen`, exporting its own client spans,
/// sends `traceparent` with each request, so the order service's server span
/// continues the client's trace instead of starting one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_client_spans_are_the_parents_of_the_server_spans() {
    let (collector, endpoint) = start_collector().await;
    let stack = Stack::builder()
        .env(Svc::Order, "OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .env(Svc::Order, "OTEL_BSP_SCHEDULE_DELAY", "100")
        .start()
        .await;
    let (email, password) = stack.admin_credentials();
    let output = tokio::process::Command::new(common::binary_dir().join("loadgen"))
        .args(["--admin-email", email, "--admin-password", password])
        .args([
            "--mode",
            "orders",
            "--users",
            "1",
            "--products",
            "1",
            "--stock",
            "100",
        ])
        .args([
            "--concurrency",
            "1",
            "--requests",
            "5",
            "--lag-every",
            "0",
            "--quiet",
        ])
        .env("LOADGEN_USER_URL", stack.url(Svc::User, ""))
        .env("LOADGEN_PRODUCT_URL", stack.url(Svc::Product, ""))
        .env("LOADGEN_ORDER_URL", stack.url(Svc::Order, ""))
        .env("LOADGEN_NOTIFICATION_URL", stack.url(Svc::Notification, ""))
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .kill_on_drop(true)
        .output()
        .await
        .expect("run loadgen");
    assert!(
        output.status.success(),
        "loadgen failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    let (client, server) = eventually(
        "a loadgen span with its server child",
        Duration::from_secs(15),
        || {
            let spans = collector.spans.lock().expect("lock").clone();
            async move {
                spans
                    .iter()
                    .filter(|s| {
                        s.service == "loadgen"
                            && s.kind == SpanKind::Client as i32
                            && s.name == "POST /api/orders"
                    })
                    .find_map(|client| {
                        spans
                            .iter()
                            .find(|s| {
                                s.service == "order"
                                    && s.kind == SpanKind::Server as i32
                                    && s.parent == client.span_id
                            })
                            .map(|server| (client.clone(), server.clone()))
                    })
            }
        },
    )
    .await;
    assert_eq!(server.trace_id, client.trace_id);
    assert_eq!(server.name, "POST /api/orders");
    assert_eq!(client.attribute("http.response.status_code"), Some("201"));
    assert!(client.parent.is_empty(), "the client span is the root");
}
