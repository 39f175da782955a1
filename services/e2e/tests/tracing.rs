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
}

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
