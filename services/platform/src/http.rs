//! The HTTP server every service runs: its API routes behind the standard
//! layers, plus `/healthz`, `/readyz` and `/metrics`.
//!
//! Layers on API routes, outermost first: request id (set + echoed), server
//! span (child of an incoming `traceparent`) with per-route metrics, load
//! shedding, request timeout, body limit. Unknown routes and methods answer
//! with the standard JSON error document.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tracing::Instrument;

use crate::config::CommonConfig;
use crate::error::{ApiError, ErrorKind};
use crate::health::Readiness;
use crate::metrics::{HttpLabels, HttpRouteLabels, Metrics, TransportLabels};
use crate::shutdown::Shutdown;
use crate::telemetry;

/// Limits applied to API routes.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    pub request_timeout: Duration,
    pub max_concurrent_requests: usize,
    pub max_body_bytes: usize,
}

impl From<&CommonConfig> for HttpLimits {
    fn from(config: &CommonConfig) -> Self {
        Self {
            request_timeout: config.request_timeout,
            max_concurrent_requests: config.max_concurrent_requests,
            max_body_bytes: config.max_body_bytes,
        }
    }
}

#[derive(Clone)]
struct EdgeState {
    metrics: Metrics,
    permits: Arc<Semaphore>,
    limits: HttpLimits,
}

#[derive(Clone)]
struct OpsState {
    readiness: Readiness,
    metrics: Metrics,
}

/// Wraps the service's API router with the standard layers and adds the
/// operational endpoints.
pub fn router(api: Router, readiness: Readiness, metrics: Metrics, limits: HttpLimits) -> Router {
    let edge = EdgeState {
        metrics: metrics.clone(),
        permits: Arc::new(Semaphore::new(limits.max_concurrent_requests)),
        limits: limits.clone(),
    };
    let api = api
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
                .layer(PropagateRequestIdLayer::x_request_id())
                .layer(middleware::from_fn_with_state(edge, edge_guard))
                .layer(DefaultBodyLimit::max(limits.max_body_bytes)),
        );
    let ops = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(OpsState { readiness, metrics });
    api.merge(ops)
}

/// Serves `router` until shutdown, then drains in-flight requests.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "HTTP server listening");
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown.cancelled())
    .await?;
    tracing::info!(%addr, "HTTP server drained");
    Ok(())
}

async fn healthz() -> impl IntoResponse {
    (
        StatusCode::OK,
        axum::Json(serde_json::json!({"status": "alive"})),
    )
}

async fn readyz(State(state): State<OpsState>) -> Response {
    state.readiness.respond().await
}

async fn render_metrics(State(state): State<OpsState>) -> Response {
    let body = state.metrics.render().await;
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        )],
        body,
    )
        .into_response()
}

async fn no_route() -> ApiError {
    ApiError::not_found("no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(ErrorKind::BadRequest, "method not allowed on this route")
        .with_code("method_not_allowed")
}

/// Server span, metrics, load shedding, timeout and early body-size check.
async fn edge_guard(
    State(state): State<EdgeState>,
    matched: Option<MatchedPath>,
    request: Request,
    next: Next,
) -> Response {
    let method = request.method().as_str().to_owned();
    let route = matched
        .as_ref()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let span = tracing::info_span!(
        "http.server",
        otel.name = format!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = %route,
        url.path = %request.uri().path(),
        request_id = %request_id,
        http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        error.type = tracing::field::Empty,
    );
    telemetry::set_remote_parent(&span, request.headers());

    let start = Instant::now();
    let response = async {
        let too_large = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
            .is_some_and(|len| len > state.limits.max_body_bytes);
        if too_large {
            return ApiError::new(
                ErrorKind::PayloadTooLarge,
                format!(
                    "request body larger than {} bytes",
                    state.limits.max_body_bytes
                ),
            )
            .into_response();
        }
        let Ok(_permit) = state.permits.clone().try_acquire_owned() else {
            state
                .metrics
                .requests
                .shed
                .get_or_create(&TransportLabels { transport: "http" })
                .inc();
            tracing::warn!("overloaded, shedding request");
            return ApiError::new(ErrorKind::Overloaded, "server overloaded, retry shortly")
                .with_retry_after(Duration::from_secs(1))
                .into_response();
        };
        let deadline = tokio::time::Instant::now() + state.limits.request_timeout;
        let run = crate::deadline::scope(deadline, next.run(request));
        match tokio::time::timeout_at(deadline, run).await {
            Ok(response) => response,
            Err(_) => {
                tracing::warn!(
                    timeout_ms = state.limits.request_timeout.as_millis() as u64,
                    "request timed out"
                );
                ApiError::new(ErrorKind::Timeout, "request took too long").into_response()
            }
        }
    }
    .instrument(span.clone())
    .await;

    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        telemetry::record_error(
            &span,
            status.as_str(),
            status.canonical_reason().unwrap_or("server error"),
        );
    }
    let requests = &state.metrics.requests;
    requests
        .http_requests
        .get_or_create(&HttpLabels {
            method: method.clone(),
            route: route.clone(),
            status: status.as_u16(),
        })
        .inc();
    crate::metrics::observe_latency(
        &requests
            .http_duration
            .get_or_create(&HttpRouteLabels { method, route }),
        start.elapsed().as_secs_f64(),
        &span,
    );
    response
}
