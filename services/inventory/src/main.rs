//! `inventory` binary: reads configuration, starts telemetry, serves until
//! SIGTERM/SIGINT and drains.

use std::process::ExitCode;

use stockmesh_inventory::config::InventoryConfig;
use stockmesh_inventory::startup::Application;
use stockmesh_platform::{Shutdown, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    let config = match InventoryConfig::from_env() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("inventory: {err}");
            return ExitCode::from(2);
        }
    };
    let telemetry = match telemetry::init(&config.common) {
        Ok(t) => t,
        Err(err) => {
            eprintln!("inventory: telemetry: {err:#}");
            return ExitCode::from(2);
        }
    };
    let shutdown = Shutdown::new();
    shutdown.listen_for_signals();
    let outcome = match Application::build(config).await {
        Ok(app) => {
            tracing::info!(http = %app.http_addr(), grpc = %app.grpc_addr(), "inventory ready to serve");
            app.run_until_stopped(shutdown).await
        }
        Err(err) => Err(err),
    };
    let code = match outcome {
        Ok(()) => {
            tracing::info!("inventory stopped");
            ExitCode::SUCCESS
        }
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "inventory failed");
            ExitCode::FAILURE
        }
    };
    telemetry.shutdown();
    code
}
