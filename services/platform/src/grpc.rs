//! The gRPC server every gRPC service runs.
//!
//! Standard layers: server span + per-method metrics, process-wide load
//! shedding (RESOURCE_EXHAUSTED at once instead of queueing) and a request
//! timeout that also honours the caller's `grpc-timeout` (the smaller wins,
//! so a caller's remaining deadline propagates). Every server also serves
//! `grpc.health.v1.Health` — driven by the service's readiness checks — and
//! reflection v1, so `grpcurl` works without the .proto files.

use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::Routes;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::health::Readiness;
use crate::layers::{GrpcServerLayer, LoadShedLayer};
use crate::metrics::Metrics;
use crate::shutdown::{Phase, Shutdown};

/// How often readiness is re-evaluated for the gRPC health service.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);

/// Settings of one gRPC server.
#[derive(Debug, Clone)]
pub struct GrpcSettings {
    pub request_timeout: Duration,
    pub max_concurrent_requests: usize,
    /// Fully-qualified service names whose health follows readiness.
    pub service_names: Vec<&'static str>,
}

fn overloaded() -> http::Response<tonic::body::Body> {
    tonic::Status::resource_exhausted("server overloaded, retry shortly").into_http()
}

/// Serves `routes` plus health and reflection until shutdown, then drains.
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    file_descriptor_set: &'static [u8],
    settings: GrpcSettings,
    readiness: Readiness,
    metrics: Metrics,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(file_descriptor_set)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;

    // Known (as NOT_SERVING) from the first call on, until readiness says otherwise.
    for name in std::iter::once("").chain(settings.service_names.iter().copied()) {
        reporter
            .set_service_status(name, ServingStatus::NotServing)
            .await;
    }
    let health_task = tokio::spawn(follow_readiness(
        reporter,
        settings.service_names.clone(),
        readiness,
        shutdown.clone(),
    ));
    // Phase 2 (after the drain window): the listener closes, every
    // connection gets GOAWAY, in-flight calls finish.

    let routes = routes.add_service(health_service).add_service(reflection);
    tracing::info!(%addr, "gRPC server listening");
    let result = tonic::transport::Server::builder()
        .timeout(settings.request_timeout)
        .layer(GrpcServerLayer::new(
            metrics.requests.clone(),
            settings.request_timeout,
        ))
        .layer(
            LoadShedLayer::new(settings.max_concurrent_requests, overloaded)
                .counting(metrics.requests.clone(), "grpc"),
        )
        .add_routes(routes)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown.cancelled())
        .await;
    health_task.abort();
    result?;
    tracing::info!(%addr, "gRPC server drained");
    Ok(())
}

/// Mirrors readiness into `grpc.health.v1` for "" and each named service:
/// re-evaluated every [`HEALTH_INTERVAL`], and at once when the shutdown
/// phase changes (NOT_SERVING from the first instant of the drain).
async fn follow_readiness(
    reporter: HealthReporter,
    names: Vec<&'static str>,
    readiness: Readiness,
    shutdown: Shutdown,
) {
    let mut phase = shutdown.watch();
    let mut last = Some(ServingStatus::NotServing);
    loop {
        // A drain that begins while a check is still running wins at once.
        let ready = tokio::select! {
            report = readiness.evaluate() => report.ready,
            _ = phase.wait_for(|p| *p != Phase::Serving) => false,
        };
        let status = if ready {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        if last != Some(status) {
            tracing::info!(?status, "gRPC health status");
            for name in std::iter::once("").chain(names.iter().copied()) {
                reporter.set_service_status(name, status).await;
            }
            last = Some(status);
        }
        tokio::select! {
            _ = tokio::time::sleep(HEALTH_INTERVAL) => {}
            changed = phase.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shutdown::Signal;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus as Status;
    use tonic_health::pb::health_client::HealthClient;

    async fn status(channel: tonic::transport::Channel) -> Option<Status> {
        let answer = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .ok()?;
        Status::try_from(answer.into_inner().status).ok()
    }

    /// Real sockets, real time: NOT_SERVING from the first moment of the
    /// drain on a connection that keeps working; after the window the port
    /// refuses and the server has finished.
    #[tokio::test]
    async fn health_turns_not_serving_at_once_and_the_port_closes_after_the_drain() {
        let drain = Duration::from_millis(1500);
        let shutdown = Shutdown::new().with_drain(drain);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let server = shutdown.spawn(serve(
            listener,
            Routes::default(),
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            GrpcSettings {
                request_timeout: Duration::from_secs(5),
                max_concurrent_requests: 8,
                service_names: vec!["test.Service"],
            },
            Readiness::new(shutdown.clone()),
            Metrics::new("test"),
            shutdown.clone(),
        ));
        let (signals, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn({
            let s = shutdown.clone();
            async move { s.follow_signals(rx).await }
        });
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect()
            .await
            .expect("connects");
        let mut serving = false;
        for _ in 0..50 {
            if status(channel.clone()).await == Some(Status::Serving) {
                serving = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(serving, "SERVING once ready");

        let signalled = std::time::Instant::now();
        signals.send(Signal::Terminate).expect("signal sent");
        let mut not_serving = false;
        while signalled.elapsed() < Duration::from_millis(500) {
            if status(channel.clone()).await == Some(Status::NotServing) {
                not_serving = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(not_serving, "NOT_SERVING within 500 ms of SIGTERM");
        assert!(
            signalled.elapsed() < drain,
            "answered on the same connection, inside the drain window"
        );
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_ok(),
            "still accepting during the drain"
        );

        shutdown.cancelled().await;
        assert!(shutdown.drained(Duration::from_secs(5)).await);
        assert!(matches!(server.await, Ok(Ok(()))));
        assert_eq!(
            tokio::net::TcpStream::connect(addr)
                .await
                .err()
                .map(|e| e.kind()),
            Some(std::io::ErrorKind::ConnectionRefused),
            "the listener is closed after the drain"
        );
    }
}
