//! Spreads an upstream's calls over every address its name resolves to (a
//! headless Service gives one per ready pod), and steers them away from an
//! address whose connection just failed.
//!
//! Each address has its own lazily connected channel. A call goes to the
//! less busy of two addresses picked at random (power of two choices) among
//! those not avoided. An address whose connection failed (refused, reset, or
//! a server going away) is avoided for [`AVOID_FOR`] — used only while no
//! other address is left — so the call sent again after such a failure goes
//! to another pod at once instead of meeting the same closing server, and a
//! pod gone in a rollout stops taking calls before the next lookup drops it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

/// How long an address is avoided after its connection failed. Long enough
/// for the next lookup (asked for at once) to drop a pod that is gone; short
/// enough that a pod back after a blip gets calls again soon.
pub const AVOID_FOR: Duration = Duration::from_secs(2);

/// Looks an upstream's host and port up (DNS; tests substitute their own).
pub(crate) type Lookup =
    Arc<dyn Fn(String, u16) -> BoxFuture<'static, std::io::Result<Vec<SocketAddr>>> + Send + Sync>;

/// The system resolver.
pub(crate) fn dns_lookup() -> Lookup {
    Arc::new(|host, port| {
        Box::pin(async move {
            tokio::net::lookup_host((host.as_str(), port))
                .await
                .map(|addrs| addrs.collect())
        })
    })
}

/// One address of an upstream.
pub(crate) struct Backend {
    pub(crate) addr: SocketAddr,
    channel: Channel,
    in_flight: AtomicUsize,
    avoid_until: Mutex<Option<Instant>>,
}

impl Backend {
    fn new(addr: SocketAddr, endpoint: Endpoint) -> Self {
        Self {
            addr,
            channel: endpoint.connect_lazy(),
            in_flight: AtomicUsize::new(0),
            avoid_until: Mutex::new(None),
        }
    }

    /// The address's channel, counted as busy until the guard is dropped.
    pub(crate) fn checkout(self: &Arc<Self>) -> (Channel, InFlight) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        (self.channel.clone(), InFlight(self.clone()))
    }

    /// Its connection failed: other addresses get the calls for a while.
    pub(crate) fn avoid(&self) {
        *self.avoid_until.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(Instant::now() + AVOID_FOR);
    }

    /// A call on it succeeded: it is as good as any again.
    pub(crate) fn trust(&self) {
        let mut until = self.avoid_until.lock().unwrap_or_else(|e| e.into_inner());
        if until.is_some() {
            *until = None;
        }
    }

    fn avoided(&self, now: Instant) -> bool {
        self.avoid_until
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|until| until > now)
    }

    fn load(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// Marks one call in flight on a [`Backend`] until dropped.
pub(crate) struct InFlight(Arc<Backend>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The addresses an upstream's name resolved to last.
pub(crate) type Backends = Arc<Vec<Arc<Backend>>>;

/// Picks the address for a call: the less busy of two picked at random
/// among those neither avoided nor `excluded` (the address that just
/// failed this call); failing that, any address but `excluded`; failing
/// that (it is the only one), `excluded` itself. `None` without addresses.
pub(crate) fn pick(
    backends: &[Arc<Backend>],
    excluded: Option<SocketAddr>,
) -> Option<Arc<Backend>> {
    let now = Instant::now();
    let not_excluded = |b: &Arc<Backend>| Some(b.addr) != excluded;
    pick_among(backends, |b| not_excluded(b) && !b.avoided(now))
        .or_else(|| pick_among(backends, not_excluded))
        .or_else(|| backends.first().cloned())
}

fn pick_among(
    backends: &[Arc<Backend>],
    eligible: impl Fn(&Arc<Backend>) -> bool,
) -> Option<Arc<Backend>> {
    let count = backends.iter().filter(|b| eligible(b)).count();
    let nth = |n: usize| backends.iter().filter(|b| eligible(b)).nth(n).cloned();
    match count {
        0 => None,
        1 => nth(0),
        _ => {
            let first = fastrand::usize(..count);
            let second = (first + 1 + fastrand::usize(..count - 1)) % count;
            let (a, b) = (nth(first)?, nth(second)?);
            Some(if b.load() < a.load() { b } else { a })
        }
    }
}

/// Keeps an upstream's address set up to date: one lookup now, then
/// periodically and whenever asked (see [`crate::grpc_client`]).
pub(crate) struct Resolver<F> {
    pub(crate) name: &'static str,
    pub(crate) lookup: Lookup,
    /// The names looked up (usually one; a list when the URL lists several).
    pub(crate) targets: Vec<(String, u16)>,
    pub(crate) endpoint: F,
    pub(crate) backends: tokio::sync::watch::Sender<Backends>,
}

impl<F> Resolver<F>
where
    F: Fn(SocketAddr) -> Result<Endpoint, tonic::transport::Error>,
{
    /// One lookup: keeps the addresses still listed (with their
    /// connections), adds new ones, drops vanished ones (their calls in
    /// flight finish). A failed or empty lookup keeps what is known.
    pub(crate) async fn resolve_once(&self) {
        let mut found = Vec::new();
        for (host, port) in &self.targets {
            match (self.lookup)(host.clone(), *port).await {
                Ok(addrs) => found.extend(addrs),
                Err(err) => {
                    tracing::warn!(upstream = self.name, %host, error = %err, "cannot resolve upstream; keeping known addresses");
                    return;
                }
            }
        }
        if found.is_empty() {
            return;
        }
        let current = self.backends.borrow().clone();
        let mut known: HashMap<SocketAddr, Arc<Backend>> =
            current.iter().map(|b| (b.addr, b.clone())).collect();
        let mut next = Vec::with_capacity(found.len());
        for addr in found {
            if next.iter().any(|b: &Arc<Backend>| b.addr == addr) {
                continue;
            }
            match known.remove(&addr) {
                Some(backend) => next.push(backend),
                None => match (self.endpoint)(addr) {
                    Ok(endpoint) => {
                        tracing::info!(upstream = self.name, %addr, "upstream address added");
                        next.push(Arc::new(Backend::new(addr, endpoint)));
                    }
                    Err(err) => {
                        tracing::warn!(upstream = self.name, %addr, error = %err, "unusable upstream address");
                    }
                },
            }
        }
        for addr in known.keys() {
            tracing::info!(upstream = self.name, %addr, "upstream address removed");
        }
        let changed = next.len() != current.len()
            || next
                .iter()
                .zip(current.iter())
                .any(|(a, b)| a.addr != b.addr);
        if changed {
            self.backends.send_replace(Arc::new(next));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends(n: u16) -> Vec<Arc<Backend>> {
        (0..n)
            .map(|i| {
                let addr = SocketAddr::from(([127, 0, 0, 1], 40000 + i));
                let endpoint = Endpoint::from_shared(format!("http://{addr}")).expect("endpoint");
                Arc::new(Backend::new(addr, endpoint))
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn an_avoided_address_gets_no_calls_while_others_are_left() {
        let all = backends(3);
        all[1].avoid();
        for _ in 0..200 {
            let picked = pick(&all, None).expect("an address");
            assert_ne!(picked.addr, all[1].addr);
        }
        // After the avoidance ends it is picked again.
        tokio::time::sleep(AVOID_FOR).await;
        assert!((0..200).any(|_| pick(&all, None).is_some_and(|b| b.addr == all[1].addr)));
    }

    #[tokio::test(start_paused = true)]
    async fn the_address_that_just_failed_is_not_picked_again_unless_it_is_the_only_one() {
        let all = backends(2);
        for _ in 0..100 {
            let picked = pick(&all, Some(all[0].addr)).expect("an address");
            assert_eq!(picked.addr, all[1].addr);
        }
        // Every address avoided: still one to try, but not the one that failed.
        all[0].avoid();
        all[1].avoid();
        let picked = pick(&all, Some(all[0].addr)).expect("an address");
        assert_eq!(picked.addr, all[1].addr);
        let only = backends(1);
        only[0].avoid();
        let picked = pick(&only, Some(only[0].addr)).expect("the only address");
        assert_eq!(picked.addr, only[0].addr);
        assert!(pick(&[], None).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn the_less_busy_of_two_addresses_gets_the_call() {
        let all = backends(2);
        let (_channel, _busy) = all[0].checkout();
        for _ in 0..50 {
            assert_eq!(pick(&all, None).expect("an address").addr, all[1].addr);
        }
        // A success clears an avoidance at once.
        all[1].avoid();
        all[1].trust();
        assert_eq!(pick(&all, None).expect("an address").addr, all[1].addr);
    }
}
