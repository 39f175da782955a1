//! PostgreSQL: one pool per service, embedded migrations run at start-up,
//! a readiness check and pool-usage gauges.

use prometheus_client::metrics::gauge::Gauge;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::config::DatabaseConfig;
use crate::metrics::Metrics;

/// A connection idle for longer than this is pinged before it is handed
/// out; one in steady use is not (a ping per acquire is a round trip and a
/// backend wake-up per query, which the benchmark's profile showed).
pub const PING_IF_IDLE_FOR: std::time::Duration = std::time::Duration::from_secs(1);

/// Opens the pool lazily: the service starts (and reports not-ready) even
/// while the database is still coming up, and recovers when it appears.
/// Connections that sat idle are checked before use, so a database restart
/// costs no failed requests once traffic has paused for a second.
pub fn pool(config: &DatabaseConfig) -> Result<PgPool, sqlx::Error> {
    pool_options(config, config.max_connections).connect_lazy(&config.url)
}

/// A small pool, opened lazily like [`pool`], whose commits do not wait
/// for the WAL flush (`synchronous_commit = off`): only for writes that are
/// safe to lose in a database crash because they are redone when missing,
/// such as the outbox relay's claims (a lease that lapses anyway) and its
/// publish marks (a lost one republishes an event that consumers drop as a
/// duplicate). Everything else becomes durable with the next flush, a few
/// milliseconds later. Never for anything a client was told is stored.
pub fn unflushed_pool(
    config: &DatabaseConfig,
    max_connections: u32,
) -> Result<PgPool, sqlx::Error> {
    let options: PgConnectOptions = config.url.parse()?;
    Ok(pool_options(config, max_connections)
        .connect_lazy_with(options.options([("synchronous_commit", "off")])))
}

fn pool_options(config: &DatabaseConfig, max_connections: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(config.acquire_timeout)
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_IF_IDLE_FOR {
                    use sqlx::Connection;
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
}

/// Runs the service's embedded migrations, retrying while the database is
/// unreachable (up to `attempts` times, with a growing pause).
pub async fn migrate(pool: &PgPool, migrator: &Migrator, attempts: u32) -> anyhow::Result<()> {
    let mut delay = std::time::Duration::from_millis(200);
    for attempt in 1..=attempts.max(1) {
        match migrator.run(pool).await {
            Ok(()) => {
                tracing::info!(
                    migrations = migrator.iter().count(),
                    "database schema up to date"
                );
                return Ok(());
            }
            Err(sqlx::migrate::MigrateError::Execute(err))
                if is_connection_error(&err) && attempt < attempts =>
            {
                tracing::warn!(attempt, error = %err, "database not reachable yet, retrying migrations");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(5));
            }
            Err(err) => return Err(anyhow::anyhow!("running migrations: {err}")),
        }
    }
    Err(anyhow::anyhow!("database unreachable; migrations not run"))
}

/// A client span for one database operation, named by operation and table
/// (never by parameter values), following the OpenTelemetry db conventions.
pub fn span(operation: &'static str, table: &'static str) -> tracing::Span {
    tracing::info_span!(
        "db",
        otel.name = format!("{operation} {table}"),
        otel.kind = "client",
        db.system.name = "postgresql",
        db.operation.name = operation,
        db.collection.name = table,
    )
}

/// Whether an error means the database could not be reached (as opposed to
/// a query that the database refused).
pub fn is_connection_error(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Tls(_)
        // A connection cut mid-handshake or mid-message.
        | sqlx::Error::Protocol(_) => true,
        // SQLSTATE class 08 (connection exception), server shutting down or
        // starting up, too many connections.
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08") || matches!(code.as_ref(), "57P01" | "57P02" | "57P03" | "53300")
        }),
        _ => false,
    }
}

/// The standard `database` readiness check of a service, for
/// [`crate::health::Readiness::with_check`].
pub fn readiness_check(
    pool: &PgPool,
) -> impl Fn() -> futures::future::BoxFuture<'static, Result<(), String>> + Send + Sync + 'static {
    let pool = pool.clone();
    move || {
        let pool = pool.clone();
        Box::pin(async move { ping(&pool).await })
    }
}

/// Readiness check: one round trip.
pub async fn ping(pool: &PgPool) -> Result<(), String> {
    sqlx::query("SELECT 1")
        .execute(pool)
        .await
        .map(|_| ())
        .map_err(|err| match err {
            sqlx::Error::PoolTimedOut => "database unreachable (pool timed out)".to_owned(),
            sqlx::Error::Io(e) => format!("database unreachable: {e}"),
            other => format!(
                "database check failed: {}",
                crate::error::ErrorChain(&other)
            ),
        })
}

/// Exposes `stockmesh_db_pool_connections{state}` refreshed at each scrape.
pub fn register_pool_metrics(metrics: &Metrics, pool: &PgPool) {
    let in_use: Gauge = Gauge::default();
    let idle: Gauge = Gauge::default();
    let max: Gauge = Gauge::default();
    metrics.register(
        "db_pool_connections_in_use",
        "Pool connections checked out",
        in_use.clone(),
    );
    metrics.register(
        "db_pool_connections_idle",
        "Pool connections idle",
        idle.clone(),
    );
    metrics.register("db_pool_connections_max", "Pool size limit", max.clone());
    let pool = pool.clone();
    metrics.on_scrape(move || {
        let size = pool.size() as i64;
        let free = pool.num_idle() as i64;
        in_use.set(size - free);
        idle.set(free);
        max.set(pool.options().get_max_connections() as i64);
        async {}
    });
}
