//! The outbox relay: publishes committed events to RabbitMQ, in id order,
//! with publisher confirms, and marks a row sent only after the broker
//! confirmed it. While the broker is down it retries with backoff; rows wait
//! in the table, so nothing is lost and order creation never blocks on it.
//! A row published but not marked (crash between confirm and update) is
//! published again: delivery is at-least-once and consumers deduplicate by
//! event id.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use sqlx::{PgPool, Row};
use stockmesh_platform::Shutdown;
use stockmesh_platform::broker::{self, BrokerConfig};
use stockmesh_platform::events::EXCHANGE;
use stockmesh_platform::metrics::Metrics;
use stockmesh_platform::telemetry;
use tokio::sync::Notify;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::repository::OutboxRow;

/// Rows published per transaction.
const BATCH: i64 = 100;

#[derive(Clone)]
pub struct RelayMetrics {
    published: Counter,
    failures: Counter,
}

impl RelayMetrics {
    /// Registers the relay's series, including the backlog gauge (counted at scrape).
    pub fn register(metrics: &Metrics, pool: &PgPool) -> Self {
        let this = Self {
            published: Counter::default(),
            failures: Counter::default(),
        };
        let backlog: Gauge = Gauge::default();
        metrics.register(
            "outbox_published",
            "Outbox events confirmed by the broker",
            this.published.clone(),
        );
        metrics.register(
            "outbox_publish_failures",
            "Failed outbox publish attempts",
            this.failures.clone(),
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

/// Runs until shutdown: connect, publish everything pending, wait for a
/// wake-up or the poll period, repeat; reconnect with backoff on any error.
pub async fn run(
    pool: PgPool,
    broker_config: BrokerConfig,
    metrics: RelayMetrics,
    wake: Arc<Notify>,
    poll: Duration,
    shutdown: Shutdown,
) {
    let mut backoff = Duration::from_millis(100);
    while !shutdown.is_triggered() {
        let (connection, channel) = match open_channel(&broker_config).await {
            Ok(opened) => {
                backoff = Duration::from_millis(100);
                opened
            }
            Err(err) => {
                tracing::warn!(error = %err, retry_in_ms = backoff.as_millis() as u64, "outbox relay cannot reach the broker");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.cancelled() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        tracing::info!("outbox relay connected");
        loop {
            match publish_batch(&pool, &channel, &metrics).await {
                Ok(n) if n as i64 == BATCH => continue,
                Ok(_) => {
                    tokio::select! {
                        _ = wake.notified() => {}
                        _ = tokio::time::sleep(poll) => {}
                        _ = shutdown.cancelled() => {
                            // Drain what is committed before leaving, if we can.
                            let _ = publish_batch(&pool, &channel, &metrics).await;
                            let _ = channel.close(200, "shutdown".into()).await;
                            let _ = connection.close(200, "shutdown".into()).await;
                            return;
                        }
                    }
                }
                Err(err) => {
                    metrics.failures.inc();
                    tracing::warn!(error = %err, "outbox publish failed; reconnecting");
                    let _ = channel.close(200, "reconnecting".into()).await;
                    let _ = connection.close(200, "reconnecting".into()).await;
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.cancelled() => return,
                    }
                    break;
                }
            }
        }
    }
}

async fn open_channel(config: &BrokerConfig) -> Result<(lapin::Connection, Channel), lapin::Error> {
    let connection = broker::connect(config, "order-relay").await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    broker::declare_exchanges(&channel).await?;
    Ok((connection, channel))
}

/// Publishes up to `BATCH` pending rows; returns how many were confirmed.
async fn publish_batch(
    pool: &PgPool,
    channel: &Channel,
    metrics: &RelayMetrics,
) -> anyhow::Result<usize> {
    let mut tx = pool.begin().await?;
    let rows = sqlx::query(
        "SELECT id, event_id, routing_key, payload, trace_context FROM outbox \
         WHERE published_at IS NULL ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(BATCH)
    .fetch_all(&mut *tx)
    .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let rows: Vec<OutboxRow> = rows
        .iter()
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
        .collect::<Result<_, _>>()?;

    // Publish all, then wait for every confirm (pipelined, in order).
    let mut confirms = Vec::with_capacity(rows.len());
    for row in &rows {
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
        let confirm = match publish_one(channel, row).instrument(span.clone()).await {
            Ok(confirm) => confirm,
            Err(err) => {
                telemetry::record_error(&span, "publish_failed", &err.to_string());
                return Err(err.into());
            }
        };
        confirms.push((row.id, confirm, span));
    }
    let mut ids = Vec::with_capacity(confirms.len());
    for (id, confirm, span) in confirms {
        let confirmation = match confirm.instrument(span.clone()).await {
            Ok(confirmation) => confirmation,
            Err(err) => {
                telemetry::record_error(&span, "confirm_failed", &err.to_string());
                return Err(err.into());
            }
        };
        if !confirmation.is_ack() {
            let message = format!("broker refused outbox event {id}");
            telemetry::record_error(&span, "nack", &message);
            anyhow::bail!(message);
        }
        ids.push(id);
    }
    sqlx::query("UPDATE outbox SET published_at = now() WHERE id = ANY($1)")
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    metrics.published.inc_by(ids.len() as u64);
    Ok(ids.len())
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
            BasicPublishOptions::default(),
            &payload,
            properties,
        )
        .await
}
