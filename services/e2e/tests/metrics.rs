//! `/metrics` of every real service after some traffic: the named series
//! exist with sensible values.

mod common;

use std::time::Duration;

use common::{Stack, Svc, eventually};
use reqwest::StatusCode;

/// The value of the first sample line that starts with `series` and
/// contains every `label` (an OpenMetrics exemplar after ` # ` is ignored).
fn sample(text: &str, series: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(" # ").next().unwrap_or(l))
        .find(|l| l.starts_with(series) && labels.iter().all(|label| l.contains(label)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Trace ids of the exemplars on `series` lines carrying every `label`.
fn exemplar_trace_ids(text: &str, series: &str, labels: &[&str]) -> Vec<String> {
    text.lines()
        .filter(|l| l.starts_with(series) && labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.split_once(" # {trace_id=\"").map(|(_, rest)| rest))
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_exports_its_series() {
    let mut stack = Stack::start().await;
    let (token, _) = stack.register("metered").await;
    let admin = stack.admin_token().await;
    let product = stack.create_product(&admin, 5).await;
    for _ in 0..3 {
        let order = stack.place_order(&token, product, 1).await;
        assert_eq!(order.status, StatusCode::CREATED, "{}", order.body);
    }
    let rejected = stack.place_order(&token, product, 50).await;
    assert_eq!(rejected.status, StatusCode::CONFLICT);
    eventually("three notifications", Duration::from_secs(10), || async {
        (stack.notifications(&token).await.len() == 3).then_some(())
    })
    .await;
    let order_log = std::fs::read_to_string(&stack.process(Svc::Order).log).unwrap_or_default();

    let scrape = |svc: Svc| {
        let url = stack.url(svc, "/metrics");
        let http = stack.http.clone();
        async move {
            http.get(url)
                .send()
                .await
                .expect("scrape")
                .text()
                .await
                .expect("text")
        }
    };
    for svc in Svc::ALL {
        let text = scrape(svc).await;
        assert!(
            sample(&text, "stockmesh_db_pool_connections_max", &[]).is_some_and(|v| v >= 1.0),
            "{}: pool",
            svc.name()
        );
    }
    let order = scrape(Svc::Order).await;
    assert_eq!(
        sample(
            &order,
            "stockmesh_http_server_requests_total",
            &[r#"route="/api/orders""#, r#"status="201""#]
        ),
        Some(3.0),
        "{order}"
    );
    assert_eq!(
        sample(
            &order,
            "stockmesh_http_server_requests_total",
            &[r#"route="/api/orders""#, r#"status="409""#]
        ),
        Some(1.0)
    );
    assert!(
        sample(
            &order,
            "stockmesh_http_server_request_duration_seconds_count",
            &[r#"route="/api/orders""#]
        )
        .is_some_and(|v| v >= 4.0)
    );
    assert_eq!(
        sample(
            &order,
            "stockmesh_grpc_client_handled_total",
            &[r#"method="Reserve""#, r#"code="OK""#]
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &order,
            "stockmesh_grpc_client_handled_total",
            &[r#"method="Reserve""#, r#"code="FAILED_PRECONDITION""#]
        ),
        Some(1.0)
    );
    // Latency buckets carry an exemplar: the trace id of a sampled request.
    let exemplars = exemplar_trace_ids(
        &order,
        "stockmesh_http_server_request_duration_seconds_bucket",
        &[r#"route="/api/orders""#],
    );
    assert!(
        !exemplars.is_empty(),
        "no exemplar on the order latency:\n{order}"
    );
    for trace_id in &exemplars {
        assert!(
            trace_id.len() == 32 && trace_id.chars().all(|c| c.is_ascii_hexdigit()),
            "exemplar trace id {trace_id:?}"
        );
    }
    assert!(
        exemplars
            .iter()
            .any(|id| order_log.contains(&format!("\"trace_id\":\"{id}\""))),
        "an exemplar's trace id leads to the order service's logs"
    );
    assert_eq!(
        sample(
            &order,
            "stockmesh_circuit_breaker_state",
            &[r#"upstream="inventory""#]
        ),
        Some(0.0),
        "closed"
    );
    assert_eq!(
        sample(&order, "stockmesh_outbox_published_total", &[]),
        Some(3.0)
    );
    let backlog = eventually("an empty outbox", Duration::from_secs(10), || async {
        let text = scrape(Svc::Order).await;
        sample(&text, "stockmesh_outbox_backlog", &[]).filter(|v| *v == 0.0)
    })
    .await;
    assert_eq!(backlog, 0.0);

    let inventory = scrape(Svc::Inventory).await;
    assert!(
        !exemplar_trace_ids(
            &inventory,
            "stockmesh_grpc_server_handling_seconds_bucket",
            &[r#"method="Reserve""#]
        )
        .is_empty(),
        "gRPC server latency carries exemplars too:\n{inventory}"
    );
    assert_eq!(
        sample(
            &inventory,
            "stockmesh_grpc_server_handled_total",
            &[r#"method="Reserve""#, r#"code="OK""#]
        ),
        Some(3.0)
    );
    assert!(
        sample(
            &inventory,
            "stockmesh_grpc_server_handling_seconds_count",
            &[r#"method="Reserve""#]
        )
        .is_some_and(|v| v >= 4.0)
    );
    // Four orders of one product: order asked product at least once and
    // answered the rest from its short-lived product cache.
    let hits = sample(
        &order,
        "stockmesh_order_product_cache_lookups_total",
        &[r#"result="hit""#],
    )
    .unwrap_or(0.0);
    let misses = sample(
        &order,
        "stockmesh_order_product_cache_lookups_total",
        &[r#"result="miss""#],
    )
    .unwrap_or(0.0);
    assert_eq!(hits + misses, 4.0, "{order}");
    assert!(misses >= 1.0);
    let product_text = scrape(Svc::Product).await;
    assert_eq!(
        sample(
            &product_text,
            "stockmesh_grpc_server_handled_total",
            &[r#"method="GetProduct""#, r#"code="OK""#]
        ),
        Some(misses),
        "product answered exactly the cache misses"
    );
    assert!(
        sample(
            &product_text,
            "stockmesh_grpc_client_handled_total",
            &[r#"method="InitStock""#]
        )
        .is_some()
    );
    let notification = scrape(Svc::Notification).await;
    assert_eq!(
        sample(
            &notification,
            "stockmesh_notification_events_processed_total",
            &[r#"outcome="stored""#]
        ),
        Some(3.0),
        "{notification}"
    );
    let user = scrape(Svc::User).await;
    assert!(
        sample(
            &user,
            "stockmesh_http_server_requests_total",
            &[r#"route="/api/users/login""#, r#"status="200""#]
        )
        .is_some_and(|v| v >= 2.0)
    );
}
