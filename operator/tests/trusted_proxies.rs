//! The user service learns which proxies to believe from the Ingress spec:
//! `TRUSTED_PROXIES` from `spec.ingress.trustedProxies` (default
//! `10.0.0.0/8`) while the Ingress is enabled, and nothing without it.

use stockmesh_operator::render::{RenderOptions, render_objects};
use stockmesh_operator::{Desired, Kind};

fn render(spec: &str) -> anyhow::Result<Vec<Desired>> {
    let manifest = format!(
        "apiVersion: stockmesh.io/v1alpha1\nkind: InventorySystem\nmetadata:\n  name: shop\nspec:\n{spec}"
    );
    render_objects(&manifest, &RenderOptions::default())
}

fn trusted_proxies(objs: &[Desired], svc: &str) -> Option<String> {
    let deploy = &objs
        .iter()
        .find(|d| d.kind == Kind::Deployment && d.name == format!("shop-{svc}"))
        .unwrap_or_else(|| panic!("shop-{svc} not rendered"))
        .object;
    deploy["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .expect("env")
        .iter()
        .find(|e| e["name"] == "TRUSTED_PROXIES")
        .map(|e| e["value"].as_str().map(str::to_owned).unwrap_or_default())
}

#[test]
fn the_ingress_networks_reach_the_user_service_only() {
    let objs = render(
        "  ingress:\n    enabled: true\n    trustedProxies: [\"10.244.0.0/16\", \"fd00::/8\"]\n",
    )
    .unwrap();
    assert_eq!(
        trusted_proxies(&objs, "user").as_deref(),
        Some("10.244.0.0/16,fd00::/8")
    );
    for svc in ["product", "inventory", "order", "notification"] {
        assert_eq!(trusted_proxies(&objs, svc), None, "{svc}");
    }
}

#[test]
fn the_default_is_the_usual_pod_network_and_no_ingress_trusts_nothing() {
    let objs = render("  ingress:\n    enabled: true\n").unwrap();
    assert_eq!(
        trusted_proxies(&objs, "user").as_deref(),
        Some("10.0.0.0/8")
    );
    let objs = render("  ingress:\n    enabled: false\n").unwrap();
    assert_eq!(trusted_proxies(&objs, "user"), None);
    let objs = render("  {}\n").unwrap();
    assert_eq!(
        trusted_proxies(&objs, "user"),
        None,
        "spec: {{}} has no Ingress"
    );
}

#[test]
fn a_malformed_network_is_an_invalid_spec() {
    let err = render("  ingress:\n    enabled: true\n    trustedProxies: [\"10.0.0.0/33\"]\n")
        .expect_err("refused")
        .to_string();
    assert!(err.contains("ingress.trustedProxies"), "{err}");
}
