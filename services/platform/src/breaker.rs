//! A circuit breaker per upstream.
//!
//! Closed: calls flow; `failure_threshold` consecutive failures open it.
//! Open: calls fail at once (no network) until a penalty has passed; the
//! penalty grows (doubling up to `max_open`) each time a probe fails, with
//! jitter so replicas do not probe in lockstep. Half-open: exactly one probe
//! is let through; success closes the breaker, failure opens it again.
//! Only failures that say "the upstream is unwell" count: timeouts,
//! UNAVAILABLE, connection errors — never NOT_FOUND or FAILED_PRECONDITION.

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
    Closed { failures: u32 },
    Open { until: Instant, penalty: Duration },
    HalfOpen { penalty: Duration },
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
#[must_use]
#[derive(Debug)]
pub struct Admission {
    probe: bool,
}

#[derive(Clone)]
pub struct Breaker {
    name: String,
    config: BreakerConfig,
    inner: Arc<Mutex<Inner>>,
    metrics: BreakerMetrics,
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
        }
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

    /// Asks to make a call.
    pub fn admit(&self) -> Result<Admission, Rejected> {
        let now = Instant::now();
        let mut inner = self.lock();
        match *inner {
            Inner::Closed { .. } => Ok(Admission { probe: false }),
            Inner::Open { until, penalty } if now >= until => {
                *inner = Inner::HalfOpen { penalty };
                drop(inner);
                self.transition(BreakerState::HalfOpen);
                Ok(Admission { probe: true })
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
    pub fn record(&self, admission: Admission, healthy: bool) {
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
            (Inner::HalfOpen { .. }, true) if admission.probe => {
                Some(Inner::Closed { failures: 0 })
            }
            (Inner::HalfOpen { penalty }, false) if admission.probe => {
                let penalty = (*penalty * 2).min(self.config.max_open);
                Some(Inner::Open {
                    until: Instant::now() + jitter(penalty),
                    penalty,
                })
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

    #[test]
    fn only_signs_of_ill_health_count() {
        assert!(is_upstream_failure(tonic::Code::Unavailable));
        assert!(is_upstream_failure(tonic::Code::DeadlineExceeded));
        assert!(!is_upstream_failure(tonic::Code::NotFound));
        assert!(!is_upstream_failure(tonic::Code::FailedPrecondition));
        assert!(!is_upstream_failure(tonic::Code::InvalidArgument));
    }
}
