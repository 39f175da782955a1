//! Reserve / Release / Commit over real gRPC into real PostgreSQL.

mod common;

use common::{TestApp, snapshot};
use futures::future::join_all;
use stockmesh_proto::inventory::v1 as pb;
use tonic::Code;
use uuid::Uuid;

async fn product_with_stock(app: &TestApp, quantity: i64) -> String {
    let product_id = Uuid::now_v7().to_string();
    app.client()
        .await
        .set_stock(pb::SetStockRequest {
            product_id: product_id.clone(),
            quantity,
        })
        .await
        .expect("set stock");
    product_id
}

fn reserve(order_id: &str, product_id: &str, quantity: i64) -> pb::ReserveRequest {
    pb::ReserveRequest {
        order_id: order_id.to_owned(),
        product_id: product_id.to_owned(),
        quantity,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reserves_never_oversell_and_replays_change_nothing() {
    let app = TestApp::spawn().await;
    let product = product_with_stock(&app, 50).await;
    let orders: Vec<String> = (0..250).map(|_| Uuid::now_v7().to_string()).collect();

    let fire = |orders: Vec<String>| {
        let client = app.client();
        let product = product.clone();
        async move {
            let client = client.await;
            join_all(orders.into_iter().map(|order| {
                let mut client = client.clone();
                let request = reserve(&order, &product, 1);
                async move {
                    // 250 at once may exhaust the pool on a loaded machine:
                    // UNAVAILABLE is "retry later", and a Reserve is
                    // idempotent per order id, so retry as the order
                    // service's client does.
                    let mut attempts = 0;
                    loop {
                        let result = client.reserve(request.clone()).await;
                        match &result {
                            Err(status) if status.code() == Code::Unavailable && attempts < 30 => {
                                attempts += 1;
                                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                            }
                            _ => break (order, result),
                        }
                    }
                }
            }))
            .await
        }
    };

    let first = fire(orders.clone()).await;
    let mut confirmed = Vec::new();
    for (order, result) in &first {
        match result {
            Ok(response) => {
                let stock = response.get_ref().stock.as_ref().expect("stock in answer");
                assert!(stock.available >= 0, "stock went negative: {stock:?}");
                confirmed.push(order.clone());
            }
            Err(status) => {
                assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
                assert!(
                    status.message().contains("available 0"),
                    "{}",
                    status.message()
                );
            }
        }
    }
    assert_eq!(confirmed.len(), 50, "exactly the 50 units are reserved");

    let pool = app.db.pool().await;
    let (available, reserved): (i64, i64) =
        sqlx::query_as("SELECT available, reserved FROM stock WHERE product_id = $1::uuid")
            .bind(&product)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((available, reserved), (0, 50));
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM reservations")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 50);

    // Replaying every order id, concurrently, changes nothing.
    let before = snapshot(&pool).await;
    let replay = fire(orders.clone()).await;
    for (order, result) in replay {
        if confirmed.contains(&order) {
            let response = result.expect("a replayed reservation answers the same");
            let reservation = response.into_inner().reservation.unwrap();
            assert_eq!(reservation.order_id, order);
            assert_eq!(reservation.quantity, 1);
        } else {
            assert_eq!(result.unwrap_err().code(), Code::FailedPrecondition);
        }
    }
    assert_eq!(snapshot(&pool).await, before);
    app.stop().await;
}

/// The same order reserved by many calls at once (a retried call racing
/// its original): the one-statement fast path lets exactly one take the
/// units; the others lose on the order's key, take nothing and answer as
/// replays. Nothing is taken twice and nothing fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_of_one_reserve_racing_take_its_units_once() {
    let app = TestApp::spawn().await;
    let product = product_with_stock(&app, 100).await;
    let client = app.client().await;
    let pool = app.db.pool().await;
    // Hold the stock row so that every call has read "no reservation yet"
    // before the first one can take anything: a true race, every time.
    let mut holder = pool.begin().await.expect("begin");
    sqlx::query("SELECT 1 FROM stock WHERE product_id = $1::uuid FOR UPDATE")
        .bind(&product)
        .execute(&mut *holder)
        .await
        .expect("lock the stock row");
    let orders: Vec<String> = (0..10).map(|_| Uuid::now_v7().to_string()).collect();
    let calls = orders.iter().flat_map(|order| {
        (0..8).map(|_| {
            let mut client = client.clone();
            let request = reserve(order, &product, 3);
            async move { client.reserve(request).await }
        })
    });
    let answers = tokio::spawn(join_all(calls));
    let waiting = lock_waiters(&pool, "WITH taken%", 2).await;
    assert!(waiting >= 2, "the reserves queue on the stock row");
    holder.commit().await.expect("let them go");
    for answer in answers.await.expect("reserves") {
        let answer = answer
            .expect("every duplicate answers as the original")
            .into_inner();
        assert_eq!(answer.reservation.expect("reservation").quantity, 3);
    }
    assert_eq!(
        stock_of(&app, &product).await,
        (70, 30),
        "ten orders of 3 units, each taken once"
    );
    let rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM reservations WHERE state = 'reserved'")
            .fetch_one(&pool)
            .await
            .expect("count reservations");
    assert_eq!(rows, 10);
    app.stop().await;
}

/// A CommitMany that waits on a reservation another caller is settling
/// (another replica's commit, a release) answers what that caller made of
/// it, and takes nothing out of the stock a second time. The row is held
/// in a transaction here, so the wait happens every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_many_waiting_on_a_settling_reservation_answers_its_outcome() {
    let app = TestApp::spawn().await;
    let mut client = app.client().await;
    let product = product_with_stock(&app, 100).await;
    let pool = app.db.pool().await;
    for (settled_as, expected, stock_after) in [
        ("committed", pb::CommitResult::Committed, (96, 0)),
        ("released", pb::CommitResult::Released, (98, 0)),
    ] {
        let (waiting_on, alongside) = (Uuid::now_v7().to_string(), Uuid::now_v7().to_string());
        for order in [&waiting_on, &alongside] {
            client
                .reserve(reserve(order, &product, 2))
                .await
                .expect("reserve");
        }
        let mut other = pool.begin().await.expect("begin");
        sqlx::query("SELECT 1 FROM reservations WHERE order_id = $1::uuid FOR UPDATE")
            .bind(&waiting_on)
            .execute(&mut *other)
            .await
            .expect("hold the reservation");
        let mut batch_client = client.clone();
        let batch = vec![waiting_on.clone(), alongside.clone()];
        let answer = tokio::spawn(async move {
            batch_client
                .commit_many(pb::CommitManyRequest { order_ids: batch })
                .await
        });
        let waiting = lock_waiters(&pool, "WITH held%", 1).await;
        assert_eq!(waiting, 1, "the batch waits on the held reservation");
        // What the other caller does with it: sold (reserved units leave
        // `reserved`), or given back (they return to `available`).
        let give_back = if settled_as == "released" { 2 } else { 0 };
        sqlx::query("UPDATE reservations SET state = $2 WHERE order_id = $1::uuid")
            .bind(&waiting_on)
            .bind(settled_as)
            .execute(&mut *other)
            .await
            .expect("settle it");
        sqlx::query(
            "UPDATE stock SET reserved = reserved - 2, available = available + $2 WHERE product_id = $1::uuid",
        )
        .bind(&product)
        .bind(give_back)
        .execute(&mut *other)
        .await
        .expect("move its units");
        other.commit().await.expect("commit");
        let outcomes = answer
            .await
            .expect("joins")
            .expect("the batch answers")
            .into_inner()
            .outcomes;
        let outcome_of = |order: &str| {
            outcomes
                .iter()
                .find(|outcome| outcome.order_id == order)
                .map(|outcome| outcome.result())
        };
        assert_eq!(outcome_of(&waiting_on), Some(expected), "{settled_as}");
        assert_eq!(outcome_of(&alongside), Some(pb::CommitResult::Committed));
        assert_eq!(
            stock_of(&app, &product).await,
            stock_after,
            "{settled_as}: each unit moved once"
        );
        // The next round starts from 96 available again.
        sqlx::query("UPDATE stock SET available = 100 WHERE product_id = $1::uuid")
            .bind(&product)
            .execute(&pool)
            .await
            .expect("reset");
    }
    app.stop().await;
}

#[tokio::test]
async fn release_returns_units_exactly_once_and_commit_is_final() {
    let app = TestApp::spawn().await;
    let mut client = app.client().await;
    let product = product_with_stock(&app, 10).await;
    let order_a = Uuid::now_v7().to_string();
    let order_b = Uuid::now_v7().to_string();

    let answer = client
        .reserve(reserve(&order_a, &product, 4))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.stock.unwrap().available, 6);
    client
        .reserve(reserve(&order_b, &product, 3))
        .await
        .unwrap();

    // Same order id, different quantity: refused, nothing changes.
    let mismatch = client
        .reserve(reserve(&order_a, &product, 5))
        .await
        .unwrap_err();
    assert_eq!(mismatch.code(), Code::AlreadyExists);

    let release = pb::ReleaseRequest {
        order_id: order_a.clone(),
    };
    let first = client.release(release.clone()).await.unwrap().into_inner();
    assert!(first.released_now);
    let second = client.release(release).await.unwrap().into_inner();
    assert!(!second.released_now, "second release is a no-op");
    assert_eq!(
        second.reservation.unwrap().state,
        pb::ReservationState::Released as i32
    );
    let stock = client
        .get_stock(pb::GetStockRequest {
            product_id: product.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stock
        .unwrap();
    assert_eq!((stock.available, stock.reserved), (7, 3));

    // A released order cannot be reserved again under the same id: ABORTED,
    // and nothing is taken.
    let again = client
        .reserve(reserve(&order_a, &product, 4))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::Aborted);

    // Commit: the reserved units are sold and leave `reserved`; releasing a
    // committed order (a cancel after the sale) returns them, once.
    let committed = client
        .commit(pb::CommitRequest {
            order_id: order_b.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        committed.reservation.unwrap().state,
        pb::ReservationState::Committed as i32
    );
    client
        .commit(pb::CommitRequest {
            order_id: order_b.clone(),
        })
        .await
        .unwrap();
    let after_commit = client
        .release(pb::ReleaseRequest {
            order_id: order_b.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(after_commit.released_now);
    let stock = client
        .get_stock(pb::GetStockRequest {
            product_id: product.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stock
        .unwrap();
    assert_eq!((stock.available, stock.reserved), (10, 0));

    let released_commit = client
        .commit(pb::CommitRequest { order_id: order_a })
        .await
        .unwrap_err();
    assert_eq!(released_commit.code(), Code::FailedPrecondition);
    let unknown_commit = client
        .commit(pb::CommitRequest {
            order_id: Uuid::now_v7().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown_commit.code(), Code::NotFound);
    // Releasing an order that never reserved changes no stock (it leaves a
    // tombstone, so a late Reserve of that order takes nothing).
    let unknown_release = client
        .release(pb::ReleaseRequest {
            order_id: Uuid::now_v7().to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(unknown_release.reservation.is_none() && !unknown_release.released_now);
    app.stop().await;
}

/// How many statements whose text is `LIKE pattern` wait on a lock, once
/// at least `wanted` do (or after 4 s).
async fn lock_waiters(pool: &sqlx::PgPool, pattern: &str, wanted: i64) -> i64 {
    let mut waiting = 0_i64;
    for _ in 0..200 {
        waiting = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE $1",
        )
        .bind(pattern)
        .fetch_one(pool)
        .await
        .expect("count lock waiters");
        if waiting >= wanted {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    waiting
}

async fn stock_of(app: &TestApp, product: &str) -> (i64, i64) {
    let stock = app
        .client()
        .await
        .get_stock(pb::GetStockRequest {
            product_id: product.to_owned(),
        })
        .await
        .expect("stock")
        .into_inner()
        .stock
        .expect("a stock record");
    (stock.available, stock.reserved)
}

/// CommitMany answers each order as Commit would, takes each reservation's
/// units out of `reserved` exactly once (replays, duplicates in a batch
/// and racing batches included), and overlapping batches never deadlock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_many_is_commit_for_a_batch_exactly_once() {
    let app = TestApp::spawn().await;
    let mut client = app.client().await;
    let (lamp, chair) = (
        product_with_stock(&app, 1000).await,
        product_with_stock(&app, 1000).await,
    );
    let mut reserved = Vec::new();
    for i in 0..40 {
        let order = Uuid::now_v7().to_string();
        let product = if i % 2 == 0 { &lamp } else { &chair };
        client
            .reserve(reserve(&order, product, 1 + i % 3))
            .await
            .expect("reserve");
        reserved.push(order);
    }
    let released = reserved.pop().expect("an order");
    client
        .release(pb::ReleaseRequest {
            order_id: released.clone(),
        })
        .await
        .expect("release");
    let unknown = Uuid::now_v7().to_string();
    let held_before = stock_of(&app, &lamp).await.1 + stock_of(&app, &chair).await.1;
    assert!(held_before > 0);

    // Two batches over the same orders (in opposite order, with a
    // duplicate), at the same time, several rounds.
    let mut first: Vec<String> = reserved.clone();
    first.push(released.clone());
    first.push(unknown.clone());
    first.push(reserved[0].clone());
    let mut second = first.clone();
    second.reverse();
    let mut rounds = Vec::new();
    for _ in 0..3 {
        for batch in [first.clone(), second.clone()] {
            let mut client = app.client().await;
            rounds.push(async move {
                client
                    .commit_many(pb::CommitManyRequest { order_ids: batch })
                    .await
                    .map(|answer| answer.into_inner())
            });
        }
    }
    for answer in join_all(rounds).await {
        let answer = answer.expect("no deadlock, no error");
        assert_eq!(answer.outcomes.len(), first.len());
        for outcome in &answer.outcomes {
            let expected = if outcome.order_id == released {
                pb::CommitResult::Released
            } else if outcome.order_id == unknown {
                pb::CommitResult::NotFound
            } else {
                pb::CommitResult::Committed
            };
            assert_eq!(outcome.result(), expected, "{}", outcome.order_id);
        }
    }
    // Every committed unit left `reserved` once: nothing is held any more,
    // and `available` did not move (the reserves lowered it already).
    assert_eq!(stock_of(&app, &lamp).await.1, 0);
    assert_eq!(stock_of(&app, &chair).await.1, 0);
    let sold: i64 = (0..39).map(|i| 1 + i % 3).sum();
    assert_eq!(
        stock_of(&app, &lamp).await.0 + stock_of(&app, &chair).await.0,
        2000 - sold
    );

    // Bad input is refused whole.
    let malformed = client
        .commit_many(pb::CommitManyRequest {
            order_ids: vec![reserved[0].clone(), "not-a-uuid".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(malformed.code(), Code::InvalidArgument);
    let too_many = client
        .commit_many(pb::CommitManyRequest {
            order_ids: (0..1001).map(|_| Uuid::now_v7().to_string()).collect(),
        })
        .await
        .unwrap_err();
    assert_eq!(too_many.code(), Code::InvalidArgument);
    assert!(
        too_many.message().contains("order_ids"),
        "{}",
        too_many.message()
    );
    app.stop().await;
}

#[tokio::test]
async fn stock_administration_never_goes_negative() {
    let app = TestApp::spawn().await;
    let mut client = app.client().await;
    let product = product_with_stock(&app, 5).await;
    let other = product_with_stock(&app, 0).await;

    let adjusted = client
        .adjust_stock(pb::AdjustStockRequest {
            product_id: product.clone(),
            delta: -5,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(adjusted.stock.unwrap().available, 0);
    let below = client
        .adjust_stock(pb::AdjustStockRequest {
            product_id: product.clone(),
            delta: -1,
        })
        .await
        .unwrap_err();
    assert_eq!(below.code(), Code::FailedPrecondition);
    let up = client
        .adjust_stock(pb::AdjustStockRequest {
            product_id: product.clone(),
            delta: 12,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(up.stock.unwrap().available, 12);
    let unknown = client
        .adjust_stock(pb::AdjustStockRequest {
            product_id: Uuid::now_v7().to_string(),
            delta: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);

    let set = client
        .set_stock(pb::SetStockRequest {
            product_id: product.clone(),
            quantity: 3,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(set.stock.unwrap().available, 3);

    let missing = Uuid::now_v7().to_string();
    let stocks = client
        .get_stocks(pb::GetStocksRequest {
            product_ids: vec![product.clone(), other.clone(), missing],
        })
        .await
        .unwrap()
        .into_inner()
        .stocks;
    let mut got: Vec<(String, i64)> = stocks
        .into_iter()
        .map(|s| (s.product_id, s.available))
        .collect();
    got.sort();
    let mut want = vec![(product, 3), (other, 0)];
    want.sort();
    assert_eq!(got, want, "unknown products are simply absent");
    app.stop().await;
}
