//! Prometheus metrics of the reconciler, served on `/metrics`.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabel {
    pub verb: String,
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerbLabel {
    pub verb: String,
}

/// The verbs a reconcile may use, each observed (zero included) in
/// `stockmesh_operator_api_calls_per_reconcile` after every reconcile.
pub const VERBS: [&str; 5] = ["get", "list", "create", "patch", "delete"];

type HistogramFamily = Family<VerbLabel, Histogram, fn() -> Histogram>;

fn calls_histogram() -> Histogram {
    Histogram::new([0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0])
}

tokio::task_local! {
    /// The API calls of the reconcile running on this task, by verb.
    static RECONCILE_CALLS: Arc<Mutex<BTreeMap<&'static str, u64>>>;
}

/// Counters and histograms of the reconciler.
pub struct Metrics {
    pub reconciles: Counter,
    pub failures: Family<ReasonLabel, Counter>,
    pub duration: Histogram,
    pub writes: Family<KindLabel, Counter>,
    /// Requests the reconciler sent to the API server, by verb and kind.
    pub api_calls: Family<CallLabel, Counter>,
    /// Requests of one reconcile, by verb.
    pub api_calls_per_reconcile: HistogramFamily,
    /// 1 while this replica holds the leader Lease (or runs without leader
    /// election), else 0: which of the replicas reconciles.
    pub leader: Gauge,
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
        let api_calls = Family::<CallLabel, Counter>::default();
        let api_calls_per_reconcile: HistogramFamily =
            Family::new_with_constructor(calls_histogram);
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
        registry.register(
            "api_calls",
            "Requests the reconciler sent to the Kubernetes API, by verb and kind \
             (owned objects are read from watch caches, not listed)",
            api_calls.clone(),
        );
        registry.register(
            "api_calls_per_reconcile",
            "Requests to the Kubernetes API during one reconcile, by verb \
             (zero in a steady state)",
            api_calls_per_reconcile.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease and reconciles, 0 while it stands by",
            leader.clone(),
        );
        Self {
            reconciles,
            failures,
            duration,
            writes,
            api_calls,
            api_calls_per_reconcile,
            leader,
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

    /// Counts one request to the API server (and, inside
    /// [`Metrics::counting_calls`], in that reconcile's tally).
    pub fn api_call(&self, verb: &'static str, kind: &str) {
        self.api_calls
            .get_or_create(&CallLabel {
                verb: verb.to_owned(),
                kind: kind.to_owned(),
            })
            .inc();
        let _ = RECONCILE_CALLS.try_with(|tally| {
            if let Ok(mut tally) = tally.lock() {
                *tally.entry(verb).or_insert(0) += 1;
            }
        });
    }

    /// Runs one reconcile, counting its API calls by verb; observes them in
    /// `api_calls_per_reconcile` and returns them with the result.
    pub async fn counting_calls<F: Future>(
        &self,
        reconcile: F,
    ) -> (F::Output, BTreeMap<&'static str, u64>) {
        let tally = Arc::new(Mutex::new(BTreeMap::new()));
        let output = RECONCILE_CALLS.scope(tally.clone(), reconcile).await;
        let calls = tally.lock().map(|t| t.clone()).unwrap_or_default();
        for verb in VERBS {
            self.api_calls_per_reconcile
                .get_or_create(&VerbLabel {
                    verb: verb.to_owned(),
                })
                .observe(calls.get(verb).copied().unwrap_or(0) as f64);
        }
        (output, calls)
    }

    /// Sets the leader gauge.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
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

    #[tokio::test]
    async fn api_calls_are_counted_per_reconcile_and_in_total() {
        let m = Metrics::new();
        let ((), calls) = m
            .counting_calls(async {
                m.api_call("get", "Secret");
                m.api_call("patch", "Deployment");
                m.api_call("patch", "Service");
            })
            .await;
        assert_eq!(calls, BTreeMap::from([("get", 1), ("patch", 2)]));
        // Outside a reconcile: counted in total only.
        m.api_call("get", "Secret");
        let ((), quiet) = m.counting_calls(async {}).await;
        assert!(quiet.is_empty());
        let text = m.encode();
        for line in [
            "stockmesh_operator_api_calls_total{verb=\"get\",kind=\"Secret\"} 2",
            "stockmesh_operator_api_calls_total{verb=\"patch\",kind=\"Deployment\"} 1",
            "stockmesh_operator_api_calls_per_reconcile_count{verb=\"patch\"} 2",
            "stockmesh_operator_api_calls_per_reconcile_sum{verb=\"patch\"} 2.0",
            "stockmesh_operator_api_calls_per_reconcile_bucket{le=\"0.0\",verb=\"list\"} 2",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }
}
