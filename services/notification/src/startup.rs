//! Builds the notification application from its configuration: pool and
//! migrations, the event consumer, and the HTTP API with health and metrics.

use std::net::SocketAddr;

use sqlx::PgPool;
use stockmesh_platform::auth::Verifier;
use stockmesh_platform::health::Readiness;
use stockmesh_platform::http::{self, HttpLimits};
use stockmesh_platform::metrics::Metrics;
use stockmesh_platform::runtime;
use stockmesh_platform::{Shutdown, db};
use tokio::net::TcpListener;

use crate::config::NotificationConfig;
use crate::consumer::{Consumer, ConsumerMetrics, ConsumerStatus};
use crate::http::{AppState, router};
use crate::live::{self, LiveHub, LiveMetrics};
use crate::repository::NotificationRepository;
use crate::service::NotificationService;

/// The notification service's embedded migrations.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A built application with its listener bound (the port may be 0 in tests).
pub struct Application {
    config: NotificationConfig,
    pool: PgPool,
    listener: TcpListener,
    metrics: Metrics,
    consumer_metrics: ConsumerMetrics,
    live: LiveHub,
    service: NotificationService,
    verifier: Verifier,
}

impl Application {
    /// Connects, migrates and binds; fails with a clear error otherwise.
    /// The broker is not needed yet: the consumer connects (and keeps
    /// reconnecting) once the application runs.
    pub async fn build(config: NotificationConfig) -> anyhow::Result<Self> {
        let pool = db::pool(&config.database)?;
        db::migrate(&pool, &MIGRATOR, 30).await?;
        let metrics = Metrics::new(config.common.service_name);
        db::register_pool_metrics(&metrics, &pool);
        let consumer_metrics = ConsumerMetrics::register(&metrics);
        let live = LiveHub::new(config.streams, LiveMetrics::register(&metrics));
        let verifier = Verifier::new(&config.auth)?;
        let service = NotificationService::new(NotificationRepository::new(pool.clone()));
        let listener = runtime::bind(config.common.http_addr, "HTTP").await?;
        Ok(Self {
            config,
            pool,
            listener,
            metrics,
            consumer_metrics,
            live,
            service,
            verifier,
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or(self.config.common.http_addr)
    }

    /// Consumes and serves until `shutdown` fires, then drains: the HTTP
    /// server finishes in-flight requests, the consumer the message in hand.
    pub async fn run_until_stopped(self, shutdown: Shutdown) -> anyhow::Result<()> {
        let Self {
            config,
            pool,
            listener,
            metrics,
            consumer_metrics,
            live,
            service,
            verifier,
        } = self;
        let status = ConsumerStatus::default();
        let check_status = status.clone();
        let readiness = Readiness::new(shutdown.clone())
            .with_dependency("database", db::readiness_check(&pool))
            .with_check("broker", move || check_status.clone().check());
        let consumer = Consumer::new(
            config.consumer.clone(),
            service.clone(),
            consumer_metrics,
            status,
        );
        let app = http::router(
            router(AppState {
                service,
                verifier,
                live: live.clone(),
                shutdown: shutdown.clone(),
            }),
            readiness,
            metrics,
            HttpLimits::from(&config.common),
        );
        let server = shutdown.spawn(http::serve(listener, app, shutdown.clone()));
        shutdown.spawn(consumer.run(shutdown.clone()));
        shutdown.spawn(live::run_listener(
            config.database.url.clone(),
            live,
            shutdown.clone(),
        ));
        let drained = shutdown.drained(config.common.shutdown_grace).await;
        pool.close().await;
        server.await??;
        anyhow::ensure!(drained, "shutdown grace period exceeded");
        Ok(())
    }
}
