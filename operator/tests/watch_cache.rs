//! The operator as it runs (the controller, its watches and the caches they
//! fill) against a mocked API server that serves watches: after the first
//! list of each kind, reconciles read only the caches — a steady state sends
//! no request at all, and a manual edit, seen through the watch, is repaired
//! with one apply and no list.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Call, DEPLOYABLES, Fake, NS, coll, cr_collection, system};
use serde_json::json;
use stockmesh_operator::controller::Context;
use stockmesh_operator::metrics::Metrics;
use stockmesh_operator::runner::{self, Scope};

/// Requests other than watches.
fn non_watch(calls: &[Call]) -> Vec<String> {
    calls
        .iter()
        .filter(|c| !c.query.contains("watch=true"))
        .map(Call::line)
        .collect()
}

/// Lists (a collection GET that is not a watch).
fn lists(calls: &[Call]) -> Vec<String> {
    calls
        .iter()
        .filter(|c| c.method == "GET" && !c.query.contains("watch=true"))
        .filter(|c| {
            c.path.rsplit('/').next().is_some_and(|last| {
                [
                    "inventorysystems",
                    "secrets",
                    "configmaps",
                    "services",
                    "statefulsets",
                    "deployments",
                    "poddisruptionbudgets",
                    "ingresses",
                    "networkpolicies",
                ]
                .contains(&last)
            })
        })
        .map(Call::line)
        .collect()
}

/// Waits up to `secs` seconds for `check`.
async fn eventually(secs: u64, mut check: impl FnMut() -> bool) -> bool {
    for _ in 0..secs * 20 {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    check()
}

/// Waits until no request but watches arrives for `quiet`, at most `secs`.
async fn settle(fake: &Fake, quiet: Duration, secs: u64) -> Vec<Call> {
    let mut all = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        tokio::time::sleep(quiet).await;
        let calls = fake.take_calls();
        let busy = !non_watch(&calls).is_empty();
        all.extend(calls);
        if !busy || tokio::time::Instant::now() > deadline {
            return all;
        }
    }
}

/// The kubelet's part: every workload ready (with a watch event each).
fn make_ready(fake: &Fake) {
    let mut st = fake.lock();
    let statefulsets = coll("apps/v1", "statefulsets");
    for sts in st.names(&statefulsets) {
        if let Some(o) = st.get_mut(&statefulsets, &sts) {
            o["status"] = json!({"replicas": 1, "readyReplicas": 1, "availableReplicas": 1});
        }
        st.touch(&statefulsets, &sts);
    }
    let deployments = coll("apps/v1", "deployments");
    for svc in DEPLOYABLES {
        let name = format!("shop-{svc}");
        if let Some(o) = st.get_mut(&deployments, &name) {
            let replicas = o["spec"]["replicas"].as_i64().unwrap_or(0);
            let generation = o["metadata"]["generation"].clone();
            o["status"] = json!({
                "observedGeneration": generation, "replicas": replicas,
                "updatedReplicas": replicas, "readyReplicas": replicas,
                "availableReplicas": replicas,
            });
        }
        st.touch(&deployments, &name);
    }
}

fn phase(fake: &Fake) -> String {
    fake.lock()
        .get(&cr_collection(), "shop")
        .and_then(|o| o["status"]["phase"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_controller_a_steady_state_sends_no_request_and_drift_no_list() {
    let fake = Fake::new();
    fake.lock().serve_watches = true;
    fake.lock().insert(
        &cr_collection(),
        serde_json::to_value(system("shop", json!({}), 1)).expect("json"),
    );
    let (client, _server) = fake.client();
    let metrics = Arc::new(Metrics::new());
    let ctx = Arc::new(Context::new(client.clone(), metrics.clone(), None));
    let ready = Arc::new(AtomicBool::new(false));
    let operator = tokio::spawn({
        let ready = ready.clone();
        async move {
            let scope = Scope::from_namespaces(&[NS.to_owned()]);
            runner::run(client, &scope, ctx, 2, ready).await;
        }
    });

    // Converges: every child created, the status written; then ready.
    assert!(
        eventually(20, || ready.load(Ordering::Relaxed)
            && fake.lock().names(&coll("apps/v1", "deployments")).len() == 6
            && !phase(&fake).is_empty())
        .await,
        "the operator converged and became ready"
    );
    let mut calls = settle(&fake, Duration::from_millis(700), 20).await;
    make_ready(&fake);
    assert!(
        eventually(20, || phase(&fake) == "Ready").await,
        "phase Ready after the workloads' status changes (seen through the watches): {}",
        phase(&fake)
    );
    calls.extend(settle(&fake, Duration::from_millis(700), 20).await);
    // Each kind was listed by its watch, once: no reconcile listed.
    assert_eq!(lists(&calls).len(), 9, "{:#?}", lists(&calls));

    // Steady state: watches only, for well over a second, although a
    // child's event (a new resourceVersion, nothing changed) triggers a
    // reconcile.
    let reconciles = || metrics.reconciles.get();
    let before = reconciles();
    fake.lock().touch(&coll("v1", "configmaps"), "shop-config");
    assert!(
        eventually(10, || reconciles() > before).await,
        "the event triggered a reconcile"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let quiet = fake.take_calls();
    assert_eq!(
        non_watch(&quiet),
        Vec::<String>::new(),
        "steady state sent requests"
    );
    assert!(
        quiet.iter().any(|c| c.query.contains("watch=true")),
        "the watches are open"
    );

    // Someone scales a Deployment by hand: the watch event triggers a
    // reconcile that repairs it with one apply, without listing.
    let deployments = coll("apps/v1", "deployments");
    {
        let mut st = fake.lock();
        if let Some(o) = st.get_mut(&deployments, "shop-order") {
            o["spec"]["replicas"] = json!(0);
        }
        st.touch(&deployments, "shop-order");
    }
    assert!(
        eventually(20, || fake
            .lock()
            .get(&deployments, "shop-order")
            .is_some_and(|o| o["spec"]["replicas"] == 2))
        .await,
        "the edit was repaired"
    );
    let after = settle(&fake, Duration::from_millis(700), 20).await;
    let patches: Vec<String> = non_watch(&after)
        .into_iter()
        .filter(|l| l.starts_with("PATCH") && !l.ends_with("/status"))
        .collect();
    assert_eq!(patches, vec![format!("PATCH {deployments}/shop-order")]);
    assert_eq!(lists(&after), Vec::<String>::new());
    let text = metrics.encode();
    assert!(
        text.contains("stockmesh_operator_api_calls_per_reconcile_sum{verb=\"list\"} 0.0"),
        "{text}"
    );
    assert!(
        text.contains(
            "stockmesh_operator_object_writes_total{kind=\"Deployment\",action=\"repair\"} 1"
        ),
        "{text}"
    );
    operator.abort();
    let _ = operator.await;
}
