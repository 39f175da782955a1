//! A confirmed order's reservation is committed in inventory (issue 13,
//! "reservations never committed"), and cancelling a committed order
//! still returns its units, exactly once.

mod common;

use std::time::Duration;

use common::System;
use reqwest::{Method, StatusCode};
use stockmesh_proto::inventory::v1 as inv;
use stockmesh_proto::inventory::v1::inventory_service_client::InventoryServiceClient;

async fn reservation_state(sys: &System, id: &str) -> Option<String> {
    let pool = sys.inventory_db.pool().await;
    sqlx::query_scalar("SELECT state FROM reservations WHERE order_id = $1::uuid")
        .bind(id)
        .fetch_optional(&pool)
        .await
        .expect("read reservation")
}

/// Waits up to 10 s for the reservation of `id` to reach `state`.
async fn until_reservation(sys: &System, id: &str, state: &str) {
    for _ in 0..100 {
        if reservation_state(sys, id).await.as_deref() == Some(state) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "reservation of {id} is {:?}, never {state}",
        reservation_state(sys, id).await
    );
}

async fn cancel(sys: &System, token: &str, id: &str) -> (StatusCode, serde_json::Value) {
    let (status, body, _) = sys
        .call(
            sys.order_http,
            Method::POST,
            &format!("/api/orders/{id}/cancel"),
            Some(token),
            None,
            None,
        )
        .await;
    (status, body)
}

/// Four units of `product` reserved in inventory (through the proxy) for
/// a new order id, as a saga's reserve does; returns the id.
async fn held_reservation(sys: &System, product: &str) -> uuid::Uuid {
    let order_id = uuid::Uuid::now_v7();
    let mut inventory =
        InventoryServiceClient::connect(format!("http://127.0.0.1:{}", sys.inventory_proxy.port))
            .await
            .expect("inventory reachable");
    inventory
        .reserve(inv::ReserveRequest {
            order_id: order_id.to_string(),
            product_id: product.to_owned(),
            quantity: 4,
        })
        .await
        .expect("reserve");
    order_id
}

/// Stores order `id` (four units of `product`) CONFIRMED, `flagged` for
/// its commit or not: what a confirm leaves when its commit has not run.
async fn store_confirmed(sys: &System, id: uuid::Uuid, product: &str, name: &str, flagged: bool) {
    sqlx::query(
        "INSERT INTO orders (id, user_id, product_id, product_name, quantity, unit_price_minor, \
         total_minor, currency, status, needs_commit) \
         VALUES ($1, $2, $3::uuid, $4, 4, 250, 1000, 'EUR', 'CONFIRMED', $5)",
    )
    .bind(id)
    .bind(uuid::Uuid::now_v7())
    .bind(product)
    .bind(name)
    .bind(flagged)
    .execute(&sys.order_db.pool().await)
    .await
    .expect("insert a confirmed order");
}

async fn flagged(sys: &System, id: uuid::Uuid) -> bool {
    sqlx::query_scalar::<_, bool>("SELECT needs_commit FROM orders WHERE id = $1")
        .bind(id)
        .fetch_one(&sys.order_db.pool().await)
        .await
        .expect("read order")
}

/// Waits up to 5 s for the commit flag of `id` to be cleared.
async fn until_not_flagged(sys: &System, id: uuid::Uuid) {
    for _ in 0..50 {
        if !flagged(sys, id).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("order {id} is still flagged for its commit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirmed_order_is_committed_and_its_cancel_returns_the_units_once() {
    let sys = System::start(&[]).await;
    let product = sys.product("Saucer", 10).await;
    let user = sys.user();

    let (status, order, _) = sys.order(&user, &product, 3, None).await;
    assert_eq!(status, StatusCode::CREATED, "{order}");
    let id = order["id"].as_str().expect("order id").to_owned();
    assert_eq!(sys.stock(&product).await.0, 7);

    // Committed in the background: the units are sold, no longer held.
    until_reservation(&sys, &id, "committed").await;
    assert_eq!(sys.stock(&product).await, (7, 0));
    let order_id: uuid::Uuid = id.parse().expect("uuid");
    assert!(
        !flagged(&sys, order_id).await,
        "the order row is stored once: its commit went from memory, no flag was set or cleared"
    );

    let (status, body) = cancel(&sys, &user, &id).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "CANCELLED");
    assert_eq!(sys.stock(&product).await, (10, 0), "the units came back");
    let (status, body) = cancel(&sys, &user, &id).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    // Give a background pass the chance to do something wrong.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(sys.stock(&product).await, (10, 0), "exactly once");
    assert_eq!(
        reservation_state(&sys, &id).await.as_deref(),
        Some("released")
    );
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_racing_the_commit_returns_the_units_once() {
    let sys = System::start(&[]).await;
    let product = sys.product("Creamer", 10).await;
    let user = sys.user();

    let mut ids = Vec::new();
    for _ in 0..5 {
        let (status, order, _) = sys.order(&user, &product, 2, None).await;
        assert_eq!(status, StatusCode::CREATED, "{order}");
        let id = order["id"].as_str().expect("order id").to_owned();
        // At once: the commit may or may not have happened yet.
        let (status, body) = cancel(&sys, &user, &id).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        ids.push(id);
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    for id in &ids {
        assert_eq!(
            reservation_state(&sys, id).await.as_deref(),
            Some("released")
        );
    }
    assert_eq!(sys.stock(&product).await, (10, 0));
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_cannot_reach_inventory_is_retried_until_it_can() {
    let sys = System::start(&[]).await;
    let product = sys.product("Jug", 10).await;

    // A confirmed order whose reservation is not committed yet, flagged
    // (a commit that failed, or an order confirmed before this version:
    // the migration flags those), with inventory unreachable.
    let order_id = held_reservation(&sys, &product).await;
    sys.inventory_proxy.cut();
    store_confirmed(&sys, order_id, &product, "Jug", true).await;

    // Several committer rounds (every 300 ms here) fail; nothing is lost.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let id = order_id.to_string();
    assert_eq!(
        reservation_state(&sys, &id).await.as_deref(),
        Some("reserved")
    );
    assert!(flagged(&sys, order_id).await, "still flagged");

    sys.inventory_proxy.restore();
    until_reservation(&sys, &id, "committed").await;
    assert_eq!(sys.stock(&product).await, (6, 0));
    until_not_flagged(&sys, order_id).await;
    sys.stop().await;
}

/// The commit queued in memory meets an inventory it cannot reach: the
/// order is flagged in the database, and committed from there once
/// inventory is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_commit_inventory_cannot_take_is_flagged_and_done_later() {
    // The committer waits 1.5 s for more confirms: time to cut inventory
    // after the reserve and before the commit.
    let sys = System::start(&[("COMMIT_LINGER_MS", "1500")]).await;
    let product = sys.product("Teapot", 10).await;
    let user = sys.user();

    let (status, order, _) = sys.order(&user, &product, 3, None).await;
    assert_eq!(status, StatusCode::CREATED, "{order}");
    sys.inventory_proxy.cut();
    let id = order["id"].as_str().expect("order id").to_owned();
    let order_id: uuid::Uuid = id.parse().expect("uuid");
    assert!(!flagged(&sys, order_id).await, "queued in memory at first");

    let mut was_flagged = false;
    for _ in 0..100 {
        if flagged(&sys, order_id).await {
            was_flagged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(was_flagged, "the failed commit was flagged in the database");
    assert_eq!(
        reservation_state(&sys, &id).await.as_deref(),
        Some("reserved")
    );

    sys.inventory_proxy.restore();
    until_reservation(&sys, &id, "committed").await;
    assert_eq!(sys.stock(&product).await, (7, 0), "sold once");
    until_not_flagged(&sys, order_id).await;
    sys.stop().await;
}

/// What a process that died with commits in its queue leaves behind: a
/// CONFIRMED order, not flagged, whose reservation is still held. Once the
/// reservation is older than the pending timeout, the sweeper finds it
/// (`ListHeld`), flags the order and the committer commits it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_lost_with_its_process_is_found_by_the_sweeper() {
    let sys = System::start(&[
        ("REQUEST_TIMEOUT_MS", "3000"),
        ("PENDING_TIMEOUT_MS", "4000"),
    ])
    .await;
    let product = sys.product("Sugar bowl", 10).await;

    let order_id = held_reservation(&sys, &product).await;
    store_confirmed(&sys, order_id, &product, "Sugar bowl", false).await;
    assert_eq!(sys.stock(&product).await, (6, 4), "held, not sold");

    // Held past the pending timeout (4 s), then committed: at most 10 s.
    let id = order_id.to_string();
    until_reservation(&sys, &id, "committed").await;
    assert_eq!(
        sys.stock(&product).await,
        (6, 0),
        "sold once, nothing released"
    );
    assert_eq!(
        sqlx::query_scalar::<_, String>("SELECT status FROM orders WHERE id = $1")
            .bind(order_id)
            .fetch_one(&sys.order_db.pool().await)
            .await
            .expect("read order"),
        "CONFIRMED"
    );
    until_not_flagged(&sys, order_id).await;
    sys.stop().await;
}
