//! Graceful shutdown in three phases, the same for every service.
//!
//! A load balancer (a Kubernetes Service's endpoints, kube-proxy, an
//! ingress) learns that a pod is going away only through its readiness, and
//! only after a propagation delay. A process that closed its listener the
//! moment it was told to stop would refuse the connections that are still
//! routed to it during that delay. So, on SIGTERM (or on the preStop hook's
//! `GET /drain`, which arrives before it):
//!
//! 1. **Drain** ([`Phase::Draining`]): readiness turns false at once
//!    (`/readyz` 503, gRPC health NOT_SERVING) while the process keeps
//!    accepting and serving *normally* for the drain window
//!    (`SHUTDOWN_DRAIN_MS`), long enough for every balancer to stop
//!    routing here. HTTP/1 responses carry `Connection: close` meanwhile, so
//!    clients move their keep-alive connections to other replicas. Background
//!    work (outbox relay, consumer) keeps running: events keep flowing.
//! 2. **Stop** ([`Phase::Stopping`], [`Shutdown::cancelled`]): listeners close
//!    (new connections are refused), the gRPC server sends GOAWAY, HTTP/1
//!    connections close after their in-flight response, and background tasks
//!    stop taking new work.
//! 3. **Finish**: in-flight requests and messages complete, bounded by the
//!    grace period (`SHUTDOWN_GRACE_MS`, [`Shutdown::drained`]); whatever is
//!    still running after it is abandoned.
//!
//! SIGINT (Ctrl-C) and a second signal skip what is left of the drain
//! window: a developer's Ctrl-C stops at once, and an operator who sends
//! SIGTERM twice means it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Where the process is in its shutdown sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Ready and serving.
    Serving,
    /// Phase 1: not ready, still accepting and serving; since when.
    Draining { since: Instant },
    /// Phases 2 and 3: listeners closed, in-flight work finishing.
    Stopping,
}

/// A drain begun by `GET /drain` that no SIGTERM follows within this long
/// after its window ended is undone (readiness returns): kubelet sends
/// SIGTERM right after the preStop hook returns, so a drain left hanging
/// was a stray call, and must not keep a healthy pod out of rotation.
pub const ABANDONED_DRAIN_AFTER: Duration = Duration::from_secs(30);

/// The process-wide shutdown sequence plus a tracker of tasks that must
/// finish.
#[derive(Clone)]
pub struct Shutdown {
    phase: Arc<watch::Sender<Phase>>,
    /// Cancelled when phase 2 begins.
    token: CancellationToken,
    tasks: TaskTracker,
    drain: Duration,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self {
            phase: Arc::new(watch::Sender::new(Phase::Serving)),
            token: CancellationToken::new(),
            tasks: TaskTracker::new(),
            drain: Duration::ZERO,
        }
    }
}

/// A signal that starts or hurries the shutdown sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM: drain first.
    Terminate,
    /// SIGINT (Ctrl-C): stop at once.
    Interrupt,
}

impl Shutdown {
    /// A sequence without a drain window (tests; `with_drain` sets one).
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the drain window of phase 1.
    pub fn with_drain(mut self, drain: Duration) -> Self {
        self.drain = drain;
        self
    }

    /// The drain window of phase 1.
    pub fn drain_window(&self) -> Duration {
        self.drain
    }

    /// Follows SIGTERM and SIGINT. Call once, from `main`.
    pub fn listen_for_signals(&self) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            match SignalStream::install() {
                Some(mut signals) => loop {
                    if tx.send(signals.next().await).is_err() {
                        return;
                    }
                },
                None => {
                    tracing::warn!(
                        "cannot install signal handlers; only Ctrl-C will stop the process"
                    );
                    let _ = tokio::signal::ctrl_c().await;
                    let _ = tx.send(Signal::Interrupt);
                }
            }
        });
        let this = self.clone();
        tokio::spawn(async move { this.follow_signals(rx).await });
    }

    /// The signal state machine, separate from the OS so that tests can
    /// drive it: the first SIGTERM drains then stops; SIGINT, or any signal
    /// during the drain, stops at once.
    pub async fn follow_signals(&self, mut signals: tokio::sync::mpsc::UnboundedReceiver<Signal>) {
        let first = tokio::select! {
            Some(signal) = signals.recv() => signal,
            // Stopped by other means (a fatal error, a test).
            _ = self.token.cancelled() => return,
            else => return,
        };
        if first == Signal::Interrupt || self.drain.is_zero() {
            tracing::info!(signal = ?first, "shutdown requested, stopping");
            self.trigger();
            return;
        }
        let end = self.begin_drain();
        tracing::info!(
            drain_ms = end.saturating_duration_since(Instant::now()).as_millis() as u64,
            "SIGTERM: not ready, serving until the drain window ends"
        );
        tokio::select! {
            _ = tokio::time::sleep_until(end) => {
                tracing::info!("drain window over, stopping");
            }
            Some(signal) = signals.recv() => {
                tracing::info!(?signal, "second signal, skipping the rest of the drain window");
            }
            _ = self.token.cancelled() => {}
        }
        self.trigger();
    }

    /// Phase 1 from the preStop hook (`GET /drain`): begins the drain (if
    /// not begun) and returns when its window is over (or at once if the
    /// process is already stopping). Readiness comes back if no SIGTERM
    /// follows within [`ABANDONED_DRAIN_AFTER`].
    pub async fn drain_for_hook(&self) {
        let end = self.begin_drain();
        tokio::select! {
            _ = tokio::time::sleep_until(end) => {}
            _ = self.token.cancelled() => return,
        }
        let since = *self.phase.borrow();
        let this = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(ABANDONED_DRAIN_AFTER) => {}
                _ = this.token.cancelled() => return,
            }
            let undone = this.phase.send_if_modified(|phase| {
                if *phase == since {
                    *phase = Phase::Serving;
                    true
                } else {
                    false
                }
            });
            if undone {
                tracing::warn!(
                    "a drain requested through /drain was not followed by SIGTERM; ready again"
                );
            }
        });
    }

    /// Enters phase 1 if still serving; returns when the drain window ends
    /// (measured from the first request to drain, so a SIGTERM that follows
    /// the preStop hook does not drain twice).
    pub fn begin_drain(&self) -> Instant {
        let now = Instant::now();
        let mut end = now;
        self.phase.send_if_modified(|phase| match *phase {
            Phase::Serving => {
                *phase = Phase::Draining { since: now };
                end = now + self.drain;
                true
            }
            Phase::Draining { since } => {
                end = since + self.drain;
                false
            }
            Phase::Stopping => false,
        });
        end
    }

    /// Phase 2 now, skipping any drain (tests, fatal errors, Ctrl-C).
    pub fn trigger(&self) {
        self.phase.send_if_modified(|phase| {
            let changed = *phase != Phase::Stopping;
            *phase = Phase::Stopping;
            changed
        });
        self.token.cancel();
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    /// Follows phase changes (the gRPC health service flips on them).
    pub fn watch(&self) -> watch::Receiver<Phase> {
        self.phase.subscribe()
    }

    /// Whether the shutdown sequence has begun (phase 1 or later): readiness
    /// is false from this moment.
    pub fn is_draining(&self) -> bool {
        *self.phase.borrow() != Phase::Serving
    }

    /// Whether phase 2 has begun: stop accepting and taking new work.
    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves when phase 2 begins: servers stop accepting, background
    /// tasks stop taking new work.
    pub fn cancelled(&self) -> impl Future<Output = ()> + Send + 'static {
        self.token.clone().cancelled_owned()
    }

    /// The phase-2 token, for APIs that take one.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Runs a task that shutdown waits for (servers, consumers, relays).
    pub fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tasks.spawn(task)
    }

    /// Waits for phase 2, then for every spawned task, at most `grace`
    /// (phase 3). Returns `false` when the grace period ran out with work
    /// still running.
    pub async fn drained(&self, grace: Duration) -> bool {
        self.cancelled().await;
        self.tasks.close();
        match tokio::time::timeout(grace, self.tasks.wait()).await {
            Ok(()) => true,
            Err(_) => {
                tracing::warn!(
                    grace_ms = grace.as_millis() as u64,
                    still_running = self.tasks.len(),
                    "grace period over, abandoning unfinished work"
                );
                false
            }
        }
    }
}

/// SIGTERM and SIGINT as one stream of [`Signal`]s.
struct SignalStream {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl SignalStream {
    #[cfg(unix)]
    fn install() -> Option<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Some(Self {
            term: signal(SignalKind::terminate()).ok()?,
            int: signal(SignalKind::interrupt()).ok()?,
        })
    }

    #[cfg(not(unix))]
    fn install() -> Option<Self> {
        None
    }

    #[cfg(unix)]
    async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => Signal::Terminate,
            _ = self.int.recv() => Signal::Interrupt,
        }
    }

    #[cfg(not(unix))]
    async fn next(&mut self) -> Signal {
        std::future::pending().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    const DRAIN: Duration = Duration::from_secs(5);

    /// Starts the signal state machine on signals the test sends.
    fn follow(shutdown: &Shutdown) -> tokio::sync::mpsc::UnboundedSender<Signal> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let s = shutdown.clone();
        tokio::spawn(async move { s.follow_signals(rx).await });
        tx
    }

    /// Lets spawned tasks run without moving the paused clock.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn sigterm_reports_not_ready_at_once_and_stops_after_the_drain_window() {
        let shutdown = Shutdown::new().with_drain(DRAIN);
        let signals = follow(&shutdown);
        settle().await;
        assert_eq!(shutdown.phase(), Phase::Serving);

        let start = Instant::now();
        signals.send(Signal::Terminate).unwrap();
        settle().await;
        // Phase 1 at once: not ready, but not stopping.
        assert!(shutdown.is_draining());
        assert!(!shutdown.is_triggered());
        assert!(matches!(shutdown.phase(), Phase::Draining { .. }));

        tokio::time::sleep(DRAIN - Duration::from_millis(1)).await;
        settle().await;
        assert!(!shutdown.is_triggered(), "still serving inside the window");

        shutdown.cancelled().await;
        assert_eq!(
            start.elapsed(),
            DRAIN,
            "phase 2 exactly at the window's end"
        );
        assert_eq!(shutdown.phase(), Phase::Stopping);
    }

    #[tokio::test(start_paused = true)]
    async fn sigint_stops_at_once() {
        let shutdown = Shutdown::new().with_drain(DRAIN);
        let signals = follow(&shutdown);
        let start = Instant::now();
        signals.send(Signal::Interrupt).unwrap();
        shutdown.cancelled().await;
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_second_signal_skips_the_rest_of_the_drain() {
        let shutdown = Shutdown::new().with_drain(DRAIN);
        let signals = follow(&shutdown);
        let start = Instant::now();
        signals.send(Signal::Terminate).unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!shutdown.is_triggered());
        signals.send(Signal::Terminate).unwrap();
        shutdown.cancelled().await;
        assert_eq!(start.elapsed(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_drain_window_sigterm_stops_at_once() {
        let shutdown = Shutdown::new();
        let signals = follow(&shutdown);
        let start = Instant::now();
        signals.send(Signal::Terminate).unwrap();
        shutdown.cancelled().await;
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn the_prestop_hook_drains_and_the_following_sigterm_stops_at_once() {
        let shutdown = Shutdown::new().with_drain(DRAIN);
        let signals = follow(&shutdown);
        let start = Instant::now();
        let hook = tokio::spawn({
            let s = shutdown.clone();
            async move { s.drain_for_hook().await }
        });
        settle().await;
        assert!(
            shutdown.is_draining(),
            "not ready as soon as the hook is called"
        );
        assert!(!shutdown.is_triggered());
        hook.await.unwrap();
        assert_eq!(start.elapsed(), DRAIN, "the hook returns after the window");
        assert!(!shutdown.is_triggered(), "the hook itself does not stop");

        // kubelet's SIGTERM right after the hook: the window is already over.
        signals.send(Signal::Terminate).unwrap();
        shutdown.cancelled().await;
        assert_eq!(start.elapsed(), DRAIN);
    }

    #[tokio::test(start_paused = true)]
    async fn sigterm_during_the_hooks_drain_waits_only_for_what_is_left() {
        let shutdown = Shutdown::new().with_drain(DRAIN);
        let signals = follow(&shutdown);
        let start = Instant::now();
        let s = shutdown.clone();
        tokio::spawn(async move { s.drain_for_hook().await });
        tokio::time::sleep(Duration::from_secs(2)).await;
        signals.send(Signal::Terminate).unwrap();
        shutdown.cancelled().await;
        assert_eq!(start.elapsed(), DRAIN);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stray_drain_without_sigterm_is_undone() {
        let shutdown = Shutdown::new().with_drain(DRAIN);
        shutdown.drain_for_hook().await;
        assert!(shutdown.is_draining());
        tokio::time::sleep(ABANDONED_DRAIN_AFTER - Duration::from_millis(1)).await;
        assert!(shutdown.is_draining());
        tokio::time::sleep(Duration::from_millis(2)).await;
        settle().await;
        assert_eq!(shutdown.phase(), Phase::Serving, "ready again");
        assert!(!shutdown.is_triggered());
    }

    #[tokio::test(start_paused = true)]
    async fn trigger_skips_the_drain() {
        let shutdown = Shutdown::new().with_drain(DRAIN);
        shutdown.trigger();
        assert!(shutdown.is_draining());
        assert!(shutdown.is_triggered());
        assert_eq!(shutdown.phase(), Phase::Stopping);
    }

    #[tokio::test(start_paused = true)]
    async fn background_work_runs_through_the_drain_and_stops_in_phase_two() {
        let shutdown = Shutdown::new().with_drain(DRAIN);
        let signals = follow(&shutdown);
        let ticks = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let (s, t) = (shutdown.clone(), ticks.clone());
        // A relay-like loop: one unit of work per 100 ms until phase 2.
        shutdown.spawn(async move {
            loop {
                tokio::select! {
                    _ = s.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {
                        t.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        });
        signals.send(Signal::Terminate).unwrap();
        settle().await;
        let at_signal = ticks.load(Ordering::SeqCst);
        assert!(shutdown.drained(Duration::from_secs(1)).await);
        let during_drain = ticks.load(Ordering::SeqCst) - at_signal;
        assert!(
            during_drain >= 49,
            "kept working during the drain window: {during_drain} ticks"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn drain_waits_for_tasks_within_grace() {
        let shutdown = Shutdown::new();
        let s = shutdown.clone();
        let finished = Arc::new(AtomicBool::new(false));
        let f = finished.clone();
        shutdown.spawn(async move {
            s.cancelled().await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            f.store(true, Ordering::SeqCst);
        });
        shutdown.trigger();
        assert!(shutdown.drained(Duration::from_secs(5)).await);
        assert!(finished.load(Ordering::SeqCst));
    }

    #[tokio::test(start_paused = true)]
    async fn drain_gives_up_after_grace() {
        let shutdown = Shutdown::new();
        shutdown.spawn(async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        });
        shutdown.trigger();
        let start = Instant::now();
        assert!(!shutdown.drained(Duration::from_secs(1)).await);
        assert_eq!(start.elapsed(), Duration::from_secs(1));
    }
}
