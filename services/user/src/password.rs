//! Password hashing with argon2id (default parameters: 19 MiB, 2 passes),
//! off the async threads and bounded.
//!
//! Every hash and every verification allocates argon2's 19 MiB block, so
//! memory grows with how many run at once: unbounded, 192 registrations 64
//! at a time took the process to 616 MiB. [`Passwords`] holds a semaphore of
//! `concurrency` permits (by default the CPUs the process may use, at most
//! 4: more would not finish sooner, only hold more blocks), so the hashing
//! memory is at most `concurrency` × 19 MiB. A request that finds every
//! permit taken waits in a queue of at most `queue_max` for at most
//! `queue_timeout`; past either it is answered 503 + `Retry-After` at once
//! rather than piling up. The permit travels into the blocking task: a
//! request that times out or whose client goes away does not release it
//! while its hash is still running.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::UserError;

/// Bounds on concurrent hashing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashLimits {
    /// Hashes or verifications running at once.
    pub concurrency: usize,
    /// Requests waiting for a permit at most; more are refused at once.
    pub queue_max: usize,
    /// How long a request waits for a permit before it is refused.
    pub queue_timeout: Duration,
}

impl HashLimits {
    /// The CPUs this process may use (cgroup quotas included), at most 4.
    pub fn default_concurrency() -> usize {
        std::thread::available_parallelism()
            .map(usize::from)
            .unwrap_or(1)
            .clamp(1, 4)
    }
}

/// What a refused request is told to wait before retrying.
const RETRY_AFTER: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct Passwords {
    permits: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
    limits: HashLimits,
}

/// Counts a request in the queue for as long as it waits.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Passwords {
    pub fn new(limits: HashLimits) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(limits.concurrency.max(1))),
            waiting: Arc::new(AtomicUsize::new(0)),
            limits,
        }
    }

    pub fn limits(&self) -> HashLimits {
        self.limits
    }

    async fn permit(&self) -> Result<OwnedSemaphorePermit, UserError> {
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return Ok(permit);
        }
        let ahead = self.waiting.fetch_add(1, Ordering::AcqRel);
        let _waiting = Waiting(&self.waiting);
        if ahead >= self.limits.queue_max {
            return Err(UserError::Busy(RETRY_AFTER));
        }
        match tokio::time::timeout(
            self.limits.queue_timeout,
            self.permits.clone().acquire_owned(),
        )
        .await
        {
            Ok(Ok(permit)) => Ok(permit),
            // Timed out, or the semaphore was closed (never done).
            _ => Err(UserError::Busy(RETRY_AFTER)),
        }
    }

    /// Hashes a password into a PHC string with a random salt.
    pub async fn hash(&self, password: String) -> Result<String, UserError> {
        let permit = self.permit().await?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            Argon2::default()
                .hash_password(password.as_bytes())
                .map(|h| h.to_string())
                .map_err(|e| UserError::Internal(format!("hashing failed: {e}")))
        })
        .await
        .map_err(|e| UserError::Internal(format!("hashing task failed: {e}")))?
    }

    /// Checks a password against a stored hash. Costs the same whatever the
    /// outcome, so callers verify against a dummy hash for unknown users.
    pub async fn verify(&self, password: String, stored: String) -> Result<bool, UserError> {
        let permit = self.permit().await?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            Argon2::default()
                .verify_password(password.as_bytes(), stored.as_str())
                .is_ok()
        })
        .await
        .map_err(|e| UserError::Internal(format!("verify task failed: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passwords(concurrency: usize, queue_max: usize, timeout_ms: u64) -> Passwords {
        Passwords::new(HashLimits {
            concurrency,
            queue_max,
            queue_timeout: Duration::from_millis(timeout_ms),
        })
    }

    #[tokio::test]
    async fn hashes_verify_only_their_password() {
        let p = passwords(2, 8, 5000);
        let stored = p.hash("correct horse".into()).await.unwrap();
        assert!(stored.starts_with("$argon2id$"));
        assert!(
            p.verify("correct horse".into(), stored.clone())
                .await
                .unwrap()
        );
        assert!(!p.verify("wrong horse".into(), stored).await.unwrap());
    }

    #[tokio::test]
    async fn a_full_queue_refuses_at_once_and_a_long_wait_times_out() {
        let p = passwords(1, 1, 200);
        // Hold the only permit.
        let held = p.permits.clone().try_acquire_owned().unwrap();
        let queued = tokio::spawn({
            let p = p.clone();
            async move { p.hash("x".repeat(8)).await }
        });
        while p.waiting.load(Ordering::Acquire) == 0 {
            tokio::task::yield_now().await;
        }
        let started = std::time::Instant::now();
        assert!(matches!(
            p.hash("y".repeat(8)).await,
            Err(UserError::Busy(RETRY_AFTER))
        ));
        assert!(
            started.elapsed() < Duration::from_millis(100),
            "refused without waiting"
        );
        assert!(
            matches!(queued.await.unwrap(), Err(UserError::Busy(_))),
            "the queued request timed out"
        );
        assert_eq!(p.waiting.load(Ordering::Acquire), 0, "queue count restored");
        drop(held);
        assert!(p.hash("z".repeat(8)).await.is_ok(), "works again");
    }

    #[tokio::test]
    async fn queued_requests_are_served_in_turn() {
        let p = passwords(2, 100, 60_000);
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let p = p.clone();
                tokio::spawn(async move { p.hash(format!("password-{i}")).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(p.permits.available_permits(), 2, "every permit returned");
    }
}
