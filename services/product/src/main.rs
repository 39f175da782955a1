//! `product` binary: reads configuration, starts telemetry, serves until
//! SIGTERM/SIGINT and drains.

use std::process::ExitCode;

use stockmesh_product::config::ProductConfig;
use stockmesh_product::startup::Application;

fn main() -> ExitCode {
    stockmesh_platform::runtime::main(
        "product",
        ProductConfig::from_env(),
        |c| &c.common,
        |config, shutdown| async move {
            let app = Application::build(config).await?;
            tracing::info!(http = %app.http_addr(), grpc = %app.grpc_addr(), "product ready to serve");
            app.run_until_stopped(shutdown).await
        },
    )
}
