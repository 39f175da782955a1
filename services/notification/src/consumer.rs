//! The RabbitMQ consumer: order events in, notifications stored.
//!
//! Policy for each delivery, decided once it has been read:
//! - stored (or already stored: a redelivery) → `ack`, only after the row
//!   is committed;
//! - unreadable (malformed JSON, unknown type or version) or meaningless
//!   (no owner, a non-positive quantity) → `reject` without requeue: the
//!   queue dead-letters it to `<queue>.dead` at once, a warning is logged;
//! - the handler failed (database down) → wait `retry_delay`, then `nack`
//!   with requeue: the quorum queue counts deliveries and dead-letters the
//!   message after `x-delivery-limit`, so a poison message never loops.
//!
//! Up to `concurrency` deliveries are handled at once, each with its own
//! transaction and acknowledgement (acks may go out of order; events carry
//! no ordering promise and are deduplicated by id).
//!
//! A session is connect → declare → consume; when it ends (broker restart,
//! connection lost, consumer cancelled) the loop starts a new one after a
//! growing pause. On shutdown it stops taking deliveries, finishes and acks
//! the ones in hand, cancels the consumer and closes channel and connection.
//! Messages prefetched but not started are returned to the queue by the
//! broker when the channel closes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    BasicRejectOptions,
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

use crate::config::ConsumerConfig;
use crate::service::{NotificationService, Recorded};

/// First pause before reconnecting; doubles up to `reconnect_max`.
const INITIAL_BACKOFF: Duration = Duration::from_millis(200);
/// Bound on each step of closing a session.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

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
    pub connected: Gauge,
    pub sessions: Counter,
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
            "Deliveries handed back to the queue (nack with requeue) after a handler failure, by event type",
            this.retried.clone(),
        );
        metrics.register(
            "notification_events_dead_lettered",
            "Deliveries rejected without requeue (dead-lettered at once), by reason",
            this.dead_lettered.clone(),
        );
        metrics.register(
            "notification_consumer_connected",
            "1 while the consumer is connected and consuming",
            this.connected.clone(),
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
    ) -> Result<Ended, lapin::Error> {
        let connection = tokio::select! {
            connection = broker::connect(&self.config.broker, "notification") => connection?,
            _ = shutdown.cancelled() => return Ok(Ended::Shutdown),
        };
        let setup = tokio::select! {
            setup = self.open(&connection) => setup,
            _ = shutdown.cancelled() => {
                close(None, &connection).await;
                return Ok(Ended::Shutdown);
            }
        };
        let (channel, mut consumer) = match setup {
            Ok(opened) => opened,
            Err(err) => {
                close(None, &connection).await;
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

        let mut in_hand = FuturesUnordered::new();
        let ended = loop {
            tokio::select! {
                // Shutdown first: stop taking new deliveries at once.
                biased;
                _ = shutdown.cancelled() => break Ok(Ended::Shutdown),
                Some(done) = in_hand.next(), if !in_hand.is_empty() => {
                    if let Err(err) = done {
                        break Err(err);
                    }
                }
                next = consumer.next(), if in_hand.len() < self.config.concurrency => match next {
                    Some(Ok(delivery)) => in_hand.push(self.handle(delivery, shutdown)),
                    Some(Err(err)) => break Err(err),
                    None => break Ok(Ended::Cancelled),
                },
            }
        };
        // The messages in hand are finished (and acked) even if shutdown
        // began or the session broke; a failed ack leaves the message to the
        // broker, which redelivers it.
        while let Some(done) = in_hand.next().await {
            if let Err(err) = done {
                tracing::warn!(error = %err, "could not acknowledge a delivery; the broker will redeliver it");
            }
        }
        self.status.set(false);
        self.metrics.connected.set(0);
        if matches!(ended, Ok(Ended::Shutdown)) {
            tracing::info!(queue = %self.config.queue, "stopping the consumer");
            let _ = tokio::time::timeout(
                CLOSE_TIMEOUT,
                channel.basic_cancel(consumer.tag(), BasicCancelOptions::default()),
            )
            .await;
        }
        close(Some(&channel), &connection).await;
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
    /// channel is unusable (the acknowledgement could not be sent).
    async fn handle(&self, delivery: Delivery, shutdown: &Shutdown) -> Result<(), lapin::Error> {
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
        self.process(delivery, shutdown, span.clone())
            .instrument(span)
            .await
    }

    async fn process(
        &self,
        delivery: Delivery,
        shutdown: &Shutdown,
        span: tracing::Span,
    ) -> Result<(), lapin::Error> {
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
                delivery
                    .acker
                    .reject(BasicRejectOptions { requeue: false })
                    .await?;
                return Ok(());
            }
        };
        span.record("messaging.message.id", event.id.to_string());
        span.record("event.type", event.kind.as_str());
        match self.service.record(&event).await {
            Ok(recorded) => {
                let outcome = match recorded {
                    Recorded::Created(_) => "stored",
                    Recorded::Duplicate => "duplicate",
                };
                delivery.acker.ack(BasicAckOptions::default()).await?;
                span.record("outcome", outcome);
                self.metrics
                    .processed
                    .get_or_create(&ProcessedLabels {
                        event_type: event.kind.clone(),
                        outcome,
                    })
                    .inc();
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
                delivery
                    .acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    })
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
                delivery
                    .acker
                    .reject(BasicRejectOptions { requeue: false })
                    .await?;
            }
        }
        Ok(())
    }
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
async fn close(channel: Option<&Channel>, connection: &Connection) {
    if let Some(channel) = channel {
        let _ =
            tokio::time::timeout(CLOSE_TIMEOUT, channel.close(200, "shutting down".into())).await;
    }
    let _ =
        tokio::time::timeout(CLOSE_TIMEOUT, connection.close(200, "shutting down".into())).await;
}
