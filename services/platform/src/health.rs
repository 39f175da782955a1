//! Liveness and readiness.
//!
//! `/healthz` answers 200 while the process runs (a restart is the cure for
//! nothing else). `/readyz` answers whether a load balancer should send this
//! process traffic, and that is a narrower question than "is everything
//! healthy":
//!
//! - **Required checks** ([`Readiness::with_check`]) gate readiness: they
//!   describe something only *this* process lacks and another replica may
//!   have (notification: its consumer is attached to the broker).
//! - **Dependencies** ([`Readiness::with_dependency`]) are reported — in the
//!   `/readyz` body and as `stockmesh_dependency_up{dependency}` — but do not
//!   gate it. A dependency every replica shares (the database) being down
//!   would otherwise take every replica out of the load balancer at once, and
//!   clients would get connection refused instead of the 503 + `Retry-After`
//!   a live process answers.
//! - From the moment shutdown begins (phase 1, see [`crate::shutdown`]) the
//!   answer is 503 at once, without running any check.
//!
//! Every check is bounded by [`CHECK_TIMEOUT`], so `/readyz` answers within
//! a probe's timeout (1 s) whatever its dependencies do. The same verdict
//! drives the gRPC `grpc.health.v1` status.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use serde::Serialize;

use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

type CheckFn = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// How long one check may take before it counts as failed: half of the
/// probes' 1 s timeout, so the answer always arrives in time.
pub const CHECK_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Clone)]
struct Check {
    name: &'static str,
    required: bool,
    run: CheckFn,
}

/// The readiness checks of one service, and the shutdown they give way to.
#[derive(Clone)]
pub struct Readiness {
    checks: Arc<Vec<Check>>,
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
    /// Whether a failure makes the process not ready (false: reported only).
    pub required: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DependencyLabels {
    dependency: &'static str,
}

impl Readiness {
    pub fn new(shutdown: Shutdown) -> Self {
        Self {
            checks: Arc::new(Vec::new()),
            shutdown,
        }
    }

    /// Adds a check that gates readiness; it should be cheap and must not
    /// put secrets in its error.
    pub fn with_check<F, Fut>(self, name: &'static str, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
    {
        self.add(name, true, check)
    }

    /// Adds a dependency that is reported but does not gate readiness (see
    /// the module documentation for why).
    pub fn with_dependency<F, Fut>(self, name: &'static str, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
    {
        self.add(name, false, check)
    }

    fn add<F, Fut>(mut self, name: &'static str, required: bool, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
    {
        let run: CheckFn = Arc::new(move || Box::pin(check()));
        Arc::make_mut(&mut self.checks).push(Check {
            name,
            required,
            run,
        });
        self
    }

    /// The shutdown sequence readiness follows.
    pub fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }

    /// Runs every check concurrently, each bounded by [`CHECK_TIMEOUT`];
    /// answers at once, without checks, once shutdown has begun.
    pub async fn evaluate(&self) -> ReadinessReport {
        if self.shutdown.is_draining() {
            return Self::shutting_down();
        }
        let checks = self.run_checks().await;
        if self.shutdown.is_draining() {
            return Self::shutting_down();
        }
        ReadinessReport {
            ready: checks.iter().all(|c| c.ok || !c.required),
            checks,
        }
    }

    fn shutting_down() -> ReadinessReport {
        ReadinessReport {
            ready: false,
            checks: vec![CheckResult {
                name: "shutdown",
                ok: false,
                required: true,
                error: Some("shutting down".to_owned()),
            }],
        }
    }

    async fn run_checks(&self) -> Vec<CheckResult> {
        let runs = self.checks.iter().map(|check| {
            let fut = (check.run)();
            async move {
                let outcome = match tokio::time::timeout(CHECK_TIMEOUT, fut).await {
                    Ok(outcome) => outcome,
                    Err(_) => Err(format!("no answer within {} ms", CHECK_TIMEOUT.as_millis())),
                };
                CheckResult {
                    name: check.name,
                    ok: outcome.is_ok(),
                    required: check.required,
                    error: outcome.err(),
                }
            }
        });
        futures::future::join_all(runs).await
    }

    /// `/readyz`: 200 when every required check passes, 503 otherwise and
    /// once shutdown has begun; the body lists every check.
    pub async fn respond(&self) -> Response {
        let report = self.evaluate().await;
        for failed in report.checks.iter().filter(|c| !c.ok) {
            tracing::debug!(check = failed.name, required = failed.required, error = ?failed.error, "check failed");
        }
        let status = if report.ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        (status, Json(report)).into_response()
    }

    /// Exposes `stockmesh_dependency_up{dependency}` (1 up, 0 down) for
    /// every check, refreshed at each scrape: the status of what readiness
    /// does not gate on is still visible, and alertable.
    pub fn register_metrics(&self, metrics: &Metrics) {
        let up: Family<DependencyLabels, Gauge> = Family::default();
        metrics.register(
            "dependency_up",
            "Whether a dependency answered its check at the last scrape (1) or not (0)",
            up.clone(),
        );
        let this = self.clone();
        metrics.on_scrape(move || {
            let this = this.clone();
            let up = up.clone();
            async move {
                for check in this.run_checks().await {
                    up.get_or_create(&DependencyLabels {
                        dependency: check.name,
                    })
                    .set(i64::from(check.ok));
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    fn flagged(
        flag: &Arc<AtomicBool>,
    ) -> impl Fn() -> BoxFuture<'static, Result<(), String>> + use<> {
        let flag = flag.clone();
        move || {
            let ok = flag.load(Ordering::SeqCst);
            Box::pin(async move {
                if ok {
                    Ok(())
                } else {
                    Err("connection refused".into())
                }
            })
        }
    }

    #[tokio::test]
    async fn required_checks_gate_readiness_and_dependencies_do_not() {
        let broker = Arc::new(AtomicBool::new(true));
        let database = Arc::new(AtomicBool::new(true));
        let shutdown = Shutdown::new();
        let readiness = Readiness::new(shutdown.clone())
            .with_dependency("database", flagged(&database))
            .with_check("broker", flagged(&broker));
        assert!(readiness.evaluate().await.ready);

        database.store(false, Ordering::SeqCst);
        let report = readiness.evaluate().await;
        assert!(
            report.ready,
            "a shared dependency down keeps the replica ready"
        );
        assert_eq!(report.checks[0].name, "database");
        assert!(!report.checks[0].ok);
        assert!(!report.checks[0].required);
        assert_eq!(
            report.checks[0].error.as_deref(),
            Some("connection refused")
        );

        broker.store(false, Ordering::SeqCst);
        assert!(!readiness.evaluate().await.ready);
        broker.store(true, Ordering::SeqCst);
        assert!(readiness.evaluate().await.ready);

        shutdown.trigger();
        let report = readiness.evaluate().await;
        assert!(!report.ready);
        assert_eq!(report.checks[0].name, "shutdown");
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_check_is_answered_within_the_timeout() {
        let readiness = Readiness::new(Shutdown::new())
            .with_dependency("database", std::future::pending::<Result<(), String>>)
            .with_check("broker", std::future::pending::<Result<(), String>>);
        let start = tokio::time::Instant::now();
        let report = readiness.evaluate().await;
        assert_eq!(start.elapsed(), CHECK_TIMEOUT);
        assert!(!report.ready, "the required check timed out");
        assert!(report.checks.iter().all(|c| !c.ok));
    }

    #[tokio::test(start_paused = true)]
    async fn not_ready_at_once_when_draining_begins_without_waiting_for_checks() {
        let shutdown = Shutdown::new().with_drain(Duration::from_secs(5));
        let readiness = Readiness::new(shutdown.clone())
            .with_dependency("database", std::future::pending::<Result<(), String>>);
        shutdown.begin_drain();
        let start = tokio::time::Instant::now();
        let response = readiness.respond().await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(!shutdown.is_triggered(), "draining, not stopping");
    }
}
