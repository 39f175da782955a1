//! `notification` binary: reads configuration, starts telemetry, consumes
//! and serves until SIGTERM/SIGINT, then drains.

use std::process::ExitCode;

use stockmesh_notification::config::NotificationConfig;
use stockmesh_notification::startup::Application;

fn main() -> ExitCode {
    stockmesh_platform::runtime::main(
        "notification",
        NotificationConfig::from_env(),
        |c| &c.common,
        |config, shutdown| async move {
            let app = Application::build(config).await?;
            tracing::info!(http = %app.http_addr(), "notification ready to serve");
            app.run_until_stopped(shutdown).await
        },
    )
}
