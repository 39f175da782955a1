//! The catalog over real HTTP and gRPC, with a real inventory behind it.

mod common;

use std::time::Duration;

use common::TestApp;
use reqwest::{Method, StatusCode};
use serde_json::json;
use stockmesh_proto::product::v1 as pb;
use stockmesh_proto::product::v1::product_service_client::ProductServiceClient;

fn mug(name: &str, stock: i64) -> serde_json::Value {
    json!({"name": name, "description": "ceramic", "price": {"amount_minor": 1250, "currency": "EUR"}, "initial_stock": stock})
}

#[tokio::test]
async fn admin_manages_the_catalog_others_cannot() {
    let app = TestApp::spawn().await;
    let (status, created, _) = app
        .call(
            Method::POST,
            "/api/products",
            Some(&app.admin),
            Some(mug("Mug", 7)),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["stock"], 7);
    assert_eq!(
        created["price"],
        json!({"amount_minor": 1250, "currency": "EUR"})
    );
    let id = created["id"].as_str().unwrap().to_owned();
    let path = format!("/api/products/{id}");

    // Anyone reads; only admins write.
    let (status, got, _) = app.call(Method::GET, &path, None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (got["name"].as_str(), got["stock"].as_i64()),
        (Some("Mug"), Some(7))
    );
    for (method, body) in [
        (Method::POST, Some(mug("Other", 1))),
        (Method::PATCH, Some(json!({"name": "Cup"}))),
        (Method::DELETE, None),
    ] {
        let target = if method == Method::POST {
            "/api/products".to_owned()
        } else {
            path.clone()
        };
        let (status, _, _) = app.call(method.clone(), &target, None, body.clone()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "anonymous {method}");
        let (status, _, _) = app
            .call(method.clone(), &target, Some(&app.user), body)
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "user {method}");
    }
    let (status, _, _) = app
        .call(
            Method::PUT,
            &format!("{path}/stock"),
            Some(&app.user),
            Some(json!({"quantity": 1})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Names are unique among live products, ignoring case.
    let (status, body, _) = app
        .call(
            Method::POST,
            "/api/products",
            Some(&app.admin),
            Some(mug(" mug ", 1)),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    for bad in [
        json!({"name": "", "price": {"amount_minor": 1, "currency": "EUR"}}),
        json!({"name": "X", "price": {"amount_minor": -1, "currency": "EUR"}}),
        json!({"name": "X", "price": {"amount_minor": 1, "currency": "euro"}}),
        json!({"name": "X", "price": {"amount_minor": 1, "currency": "EUR"}, "initial_stock": -5}),
        json!({"name": "X", "price": {"amount_minor": 1.5, "currency": "EUR"}}),
        json!({"name": "X"}),
    ] {
        let (status, body, _) = app
            .call(
                Method::POST,
                "/api/products",
                Some(&app.admin),
                Some(bad.clone()),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad} -> {body}");
    }

    let (status, updated, _) = app
        .call(
            Method::PATCH,
            &path,
            Some(&app.admin),
            Some(json!({"name": "Big mug", "price": {"amount_minor": 1500, "currency": "EUR"}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(updated["price"]["amount_minor"], 1500);
    let (status, stock, _) = app
        .call(
            Method::PUT,
            &format!("{path}/stock"),
            Some(&app.admin),
            Some(json!({"quantity": 42})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{stock}");
    assert_eq!(stock["stock"], 42);
    let (status, page, _) = app
        .call(Method::GET, "/api/products?limit=10", None, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["total"], 1);
    assert_eq!(page["items"][0]["stock"], 42);

    let (status, _, _) = app
        .call(Method::DELETE, &path, Some(&app.admin), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _, _) = app.call(Method::GET, &path, None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // The name is free again once the product is deleted.
    let (status, _, _) = app
        .call(
            Method::POST,
            "/api/products",
            Some(&app.admin),
            Some(mug("Big mug", 0)),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _, _) = app
        .call(Method::GET, "/api/products/nope", None, None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    app.stop().await;
}

#[tokio::test]
async fn catalog_stays_up_while_inventory_is_down_and_stock_catches_up() {
    let app = TestApp::spawn().await;
    let (_, existing, _) = app
        .call(
            Method::POST,
            "/api/products",
            Some(&app.admin),
            Some(mug("Kettle", 3)),
        )
        .await;
    let existing_path = format!("/api/products/{}", existing["id"].as_str().unwrap());

    app.proxy.cut();
    let (status, got, _) = app.call(Method::GET, &existing_path, None, None).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the catalog answers without inventory"
    );
    assert!(got["stock"].is_null());
    assert_eq!(got["stock_reason"], "inventory unavailable");
    let (status, body, headers) = app
        .call(
            Method::PUT,
            &format!("{existing_path}/stock"),
            Some(&app.admin),
            Some(json!({"quantity": 9})),
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(headers.contains_key("retry-after"));
    assert_eq!(body["error"]["code"], "inventory_unavailable");

    // A product created during the outage exists at once, its stock follows.
    let (status, created, _) = app
        .call(
            Method::POST,
            "/api/products",
            Some(&app.admin),
            Some(mug("Teapot", 11)),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert!(created["stock"].is_null());
    let new_path = format!("/api/products/{}", created["id"].as_str().unwrap());

    app.proxy.restore();
    let (status, _, _) = app
        .call(
            Method::PUT,
            &format!("{existing_path}/stock"),
            Some(&app.admin),
            Some(json!({"quantity": 9})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "stock admin works again");
    let mut synced = false;
    for _ in 0..50 {
        let (_, got, _) = app.call(Method::GET, &new_path, None, None).await;
        if got["stock"] == 11 {
            synced = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        synced,
        "the stock sync recorded the initial stock after the outage"
    );
    let pool = app.db.pool().await;
    let pending: i64 =
        sqlx::query_scalar("SELECT count(*) FROM products WHERE stock_status = 'pending'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(pending, 0);
    let inventory_pool = app.inventory.db.pool().await;
    let records: i64 = sqlx::query_scalar("SELECT count(*) FROM stock")
        .fetch_one(&inventory_pool)
        .await
        .unwrap();
    assert_eq!(records, 2, "every product has exactly one stock record");
    app.stop().await;
}

#[tokio::test]
async fn grpc_serves_the_order_service() {
    let app = TestApp::spawn().await;
    let (_, a, _) = app
        .call(
            Method::POST,
            "/api/products",
            Some(&app.admin),
            Some(mug("Plate", 1)),
        )
        .await;
    let (_, b, _) = app
        .call(
            Method::POST,
            "/api/products",
            Some(&app.admin),
            Some(mug("Bowl", 1)),
        )
        .await;
    let (a, b) = (
        a["id"].as_str().unwrap().to_owned(),
        b["id"].as_str().unwrap().to_owned(),
    );
    let mut client = ProductServiceClient::connect(format!("http://{}", app.grpc_addr))
        .await
        .unwrap();
    let product = client
        .get_product(pb::GetProductRequest { id: a.clone() })
        .await
        .unwrap()
        .into_inner()
        .product
        .unwrap();
    assert_eq!(product.name, "Plate");
    assert_eq!(
        product.price.unwrap(),
        pb::Money {
            amount_minor: 1250,
            currency: "EUR".into()
        }
    );
    let missing = uuid::Uuid::now_v7().to_string();
    let status = client
        .get_product(pb::GetProductRequest {
            id: missing.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    let status = client
        .get_product(pb::GetProductRequest { id: "bad".into() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    app.call(
        Method::DELETE,
        &format!("/api/products/{b}"),
        Some(&app.admin),
        None,
    )
    .await;
    let many = client
        .get_products(pb::GetProductsRequest {
            ids: vec![a.clone(), b, missing],
        })
        .await
        .unwrap()
        .into_inner()
        .products;
    assert_eq!(
        many.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
        vec![a.as_str()],
        "deleted and unknown are absent"
    );
    app.stop().await;
}

#[tokio::test]
async fn the_catalog_is_searched_by_name_and_description_literally() {
    let app = TestApp::spawn().await;
    for (name, description) in [
        ("Blue Mug", "ceramic"),
        ("Teapot", "holds a mug's worth"),
        ("100% Cotton Bag", "tote"),
        ("Plate", "stoneware"),
    ] {
        let mut body = mug(name, 1);
        body["description"] = json!(description);
        let (status, created, _) = app
            .call(Method::POST, "/api/products", Some(&app.admin), Some(body))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
    }
    let names = |body: &serde_json::Value| -> Vec<String> {
        body["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter_map(|p| p["name"].as_str().map(str::to_owned))
            .collect()
    };
    let (status, body, _) = app
        .call(Method::GET, "/api/products?q=MUG", None, None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        names(&body),
        ["Blue Mug", "Teapot"],
        "name or description, any case"
    );
    assert_eq!(body["total"], 2);
    // `%` and `_` are literal text, not wildcards.
    let (_, body, _) = app
        .call(Method::GET, "/api/products?q=0%25", None, None)
        .await;
    assert_eq!(names(&body), ["100% Cotton Bag"]);
    let (_, body, _) = app.call(Method::GET, "/api/products?q=_", None, None).await;
    assert_eq!(body["total"], 0, "{body}");
    let (_, body, _) = app
        .call(Method::GET, "/api/products?q=%20", None, None)
        .await;
    assert_eq!(body["total"], 4, "a blank search lists everything");
    let (status, body, _) = app
        .call(Method::GET, "/api/products?q=mug%00", None, None)
        .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "a NUL is refused, not a 500: {body}"
    );
    let long = "x".repeat(101);
    let (status, body, _) = app
        .call(Method::GET, &format!("/api/products?q={long}"), None, None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("100 characters")),
        "{body}"
    );
    app.stop().await;
}
