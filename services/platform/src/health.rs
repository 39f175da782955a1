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
//! Every check is bounded by [`CHECK_TIMEOUT`], and a dependency's result is
//! reused for [`DEPENDENCY_REFRESH`] and then refreshed in the background, so
//! `/readyz` answers within a probe's timeout (1 s) whatever its dependencies
//! do — at once, on a loaded machine too, while it is asked regularly (as
//! probes do). A result older than [`DEPENDENCY_STALE`] is never reported:
//! after a quiet spell the answer waits for a fresh check (at most
//! [`CHECK_TIMEOUT`]) rather than tell what was true long ago. The same
//! verdict drives the gRPC `grpc.health.v1` status.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
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

/// How long a dependency's last result is reused before it is checked again
/// (in the background: the answer does not wait for it).
pub const DEPENDENCY_REFRESH: Duration = Duration::from_secs(1);

/// How old a dependency's result may be and still be reported; older ones
/// are checked again before answering. Longer than a probe period plus a
/// refresh, so regular probes always get the cached answer at once.
pub const DEPENDENCY_STALE: Duration = Duration::from_secs(3);

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
    dependencies: Arc<DependencyCache>,
}

/// Check results, each with the index of its check (to keep their order).
type Indexed = Vec<(usize, CheckResult)>;

/// The dependencies' last results and when they were taken; one background
/// refresh at a time.
#[derive(Default)]
struct DependencyCache {
    last: Mutex<Option<(tokio::time::Instant, Indexed)>>,
    refreshing: AtomicBool,
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
            dependencies: Arc::default(),
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

    /// Runs the required checks concurrently, each bounded by
    /// [`CHECK_TIMEOUT`], and reports the dependencies' latest results
    /// (checked inline only the first time); answers at once, without
    /// checks, once shutdown has begun.
    pub async fn evaluate(&self) -> ReadinessReport {
        if self.shutdown.is_draining() {
            return Self::shutting_down();
        }
        let (required, dependencies) =
            futures::future::join(self.run(|c| c.required), self.dependency_results()).await;
        if self.shutdown.is_draining() {
            return Self::shutting_down();
        }
        let mut checks: Vec<(usize, CheckResult)> =
            required.into_iter().chain(dependencies).collect();
        checks.sort_by_key(|(index, _)| *index);
        let checks: Vec<CheckResult> = checks.into_iter().map(|(_, c)| c).collect();
        ReadinessReport {
            ready: checks.iter().all(|c| c.ok || !c.required),
            checks,
        }
    }

    /// The dependencies' latest results: checked now the first time (and
    /// whenever the last result is older than [`DEPENDENCY_STALE`]), else
    /// reused, and refreshed in the background once older than
    /// [`DEPENDENCY_REFRESH`].
    async fn dependency_results(&self) -> Indexed {
        let cached = self
            .dependencies
            .last
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match cached {
            Some((taken, results)) if taken.elapsed() < DEPENDENCY_STALE => {
                if taken.elapsed() >= DEPENDENCY_REFRESH
                    && !self.dependencies.refreshing.swap(true, Ordering::SeqCst)
                {
                    let this = self.clone();
                    tokio::spawn(async move {
                        this.refresh_dependencies().await;
                        this.dependencies.refreshing.store(false, Ordering::SeqCst);
                    });
                }
                results
            }
            _ => self.refresh_dependencies().await,
        }
    }

    async fn refresh_dependencies(&self) -> Indexed {
        let results = self.run(|c| !c.required).await;
        *self
            .dependencies
            .last
            .lock()
            .unwrap_or_else(|e| e.into_inner()) =
            Some((tokio::time::Instant::now(), results.clone()));
        results
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

    /// Runs every check now (metrics), in their order.
    async fn run_checks(&self) -> Vec<CheckResult> {
        self.run(|_| true)
            .await
            .into_iter()
            .map(|(_, c)| c)
            .collect()
    }

    /// Runs the checks `which` selects, concurrently, each bounded by
    /// [`CHECK_TIMEOUT`]; each result with the check's index.
    async fn run(&self, which: impl Fn(&Check) -> bool) -> Indexed {
        let runs = self
            .checks
            .iter()
            .enumerate()
            .filter(|(_, c)| which(c))
            .map(|(index, check)| {
                let fut = (check.run)();
                async move {
                    let outcome = match tokio::time::timeout(CHECK_TIMEOUT, fut).await {
                        Ok(outcome) => outcome,
                        Err(_) => Err(format!("no answer within {} ms", CHECK_TIMEOUT.as_millis())),
                    };
                    (
                        index,
                        CheckResult {
                            name: check.name,
                            ok: outcome.is_ok(),
                            required: check.required,
                            error: outcome.err(),
                        },
                    )
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

    #[tokio::test(start_paused = true)]
    async fn required_checks_gate_readiness_and_dependencies_do_not() {
        let broker = Arc::new(AtomicBool::new(true));
        let database = Arc::new(AtomicBool::new(true));
        let shutdown = Shutdown::new();
        let readiness = Readiness::new(shutdown.clone())
            .with_dependency("database", flagged(&database))
            .with_check("broker", flagged(&broker));
        assert!(readiness.evaluate().await.ready);

        database.store(false, Ordering::SeqCst);
        // Seen once the last result is older than the refresh period: that
        // answer still carries it and starts a refresh, the next one has it.
        tokio::time::sleep(DEPENDENCY_REFRESH).await;
        assert!(readiness.evaluate().await.checks[0].ok);
        settle().await;
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

    /// Lets spawned tasks run without moving the paused clock.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    /// Once a dependency has a result, an answer never waits for it, even
    /// while it hangs: the refresh runs in the background.
    #[tokio::test(start_paused = true)]
    async fn a_hanging_dependency_delays_only_the_first_answer() {
        let hanging = Arc::new(AtomicBool::new(false));
        let flag = hanging.clone();
        let readiness = Readiness::new(Shutdown::new()).with_dependency("database", move || {
            let hang = flag.load(Ordering::SeqCst);
            async move {
                if hang {
                    std::future::pending::<()>().await;
                }
                Ok(())
            }
        });
        assert!(readiness.evaluate().await.checks[0].ok);
        hanging.store(true, Ordering::SeqCst);
        tokio::time::sleep(DEPENDENCY_REFRESH).await;
        for _ in 0..5 {
            let start = tokio::time::Instant::now();
            let report = readiness.evaluate().await;
            assert_eq!(start.elapsed(), Duration::ZERO, "answered at once");
            assert!(report.ready);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // The background refresh timed out meanwhile: reported, not ready-gating.
        let report = readiness.evaluate().await;
        assert!(report.ready);
        assert!(!report.checks[0].ok, "{report:?}");
    }

    /// After a quiet spell longer than [`DEPENDENCY_STALE`] (no probe asked),
    /// the old result is not reported: the answer checks again, and waits
    /// for it no longer than [`CHECK_TIMEOUT`].
    #[tokio::test(start_paused = true)]
    async fn a_result_older_than_the_stale_limit_is_checked_again_before_answering() {
        let database = Arc::new(AtomicBool::new(true));
        let readiness =
            Readiness::new(Shutdown::new()).with_dependency("database", flagged(&database));
        assert!(readiness.evaluate().await.checks[0].ok);
        database.store(false, Ordering::SeqCst);
        tokio::time::sleep(DEPENDENCY_STALE).await;
        let report = readiness.evaluate().await;
        assert!(!report.checks[0].ok, "{report:?}");
        assert!(report.ready, "a dependency does not gate readiness");

        let hanging = Readiness::new(Shutdown::new())
            .with_dependency("database", std::future::pending::<Result<(), String>>);
        let _ = hanging.evaluate().await;
        tokio::time::sleep(DEPENDENCY_STALE * 2).await;
        let start = tokio::time::Instant::now();
        let report = hanging.evaluate().await;
        assert_eq!(start.elapsed(), CHECK_TIMEOUT);
        assert!(!report.checks[0].ok);
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
