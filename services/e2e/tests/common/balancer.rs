//! A round-robin TCP balancer that does what a Kubernetes Service and its
//! endpoints controller do for the tests: new connections go to backends
//! whose `/readyz` answers 200 (polled every [`POLL`]), a backend that stops
//! being ready gets no new connections, and established connections stay
//! where they are (as conntrack keeps them) until either side closes them.
//!
//! With no ready backend a new connection is closed at once, which a client
//! sees as a failed request, as it would see a Service without endpoints.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// How often backends' readiness is polled: the "endpoint propagation" delay
/// the processes' drain window must outlast.
pub const POLL: Duration = Duration::from_millis(100);

struct Backend {
    id: u64,
    target: SocketAddr,
    readyz: String,
    ready: bool,
}

#[derive(Default)]
struct State {
    backends: Vec<Backend>,
    next: usize,
}

/// Connections the balancer could not place, by reason.
#[derive(Default, Debug)]
pub struct Dropped {
    /// No backend was ready.
    pub no_backend: AtomicU64,
    /// The chosen backend refused the connection.
    pub refused: AtomicU64,
}

pub struct Balancer {
    pub front: SocketAddr,
    state: Arc<Mutex<State>>,
    pub dropped: Arc<Dropped>,
    ids: AtomicU64,
    tasks: Vec<JoinHandle<()>>,
}

impl Balancer {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the balancer");
        let front = listener.local_addr().expect("balancer address");
        let state = Arc::new(Mutex::new(State::default()));
        let dropped = Arc::new(Dropped::default());
        let accept = tokio::spawn(accept_loop(listener, state.clone(), dropped.clone()));
        let watch = tokio::spawn(watch_readiness(state.clone()));
        Self {
            front,
            state,
            dropped,
            ids: AtomicU64::new(1),
            tasks: vec![accept, watch],
        }
    }

    /// Adds a backend; it gets connections once its `readyz` answers 200.
    pub fn add(&self, target: SocketAddr, readyz: String) -> u64 {
        let id = self.ids.fetch_add(1, Ordering::SeqCst);
        self.lock().backends.push(Backend {
            id,
            target,
            readyz,
            ready: false,
        });
        id
    }

    /// Forgets a backend (the pod is gone).
    pub fn remove(&self, id: u64) {
        self.lock().backends.retain(|b| b.id != id);
    }

    /// Whether backend `id` currently gets new connections.
    pub fn is_ready(&self, id: u64) -> bool {
        self.lock().backends.iter().any(|b| b.id == id && b.ready)
    }

    /// Connections that could not be placed (no ready backend, or refused).
    pub fn dropped_total(&self) -> u64 {
        self.dropped.no_backend.load(Ordering::SeqCst) + self.dropped.refused.load(Ordering::SeqCst)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn pick(state: &Mutex<State>) -> Option<SocketAddr> {
    let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
    let ready: Vec<SocketAddr> = state
        .backends
        .iter()
        .filter(|b| b.ready)
        .map(|b| b.target)
        .collect();
    if ready.is_empty() {
        return None;
    }
    state.next = state.next.wrapping_add(1);
    Some(ready[state.next % ready.len()])
}

async fn accept_loop(listener: TcpListener, state: Arc<Mutex<State>>, dropped: Arc<Dropped>) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            continue;
        };
        let _ = inbound.set_nodelay(true);
        let Some(target) = pick(&state) else {
            dropped.no_backend.fetch_add(1, Ordering::SeqCst);
            continue;
        };
        let dropped = dropped.clone();
        tokio::spawn(async move {
            match TcpStream::connect(target).await {
                Ok(mut outbound) => {
                    let _ = outbound.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
                Err(_) => {
                    dropped.refused.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
    }
}

/// The endpoints controller: polls every backend's readiness.
async fn watch_readiness(state: Arc<Mutex<State>>) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .expect("HTTP client");
    loop {
        let probes: Vec<(u64, String)> = state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .backends
            .iter()
            .map(|b| (b.id, b.readyz.clone()))
            .collect();
        for (id, url) in probes {
            let ready = http
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status() == reqwest::StatusCode::OK);
            let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(backend) = state.backends.iter_mut().find(|b| b.id == id) {
                backend.ready = ready;
            }
        }
        tokio::time::sleep(POLL).await;
    }
}
