//! The reconciler against a mocked API server (no cluster): the calls it
//! makes, in order, with their bodies, for the scenarios of issue 6.

mod common;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use common::{Call, DEPLOYABLES, Fake, NS, SVCS, UID, coll, cr_collection, prime, system};
use kube::runtime::controller::Action;
use serde_json::{Value, json};
use stockmesh_operator::InventorySystem;
use stockmesh_operator::controller::{Context, reconcile};
use stockmesh_operator::metrics::Metrics;

/// Runs one reconcile of `obj` against the fake; returns its result and the calls.
async fn run(
    fake: &Fake,
    obj: &InventorySystem,
) -> (Result<Action, String>, Vec<Call>, Arc<Metrics>) {
    {
        // The API server's copy of the custom resource (target of status patches).
        let mut st = fake.lock();
        st.insert(&cr_collection(), serde_json::to_value(obj).expect("json"));
    }
    let (client, server) = fake.client();
    let metrics = Arc::new(Metrics::new());
    let ctx = Arc::new(Context::new(client, metrics.clone(), None));
    prime(&ctx, fake);
    let result = tokio::time::timeout(
        Duration::from_secs(20),
        reconcile(Arc::new(obj.clone()), ctx.clone()),
    )
    .await
    .expect("reconcile finishes")
    .map_err(|e| e.to_string());
    drop(ctx);
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("fake server stops")
        .expect("fake server ok");
    let violations = fake.lock().rbac_violations.clone();
    assert!(
        violations.is_empty(),
        "requests outside the RBAC rules: {violations:?}"
    );
    let calls = fake.take_calls();
    (result, calls, metrics)
}

/// The custom resource as the fake API server now holds it (with status).
fn stored(fake: &Fake, name: &str) -> InventorySystem {
    let st = fake.lock();
    let v = st
        .get(&cr_collection(), name)
        .expect("custom resource")
        .clone();
    serde_json::from_value(v).expect("custom resource parses")
}

fn writes(calls: &[Call]) -> Vec<&Call> {
    calls.iter().filter(|c| c.is_write()).collect()
}

fn lines(calls: &[&Call]) -> Vec<String> {
    calls.iter().map(|c| c.line()).collect()
}

fn status_line(name: &str) -> String {
    format!("PATCH {}/{name}/status", cr_collection())
}

fn event_line() -> String {
    format!("POST {}", coll("events.k8s.io/v1", "events"))
}

fn decode(secret: &Value, key: &str) -> String {
    let b64 = secret["data"][key].as_str().unwrap_or_default();
    String::from_utf8(STANDARD.decode(b64).expect("base64")).expect("utf8")
}

fn set_ready(fake: &Fake, name: &str, not_ready: &[(&str, i64)]) {
    let mut st = fake.lock();
    for sts in st.names(&coll("apps/v1", "statefulsets")) {
        let o = st
            .get_mut(&coll("apps/v1", "statefulsets"), &sts)
            .expect("sts");
        o["status"] = json!({"replicas": 1, "readyReplicas": 1, "availableReplicas": 1});
    }
    for svc in DEPLOYABLES {
        let dn = format!("{name}-{svc}");
        let o = st
            .get_mut(&coll("apps/v1", "deployments"), &dn)
            .expect("deployment");
        let replicas = o["spec"]["replicas"].as_i64().unwrap_or(0);
        let ready = not_ready
            .iter()
            .find(|(s, _)| *s == svc)
            .map_or(replicas, |(_, r)| *r);
        o["metadata"]["generation"] = json!(1);
        o["status"] = json!({
            "observedGeneration": 1, "replicas": replicas, "updatedReplicas": replicas,
            "readyReplicas": ready, "availableReplicas": ready,
        });
    }
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("condition {type_} in {status}"))
}

#[tokio::test]
async fn fresh_resource_creates_every_object_in_order_then_reports_progress() {
    let fake = Fake::new();
    let obj = system("shop", json!({}), 1);
    let (result, calls, metrics) = run(&fake, &obj).await;
    assert_eq!(result, Ok(Action::requeue(Duration::from_secs(300))));

    // No reads: the children come from the watch caches.
    let reads: Vec<String> = calls
        .iter()
        .filter(|c| !c.is_write())
        .map(Call::line)
        .collect();
    assert_eq!(reads, Vec::<String>::new());

    // Then the writes, in apply order.
    let secrets = coll("v1", "secrets");
    let mut expected = vec![format!("POST {secrets}")]; // shop-postgres
    expected.extend(SVCS.iter().map(|_| format!("POST {secrets}"))); // shop-<svc>-db
    expected.extend([
        format!("POST {secrets}"),
        format!("POST {secrets}"),
        format!("POST {secrets}"),
    ]); // rabbitmq, jwt, admin
    let apply = |gv: &str, res: &str, name: &str| format!("PATCH {}/{name}", coll(gv, res));
    expected.push(apply("v1", "configmaps", "shop-config"));
    expected.push(apply("v1", "configmaps", "shop-postgres-init"));
    for svc in DEPLOYABLES {
        expected.push(apply("v1", "services", &format!("shop-{svc}")));
        if svc == "product" || svc == "inventory" {
            expected.push(apply("v1", "services", &format!("shop-{svc}-grpc")));
        }
    }
    for s in [
        "shop-postgres",
        "shop-postgres-headless",
        "shop-rabbitmq",
        "shop-rabbitmq-headless",
    ] {
        expected.push(apply("v1", "services", s));
    }
    expected.push(apply("apps/v1", "statefulsets", "shop-postgres"));
    expected.push(apply("apps/v1", "statefulsets", "shop-rabbitmq"));
    for svc in DEPLOYABLES {
        expected.push(apply("apps/v1", "deployments", &format!("shop-{svc}")));
    }
    for svc in DEPLOYABLES {
        expected.push(apply(
            "policy/v1",
            "poddisruptionbudgets",
            &format!("shop-{svc}"),
        ));
    }
    for svc in DEPLOYABLES {
        expected.push(apply(
            "networking.k8s.io/v1",
            "networkpolicies",
            &format!("shop-{svc}"),
        ));
    }
    expected.push(apply(
        "networking.k8s.io/v1",
        "networkpolicies",
        "shop-postgres",
    ));
    expected.push(apply(
        "networking.k8s.io/v1",
        "networkpolicies",
        "shop-rabbitmq",
    ));
    expected.push(event_line());
    expected.push(status_line("shop"));
    let w = writes(&calls);
    assert_eq!(lines(&w), expected);

    // Secret bodies: names in order, generated values, created (not applied).
    let secret_names: Vec<&str> = w
        .iter()
        .filter(|c| c.method == "POST" && c.path == secrets)
        .map(|c| {
            c.body
                .as_ref()
                .and_then(|b| b["metadata"]["name"].as_str())
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(
        secret_names,
        [
            "shop-postgres",
            "shop-user-db",
            "shop-product-db",
            "shop-inventory-db",
            "shop-order-db",
            "shop-notification-db",
            "shop-rabbitmq",
            "shop-jwt",
            "shop-admin"
        ]
    );
    let st = fake.lock();
    let user_db = st.get(&secrets, "shop-user-db").expect("user db secret");
    let pw = decode(user_db, "password");
    assert_eq!(pw.len(), 32);
    assert_eq!(
        decode(user_db, "url"),
        format!("postgres://stockmesh_user:{pw}@shop-postgres:5432/stockmesh_user")
    );
    assert_ne!(
        decode(
            st.get(&secrets, "shop-order-db").expect("order db"),
            "password"
        ),
        pw
    );
    let jwt = st.get(&secrets, "shop-jwt").expect("jwt");
    assert!(decode(jwt, "private.pem").starts_with("-----BEGIN PRIVATE KEY-----"));
    assert!(decode(jwt, "public.pem").starts_with("-----BEGIN PUBLIC KEY-----"));
    assert!(
        decode(st.get(&secrets, "shop-rabbitmq").expect("mq"), "url")
            .starts_with("amqp://stockmesh:")
    );
    // keepVolumes (default true): credentials of the kept data have no owner.
    for retained in [
        "shop-postgres",
        "shop-user-db",
        "shop-rabbitmq",
        "shop-admin",
    ] {
        let s = st.get(&secrets, retained).expect("secret");
        assert!(
            s["metadata"].get("ownerReferences").is_none(),
            "{retained} must outlive the resource"
        );
        assert_eq!(
            s["metadata"]["annotations"]["stockmesh.io/retained"],
            "true"
        );
    }
    drop(st);

    // Every applied object: field manager, force, controller owner reference, applied-hash.
    for c in w
        .iter()
        .filter(|c| c.method == "PATCH" && !c.path.ends_with("/status"))
    {
        assert!(
            c.query.contains("fieldManager=stockmesh-operator"),
            "{}",
            c.query
        );
        assert!(c.query.contains("force=true"), "{}", c.query);
        let body = c.body.as_ref().expect("body");
        let owners = body["metadata"]["ownerReferences"]
            .as_array()
            .expect("owner references");
        assert_eq!(owners.len(), 1);
        assert_eq!(owners[0]["uid"], UID);
        assert_eq!(owners[0]["controller"], true);
        assert_eq!(owners[0]["kind"], "InventorySystem");
        assert!(body["metadata"]["annotations"]["stockmesh.io/applied-hash"].is_string());
    }
    // The jwt Secret is owned (it does not guard kept data).
    let jwt_call = w
        .iter()
        .find(|c| {
            c.body
                .as_ref()
                .is_some_and(|b| b["metadata"]["name"] == "shop-jwt")
        })
        .expect("jwt create");
    assert_eq!(
        jwt_call.body.as_ref().expect("body")["metadata"]["ownerReferences"][0]["controller"],
        true
    );

    // The event says what was created.
    let event = w.iter().find(|c| c.line() == event_line()).expect("event");
    let body = event.body.as_ref().expect("event body");
    assert_eq!(body["reason"], "Created");
    assert_eq!(body["type"], "Normal");
    assert!(
        body["note"]
            .as_str()
            .unwrap_or_default()
            .contains("Deployment/shop-order")
    );
    assert_eq!(body["regarding"]["name"], "shop");

    // The status: nothing is ready yet.
    let status = &w.last().expect("status").body.as_ref().expect("body")["status"];
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(status["phase"], "Progressing");
    assert_eq!(condition(status, "Ready")["status"], "False");
    assert_eq!(
        condition(status, "DatabaseReady")["reason"],
        "StatefulSetNotReady"
    );
    assert_eq!(condition(status, "ServicesReady")["status"], "False");
    assert_eq!(condition(status, "Degraded")["status"], "False");
    assert_eq!(
        status["components"]["order"],
        json!({"ready": 0, "desired": 2})
    );
    assert_eq!(
        status["components"]["web"],
        json!({"ready": 0, "desired": 2})
    );
    assert!(status.get("url").is_none());
    assert!(
        metrics
            .encode()
            .contains("stockmesh_operator_reconciles_total 1")
    );
}

#[tokio::test]
async fn steady_state_writes_nothing_and_status_only_when_it_changes() {
    let fake = Fake::new();
    let obj = system(
        "shop",
        json!({"ingress": {"enabled": true, "host": "shop.example.com"}}),
        1,
    );
    assert!(run(&fake, &obj).await.0.is_ok());
    set_ready(&fake, "shop", &[]);

    // Everything became ready: the only writes are the status and a Ready event.
    let obj = stored(&fake, "shop");
    let (result, calls, _) = run(&fake, &obj).await;
    assert!(result.is_ok());
    assert_eq!(
        lines(&writes(&calls)),
        vec![event_line(), status_line("shop")]
    );
    let status = &writes(&calls)[1].body.as_ref().expect("body")["status"];
    assert_eq!(status["phase"], "Ready");
    assert_eq!(condition(status, "Ready")["reason"], "AllComponentsReady");
    assert_eq!(status["url"], "http://shop.example.com");
    assert_eq!(
        status["components"]["postgres"],
        json!({"ready": 1, "desired": 1})
    );
    assert_eq!(
        status["components"]["web"],
        json!({"ready": 2, "desired": 2})
    );
    assert_eq!(
        condition(status, "ServicesReady")["message"],
        "all five services and the web console are ready"
    );

    // Steady state: no request at all (no list, no apply, no status, no
    // event), and the metrics say so.
    let before = stored(&fake, "shop");
    let (result, calls, metrics) = run(&fake, &before).await;
    assert!(result.is_ok());
    assert_eq!(
        calls.iter().map(Call::line).collect::<Vec<_>>(),
        Vec::<String>::new(),
        "steady state sent requests"
    );
    let text = metrics.encode();
    for verb in ["get", "list", "create", "patch", "delete"] {
        let sum = format!("stockmesh_operator_api_calls_per_reconcile_sum{{verb=\"{verb}\"}} 0.0");
        assert!(text.contains(&sum), "{sum} in\n{text}");
    }
    assert!(
        !text.contains("stockmesh_operator_api_calls_total{"),
        "{text}"
    );

    // Generated Secrets were never regenerated.
    let secrets = coll("v1", "secrets");
    assert_eq!(fake.lock().names(&secrets).len(), 9);
}

#[tokio::test]
async fn a_manual_edit_of_a_child_is_repaired_with_exactly_one_apply() {
    let fake = Fake::new();
    // Quantities the API server rewrites (0.5 -> 500m, 1024Mi -> 1Gi, ...):
    // their canonical forms are not drift.
    let obj = system(
        "shop",
        json!({"services": {"order": {"replicas": 2, "resources": {
            "requests": {"cpu": "0.5", "memory": "1024Mi"},
            "limits": {"cpu": "1000m", "memory": "2048Mi"},
        }}}}),
        1,
    );
    assert!(run(&fake, &obj).await.0.is_ok());
    set_ready(&fake, "shop", &[]);
    assert!(run(&fake, &stored(&fake, "shop")).await.0.is_ok());
    let deployments = coll("apps/v1", "deployments");
    let served = fake
        .lock()
        .get(&deployments, "shop-order")
        .expect("order")
        .clone();
    let container = &served["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["resources"]["requests"]["cpu"], "500m");
    assert_eq!(container["resources"]["limits"]["cpu"], "1");

    // Steady state: nothing written.
    let (result, calls, _) = run(&fake, &stored(&fake, "shop")).await;
    assert!(result.is_ok());
    assert_eq!(lines(&writes(&calls)), Vec::<String>::new());

    // Someone scales the order Deployment and swaps its image (kubectl edit);
    // another controller adds an annotation (not ours: not drift).
    let desired_image = served["spec"]["template"]["spec"]["containers"][0]["image"].clone();
    {
        let mut st = fake.lock();
        let o = st.get_mut(&deployments, "shop-order").expect("order");
        o["spec"]["replicas"] = json!(7);
        o["spec"]["template"]["spec"]["containers"][0]["image"] = json!("evil/order:latest");
        o["metadata"]["annotations"]["deployment.kubernetes.io/revision"] = json!("2");
    }
    let (result, calls, metrics) = run(&fake, &stored(&fake, "shop")).await;
    assert_eq!(result, Ok(Action::requeue(Duration::from_secs(300))));
    let w = writes(&calls);
    assert_eq!(
        lines(&w),
        vec![format!("PATCH {deployments}/shop-order")],
        "exactly one apply, of the edited Deployment"
    );
    assert!(w[0].query.contains("fieldManager=stockmesh-operator"));
    assert!(w[0].query.contains("force=true"));
    let body = w[0].body.as_ref().expect("apply body");
    assert_eq!(body["spec"]["replicas"], 2);
    assert_eq!(
        body["spec"]["template"]["spec"]["containers"][0]["image"],
        desired_image
    );
    let repaired = fake
        .lock()
        .get(&deployments, "shop-order")
        .expect("order")
        .clone();
    assert_eq!(repaired["spec"]["replicas"], 2);
    assert!(
        metrics.encode().contains(
            r#"stockmesh_operator_object_writes_total{kind="Deployment",action="repair"} 1"#
        ),
        "{}",
        metrics.encode()
    );

    // Repaired (the changed pod template rolls out; the fake bumped the
    // generation): once rolled out, the next reconcile writes nothing again.
    set_ready(&fake, "shop", &[]);
    let (_, calls, _) = run(&fake, &stored(&fake, "shop")).await;
    assert_eq!(lines(&writes(&calls)), Vec::<String>::new());

    // Drift of another kind: a ConfigMap value edited, a label removed.
    let configmaps = coll("v1", "configmaps");
    let services = coll("v1", "services");
    {
        let mut st = fake.lock();
        st.get_mut(&configmaps, "shop-config").expect("config")["data"]["RUST_LOG"] =
            json!("trace");
        st.get_mut(&services, "shop-user").expect("service")["metadata"]["labels"]
            .as_object_mut()
            .expect("labels")
            .remove("app.kubernetes.io/part-of");
    }
    let (_, calls, _) = run(&fake, &stored(&fake, "shop")).await;
    assert_eq!(
        lines(&writes(&calls)),
        vec![
            format!("PATCH {configmaps}/shop-config"),
            format!("PATCH {services}/shop-user"),
        ]
    );
    let (_, calls, _) = run(&fake, &stored(&fake, "shop")).await;
    assert_eq!(lines(&writes(&calls)), Vec::<String>::new());
}

#[tokio::test]
async fn a_deployment_not_ready_keeps_the_system_progressing() {
    let fake = Fake::new();
    let obj = system("shop", json!({}), 1);
    assert!(run(&fake, &obj).await.0.is_ok());
    set_ready(&fake, "shop", &[("user", 1)]);
    let obj = stored(&fake, "shop");
    let first_transition =
        condition(&serde_json::to_value(&obj.status).expect("json"), "Ready")["lastTransitionTime"]
            .clone();
    let (_, calls, _) = run(&fake, &obj).await;
    let w = writes(&calls);
    assert_eq!(lines(&w), vec![status_line("shop")]);
    let status = &w[0].body.as_ref().expect("body")["status"];
    assert_eq!(status["phase"], "Progressing");
    let services = condition(status, "ServicesReady");
    assert_eq!(services["status"], "False");
    assert_eq!(services["reason"], "DeploymentsNotReady");
    assert!(
        services["message"]
            .as_str()
            .unwrap_or_default()
            .contains("user 1/2")
    );
    assert_eq!(condition(status, "DatabaseReady")["status"], "True");
    assert_eq!(condition(status, "BrokerReady")["status"], "True");
    assert_eq!(condition(status, "Ready")["reason"], "ServicesNotReady");
    // Ready stayed False: its transition time did not move.
    assert_eq!(
        condition(status, "Ready")["lastTransitionTime"],
        first_transition
    );
    assert_eq!(
        status["components"]["user"],
        json!({"ready": 1, "desired": 2})
    );
}

#[tokio::test]
async fn an_invalid_spec_gets_a_condition_and_an_event_and_no_children() {
    let fake = Fake::new();
    let obj = system(
        "shop",
        json!({"postgres": {"managed": {}, "external": {"secretRef": {"name": "db"}}}}),
        3,
    );
    let (result, calls, _) = run(&fake, &obj).await;
    assert_eq!(
        result,
        Ok(Action::await_change()),
        "no retry loop for an invalid spec"
    );
    assert_eq!(
        calls.iter().map(Call::line).collect::<Vec<_>>(),
        vec![event_line(), status_line("shop")]
    );
    let event = calls[0].body.as_ref().expect("event");
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["reason"], "InvalidSpec");
    assert!(
        event["note"]
            .as_str()
            .unwrap_or_default()
            .contains("postgres.managed and postgres.external")
    );
    let status = &calls[1].body.as_ref().expect("status")["status"];
    assert_eq!(status["phase"], "Failed");
    assert_eq!(status["observedGeneration"], 3);
    assert_eq!(condition(status, "Degraded")["status"], "True");
    assert_eq!(condition(status, "Degraded")["reason"], "InvalidSpec");
    assert_eq!(condition(status, "Ready")["status"], "False");

    // Reconciled again unchanged: nothing at all.
    let obj = stored(&fake, "shop");
    let (_, calls, _) = run(&fake, &obj).await;
    assert!(
        calls.is_empty(),
        "{:?}",
        calls.iter().map(Call::line).collect::<Vec<_>>()
    );
}

fn external_secrets(fake: &Fake) {
    let b = |s: &str| STANDARD.encode(s);
    let mut data = serde_json::Map::new();
    for svc in SVCS {
        data.insert(
            svc.into(),
            json!(b(&format!("postgres://{svc}:pw@db.example:5432/{svc}"))),
        );
    }
    let mut st = fake.lock();
    st.insert(&coll("v1", "secrets"), json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "shop-external-db", "namespace": NS}, "data": data}));
    st.insert(&coll("v1", "secrets"), json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "shop-external-amqp", "namespace": NS}, "data": {"url": b("amqps://u:p@mq.example:5671/%2f")}}));
}

fn external_spec() -> Value {
    json!({
        "postgres": {"external": {"secretRef": {"name": "shop-external-db"}}},
        "rabbitmq": {"external": {"secretRef": {"name": "shop-external-amqp"}}},
    })
}

#[tokio::test]
async fn external_database_mode_copies_urls_and_runs_no_statefulset() {
    let fake = Fake::new();
    external_secrets(&fake);
    let obj = system("shop", external_spec(), 1);
    let (result, calls, _) = run(&fake, &obj).await;
    assert!(result.is_ok(), "{result:?}");
    let secrets = coll("v1", "secrets");
    let reads: Vec<String> = calls
        .iter()
        .filter(|c| !c.is_write())
        .map(Call::line)
        .collect();
    // The referenced Secrets (not labelled, so not cached): one get each.
    let expected_reads = vec![
        format!("GET {secrets}/shop-external-db"),
        format!("GET {secrets}/shop-external-amqp"),
    ];
    assert_eq!(reads, expected_reads);
    let w = writes(&calls);
    assert!(
        w.iter().all(|c| !c.path.contains("statefulsets")),
        "no StatefulSet in external mode"
    );
    assert!(
        w.iter()
            .all(|c| !c.path.ends_with("shop-postgres") && !c.path.ends_with("shop-postgres-init"))
    );
    // URLs copied (server-side apply) into the Secret names of the contract.
    for svc in SVCS {
        let line = format!("PATCH {secrets}/shop-{svc}-db");
        let call = w
            .iter()
            .find(|c| c.line() == line)
            .unwrap_or_else(|| panic!("{line}"));
        let body = call.body.as_ref().expect("body");
        assert_eq!(
            decode(body, "url"),
            format!("postgres://{svc}:pw@db.example:5432/{svc}")
        );
        assert_eq!(body["metadata"]["ownerReferences"][0]["controller"], true);
    }
    let mq = w
        .iter()
        .find(|c| c.line() == format!("PATCH {secrets}/shop-rabbitmq"))
        .expect("amqp copy");
    assert_eq!(
        decode(mq.body.as_ref().expect("body"), "url"),
        "amqps://u:p@mq.example:5671/%2f"
    );
    // Only the JWT key pair and the admin password are generated.
    let created: Vec<&str> = w
        .iter()
        .filter(|c| c.method == "POST" && c.path == secrets)
        .filter_map(|c| c.body.as_ref()?["metadata"]["name"].as_str())
        .collect();
    assert_eq!(created, ["shop-jwt", "shop-admin"]);
    let status = &w.last().expect("status").body.as_ref().expect("body")["status"];
    assert_eq!(
        condition(status, "DatabaseReady")["reason"],
        "ExternalSecretFound"
    );
    assert!(status["components"].get("postgres").is_none());
}

#[tokio::test]
async fn a_missing_external_secret_is_reported_not_crashed_on() {
    let fake = Fake::new();
    let obj = system("shop", external_spec(), 1);
    let (result, calls, _) = run(&fake, &obj).await;
    assert_eq!(result, Ok(Action::requeue(Duration::from_secs(30))));
    let w = writes(&calls);
    assert_eq!(lines(&w), vec![event_line(), status_line("shop")]);
    assert_eq!(
        w[0].body.as_ref().expect("event")["reason"],
        "ExternalSecretInvalid"
    );
    let status = &w[1].body.as_ref().expect("status")["status"];
    assert_eq!(condition(status, "DatabaseReady")["status"], "False");
    assert!(
        condition(status, "DatabaseReady")["message"]
            .as_str()
            .unwrap_or_default()
            .contains("shop-external-db")
    );
    assert_eq!(status["phase"], "Degraded");
}

#[tokio::test]
async fn disabling_the_ingress_deletes_it_and_a_config_change_rolls_the_pods() {
    let fake = Fake::new();
    let obj = system("shop", json!({"ingress": {"enabled": true}}), 1);
    assert!(run(&fake, &obj).await.0.is_ok());
    let deployments = coll("apps/v1", "deployments");
    let hash = |fake: &Fake| {
        fake.lock().get(&deployments, "shop-order").expect("order")["spec"]["template"]["metadata"]
            ["annotations"]["stockmesh.io/config-hash"]
            .clone()
    };
    let before = hash(&fake);

    let mut obj = stored(&fake, "shop");
    obj.spec.ingress.enabled = false;
    obj.spec.log_level = "debug".into();
    obj.metadata.generation = Some(2);
    let (_, calls, _) = run(&fake, &obj).await;
    let w = lines(&writes(&calls));
    assert!(
        w.contains(&format!(
            "DELETE {}/shop",
            coll("networking.k8s.io/v1", "ingresses")
        )),
        "{w:?}"
    );
    assert!(w.contains(&format!("PATCH {}/shop-config", coll("v1", "configmaps"))));
    // The console reads the ConfigMap too (RUST_LOG, timeouts, tracing).
    for svc in DEPLOYABLES {
        assert!(
            w.contains(&format!("PATCH {deployments}/shop-{svc}")),
            "{svc} rolls"
        );
    }
    assert!(
        !w.iter().any(|l| l.contains("/services/")),
        "unchanged Services are not re-applied"
    );
    assert_ne!(hash(&fake), before);
    let updated = calls
        .iter()
        .find(|c| c.body.as_ref().is_some_and(|b| b["reason"] == "Updated"))
        .expect("Updated event");
    assert!(
        updated.body.as_ref().expect("body")["note"]
            .as_str()
            .unwrap_or_default()
            .contains("ConfigMap/shop-config")
    );
}

/// The web console is a component like the services: its readiness counts,
/// the Ingress sends `/` to it (after the API prefixes), the services admit
/// it on their HTTP port; disabling it deletes its objects and takes it out
/// of the Ingress, the services' policies and the status.
#[tokio::test]
async fn the_web_console_counts_for_readiness_and_disabling_it_removes_it() {
    let fake = Fake::new();
    let obj = system("shop", json!({"ingress": {"enabled": true}}), 1);
    assert!(run(&fake, &obj).await.0.is_ok());
    set_ready(&fake, "shop", &[("web", 0)]);
    let (_, calls, _) = run(&fake, &stored(&fake, "shop")).await;
    let w = writes(&calls);
    let status = &w.last().expect("status").body.as_ref().expect("body")["status"];
    assert_eq!(status["phase"], "Progressing");
    assert_eq!(condition(status, "Ready")["reason"], "ServicesNotReady");
    assert_eq!(
        condition(status, "ServicesReady")["message"],
        "waiting for web 0/2"
    );
    assert_eq!(
        status["components"]["web"],
        json!({"ready": 0, "desired": 2})
    );

    let ingresses = coll("networking.k8s.io/v1", "ingresses");
    let policies = coll("networking.k8s.io/v1", "networkpolicies");
    let paths = |fake: &Fake| -> Vec<(String, String)> {
        fake.lock().get(&ingresses, "shop").expect("ingress")["spec"]["rules"][0]["http"]["paths"]
            .as_array()
            .expect("paths")
            .iter()
            .map(|p| {
                (
                    p["path"].as_str().unwrap_or_default().to_owned(),
                    p["backend"]["service"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                )
            })
            .collect()
    };
    assert_eq!(
        paths(&fake).last(),
        Some(&("/".to_owned(), "shop-web".to_owned()))
    );
    let http_peers = |fake: &Fake, svc: &str| -> String {
        fake.lock()
            .get(&policies, &format!("shop-{svc}"))
            .expect("policy")["spec"]["ingress"][0]["from"]
            .to_string()
    };
    for svc in SVCS {
        assert!(
            http_peers(&fake, svc).contains(r#""app.kubernetes.io/component":"web""#),
            "{svc} admits the console"
        );
    }

    let mut obj = stored(&fake, "shop");
    obj.spec.services.web.enabled = false;
    obj.metadata.generation = Some(2);
    let (result, calls, _) = run(&fake, &obj).await;
    assert!(result.is_ok(), "{result:?}");
    let w = lines(&writes(&calls));
    for (gv, resource) in [
        ("apps/v1", "deployments"),
        ("v1", "services"),
        ("policy/v1", "poddisruptionbudgets"),
        ("networking.k8s.io/v1", "networkpolicies"),
    ] {
        let collection = coll(gv, resource);
        assert!(
            w.contains(&format!("DELETE {collection}/shop-web")),
            "{resource}: {w:?}"
        );
        assert!(fake.lock().get(&collection, "shop-web").is_none());
    }
    assert!(w.contains(&format!("PATCH {ingresses}/shop")), "{w:?}");
    assert!(paths(&fake).iter().all(|(p, _)| p != "/"));
    assert_eq!(paths(&fake).len(), 4);
    for svc in SVCS {
        assert!(w.contains(&format!("PATCH {policies}/shop-{svc}")), "{w:?}");
        assert!(!http_peers(&fake, svc).contains("web"), "{svc}");
    }
    // The services' workloads are untouched.
    assert!(
        !w.iter()
            .any(|l| l.starts_with("PATCH") && l.contains("/deployments/")),
        "{w:?}"
    );
    let status = &stored(&fake, "shop").status.expect("status");
    assert!(!status.components.contains_key("web"));
    assert_eq!(status.phase.map(|p| p.as_str()), Some("Ready"));
}

#[tokio::test]
async fn an_api_failure_is_an_error_with_event_status_and_metric() {
    let fake = Fake::new();
    fake.lock()
        .forbidden
        .push(format!("PATCH {}", coll("apps/v1", "deployments")));
    let obj = system("shop", json!({}), 1);
    let (result, calls, metrics) = run(&fake, &obj).await;
    assert!(result.is_err());
    let w = writes(&calls);
    let event = w
        .iter()
        .rev()
        .find(|c| c.line() == event_line())
        .expect("failure event");
    assert_eq!(
        event.body.as_ref().expect("body")["reason"],
        "ReconcileFailed"
    );
    assert_eq!(event.body.as_ref().expect("body")["type"], "Warning");
    let status = &w.last().expect("status").body.as_ref().expect("body")["status"];
    assert_eq!(w.last().expect("last").line(), status_line("shop"));
    assert_eq!(condition(status, "Degraded")["reason"], "ReconcileFailed");
    assert_eq!(status["phase"], "Degraded");
    assert!(
        metrics
            .encode()
            .contains("stockmesh_operator_reconcile_failures_total{reason=\"Forbidden\"} 1")
    );
}

#[test]
fn backoff_doubles_up_to_five_minutes() {
    use stockmesh_operator::controller::backoff;
    assert_eq!(backoff(1), Duration::from_secs(5));
    assert_eq!(backoff(2), Duration::from_secs(10));
    assert_eq!(backoff(4), Duration::from_secs(40));
    assert_eq!(backoff(30), Duration::from_secs(300));
}

/// One operator process (one `Context`, so one memory) reconciling a
/// resource several times against the fake, as the controller does on
/// resyncs and owned-object events.
struct Operator {
    ctx: Arc<Context>,
    server: tokio::task::JoinHandle<()>,
    metrics: Arc<Metrics>,
}

impl Operator {
    fn start(fake: &Fake) -> Self {
        let (client, server) = fake.client();
        let metrics = Arc::new(Metrics::new());
        Self {
            ctx: Arc::new(Context::new(client, metrics.clone(), None)),
            server,
            metrics,
        }
    }

    async fn reconcile(&self, fake: &Fake, obj: &InventorySystem) -> Vec<Call> {
        fake.lock()
            .insert(&cr_collection(), serde_json::to_value(obj).expect("json"));
        prime(&self.ctx, fake);
        let result = tokio::time::timeout(
            Duration::from_secs(20),
            reconcile(Arc::new(obj.clone()), self.ctx.clone()),
        )
        .await
        .expect("reconcile finishes");
        assert!(result.is_ok(), "{:?}", result.err().map(|e| e.to_string()));
        let violations = fake.lock().rbac_violations.clone();
        assert!(violations.is_empty(), "{violations:?}");
        fake.take_calls()
    }

    async fn stop(self) {
        drop(self.ctx);
        tokio::time::timeout(Duration::from_secs(5), self.server)
            .await
            .expect("fake server stops")
            .expect("fake server ok");
    }
}

const RETENTION: &str = "/spec/persistentVolumeClaimRetentionPolicy";

/// Kubernetes 1.26 drops a StatefulSet's persistentVolumeClaimRetentionPolicy
/// (alpha there); the operator used to see that as drift and re-apply both
/// StatefulSets on every resync, forever.
#[tokio::test]
async fn a_field_the_server_drops_is_not_drift_and_the_steady_state_writes_nothing() {
    let fake = Fake::new();
    fake.lock()
        .drop_on_apply
        .push(("StatefulSet".into(), RETENTION.into()));
    let statefulsets = coll("apps/v1", "statefulsets");
    let op = Operator::start(&fake);
    let obj = system("shop", json!({}), 1);
    op.reconcile(&fake, &obj).await;
    for sts in ["shop-postgres", "shop-rabbitmq"] {
        let stored = fake.lock().get(&statefulsets, sts).cloned().expect("sts");
        assert!(
            stored.pointer(RETENTION).is_none(),
            "the fake server really dropped it"
        );
    }
    set_ready(&fake, "shop", &[]);
    let calls = op.reconcile(&fake, &stored(&fake, "shop")).await;
    assert_eq!(
        lines(&writes(&calls)),
        vec![event_line(), status_line("shop")]
    );
    // Resyncs: nothing written, again and again.
    for _ in 0..3 {
        let calls = op.reconcile(&fake, &stored(&fake, "shop")).await;
        assert_eq!(lines(&writes(&calls)), Vec::<String>::new());
    }
    assert!(!op.metrics.encode().contains("repair"));

    // A real edit of the same StatefulSet is still drift, repaired once.
    fake.lock()
        .get_mut(&statefulsets, "shop-rabbitmq")
        .expect("sts")["spec"]["replicas"] = json!(0);
    let calls = op.reconcile(&fake, &stored(&fake, "shop")).await;
    assert_eq!(
        lines(&writes(&calls)),
        vec![format!("PATCH {statefulsets}/shop-rabbitmq")]
    );
    set_ready(&fake, "shop", &[]);
    let calls = op.reconcile(&fake, &stored(&fake, "shop")).await;
    assert_eq!(lines(&writes(&calls)), Vec::<String>::new());

    // A new desired object (keepVolumes changed) is applied once; what the
    // server drops is learnt again for it.
    let mut changed = stored(&fake, "shop");
    changed.spec.postgres.managed = Some(stockmesh_operator::crd::ManagedPostgres {
        keep_volumes: false,
        ..Default::default()
    });
    changed.metadata.generation = Some(2);
    let calls = op.reconcile(&fake, &changed).await;
    assert!(
        lines(&writes(&calls)).contains(&format!("PATCH {statefulsets}/shop-postgres")),
        "{:?}",
        lines(&writes(&calls))
    );
    set_ready(&fake, "shop", &[]);
    for _ in 0..2 {
        let calls = op.reconcile(&fake, &stored(&fake, "shop")).await;
        let w: Vec<String> = lines(&writes(&calls))
            .into_iter()
            .filter(|l| !l.ends_with("/status") && !l.contains("/events"))
            .collect();
        assert_eq!(w, Vec::<String>::new());
    }
    op.stop().await;

    // A restarted operator has no memory: it finds the field missing, applies
    // each StatefulSet once, learns that the server drops it, and is quiet.
    let op = Operator::start(&fake);
    let calls = op.reconcile(&fake, &stored(&fake, "shop")).await;
    assert_eq!(
        lines(&writes(&calls)),
        vec![
            format!("PATCH {statefulsets}/shop-postgres"),
            format!("PATCH {statefulsets}/shop-rabbitmq"),
        ]
    );
    set_ready(&fake, "shop", &[]);
    let calls = op.reconcile(&fake, &stored(&fake, "shop")).await;
    assert_eq!(lines(&writes(&calls)), Vec::<String>::new());
    op.stop().await;
}

/// A mutating webhook or `kubectl set env` (another field manager) adds
/// entries to lists Kubernetes merges by key: an env variable first in the
/// list, a sidecar container, a volume and its mount, a container port.
/// None of that is drift; comparing lists by index re-applied the
/// Deployment on every resync.
#[tokio::test]
async fn entries_another_manager_added_to_merged_lists_trigger_no_apply() {
    let fake = Fake::new();
    assert!(run(&fake, &system("shop", json!({}), 1)).await.0.is_ok());
    set_ready(&fake, "shop", &[]);
    assert!(run(&fake, &stored(&fake, "shop")).await.0.is_ok());
    let deployments = coll("apps/v1", "deployments");
    let services = coll("v1", "services");
    {
        let mut st = fake.lock();
        let d = st.get_mut(&deployments, "shop-order").expect("order");
        let pod = &mut d["spec"]["template"]["spec"];
        let c = &mut pod["containers"][0];
        c["env"]
            .as_array_mut()
            .expect("env")
            .insert(0, json!({"name": "INJECTED_BY_WEBHOOK", "value": "1"}));
        c["ports"].as_array_mut().expect("ports").insert(
            0,
            json!({"name": "debug", "containerPort": 9229, "protocol": "TCP"}),
        );
        c["volumeMounts"]
            .as_array_mut()
            .expect("mounts")
            .insert(0, json!({"name": "certs", "mountPath": "/etc/certs"}));
        pod["volumes"]
            .as_array_mut()
            .expect("volumes")
            .insert(0, json!({"name": "certs", "emptyDir": {}}));
        pod["containers"]
            .as_array_mut()
            .expect("containers")
            .insert(0, json!({"name": "proxy", "image": "mesh/proxy:1"}));
        let svc = st.get_mut(&services, "shop-product").expect("service");
        svc["spec"]["ports"].as_array_mut().expect("ports").insert(
            0,
            json!({"name": "metrics", "port": 9090, "protocol": "TCP"}),
        );
    }
    for _ in 0..2 {
        let (result, calls, metrics) = run(&fake, &stored(&fake, "shop")).await;
        assert!(result.is_ok());
        assert_eq!(lines(&writes(&calls)), Vec::<String>::new());
        assert!(!metrics.encode().contains("repair"));
    }

    // One of our own entries removed (wherever the others put theirs): drift.
    {
        let mut st = fake.lock();
        let d = st.get_mut(&deployments, "shop-order").expect("order");
        let env = d["spec"]["template"]["spec"]["containers"][1]["env"]
            .as_array_mut()
            .expect("env");
        env.retain(|e| e["name"] != "PRODUCT_GRPC_URL");
    }
    let (_, calls, _) = run(&fake, &stored(&fake, "shop")).await;
    let w = writes(&calls);
    assert_eq!(lines(&w), vec![format!("PATCH {deployments}/shop-order")]);
    let body = w[0].body.as_ref().expect("body");
    assert!(
        body["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .expect("env")
            .iter()
            .any(|e| e["name"] == "PRODUCT_GRPC_URL")
    );
}

fn external_secrets_versioned(fake: &Fake, password: &str, rv: &str) {
    let b = |s: &str| STANDARD.encode(s);
    let mut data = serde_json::Map::new();
    for svc in SVCS {
        data.insert(
            svc.into(),
            json!(b(&format!(
                "postgres://{svc}:{password}@db.example:5432/{svc}"
            ))),
        );
    }
    let mut st = fake.lock();
    st.insert(&coll("v1", "secrets"), json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "shop-external-db", "namespace": NS, "uid": "db-uid", "resourceVersion": rv}, "data": data}));
    st.insert(&coll("v1", "secrets"), json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "shop-external-amqp", "namespace": NS, "uid": "mq-uid", "resourceVersion": rv}, "data": {"url": b(&format!("amqps://u:{password}@mq.example:5671/%2f"))}}));
}

/// Everything the fake holds except Secret data and Events.
fn all_but_secret_values(fake: &Fake) -> Vec<(String, Value)> {
    let st = fake.lock();
    let mut out = Vec::new();
    for (collection, objects) in &st.objects {
        if collection.ends_with("/events") {
            continue;
        }
        for (name, obj) in objects {
            let mut o = obj.clone();
            if collection.ends_with("/secrets")
                && let Some(m) = o.as_object_mut()
            {
                m.remove("data");
            }
            out.push((format!("{collection}/{name}"), o));
        }
    }
    out
}

/// External mode: the URLs (passwords included) are copied into the pods'
/// Secrets, but no annotation, label or ConfigMap of any object holds them
/// or anything computed from them: two systems whose external Secrets differ
/// only in their values are identical outside Secret data. A new version of
/// an external Secret is copied and rolls the pods.
#[tokio::test]
async fn external_secret_values_never_reach_annotations_and_a_new_version_rolls_the_pods() {
    let (a, b) = (Fake::new(), Fake::new());
    external_secrets_versioned(&a, "first-password-4f7a", "100");
    external_secrets_versioned(&b, "other-password-9c2e", "100");
    let obj = system("shop", external_spec(), 1);
    assert!(run(&a, &obj).await.0.is_ok());
    assert!(run(&b, &obj).await.0.is_ok());
    let (sa, sb) = (all_but_secret_values(&a), all_but_secret_values(&b));
    assert_eq!(sa.len(), sb.len());
    // Condition timestamps are when each run happened (a run may cross a
    // second boundary), not a function of the Secret: left out.
    let timeless = |v: &serde_json::Value| {
        let mut v = v.clone();
        if let Some(conditions) = v
            .pointer_mut("/status/conditions")
            .and_then(|c| c.as_array_mut())
        {
            for condition in conditions {
                if let Some(map) = condition.as_object_mut() {
                    map.remove("lastTransitionTime");
                }
            }
        }
        v
    };
    for ((name, x), (_, y)) in sa.iter().zip(&sb) {
        assert_eq!(
            timeless(x),
            timeless(y),
            "{name} depends on the external Secret's values"
        );
        assert!(!x.to_string().contains("first-password-4f7a"), "{name}");
    }

    // The external database Secret changes (a rotated password): the
    // copies are applied again and every service rolls.
    let deployments = coll("apps/v1", "deployments");
    let hash = |fake: &Fake| {
        fake.lock().get(&deployments, "shop-user").expect("user")["spec"]["template"]["metadata"]
            ["annotations"]["stockmesh.io/config-hash"]
            .clone()
    };
    let before = hash(&a);
    external_secrets_versioned(&a, "rotated-password-1b3d", "101");
    let (_, calls, _) = run(&a, &stored(&a, "shop")).await;
    let w = lines(&writes(&calls));
    let secrets = coll("v1", "secrets");
    for svc in SVCS {
        assert!(
            w.contains(&format!("PATCH {secrets}/shop-{svc}-db")),
            "{w:?}"
        );
        assert!(
            w.contains(&format!("PATCH {deployments}/shop-{svc}")),
            "{w:?}"
        );
    }
    assert_ne!(hash(&a), before);
    assert_eq!(
        decode(a.lock().get(&secrets, "shop-user-db").expect("copy"), "url"),
        "postgres://user:rotated-password-1b3d@db.example:5432/user"
    );
    // And then nothing more.
    let (_, calls, _) = run(&a, &stored(&a, "shop")).await;
    let w: Vec<String> = lines(&writes(&calls))
        .into_iter()
        .filter(|l| !l.ends_with("/status") && !l.contains("/events"))
        .collect();
    assert_eq!(w, Vec::<String>::new());
}

/// The API calls of one reconcile, as the metrics count them: the first
/// creates everything, the steady state sends nothing, and the counts agree
/// with what the (mocked) API server received.
#[tokio::test]
async fn api_calls_per_reconcile_are_counted_and_zero_in_the_steady_state() {
    let fake = Fake::new();
    let op = Operator::start(&fake);
    let obj = system("shop", json!({}), 1);
    let first = op.reconcile(&fake, &obj).await;
    let count = |calls: &[Call], method: &str| calls.iter().filter(|c| c.method == method).count();
    let text = op.metrics.encode();
    let patches = count(&first, "PATCH");
    let creates = count(&first, "POST");
    assert!(patches > 20 && creates > 5, "{first:?}");
    for (verb, n) in [
        ("patch", patches),
        ("create", creates),
        ("list", 0),
        ("get", 0),
    ] {
        let sum =
            format!("stockmesh_operator_api_calls_per_reconcile_sum{{verb=\"{verb}\"}} {n}.0");
        assert!(text.contains(&sum), "{sum} in\n{text}");
    }
    assert!(
        // The five services and the web console.
        text.contains("stockmesh_operator_api_calls_total{verb=\"patch\",kind=\"Deployment\"} 6"),
        "{text}"
    );

    set_ready(&fake, "shop", &[]);
    op.reconcile(&fake, &stored(&fake, "shop")).await;
    for _ in 0..3 {
        let calls = op.reconcile(&fake, &stored(&fake, "shop")).await;
        assert_eq!(
            calls.iter().map(Call::line).collect::<Vec<_>>(),
            Vec::<String>::new()
        );
    }
    let text = op.metrics.encode();
    // Five reconciles; the last three (and the list of every one) at zero.
    assert!(
        text.contains(
            "stockmesh_operator_api_calls_per_reconcile_bucket{le=\"0.0\",verb=\"list\"} 5"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "stockmesh_operator_api_calls_per_reconcile_bucket{le=\"0.0\",verb=\"patch\"} 3"
        ),
        "{text}"
    );
    op.stop().await;
}

/// A deleted InventorySystem leaves no failure count (backoff) or drift
/// memory behind in the reconciler.
#[tokio::test]
async fn a_deleted_system_leaves_no_per_object_state() {
    let fake = Fake::new();
    fake.lock()
        .drop_on_apply
        .push(("StatefulSet".into(), RETENTION.into()));
    let op = Operator::start(&fake);
    let obj = system("shop", json!({}), 1);
    op.reconcile(&fake, &obj).await;
    // The server dropped a field: remembered for the drift check.
    assert_eq!(op.ctx.remembered_systems(), 1);
    // A failing system: a failure count for its backoff.
    let other = system("other", json!({}), 1);
    stockmesh_operator::controller::error_policy(
        Arc::new(other.clone()),
        &stockmesh_operator::controller::Error::Json(serde_json::Error::io(std::io::Error::other(
            "x",
        ))),
        op.ctx.clone(),
    );
    assert_eq!(op.ctx.remembered_systems(), 2);

    op.ctx.forget_system(NS, "shop");
    assert_eq!(op.ctx.remembered_systems(), 1);
    // A relist that no longer finds `other` forgets it too; another
    // namespace's relist does not.
    op.ctx
        .retain_systems(Some("elsewhere"), &Default::default());
    assert_eq!(op.ctx.remembered_systems(), 1);
    op.ctx.retain_systems(Some(NS), &Default::default());
    assert_eq!(op.ctx.remembered_systems(), 0);
    op.stop().await;
}
