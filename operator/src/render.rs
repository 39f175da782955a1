//! Rendering the builders' output without a cluster (the `render` binary,
//! the manifest validation tests and the Helm parity test).

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;

use crate::crd::InventorySystem;
use crate::names::Svc;
use crate::resources::{Desired, Kind, ObservedSecrets, build_all};

/// Placeholder owner UID used when rendering outside a cluster.
pub const PLACEHOLDER_UID: &str = "00000000-0000-4000-8000-000000000000";

#[derive(Clone, Debug, Default)]
pub struct RenderOptions {
    /// Namespace when the manifest has none (default `default`).
    pub namespace: Option<String>,
    /// Replace every Secret value with `REDACTED`.
    pub redact: bool,
}

/// Parses an InventorySystem manifest and fills what the API server would
/// (namespace, uid, generation).
pub fn parse_manifest(text: &str, opts: &RenderOptions) -> anyhow::Result<InventorySystem> {
    let mut obj: InventorySystem =
        serde_yaml::from_str(text).context("parsing the InventorySystem manifest")?;
    if let Some(ns) = &opts.namespace {
        obj.metadata.namespace = Some(ns.clone());
    } else if obj.metadata.namespace.is_none() {
        obj.metadata.namespace = Some("default".into());
    }
    obj.metadata
        .uid
        .get_or_insert_with(|| PLACEHOLDER_UID.to_owned());
    obj.metadata.generation.get_or_insert(1);
    Ok(obj)
}

/// Stand-ins for the Secrets an external database/broker would provide.
pub fn placeholder_secrets(obj: &InventorySystem) -> ObservedSecrets {
    let mut s = ObservedSecrets::default();
    if obj.spec.postgres.external.is_some() {
        for svc in Svc::ALL {
            s.external_database_urls.insert(
                svc.as_str().to_owned(),
                format!(
                    "postgres://{0}:placeholder@db.example:5432/{0}",
                    svc.as_str()
                ),
            );
        }
    }
    if let Some(ext) = &obj.spec.rabbitmq.external {
        s.external_amqp_url = Some("amqp://stockmesh:placeholder@mq.example:5672/%2f".into());
        s.external_versions
            .insert(ext.secret_ref.name.clone(), "placeholder/1".into());
    }
    if let Some(ext) = &obj.spec.postgres.external {
        s.external_versions
            .insert(ext.secret_ref.name.clone(), "placeholder/1".into());
    }
    s
}

/// Every object for the manifest, in apply order.
pub fn render_objects(text: &str, opts: &RenderOptions) -> anyhow::Result<Vec<Desired>> {
    let obj = parse_manifest(text, opts)?;
    let problems = crate::resources::validate(&obj);
    if !problems.is_empty() {
        anyhow::bail!("invalid InventorySystem: {}", problems.join("; "));
    }
    let mut objects = build_all(&obj, &placeholder_secrets(&obj))?;
    if opts.redact {
        let redacted = Value::String(STANDARD.encode("REDACTED"));
        for d in objects.iter_mut().filter(|d| d.kind == Kind::Secret) {
            if let Some(data) = d.object.get_mut("data").and_then(Value::as_object_mut) {
                for v in data.values_mut() {
                    *v = redacted.clone();
                }
            }
        }
    }
    Ok(objects)
}

/// Multi-document YAML of [`render_objects`].
pub fn render_yaml(text: &str, opts: &RenderOptions) -> anyhow::Result<String> {
    let mut out = String::new();
    for d in render_objects(text, opts)? {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&d.object)?);
    }
    Ok(out)
}
