//! The admin system page's data: for each service, its readiness (its own
//! `/readyz` answer) and the few metrics an on-call engineer looks at
//! first, read from its `/metrics`: circuit breaker states, the outbox
//! backlog, and the dead-letter queue's depth.
//!
//! Each service is asked through its cluster Service, so one replica
//! answers for it; every ask is bounded ([`ASK_TIMEOUT`]) and all are made
//! at once, so one hung service delays the page by at most that long and
//! shows as unreachable, never blocks it.

use std::time::Duration;

use axum::Json;
use axum::extract::{FromRef, State};
use serde::Serialize;
use stockmesh_platform::auth::{Admin, Verifier};

/// Bound on each question to a service.
pub const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// What the console knows of the deployment.
#[derive(Clone)]
pub struct SystemState {
    pub verifier: Verifier,
    pub http: reqwest::Client,
    pub services: Vec<(&'static str, Option<String>)>,
    pub jaeger_ui_url: Option<String>,
}

impl FromRef<SystemState> for Verifier {
    fn from_ref(state: &SystemState) -> Self {
        state.verifier.clone()
    }
}

/// One circuit breaker of a service, towards `upstream`.
#[derive(Debug, Serialize, PartialEq)]
pub struct BreakerView {
    pub upstream: String,
    /// `closed`, `open` or `half-open`.
    pub state: &'static str,
}

/// One service as the system page shows it.
#[derive(Debug, Serialize)]
pub struct ServiceView {
    pub name: &'static str,
    /// False when the console was not told where the service is.
    pub configured: bool,
    /// Whether its `/readyz` answered 200.
    pub ready: bool,
    /// Its `/readyz` body (checks and their results), when it answered.
    pub readiness: Option<serde_json::Value>,
    /// Why it could not be asked, when it could not.
    pub error: Option<String>,
    pub breakers: Vec<BreakerView>,
    /// Order events not yet published (order only).
    pub outbox_backlog: Option<f64>,
    /// Messages in the dead-letter queue (notification only; -1 while unknown).
    pub dead_letter_depth: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct SystemView {
    pub services: Vec<ServiceView>,
}

/// Public settings the console needs before anyone logs in.
#[derive(Debug, Serialize)]
pub struct ConsoleConfig {
    /// Base of trace links (`<url>/trace/<trace id>`), when configured.
    pub jaeger_ui_url: Option<String>,
}

pub async fn console_config(State(state): State<SystemState>) -> Json<ConsoleConfig> {
    Json(ConsoleConfig {
        jaeger_ui_url: state.jaeger_ui_url.clone(),
    })
}

/// `GET /api/console/system`, administrators only.
pub async fn system(State(state): State<SystemState>, _admin: Admin) -> Json<SystemView> {
    let asks = state
        .services
        .iter()
        .map(|(name, url)| describe(&state.http, name, url.as_deref()));
    Json(SystemView {
        services: futures::future::join_all(asks).await,
    })
}

async fn describe(http: &reqwest::Client, name: &'static str, url: Option<&str>) -> ServiceView {
    let mut view = ServiceView {
        name,
        configured: url.is_some(),
        ready: false,
        readiness: None,
        error: None,
        breakers: Vec::new(),
        outbox_backlog: None,
        dead_letter_depth: None,
    };
    let Some(url) = url else {
        view.error = Some("not configured".into());
        return view;
    };
    let (ready, metrics) = tokio::join!(
        http.get(format!("{url}/readyz"))
            .timeout(ASK_TIMEOUT)
            .send(),
        http.get(format!("{url}/metrics"))
            .timeout(ASK_TIMEOUT)
            .send(),
    );
    match ready {
        Ok(response) => {
            view.ready = response.status().is_success();
            view.readiness = response.json().await.ok();
        }
        Err(err) => view.error = Some(describe_error(&err)),
    }
    if let Ok(response) = metrics
        && let Ok(text) = response.text().await
    {
        view.breakers = breakers(&text);
        view.outbox_backlog = sample(&text, "stockmesh_outbox_backlog");
        view.dead_letter_depth = sample(&text, "stockmesh_notification_dead_letter_depth");
    }
    view
}

fn describe_error(err: &reqwest::Error) -> String {
    if err.is_timeout() {
        format!("no answer within {} ms", ASK_TIMEOUT.as_millis())
    } else if err.is_connect() {
        "unreachable (connection refused or no route)".into()
    } else {
        "could not be asked".into()
    }
}

/// Sum of the samples of `name` in a Prometheus text exposition.
fn sample(text: &str, name: &str) -> Option<f64> {
    let values: Vec<f64> = text
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| line.split(['{', ' ']).next() == Some(name))
        .filter_map(|line| line.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// `stockmesh_circuit_breaker_state{...,upstream="x"} 0|1|2` lines.
fn breakers(text: &str) -> Vec<BreakerView> {
    text.lines()
        .filter(|line| line.starts_with("stockmesh_circuit_breaker_state{"))
        .filter_map(|line| {
            let upstream = line.split("upstream=\"").nth(1)?.split('"').next()?;
            let value: f64 = line.rsplit(' ').next()?.parse().ok()?;
            let state = match value as i64 {
                0 => "closed",
                1 => "open",
                2 => "half-open",
                _ => return None,
            };
            Some(BreakerView {
                upstream: upstream.to_owned(),
                state,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = "\
# HELP stockmesh_circuit_breaker_state Circuit breaker state per upstream
# TYPE stockmesh_circuit_breaker_state gauge
stockmesh_circuit_breaker_state{service=\"order\",upstream=\"inventory\"} 1
stockmesh_circuit_breaker_state{service=\"order\",upstream=\"product\"} 0
stockmesh_outbox_backlog{service=\"order\"} 7
stockmesh_outbox_backlog_bytes{service=\"order\"} 99
";

    #[test]
    fn breakers_and_samples_are_read_from_the_exposition() {
        assert_eq!(
            breakers(METRICS),
            vec![
                BreakerView {
                    upstream: "inventory".into(),
                    state: "open"
                },
                BreakerView {
                    upstream: "product".into(),
                    state: "closed"
                },
            ]
        );
        assert_eq!(sample(METRICS, "stockmesh_outbox_backlog"), Some(7.0));
        assert_eq!(
            sample(METRICS, "stockmesh_notification_dead_letter_depth"),
            None
        );
    }
}
