//! The HTTP server every service runs: its API routes behind the standard
//! layers, plus `/healthz`, `/readyz` and `/metrics`.
//!
//! Layers on API routes, outermost first: request id (set + echoed), server
//! span (child of an incoming `traceparent`) with per-route metrics and the
//! trace id echoed in `x-trace-id` (the console links an order to its
//! trace), the cross-site write check ([`crate::csrf`]), load shedding,
//! request timeout, body limit. Unknown routes and methods answer
//! with the standard JSON error document.
//!
//! Shutdown (see [`crate::shutdown`]): `GET /drain` is the preStop hook — it
//! begins phase 1 and returns when the drain window is over. While draining,
//! every HTTP/1 response carries `Connection: close`, so clients' keep-alive
//! connections move to other replicas before the listener closes; in phase 2
//! the listener closes and in-flight requests finish.

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
    /// Sites besides the request's own host allowed to send writes.
    pub allowed_origins: crate::csrf::AllowedOrigins,
}

impl From<&CommonConfig> for HttpLimits {
    fn from(config: &CommonConfig) -> Self {
        Self {
            request_timeout: config.request_timeout,
            max_concurrent_requests: config.max_concurrent_requests,
            max_body_bytes: config.max_body_bytes,
            allowed_origins: config.allowed_origins.clone(),
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
    readiness.register_metrics(&metrics);
    let shutdown = readiness.shutdown().clone();
    let ops = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/drain", get(drain))
        .route("/metrics", get(render_metrics))
        .with_state(OpsState { readiness, metrics });
    api.merge(ops).layer(middleware::from_fn_with_state(
        shutdown,
        close_while_draining,
    ))
}

/// While draining, asks HTTP/1 clients to close the connection after this
/// response: their next request opens a new connection, which the load
/// balancer (no longer counting this process) sends to another replica. A
/// keep-alive connection kept until the listener closes would instead race
/// its next request against the close.
async fn close_while_draining(
    State(shutdown): State<Shutdown>,
    request: Request,
    next: Next,
) -> Response {
    let http1 = request.version() <= axum::http::Version::HTTP_11;
    let mut response = next.run(request).await;
    if http1 && shutdown.is_draining() {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// The preStop hook (`lifecycle.preStop.httpGet`): readiness turns false at
/// once; the answer comes when the drain window is over, and kubelet sends
/// SIGTERM only then. An HTTP hook because the images have no shell (no
/// `exec sleep`) and Kubernetes before 1.29 has no `sleep` hook.
async fn drain(State(state): State<OpsState>) -> Response {
    let shutdown = state.readiness.shutdown();
    let start = Instant::now();
    tracing::info!(
        drain_ms = shutdown.drain_window().as_millis() as u64,
        "drain requested (preStop): not ready, serving until the window ends"
    );
    shutdown.drain_for_hook().await;
    (
        StatusCode::OK,
        axum::Json(serde_json::json!({
            "status": "drained",
            "waited_ms": start.elapsed().as_millis() as u64,
        })),
    )
        .into_response()
}

/// Serves `router` until phase 2 of shutdown (the drain window is served
/// normally), then closes the listener and finishes in-flight requests.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "HTTP server listening");
    // No Nagle delay: a server-sent event (or any small write after an
    // unacknowledged one) goes out at once instead of waiting for the
    // peer's delayed ACK (up to 40 ms on Linux).
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp: &mut tokio::net::TcpStream| {
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(error = %err, "cannot set TCP_NODELAY");
        }
    });
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
        if let Err(refused) = crate::csrf::check(
            request.method(),
            request.headers(),
            &state.limits.allowed_origins,
        ) {
            tracing::info!("cross-site write refused");
            return refused.into_response();
        }
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
    let mut response = response;
    if let Some(trace_id) = span.in_scope(telemetry::current_trace_id)
        && let Ok(value) = HeaderValue::from_str(&trace_id)
    {
        response.headers_mut().insert("x-trace-id", value);
    }

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shutdown::Signal;
    use axum::body::Body;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tower::ServiceExt;

    const DRAIN: Duration = Duration::from_secs(5);

    fn app(shutdown: &Shutdown) -> Router {
        let api = Router::new()
            .route(
                "/api/ping",
                get(|| async { "pong" }).post(|| async { "posted" }),
            )
            .route(
                "/api/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_millis(1500)).await;
                    "done"
                }),
            );
        router(
            api,
            Readiness::new(shutdown.clone()),
            Metrics::new("test"),
            HttpLimits {
                request_timeout: Duration::from_secs(10),
                max_concurrent_requests: 8,
                max_body_bytes: 1024,
                allowed_origins: Default::default(),
            },
        )
    }

    async fn call(app: &Router, path: &str) -> Response {
        let request = axum::http::Request::get(path)
            .body(Body::empty())
            .expect("a valid request");
        match app.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
    }

    #[tokio::test]
    async fn a_cross_site_write_is_refused_before_the_handler_runs() {
        let app = app(&Shutdown::new());
        let post = |origin: &'static str| {
            axum::http::Request::post("/api/ping")
                .header(header::HOST, "shop.example")
                .header(header::ORIGIN, origin)
                .body(Body::empty())
                .expect("a valid request")
        };
        let refused = match app.clone().oneshot(post("https://evil.example")).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
        let body = axum::body::to_bytes(refused.into_body(), 4096)
            .await
            .expect("body");
        let body = String::from_utf8_lossy(&body);
        assert!(body.contains("cross_site_request"), "{body}");
        assert!(body.contains("evil.example"), "{body}");
        let same_site = match app.clone().oneshot(post("https://shop.example")).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        assert_eq!(same_site.status(), StatusCode::OK);
    }

    #[tokio::test(start_paused = true)]
    async fn draining_is_not_ready_yet_serves_and_closes_keep_alive_connections() {
        let shutdown = Shutdown::new().with_drain(DRAIN);
        let app = app(&shutdown);
        assert_eq!(call(&app, "/readyz").await.status(), StatusCode::OK);
        let before = call(&app, "/api/ping").await;
        assert_eq!(before.status(), StatusCode::OK);
        assert!(before.headers().get(header::CONNECTION).is_none());

        shutdown.begin_drain();
        assert_eq!(
            call(&app, "/readyz").await.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready from the first instant of the drain"
        );
        let during = call(&app, "/api/ping").await;
        assert_eq!(during.status(), StatusCode::OK, "still serving");
        assert_eq!(during.headers()[header::CONNECTION], "close");
        assert_eq!(call(&app, "/healthz").await.status(), StatusCode::OK);
        assert!(!shutdown.is_triggered());
    }

    #[tokio::test(start_paused = true)]
    async fn the_drain_endpoint_answers_when_the_window_is_over() {
        let shutdown = Shutdown::new().with_drain(DRAIN);
        let app = app(&shutdown);
        let start = tokio::time::Instant::now();
        let hook = tokio::spawn({
            let app = app.clone();
            async move { call(&app, "/drain").await.status() }
        });
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            call(&app, "/readyz").await.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(hook.await.ok(), Some(StatusCode::OK));
        assert_eq!(start.elapsed(), DRAIN);
        assert!(!shutdown.is_triggered(), "SIGTERM, not the hook, stops");
    }

    /// `GET path` on a fresh connection: the status code, or the connect error.
    async fn raw_get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(format!("GET {path} HTTP/1.1\r\nhost: test\r\n\r\n").as_bytes())
            .await?;
        let mut bytes = Vec::new();
        // Read the head; the body of these routes is short.
        let mut buf = [0u8; 1024];
        loop {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            bytes.extend_from_slice(&buf[..n]);
            if bytes.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
        let text = String::from_utf8_lossy(&bytes).to_ascii_lowercase();
        let code = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        Ok((code, text))
    }

    /// Real sockets (so real time): during the drain a new connection is
    /// accepted and served; after it the port refuses, while a request
    /// begun during the drain still completes within the grace period.
    #[tokio::test]
    async fn the_listener_closes_only_after_the_drain_and_in_flight_requests_finish() {
        let drain = Duration::from_millis(800);
        let shutdown = Shutdown::new().with_drain(drain);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        shutdown.spawn(serve(listener, app(&shutdown), shutdown.clone()));
        let (signals, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn({
            let s = shutdown.clone();
            async move { s.follow_signals(rx).await }
        });
        assert_eq!(raw_get(addr, "/readyz").await.ok().map(|r| r.0), Some(200));

        signals.send(Signal::Terminate).expect("signal sent");
        let (code, head) = raw_get(addr, "/readyz")
            .await
            .expect("accepting while draining");
        assert_eq!(code, 503);
        assert!(head.contains("connection: close"), "{head}");
        let (code, _) = raw_get(addr, "/api/ping")
            .await
            .expect("accepting while draining");
        assert_eq!(code, 200);
        // Begun inside the window, finishes after it.
        let slow = tokio::spawn(async move { raw_get(addr, "/api/slow").await });

        shutdown.cancelled().await;
        let refused = tokio::net::TcpStream::connect(addr).await;
        assert_eq!(
            refused.err().map(|e| e.kind()),
            Some(std::io::ErrorKind::ConnectionRefused),
            "the listener is closed in phase 2"
        );
        let (code, _) = slow
            .await
            .expect("request task")
            .expect("the in-flight request was answered");
        assert_eq!(code, 200);
        assert!(shutdown.drained(Duration::from_secs(5)).await);
    }
}
