//! A private RabbitMQ node for one test: its own ports, epmd, data and log
//! directories and node name, started from the system's `rabbitmq-server`
//! package the same way `scripts/infra.sh` starts the shared one.
//!
//! Broker faults (the application stopped and started, a memory alarm, the
//! whole node frozen with SIGSTOP) are real faults of a real broker, and
//! they must never be injected into the shared test broker that every other
//! test uses: a test that needs one starts its own node here. The node, its
//! epmd and its directory are removed when the value is dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running private node; stopped and deleted on drop.
pub struct PrivateBroker {
    /// `amqp://guest:guest@127.0.0.1:<port>/%2f`.
    pub amqp_url: String,
    pub port: u16,
    dir: PathBuf,
    nodename: String,
    epmd_port: u16,
    dist_port: u16,
    sbin: PathBuf,
    server: Option<Child>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
        .is_ok()
}

fn rabbit_sbin() -> Option<PathBuf> {
    let mut candidates = vec![PathBuf::from("/usr/lib/rabbitmq/bin")];
    if let Ok(entries) = std::fs::read_dir("/usr/lib/rabbitmq/lib") {
        for entry in entries.flatten() {
            candidates.push(entry.path().join("sbin"));
        }
    }
    candidates
        .into_iter()
        .find(|dir| dir.join("rabbitmq-server").is_file())
}

impl PrivateBroker {
    /// Starts a node and waits until it accepts AMQP connections (panics
    /// after 90 s, with the end of its log).
    pub async fn start() -> Self {
        tokio::task::spawn_blocking(Self::start_blocking)
            .await
            .expect("broker start thread")
    }

    fn start_blocking() -> Self {
        let sbin = rabbit_sbin().expect(
            "rabbitmq-server is not installed (scripts/infra.sh install test rabbitmq-server)",
        );
        let id = uuid::Uuid::new_v4().simple().to_string();
        let short = &id[..12];
        let dir = std::env::temp_dir().join(format!("stockmesh-private-rabbit-{short}"));
        for sub in ["home", "mnesia", "log"] {
            std::fs::create_dir_all(dir.join(sub)).expect("broker directories");
        }
        let port = free_port();
        let epmd_port = free_port();
        let dist_port = free_port();
        std::fs::write(dir.join("enabled_plugins"), "[].\n").expect("plugins file");
        std::fs::write(dir.join("advanced.config"), "[].\n").expect("advanced config");
        std::fs::write(dir.join("rabbitmq-env.conf"), "").expect("env file");
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!(
                "listeners.tcp.default = 127.0.0.1:{port}\n\
                 loopback_users.guest = true\n\
                 log.console = false\n\
                 log.file.level = warning\n"
            ),
        )
        .expect("broker config");
        let mut this = Self {
            amqp_url: format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
            port,
            nodename: format!("stockmesh-t{short}@localhost"),
            dir,
            epmd_port,
            dist_port,
            sbin,
            server: None,
        };
        let out = std::fs::File::create(this.dir.join("server.out")).expect("server log");
        let err = out.try_clone().expect("server log");
        let mut command = Command::new(this.sbin.join("rabbitmq-server"));
        this.env(&mut command);
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("rabbitmq-server starts");
        this.server = Some(child);
        let deadline = Instant::now() + Duration::from_secs(90);
        while !port_open(port) {
            let exited = this
                .server
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() > deadline {
                let log = std::fs::read_to_string(this.dir.join("server.out")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                panic!(
                    "private RabbitMQ did not start ({exited:?}):\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        this.ctl(&["await_startup"]);
        this
    }

    fn env(&self, command: &mut Command) {
        let d = |name: &str| self.dir.join(name);
        command
            .env("HOME", d("home"))
            .env("RABBITMQ_NODENAME", &self.nodename)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("ERL_EPMD_PORT", self.epmd_port.to_string())
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_MNESIA_BASE", d("mnesia"))
            .env("RABBITMQ_LOG_BASE", d("log"))
            .env("RABBITMQ_PID_FILE", d("rabbit.pid"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d("enabled_plugins"))
            .env("RABBITMQ_CONFIG_FILE", d("rabbitmq"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", d("advanced.config"))
            .env("RABBITMQ_CONF_ENV_FILE", d("rabbitmq-env.conf"))
            .env("ERL_CRASH_DUMP", d("erl_crash.dump"))
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            );
    }

    /// Runs `rabbitmqctl -q ARGS` against this node; panics if it fails.
    fn ctl(&self, args: &[&str]) -> String {
        let mut command = Command::new(self.sbin.join("rabbitmqctl"));
        self.env(&mut command);
        let output = command
            .arg("-q")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("rabbitmqctl runs");
        assert!(
            output.status.success(),
            "rabbitmqctl {args:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// `rabbitmqctl ARGS` on a blocking thread.
    pub async fn rabbitmqctl(&self, args: &[&str]) -> String {
        let mut command = Command::new(self.sbin.join("rabbitmqctl"));
        self.env(&mut command);
        command.arg("-q").args(args).stdin(Stdio::null());
        let label = format!("{args:?}");
        let output = tokio::task::spawn_blocking(move || command.output())
            .await
            .expect("rabbitmqctl thread")
            .expect("rabbitmqctl runs");
        assert!(
            output.status.success(),
            "rabbitmqctl {label} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Stops the RabbitMQ application (the Erlang node stays up): every
    /// client connection is closed by the broker and the port refuses new
    /// ones, as during a broker restart.
    pub async fn stop_app(&self) {
        self.rabbitmqctl(&["stop_app"]).await;
    }

    /// Starts the application again; returns once it accepts connections.
    pub async fn start_app(&self) {
        self.rabbitmqctl(&["start_app"]).await;
        self.rabbitmqctl(&["await_startup"]).await;
    }

    /// Raises a memory alarm (the broker blocks every publishing
    /// connection: `connection.blocked`) or clears it.
    pub async fn memory_alarm(&self, on: bool) {
        // An absolute watermark of 1 byte is always exceeded; 0.4 is the default.
        let args: &[&str] = if on {
            &["set_vm_memory_high_watermark", "absolute", "1"]
        } else {
            &["set_vm_memory_high_watermark", "0.4"]
        };
        self.rabbitmqctl(args).await;
    }

    fn beam_pid(&self) -> i32 {
        let text = std::fs::read_to_string(self.dir.join("rabbit.pid")).expect("broker pid file");
        text.trim().parse().expect("a pid in the broker's pid file")
    }

    /// SIGSTOP the node: connections stay open but nothing is answered.
    pub fn freeze(&self) {
        signal(self.beam_pid(), libc_sig::SIGSTOP);
    }

    /// SIGCONT the node after [`freeze`](Self::freeze).
    pub fn thaw(&self) {
        signal(self.beam_pid(), libc_sig::SIGCONT);
    }

    /// The node's directory (logs under `log/`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

mod libc_sig {
    pub const SIGKILL: i32 = 9;
    pub const SIGCONT: i32 = 18;
    pub const SIGSTOP: i32 = 19;
}

unsafe extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) on the node this value started.
    let rc = unsafe { kill(pid, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("rabbit.pid"))
            .map(|t| t.trim().parse::<i32>().unwrap_or(0))
            && pid > 0
        {
            // A frozen node cannot stop; nothing of it needs to survive.
            // SAFETY: kill(2) on the node this value started.
            unsafe {
                kill(pid, libc_sig::SIGCONT);
                kill(pid, libc_sig::SIGKILL);
            }
            // Until it is gone its epmd refuses to stop ("living nodes").
            let deadline = Instant::now() + Duration::from_secs(10);
            while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        if let Some(mut child) = self.server.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // The node's own epmd (its port is private to this node): it stops
        // once no node is registered, which takes a moment after the kill.
        let port = self.epmd_port.to_string();
        for _ in 0..50 {
            let _ = Command::new("epmd")
                .args(["-port", &port, "-kill"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let alive = Command::new("epmd")
                .args(["-port", &port, "-names"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|status| status.success());
            if !alive {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
