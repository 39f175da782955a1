//! `notification` binary: reads configuration, starts telemetry, consumes
//! and serves until SIGTERM/SIGINT, then drains.
//!
//! `notification replay-dead-letters [--limit N]` instead moves the
//! messages of `<NOTIFICATION_QUEUE>.dead` back into the queue and exits
//! (see `stockmesh_notification::replay`); it needs only `AMQP_URL` and
//! `NOTIFICATION_QUEUE`.

use std::process::ExitCode;

use stockmesh_notification::config::NotificationConfig;
use stockmesh_notification::replay::{self, ReplayConfig};
use stockmesh_notification::startup::Application;
use stockmesh_platform::config::EnvReader;

const USAGE: &str = "usage: notification                                  run the service
       notification replay-dead-letters [--limit N]  move <NOTIFICATION_QUEUE>.dead back into the queue";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None => serve(),
        Some("replay-dead-letters") => replay_dead_letters(&args[1..]),
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("notification: unknown command {other:?}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn serve() -> ExitCode {
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

fn replay_dead_letters(args: &[String]) -> ExitCode {
    let config = match ReplayConfig::read(EnvReader::from_env(), args) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("notification replay-dead-letters: {err}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("notification replay-dead-letters: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(replay::replay_dead_letters(&config)) {
        Ok(done) => {
            println!(
                "replayed {} of {} dead letters from {}.dead into {}",
                done.moved, done.found, config.queue, config.queue
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("notification replay-dead-letters: {err:#}");
            ExitCode::FAILURE
        }
    }
}
