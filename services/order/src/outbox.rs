//! The outbox relay: publishes committed events to RabbitMQ with publisher
//! confirms, and marks a row sent only after the broker confirmed that it
//! **reached a queue**. While the broker is down, blocked or slow it retries
//! with backoff; rows wait in the table, so nothing is lost and order
//! creation never blocks on it.
//!
//! How a batch goes, and why:
//! 1. **Claim** up to [`BATCH`] due rows in one short statement
//!    (`FOR UPDATE SKIP LOCKED` inside an `UPDATE … RETURNING`): their
//!    `available_at` moves a lease into the future, so another replica's
//!    relay skips them. No transaction stays open and no pooled connection
//!    is held while the broker is waited on: a broker that never answers (a
//!    memory alarm blocks publishers with `connection.blocked`) cannot starve
//!    the pool that serves requests.
//! 2. **Publish** them in id order, `mandatory`, then wait for every
//!    confirm; both phases are bounded by `OUTBOX_BROKER_TIMEOUT_MS`, and so
//!    are connecting and opening the channel. A timeout or a broken
//!    connection fails the batch: what was confirmed is marked, the rest is
//!    released at once, the connection is dropped and a new one is opened
//!    after a growing pause.
//! 3. **Mark** the confirmed rows published in one short statement. A
//!    message that reached no queue comes back with its confirm
//!    (`basic.return` then `basic.ack`): RabbitMQ acks what it routed to
//!    nothing, so without `mandatory` an event published before any consumer
//!    declared its queue would be "confirmed" and gone. Such a row (and a
//!    nacked one) is not marked: it stays in the backlog, its next attempt
//!    is pushed back (1 s, doubling up to 30 s), `stockmesh_outbox_unroutable_total`
//!    (or `_nacked_total`) counts it and a warning says so.
//!
//! Consequences:
//! - **At-least-once**: a row confirmed but not marked (crash, database
//!   gone between confirm and mark) or whose lease ran out while its publish
//!   was still under way is published again. Consumers deduplicate by
//!   event id.
//! - **Ordering is not guaranteed**: one relay publishes a batch in id
//!   order, but a row that failed is retried later, after rows behind it;
//!   with several replicas, each claims its own batches and they interleave,
//!   so there is no order across replicas at all. (Holding row locks across
//!   the broker wait, as before, bought no more than that either.)
//!
//! **Handoff**: a new order's event does not wait to be claimed. While
//! the relay is connected and keeps up, the order path takes a slot in
//! the relay's inbox ([`RelayLink::slot`]) *before* it commits, stores the
//! row already leased (`available_at` = now + the lease, as a claim would
//! set it) and, once committed, hands the row over in memory. The relay
//! publishes it with no claim statement and no wait for a poll: one
//! statement and one round trip fewer per batch, and the claim's row
//! rewrite is gone from the WAL. The lease keeps every other relay off
//! the row exactly as a claim does, so nothing changes for them:
//! - the process dies (or stops: a request that commits while the relay
//!   is already gone) before the row is published: the lease runs out and
//!   any relay claims it, at most 2 × `OUTBOX_BROKER_TIMEOUT_MS` + 10 s
//!   later (at-least-once, as for a claimed row);
//! - the order was stored but its answer was lost (the row's id never
//!   came back): the order path makes the row due itself and wakes the
//!   relay;
//! - the relay loses the broker: it stops giving slots, and the rows in
//!   its inbox are released at once (`available_at = now()`), so a
//!   replica that can publish claims them;
//! - the inbox is full (the relay is behind) or the relay is not
//!   connected: no slot, the row is stored due now and the relay is
//!   woken to claim it, as before.
//!
//! Published rows are deleted once older than `OUTBOX_RETENTION_MS` by
//! [`prune`], in small batches; unpublished rows are never deleted.
//!
//! The relay's statements go through their own small pool whose commits do
//! not wait for the WAL flush (`stockmesh_platform::db::unflushed_pool`):
//! a claim lost in a database crash is a lease that never was, a lost mark
//! republishes an event that consumers drop as a duplicate, and a lost
//! prune runs again. The rows themselves were stored durably with their
//! order. So the relay adds no flush of its own to an order's path.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use sqlx::{PgPool, Row};
use stockmesh_platform::Shutdown;
use stockmesh_platform::broker::{self, BrokerConfig};
use stockmesh_platform::error::ErrorChain;
use stockmesh_platform::events::EXCHANGE;
use stockmesh_platform::metrics::Metrics;
use stockmesh_platform::telemetry;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::repository::OutboxRow;

/// Rows claimed and published per batch.
const BATCH: i64 = 100;
/// Events the relay's inbox holds for it, at most: beyond this the relay
/// is behind, and new events are stored due now for a claim instead.
const INBOX: usize = 4 * BATCH as usize;
/// Published rows deleted per statement when pruning.
const PRUNE_BATCH: i64 = 500;
/// First pause before retrying an event that reached no queue (or was
/// nacked); doubles per attempt up to [`REFUSED_RETRY_MAX`].
const REFUSED_RETRY_FIRST: Duration = Duration::from_secs(1);
const REFUSED_RETRY_MAX: Duration = Duration::from_secs(30);
/// First pause after a failure; doubles per failure in a row up to
/// [`RECONNECT_MAX`].
const RECONNECT_FIRST: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// What the relay needs to know.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub broker: BrokerConfig,
    /// `OUTBOX_POLL_MS`: fallback poll period (the relay is also woken on
    /// commit).
    pub poll: Duration,
    /// `OUTBOX_BROKER_TIMEOUT_MS`: bound on opening a channel, on publishing
    /// a batch and on waiting for its confirms.
    pub broker_timeout: Duration,
    /// `OUTBOX_RETENTION_MS`: how long a published row is kept.
    pub retention: Duration,
    /// `OUTBOX_PRUNE_INTERVAL_MS`: how often published rows are pruned.
    pub prune_every: Duration,
}

impl RelayConfig {
    /// How long a claim keeps a row from other relays: both bounded broker
    /// phases of a batch, plus a margin for the database statements. A
    /// relay that dies holding a claim delays those rows by this much.
    pub fn lease(&self) -> Duration {
        self.broker_timeout * 2 + Duration::from_secs(10)
    }
}

/// The order path's line to this process's relay: wakes it after a
/// commit, and hands it new events directly while it is connected (see
/// "Handoff" in the module documentation).
#[derive(Clone)]
pub struct RelayLink {
    wake: Arc<Notify>,
    handed: mpsc::Sender<OutboxRow>,
    connected: Arc<AtomicBool>,
    lease: Duration,
}

/// The relay's end of a [`RelayLink`].
pub struct RelayInbox {
    wake: Arc<Notify>,
    handed: mpsc::Receiver<OutboxRow>,
    connected: Arc<AtomicBool>,
}

/// A place in the relay's inbox for one event, taken before its row is
/// committed; dropping it unused gives the place back.
pub struct HandoffSlot<'a> {
    permit: mpsc::Permit<'a, OutboxRow>,
    /// How long the row must be stored leased for (its `available_at`).
    pub lease: Duration,
}

impl HandoffSlot<'_> {
    /// Hands the committed row to the relay.
    pub fn hand(self, row: OutboxRow) {
        self.permit.send(row);
    }
}

/// A linked pair for one process; rows are stored leased for `lease`.
pub fn link(lease: Duration) -> (RelayLink, RelayInbox) {
    let wake = Arc::new(Notify::new());
    let connected = Arc::new(AtomicBool::new(false));
    let (sender, receiver) = mpsc::channel(INBOX);
    (
        RelayLink {
            wake: wake.clone(),
            handed: sender,
            connected: connected.clone(),
            lease,
        },
        RelayInbox {
            wake,
            handed: receiver,
            connected,
        },
    )
}

impl RelayLink {
    /// Wakes the relay to claim what was committed without a slot.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// A slot for one event, if the relay is connected and has room;
    /// `None`: store the row due now and [`Self::wake`] the relay.
    pub fn slot(&self) -> Option<HandoffSlot<'_>> {
        if !self.connected.load(Ordering::Acquire) {
            return None;
        }
        let permit = self.handed.try_reserve().ok()?;
        Some(HandoffSlot {
            permit,
            lease: self.lease,
        })
    }
}

impl RelayInbox {
    fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Release);
    }

    /// Up to [`BATCH`] rows already waiting, without waiting for more.
    fn take_waiting(&mut self, first: Option<OutboxRow>) -> Vec<OutboxRow> {
        let mut rows: Vec<OutboxRow> = first.into_iter().collect();
        while rows.len() < BATCH as usize {
            match self.handed.try_recv() {
                Ok(row) => rows.push(row),
                Err(_) => break,
            }
        }
        rows
    }
}

#[derive(Clone)]
pub struct RelayMetrics {
    handed: Counter,
    published: Counter,
    failures: Counter,
    unroutable: Counter,
    nacked: Counter,
    pruned: Counter,
}

impl RelayMetrics {
    /// Registers the relay's series, including the backlog gauge (counted at scrape).
    pub fn register(metrics: &Metrics, pool: &PgPool) -> Self {
        let this = Self {
            handed: Counter::default(),
            published: Counter::default(),
            failures: Counter::default(),
            unroutable: Counter::default(),
            nacked: Counter::default(),
            pruned: Counter::default(),
        };
        let backlog: Gauge = Gauge::default();
        metrics.register(
            "outbox_handed_off",
            "Outbox events handed to the relay at their order's commit (published without a claim)",
            this.handed.clone(),
        );
        metrics.register(
            "outbox_published",
            "Outbox events confirmed by the broker as routed to a queue",
            this.published.clone(),
        );
        metrics.register(
            "outbox_publish_failures",
            "Failed outbox batches (broker unreachable, blocked or not answering in time)",
            this.failures.clone(),
        );
        metrics.register(
            "outbox_unroutable",
            "Outbox events the broker returned because no queue is bound for them; kept and retried",
            this.unroutable.clone(),
        );
        metrics.register(
            "outbox_nacked",
            "Outbox events the broker refused (nack); kept and retried",
            this.nacked.clone(),
        );
        metrics.register(
            "outbox_pruned",
            "Published outbox rows deleted after the retention period",
            this.pruned.clone(),
        );
        metrics.register(
            "outbox_backlog",
            "Outbox events not yet confirmed by the broker",
            backlog.clone(),
        );
        let pool = pool.clone();
        metrics.on_scrape(move || {
            let pool = pool.clone();
            let backlog = backlog.clone();
            async move {
                if let Ok(n) = sqlx::query_scalar::<_, i64>(
                    "SELECT count(*) FROM outbox WHERE published_at IS NULL",
                )
                .fetch_one(&pool)
                .await
                {
                    backlog.set(n);
                }
            }
        });
        this
    }
}

/// Why a batch failed (the connection is then dropped and reopened).
#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error("database")]
    Database(#[from] sqlx::Error),
    #[error("broker")]
    Broker(#[from] lapin::Error),
    #[error("{0} got no answer from the broker within {1} ms")]
    TimedOut(&'static str, u64),
    #[error("the broker blocks publishing (a memory or disk alarm)")]
    Blocked,
    #[error("publisher confirms are not enabled on the channel")]
    NoConfirms,
}

/// `fut`, given until `deadline`.
async fn until<T>(
    what: &'static str,
    deadline: Instant,
    limit: Duration,
    fut: impl Future<Output = Result<T, lapin::Error>>,
) -> Result<T, RelayError> {
    match tokio::time::timeout_at(deadline, fut).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(RelayError::TimedOut(what, limit.as_millis() as u64)),
    }
}

/// What one batch did.
#[derive(Debug, Default)]
struct Batch {
    claimed: usize,
}

/// The pause after `failures` failures in a row: 100 ms doubling to 5 s.
fn pause_after(failures: u32) -> Duration {
    RECONNECT_FIRST
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(RECONNECT_MAX)
}

/// What the relay does next.
enum Work {
    /// Claim due rows from the table (after a wake-up, the poll period or
    /// a full batch).
    Claim,
    /// Publish rows handed over at their commit.
    Handed(Vec<OutboxRow>),
}

/// Runs until shutdown: connect, publish everything due and every row
/// handed over, wait for the next row, a wake-up or the poll period,
/// repeat. A broker failure drops the connection and opens a new one
/// after a growing pause; a database failure keeps the connection and
/// waits the same way.
pub async fn run(
    pool: PgPool,
    config: RelayConfig,
    metrics: RelayMetrics,
    mut inbox: RelayInbox,
    shutdown: Shutdown,
) {
    let mut failures: u32 = 0;
    while !shutdown.is_triggered() {
        let opened = tokio::select! {
            opened = open_channel(&config) => opened,
            _ = shutdown.cancelled() => return,
        };
        let (connection, channel) = match opened {
            Ok(opened) => opened,
            Err(err) => {
                failures = failures.saturating_add(1);
                let pause = pause_after(failures);
                tracing::warn!(error = %ErrorChain(&err), retry_in_ms = pause.as_millis() as u64, "outbox relay cannot reach the broker");
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = shutdown.cancelled() => return,
                }
                continue;
            }
        };
        tracing::info!("outbox relay connected");
        inbox.set_connected(true);
        // Claim first: whatever was committed while disconnected.
        let mut work = Work::Claim;
        // The poll is due on time however busy the handoff keeps the relay.
        let mut next_poll = Instant::now();
        loop {
            let result = match work {
                Work::Claim => {
                    next_poll = Instant::now() + config.poll;
                    publish_batch(&pool, &connection, &channel, &config, &metrics).await
                }
                Work::Handed(rows) => {
                    metrics.handed.inc_by(rows.len() as u64);
                    publish_rows(&pool, &connection, &channel, &config, &metrics, rows).await
                }
            };
            match result {
                Ok(batch) => {
                    failures = 0;
                    if batch.claimed as i64 == BATCH {
                        work = Work::Claim;
                        continue;
                    }
                    work = tokio::select! {
                        Some(row) = inbox.handed.recv() => Work::Handed(inbox.take_waiting(Some(row))),
                        _ = inbox.wake.notified() => Work::Claim,
                        _ = tokio::time::sleep_until(next_poll) => Work::Claim,
                        _ = shutdown.cancelled() => {
                            // Publish what is committed before leaving, if
                            // the broker lets us (bounded like any batch);
                            // what is left in the inbox is released.
                            inbox.set_connected(false);
                            let handed = inbox.take_waiting(None);
                            if !handed.is_empty() {
                                let _ = publish_rows(&pool, &connection, &channel, &config, &metrics, handed).await;
                            }
                            let _ = publish_batch(&pool, &connection, &channel, &config, &metrics).await;
                            release_inbox(&pool, &mut inbox).await;
                            close(&connection, &channel, config.broker_timeout).await;
                            return;
                        }
                    };
                }
                Err(err) => {
                    metrics.failures.inc();
                    failures = failures.saturating_add(1);
                    let pause = pause_after(failures);
                    let database = matches!(err, RelayError::Database(_));
                    if database {
                        tracing::warn!(error = %ErrorChain(&err), retry_in_ms = pause.as_millis() as u64, "outbox relay cannot use its database; retrying");
                    } else {
                        tracing::warn!(error = %ErrorChain(&err), retry_in_ms = pause.as_millis() as u64, "outbox publish failed; reconnecting");
                        // No more handoffs until connected again; what
                        // waits in the inbox is due now, for any relay.
                        inbox.set_connected(false);
                        release_inbox(&pool, &mut inbox).await;
                        close(&connection, &channel, config.broker_timeout).await;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = shutdown.cancelled() => {
                            inbox.set_connected(false);
                            release_inbox(&pool, &mut inbox).await;
                            if database {
                                close(&connection, &channel, config.broker_timeout).await;
                            }
                            return;
                        }
                    }
                    if !database {
                        break;
                    }
                    work = Work::Claim;
                }
            }
        }
    }
}

/// Makes the rows waiting in the inbox due now (their lease is given up),
/// so that a relay that can publish claims them. If the database refuses,
/// their leases run out instead.
async fn release_inbox(pool: &PgPool, inbox: &mut RelayInbox) {
    loop {
        let rows = inbox.take_waiting(None);
        if rows.is_empty() {
            return;
        }
        let ids: Vec<i64> = rows.iter().map(|row| row.id).collect();
        let _ = release(pool, &ids).await;
    }
}

/// Gives up the lease of unpublished rows `ids`.
async fn release(pool: &PgPool, ids: &[i64]) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE outbox SET available_at = now() WHERE id = ANY($1) AND published_at IS NULL",
    )
    .bind(ids)
    .execute(pool)
    .await
    .map(|_| ())
}

/// Closes a relay connection, each step bounded.
async fn close(connection: &Connection, channel: &Channel, limit: Duration) {
    let _ = tokio::time::timeout(limit, channel.close(200, "relay done".into())).await;
    let _ = tokio::time::timeout(limit, connection.close(200, "relay done".into())).await;
}

async fn open_channel(config: &RelayConfig) -> Result<(Connection, Channel), RelayError> {
    // `broker::connect` bounds itself (connect timeout).
    let connection = broker::connect(&config.broker, "order-relay").await?;
    let limit = config.broker_timeout;
    let deadline = Instant::now() + limit;
    let opened = async {
        let channel = until(
            "opening a channel",
            deadline,
            limit,
            connection.create_channel(),
        )
        .await?;
        until(
            "enabling confirms",
            deadline,
            limit,
            channel.confirm_select(ConfirmSelectOptions::default()),
        )
        .await?;
        until(
            "declaring the exchanges",
            deadline,
            limit,
            broker::declare_exchanges(&channel),
        )
        .await?;
        Ok::<_, RelayError>(channel)
    }
    .await;
    match opened {
        Ok(channel) => Ok((connection, channel)),
        Err(err) => {
            let _ = tokio::time::timeout(limit, connection.close(200, "setup failed".into())).await;
            Err(err)
        }
    }
}

/// Claims due rows for the lease; see the module documentation.
async fn claim(pool: &PgPool, lease: Duration) -> Result<Vec<OutboxRow>, sqlx::Error> {
    let rows = sqlx::query(
        "UPDATE outbox o SET available_at = now() + make_interval(secs => $2) \
         FROM (SELECT id FROM outbox WHERE published_at IS NULL AND available_at <= now() \
               ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED) due \
         WHERE o.id = due.id \
         RETURNING o.id, o.event_id, o.routing_key, o.payload, o.trace_context",
    )
    .bind(BATCH)
    .bind(lease.as_secs_f64())
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| -> Result<OutboxRow, sqlx::Error> {
            let context: serde_json::Value = row.try_get("trace_context")?;
            Ok(OutboxRow {
                id: row.try_get("id")?,
                event_id: row.try_get("event_id")?,
                routing_key: row.try_get("routing_key")?,
                payload: row.try_get("payload")?,
                trace_context: serde_json::from_value::<HashMap<String, String>>(context)
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// Claims, publishes and marks up to `BATCH` due rows.
async fn publish_batch(
    pool: &PgPool,
    connection: &Connection,
    channel: &Channel,
    config: &RelayConfig,
    metrics: &RelayMetrics,
) -> Result<Batch, RelayError> {
    if connection.status().blocked() {
        return Err(RelayError::Blocked);
    }
    let rows = claim(pool, config.lease()).await?;
    let claimed = rows.len();
    publish_rows(pool, connection, channel, config, metrics, rows).await?;
    Ok(Batch { claimed })
}

/// Publishes and marks rows this relay holds the lease of (claimed, or
/// handed over at their commit).
async fn publish_rows(
    pool: &PgPool,
    connection: &Connection,
    channel: &Channel,
    config: &RelayConfig,
    metrics: &RelayMetrics,
    mut rows: Vec<OutboxRow>,
) -> Result<Batch, RelayError> {
    if rows.is_empty() {
        return Ok(Batch::default());
    }
    if connection.status().blocked() {
        let ids: Vec<i64> = rows.iter().map(|row| row.id).collect();
        let _ = release(pool, &ids).await;
        return Err(RelayError::Blocked);
    }
    rows.sort_by_key(|row| row.id);
    let mut confirmed = Vec::with_capacity(rows.len());
    let mut refused: Vec<&OutboxRow> = Vec::new();
    let outcome = publish_and_confirm(
        channel,
        config,
        metrics,
        &rows,
        &mut confirmed,
        &mut refused,
    )
    .await;

    // Whatever happened, record what the broker said: confirmed rows are
    // marked, refused ones pushed back, and (on failure) the rest released
    // for the next attempt at once. Each is one short statement.
    if !confirmed.is_empty() {
        sqlx::query("UPDATE outbox SET published_at = now(), last_error = NULL WHERE id = ANY($1)")
            .bind(&confirmed)
            .execute(pool)
            .await?;
        metrics.published.inc_by(confirmed.len() as u64);
    }
    if !refused.is_empty() {
        let ids: Vec<i64> = refused.iter().map(|row| row.id).collect();
        sqlx::query(
            "UPDATE outbox SET attempts = attempts + 1, last_error = 'unroutable or nacked', \
             available_at = now() + make_interval(secs => least($2 * power(2, least(attempts, 16)), $3)) \
             WHERE id = ANY($1)",
        )
        .bind(&ids)
        .bind(REFUSED_RETRY_FIRST.as_secs_f64())
        .bind(REFUSED_RETRY_MAX.as_secs_f64())
        .execute(pool)
        .await?;
        let keys: BTreeSet<&str> = refused
            .iter()
            .map(|row| row.routing_key.as_str())
            .take(5)
            .collect();
        tracing::warn!(
            events = refused.len(),
            routing_keys = ?keys,
            first_event_id = %refused[0].event_id,
            "events reached no queue (is the consumer's queue declared and bound?) or were refused; kept in the outbox and retried with backoff"
        );
    }
    if outcome.is_err() {
        let done: BTreeSet<i64> = confirmed
            .iter()
            .copied()
            .chain(refused.iter().map(|row| row.id))
            .collect();
        let pending: Vec<i64> = rows
            .iter()
            .map(|row| row.id)
            .filter(|id| !done.contains(id))
            .collect();
        if !pending.is_empty() {
            // If this fails too, the lease runs out and the rows come back anyway.
            let _ = release(pool, &pending).await;
        }
    }
    outcome.map(|()| Batch::default())
}

/// Publishes `rows` in order, then waits for their confirms; each phase is
/// bounded by `broker_timeout`. Sorts rows into `confirmed` (ids) and
/// `refused` as the confirms arrive.
async fn publish_and_confirm<'a>(
    channel: &Channel,
    config: &RelayConfig,
    metrics: &RelayMetrics,
    rows: &'a [OutboxRow],
    confirmed: &mut Vec<i64>,
    refused: &mut Vec<&'a OutboxRow>,
) -> Result<(), RelayError> {
    let limit = config.broker_timeout;
    let deadline = Instant::now() + limit;
    let mut confirms = Vec::with_capacity(rows.len());
    for row in rows {
        let span = tracing::info_span!(
            "publish",
            otel.name = format!("publish {EXCHANGE}"),
            otel.kind = "producer",
            messaging.system = "rabbitmq",
            messaging.operation.type = "publish",
            messaging.destination.name = EXCHANGE,
            messaging.rabbitmq.destination.routing_key = %row.routing_key,
            messaging.message.id = %row.event_id,
            otel.status_code = tracing::field::Empty,
            error.type = tracing::field::Empty,
        );
        let _ = span.set_parent(broker::context_from_map(&row.trace_context));
        let published = until(
            "publishing",
            deadline,
            limit,
            publish_one(channel, row).instrument(span.clone()),
        )
        .await;
        match published {
            Ok(confirm) => confirms.push((row, confirm, span)),
            Err(err) => {
                telemetry::record_error(&span, "publish_failed", &err.to_string());
                return Err(err);
            }
        }
    }
    let deadline = Instant::now() + limit;
    for (row, confirm, span) in confirms {
        let confirmation = match until(
            "the publisher confirm",
            deadline,
            limit,
            confirm.instrument(span.clone()),
        )
        .await
        {
            Ok(confirmation) => confirmation,
            Err(err) => {
                telemetry::record_error(&span, "confirm_failed", &err.to_string());
                return Err(err);
            }
        };
        match confirmation {
            Confirmation::Ack(None) => confirmed.push(row.id),
            Confirmation::Ack(Some(_)) => {
                telemetry::record_error(
                    &span,
                    "unroutable",
                    "no queue is bound for this routing key",
                );
                metrics.unroutable.inc();
                refused.push(row);
            }
            Confirmation::Nack(_) => {
                telemetry::record_error(&span, "nack", "the broker refused the message");
                metrics.nacked.inc();
                refused.push(row);
            }
            // Confirms are always selected on the relay's channel.
            Confirmation::NotRequested => return Err(RelayError::NoConfirms),
        }
    }
    Ok(())
}

async fn publish_one(
    channel: &Channel,
    row: &OutboxRow,
) -> Result<lapin::PublisherConfirm, lapin::Error> {
    let mut headers = FieldTable::default();
    broker::inject_context(&tracing::Span::current().context(), &mut headers);
    let payload = serde_json::to_vec(&row.payload).unwrap_or_default();
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(ShortString::from("application/json"))
        .with_message_id(ShortString::from(row.event_id.to_string()))
        .with_type(ShortString::from(row.routing_key.as_str()))
        .with_headers(headers);
    channel
        .basic_publish(
            EXCHANGE.into(),
            row.routing_key.as_str().into(),
            // An event that reaches no queue must come back, not vanish.
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            &payload,
            properties,
        )
        .await
}

/// Deletes published rows older than the retention, every `prune_every`,
/// [`PRUNE_BATCH`] rows per statement (short statements, short locks, no
/// long transaction on a busy table). Runs until shutdown.
pub async fn prune(pool: PgPool, config: RelayConfig, metrics: RelayMetrics, shutdown: Shutdown) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(config.prune_every) => {}
            _ = shutdown.cancelled() => return,
        }
        loop {
            let deleted = sqlx::query(
                "DELETE FROM outbox WHERE id IN ( \
                   SELECT id FROM outbox \
                   WHERE published_at IS NOT NULL AND published_at < now() - make_interval(secs => $1) \
                   ORDER BY published_at LIMIT $2)",
            )
            .bind(config.retention.as_secs_f64())
            .bind(PRUNE_BATCH)
            .execute(&pool)
            .await;
            match deleted {
                Ok(done) => {
                    metrics.pruned.inc_by(done.rows_affected());
                    if (done.rows_affected() as i64) < PRUNE_BATCH || shutdown.is_triggered() {
                        break;
                    }
                    // Let other work at the table between batches.
                    tokio::task::yield_now().await;
                }
                Err(err) => {
                    tracing::debug!(error = %ErrorChain(&err), "outbox pruning will retry");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pause_grows_and_is_capped() {
        assert_eq!(pause_after(1), Duration::from_millis(100));
        assert_eq!(pause_after(2), Duration::from_millis(200));
        assert_eq!(pause_after(4), Duration::from_millis(800));
        assert_eq!(pause_after(7), RECONNECT_MAX);
        assert_eq!(pause_after(u32::MAX), RECONNECT_MAX);
    }

    #[test]
    fn a_claim_outlasts_both_broker_phases() {
        let config = RelayConfig {
            broker: BrokerConfig { url: String::new() },
            poll: Duration::from_millis(500),
            broker_timeout: Duration::from_secs(5),
            retention: Duration::from_secs(3600),
            prune_every: Duration::from_secs(60),
        };
        assert!(config.lease() > config.broker_timeout * 2);
    }
}
