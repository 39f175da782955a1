//! The reconciler's trace: a failed reconcile is an error span. In a test
//! binary of its own, so no concurrently running test (without a subscriber)
//! shares the reconcile span's callsite with this one.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Fake, coll, cr_collection, prime, system};
use serde_json::json;
use stockmesh_operator::controller::{Context, reconcile};
use stockmesh_operator::metrics::Metrics;

/// Keeps the spans the reconcile exported.
#[derive(Clone, Debug, Default)]
struct CapturedSpans(Arc<std::sync::Mutex<Vec<opentelemetry_sdk::trace::SpanData>>>);

impl opentelemetry_sdk::trace::SpanExporter for CapturedSpans {
    async fn export(
        &self,
        batch: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        if let Ok(mut spans) = self.0.lock() {
            spans.extend(batch);
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_failed_reconcile_is_an_error_span_with_an_exception_event() {
    use opentelemetry::trace::{Status, TracerProvider as _};
    use tracing_subscriber::layer::SubscriberExt;

    let captured = CapturedSpans::default();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_simple_exporter(captured.clone())
        .build();
    // At info, as the operator runs (trace-level events of the HTTP stack
    // would fill the span's event limit).
    let subscriber = tracing_subscriber::registry()
        .with(tracing_subscriber::filter::LevelFilter::INFO)
        .with(
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("test"))
                .with_error_records_to_exceptions(true),
        );
    let _guard = tracing::subscriber::set_default(subscriber);
    // Interest cached before this subscriber existed must not hide spans.
    tracing::callsite::rebuild_interest_cache();

    let fake = Fake::new();
    fake.lock()
        .forbidden
        .push(format!("PATCH {}", coll("apps/v1", "deployments")));
    let obj = system("shop", json!({}), 1);
    {
        let mut st = fake.lock();
        st.insert(&cr_collection(), serde_json::to_value(&obj).expect("json"));
    }
    let (client, server) = fake.client();
    let ctx = Arc::new(Context::new(client, Arc::new(Metrics::new()), None));
    prime(&ctx, &fake);
    let result = tokio::time::timeout(
        Duration::from_secs(20),
        reconcile(Arc::new(obj), ctx.clone()),
    )
    .await
    .expect("reconcile finishes");
    assert!(result.is_err());
    drop(ctx);
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    let _ = provider.force_flush();

    let spans = captured.0.lock().expect("spans").clone();
    let span = spans
        .iter()
        .find(|s| s.name == "reconcile")
        .expect("a reconcile span");
    assert!(
        matches!(&span.status, Status::Error { .. }),
        "{:?}",
        span.status
    );
    assert!(
        span.attributes
            .iter()
            .any(|kv| kv.key.as_str() == "error.type" && kv.value.as_str() == "Forbidden"),
        "{:?}",
        span.attributes
    );
    let exception = span
        .events
        .iter()
        .find(|e| e.name == "exception")
        .expect("an exception event");
    assert!(
        exception
            .attributes
            .iter()
            .any(|kv| kv.key.as_str() == "exception.message" && !kv.value.as_str().is_empty()),
        "{:?}",
        exception.attributes
    );
}
