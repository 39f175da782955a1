//! Builds the product application: pool and migrations, the inventory
//! client, the HTTP API, the gRPC API and the stock sync.

use std::net::SocketAddr;

use sqlx::PgPool;
use stockmesh_platform::auth::Verifier;
use stockmesh_platform::grpc::{self, GrpcSettings};
use stockmesh_platform::grpc_client::Upstream;
use stockmesh_platform::health::Readiness;
use stockmesh_platform::http::{self, HttpLimits};
use stockmesh_platform::metrics::Metrics;
use stockmesh_platform::runtime;
use stockmesh_platform::{Shutdown, db};
use stockmesh_proto::product::v1::product_service_server::ProductServiceServer;
use tokio::net::TcpListener;

use crate::config::ProductConfig;
use crate::grpc::ProductGrpc;
use crate::http::{AppState, router};
use crate::repository::ProductRepository;
use crate::service::ProductService;
use crate::stock::StockClient;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
pub const GRPC_SERVICE_NAME: &str = "stockmesh.product.v1.ProductService";

pub struct Application {
    config: ProductConfig,
    pool: PgPool,
    http_listener: TcpListener,
    grpc_listener: TcpListener,
    metrics: Metrics,
    service: ProductService,
    verifier: Verifier,
}

impl Application {
    pub async fn build(config: ProductConfig) -> anyhow::Result<Self> {
        let pool = db::pool(&config.database)?;
        db::migrate(&pool, &MIGRATOR, 30).await?;
        let metrics = Metrics::new(config.common.service_name);
        db::register_pool_metrics(&metrics, &pool);
        let inventory = Upstream::new(&config.inventory, &metrics).await?;
        let service = ProductService::new(
            ProductRepository::new(pool.clone()),
            StockClient::new(inventory),
        );
        let verifier = Verifier::new(&config.auth)?;
        let http_listener = runtime::bind(config.common.http_addr, "HTTP").await?;
        let grpc_listener = runtime::bind(config.grpc_addr, "gRPC").await?;
        Ok(Self {
            config,
            pool,
            http_listener,
            grpc_listener,
            metrics,
            service,
            verifier,
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

    pub async fn run_until_stopped(self, shutdown: Shutdown) -> anyhow::Result<()> {
        let Self {
            config,
            pool,
            http_listener,
            grpc_listener,
            metrics,
            service,
            verifier,
        } = self;
        // Ready = this process serves (README, Operations). The database is
        // reported, not required: every replica shares it, and while it is
        // down a live replica answers 503 + Retry-After. Inventory is no
        // condition: the catalog keeps serving (with unknown stock) without it.
        let readiness = Readiness::new(shutdown.clone())
            .with_dependency("database", db::readiness_check(&pool));

        let routes = tonic::service::Routes::new(ProductServiceServer::new(ProductGrpc::new(
            service.clone(),
        )));
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
        let state = AppState {
            service: service.clone(),
            verifier,
        };
        let app = http::router(
            router(state),
            readiness,
            metrics,
            HttpLimits::from(&config.common),
        );
        let http_task = shutdown.spawn(http::serve(http_listener, app, shutdown.clone()));
        shutdown.spawn(stock_sync(
            service,
            config.stock_sync_interval,
            shutdown.clone(),
        ));

        let drained = shutdown.drained(config.common.shutdown_grace).await;
        pool.close().await;
        grpc_task.await??;
        http_task.await??;
        anyhow::ensure!(drained, "shutdown grace period exceeded");
        Ok(())
    }
}

/// Retries recording the stock of products created while inventory was down.
async fn stock_sync(service: ProductService, interval: std::time::Duration, shutdown: Shutdown) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.cancelled() => return,
        }
        match service.sync_pending_stock().await {
            Ok(0) => {}
            Ok(synced) => tracing::info!(synced, "pending stock recorded"),
            Err(err) => tracing::debug!(error = %err, "stock sync will retry"),
        }
    }
}
