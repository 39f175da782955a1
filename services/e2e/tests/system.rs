//! The whole system end to end: the five real binaries as processes, real
//! PostgreSQL and RabbitMQ, everything over the services' public HTTP APIs
//! (plus direct database queries where a test must count exactly).

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{Stack, Svc, eventually};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use uuid::Uuid;

fn id_of(body: &Value) -> Uuid {
    body["id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("no id in {body}"))
}

/// The caller's notifications of `kind` for `order`.
fn matching<'a>(items: &'a [Value], kind: &str, order: Uuid) -> Vec<&'a Value> {
    let order = order.to_string();
    items
        .iter()
        .filter(|n| n["kind"] == kind && n["order_id"] == order.as_str())
        .collect()
}

/// Places an order of one unit that must be confirmed; its id.
async fn confirmed_order(stack: &Stack, token: &str, product: Uuid, what: &str) -> Uuid {
    let placed = stack.place_order(token, product, 1).await;
    assert_eq!(
        placed.status,
        StatusCode::CREATED,
        "{what}: {}",
        placed.body
    );
    assert_eq!(
        placed.body["status"], "CONFIRMED",
        "{what}: {}",
        placed.body
    );
    id_of(&placed.body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_flow_across_five_services() {
    let stack = Stack::start().await;

    let (ada, ada_id) = stack.register("ada").await;
    let admin = stack.admin_token().await;
    let product = stack.create_product(&admin, 10).await;
    assert_eq!(stack.stock(product).await, Some(10));

    // The saga: product (price, name) → inventory (reserve) → CONFIRMED.
    let placed = stack.place_order(&ada, product, 3).await;
    assert_eq!(placed.status, StatusCode::CREATED, "order: {}", placed.body);
    assert_eq!(placed.body["status"], "CONFIRMED", "{}", placed.body);
    assert_eq!(placed.body["quantity"], 3);
    assert_eq!(placed.body["user_id"], ada_id.to_string().as_str());
    let order = id_of(&placed.body);
    assert_eq!(stack.stock(product).await, Some(7));

    // order.confirmed travels order → outbox → RabbitMQ → notification.
    let confirmed = eventually(
        "the order.confirmed notification",
        Duration::from_secs(10),
        || {
            let stack = &stack;
            let ada = ada.clone();
            async move {
                let items = stack.notifications(&ada).await;
                let found = matching(&items, "order.confirmed", order).len();
                (found > 0).then_some(items)
            }
        },
    )
    .await;
    assert_eq!(confirmed.len(), 1, "{confirmed:?}");
    let message = confirmed[0]["message"].as_str().expect("a message");
    assert!(message.contains("confirmed"), "{message}");

    // Cancel: CANCELLED, the units come back, order.cancelled arrives.
    let cancelled = stack
        .call(
            Method::POST,
            Svc::Order,
            &format!("/api/orders/{order}/cancel"),
            Some(&ada),
            None,
        )
        .await;
    assert_eq!(
        cancelled.status,
        StatusCode::OK,
        "cancel: {}",
        cancelled.body
    );
    assert_eq!(cancelled.body["status"], "CANCELLED", "{}", cancelled.body);
    eventually("stock back to 10", Duration::from_secs(5), || async {
        (stack.stock(product).await == Some(10)).then_some(())
    })
    .await;
    let items = eventually(
        "the order.cancelled notification",
        Duration::from_secs(10),
        || {
            let stack = &stack;
            let ada = ada.clone();
            async move {
                let items = stack.notifications(&ada).await;
                (!matching(&items, "order.cancelled", order).is_empty()).then_some(items)
            }
        },
    )
    .await;
    // Exactly one of each, both about this order, newest first.
    assert_eq!(items.len(), 2, "{items:?}");
    assert_eq!(items[0]["kind"], "order.cancelled");
    assert_eq!(items[1]["kind"], "order.confirmed");
    assert!(
        items
            .iter()
            .all(|n| n["order_id"] == order.to_string().as_str()),
        "{items:?}"
    );

    // Another user sees none of Ada's notifications (nor anyone else's).
    let (bob, _) = stack.register("bob").await;
    assert_eq!(stack.notifications(&bob).await, Vec::<Value>::new());
    // And cannot read Ada's order.
    let foreign = stack
        .call(
            Method::GET,
            Svc::Order,
            &format!("/api/orders/{order}"),
            Some(&bob),
            None,
        )
        .await;
    assert_eq!(foreign.status, StatusCode::NOT_FOUND, "{}", foreign.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notification_service_killed_while_orders_are_placed() {
    /// Orders placed while the consumer runs; the kill lands right after
    /// them, while their events are still on the way.
    const BEFORE: usize = 2;
    /// Orders placed while the notification service is dead.
    const N: usize = 10;
    let mut stack = Stack::start().await;
    let (token, user) = stack.register("carol").await;
    let admin = stack.admin_token().await;
    let product = stack.create_product(&admin, 100).await;

    let mut orders = Vec::with_capacity(BEFORE + N);
    for _ in 0..BEFORE {
        orders.push(confirmed_order(&stack, &token, product, "order before the kill").await);
    }
    // The consumer was ready, so its durable queue exists and is bound: it
    // keeps collecting events while no one consumes it.
    stack.kill_hard(Svc::Notification);
    for _ in 0..N {
        orders.push(confirmed_order(&stack, &token, product, "order with notification down").await);
    }
    assert_eq!(stack.stock(product).await, Some(100 - (BEFORE + N) as i64));
    // The events wait in the broker (other stacks' events may be there too).
    eventually(
        "the events to wait in the queue",
        Duration::from_secs(10),
        || async { (stack.queue_depth().await >= N as u32).then_some(()) },
    )
    .await;

    // Same environment: same database, same queue.
    stack.restart(Svc::Notification).await;

    let pool = stack.dbs[&Svc::Notification].pool().await;
    let count = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM notifications WHERE order_id = ANY($1)")
            .bind(&orders)
            .fetch_one(&pool)
            .await
            .expect("count notifications")
    };
    eventually(
        "a notification for every order after the restart",
        Duration::from_secs(15),
        || async { (count().await >= (BEFORE + N) as i64).then_some(()) },
    )
    .await;
    // Give a redelivery (of anything unacknowledged at the kill) time to
    // show up as a duplicate, then count exactly.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let rows: Vec<(Uuid, Uuid, String, i64)> = sqlx::query_as(
        "SELECT order_id, user_id, kind, count(*) FROM notifications \
         WHERE order_id = ANY($1) GROUP BY order_id, user_id, kind",
    )
    .bind(&orders)
    .fetch_all(&pool)
    .await
    .expect("notifications per order");
    assert_eq!(rows.len(), BEFORE + N, "one row per order: {rows:?}");
    for (order, owner, kind, n) in &rows {
        assert_eq!(*n, 1, "order {order} has {n} notifications");
        assert_eq!(*owner, user);
        assert_eq!(kind, "order.confirmed");
    }
    let seen: HashSet<Uuid> = rows.iter().map(|r| r.0).collect();
    assert_eq!(seen, orders.iter().copied().collect::<HashSet<_>>());
    let mine: i64 = sqlx::query_scalar("SELECT count(*) FROM notifications WHERE user_id = $1")
        .bind(user)
        .fetch_one(&pool)
        .await
        .expect("count the user's notifications");
    assert_eq!(mine, (BEFORE + N) as i64);
    // The user sees them over HTTP too.
    assert_eq!(stack.notifications(&token).await.len(), BEFORE + N);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_answers_503_fast_when_inventory_process_is_down() {
    let mut stack = Stack::builder()
        .env(Svc::Order, "BREAKER_FAILURE_THRESHOLD", "3")
        .env(Svc::Order, "BREAKER_OPEN_MS", "300")
        .env(Svc::Order, "BREAKER_MAX_OPEN_MS", "1000")
        .env(Svc::Order, "INVENTORY_CONNECT_TIMEOUT_MS", "300")
        .env(Svc::Order, "INVENTORY_TIMEOUT_MS", "1000")
        .start()
        .await;
    let (token, _) = stack.register("dave").await;
    let admin = stack.admin_token().await;
    let product = stack.create_product(&admin, 10).await;
    let first = stack.place_order(&token, product, 1).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    let order_pid = stack.process(Svc::Order).pid();

    stack.kill_hard(Svc::Inventory);

    // Failures open the breaker; then order fails fast with 503 + Retry-After.
    let mut fast_503 = None;
    for _ in 0..30 {
        let started = Instant::now();
        let answer = stack.place_order(&token, product, 1).await;
        let took = started.elapsed();
        assert!(
            answer.status.is_server_error(),
            "inventory is down: {} {}",
            answer.status,
            answer.body
        );
        if answer.status == StatusCode::SERVICE_UNAVAILABLE
            && answer.headers.contains_key("retry-after")
            && took < Duration::from_millis(500)
        {
            fast_503 = Some(took);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = fast_503.expect("a fast 503 with Retry-After while inventory is down");
    eprintln!("503 + Retry-After in {took:?}");
    // The breaker towards inventory is not closed (1 open, 2 half-open).
    let metrics = stack
        .http
        .get(stack.url(Svc::Order, "/metrics"))
        .send()
        .await
        .expect("order /metrics")
        .text()
        .await
        .expect("metrics text");
    let state = metrics
        .lines()
        .find(|l| l.starts_with("stockmesh_circuit_breaker_state{") && l.contains("inventory"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no breaker state for inventory in:\n{metrics}"));
    assert!(state > 0.0, "breaker towards inventory is closed");

    // Inventory comes back on the same ports; order recovers by itself.
    stack.restart(Svc::Inventory).await;
    let recovered = eventually(
        "an order to succeed after inventory returned",
        Duration::from_secs(15),
        || {
            let stack = &stack;
            let token = token.clone();
            async move {
                let answer = stack.place_order(&token, product, 1).await;
                (answer.status == StatusCode::CREATED).then_some(answer.body)
            }
        },
    )
    .await;
    assert_eq!(recovered["status"], "CONFIRMED", "{recovered}");
    assert_eq!(
        stack.process(Svc::Order).pid(),
        order_pid,
        "order was not restarted"
    );
    // Only the two confirmed orders hold stock: the failed ones released
    // (or never took) theirs.
    eventually("stock 8", Duration::from_secs(10), || async {
        (stack.stock(product).await == Some(8)).then_some(())
    })
    .await;
}
