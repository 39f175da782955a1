//! Fixed-window counters for login attempts, per client and per account.
//!
//! In memory, per replica: with N replicas an attacker gets at most N times
//! the budget, which is still a hard bound; a shared store can replace this
//! behind the same interface.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

pub struct RateLimiter {
    window: Duration,
    max: u32,
    counters: Mutex<HashMap<String, (Instant, u32)>>,
}

impl RateLimiter {
    pub fn new(window: Duration, max: u32) -> Self {
        Self {
            window,
            max,
            counters: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one attempt for `key`; `Err(retry_after)` when over the limit.
    pub fn hit(&self, key: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let Ok(mut counters) = self.counters.lock() else {
            return Ok(());
        };
        if counters.len() > 100_000 {
            let window = self.window;
            counters.retain(|_, (start, _)| now.duration_since(*start) < window);
        }
        let entry = counters.entry(key.to_owned()).or_insert((now, 0));
        if now.duration_since(entry.0) >= self.window {
            *entry = (now, 0);
        }
        if entry.1 >= self.max {
            return Err(self.window.saturating_sub(now.duration_since(entry.0)));
        }
        entry.1 += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn trips_at_the_limit_and_recovers_after_the_window() {
        let limiter = RateLimiter::new(Duration::from_secs(60), 3);
        for _ in 0..3 {
            assert!(limiter.hit("a").is_ok());
        }
        assert_eq!(limiter.hit("a"), Err(Duration::from_secs(60)));
        assert!(limiter.hit("b").is_ok(), "keys are independent");
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(limiter.hit("a"), Err(Duration::from_secs(40)));
        tokio::time::advance(Duration::from_secs(40)).await;
        assert!(limiter.hit("a").is_ok());
    }
}
