//! The outbox relay of the real order application against real PostgreSQL
//! and RabbitMQ: rows are written into the outbox table directly (as a
//! committed order would), so no product or inventory is needed.
//!
//! - an event no queue is bound for is a failure kept in the outbox, not a
//!   confirm into nowhere;
//! - a broker that blocks publishers (a memory alarm on a private node) times
//!   the relay out, and the relay holds no pool connection while it waits;
//! - published rows are pruned after the retention period.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use reqwest::StatusCode;
use sqlx::PgPool;
use stockmesh_order::config::OrderConfig;
use stockmesh_order::startup::Application;
use stockmesh_platform::Shutdown;
use stockmesh_platform::auth::Role;
use stockmesh_platform::config::EnvReader;
use stockmesh_platform::events::{EXCHANGE, ORDER_CONFIRMED, OrderEvent, OrderEventData, Total};
use stockmesh_testkit::rabbit::PrivateBroker;
use stockmesh_testkit::{TestDatabase, TestKeys, infra};
use uuid::Uuid;

struct Relay {
    /// Kept so the database outlives the application (dropped last).
    _db: TestDatabase,
    pool: PgPool,
    http: SocketAddr,
    keys: TestKeys,
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    client: reqwest::Client,
}

impl Relay {
    /// The order application on `amqp_url`, its upstreams pointing nowhere
    /// (only the relay and the read API are exercised).
    async fn start(amqp_url: &str, extra: &[(&str, &str)]) -> Self {
        let db = TestDatabase::create().await;
        let keys = TestKeys::generate();
        let mut vars: HashMap<String, String> = [
            ("HTTP_ADDR", "127.0.0.1:0"),
            ("DATABASE_URL", db.url.as_str()),
            ("JWT_PUBLIC_KEY", keys.public_pem.as_str()),
            ("AMQP_URL", amqp_url),
            ("PRODUCT_GRPC_URL", "http://127.0.0.1:9"),
            ("INVENTORY_GRPC_URL", "http://127.0.0.1:9"),
            ("OUTBOX_POLL_MS", "100"),
            ("SHUTDOWN_GRACE_MS", "10000"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        for (k, v) in extra {
            vars.insert((*k).to_owned(), (*v).to_owned());
        }
        let config = OrderConfig::read(EnvReader::from_map(vars)).expect("valid configuration");
        let app = Application::build(config).await.expect("order builds");
        let http = app.http_addr();
        let shutdown = Shutdown::new();
        let task = tokio::spawn(app.run_until_stopped(shutdown.clone()));
        let pool = db.pool().await;
        Self {
            _db: db,
            pool,
            http,
            keys,
            shutdown,
            task,
            client: reqwest::Client::new(),
        }
    }

    /// Commits an outbox row as the saga would; returns the event id.
    async fn insert(&self, routing_key: &str) -> Uuid {
        let event = OrderEvent::new(
            ORDER_CONFIRMED,
            OrderEventData {
                order_id: Uuid::now_v7(),
                user_id: Uuid::now_v7(),
                product_id: Uuid::now_v7(),
                product_name: "Kettle".into(),
                quantity: 1,
                total: Total {
                    amount_minor: 3000,
                    currency: "EUR".into(),
                },
            },
        );
        sqlx::query("INSERT INTO outbox (event_id, routing_key, payload) VALUES ($1, $2, $3)")
            .bind(event.id)
            .bind(routing_key)
            .bind(serde_json::to_value(&event).expect("serialisable"))
            .execute(&self.pool)
            .await
            .expect("outbox insert");
        event.id
    }

    async fn published(&self, event_id: Uuid) -> bool {
        sqlx::query_scalar::<_, bool>(
            "SELECT published_at IS NOT NULL FROM outbox WHERE event_id = $1",
        )
        .bind(event_id)
        .fetch_one(&self.pool)
        .await
        .expect("outbox row")
    }

    async fn rows(&self, event_id: Uuid) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE event_id = $1")
            .bind(event_id)
            .fetch_one(&self.pool)
            .await
            .expect("count")
    }

    async fn metrics(&self) -> String {
        self.client
            .get(format!("http://{}/metrics", self.http))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// The caller's orders (a read that needs a pooled connection).
    async fn list_orders(&self) -> StatusCode {
        let token = self.keys.token(Uuid::now_v7(), Role::User);
        match self
            .client
            .get(format!("http://{}/api/orders", self.http))
            .bearer_auth(token)
            .timeout(Duration::from_secs(10))
            .send()
            .await
        {
            Ok(response) => response.status(),
            Err(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    async fn stop(self) {
        self.shutdown.trigger();
        let stopped = tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("order stops within its grace period")
            .expect("joins");
        stopped.expect("order stops cleanly");
        self.pool.close().await;
    }
}

/// Sums the samples of a Prometheus metric.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| line.split(['{', ' ']).next() == Some(name))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn wait_for<F, Fut>(what: &str, secs: u64, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        if condition().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out after {secs} s waiting for {what}");
}

/// A test queue on `url` bound to `routing_key` on the events exchange.
async fn bind_queue(url: &str, routing_key: &str) -> (Connection, Channel, String) {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("broker reachable");
    let channel = connection.create_channel().await.expect("channel");
    channel
        .exchange_declare(
            EXCHANGE.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("exchange");
    let queue = format!("outbox-test-{}", Uuid::new_v4().simple());
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("queue");
    channel
        .queue_bind(
            queue.as_str().into(),
            EXCHANGE.into(),
            routing_key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");
    (connection, channel, queue)
}

/// Event ids waiting in `queue`, taken out of it.
async fn take_events(channel: &Channel, queue: &str) -> Vec<Uuid> {
    let mut ids = Vec::new();
    while let Some(message) = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
    {
        let event: OrderEvent =
            serde_json::from_slice(&message.delivery.data).expect("an order event");
        ids.push(event.id);
    }
    ids
}

/// Takes events from `queue` until every one of `expected` arrived (10 s).
async fn collect_events(channel: &Channel, queue: &str, expected: &[Uuid]) -> Vec<Uuid> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut delivered = Vec::new();
    loop {
        delivered.extend(take_events(channel, queue).await);
        if expected.iter().all(|id| delivered.contains(id)) {
            return delivered;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "events missing from the queue: got {delivered:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Item 1 of issue 13: RabbitMQ confirms a message that reaches no queue.
/// Published with `mandatory`, a returned event is a failure: the row stays
/// unpublished (backlog) and is retried with backoff until a queue is bound,
/// then delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unroutable_event_stays_in_the_outbox_until_a_queue_is_bound() {
    let url = infra().amqp_url.clone();
    let relay = Relay::start(&url, &[]).await;
    // A routing key no queue on the shared broker is bound to.
    let routing_key = format!("test-{}.order.confirmed", Uuid::new_v4().simple());
    let event_id = relay.insert(&routing_key).await;
    // The relay polls every 100 ms: it has tried by now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !relay.published(event_id).await,
        "an event that reached no queue is not marked published"
    );
    wait_for(
        "a publish attempt to be refused as unroutable",
        10,
        || async { metric(&relay.metrics().await, "stockmesh_outbox_unroutable_total") >= 1.0 },
    )
    .await;
    let metrics = relay.metrics().await;
    assert!(
        metrics.contains(r#"stockmesh_outbox_backlog{service="order"} 1"#),
        "{metrics}"
    );

    let (connection, channel, queue) = bind_queue(&url, &routing_key).await;
    wait_for(
        "the event to be published once a queue is bound",
        40,
        || async { relay.published(event_id).await },
    )
    .await;
    let delivered = collect_events(&channel, &queue, &[event_id]).await;
    assert_eq!(delivered, vec![event_id]);
    let _ = connection.close(200, "done".into()).await;
    relay.stop().await;
}

/// Item 6 of issue 13: a broker in a memory alarm blocks publishers
/// (`connection.blocked`) and never confirms. The relay's wait is bounded
/// (a publish failure, counted), it keeps no pooled connection meanwhile
/// (with a pool of ONE the service still answers reads), nothing is marked,
/// and once the alarm clears the backlog drains. A private node: the shared
/// broker is never put in an alarm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_broker_times_the_relay_out_without_holding_the_pool_and_the_backlog_drains() {
    let broker = PrivateBroker::start().await;
    let relay = Relay::start(
        &broker.amqp_url,
        &[
            ("DATABASE_MAX_CONNECTIONS", "1"),
            ("DATABASE_ACQUIRE_TIMEOUT_MS", "3000"),
            ("OUTBOX_BROKER_TIMEOUT_MS", "1000"),
        ],
    )
    .await;
    let (connection, channel, queue) = bind_queue(&broker.amqp_url, "order.*").await;
    let first = relay.insert(ORDER_CONFIRMED).await;
    wait_for("the relay to publish", 20, || async {
        relay.published(first).await
    })
    .await;
    let failures_before = metric(
        &relay.metrics().await,
        "stockmesh_outbox_publish_failures_total",
    );

    broker.memory_alarm(true).await;
    let mut blocked = Vec::new();
    for _ in 0..5 {
        blocked.push(relay.insert(ORDER_CONFIRMED).await);
    }
    // The pool (one connection) is not held by the relay: reads are served,
    // again and again, while the broker stays blocked.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            relay.list_orders().await,
            StatusCode::OK,
            "a request found the pool free"
        );
    }
    wait_for(
        "the relay's wait on the blocked broker to time out",
        15,
        || async {
            metric(
                &relay.metrics().await,
                "stockmesh_outbox_publish_failures_total",
            ) > failures_before
        },
    )
    .await;
    let idle_in_transaction: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
         AND state LIKE 'idle in transaction%' AND now() - state_change > interval '500 milliseconds'",
    )
    .fetch_one(&relay.pool)
    .await
    .expect("activity");
    assert_eq!(
        idle_in_transaction, 0,
        "no transaction held across the wait"
    );
    for id in &blocked {
        assert!(!relay.published(*id).await, "not confirmed, not marked");
    }

    broker.memory_alarm(false).await;
    wait_for("the backlog to drain", 40, || async {
        for id in &blocked {
            if !relay.published(*id).await {
                return false;
            }
        }
        true
    })
    .await;
    collect_events(&channel, &queue, &blocked).await;
    let _ = connection.close(200, "done".into()).await;
    relay.stop().await;
}

/// Item 6 of issue 13: published rows are deleted once older than the
/// retention (in small batches, counted); unpublished rows never are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_rows_are_pruned_after_the_retention_and_unpublished_ones_are_kept() {
    let url = infra().amqp_url.clone();
    let relay = Relay::start(
        &url,
        &[
            ("OUTBOX_RETENTION_MS", "1000"),
            ("OUTBOX_PRUNE_INTERVAL_MS", "200"),
        ],
    )
    .await;
    let routing_key = format!("test-{}.order.confirmed", Uuid::new_v4().simple());
    let (connection, _channel, _queue) = bind_queue(&url, &routing_key).await;
    let mut published = Vec::new();
    for _ in 0..5 {
        published.push(relay.insert(&routing_key).await);
    }
    // An old event that cannot be delivered (nothing bound) must stay.
    let stuck_key = format!("test-{}.order.confirmed", Uuid::new_v4().simple());
    let stuck = relay.insert(&stuck_key).await;
    sqlx::query("UPDATE outbox SET created_at = now() - interval '3 days' WHERE event_id = $1")
        .bind(stuck)
        .execute(&relay.pool)
        .await
        .expect("age the stuck row");
    wait_for("the published rows to be pruned", 20, || async {
        for id in &published {
            if relay.rows(*id).await != 0 {
                return false;
            }
        }
        true
    })
    .await;
    assert_eq!(relay.rows(stuck).await, 1, "an unpublished row is kept");
    assert!(!relay.published(stuck).await);
    let metrics = relay.metrics().await;
    assert!(
        metric(&metrics, "stockmesh_outbox_pruned_total") >= 5.0,
        "{metrics}"
    );
    let _ = connection.close(200, "done".into()).await;
    relay.stop().await;
}

/// The relay's pool commits without waiting for the WAL flush (its claims
/// and marks are redone when lost); the pool that stores orders keeps the
/// database's durable default. The database is set to wait for the flush,
/// as production databases are (the test server itself does not).
#[tokio::test]
async fn only_the_relays_bookkeeping_commits_without_waiting_for_the_flush() {
    use stockmesh_platform::config::DatabaseConfig;
    use stockmesh_platform::db;

    let test_db = TestDatabase::create().await;
    let admin = test_db.pool().await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        r#"ALTER DATABASE "{}" SET synchronous_commit = on"#,
        test_db.name
    )))
    .execute(&admin)
    .await
    .expect("durable commits by default");
    admin.close().await;
    let config = DatabaseConfig {
        url: test_db.url.clone(),
        max_connections: 1,
        acquire_timeout: Duration::from_secs(5),
    };
    let show = |pool: PgPool| async move {
        let setting: String = sqlx::query_scalar("SHOW synchronous_commit")
            .fetch_one(&pool)
            .await
            .expect("show synchronous_commit");
        pool.close().await;
        setting
    };
    let orders = db::pool(&config).expect("the service's pool");
    let relay = db::unflushed_pool(&config, 1).expect("the relay's pool");
    assert_eq!(show(orders).await, "on", "orders wait for the flush");
    assert_eq!(show(relay).await, "off", "the relay's bookkeeping does not");
}
