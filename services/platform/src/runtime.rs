//! The `main` of every service: configuration, telemetry, signals, run,
//! exit code. A service's `main` is one call to [`run`].

use std::future::Future;
use std::process::ExitCode;

use crate::config::{CommonConfig, ConfigError};
use crate::shutdown::Shutdown;
use crate::telemetry;

/// Exit code for invalid configuration (EX_USAGE-like).
const CONFIG_ERROR: u8 = 2;

pub async fn run<C, F, Fut>(
    name: &str,
    config: Result<C, ConfigError>,
    common: fn(&C) -> &CommonConfig,
    serve: F,
) -> ExitCode
where
    F: FnOnce(C, Shutdown) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let config = match config {
        Ok(config) => config,
        Err(err) => {
            eprintln!("{name}: {err}");
            return ExitCode::from(CONFIG_ERROR);
        }
    };
    let telemetry = match telemetry::init(common(&config)) {
        Ok(t) => t,
        Err(err) => {
            eprintln!("{name}: telemetry: {err:#}");
            return ExitCode::from(CONFIG_ERROR);
        }
    };
    let shutdown = Shutdown::new();
    shutdown.listen_for_signals();
    let code = match serve(config, shutdown).await {
        Ok(()) => {
            tracing::info!("{name} stopped");
            ExitCode::SUCCESS
        }
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "{name} failed");
            ExitCode::FAILURE
        }
    };
    telemetry.shutdown();
    code
}
