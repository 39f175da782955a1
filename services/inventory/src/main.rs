//! `inventory` binary: reads configuration, starts telemetry, serves until
//! SIGTERM/SIGINT and drains.

use std::process::ExitCode;

use stockmesh_inventory::config::InventoryConfig;
use stockmesh_inventory::startup::Application;

fn main() -> ExitCode {
    stockmesh_platform::runtime::main(
        "inventory",
        InventoryConfig::from_env(),
        |c| &c.common,
        |config, shutdown| async move {
            let app = Application::build(config).await?;
            tracing::info!(http = %app.http_addr(), grpc = %app.grpc_addr(), "inventory ready to serve");
            app.run_until_stopped(shutdown).await
        },
    )
}
