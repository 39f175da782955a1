//! Liveness and readiness.
//!
//! `/healthz` answers 200 while the process runs (a restart is the cure for
//! nothing else). `/readyz` runs the service's pluggable checks (database,
//! broker, ...) and answers 503 while any fails or once shutdown began, so a
//! load balancer stops routing before the listener closes. The same verdict
//! drives the gRPC `grpc.health.v1` status.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use serde::Serialize;

use crate::shutdown::Shutdown;

type CheckFn = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// How long one readiness check may take before it counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The set of readiness checks of one service.
#[derive(Clone)]
pub struct Readiness {
    checks: Arc<Vec<(&'static str, CheckFn)>>,
    shutdown: Shutdown,
}

/// Outcome of one readiness evaluation.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ReadinessReport {
    pub ready: bool,
    pub checks: Vec<CheckResult>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CheckResult {
    pub name: &'static str,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Readiness {
    pub fn new(shutdown: Shutdown) -> Self {
        Self {
            checks: Arc::new(Vec::new()),
            shutdown,
        }
    }

    /// Adds a check; it should be cheap (one round trip) and must not log
    /// secrets in its error.
    pub fn with_check<F, Fut>(mut self, name: &'static str, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
    {
        let check: CheckFn = Arc::new(move || Box::pin(check()));
        Arc::make_mut(&mut self.checks).push((name, check));
        self
    }

    /// Runs every check concurrently.
    pub async fn evaluate(&self) -> ReadinessReport {
        let runs = self.checks.iter().map(|(name, check)| {
            let fut = check();
            async move {
                let outcome = match tokio::time::timeout(CHECK_TIMEOUT, fut).await {
                    Ok(outcome) => outcome,
                    Err(_) => Err(format!("timed out after {CHECK_TIMEOUT:?}")),
                };
                CheckResult {
                    name,
                    ok: outcome.is_ok(),
                    error: outcome.err(),
                }
            }
        });
        let mut checks = futures::future::join_all(runs).await;
        if self.shutdown.is_triggered() {
            checks.push(CheckResult {
                name: "shutdown",
                ok: false,
                error: Some("shutting down".to_owned()),
            });
        }
        ReadinessReport {
            ready: checks.iter().all(|c| c.ok),
            checks,
        }
    }

    /// `/readyz`: 200 when every check passes, 503 with the failures otherwise.
    pub async fn respond(&self) -> Response {
        let report = self.evaluate().await;
        if !report.ready {
            for failed in report.checks.iter().filter(|c| !c.ok) {
                tracing::debug!(check = failed.name, error = ?failed.error, "not ready");
            }
        }
        let status = if report.ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        (status, Json(report)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[tokio::test]
    async fn readiness_follows_checks_and_shutdown() {
        let healthy = Arc::new(AtomicBool::new(true));
        let flag = healthy.clone();
        let shutdown = Shutdown::new();
        let readiness = Readiness::new(shutdown.clone()).with_check("database", move || {
            let ok = flag.load(Ordering::SeqCst);
            async move {
                if ok {
                    Ok(())
                } else {
                    Err("connection refused".into())
                }
            }
        });
        assert!(readiness.evaluate().await.ready);
        healthy.store(false, Ordering::SeqCst);
        let report = readiness.evaluate().await;
        assert!(!report.ready);
        assert_eq!(
            report.checks[0].error.as_deref(),
            Some("connection refused")
        );
        healthy.store(true, Ordering::SeqCst);
        assert!(readiness.evaluate().await.ready);
        shutdown.trigger();
        assert!(!readiness.evaluate().await.ready);
    }
}
