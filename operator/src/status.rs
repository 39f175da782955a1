//! The status of an InventorySystem, computed from what the cluster reports.
//!
//! Pure: the reconciler passes the observed workloads, the previous status
//! (so `lastTransitionTime` changes only when a condition flips) and the
//! current time.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::networking::v1::Ingress;

use crate::crd::{ComponentStatus, Condition, InventorySystem, InventorySystemStatus, Phase};
use crate::names::{self, Svc};
use crate::resources::{deployables, desired_replicas};

pub const READY: &str = "Ready";
pub const DATABASE_READY: &str = "DatabaseReady";
pub const BROKER_READY: &str = "BrokerReady";
pub const SERVICES_READY: &str = "ServicesReady";
pub const DEGRADED: &str = "Degraded";

/// Workloads and the Ingress as the cluster reports them, by name.
#[derive(Clone, Debug, Default)]
pub struct ObservedWorkloads {
    pub deployments: BTreeMap<String, Deployment>,
    pub statefulsets: BTreeMap<String, StatefulSet>,
    pub ingress: Option<Ingress>,
}

/// Something that stops the reconcile before its objects are applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Blocker {
    /// The spec fails validation; nothing is created.
    InvalidSpec(String),
    /// The Secret of an external database or broker is missing or lacks keys.
    ExternalDatabaseSecret(String),
    ExternalBrokerSecret(String),
}

/// Condition `type`/`status`/`reason`/`message`, before timestamps.
struct Cond {
    type_: &'static str,
    ok: bool,
    reason: String,
    message: String,
}

fn cond(type_: &'static str, ok: bool, reason: &str, message: impl Into<String>) -> Cond {
    Cond {
        type_,
        ok,
        reason: reason.into(),
        message: message.into(),
    }
}

fn workload_counts(ready: Option<i32>, desired: i32) -> ComponentStatus {
    ComponentStatus {
        ready: ready.unwrap_or(0).min(desired.max(0)).max(0),
        desired,
    }
}

fn deployment_ready(d: Option<&Deployment>, desired: i32) -> (ComponentStatus, bool) {
    let Some(d) = d else {
        return (workload_counts(None, desired), desired == 0);
    };
    let status = d.status.clone().unwrap_or_default();
    let counts = workload_counts(status.ready_replicas, desired);
    let generation_seen = match (d.metadata.generation, status.observed_generation) {
        (Some(g), Some(o)) => o >= g,
        (None, _) => true,
        (Some(_), None) => false,
    };
    let rolled_out = status.updated_replicas.unwrap_or(0) >= desired
        && status.ready_replicas.unwrap_or(0) >= desired
        && status.replicas.unwrap_or(0) <= desired;
    (counts, generation_seen && rolled_out)
}

fn deployment_failure(d: &Deployment) -> Option<(String, String)> {
    let conditions = d.status.as_ref()?.conditions.as_ref()?;
    conditions.iter().find_map(|c| {
        let failed = (c.type_ == "Progressing"
            && c.status == "False"
            && c.reason.as_deref() == Some("ProgressDeadlineExceeded"))
            || (c.type_ == "ReplicaFailure" && c.status == "True");
        failed.then(|| {
            (
                c.reason.clone().unwrap_or_else(|| c.type_.clone()),
                c.message.clone().unwrap_or_default(),
            )
        })
    })
}

fn statefulset_ready(s: Option<&StatefulSet>) -> ComponentStatus {
    workload_counts(s.and_then(|s| s.status.as_ref()?.ready_replicas), 1)
}

/// Where the API is reachable, from the Ingress.
fn url(obj: &InventorySystem, observed: &ObservedWorkloads) -> Option<String> {
    let ing = &obj.spec.ingress;
    if !ing.enabled {
        return None;
    }
    let scheme = if ing.tls_secret_name.is_some() {
        "https"
    } else {
        "http"
    };
    if let Some(host) = &ing.host {
        return Some(format!("{scheme}://{host}"));
    }
    let lb = observed
        .ingress
        .as_ref()?
        .status
        .as_ref()?
        .load_balancer
        .as_ref()?
        .ingress
        .as_ref()?
        .first()?
        .clone();
    lb.hostname.or(lb.ip).map(|h| format!("{scheme}://{h}"))
}

/// The status for `obj` given what was observed. `previous` supplies the
/// transition times of conditions whose status did not change; `now` (RFC
/// 3339) stamps those that did.
pub fn compute(
    obj: &InventorySystem,
    observed: &ObservedWorkloads,
    blocker: Option<&Blocker>,
    now: &str,
) -> InventorySystemStatus {
    let name = obj.metadata.name.clone().unwrap_or_default();
    let generation = obj.metadata.generation;
    let previous = obj.status.clone().unwrap_or_default();
    let spec = &obj.spec;
    let mut components = BTreeMap::new();

    let (db, broker, services, degraded) = if let Some(Blocker::InvalidSpec(msg)) = blocker {
        let not = |t| {
            cond(
                t,
                false,
                "InvalidSpec",
                "the spec is invalid; nothing was reconciled",
            )
        };
        (
            not(DATABASE_READY),
            not(BROKER_READY),
            not(SERVICES_READY),
            cond(DEGRADED, true, "InvalidSpec", msg.clone()),
        )
    } else {
        // Database.
        let db = if spec.postgres.effective_managed().is_some() {
            let c = statefulset_ready(observed.statefulsets.get(&names::postgres(&name)));
            let ok = c.ready >= c.desired;
            let msg = format!("{}/{} PostgreSQL pods ready", c.ready, c.desired);
            components.insert("postgres".to_owned(), c);
            if ok {
                cond(DATABASE_READY, true, "StatefulSetReady", msg)
            } else {
                cond(DATABASE_READY, false, "StatefulSetNotReady", msg)
            }
        } else if let Some(Blocker::ExternalDatabaseSecret(msg)) = blocker {
            cond(DATABASE_READY, false, "ExternalSecretInvalid", msg.clone())
        } else {
            cond(
                DATABASE_READY,
                true,
                "ExternalSecretFound",
                "using the external database from the referenced Secret",
            )
        };
        // Broker.
        let broker = if spec.rabbitmq.effective_managed().is_some() {
            let c = statefulset_ready(observed.statefulsets.get(&names::rabbitmq(&name)));
            let ok = c.ready >= c.desired;
            let msg = format!("{}/{} RabbitMQ pods ready", c.ready, c.desired);
            components.insert("rabbitmq".to_owned(), c);
            if ok {
                cond(BROKER_READY, true, "StatefulSetReady", msg)
            } else {
                cond(BROKER_READY, false, "StatefulSetNotReady", msg)
            }
        } else if let Some(Blocker::ExternalBrokerSecret(msg)) = blocker {
            cond(BROKER_READY, false, "ExternalSecretInvalid", msg.clone())
        } else {
            cond(
                BROKER_READY,
                true,
                "ExternalSecretFound",
                "using the external RabbitMQ from the referenced Secret",
            )
        };
        // Services.
        let mut waiting = Vec::new();
        let mut failure = None;
        let running = deployables(spec);
        for &svc in &running {
            let desired = desired_replicas(spec, svc);
            let d = observed.deployments.get(&names::svc_name(&name, svc));
            let (c, ok) = deployment_ready(d, desired);
            if !ok {
                waiting.push(format!("{} {}/{}", svc.as_str(), c.ready, c.desired));
            }
            if failure.is_none() {
                failure = d
                    .and_then(deployment_failure)
                    .map(|(reason, message)| (reason, format!("{}: {message}", svc.as_str())));
            }
            components.insert(svc.as_str().to_owned(), c);
        }
        let services = if waiting.is_empty() {
            cond(
                SERVICES_READY,
                true,
                "DeploymentsReady",
                if running.contains(&Svc::Web) {
                    "all five services and the web console are ready"
                } else {
                    "all five services are ready"
                },
            )
        } else {
            cond(
                SERVICES_READY,
                false,
                "DeploymentsNotReady",
                format!("waiting for {}", waiting.join(", ")),
            )
        };
        let degraded = match (blocker, failure) {
            (
                Some(Blocker::ExternalDatabaseSecret(msg) | Blocker::ExternalBrokerSecret(msg)),
                _,
            ) => cond(DEGRADED, true, "ExternalSecretInvalid", msg.clone()),
            (_, Some((reason, message))) => cond(DEGRADED, true, &reason, message),
            _ => cond(
                DEGRADED,
                false,
                "AsExpected",
                "no component reports a failure",
            ),
        };
        (db, broker, services, degraded)
    };

    let ready = if degraded.ok {
        cond(READY, false, &degraded.reason, degraded.message.clone())
    } else if !db.ok {
        cond(READY, false, "DatabaseNotReady", db.message.clone())
    } else if !broker.ok {
        cond(READY, false, "BrokerNotReady", broker.message.clone())
    } else if !services.ok {
        cond(READY, false, "ServicesNotReady", services.message.clone())
    } else {
        cond(
            READY,
            true,
            "AllComponentsReady",
            "every component is ready",
        )
    };
    let phase = match blocker {
        Some(Blocker::InvalidSpec(_)) => Phase::Failed,
        _ if degraded.ok => Phase::Degraded,
        _ if ready.ok => Phase::Ready,
        _ => Phase::Progressing,
    };

    let conditions = [ready, db, broker, services, degraded]
        .into_iter()
        .map(|c| {
            let status = if c.ok { "True" } else { "False" }.to_owned();
            let last_transition_time = previous
                .conditions
                .iter()
                .find(|p| p.type_ == c.type_ && p.status == status)
                .map(|p| p.last_transition_time.clone())
                .unwrap_or_else(|| now.to_owned());
            Condition {
                type_: c.type_.to_owned(),
                status,
                reason: c.reason,
                message: truncate(&c.message, 1024),
                last_transition_time,
                observed_generation: generation,
            }
        })
        .collect();

    InventorySystemStatus {
        observed_generation: generation,
        phase: Some(phase),
        conditions,
        components,
        url: url(obj, observed),
    }
}

/// The previous status with `Degraded=True/ReconcileFailed` and
/// `Ready=False`: what is known about the components stays as it was.
pub fn with_failure(obj: &InventorySystem, message: &str, now: &str) -> InventorySystemStatus {
    let mut st = obj.status.clone().unwrap_or_default();
    let generation = obj.metadata.generation;
    for (type_, status) in [(DEGRADED, "True"), (READY, "False")] {
        let last_transition_time = st
            .conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| now.to_owned());
        st.conditions.retain(|c| c.type_ != type_);
        st.conditions.push(Condition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            reason: "ReconcileFailed".to_owned(),
            message: truncate(message, 1024),
            last_transition_time,
            observed_generation: generation,
        });
    }
    let order = [
        READY,
        DATABASE_READY,
        BROKER_READY,
        SERVICES_READY,
        DEGRADED,
    ];
    st.conditions.sort_by_key(|c| {
        order
            .iter()
            .position(|t| *t == c.type_)
            .unwrap_or(order.len())
    });
    st.phase = Some(Phase::Degraded);
    st
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// The current time in the Kubernetes `Time` format (seconds, UTC).
pub fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}
