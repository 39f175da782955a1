//! Test harness shared by every service's test suite.
//!
//! - [`infra`]: the PostgreSQL admin URL and AMQP URL of the real servers the
//!   tests use. `make test` exports them; a bare `cargo test` runs
//!   `scripts/infra.sh up test` once to find or start private ones.
//! - [`TestDatabase`]: a fresh database per test (zero2prod style), dropped
//!   afterwards, so tests run in parallel and leave nothing behind.
//! - [`TcpProxy`]: a loopback proxy a test can cut and restore, to make a
//!   real dependency unreachable without stopping a shared server.
//! - [`rabbit::PrivateBroker`]: a RabbitMQ node of one test's own, for real
//!   broker faults (restart, memory alarm, frozen node) that must never be
//!   injected into the shared broker.

pub mod postgres;
pub mod rabbit;

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A key pair for a test system and tokens signed with it, as the user
/// service would issue them.
pub struct TestKeys {
    pub private_pem: String,
    pub public_pem: String,
}

impl TestKeys {
    pub fn generate() -> Self {
        let (private_pem, public_pem) =
            stockmesh_platform::auth::generate_keypair().expect("key generation");
        Self {
            private_pem,
            public_pem,
        }
    }

    /// A valid token for `user_id` with `role` (issuer `stockmesh`, audience `stockmesh-api`).
    pub fn token(&self, user_id: uuid::Uuid, role: stockmesh_platform::auth::Role) -> String {
        self.token_expiring_in(user_id, role, 3600)
    }

    /// [`token`](Self::token) that expires `seconds` from now.
    pub fn token_expiring_in(
        &self,
        user_id: uuid::Uuid,
        role: stockmesh_platform::auth::Role,
        seconds: i64,
    ) -> String {
        let now = chrono::Utc::now().timestamp();
        let claims = stockmesh_platform::auth::Claims {
            sub: user_id,
            role,
            iss: "stockmesh".into(),
            aud: "stockmesh-api".into(),
            exp: now + seconds,
            iat: now,
            jti: uuid::Uuid::now_v7(),
        };
        let key =
            jsonwebtoken::EncodingKey::from_ed_pem(self.private_pem.as_bytes()).expect("valid key");
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA),
            &claims,
            &key,
        )
        .expect("signing")
    }
}

/// URLs of the real infrastructure tests run against.
#[derive(Debug, Clone)]
pub struct Infra {
    /// A PostgreSQL URL whose role may create and drop databases.
    pub database_url: String,
    pub amqp_url: String,
}

/// Finds the infrastructure once per test process.
pub fn infra() -> &'static Infra {
    static INFRA: OnceLock<Infra> = OnceLock::new();
    INFRA.get_or_init(|| {
        let from_env = (
            std::env::var("DATABASE_URL").ok().filter(|v| !v.is_empty()),
            std::env::var("AMQP_URL").ok().filter(|v| !v.is_empty()),
        );
        if let (Some(database_url), Some(amqp_url)) = from_env {
            return Infra {
                database_url,
                amqp_url,
            };
        }
        let root = workspace_root();
        let output = Command::new("bash")
            .arg(root.join("scripts/infra.sh"))
            .args(["up", "test"])
            .output()
            .unwrap_or_else(|e| panic!("cannot run scripts/infra.sh: {e}"));
        assert!(
            output.status.success(),
            "scripts/infra.sh up test failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let env_file = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        let text = std::fs::read_to_string(&env_file)
            .unwrap_or_else(|e| panic!("cannot read {env_file}: {e}"));
        let value = |name: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(&format!("export {name}=")))
                .map(|v| v.trim_matches('\'').to_owned())
                .unwrap_or_else(|| panic!("{name} missing from {env_file}"))
        };
        Infra {
            database_url: from_env.0.unwrap_or_else(|| value("DATABASE_URL")),
            amqp_url: from_env.1.unwrap_or_else(|| value("AMQP_URL")),
        }
    })
}

/// The workspace root (where `scripts/` and `Cargo.lock` live): the nearest
/// ancestor of the running test's package with a `Cargo.lock`. Read at run
/// time (cargo sets `CARGO_MANIFEST_DIR` for tests), so a test binary reused
/// from a checkout at another path still finds this one.
pub fn workspace_root() -> PathBuf {
    let start = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    start
        .ancestors()
        .find(|dir| dir.join("Cargo.lock").is_file())
        .expect("the workspace root (with Cargo.lock) is an ancestor of the package")
        .to_path_buf()
}

/// Replaces the database name (path) of a PostgreSQL URL.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let path_start = base[scheme_end..]
        .find('/')
        .map(|i| i + scheme_end)
        .unwrap_or(base.len());
    let mut out = format!("{}/{}", &base[..path_start], database);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// A database created for one test and dropped when the value is dropped.
pub struct TestDatabase {
    pub name: String,
    /// URL of the fresh database (same role as the admin URL).
    pub url: String,
    admin_url: String,
}

impl TestDatabase {
    pub async fn create() -> Self {
        let admin_url = infra().database_url.clone();
        let name = format!("test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to the test PostgreSQL: {e}"));
        // The name is generated above from a UUID: no injection possible.
        sqlx::query(sqlx::AssertSqlSafe(format!(r#"CREATE DATABASE "{name}""#)))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("cannot create test database: {e}"));
        let _ = conn.close().await;
        Self {
            url: with_database(&admin_url, &name),
            name,
            admin_url,
        }
    }

    /// A small pool on the test database, for assertions.
    pub async fn pool(&self) -> PgPool {
        PgPoolOptions::new()
            .max_connections(4)
            .connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", self.name))
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // Drop may run inside a runtime; do the async work on a fresh thread.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let mut conn = PgConnection::connect(&admin_url).await.ok()?;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#
                )))
                .execute(&mut conn)
                .await
                .ok()?;
                conn.close().await.ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            eprintln!("warning: test database {} was not dropped", self.name);
        }
    }
}

/// A loopback TCP proxy that a test can cut (every connection closed and
/// the port closed, so new connections are refused as if the server were
/// down) and restore on the same port, to simulate a dependency outage.
pub struct TcpProxy {
    pub port: u16,
    state: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

fn bind_reusable(port: u16) -> std::io::Result<TcpListener> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(([127, 0, 0, 1], port).into())?;
    socket.listen(1024)
}

impl TcpProxy {
    pub async fn start(target: std::net::SocketAddr) -> Self {
        let first = bind_reusable(0).expect("bind proxy");
        let port = first.local_addr().expect("proxy addr").port();
        let (state, mut rx) = watch::channel(true);
        let task = tokio::spawn(async move {
            let mut listener = Some(first);
            let mut watcher = rx.clone();
            loop {
                match listener.take() {
                    Some(open) => {
                        tokio::select! {
                            accepted = open.accept() => {
                                listener = Some(open);
                                let Ok((mut inbound, _)) = accepted else { continue };
                                let mut up = rx.clone();
                                tokio::spawn(async move {
                                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                                        return;
                                    };
                                    tokio::select! {
                                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                                        _ = up.wait_for(|open| !*open) => {}
                                    }
                                });
                            }
                            _ = watcher.wait_for(|open| !*open) => {
                                // Dropping `open` closes the port.
                            }
                        }
                    }
                    None => {
                        if rx.wait_for(|open| *open).await.is_err() {
                            return;
                        }
                        loop {
                            match bind_reusable(port) {
                                Ok(l) => {
                                    listener = Some(l);
                                    break;
                                }
                                Err(_) => {
                                    tokio::time::sleep(std::time::Duration::from_millis(50)).await
                                }
                            }
                        }
                    }
                }
            }
        });
        Self { port, state, task }
    }

    /// Rewrites a URL's host:port to go through the proxy.
    pub fn url_for(&self, url: &str, target_port: u16) -> String {
        url.replacen(&format!(":{target_port}/"), &format!(":{}/", self.port), 1)
    }

    /// Closes every proxied connection and the port.
    pub fn cut(&self) {
        let _ = self.state.send(false);
    }

    /// Opens the port and forwards connections again.
    pub fn restore(&self) {
        let _ = self.state.send(true);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Host and port of a URL like `scheme://user:pass@host:port/...`.
pub fn host_port(url: &str) -> Option<(String, u16)> {
    let after_scheme = url.split_once("://")?.1;
    let authority = after_scheme.split('/').next()?;
    let host_port = authority
        .rsplit_once('@')
        .map(|(_, h)| h)
        .unwrap_or(authority);
    let (host, port) = host_port.rsplit_once(':')?;
    Some((host.to_owned(), port.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_helpers() {
        assert_eq!(
            with_database(
                "postgres://u:p@127.0.0.1:5432/postgres?sslmode=disable",
                "t1"
            ),
            "postgres://u:p@127.0.0.1:5432/t1?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://u:p@h:1", "t1"),
            "postgres://u:p@h:1/t1"
        );
        assert_eq!(
            host_port("amqp://guest:guest@127.0.0.1:56672/%2f"),
            Some(("127.0.0.1".to_owned(), 56672))
        );
    }
}
