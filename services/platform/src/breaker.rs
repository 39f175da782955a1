//! A circuit breaker per upstream.
//!
//! Closed: calls flow; `failure_threshold` consecutive failures open it.
//! Open: calls fail at once (no network) until a penalty has passed; the
//! penalty grows (doubling up to `max_open`) each time a probe fails, with
//! jitter so replicas do not probe in lockstep. Half-open: exactly one probe
//! is let through; success closes the breaker, failure opens it again.
//! The probe's outcome is recorded even when its caller goes away: an
//! [`Admission`] dropped before its outcome was recorded (client gone, edge
//! timeout, shutdown) counts as a failed probe, and a probe that has neither
//! answered nor been dropped after the probe timeout is presumed failed too,
//! so the breaker can never stay half-open (refusing every call) for good.
//! Only failures that say "the upstream is unwell" count: timeouts,
//! UNAVAILABLE, connection errors — never NOT_FOUND or FAILED_PRECONDITION.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::time::Instant;

use crate::config::EnvReader;
use crate::metrics::Metrics;

#[derive(Debug, Clone, Copy)]
pub struct BreakerConfig {
    pub failure_threshold: u32,
    /// First open period.
    pub open_for: Duration,
    /// Longest open period after repeated failed probes.
    pub max_open: Duration,
}

impl BreakerConfig {
    /// `BREAKER_FAILURE_THRESHOLD` (default 5), `BREAKER_OPEN_MS` (default 2000),
    /// `BREAKER_MAX_OPEN_MS` (default 30000).
    pub fn read(env: &mut EnvReader) -> Self {
        let failure_threshold = env.with_default("BREAKER_FAILURE_THRESHOLD", 5u32);
        if failure_threshold == 0 {
            env.problem("BREAKER_FAILURE_THRESHOLD must be at least 1");
        }
        Self {
            failure_threshold: failure_threshold.max(1),
            open_for: env.millis("BREAKER_OPEN_MS", Duration::from_secs(2)),
            max_open: env.millis("BREAKER_MAX_OPEN_MS", Duration::from_secs(30)),
        }
    }
}

/// The breaker's state, as exported (`0` closed, `1` open, `2` half-open).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

#[derive(Debug)]
enum Inner {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
        penalty: Duration,
    },
    /// `probe` identifies the one admitted probe, so that only its outcome
    /// (not a late answer of an earlier, presumed-failed probe) decides.
    HalfOpen {
        penalty: Duration,
        probe: u64,
        expires: Instant,
    },
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabel {
    upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransitionLabels {
    upstream: String,
    state: &'static str,
}

/// Metric families shared by every breaker of a process.
#[derive(Clone, Default)]
pub struct BreakerMetrics {
    state: Family<UpstreamLabel, Gauge>,
    transitions: Family<TransitionLabels, Counter>,
    rejected: Family<UpstreamLabel, Counter>,
}

impl BreakerMetrics {
    pub fn register(metrics: &Metrics) -> Self {
        let this = Self::default();
        metrics.register(
            "circuit_breaker_state",
            "Circuit breaker state per upstream: 0 closed, 1 open, 2 half-open",
            this.state.clone(),
        );
        metrics.register(
            "circuit_breaker_transitions",
            "Circuit breaker state changes per upstream and new state",
            this.transitions.clone(),
        );
        metrics.register(
            "circuit_breaker_rejected",
            "Calls failed fast by an open circuit breaker",
            this.rejected.clone(),
        );
        this
    }
}

/// Refusal from an open breaker: how long until it will try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected {
    pub retry_after: Duration,
}

/// Permission to make one call; report its outcome with [`Breaker::record`].
///
/// A guard: the half-open probe's admission, dropped without an outcome
/// (its future was cancelled), records a failed probe, because nothing else
/// would ever take the breaker out of half-open. An ordinary admission
/// dropped that way records nothing: a call that never finished says
/// nothing about the upstream's health.
#[must_use = "report the call's outcome with Breaker::record"]
pub struct Admission {
    /// The breaker and the probe's id while this is an unrecorded probe.
    probe: Option<(Breaker, u64)>,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("probe", &self.probe.as_ref().map(|(_, id)| *id))
            .finish()
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let Some((breaker, probe)) = self.probe.take() {
            tracing::info!(upstream = %breaker.name, "circuit breaker probe abandoned; counted as failed");
            breaker.settle_probe(probe, false);
        }
    }
}

#[derive(Clone)]
pub struct Breaker {
    name: String,
    config: BreakerConfig,
    inner: Arc<Mutex<Inner>>,
    metrics: BreakerMetrics,
    /// Source of probe ids.
    probes: Arc<AtomicU64>,
    /// How long a probe may stay unanswered before it is presumed failed.
    probe_timeout: Duration,
}

impl Breaker {
    pub fn new(name: &str, config: BreakerConfig, metrics: BreakerMetrics) -> Self {
        metrics
            .state
            .get_or_create(&UpstreamLabel {
                upstream: name.to_owned(),
            })
            .set(0);
        Self {
            name: name.to_owned(),
            config,
            inner: Arc::new(Mutex::new(Inner::Closed { failures: 0 })),
            metrics,
            probes: Arc::new(AtomicU64::new(0)),
            // Without a known call deadline, the longest open period.
            probe_timeout: config.max_open,
        }
    }

    /// Sets how long a probe may stay unanswered before it is presumed
    /// failed: a safety net behind the drop guard, for a probe whose future
    /// is neither finished nor dropped. Give it the longest a call can take.
    pub fn with_probe_timeout(mut self, probe_timeout: Duration) -> Self {
        self.probe_timeout = probe_timeout;
        self
    }

    pub fn state(&self) -> BreakerState {
        match *self.lock() {
            Inner::Closed { .. } => BreakerState::Closed,
            Inner::Open { .. } => BreakerState::Open,
            Inner::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A poisoned lock only means another call panicked mid-update; the
        // state is still a valid enum value.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How long the breaker will still refuse calls, without asking for one
    /// (no probe is started): `Some` while open and not due for a probe, or
    /// half-open with its probe in flight; counted as a rejection, since the
    /// caller then gives up the call. Lets a caller skip work that only
    /// makes sense if the call can be made (the order service stores no
    /// order it already knows inventory will refuse).
    pub fn refusing(&self) -> Option<Duration> {
        let now = Instant::now();
        let wait = match *self.lock() {
            Inner::Open { until, .. } if now < until => until - now,
            Inner::HalfOpen { expires, .. } if now < expires => Duration::from_millis(500),
            _ => return None,
        };
        self.rejected();
        Some(wait)
    }

    /// Asks to make a call.
    pub fn admit(&self) -> Result<Admission, Rejected> {
        let now = Instant::now();
        let mut inner = self.lock();
        match *inner {
            Inner::Closed { .. } => Ok(Admission { probe: None }),
            Inner::Open { until, penalty } if now >= until => {
                let probe = self.probes.fetch_add(1, Ordering::Relaxed);
                *inner = Inner::HalfOpen {
                    penalty,
                    probe,
                    expires: now + self.probe_timeout,
                };
                drop(inner);
                self.transition(BreakerState::HalfOpen);
                Ok(Admission {
                    probe: Some((self.clone(), probe)),
                })
            }
            Inner::HalfOpen {
                penalty, expires, ..
            } if now >= expires => {
                // The probe neither answered nor was dropped in time:
                // presume it failed, as a failed probe would have.
                let penalty = self.longer(penalty);
                let until = now + jitter(penalty);
                *inner = Inner::Open { until, penalty };
                drop(inner);
                tracing::warn!(upstream = %self.name, "circuit breaker probe timed out; counted as failed");
                self.transition(BreakerState::Open);
                self.rejected();
                Err(Rejected {
                    retry_after: until - now,
                })
            }
            Inner::Open { until, .. } => {
                drop(inner);
                self.rejected();
                Err(Rejected {
                    retry_after: until - now,
                })
            }
            Inner::HalfOpen { .. } => {
                drop(inner);
                self.rejected();
                Err(Rejected {
                    retry_after: Duration::from_millis(500),
                })
            }
        }
    }

    /// Reports the outcome of an admitted call: `true` when the upstream
    /// behaved (any answer that is not a sign of ill health).
    pub fn record(&self, mut admission: Admission, healthy: bool) {
        // Taken out of the guard: recorded here, not again on drop.
        if let Some((_, probe)) = admission.probe.take() {
            self.settle_probe(probe, healthy);
            return;
        }
        self.record_ordinary(healthy);
    }

    /// The outcome of the probe `probe`: closes or re-opens the breaker if
    /// that probe is still the one the breaker waits for; otherwise (it was
    /// presumed failed meanwhile) it is a late answer like any other.
    fn settle_probe(&self, probe: u64, healthy: bool) {
        let mut inner = self.lock();
        let next = match &*inner {
            Inner::HalfOpen {
                probe: current,
                penalty,
                ..
            } if *current == probe => {
                if healthy {
                    Inner::Closed { failures: 0 }
                } else {
                    let penalty = self.longer(*penalty);
                    Inner::Open {
                        until: Instant::now() + jitter(penalty),
                        penalty,
                    }
                }
            }
            _ => {
                drop(inner);
                self.record_ordinary(healthy);
                return;
            }
        };
        *inner = next;
        let after = state_of(&inner);
        drop(inner);
        self.transition(after);
    }

    /// The next, longer open period after a failed probe.
    fn longer(&self, penalty: Duration) -> Duration {
        (penalty * 2).min(self.config.max_open)
    }

    /// The outcome of a call that was not the probe.
    fn record_ordinary(&self, healthy: bool) {
        let mut inner = self.lock();
        let next = match (&*inner, healthy) {
            (Inner::Closed { .. }, true) => Some(Inner::Closed { failures: 0 }),
            (Inner::Closed { failures }, false) => {
                let failures = failures + 1;
                if failures >= self.config.failure_threshold {
                    let penalty = self.config.open_for;
                    Some(Inner::Open {
                        until: Instant::now() + jitter(penalty),
                        penalty,
                    })
                } else {
                    Some(Inner::Closed { failures })
                }
            }
            // Late answers of calls admitted before the state changed.
            _ => None,
        };
        let Some(next) = next else { return };
        let before = state_of(&inner);
        *inner = next;
        let after = state_of(&inner);
        drop(inner);
        if before != after {
            self.transition(after);
        }
    }

    fn transition(&self, state: BreakerState) {
        let (value, name) = match state {
            BreakerState::Closed => (0, "closed"),
            BreakerState::Open => (1, "open"),
            BreakerState::HalfOpen => (2, "half_open"),
        };
        match state {
            BreakerState::Open => tracing::warn!(upstream = %self.name, "circuit breaker opened"),
            _ => {
                tracing::info!(upstream = %self.name, state = name, "circuit breaker state changed")
            }
        }
        self.metrics
            .state
            .get_or_create(&UpstreamLabel {
                upstream: self.name.clone(),
            })
            .set(value);
        self.metrics
            .transitions
            .get_or_create(&TransitionLabels {
                upstream: self.name.clone(),
                state: name,
            })
            .inc();
    }

    fn rejected(&self) {
        self.metrics
            .rejected
            .get_or_create(&UpstreamLabel {
                upstream: self.name.clone(),
            })
            .inc();
    }
}

fn state_of(inner: &Inner) -> BreakerState {
    match inner {
        Inner::Closed { .. } => BreakerState::Closed,
        Inner::Open { .. } => BreakerState::Open,
        Inner::HalfOpen { .. } => BreakerState::HalfOpen,
    }
}

/// `base` plus up to 20 % random extra.
fn jitter(base: Duration) -> Duration {
    let random = uuid::Uuid::new_v4().as_u128() as u64 % 1000;
    base + base.mul_f64(random as f64 / 5000.0)
}

/// Whether a gRPC code means "the upstream is unwell" (counts against it).
pub fn is_upstream_failure(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Unknown
            | tonic::Code::Internal
            | tonic::Code::ResourceExhausted
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(
            "inventory",
            BreakerConfig {
                failure_threshold: 3,
                open_for: Duration::from_secs(1),
                max_open: Duration::from_secs(8),
            },
            BreakerMetrics::default(),
        )
    }

    fn fail(b: &Breaker) {
        let admission = b.admit().expect("admitted");
        b.record(admission, false);
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_and_fails_fast() {
        let b = breaker();
        fail(&b);
        fail(&b);
        // A success resets the count: failures must be consecutive.
        let ok = b.admit().unwrap();
        b.record(ok, true);
        fail(&b);
        fail(&b);
        assert_eq!(b.state(), BreakerState::Closed);
        fail(&b);
        assert_eq!(b.state(), BreakerState::Open);
        let rejected = b.admit().unwrap_err();
        assert!(rejected.retry_after >= Duration::from_secs(1));
        assert!(rejected.retry_after <= Duration::from_millis(1200));
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_admits_one_probe_and_closes_on_success() {
        let b = breaker();
        for _ in 0..3 {
            fail(&b);
        }
        tokio::time::advance(Duration::from_millis(1250)).await;
        let probe = b.admit().expect("one probe after the penalty");
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.admit().is_err(), "only one probe at a time");
        b.record(probe, true);
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.admit().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn refusing_tells_without_taking_the_probe() {
        let b = breaker();
        assert_eq!(b.refusing(), None);
        for _ in 0..3 {
            fail(&b);
        }
        let wait = b.refusing().expect("open");
        assert!(wait >= Duration::from_secs(1) && wait <= Duration::from_millis(1200));
        tokio::time::advance(Duration::from_millis(1250)).await;
        // Due for a probe: not refusing, and asking did not start the probe.
        assert_eq!(b.refusing(), None);
        assert_eq!(b.state(), BreakerState::Open);
        let probe = b.admit().expect("the probe is still there to take");
        assert!(b.refusing().is_some(), "refusing while the probe is out");
        b.record(probe, true);
        assert_eq!(b.refusing(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_probe_reopens_with_a_growing_penalty() {
        let b = breaker();
        for _ in 0..3 {
            fail(&b);
        }
        tokio::time::advance(Duration::from_millis(1250)).await;
        let probe = b.admit().unwrap();
        b.record(probe, false);
        assert_eq!(b.state(), BreakerState::Open);
        let wait = b.admit().unwrap_err().retry_after;
        assert!(
            wait >= Duration::from_secs(2) && wait <= Duration::from_millis(2400),
            "{wait:?}"
        );
        tokio::time::advance(Duration::from_millis(2500)).await;
        let probe = b.admit().unwrap();
        b.record(probe, true);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_probe_counts_as_failed_and_a_later_probe_is_admitted() {
        let b = breaker();
        for _ in 0..3 {
            fail(&b);
        }
        tokio::time::advance(Duration::from_millis(1250)).await;
        let probe = b.admit().expect("one probe after the penalty");
        assert_eq!(b.state(), BreakerState::HalfOpen);
        // The probe's caller went away (client gone, edge timeout, shutdown).
        drop(probe);
        assert_eq!(b.state(), BreakerState::Open, "a dropped probe failed");
        let wait = b.admit().unwrap_err().retry_after;
        assert!(
            wait >= Duration::from_secs(2) && wait <= Duration::from_millis(2400),
            "the penalty grew as for a failed probe: {wait:?}"
        );
        tokio::time::advance(Duration::from_millis(2500)).await;
        let probe = b.admit().expect("a new probe once the penalty passed");
        b.record(probe, true);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_that_never_finishes_is_presumed_failed_after_the_probe_timeout() {
        let b = breaker().with_probe_timeout(Duration::from_secs(3));
        for _ in 0..3 {
            fail(&b);
        }
        tokio::time::advance(Duration::from_millis(1250)).await;
        // Neither recorded nor dropped (a wedged future).
        let stuck = b.admit().expect("the probe");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(b.admit().is_err(), "still waiting for the probe");
        tokio::time::advance(Duration::from_millis(1100)).await;
        let wait = b.admit().unwrap_err().retry_after;
        assert_eq!(b.state(), BreakerState::Open, "the probe timed out");
        assert!(wait >= Duration::from_secs(2), "{wait:?}");
        tokio::time::advance(Duration::from_millis(2500)).await;
        let probe = b.admit().expect("a new probe");
        // The stuck probe's late answer does not decide for the new one.
        b.record(stuck, true);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        b.record(probe, true);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_ordinary_admission_records_nothing() {
        let b = breaker();
        fail(&b);
        fail(&b);
        let admission = b.admit().unwrap();
        drop(admission);
        // Still two failures: one more opens it, as without the dropped call.
        assert_eq!(b.state(), BreakerState::Closed);
        fail(&b);
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn only_signs_of_ill_health_count() {
        assert!(is_upstream_failure(tonic::Code::Unavailable));
        assert!(is_upstream_failure(tonic::Code::DeadlineExceeded));
        assert!(!is_upstream_failure(tonic::Code::NotFound));
        assert!(!is_upstream_failure(tonic::Code::FailedPrecondition));
        assert!(!is_upstream_failure(tonic::Code::InvalidArgument));
    }
}
