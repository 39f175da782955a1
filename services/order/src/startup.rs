//! Builds the order application: pool and migrations, upstream clients,
//! the HTTP API, the outbox relay and the compensation sweeper.

use std::net::SocketAddr;

use sqlx::PgPool;
use stockmesh_platform::auth::Verifier;
use stockmesh_platform::grpc_client::Upstream;
use stockmesh_platform::health::Readiness;
use stockmesh_platform::http::{self, HttpLimits};
use stockmesh_platform::metrics::Metrics;
use stockmesh_platform::runtime;
use stockmesh_platform::{Shutdown, db};
use tokio::net::TcpListener;

use crate::catalog::ProductCache;
use crate::clients::Upstreams;
use crate::committer;
use crate::config::OrderConfig;
use crate::http::{AppState, router};
use crate::outbox::{self, RelayConfig, RelayInbox, RelayMetrics};
use crate::repository::OrderRepository;
use crate::service::OrderService;

/// Connections of the relay's own pool: the relay and the pruner, one
/// statement at a time each.
const RELAY_CONNECTIONS: u32 = 2;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

pub struct Application {
    config: OrderConfig,
    pool: PgPool,
    listener: TcpListener,
    metrics: Metrics,
    service: OrderService,
    verifier: Verifier,
    relay_config: RelayConfig,
    relay_inbox: RelayInbox,
    product: Upstream,
    inventory: Upstream,
}

impl Application {
    pub async fn build(config: OrderConfig) -> anyhow::Result<Self> {
        let pool = db::pool(&config.database)?;
        db::migrate(&pool, &MIGRATOR, 30).await?;
        let metrics = Metrics::new(config.common.service_name);
        db::register_pool_metrics(&metrics, &pool);
        let product = Upstream::new(&config.product, &metrics).await?;
        let inventory = Upstream::new(&config.inventory, &metrics).await?;
        let relay_config = RelayConfig {
            broker: config.broker.clone(),
            poll: config.relay_poll,
            broker_timeout: config.outbox_broker_timeout,
            retention: config.outbox_retention,
            prune_every: config.outbox_prune_every,
        };
        let (relay_link, relay_inbox) = outbox::link(relay_config.lease());
        let service = OrderService::new(
            OrderRepository::new(pool.clone()),
            Upstreams::new(
                product.clone(),
                inventory.clone(),
                ProductCache::new(config.product_cache_ttl, &metrics),
            ),
            relay_link,
        );
        let verifier = Verifier::new(&config.auth)?;
        let listener = runtime::bind(config.common.http_addr, "HTTP").await?;
        Ok(Self {
            config,
            pool,
            listener,
            metrics,
            service,
            verifier,
            relay_config,
            relay_inbox,
            product,
            inventory,
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or(self.config.common.http_addr)
    }

    /// The upstreams (their breakers are visible to tests).
    pub fn upstreams(&self) -> (Upstream, Upstream) {
        (self.product.clone(), self.inventory.clone())
    }

    pub async fn run_until_stopped(self, shutdown: Shutdown) -> anyhow::Result<()> {
        let Self {
            config,
            pool,
            listener,
            metrics,
            service,
            verifier,
            relay_config,
            relay_inbox,
            ..
        } = self;
        // Ready = this process serves (README, Operations). The database is
        // reported, not required: every replica shares it, and while it is
        // down a live replica answers 503 + Retry-After. The broker is not a
        // condition either: orders keep being accepted while it is down (the
        // outbox holds their events).
        let readiness = Readiness::new(shutdown.clone())
            .with_dependency("database", db::readiness_check(&pool));
        // The relay's claims and marks are bookkeeping that is redone when
        // lost (db::unflushed_pool): they need not wait for a WAL flush.
        let relay_pool = db::unflushed_pool(&config.database, RELAY_CONNECTIONS)?;
        let relay_metrics = RelayMetrics::register(&metrics, &pool);
        shutdown.spawn(outbox::run(
            relay_pool.clone(),
            relay_config.clone(),
            relay_metrics.clone(),
            relay_inbox,
            shutdown.clone(),
        ));
        shutdown.spawn(outbox::prune(
            relay_pool.clone(),
            relay_config,
            relay_metrics,
            shutdown.clone(),
        ));
        shutdown.spawn(sweeper(
            service.clone(),
            config.sweep_every,
            config.pending_timeout,
            shutdown.clone(),
        ));
        shutdown.spawn(committer::run(
            service.clone(),
            config.sweep_every,
            config.commit_linger,
            shutdown.clone(),
        ));
        let app = http::router(
            router(AppState { service, verifier }),
            readiness,
            metrics,
            HttpLimits::from(&config.common),
        );
        let server = shutdown.spawn(http::serve(listener, app, shutdown.clone()));
        let drained = shutdown.drained(config.common.shutdown_grace).await;
        pool.close().await;
        relay_pool.close().await;
        server.await??;
        anyhow::ensure!(drained, "shutdown grace period exceeded");
        Ok(())
    }
}

async fn sweeper(
    service: OrderService,
    every: std::time::Duration,
    pending_timeout: std::time::Duration,
    shutdown: Shutdown,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => return,
        }
        match service.sweep(pending_timeout).await {
            Ok(0) => {}
            Ok(released) => tracing::info!(released, "compensation: reservations released"),
            Err(err) => tracing::debug!(error = %err, "sweeper will retry"),
        }
    }
}
