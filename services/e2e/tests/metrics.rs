//! `/metrics` of every real service after some traffic: the named series
//! exist with sensible values.

mod common;

use std::time::Duration;

use common::{Stack, Svc, eventually};
use reqwest::StatusCode;

/// The value of the first sample line that starts with `series` and
/// contains every `label`.
fn sample(text: &str, series: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(series) && labels.iter().all(|label| l.contains(label)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_exports_its_series() {
    let stack = Stack::start().await;
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
    let product_text = scrape(Svc::Product).await;
    assert_eq!(
        sample(
            &product_text,
            "stockmesh_grpc_server_handled_total",
            &[r#"method="GetProduct""#, r#"code="OK""#]
        ),
        Some(4.0)
    );
    assert!(
        sample(
            &product_text,
            "stockmesh_grpc_client_handled_total",
            &[r#"method="SetStock""#]
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
