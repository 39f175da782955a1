//! Leader election on a `coordination.k8s.io/v1` Lease (kube-lease-manager),
//! so that the operator may run with more than one replica: only the replica
//! holding the Lease runs the controllers; the others stand by.
//!
//! * **Standing by** (a follower): no request but the Lease's (a GET each
//!   time the holder's lease would expire); the pod is Ready — standing by
//!   is all it should be doing, and a follower that is not Ready would stall
//!   every rolling update — and `stockmesh_operator_leader` is 0.
//! * **Leading**: the controllers run; the Lease is renewed `grace` seconds
//!   before it expires. Readiness then means "the caches have synced" again
//!   (the runner sets it), and the gauge is 1.
//! * **Losing the Lease** (another holder, or a renewal that failed or took
//!   too long): the controllers' future is dropped at once — every in-flight
//!   reconcile stops at its next await, nothing more is written — and
//!   [`run`] returns [`Outcome::LostLeadership`]. The binary then exits
//!   non-zero, so Kubernetes restarts the container as a follower with empty
//!   caches and no per-object state from its time as leader; this is what
//!   client-go's controllers do (`OnStoppedLeading` exits), and it is simpler
//!   to trust than stopping and restarting controllers inside one process.
//!   A renewal failure is treated as a loss because the renewal is attempted
//!   `grace` seconds before expiry with a client whose requests time out
//!   within half of that: the old leader has stopped before another replica
//!   may take the Lease over.
//! * **Shutting down** (SIGTERM): a follower just leaves; a leader lets the
//!   controllers finish their reconciles, then releases the Lease.
//!
//! Failover after a leader dies without releasing: the rest of its lease
//! (between `grace` and `duration` seconds) plus the library's random pause
//! of 0.1–1 s before it takes an expired lease over; measured in
//! `tests/leader_election.rs`.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder, LeaseManagerError};

use crate::metrics::Metrics;

/// Default `--lease-duration-seconds` (client-go's default too).
pub const DEFAULT_LEASE_DURATION_SECONDS: u64 = 15;

/// Where and as whom to campaign.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Election {
    /// Name of the Lease (`--lease-name`).
    pub lease_name: String,
    /// Its namespace (`--lease-namespace`, default the pod's own).
    pub namespace: String,
    /// This replica's identity in `spec.holderIdentity`: unique among the
    /// replicas (the pod name; see [`identity`]).
    pub identity: String,
    /// How long a lease lasts after its last renewal (at least 2 s).
    pub duration_seconds: u64,
}

impl Election {
    /// How long before expiry the leader renews: a third of the lease (at
    /// least 1 s), so that a renewal has time to fail and the leader to stop
    /// before anyone else may take the lease; also the clock skew between
    /// nodes that is tolerated.
    pub fn grace_seconds(&self) -> u64 {
        (self.duration_seconds / 3).clamp(1, self.duration_seconds.saturating_sub(1).max(1))
    }

    /// The longest one Lease request may take (connect, read, write): half
    /// of the grace, so that a renewal that hangs fails — and the leader
    /// stops — while its lease is still valid.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.grace_seconds() * 500).max(Duration::from_millis(500))
    }
}

/// This replica's identity: `POD_NAME` (unique among running pods, and a
/// restarted container of the same pod may take its own lease back at
/// once: the old process is gone), else the host name, the process id and
/// a random suffix (two local runs on one machine must not share one).
pub fn identity() -> String {
    if let Ok(pod) = std::env::var("POD_NAME")
        && !pod.trim().is_empty()
    {
        return pod.trim().to_owned();
    }
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.trim().is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| "stockmesh-operator".to_owned());
    // A per-process random number without another dependency: std's
    // hasher keys are random for each process.
    let random = {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.finish() & 0xff_ffff
    };
    format!("{}-{}-{random:06x}", host.trim(), std::process::id())
}

/// How a [`run`] ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The controllers returned (a shutdown signal while leading); the
    /// Lease was released.
    Finished,
    /// `shutdown` resolved while standing by.
    Shutdown,
    /// The Lease was lost (the reason): the controllers were stopped at once.
    LostLeadership(String),
}

/// Campaigns for the Lease and runs `work` (the controllers) only while
/// holding it; see the module documentation for every transition. `ready`
/// and the leader gauge in `metrics` say where this replica stands.
///
/// Errors: the Lease could not be read or created at all (no RBAC for
/// Leases in that namespace, no API server), before anything ran.
pub async fn run<W, F>(
    client: Client,
    election: &Election,
    metrics: &Metrics,
    ready: &AtomicBool,
    shutdown: impl Future<Output = ()>,
    work: W,
) -> Result<Outcome, LeaseManagerError>
where
    W: FnOnce() -> F,
    F: Future<Output = ()>,
{
    metrics.set_leader(false);
    let manager = LeaseManagerBuilder::new(client, &election.lease_name)
        .with_namespace(&election.namespace)
        .with_identity(&election.identity)
        .with_duration(election.duration_seconds)
        .with_grace(election.grace_seconds())
        .build()
        .await?;
    let lease = format!("{}/{}", election.namespace, election.lease_name);
    tracing::info!(
        lease = %lease,
        identity = %election.identity,
        duration_seconds = election.duration_seconds,
        "standing by: reconciling starts once this replica holds the Lease"
    );
    // A follower is ready: standing by is its whole job.
    ready.store(true, Ordering::Relaxed);

    tokio::pin!(shutdown);
    tokio::select! {
        () = &mut shutdown => {
            tracing::info!(lease = %lease, "shutting down while standing by");
            release(&manager, election).await;
            return Ok(Outcome::Shutdown);
        }
        () = campaign(&manager, election) => {}
    }

    tracing::info!(lease = %lease, identity = %election.identity, "leading: this replica holds the Lease and reconciles");
    metrics.set_leader(true);
    // Ready again once the new leader's caches have synced.
    ready.store(false, Ordering::Relaxed);
    let outcome = tokio::select! {
        () = work() => Outcome::Finished,
        reason = keep(&manager) => Outcome::LostLeadership(reason),
    };
    metrics.set_leader(false);
    match &outcome {
        Outcome::LostLeadership(reason) => {
            ready.store(false, Ordering::Relaxed);
            tracing::error!(lease = %lease, reason = %reason, "lost the Lease: reconciling stopped");
        }
        _ => {
            tracing::info!(lease = %lease, "controllers stopped; releasing the Lease");
            release(&manager, election).await;
        }
    }
    Ok(outcome)
}

/// Returns once this replica holds the Lease. Errors (the API server is
/// away) are logged and retried with a growing pause, up to the lease
/// duration.
async fn campaign(manager: &LeaseManager, election: &Election) {
    let mut pause = Duration::from_secs(1);
    loop {
        match manager.changed().await {
            Ok(true) => return,
            Ok(false) => {}
            Err(err) => {
                tracing::warn!(error = %err, "leader election: cannot read or take the Lease; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(election.duration_seconds));
            }
        }
    }
}

/// Keeps renewing the Lease; returns why it was lost. Any error counts as
/// a loss: see the module documentation.
async fn keep(manager: &LeaseManager) -> String {
    loop {
        match manager.changed().await {
            Ok(true) => {}
            Ok(false) => return "another replica holds the Lease".to_owned(),
            Err(err) => return format!("renewing the Lease failed: {err}"),
        }
    }
}

/// Frees the Lease if this replica holds it, so that a follower need not
/// wait for it to expire; bounded, and only logged if it fails.
async fn release(manager: &LeaseManager, election: &Election) {
    match tokio::time::timeout(election.request_timeout() * 3, manager.release()).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::warn!(error = %err, "releasing the Lease failed"),
        Err(_) => tracing::warn!("releasing the Lease timed out"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn election(duration_seconds: u64) -> Election {
        Election {
            lease_name: "l".into(),
            namespace: "ns".into(),
            identity: "me".into(),
            duration_seconds,
        }
    }

    #[test]
    fn grace_is_a_third_and_always_shorter_than_the_lease() {
        assert_eq!(election(15).grace_seconds(), 5);
        assert_eq!(election(2).grace_seconds(), 1);
        assert_eq!(election(3).grace_seconds(), 1);
        assert_eq!(election(60).grace_seconds(), 20);
        for d in 2..100 {
            let e = election(d);
            assert!(e.grace_seconds() >= 1 && e.grace_seconds() < d, "{d}");
            assert!(
                e.request_timeout() * 2
                    <= Duration::from_secs(e.grace_seconds()).max(Duration::from_secs(1))
            );
        }
    }

    #[test]
    fn identities_differ_between_processes_without_a_pod_name() {
        // POD_NAME is not set under cargo test (unless a pod runs it).
        if std::env::var_os("POD_NAME").is_none() {
            let id = identity();
            assert!(id.contains(&std::process::id().to_string()), "{id}");
        }
    }
}
