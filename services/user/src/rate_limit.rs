//! Keyed rate limiting with bounded memory.
//!
//! [`BoundedMap`] is the store: a fixed number of shards, each a mutex over
//! an LRU map with a hard capacity, so a flood of distinct keys (addresses,
//! emails) costs at most `capacity` entries and every call does O(1) work
//! under one shard's lock: no scan of the whole map, ever. A full shard
//! drops its least recently used entry; each call also drops up to two
//! entries at the cold end that have gone stale (whose state is the same as
//! a fresh key's), so idle keys leave without a sweeper.
//!
//! A poisoned shard lock (a panic while it was held) fails closed: callers
//! get [`Poisoned`] and deny the request, since the state it guarded can no
//! longer be trusted and allowing would switch the limit off.
//!
//! [`RateLimiter`] is GCRA (the generic cell rate algorithm, as in the
//! `governor` crate) over it: `max` requests per `window`, as a burst or
//! spread out, with the exact wait for the next allowed request. In memory,
//! per replica: with N replicas a client gets at most N times the budget,
//! which is still a hard bound.

use std::hash::{BuildHasher, Hash, RandomState};
use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::Duration;

use hashlink::LruCache;
use hashlink::linked_hash_map::Entry;
use tokio::time::Instant;

/// Shards per map: enough that requests on different keys rarely wait for
/// each other on two cores, few enough that tiny capacities stay exact-ish.
const SHARDS: usize = 16;

/// Stale entries dropped per call at most (amortised eviction).
const PRUNE_PER_CALL: usize = 2;

/// A shard's lock was poisoned; the caller must deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Poisoned;

/// A sharded, capacity-bounded LRU map.
pub struct BoundedMap<K, V> {
    shards: Box<[Mutex<LruCache<K, V>>]>,
    hasher: RandomState,
}

impl<K: Hash + Eq, V> BoundedMap<K, V> {
    /// At most `capacity` entries in all (rounded up to a multiple of the
    /// shard count; at least one per shard).
    pub fn new(capacity: NonZeroUsize) -> Self {
        let per_shard = capacity.get().div_ceil(SHARDS).max(1);
        Self {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(LruCache::new(per_shard)))
                .collect(),
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, key: &K) -> &Mutex<LruCache<K, V>> {
        // The hash is keyed per process: nobody can aim keys at one shard.
        let index = (self.hasher.hash_one(key) % SHARDS as u64) as usize;
        &self.shards[index]
    }

    /// Runs `f` on `key`'s entry, creating it with `make` if absent (which
    /// may evict the least recently used entry of a full shard). Entries for
    /// which `stale` holds are dropped from the cold end on the way.
    pub fn update<R>(
        &self,
        key: K,
        make: impl FnOnce() -> V,
        stale: impl Fn(&V) -> bool,
        f: impl FnOnce(&mut V) -> R,
    ) -> Result<R, Poisoned> {
        let mut shard = self.shard(&key).lock().map_err(|_| Poisoned)?;
        prune(&mut shard, &stale);
        if shard.len() >= shard.capacity() && !shard.contains_key(&key) {
            shard.remove_lru();
        }
        let value = match shard.entry(key) {
            Entry::Occupied(mut occupied) => {
                occupied.to_back();
                occupied.into_mut()
            }
            Entry::Vacant(vacant) => vacant.insert(make()),
        };
        Ok(f(value))
    }

    /// Runs `f` on `key`'s entry only if there is one.
    pub fn update_existing<R>(
        &self,
        key: &K,
        f: impl FnOnce(&mut V) -> R,
    ) -> Result<Option<R>, Poisoned> {
        let mut shard = self.shard(key).lock().map_err(|_| Poisoned)?;
        Ok(shard.get_mut(key).map(f))
    }

    /// Entries held (all shards; a poisoned shard counts as empty).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|s| s.len()).unwrap_or(0))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Poisons `key`'s shard by panicking while holding its lock.
    #[cfg(test)]
    pub fn poison(&self, key: &K)
    where
        K: Send + Sync,
        V: Send,
    {
        std::thread::scope(|scope| {
            let handle = scope.spawn(|| {
                let _guard = self.shard(key).lock();
                panic!("poisoning the shard on purpose");
            });
            assert!(handle.join().is_err());
        });
    }
}

fn prune<K: Hash + Eq, V>(shard: &mut LruCache<K, V>, stale: &impl Fn(&V) -> bool) {
    for _ in 0..PRUNE_PER_CALL {
        match shard.iter().next() {
            Some((_, oldest)) if stale(oldest) => {
                shard.remove_lru();
            }
            _ => break,
        }
    }
}

/// `max` requests per `window` per key (GCRA).
pub struct RateLimiter<K> {
    /// Time one request "costs": window / max.
    interval: Duration,
    /// How far ahead of now a key's theoretical arrival time may run:
    /// window − interval, which admits a burst of `max`.
    tolerance: Duration,
    /// Per key: the theoretical arrival time of its next request.
    state: BoundedMap<K, Instant>,
}

impl<K: Hash + Eq> RateLimiter<K> {
    /// `max` must be at least 1 (configuration checks it).
    pub fn new(window: Duration, max: u32, capacity: NonZeroUsize) -> Self {
        let interval = window / max.max(1);
        Self {
            interval,
            tolerance: window.saturating_sub(interval),
            state: BoundedMap::new(capacity),
        }
    }

    /// Counts one request for `key`; `Err(retry_after)` when over the limit
    /// (or when the limiter's state is unusable: fail closed).
    pub fn hit(&self, key: K) -> Result<(), Duration> {
        let now = Instant::now();
        let (interval, tolerance) = (self.interval, self.tolerance);
        self.state
            .update(
                key,
                || now,
                |tat| *tat <= now,
                |tat| {
                    let start = (*tat).max(now);
                    let ahead = start - now;
                    if ahead > tolerance {
                        return Err(ahead - tolerance);
                    }
                    *tat = start + interval;
                    Ok(())
                },
            )
            .unwrap_or_else(|Poisoned| {
                tracing::error!("rate limiter state poisoned: denying");
                Err(Duration::from_secs(1))
            })
    }

    /// Keys held now (for tests and metrics).
    pub fn len(&self) -> usize {
        self.state.len()
    }

    pub fn is_empty(&self) -> bool {
        self.state.is_empty()
    }

    #[cfg(test)]
    fn poison(&self, key: &K)
    where
        K: Sync + Send,
    {
        self.state.poison(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap(n: usize) -> NonZeroUsize {
        NonZeroUsize::new(n).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn trips_at_the_limit_and_refills_at_the_rate() {
        let limiter = RateLimiter::new(Duration::from_secs(60), 3, cap(100));
        for _ in 0..3 {
            assert!(limiter.hit("a").is_ok());
        }
        assert_eq!(limiter.hit("a"), Err(Duration::from_secs(20)));
        assert!(limiter.hit("b").is_ok(), "keys are independent");
        tokio::time::advance(Duration::from_secs(15)).await;
        assert_eq!(limiter.hit("a"), Err(Duration::from_secs(5)));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(limiter.hit("a").is_ok(), "one request per 20 s refills");
        assert!(limiter.hit("a").is_err());
        tokio::time::advance(Duration::from_secs(60)).await;
        for _ in 0..3 {
            assert!(
                limiter.hit("a").is_ok(),
                "a full burst after a quiet window"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn memory_is_capped_and_the_least_recent_key_goes() {
        let limiter = RateLimiter::new(Duration::from_secs(60), 1, cap(SHARDS * 4));
        for i in 0..10_000u32 {
            assert!(limiter.hit(i).is_ok());
        }
        assert!(
            limiter.len() <= SHARDS * 4,
            "{} keys held for a capacity of {}",
            limiter.len(),
            SHARDS * 4
        );
        // The most recent keys are still limited.
        assert!(limiter.hit(9_999).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn stale_keys_leave_without_a_sweep() {
        let limiter = RateLimiter::new(Duration::from_secs(1), 5, cap(10_000));
        for i in 0..1_000u32 {
            limiter.hit(i).unwrap();
        }
        assert_eq!(limiter.len(), 1_000);
        tokio::time::advance(Duration::from_secs(2)).await;
        // Each call drops up to two stale keys from the cold end of its
        // shard, so traffic on new keys drains the old ones.
        for i in 1_000..2_000u32 {
            limiter.hit(i).unwrap();
        }
        assert!(
            limiter.len() < 1_500,
            "{} keys held; stale ones should have gone",
            limiter.len()
        );
    }

    #[tokio::test]
    async fn a_poisoned_lock_denies() {
        let limiter = RateLimiter::new(Duration::from_secs(60), 1000, cap(100));
        assert!(limiter.hit("victim").is_ok());
        limiter.poison(&"victim");
        assert_eq!(
            limiter.hit("victim"),
            Err(Duration::from_secs(1)),
            "fails closed"
        );
    }

    #[test]
    fn update_returns_the_entry_just_inserted_even_when_full() {
        let map: BoundedMap<u32, u32> = BoundedMap::new(cap(1));
        for i in 0..100 {
            let seen = map.update(i, || i * 10, |_| false, |v| *v).unwrap();
            assert_eq!(seen, i * 10);
        }
        assert_eq!(map.update_existing(&99, |v| *v).unwrap(), Some(990));
        assert_eq!(map.update_existing(&12_345, |v| *v).unwrap(), None);
    }
}
