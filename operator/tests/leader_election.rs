//! High availability (issue 16, item 4) against the mocked API server: two
//! operators campaign for one `coordination.k8s.io` Lease; only the holder
//! sends anything but Lease requests (no reads, no writes from the other),
//! and when the leader is killed the other takes over within the lease
//! duration plus the library's short random pause. A leader whose Lease is
//! taken away, or whose renewal fails, stops at once.
//!
//! Real time with a 2 s lease: kube-lease-manager compares lease times with
//! the system clock (`SystemTime`), which tokio's paused time does not move.
//!
//! Each operator gets its own client: Lease requests are answered by a small
//! Lease server here (server-side apply conflicts by field manager,
//! strategic merge patches, `null` removing a field — what the library
//! relies on); every other request is recorded with the operator's name and
//! forwarded to the shared fake API server of `common`.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Fake, NS, cr_collection, system};
use http::{Method, Request, Response, StatusCode};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use stockmesh_operator::controller::Context;
use stockmesh_operator::leader::{self, Election, Outcome};
use stockmesh_operator::metrics::Metrics;
use stockmesh_operator::rbac;
use stockmesh_operator::runner::{self, Scope};
use stockmesh_operator::server::{self, AppState};
use tower::ServiceExt as _;

const LEASE: &str = "stockmesh-operator";
const LEASE_SECONDS: u64 = 6;
const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/";

/// One request an operator sent.
#[derive(Clone, Debug)]
struct Sent {
    operator: String,
    at: Instant,
    method: String,
    path: String,
}

impl Sent {
    fn is_lease(&self) -> bool {
        self.path.starts_with("/apis/coordination.k8s.io/")
    }
    fn is_write(&self) -> bool {
        self.method != "GET"
    }
}

/// The Lease server's state.
#[derive(Default)]
struct Leases {
    lease: Option<Value>,
    /// spec field -> field manager that owns it (apply or update).
    owners: BTreeMap<String, String>,
    /// Answer every Lease PATCH with 503 (an API server that went away).
    fail_patches: bool,
    rbac_violations: Vec<String>,
    version: u64,
}

fn status(code: StatusCode, reason: &str, message: &str) -> (StatusCode, Value) {
    (
        code,
        json!({"apiVersion": "v1", "kind": "Status", "metadata": {},
               "status": if code.is_success() { "Success" } else { "Failure" },
               "reason": reason, "message": message, "code": code.as_u16()}),
    )
}

fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

impl Leases {
    fn handle(
        &mut self,
        method: &Method,
        path: &str,
        query: &str,
        content_type: &str,
        body: &[u8],
    ) -> (StatusCode, Value) {
        let verb = match *method {
            Method::GET => "get",
            Method::POST => "create",
            Method::PATCH => "patch",
            Method::PUT => "update",
            Method::DELETE => "delete",
            _ => "other",
        };
        if !rbac::lease_allows("coordination.k8s.io", "leases", verb) {
            self.rbac_violations.push(format!("{verb} {path}"));
        }
        let collection = format!("{LEASES}{NS}/leases");
        let named = format!("{collection}/{LEASE}");
        self.version += 1;
        let rv = self.version.to_string();
        match (method.clone(), path) {
            (Method::GET, p) if p == named => match &self.lease {
                Some(lease) => (StatusCode::OK, lease.clone()),
                None => status(StatusCode::NOT_FOUND, "NotFound", "no such lease"),
            },
            (Method::POST, p) if p == collection => {
                if self.lease.is_some() {
                    return status(StatusCode::CONFLICT, "AlreadyExists", "lease exists");
                }
                let mut lease: Value = serde_json::from_slice(body).unwrap_or(json!({}));
                lease["apiVersion"] = json!("coordination.k8s.io/v1");
                lease["kind"] = json!("Lease");
                lease["metadata"]["namespace"] = json!(NS);
                lease["metadata"]["resourceVersion"] = json!(rv);
                if lease.get("spec").is_none_or(Value::is_null) {
                    lease["spec"] = json!({});
                }
                self.lease = Some(lease.clone());
                (StatusCode::CREATED, lease)
            }
            (Method::PATCH, p) if p == named => {
                if self.fail_patches {
                    return status(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "ServiceUnavailable",
                        "the test's API server is away",
                    );
                }
                let manager = query_param(query, "fieldManager")
                    .unwrap_or("unknown")
                    .to_owned();
                let patch: Value = serde_json::from_slice(body).unwrap_or(json!({}));
                let Some(lease) = self.lease.as_mut() else {
                    return status(StatusCode::NOT_FOUND, "NotFound", "no such lease");
                };
                let changes = patch["spec"].as_object().cloned().unwrap_or_default();
                if content_type.starts_with("application/apply-patch") {
                    // Server-side apply: a field another manager owns with
                    // another value is a conflict (no force).
                    for (field, value) in &changes {
                        if let Some(owner) = self.owners.get(field)
                            && owner != &manager
                            && lease["spec"].get(field) != Some(value)
                        {
                            return status(
                                StatusCode::CONFLICT,
                                "Conflict",
                                &format!(
                                    "Apply failed with 1 conflict: conflict with \"{owner}\": .spec.{field}"
                                ),
                            );
                        }
                    }
                    for (field, value) in changes {
                        lease["spec"][&field] = value;
                        self.owners.insert(field, manager.clone());
                    }
                } else {
                    // Strategic merge patch (an update): `null` removes.
                    let update = format!("{manager} (update)");
                    for (field, value) in changes {
                        if value.is_null() {
                            if let Some(spec) = lease["spec"].as_object_mut() {
                                spec.remove(&field);
                            }
                            self.owners.remove(&field);
                        } else {
                            lease["spec"][&field] = value;
                            self.owners.insert(field, update.clone());
                        }
                    }
                }
                lease["metadata"]["resourceVersion"] = json!(rv);
                (StatusCode::OK, lease.clone())
            }
            _ => status(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("the Lease server knows no {method} {path}"),
            ),
        }
    }

    fn holder(&self) -> Option<String> {
        self.lease.as_ref()?["spec"]["holderIdentity"]
            .as_str()
            .map(str::to_owned)
    }
}

/// The fake API server, the Lease server and everything sent.
struct World {
    fake: Fake,
    leases: Arc<Mutex<Leases>>,
    sent: Arc<Mutex<Vec<Sent>>>,
}

impl World {
    fn new() -> Self {
        let fake = Fake::new();
        fake.lock().insert(
            &cr_collection(),
            serde_json::to_value(system("shop", json!({}), 1)).expect("json"),
        );
        Self {
            fake,
            leases: Arc::new(Mutex::new(Leases::default())),
            sent: Arc::new(Mutex::new(Vec::new())),
        }
    }

    fn sent(&self) -> Vec<Sent> {
        self.sent.lock().expect("sent lock").clone()
    }

    fn leases(&self) -> std::sync::MutexGuard<'_, Leases> {
        self.leases.lock().expect("lease lock")
    }

    /// A client for `operator`: its Lease requests go to the Lease server,
    /// the rest to the fake API server; all are recorded.
    fn client(&self, operator: &str) -> Client {
        let (mock, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let (upstream, _server) = self.fake.client();
        let (leases, sent) = (self.leases.clone(), self.sent.clone());
        let operator = operator.to_owned();
        tokio::spawn(async move {
            while let Some((request, respond)) = handle.next_request().await {
                let (leases, sent, upstream) = (leases.clone(), sent.clone(), upstream.clone());
                let operator = operator.clone();
                tokio::spawn(async move {
                    let path = request.uri().path().to_owned();
                    let call = Sent {
                        operator,
                        at: Instant::now(),
                        method: request.method().to_string(),
                        path: path.clone(),
                    };
                    let lease_call = call.is_lease();
                    sent.lock().expect("sent lock").push(call);
                    let response = if lease_call {
                        let (parts, body) = request.into_parts();
                        let bytes = body.collect_bytes().await.unwrap_or_default();
                        let content_type = parts
                            .headers
                            .get(http::header::CONTENT_TYPE)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned();
                        let (code, value) = leases.lock().expect("lease lock").handle(
                            &parts.method,
                            parts.uri.path(),
                            parts.uri.query().unwrap_or_default(),
                            &content_type,
                            &bytes,
                        );
                        Response::builder()
                            .status(code)
                            .header("content-type", "application/json")
                            .body(Body::from(serde_json::to_vec(&value).unwrap_or_default()))
                            .expect("response")
                    } else {
                        match upstream.send(request).await {
                            Ok(response) => response,
                            Err(err) => Response::builder()
                                .status(StatusCode::BAD_GATEWAY)
                                .body(Body::from(err.to_string().into_bytes()))
                                .expect("response"),
                        }
                    };
                    respond.send_response(response);
                });
            }
        });
        Client::new(mock, NS)
    }
}

/// One operator replica: its metrics, readiness and the task running it.
struct Replica {
    name: String,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Outcome>,
}

impl Replica {
    fn leading(&self) -> bool {
        self.metrics.leader.get() == 1
    }

    /// `/readyz` and the leader line of `/metrics`, as the kubelet and
    /// Prometheus see them.
    async fn probe(&self) -> (StatusCode, String, String) {
        let state = AppState {
            metrics: self.metrics.clone(),
            ready: self.ready.clone(),
        };
        let get = |uri: &str| {
            http::Request::get(uri)
                .body(axum::body::Body::empty())
                .expect("request")
        };
        let readyz = server::router(state.clone())
            .oneshot(get("/readyz"))
            .await
            .expect("readyz");
        let code = readyz.status();
        let body = axum::body::to_bytes(readyz.into_body(), 1 << 16)
            .await
            .expect("body");
        let metrics = server::router(state)
            .oneshot(get("/metrics"))
            .await
            .expect("metrics");
        let text = axum::body::to_bytes(metrics.into_body(), 1 << 20)
            .await
            .expect("body");
        let gauge = String::from_utf8_lossy(&text)
            .lines()
            .find(|l| l.starts_with("stockmesh_operator_leader "))
            .unwrap_or("stockmesh_operator_leader <missing>")
            .to_owned();
        (code, String::from_utf8_lossy(&body).into_owned(), gauge)
    }
}

fn election(identity: &str) -> Election {
    Election {
        lease_name: LEASE.into(),
        namespace: NS.into(),
        identity: identity.into(),
        duration_seconds: LEASE_SECONDS,
    }
}

/// Starts an operator replica named `name` (its Lease identity too), with
/// the controllers of the namespaced scope `NS` as the leader's work.
fn start(world: &World, name: &str) -> Replica {
    let client = world.client(name);
    let metrics = Arc::new(Metrics::new());
    let ready = Arc::new(AtomicBool::new(false));
    let task = tokio::spawn({
        let (metrics, ready) = (metrics.clone(), ready.clone());
        let election = election(name);
        let instance = name.to_owned();
        async move {
            let ctx = Arc::new(Context::new(
                client.clone(),
                metrics.clone(),
                Some(instance),
            ));
            let controllers = {
                let (client, ready) = (client.clone(), ready.clone());
                move || async move {
                    let scope = Scope::Namespaces(vec![NS.to_owned()]);
                    runner::run(client, &scope, ctx, 1, ready).await;
                }
            };
            leader::run(
                client,
                &election,
                &metrics,
                &ready,
                std::future::pending(),
                controllers,
            )
            .await
            .expect("the Lease is reachable")
        }
    });
    Replica {
        name: name.to_owned(),
        metrics,
        ready,
        task,
    }
}

/// Polls `cond` every 10 ms for up to `limit`; the time it took, if it held.
async fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

fn lines(calls: &[Sent]) -> Vec<String> {
    calls
        .iter()
        .map(|c| format!("{} {} {}", c.operator, c.method, c.path))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_operators_one_leader_and_failover_within_the_lease() {
    let world = World::new();
    let a = start(&world, "operator-a");
    let b = start(&world, "operator-b");

    // One of them leads and reconciles the system; the other stands by.
    wait_for(Duration::from_secs(10), || a.leading() || b.leading())
        .await
        .expect("one replica leads within 10 s");
    let (leader, follower) = if a.leading() { (a, b) } else { (b, a) };
    assert!(!follower.leading(), "exactly one leader");
    let reconciled = wait_for(Duration::from_secs(40), || {
        world.sent().iter().any(|c| {
            c.operator == leader.name
                && c.method == "PATCH"
                && c.path.ends_with("/inventorysystems/shop/status")
        })
    })
    .await;
    assert!(reconciled.is_some(), "the leader reconciled the system");
    // Longer than a lease: renewals happen and the follower looks at the
    // Lease again; the roles must not change.
    tokio::time::sleep(Duration::from_secs(LEASE_SECONDS + 1)).await;
    assert!(leader.leading() && !follower.leading(), "no flapping");
    assert_eq!(
        world.leases().holder().as_deref(),
        Some(leader.name.as_str())
    );

    // The follower is Ready (standing by) and says it does not lead.
    let (code, body, gauge) = follower.probe().await;
    assert_eq!(code, StatusCode::OK, "a follower is ready: {body}");
    assert!(body.contains("standing by"), "{body}");
    assert_eq!(gauge, "stockmesh_operator_leader 0");
    let (code, body, gauge) = leader.probe().await;
    assert_eq!((code, body.as_str()), (StatusCode::OK, "ready: leading"));
    assert_eq!(gauge, "stockmesh_operator_leader 1");

    // Only the leader wrote; the follower sent nothing but Lease requests.
    let before = world.sent();
    let writers: Vec<&str> = before
        .iter()
        .filter(|c| c.is_write() && !c.is_lease())
        .map(|c| c.operator.as_str())
        .collect();
    assert!(!writers.is_empty(), "the leader wrote");
    assert!(
        writers.iter().all(|w| *w == leader.name),
        "writes by {writers:?}"
    );
    let follower_other: Vec<Sent> = before
        .iter()
        .filter(|c| c.operator == follower.name && !c.is_lease())
        .cloned()
        .collect();
    assert!(
        follower_other.is_empty(),
        "the follower sent requests besides the Lease's: {:?}",
        lines(&follower_other)
    );

    // Kill the leader (no release: as if its node died).
    let killed = Instant::now();
    leader.task.abort();
    let _ = leader.task.await;
    let failover = wait_for(Duration::from_secs(LEASE_SECONDS + 5), || {
        follower.leading()
    })
    .await
    .expect("the follower takes over");
    let lists = |c: &Sent| {
        c.operator == follower.name
            && c.at >= killed
            && !c.is_lease()
            && c.path.ends_with("/inventorysystems")
    };
    wait_for(Duration::from_secs(30), || world.sent().iter().any(lists))
        .await
        .expect("the new leader lists the InventorySystems");
    let first_read = world
        .sent()
        .iter()
        .filter(|c| lists(c))
        .map(|c| c.at - killed)
        .min()
        .unwrap_or_default();
    println!(
        "failover: the leader was killed; the follower holds the Lease after {:.2} s and lists the InventorySystems after {:.2} s (lease {LEASE_SECONDS} s, renewed {} s before expiry)",
        failover.as_secs_f64(),
        first_read.as_secs_f64(),
        election("x").grace_seconds()
    );
    // Within the rest of the dead leader's lease (at most its duration)
    // plus the library's random pause (up to 1 s) before it takes an
    // expired lease, and some scheduling slack.
    assert!(
        failover <= Duration::from_millis(LEASE_SECONDS * 1000 + 1500),
        "failover took {failover:?}"
    );
    assert_eq!(
        world.leases().holder().as_deref(),
        Some(follower.name.as_str())
    );
    let transitions = world
        .leases()
        .lease
        .as_ref()
        .and_then(|l| l["spec"]["leaseTransitions"].as_i64());
    assert_eq!(transitions, Some(2), "taken once by each");
    wait_for(Duration::from_secs(30), || {
        follower.ready.load(Ordering::Relaxed)
    })
    .await
    .expect("the new leader is ready once its caches synced");

    // Nothing from the dead leader after it was killed; every Lease request
    // in the Lease's namespace and within the leader-election Role.
    let after = world.sent();
    let late: Vec<Sent> = after
        .iter()
        .filter(|c| c.operator == leader.name && c.at > killed)
        .cloned()
        .collect();
    assert!(late.is_empty(), "the killed leader sent {:?}", lines(&late));
    assert!(
        after
            .iter()
            .filter(|c| c.is_lease())
            .all(|c| c.path.starts_with(&format!("{LEASES}{NS}/leases"))),
        "Lease requests outside {NS}"
    );
    let violations = world.leases().rbac_violations.clone();
    assert!(
        violations.is_empty(),
        "Lease requests outside rbac::LEASE_RULES: {violations:?}"
    );
    assert!(
        world.fake.lock().rbac_violations.is_empty(),
        "requests outside rbac::RULES: {:?}",
        world.fake.lock().rbac_violations
    );
    follower.task.abort();
}

/// Another holder takes the Lease (as a replica would after this one's
/// lease had expired): at its next renewal the leader notices, drops the
/// controllers and returns; nothing more is sent but the Lease's own reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_lease_is_taken_stops_at_once() {
    let world = World::new();
    let mut a = start(&world, "operator-a");
    wait_for(Duration::from_secs(10), || a.leading())
        .await
        .expect("leads");
    wait_for(Duration::from_secs(20), || a.ready.load(Ordering::Relaxed))
        .await
        .expect("caches synced");
    {
        let mut leases = world.leases();
        let lease = leases.lease.as_mut().expect("lease");
        lease["spec"]["holderIdentity"] = json!("operator-z");
        lease["spec"]["renewTime"] =
            serde_json::to_value(MicroTime(Timestamp::now())).expect("time");
        leases.owners.insert(
            "holderIdentity".into(),
            "kube-lease-manager-operator-z".into(),
        );
    }
    let taken = Instant::now();
    let outcome = tokio::time::timeout(Duration::from_secs(LEASE_SECONDS + 3), &mut a.task)
        .await
        .expect("the leader stops within a lease")
        .expect("task");
    let stopped = taken.elapsed();
    println!(
        "lease taken away: the leader stopped after {:.2} s",
        stopped.as_secs_f64()
    );
    assert!(
        matches!(&outcome, Outcome::LostLeadership(reason) if reason.contains("another replica")),
        "{outcome:?}"
    );
    assert!(!a.leading() && !a.ready.load(Ordering::Relaxed));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let late: Vec<Sent> = world
        .sent()
        .into_iter()
        .filter(|c| c.at > taken + stopped && !c.is_lease())
        .collect();
    assert!(late.is_empty(), "sent after stopping: {:?}", lines(&late));
}

/// The API server stops answering the Lease's renewals: the leader stops
/// before its lease runs out rather than reconcile without one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_cannot_renew_stops_before_its_lease_expires() {
    let world = World::new();
    let mut a = start(&world, "operator-a");
    wait_for(Duration::from_secs(10), || a.leading())
        .await
        .expect("leads");
    world.leases().fail_patches = true;
    let failing = Instant::now();
    let outcome = tokio::time::timeout(Duration::from_secs(LEASE_SECONDS + 3), &mut a.task)
        .await
        .expect("the leader stops")
        .expect("task");
    assert!(
        matches!(&outcome, Outcome::LostLeadership(reason) if reason.contains("renewing")),
        "{outcome:?}"
    );
    // Its last successful renewal was before `failing`; the failed one came
    // a grace period before expiry, so it stopped within the lease.
    assert!(
        failing.elapsed() < Duration::from_secs(LEASE_SECONDS),
        "stopped after {:?}",
        failing.elapsed()
    );
    assert!(!a.leading());
}

/// A leader whose controllers return (SIGTERM: they drain) releases the
/// Lease; a replica standing by leaves when told to shut down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_leader_releases_the_lease_and_a_follower_shuts_down() {
    let world = World::new();
    let client = world.client("operator-a");
    let metrics = Metrics::new();
    let ready = AtomicBool::new(false);
    let outcome = leader::run(
        client,
        &election("operator-a"),
        &metrics,
        &ready,
        std::future::pending(),
        || tokio::time::sleep(Duration::from_millis(200)),
    )
    .await
    .expect("lease reachable");
    assert_eq!(outcome, Outcome::Finished);
    assert_eq!(world.leases().holder(), None, "released");
    assert_eq!(metrics.leader.get(), 0);

    // Another replica holds the Lease now: this one stands by until shutdown.
    let b = start(&world, "operator-b");
    wait_for(Duration::from_secs(10), || b.leading())
        .await
        .expect("b leads at once: the Lease was free");
    let outcome = leader::run(
        world.client("operator-c"),
        &election("operator-c"),
        &metrics,
        &ready,
        tokio::time::sleep(Duration::from_millis(300)),
        || async { panic!("a follower never runs the controllers") },
    )
    .await
    .expect("lease reachable");
    assert_eq!(outcome, Outcome::Shutdown);
    assert!(ready.load(Ordering::Relaxed), "a follower is ready");
    assert_eq!(metrics.leader.get(), 0);
    b.task.abort();
}

/// `k8s/operator/rbac.yaml` grants exactly [`rbac::LEASE_RULES`], in a Role
/// (never a ClusterRole), `get`/`patch` restricted to the Lease's name.
#[test]
fn the_lease_role_matches_the_rules_in_code() {
    let text = std::fs::read_to_string(common::repo_root().join("k8s/operator/rbac.yaml"))
        .expect("k8s/operator/rbac.yaml");
    let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).expect("yaml doc"))
        .collect();
    let lease_rules = |d: &Value| {
        d["rules"].as_array().is_some_and(|rules| {
            rules.iter().any(|r| {
                r["resources"]
                    .as_array()
                    .is_some_and(|rs| rs.contains(&json!("leases")))
            })
        })
    };
    assert!(
        !docs
            .iter()
            .any(|d| d["kind"] == "ClusterRole" && lease_rules(d)),
        "a ClusterRole grants Leases"
    );
    let role = docs
        .iter()
        .find(|d| d["kind"] == "Role" && lease_rules(d))
        .expect("a Role for the Lease");
    assert_eq!(role["metadata"]["namespace"], "stockmesh-system");
    let mut verbs: Vec<String> = Vec::new();
    for rule in role["rules"].as_array().expect("rules") {
        assert_eq!(rule["apiGroups"], json!(["coordination.k8s.io"]));
        assert_eq!(rule["resources"], json!(["leases"]));
        let rule_verbs: Vec<String> = rule["verbs"]
            .as_array()
            .expect("verbs")
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect();
        if rule_verbs.iter().any(|v| v != "create") {
            assert_eq!(
                rule["resourceNames"],
                json!([LEASE]),
                "get/patch only on the Lease itself"
            );
        }
        verbs.extend(rule_verbs);
    }
    verbs.sort();
    let mut want: Vec<String> = rbac::LEASE_RULES[0]
        .verbs
        .iter()
        .map(|v| (*v).to_owned())
        .collect();
    want.sort();
    assert_eq!(verbs, want);
    let binding = docs
        .iter()
        .find(|d| d["kind"] == "RoleBinding" && d["roleRef"]["name"] == role["metadata"]["name"])
        .expect("a RoleBinding for the Lease Role");
    assert_eq!(binding["metadata"]["namespace"], "stockmesh-system");
    assert_eq!(binding["subjects"][0]["name"], "stockmesh-operator");
}
