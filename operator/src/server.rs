//! `/metrics`, `/healthz` and `/readyz`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::Metrics;

#[derive(Clone)]
pub struct AppState {
    pub metrics: Arc<Metrics>,
    /// Set once the InventorySystem cache has synced (leader), or the
    /// Lease was reached (a follower standing by; see [`crate::leader`]).
    pub ready: Arc<AtomicBool>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

/// Ready: the leader once its caches have synced; a follower (leader
/// election, standing by) as soon as it has reached the Lease — standing by
/// is all it should do, and a NotReady follower would stall every rolling
/// update. Which of the two it is: the body and `stockmesh_operator_leader`.
async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let leading = state.metrics.leader.get() == 1;
    match (state.ready.load(Ordering::Relaxed), leading) {
        (true, true) => (StatusCode::OK, "ready: leading"),
        (true, false) => (
            StatusCode::OK,
            "ready: standing by (another replica holds the leader Lease)",
        ),
        (false, true) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for the InventorySystem cache to sync",
        ),
        (false, false) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting to reach the leader-election Lease",
        ),
    }
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}
