//! `user` binary: reads configuration, starts telemetry, serves until
//! SIGTERM/SIGINT and drains.

use std::process::ExitCode;

use stockmesh_user::config::UserConfig;
use stockmesh_user::startup::Application;

fn main() -> ExitCode {
    stockmesh_platform::runtime::main(
        "user",
        UserConfig::from_env(),
        |c| &c.common,
        |config, shutdown| async move {
            let app = Application::build(config).await?;
            tracing::info!(http = %app.http_addr(), "user ready to serve");
            app.run_until_stopped(shutdown).await
        },
    )
}
