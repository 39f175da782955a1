//! The client side of every gRPC hop (order → product, order → inventory,
//! product → inventory), written once.
//!
//! [`Upstream`] wraps a lazily connected channel and, per call: opens a
//! client span and injects its W3C context into the metadata; sends a
//! `grpc-timeout` that is the smaller of the per-call default and what is
//! left of the caller's own deadline, and enforces it locally; counts the
//! call per method and code. This is the one place where the circuit breaker,
//! retries and load balancing plug in.

use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use http::{HeaderValue, Request, Response};
use tonic::body::Body;
use tonic::transport::{Channel, Endpoint};
use tower::Service;
use tracing::Instrument;

use crate::config::EnvReader;
use crate::deadline;
use crate::layers::{grpc_code_name, split_grpc_path};
use crate::metrics::{GrpcLabels, GrpcMethodLabels, RequestMetrics};
use crate::telemetry;

/// Where an upstream lives and how long a call to it may take.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Short name for logs and metrics (`inventory`, `product`).
    pub name: &'static str,
    /// `http://host:port`.
    pub url: String,
    /// Deadline of one call when the caller has no tighter one.
    pub timeout: Duration,
    pub connect_timeout: Duration,
}

impl UpstreamConfig {
    /// Reads `<PREFIX>_GRPC_URL` (required) and `<PREFIX>_TIMEOUT_MS`.
    pub fn read(env: &mut EnvReader, name: &'static str, prefix: &str, default_url: &str) -> Self {
        let url = env.with_default(&format!("{prefix}_GRPC_URL"), default_url.to_owned());
        if Endpoint::from_shared(url.clone()).is_err() {
            env.problem(format!(
                "{prefix}_GRPC_URL is malformed: expected http://host:port"
            ));
        }
        Self {
            name,
            url,
            timeout: env.millis(&format!("{prefix}_TIMEOUT_MS"), Duration::from_millis(2000)),
            connect_timeout: env.millis(
                &format!("{prefix}_CONNECT_TIMEOUT_MS"),
                Duration::from_millis(1000),
            ),
        }
    }
}

/// A gRPC upstream with the standard client stack; give it to a generated
/// client: `InventoryServiceClient::new(upstream)`.
#[derive(Clone)]
pub struct Upstream {
    name: &'static str,
    channel: Channel,
    timeout: Duration,
    metrics: RequestMetrics,
}

impl Upstream {
    pub fn new(config: &UpstreamConfig, metrics: RequestMetrics) -> anyhow::Result<Self> {
        let channel = Endpoint::from_shared(config.url.clone())?
            .connect_timeout(config.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true)
            .connect_lazy();
        Ok(Self {
            name: config.name,
            channel,
            timeout: config.timeout,
            metrics,
        })
    }

    pub fn name(&self) -> &'static str {
        self.name
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Service<Request<Body>> for Upstream {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response<Body>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.channel.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        let clone = self.channel.clone();
        let mut channel = std::mem::replace(&mut self.channel, clone);
        let metrics = self.metrics.clone();
        let upstream = self.name;
        let (service, method) = split_grpc_path(request.uri().path());
        let (service, method) = (service.to_owned(), method.to_owned());
        let budget = deadline::remaining()
            .map(|left| left.min(self.timeout))
            .unwrap_or(self.timeout);
        let span = tracing::info_span!(
            "grpc.client",
            otel.name = format!("{service}/{method}"),
            otel.kind = "client",
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
            peer.service = upstream,
            rpc.grpc.status_code = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        Box::pin(
            async move {
                telemetry::inject_current_context(request.headers_mut());
                if let Ok(value) = HeaderValue::from_str(&deadline::format_grpc_timeout(budget)) {
                    request.headers_mut().insert("grpc-timeout", value);
                }
                let start = Instant::now();
                let result = match tokio::time::timeout(budget, channel.call(request)).await {
                    Ok(Ok(response)) => Ok(response),
                    Ok(Err(err)) => Err(BoxError::from(tonic::Status::unavailable(format!(
                        "{upstream} unreachable: {err}"
                    )))),
                    Err(_) => Err(BoxError::from(tonic::Status::deadline_exceeded(format!(
                        "{upstream} did not answer within {} ms",
                        budget.as_millis()
                    )))),
                };
                let code = match &result {
                    Ok(response) => crate::layers::grpc_status_of(response),
                    Err(err) => err
                        .downcast_ref::<tonic::Status>()
                        .map(|s| s.code())
                        .unwrap_or(tonic::Code::Unknown),
                };
                let current = tracing::Span::current();
                current.record("rpc.grpc.status_code", code as i32);
                if crate::layers::grpc_server_error(code) {
                    current.record("otel.status_code", "ERROR");
                }
                metrics
                    .grpc_client_handled
                    .get_or_create(&GrpcLabels {
                        service: service.clone(),
                        method: method.clone(),
                        code: grpc_code_name(code).to_owned(),
                    })
                    .inc();
                metrics
                    .grpc_client_duration
                    .get_or_create(&GrpcMethodLabels { service, method })
                    .observe(start.elapsed().as_secs_f64());
                result
            }
            .instrument(span),
        )
    }
}
