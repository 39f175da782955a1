//! Tower layers shared by the HTTP and gRPC servers.
//!
//! - [`LoadShedLayer`]: a process-wide concurrency limit that answers at once
//!   (503 / RESOURCE_EXHAUSTED) instead of queueing when the limit is reached.
//! - [`GrpcServerLayer`]: the server span (child of the caller's
//!   `traceparent`) and per-method metrics for every gRPC call.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures::future::{BoxFuture, Either, Ready, ready};
use http::{Request, Response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::{Layer, Service};
use tracing::Instrument;

use crate::metrics::{GrpcLabels, GrpcMethodLabels, RequestMetrics, TransportLabels};
use crate::telemetry;

/// Refuses requests beyond `max` in flight, with a response built by `reject`.
///
/// Clones share one semaphore, so the limit holds for the whole server even
/// when the layer is applied per route.
pub struct LoadShedLayer<B> {
    permits: Arc<Semaphore>,
    reject: fn() -> Response<B>,
    on_shed: Option<(RequestMetrics, &'static str)>,
}

impl<B> Clone for LoadShedLayer<B> {
    fn clone(&self) -> Self {
        Self {
            permits: self.permits.clone(),
            reject: self.reject,
            on_shed: self.on_shed.clone(),
        }
    }
}

impl<B> LoadShedLayer<B> {
    pub fn new(max: usize, reject: fn() -> Response<B>) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max)),
            reject,
            on_shed: None,
        }
    }

    /// Counts shed requests in `stockmesh_requests_shed_total{transport}`.
    pub fn counting(mut self, metrics: RequestMetrics, transport: &'static str) -> Self {
        self.on_shed = Some((metrics, transport));
        self
    }
}

impl<S, B> Layer<S> for LoadShedLayer<B> {
    type Service = LoadShed<S, B>;
    fn layer(&self, inner: S) -> Self::Service {
        LoadShed {
            inner,
            permits: self.permits.clone(),
            reject: self.reject,
            on_shed: self.on_shed.clone(),
        }
    }
}

pub struct LoadShed<S, B> {
    inner: S,
    permits: Arc<Semaphore>,
    reject: fn() -> Response<B>,
    on_shed: Option<(RequestMetrics, &'static str)>,
}

impl<S: Clone, B> Clone for LoadShed<S, B> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            permits: self.permits.clone(),
            reject: self.reject,
            on_shed: self.on_shed.clone(),
        }
    }
}

impl<S, ReqB, B> Service<Request<ReqB>> for LoadShed<S, B>
where
    S: Service<Request<ReqB>, Response = Response<B>>,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = Either<Ready<Result<Response<B>, S::Error>>, Permitted<S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => Either::Right(Permitted {
                inner: self.inner.call(req),
                _permit: permit,
            }),
            Err(_) => {
                if let Some((metrics, transport)) = &self.on_shed {
                    metrics
                        .shed
                        .get_or_create(&TransportLabels { transport })
                        .inc();
                }
                tracing::warn!(path = req.uri().path(), "overloaded, shedding request");
                Either::Left(ready(Ok((self.reject)())))
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// The inner future plus the permit it holds until it completes.
    pub struct Permitted<F> {
        #[pin]
        inner: F,
        _permit: OwnedSemaphorePermit,
    }
}

impl<F: Future> Future for Permitted<F> {
    type Output = F::Output;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx)
    }
}

/// Canonical upper-case name of a gRPC status code (as in the gRPC spec).
pub fn grpc_code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Whether a gRPC code means the server failed (span status Error), as the
/// OpenTelemetry RPC conventions define for servers.
pub fn grpc_server_error(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(
        code,
        Unknown | DeadlineExceeded | Unimplemented | Internal | Unavailable | DataLoss
    )
}

/// Splits `/package.Service/Method` into its two halves.
pub fn split_grpc_path(path: &str) -> (&str, &str) {
    let trimmed = path.trim_start_matches('/');
    trimmed.split_once('/').unwrap_or((trimmed, ""))
}

/// Reads the status of a unary gRPC response: errors come as
/// trailers-only responses with `grpc-status` in the headers; its absence
/// means the status follows in the trailers, which for our unary handlers is OK.
pub fn grpc_status_of<B>(response: &Response<B>) -> tonic::Code {
    response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(tonic::Code::from_i32)
        .unwrap_or(tonic::Code::Ok)
}

/// The `grpc-message` of a trailers-only response (percent-decoded), for
/// error reports.
pub fn grpc_message_of<B>(response: &Response<B>) -> String {
    response
        .headers()
        .get("grpc-message")
        .map(|v| percent_decode(v.as_bytes()))
        .unwrap_or_default()
}

/// Decodes the `%XX` escapes gRPC uses in `grpc-message`.
fn percent_decode(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Server span and metrics for every gRPC call.
#[derive(Clone)]
pub struct GrpcServerLayer {
    metrics: RequestMetrics,
    max_budget: std::time::Duration,
}

impl GrpcServerLayer {
    /// `max_budget` is the server's own request timeout.
    pub fn new(metrics: RequestMetrics, max_budget: std::time::Duration) -> Self {
        Self {
            metrics,
            max_budget,
        }
    }
}

impl<S> Layer<S> for GrpcServerLayer {
    type Service = GrpcServer<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GrpcServer {
            inner,
            metrics: self.metrics.clone(),
            max_budget: self.max_budget,
        }
    }
}

#[derive(Clone)]
pub struct GrpcServer<S> {
    inner: S,
    metrics: RequestMetrics,
    max_budget: std::time::Duration,
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for GrpcServer<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqB: Send + 'static,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response<ResB>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        // Take the service that was driven to readiness; leave a fresh clone.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let metrics = self.metrics.clone();
        let (service, method) = split_grpc_path(req.uri().path());
        let (service, method) = (service.to_owned(), method.to_owned());
        // Probes and reflection are counted, not traced: they would bury real traffic.
        let traced =
            !(service.starts_with("grpc.health.") || service.starts_with("grpc.reflection."));
        let span = if traced {
            let span = tracing::info_span!(
                "grpc.server",
                otel.name = format!("{service}/{method}"),
                otel.kind = "server",
                rpc.system = "grpc",
                rpc.service = %service,
                rpc.method = %method,
                rpc.grpc.status_code = tracing::field::Empty,
                otel.status_code = tracing::field::Empty,
                error.type = tracing::field::Empty,
            );
            telemetry::set_remote_parent(&span, req.headers());
            span
        } else {
            tracing::Span::none()
        };
        // The caller's deadline (if any) bounds ours; the server's own
        // timeout is enforced by tonic and applies on top.
        let caller_budget = req
            .headers()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(crate::deadline::parse_grpc_timeout);
        let budget = caller_budget.map_or(self.max_budget, |b| b.min(self.max_budget));
        let deadline = tokio::time::Instant::now() + budget;
        Box::pin(
            async move {
                let start = Instant::now();
                let result = crate::deadline::scope(deadline, inner.call(req)).await;
                let code = match &result {
                    Ok(response) => grpc_status_of(response),
                    Err(_) => tonic::Code::Internal,
                };
                let current = tracing::Span::current();
                current.record("rpc.grpc.status_code", code as i32);
                if grpc_server_error(code) {
                    let message = match &result {
                        Ok(response) => grpc_message_of(response),
                        Err(_) => "the service failed".to_owned(),
                    };
                    telemetry::record_error(&current, grpc_code_name(code), &message);
                }
                metrics
                    .grpc_server_handled
                    .get_or_create(&GrpcLabels {
                        grpc_service: service.clone(),
                        grpc_method: method.clone(),
                        grpc_code: grpc_code_name(code).to_owned(),
                    })
                    .inc();
                crate::metrics::observe_latency(
                    &metrics
                        .grpc_server_duration
                        .get_or_create(&GrpcMethodLabels {
                            grpc_service: service,
                            grpc_method: method,
                        }),
                    start.elapsed().as_secs_f64(),
                    &current,
                );
                result
            }
            .instrument(span),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use std::time::Duration;
    use tower::ServiceExt;

    fn overloaded() -> Response<String> {
        Response::builder()
            .status(503)
            .body("overloaded".into())
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn sheds_beyond_the_limit_and_recovers() {
        let layer = LoadShedLayer::new(2, overloaded);
        let slow = tower::service_fn(|_req: Request<()>| async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok::<_, Infallible>(Response::new("done".to_string()))
        });
        // Two different clones (as per-route layering would create) share the limit.
        let a = layer.layer(slow);
        let b = layer.layer(slow);
        let first = tokio::spawn(a.clone().oneshot(Request::new(())));
        let second = tokio::spawn(b.clone().oneshot(Request::new(())));
        tokio::task::yield_now().await;
        let third = b.clone().oneshot(Request::new(())).await.unwrap();
        assert_eq!(third.status(), 503);
        assert_eq!(first.await.unwrap().unwrap().body(), "done");
        assert_eq!(second.await.unwrap().unwrap().body(), "done");
        let fourth = a.oneshot(Request::new(())).await.unwrap();
        assert_eq!(fourth.body(), "done");
    }

    #[test]
    fn grpc_paths_and_codes() {
        assert_eq!(
            split_grpc_path("/stockmesh.inventory.v1.InventoryService/Reserve"),
            ("stockmesh.inventory.v1.InventoryService", "Reserve")
        );
        let response = Response::builder()
            .header("grpc-status", "9")
            .body(())
            .unwrap();
        assert_eq!(grpc_status_of(&response), tonic::Code::FailedPrecondition);
        assert_eq!(
            grpc_code_name(tonic::Code::FailedPrecondition),
            "FAILED_PRECONDITION"
        );
        assert!(!grpc_server_error(tonic::Code::FailedPrecondition));
        assert!(grpc_server_error(tonic::Code::Unavailable));
    }
}
