//! The end-to-end harness: a [`Stack`] of the five real service binaries,
//! started as processes from the target directory, each with its own fresh
//! database, free ports and a log file, against the real test PostgreSQL and
//! RabbitMQ.
//!
//! Isolation on the shared broker: the order binary publishes on the shared
//! `stockmesh.events` exchange, so each stack's notification binary consumes
//! its own queue (`e2e-<uuid>`, bound to `order.*`). Every stack running at
//! the same time sees every stack's events; tests assert only on their own
//! users and orders. The queue and its `.dead` companion are deleted when
//! the stack is dropped, after the processes are stopped.

#![allow(dead_code)]

pub mod balancer;

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use stockmesh_testkit::{TcpProxy, TestDatabase, TestKeys, host_port, infra};
use uuid::Uuid;

/// How long a started binary may take to answer 200 on `/readyz`.
const READY_TIMEOUT: Duration = Duration::from_secs(40);
/// How long a stopped binary may take to exit after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(5);

const ADMIN_EMAIL: &str = "admin@e2e.stockmesh.test";

/// One of the five services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Svc {
    Inventory,
    Product,
    User,
    Order,
    Notification,
}

impl Svc {
    /// Every service, in start order (upstreams first).
    pub const ALL: [Svc; 5] = [
        Svc::Inventory,
        Svc::Product,
        Svc::User,
        Svc::Order,
        Svc::Notification,
    ];

    /// The binary's (and the service's) name.
    pub fn name(self) -> &'static str {
        match self {
            Svc::Inventory => "inventory",
            Svc::Product => "product",
            Svc::User => "user",
            Svc::Order => "order",
            Svc::Notification => "notification",
        }
    }

    fn has_grpc(self) -> bool {
        matches!(self, Svc::Inventory | Svc::Product)
    }
}

/// Every binary the end-to-end tests start: the five services and `loadgen`.
pub const BINARIES: [&str; 7] = [
    "inventory",
    "product",
    "user",
    "order",
    "notification",
    "loadgen",
    "web",
];

/// The directory holding the binaries the tests start, built by this test
/// run itself. The test executable lives in `target/<profile>/deps/`, the
/// binaries in `target/<profile>/`. Under cargo (`CARGO` is set) the whole
/// workspace is built once per test process, with the same flags as
/// `make test`, into this very target directory: `cargo test` builds a
/// package's executables only when that package has integration tests, so a
/// binary without them (`loadgen`) would otherwise be missing on a clean
/// clone, or stale from an earlier build. Fails with a clear message when a
/// binary is still missing.
pub fn binary_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().expect("path of the test executable");
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .unwrap_or_else(|| panic!("unexpected test executable path {}", exe.display()))
            .to_path_buf();
        build_binaries(&dir);
        let missing: Vec<&str> = BINARIES
            .iter()
            .copied()
            .filter(|name| !dir.join(name).is_file())
            .collect();
        assert!(
            missing.is_empty(),
            "binaries {missing:?} not found in {}: run `cargo build --workspace --all-targets` first or use make test",
            dir.display()
        );
        dir
    })
    .clone()
}

/// `cargo build --workspace --all-targets` into the target directory that
/// holds `bin_dir` (same profile, same feature unification as `cargo test
/// --workspace --all-targets`, so nothing already built is rebuilt). A no-op
/// outside cargo, where the binaries must already be there.
fn build_binaries(bin_dir: &Path) {
    let Some(cargo) = std::env::var_os("CARGO") else {
        return;
    };
    let (Some(target_dir), Some(profile_dir)) = (bin_dir.parent(), bin_dir.file_name()) else {
        return;
    };
    let profile = match profile_dir.to_str() {
        Some("debug") => "dev",
        Some(other) => other,
        None => return,
    };
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let status = Command::new(cargo)
        .current_dir(&workspace)
        .args([
            "build",
            "--workspace",
            "--all-targets",
            "--locked",
            "--quiet",
        ])
        .args(["--profile", profile])
        .arg("--target-dir")
        .arg(target_dir)
        .status()
        .expect("run cargo build for the binaries under test");
    assert!(
        status.success(),
        "cargo build --workspace --all-targets failed ({status})"
    );
}

/// `n` distinct free loopback ports, chosen below the kernel's ephemeral
/// range (all bound at once, then released). The kernel hands out ports
/// from that range to outgoing connections and to `bind(0)`: under
/// connection churn (a rolling restart under load, in a parallel test) one
/// of them could take a port released here before the service bound it,
/// and the service exited with "address in use".
pub fn free_ports(n: usize) -> Vec<u16> {
    use std::hash::{BuildHasher, RandomState};
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (floor, ceiling) = (10_000u16, ephemeral_low.max(12_000));
    let random = RandomState::new();
    let mut listeners: Vec<TcpListener> = Vec::with_capacity(n);
    for attempt in 0u64.. {
        if listeners.len() == n {
            break;
        }
        assert!(
            attempt < 10_000,
            "no {n} free ports between {floor} and {ceiling}"
        );
        let port = floor + (random.hash_one(attempt) % u64::from(ceiling - floor)) as u16;
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
            listeners.push(listener);
        }
    }
    listeners
        .iter()
        .map(|l| l.local_addr().expect("bound address").port())
        .collect()
}

unsafe extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}

const SIGTERM: i32 = 15;
const SIGSTOP: i32 = 19;
const SIGCONT: i32 = 18;

/// One service binary: how to start it (kept, so a restart uses the same
/// environment, database, ports and queue) and the running child, if any.
pub struct Process {
    pub svc: Svc,
    binary: PathBuf,
    env: Vec<(String, String)>,
    pub http: SocketAddr,
    pub grpc: Option<SocketAddr>,
    /// stdout and stderr of every run, appended.
    pub log: PathBuf,
    child: Option<Child>,
}

impl Process {
    /// Another process of the same service (same environment, database and
    /// queue) on its own ports, logging to `log`: the new pod of a rollout.
    fn sibling(&self, http: SocketAddr, grpc: Option<SocketAddr>, log: PathBuf) -> Process {
        let env = self
            .env
            .iter()
            .map(|(k, v)| match (k.as_str(), grpc) {
                ("HTTP_ADDR", _) => (k.clone(), http.to_string()),
                ("GRPC_ADDR", Some(grpc)) => (k.clone(), grpc.to_string()),
                _ => (k.clone(), v.clone()),
            })
            .collect();
        Process {
            svc: self.svc,
            binary: self.binary.clone(),
            env,
            http,
            grpc,
            log,
            child: None,
        }
    }

    fn spawn(&mut self) {
        assert!(
            self.child.is_none(),
            "{} is already running",
            self.svc.name()
        );
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", self.log.display()));
        let err = out.try_clone().expect("duplicate the log file handle");
        let mut command = Command::new(&self.binary);
        // Only what the stack sets: nothing leaks in from the test's own
        // environment (DATABASE_URL, HTTP_ADDR, ...).
        command.env_clear();
        if let Some(path) = std::env::var_os("PATH") {
            command.env("PATH", path);
        }
        command
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.binary.display()));
        self.child = Some(child);
    }

    /// The running child's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The exit status if the child has exited (it is then forgotten).
    fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(status)
    }

    /// SIGKILL and reap: no drain, no goodbye to the broker or database.
    pub fn kill_hard(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`): the process freezes with its
    /// sockets open, as a paused container or a stalled node does.
    pub fn freeze(&self, frozen: bool) {
        let Some(pid) = self.pid().and_then(|pid| i32::try_from(pid).ok()) else {
            return;
        };
        // SAFETY: kill(2) on our own child, which has not been reaped yet.
        unsafe { kill(pid, if frozen { SIGSTOP } else { SIGCONT }) };
    }

    /// Sends SIGTERM (the start of a graceful drain); see [`Process::reap`].
    pub fn terminate(&self) {
        let Some(pid) = self.pid().and_then(|pid| i32::try_from(pid).ok()) else {
            return;
        };
        // SAFETY: kill(2) on our own child, which has not been reaped yet
        // (so the pid cannot have been reused).
        unsafe { kill(pid, SIGTERM) };
    }

    /// Waits until `deadline` for the child to exit, then SIGKILLs it.
    pub fn reap(&mut self, deadline: Instant) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        child.wait().ok()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// Extra environment per service, then [`StackBuilder::start`].
#[derive(Default)]
pub struct StackBuilder {
    extra: HashMap<Svc, Vec<(String, String)>>,
    balanced: bool,
    database_proxy: bool,
    broker: Option<String>,
}

/// The balancers in front of one service (see [`StackBuilder::balanced`])
/// and the backend ids of its current process in them.
pub struct Fronts {
    pub http: balancer::Balancer,
    pub grpc: Option<balancer::Balancer>,
    backend: (u64, Option<u64>),
}

impl StackBuilder {
    /// Puts a [`balancer::Balancer`] in front of every service's HTTP and
    /// gRPC port, as a Kubernetes Service is: clients and upstream URLs use
    /// the balancers, which route only to ready processes, so a service can
    /// be rolled ([`Stack::roll`]) under load.
    pub fn balanced(mut self) -> Self {
        self.balanced = true;
        self
    }

    /// Routes every service's database connections through one
    /// [`TcpProxy`] ([`Stack::db_proxy`]), so a test can make the database
    /// refuse connections without touching the shared server.
    pub fn database_through_proxy(mut self) -> Self {
        self.database_proxy = true;
        self
    }

    /// Order and notification use the broker at `amqp_url` (a private
    /// node a test may stop and start) instead of the shared test broker.
    pub fn broker(mut self, amqp_url: &str) -> Self {
        self.broker = Some(amqp_url.to_owned());
        self
    }

    pub fn env(mut self, svc: Svc, name: &str, value: &str) -> Self {
        self.extra
            .entry(svc)
            .or_default()
            .push((name.to_owned(), value.to_owned()));
        self
    }

    /// Creates the databases, starts the five binaries and waits until each
    /// answers 200 on `/readyz`.
    pub async fn start(self) -> Stack {
        let bin_dir = binary_dir();
        let keys = TestKeys::generate();
        let (inventory_db, product_db, user_db, order_db, notification_db) = tokio::join!(
            TestDatabase::create(),
            TestDatabase::create(),
            TestDatabase::create(),
            TestDatabase::create(),
            TestDatabase::create(),
        );
        let dbs: HashMap<Svc, TestDatabase> = [
            (Svc::Inventory, inventory_db),
            (Svc::Product, product_db),
            (Svc::User, user_db),
            (Svc::Order, order_db),
            (Svc::Notification, notification_db),
        ]
        .into_iter()
        .collect();

        let id = Uuid::new_v4().simple().to_string();
        let queue = format!("e2e-{id}");
        let log_dir = std::env::temp_dir().join(format!("stockmesh-e2e-{id}"));
        std::fs::create_dir_all(&log_dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log_dir.display()));

        let mut ports = free_ports(7).into_iter();
        let mut addr = || SocketAddr::from(([127, 0, 0, 1], ports.next().expect("a port")));
        let mut http = HashMap::new();
        let mut grpc = HashMap::new();
        for svc in Svc::ALL {
            http.insert(svc, addr());
            if svc.has_grpc() {
                grpc.insert(svc, addr());
            }
        }
        let admin_password = format!("admin-{id}");
        let amqp = self
            .broker
            .clone()
            .unwrap_or_else(|| infra().amqp_url.clone());

        let db_proxy = if self.database_proxy {
            let (_, port) = host_port(&dbs[&Svc::Inventory].url).expect("database URL has a port");
            Some((TcpProxy::start(([127, 0, 0, 1], port).into()).await, port))
        } else {
            None
        };
        let database_url = |svc: Svc| match &db_proxy {
            Some((proxy, port)) => proxy.url_for(&dbs[&svc].url, *port),
            None => dbs[&svc].url.clone(),
        };
        let mut fronts = HashMap::new();
        if self.balanced {
            for svc in Svc::ALL {
                let http = balancer::Balancer::start().await;
                let grpc = if svc.has_grpc() {
                    Some(balancer::Balancer::start().await)
                } else {
                    None
                };
                fronts.insert(
                    svc,
                    Fronts {
                        http,
                        grpc,
                        backend: (0, None),
                    },
                );
            }
        }
        // Upstreams are reached through their balancers when there are some.
        let grpc_url = |svc: Svc| match fronts.get(&svc).and_then(|f| f.grpc.as_ref()) {
            Some(front) => format!("http://{}", front.front),
            None => format!("http://{}", grpc[&svc]),
        };
        let inventory_url = grpc_url(Svc::Inventory);
        let product_url = grpc_url(Svc::Product);

        let mut procs = HashMap::new();
        for svc in Svc::ALL {
            let mut env: Vec<(&str, String)> = vec![
                ("HTTP_ADDR", http[&svc].to_string()),
                ("DATABASE_URL", database_url(svc)),
                ("DATABASE_MAX_CONNECTIONS", "5".into()),
                ("LOG_FORMAT", "json".into()),
                ("RUST_LOG", "info".into()),
                ("RUST_BACKTRACE", "1".into()),
                ("SHUTDOWN_GRACE_MS", "3000".into()),
            ];
            if let Some(grpc) = grpc.get(&svc) {
                env.push(("GRPC_ADDR", grpc.to_string()));
            }
            if svc != Svc::Inventory {
                env.push(("JWT_PUBLIC_KEY", keys.public_pem.clone()));
            }
            match svc {
                Svc::Inventory => {}
                Svc::User => env.extend([
                    ("JWT_PRIVATE_KEY", keys.private_pem.clone()),
                    // Every test client is 127.0.0.1: the per-client limits
                    // are tested in services/user, not here.
                    ("LOGIN_RATE_PER_CLIENT", "100000".into()),
                    ("REGISTER_RATE_PER_CLIENT", "100000".into()),
                    ("STOCKMESH_ADMIN_EMAIL", ADMIN_EMAIL.into()),
                    ("STOCKMESH_ADMIN_PASSWORD", admin_password.clone()),
                ]),
                Svc::Product => env.extend([
                    ("INVENTORY_GRPC_URL", inventory_url.clone()),
                    ("STOCK_SYNC_INTERVAL_MS", "500".into()),
                ]),
                Svc::Order => env.extend([
                    ("INVENTORY_GRPC_URL", inventory_url.clone()),
                    ("PRODUCT_GRPC_URL", product_url.clone()),
                    ("AMQP_URL", amqp.clone()),
                    ("OUTBOX_POLL_MS", "200".into()),
                ]),
                Svc::Notification => env.extend([
                    ("AMQP_URL", amqp.clone()),
                    ("NOTIFICATION_QUEUE", queue.clone()),
                    ("NOTIFICATION_BINDINGS", "order.*".into()),
                    ("NOTIFICATION_RECONNECT_MAX_MS", "1000".into()),
                ]),
            }
            let mut env: Vec<(String, String)> =
                env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            env.extend(self.extra.get(&svc).cloned().unwrap_or_default());
            procs.insert(
                svc,
                Process {
                    svc,
                    binary: bin_dir.join(svc.name()),
                    env,
                    http: http[&svc],
                    grpc: grpc.get(&svc).copied(),
                    log: log_dir.join(format!("{}.log", svc.name())),
                    child: None,
                },
            );
        }

        // From here on the stack owns everything: a failure below drops it,
        // which stops what was started and prints the logs.
        let mut stack = Stack {
            procs,
            fronts,
            db_proxy: db_proxy.map(|(proxy, _)| proxy),
            rollouts: 0,
            dbs,
            keys,
            queue,
            amqp,
            log_dir,
            admin_password,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .build()
                .expect("HTTP client"),
            started: Instant::now(),
        };
        for svc in Svc::ALL {
            stack.process(svc).spawn();
        }
        for svc in Svc::ALL {
            stack.wait_ready(svc).await;
            stack.enlist(svc).await;
        }
        eprintln!(
            "e2e stack ready in {:?} (logs in {})",
            stack.started.elapsed(),
            stack.log_dir.display()
        );
        stack
    }
}

/// The five running binaries and what they use.
pub struct Stack {
    procs: HashMap<Svc, Process>,
    /// Balancers in front of each service, when built [`StackBuilder::balanced`].
    pub fronts: HashMap<Svc, Fronts>,
    /// The proxy every database connection goes through, when built
    /// [`StackBuilder::database_through_proxy`].
    pub db_proxy: Option<TcpProxy>,
    rollouts: u32,
    /// Each service's own database (dropped after the processes stop).
    pub dbs: HashMap<Svc, TestDatabase>,
    pub keys: TestKeys,
    /// The notification binary's queue on the shared broker.
    pub queue: String,
    /// The broker order and notification use.
    pub amqp: String,
    pub log_dir: PathBuf,
    admin_password: String,
    pub http: reqwest::Client,
    started: Instant,
}

/// An HTTP answer: status, headers, JSON body (`Null` when not JSON).
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Stack {
    /// The bootstrap admin's email and password (for tools like loadgen).
    #[allow(dead_code)]
    pub fn admin_credentials(&self) -> (&'static str, &str) {
        (ADMIN_EMAIL, &self.admin_password)
    }

    pub fn builder() -> StackBuilder {
        StackBuilder::default()
    }

    pub async fn start() -> Stack {
        Self::builder().start().await
    }

    pub fn process(&mut self, svc: Svc) -> &mut Process {
        self.procs
            .get_mut(&svc)
            .expect("every service has a process")
    }

    /// The current process of `svc`, for signals ([`Process::freeze`]).
    pub fn process_ref(&self, svc: Svc) -> &Process {
        &self.procs[&svc]
    }

    /// `path` on the service: through its balancer when it has one.
    pub fn url(&self, svc: Svc, path: &str) -> String {
        match self.fronts.get(&svc) {
            Some(fronts) => format!("http://{}{path}", fronts.http.front),
            None => self.procs[&svc].url(path),
        }
    }

    /// Polls the current process's own `/readyz` until 200; fails at once
    /// if the process exits.
    pub async fn wait_ready(&mut self, svc: Svc) {
        let url = self.procs[&svc].url("/readyz");
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.process(svc).exited() {
                let log = std::fs::read_to_string(&self.procs[&svc].log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                panic!(
                    "{} exited before it was ready: {status}; the end of its log:\n{}",
                    svc.name(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            let ready = self
                .http
                .get(&url)
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|r| r.status() == StatusCode::OK);
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} not ready after {READY_TIMEOUT:?}",
                svc.name()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL `svc`.
    pub fn kill_hard(&mut self, svc: Svc) {
        self.process(svc).kill_hard();
    }

    /// Starts `svc` again with the same environment (database, ports,
    /// queue) and waits until it is ready.
    pub async fn restart(&mut self, svc: Svc) {
        self.process(svc).spawn();
        self.wait_ready(svc).await;
    }

    /// With balancers: adds the current process of `svc` to them and waits
    /// until they route to it.
    async fn enlist(&mut self, svc: Svc) {
        let process = &self.procs[&svc];
        let readyz = process.url("/readyz");
        let (http, grpc) = (process.http, process.grpc);
        let Some(fronts) = self.fronts.get_mut(&svc) else {
            return;
        };
        let http_id = fronts.http.add(http, readyz.clone());
        let grpc_id = match (&fronts.grpc, grpc) {
            (Some(front), Some(addr)) => Some(front.add(addr, readyz)),
            _ => None,
        };
        fronts.backend = (http_id, grpc_id);
        let fronts = &self.fronts[&svc];
        eventually(
            &format!("the balancers to route to {}", svc.name()),
            Duration::from_secs(10),
            || async {
                let http_ready = fronts.http.is_ready(http_id);
                let grpc_ready = match (&fronts.grpc, grpc_id) {
                    (Some(front), Some(id)) => front.is_ready(id),
                    _ => true,
                };
                (http_ready && grpc_ready).then_some(())
            },
        )
        .await;
    }

    /// A rolling update of `svc`, as a Deployment with maxSurge 1 and
    /// maxUnavailable 0 does it (needs [`StackBuilder::balanced`]): a new
    /// process on its own ports, in the balancers once ready; then SIGTERM
    /// to the old one, which must exit 0 within `stop_within`; then the old
    /// backend is forgotten. Returns how long the old process took to exit.
    pub async fn roll(&mut self, svc: Svc, stop_within: Duration) -> Duration {
        assert!(
            self.fronts.contains_key(&svc),
            "roll needs a balanced stack"
        );
        self.rollouts += 1;
        let mut ports = free_ports(2).into_iter();
        let mut next = || SocketAddr::from(([127, 0, 0, 1], ports.next().expect("a port")));
        let http = next();
        let grpc = svc.has_grpc().then(&mut next);
        let log = self
            .log_dir
            .join(format!("{}-{}.log", svc.name(), self.rollouts));
        let mut new = self.procs[&svc].sibling(http, grpc, log);
        new.spawn();
        let mut old = self
            .procs
            .insert(svc, new)
            .expect("every service has a process");
        let old_backend = self.fronts[&svc].backend;
        self.wait_ready(svc).await;
        self.enlist(svc).await;

        let stopping = Instant::now();
        old.terminate();
        let status = old.reap(stopping + stop_within);
        let took = stopping.elapsed();
        assert!(
            status.is_some_and(|s| s.success()),
            "the old {} did not exit cleanly within {stop_within:?}: {status:?}; log:\n{}",
            svc.name(),
            old.log_tail(30)
        );
        let fronts = &self.fronts[&svc];
        fronts.http.remove(old_backend.0);
        if let (Some(front), Some(id)) = (&fronts.grpc, old_backend.1) {
            front.remove(id);
        }
        took
    }

    pub async fn call(
        &self,
        method: Method,
        svc: Svc,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        let mut request = self.http.request(method.clone(), self.url(svc, path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path} on {}: {e}", svc.name()));
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.expect("response body");
        Answer {
            status,
            headers,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }

    /// Registers a new user over HTTP and logs in: `(token, user id)`.
    pub async fn register(&self, name: &str) -> (String, Uuid) {
        let email = format!("{name}-{}@e2e.stockmesh.test", Uuid::new_v4().simple());
        let password = format!("pw-{}", Uuid::new_v4().simple());
        let registered = self
            .call(
                Method::POST,
                Svc::User,
                "/api/users/register",
                None,
                Some(json!({"email": email, "password": password, "name": name})),
            )
            .await;
        assert_eq!(
            registered.status,
            StatusCode::CREATED,
            "register: {}",
            registered.body
        );
        self.login(&email, &password).await
    }

    /// Logs in over HTTP: `(token, user id)`.
    pub async fn login(&self, email: &str, password: &str) -> (String, Uuid) {
        let login = self
            .call(
                Method::POST,
                Svc::User,
                "/api/users/login",
                None,
                Some(json!({"email": email, "password": password})),
            )
            .await;
        assert_eq!(login.status, StatusCode::OK, "login: {}", login.body);
        let token = login.body["token"].as_str().expect("a token").to_owned();
        let id = login.body["user"]["id"]
            .as_str()
            .and_then(|id| id.parse().ok())
            .expect("the user's id");
        (token, id)
    }

    /// The bootstrap admin's token.
    pub async fn admin_token(&self) -> String {
        self.login(ADMIN_EMAIL, &self.admin_password).await.0
    }

    /// Creates a product with `stock` units through product HTTP.
    pub async fn create_product(&self, admin: &str, stock: i64) -> Uuid {
        let created = self
            .call(
                Method::POST,
                Svc::Product,
                "/api/products",
                Some(admin),
                Some(json!({
                    "name": format!("E2E mug {}", Uuid::new_v4().simple()),
                    "description": "end-to-end",
                    "price": {"amount_minor": 1250, "currency": "EUR"},
                    "initial_stock": stock,
                })),
            )
            .await;
        assert_eq!(
            created.status,
            StatusCode::CREATED,
            "create product: {}",
            created.body
        );
        created.body["id"]
            .as_str()
            .and_then(|id| id.parse().ok())
            .expect("the product's id")
    }

    /// The product's stock as product HTTP reports it (`None` while
    /// inventory does not answer).
    pub async fn stock(&self, product: Uuid) -> Option<i64> {
        let answer = self
            .call(
                Method::GET,
                Svc::Product,
                &format!("/api/products/{product}"),
                None,
                None,
            )
            .await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "get product: {}",
            answer.body
        );
        answer.body["stock"].as_i64()
    }

    pub async fn place_order(&self, token: &str, product: Uuid, quantity: i64) -> Answer {
        self.call(
            Method::POST,
            Svc::Order,
            "/api/orders",
            Some(token),
            Some(json!({"product_id": product, "quantity": quantity})),
        )
        .await
    }

    /// The caller's notifications through notification HTTP, newest first.
    pub async fn notifications(&self, token: &str) -> Vec<Value> {
        let answer = self
            .call(
                Method::GET,
                Svc::Notification,
                "/api/notifications?limit=100",
                Some(token),
                None,
            )
            .await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "notifications: {}",
            answer.body
        );
        answer.body["items"]
            .as_array()
            .cloned()
            .expect("a list of notifications")
    }

    /// Messages ready in the notification queue (passive declare on a
    /// direct broker connection).
    pub async fn queue_depth(&self) -> u32 {
        self.depth_of(&self.queue).await
    }

    /// Messages in the notification queue's dead-letter queue.
    pub async fn dead_letter_depth(&self) -> u32 {
        self.depth_of(&format!("{}.dead", self.queue)).await
    }

    async fn depth_of(&self, queue: &str) -> u32 {
        let connection = Connection::connect(&self.amqp, ConnectionProperties::default())
            .await
            .expect("test broker reachable");
        let channel = connection.create_channel().await.expect("channel");
        let state = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("the notification queue exists");
        let _ = connection.close(200, "bye".into()).await;
        state.message_count()
    }

    fn print_logs(&self) {
        for svc in Svc::ALL {
            let process = &self.procs[&svc];
            eprintln!(
                "----- {} (last 40 lines of {}) -----\n{}",
                svc.name(),
                process.log.display(),
                process.log_tail(40)
            );
        }
    }
}

/// Deletes `<queue>` and `<queue>.dead` from the broker at `amqp`.
fn delete_queues(queue: &str, amqp: &str) {
    let name = queue.to_owned();
    let amqp = amqp.to_owned();
    // Drop may run inside a runtime: do the async work on a fresh thread.
    let deleted = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(async {
            let connection = Connection::connect(&amqp, ConnectionProperties::default())
                .await
                .map_err(|e| e.to_string())?;
            let channel = connection
                .create_channel()
                .await
                .map_err(|e| e.to_string())?;
            for name in [name.clone(), format!("{name}.dead")] {
                channel
                    .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                    .await
                    .map_err(|e| format!("{name}: {e}"))?;
            }
            let _ = connection.close(200, "bye".into()).await;
            Ok::<(), String>(())
        })
    })
    .join();
    match deleted {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("warning: e2e queue {queue} not deleted: {e}"),
        Err(_) => eprintln!("warning: e2e queue {queue} not deleted: the thread panicked"),
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // Stop everything first: a live consumer would declare the queue
        // again right after it is deleted.
        for process in self.procs.values() {
            process.terminate();
        }
        let deadline = Instant::now() + STOP_GRACE;
        for process in self.procs.values_mut() {
            process.reap(deadline);
        }
        delete_queues(&self.queue, &self.amqp);
        if std::thread::panicking() {
            self.print_logs();
            eprintln!("e2e logs kept in {}", self.log_dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.log_dir);
        }
    }
}

/// Polls `check` every 100 ms until it returns `Some`, for at most `limit`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
