//! Replaying the dead-letter queue: `notification replay-dead-letters`.
//!
//! Messages land in `<queue>.dead` when they were unreadable, or when the
//! database refused them `NOTIFICATION_DELIVERY_LIMIT` times (a bad
//! migration, a bug). Once the cause is fixed they are replayed: each is
//! taken from the dead-letter queue, published with confirms straight into
//! `<queue>` through the default exchange (so no other queue bound to the
//! events exchange receives a second copy) and only then acknowledged in
//! the dead-letter queue. A crash in between leaves a copy in both, which
//! is harmless: the consumer deduplicates by event id.
//!
//! A run replays at most the number of messages the dead-letter queue held
//! when it started (or `--limit`), so a message that is dead-lettered again
//! at once (still unreadable) cannot keep it busy forever. Every wait on the
//! broker is bounded.

use std::time::Duration;

use lapin::Confirmation;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Connection};
use stockmesh_platform::broker::{self, BrokerConfig};
use stockmesh_platform::config::{ConfigError, EnvReader};

use crate::config::DEFAULT_QUEUE;

/// Bound on each broker operation of a replay.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(10);

/// What `replay-dead-letters` needs: the broker and the queue, nothing else
/// of the service's configuration (it runs as a one-off command, e.g.
/// `kubectl exec deploy/notification -- notification replay-dead-letters`).
#[derive(Debug, Clone)]
pub struct ReplayConfig {
    pub broker: BrokerConfig,
    /// `NOTIFICATION_QUEUE`; dead letters are read from `<queue>.dead`.
    pub queue: String,
    /// `--limit N`: replay at most this many.
    pub limit: Option<u64>,
}

impl ReplayConfig {
    /// Reads `AMQP_URL` and `NOTIFICATION_QUEUE` from `env` and the
    /// options from `args` (the words after the subcommand).
    pub fn read(mut env: EnvReader, args: &[String]) -> Result<Self, ConfigError> {
        let broker = BrokerConfig::read(&mut env);
        let queue = env.with_default("NOTIFICATION_QUEUE", DEFAULT_QUEUE.to_owned());
        let mut limit = None;
        let mut words = args.iter();
        while let Some(word) = words.next() {
            match word.as_str() {
                "--limit" => match words.next().and_then(|n| n.parse::<u64>().ok()) {
                    Some(n) => limit = Some(n),
                    None => env.problem("--limit needs a number"),
                },
                other => env.problem(format!("unknown option {other:?} (only --limit N)")),
            }
        }
        env.finish()?;
        Ok(Self {
            broker,
            queue,
            limit,
        })
    }
}

/// The outcome of one replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replayed {
    /// Messages moved back into the queue.
    pub moved: u64,
    /// Dead letters found when the run started.
    pub found: u64,
}

async fn bounded<T>(
    what: &str,
    fut: impl Future<Output = Result<T, lapin::Error>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(OPERATION_TIMEOUT, fut).await {
        Ok(result) => result.map_err(|err| anyhow::anyhow!("{what}: {err}")),
        Err(_) => anyhow::bail!(
            "{what}: no answer from the broker within {} s",
            OPERATION_TIMEOUT.as_secs()
        ),
    }
}

async fn message_count(channel: &Channel, queue: &str) -> anyhow::Result<u32> {
    let state = bounded(
        &format!("queue {queue:?} (it must exist: start the service once)"),
        channel.queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await?;
    Ok(state.message_count())
}

/// Moves dead letters of `config.queue` back into it; see the module docs.
pub async fn replay_dead_letters(config: &ReplayConfig) -> anyhow::Result<Replayed> {
    let connection = broker::connect(&config.broker, "notification-replay")
        .await
        .map_err(|err| anyhow::anyhow!("connecting to the broker: {err}"))?;
    let result = replay_on(&connection, config).await;
    let _ = tokio::time::timeout(
        OPERATION_TIMEOUT,
        connection.close(200, "replay done".into()),
    )
    .await;
    result
}

async fn replay_on(connection: &Connection, config: &ReplayConfig) -> anyhow::Result<Replayed> {
    let channel = bounded("opening a channel", connection.create_channel()).await?;
    bounded(
        "enabling publisher confirms",
        channel.confirm_select(ConfirmSelectOptions::default()),
    )
    .await?;
    let dead = format!("{}.dead", config.queue);
    let found = u64::from(message_count(&channel, &dead).await?);
    message_count(&channel, &config.queue).await?;
    let todo = config.limit.map_or(found, |limit| limit.min(found));
    let mut moved = 0;
    while moved < todo {
        let Some(message) = bounded(
            "basic.get from the dead-letter queue",
            channel.basic_get(dead.as_str().into(), BasicGetOptions { no_ack: false }),
        )
        .await?
        else {
            break;
        };
        let delivery = message.delivery;
        let mut properties = delivery.properties.clone();
        if let Some(old) = properties.headers().as_ref() {
            // The queue counts deliveries afresh; the old count would only
            // mislead a reader of the message.
            let mut headers = FieldTable::default();
            for (key, value) in old.inner() {
                if key.as_str() != "x-delivery-count" {
                    headers.insert(key.clone(), value.clone());
                }
            }
            properties = properties.with_headers(headers);
        }
        let confirm = bounded(
            "publishing into the queue",
            channel.basic_publish(
                ShortString::from(""),
                config.queue.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &delivery.data,
                properties,
            ),
        )
        .await?;
        let confirmation = bounded("the publisher confirm", confirm).await?;
        match confirmation {
            Confirmation::Ack(None) => {
                bounded(
                    "acknowledging the dead letter",
                    channel.basic_ack(delivery.delivery_tag, BasicAckOptions::default()),
                )
                .await?;
                moved += 1;
            }
            other => {
                // Leave it where it was.
                let _ = bounded(
                    "handing the dead letter back",
                    channel.basic_nack(
                        delivery.delivery_tag,
                        BasicNackOptions {
                            requeue: true,
                            ..Default::default()
                        },
                    ),
                )
                .await;
                anyhow::bail!(
                    "the broker did not take a replayed message into {:?} ({}); {moved} replayed before it",
                    config.queue,
                    if other.is_ack() {
                        "returned as unroutable"
                    } else {
                        "nacked"
                    }
                );
            }
        }
    }
    let _ = tokio::time::timeout(OPERATION_TIMEOUT, channel.close(200, "replay done".into())).await;
    Ok(Replayed { moved, found })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> EnvReader {
        EnvReader::from_map(
            [("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn reads_the_queue_and_the_limit() {
        let config = ReplayConfig::read(env(), &[]).unwrap();
        assert_eq!(config.queue, "notifications");
        assert_eq!(config.limit, None);
        let config = ReplayConfig::read(env(), &["--limit".into(), "7".into()]).unwrap();
        assert_eq!(config.limit, Some(7));
    }

    #[test]
    fn refuses_unknown_options() {
        let err = ReplayConfig::read(env(), &["--all".into(), "--limit".into()]).unwrap_err();
        assert_eq!(err.problems.len(), 2, "{err}");
    }
}
