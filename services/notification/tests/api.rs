//! The HTTP API: owners see and mark their own notifications, nobody else's.

mod common;

use common::{TestApp, order_event};
use reqwest::{Method, StatusCode};
use stockmesh_platform::events::{ORDER_CANCELLED, ORDER_CONFIRMED};
use uuid::Uuid;

#[tokio::test]
async fn events_become_notifications_listed_for_their_owner_only() {
    let app = TestApp::spawn().await;
    let ada = Uuid::now_v7();
    let bob = Uuid::now_v7();
    let confirmed = order_event(ORDER_CONFIRMED, ada);
    let mut cancelled = order_event(ORDER_CANCELLED, ada);
    cancelled.data.order_id = confirmed.data.order_id;
    let bobs = order_event(ORDER_CONFIRMED, bob);
    app.publish(&confirmed).await;
    app.publish(&cancelled).await;
    app.publish(&bobs).await;
    for event in [&confirmed, &cancelled, &bobs] {
        app.wait_stored(event.id).await;
    }

    let page = app.list(ada).await;
    assert_eq!(page["total"], 2, "{page}");
    assert_eq!(page["limit"], 100);
    assert_eq!(page["offset"], 0);
    let items = page["items"].as_array().unwrap();
    // Newest first: the queue is FIFO and consumed in order.
    assert_eq!(items[0]["kind"], "order.cancelled", "{page}");
    assert_eq!(
        items[0]["message"],
        "Your order of 2 × Mug (25.00 EUR) was cancelled."
    );
    assert_eq!(items[1]["kind"], "order.confirmed");
    assert_eq!(
        items[1]["message"],
        "Your order of 2 × Mug (25.00 EUR) is confirmed."
    );
    assert_eq!(items[1]["order_id"], confirmed.data.order_id.to_string());
    assert!(items.iter().all(|n| n["read_at"].is_null()));

    let bob_page = app.list(bob).await;
    assert_eq!(bob_page["total"], 1, "{bob_page}");
    assert_eq!(
        bob_page["items"][0]["order_id"],
        bobs.data.order_id.to_string()
    );
    let stranger = app.list(Uuid::now_v7()).await;
    assert_eq!(stranger["total"], 0);
    assert_eq!(stranger["items"].as_array().unwrap().len(), 0);

    // Paging.
    let token = app.token(ada);
    let (status, one) = app
        .call(
            Method::GET,
            "/api/notifications?limit=1&offset=1",
            Some(&token),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one["total"], 2);
    assert_eq!(one["items"].as_array().unwrap().len(), 1);
    assert_eq!(one["items"][0]["kind"], "order.confirmed");
    for bad in ["limit=0", "limit=101", "offset=-1", "limit=many"] {
        let (status, body) = app
            .call(
                Method::GET,
                &format!("/api/notifications?{bad}"),
                Some(&token),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "invalid_query", "{bad}");
    }

    // No token, a bad token, a token from another key pair: 401.
    let (status, body) = app.call(Method::GET, "/api/notifications", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["code"], "unauthenticated");
    let (status, _) = app
        .call(Method::GET, "/api/notifications", Some("not-a-token"))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let forged =
        stockmesh_testkit::TestKeys::generate().token(ada, stockmesh_platform::auth::Role::User);
    let (status, _) = app
        .call(Method::GET, "/api/notifications", Some(&forged))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    app.stop().await;
}

#[tokio::test]
async fn marking_read_is_for_the_owner_and_idempotent() {
    let app = TestApp::spawn().await;
    let ada = Uuid::now_v7();
    let event = order_event(ORDER_CONFIRMED, ada);
    app.publish(&event).await;
    app.wait_stored(event.id).await;
    let page = app.list(ada).await;
    let id = page["items"][0]["id"].as_str().unwrap().to_owned();
    let path = format!("/api/notifications/{id}/read");

    // Someone else: as if it did not exist.
    let (status, body) = app
        .call(Method::POST, &path, Some(&app.token(Uuid::now_v7())))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["code"], "not_found");
    assert!(app.list(ada).await["items"][0]["read_at"].is_null());

    let token = app.token(ada);
    let (status, first) = app.call(Method::POST, &path, Some(&token)).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["id"], id.as_str());
    assert!(first["read_at"].is_string(), "{first}");
    let (status, again) = app.call(Method::POST, &path, Some(&token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        again["read_at"], first["read_at"],
        "the first read time is kept"
    );
    assert_eq!(app.list(ada).await["items"][0]["read_at"], first["read_at"]);

    let (status, _) = app
        .call(
            Method::POST,
            &format!("/api/notifications/{}/read", Uuid::now_v7()),
            Some(&token),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = app
        .call(
            Method::POST,
            "/api/notifications/not-a-uuid/read",
            Some(&token),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "invalid_path");
    let (status, _) = app.call(Method::POST, &path, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    app.stop().await;
}

#[tokio::test]
async fn openapi_document_and_operational_endpoints() {
    let app = TestApp::spawn().await;
    let (status, doc) = app
        .call(Method::GET, "/api/notifications/openapi.json", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        doc["paths"]["/api/notifications"]["get"].is_object(),
        "{doc}"
    );
    let read = &doc["paths"]["/api/notifications/{id}/read"]["post"];
    for code in ["200", "400", "401", "404", "503"] {
        assert!(read["responses"][code].is_object(), "{code} documented");
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    assert!(doc["components"]["schemas"]["ErrorBody"].is_object());

    let (status, ready) = app.readiness().await;
    assert_eq!(status, StatusCode::OK, "{ready}");
    let names: Vec<&str> = ready["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names, ["database", "broker"]);
    let (status, _) = app.call(Method::GET, "/healthz", None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = app.call(Method::GET, "/api/notifications/nope", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("stockmesh_notification_consumer_connected{service=\"notification\"} 1"),
        "{metrics}"
    );
    app.stop().await;
}
