//! A private PostgreSQL server for one test: its own port, data directory
//! and socket directory, started from the system's PostgreSQL packages the
//! same way `scripts/infra.sh` starts the shared one.
//!
//! Database faults (a restart, a stop for a while, a frozen server) are real
//! faults of a real server and must never be injected into the shared test
//! server every other test uses: a test that needs one starts its own here.
//! The server and its directory are removed when the value is dropped.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const USER: &str = "stockmesh";
const PASSWORD: &str = "private-test-password";

/// A running private server; stopped and deleted on drop.
pub struct PrivatePostgres {
    /// Admin URL (`postgres://stockmesh:...@127.0.0.1:<port>/postgres`).
    pub admin_url: String,
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// The newest `/usr/lib/postgresql/<version>/bin` holding `pg_ctl`.
fn pg_bin() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("pg_ctl").is_file().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).expect(
        "PostgreSQL server binaries in /usr/lib/postgresql/*/bin (scripts/infra.sh installs them)",
    )
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

impl PrivatePostgres {
    /// Initialises and starts a server; panics with its log when it cannot.
    pub async fn start() -> Self {
        tokio::task::spawn_blocking(Self::start_blocking)
            .await
            .expect("postgres start thread")
    }

    fn start_blocking() -> Self {
        let bin = pg_bin();
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("stockmesh-pg-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sock")).expect("create the server's directory");
        let pwfile = dir.join("pwfile");
        std::fs::write(&pwfile, format!("{PASSWORD}\n")).expect("write the password file");
        let this = Self {
            admin_url: format!("postgres://{USER}:{PASSWORD}@127.0.0.1:{port}/postgres"),
            port,
            dir,
            bin,
        };
        if is_root() {
            // initdb refuses to run as root: the directory goes to postgres.
            let status = Command::new("chown")
                .args(["-R", "postgres:"])
                .arg(&this.dir)
                .status()
                .expect("run chown");
            assert!(status.success(), "chown of {} failed", this.dir.display());
        }
        let out = this
            .as_owner(&this.bin.join("initdb"))
            .arg("-D")
            .arg(this.data())
            .args([
                "-U",
                USER,
                "--auth-host=scram-sha-256",
                "--auth-local=trust",
            ])
            .args(["-E", "UTF8", "--locale=C.UTF-8"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        this.pg_ctl_start();
        this
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn as_owner(&self, program: &Path) -> Command {
        if is_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }

    fn pg_ctl(&self, args: &[&str]) -> std::process::Output {
        self.as_owner(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.data())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run pg_ctl")
    }

    fn pg_ctl_start(&self) {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c max_connections=200 \
             -c fsync=off -c synchronous_commit=off -c full_page_writes=off",
            self.port,
            self.dir.join("sock").display()
        );
        let log = self.dir.join("server.log");
        let log = log.to_string_lossy();
        let out = self.pg_ctl(&["-l", &log, "-o", &options, "-w", "-t", "60", "start"]);
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log_tail(30)
        );
    }

    /// The last lines of the server's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Stops the server (fast mode: sessions are disconnected, as in a pod
    /// deletion), waits `down_for`, and starts it again.
    pub async fn restart(&self, down_for: Duration) {
        self.stop().await;
        tokio::time::sleep(down_for).await;
        self.start_again().await;
    }

    /// Stops the server (fast mode).
    pub async fn stop(&self) {
        let this = self.handle();
        tokio::task::spawn_blocking(move || {
            let out = this.pg_ctl(&["-m", "fast", "-w", "stop"]);
            assert!(
                out.status.success(),
                "pg_ctl stop failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        })
        .await
        .expect("pg_ctl stop thread");
    }

    /// Starts a stopped server again, on the same port and data.
    pub async fn start_again(&self) {
        let this = self.handle();
        tokio::task::spawn_blocking(move || this.pg_ctl_start())
            .await
            .expect("pg_ctl start thread");
    }

    /// A copy for blocking threads; its drop does nothing.
    fn handle(&self) -> Handle {
        Handle(Self {
            admin_url: self.admin_url.clone(),
            port: self.port,
            dir: self.dir.clone(),
            bin: self.bin.clone(),
        })
    }

    /// A URL for `database` on this server.
    pub fn url(&self, database: &str) -> String {
        crate::with_database(&self.admin_url, database)
    }
}

/// A non-owning copy of a [`PrivatePostgres`] (never stops the server).
struct Handle(PrivatePostgres);

impl std::ops::Deref for Handle {
    type Target = PrivatePostgres;
    fn deref(&self) -> &PrivatePostgres {
        &self.0
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // Leave the server to its owner: forget the copied paths.
        self.0.dir = PathBuf::new();
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if self.dir.as_os_str().is_empty() {
            return;
        }
        let _ = self.pg_ctl(&["-m", "immediate", "-w", "stop"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
