//! Committing confirmed orders' reservations in inventory, after the 201.
//!
//! A confirmed order's id goes into this process's [`CommitQueue`] in
//! memory; the committer sends the queue's ids in batches (one
//! `CommitMany` per batch). Nothing is written to the order database on
//! the common path: the order row is stored once, at its confirm, and
//! never rewritten for its commit (issue 17: the flag that used to be set
//! with every confirm and cleared after every commit cost each order a
//! second version of its row, with its index entries, plus two statements
//! per batch).
//!
//! Nothing is forgotten when memory is not enough:
//! - a batch inventory cannot take now (unreachable, breaker open, an
//!   answer this version does not know) is **flagged** in the database
//!   (`needs_commit`) and retried from there every `SWEEP_INTERVAL_MS`, as
//!   before; if the database cannot take the flag either, the ids go back
//!   into the queue;
//! - a full queue (the committer far behind): the order is stored flagged
//!   at its confirm, in the same statement;
//! - the process dies with ids in the queue: their reservations stay held
//!   in inventory, and once they are older than `PENDING_TIMEOUT_MS` the
//!   sweeper of any replica finds them (`ListHeld`), sees their orders
//!   CONFIRMED and flags them for the commit (see
//!   [`crate::repository::OrderRepository::fence_abandoned`]). Until then
//!   their units count as reserved rather than sold; `available` was
//!   lowered by the reserve, so nothing can be oversold meanwhile;
//! - on shutdown the queue is committed (or flagged) before the process
//!   exits.

use std::sync::Mutex;
use std::time::Duration;

use stockmesh_platform::shutdown::Shutdown;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::service::OrderService;

/// Ids the queue holds at most; past that, confirms are stored flagged.
pub const QUEUE_CAPACITY: usize = 10_000;

/// Confirmed orders of this process whose reservation awaits its commit.
#[derive(Default)]
pub struct CommitQueue {
    ids: Mutex<Vec<Uuid>>,
    wake: Notify,
}

impl CommitQueue {
    /// Whether a confirm may count on the queue (checked before its
    /// insert, which stores the order flagged otherwise).
    pub fn has_room(&self) -> bool {
        self.lock().len() < QUEUE_CAPACITY
    }

    /// Queues a confirmed order and wakes the committer.
    pub fn push(&self, id: Uuid) {
        self.lock().push(id);
        self.wake.notify_one();
    }

    /// Puts back ids a round could not settle or flag (oldest first again).
    pub fn put_back(&self, mut ids: Vec<Uuid>) {
        let mut queued = self.lock();
        ids.append(&mut queued);
        *queued = ids;
    }

    /// Takes up to `max` ids, oldest first.
    pub fn take(&self, max: usize) -> Vec<Uuid> {
        let mut queued = self.lock();
        let n = queued.len().min(max);
        queued.drain(..n).collect()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A poisoned lock still holds a usable list of ids.
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Uuid>> {
        self.ids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Runs the committer until shutdown: woken by each confirm, it waits
/// `linger` for more confirms to join the batch (one inventory commit for
/// them all, not one each) and commits the queue; every `every` it also
/// commits the orders flagged in the database. On shutdown it commits (or
/// flags) what is still queued.
pub async fn run(service: OrderService, every: Duration, linger: Duration, shutdown: Shutdown) {
    let queue = service.commit_queue();
    loop {
        let flagged_too = tokio::select! {
            _ = queue.wake.notified() => {
                tokio::select! {
                    _ = tokio::time::sleep(linger) => {}
                    _ = shutdown.cancelled() => {}
                }
                false
            }
            _ = tokio::time::sleep(every) => true,
            _ = shutdown.cancelled() => {
                // Rounds until the queue is empty, or a round could
                // neither commit nor flag (its ids went back): then once
                // more at most, as the database or inventory may be back.
                let mut left = service.commit_queued().await;
                let mut stuck = 0;
                while left > 0 && stuck < 2 {
                    let before = left;
                    left = service.commit_queued().await;
                    if left >= before {
                        stuck += 1;
                    }
                }
                if left > 0 {
                    tracing::warn!(left, "confirmed orders neither committed nor flagged at shutdown; the sweeper of any replica commits them after the pending timeout");
                }
                return;
            }
        };
        service.commit_queued().await;
        if flagged_too {
            match service.commit_flagged().await {
                Ok(0) => {}
                Ok(committed) => tracing::debug!(committed, "flagged reservations committed"),
                Err(err) => tracing::debug!(error = %err, "committer will retry"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<Uuid> {
        (0..n).map(|_| Uuid::now_v7()).collect()
    }

    #[test]
    fn ids_are_taken_oldest_first_in_batches() {
        let queue = CommitQueue::default();
        let all = ids(5);
        for id in &all {
            queue.push(*id);
        }
        assert_eq!(queue.take(3), all[..3]);
        assert_eq!(queue.take(3), all[3..]);
        assert!(queue.take(3).is_empty());
    }

    #[test]
    fn ids_put_back_go_before_the_ones_queued_meanwhile() {
        let queue = CommitQueue::default();
        let all = ids(4);
        queue.push(all[0]);
        queue.push(all[1]);
        let taken = queue.take(10);
        queue.push(all[2]);
        queue.push(all[3]);
        queue.put_back(taken);
        assert_eq!(queue.take(10), all);
    }

    #[test]
    fn a_full_queue_has_no_room() {
        let queue = CommitQueue::default();
        for id in ids(QUEUE_CAPACITY - 1) {
            queue.push(id);
        }
        assert!(queue.has_room());
        queue.push(Uuid::now_v7());
        assert!(!queue.has_room());
        queue.take(1);
        assert!(queue.has_room());
    }
}
