//! Graceful shutdown: SIGTERM or SIGINT becomes one cancellation signal that
//! the HTTP server, the gRPC server and background tasks all obey.
//!
//! The sequence on a signal: readiness turns false (so load balancers stop
//! sending), listeners stop accepting, in-flight requests and messages are
//! drained, and the process exits — bounded by the grace period, after which
//! whatever is still running is abandoned.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The process-wide shutdown signal plus a tracker of tasks that must finish.
#[derive(Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    tasks: TaskTracker,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Cancels on SIGTERM or SIGINT (Ctrl-C). Call once, from `main`.
    pub fn listen_for_signals(&self) {
        let token = self.token.clone();
        tokio::spawn(async move {
            let signal = wait_for_signal().await;
            tracing::info!(signal, "shutdown requested, draining");
            token.cancel();
        });
    }

    /// Starts shutting down (tests, fatal errors).
    pub fn trigger(&self) {
        self.token.cancel();
    }

    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves once shutdown has begun.
    pub fn cancelled(&self) -> impl Future<Output = ()> + Send + 'static {
        self.token.clone().cancelled_owned()
    }

    /// The underlying token, for APIs that take one.
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

    /// Waits for the signal, then for every spawned task, at most `grace`.
    /// Returns `false` when the grace period ran out with work still running.
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

#[cfg(unix)]
async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        },
        _ => {
            tracing::warn!("cannot install signal handlers; only Ctrl-C will stop the process");
            let _ = tokio::signal::ctrl_c().await;
            "SIGINT"
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() -> &'static str {
    let _ = tokio::signal::ctrl_c().await;
    "CTRL-C"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn drain_waits_for_tasks_within_grace() {
        let shutdown = Shutdown::new();
        let s = shutdown.clone();
        let finished = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let f = finished.clone();
        shutdown.spawn(async move {
            s.cancelled().await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            f.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        shutdown.trigger();
        assert!(shutdown.drained(Duration::from_secs(5)).await);
        assert!(finished.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[tokio::test(start_paused = true)]
    async fn drain_gives_up_after_grace() {
        let shutdown = Shutdown::new();
        shutdown.spawn(async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        });
        shutdown.trigger();
        assert!(!shutdown.drained(Duration::from_secs(1)).await);
    }
}
