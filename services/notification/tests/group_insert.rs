//! Concurrent stores are grouped into one statement (one commit for many
//! deliveries), and every caller still gets its own, right answer: the row
//! for the first copy of an event, "duplicate" for any other, and a refusal
//! only for the notification the database refuses, never its neighbours.

use futures::future::join_all;
use stockmesh_notification::domain::{NewNotification, NotificationKind};
use stockmesh_notification::repository::NotificationRepository;
use stockmesh_notification::startup::MIGRATOR;
use stockmesh_testkit::TestDatabase;
use uuid::Uuid;

fn notification(event_id: Uuid, message: &str) -> NewNotification {
    NewNotification {
        event_id,
        user_id: Uuid::now_v7(),
        order_id: Uuid::now_v7(),
        kind: NotificationKind::OrderConfirmed,
        message: message.to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_stores_are_grouped_and_each_gets_its_own_answer() {
    let db = TestDatabase::create().await;
    let pool = db.pool().await;
    MIGRATOR.run(&pool).await.expect("migrations");
    let repository = NotificationRepository::new(pool.clone());

    // 200 distinct events, each sent twice at the same time, plus one
    // event stored before: exactly one answer per event is "created".
    let stored_before = notification(Uuid::now_v7(), "stored before");
    assert!(
        repository
            .insert_if_absent(&stored_before)
            .await
            .expect("insert")
            .is_some()
    );
    let mut news: Vec<NewNotification> = (0..200)
        .map(|i| notification(Uuid::now_v7(), &format!("event {i}")))
        .collect();
    news.extend(news.clone());
    news.push(stored_before.clone());
    // One the database refuses (text cannot hold NUL), among the rest.
    let refused = notification(Uuid::now_v7(), "bad\0message");
    news.insert(100, refused.clone());

    let answers = join_all(news.iter().map(|new| {
        let repository = repository.clone();
        async move { (new.event_id, repository.insert_if_absent(new).await) }
    }))
    .await;
    let mut created = std::collections::HashMap::new();
    for (event_id, answer) in answers {
        if event_id == refused.event_id {
            let err = answer.expect_err("the refused notification fails");
            assert!(!err.is_unavailable(), "refused, not unreachable: {err}");
            continue;
        }
        if let Some(row) = answer.expect("stored or duplicate") {
            assert_eq!(row.event_id, event_id);
            *created.entry(event_id).or_insert(0) += 1;
        }
    }
    assert_eq!(created.len(), 200, "every new event got its row");
    assert!(
        created.values().all(|n| *n == 1),
        "and only one caller got it"
    );
    assert!(!created.contains_key(&stored_before.event_id));

    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM notifications")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(
        rows, 201,
        "one row per event; the refused one is not stored"
    );
    // Grouped: rows stored by one statement share its transaction id, so
    // far fewer transactions than events (one each, ungrouped). The group
    // with the refused notification was stored one by one.
    let transactions: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT xmin::text) FROM notifications")
            .fetch_one(&pool)
            .await
            .expect("transactions");
    assert!(
        transactions < 150,
        "{transactions} transactions stored 201 notifications"
    );
}

/// A group member stuck on a row lock (another replica storing a copy of
/// the same event) does not hold up the rest of its group: they are stored
/// while it still waits, and it is stored once the lock is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_stuck_on_a_lock_does_not_hold_up_its_group() {
    let db = TestDatabase::create().await;
    let pool = db.pool().await;
    MIGRATOR.run(&pool).await.expect("migrations");
    let repository = NotificationRepository::new(pool.clone());

    let contended = notification(Uuid::now_v7(), "contended");
    let mut other = pool.begin().await.expect("begin");
    sqlx::query(
        "INSERT INTO notifications (id, event_id, user_id, order_id, kind, message) \
         VALUES ($1, $2, $3, $4, 'order.confirmed', 'the other replica')",
    )
    .bind(Uuid::now_v7())
    .bind(contended.event_id)
    .bind(contended.user_id)
    .bind(contended.order_id)
    .execute(&mut *other)
    .await
    .expect("the other replica's insert");

    let mut news: Vec<NewNotification> = (0..30)
        .map(|i| notification(Uuid::now_v7(), &format!("event {i}")))
        .collect();
    news.insert(15, contended.clone());
    let stores = news
        .iter()
        .map(|new| {
            let (repository, new) = (repository.clone(), new.clone());
            tokio::spawn(async move { (new.event_id, repository.insert_if_absent(&new).await) })
        })
        .collect::<Vec<_>>();

    let stored_without_it = async {
        loop {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM notifications")
                .fetch_one(&pool)
                .await
                .expect("count");
            if n == 30 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), stored_without_it)
        .await
        .expect("the other 30 are stored while the contended one waits");
    // The other replica gives up: the contended one is stored by us.
    other.rollback().await.expect("rollback");
    for store in stores {
        let (event_id, answer) = store.await.expect("task");
        let row = answer.expect("stored").expect("created, not a duplicate");
        assert_eq!(row.event_id, event_id);
    }
}
