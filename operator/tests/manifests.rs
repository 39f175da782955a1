//! Every object the builders produce for the example resources: valid
//! Kubernetes 1.33 and 1.37 objects (`kubernetes-validate --strict`), the
//! restricted Pod Security rules, and the deployment contract.

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use common::{DEPLOYABLES, SVCS, repo_root, tool};
use serde_json::Value;
use stockmesh_operator::render::{RenderOptions, render_objects};
use stockmesh_operator::{Desired, Kind};

fn example(name: &str) -> String {
    let path = repo_root().join("k8s/examples").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn render(name: &str) -> Vec<Desired> {
    render_objects(&example(name), &RenderOptions::default()).expect("renders")
}

fn find<'a>(objs: &'a [Desired], kind: Kind, name: &str) -> &'a Value {
    &objs
        .iter()
        .find(|d| d.kind == kind && d.name == name)
        .unwrap_or_else(|| panic!("{kind:?}/{name} not rendered"))
        .object
}

fn kubernetes_validate(label: &str, objs: &[Desired]) {
    let dir = std::env::temp_dir().join(format!(
        "stockmesh-operator-validate-{}-{label}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("objects.yaml");
    let mut yaml = String::new();
    for d in objs {
        yaml.push_str("---\n");
        yaml.push_str(&serde_yaml::to_string(&d.object).expect("yaml"));
    }
    std::fs::write(&file, yaml).expect("write");
    let exe = tool("kubernetes-validate");
    for version in ["1.33.0", "1.37.0"] {
        let out = Command::new(&exe)
            .args(["--strict", "--quiet", "-k", version])
            .arg(&file)
            .output()
            .expect("run kubernetes-validate");
        assert!(
            out.status.success(),
            "{label}: objects are invalid for Kubernetes {version}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn every_object_is_valid_for_kubernetes_1_33_and_1_37() {
    for ex in ["minimal.yaml", "full.yaml", "external-database.yaml"] {
        let objs = render(ex);
        assert!(objs.len() > 25, "{ex}: only {} objects", objs.len());
        kubernetes_validate(ex.trim_end_matches(".yaml"), &objs);
    }
}

#[test]
fn the_validator_really_rejects_invalid_objects() {
    // Guard against a validator that passes everything.
    let mut objs = render("minimal.yaml");
    let d = objs
        .iter_mut()
        .find(|d| d.kind == Kind::Deployment)
        .expect("deployment");
    d.object["spec"]["template"]["spec"]["containers"][0]["notAField"] = Value::Bool(true);
    let dir = std::env::temp_dir().join(format!(
        "stockmesh-operator-negative-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("bad.yaml");
    std::fs::write(&file, serde_yaml::to_string(&d.object).expect("yaml")).expect("write");
    let out = Command::new(tool("kubernetes-validate"))
        .args(["--strict", "--quiet", "-k", "1.33.0"])
        .arg(&file)
        .output()
        .expect("run");
    assert!(
        !out.status.success(),
        "an unknown field must fail --strict validation"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn pod_templates(objs: &[Desired]) -> Vec<(&str, &Value)> {
    objs.iter()
        .filter(|d| matches!(d.kind, Kind::Deployment | Kind::StatefulSet))
        .map(|d| (d.name.as_str(), &d.object["spec"]["template"]["spec"]))
        .collect()
}

#[test]
fn every_pod_meets_the_restricted_pod_security_standard() {
    for ex in ["minimal.yaml", "full.yaml", "external-database.yaml"] {
        let objs = render(ex);
        let pods = pod_templates(&objs);
        assert!(pods.len() >= 5);
        for (name, pod) in pods {
            let psc = &pod["securityContext"];
            assert_eq!(psc["runAsNonRoot"], true, "{name}");
            assert!(psc["runAsUser"].as_i64().is_some_and(|u| u > 0), "{name}");
            assert_eq!(psc["seccompProfile"]["type"], "RuntimeDefault", "{name}");
            assert_eq!(pod["automountServiceAccountToken"], false, "{name}");
            for forbidden in ["hostNetwork", "hostPID", "hostIPC"] {
                assert!(pod.get(forbidden).is_none(), "{name}: {forbidden}");
            }
            for v in pod["volumes"].as_array().into_iter().flatten() {
                assert!(v.get("hostPath").is_none(), "{name}: hostPath volume");
            }
            let containers = pod["containers"].as_array().expect("containers");
            let init = pod["initContainers"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            for c in containers.iter().chain(init.iter()) {
                let sc = &c["securityContext"];
                assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}");
                assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}");
                assert_eq!(sc["privileged"], false, "{name}");
                assert_eq!(
                    sc["capabilities"]["drop"],
                    serde_json::json!(["ALL"]),
                    "{name}"
                );
                assert!(sc["capabilities"].get("add").is_none(), "{name}");
                assert!(c["resources"]["requests"].is_object(), "{name}: requests");
                assert!(
                    c["resources"]["limits"]["memory"].is_string(),
                    "{name}: memory limit"
                );
                for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
                    assert!(c[probe].is_object(), "{name}: {probe}");
                }
            }
        }
    }
}

fn env_names(deploy: &Value) -> Vec<String> {
    deploy["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .expect("env")
        .iter()
        .map(|e| e["name"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn env<'a>(deploy: &'a Value, name: &str) -> &'a Value {
    deploy["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .and_then(|e| e.iter().find(|v| v["name"] == name))
        .unwrap_or_else(|| panic!("env {name}"))
}

#[test]
fn deployments_follow_the_deployment_contract() {
    let objs = render("full.yaml");
    for svc in SVCS {
        let d = find(&objs, Kind::Deployment, &format!("shop-{svc}"));
        let pod = &d["spec"]["template"]["spec"];
        let c = &pod["containers"][0];
        assert_eq!(c["image"], format!("ghcr.io/stockmesh/{svc}:0.1.0"));
        // full.yaml: drain 8000 ms + grace 15000 ms + 5 s for the exit.
        assert_eq!(pod["terminationGracePeriodSeconds"], 28);
        assert_eq!(pod["securityContext"]["runAsUser"], 65532);
        assert_eq!(pod["securityContext"]["fsGroup"], 65532);
        let ports: Vec<(String, i64)> = c["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .map(|p| {
                (
                    p["name"].as_str().unwrap_or_default().to_owned(),
                    p["containerPort"].as_i64().unwrap_or(0),
                )
            })
            .collect();
        let grpc = svc == "product" || svc == "inventory";
        let mut want = vec![("http".to_owned(), 8080)];
        if grpc {
            want.push(("grpc".to_owned(), 50051));
        }
        assert_eq!(ports, want, "{svc}");
        // Probes.
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
        assert_eq!(c["livenessProbe"]["periodSeconds"], 10);
        assert_eq!(c["livenessProbe"]["failureThreshold"], 3);
        if svc == "inventory" {
            for p in ["startupProbe", "readinessProbe"] {
                assert_eq!(c[p]["grpc"]["port"], 50051, "{p}");
                assert_eq!(c[p]["grpc"]["service"], "", "{p}");
            }
        } else {
            assert_eq!(c["startupProbe"]["httpGet"]["path"], "/healthz");
            assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
        }
        assert_eq!(c["startupProbe"]["periodSeconds"], 2);
        assert_eq!(c["startupProbe"]["failureThreshold"], 30);
        assert_eq!(c["readinessProbe"]["periodSeconds"], 5);
        assert_eq!(c["readinessProbe"]["failureThreshold"], 2);
        // Environment.
        let names = env_names(d);
        for common in [
            "HTTP_ADDR",
            "LOG_FORMAT",
            "RUST_LOG",
            "DATABASE_URL",
            "SHUTDOWN_GRACE_MS",
            "REQUEST_TIMEOUT_MS",
            "POD_NAME",
            "POD_NAMESPACE",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_TRACES_SAMPLER",
            "OTEL_TRACES_SAMPLER_ARG",
            "OTEL_RESOURCE_ATTRIBUTES",
            "DEPLOYMENT_ENVIRONMENT",
        ] {
            assert!(names.iter().any(|n| n == common), "{svc}: {common}");
        }
        assert_eq!(
            names.iter().any(|n| n == "GRPC_ADDR"),
            grpc,
            "{svc}: GRPC_ADDR"
        );
        // $(POD_NAME) only expands if POD_NAME comes first.
        let pos = |n: &str| names.iter().position(|x| x == n).expect("present");
        assert!(pos("POD_NAME") < pos("OTEL_RESOURCE_ATTRIBUTES"));
        assert_eq!(
            env(d, "OTEL_RESOURCE_ATTRIBUTES")["value"],
            "k8s.pod.name=$(POD_NAME),k8s.namespace.name=$(POD_NAMESPACE)"
        );
        assert_eq!(
            env(d, "DATABASE_URL")["valueFrom"]["secretKeyRef"],
            serde_json::json!({"name": format!("shop-{svc}-db"), "key": "url"})
        );
        assert_eq!(
            env(d, "RUST_LOG")["valueFrom"]["configMapKeyRef"]["name"],
            "shop-config"
        );
        assert_eq!(env(d, "SHUTDOWN_DRAIN_MS")["value"], "8000");
        assert_eq!(env(d, "SHUTDOWN_GRACE_MS")["value"], "15000");
        assert_eq!(env(d, "DATABASE_ACQUIRE_TIMEOUT_MS")["value"], "1000");
        // The preStop hook drains over HTTP (no shell in the images).
        assert_eq!(
            c["lifecycle"]["preStop"]["httpGet"],
            serde_json::json!({"path": "/drain", "port": "http"})
        );
        assert_eq!(
            env(d, "OTEL_TRACES_SAMPLER")["value"],
            "parentbased_traceidratio"
        );
        let jwt = svc != "inventory";
        assert_eq!(
            names.iter().any(|n| n == "JWT_PUBLIC_KEY_FILE"),
            jwt,
            "{svc}"
        );
        assert_eq!(
            names.iter().any(|n| n == "JWT_PRIVATE_KEY_FILE"),
            svc == "user",
            "{svc}"
        );
        assert_eq!(
            names.iter().any(|n| n == "AMQP_URL"),
            svc == "order" || svc == "notification",
            "{svc}"
        );
        assert_eq!(
            names.iter().any(|n| n == "INVENTORY_GRPC_URL"),
            svc == "order" || svc == "product",
            "{svc}"
        );
        assert_eq!(
            names.iter().any(|n| n == "PRODUCT_GRPC_URL"),
            svc == "order",
            "{svc}"
        );
        let mounts = c["volumeMounts"].as_array().expect("mounts");
        assert_eq!(
            mounts
                .iter()
                .any(|m| m["mountPath"] == "/etc/stockmesh/jwt" && m["readOnly"] == true),
            jwt,
            "{svc}"
        );
        assert!(
            d["spec"]["template"]["metadata"]["annotations"]["stockmesh.io/config-hash"]
                .is_string()
        );
    }
    let user = find(&objs, Kind::Deployment, "shop-user");
    assert_eq!(
        env(user, "AUTH_COOKIE_SECURE")["value"],
        "true",
        "TLS on the Ingress"
    );
    assert_eq!(
        env(user, "STOCKMESH_ADMIN_PASSWORD")["valueFrom"]["secretKeyRef"]["name"],
        "shop-admin"
    );
    let order = find(&objs, Kind::Deployment, "shop-order");
    assert_eq!(
        env(order, "PRODUCT_GRPC_URL")["value"],
        "http://shop-product-grpc:50051"
    );
    assert_eq!(
        env(order, "INVENTORY_GRPC_URL")["value"],
        "http://shop-inventory-grpc:50051"
    );
    assert_eq!(
        env(order, "AMQP_URL")["valueFrom"]["secretKeyRef"],
        serde_json::json!({"name": "shop-rabbitmq", "key": "url"})
    );
    // Only the user service can read the private key.
    let product = find(&objs, Kind::Deployment, "shop-product");
    let vols = product["spec"]["template"]["spec"]["volumes"].to_string();
    assert!(!vols.contains("private.pem"));
    // Tracing off: no endpoint variable at all.
    let minimal = render("minimal.yaml");
    let user = find(&minimal, Kind::Deployment, "shop-user");
    assert!(
        !env_names(user)
            .iter()
            .any(|n| n == "OTEL_EXPORTER_OTLP_ENDPOINT")
    );
    assert_eq!(env(user, "AUTH_COOKIE_SECURE")["value"], "false");
    assert_eq!(user["spec"]["replicas"], 2, "default replicas");
}

/// The web console's Deployment: the services' pod shape (probes, drain,
/// security, /tmp, the public JWT key for its admin-only system page) with
/// no database or broker, and the URLs of the five services' HTTP ports.
#[test]
fn the_web_console_follows_the_deployment_contract() {
    let objs = render("full.yaml");
    let d = find(&objs, Kind::Deployment, "shop-web");
    assert_eq!(d["spec"]["replicas"], 2);
    let pod = &d["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(c["name"], "web");
    assert_eq!(c["image"], "ghcr.io/stockmesh/web:0.1.0");
    assert_eq!(
        c["resources"],
        serde_json::json!({"requests": {"cpu": "50m", "memory": "48Mi"}, "limits": {"memory": "128Mi"}})
    );
    assert_eq!(
        c["ports"],
        serde_json::json!([{"name": "http", "containerPort": 8080, "protocol": "TCP"}])
    );
    for (probe, path, period, failure) in [
        ("startupProbe", "/healthz", 2, 30),
        ("livenessProbe", "/healthz", 10, 3),
        ("readinessProbe", "/readyz", 5, 2),
    ] {
        assert_eq!(c[probe]["httpGet"]["path"], path, "{probe}");
        assert_eq!(c[probe]["httpGet"]["port"], "http", "{probe}");
        assert_eq!(c[probe]["periodSeconds"], period, "{probe}");
        assert_eq!(c[probe]["failureThreshold"], failure, "{probe}");
    }
    assert_eq!(
        c["lifecycle"]["preStop"]["httpGet"],
        serde_json::json!({"path": "/drain", "port": "http"})
    );
    assert_eq!(pod["terminationGracePeriodSeconds"], 28);
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert!(
        d["spec"]["template"]["metadata"]["annotations"]["stockmesh.io/config-hash"].is_string()
    );

    let mut names = env_names(d);
    names.sort();
    let mut want = vec![
        "DEPLOYMENT_ENVIRONMENT",
        "HTTP_ADDR",
        "INVENTORY_HTTP_URL",
        "JAEGER_UI_URL",
        "JWT_AUDIENCE",
        "JWT_ISSUER",
        "JWT_PUBLIC_KEY_FILE",
        "LOG_FORMAT",
        "NOTIFICATION_HTTP_URL",
        "ORDER_HTTP_URL",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_RESOURCE_ATTRIBUTES",
        "OTEL_TRACES_SAMPLER",
        "OTEL_TRACES_SAMPLER_ARG",
        "POD_NAME",
        "POD_NAMESPACE",
        "PRODUCT_HTTP_URL",
        "REQUEST_TIMEOUT_MS",
        "RUST_LOG",
        "SHUTDOWN_DRAIN_MS",
        "SHUTDOWN_GRACE_MS",
        "USER_HTTP_URL",
    ];
    want.sort_unstable();
    assert_eq!(names, want, "no DATABASE_URL, AMQP_URL or private key");
    assert_eq!(env(d, "HTTP_ADDR")["value"], "0.0.0.0:8080");
    assert_eq!(
        env(d, "JWT_PUBLIC_KEY_FILE")["value"],
        "/etc/stockmesh/jwt/public.pem"
    );
    assert_eq!(
        env(d, "JAEGER_UI_URL")["value"],
        "https://jaeger.shop.example.com"
    );
    assert_eq!(env(d, "SHUTDOWN_DRAIN_MS")["value"], "8000");
    for svc in SVCS {
        let url = &env(d, &format!("{}_HTTP_URL", svc.to_uppercase()))["value"];
        assert_eq!(*url, format!("http://shop-{svc}:8080"));
        // ... a Service that exists, on the port the services' HTTP serves.
        let s = find(&objs, Kind::Service, &format!("shop-{svc}"));
        assert_eq!(s["spec"]["ports"][0]["port"], 8080, "{svc}");
    }
    // Only the public key is mounted.
    let volumes = pod["volumes"].to_string();
    assert!(volumes.contains("public.pem") && !volumes.contains("private.pem"));
    assert!(
        c["volumeMounts"]
            .as_array()
            .expect("mounts")
            .iter()
            .any(|m| m["mountPath"] == "/etc/stockmesh/jwt" && m["readOnly"] == true)
    );

    // Defaults: on, two replicas, the console's resources, no trace links.
    let minimal = render("minimal.yaml");
    let d = find(&minimal, Kind::Deployment, "shop-web");
    assert_eq!(d["spec"]["replicas"], 2);
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["resources"],
        serde_json::json!({"requests": {"cpu": "25m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}})
    );
    assert!(!env_names(d).iter().any(|n| n == "JAEGER_UI_URL"));
    assert!(
        !env_names(d)
            .iter()
            .any(|n| n == "OTEL_EXPORTER_OTLP_ENDPOINT")
    );
}

/// `services.web.enabled: false`: the API only; nothing named after the
/// console, no `/` path, no service admits it.
#[test]
fn a_disabled_web_console_leaves_no_trace() {
    let objs = render_objects(
        &example("minimal.yaml").replace(
            "spec: {}",
            "spec:\n  ingress: {enabled: true}\n  services:\n    web: {enabled: false}",
        ),
        &RenderOptions::default(),
    )
    .expect("renders");
    assert!(
        objs.iter().all(|d| !d.name.contains("web")),
        "{:?}",
        objs.iter()
            .filter(|d| d.name.contains("web"))
            .map(|d| &d.name)
            .collect::<Vec<_>>()
    );
    assert_eq!(
        objs.iter().filter(|d| d.kind == Kind::Deployment).count(),
        5
    );
    let ing = find(&objs, Kind::Ingress, "shop");
    assert_eq!(
        ing["spec"]["rules"][0]["http"]["paths"]
            .as_array()
            .expect("paths")
            .len(),
        4
    );
    for d in objs.iter().filter(|d| d.kind == Kind::NetworkPolicy) {
        assert!(
            !d.object.to_string().contains("web"),
            "{} still mentions the console",
            d.name
        );
    }
    // Its settings are checked like a service's (an API server without CEL
    // or schema validation lets them through).
    let err = render_objects(
        &example("minimal.yaml").replace(
            "spec: {}",
            "spec:\n  services:\n    web: {replicas: 51, jaegerUiUrl: jaeger:16686}",
        ),
        &RenderOptions::default(),
    )
    .expect_err("invalid")
    .to_string();
    assert!(
        err.contains("services.web.replicas must be between 0 and 50"),
        "{err}"
    );
    assert!(err.contains("services.web.jaegerUiUrl"), "{err}");
}

#[test]
fn services_ingress_and_pdbs_follow_the_contract() {
    let objs = render("full.yaml");
    for svc in DEPLOYABLES {
        let s = find(&objs, Kind::Service, &format!("shop-{svc}"));
        assert_eq!(s["spec"]["type"], "ClusterIP");
        assert_eq!(s["spec"]["ports"][0]["name"], "http");
        assert_eq!(s["spec"]["ports"][0]["port"], 8080);
        let pdb = find(&objs, Kind::PodDisruptionBudget, &format!("shop-{svc}"));
        assert_eq!(pdb["spec"]["maxUnavailable"], 1);
        assert_eq!(
            pdb["spec"]["selector"]["matchLabels"],
            find(&objs, Kind::Deployment, &format!("shop-{svc}"))["spec"]["selector"]["matchLabels"]
        );
    }
    for svc in ["product", "inventory"] {
        let s = find(&objs, Kind::Service, &format!("shop-{svc}-grpc"));
        assert_eq!(s["spec"]["clusterIP"], "None");
        assert_eq!(
            s["spec"]["ports"],
            serde_json::json!([{"name": "grpc", "port": 50051, "targetPort": "grpc", "protocol": "TCP", "appProtocol": "grpc"}])
        );
        assert_eq!(
            find(&objs, Kind::Service, &format!("shop-{svc}"))["spec"]["ports"][1]["port"],
            50051
        );
    }
    let ing = find(&objs, Kind::Ingress, "shop");
    assert_eq!(ing["spec"]["ingressClassName"], "nginx");
    assert_eq!(ing["spec"]["tls"][0]["secretName"], "shop-example-com-tls");
    let paths: Vec<(String, String, String)> = ing["spec"]["rules"][0]["http"]["paths"]
        .as_array()
        .expect("paths")
        .iter()
        .map(|p| {
            (
                p["path"].as_str().unwrap_or_default().to_owned(),
                p["pathType"].as_str().unwrap_or_default().to_owned(),
                p["backend"]["service"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    let want: Vec<(String, String, String)> = [
        ("/api/users", "shop-user"),
        ("/api/products", "shop-product"),
        ("/api/orders", "shop-order"),
        ("/api/notifications", "shop-notification"),
        // The console gets what no API prefix claims (the longest prefix
        // wins), its own /api/console/... included.
        ("/", "shop-web"),
    ]
    .iter()
    .map(|(p, s)| ((*p).to_owned(), "Prefix".to_owned(), (*s).to_owned()))
    .collect();
    assert_eq!(paths, want);
    assert!(
        render("minimal.yaml")
            .iter()
            .all(|d| d.kind != Kind::Ingress),
        "Ingress off by default"
    );
}

fn peers(rule: &Value) -> BTreeSet<String> {
    rule["from"]
        .as_array()
        .or_else(|| rule["to"].as_array())
        .into_iter()
        .flatten()
        .map(|p| {
            if let Some(ns) =
                p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"].as_str()
            {
                let pods = p["podSelector"]["matchLabels"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_default();
                return if pods.is_empty() {
                    format!("ns:{ns}")
                } else {
                    format!("ns:{ns}/{pods}")
                };
            }
            if let Some(cidr) = p["ipBlock"]["cidr"].as_str() {
                return format!("ip:{cidr}");
            }
            p["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
                .as_str()
                .map(|c| format!("pod:{c}"))
                .unwrap_or_else(|| format!("unknown peer {p}"))
        })
        .collect()
}

fn ports(rule: &Value) -> BTreeSet<String> {
    rule["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            format!(
                "{}/{}",
                p["protocol"].as_str().unwrap_or_default(),
                p["port"]
            )
        })
        .collect()
}

/// (peers, ports) of each rule of a direction.
fn edges(np: &Value, dir: &str) -> Vec<(BTreeSet<String>, BTreeSet<String>)> {
    np["spec"][dir]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| (peers(r), ports(r)))
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn network_policies_allow_only_the_contract_edges() {
    let objs = render("minimal.yaml");
    let np = |n: &str| find(&objs, Kind::NetworkPolicy, n);
    for n in [
        "shop-user",
        "shop-product",
        "shop-inventory",
        "shop-order",
        "shop-notification",
        "shop-web",
        "shop-postgres",
        "shop-rabbitmq",
    ] {
        assert_eq!(
            np(n)["spec"]["policyTypes"],
            serde_json::json!(["Ingress", "Egress"]),
            "{n}"
        );
    }
    // Ingress controller, Prometheus and the web console's pods (its
    // system page reads /readyz and /metrics) -> HTTP; inventory is not
    // public.
    assert_eq!(
        edges(np("shop-user"), "ingress"),
        vec![(
            set(&[
                "ns:ingress-nginx/app.kubernetes.io/name=ingress-nginx",
                "ns:monitoring/app.kubernetes.io/name=prometheus",
                "pod:web"
            ]),
            set(&["TCP/8080"])
        )]
    );
    assert_eq!(
        edges(np("shop-inventory"), "ingress"),
        vec![
            (
                set(&["ns:monitoring/app.kubernetes.io/name=prometheus", "pod:web"]),
                set(&["TCP/8080"])
            ),
            (set(&["pod:product", "pod:order"]), set(&["TCP/50051"]))
        ]
    );
    // The console: reached by the ingress controller and Prometheus; reaches
    // DNS and the five services' HTTP port, no database, broker or gRPC.
    assert_eq!(
        edges(np("shop-web"), "ingress"),
        vec![(
            set(&[
                "ns:ingress-nginx/app.kubernetes.io/name=ingress-nginx",
                "ns:monitoring/app.kubernetes.io/name=prometheus"
            ]),
            set(&["TCP/8080"])
        )]
    );
    assert_eq!(
        edges(np("shop-web"), "egress"),
        vec![
            (set(&[]), set(&["UDP/53", "TCP/53"])),
            (
                set(&[
                    "pod:user",
                    "pod:product",
                    "pod:inventory",
                    "pod:order",
                    "pod:notification"
                ]),
                set(&["TCP/8080"])
            ),
        ]
    );
    assert_eq!(
        edges(np("shop-product"), "ingress")[1],
        (set(&["pod:order"]), set(&["TCP/50051"]))
    );
    assert_eq!(
        edges(np("shop-order"), "ingress").len(),
        1,
        "nothing calls order over gRPC"
    );
    assert_eq!(
        edges(np("shop-postgres"), "ingress"),
        vec![(
            set(&[
                "pod:user",
                "pod:product",
                "pod:inventory",
                "pod:order",
                "pod:notification"
            ]),
            set(&["TCP/5432"])
        )]
    );
    assert_eq!(
        edges(np("shop-rabbitmq"), "ingress"),
        vec![(set(&["pod:order", "pod:notification"]), set(&["TCP/5672"]))]
    );
    // Egress of order: DNS, PostgreSQL, RabbitMQ, product and inventory
    // gRPC; no OTLP rule while tracing is off (minimal.yaml).
    assert_eq!(
        edges(np("shop-order"), "egress"),
        vec![
            (set(&[]), set(&["UDP/53", "TCP/53"])),
            (set(&["pod:postgres"]), set(&["TCP/5432"])),
            (set(&["pod:rabbitmq"]), set(&["TCP/5672"])),
            (set(&["pod:product"]), set(&["TCP/50051"])),
            (set(&["pod:inventory"]), set(&["TCP/50051"])),
        ]
    );
    assert_eq!(
        edges(np("shop-user"), "egress").len(),
        2,
        "user: DNS and PostgreSQL only"
    );
    // No rule lets a pod reach any address on some port: every rule but DNS
    // names its peers.
    for ex in ["minimal.yaml", "full.yaml", "external-database.yaml"] {
        let objs = render(ex);
        for d in objs.iter().filter(|d| d.kind == Kind::NetworkPolicy) {
            for (peers, ports) in edges(&d.object, "egress") {
                assert!(
                    !peers.is_empty() || ports == set(&["UDP/53", "TCP/53"]),
                    "{ex}: {} allows egress to anywhere on {ports:?}",
                    d.name
                );
            }
        }
    }
}

/// Tracing on: the OTLP endpoint's network (`networkPolicy.otlpCidr`) on
/// the endpoint's port; external stores: their `cidr` on their port (set,
/// or from the URLs in the Secrets); the pod labels of the ingress
/// controller and Prometheus when given.
#[test]
fn network_policies_name_the_networks_of_the_endpoints_outside_the_cluster() {
    let objs = render("full.yaml");
    let np = |n: &str| find(&objs, Kind::NetworkPolicy, n).clone();
    for component in ["shop-order", "shop-web"] {
        let policy = np(component);
        assert!(
            edges(&policy, "egress").contains(&(set(&["ip:10.244.0.0/16"]), set(&["TCP/4317"]))),
            "{component}: {:?}",
            edges(&policy, "egress")
        );
    }
    assert_eq!(
        edges(&np("shop-user"), "ingress"),
        vec![(
            set(&[
                "ns:ingress-nginx/app.kubernetes.io/name=ingress-nginx",
                "ns:monitoring/app.kubernetes.io/name=prometheus",
                "pod:web"
            ]),
            set(&["TCP/8080"])
        )]
    );

    // `{}`: every pod of the namespace (a controller without those labels).
    let any_pod = render_objects(
        &example("minimal.yaml").replace(
            "spec: {}",
            "spec:\n  networkPolicy:\n    ingressControllerNamespace: traefik\n    ingressControllerPodLabels: {}",
        ),
        &RenderOptions::default(),
    )
    .expect("renders");
    assert_eq!(
        edges(find(&any_pod, Kind::NetworkPolicy, "shop-order"), "ingress"),
        vec![(
            set(&[
                "ns:traefik",
                "ns:monitoring/app.kubernetes.io/name=prometheus",
                "pod:web"
            ]),
            set(&["TCP/8080"])
        )]
    );

    let ext = render("external-database.yaml");
    let np = |n: &str| find(&ext, Kind::NetworkPolicy, n).clone();
    let order = edges(&np("shop-order"), "egress");
    // The database port comes from the URLs (placeholders: 5432), the
    // broker's is set in the example (amqps, 5671).
    assert!(
        order.contains(&(set(&["ip:10.20.0.0/16"]), set(&["TCP/5432"]))),
        "{order:?}"
    );
    assert!(
        order.contains(&(set(&["ip:10.30.0.0/16"]), set(&["TCP/5671"]))),
        "{order:?}"
    );
    assert!(
        ext.iter()
            .all(|d| !(d.kind == Kind::NetworkPolicy && d.name.ends_with("-postgres"))),
        "no policy for a store the operator does not run"
    );
    // The console reaches no database, not even an external one.
    assert!(
        edges(&np("shop-web"), "egress")
            .iter()
            .all(|(peers, _)| !peers.iter().any(|p| p.starts_with("ip:"))),
        "{:?}",
        edges(&np("shop-web"), "egress")
    );
}

#[test]
fn url_ports_are_the_explicit_ones_or_the_schemes_default() {
    use stockmesh_operator::resources::url_ports;
    let ports = |u: &str| url_ports(u).into_iter().collect::<Vec<_>>();
    assert_eq!(ports("postgres://u:p@db.example:6432/x"), [6432]);
    assert_eq!(ports("postgres://u:p:w@db.example/x"), [5432]);
    assert_eq!(
        ports("postgresql://u@h1:5433,h2:5434/x?sslmode=require"),
        [5433, 5434]
    );
    assert_eq!(ports("postgres://u@[fd00::1]:5435/x"), [5435]);
    assert_eq!(ports("amqps://u:p@mq.example/%2f"), [5671]);
    assert_eq!(ports("amqp://u:p@mq.example/%2f"), [5672]);
    assert_eq!(ports("http://jaeger-collector.observability:4317"), [4317]);
    assert_eq!(ports("https://otlp.example.com"), [443]);
}

#[test]
fn stores_are_statefulsets_with_volumes_probes_and_init_script() {
    let objs = render("full.yaml");
    let pg = find(&objs, Kind::StatefulSet, "shop-postgres");
    assert_eq!(pg["spec"]["serviceName"], "shop-postgres-headless");
    assert_eq!(
        pg["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"],
        "20Gi"
    );
    assert_eq!(
        pg["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"],
        "standard"
    );
    assert_eq!(
        pg["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"],
        "Retain"
    );
    let mq = find(&objs, Kind::StatefulSet, "shop-rabbitmq");
    assert_eq!(
        mq["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"], "Delete",
        "keepVolumes: false"
    );
    assert_eq!(
        find(&objs, Kind::Service, "shop-postgres-headless")["spec"]["clusterIP"],
        "None"
    );
    // The init script reads passwords from env vars sourced from the Secrets.
    let env = pg["spec"]["template"]["spec"]["containers"][0]["env"].to_string();
    for svc in SVCS {
        assert!(env.contains(&format!("STOCKMESH_{}_DB_PASSWORD", svc.to_uppercase())));
        assert!(env.contains(&format!("shop-{svc}-db")));
    }
    let init = find(&objs, Kind::ConfigMap, "shop-postgres-init");
    let script = init["data"]["10-stockmesh-databases.sh"]
        .as_str()
        .expect("script");
    assert!(script.contains("CREATE ROLE :\"role\" LOGIN PASSWORD :'pw'"));
    assert!(script.contains("CREATE DATABASE :\"role\" OWNER :\"role\""));
}

#[test]
fn secrets_are_generated_never_in_config_maps_and_everything_is_owned() {
    let objs = render("full.yaml");
    let mut secret_values = Vec::new();
    for d in objs.iter().filter(|d| d.kind == Kind::Secret) {
        for v in d.object["data"].as_object().expect("data").values() {
            let s = String::from_utf8(STANDARD.decode(v.as_str().expect("b64")).expect("b64"))
                .expect("utf8");
            // Usernames and database names are not secret; passwords, URLs and keys are.
            if s.len() >= 20 {
                secret_values.push(s);
            }
        }
    }
    assert!(secret_values.len() >= 15, "{}", secret_values.len());
    for d in objs.iter().filter(|d| d.kind == Kind::ConfigMap) {
        let text = d.object.to_string();
        for pw in &secret_values {
            assert!(
                !text.contains(pw.as_str()),
                "a secret value is in ConfigMap {}",
                d.name
            );
        }
    }
    // Two renders: new random credentials, identical everything else.
    let again = render("full.yaml");
    let names = |o: &[Desired]| {
        o.iter()
            .map(|d| format!("{:?}/{}", d.kind, d.name))
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&objs), names(&again), "deterministic names");
    for (a, b) in objs.iter().zip(&again) {
        if a.kind == Kind::Secret {
            assert_ne!(a.object["data"], b.object["data"], "{} regenerated", a.name);
        } else {
            assert_eq!(
                a.object, b.object,
                "{:?}/{} is deterministic",
                a.kind, a.name
            );
        }
    }
    // Owner references: every object, except Secrets kept with the data
    // (postgres.managed.keepVolumes: true in full.yaml; rabbitmq has false).
    let retained: BTreeSet<&str> = [
        "shop-postgres",
        "shop-user-db",
        "shop-product-db",
        "shop-inventory-db",
        "shop-order-db",
        "shop-notification-db",
        "shop-admin",
    ]
    .into();
    for d in &objs {
        let owners = d.object["metadata"]["ownerReferences"].as_array();
        if d.kind == Kind::Secret && retained.contains(d.name.as_str()) {
            assert!(owners.is_none(), "{} is retained", d.name);
        } else {
            let o = owners.unwrap_or_else(|| panic!("{:?}/{} has no owner", d.kind, d.name));
            assert_eq!(o[0]["controller"], true);
            assert_eq!(o[0]["kind"], "InventorySystem");
        }
        assert_eq!(
            d.object["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "stockmesh-operator"
        );
        assert_eq!(
            d.object["metadata"]["labels"]["app.kubernetes.io/instance"],
            "shop"
        );
    }
}

#[test]
fn a_config_change_changes_the_pod_template_hash() {
    let base = example("minimal.yaml");
    let changed = base.replace("spec: {}", "spec:\n  logLevel: debug");
    let hash = |text: &str| {
        let objs = render_objects(text, &RenderOptions::default()).expect("renders");
        find(&objs, Kind::Deployment, "shop-user")["spec"]["template"]["metadata"]["annotations"]["stockmesh.io/config-hash"].clone()
    };
    assert_eq!(hash(&base), hash(&base));
    assert_ne!(hash(&base), hash(&changed));
}

/// terminationGracePeriodSeconds follows the shutdown numbers (drain +
/// grace + 5 s), and numbers out of range are refused.
#[test]
fn termination_grace_follows_the_shutdown_numbers() {
    let base = example("minimal.yaml");
    let grace_of = |text: &str| {
        let objs = render_objects(text, &RenderOptions::default()).expect("renders");
        let d = find(&objs, Kind::Deployment, "shop-order").clone();
        (
            d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"].clone(),
            env(&d, "SHUTDOWN_DRAIN_MS")["value"].clone(),
        )
    };
    // Defaults: 5000 + 20000 ms, + 5 s.
    assert_eq!(
        grace_of(&base),
        (serde_json::json!(30), serde_json::json!("5000"))
    );
    let custom = base.replace(
        "spec: {}",
        "spec:\n  resilience:\n    shutdown:\n      drainMs: 2500\n      graceMs: 1000",
    );
    // ceil(3.5 s) + 5 s.
    assert_eq!(
        grace_of(&custom),
        (serde_json::json!(9), serde_json::json!("2500"))
    );
    let invalid = base.replace(
        "spec: {}",
        "spec:\n  resilience:\n    shutdown:\n      drainMs: 600000",
    );
    let err = render_objects(&invalid, &RenderOptions::default())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("resilience.shutdown.drainMs"), "{err}");
}

/// The paths of a pod's containers that are writable volumes (emptyDir or
/// a claim template), with a read-only root filesystem everything else is
/// read-only.
fn writable_mounts(sts_or_deploy: &Value) -> Vec<String> {
    let pod = &sts_or_deploy["spec"]["template"]["spec"];
    let claims: BTreeSet<&str> = sts_or_deploy["spec"]["volumeClaimTemplates"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["metadata"]["name"].as_str())
        .collect();
    let empty_dirs: BTreeSet<&str> = pod["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v.get("emptyDir").is_some())
        .filter_map(|v| v["name"].as_str())
        .collect();
    pod["containers"][0]["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["readOnly"] != true)
        .filter(|m| {
            let n = m["name"].as_str().unwrap_or_default();
            claims.contains(n) || empty_dirs.contains(n)
        })
        .filter_map(|m| m["mountPath"].as_str().map(str::to_owned))
        .collect()
}

/// Paths of `needed` not on a writable volume.
fn unmounted(object: &Value, needed: &[&str]) -> Vec<String> {
    let mounts = writable_mounts(object);
    let under = |p: &str| {
        mounts
            .iter()
            .any(|m| p == m || p.starts_with(&format!("{}/", m.trim_end_matches('/'))))
    };
    let container = &object["spec"]["template"]["spec"]["containers"][0];
    // Paths the environment points the process at must be writable too.
    let env_paths: Vec<String> = [
        "PGDATA",
        "RABBITMQ_LOG_BASE",
        "RABBITMQ_MNESIA_BASE",
        "HOME",
        "TMPDIR",
    ]
    .iter()
    .filter_map(|n| {
        container["env"]
            .as_array()?
            .iter()
            .find(|e| e["name"] == *n)?["value"]
            .as_str()
            .map(str::to_owned)
    })
    .collect();
    needed
        .iter()
        .map(|p| (*p).to_owned())
        .chain(env_paths)
        .filter(|p| !under(p))
        .collect()
}

/// With `readOnlyRootFilesystem: true`, every path the images write is a
/// volume: PostgreSQL's PGDATA, socket directory and /tmp; RabbitMQ's data
/// directory, its log base (the `<node>_upgrade.log` it always opens there
/// crashed it at start when only the data directory and /tmp were mounted)
/// and /tmp; /tmp for the services.
#[test]
fn every_path_the_containers_write_is_a_writable_volume() {
    use stockmesh_operator::resources::STORE_WRITABLE_PATHS;
    let store_paths = |component: &str| {
        STORE_WRITABLE_PATHS
            .iter()
            .find(|(c, _)| *c == component)
            .map(|(_, p)| *p)
            .expect("listed")
    };
    assert!(store_paths("rabbitmq").contains(&"/var/log/rabbitmq"));
    for ex in ["minimal.yaml", "full.yaml"] {
        let objs = render(ex);
        for component in ["postgres", "rabbitmq"] {
            let sts = find(&objs, Kind::StatefulSet, &format!("shop-{component}"));
            assert_eq!(
                sts["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"],
                true
            );
            assert_eq!(
                unmounted(sts, store_paths(component)),
                Vec::<String>::new(),
                "{ex}: {component} writes outside its volumes"
            );
        }
        for svc in DEPLOYABLES {
            let d = find(&objs, Kind::Deployment, &format!("shop-{svc}"));
            assert_eq!(unmounted(d, &["/tmp"]), Vec::<String>::new(), "{ex}: {svc}");
        }
        let mq = find(&objs, Kind::StatefulSet, "shop-rabbitmq");
        assert_eq!(env(mq, "RABBITMQ_LOGS")["value"], "-", "main log to stdout");
        assert_eq!(env(mq, "RABBITMQ_LOG_BASE")["value"], "/var/log/rabbitmq");
    }
    // The check has teeth: without the log volume (the crash of issue 16),
    // or with a read-only or a ConfigMap volume there, it reports the path.
    let objs = render("minimal.yaml");
    let mq = find(&objs, Kind::StatefulSet, "shop-rabbitmq").clone();
    let mut without = mq.clone();
    without["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
        .as_array_mut()
        .expect("mounts")
        .retain(|m| m["mountPath"] != "/var/log/rabbitmq");
    assert_eq!(
        unmounted(&without, store_paths("rabbitmq")),
        ["/var/log/rabbitmq", "/var/log/rabbitmq"]
    );
    let mut read_only = mq.clone();
    for m in read_only["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
        .as_array_mut()
        .expect("mounts")
    {
        if m["mountPath"] == "/var/log/rabbitmq" {
            m["readOnly"] = Value::Bool(true);
        }
    }
    assert!(!unmounted(&read_only, store_paths("rabbitmq")).is_empty());
    let pg = find(&objs, Kind::StatefulSet, "shop-postgres");
    assert_eq!(
        unmounted(pg, &["/docker-entrypoint-initdb.d"]),
        ["/docker-entrypoint-initdb.d"],
        "a ConfigMap volume is not writable"
    );
}

/// `BREAKER_MAX_OPEN_MS` comes from the resource: the larger of openMs and
/// 30 s by default (an openMs above 30 s is no longer cut short by the
/// services' default), `maxOpenMs` when set, never below openMs.
#[test]
fn the_breakers_longest_open_period_is_set_and_never_below_the_first() {
    let base = example("minimal.yaml");
    let max_open = |spec: &str| {
        let objs = render_objects(&base.replace("spec: {}", spec), &RenderOptions::default())?;
        let cm = find(&objs, Kind::ConfigMap, "shop-config").clone();
        for svc in ["product", "order"] {
            let d = find(&objs, Kind::Deployment, &format!("shop-{svc}"));
            assert_eq!(
                env(d, "BREAKER_MAX_OPEN_MS")["valueFrom"]["configMapKeyRef"]["key"],
                "BREAKER_MAX_OPEN_MS"
            );
        }
        anyhow::Ok(cm["data"]["BREAKER_MAX_OPEN_MS"].clone())
    };
    assert_eq!(max_open("spec: {}").expect("renders"), "30000");
    assert_eq!(
        max_open("spec:\n  resilience:\n    breaker:\n      openMs: 60000").expect("renders"),
        "60000"
    );
    assert_eq!(
        max_open("spec:\n  resilience:\n    breaker:\n      openMs: 1000\n      maxOpenMs: 120000")
            .expect("renders"),
        "120000"
    );
    let err =
        max_open("spec:\n  resilience:\n    breaker:\n      openMs: 60000\n      maxOpenMs: 30000")
            .expect_err("maxOpenMs below openMs");
    assert!(err.to_string().contains("maxOpenMs"), "{err}");
}

/// No annotation, label or ConfigMap of any rendered object holds an
/// external Secret's value or anything computed from it: rendered with
/// other values (same Secret versions), every object is identical outside
/// Secret data; a new Secret version changes the pods' config-hash.
#[test]
fn external_secret_values_leave_no_trace_outside_secret_data() {
    use stockmesh_operator::build_all;
    use stockmesh_operator::render::{parse_manifest, placeholder_secrets};
    let obj = parse_manifest(
        &example("external-database.yaml"),
        &RenderOptions::default(),
    )
    .expect("parses");
    let first = placeholder_secrets(&obj);
    let mut second = first.clone();
    for url in second.external_database_urls.values_mut() {
        *url = url.replace("placeholder", "another-password");
    }
    second.external_amqp_url = second
        .external_amqp_url
        .map(|u| u.replace("placeholder", "another-password"));
    let strip = |objs: Vec<Desired>| {
        objs.into_iter()
            .filter(|d| {
                // Generated Secrets (JWT, admin) are random by design.
                !(d.kind == Kind::Secret && d.mode == stockmesh_operator::WriteMode::CreateOnce)
            })
            .map(|mut d| {
                if d.kind == Kind::Secret
                    && let Some(o) = d.object.as_object_mut()
                {
                    o.remove("data");
                }
                (format!("{:?}/{}", d.kind, d.name), d.object)
            })
            .collect::<Vec<_>>()
    };
    let a = strip(build_all(&obj, &first).expect("builds"));
    let b = strip(build_all(&obj, &second).expect("builds"));
    assert!(a.iter().any(|(n, _)| n == "Secret/shop-user-db"));
    assert_eq!(a, b, "an object depends on the external Secrets' values");
    for (name, o) in &a {
        assert!(!o.to_string().contains("placeholder@"), "{name}");
    }
    let mut rotated = first.clone();
    for v in rotated.external_versions.values_mut() {
        *v = "placeholder/2".into();
    }
    let c = strip(build_all(&obj, &rotated).expect("builds"));
    let hash = |objs: &[(String, Value)]| {
        objs.iter()
            .find(|(n, _)| n == "Deployment/shop-user")
            .map(|(_, o)| o["spec"]["template"]["metadata"]["annotations"].clone())
    };
    assert_ne!(hash(&a), hash(&c), "a new Secret version rolls the pods");
}
