//! Register, login, me, and the account rules, over real HTTP into real
//! PostgreSQL.

mod common;

use common::{ADMIN_EMAIL, ADMIN_PASSWORD, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test]
async fn register_login_me_with_bearer_and_cookie() {
    let app = TestApp::spawn().await;
    let (status, user) = app
        .register("  Ada@Example.COM ", "correct horse battery", "Ada")
        .await;
    assert_eq!(status, StatusCode::CREATED, "{user}");
    assert_eq!(user["email"], "ada@example.com");
    assert_eq!(user["role"], "user");
    assert!(user.get("password_hash").is_none() && user.get("password").is_none());

    let response = app
        .http
        .post(app.url("/api/users/login"))
        .json(&json!({"email": "ADA@example.com", "password": "correct horse battery"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let cookie = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(cookie.starts_with("stockmesh_session="), "{cookie}");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    assert!(
        !cookie.contains("Secure"),
        "Secure is off unless configured"
    );
    let body: serde_json::Value = response.json().await.unwrap();
    let token = body["token"].as_str().unwrap();
    assert!(body["expires_at"].is_string());

    let (status, me) = app
        .call(Method::GET, "/api/users/me", Some(token), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["id"], user["id"]);

    // The cookie alone authenticates too.
    let cookie_value = cookie.split(';').next().unwrap();
    let me = app
        .http
        .get(app.url("/api/users/me"))
        .header("cookie", cookie_value)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), StatusCode::OK);

    let (status, _) = app.call(Method::GET, "/api/users/me", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    app.stop().await;
}

#[tokio::test]
async fn registration_rules_answer_clearly_and_store_nothing() {
    let app = TestApp::spawn().await;
    let (status, _) = app
        .register("dup@example.com", "long enough pw", "Dup")
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = app
        .register(" DUP@example.com", "another password", "Dup 2")
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "email_taken");

    for (email, password, name, what) in [
        ("not-an-email", "long enough pw", "X", "email"),
        ("x@example.com", "short", "X", "password"),
        ("x@example.com", "long enough pw", "   ", "name"),
        ("x@example.com", &"p".repeat(129), "X", "password"),
    ] {
        let (status, body) = app.register(email, password, name).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{what}: {body}");
        assert!(
            body["error"]["message"].as_str().unwrap().contains(what),
            "{body}"
        );
    }
    let malformed = app
        .http
        .post(app.url("/api/users/register"))
        .header("content-type", "application/json")
        .body("{\"email\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);
    let body: serde_json::Value = malformed.json().await.unwrap();
    assert_eq!(body["error"]["code"], "malformed_json");
    let (status, _) = app
        .call(
            Method::POST,
            "/api/users/register",
            None,
            Some(json!({"email": "y@example.com"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    let pool = app.db.pool().await;
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(count, 2, "the admin and the one valid registration");
    app.stop().await;
}

#[tokio::test]
async fn roles_and_ownership_are_enforced() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let (a_id, a_token) = app.user("alice").await;
    let (b_id, _b_token) = app.user("bob").await;

    // Listing is for admins only.
    let (status, _) = app.call(Method::GET, "/api/users", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = app
        .call(Method::GET, "/api/users", Some(&a_token), None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, page) = app
        .call(Method::GET, "/api/users?limit=2", Some(&admin), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["total"], 3);
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    let (status, _) = app
        .call(Method::GET, "/api/users?limit=0", Some(&admin), None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Alice cannot read, change or delete Bob: to her he does not exist.
    let b_path = format!("/api/users/{b_id}");
    for (method, body) in [
        (Method::GET, None),
        (Method::PATCH, Some(json!({"name": "Mallory"}))),
        (Method::DELETE, None),
    ] {
        let (status, _) = app
            .call(method.clone(), &b_path, Some(&a_token), body)
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} on another user");
    }
    // Alice cannot make herself an admin.
    let a_path = format!("/api/users/{a_id}");
    let (status, _) = app
        .call(
            Method::PATCH,
            &a_path,
            Some(&a_token),
            Some(json!({"role": "admin"})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, me) = app
        .call(
            Method::PATCH,
            &a_path,
            Some(&a_token),
            Some(json!({"name": "Alice L."})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (me["name"].as_str(), me["role"].as_str()),
        (Some("Alice L."), Some("user"))
    );

    // The admin promotes Bob, reads him, deletes Alice.
    let (status, bob) = app
        .call(
            Method::PATCH,
            &b_path,
            Some(&admin),
            Some(json!({"role": "admin"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(bob["role"], "admin");
    let (status, _) = app.call(Method::DELETE, &a_path, Some(&admin), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = app.call(Method::GET, &a_path, Some(&admin), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app
        .call(Method::GET, "/api/users/not-a-uuid", Some(&admin), None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    app.stop().await;
}

#[tokio::test]
async fn the_last_admin_stays_and_bootstrap_is_idempotent() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let (_, me) = app
        .call(Method::GET, "/api/users/me", Some(&admin), None)
        .await;
    let admin_path = format!("/api/users/{}", me["id"].as_str().unwrap());
    let (status, body) = app
        .call(
            Method::PATCH,
            &admin_path,
            Some(&admin),
            Some(json!({"role": "user"})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, _) = app
        .call(Method::DELETE, &admin_path, Some(&admin), None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT);

    // A restart with the same configuration creates no second admin.
    let url = app.db.url.clone();
    let again = stockmesh_user::startup::Application::build(common::config(
        &url,
        &app.private_pem,
        &app.public_pem,
        &[("STOCKMESH_ADMIN_PASSWORD", "a-different-password")],
    ))
    .await
    .unwrap();
    drop(again);
    let pool = app.db.pool().await;
    let admins: i64 = sqlx::query_scalar("SELECT count(*) FROM users WHERE role = 'admin'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(admins, 1);
    // ...and does not reset the existing admin's password.
    let (status, _) = app.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    assert_eq!(status, StatusCode::OK);
    let (status, doc) = app
        .call(Method::GET, "/api/users/openapi.json", None, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["paths"]["/api/users/login"].is_object());
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    let _ = ADMIN_EMAIL;
    app.stop().await;
}
