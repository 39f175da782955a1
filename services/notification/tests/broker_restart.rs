//! The consumer against a RabbitMQ node of the test's own, restarted
//! (`rabbitmqctl stop_app` / `start_app`) several times while events are
//! published continuously and deliveries are in the consumer's hands: the
//! fault that once left notification consuming nothing, ready and unable
//! to stop. The shared test broker is never touched.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{TestApp, broker_channel_on, order_event, publish_raw, queue_state, wait_for};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use reqwest::StatusCode;
use sqlx::PgPool;
use stockmesh_platform::events::{EXCHANGE, ORDER_CONFIRMED, OrderEvent};
use stockmesh_testkit::rabbit::PrivateBroker;
use tokio::sync::watch;
use uuid::Uuid;

const SESSIONS: &str = "stockmesh_notification_consumer_sessions_total";

/// Publishes events for `user` to `routing_key` every few milliseconds,
/// reconnecting whenever the broker goes away, and remembers the ids the
/// broker confirmed (only those are promised to the consumer).
struct LoadPublisher {
    confirmed: Arc<Mutex<Vec<Uuid>>>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl LoadPublisher {
    fn start(url: String, routing_key: String, user: Uuid) -> Self {
        let confirmed = Arc::new(Mutex::new(Vec::new()));
        let (stop, stopped) = watch::channel(false);
        let sink = confirmed.clone();
        let task = tokio::spawn(async move {
            while !*stopped.borrow() {
                let Ok(connection) =
                    Connection::connect(&url, ConnectionProperties::default()).await
                else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let Ok(channel) = connection.create_channel().await else {
                    continue;
                };
                if channel
                    .confirm_select(ConfirmSelectOptions::default())
                    .await
                    .is_err()
                {
                    continue;
                }
                while !*stopped.borrow() {
                    let event = order_event(ORDER_CONFIRMED, user);
                    let payload = serde_json::to_vec(&event).expect("serialisable");
                    let published = channel
                        .basic_publish(
                            EXCHANGE.into(),
                            routing_key.as_str().into(),
                            BasicPublishOptions::default(),
                            &payload,
                            BasicProperties::default().with_delivery_mode(2),
                        )
                        .await;
                    let Ok(confirm) = published else { break };
                    match tokio::time::timeout(Duration::from_secs(5), confirm).await {
                        Ok(Ok(confirmation)) if confirmation.is_ack() => {
                            sink.lock().expect("lock").push(event.id);
                        }
                        _ => break,
                    }
                    tokio::time::sleep(Duration::from_millis(15)).await;
                }
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    connection.close(200, "publisher done".into()),
                )
                .await;
            }
        });
        Self {
            confirmed,
            stop,
            task,
        }
    }

    fn confirmed(&self) -> usize {
        self.confirmed.lock().expect("lock").len()
    }

    async fn stop(self) -> Vec<Uuid> {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
        self.confirmed.lock().expect("lock").clone()
    }
}

async fn stored(pool: &PgPool, ids: &[Uuid]) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM notifications WHERE event_id = ANY($1)")
        .bind(ids)
        .fetch_one(pool)
        .await
        .expect("count")
}

async fn lock_waits(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE datname = current_database() AND wait_event_type = 'Lock'",
    )
    .fetch_one(pool)
    .await
    .unwrap_or(0)
}

/// Three restarts under load, each while four deliveries are held in the
/// consumer's hands (their inserts wait on a row lock of the test's, released
/// during the outage or only after the broker is back): after each one
/// readiness turns false during the outage and true after it, the consumer
/// resumes, and in the end every confirmed event is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consumer_resumes_after_every_broker_restart_with_deliveries_in_hand() {
    const RESTARTS: usize = 3;
    const HELD: usize = 4;
    let broker = PrivateBroker::start().await;
    let app = TestApp::spawn_on(
        &broker.amqp_url,
        &[
            ("NOTIFICATION_PREFETCH", "32"),
            ("NOTIFICATION_CONCURRENCY", "8"),
            ("NOTIFICATION_DELIVERY_LIMIT", "20"),
            ("SHUTDOWN_GRACE_MS", "10000"),
        ],
    )
    .await;
    let user = Uuid::now_v7();
    let routing_key = format!("{}.{ORDER_CONFIRMED}", app.prefix);
    let publisher = LoadPublisher::start(broker.amqp_url.clone(), routing_key.clone(), user);
    let pool = app.db.pool().await;
    let mut held_ids = Vec::new();

    for restart in 1..=RESTARTS {
        let before = publisher.confirmed();
        wait_for("events to flow", 30, || async {
            publisher.confirmed() >= before + 20
        })
        .await;

        // Deliveries in hand: a transaction of ours inserts these event ids
        // first, so the consumer's inserts of them wait on its row locks.
        let held: Vec<OrderEvent> = (0..HELD)
            .map(|_| order_event(ORDER_CONFIRMED, user))
            .collect();
        let mut blocker = pool.begin().await.expect("begin");
        for event in &held {
            sqlx::query(
                "INSERT INTO notifications (id, event_id, user_id, order_id, kind, message) \
                 VALUES ($1, $2, $3, $4, 'order.confirmed', 'held')",
            )
            .bind(Uuid::now_v7())
            .bind(event.id)
            .bind(event.data.user_id)
            .bind(event.data.order_id)
            .execute(&mut *blocker)
            .await
            .expect("blocking insert");
        }
        let (connection, channel) = broker_channel_on(&broker.amqp_url).await;
        for event in &held {
            publish_raw(
                &channel,
                &routing_key,
                &serde_json::to_vec(event).expect("serialisable"),
            )
            .await;
        }
        let _ = connection.close(200, "held events published".into()).await;
        wait_for(
            "the held deliveries to be in the consumer's hands",
            20,
            || async { lock_waits(&pool).await >= HELD as i64 },
        )
        .await;

        broker.stop_app().await;
        wait_for(
            &format!("readiness to turn false during outage {restart}"),
            10,
            || async { app.ready_status().await == StatusCode::SERVICE_UNAVAILABLE },
        )
        .await;
        // Every other time the handlers in hand finish during the outage,
        // against a dead channel; otherwise they are still stuck when the
        // broker returns, and the consumer must not wait for them.
        let release_during_outage = restart % 2 == 0;
        let mut blocker = Some(blocker);
        if release_during_outage && let Some(tx) = blocker.take() {
            tx.rollback().await.expect("rollback");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            app.ready_status().await,
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready while the broker is down (restart {restart})"
        );
        broker.start_app().await;
        wait_for(
            &format!("readiness to return after restart {restart}"),
            30,
            || async { app.ready_status().await == StatusCode::OK },
        )
        .await;
        let consumed = publisher.confirmed();
        wait_for(
            &format!("consuming to resume after restart {restart}"),
            30,
            || async {
                let now = publisher.confirmed.lock().expect("lock").clone();
                now.len() > consumed && stored(&pool, &now).await as usize > consumed
            },
        )
        .await;
        if let Some(tx) = blocker.take() {
            tx.rollback().await.expect("rollback");
        }
        held_ids.extend(held.iter().map(|e| e.id));
    }

    let confirmed = publisher.stop().await;
    assert!(confirmed.len() > 60, "load ran: {} events", confirmed.len());
    wait_for("every confirmed event to be stored", 60, || async {
        stored(&pool, &confirmed).await == confirmed.len() as i64
            && stored(&pool, &held_ids).await == held_ids.len() as i64
    })
    .await;
    // Exactly once: one row per event id (the column is unique), and no
    // row for anything but the events published.
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM notifications")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert!(total >= (confirmed.len() + held_ids.len()) as i64);
    let (check, check_channel) = broker_channel_on(&broker.amqp_url).await;
    wait_for("the queue to be empty", 20, || async {
        queue_state(&check_channel, &app.queue).await.0 == 0
    })
    .await;
    let _ = check.close(200, "done".into()).await;
    let metrics = app.metrics().await;
    assert!(
        common::metric(&metrics, SESSIONS, &[]) >= (RESTARTS + 1) as f64,
        "{metrics}"
    );
    pool.close().await;
    // Stops cleanly, within the grace period.
    tokio::time::timeout(Duration::from_secs(15), app.stop())
        .await
        .expect("stops within the grace period");
}
