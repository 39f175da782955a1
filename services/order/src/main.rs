//! `order` binary: reads configuration, starts telemetry, serves until
//! SIGTERM/SIGINT and drains.

use std::process::ExitCode;

use stockmesh_order::config::OrderConfig;
use stockmesh_order::startup::Application;

fn main() -> ExitCode {
    stockmesh_platform::runtime::main(
        "order",
        OrderConfig::from_env(),
        |c| &c.common,
        |config, shutdown| async move {
            let app = Application::build(config).await?;
            tracing::info!(http = %app.http_addr(), "order ready to serve");
            app.run_until_stopped(shutdown).await
        },
    )
}
