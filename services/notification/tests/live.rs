//! Live notifications over server-sent events, with more than one replica:
//! a browser's stream is on one replica while any replica may consume the
//! event, so every stream must get every notification of its user, once,
//! whichever replica stored it (fan-out through PostgreSQL LISTEN/NOTIFY).

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{SseClient, TestApp, metric, order_event, wait_for};
use reqwest::StatusCode;
use stockmesh_platform::auth::Role;
use stockmesh_platform::events::ORDER_CONFIRMED;
use uuid::Uuid;

fn notification_id(event: &common::SseEvent) -> String {
    let data: serde_json::Value = serde_json::from_str(&event.data).expect("JSON data");
    let id = data["id"].as_str().expect("id in data").to_owned();
    assert_eq!(
        event.id.as_deref(),
        Some(id.as_str()),
        "SSE id is the notification id"
    );
    id
}

/// Reads `n` notifications from a stream, skipping nothing else.
async fn read_notifications(stream: &mut SseClient, n: usize) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    while ids.len() < n {
        let event = stream.expect("notification", 20).await;
        assert!(
            ids.insert(notification_id(&event)),
            "a notification came twice"
        );
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_replica_streams_every_notification_of_its_user_once() {
    let app = TestApp::spawn().await;
    let replica = app.spawn_replica().await;
    let alice = Uuid::now_v7();
    let bob = Uuid::now_v7();
    let token = app.token(alice);
    let mut on_first = SseClient::open(&app.url("/api/notifications/stream"), &token, None)
        .await
        .expect("stream opens");
    let mut on_second = SseClient::open(&replica.url("/api/notifications/stream"), &token, None)
        .await
        .expect("stream opens");
    let mut bobs = SseClient::open(
        &replica.url("/api/notifications/stream"),
        &app.token(bob),
        None,
    )
    .await
    .expect("stream opens");
    for stream in [&mut on_first, &mut on_second, &mut bobs] {
        stream.expect("ready", 5).await;
    }

    // Both replicas consume the queue; whichever stores a notification,
    // both of alice's streams get it.
    for _ in 0..12 {
        app.publish(&order_event(ORDER_CONFIRMED, alice)).await;
    }
    let first = read_notifications(&mut on_first, 12).await;
    let second = read_notifications(&mut on_second, 12).await;
    assert_eq!(
        first, second,
        "both replicas streamed the same notifications"
    );

    // A notification stored by "another replica" (straight into the table,
    // as any consumer does) reaches the streams too.
    let pool = app.db.pool().await;
    let direct = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO notifications (id, event_id, user_id, order_id, kind, message) \
         VALUES ($1, $2, $3, $4, 'order.cancelled', 'Your order was cancelled.')",
    )
    .bind(direct)
    .bind(Uuid::now_v7())
    .bind(alice)
    .bind(Uuid::now_v7())
    .execute(&pool)
    .await
    .expect("insert");
    for stream in [&mut on_first, &mut on_second] {
        let event = stream.expect("notification", 10).await;
        assert_eq!(notification_id(&event), direct.to_string());
        assert!(
            event.data.contains("\"kind\":\"order.cancelled\""),
            "{}",
            event.data
        );
    }

    // Bob's stream got none of alice's; his own arrives.
    app.publish(&order_event(ORDER_CONFIRMED, bob)).await;
    let event = bobs.expect("notification", 10).await;
    let stored: Uuid = sqlx::query_scalar("SELECT id FROM notifications WHERE user_id = $1")
        .bind(bob)
        .fetch_one(&pool)
        .await
        .expect("bob's notification");
    assert_eq!(notification_id(&event), stored.to_string());

    let delivered = metric(
        &app.metrics().await,
        "stockmesh_notification_live_delivered_total",
        &[],
    );
    assert_eq!(delivered, 13.0, "first replica's streams got alice's 13");
    pool.close().await;
    drop((on_first, on_second, bobs));
    replica.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn a_reconnecting_stream_gets_what_it_missed_after_its_last_event_id() {
    let app = TestApp::spawn().await;
    let alice = Uuid::now_v7();
    let token = app.token(alice);
    let url = app.url("/api/notifications/stream");
    let mut stream = SseClient::open(&url, &token, None).await.expect("opens");
    stream.expect("ready", 5).await;
    app.publish(&order_event(ORDER_CONFIRMED, alice)).await;
    let last = notification_id(&stream.expect("notification", 10).await);
    drop(stream);

    // Stored while the browser was away.
    let mut missed = Vec::new();
    for _ in 0..3 {
        let event = order_event(ORDER_CONFIRMED, alice);
        app.publish(&event).await;
        app.wait_stored(event.id).await;
        missed.push(event.id);
    }
    let mut stream = SseClient::open(&url, &token, Some(&last))
        .await
        .expect("opens");
    stream.expect("ready", 5).await;
    let replayed = read_notifications(&mut stream, 3).await;
    assert!(
        !replayed.contains(&last),
        "the last seen one is not sent again"
    );
    let body = app.list(alice).await;
    assert_eq!(body["total"], 4);
    assert_eq!(body["unread"], 4, "{body}");

    // Someone else's id as Last-Event-ID reveals nothing.
    let bob = Uuid::now_v7();
    let mut others = SseClient::open(&url, &app.token(bob), Some(&last))
        .await
        .expect("opens");
    others.expect("ready", 5).await;
    app.publish(&order_event(ORDER_CONFIRMED, bob)).await;
    let event = others.expect("notification", 10).await;
    assert!(!replayed.contains(&notification_id(&event)));
    drop((stream, others));
    app.stop().await;
}

#[tokio::test]
async fn streams_are_refused_clearly() {
    let app = TestApp::spawn_with(&[("NOTIFICATION_MAX_STREAMS_PER_USER", "2")]).await;
    let url = app.url("/api/notifications/stream");
    let response = reqwest::get(&url).await.expect("request");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let body = response.text().await.expect("body");
    assert!(body.contains("authentication required"), "{body}");

    let alice = Uuid::now_v7();
    let token = app.token(alice);
    let Err((status, body)) = SseClient::open(&url, &token, Some("not-an-id")).await else {
        panic!("a malformed Last-Event-ID was accepted");
    };
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("Last-Event-ID"), "{body}");

    let forged = common::TestApp::spawn().await;
    let Err((status, _)) = SseClient::open(&url, &forged.token(alice), None).await else {
        panic!("a token of another key was accepted");
    };
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    forged.stop().await;

    let one = SseClient::open(&url, &token, None).await.expect("first");
    let two = SseClient::open(&url, &token, None).await.expect("second");
    let Err((status, body)) = SseClient::open(&url, &token, None).await else {
        panic!("a third stream of one user was accepted");
    };
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(
        body.contains("too many open notification streams"),
        "{body}"
    );
    drop(one);
    // The slot is freed when the server notices the client left.
    wait_for("the closed stream's slot to be freed", 10, || async {
        match SseClient::open(&url, &token, None).await {
            Ok(stream) => {
                drop(stream);
                true
            }
            Err(_) => false,
        }
    })
    .await;
    drop(two);
    app.stop().await;
}

#[tokio::test]
async fn a_stream_ends_when_its_token_expires_and_when_the_replica_drains() {
    let app = TestApp::spawn().await;
    let alice = Uuid::now_v7();
    let url = app.url("/api/notifications/stream");
    let short = app.keys.token_expiring_in(alice, Role::User, 2);
    let mut stream = SseClient::open(&url, &short, None).await.expect("opens");
    stream.expect("ready", 5).await;
    stream.expect("expired", 10).await;
    assert_eq!(stream.next(5).await, None, "the stream ends after expired");

    // Shutdown does not wait for open streams: they end when draining
    // begins, and the app stops cleanly within its grace period.
    let mut stream = SseClient::open(&url, &app.token(alice), None)
        .await
        .expect("opens");
    stream.expect("ready", 5).await;
    let started = tokio::time::Instant::now();
    app.shutdown.trigger();
    assert_eq!(stream.next(10).await, None, "the stream ends on shutdown");
    app.task.await.expect("joins").expect("stops cleanly");
    assert!(started.elapsed() < Duration::from_secs(10));
    common::delete_queues(&app.channel, &app.queue).await;
}

#[tokio::test]
async fn after_the_database_connection_is_lost_streams_resync_and_keep_receiving() {
    let app = TestApp::spawn().await;
    let alice = Uuid::now_v7();
    let mut stream = SseClient::open(
        &app.url("/api/notifications/stream"),
        &app.token(alice),
        None,
    )
    .await
    .expect("opens");
    stream.expect("ready", 5).await;
    // Every connection of the app to PostgreSQL is cut, the LISTEN one too.
    app.db_proxy.cut();
    wait_for("the listener to notice", 20, || async {
        metric(
            &app.metrics().await,
            "stockmesh_notification_live_listener_up",
            &[],
        ) == 0.0
    })
    .await;
    // A stream opened while the replica does not listen is told too.
    let mut late = SseClient::open(
        &app.url("/api/notifications/stream"),
        &app.token(alice),
        None,
    )
    .await
    .expect("a stream opens while the replica is not listening");
    late.expect("ready", 5).await;
    app.db_proxy.restore();
    stream.expect("resync", 20).await;
    late.expect("resync", 20).await;
    app.publish(&order_event(ORDER_CONFIRMED, alice)).await;
    stream.expect("notification", 20).await;
    late.expect("notification", 20).await;
    let text = app.metrics().await;
    assert_eq!(
        metric(&text, "stockmesh_notification_live_listener_up", &[]),
        1.0
    );
    assert!(
        metric(
            &text,
            "stockmesh_notification_live_listener_sessions_total",
            &[]
        ) >= 2.0
    );
    drop((stream, late));
    app.stop().await;
}
