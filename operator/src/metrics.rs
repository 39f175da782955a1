//! Prometheus metrics of the reconciler, served on `/metrics`.

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
    pub action: String,
}

/// Counters and histograms of the reconciler.
pub struct Metrics {
    pub reconciles: Counter,
    pub failures: Family<ReasonLabel, Counter>,
    pub duration: Histogram,
    pub writes: Family<KindLabel, Counter>,
    registry: Mutex<Registry>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let reconciles = Counter::default();
        let failures = Family::<ReasonLabel, Counter>::default();
        let duration = Histogram::new([
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        ]);
        let writes = Family::<KindLabel, Counter>::default();
        let mut registry = Registry::with_prefix("stockmesh_operator");
        registry.register(
            "reconciles",
            "Reconciles of InventorySystems",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_failures",
            "Failed reconciles, by reason",
            failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Duration of one reconcile",
            duration.clone(),
        );
        registry.register(
            "object_writes",
            "Objects created, updated or deleted, by kind and action",
            writes.clone(),
        );
        Self {
            reconciles,
            failures,
            duration,
            writes,
            registry: Mutex::new(registry),
        }
    }

    pub fn observe(&self, elapsed: Duration) {
        self.duration.observe(elapsed.as_secs_f64());
    }

    pub fn failed(&self, reason: &str) {
        self.failures
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }

    pub fn wrote(&self, kind: &str, action: &str) {
        self.writes
            .get_or_create(&KindLabel {
                kind: kind.to_owned(),
                action: action.to_owned(),
            })
            .inc();
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Ok(registry) = self.registry.lock()
            && prometheus_client::encoding::text::encode(&mut out, &registry).is_err()
        {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_counters_failures_and_histogram() {
        let m = Metrics::new();
        m.reconciles.inc();
        m.failed("Forbidden");
        m.observe(Duration::from_millis(20));
        let text = m.encode();
        assert!(
            text.contains("stockmesh_operator_reconciles_total 1"),
            "{text}"
        );
        assert!(
            text.contains("stockmesh_operator_reconcile_failures_total{reason=\"Forbidden\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("stockmesh_operator_reconcile_duration_seconds_count 1"),
            "{text}"
        );
    }
}
