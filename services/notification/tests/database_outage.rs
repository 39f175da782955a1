//! The consumer while its database is unreachable (a TCP proxy in front of
//! PostgreSQL, cut and restored; the shared server is never restarted), and
//! replaying the dead-letter queue.

mod common;

use std::time::Duration;

use common::{TestApp, metric, order_event, queue_state, wait_for};
use reqwest::StatusCode;
use stockmesh_platform::events::{ORDER_CONFIRMED, OrderEvent};
use uuid::Uuid;

const DEAD: &str = "stockmesh_notification_events_dead_lettered_total";
const WAITS: &str = "stockmesh_notification_database_waits_total";
const PAUSED: &str = "stockmesh_notification_consumer_paused";

async fn dead_letter_count(app: &TestApp) -> u32 {
    queue_state(&app.channel, &format!("{}.dead", app.queue))
        .await
        .0
}

/// The database is unreachable for six seconds, over a hundred times the
/// retry delay (the delivery budget, 3 deliveries of about 550 ms each,
/// would be spent for nearly every event)
/// while events keep arriving: none is dead-lettered, consuming pauses
/// during the outage, and afterwards every event is stored exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_longer_than_the_retry_budget_dead_letters_nothing() {
    // Each failed attempt costs about 550 ms: 500 ms waiting for a pooled
    // connection, 50 ms of retry delay.
    let app = TestApp::spawn_with(&[("NOTIFICATION_RETRY_MAX_MS", "1000")]).await;
    let user = Uuid::now_v7();
    app.db_proxy.cut();
    let started = tokio::time::Instant::now();
    let mut events: Vec<OrderEvent> = Vec::new();
    for _ in 0..20 {
        let event = order_event(ORDER_CONFIRMED, user);
        app.publish(&event).await;
        events.push(event);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(6).saturating_sub(started.elapsed())).await;
    assert_eq!(
        dead_letter_count(&app).await,
        0,
        "nothing dead-lettered during the outage"
    );
    // Consuming is paused while the database is unreachable, and /readyz
    // reports it (the shared database is a dependency: it does not gate
    // readiness, so every replica is not taken out of service at once).
    let metrics = app.metrics().await;
    assert!(
        metric(&metrics, WAITS, &[]) >= 1.0,
        "the consumer waited for the database: {metrics}"
    );
    assert_eq!(metric(&metrics, PAUSED, &[]), 1.0, "{metrics}");
    let (_, report) = app.readiness().await;
    let database = report["checks"]
        .as_array()
        .and_then(|checks| checks.iter().find(|c| c["name"] == "database"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(database["ok"], false, "{report}");

    app.db_proxy.restore();
    for event in &events {
        app.wait_stored(event.id).await;
    }
    for event in &events {
        assert_eq!(app.rows_for_event(event.id).await, 1, "stored exactly once");
    }
    assert_eq!(dead_letter_count(&app).await, 0);
    let metrics = app.metrics().await;
    assert_eq!(metric(&metrics, DEAD, &[]), 0.0);
    assert_eq!(metric(&metrics, PAUSED, &[]), 0.0, "{metrics}");
    assert_eq!(app.ready_status().await, StatusCode::OK);
    app.stop().await;
}

/// A valid event dead-lettered by a fault that is not the database being
/// unreachable (here the table is renamed, as a bad migration would: the
/// insert fails with "relation does not exist", which spends the delivery
/// budget), then the fault is fixed and `notification replay-dead-letters`
/// moves it back: it is stored, and the dead-letter queue is empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_replayed_by_the_subcommand_and_stored() {
    let app = TestApp::spawn().await;
    let user = Uuid::now_v7();
    let pool = app.db.pool().await;
    sqlx::query("ALTER TABLE notifications RENAME TO notifications_moved")
        .execute(&pool)
        .await
        .expect("rename");
    let event = order_event(ORDER_CONFIRMED, user);
    app.publish(&event).await;
    wait_for("the event to be dead-lettered", 20, || async {
        dead_letter_count(&app).await == 1
    })
    .await;
    sqlx::query("ALTER TABLE notifications_moved RENAME TO notifications")
        .execute(&pool)
        .await
        .expect("rename back");
    pool.close().await;
    assert_eq!(app.rows_for_event(event.id).await, 0);

    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_notification"))
        .arg("replay-dead-letters")
        .env("AMQP_URL", &stockmesh_testkit::infra().amqp_url)
        .env("NOTIFICATION_QUEUE", &app.queue)
        .env("LOG_FORMAT", "text")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(30), output)
        .await
        .expect("the replay finishes")
        .expect("the binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "replay failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("replayed 1"), "{stdout}");
    app.wait_stored(event.id).await;
    assert_eq!(app.rows_for_event(event.id).await, 1);
    assert_eq!(dead_letter_count(&app).await, 0);

    // Nothing left: a second run replays nothing.
    let again = tokio::process::Command::new(env!("CARGO_BIN_EXE_notification"))
        .arg("replay-dead-letters")
        .env("AMQP_URL", &stockmesh_testkit::infra().amqp_url)
        .env("NOTIFICATION_QUEUE", &app.queue)
        .output()
        .await
        .expect("the binary runs");
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains("replayed 0"));
    app.stop().await;
}
