//! The consumer against the real broker and database: idempotency, poison
//! messages, bounded retries of what the database refuses, waiting out a
//! database outage, reconnects and a clean stop on SIGTERM.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{
    DELIVERY_LIMIT, TestApp, broker_channel, delete_queues, metric, order_event, publish_raw,
    queue_state, unique_queue, wait_for,
};
use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable};
use reqwest::StatusCode;
use stockmesh_platform::events::{EXCHANGE, ORDER_CANCELLED, ORDER_CONFIRMED, OrderEvent};
use stockmesh_testkit::{TestDatabase, TestKeys};
use tokio::io::{AsyncBufReadExt, BufReader};
use uuid::Uuid;

const RETRIED: &str = "stockmesh_notification_events_retried_total";
const PROCESSED: &str = "stockmesh_notification_events_processed_total";
const DEAD: &str = "stockmesh_notification_events_dead_lettered_total";

#[tokio::test]
async fn a_redelivered_event_is_stored_once() {
    let app = TestApp::spawn().await;
    let user = Uuid::now_v7();
    let event = order_event(ORDER_CONFIRMED, user);
    for _ in 0..3 {
        app.publish(&event).await;
    }
    // The queue is FIFO: once a later event is stored, the copies were handled.
    let marker = order_event(ORDER_CANCELLED, user);
    app.publish(&marker).await;
    app.wait_stored(marker.id).await;
    assert_eq!(app.rows_for_event(event.id).await, 1);
    assert_eq!(app.list(user).await["total"], 2);
    let metrics = app.metrics().await;
    assert_eq!(
        metric(&metrics, PROCESSED, &["outcome=\"duplicate\""]),
        2.0,
        "{metrics}"
    );
    assert_eq!(metric(&metrics, PROCESSED, &["outcome=\"stored\""]), 2.0);
    assert!(app.dead_letters().await.is_empty());
    app.stop().await;
}

#[tokio::test]
async fn poison_messages_are_dead_lettered_at_once_and_consuming_goes_on() {
    let app = TestApp::spawn().await;
    let user = Uuid::now_v7();
    let mut future = serde_json::to_value(order_event(ORDER_CONFIRMED, user)).unwrap();
    future["version"] = 2.into();
    let mut teleported = serde_json::to_value(order_event(ORDER_CONFIRMED, user)).unwrap();
    teleported["type"] = "order.teleported".into();
    let mut zero = order_event(ORDER_CONFIRMED, user);
    zero.data.quantity = 0;
    let poison: Vec<(&str, Vec<u8>)> = vec![
        ("order.confirmed", b"{not json".to_vec()),
        ("order.confirmed", future.to_string().into_bytes()),
        ("order.teleported", teleported.to_string().into_bytes()),
        ("order.confirmed", serde_json::to_vec(&zero).unwrap()),
    ];
    for (kind, payload) in &poison {
        app.publish_raw(kind, payload).await;
    }
    let good = order_event(ORDER_CONFIRMED, user);
    app.publish(&good).await;
    app.wait_stored(good.id).await;

    // The consumer reports the dead-letter queue's depth (looked at every 10 s).
    wait_for("the dead-letter depth to be reported", 25, || async {
        metric(
            &app.metrics().await,
            "stockmesh_notification_dead_letter_depth",
            &[],
        ) == 4.0
    })
    .await;
    let dead = app.wait_dead_letters(poison.len(), 10).await;
    let expected: Vec<Vec<u8>> = poison.iter().map(|(_, p)| p.clone()).collect();
    assert_eq!(dead, expected, "dead-lettered once each, in order");
    assert_eq!(app.list(user).await["total"], 1);
    let metrics = app.metrics().await;
    for reason in [
        "malformed",
        "unsupported_version",
        "unknown_type",
        "invalid",
    ] {
        assert_eq!(
            metric(&metrics, DEAD, &[&format!("reason=\"{reason}\"")]),
            1.0,
            "{reason}: {metrics}"
        );
    }
    // Rejected, not retried: nothing went back to the queue.
    assert_eq!(metric(&metrics, RETRIED, &[]), 0.0);
    let (ready, _) = queue_state(&app.channel, &app.queue).await;
    assert_eq!(ready, 0);
    app.stop().await;
}

/// The database answers but refuses the insert (the table is renamed, as
/// a bad migration would): that is not an outage, so each failure spends a
/// delivery and the message is dead-lettered after the limit.
#[tokio::test]
async fn a_handler_the_database_refuses_is_retried_a_bounded_number_of_times_then_dead_lettered() {
    let app = TestApp::spawn().await;
    let user = Uuid::now_v7();
    let event = order_event(ORDER_CONFIRMED, user);
    let pool = app.db.pool().await;
    sqlx::query("ALTER TABLE notifications RENAME TO notifications_moved")
        .execute(&pool)
        .await
        .unwrap();
    app.publish(&event).await;
    let dead = app.wait_dead_letters(1, 20).await;
    assert_eq!(dead.len(), 1);
    let dead_event: OrderEvent = serde_json::from_slice(&dead[0]).unwrap();
    assert_eq!(dead_event.id, event.id);
    let retried = metric(&app.metrics().await, RETRIED, &[]);
    assert!(
        (DELIVERY_LIMIT as f64..=(DELIVERY_LIMIT + 1) as f64).contains(&retried),
        "retried {retried} times with a delivery limit of {DELIVERY_LIMIT}"
    );
    // Dead-lettered means no more attempts.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(metric(&app.metrics().await, RETRIED, &[]), retried);

    sqlx::query("ALTER TABLE notifications_moved RENAME TO notifications")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    assert_eq!(app.rows_for_event(event.id).await, 0);
    let next = order_event(ORDER_CONFIRMED, user);
    app.publish(&next).await;
    app.wait_stored(next.id).await;
    assert_eq!(app.rows_for_event(event.id).await, 0);
    app.stop().await;
}

#[tokio::test]
async fn a_database_outage_shorter_than_the_retries_loses_nothing() {
    let app = TestApp::spawn_with(&[("NOTIFICATION_DELIVERY_LIMIT", "20")]).await;
    let user = Uuid::now_v7();
    let event = order_event(ORDER_CONFIRMED, user);
    app.db_proxy.cut();
    app.publish(&event).await;
    wait_for("the consumer to wait for the database", 10, || async {
        metric(
            &app.metrics().await,
            "stockmesh_notification_database_waits_total",
            &[],
        ) >= 1.0
    })
    .await;
    app.db_proxy.restore();
    app.wait_stored(event.id).await;
    assert_eq!(app.rows_for_event(event.id).await, 1);
    assert!(app.dead_letters().await.is_empty());
    // An outage spends no delivery attempt.
    assert_eq!(metric(&app.metrics().await, RETRIED, &[]), 0.0);
    let (status, _) = app.readiness().await;
    assert_eq!(status, StatusCode::OK);
    app.stop().await;
}

#[tokio::test]
async fn the_consumer_reconnects_after_losing_the_broker() {
    let app = TestApp::spawn().await;
    let user = Uuid::now_v7();
    app.amqp_proxy.cut();
    wait_for("readiness to drop", 10, || async {
        app.ready_status().await == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    let (_, report) = app.readiness().await;
    let broker = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "broker")
        .cloned()
        .unwrap();
    assert_eq!(broker["ok"], false, "{report}");

    // Published straight to the broker while the service cannot reach it.
    let event = order_event(ORDER_CONFIRMED, user);
    app.publish(&event).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.rows_for_event(event.id).await, 0);
    assert_eq!(app.ready_status().await, StatusCode::SERVICE_UNAVAILABLE);

    app.amqp_proxy.restore();
    app.wait_stored(event.id).await;
    wait_for("readiness to return", 10, || async {
        app.ready_status().await == StatusCode::OK
    })
    .await;
    let after = order_event(ORDER_CANCELLED, user);
    app.publish(&after).await;
    app.wait_stored(after.id).await;
    assert_eq!(app.rows_for_event(event.id).await, 1);
    let metrics = app.metrics().await;
    assert!(
        metric(
            &metrics,
            "stockmesh_notification_consumer_sessions_total",
            &[]
        ) >= 2.0,
        "{metrics}"
    );
    app.stop().await;
}

unsafe extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The real binary: consumes inside the publisher's trace; on SIGTERM it finishes (stores and acks) the
/// message in hand, stops consuming, closes its broker connection and
/// exits 0 promptly.
#[tokio::test]
async fn sigterm_finishes_the_message_in_hand_and_exits_cleanly() {
    let db = TestDatabase::create().await;
    let keys = TestKeys::generate();
    let queue = unique_queue();
    let prefix = format!("test-{}", Uuid::new_v4().simple());
    let port = free_port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_notification"))
        .env("DATABASE_URL", &db.url)
        .env("AMQP_URL", &stockmesh_testkit::infra().amqp_url)
        .env("JWT_PUBLIC_KEY", &keys.public_pem)
        .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("NOTIFICATION_QUEUE", &queue)
        .env("NOTIFICATION_BINDINGS", format!("{prefix}.order.*"))
        .env("SHUTDOWN_GRACE_MS", "10000")
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("notification binary starts");
    // Its JSON log lines, to find the trace id they carry.
    let logs = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let sink = logs.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            sink.lock().unwrap().push(line);
        }
    });
    let ready_url = format!("http://127.0.0.1:{port}/readyz");
    wait_for("the binary to be ready", 30, || {
        let url = ready_url.clone();
        async move {
            reqwest::get(url)
                .await
                .map(|r| r.status() == 200)
                .unwrap_or(false)
        }
    })
    .await;
    let (amqp, channel) = broker_channel().await;
    // Published with a W3C trace context, as the order service's relay does.
    let event = order_event(ORDER_CONFIRMED, Uuid::now_v7());
    let trace_id = Uuid::new_v4().simple().to_string();
    let mut headers = FieldTable::default();
    headers.insert(
        "traceparent".into(),
        AMQPValue::LongString(format!("00-{trace_id}-00f067aa0ba902b7-01").into()),
    );
    channel
        .basic_publish(
            EXCHANGE.into(),
            format!("{prefix}.{ORDER_CONFIRMED}").into(),
            BasicPublishOptions::default(),
            &serde_json::to_vec(&event).unwrap(),
            BasicProperties::default()
                .with_delivery_mode(2)
                .with_headers(headers),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let pool = db.pool().await;
    wait_for("the binary to store the event", 10, || {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM notifications WHERE event_id = $1")
                .bind(event.id)
                .fetch_one(&pool)
                .await
                .unwrap_or(0)
                == 1
        }
    })
    .await;
    assert_eq!(queue_state(&channel, &queue).await, (0, 1));
    // Processed inside the publisher's trace.
    let find_stored = || {
        logs.lock()
            .unwrap()
            .iter()
            .find(|line| line.contains("notification stored"))
            .cloned()
    };
    wait_for("the log line of the stored notification", 5, || async {
        find_stored().is_some()
    })
    .await;
    let stored_line = find_stored().unwrap_or_default();
    let stored_line: serde_json::Value = serde_json::from_str(&stored_line).unwrap();
    assert_eq!(stored_line["trace_id"], trace_id.as_str(), "{stored_line}");

    // Hold the next event in the consumer's hands: a transaction of ours
    // inserts the same event id first, so the service's insert waits on it.
    let held = order_event(ORDER_CANCELLED, Uuid::now_v7());
    let mut blocker = pool.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO notifications (id, event_id, user_id, order_id, kind, message) \
         VALUES ($1, $2, $3, $4, 'order.cancelled', 'held')",
    )
    .bind(Uuid::now_v7())
    .bind(held.id)
    .bind(held.data.user_id)
    .bind(held.data.order_id)
    .execute(&mut *blocker)
    .await
    .unwrap();
    publish_raw(
        &channel,
        &format!("{prefix}.{ORDER_CANCELLED}"),
        &serde_json::to_vec(&held).unwrap(),
    )
    .await;
    wait_for("the consumer to be blocked in the database", 10, || {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .fetch_one(&pool)
            .await
            .unwrap_or(0)
                == 1
        }
    })
    .await;

    let pid = child.id().expect("child pid") as i32;
    // SAFETY: plain kill(2) on our own child.
    assert_eq!(unsafe { kill(pid, 15) }, 0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "still finishing the message in hand"
    );
    // Let it through: the service stores the event, acks it, then exits.
    blocker.rollback().await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits promptly")
        .unwrap();
    assert!(status.success(), "clean exit, got {status:?}");
    let stored: String =
        sqlx::query_scalar("SELECT message FROM notifications WHERE event_id = $1")
            .bind(held.id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(stored, "Your order of 2 × Mug (25.00 EUR) was cancelled.");
    // Its consumer is gone and nothing was left unacknowledged.
    assert_eq!(queue_state(&channel, &queue).await, (0, 0));
    pool.close().await;
    delete_queues(&channel, &queue).await;
    let _ = amqp.close(200, "test over".into()).await;
}

/// The broker connection proposes small frames (lapin buffers 32 frames
/// each way per connection) and heartbeats, unless `AMQP_URL` asks for
/// other values.
#[tokio::test]
async fn connections_negotiate_small_frames_and_heartbeats_unless_the_url_says_otherwise() {
    use stockmesh_platform::broker::{self, BrokerConfig, FRAME_MAX, HEARTBEAT_SECS};
    let url = stockmesh_testkit::infra().amqp_url.clone();
    let connection = broker::connect(&BrokerConfig { url: url.clone() }, "frame-test")
        .await
        .expect("connect");
    assert_eq!(connection.configuration().frame_max(), FRAME_MAX);
    // Heartbeats are on, so a dead connection is noticed in seconds.
    assert_eq!(connection.configuration().heartbeat(), HEARTBEAT_SECS);
    let _ = connection.close(200, "done".into()).await;

    let separator = if url.contains('?') { '&' } else { '?' };
    let larger = BrokerConfig {
        url: format!("{url}{separator}frame_max=65536"),
    };
    let connection = broker::connect(&larger, "frame-test")
        .await
        .expect("connect with frame_max");
    assert_eq!(connection.configuration().frame_max(), 65536);
    let _ = connection.close(200, "done".into()).await;
}

/// With the default settings (128 prefetched, 64 handled at once) a backlog
/// is stored in groups larger than the 8 deliveries the consumer used to
/// handle at once (which made it the slowest stage of the order pipeline at
/// the peak), and so in far fewer transactions than events.
#[tokio::test]
async fn a_backlog_is_stored_in_large_groups_by_default() {
    const EVENTS: i64 = 200;
    let app = TestApp::spawn().await;
    let user = Uuid::now_v7();
    app.amqp_proxy.cut();
    wait_for("readiness to drop", 10, || async {
        app.ready_status().await == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    for _ in 0..EVENTS {
        app.publish(&order_event(ORDER_CONFIRMED, user)).await;
    }
    app.amqp_proxy.restore();

    let pool = app.db.pool().await;
    wait_for("the backlog to be stored", 30, || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM notifications")
            .fetch_one(&pool)
            .await
            .expect("count")
            == EVENTS
    })
    .await;
    // Rows stored by one statement share its transaction id.
    let (transactions, largest): (i64, i64) = sqlx::query_as(
        "SELECT count(*), max(n) FROM \
         (SELECT xmin::text, count(*) AS n FROM notifications GROUP BY 1) AS per_transaction",
    )
    .fetch_one(&pool)
    .await
    .expect("groups");
    assert!(
        largest > 8,
        "largest group {largest} rows ({transactions} transactions)"
    );
    // Far fewer commits than events. Not a tight bound: how the backlog is
    // cut into groups depends on how fast deliveries arrive (a loaded
    // machine took 26 transactions; 8 at once took 66).
    assert!(
        transactions < EVENTS / 4,
        "{transactions} transactions for {EVENTS} events (largest group {largest})"
    );
    pool.close().await;
    app.stop().await;
}
