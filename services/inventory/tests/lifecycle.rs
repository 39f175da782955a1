//! The reservation life cycle against late and repeated calls (issue 13):
//! a Reserve that lands after its order's Release takes nothing, and a
//! committed reservation still returns its units, once, when released.

mod common;

use common::TestApp;
use futures::StreamExt;
use stockmesh_proto::inventory::v1 as pb;
use stockmesh_proto::inventory::v1::inventory_service_client::InventoryServiceClient;
use tonic::Code;
use tonic::transport::Channel;
use uuid::Uuid;

type Client = InventoryServiceClient<Channel>;

async fn product_with_stock(client: &mut Client, quantity: i64) -> String {
    let product_id = Uuid::now_v7().to_string();
    client
        .set_stock(pb::SetStockRequest {
            product_id: product_id.clone(),
            quantity,
        })
        .await
        .expect("set stock");
    product_id
}

async fn stock(client: &mut Client, product_id: &str) -> (i64, i64) {
    let stock = client
        .get_stock(pb::GetStockRequest {
            product_id: product_id.to_owned(),
        })
        .await
        .expect("get stock")
        .into_inner()
        .stock
        .expect("stock in answer");
    (stock.available, stock.reserved)
}

async fn reserve(
    client: &mut Client,
    order_id: &str,
    product_id: &str,
    quantity: i64,
) -> Result<pb::ReserveResponse, tonic::Status> {
    client
        .reserve(pb::ReserveRequest {
            order_id: order_id.to_owned(),
            product_id: product_id.to_owned(),
            quantity,
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn release(client: &mut Client, order_id: &str) -> pb::ReleaseResponse {
    client
        .release(pb::ReleaseRequest {
            order_id: order_id.to_owned(),
        })
        .await
        .expect("release")
        .into_inner()
}

fn error_code(status: &tonic::Status) -> Option<&str> {
    status
        .metadata()
        .get("error-code")
        .and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn a_reserve_after_the_release_of_an_unknown_order_takes_nothing() {
    let app = TestApp::spawn().await;
    let mut client = app.client().await;
    let product = product_with_stock(&mut client, 10).await;
    let order = Uuid::now_v7().to_string();

    // The release overtakes the reserve (the caller's deadline fired while
    // inventory was still working, or the sweeper gave the saga up).
    let released = release(&mut client, &order).await;
    assert!(released.reservation.is_none() && !released.released_now);

    let late = reserve(&mut client, &order, &product, 4)
        .await
        .expect_err("a reserve after the release must not take stock");
    assert_eq!(late.code(), Code::Aborted, "{late:?}");
    assert_eq!(error_code(&late), Some("reservation_released"));
    assert_eq!(
        stock(&mut client, &product).await,
        (10, 0),
        "stock unchanged"
    );

    // Every later attempt is refused the same way; releasing stays a no-op.
    let again = reserve(&mut client, &order, &product, 4).await.unwrap_err();
    assert_eq!(again.code(), Code::Aborted);
    let released = release(&mut client, &order).await;
    assert!(released.reservation.is_none() && !released.released_now);
    // Nor can it be committed.
    let commit = client
        .commit(pb::CommitRequest {
            order_id: order.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(commit.code(), Code::FailedPrecondition);
    assert_eq!(stock(&mut client, &product).await, (10, 0));
    app.stop().await;
}

#[tokio::test]
async fn a_reserve_after_the_release_of_a_reservation_takes_nothing() {
    let app = TestApp::spawn().await;
    let mut client = app.client().await;
    let product = product_with_stock(&mut client, 10).await;
    let order = Uuid::now_v7().to_string();

    reserve(&mut client, &order, &product, 4).await.unwrap();
    assert_eq!(stock(&mut client, &product).await, (6, 4));
    assert!(release(&mut client, &order).await.released_now);
    assert_eq!(stock(&mut client, &product).await, (10, 0));

    let late = reserve(&mut client, &order, &product, 4)
        .await
        .expect_err("a released order's reserve must not succeed");
    assert_eq!(late.code(), Code::Aborted, "{late:?}");
    assert_eq!(error_code(&late), Some("reservation_released"));
    // The order id reused with another quantity is still ALREADY_EXISTS.
    let other = reserve(&mut client, &order, &product, 5).await.unwrap_err();
    assert_eq!(other.code(), Code::AlreadyExists);
    assert_eq!(
        stock(&mut client, &product).await,
        (10, 0),
        "stock unchanged"
    );
    app.stop().await;
}

#[tokio::test]
async fn release_and_reserve_racing_never_leak_units() {
    let app = TestApp::spawn().await;
    let mut client = app.client().await;
    let product = product_with_stock(&mut client, 1000).await;
    let orders: Vec<String> = (0..60).map(|_| Uuid::now_v7().to_string()).collect();

    let races = orders.iter().map(|order| {
        let (mut a, mut b) = (client.clone(), client.clone());
        let (order, product) = (order.clone(), product.clone());
        async move {
            tokio::join!(
                async { reserve(&mut a, &order, &product, 3).await },
                async { release(&mut b, &order).await },
            )
        }
    });
    // A few races at a time: the subject is the ordering, not the pool size.
    let outcomes: Vec<_> = futures::stream::iter(races)
        .buffer_unordered(8)
        .collect()
        .await;
    for (reserved, _) in outcomes {
        if let Err(status) = reserved {
            assert_eq!(status.code(), Code::Aborted, "{status:?}");
        }
    }
    // Whichever came first, every order ends released: nothing is held.
    assert_eq!(stock(&mut client, &product).await, (1000, 0));
    app.stop().await;
}

#[tokio::test]
async fn a_committed_reservation_returns_its_units_once_when_released() {
    let app = TestApp::spawn().await;
    let mut client = app.client().await;
    let product = product_with_stock(&mut client, 10).await;
    let order = Uuid::now_v7().to_string();

    reserve(&mut client, &order, &product, 4).await.unwrap();
    assert_eq!(stock(&mut client, &product).await, (6, 4));
    let committed = client
        .commit(pb::CommitRequest {
            order_id: order.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        committed.reservation.unwrap().state,
        pb::ReservationState::Committed as i32
    );
    assert_eq!(
        stock(&mut client, &product).await,
        (6, 0),
        "committed units are no longer held"
    );
    // A replayed reserve of the committed order changes nothing.
    let replay = reserve(&mut client, &order, &product, 4).await.unwrap();
    assert_eq!(
        replay.reservation.unwrap().state,
        pb::ReservationState::Committed as i32
    );

    // Cancelling the order releases it: the units come back, once.
    let first = release(&mut client, &order).await;
    assert!(first.released_now);
    assert_eq!(stock(&mut client, &product).await, (10, 0));
    let second = release(&mut client, &order).await;
    assert!(!second.released_now);
    assert_eq!(
        second.reservation.unwrap().state,
        pb::ReservationState::Released as i32
    );
    assert_eq!(stock(&mut client, &product).await, (10, 0), "exactly once");
    // And a released reservation cannot be committed again.
    let commit = client
        .commit(pb::CommitRequest { order_id: order })
        .await
        .unwrap_err();
    assert_eq!(commit.code(), Code::FailedPrecondition);
    app.stop().await;
}

/// A new product's initial stock, recorded again (the product service
/// retrying a creation, or its background sync racing the creation): the
/// repeat answers the stock as it is and never puts back units that orders
/// took in between (an absolute SetStock did: the end-to-end test saw 3
/// reserved units reappear).
#[tokio::test]
async fn a_repeated_initial_stock_never_puts_back_reserved_units() {
    let app = TestApp::spawn().await;
    let mut client = app.client().await;
    let product_id = Uuid::now_v7().to_string();
    let init = |quantity| pb::SetStockRequest {
        product_id: product_id.clone(),
        quantity,
    };
    let first = client.init_stock(init(10)).await.expect("initial stock");
    assert_eq!(first.into_inner().stock.expect("stock").available, 10);
    let order = Uuid::now_v7().to_string();
    reserve(&mut client, &order, &product_id, 3)
        .await
        .expect("reserve");
    let again = client
        .init_stock(init(10))
        .await
        .expect("repeated initial stock");
    assert_eq!(
        again.into_inner().stock.expect("stock").available,
        7,
        "answered as it is"
    );
    assert_eq!(
        stock(&mut client, &product_id).await,
        (7, 3),
        "nothing put back"
    );
    app.stop().await;
}
