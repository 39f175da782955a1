//! The order saga end to end over real gRPC, PostgreSQL and RabbitMQ.

mod common;

use common::System;
use futures::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_confirm_cancel_and_their_events() {
    let mut sys = System::start(&[]).await;
    let product = sys.product("Mug", 10).await;
    let alice = sys.user();
    let bob = sys.user();

    let (status, order, _) = sys.order(&alice, &product, 3, None).await;
    assert_eq!(status, StatusCode::CREATED, "{order}");
    assert_eq!(order["status"], "CONFIRMED");
    assert_eq!(
        order["total"],
        json!({"amount_minor": 750, "currency": "EUR"})
    );
    assert_eq!(order["product_name"], "Mug");
    assert_eq!(sys.stock(&product).await.0, 7);
    // Committed in the background: sold, no longer held.
    assert_eq!(sys.settled_stock(&product).await, (7, 0));
    let id = order["id"].as_str().unwrap().to_owned();
    let event = sys.event_for(&id, "order.confirmed").await;
    assert_eq!(event["version"], 1);
    assert_eq!(event["data"]["quantity"], 3);
    assert_eq!(event["data"]["user_id"], order["user_id"]);

    let path = format!("/api/orders/{id}");
    let (status, _, _) = sys
        .call(sys.order_http, Method::GET, &path, Some(&alice), None, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = sys
        .call(sys.order_http, Method::GET, &path, Some(&bob), None, None)
        .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "another user's order does not exist for them"
    );
    let (status, _, _) = sys
        .call(
            sys.order_http,
            Method::GET,
            &path,
            Some(&sys.admin),
            None,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "admins see every order");
    let (status, page, _) = sys
        .call(
            sys.order_http,
            Method::GET,
            "/api/orders",
            Some(&alice),
            None,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["total"], 1);
    let (_, page, _) = sys
        .call(
            sys.order_http,
            Method::GET,
            "/api/orders",
            Some(&bob),
            None,
            None,
        )
        .await;
    assert_eq!(page["total"], 0);

    let cancel = format!("{path}/cancel");
    let (status, _, _) = sys
        .call(
            sys.order_http,
            Method::POST,
            &cancel,
            Some(&bob),
            None,
            None,
        )
        .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "cannot cancel someone else's order"
    );
    let (status, cancelled, _) = sys
        .call(
            sys.order_http,
            Method::POST,
            &cancel,
            Some(&alice),
            None,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    assert_eq!(cancelled["status"], "CANCELLED");
    assert_eq!(
        sys.stock(&product).await,
        (10, 0),
        "cancel returns the stock"
    );
    sys.event_for(&id, "order.cancelled").await;
    let (status, body, _) = sys
        .call(
            sys.order_http,
            Method::POST,
            &cancel,
            Some(&alice),
            None,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(
        sys.stock(&product).await,
        (10, 0),
        "a second cancel changes nothing"
    );
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_replays_and_refuses_a_different_body() {
    let sys = System::start(&[]).await;
    let product = sys.product("Cup", 10).await;
    let user = sys.user();
    let (status, first, _) = sys.order(&user, &product, 2, Some("k-1")).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, again, _) = sys.order(&user, &product, 2, Some("k-1")).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        again["id"], first["id"],
        "same key, same body: the same order"
    );
    let (status, body, _) = sys.order(&user, &product, 3, Some("k-1")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "idempotency_key_reused");
    // Keys are per user.
    let (status, other, _) = sys.order(&sys.user(), &product, 2, Some("k-1")).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_ne!(other["id"], first["id"]);
    assert_eq!(
        sys.settled_stock(&product).await,
        (6, 0),
        "two orders, not three"
    );
    sys.stop().await;
}

/// The same idempotency key sent many times at once: each request
/// reserves under its own order id before anything is stored, so the
/// first one stored wins and every other one gives its units back and
/// answers with the winner. One order, its units taken once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_sent_at_once_stores_one_order_and_takes_its_units_once() {
    let sys = System::start(&[]).await;
    let product = sys.product("Saucer", 20).await;
    let user = sys.user();
    let answers =
        futures::future::join_all((0..8).map(|_| sys.order(&user, &product, 3, Some("burst-1"))))
            .await;
    let mut ids = std::collections::BTreeSet::new();
    for (status, body, _) in &answers {
        assert_eq!(*status, StatusCode::CREATED, "{body}");
        assert_eq!(body["status"], "CONFIRMED");
        ids.insert(body["id"].as_str().expect("an order id").to_owned());
    }
    assert_eq!(ids.len(), 1, "every answer is the one order: {ids:?}");
    let pool = sys.order_db.pool().await;
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&pool)
        .await
        .expect("count orders");
    assert_eq!(
        stored, 1,
        "nothing else stored, not even a FAILED duplicate"
    );
    assert_eq!(
        sys.settled_stock(&product).await,
        (17, 0),
        "3 units sold once; the duplicates' reservations were released"
    );
    sys.stop().await;
}

/// A new order's event is handed to the relay at its commit, stored
/// leased so that no claim takes it meanwhile, and published once: with
/// the relay also polling for due rows every 200 ms, a row stored due
/// (or claimed while handed) would be published twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_orders_events_are_handed_to_the_relay_and_published_once() {
    let mut sys = System::start(&[]).await;
    let product = sys.product("Jug", 100).await;
    let user = sys.user();
    // The relay connects in the background: once the first event is out,
    // it is connected and takes handoffs.
    let (status, first, _) = sys.order(&user, &product, 1, None).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    sys.event_for(first["id"].as_str().unwrap(), "order.confirmed")
        .await;
    // The relay counts a publish once its row is marked, after the broker's
    // confirm: the event can reach a consumer first. The baseline is read
    // once the first event is counted, or it would be counted again below.
    let counted_by = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while sys.metric("stockmesh_outbox_published_total").await < 1.0 {
        assert!(
            tokio::time::Instant::now() < counted_by,
            "the first event counted as published within 10 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let handed_before = sys.metric("stockmesh_outbox_handed_off_total").await;
    let published_before = sys.metric("stockmesh_outbox_published_total").await;

    let answers = join_all((0..30).map(|_| sys.order(&user, &product, 1, None))).await;
    let mut ids = std::collections::BTreeSet::new();
    for (status, body, _) in &answers {
        assert_eq!(*status, StatusCode::CREATED, "{body}");
        ids.insert(body["id"].as_str().unwrap().to_owned());
    }
    let pool = sys.order_db.pool().await;
    // Leased in the statement that stored it (one transaction time): the
    // default lease, 2 x the 5 s broker timeout + 10 s. A claim would
    // have leased it later.
    let leased: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outbox WHERE payload->'data'->>'order_id' = ANY($1) \
         AND available_at = created_at + interval '20 seconds'",
    )
    .bind(ids.iter().cloned().collect::<Vec<_>>())
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(leased, 30, "each row was stored leased to its relay");
    let mut seen = std::collections::BTreeMap::<String, u32>::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while seen.len() < ids.len() {
        let event = tokio::time::timeout_at(deadline, sys.events.recv())
            .await
            .expect("every event within 10 s")
            .expect("event stream open");
        let order = event["data"]["order_id"].as_str().unwrap_or_default();
        if ids.contains(order) {
            *seen.entry(order.to_owned()).or_default() += 1;
        }
    }
    // Three poll periods more for a second copy to show up.
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    while let Ok(event) = sys.events.try_recv() {
        let order = event["data"]["order_id"].as_str().unwrap_or_default();
        if ids.contains(order) {
            *seen.entry(order.to_owned()).or_default() += 1;
        }
    }
    assert!(
        seen.values().all(|&copies| copies == 1),
        "every event published once: {seen:?}"
    );
    let handed = sys.metric("stockmesh_outbox_handed_off_total").await - handed_before;
    let published = sys.metric("stockmesh_outbox_published_total").await - published_before;
    assert_eq!(handed, 30.0, "every event was handed over, none claimed");
    assert_eq!(published, 30.0, "and each was confirmed once");
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_stores_nothing() {
    let sys = System::start(&[]).await;
    let product = sys.product("Bowl", 5).await;
    let user = sys.user();
    for quantity in [0, -1, 1001, i64::MAX] {
        let (status, body, _) = sys.order(&user, &product, quantity, None).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "quantity {quantity}: {body}"
        );
    }
    let (status, body, _) = sys
        .order(&user, &uuid::Uuid::now_v7().to_string(), 1, None)
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "unknown_product");
    let (status, _, _) = sys.order(&user, "not-a-uuid", 1, None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _, _) = sys
        .call(
            sys.order_http,
            Method::POST,
            "/api/orders",
            None,
            Some(json!({"product_id": product, "quantity": 1})),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = sys.order(&user, &product, 1, Some(&"k".repeat(201))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, body, _) = sys.order(&user, &product, 6, None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "insufficient_stock");

    let pool = sys.order_db.pool().await;
    let stored: Vec<(String,)> = sqlx::query_as("SELECT status FROM orders")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(
        stored,
        vec![("REJECTED".to_owned(),)],
        "only the shortage is recorded, as REJECTED"
    );
    assert_eq!(sys.stock(&product).await, (5, 0));
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_orders_never_oversell() {
    let sys = System::start(&[]).await;
    let product = sys.product("Last units", 100).await;
    let users: Vec<String> = (0..5).map(|_| sys.user()).collect();
    let attempts = (0..300).map(|i| sys.order(&users[i % users.len()], &product, 1, None));
    let results = join_all(attempts).await;
    let confirmed = results
        .iter()
        .filter(|(s, _, _)| *s == StatusCode::CREATED)
        .count();
    let rejected = results
        .iter()
        .filter(|(s, _, _)| *s == StatusCode::CONFLICT)
        .count();
    let other: Vec<_> = results
        .iter()
        .filter(|(s, _, _)| *s != StatusCode::CREATED && *s != StatusCode::CONFLICT)
        .map(|(s, b, _)| (s.as_u16(), b.clone()))
        .collect();
    assert!(other.is_empty(), "unexpected answers: {other:?}");
    assert_eq!((confirmed, rejected), (100, 200));
    assert_eq!(sys.stock(&product).await.0, 0);
    assert_eq!(sys.settled_stock(&product).await, (0, 0));
    let pool = sys.order_db.pool().await;
    let counts: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM orders GROUP BY status ORDER BY status")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        counts,
        vec![("CONFIRMED".to_owned(), 100), ("REJECTED".to_owned(), 200)],
        "no order left PENDING"
    );
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn administrators_list_everyones_orders_with_filters_and_users_only_their_own() {
    let sys = System::start(&[]).await;
    let mug = sys.product("Mug", 10).await;
    let cup = sys.product("Cup", 1).await;
    let alice = sys.user();
    let bob = sys.user();
    let (status, first, _) = sys.order(&alice, &mug, 1, None).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let (status, _, _) = sys.order(&bob, &mug, 2, None).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _, _) = sys.order(&bob, &cup, 1, None).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, rejected, _) = sys.order(&alice, &cup, 1, None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{rejected}");
    let alice_id = first["user_id"].as_str().expect("user id").to_owned();
    let list = |token: String, query: String| {
        let sys = &sys;
        async move {
            let (status, body, _) = sys
                .call(
                    sys.order_http,
                    Method::GET,
                    &format!("/api/orders?{query}"),
                    Some(&token),
                    None,
                    None,
                )
                .await;
            (status, body)
        }
    };

    let (status, body) = list(alice.clone(), String::new()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["total"], 2, "alice sees her two orders: {body}");
    let (status, body) = list(alice.clone(), "scope=all".into()).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.to_string().contains("administrators"), "{body}");
    let (status, _) = list(bob.clone(), format!("user_id={alice_id}")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let admin = sys.admin.clone();
    let (status, body) = list(admin.clone(), "scope=all&limit=100".into()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["total"], 4, "{body}");
    let (_, body) = list(admin.clone(), format!("scope=all&product_id={mug}")).await;
    assert_eq!(body["total"], 2, "{body}");
    let (_, body) = list(admin.clone(), format!("user_id={alice_id}&status=REJECTED")).await;
    assert_eq!(body["total"], 1, "{body}");
    assert_eq!(body["items"][0]["status"], "REJECTED");
    let (_, body) = list(admin.clone(), "scope=all&status=CONFIRMED".into()).await;
    assert_eq!(body["total"], 3, "{body}");
    let (_, body) = list(admin.clone(), String::new()).await;
    assert_eq!(
        body["total"], 0,
        "without scope=all an administrator lists their own"
    );

    for bad in ["status=SHIPPED", "scope=everyone", "product_id=nope"] {
        let (status, body) = list(admin.clone(), format!("scope=all&{bad}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert!(body["error"]["message"].is_string(), "{body}");
    }
    sys.stop().await;
}
