//! Inventory configuration, read from the environment at start-up.

use std::net::SocketAddr;

use stockmesh_platform::config::{CommonConfig, ConfigError, DatabaseConfig, EnvReader};

/// Local default ports (ARCHITECTURE.md, "Running without Kubernetes").
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8083";
pub const DEFAULT_GRPC_ADDR: &str = "127.0.0.1:50053";

#[derive(Debug, Clone)]
pub struct InventoryConfig {
    pub common: CommonConfig,
    pub database: DatabaseConfig,
    /// Address of the gRPC API.
    pub grpc_addr: SocketAddr,
}

impl InventoryConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::read(EnvReader::from_env())
    }

    pub fn read(mut env: EnvReader) -> Result<Self, ConfigError> {
        let default_http = DEFAULT_HTTP_ADDR.parse().expect("valid default address");
        let default_grpc = DEFAULT_GRPC_ADDR.parse().expect("valid default address");
        let common = CommonConfig::read(&mut env, "inventory", default_http);
        let database = DatabaseConfig::read(&mut env);
        let grpc_addr = env.with_default("GRPC_ADDR", default_grpc);
        env.finish()?;
        Ok(Self {
            common,
            database,
            grpc_addr,
        })
    }
}
