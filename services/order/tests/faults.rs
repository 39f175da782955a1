//! Failures of the order service's dependencies.

mod common;

use std::time::Duration;

use common::System;
use reqwest::{Method, StatusCode};
use stockmesh_platform::breaker::BreakerState;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_opens_fails_fast_and_recovers_on_its_own() {
    let sys = System::start(&[
        ("BREAKER_FAILURE_THRESHOLD", "3"),
        ("BREAKER_OPEN_MS", "500"),
    ])
    .await;
    let product = sys.product("Lamp", 10).await;
    let user = sys.user();
    let (status, _, _) = sys.order(&user, &product, 1, None).await;
    assert_eq!(status, StatusCode::CREATED);

    sys.inventory_proxy.cut();
    // The first order's reserve (retried) fails: inventory is unreachable.
    let (status, body, headers) = sys.order(&user, &product, 1, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(headers.contains_key("retry-after"));
    let mut opened = sys.inventory_upstream.breaker().state() == BreakerState::Open;
    for _ in 0..5 {
        if opened {
            break;
        }
        let (status, _, _) = sys.order(&user, &product, 1, None).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        opened = sys.inventory_upstream.breaker().state() == BreakerState::Open;
    }
    assert!(opened, "the breaker opened after consecutive failures");

    // While open: answered at once with 503 + Retry-After, no call reaches inventory.
    let metrics = |sys: &System| {
        let url = format!("http://{}/metrics", sys.order_http);
        let http = sys.http.clone();
        async move { http.get(url).send().await.unwrap().text().await.unwrap() }
    };
    let rejected_before = rejected_count(&metrics(&sys).await);
    let pool = sys.order_db.pool().await;
    let stored = |pool: sqlx::PgPool| async move {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM orders")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    let stored_before = stored(pool.clone()).await;
    let (status, body, headers) = sys.order(&user, &product, 1, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unavailable"),
        "{body}"
    );
    assert!(headers.contains_key("retry-after"));
    assert_eq!(
        stored(pool.clone()).await,
        stored_before,
        "an order refused by the open breaker is not stored (nothing to fail or release)"
    );
    let text = metrics(&sys).await;
    assert!(
        rejected_count(&text) > rejected_before,
        "failed fast by the breaker: {text}"
    );
    assert!(
        text.contains(r#"stockmesh_circuit_breaker_state{service="order",upstream="inventory"} 1"#),
        "{text}"
    );

    // Inventory returns; after the open period a probe closes the breaker.
    sys.inventory_proxy.restore();
    let mut recovered = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (status, _, _) = sys.order(&user, &product, 1, None).await;
        if status == StatusCode::CREATED {
            recovered = true;
            break;
        }
    }
    assert!(recovered, "orders succeed again without intervention");
    assert_eq!(
        sys.inventory_upstream.breaker().state(),
        BreakerState::Closed
    );

    // Nothing half-done: every failed order is FAILED and holds no stock.
    for _ in 0..50 {
        let pending: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM orders WHERE status = 'PENDING' OR needs_release",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let confirmed: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(quantity), 0)::bigint FROM orders WHERE status = 'CONFIRMED'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    // Confirmed orders' reservations are committed in the background: then
    // nothing is held any more, and exactly the confirmed units are gone.
    let mut stock = sys.stock(&product).await;
    for _ in 0..50 {
        if stock.1 == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        stock = sys.stock(&product).await;
    }
    let (available, reserved) = stock;
    assert_eq!(reserved, 0, "every confirmed order was committed");
    assert_eq!(
        available,
        10 - confirmed,
        "the units gone are exactly the confirmed orders'"
    );
    sys.stop().await;
}

fn rejected_count(metrics: &str) -> u64 {
    metrics
        .lines()
        .find(|l| {
            l.starts_with("stockmesh_circuit_breaker_rejected_total")
                && l.contains(r#"upstream="inventory""#)
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_succeed_while_the_broker_is_down_and_the_outbox_drains() {
    let mut sys = System::start(&[]).await;
    let product = sys.product("Clock", 20).await;
    let user = sys.user();
    sys.broker_proxy.cut();
    let mut ids = Vec::new();
    for _ in 0..5 {
        let (status, order, _) = sys.order(&user, &product, 1, None).await;
        assert_eq!(
            status,
            StatusCode::CREATED,
            "orders do not wait for the broker: {order}"
        );
        ids.push(order["id"].as_str().unwrap().to_owned());
    }
    let pool = sys.order_db.pool().await;
    let backlog: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(backlog, 5, "the events wait in the outbox");
    // An event handed to the relay just as the broker went is given back:
    // due now, for any relay that can publish, not leased to this one.
    let mut leased: i64 = -1;
    for _ in 0..100 {
        leased = sqlx::query_scalar(
            "SELECT count(*) FROM outbox WHERE published_at IS NULL AND available_at > now()",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if leased == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        leased, 0,
        "no event is left leased to a relay that cannot publish"
    );
    let text = sys.metrics_text().await;
    assert!(
        text.contains(r#"stockmesh_outbox_backlog{service="order"} 5"#),
        "{text}"
    );

    sys.broker_proxy.restore();
    for id in &ids {
        sys.event_for(id, "order.confirmed").await;
    }
    let mut drained = false;
    for _ in 0..50 {
        let backlog: i64 =
            sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
                .fetch_one(&pool)
                .await
                .unwrap();
        if backlog == 0 {
            drained = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(drained, "the outbox drained after the broker returned");
    let (status, _, _) = sys
        .call(sys.order_http, Method::GET, "/readyz", None, None, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    sys.stop().await;
}
