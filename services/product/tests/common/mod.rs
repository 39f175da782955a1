//! Spawns the real product application against a fresh database, wired to
//! a real inventory (its own fresh database) through a proxy the test can cut.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;

use reqwest::{Method, StatusCode};
use serde_json::Value;
use stockmesh_platform::Shutdown;
use stockmesh_platform::auth::Role;
use stockmesh_platform::config::EnvReader;
use stockmesh_product::config::ProductConfig;
use stockmesh_product::startup::Application;
use stockmesh_testkit::{TcpProxy, TestDatabase, TestKeys};

pub struct Inventory {
    pub db: TestDatabase,
    pub grpc_addr: SocketAddr,
    pub shutdown: Shutdown,
}

impl Inventory {
    pub async fn spawn() -> Self {
        let db = TestDatabase::create().await;
        let vars: HashMap<String, String> = [
            ("HTTP_ADDR", "127.0.0.1:0"),
            ("GRPC_ADDR", "127.0.0.1:0"),
            ("DATABASE_URL", db.url.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let config =
            stockmesh_inventory::config::InventoryConfig::read(EnvReader::from_map(vars)).unwrap();
        let app = stockmesh_inventory::startup::Application::build(config)
            .await
            .unwrap();
        let grpc_addr = app.grpc_addr();
        let shutdown = Shutdown::new();
        tokio::spawn(app.run_until_stopped(shutdown.clone()));
        Self {
            db,
            grpc_addr,
            shutdown,
        }
    }
}

pub struct TestApp {
    pub db: TestDatabase,
    pub inventory: Inventory,
    pub proxy: TcpProxy,
    pub addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    pub keys: TestKeys,
    pub shutdown: Shutdown,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
    pub http: reqwest::Client,
    pub admin: String,
    pub user: String,
}

impl TestApp {
    pub async fn spawn() -> Self {
        let inventory = Inventory::spawn().await;
        let proxy = TcpProxy::start(inventory.grpc_addr).await;
        let db = TestDatabase::create().await;
        let keys = TestKeys::generate();
        let inventory_url = format!("http://127.0.0.1:{}", proxy.port);
        let vars: HashMap<String, String> = [
            ("HTTP_ADDR", "127.0.0.1:0"),
            ("GRPC_ADDR", "127.0.0.1:0"),
            ("DATABASE_URL", db.url.as_str()),
            ("JWT_PUBLIC_KEY", keys.public_pem.as_str()),
            ("INVENTORY_GRPC_URL", inventory_url.as_str()),
            ("INVENTORY_TIMEOUT_MS", "1000"),
            ("INVENTORY_CONNECT_TIMEOUT_MS", "300"),
            ("STOCK_SYNC_INTERVAL_MS", "200"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let config = ProductConfig::read(EnvReader::from_map(vars)).unwrap();
        let app = Application::build(config).await.unwrap();
        let addr = app.http_addr();
        let grpc_addr = app.grpc_addr();
        let shutdown = Shutdown::new();
        let task = tokio::spawn(app.run_until_stopped(shutdown.clone()));
        let admin = keys.token(uuid::Uuid::now_v7(), Role::Admin);
        let user = keys.token(uuid::Uuid::now_v7(), Role::User);
        Self {
            db,
            inventory,
            proxy,
            addr,
            grpc_addr,
            keys,
            shutdown,
            task,
            http: reqwest::Client::new(),
            admin,
            user,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value, reqwest::header::HeaderMap) {
        let mut request = self.http.request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        (
            status,
            response.json().await.unwrap_or(Value::Null),
            headers,
        )
    }

    pub async fn stop(self) {
        self.shutdown.trigger();
        self.task.await.expect("joins").expect("stops cleanly");
        self.inventory.shutdown.trigger();
    }
}
