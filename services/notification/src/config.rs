//! Notification service configuration, read from the environment at start-up.

use std::time::Duration;

use stockmesh_platform::auth::AuthConfig;
use stockmesh_platform::broker::BrokerConfig;
use stockmesh_platform::config::{CommonConfig, ConfigError, DatabaseConfig, EnvReader};

use crate::live::StreamLimits;

/// Local default port (ARCHITECTURE.md, "Running without Kubernetes").
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8085";
/// The queue the service consumes (its dead letters go to `<queue>.dead`).
pub const DEFAULT_QUEUE: &str = "notifications";
/// Routing keys bound to the events exchange.
pub const DEFAULT_BINDINGS: &str = "order.*";

/// How the consumer reads the queue.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub broker: BrokerConfig,
    /// `NOTIFICATION_QUEUE`: a durable quorum queue, declared at start-up.
    pub queue: String,
    /// `NOTIFICATION_BINDINGS`: comma-separated routing keys on `stockmesh.events`.
    pub bindings: Vec<String>,
    /// `NOTIFICATION_DELIVERY_LIMIT`: deliveries of one message before it
    /// is dead-lettered (the quorum queue's `x-delivery-limit`).
    pub delivery_limit: i64,
    /// `NOTIFICATION_PREFETCH`: unacknowledged messages held at once.
    pub prefetch: u16,
    /// `NOTIFICATION_CONCURRENCY`: deliveries handled at once (each its own
    /// transaction and acknowledgement); at most `prefetch`.
    pub concurrency: usize,
    /// `NOTIFICATION_RETRY_DELAY_MS`: pause before handing back a message
    /// the database refused (so the delivery limit is not burnt at once),
    /// and the first pause while waiting for an unreachable database.
    pub retry_delay: Duration,
    /// `NOTIFICATION_RETRY_MAX_MS`: ceiling of the growing pause between
    /// attempts while the database is unreachable.
    pub retry_max: Duration,
    /// `NOTIFICATION_BROKER_TIMEOUT_MS`: bound on every single wait on the
    /// broker (session setup, ack/nack/reject, cancel, close); a broker that
    /// does not answer in time ends the session and a new one starts.
    pub broker_timeout: Duration,
    /// The service's `SHUTDOWN_GRACE_MS`: bound on finishing the deliveries
    /// in hand at shutdown.
    pub shutdown_grace: Duration,
    /// `NOTIFICATION_RECONNECT_MAX_MS`: ceiling of the reconnect backoff.
    pub reconnect_max: Duration,
}

#[derive(Debug, Clone)]
pub struct NotificationConfig {
    pub common: CommonConfig,
    pub database: DatabaseConfig,
    pub auth: AuthConfig,
    pub consumer: ConsumerConfig,
    /// `NOTIFICATION_MAX_STREAMS` and `NOTIFICATION_MAX_STREAMS_PER_USER`.
    pub streams: StreamLimits,
}

impl NotificationConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::read(EnvReader::from_env())
    }

    pub fn read(mut env: EnvReader) -> Result<Self, ConfigError> {
        let default_http = DEFAULT_HTTP_ADDR.parse().expect("valid default address");
        let common = CommonConfig::read(&mut env, "notification", default_http);
        let database = DatabaseConfig::read(&mut env);
        let auth = AuthConfig::read(&mut env);
        let mut consumer = read_consumer(&mut env);
        consumer.shutdown_grace = common.shutdown_grace;
        let defaults = StreamLimits::default();
        let streams = StreamLimits {
            per_replica: env.with_default("NOTIFICATION_MAX_STREAMS", defaults.per_replica),
            per_user: env.with_default("NOTIFICATION_MAX_STREAMS_PER_USER", defaults.per_user),
        };
        if streams.per_replica == 0 || streams.per_user == 0 {
            env.problem(
                "NOTIFICATION_MAX_STREAMS and NOTIFICATION_MAX_STREAMS_PER_USER must be at least 1",
            );
        }
        env.finish()?;
        Ok(Self {
            common,
            database,
            auth,
            consumer,
            streams,
        })
    }
}

fn read_consumer(env: &mut EnvReader) -> ConsumerConfig {
    let broker = BrokerConfig::read(env);
    let queue = env.with_default("NOTIFICATION_QUEUE", DEFAULT_QUEUE.to_owned());
    // `<queue>.dead` must still fit an AMQP short string.
    if queue.len() > 200 {
        env.problem("NOTIFICATION_QUEUE must be at most 200 bytes");
    }
    let bindings: Vec<String> = env
        .with_default("NOTIFICATION_BINDINGS", DEFAULT_BINDINGS.to_owned())
        .split(',')
        .map(|key| key.trim().to_owned())
        .filter(|key| !key.is_empty())
        .collect();
    if bindings.is_empty() || bindings.iter().any(|key| key.len() > 255) {
        env.problem("NOTIFICATION_BINDINGS must list routing keys of at most 255 bytes");
    }
    let delivery_limit = env.with_default("NOTIFICATION_DELIVERY_LIMIT", 5i64);
    if delivery_limit < 1 {
        env.problem("NOTIFICATION_DELIVERY_LIMIT must be at least 1");
    }
    let prefetch = env.with_default("NOTIFICATION_PREFETCH", 128u16);
    if prefetch == 0 {
        env.problem("NOTIFICATION_PREFETCH must be at least 1");
    }
    let concurrency = env.with_default("NOTIFICATION_CONCURRENCY", 64usize);
    if concurrency == 0 {
        env.problem("NOTIFICATION_CONCURRENCY must be at least 1");
    }
    let broker_timeout = env.millis("NOTIFICATION_BROKER_TIMEOUT_MS", Duration::from_secs(5));
    if broker_timeout.is_zero() {
        env.problem("NOTIFICATION_BROKER_TIMEOUT_MS must be at least 1");
    }
    ConsumerConfig {
        broker,
        concurrency: concurrency.clamp(1, usize::from(prefetch.max(1))),
        queue,
        bindings,
        delivery_limit: delivery_limit.max(1),
        prefetch: prefetch.max(1),
        retry_delay: env.millis("NOTIFICATION_RETRY_DELAY_MS", Duration::from_secs(1)),
        retry_max: env.millis("NOTIFICATION_RETRY_MAX_MS", Duration::from_secs(5)),
        broker_timeout,
        shutdown_grace: Duration::from_secs(20),
        reconnect_max: env.millis("NOTIFICATION_RECONNECT_MAX_MS", Duration::from_secs(10)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> EnvReader {
        let public = stockmesh_platform::auth::generate_keypair().unwrap().1;
        let mut vars: std::collections::HashMap<String, String> = [
            ("DATABASE_URL", "postgres://u:p@127.0.0.1:5432/n"),
            ("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        vars.insert("JWT_PUBLIC_KEY".into(), public);
        for (k, v) in pairs {
            vars.insert(k.to_string(), v.to_string());
        }
        EnvReader::from_map(vars)
    }

    #[test]
    fn defaults() {
        let config = NotificationConfig::read(env(&[])).unwrap();
        assert_eq!(config.common.http_addr, DEFAULT_HTTP_ADDR.parse().unwrap());
        assert_eq!(config.consumer.queue, "notifications");
        assert_eq!(config.consumer.bindings, vec!["order.*".to_owned()]);
        assert_eq!(config.consumer.delivery_limit, 5);
        assert_eq!(config.consumer.prefetch, 128);
        assert_eq!(config.consumer.concurrency, 64);
        assert_eq!(config.consumer.broker_timeout, Duration::from_secs(5));
        assert_eq!(config.consumer.retry_max, Duration::from_secs(5));
        assert_eq!(config.consumer.shutdown_grace, config.common.shutdown_grace);
        assert_eq!(config.streams.per_replica, 10_000);
        assert_eq!(config.streams.per_user, 16);
    }

    #[test]
    fn concurrency_is_bounded_by_prefetch() {
        let config = NotificationConfig::read(env(&[
            ("NOTIFICATION_PREFETCH", "4"),
            ("NOTIFICATION_CONCURRENCY", "16"),
        ]))
        .unwrap();
        assert_eq!(config.consumer.concurrency, 4);
    }

    #[test]
    fn reports_every_problem() {
        let err = NotificationConfig::read(env(&[
            ("AMQP_URL", "http://nope"),
            ("NOTIFICATION_DELIVERY_LIMIT", "0"),
            ("NOTIFICATION_PREFETCH", "0"),
            ("NOTIFICATION_BINDINGS", " , "),
            ("NOTIFICATION_CONCURRENCY", "0"),
            ("NOTIFICATION_MAX_STREAMS", "0"),
        ]))
        .unwrap_err();
        assert_eq!(err.problems.len(), 6, "{err}");
    }
}
