//! Builds the inventory application from its configuration: pool and
//! migrations, the gRPC API, and the HTTP port for health and metrics.

use std::net::SocketAddr;

use axum::Router;
use sqlx::PgPool;
use stockmesh_platform::grpc::{self, GrpcSettings};
use stockmesh_platform::health::Readiness;
use stockmesh_platform::http::{self, HttpLimits};
use stockmesh_platform::metrics::Metrics;
use stockmesh_platform::runtime;
use stockmesh_platform::{Shutdown, db};
use stockmesh_proto::inventory::v1::inventory_service_server::InventoryServiceServer;
use tokio::net::TcpListener;

use crate::config::InventoryConfig;
use crate::grpc::InventoryGrpc;
use crate::repository::InventoryRepository;
use crate::service::InventoryService;

/// The inventory's embedded migrations.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Fully-qualified gRPC service name, as health checks and grpcurl know it.
pub const GRPC_SERVICE_NAME: &str = "stockmesh.inventory.v1.InventoryService";

/// A built application with its listeners bound (ports may be 0 in tests).
pub struct Application {
    config: InventoryConfig,
    pool: PgPool,
    http_listener: TcpListener,
    grpc_listener: TcpListener,
    metrics: Metrics,
}

impl Application {
    /// Connects, migrates and binds; fails with a clear error otherwise.
    pub async fn build(config: InventoryConfig) -> anyhow::Result<Self> {
        let pool = db::pool(&config.database)?;
        db::migrate(&pool, &MIGRATOR, 30).await?;
        let metrics = Metrics::new(config.common.service_name);
        db::register_pool_metrics(&metrics, &pool);
        let http_listener = runtime::bind(config.common.http_addr, "HTTP").await?;
        let grpc_listener = runtime::bind(config.grpc_addr, "gRPC").await?;
        Ok(Self {
            config,
            pool,
            http_listener,
            grpc_listener,
            metrics,
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_listener
            .local_addr()
            .unwrap_or(self.config.common.http_addr)
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_listener
            .local_addr()
            .unwrap_or(self.config.grpc_addr)
    }

    /// Serves until `shutdown` fires, then drains within the grace period.
    pub async fn run_until_stopped(self, shutdown: Shutdown) -> anyhow::Result<()> {
        let Self {
            config,
            pool,
            http_listener,
            grpc_listener,
            metrics,
        } = self;
        let readiness = Readiness::new(shutdown.clone())
            .with_dependency("database", db::readiness_check(&pool));

        let service = InventoryService::new(InventoryRepository::new(pool.clone()));
        let routes =
            tonic::service::Routes::new(InventoryServiceServer::new(InventoryGrpc::new(service)));
        let grpc_task = shutdown.spawn(grpc::serve(
            grpc_listener,
            routes,
            stockmesh_proto::FILE_DESCRIPTOR_SET,
            GrpcSettings {
                request_timeout: config.common.request_timeout,
                max_concurrent_requests: config.common.max_concurrent_requests,
                service_names: vec![GRPC_SERVICE_NAME],
            },
            readiness.clone(),
            metrics.clone(),
            shutdown.clone(),
        ));
        // Inventory has no public HTTP API: the port serves health and metrics.
        let router = http::router(
            Router::new(),
            readiness,
            metrics,
            HttpLimits::from(&config.common),
        );
        let http_task = shutdown.spawn(http::serve(http_listener, router, shutdown.clone()));

        let drained = shutdown.drained(config.common.shutdown_grace).await;
        pool.close().await;
        for (name, outcome) in [
            (
                "gRPC",
                grpc_task.await.map(|r| r.map_err(|e| e.to_string())),
            ),
            (
                "HTTP",
                http_task.await.map(|r| r.map_err(|e| e.to_string())),
            ),
        ] {
            match outcome {
                Ok(Ok(())) => {}
                Ok(Err(err)) => anyhow::bail!("{name} server failed: {err}"),
                Err(err) => anyhow::bail!("{name} server task failed: {err}"),
            }
        }
        if !drained {
            anyhow::bail!("shutdown grace period exceeded");
        }
        Ok(())
    }
}
