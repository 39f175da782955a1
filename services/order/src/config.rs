//! Order service configuration, read from the environment at start-up.

use std::time::Duration;

use stockmesh_platform::auth::AuthConfig;
use stockmesh_platform::broker::BrokerConfig;
use stockmesh_platform::config::{CommonConfig, ConfigError, DatabaseConfig, EnvReader};
use stockmesh_platform::grpc_client::UpstreamConfig;

pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8084";

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
    /// Period of the compensation sweeper.
    pub sweep_every: Duration,
    /// A PENDING order older than this is considered abandoned.
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
        let sweep_every = env.millis("SWEEP_INTERVAL_MS", Duration::from_secs(2));
        let pending_timeout = env.millis("PENDING_TIMEOUT_MS", Duration::from_secs(30));
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
            sweep_every,
            pending_timeout,
            product_cache_ttl,
        })
    }
}
