//! What a platform team grants the operator (issue 16, item 1), against the
//! mocked API server: a namespaced install never sends a request outside
//! its namespaces, and the image allow-list keeps a spec from choosing the
//! images that receive the generated credentials.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Fake, UID, cr_collection, prime, system};
use serde_json::{Value, json};
use stockmesh_operator::controller::{Context, reconcile};
use stockmesh_operator::images::ImagePolicy;
use stockmesh_operator::metrics::Metrics;
use stockmesh_operator::runner::{self, Scope};

/// The kinds the operator lists and watches, as collection path suffixes.
const WATCHED: [&str; 9] = [
    "stockmesh.io/v1alpha1/namespaces/{ns}/inventorysystems",
    "v1/namespaces/{ns}/secrets",
    "v1/namespaces/{ns}/configmaps",
    "v1/namespaces/{ns}/services",
    "apps/v1/namespaces/{ns}/statefulsets",
    "apps/v1/namespaces/{ns}/deployments",
    "policy/v1/namespaces/{ns}/poddisruptionbudgets",
    "networking.k8s.io/v1/namespaces/{ns}/ingresses",
    "networking.k8s.io/v1/namespaces/{ns}/networkpolicies",
];

fn in_namespace(obj: Value, ns: &str) -> Value {
    let mut obj = obj;
    obj["metadata"]["namespace"] = json!(ns);
    obj
}

#[tokio::test]
async fn a_namespaced_operator_sends_no_request_outside_its_namespaces() {
    let fake = Fake::new();
    let shop = in_namespace(
        serde_json::to_value(system("shop", json!({}), 1)).expect("json"),
        "team-a",
    );
    fake.lock().insert(
        "/apis/stockmesh.io/v1alpha1/namespaces/team-a/inventorysystems",
        shop,
    );
    // Another team's system, in a namespace the operator does not watch.
    fake.lock().insert(
        &cr_collection(),
        serde_json::to_value(system("other", json!({}), 1)).expect("json"),
    );
    let (client, _server) = fake.client();
    let metrics = Arc::new(Metrics::new());
    let ctx = Arc::new(Context::new(client.clone(), metrics.clone(), None));
    let ready = Arc::new(AtomicBool::new(false));
    let scope = Scope::from_namespaces(&["team-b".to_owned(), "team-a".to_owned()]);
    let operator = tokio::spawn({
        let ready = ready.clone();
        async move { runner::run(client, &scope, ctx, 1, ready).await }
    });
    // Until the system in team-a has been reconciled (its status written)
    // and both namespaces are listed.
    let mut reconciled = false;
    for _ in 0..400 {
        tokio::time::sleep(Duration::from_millis(25)).await;
        if ready.load(Ordering::Relaxed)
            && fake.lock().calls.iter().any(|c| {
                c.method == "PATCH" && c.path.ends_with("/team-a/inventorysystems/shop/status")
            })
        {
            reconciled = true;
            break;
        }
    }
    operator.abort();
    let _ = operator.await;
    assert!(
        reconciled,
        "the system in a watched namespace was reconciled"
    );
    assert!(
        ready.load(Ordering::Relaxed),
        "ready once both namespaces listed"
    );

    let state = fake.lock();
    assert!(
        state.rbac_violations.is_empty(),
        "requests outside the rules: {:?}",
        state.rbac_violations
    );
    let outside: Vec<String> = state
        .calls
        .iter()
        .filter(|c| {
            !c.path.contains("/namespaces/team-a/") && !c.path.contains("/namespaces/team-b/")
        })
        .map(|c| c.line())
        .collect();
    assert!(
        outside.is_empty(),
        "requests outside team-a and team-b: {outside:?}"
    );
    for ns in ["team-a", "team-b"] {
        for kind in WATCHED {
            let suffix = kind.replace("{ns}", ns);
            assert!(
                state
                    .calls
                    .iter()
                    .any(|c| c.method == "GET" && c.path.ends_with(&suffix)),
                "{suffix} was listed"
            );
        }
    }
    assert!(
        !state.calls.iter().any(|c| c.path.contains("/other")),
        "the unwatched namespace's system was never touched"
    );
    // The reconciles read their children from the controller's watch
    // caches: the lists above are the watches' own, none is a reconcile's.
    let text = metrics.encode();
    assert!(
        text.contains("stockmesh_operator_api_calls_per_reconcile_sum{verb=\"list\"} 0.0"),
        "{text}"
    );
    assert!(
        !text.contains("stockmesh_operator_api_calls_per_reconcile_sum{verb=\"patch\"} 0.0"),
        "the reconcile applied the children: {text}"
    );
}

#[test]
fn no_namespace_is_the_whole_cluster() {
    assert_eq!(Scope::from_namespaces(&[]), Scope::Cluster);
    assert_eq!(
        Scope::from_namespaces(&["b".into(), "a".into(), "b".into()]),
        Scope::Namespaces(vec!["a".into(), "b".into()])
    );
}

/// A spec choosing an image outside `--allowed-images` is InvalidSpec:
/// a Degraded condition naming the image, a Warning event, and not one
/// object (no Secret with the generated credentials, no workload) applied.
#[tokio::test]
async fn an_image_outside_the_allow_list_is_invalid_and_nothing_is_applied() {
    let fake = Fake::new();
    let obj = system(
        "shop",
        json!({
            "image": {"repository": "ghcr.io/stockmesh", "tag": "1.0.0"},
            "postgres": {"managed": {"image": "evil.example.com/postgres:16"}},
        }),
        2,
    );
    fake.lock()
        .insert(&cr_collection(), serde_json::to_value(&obj).expect("json"));
    let (client, server) = fake.client();
    let policy = ImagePolicy::new(["ghcr.io/stockmesh/", "postgres", "rabbitmq"]).expect("policy");
    let ctx =
        Arc::new(Context::new(client, Arc::new(Metrics::new()), None).with_image_policy(policy));
    prime(&ctx, &fake);
    tokio::time::timeout(
        Duration::from_secs(20),
        reconcile(Arc::new(obj), ctx.clone()),
    )
    .await
    .expect("reconcile finishes")
    .expect("reconcile succeeds");
    drop(ctx);
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;

    let state = fake.lock();
    let writes: Vec<String> = state
        .calls
        .iter()
        .filter(|c| c.is_write())
        .map(|c| c.line())
        .collect();
    assert_eq!(writes.len(), 2, "an event and the status only: {writes:?}");
    assert!(writes.iter().any(|w| w.contains("/events")));
    assert!(
        writes
            .iter()
            .any(|w| w.ends_with("/inventorysystems/shop/status"))
    );
    let stored = state.get(&cr_collection(), "shop").expect("stored");
    let degraded = stored["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Degraded"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(degraded["status"], "True", "{stored}");
    assert_eq!(degraded["reason"], "InvalidSpec");
    let message = degraded["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("postgres.managed.image")
            && message.contains("evil.example.com/postgres:16"),
        "{message}"
    );
    assert_eq!(stored["metadata"]["uid"], UID);
}

/// The same spec with its images inside the list is applied as usual.
#[tokio::test]
async fn images_inside_the_allow_list_are_applied() {
    let fake = Fake::new();
    let obj = system(
        "shop",
        json!({"image": {"repository": "ghcr.io/stockmesh", "tag": "1.0.0"}}),
        1,
    );
    fake.lock()
        .insert(&cr_collection(), serde_json::to_value(&obj).expect("json"));
    let (client, server) = fake.client();
    let policy = ImagePolicy::new(["ghcr.io/stockmesh/", "postgres", "rabbitmq"]).expect("policy");
    let ctx =
        Arc::new(Context::new(client, Arc::new(Metrics::new()), None).with_image_policy(policy));
    prime(&ctx, &fake);
    let _ = tokio::time::timeout(
        Duration::from_secs(20),
        reconcile(Arc::new(obj), ctx.clone()),
    )
    .await
    .expect("reconcile finishes");
    drop(ctx);
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    let state = fake.lock();
    assert!(
        state
            .calls
            .iter()
            .any(|c| c.method == "PATCH" && c.path.contains("/deployments/")),
        "workloads applied"
    );
}
