//! Spawns the real user application on a random port against a fresh
//! database, with a fresh key pair and a configured first admin.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;

use reqwest::StatusCode;
use serde_json::{Value, json};
use stockmesh_platform::Shutdown;
use stockmesh_platform::config::EnvReader;
use stockmesh_testkit::TestDatabase;
use stockmesh_user::config::UserConfig;
use stockmesh_user::startup::Application;

pub const ADMIN_EMAIL: &str = "admin@stockmesh.test";
pub const ADMIN_PASSWORD: &str = "admin-password-1";

pub struct TestApp {
    pub db: TestDatabase,
    pub addr: SocketAddr,
    pub private_pem: String,
    pub public_pem: String,
    pub shutdown: Shutdown,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
    pub http: reqwest::Client,
}

pub fn config(
    db_url: &str,
    private_pem: &str,
    public_pem: &str,
    extra: &[(&str, &str)],
) -> UserConfig {
    let mut vars: HashMap<String, String> = [
        ("HTTP_ADDR", "127.0.0.1:0"),
        ("DATABASE_URL", db_url),
        ("JWT_PRIVATE_KEY", private_pem),
        ("JWT_PUBLIC_KEY", public_pem),
        ("STOCKMESH_ADMIN_EMAIL", ADMIN_EMAIL),
        ("STOCKMESH_ADMIN_PASSWORD", ADMIN_PASSWORD),
        ("LOGIN_RATE_PER_CLIENT", "1000"),
        ("REGISTER_RATE_PER_CLIENT", "1000"),
        ("LOGIN_BACKOFF_AFTER_FAILURES", "1000"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    for (k, v) in extra {
        vars.insert((*k).to_owned(), (*v).to_owned());
    }
    UserConfig::read(EnvReader::from_map(vars)).expect("valid test configuration")
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(&[]).await
    }

    pub async fn spawn_with(extra: &[(&str, &str)]) -> Self {
        let db = TestDatabase::create().await;
        let (private_pem, public_pem) = stockmesh_platform::auth::generate_keypair().unwrap();
        let app = Application::build(config(&db.url, &private_pem, &public_pem, extra))
            .await
            .expect("application builds");
        let addr = app.http_addr();
        let shutdown = Shutdown::new();
        let task = tokio::spawn(app.run_until_stopped(shutdown.clone()));
        Self {
            db,
            addr,
            private_pem,
            public_pem,
            shutdown,
            task,
            http: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn register(&self, email: &str, password: &str, name: &str) -> (StatusCode, Value) {
        let response = self
            .http
            .post(self.url("/api/users/register"))
            .json(&json!({"email": email, "password": password, "name": name}))
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn login(&self, email: &str, password: &str) -> (StatusCode, Value) {
        let response = self
            .http
            .post(self.url("/api/users/login"))
            .json(&json!({"email": email, "password": password}))
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Registers a fresh user and returns `(id, token)`.
    pub async fn user(&self, name: &str) -> (String, String) {
        let email = format!("{name}-{}@example.com", uuid::Uuid::new_v4().simple());
        let (status, body) = self.register(&email, "a-good-password", name).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let (status, login) = self.login(&email, "a-good-password").await;
        assert_eq!(status, StatusCode::OK, "{login}");
        (
            body["id"].as_str().unwrap().to_owned(),
            login["token"].as_str().unwrap().to_owned(),
        )
    }

    pub async fn admin_token(&self) -> String {
        let (status, body) = self.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["token"].as_str().unwrap().to_owned()
    }

    /// `(status, json body)` of an authenticated request.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn stop(self) {
        self.shutdown.trigger();
        self.task.await.expect("joins").expect("stops cleanly");
    }
}
