//! Builds the web console from its configuration: the embedded files and
//! the console API behind the platform's standard HTTP layers.

use std::net::SocketAddr;

use axum::Router;
use axum::routing::get;
use stockmesh_platform::Shutdown;
use stockmesh_platform::auth::Verifier;
use stockmesh_platform::health::Readiness;
use stockmesh_platform::http::{self, HttpLimits};
use stockmesh_platform::metrics::Metrics;
use stockmesh_platform::runtime;
use tokio::net::TcpListener;

use crate::assets;
use crate::config::WebConfig;
use crate::system::{self, ASK_TIMEOUT, SystemState};

pub struct Application {
    config: WebConfig,
    listener: TcpListener,
    state: SystemState,
}

impl Application {
    pub async fn build(config: WebConfig) -> anyhow::Result<Self> {
        let verifier = Verifier::new(&config.auth)?;
        let http = reqwest::Client::builder()
            .connect_timeout(ASK_TIMEOUT)
            .user_agent(concat!("stockmesh-web/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let state = SystemState {
            verifier,
            http,
            services: config.service_urls.clone(),
            jaeger_ui_url: config.jaeger_ui_url.clone(),
        };
        let listener = runtime::bind(config.common.http_addr, "HTTP").await?;
        Ok(Self {
            config,
            listener,
            state,
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or(self.config.common.http_addr)
    }

    /// Serves until `shutdown` fires, then drains. The console has no
    /// dependency of its own: it is ready as long as it serves.
    pub async fn run_until_stopped(self, shutdown: Shutdown) -> anyhow::Result<()> {
        let Self {
            config,
            listener,
            state,
        } = self;
        let metrics = Metrics::new(config.common.service_name);
        let readiness = Readiness::new(shutdown.clone());
        let api = Router::new()
            .route("/api/console/config", get(system::console_config))
            .route("/api/console/system", get(system::system))
            .with_state(state)
            .merge(assets::router());
        let app = http::router(api, readiness, metrics, HttpLimits::from(&config.common));
        let server = shutdown.spawn(http::serve(listener, app, shutdown.clone()));
        let drained = shutdown.drained(config.common.shutdown_grace).await;
        server.await??;
        anyhow::ensure!(drained, "shutdown grace period exceeded");
        Ok(())
    }
}
