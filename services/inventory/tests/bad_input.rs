//! Every malformed request gets the right gRPC code and changes nothing.

mod common;

use common::{TestApp, snapshot};
use stockmesh_proto::inventory::v1 as pb;
use tonic::Code;
use uuid::Uuid;

#[tokio::test]
async fn malformed_requests_are_refused_and_change_nothing() {
    let app = TestApp::spawn().await;
    let mut client = app.client().await;
    let product = Uuid::now_v7().to_string();
    client
        .set_stock(pb::SetStockRequest {
            product_id: product.clone(),
            quantity: 20,
        })
        .await
        .unwrap();
    let held = Uuid::now_v7().to_string();
    client
        .reserve(pb::ReserveRequest {
            order_id: held.clone(),
            product_id: product.clone(),
            quantity: 2,
        })
        .await
        .unwrap();
    let pool = app.db.pool().await;
    let before = snapshot(&pool).await;
    let order = || Uuid::now_v7().to_string();

    let cases: Vec<(&str, pb::ReserveRequest, Code)> = vec![
        (
            "zero quantity",
            pb::ReserveRequest {
                order_id: order(),
                product_id: product.clone(),
                quantity: 0,
            },
            Code::InvalidArgument,
        ),
        (
            "negative quantity",
            pb::ReserveRequest {
                order_id: order(),
                product_id: product.clone(),
                quantity: -3,
            },
            Code::InvalidArgument,
        ),
        (
            "huge quantity",
            pb::ReserveRequest {
                order_id: order(),
                product_id: product.clone(),
                quantity: i64::MAX,
            },
            Code::InvalidArgument,
        ),
        (
            "just over the maximum",
            pb::ReserveRequest {
                order_id: order(),
                product_id: product.clone(),
                quantity: 1_000_000_001,
            },
            Code::InvalidArgument,
        ),
        (
            "empty order id",
            pb::ReserveRequest {
                order_id: String::new(),
                product_id: product.clone(),
                quantity: 1,
            },
            Code::InvalidArgument,
        ),
        (
            "malformed order id",
            pb::ReserveRequest {
                order_id: "order-1".into(),
                product_id: product.clone(),
                quantity: 1,
            },
            Code::InvalidArgument,
        ),
        (
            "malformed product id",
            pb::ReserveRequest {
                order_id: order(),
                product_id: "'; DROP TABLE stock; --".into(),
                quantity: 1,
            },
            Code::InvalidArgument,
        ),
        (
            "empty product id",
            pb::ReserveRequest {
                order_id: order(),
                product_id: String::new(),
                quantity: 1,
            },
            Code::InvalidArgument,
        ),
        (
            "unknown product",
            pb::ReserveRequest {
                order_id: order(),
                product_id: Uuid::now_v7().to_string(),
                quantity: 1,
            },
            Code::NotFound,
        ),
        (
            "more than available",
            pb::ReserveRequest {
                order_id: order(),
                product_id: product.clone(),
                quantity: 19,
            },
            Code::FailedPrecondition,
        ),
        (
            "order id reused for another product",
            pb::ReserveRequest {
                order_id: held.clone(),
                product_id: Uuid::now_v7().to_string(),
                quantity: 2,
            },
            Code::AlreadyExists,
        ),
    ];
    for (name, request, code) in cases {
        let status = client.reserve(request).await.expect_err(name);
        assert_eq!(status.code(), code, "{name}: {status:?}");
        assert!(!status.message().is_empty(), "{name}: readable message");
        assert!(
            !status.message().contains("SQL"),
            "{name}: no database text leaks"
        );
    }

    let status = client
        .release(pb::ReleaseRequest {
            order_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = client
        .commit(pb::CommitRequest {
            order_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = client
        .get_stock(pb::GetStockRequest {
            product_id: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = client
        .get_stock(pb::GetStockRequest {
            product_id: Uuid::now_v7().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = client
        .get_stocks(pb::GetStocksRequest {
            product_ids: vec![product.clone(), "bad".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = client
        .get_stocks(pb::GetStocksRequest {
            product_ids: (0..1001).map(|_| Uuid::now_v7().to_string()).collect(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    for quantity in [-1, i64::MIN, 1_000_000_001] {
        let status = client
            .set_stock(pb::SetStockRequest {
                product_id: product.clone(),
                quantity,
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "set_stock {quantity}");
    }
    for delta in [0, i64::MIN, i64::MAX] {
        let status = client
            .adjust_stock(pb::AdjustStockRequest {
                product_id: product.clone(),
                delta,
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "adjust_stock {delta}");
    }
    let status = client
        .adjust_stock(pb::AdjustStockRequest {
            product_id: product.clone(),
            delta: -19,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    let status = client
        .adjust_stock(pb::AdjustStockRequest {
            product_id: product.clone(),
            delta: 1_000_000_000,
        })
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::FailedPrecondition,
        "would exceed the maximum"
    );

    assert_eq!(
        snapshot(&pool).await,
        before,
        "no refused request changed a table"
    );
    app.stop().await;
}
