//! Builds the user application from its configuration.

use std::net::SocketAddr;

use sqlx::PgPool;
use stockmesh_platform::auth::Verifier;
use stockmesh_platform::health::Readiness;
use stockmesh_platform::http::{self, HttpLimits};
use stockmesh_platform::metrics::Metrics;
use stockmesh_platform::runtime;
use stockmesh_platform::{Shutdown, db};
use tokio::net::TcpListener;

use crate::config::UserConfig;
use crate::device::Devices;
use crate::http::{AppState, router};
use crate::password::Passwords;
use crate::repository::UserRepository;
use crate::service::UserService;
use crate::sessions::SessionStore;
use crate::tokens::Issuer;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

pub struct Application {
    config: UserConfig,
    pool: PgPool,
    listener: TcpListener,
    metrics: Metrics,
    service: UserService,
    verifier: Verifier,
}

impl Application {
    pub async fn build(config: UserConfig) -> anyhow::Result<Self> {
        tracing::info!(
            hash_concurrency = config.hash_limits.concurrency,
            hash_queue_max = config.hash_limits.queue_max,
            trusted_proxies = %config.trusted_proxies,
            "abuse limits"
        );
        let pool = db::pool(&config.database)?;
        db::migrate(&pool, &MIGRATOR, 30).await?;
        let metrics = Metrics::new(config.common.service_name);
        db::register_pool_metrics(&metrics, &pool);
        let issuer = Issuer::new(
            &config.signing_key_pem,
            &config.auth.issuer,
            &config.auth.audience,
            config.token_ttl,
        )?;
        let verifier = Verifier::new(&config.auth)?;
        let devices = Devices::new(
            &config.signing_key_pem,
            &config.auth.public_key_pem,
            &config.auth.issuer,
            config.login_limits.device_ttl,
        )?;
        let service = UserService::new(
            UserRepository::new(pool.clone()),
            SessionStore::new(pool.clone()),
            issuer,
            config.session_ttl,
            devices,
            Passwords::new(config.hash_limits),
            config.login_limits,
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        if let Some(admin) = &config.admin {
            service
                .bootstrap_admin(admin)
                .await
                .map_err(|e| anyhow::anyhow!("creating the first administrator: {e}"))?;
        }
        let listener = runtime::bind(config.common.http_addr, "HTTP").await?;
        Ok(Self {
            config,
            pool,
            listener,
            metrics,
            service,
            verifier,
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or(self.config.common.http_addr)
    }

    pub async fn run_until_stopped(self, shutdown: Shutdown) -> anyhow::Result<()> {
        let Self {
            config,
            pool,
            listener,
            metrics,
            service,
            verifier,
        } = self;
        let readiness = Readiness::new(shutdown.clone())
            .with_dependency("database", db::readiness_check(&pool));
        let state = AppState {
            service,
            verifier,
            cookie_secure: config.cookie_secure,
            trusted_proxies: config.trusted_proxies.clone(),
        };
        let app = http::router(
            router(state),
            readiness,
            metrics,
            HttpLimits::from(&config.common),
        );
        let server = shutdown.spawn(http::serve(listener, app, shutdown.clone()));
        let drained = shutdown.drained(config.common.shutdown_grace).await;
        pool.close().await;
        server.await??;
        anyhow::ensure!(drained, "shutdown grace period exceeded");
        Ok(())
    }
}
