//! `loadgen`: prepares shoppers and products through the public API (as the
//! admin), then runs a weighted browse/order mix, closed-loop at a fixed
//! concurrency or open-loop at a target rate, and prints a latency table
//! (HDR histograms per operation), errors by status and notification lag
//! (from an order's 201 until its notification is listed), plus a JSON report.
//!
//! With `OTEL_EXPORTER_OTLP_ENDPOINT` set, every request is an HTTP client
//! span exported over OTLP and its W3C context travels in the request
//! headers, so a slow order in the report can be found in Jaeger from the
//! client's side; without it, nothing is traced or sent.
//!
//! `loadgen --smoke` is no load at all: one pass through every service
//! (readiness, login, product, order, notification, stock) with a line per
//! step and exit 0 only if all pass; the chart's `helm test` pod runs it
//! (see `smoke.rs`).

mod api;
mod config;
mod report;
mod smoke;

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use stockmesh_platform::config::{CommonConfig, EnvReader};
use stockmesh_platform::telemetry::{self, Telemetry};
use tokio::sync::Mutex;

use api::{Api, Session};
use config::{Mode, Options};
use report::Stats;

/// A shopper's session; its access token is replaced as it is refreshed.
struct Shopper {
    email: String,
    session: std::sync::RwLock<Session>,
}

impl Shopper {
    fn new(email: String, session: Session) -> Self {
        Self {
            email,
            session: std::sync::RwLock::new(session),
        }
    }

    /// The current session (a poisoned lock still holds a usable one).
    fn session(&self) -> Session {
        match self.session.read() {
            Ok(session) => session.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn token(&self) -> String {
        self.session().token
    }

    fn replace(&self, session: Session) {
        match self.session.write() {
            Ok(mut slot) => *slot = session,
            Err(poisoned) => *poisoned.into_inner() = session,
        }
    }
}

struct Shared {
    api: Api,
    shoppers: Vec<Shopper>,
    products: Vec<String>,
    stats: Mutex<Stats>,
    issued: AtomicU64,
    orders: AtomicU64,
    options: Options,
    lag_tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

fn main() -> ExitCode {
    // Before anything starts: `--help`, `--version` and mistakes are
    // answered by clap (stdout and exit 0, or a readable error and exit 2).
    let options = Options::try_parse_from(std::env::args_os()).unwrap_or_else(|err| err.exit());
    // Named threads: a profile of the machine tells loadgen from the services.
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("loadgen")
        .build()
    {
        Ok(runtime) => runtime.block_on(async {
            let telemetry = init_tracing();
            let code = cli(options).await;
            if let Some(telemetry) = telemetry {
                telemetry.shutdown();
            }
            code
        }),
        Err(err) => {
            eprintln!("loadgen: cannot start the async runtime: {err}");
            ExitCode::from(2)
        }
    }
}

/// Starts span export when `OTEL_EXPORTER_OTLP_ENDPOINT` is set. Unless
/// `RUST_LOG` says otherwise, other crates log at `warn` only (stdout carries
/// the report) while loadgen's own request spans stay enabled.
fn init_tracing() -> Option<Telemetry> {
    std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT")?;
    let mut env = EnvReader::from_env();
    let mut config = CommonConfig::read(&mut env, "loadgen", ([127, 0, 0, 1], 0).into());
    if let Err(err) = env.finish() {
        eprintln!("loadgen: tracing not started: {err}");
        return None;
    }
    if std::env::var_os("RUST_LOG").is_none() {
        config.log_filter = "warn,loadgen=info".to_owned();
    }
    match telemetry::init(&config) {
        Ok(telemetry) => Some(telemetry),
        Err(err) => {
            eprintln!("loadgen: tracing not started: {err:#}");
            None
        }
    }
}

/// An HTTP client span for one request, following the OpenTelemetry HTTP
/// conventions (a no-op when tracing is off).
fn client_span(method: &'static str, route: &'static str, url: &str) -> tracing::Span {
    tracing::info_span!(
        "http.client",
        otel.name = format!("{method} {route}"),
        otel.kind = "client",
        http.request.method = method,
        url.full = url,
        http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        error.type = tracing::field::Empty,
    )
}

/// The W3C trace context (and baggage) of `span`, as request headers.
fn trace_headers(span: &tracing::Span) -> reqwest::header::HeaderMap {
    let mut headers = reqwest::header::HeaderMap::new();
    span.in_scope(|| telemetry::inject_current_context(&mut headers));
    headers
}

/// Records the outcome of a request on its span.
fn finish_span(span: &tracing::Span, status: Result<u16, ()>) {
    match status {
        Ok(code) => {
            span.record("http.response.status_code", code);
            if code >= 500 {
                telemetry::record_error(span, &code.to_string(), "server error");
            }
        }
        Err(()) => telemetry::record_error(span, "transport", "request failed"),
    }
}

async fn cli(options: Options) -> ExitCode {
    if options.smoke {
        return if smoke::run(&options).await {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        };
    }
    match run(options).await {
        Ok(0) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(1),
        Err(err) => {
            eprintln!("loadgen: {err:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs the whole load test; returns the number of failed requests.
async fn run(options: Options) -> anyhow::Result<u64> {
    let api = Api::new(&options.base_url)?;
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    eprintln!(
        "loadgen: preparing {} shoppers and {} products (users at {})",
        options.users, options.products, api.users
    );
    let admin = api
        .login(&options.admin_email, &options.admin_password)
        .await?
        .token;
    let mut products = Vec::new();
    for n in 0..options.products {
        products.push(
            api.product(&admin, &format!("loadgen {run_id} #{n}"), options.stock)
                .await?,
        );
    }
    let mut shoppers = Vec::new();
    for n in 0..options.users {
        let (session, _id, email) = api.shopper(&run_id, n).await?;
        shoppers.push(Shopper::new(email, session));
    }
    let shared = Arc::new(Shared {
        api,
        shoppers,
        products,
        stats: Mutex::new(Stats::new()),
        issued: AtomicU64::new(0),
        orders: AtomicU64::new(0),
        options: options.clone(),
        lag_tasks: Mutex::new(Vec::new()),
    });

    // Printed even with --quiet: `make profile` starts sampling on it.
    eprintln!("loadgen: running");
    let started = Instant::now();
    let deadline = started + options.duration;
    let progress = (!options.quiet).then(|| tokio::spawn(progress_line(shared.clone(), started)));
    let refresher = tokio::spawn(keep_sessions_fresh(shared.clone()));
    match options.rate {
        None => {
            let workers: Vec<_> = (0..options.concurrency)
                .map(|w| {
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        let mut n = w as u64;
                        while let Some(i) = next(&shared, deadline) {
                            one_request(&shared, i, n).await;
                            n += 1;
                        }
                    })
                })
                .collect();
            for worker in workers {
                let _ = worker.await;
            }
        }
        Some(rate) => {
            // Open loop: start requests on a fixed schedule, whatever the latency.
            let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut in_flight = Vec::new();
            let mut n = 0u64;
            while let Some(i) = next(&shared, deadline) {
                ticker.tick().await;
                let shared = shared.clone();
                in_flight.push(tokio::spawn(
                    async move { one_request(&shared, i, n).await },
                ));
                n += 1;
            }
            for task in in_flight {
                let _ = task.await;
            }
        }
    }
    let elapsed = started.elapsed();
    refresher.abort();
    let lag_tasks = std::mem::take(&mut *shared.lag_tasks.lock().await);
    for task in lag_tasks {
        let _ = task.await;
    }
    if let Some(progress) = progress {
        progress.abort();
        eprintln!();
    }
    let stats = shared.stats.lock().await;
    println!("{}", stats.table(elapsed));
    let settings = json!({
        "base_url": options.base_url, "mode": format!("{:?}", options.mode),
        "concurrency": options.concurrency, "rate": options.rate,
        "duration_seconds": options.duration.as_secs_f64(), "requests": options.requests,
        "users": options.users, "products": options.products,
    });
    let report: Value = stats.json(elapsed, settings);
    let text = serde_json::to_string_pretty(&report)?;
    if let Some(path) = &options.json {
        std::fs::write(path, &text)?;
        eprintln!("loadgen: report written to {path}");
    } else {
        println!("{text}");
    }
    Ok(stats.error_count())
}

/// The next request number, or `None` when the run is over.
fn next(shared: &Shared, deadline: Instant) -> Option<u64> {
    if shared.options.requests.is_none() && Instant::now() >= deadline {
        return None;
    }
    let i = shared.issued.fetch_add(1, Ordering::Relaxed);
    match shared.options.requests {
        Some(limit) if i >= limit => None,
        _ => Some(i),
    }
}

async fn one_request(shared: &Arc<Shared>, i: u64, n: u64) {
    let is_order = match shared.options.mode {
        Mode::OrdersOnly => true,
        Mode::Mixed { browse, order } => (i % u64::from(browse + order)) >= u64::from(browse),
        Mode::Logins => return one_login(shared, i).await,
    };
    let token = &shared.shoppers[(n as usize) % shared.shoppers.len()].token();
    let product = &shared.products[(i as usize) % shared.products.len()];
    let api = &shared.api;
    let start = Instant::now();
    if is_order {
        let url = format!("{}/api/orders", api.orders);
        let span = client_span("POST", "/api/orders", &url);
        let result = api
            .http
            .post(url)
            .headers(trace_headers(&span))
            .bearer_auth(token)
            .json(&json!({"product_id": product, "quantity": 1}))
            .send()
            .await;
        let took = start.elapsed();
        let (status, order_id) = match result {
            Ok(response) => {
                let status = response.status().as_u16();
                let body: Value = response.json().await.unwrap_or(Value::Null);
                (Ok(status), body["id"].as_str().map(str::to_owned))
            }
            Err(_) => (Err(()), None),
        };
        finish_span(&span, status);
        shared
            .stats
            .lock()
            .await
            .record("order", took, status, &[201]);
        let count = shared.orders.fetch_add(1, Ordering::Relaxed);
        let every = shared.options.lag_every;
        if let (Some(order_id), true) = (order_id, every > 0 && count.is_multiple_of(every)) {
            let shared2 = shared.clone();
            let token = token.clone();
            let confirmed_at = Instant::now();
            let task = tokio::spawn(async move {
                let lag = notification_lag(&shared2.api, &token, &order_id, confirmed_at).await;
                shared2.stats.lock().await.record_lag(lag);
            });
            shared.lag_tasks.lock().await.push(task);
        }
    } else {
        let (route, path) = if i.is_multiple_of(2) {
            ("/api/products", "/api/products?limit=20".to_owned())
        } else {
            ("/api/products/{id}", format!("/api/products/{product}"))
        };
        let url = format!("{}{path}", api.products);
        let span = client_span("GET", route, &url);
        let result = api.http.get(url).headers(trace_headers(&span)).send().await;
        let took = start.elapsed();
        let status = match result {
            Ok(response) => {
                let status = response.status().as_u16();
                let _ = response.bytes().await;
                Ok(status)
            }
            Err(_) => Err(()),
        };
        finish_span(&span, status);
        shared
            .stats
            .lock()
            .await
            .record("browse", took, status, &[200]);
    }
}

/// One shopper logs in (the shoppers take turns). The sessions it opens
/// are left to expire.
async fn one_login(shared: &Arc<Shared>, i: u64) {
    let shopper = &shared.shoppers[(i as usize) % shared.shoppers.len()];
    let api = &shared.api;
    let url = format!("{}/api/users/login", api.users);
    let span = client_span("POST", "/api/users/login", &url);
    let start = Instant::now();
    let result = api
        .http
        .post(url)
        .headers(trace_headers(&span))
        .json(&json!({"email": shopper.email, "password": api::SHOPPER_PASSWORD}))
        .send()
        .await;
    let took = start.elapsed();
    let status = match result {
        Ok(response) => {
            let status = response.status().as_u16();
            let _ = response.bytes().await;
            Ok(status)
        }
        Err(_) => Err(()),
    };
    finish_span(&span, status);
    shared
        .stats
        .lock()
        .await
        .record("login", took, status, &[200]);
}

/// Refreshes each shopper's session half-way through its access token's
/// life, for runs longer than that life. A failed refresh is reported and
/// retried on the next pass; the shopper's requests then fail with 401
/// once the old token expires, which the report shows.
async fn keep_sessions_fresh(shared: Arc<Shared>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = chrono::Utc::now();
        for shopper in &shared.shoppers {
            let session = shopper.session();
            if session.refresh_at > now {
                continue;
            }
            match shared.api.refresh(&session).await {
                Ok(fresh) => shopper.replace(fresh),
                Err(err) => eprintln!("loadgen: {err:#}"),
            }
        }
    }
}

/// Time from the order's 201 until its notification is listed (None after 10 s).
async fn notification_lag(
    api: &Api,
    token: &str,
    order_id: &str,
    since: Instant,
) -> Option<Duration> {
    let give_up = since + Duration::from_secs(10);
    while Instant::now() < give_up {
        if let Ok(response) = api
            .http
            // Newest first: the order's notification is among the user's
            // latest few; a small page keeps the measurement light.
            .get(format!("{}/api/notifications?limit=20", api.notifications))
            .bearer_auth(token)
            .send()
            .await
            && let Ok(body) = response.text().await
            && body.contains(order_id)
        {
            return Some(since.elapsed());
        }
        // Light polling: the measurement must not become the load.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

async fn progress_line(shared: Arc<Shared>, started: Instant) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let stats = shared.stats.lock().await;
        let done = stats.total();
        let errors = stats.error_count();
        drop(stats);
        let secs = started.elapsed().as_secs_f64().max(1e-9);
        eprint!(
            "\r  {:>6.1}s  {:>8} requests  {:>8.1}/s  {:>6} errors",
            secs,
            done,
            done as f64 / secs,
            errors
        );
        let _ = std::io::stderr().flush();
    }
}
