//! Zero downtime (issue 14), with the five real binaries under load:
//!
//! - a rolling restart of every service, as a Deployment does it (a new
//!   process, ready and in the balancer first, then SIGTERM to the old one)
//!   fails no request: the old process reports not-ready while it keeps
//!   serving for its drain window, and closes its listener only after the
//!   balancer stopped routing to it;
//! - with the database refusing connections for 10 s, every request is
//!   answered (success, or 503 with `Retry-After`), none is refused, and
//!   every process stays ready, answering `/readyz` within a probe's 1 s
//!   timeout while reporting the database as down.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Stack, Svc, eventually};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

/// Concurrent clients of the load.
const WORKERS: usize = 8;

/// The rolled processes' drain window (`SHUTDOWN_DRAIN_MS`).
const DRAIN: Duration = Duration::from_secs(3);

/// What the load's clients send, one kind after the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// POST /api/orders (order → product, inventory over gRPC).
    Order,
    /// GET /api/products/{id} (product → inventory over gRPC).
    Product,
    /// GET /api/users/me.
    Me,
    /// GET /api/notifications.
    Notifications,
}

const KINDS: [Kind; 4] = [Kind::Order, Kind::Product, Kind::Me, Kind::Notifications];

/// How one request ended.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    /// The expected success status.
    Ok,
    /// 503 with a `Retry-After` header: a designed answer during an outage.
    Unavailable,
    /// Anything else: another status, or no answer at all.
    Failed(String),
}

#[derive(Default)]
struct Tally {
    counts: BTreeMap<(Kind, Outcome), u64>,
    /// The first failures, in detail.
    failures: Vec<String>,
}

impl Tally {
    fn failed(&self) -> u64 {
        self.counts
            .iter()
            .filter(|((_, o), _)| matches!(o, Outcome::Failed(_)))
            .map(|(_, n)| n)
            .sum()
    }

    fn count(&self, kind: Kind, outcome: &Outcome) -> u64 {
        self.counts
            .get(&(kind, outcome.clone()))
            .copied()
            .unwrap_or(0)
    }

    fn unavailable(&self) -> u64 {
        KINDS
            .iter()
            .map(|k| self.count(*k, &Outcome::Unavailable))
            .sum()
    }
}

/// Load on the public HTTP APIs until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(stack: &Stack, token: &str, product: Uuid) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Mutex::new(Tally::default()));
        // Half the workers share one keep-alive pool, as a gateway does
        // (connections outlive a backend's readiness); the other half open
        // a connection per request, as many outside clients do (each one
        // placed by the balancer at the moment it opens).
        let pooled = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()
            .expect("HTTP client");
        let fresh = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .pool_max_idle_per_host(0)
            .build()
            .expect("HTTP client");
        let urls: Vec<(Kind, String)> = vec![
            (Kind::Order, stack.url(Svc::Order, "/api/orders")),
            (
                Kind::Product,
                stack.url(Svc::Product, &format!("/api/products/{product}")),
            ),
            (Kind::Me, stack.url(Svc::User, "/api/users/me")),
            (
                Kind::Notifications,
                stack.url(Svc::Notification, "/api/notifications?limit=5"),
            ),
        ];
        let workers = (0..WORKERS)
            .map(|worker| {
                let http = if worker % 2 == 0 { &pooled } else { &fresh };
                let (stop, tally, http, urls) =
                    (stop.clone(), tally.clone(), http.clone(), urls.clone());
                let token = token.to_owned();
                tokio::spawn(async move {
                    let mut i = worker;
                    while !stop.load(Ordering::SeqCst) {
                        let (kind, url) = &urls[i % urls.len()];
                        i += 1;
                        let outcome = request(&http, *kind, url, &token, product).await;
                        let mut tally = tally.lock().unwrap_or_else(|e| e.into_inner());
                        if let Outcome::Failed(why) = &outcome
                            && tally.failures.len() < 20
                        {
                            tally.failures.push(format!("{kind:?} {url}: {why}"));
                        }
                        *tally.counts.entry((*kind, outcome)).or_default() += 1;
                    }
                })
            })
            .collect();
        Self {
            stop,
            tally,
            workers,
        }
    }

    async fn stop(self) -> Tally {
        self.stop.store(true, Ordering::SeqCst);
        for worker in self.workers {
            worker.await.expect("load worker");
        }
        Arc::try_unwrap(self.tally)
            .map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner()))
            .unwrap_or_else(|_| panic!("a load worker still holds the tally"))
    }
}

async fn request(
    http: &reqwest::Client,
    kind: Kind,
    url: &str,
    token: &str,
    product: Uuid,
) -> Outcome {
    let (method, expected, body) = match kind {
        Kind::Order => (
            Method::POST,
            StatusCode::CREATED,
            Some(json!({"product_id": product, "quantity": 1})),
        ),
        _ => (Method::GET, StatusCode::OK, None),
    };
    let mut builder = http.request(method, url).bearer_auth(token);
    if let Some(body) = body {
        builder = builder
            .header("idempotency-key", Uuid::new_v4().to_string())
            .json(&body);
    }
    match builder.send().await {
        Err(err) => Outcome::Failed(format!("no answer: {err:?}")),
        Ok(response) => {
            let status = response.status();
            let retry_after = response.headers().contains_key("retry-after");
            let text = response.text().await.unwrap_or_default();
            if status == expected {
                Outcome::Ok
            } else if status == StatusCode::SERVICE_UNAVAILABLE && retry_after {
                Outcome::Unavailable
            } else {
                Outcome::Failed(format!("{status}: {text}"))
            }
        }
    }
}

fn summary(tally: &Tally) -> String {
    let counts: Vec<String> = tally
        .counts
        .iter()
        .map(|((kind, outcome), n)| format!("{kind:?}/{outcome:?}={n}"))
        .collect();
    format!(
        "{}; first failures: {:#?}",
        counts.join(", "),
        tally.failures
    )
}

/// A shopper's token and a product with stock for the whole test.
async fn shopper_and_product(stack: &Stack) -> (String, Uuid) {
    let (token, _) = stack.register("zdt").await;
    let admin = stack.admin_token().await;
    let product = stack.create_product(&admin, 1_000_000).await;
    (token, product)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_every_service_under_load_fails_no_request() {
    let mut builder = Stack::builder().balanced();
    for svc in Svc::ALL {
        // Slow is not failed: on a loaded test machine (debug builds, two
        // cores shared with other tests) a new process's first database
        // connections can take seconds, which says nothing about rollouts.
        // Pool waits queue instead of becoming 503s, gRPC deadlines and the
        // grace period outlast them; a request stuck on a dead connection
        // would still fail (at the 10 s request timeout).
        builder = builder
            .env(svc, "DATABASE_MAX_CONNECTIONS", "10")
            .env(svc, "DATABASE_ACQUIRE_TIMEOUT_MS", "8000")
            .env(svc, "SHUTDOWN_GRACE_MS", "12000")
            // The window must let every keep-alive connection in use carry
            // one response with `Connection: close`; on a machine this
            // loaded a request can take a second, so 1 s is too short here
            // (Kubernetes gets 5 s from the chart and the operator).
            .env(svc, "SHUTDOWN_DRAIN_MS", &DRAIN.as_millis().to_string());
    }
    for svc in [Svc::Product, Svc::Order] {
        builder =
            builder
                .env(svc, "INVENTORY_TIMEOUT_MS", "8000")
                .env(svc, "PRODUCT_TIMEOUT_MS", "8000");
    }
    let mut stack = builder.start().await;
    let (token, product) = shopper_and_product(&stack).await;
    let load = Load::start(&stack, &token, product);
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Upstreams first, as a release usually rolls; each one while the
    // others' traffic (and its own callers' gRPC) keeps flowing.
    let mut stops = Vec::new();
    for svc in Svc::ALL {
        // Drain + grace (12 s) + exit.
        let took = stack.roll(svc, DRAIN + Duration::from_secs(15)).await;
        stops.push((svc.name(), took));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let tally = load.stop().await;
    eprintln!("rolled: {stops:?}; load: {}", summary(&tally));

    assert_eq!(tally.failed(), 0, "{}", summary(&tally));
    assert_eq!(tally.unavailable(), 0, "{}", summary(&tally));
    for kind in KINDS {
        assert!(
            tally.count(kind, &Outcome::Ok) >= 20,
            "{kind:?} was exercised: {}",
            summary(&tally)
        );
    }
    for (svc, fronts) in &stack.fronts {
        assert_eq!(
            fronts.http.dropped_total(),
            0,
            "{}: HTTP connections the balancer could not place",
            svc.name()
        );
        if let Some(grpc) = &fronts.grpc {
            assert_eq!(
                grpc.dropped_total(),
                0,
                "{}: gRPC connections the balancer could not place",
                svc.name()
            );
        }
    }
    // Each old process drained before it stopped.
    for (svc, took) in &stops {
        assert!(
            *took >= DRAIN - Duration::from_millis(100),
            "{svc} stopped after {took:?}, before its drain window ended"
        );
    }
    // Still whole after the rollout: a new order is confirmed.
    let placed = stack.place_order(&token, product, 1).await;
    assert_eq!(placed.status, StatusCode::CREATED, "{}", placed.body);
}

/// One `/readyz` answer, as a probe sees it.
struct Probe {
    svc: Svc,
    status: Option<StatusCode>,
    took: Duration,
    body: Value,
}

async fn probe(http: &reqwest::Client, stack: &Stack, svc: Svc) -> Probe {
    let start = Instant::now();
    let answer = http.get(stack.url(svc, "/readyz")).send().await;
    let took = start.elapsed();
    match answer {
        Ok(response) => {
            let status = response.status();
            let body = response.json().await.unwrap_or(Value::Null);
            Probe {
                svc,
                status: Some(status),
                took,
                body,
            }
        }
        Err(_) => Probe {
            svc,
            status: None,
            took,
            body: Value::Null,
        },
    }
}

fn database_ok(body: &Value) -> Option<bool> {
    body["checks"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == "database")?["ok"]
        .as_bool()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_database_stopped_every_request_is_answered_and_every_process_stays_ready() {
    let mut builder = Stack::builder().database_through_proxy();
    for svc in Svc::ALL {
        // As the chart and the operator set it.
        builder = builder.env(svc, "DATABASE_ACQUIRE_TIMEOUT_MS", "1000");
    }
    let stack = builder.start().await;
    let (token, product) = shopper_and_product(&stack).await;
    let proxy = stack.db_proxy.as_ref().expect("a database proxy");

    let load = Load::start(&stack, &token, product);
    tokio::time::sleep(Duration::from_secs(2)).await;

    proxy.cut();
    let outage = Instant::now();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .expect("HTTP client");
    let mut probes = Vec::new();
    while outage.elapsed() < Duration::from_secs(10) {
        for svc in Svc::ALL {
            probes.push(probe(&http, &stack, svc).await);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    proxy.restore();

    // Back to normal: orders are confirmed again.
    eventually(
        "orders to succeed again",
        Duration::from_secs(30),
        || async {
            let placed = stack.place_order(&token, product, 1).await;
            (placed.status == StatusCode::CREATED).then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let tally = load.stop().await;
    eprintln!("load: {}", summary(&tally));

    assert_eq!(tally.failed(), 0, "{}", summary(&tally));
    assert!(
        tally.unavailable() >= 10,
        "the outage was felt (503 + Retry-After): {}",
        summary(&tally)
    );
    for probe in &probes {
        assert_eq!(
            probe.status,
            Some(StatusCode::OK),
            "{} /readyz during the outage: {}",
            probe.svc.name(),
            probe.body
        );
        assert!(
            probe.took < Duration::from_secs(1),
            "{} /readyz took {:?}",
            probe.svc.name(),
            probe.took
        );
    }
    for svc in Svc::ALL {
        let reported_down = probes
            .iter()
            .filter(|p| p.svc == svc)
            .any(|p| database_ok(&p.body) == Some(false));
        assert!(
            reported_down,
            "{} reported the database down in /readyz",
            svc.name()
        );
    }
}
