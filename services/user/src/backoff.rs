//! Slowing down password guessing without handing out lockouts.
//!
//! A fixed per-account budget ("5 a minute") lets anyone keep the owner out
//! by spending it. Instead, failed attempts on an account from clients that
//! have not proved they logged into it before are counted; after
//! `after_failures` of them, each further such attempt must wait an
//! exponentially growing delay (`base`, 2×, 4×, … up to `max`) and is
//! answered 429 + `Retry-After` before any password is checked. A client
//! that has logged into the account before (it presents the account's
//! signed device cookie, see `device.rs`) is not subject to that delay: it
//! has a failure budget of its own, per device, with the same policy, and
//! only when that is spent does it count as an unknown client again. The
//! owner therefore keeps logging in while an attacker is held to a trickle
//! of guesses.
//!
//! An attempt is counted when it starts, not when it fails: a burst of
//! parallel guesses cannot all slip in before the first failure is recorded.
//! A correct password takes its count back ([`FailureBackoff::forgive`]).
//! Counts are forgotten after `forget_after` without an attempt. Memory is
//! bounded like the rate limiters' ([`BoundedMap`]); a poisoned lock denies.

use std::hash::{BuildHasher, Hash, RandomState};
use std::num::NonZeroUsize;
use std::time::Duration;

use tokio::time::Instant;

use crate::rate_limit::{BoundedMap, Poisoned};

/// When attempts start to wait, and how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// Attempts allowed without delay.
    pub after_failures: u32,
    /// The first delay; each further attempt doubles it.
    pub base: Duration,
    /// The longest delay.
    pub max: Duration,
    /// A key's count is forgotten after this long without an attempt.
    pub forget_after: Duration,
}

impl BackoffPolicy {
    /// The wait imposed after the `attempts`-th counted attempt.
    fn delay(&self, attempts: u32) -> Option<Duration> {
        let over = attempts.checked_sub(self.after_failures)?;
        let factor = 1u32 << over.min(20);
        Some(self.base.saturating_mul(factor).min(self.max))
    }
}

#[derive(Debug, Clone, Copy)]
struct Record {
    attempts: u32,
    next_allowed: Instant,
    last: Instant,
}

/// Per-key failure counts with exponential backoff.
pub struct FailureBackoff {
    policy: BackoffPolicy,
    state: BoundedMap<u64, Record>,
    /// Keys are stored as keyed 64-bit hashes: fixed size whatever the
    /// client sends as an email, and unguessable collisions.
    hasher: RandomState,
}

impl FailureBackoff {
    pub fn new(policy: BackoffPolicy, capacity: NonZeroUsize) -> Self {
        Self {
            policy,
            state: BoundedMap::new(capacity),
            hasher: RandomState::new(),
        }
    }

    /// The key of anything hashable (a normalised email, a device id).
    pub fn key(&self, value: impl Hash) -> u64 {
        self.hasher.hash_one(value)
    }

    /// Starts an attempt on `key`, counting it as a failure until
    /// [`forgive`](Self::forgive)n; `Err(retry_after)` when the key must
    /// wait (or its state is unusable: fail closed).
    pub fn begin(&self, key: u64) -> Result<(), Duration> {
        let now = Instant::now();
        let policy = self.policy;
        let fresh = Record {
            attempts: 0,
            next_allowed: now,
            last: now,
        };
        self.state
            .update(
                key,
                || fresh,
                |r| now.duration_since(r.last) >= policy.forget_after,
                |record| {
                    if now.duration_since(record.last) >= policy.forget_after {
                        *record = fresh;
                    }
                    if record.attempts >= policy.after_failures && now < record.next_allowed {
                        return Err(record.next_allowed - now);
                    }
                    record.attempts = record.attempts.saturating_add(1);
                    record.last = now;
                    if let Some(delay) = policy.delay(record.attempts) {
                        record.next_allowed = now + delay;
                    }
                    Ok(())
                },
            )
            .unwrap_or_else(|Poisoned| {
                tracing::error!("login backoff state poisoned: denying");
                Err(Duration::from_secs(1))
            })
    }

    /// Takes back the count of an attempt that did not fail (the password
    /// was right, or it was never checked).
    pub fn forgive(&self, key: u64) {
        let result = self.state.update_existing(&key, |record| {
            record.attempts = record.attempts.saturating_sub(1);
        });
        if result.is_err() {
            tracing::error!("login backoff state poisoned");
        }
    }

    #[cfg(test)]
    fn poison(&self, key: u64) {
        self.state.poison(&key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backoff() -> FailureBackoff {
        FailureBackoff::new(
            BackoffPolicy {
                after_failures: 3,
                base: Duration::from_secs(1),
                max: Duration::from_secs(8),
                forget_after: Duration::from_secs(3600),
            },
            NonZeroUsize::new(1000).unwrap(),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn delays_grow_exponentially_up_to_the_max() {
        let b = backoff();
        let k = b.key("admin@example.com");
        for _ in 0..3 {
            assert!(b.begin(k).is_ok(), "the first attempts are free");
        }
        assert_eq!(b.begin(k), Err(Duration::from_secs(1)));
        let mut waits = Vec::new();
        for _ in 0..6 {
            let wait = b.begin(k).expect_err("must wait");
            waits.push(wait.as_secs());
            tokio::time::advance(wait).await;
            assert!(b.begin(k).is_ok(), "allowed once the delay is over");
        }
        assert_eq!(waits, [1, 2, 4, 8, 8, 8]);
        assert!(b.begin(b.key("other@example.com")).is_ok(), "per key");
    }

    #[tokio::test(start_paused = true)]
    async fn parallel_attempts_are_counted_before_they_fail() {
        let b = backoff();
        let k = b.key("x");
        let allowed = (0..50).filter(|_| b.begin(k).is_ok()).count();
        assert_eq!(allowed, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn success_takes_its_count_back_and_counts_are_forgotten() {
        let b = backoff();
        let k = b.key("x");
        for _ in 0..10 {
            b.begin(k).unwrap();
            b.forgive(k);
        }
        assert!(b.begin(k).is_ok(), "successes never add up to a delay");
        for _ in 0..2 {
            b.begin(k).unwrap();
        }
        assert!(b.begin(k).is_err());
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert!(b.begin(k).is_ok(), "forgotten after an hour of silence");
    }

    #[tokio::test]
    async fn a_poisoned_lock_denies() {
        let b = backoff();
        let k = b.key("x");
        b.poison(k);
        assert!(b.begin(k).is_err());
        b.forgive(k);
    }
}
