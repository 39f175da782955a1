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
//! `--mode live` measures live notifications instead: each shopper holds a
//! server-sent event stream (spread over the notification replicas given)
//! and each order's 201 is timed to its event on the stream;
//! `--mode idle-streams` holds many idle streams open (see `live.rs`).
//!
//! `loadgen --smoke` is no load at all: one pass through every service
//! (readiness, login, product, order, notification, stock) with a line per
//! step and exit 0 only if all pass; the chart's `helm test` pod runs it
//! (see `smoke.rs`).

mod api;
mod config;
mod live;
mod report;
mod smoke;

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
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
    /// `--mode live`: pairs orders with their events.
    matcher: Arc<std::sync::Mutex<live::Matcher>>,
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
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
    if options.mode == Mode::IdleStreams {
        return idle_streams(api, &run_id, options).await;
    }
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
        matcher: Arc::new(std::sync::Mutex::new(live::Matcher::new(
            options.live_timeout,
        ))),
    });
    let stream_urls = stream_urls(&options, &shared.api);
    let live = if options.mode == Mode::Live {
        Some(open_live_streams(&shared, &stream_urls).await?)
    } else {
        None
    };

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
    if let Some((streams, sweeper, _)) = &live {
        // The last orders' events: wait for them up to the timeout.
        let give_up = Instant::now() + options.live_timeout;
        while lock(&shared.matcher).pending() > 0 && Instant::now() < give_up {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        sweeper.abort();
        for stream in streams {
            stream.abort();
        }
        lock(&shared.matcher).finish();
    }
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
    let mut table = stats.table(elapsed);
    let settings = json!({
        "base_url": options.base_url, "mode": format!("{:?}", options.mode),
        "concurrency": options.concurrency, "rate": options.rate,
        "duration_seconds": options.duration.as_secs_f64(), "requests": options.requests,
        "users": options.users, "products": options.products,
    });
    let mut report: Value = stats.json(elapsed, settings);
    let mut failures = stats.error_count();
    if let Some((streams, _, counters)) = &live {
        let matcher = lock(&shared.matcher);
        table.push_str(&matcher.table_line(counters, streams.len()));
        report["live_notification"] = matcher.json(counters, streams.len(), &stream_urls);
        failures += matcher.missing();
    }
    println!("{table}");
    write_report(&options, &report)?;
    Ok(failures)
}

fn write_report(options: &Options, report: &Value) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(report)?;
    if let Some(path) = &options.json {
        std::fs::write(path, &text)?;
        eprintln!("loadgen: report written to {path}");
    } else {
        println!("{text}");
    }
    Ok(())
}

/// The notification base URLs streams connect to, round-robin.
fn stream_urls(options: &Options, api: &Api) -> Vec<String> {
    if options.notification_urls.is_empty() {
        vec![api.notifications.clone()]
    } else {
        options.notification_urls.clone()
    }
}

type LiveStreams = (
    Vec<tokio::task::JoinHandle<()>>,
    tokio::task::JoinHandle<()>,
    Arc<live::StreamCounters>,
);

/// `--mode live`: one stream per shopper, round-robin over `urls`; returns
/// once every stream said `ready` (an error if one did not), with the
/// streams' tasks, the task expiring overdue orders and the counters.
async fn open_live_streams(shared: &Arc<Shared>, urls: &[String]) -> anyhow::Result<LiveStreams> {
    let http = live::stream_client()?;
    let counters = Arc::new(live::StreamCounters::default());
    let mut tasks = Vec::new();
    let mut waiting = Vec::new();
    for n in 0..shared.shoppers.len() {
        let (ready, is_ready) = tokio::sync::oneshot::channel();
        let shared2 = shared.clone();
        tasks.push(tokio::spawn(live::follow(
            http.clone(),
            urls[n % urls.len()].clone(),
            move || shared2.shoppers[n].token(),
            shared.matcher.clone(),
            counters.clone(),
            ready,
        )));
        waiting.push(is_ready);
    }
    let opened = async {
        for (n, is_ready) in waiting.into_iter().enumerate() {
            match is_ready.await {
                Ok(Ok(())) => {}
                Ok(Err(failed)) => {
                    anyhow::bail!("live stream of shopper {n} did not open: {}", failed.reason)
                }
                Err(_) => anyhow::bail!("live stream of shopper {n} stopped"),
            }
        }
        Ok(())
    };
    let result = match tokio::time::timeout(Duration::from_secs(30), opened).await {
        Ok(result) => result,
        Err(_) => Err(anyhow::anyhow!("live streams not ready within 30 s")),
    };
    if let Err(err) = result {
        for task in tasks {
            task.abort();
        }
        return Err(err);
    }
    eprintln!(
        "loadgen: {} live streams ready over {} notification URL(s)",
        tasks.len(),
        urls.len()
    );
    let matcher = shared.matcher.clone();
    let sweeper = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            lock(&matcher).expire(Instant::now());
        }
    });
    Ok((tasks, sweeper, counters))
}

/// `--mode idle-streams`: registers the shoppers, opens `--streams`
/// streams spread over them and the URLs (at most 64 connecting at once),
/// prints `loadgen: streams open` once every stream got `ready` or failed,
/// holds them for `--hold`, then reports. Failures: streams that never got
/// `ready` plus those that closed early.
async fn idle_streams(api: Api, run_id: &str, options: Options) -> anyhow::Result<u64> {
    let urls = stream_urls(&options, &api);
    eprintln!(
        "loadgen: preparing {} shoppers for {} idle streams over {} URL(s)",
        options.users,
        options.streams,
        urls.len()
    );
    let mut tokens = Vec::new();
    for n in 0..options.users {
        tokens.push(api.shopper(run_id, n).await?.0.token);
    }
    let http = live::stream_client()?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let connecting = Arc::new(tokio::sync::Semaphore::new(64));
    let started = Instant::now();
    let mut tasks = Vec::new();
    let mut waiting = Vec::new();
    for n in 0..options.streams {
        let (ready, is_ready) = tokio::sync::oneshot::channel();
        let permit = connecting.clone().acquire_owned().await?;
        let (http, url) = (http.clone(), urls[n % urls.len()].clone());
        let (token, stopped) = (tokens[n % tokens.len()].clone(), stopped.clone());
        let (relay, relayed) = tokio::sync::oneshot::channel();
        tasks.push(tokio::spawn(live::hold(http, url, token, relay, stopped)));
        // The permit is given back once this stream is ready (or failed).
        tokio::spawn(async move {
            let outcome = relayed.await.unwrap_or((Duration::ZERO, Err(0)));
            drop(permit);
            let _ = ready.send(outcome);
        });
        waiting.push(is_ready);
    }
    let mut stats = Stats::new();
    let mut ready = 0usize;
    for is_ready in waiting {
        let (took, outcome) = is_ready.await.unwrap_or((Duration::ZERO, Err(0)));
        let status = match outcome {
            Ok(()) => {
                ready += 1;
                Ok(200)
            }
            Err(0) => Err(()),
            Err(status) => Ok(status),
        };
        stats.record("stream", took, status, &[200]);
    }
    let opening = started.elapsed();
    eprintln!(
        "loadgen: streams open ({ready} of {} ready in {:.1} s); holding {:.1} s",
        options.streams,
        opening.as_secs_f64(),
        options.hold.as_secs_f64()
    );
    tokio::time::sleep(options.hold).await;
    let _ = stop.send(true);
    let mut open = 0usize;
    let mut closed = 0usize;
    let mut first_failure = None;
    for task in tasks {
        match task.await {
            Ok(live::Held::Open) => open += 1,
            Ok(live::Held::Closed) => closed += 1,
            Ok(live::Held::Failed(failed)) => {
                first_failure.get_or_insert(failed.reason);
            }
            Err(_) => {}
        }
    }
    if let Some(reason) = first_failure {
        eprintln!("loadgen: a stream that did not open: {reason}");
    }
    let mut table = stats.table(opening);
    table.push_str(&format!(
        "idle streams: {} requested, {ready} got `ready`, {open} still open after {:.1} s, {closed} closed early\n",
        options.streams,
        options.hold.as_secs_f64()
    ));
    println!("{table}");
    let settings = json!({
        "base_url": options.base_url, "mode": format!("{:?}", options.mode),
        "users": options.users, "streams": options.streams,
        "hold_seconds": options.hold.as_secs_f64(), "notification_urls": urls,
    });
    let mut report = stats.json(opening, settings);
    report["idle_streams"] = json!({
        "requested": options.streams, "ready": ready, "open_at_end": open,
        "closed_early": closed, "hold_seconds": options.hold.as_secs_f64(),
        "opening_seconds": opening.as_secs_f64(),
    });
    write_report(&options, &report)?;
    Ok((options.streams - open) as u64)
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
        Mode::OrdersOnly | Mode::Live => true,
        // Never here: idle streams send no requests.
        Mode::IdleStreams => return,
        Mode::Mixed { browse, order } => (i % u64::from(browse + order)) >= u64::from(browse),
        Mode::Logins => return one_login(shared, i).await,
    };
    let token = &shared.shoppers[(n as usize) % shared.shoppers.len()].token();
    let product = &shared.products[(i as usize) % shared.products.len()];
    let api = &shared.api;
    let start = Instant::now();
    if is_order {
        let replica = api
            .order_replicas
            .get((i as usize) % api.order_replicas.len().max(1))
            .unwrap_or(&api.orders);
        let url = format!("{replica}/api/orders");
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
        let answered = Instant::now();
        let (status, placed) = match result {
            Ok(response) => {
                let status = response.status().as_u16();
                let body: Value = response.json().await.unwrap_or(Value::Null);
                (Ok(status), PlacedOrder::from_body(&body))
            }
            Err(_) => (Err(()), None),
        };
        finish_span(&span, status);
        shared
            .stats
            .lock()
            .await
            .record("order", took, status, &[201]);
        if shared.options.mode == Mode::Live {
            if let (Ok(201), Some(order)) = (status, &placed) {
                lock(&shared.matcher).placed(&order.id, answered);
            }
            return;
        }
        let count = shared.orders.fetch_add(1, Ordering::Relaxed);
        let every = shared.options.lag_every;
        if let (Some(order), true) = (placed, every > 0 && count.is_multiple_of(every)) {
            let shared2 = shared.clone();
            let token = token.clone();
            let confirmed_at = Instant::now();
            let task = tokio::spawn(async move {
                let lag = notification_lag(&shared2.api, &token, &order, confirmed_at).await;
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
///
/// Looks at the shopper's newest notifications first, and at the next
/// [`DEEPER_PAGE`] only when the first page is full and still newer than the
/// order: under a backlog more than a page of the shopper's later
/// notifications may be stored before this one, and a sampler that only read
/// the first page would never see it. Each look costs at most two requests,
/// and the pause between looks grows with the time already waited (a tenth
/// of it, at least 10 ms): the sampler's load must not grow with the lag it
/// measures, or a lagging pipeline would be buried under its polls.
async fn notification_lag(
    api: &Api,
    token: &str,
    order: &PlacedOrder,
    since: Instant,
) -> Option<Duration> {
    let give_up = since + Duration::from_secs(10);
    while Instant::now() < give_up {
        let mut page = (FIRST_PAGE, 0);
        loop {
            let (limit, offset) = page;
            let Ok(response) = api
                .http
                .get(format!(
                    "{}/api/notifications?limit={limit}&offset={offset}",
                    api.notifications
                ))
                .bearer_auth(token)
                .send()
                .await
            else {
                break;
            };
            let Ok(body) = response.text().await else {
                break;
            };
            if body.contains(&order.id) {
                return Some(since.elapsed());
            }
            if offset > 0 || !older_page_may_hold(&body, limit, order.created_at) {
                break;
            }
            page = (DEEPER_PAGE, FIRST_PAGE);
        }
        tokio::time::sleep(poll_pause(since.elapsed())).await;
    }
    None
}

/// The shopper's newest notifications, where a sampled order's usually is.
const FIRST_PAGE: usize = 20;
/// The next ones, read when the first page is all newer than the order.
const DEEPER_PAGE: usize = 100;

/// Pause before the next look: a tenth of the time waited so far, at least
/// 10 ms (so a lag is measured to within 10 % or 10 ms).
fn poll_pause(waited: Duration) -> Duration {
    (waited / 10).max(Duration::from_millis(10))
}

/// Whether notifications older than this page could still include the
/// order's: the page was full and even its oldest entry is newer than the
/// order (a notification is stored after its order).
fn older_page_may_hold(body: &str, limit: usize, placed: Option<DateTime<Utc>>) -> bool {
    let Some(placed) = placed else {
        return false;
    };
    let Ok(page) = serde_json::from_str::<Value>(body) else {
        return false;
    };
    let Some(items) = page["items"].as_array() else {
        return false;
    };
    items.len() == limit
        && items
            .last()
            .and_then(|oldest| oldest["created_at"].as_str())
            .and_then(|at| DateTime::parse_from_rfc3339(at).ok())
            .is_some_and(|oldest| oldest >= placed)
}

/// What the lag sampler needs of a 201: the order's id and when the
/// service stored it.
struct PlacedOrder {
    id: String,
    created_at: Option<DateTime<Utc>>,
}

impl PlacedOrder {
    fn from_body(body: &Value) -> Option<Self> {
        Some(Self {
            id: body["id"].as_str()?.to_owned(),
            created_at: body["created_at"]
                .as_str()
                .and_then(|at| DateTime::parse_from_rfc3339(at).ok())
                .map(|at| at.with_timezone(&Utc)),
        })
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn page(created: &[&str]) -> String {
        let items: Vec<Value> = created
            .iter()
            .map(|at| json!({"id": "n", "order_id": "other", "created_at": at}))
            .collect();
        json!({"items": items, "total": 1000}).to_string()
    }

    fn at(s: &str) -> Option<DateTime<Utc>> {
        Some(DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc))
    }

    #[test]
    fn a_full_page_newer_than_the_order_sends_the_sampler_further_back() {
        let body = page(&["2026-12-07T10:00:02.5Z", "2026-12-07T10:00:01.25Z"]);
        assert!(older_page_may_hold(&body, 2, at("2026-12-07T10:00:01Z")));
    }

    #[test]
    fn a_page_reaching_back_past_the_order_or_not_full_ends_the_search() {
        let older = page(&["2026-12-07T10:00:02Z", "2026-12-07T10:00:00.5Z"]);
        assert!(!older_page_may_hold(&older, 2, at("2026-12-07T10:00:01Z")));
        let short = page(&["2026-12-07T10:00:02Z"]);
        assert!(!older_page_may_hold(&short, 2, at("2026-12-07T10:00:01Z")));
        assert!(!older_page_may_hold(
            "not json",
            2,
            at("2026-12-07T10:00:01Z")
        ));
        let full = page(&["2026-12-07T10:00:02Z", "2026-12-07T10:00:01.5Z"]);
        assert!(!older_page_may_hold(&full, 2, None));
    }

    #[test]
    fn the_sampler_polls_less_often_the_longer_it_waits() {
        assert_eq!(poll_pause(Duration::ZERO), Duration::from_millis(10));
        assert_eq!(
            poll_pause(Duration::from_millis(80)),
            Duration::from_millis(10)
        );
        assert_eq!(
            poll_pause(Duration::from_secs(1)),
            Duration::from_millis(100)
        );
        assert_eq!(
            poll_pause(Duration::from_secs(5)),
            Duration::from_millis(500)
        );
    }

    #[test]
    fn a_placed_order_is_read_from_its_201() {
        let body = json!({"id": "abc", "created_at": "2026-12-07T10:00:01.123456Z"});
        let placed = PlacedOrder::from_body(&body).unwrap();
        assert_eq!(placed.id, "abc");
        assert_eq!(placed.created_at, at("2026-12-07T10:00:01.123456Z"));
        assert!(PlacedOrder::from_body(&json!({"error": "x"})).is_none());
    }
}
