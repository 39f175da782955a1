//! Live notifications: a server-sent event stream per connected browser.
//!
//! A browser is connected to one replica, but any replica may consume the
//! event that makes its notification. Fan-out therefore goes through
//! PostgreSQL, which every replica shares: a trigger announces each stored
//! notification with `NOTIFY stockmesh_notifications` when its transaction
//! commits (migration `0002_live.sql`), and every replica keeps one
//! dedicated `LISTEN` connection ([`run_listener`]) that hands the
//! announcement to the streams of that user on this replica ([`LiveHub`]).
//! No broker queue per replica, no extra service; the cost is one database
//! connection per replica and one NOTIFY per notification.
//!
//! What a stream can rely on: a notification stored while the stream is
//! open arrives once (ids are sent as SSE ids, and a reconnecting browser's
//! `Last-Event-ID` replays what it missed from the table). Announcements
//! are not durable: while the listener is reconnecting, streams are told to
//! `resync` (fetch the list again) rather than silently missing events.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use serde::Deserialize;
use sqlx::postgres::PgListener;
use stockmesh_platform::Shutdown;
use stockmesh_platform::metrics::Metrics;
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::domain::{NotificationKind, NotificationView};

/// The channel the trigger notifies.
pub const CHANNEL: &str = "stockmesh_notifications";

/// Events buffered per user before a slow stream is told to resync.
const PER_USER_BUFFER: usize = 64;

/// How often the listener proves its connection alive; a connection that
/// does not answer within [`PROBE_TIMEOUT`] is replaced.
const PROBE_EVERY: Duration = Duration::from_secs(10);
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// What a stream receives.
#[derive(Debug, Clone)]
pub enum LiveEvent {
    Notification(NotificationView),
    /// Announcements may have been missed: fetch the list again.
    Resync,
}

/// The live stream metrics.
#[derive(Clone, Default)]
pub struct LiveMetrics {
    pub streams: Gauge,
    pub delivered: Counter,
    pub listener_up: Gauge,
    pub listener_sessions: Counter,
    pub resyncs: Counter,
}

impl LiveMetrics {
    pub fn register(metrics: &Metrics) -> Self {
        let this = Self::default();
        metrics.register(
            "notification_live_streams",
            "Server-sent event streams open on this replica",
            this.streams.clone(),
        );
        metrics.register(
            "notification_live_delivered",
            "Notifications handed to open streams on this replica",
            this.delivered.clone(),
        );
        metrics.register(
            "notification_live_listener_up",
            "1 while this replica listens for stored notifications (PostgreSQL LISTEN)",
            this.listener_up.clone(),
        );
        metrics.register(
            "notification_live_listener_sessions",
            "LISTEN connections opened; more than one means reconnects",
            this.listener_sessions.clone(),
        );
        metrics.register(
            "notification_live_resyncs",
            "Times streams were told to fetch the list again (listener reconnected, or a stream fell behind)",
            this.resyncs.clone(),
        );
        this
    }
}

/// Limits on open streams, so that idle connections cannot exhaust a replica.
#[derive(Debug, Clone, Copy)]
pub struct StreamLimits {
    /// `NOTIFICATION_MAX_STREAMS`: open streams per replica.
    pub per_replica: usize,
    /// `NOTIFICATION_MAX_STREAMS_PER_USER`: open streams per user and replica
    /// (a browser holds one per tab).
    pub per_user: usize,
}

impl Default for StreamLimits {
    fn default() -> Self {
        Self {
            per_replica: 10_000,
            per_user: 16,
        }
    }
}

/// Why a stream was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamRefused {
    ReplicaFull,
    UserFull,
}

struct Inner {
    users: Mutex<HashMap<Uuid, broadcast::Sender<LiveEvent>>>,
    open: AtomicUsize,
    limits: StreamLimits,
    metrics: LiveMetrics,
}

/// The streams open on this replica, by user. Cheap to clone.
#[derive(Clone)]
pub struct LiveHub(Arc<Inner>);

/// One open stream's receiver; leaving it closes the stream's slot.
pub struct Subscription {
    pub events: broadcast::Receiver<LiveEvent>,
    hub: LiveHub,
    user: Uuid,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let inner = &self.hub.0;
        inner.open.fetch_sub(1, Ordering::SeqCst);
        inner.metrics.streams.dec();
        if let Ok(mut users) = inner.users.lock() {
            // This receiver is still counted until it is dropped, after this.
            if users
                .get(&self.user)
                .is_some_and(|sender| sender.receiver_count() <= 1)
            {
                users.remove(&self.user);
            }
        }
    }
}

/// An announcement as the trigger writes it.
#[derive(Debug, Deserialize)]
struct Announcement {
    id: Uuid,
    user_id: Uuid,
    order_id: Uuid,
    kind: String,
    message: String,
    created_at: DateTime<Utc>,
    read_at: Option<DateTime<Utc>>,
}

impl LiveHub {
    pub fn new(limits: StreamLimits, metrics: LiveMetrics) -> Self {
        Self(Arc::new(Inner {
            users: Mutex::new(HashMap::new()),
            open: AtomicUsize::new(0),
            limits,
            metrics,
        }))
    }

    /// Opens a stream slot for `user`, within the limits.
    pub fn subscribe(&self, user: Uuid) -> Result<Subscription, StreamRefused> {
        let inner = &self.0;
        let mut users = inner.users.lock().map_err(|_| StreamRefused::ReplicaFull)?;
        if inner.open.load(Ordering::SeqCst) >= inner.limits.per_replica {
            return Err(StreamRefused::ReplicaFull);
        }
        let sender = users
            .entry(user)
            .or_insert_with(|| broadcast::channel(PER_USER_BUFFER).0);
        if sender.receiver_count() >= inner.limits.per_user {
            return Err(StreamRefused::UserFull);
        }
        let events = sender.subscribe();
        inner.open.fetch_add(1, Ordering::SeqCst);
        inner.metrics.streams.inc();
        Ok(Subscription {
            events,
            hub: self.clone(),
            user,
        })
    }

    /// Open streams on this replica.
    pub fn open_streams(&self) -> usize {
        self.0.open.load(Ordering::SeqCst)
    }

    pub fn metrics(&self) -> &LiveMetrics {
        &self.0.metrics
    }

    /// Hands an announcement to the streams of its user, if any are here.
    fn announce(&self, payload: &str) {
        let announcement: Announcement = match serde_json::from_str(payload) {
            Ok(a) => a,
            Err(err) => {
                tracing::warn!(error = %err, "unreadable notification announcement ignored");
                return;
            }
        };
        let Some(kind) = NotificationKind::parse(&announcement.kind) else {
            tracing::warn!(kind = %announcement.kind, "announcement of an unknown kind ignored");
            return;
        };
        let sender = match self.0.users.lock() {
            Ok(users) => users.get(&announcement.user_id).cloned(),
            Err(_) => None,
        };
        let Some(sender) = sender else { return };
        let view = NotificationView {
            id: announcement.id,
            order_id: announcement.order_id,
            kind,
            message: announcement.message,
            created_at: announcement.created_at,
            read_at: announcement.read_at,
        };
        let reached = sender.send(LiveEvent::Notification(view)).unwrap_or(0);
        self.0.metrics.delivered.inc_by(reached as u64);
    }

    /// Tells every open stream to fetch its list again.
    fn resync_all(&self) {
        let senders: Vec<_> = match self.0.users.lock() {
            Ok(users) => users.values().cloned().collect(),
            Err(_) => Vec::new(),
        };
        if senders.is_empty() {
            return;
        }
        self.0.metrics.resyncs.inc();
        for sender in senders {
            let _ = sender.send(LiveEvent::Resync);
        }
    }
}

/// Keeps one `LISTEN` connection to `database_url` for as long as the
/// service runs, handing every announcement to `hub`. A lost or silent
/// connection is replaced with a growing pause (200 ms to 5 s); whenever it
/// starts listening, streams already open are told to resync, since
/// announcements made before are gone for them.
pub async fn run_listener(database_url: String, hub: LiveHub, shutdown: Shutdown) {
    let stopped = shutdown.cancelled();
    tokio::pin!(stopped);
    let mut pause = Duration::from_millis(200);
    let mut first = true;
    loop {
        let session = async {
            let mut listener = tokio::time::timeout(CONNECT_TIMEOUT, async {
                let mut listener = PgListener::connect(&database_url).await?;
                listener.eager_reconnect(false);
                listener.listen(CHANNEL).await?;
                Ok::<_, sqlx::Error>(listener)
            })
            .await
            .map_err(|_| "connecting timed out".to_owned())?
            .map_err(|err| format!("connecting failed: {err}"))?;
            hub.metrics().listener_up.set(1);
            hub.metrics().listener_sessions.inc();
            // Streams opened before this session (the first one too: a
            // stream may open before the replica ever listened) may have
            // missed announcements: they fetch their list again.
            if first {
                tracing::info!("listening for notifications");
            } else {
                tracing::info!("listening for notifications again; open streams resync");
            }
            hub.resync_all();
            first = false;
            pause = Duration::from_millis(200);
            let mut probe = tokio::time::interval(PROBE_EVERY);
            probe.tick().await;
            loop {
                tokio::select! {
                    received = listener.try_recv() => match received {
                        Ok(Some(notification)) => hub.announce(notification.payload()),
                        Ok(None) => return Err("connection lost".to_owned()),
                        Err(err) => return Err(format!("receiving failed: {err}")),
                    },
                    _ = probe.tick() => {
                        let alive = tokio::time::timeout(
                            PROBE_TIMEOUT,
                            sqlx::query("SELECT 1").execute(&mut listener),
                        )
                        .await;
                        match alive {
                            Ok(Ok(_)) => {}
                            Ok(Err(err)) => return Err(format!("probe failed: {err}")),
                            Err(_) => return Err("probe timed out".to_owned()),
                        }
                    }
                }
            }
        };
        let outcome: Result<(), String> = tokio::select! {
            _ = &mut stopped => return,
            outcome = session => outcome,
        };
        hub.metrics().listener_up.set(0);
        if let Err(reason) = outcome {
            tracing::warn!(%reason, retry_in_ms = pause.as_millis() as u64,
                "not listening for notifications; live streams get no events until it reconnects");
        }
        tokio::select! {
            _ = &mut stopped => return,
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(RECONNECT_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub(limits: StreamLimits) -> LiveHub {
        LiveHub::new(limits, LiveMetrics::default())
    }

    fn payload(user: Uuid) -> String {
        serde_json::json!({
            "id": Uuid::now_v7(), "user_id": user, "order_id": Uuid::now_v7(),
            "kind": "order.confirmed", "message": "Your order is confirmed.",
            "created_at": "2026-11-29T21:40:00.123456+00:00", "read_at": null,
        })
        .to_string()
    }

    #[tokio::test]
    async fn an_announcement_reaches_only_its_users_streams() {
        let hub = hub(StreamLimits::default());
        let alice = Uuid::now_v7();
        let bob = Uuid::now_v7();
        let mut a1 = hub.subscribe(alice).expect("slot");
        let mut a2 = hub.subscribe(alice).expect("slot");
        let mut b = hub.subscribe(bob).expect("slot");
        hub.announce(&payload(alice));
        for sub in [&mut a1, &mut a2] {
            match sub.events.try_recv() {
                Ok(LiveEvent::Notification(view)) => {
                    assert_eq!(view.kind, NotificationKind::OrderConfirmed)
                }
                other => panic!("expected a notification, got {other:?}"),
            }
        }
        assert!(b.events.try_recv().is_err(), "bob got alice's notification");
        assert_eq!(hub.metrics().delivered.get(), 2);
    }

    #[tokio::test]
    async fn limits_refuse_streams_and_closing_one_frees_its_slot() {
        let hub = hub(StreamLimits {
            per_replica: 3,
            per_user: 2,
        });
        let alice = Uuid::now_v7();
        let first = hub.subscribe(alice).expect("slot");
        let _second = hub.subscribe(alice).expect("slot");
        assert_eq!(
            hub.subscribe(alice).err(),
            Some(StreamRefused::UserFull),
            "a third stream of one user"
        );
        let _other = hub.subscribe(Uuid::now_v7()).expect("slot");
        assert_eq!(
            hub.subscribe(Uuid::now_v7()).err(),
            Some(StreamRefused::ReplicaFull)
        );
        drop(first);
        assert_eq!(hub.open_streams(), 2);
        assert!(
            hub.subscribe(alice).is_ok(),
            "the closed slot is free again"
        );
    }

    #[tokio::test]
    async fn the_last_stream_of_a_user_removes_the_user() {
        let hub = hub(StreamLimits::default());
        let alice = Uuid::now_v7();
        let sub = hub.subscribe(alice).expect("slot");
        drop(sub);
        assert!(hub.0.users.lock().expect("lock").is_empty());
        assert_eq!(hub.metrics().streams.get(), 0);
    }

    #[tokio::test]
    async fn unreadable_announcements_are_ignored() {
        let hub = hub(StreamLimits::default());
        let alice = Uuid::now_v7();
        let mut sub = hub.subscribe(alice).expect("slot");
        hub.announce("not json");
        hub.announce(&payload(alice).replace("order.confirmed", "order.exploded"));
        assert!(sub.events.try_recv().is_err());
    }
}
