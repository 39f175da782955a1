//! The RabbitMQ consumer: order events in, notifications stored.
//!
//! Policy for each delivery, decided once it has been read:
//! - stored (or already stored: a redelivery) → `ack`, only after the row
//!   is committed;
//! - unreadable (malformed JSON, unknown type or version) or meaningless
//!   (no owner, a non-positive quantity) → `reject` without requeue: the
//!   queue dead-letters it to `<queue>.dead` at once, a warning is logged;
//! - the database cannot be reached (connection refused or lost, pool
//!   timeout) → the delivery is **held**, not handed back: the handler waits
//!   with a growing pause (`retry_delay` doubling up to `retry_max`) and
//!   stores it once the database answers, and the session takes no new
//!   deliveries meanwhile (consuming is paused). An outage of any length
//!   therefore spends none of the delivery budget and dead-letters nothing;
//! - any other database error (the database answered and refused: a
//!   missing table, a constraint) → wait `retry_delay`, then `nack` with
//!   requeue: the quorum queue counts deliveries and dead-letters the
//!   message after `x-delivery-limit`, so a poison message never loops. The
//!   dead letters can be replayed once the cause is fixed
//!   (`notification replay-dead-letters`, see [`crate::replay`]).
//!
//! Up to `concurrency` deliveries are handled at once (events carry no
//! ordering promise and are deduplicated by id). Their rows are stored
//! together when they arrive together (one statement and one commit for a
//! group, see [`crate::repository::NotificationRepository::insert_if_absent`]);
//! each is acked only after its own row is committed, and the deliveries
//! stored at one moment share one `basic.ack` (`multiple`, see
//! [`crate::acks`]).
//!
//! A session is connect → declare → consume; when it ends (broker restart,
//! connection lost, consumer cancelled) the loop starts a new one after a
//! growing pause. Nothing in a session may wait on the broker without a
//! bound: connecting, every setup step, every ack/nack/reject, cancelling
//! and closing are each limited to `broker_timeout`, heartbeats notice a
//! dead TCP connection, and the session loop checks the connection every
//! second, so it always ends when the broker is gone and a new one starts.
//! Readiness turns false the moment a session breaks.
//!
//! When a session breaks, the deliveries in hand can no longer be
//! acknowledged (the broker redelivers them to the next session; the event
//! id makes that harmless); they get [`BROKEN_DRAIN`] to finish storing,
//! then are dropped. On shutdown the session stops taking deliveries,
//! finishes and acks the ones in hand (a handler waiting for the database
//! gives its delivery back instead), cancels the consumer and closes channel
//! and connection. Messages prefetched but not started are returned to the
//! queue by the broker when the channel closes.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use lapin::Acker;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    BasicRejectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection};
use opentelemetry::trace::TraceContextExt;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use stockmesh_platform::Shutdown;
use stockmesh_platform::broker;
use stockmesh_platform::error::ErrorChain;
use stockmesh_platform::events::{DecodeError, OrderEvent};
use stockmesh_platform::metrics::Metrics;
use stockmesh_platform::telemetry;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::acks::{Ack, AckWindow};
use crate::config::ConsumerConfig;
use crate::service::{NotificationService, Recorded};

/// First pause before reconnecting; doubles up to `reconnect_max`.
const INITIAL_BACKOFF: Duration = Duration::from_millis(200);
/// How long the deliveries in hand may go on after their session broke
/// (they cannot be acknowledged any more; this only lets a store that is
/// under way finish, which saves a duplicate later).
pub const BROKEN_DRAIN: Duration = Duration::from_secs(2);
/// How often the session loop checks that its connection is still up
/// (besides noticing it through the delivery stream).
const LIVENESS_CHECK: Duration = Duration::from_secs(1);
/// How often a session looks at the dead-letter queue's depth.
const DEAD_LETTER_LOOK: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProcessedLabels {
    pub event_type: String,
    /// `stored` or `duplicate`.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventTypeLabels {
    pub event_type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// `malformed`, `unknown_type`, `unsupported_version` or `invalid`.
    pub reason: &'static str,
}

/// The consumer's own metrics.
#[derive(Clone, Default)]
pub struct ConsumerMetrics {
    pub processed: Family<ProcessedLabels, Counter>,
    pub retried: Family<EventTypeLabels, Counter>,
    pub dead_lettered: Family<ReasonLabels, Counter>,
    pub database_waits: Counter,
    pub paused: Gauge,
    pub connected: Gauge,
    pub sessions: Counter,
    /// Messages waiting in `<queue>.dead`, as last seen (-1 before the first look).
    pub dead_letter_depth: Gauge,
}

impl ConsumerMetrics {
    pub fn register(metrics: &Metrics) -> Self {
        let this = Self::default();
        metrics.register(
            "notification_events_processed",
            "Order events handled and acknowledged, by event type and outcome (stored or duplicate)",
            this.processed.clone(),
        );
        metrics.register(
            "notification_events_retried",
            "Deliveries handed back to the queue (nack with requeue, spending one of the delivery limit) after the database refused them, by event type",
            this.retried.clone(),
        );
        metrics.register(
            "notification_events_dead_lettered",
            "Deliveries rejected without requeue (dead-lettered at once), by reason",
            this.dead_lettered.clone(),
        );
        metrics.register(
            "notification_database_waits",
            "Times a delivery found the database unreachable and was held (not requeued) until it answered",
            this.database_waits.clone(),
        );
        metrics.register(
            "notification_consumer_paused",
            "1 while consuming is paused because the database is unreachable",
            this.paused.clone(),
        );
        metrics.register(
            "notification_consumer_connected",
            "1 while the consumer is connected and consuming",
            this.connected.clone(),
        );
        this.dead_letter_depth.set(-1);
        metrics.register(
            "notification_dead_letter_depth",
            "Messages waiting in the dead-letter queue, looked at every 10 s while connected (-1: not known yet); replay them with `notification replay-dead-letters`",
            this.dead_letter_depth.clone(),
        );
        metrics.register(
            "notification_consumer_sessions",
            "Broker sessions started (connect, declare, consume); more than one means reconnects",
            this.sessions.clone(),
        );
        this
    }
}

/// Whether the consumer is currently consuming (the "broker" readiness check).
#[derive(Clone, Default)]
pub struct ConsumerStatus(Arc<AtomicBool>);

impl ConsumerStatus {
    pub fn is_consuming(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    fn set(&self, consuming: bool) {
        self.0.store(consuming, Ordering::SeqCst);
    }

    /// Readiness check.
    pub async fn check(self) -> Result<(), String> {
        if self.is_consuming() {
            Ok(())
        } else {
            Err("not connected to the broker".to_owned())
        }
    }
}

/// Why a session ended without an error.
enum Ended {
    Shutdown,
    /// The broker cancelled the consumer (e.g. the queue was deleted).
    Cancelled,
}

/// Why a session broke.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("broker error")]
    Broker(#[from] lapin::Error),
    /// A broker operation got no answer within `broker_timeout`.
    #[error("{0} got no answer from the broker within {1} ms")]
    TimedOut(&'static str, u64),
    #[error("the broker connection is gone")]
    ConnectionLost,
}

/// `operation` on the broker, bounded by `limit`.
async fn bounded<T>(
    operation: &'static str,
    limit: Duration,
    fut: impl Future<Output = Result<T, lapin::Error>>,
) -> Result<T, SessionError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(SessionError::TimedOut(operation, limit.as_millis() as u64)),
    }
}

/// Aborts a background task when the session that started it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sets `depth` to the number of messages in `dead_queue` every
/// [`DEAD_LETTER_LOOK`], for the dashboards and the console's system page.
async fn watch_dead_letters(probe: Channel, dead_queue: String, depth: Gauge, limit: Duration) {
    let mut every = tokio::time::interval(DEAD_LETTER_LOOK);
    loop {
        every.tick().await;
        let look = probe.queue_declare(
            dead_queue.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        );
        match bounded("dead-letter depth", limit, look).await {
            Ok(queue) => {
                depth.set(i64::from(queue.message_count()));
            }
            Err(err) => {
                tracing::debug!(error = %ErrorChain(&err), "dead-letter depth not known");
                return;
            }
        }
    }
}

/// How many handlers are holding a delivery until the database answers;
/// while any is, the session starts no new deliveries.
#[derive(Default)]
struct DatabaseGate {
    waiting: AtomicUsize,
    paused: Gauge,
}

impl DatabaseGate {
    fn new(paused: Gauge) -> Self {
        Self {
            waiting: AtomicUsize::new(0),
            paused,
        }
    }

    fn is_paused(&self) -> bool {
        self.waiting.load(Ordering::SeqCst) > 0
    }

    fn enter(&self) -> GateGuard<'_> {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        self.paused.set(1);
        GateGuard(self)
    }
}

/// Leaves the gate when dropped, also when its handler is abandoned.
struct GateGuard<'a>(&'a DatabaseGate);

impl Drop for GateGuard<'_> {
    fn drop(&mut self) {
        if self.0.waiting.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.paused.set(0);
        }
    }
}

pub struct Consumer {
    config: ConsumerConfig,
    service: NotificationService,
    metrics: ConsumerMetrics,
    status: ConsumerStatus,
}

impl Consumer {
    pub fn new(
        config: ConsumerConfig,
        service: NotificationService,
        metrics: ConsumerMetrics,
        status: ConsumerStatus,
    ) -> Self {
        Self {
            config,
            service,
            metrics,
            status,
        }
    }

    /// Consumes until shutdown, reconnecting with backoff whenever the
    /// broker is unreachable or the session breaks. Never returns early.
    pub async fn run(self, shutdown: Shutdown) {
        let mut backoff = INITIAL_BACKOFF;
        loop {
            let ended = self.session(&shutdown, &mut backoff).await;
            self.status.set(false);
            self.metrics.connected.set(0);
            match ended {
                Ok(Ended::Shutdown) => break,
                Ok(Ended::Cancelled) => tracing::warn!(
                    queue = %self.config.queue,
                    retry_in_ms = backoff.as_millis() as u64,
                    "the broker cancelled the consumer, starting a new session"
                ),
                Err(err) => tracing::warn!(
                    queue = %self.config.queue,
                    error = %ErrorChain(&err),
                    retry_in_ms = backoff.as_millis() as u64,
                    "broker session failed, reconnecting"
                ),
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.cancelled() => break,
            }
            backoff = (backoff * 2).min(self.config.reconnect_max.max(INITIAL_BACKOFF));
        }
        tracing::info!(queue = %self.config.queue, "consumer stopped");
    }

    /// One connection's life: connect, declare, consume until it breaks or
    /// shutdown begins, then close.
    async fn session(
        &self,
        shutdown: &Shutdown,
        backoff: &mut Duration,
    ) -> Result<Ended, SessionError> {
        let limit = self.config.broker_timeout;
        // `broker::connect` bounds itself (connect timeout).
        let connection = tokio::select! {
            connection = broker::connect(&self.config.broker, "notification") => connection?,
            _ = shutdown.cancelled() => return Ok(Ended::Shutdown),
        };
        let setup = tokio::select! {
            setup = bounded("consumer setup", limit, self.open(&connection)) => setup,
            _ = shutdown.cancelled() => {
                close(None, &connection, limit).await;
                return Ok(Ended::Shutdown);
            }
        };
        let (channel, mut consumer) = match setup {
            Ok(opened) => opened,
            Err(err) => {
                close(None, &connection, limit).await;
                return Err(err);
            }
        };
        self.status.set(true);
        self.metrics.connected.set(1);
        self.metrics.sessions.inc();
        *backoff = INITIAL_BACKOFF;
        tracing::info!(
            queue = %self.config.queue,
            prefetch = self.config.prefetch,
            concurrency = self.config.concurrency,
            delivery_limit = self.config.delivery_limit,
            "consuming order events"
        );

        // The dead-letter depth is looked at on a channel of its own, so a
        // failed look can never close the consuming channel.
        let _depth_probe = match bounded("probe channel", limit, connection.create_channel()).await
        {
            Ok(probe) => Some(AbortOnDrop(tokio::spawn(watch_dead_letters(
                probe,
                format!("{}.dead", self.config.queue),
                self.metrics.dead_letter_depth.clone(),
                limit,
            )))),
            Err(err) => {
                tracing::warn!(error = %ErrorChain(&err), "cannot watch the dead-letter queue's depth this session");
                None
            }
        };
        let gate = DatabaseGate::new(self.metrics.paused.clone());
        // Received but not started: at most `prefetch`, the broker sends no more.
        let mut waiting: VecDeque<Delivery> = VecDeque::new();
        let mut in_hand = FuturesUnordered::new();
        // Stored deliveries behind one still being worked on are acked
        // one by one once half the prefetch waits, so the window never fills.
        let mut acks = AckWindow::new(usize::from(self.config.prefetch / 2));
        let mut liveness = tokio::time::interval(LIVENESS_CHECK);
        let ended = loop {
            while in_hand.len() < self.config.concurrency && !gate.is_paused() {
                match waiting.pop_front() {
                    Some(delivery) => in_hand.push(self.handle(delivery, shutdown, &gate)),
                    None => break,
                }
            }
            tokio::select! {
                // Shutdown first: stop taking new deliveries at once.
                biased;
                _ = shutdown.cancelled() => break Ok(Ended::Shutdown),
                Some(done) = in_hand.next(), if !in_hand.is_empty() => {
                    // Everything finished at this moment (a group's rows
                    // commit together) is acknowledged with one frame.
                    let mut finished = vec![done];
                    while let Some(Some(done)) = in_hand.next().now_or_never() {
                        finished.push(done);
                    }
                    if let Err(err) = settle(finished, &mut acks, limit).await {
                        break Err(err);
                    }
                }
                // Always read the stream, even when every slot is busy or
                // consuming is paused: its end is how a broken session is
                // noticed.
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        acks.received(delivery.delivery_tag);
                        waiting.push_back(delivery);
                    }
                    Some(Err(err)) => break Err(err.into()),
                    None => break Ok(Ended::Cancelled),
                },
                _ = liveness.tick() => {
                    if !connection.status().connected() || !channel.status().connected() {
                        break Err(SessionError::ConnectionLost);
                    }
                }
            }
        };
        // Not consuming any more, whatever happens to the deliveries in hand.
        self.status.set(false);
        self.metrics.connected.set(0);
        if matches!(ended, Ok(Ended::Shutdown)) {
            // Finish (and acknowledge) what is in hand; every step is
            // bounded, and the whole drain by the shutdown grace period.
            let drained = tokio::time::timeout(self.config.shutdown_grace, async {
                while let Some(done) = in_hand.next().await {
                    if let Err(err) = settle(vec![done], &mut acks, limit).await {
                        tracing::warn!(error = %ErrorChain(&err), "could not acknowledge a delivery; the broker will redeliver it");
                    }
                }
            })
            .await;
            if drained.is_err() {
                tracing::warn!(
                    abandoned = in_hand.len(),
                    "deliveries in hand did not finish within the shutdown grace period; the broker will redeliver them"
                );
            }
            tracing::info!(queue = %self.config.queue, "stopping the consumer");
            let _ = tokio::time::timeout(
                limit,
                channel.basic_cancel(consumer.tag(), BasicCancelOptions::default()),
            )
            .await;
        } else {
            // The channel is gone: nothing in hand can be acknowledged. A
            // store under way may finish (one duplicate fewer later); the
            // rest is dropped, the broker redelivers it.
            let drained = tokio::time::timeout(BROKEN_DRAIN, async {
                while let Some(done) = in_hand.next().await {
                    if let Err(err) = done {
                        tracing::debug!(error = %ErrorChain(&err), "delivery not acknowledged; the broker will redeliver it");
                    }
                }
            })
            .await;
            if drained.is_err() {
                tracing::info!(
                    abandoned = in_hand.len(),
                    "deliveries in hand abandoned with their broken session; the broker will redeliver them"
                );
            }
        }
        drop(in_hand);
        drop(waiting);
        close(Some(&channel), &connection, limit).await;
        ended
    }

    async fn open(
        &self,
        connection: &Connection,
    ) -> Result<(Channel, lapin::Consumer), lapin::Error> {
        let channel = connection.create_channel().await?;
        channel
            .basic_qos(self.config.prefetch, BasicQosOptions::default())
            .await?;
        let bindings: Vec<&str> = self.config.bindings.iter().map(String::as_str).collect();
        broker::declare_consumer_queue(
            &channel,
            &self.config.queue,
            &bindings,
            self.config.delivery_limit,
        )
        .await?;
        let consumer = channel
            .basic_consume(
                self.config.queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok((channel, consumer))
    }

    /// One delivery under a `process` consumer span, child of the
    /// publisher's trace context from the AMQP headers. An error means the
    /// channel is unusable (a nack or reject could not be sent).
    async fn handle(
        &self,
        delivery: Delivery,
        shutdown: &Shutdown,
        gate: &DatabaseGate,
    ) -> Result<Handled, SessionError> {
        let span = tracing::info_span!(
            "process",
            otel.name = format!("process {}", self.config.queue),
            otel.kind = "consumer",
            messaging.system = "rabbitmq",
            messaging.operation = "process",
            messaging.operation.type = "process",
            messaging.destination.name = %delivery.exchange,
            messaging.rabbitmq.destination.routing_key = %delivery.routing_key,
            messaging.consumer.group.name = %self.config.queue,
            messaging.message.id = tracing::field::Empty,
            messaging.message.body.size = delivery.data.len(),
            event.type = tracing::field::Empty,
            outcome = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
            error.type = tracing::field::Empty,
        );
        let parent = broker::extract_context(delivery.properties.headers().as_ref());
        if parent.span().span_context().is_valid() {
            // Fails only when the span is disabled; nothing to do then.
            let _ = span.set_parent(parent);
        }
        self.process(delivery, shutdown, gate, span.clone())
            .instrument(span)
            .await
    }

    async fn process(
        &self,
        delivery: Delivery,
        shutdown: &Shutdown,
        gate: &DatabaseGate,
        span: tracing::Span,
    ) -> Result<Handled, SessionError> {
        let limit = self.config.broker_timeout;
        let tag = delivery.delivery_tag;
        let settled = Handled { tag, ack: None };
        let event = match OrderEvent::decode(&delivery.data) {
            Ok(event) => event,
            Err(err) => {
                let reason = match &err {
                    DecodeError::Malformed(_) => "malformed",
                    DecodeError::UnsupportedVersion { .. } => "unsupported_version",
                    DecodeError::UnknownType(_) => "unknown_type",
                };
                tracing::warn!(
                    error = %err,
                    reason,
                    routing_key = %delivery.routing_key,
                    "unreadable message, dead-lettering it"
                );
                span.record("outcome", "dead_lettered");
                telemetry::record_error(&span, reason, &err.to_string());
                self.metrics
                    .dead_lettered
                    .get_or_create(&ReasonLabels { reason })
                    .inc();
                bounded(
                    "basic.reject",
                    limit,
                    delivery.acker.reject(BasicRejectOptions { requeue: false }),
                )
                .await?;
                return Ok(settled);
            }
        };
        span.record("messaging.message.id", event.id.to_string());
        span.record("event.type", event.kind.as_str());
        // Held while the database is unreachable: leaves the gate when
        // the store succeeds or this handler is dropped.
        let mut waiting_for_database = None;
        let mut pause = self.config.retry_delay;
        let outcome = loop {
            match self.service.record(&event).await {
                Err(err) if err.is_unavailable() => {
                    if waiting_for_database.is_none() {
                        tracing::warn!(
                            event_id = %event.id,
                            error = %ErrorChain(&err),
                            "database unreachable; holding the event until it answers (no delivery attempt spent)"
                        );
                        waiting_for_database = Some(gate.enter());
                    }
                    self.metrics.database_waits.inc();
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = shutdown.cancelled() => {
                            // Give it back for the next consumer; a restart
                            // costs one delivery at most.
                            span.record("outcome", "requeued_on_shutdown");
                            bounded(
                                "basic.nack",
                                limit,
                                delivery.acker.nack(BasicNackOptions {
                                    requeue: true,
                                    ..Default::default()
                                }),
                            )
                            .await?;
                            return Ok(settled);
                        }
                    }
                    pause = (pause * 2).min(self.config.retry_max.max(self.config.retry_delay));
                }
                other => break other,
            }
        };
        if waiting_for_database.take().is_some() {
            tracing::info!(event_id = %event.id, "database answered again; event handled");
        }
        match outcome {
            Ok(recorded) => {
                let outcome = match recorded {
                    Recorded::Created(_) => "stored",
                    Recorded::Duplicate => "duplicate",
                };
                span.record("outcome", outcome);
                self.metrics
                    .processed
                    .get_or_create(&ProcessedLabels {
                        event_type: event.kind.clone(),
                        outcome,
                    })
                    .inc();
                // Acknowledged by the session, with the others stored now.
                return Ok(Handled {
                    tag,
                    ack: Some(delivery.acker),
                });
            }
            Err(err) if err.is_transient() => {
                let attempt = delivery_count(&delivery) + 1;
                tracing::warn!(
                    event_id = %event.id,
                    attempt,
                    delivery_limit = self.config.delivery_limit,
                    error = %ErrorChain(&err),
                    "storing the notification failed, handing the event back for a retry"
                );
                span.record("outcome", "retried");
                telemetry::record_error(&span, "handler_failed", &ErrorChain(&err).to_string());
                self.metrics
                    .retried
                    .get_or_create(&EventTypeLabels {
                        event_type: event.kind.clone(),
                    })
                    .inc();
                tokio::select! {
                    _ = tokio::time::sleep(self.config.retry_delay) => {}
                    _ = shutdown.cancelled() => {}
                }
                bounded(
                    "basic.nack",
                    limit,
                    delivery.acker.nack(BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    }),
                )
                .await?;
            }
            Err(err) => {
                tracing::warn!(
                    event_id = %event.id,
                    error = %err,
                    "event cannot become a notification, dead-lettering it"
                );
                span.record("outcome", "dead_lettered");
                telemetry::record_error(&span, "invalid", &err.to_string());
                self.metrics
                    .dead_lettered
                    .get_or_create(&ReasonLabels { reason: "invalid" })
                    .inc();
                bounded(
                    "basic.reject",
                    limit,
                    delivery.acker.reject(BasicRejectOptions { requeue: false }),
                )
                .await?;
            }
        }
        Ok(settled)
    }
}

/// A delivery handled: stored, awaiting its acknowledgement (`ack`), or
/// already settled by its own frame (rejected, handed back).
struct Handled {
    tag: u64,
    ack: Option<Acker>,
}

/// Records what finished and sends the acknowledgements that are due.
async fn settle(
    finished: Vec<Result<Handled, SessionError>>,
    acks: &mut AckWindow<Acker>,
    limit: Duration,
) -> Result<(), SessionError> {
    let mut failed = None;
    for done in finished {
        match done {
            Ok(Handled {
                tag,
                ack: Some(acker),
            }) => acks.stored(tag, acker),
            Ok(Handled { tag, ack: None }) => acks.settled(tag),
            Err(err) => {
                failed.get_or_insert(err);
            }
        }
    }
    if let Some(err) = failed {
        return Err(err);
    }
    for Ack { acker, multiple } in acks.flush() {
        bounded("basic.ack", limit, acker.ack(BasicAckOptions { multiple })).await?;
    }
    Ok(())
}

/// Earlier deliveries of this message, as the quorum queue counts them.
fn delivery_count(delivery: &Delivery) -> i64 {
    let Some(headers) = delivery.properties.headers() else {
        return 0;
    };
    match headers.inner().get("x-delivery-count") {
        Some(AMQPValue::LongLongInt(n)) => *n,
        Some(AMQPValue::LongInt(n)) => i64::from(*n),
        Some(AMQPValue::LongUInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortUInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortShortInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortShortUInt(n)) => i64::from(*n),
        _ => 0,
    }
}

/// Closes what a session opened, each step bounded (a dead connection
/// fails fast anyway).
async fn close(channel: Option<&Channel>, connection: &Connection, limit: Duration) {
    if let Some(channel) = channel {
        let _ = tokio::time::timeout(limit, channel.close(200, "shutting down".into())).await;
    }
    let _ = tokio::time::timeout(limit, connection.close(200, "shutting down".into())).await;
}
