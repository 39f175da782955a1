//! Sessions end when they should. Every access token names a session the
//! user service keeps; demotion, deletion, a password change and logout end
//! sessions, and the user service refuses their tokens at once. Refresh
//! tokens rotate, and presenting a spent one ends the whole session (theft
//! detection). Credential changes ask for the current password.

mod common;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{ADMIN_EMAIL, ADMIN_PASSWORD, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const PASSWORD: &str = "a-good-password";

/// Registers `name` with [`PASSWORD`]; returns `(id, email)`.
async fn account(app: &TestApp, name: &str) -> (String, String) {
    let email = format!("{name}-{}@example.com", uuid::Uuid::new_v4().simple());
    let (status, body) = app.register(&email, PASSWORD, name).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    (body["id"].as_str().unwrap().to_owned(), email)
}

/// The whole login answer (token, refresh token, user).
async fn login(app: &TestApp, email: &str, password: &str) -> Value {
    let (status, body) = app.login(email, password).await;
    assert_eq!(status, StatusCode::OK, "login of {email}: {body}");
    body
}

fn token(login: &Value) -> &str {
    login["token"].as_str().expect("an access token")
}

fn refresh_token(login: &Value) -> &str {
    login["refresh_token"].as_str().expect("a refresh token")
}

/// `POST /api/users/refresh` with the refresh token in the body.
async fn refresh(app: &TestApp, refresh_token: &str) -> (StatusCode, Value) {
    app.call(
        Method::POST,
        "/api/users/refresh",
        None,
        Some(json!({"refresh_token": refresh_token})),
    )
    .await
}

async fn me(app: &TestApp, token: &str) -> StatusCode {
    app.call(Method::GET, "/api/users/me", Some(token), None)
        .await
        .0
}

fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a JWT");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

#[tokio::test]
async fn a_demoted_admin_loses_admin_rights_at_once() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let (bob_id, bob_email) = account(&app, "bob").await;
    let bob_path = format!("/api/users/{bob_id}");
    let (status, body) = app
        .call(
            Method::PATCH,
            &bob_path,
            Some(&admin),
            Some(json!({"role": "admin"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let bob = login(&app, &bob_email, PASSWORD).await;
    let (status, _) = app
        .call(Method::GET, "/api/users", Some(token(&bob)), None)
        .await;
    assert_eq!(status, StatusCode::OK, "Bob is an admin");

    let (status, body) = app
        .call(
            Method::PATCH,
            &bob_path,
            Some(&admin),
            Some(json!({"role": "user"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // No waiting: the very next request with Bob's admin token fails.
    let (status, body) = app
        .call(Method::GET, "/api/users", Some(token(&bob)), None)
        .await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the demoted admin's token: {body}"
    );
    assert_eq!(body["error"]["code"], "session_ended", "{body}");
    let (status, body) = refresh(&app, refresh_token(&bob)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");

    // Logging in again gives Bob what he is now: a user.
    let bob = login(&app, &bob_email, PASSWORD).await;
    assert_eq!(claims(token(&bob))["role"], "user");
    let (status, _) = app
        .call(Method::GET, "/api/users", Some(token(&bob)), None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    app.stop().await;
}

#[tokio::test]
async fn a_deleted_users_token_is_refused_at_once() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let (alice_id, alice_email) = account(&app, "alice").await;
    let alice = login(&app, &alice_email, PASSWORD).await;
    assert_eq!(me(&app, token(&alice)).await, StatusCode::OK);
    let (status, _) = app
        .call(
            Method::DELETE,
            &format!("/api/users/{alice_id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(me(&app, token(&alice)).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        refresh(&app, refresh_token(&alice)).await.0,
        StatusCode::UNAUTHORIZED
    );

    // Deleting yourself ends your session too.
    let (carol_id, carol_email) = account(&app, "carol").await;
    let carol = login(&app, &carol_email, PASSWORD).await;
    let (status, _) = app
        .call(
            Method::DELETE,
            &format!("/api/users/{carol_id}"),
            Some(token(&carol)),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(me(&app, token(&carol)).await, StatusCode::UNAUTHORIZED);
    app.stop().await;
}

#[tokio::test]
async fn a_password_change_ends_every_session_of_the_account() {
    let app = TestApp::spawn().await;
    let (id, email) = account(&app, "dana").await;
    let laptop = login(&app, &email, PASSWORD).await;
    let phone = login(&app, &email, PASSWORD).await;
    let (status, body) = app
        .call(
            Method::PATCH,
            &format!("/api/users/{id}"),
            Some(token(&laptop)),
            Some(json!({"password": "a-new-password", "current_password": PASSWORD})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for (device, session) in [("laptop", &laptop), ("phone", &phone)] {
        assert_eq!(
            me(&app, token(session)).await,
            StatusCode::UNAUTHORIZED,
            "{device}'s old access token"
        );
        assert_eq!(
            refresh(&app, refresh_token(session)).await.0,
            StatusCode::UNAUTHORIZED,
            "{device}'s old refresh token"
        );
    }
    let (status, _) = app.login(&email, PASSWORD).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "the old password");
    let fresh = login(&app, &email, "a-new-password").await;
    assert_eq!(me(&app, token(&fresh)).await, StatusCode::OK);

    // An admin resetting someone's password ends that account's sessions.
    let admin = app.admin_token().await;
    let (status, body) = app
        .call(
            Method::PATCH,
            &format!("/api/users/{id}"),
            Some(&admin),
            Some(json!({"password": "reset-by-admin"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(me(&app, token(&fresh)).await, StatusCode::UNAUTHORIZED);
    assert_eq!(me(&app, &admin).await, StatusCode::OK, "not the admin's");
    app.stop().await;
}

#[tokio::test]
async fn logout_ends_the_bearer_token_and_the_refresh_token() {
    let app = TestApp::spawn().await;
    let (_, email) = account(&app, "erin").await;
    let this = login(&app, &email, PASSWORD).await;
    let other = login(&app, &email, PASSWORD).await;
    let (status, _) = app
        .call(Method::POST, "/api/users/logout", Some(token(&this)), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(me(&app, token(&this)).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        refresh(&app, refresh_token(&this)).await.0,
        StatusCode::UNAUTHORIZED
    );
    // Only that session: the account's other one lives on.
    assert_eq!(me(&app, token(&other)).await, StatusCode::OK);

    // An API client whose access token has expired logs out with its
    // refresh token; a browser with its cookies.
    let (status, _) = app
        .call(
            Method::POST,
            "/api/users/logout",
            None,
            Some(json!({"refresh_token": refresh_token(&other)})),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(me(&app, token(&other)).await, StatusCode::UNAUTHORIZED);

    let browser = reqwest::Client::builder()
        .cookie_store(true)
        .build()
        .unwrap();
    let response = browser
        .post(app.url("/api/users/login"))
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    let bearer = token(&body).to_owned();
    let response = browser
        .post(app.url("/api/users/logout"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let cleared: Vec<String> = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert!(
        cleared
            .iter()
            .any(|c| c.starts_with("stockmesh_session=;") && c.contains("Max-Age=0"))
            && cleared
                .iter()
                .any(|c| c.starts_with("stockmesh_refresh=;") && c.contains("Max-Age=0")),
        "{cleared:?}"
    );
    assert_eq!(me(&app, &bearer).await, StatusCode::UNAUTHORIZED);

    // Logging out twice, or without any session, is still 204.
    let (status, _) = app
        .call(Method::POST, "/api/users/logout", Some(&bearer), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    app.stop().await;
}

#[tokio::test]
async fn credential_changes_ask_for_the_current_password() {
    let app = TestApp::spawn().await;
    let (id, email) = account(&app, "frank").await;
    let session = login(&app, &email, PASSWORD).await;
    let path = format!("/api/users/{id}");
    let patch = |body: Value| app.call(Method::PATCH, &path, Some(token(&session)), Some(body));

    for body in [
        json!({"password": "stolen-session-pw"}),
        json!({"email": "thief@example.com"}),
    ] {
        let (status, answer) = patch(body.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {answer}");
        assert_eq!(answer["error"]["code"], "current_password_required");
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .contains("current_password"),
            "{answer}"
        );
        let mut wrong = body.clone();
        wrong["current_password"] = json!("not-my-password");
        let (status, answer) = patch(wrong).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}: {answer}");
        assert_eq!(answer["error"]["code"], "current_password_incorrect");
    }
    // Nothing changed: the old password still logs in, the email is the same.
    let check = login(&app, &email, PASSWORD).await;
    assert_eq!(check["user"]["email"], email.as_str());

    // The name is not a credential; the email with the password is fine.
    let (status, body) = patch(json!({"name": "Frank F."})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let new_email = format!("frank-new-{}@example.com", uuid::Uuid::new_v4().simple());
    let (status, body) = patch(json!({"email": new_email, "current_password": PASSWORD})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["email"], new_email.as_str());
    // An email change keeps the session (the password did not change).
    assert_eq!(me(&app, token(&session)).await, StatusCode::OK);

    // An admin changing their own password is asked like anyone.
    let admin = app.admin_token().await;
    let (_, admin_me) = app
        .call(Method::GET, "/api/users/me", Some(&admin), None)
        .await;
    let (status, body) = app
        .call(
            Method::PATCH,
            &format!("/api/users/{}", admin_me["id"].as_str().unwrap()),
            Some(&admin),
            Some(json!({"password": "admin-new-password"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (status, _) = app.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    assert_eq!(status, StatusCode::OK);
    app.stop().await;
}

#[tokio::test]
async fn refresh_rotates_and_a_reused_refresh_token_ends_the_session() {
    let app = TestApp::spawn().await;
    let (_, email) = account(&app, "gina").await;
    let first = login(&app, &email, PASSWORD).await;
    let access = claims(token(&first));
    let sid = access["sid"].as_str().expect("the token names its session");
    assert_eq!(
        access["exp"].as_i64().unwrap() - access["iat"].as_i64().unwrap(),
        300,
        "access tokens live JWT_TTL_SECONDS (default 300): the bound for offline verifiers"
    );

    let (status, second) = refresh(&app, refresh_token(&first)).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_ne!(refresh_token(&second), refresh_token(&first), "rotated");
    assert_eq!(claims(token(&second))["sid"].as_str(), Some(sid));
    assert_eq!(second["user"]["email"], email.as_str());
    assert_eq!(me(&app, token(&second)).await, StatusCode::OK);
    let (status, third) = refresh(&app, refresh_token(&second)).await;
    assert_eq!(status, StatusCode::OK, "{third}");

    // The first refresh token again: someone holds a copy. The whole
    // session ends, whoever holds its newest tokens.
    let (status, body) = refresh(&app, refresh_token(&first)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"]["code"], "refresh_token_reused");
    assert_eq!(me(&app, token(&third)).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        refresh(&app, refresh_token(&third)).await.0,
        StatusCode::UNAUTHORIZED
    );
    // Garbage and absent refresh tokens are plain 401s.
    assert_eq!(
        refresh(&app, "not-a-refresh-token").await.0,
        StatusCode::UNAUTHORIZED
    );
    let (status, _) = app
        .call(Method::POST, "/api/users/refresh", None, None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // A browser refreshes with its cookie, scoped to the user service.
    let browser = reqwest::Client::builder()
        .cookie_store(true)
        .build()
        .unwrap();
    let response = browser
        .post(app.url("/api/users/login"))
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    let cookie = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|c| c.starts_with("stockmesh_refresh="))
        .expect("a refresh cookie");
    assert!(
        cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Strict")
            && cookie.contains("Path=/api/users/"),
        "{cookie}"
    );
    let response = browser
        .post(app.url("/api/users/refresh"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(me(&app, token(&body)).await, StatusCode::OK);
    app.stop().await;
}

#[tokio::test]
async fn tokens_without_a_live_session_are_refused_by_the_user_service() {
    // A token signed with the right key but naming no session (as other
    // services' tests mint them) is fine offline, not here.
    let app = TestApp::spawn().await;
    let (id, _) = account(&app, "hank").await;
    let keys = stockmesh_testkit::TestKeys {
        private_pem: app.private_pem.clone(),
        public_pem: app.public_pem.clone(),
    };
    let minted = keys.token(id.parse().unwrap(), stockmesh_platform::auth::Role::Admin);
    let (status, body) = app
        .call(Method::GET, "/api/users", Some(&minted), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    app.stop().await;
}

#[tokio::test]
async fn a_refresh_racing_another_tab_is_refused_without_ending_the_session() {
    let app = TestApp::spawn().await;
    let (_, email) = account(&app, "ivan").await;
    let first = login(&app, &email, PASSWORD).await;
    // Two tabs hold the same cookie and refresh at once: one wins.
    let (a, b) = tokio::join!(
        refresh(&app, refresh_token(&first)),
        refresh(&app, refresh_token(&first))
    );
    let (winner, loser) = if a.0 == StatusCode::OK {
        (a, b)
    } else {
        (b, a)
    };
    assert_eq!(winner.0, StatusCode::OK, "{}", winner.1);
    assert_eq!(loser.0, StatusCode::UNAUTHORIZED, "{}", loser.1);
    assert_eq!(loser.1["error"]["code"], "refresh_token_rotated");
    // The session lives on with the winner's tokens.
    assert_eq!(me(&app, token(&winner.1)).await, StatusCode::OK);

    // The same spent token long after the rotation is a copy, not a race.
    let pool = app.db.pool().await;
    sqlx::query(
        "UPDATE refresh_tokens SET used_at = now() - interval '1 minute' WHERE used_at IS NOT NULL",
    )
    .execute(&pool)
    .await
    .unwrap();
    let (status, body) = refresh(&app, refresh_token(&first)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"]["code"], "refresh_token_reused");
    assert_eq!(me(&app, token(&winner.1)).await, StatusCode::UNAUTHORIZED);
    app.stop().await;
}

#[tokio::test]
async fn a_stolen_session_cannot_guess_the_current_password_quickly() {
    let app = TestApp::spawn_with(&[
        ("LOGIN_BACKOFF_AFTER_FAILURES", "2"),
        ("LOGIN_BACKOFF_BASE_MS", "60000"),
    ])
    .await;
    let (id, email) = account(&app, "judy").await;
    let stolen = login(&app, &email, PASSWORD).await;
    let owners = login(&app, &email, PASSWORD).await;
    let path = format!("/api/users/{id}");
    let change = |session: &Value, current: &str| {
        let bearer = token(session).to_owned();
        let body = json!({"password": "taken-over-pw", "current_password": current});
        let (app, path) = (&app, &path);
        async move {
            app.call(Method::PATCH, path, Some(&bearer), Some(body))
                .await
        }
    };
    let mut statuses = Vec::new();
    for guess in ["guess-1", "guess-2", "guess-3", PASSWORD] {
        statuses.push(change(&stolen, guess).await.0.as_u16());
    }
    assert_eq!(
        statuses,
        [403, 403, 429, 429],
        "then even the right one waits"
    );
    // The owner's own session is not slowed by the thief's guesses.
    let (status, body) = change(&owners, PASSWORD).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    app.stop().await;
}

#[tokio::test]
async fn the_openapi_document_describes_sessions() {
    let app = TestApp::spawn().await;
    let (status, doc) = app
        .call(Method::GET, "/api/users/openapi.json", None, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let refresh = &doc["paths"]["/api/users/refresh"]["post"];
    assert_eq!(
        refresh["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/LoginResponse"
    );
    assert!(refresh["responses"]["401"].is_object());
    for path in ["/api/users/refresh", "/api/users/logout"] {
        let body = &doc["paths"][path]["post"]["requestBody"];
        assert_ne!(body["required"], true, "{path}: the cookie may stand in");
    }
    let login = &doc["components"]["schemas"]["LoginResponse"];
    for field in ["token", "refresh_token", "refresh_expires_at"] {
        assert!(
            login["required"]
                .as_array()
                .unwrap()
                .contains(&json!(field)),
            "{field}"
        );
    }
    assert!(
        doc["components"]["schemas"]["UpdateUserRequest"]["properties"]["current_password"]
            .is_object()
    );
    app.stop().await;
}
