//! Latency histograms per operation, errors by status, the final table and
//! the JSON report.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// Everything recorded during a run.
pub struct Stats {
    pub latency: BTreeMap<&'static str, Histogram<u64>>,
    /// (operation, HTTP status or 0 for a transport error) → count.
    pub errors: BTreeMap<(&'static str, u16), u64>,
    pub ok: BTreeMap<&'static str, u64>,
    pub notification_lag: Histogram<u64>,
    pub lag_timeouts: u64,
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 60 s, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

impl Stats {
    pub fn new() -> Self {
        Self {
            latency: BTreeMap::new(),
            errors: BTreeMap::new(),
            ok: BTreeMap::new(),
            notification_lag: histogram(),
            lag_timeouts: 0,
        }
    }

    pub fn record(
        &mut self,
        op: &'static str,
        took: Duration,
        status: Result<u16, ()>,
        expected: &[u16],
    ) {
        let micros = (took.as_micros() as u64).clamp(1, 60_000_000);
        let _ = self
            .latency
            .entry(op)
            .or_insert_with(histogram)
            .record(micros);
        match status {
            Ok(code) if expected.contains(&code) => *self.ok.entry(op).or_default() += 1,
            Ok(code) => *self.errors.entry((op, code)).or_default() += 1,
            Err(()) => *self.errors.entry((op, 0)).or_default() += 1,
        }
    }

    pub fn record_lag(&mut self, lag: Option<Duration>) {
        match lag {
            Some(lag) => {
                let _ = self
                    .notification_lag
                    .record((lag.as_micros() as u64).clamp(1, 60_000_000));
            }
            None => self.lag_timeouts += 1,
        }
    }

    pub fn total(&self) -> u64 {
        self.ok.values().sum::<u64>() + self.errors.values().sum::<u64>()
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn json(&self, elapsed: Duration, settings: Value) -> Value {
        let secs = elapsed.as_secs_f64().max(1e-9);
        let ops: serde_json::Map<String, Value> = self
            .latency
            .iter()
            .map(|(op, h)| {
                let ok = self.ok.get(op).copied().unwrap_or(0);
                (
                    (*op).to_owned(),
                    json!({
                        "count": h.len(), "ok": ok, "per_second": h.len() as f64 / secs,
                        "ok_per_second": ok as f64 / secs,
                        "p50_ms": ms(h.value_at_quantile(0.50)), "p90_ms": ms(h.value_at_quantile(0.90)),
                        "p99_ms": ms(h.value_at_quantile(0.99)), "max_ms": ms(h.max()),
                        "mean_ms": h.mean() / 1000.0,
                    }),
                )
            })
            .collect();
        let errors: Vec<Value> = self
            .errors
            .iter()
            .map(|((op, status), n)| json!({"operation": op, "status": status, "count": n}))
            .collect();
        let lag = &self.notification_lag;
        json!({
            "settings": settings,
            "elapsed_seconds": secs,
            "requests": self.total(),
            "errors": self.error_count(),
            "operations": ops,
            "errors_by_status": errors,
            "notification_lag": {
                "samples": lag.len(), "timeouts": self.lag_timeouts,
                "p50_ms": ms(lag.value_at_quantile(0.50)), "p99_ms": ms(lag.value_at_quantile(0.99)),
                "max_ms": ms(lag.max()),
            },
        })
    }

    pub fn table(&self, elapsed: Duration) -> String {
        let secs = elapsed.as_secs_f64().max(1e-9);
        let mut out = format!(
            "{:<10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
            "operation", "count", "ok/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "errors"
        );
        for (op, h) in &self.latency {
            let ok = self.ok.get(op).copied().unwrap_or(0);
            let errors: u64 = self
                .errors
                .iter()
                .filter(|((o, _), _)| o == op)
                .map(|(_, n)| n)
                .sum();
            out.push_str(&format!(
                "{:<10} {:>9} {:>9.1} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9}\n",
                op,
                h.len(),
                ok as f64 / secs,
                ms(h.value_at_quantile(0.5)),
                ms(h.value_at_quantile(0.9)),
                ms(h.value_at_quantile(0.99)),
                ms(h.max()),
                errors
            ));
        }
        for ((op, status), n) in &self.errors {
            let what = if *status == 0 {
                "transport error".to_owned()
            } else {
                format!("HTTP {status}")
            };
            out.push_str(&format!("  error: {op} {what} × {n}\n"));
        }
        let lag = &self.notification_lag;
        out.push_str(&format!(
            "notification lag: {} samples, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, {} not seen within 10 s\n",
            lag.len(),
            ms(lag.value_at_quantile(0.5)),
            ms(lag.value_at_quantile(0.99)),
            ms(lag.max()),
            self.lag_timeouts
        ));
        out
    }
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_latency_errors_and_lag() {
        let mut stats = Stats::new();
        for ms in [1, 2, 3, 4, 100] {
            stats.record("order", Duration::from_millis(ms), Ok(201), &[201]);
        }
        stats.record("order", Duration::from_millis(5), Ok(503), &[201]);
        stats.record("browse", Duration::from_millis(5), Err(()), &[200]);
        stats.record_lag(Some(Duration::from_millis(20)));
        stats.record_lag(None);
        assert_eq!(stats.total(), 7);
        assert_eq!(stats.error_count(), 2);
        let report = stats.json(Duration::from_secs(1), json!({}));
        assert_eq!(report["operations"]["order"]["ok"], 5);
        assert_eq!(report["notification_lag"]["timeouts"], 1);
        let p99 = report["operations"]["order"]["p99_ms"].as_f64().unwrap();
        assert!((99.0..=101.0).contains(&p99), "{p99}");
        assert!(
            stats
                .table(Duration::from_secs(1))
                .contains("error: order HTTP 503 × 1")
        );
    }
}
