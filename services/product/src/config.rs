//! Product service configuration, read from the environment at start-up.

use std::net::SocketAddr;
use std::time::Duration;

use stockmesh_platform::auth::AuthConfig;
use stockmesh_platform::config::{CommonConfig, ConfigError, DatabaseConfig, EnvReader};
use stockmesh_platform::grpc_client::UpstreamConfig;

pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8082";
pub const DEFAULT_GRPC_ADDR: &str = "127.0.0.1:50052";
pub const DEFAULT_INVENTORY_URL: &str = "http://127.0.0.1:50053";

#[derive(Debug, Clone)]
pub struct ProductConfig {
    pub common: CommonConfig,
    pub database: DatabaseConfig,
    pub auth: AuthConfig,
    pub grpc_addr: SocketAddr,
    pub inventory: UpstreamConfig,
    /// How often products whose stock is not yet recorded are retried.
    pub stock_sync_interval: Duration,
}

impl ProductConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::read(EnvReader::from_env())
    }

    pub fn read(mut env: EnvReader) -> Result<Self, ConfigError> {
        let common = CommonConfig::read(
            &mut env,
            "product",
            DEFAULT_HTTP_ADDR.parse().expect("valid"),
        );
        let database = DatabaseConfig::read(&mut env);
        let auth = AuthConfig::read(&mut env);
        let grpc_addr = env.with_default("GRPC_ADDR", DEFAULT_GRPC_ADDR.parse().expect("valid"));
        let inventory =
            UpstreamConfig::read(&mut env, "inventory", "INVENTORY", DEFAULT_INVENTORY_URL);
        let stock_sync_interval = env.millis("STOCK_SYNC_INTERVAL_MS", Duration::from_secs(2));
        env.finish()?;
        Ok(Self {
            common,
            database,
            auth,
            grpc_addr,
            inventory,
            stock_sync_interval,
        })
    }
}
