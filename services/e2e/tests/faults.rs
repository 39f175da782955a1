//! The order and event pipeline under the faults users live with, end to
//! end: the five real binaries under a steady order load while, one after
//! the other, (a) notification is frozen and resumed, (b) the broker's
//! application is stopped and started, (c) notification's PostgreSQL is
//! restarted and (d) inventory is frozen and resumed. Afterwards nothing is
//! lost, duplicated or stuck: every CONFIRMED order has exactly one
//! notification, no order stays PENDING, stock is the initial stock minus
//! the confirmed units (and every reservation is committed), the outbox is
//! drained and the dead-letter queue is empty.
//!
//! The broker and notification's database are private servers of this test
//! (`PrivateBroker`, `PrivatePostgres`): faults are never injected into the
//! shared test servers.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Stack, Svc, eventually};
use reqwest::StatusCode;
use sqlx::PgPool;
use stockmesh_testkit::postgres::PrivatePostgres;
use stockmesh_testkit::rabbit::PrivateBroker;
use tokio::sync::Mutex;
use uuid::Uuid;

const SHOPPERS: usize = 6;
const INITIAL_STOCK: i64 = 1_000_000;
/// How long each fault lasts.
const FAULT: Duration = Duration::from_secs(6);
/// Normal load between two faults.
const CALM: Duration = Duration::from_secs(3);
/// How long the system may take to settle once the load stops.
const SETTLE: Duration = Duration::from_secs(90);

/// What the shoppers saw, by HTTP status.
#[derive(Default)]
struct Outcomes {
    /// Order ids answered 201.
    confirmed: Vec<Uuid>,
    by_status: HashMap<u16, u64>,
}

/// Six shoppers ordering one unit at a time until `stop`.
fn start_load(
    stack: &Arc<Stack>,
    shoppers: Vec<String>,
    product: Uuid,
    stop: Arc<AtomicBool>,
    outcomes: Arc<Mutex<Outcomes>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    shoppers
        .into_iter()
        .map(|token| {
            let stack = stack.clone();
            let stop = stop.clone();
            let outcomes = outcomes.clone();
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let answer = stack.place_order(&token, product, 1).await;
                    let mut seen = outcomes.lock().await;
                    *seen.by_status.entry(answer.status.as_u16()).or_default() += 1;
                    if answer.status == StatusCode::CREATED {
                        let id = answer.body["id"]
                            .as_str()
                            .and_then(|id| Uuid::parse_str(id).ok())
                            .expect("a 201 carries the order id");
                        seen.confirmed.push(id);
                    }
                    drop(seen);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        })
        .collect()
}

async fn readyz(stack: &Stack, svc: Svc) -> Option<StatusCode> {
    stack
        .http
        .get(stack.url(svc, "/readyz"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()
        .map(|r| r.status())
}

async fn count(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar::<_, i64>(sql)
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nothing_is_lost_duplicated_or_stuck_under_faults() {
    let (broker, notification_pg) = tokio::join!(PrivateBroker::start(), PrivatePostgres::start());
    let admin = PgPool::connect(&notification_pg.admin_url)
        .await
        .expect("private PostgreSQL reachable");
    sqlx::query("CREATE DATABASE notifications_under_faults")
        .execute(&admin)
        .await
        .expect("create notification's database");
    admin.close().await;
    let notification_url = notification_pg.url("notifications_under_faults");

    let stack = Stack::builder()
        .broker(&broker.amqp_url)
        .env(Svc::Notification, "DATABASE_URL", &notification_url)
        // Short saga budget and sweeper period, so that orders caught by a
        // fault settle within the test (the pending timeout must exceed the
        // request timeout: the order service refuses anything else).
        .env(Svc::Order, "REQUEST_TIMEOUT_MS", "4000")
        .env(Svc::Order, "PENDING_TIMEOUT_MS", "6000")
        .env(Svc::Order, "SWEEP_INTERVAL_MS", "500")
        .env(Svc::Order, "BREAKER_OPEN_MS", "500")
        .env(Svc::Order, "BREAKER_MAX_OPEN_MS", "2000")
        .env(Svc::Notification, "NOTIFICATION_RETRY_DELAY_MS", "200")
        .start()
        .await;
    let admin_token = stack.admin_token().await;
    let product = stack.create_product(&admin_token, INITIAL_STOCK).await;
    let mut shoppers = Vec::new();
    for i in 0..SHOPPERS {
        shoppers.push(stack.register(&format!("shopper{i}")).await.0);
    }

    let stack = Arc::new(stack);
    let stop = Arc::new(AtomicBool::new(false));
    let outcomes = Arc::new(Mutex::new(Outcomes::default()));
    let load = start_load(&stack, shoppers, product, stop.clone(), outcomes.clone());
    tokio::time::sleep(CALM).await;

    // (a) notification frozen, then resumed.
    eprintln!("fault (a): notification frozen");
    stack.process_ref(Svc::Notification).freeze(true);
    tokio::time::sleep(FAULT).await;
    stack.process_ref(Svc::Notification).freeze(false);
    tokio::time::sleep(CALM).await;

    // (b) the broker's application stopped, then started; notification is
    // not ready while it cannot consume, and ready again after.
    eprintln!("fault (b): broker stopped");
    broker.stop_app().await;
    let not_ready = eventually(
        "notification to report not ready while the broker is down",
        FAULT,
        || async {
            let status = readyz(&stack, Svc::Notification).await;
            (status != Some(StatusCode::OK)).then_some(status)
        },
    )
    .await;
    eprintln!("notification /readyz while the broker is down: {not_ready:?}");
    tokio::time::sleep(FAULT.saturating_sub(Duration::from_secs(2))).await;
    broker.start_app().await;
    eventually(
        "notification to be ready again after the broker returned",
        Duration::from_secs(30),
        || async {
            (readyz(&stack, Svc::Notification).await == Some(StatusCode::OK)).then_some(())
        },
    )
    .await;
    tokio::time::sleep(CALM).await;

    // (c) notification's PostgreSQL restarted.
    eprintln!("fault (c): notification's PostgreSQL restarted");
    notification_pg.restart(FAULT).await;
    tokio::time::sleep(CALM).await;

    // (d) inventory frozen, then resumed.
    eprintln!("fault (d): inventory frozen");
    stack.process_ref(Svc::Inventory).freeze(true);
    tokio::time::sleep(FAULT).await;
    stack.process_ref(Svc::Inventory).freeze(false);
    tokio::time::sleep(CALM).await;

    stop.store(true, Ordering::SeqCst);
    for shopper in load {
        shopper.await.expect("shopper task");
    }
    let outcomes = std::mem::take(&mut *outcomes.lock().await);
    eprintln!(
        "answers by status: {:?}; {} answered 201",
        outcomes.by_status,
        outcomes.confirmed.len()
    );
    let unexpected: Vec<(&u16, &u64)> = outcomes
        .by_status
        .iter()
        .filter(|(status, _)| ![201, 503, 504].contains(*status))
        .collect();
    assert!(
        unexpected.is_empty(),
        "only 201, or 503/504 while a dependency is out, are expected: {unexpected:?}"
    );
    assert!(!outcomes.confirmed.is_empty(), "some orders succeeded");

    // The system settles: nothing PENDING, every reservation committed,
    // the outbox drained, every confirmed order notified.
    let orders = stack.dbs[&Svc::Order].pool().await;
    let inventory = stack.dbs[&Svc::Inventory].pool().await;
    let notifications = PgPool::connect(&notification_url)
        .await
        .expect("notification's database");
    let started = Instant::now();
    eventually("no order PENDING", SETTLE, || async {
        (count(
            &orders,
            "SELECT count(*) FROM orders WHERE status = 'PENDING'",
        )
        .await
            == 0)
            .then_some(())
    })
    .await;
    eventually("the outbox drained", SETTLE, || async {
        (count(
            &orders,
            "SELECT count(*) FROM outbox WHERE published_at IS NULL",
        )
        .await
            == 0)
            .then_some(())
    })
    .await;
    let confirmed: HashSet<Uuid> =
        sqlx::query_scalar::<_, Uuid>("SELECT id FROM orders WHERE status = 'CONFIRMED'")
            .fetch_all(&orders)
            .await
            .expect("confirmed orders")
            .into_iter()
            .collect();
    for id in &outcomes.confirmed {
        assert!(
            confirmed.contains(id),
            "order {id} was answered 201 but is not CONFIRMED"
        );
    }
    eventually(
        "one notification for every confirmed order",
        SETTLE,
        || async {
            let notified = count(
                &notifications,
                "SELECT count(DISTINCT order_id) FROM notifications WHERE kind = 'order.confirmed'",
            )
            .await;
            (notified as usize >= confirmed.len()).then_some(())
        },
    )
    .await;
    eventually("every reservation committed", SETTLE, || async {
        (count(
            &inventory,
            "SELECT coalesce(sum(reserved), 0)::bigint FROM stock",
        )
        .await
            == 0)
            .then_some(())
    })
    .await;
    eprintln!("settled in {:?}", started.elapsed());

    // Exactly once, and only for confirmed orders.
    let per_order: Vec<(Uuid, i64)> = sqlx::query_as(
        "SELECT order_id, count(*) FROM notifications WHERE kind = 'order.confirmed' GROUP BY order_id",
    )
    .fetch_all(&notifications)
    .await
    .expect("notifications per order");
    let duplicated: Vec<&(Uuid, i64)> = per_order.iter().filter(|(_, n)| *n != 1).collect();
    assert!(
        duplicated.is_empty(),
        "notified more than once: {duplicated:?}"
    );
    let notified: HashSet<Uuid> = per_order.iter().map(|(id, _)| *id).collect();
    assert_eq!(
        notified, confirmed,
        "the notified orders are exactly the confirmed ones"
    );

    // Stock is exact.
    let confirmed_units = count(
        &orders,
        "SELECT coalesce(sum(quantity), 0)::bigint FROM orders WHERE status = 'CONFIRMED'",
    )
    .await;
    let available: i64 = sqlx::query_scalar("SELECT available FROM stock WHERE product_id = $1")
        .bind(product)
        .fetch_one(&inventory)
        .await
        .expect("the product's stock");
    assert_eq!(
        available,
        INITIAL_STOCK - confirmed_units,
        "stock is the initial stock minus the confirmed units"
    );

    // Nothing waiting, nothing dead.
    assert_eq!(
        stack.dead_letter_depth().await,
        0,
        "the dead-letter queue is empty"
    );
    eventually("the notification queue drained", SETTLE, || async {
        (stack.queue_depth().await == 0).then_some(())
    })
    .await;
    let statuses: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM orders GROUP BY status ORDER BY status")
            .fetch_all(&orders)
            .await
            .expect("orders by status");
    eprintln!(
        "orders by status: {statuses:?}; {} confirmed, {} notified once, stock {available} = {INITIAL_STOCK} - {confirmed_units}",
        confirmed.len(),
        notified.len()
    );
}
