//! Spawns the real inventory application on random ports against a fresh
//! database, and hands out clients.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;

use stockmesh_inventory::config::InventoryConfig;
use stockmesh_inventory::startup::Application;
use stockmesh_platform::Shutdown;
use stockmesh_platform::config::EnvReader;
use stockmesh_proto::inventory::v1::inventory_service_client::InventoryServiceClient;
use stockmesh_testkit::TestDatabase;
use tonic::transport::Channel;

pub struct TestApp {
    pub db: TestDatabase,
    pub http_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    pub shutdown: Shutdown,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

pub fn config(database_url: &str, extra: &[(&str, &str)]) -> InventoryConfig {
    let mut vars: HashMap<String, String> = [
        ("HTTP_ADDR", "127.0.0.1:0"),
        ("GRPC_ADDR", "127.0.0.1:0"),
        ("DATABASE_URL", database_url),
        ("DATABASE_MAX_CONNECTIONS", "20"),
        // Generous: a burst opens many connections at once (SCRAM login
        // each), slow on a loaded machine; no test here is about the pool.
        ("DATABASE_ACQUIRE_TIMEOUT_MS", "10000"),
        ("SHUTDOWN_GRACE_MS", "5000"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    for (k, v) in extra {
        vars.insert((*k).to_owned(), (*v).to_owned());
    }
    InventoryConfig::read(EnvReader::from_map(vars)).expect("valid test configuration")
}

impl TestApp {
    pub async fn spawn() -> Self {
        let db = TestDatabase::create().await;
        let url = db.url.clone();
        Self::spawn_with(db, &url, &[]).await
    }

    /// Spawns against `db` but connecting through `database_url` (a proxy).
    pub async fn spawn_with(db: TestDatabase, database_url: &str, extra: &[(&str, &str)]) -> Self {
        let app = Application::build(config(database_url, extra))
            .await
            .expect("application builds");
        let http_addr = app.http_addr();
        let grpc_addr = app.grpc_addr();
        let shutdown = Shutdown::new();
        let task = tokio::spawn(app.run_until_stopped(shutdown.clone()));
        Self {
            db,
            http_addr,
            grpc_addr,
            shutdown,
            task,
        }
    }

    pub async fn client(&self) -> InventoryServiceClient<Channel> {
        connect(self.grpc_addr).await
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}{}", self.http_addr, path)
    }

    pub async fn stop(self) {
        self.shutdown.trigger();
        self.task
            .await
            .expect("app task joins")
            .expect("app stops cleanly");
    }
}

pub async fn connect(addr: SocketAddr) -> InventoryServiceClient<Channel> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("valid uri")
        .connect()
        .await
        .expect("gRPC server reachable");
    InventoryServiceClient::new(channel)
}

/// Every stock row and reservation, to assert that nothing changed.
pub async fn snapshot(
    pool: &sqlx::PgPool,
) -> (
    Vec<(uuid::Uuid, i64, i64)>,
    Vec<(uuid::Uuid, Option<uuid::Uuid>, i64, String)>,
) {
    let stock =
        sqlx::query_as("SELECT product_id, available, reserved FROM stock ORDER BY product_id")
            .fetch_all(pool)
            .await
            .expect("read stock");
    let reservations = sqlx::query_as(
        "SELECT order_id, product_id, quantity, state FROM reservations ORDER BY order_id",
    )
    .fetch_all(pool)
    .await
    .expect("read reservations");
    (stock, reservations)
}
