//! The `main` of every service: allocator settings, a runtime whose threads
//! carry the service's name, configuration, telemetry, signals, run, exit
//! code. A service's `main` is one call to [`main`].

use std::future::Future;
use std::process::ExitCode;

use crate::config::{CommonConfig, ConfigError};
use crate::shutdown::Shutdown;
use crate::telemetry;

/// Exit code for invalid configuration (EX_USAGE-like).
const CONFIG_ERROR: u8 = 2;

/// Builds the service's runtime and runs it: `fn main() -> ExitCode {
/// runtime::main("order", ...) }`. Worker threads are named `<name>-rt`, so
/// `top -H`, `perf` and thread dumps say which service a thread belongs to.
pub fn main<C, F, Fut>(
    name: &'static str,
    config: Result<C, ConfigError>,
    common: fn(&C) -> &CommonConfig,
    serve: F,
) -> ExitCode
where
    F: FnOnce(C, Shutdown) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    tune_allocator();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name(format!("{name}-rt"))
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("{name}: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(name, config, common, serve))
}

/// glibc malloc settings for small, long-running services (set before any
/// thread starts):
/// - a fixed mmap threshold of 4 MiB: very large buffers (argon2's 19 MiB
///   working memory per password hash) are mapped and returned to the
///   system when freed. glibc's default *raises* the threshold after the
///   first such free, so every later hash would come from the heap and the
///   process would keep ~20 MiB it no longer uses. 4 MiB, not glibc's
///   128 KiB, so ordinary request and connection buffers never pay an
///   mmap/munmap (and its page faults) per use;
/// - a fixed trim threshold of 8 MiB (fixing the mmap threshold would
///   otherwise leave it at 128 KiB and shrink and regrow the heap often);
/// - at most two arenas: every thread that allocates would otherwise get its
///   own (8 per core), each holding freed memory of its own.
///
/// `MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_` and `MALLOC_ARENA_MAX`
/// in the environment still win.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let set = |var: &str, param: libc::c_int, value: libc::c_int| {
            if std::env::var_os(var).is_none() {
                // SAFETY: mallopt only changes allocator parameters; it is
                // called before the runtime starts any thread.
                unsafe {
                    libc::mallopt(param, value);
                }
            }
        };
        set("MALLOC_MMAP_THRESHOLD_", libc::M_MMAP_THRESHOLD, 4 << 20);
        set("MALLOC_TRIM_THRESHOLD_", libc::M_TRIM_THRESHOLD, 8 << 20);
        set("MALLOC_ARENA_MAX", libc::M_ARENA_MAX, 2);
    }
}

/// Binds a service's listener; `what` ("HTTP", "gRPC") names it in the
/// error, which says which address could not be taken.
pub async fn bind(
    addr: std::net::SocketAddr,
    what: &str,
) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("binding {what} {addr}: {e}"))
}

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
    let shutdown = Shutdown::new().with_drain(common(&config).shutdown_drain);
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
