//! Order service configuration, read from the environment at start-up.

use std::time::Duration;

use stockmesh_platform::auth::AuthConfig;
use stockmesh_platform::broker::BrokerConfig;
use stockmesh_platform::config::{CommonConfig, ConfigError, DatabaseConfig, EnvReader};
use stockmesh_platform::grpc_client::UpstreamConfig;

pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8084";

/// How much longer than the request timeout a PENDING order must be before
/// the sweeper fails it, when `PENDING_TIMEOUT_MS` is not set.
const PENDING_MARGIN: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct OrderConfig {
    pub common: CommonConfig,
    pub database: DatabaseConfig,
    pub auth: AuthConfig,
    pub broker: BrokerConfig,
    pub product: UpstreamConfig,
    pub inventory: UpstreamConfig,
    /// Fallback poll period of the outbox relay (it is also woken on commit).
    pub relay_poll: Duration,
    /// `OUTBOX_BROKER_TIMEOUT_MS`: bound on each wait of the relay on the
    /// broker (opening a channel, publishing a batch, its confirms).
    pub outbox_broker_timeout: Duration,
    /// `OUTBOX_RETENTION_MS`: how long published outbox rows are kept.
    pub outbox_retention: Duration,
    /// `OUTBOX_PRUNE_INTERVAL_MS`: how often published rows are pruned.
    pub outbox_prune_every: Duration,
    /// Period of the compensation sweeper (and of the committer's rounds
    /// over orders flagged in the database).
    pub sweep_every: Duration,
    /// `COMMIT_LINGER_MS`: how long the committer, woken by a confirm,
    /// waits for more confirms to join one inventory `CommitMany`.
    pub commit_linger: Duration,
    /// A PENDING order older than this is considered abandoned: failed and
    /// its reservation released. Always longer than the request timeout,
    /// which bounds every saga, so the sweeper never gives up a saga that
    /// is still running.
    pub pending_timeout: Duration,
    /// How long a product answer (name, price) is reused; zero disables.
    pub product_cache_ttl: Duration,
}

impl OrderConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::read(EnvReader::from_env())
    }

    pub fn read(mut env: EnvReader) -> Result<Self, ConfigError> {
        let common =
            CommonConfig::read(&mut env, "order", DEFAULT_HTTP_ADDR.parse().expect("valid"));
        let database = DatabaseConfig::read(&mut env);
        let auth = AuthConfig::read(&mut env);
        let broker = BrokerConfig::read(&mut env);
        let product =
            UpstreamConfig::read(&mut env, "product", "PRODUCT", "http://127.0.0.1:50052");
        let inventory =
            UpstreamConfig::read(&mut env, "inventory", "INVENTORY", "http://127.0.0.1:50053");
        let relay_poll = env.millis("OUTBOX_POLL_MS", Duration::from_millis(500));
        let outbox_broker_timeout = env.millis("OUTBOX_BROKER_TIMEOUT_MS", Duration::from_secs(5));
        if outbox_broker_timeout.is_zero() {
            env.problem("OUTBOX_BROKER_TIMEOUT_MS must be at least 1");
        }
        let outbox_retention = env.millis("OUTBOX_RETENTION_MS", Duration::from_secs(24 * 60 * 60));
        let outbox_prune_every = env.millis("OUTBOX_PRUNE_INTERVAL_MS", Duration::from_secs(60));
        if outbox_prune_every.is_zero() {
            env.problem("OUTBOX_PRUNE_INTERVAL_MS must be at least 1");
        }
        let sweep_every = env.millis("SWEEP_INTERVAL_MS", Duration::from_secs(2));
        let commit_linger = env.millis("COMMIT_LINGER_MS", Duration::from_millis(10));
        // A saga runs inside its HTTP request, which is dropped at
        // REQUEST_TIMEOUT_MS; the sweeper must wait longer than that before
        // it fails a PENDING order and releases its stock, or it would pull
        // the reservation from under a saga still in flight. Unset, the
        // pending timeout follows the request timeout (the chart and the
        // operator allow up to 600 s); set, it must exceed it.
        let pending_timeout = env.millis(
            "PENDING_TIMEOUT_MS",
            (common.request_timeout + PENDING_MARGIN).max(Duration::from_secs(30)),
        );
        if pending_timeout <= common.request_timeout {
            env.problem(
                "PENDING_TIMEOUT_MS must be longer than REQUEST_TIMEOUT_MS: the sweeper \
                 would fail orders whose saga is still running (leave it unset to derive it)",
            );
        }
        let product_cache_ttl = env.millis("PRODUCT_CACHE_TTL_MS", Duration::from_millis(1000));
        env.finish()?;
        Ok(Self {
            common,
            database,
            auth,
            broker,
            product,
            inventory,
            relay_poll,
            outbox_broker_timeout,
            outbox_retention,
            outbox_prune_every,
            sweep_every,
            commit_linger,
            pending_timeout,
            product_cache_ttl,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn read(extra: &[(&str, &str)]) -> Result<OrderConfig, ConfigError> {
        let (_, public_pem) = stockmesh_platform::auth::generate_keypair().expect("keys");
        let mut vars: HashMap<String, String> = [
            ("DATABASE_URL", "postgres://u:p@127.0.0.1:5432/orders"),
            ("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"),
            ("JWT_PUBLIC_KEY", public_pem.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        for (k, v) in extra {
            vars.insert((*k).to_owned(), (*v).to_owned());
        }
        OrderConfig::read(EnvReader::from_map(vars))
    }

    #[test]
    fn the_pending_timeout_outlasts_every_saga() {
        let defaults = read(&[]).expect("defaults are valid");
        assert_eq!(defaults.pending_timeout, Duration::from_secs(30));
        assert!(defaults.pending_timeout > defaults.common.request_timeout);

        // A long request timeout (the chart and the operator allow 600 s)
        // moves the derived pending timeout beyond it.
        let long = read(&[("REQUEST_TIMEOUT_MS", "600000")]).expect("valid");
        assert!(
            long.pending_timeout > long.common.request_timeout,
            "{:?} vs {:?}",
            long.pending_timeout,
            long.common.request_timeout
        );

        // Set explicitly, it must exceed the request timeout.
        let err = read(&[
            ("REQUEST_TIMEOUT_MS", "10000"),
            ("PENDING_TIMEOUT_MS", "10000"),
        ])
        .expect_err("a pending timeout that a saga can outlive is refused")
        .to_string();
        assert!(
            err.contains("PENDING_TIMEOUT_MS") && err.contains("REQUEST_TIMEOUT_MS"),
            "{err}"
        );
        let ok = read(&[
            ("REQUEST_TIMEOUT_MS", "10000"),
            ("PENDING_TIMEOUT_MS", "15000"),
        ])
        .expect("longer than the request timeout");
        assert_eq!(ok.pending_timeout, Duration::from_secs(15));
    }

    #[test]
    fn outbox_settings() {
        let defaults = read(&[]).expect("defaults are valid");
        assert_eq!(defaults.outbox_broker_timeout, Duration::from_secs(5));
        assert_eq!(defaults.outbox_retention, Duration::from_secs(24 * 3600));
        assert_eq!(defaults.outbox_prune_every, Duration::from_secs(60));
        let err = read(&[
            ("OUTBOX_BROKER_TIMEOUT_MS", "0"),
            ("OUTBOX_PRUNE_INTERVAL_MS", "0"),
        ])
        .expect_err("zero waits are refused");
        assert_eq!(err.problems.len(), 2, "{err}");
    }
}
