//! The generated CRD: committed copy up to date, examples valid against its
//! schema (check-jsonschema) and its CEL rules (kube-cel, as the API server
//! evaluates them), RBAC file in sync with the code.

mod common;

use std::process::Command;

use common::{repo_root, tool};
use kube::CustomResourceExt;
use kube::core::cel::Validator;
use serde_json::{Value, json};
use stockmesh_operator::InventorySystem;
use stockmesh_operator::crd::crd_yaml;
use stockmesh_operator::rbac;

fn read(rel: &str) -> String {
    let path = repo_root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn schema() -> Value {
    let crd = InventorySystem::crd();
    serde_json::to_value(
        crd.spec.versions[0]
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .expect("schema"),
    )
    .expect("json")
}

fn yaml_to_json(text: &str) -> Value {
    serde_yaml::from_str(text).expect("yaml")
}

#[test]
fn committed_crd_is_up_to_date() {
    let committed = read("k8s/crd/inventorysystem.yaml");
    let generated = crd_yaml().expect("crd");
    assert!(
        committed == generated,
        "k8s/crd/inventorysystem.yaml is stale: run `make crd` and commit the result"
    );
}

#[test]
fn crd_has_the_names_columns_and_status_subresource_of_the_issue() {
    let crd = serde_json::to_value(InventorySystem::crd()).expect("json");
    assert_eq!(crd["metadata"]["name"], "inventorysystems.stockmesh.io");
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    assert_eq!(crd["spec"]["names"]["shortNames"], json!(["invsys"]));
    let v = &crd["spec"]["versions"][0];
    assert_eq!(v["name"], "v1alpha1");
    assert_eq!(v["subresources"]["status"], json!({}));
    let columns: Vec<&str> = v["additionalPrinterColumns"]
        .as_array()
        .expect("columns")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(columns, ["Ready", "Phase", "URL", "Age"]);
    // Documented for kubectl explain.
    let spec = &v["schema"]["openAPIV3Schema"]["properties"]["spec"];
    for field in [
        "image",
        "services",
        "postgres",
        "rabbitmq",
        "ingress",
        "tracing",
        "resilience",
        "adminEmail",
    ] {
        assert!(
            spec["properties"][field]["description"]
                .as_str()
                .is_some_and(|d| d.len() > 10),
            "{field}"
        );
    }
    assert_eq!(
        spec["properties"]["tracing"]["properties"]["samplingRatio"]["maximum"],
        1.0
    );
}

#[test]
fn an_empty_spec_is_a_complete_resource() {
    let obj: InventorySystem =
        serde_yaml::from_str(&read("k8s/examples/minimal.yaml")).expect("parses");
    assert_eq!(obj.spec.services.order.replicas, 2);
    assert!(obj.spec.postgres.effective_managed().is_some());
    assert!(obj.spec.rabbitmq.effective_managed().is_some());
    assert_eq!(obj.spec.image.repository, "stockmesh");
    assert_eq!(obj.spec.resilience.request_timeout_ms, 10_000);
}

/// The CRD schema as a strict JSON Schema: unknown fields are errors (as
/// with `kubectl apply --validate=strict`).
fn strict_json_schema() -> Value {
    fn close(v: &mut Value) {
        if let Some(obj) = v.as_object_mut() {
            if obj.contains_key("properties") && !obj.contains_key("additionalProperties") {
                obj.insert("additionalProperties".into(), json!(false));
            }
            for child in obj.values_mut() {
                close(child);
            }
        } else if let Some(arr) = v.as_array_mut() {
            for child in arr {
                close(child);
            }
        }
    }
    let mut s = schema();
    close(&mut s);
    s["properties"]["apiVersion"] = json!({"const": "stockmesh.io/v1alpha1"});
    s["properties"]["kind"] = json!({"const": "InventorySystem"});
    s["properties"]["metadata"] = json!({"type": "object"});
    s["$schema"] = json!("http://json-schema.org/draft-07/schema#");
    s
}

fn check_jsonschema(files: &[std::path::PathBuf]) -> std::process::Output {
    let dir = std::env::temp_dir().join(format!("stockmesh-crd-schema-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let schema_file = dir.join("inventorysystem.schema.json");
    std::fs::write(
        &schema_file,
        serde_json::to_vec_pretty(&strict_json_schema()).expect("json"),
    )
    .expect("write");
    let out = Command::new(tool("check-jsonschema"))
        .arg("--schemafile")
        .arg(&schema_file)
        .args(files)
        .output()
        .expect("run check-jsonschema");
    let _ = std::fs::remove_dir_all(&dir);
    out
}

#[test]
fn examples_validate_against_the_crd_schema() {
    let files: Vec<_> = ["minimal.yaml", "full.yaml", "external-database.yaml"]
        .iter()
        .map(|f| repo_root().join("k8s/examples").join(f))
        .collect();
    let out = check_jsonschema(&files);
    assert!(
        out.status.success(),
        "examples do not match the CRD schema:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // And the check has teeth: out-of-range, bad enum, unknown field.
    let dir = std::env::temp_dir().join(format!("stockmesh-crd-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    for (i, spec) in [
        "services: {user: {replicas: 500}}",
        "image: {pullPolicy: Sometimes}",
        "tracing: {samplingRatio: 2}",
        "postgres: {managed: {storageSize: lots}}",
        "ingres: {enabled: true}",
    ]
    .iter()
    .enumerate()
    {
        let bad = dir.join(format!("bad-{i}.yaml"));
        std::fs::write(&bad, format!("apiVersion: stockmesh.io/v1alpha1\nkind: InventorySystem\nmetadata: {{name: shop}}\nspec: {{{spec}}}\n")).expect("write");
        let out = check_jsonschema(std::slice::from_ref(&bad));
        assert!(!out.status.success(), "accepted an invalid spec: {spec}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn cel(object: &Value) -> Result<(), String> {
    Validator::new()
        .validate(&schema(), object, None)
        .map_err(|e| format!("{e:?}"))
}

#[test]
fn cel_rules_accept_the_examples_and_reject_contradictions() {
    for f in ["minimal.yaml", "full.yaml", "external-database.yaml"] {
        let obj = yaml_to_json(&read(&format!("k8s/examples/{f}")));
        assert_eq!(cel(&obj), Ok(()), "{f}");
    }
    let with = |name: &str, spec: Value| json!({"apiVersion": "stockmesh.io/v1alpha1", "kind": "InventorySystem", "metadata": {"name": name}, "spec": spec});
    let both_db = with(
        "shop",
        json!({"postgres": {"managed": {}, "external": {"secretRef": {"name": "db"}}}}),
    );
    let err = cel(&both_db).expect_err("managed and external database");
    assert!(
        err.contains("postgres.managed and postgres.external"),
        "{err}"
    );
    let both_mq = with(
        "shop",
        json!({"rabbitmq": {"managed": {}, "external": {"secretRef": {"name": "mq"}}}}),
    );
    assert!(cel(&both_mq).is_err());
    let tls_without_host = with(
        "shop",
        json!({"ingress": {"enabled": true, "tlsSecretName": "tls"}}),
    );
    assert!(cel(&tls_without_host).is_err());
    let breaker = |b: Value| with("shop", json!({"resilience": {"breaker": b}}));
    let err = cel(&breaker(json!({"openMs": 60000, "maxOpenMs": 30000})))
        .expect_err("maxOpenMs below openMs");
    assert!(err.contains("maxOpenMs must be at least openMs"), "{err}");
    assert_eq!(
        cel(&breaker(json!({"openMs": 60000, "maxOpenMs": 60000}))),
        Ok(())
    );
    assert_eq!(cel(&breaker(json!({"openMs": 60000}))), Ok(()));
    let long_name = with(&"a".repeat(41), json!({}));
    assert!(cel(&long_name).is_err());
    assert_eq!(cel(&with(&"a".repeat(40), json!({}))), Ok(()));
}

#[test]
fn rbac_file_matches_the_rules_in_code() {
    let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&read("k8s/operator/rbac.yaml"))
        .map(|d| serde::Deserialize::deserialize(d).expect("yaml doc"))
        .collect();
    let roles: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "ClusterRole").collect();
    assert_eq!(roles.len(), 1);
    let file_rules = roles[0]["rules"].as_array().expect("rules").clone();
    let code_rules: Vec<Value> = rbac::RULES
        .iter()
        .map(|r| json!({"apiGroups": [r.api_group], "resources": r.resources, "verbs": r.verbs}))
        .collect();
    assert_eq!(
        file_rules, code_rules,
        "k8s/operator/rbac.yaml differs from operator/src/rbac.rs"
    );
    let binding = docs
        .iter()
        .find(|d| d["kind"] == "ClusterRoleBinding")
        .expect("binding");
    assert_eq!(binding["roleRef"]["name"], "stockmesh-operator");
}
