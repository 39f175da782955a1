//! Product answers kept for a short time.
//!
//! Every order needs the product's name and price; asking product over gRPC
//! for each one costs a round trip, two spans and a query for an answer that
//! rarely changes. A product seen less than `ttl` ago is taken from here:
//! a price or name change reaches new orders within `ttl` (1 s by default,
//! `PRODUCT_CACHE_TTL_MS`, 0 turns the cache off). Only found products are
//! kept, so a new product is orderable at once; a deleted one can still be
//! ordered for at most `ttl` (inventory decides whether there is stock).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use stockmesh_platform::metrics::Metrics;
use stockmesh_proto::product::v1 as prod;
use tokio::time::Instant;
use uuid::Uuid;

/// Upper bound on remembered products; past it, expired entries are dropped
/// and, if that is not enough, everything (the next orders refill it).
const MAX_ENTRIES: usize = 10_000;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LookupLabels {
    /// `hit` or `miss`.
    result: &'static str,
}

pub struct ProductCache {
    ttl: Duration,
    entries: Mutex<HashMap<Uuid, (Instant, prod::Product)>>,
    lookups: Family<LookupLabels, Counter>,
}

impl ProductCache {
    pub fn new(ttl: Duration, metrics: &Metrics) -> Self {
        let lookups = Family::<LookupLabels, Counter>::default();
        metrics.register(
            "order_product_cache_lookups",
            "Product lookups by the order service, by result (hit: answered from the cache, miss: asked product)",
            lookups.clone(),
        );
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
            lookups,
        }
    }

    /// The product if it was seen less than `ttl` ago.
    pub fn get(&self, id: Uuid) -> Option<prod::Product> {
        let found = if self.ttl.is_zero() {
            None
        } else {
            let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            entries
                .get(&id)
                .filter(|(at, _)| at.elapsed() < self.ttl)
                .map(|(_, product)| product.clone())
        };
        let result = if found.is_some() { "hit" } else { "miss" };
        self.lookups.get_or_create(&LookupLabels { result }).inc();
        found
    }

    /// Remembers a product product just answered with.
    pub fn put(&self, id: Uuid, product: &prod::Product) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= MAX_ENTRIES {
            let ttl = self.ttl;
            entries.retain(|_, (at, _)| at.elapsed() < ttl);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(id, (Instant::now(), product.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn product(price: i64) -> prod::Product {
        prod::Product {
            name: "lamp".into(),
            price: Some(prod::Money {
                amount_minor: price,
                currency: "EUR".into(),
            }),
            ..Default::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn answers_within_the_ttl_and_forgets_after_it() {
        let metrics = Metrics::new("order");
        let cache = ProductCache::new(Duration::from_millis(1000), &metrics);
        let id = Uuid::new_v4();
        assert!(cache.get(id).is_none(), "nothing cached yet");
        cache.put(id, &product(250));
        tokio::time::advance(Duration::from_millis(999)).await;
        let cached = cache.get(id).expect("cached within the ttl");
        assert_eq!(cached.price.map(|p| p.amount_minor), Some(250));
        tokio::time::advance(Duration::from_millis(2)).await;
        assert!(cache.get(id).is_none(), "expired after the ttl");
        cache.put(id, &product(300));
        assert_eq!(
            cache.get(id).and_then(|p| p.price).map(|p| p.amount_minor),
            Some(300),
            "a fresh answer replaces the old one"
        );
        let text = metrics.render().await;
        assert!(
            text.contains(
                r#"stockmesh_order_product_cache_lookups_total{service="order",result="hit"} 2"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"stockmesh_order_product_cache_lookups_total{service="order",result="miss"} 2"#
            ),
            "{text}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_ttl_turns_the_cache_off() {
        let cache = ProductCache::new(Duration::ZERO, &Metrics::new("order"));
        let id = Uuid::new_v4();
        cache.put(id, &product(100));
        assert!(cache.get(id).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn stays_bounded() {
        let cache = ProductCache::new(Duration::from_secs(60), &Metrics::new("order"));
        for _ in 0..MAX_ENTRIES + 10 {
            cache.put(Uuid::new_v4(), &product(1));
        }
        let len = cache.entries.lock().map(|e| e.len()).unwrap_or(usize::MAX);
        assert!(len <= MAX_ENTRIES, "{len} entries");
    }
}
