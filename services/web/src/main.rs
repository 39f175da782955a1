//! `web` binary: reads configuration, starts telemetry, serves the console
//! until SIGTERM/SIGINT and drains.

use std::process::ExitCode;

use stockmesh_web::config::WebConfig;
use stockmesh_web::startup::Application;

fn main() -> ExitCode {
    stockmesh_platform::runtime::main(
        "web",
        WebConfig::from_env(),
        |c| &c.common,
        |config, shutdown| async move {
            let app = Application::build(config).await?;
            tracing::info!(http = %app.http_addr(), "web console ready to serve");
            app.run_until_stopped(shutdown).await
        },
    )
}
