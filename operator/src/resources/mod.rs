//! Builders: the desired state of every child object of an InventorySystem.
//!
//! Pure functions of the custom resource and [`ObservedSecrets`]; the
//! reconciler applies what they return, `render` prints it, tests validate
//! it. Everything follows `docs/deployment-contract.md`.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::core::{ApiResource, DynamicObject};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};

use crate::crd::{
    InventorySystem, InventorySystemSpec, ManagedPostgres, ManagedRabbitMq, ResourcesSpec,
    ShutdownSpec,
};
use crate::names::{self, Svc};
use crate::secrets;

/// The kinds the operator creates, in the order it applies them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Secret,
    ConfigMap,
    Service,
    StatefulSet,
    Deployment,
    PodDisruptionBudget,
    Ingress,
    NetworkPolicy,
}

impl Kind {
    pub const ALL: [Kind; 8] = [
        Kind::Secret,
        Kind::ConfigMap,
        Kind::Service,
        Kind::StatefulSet,
        Kind::Deployment,
        Kind::PodDisruptionBudget,
        Kind::Ingress,
        Kind::NetworkPolicy,
    ];

    pub fn api_resource(self) -> ApiResource {
        match self {
            Kind::Secret => ApiResource::erase::<Secret>(&()),
            Kind::ConfigMap => ApiResource::erase::<ConfigMap>(&()),
            Kind::Service => ApiResource::erase::<Service>(&()),
            Kind::StatefulSet => ApiResource::erase::<StatefulSet>(&()),
            Kind::Deployment => ApiResource::erase::<Deployment>(&()),
            Kind::PodDisruptionBudget => ApiResource::erase::<PodDisruptionBudget>(&()),
            Kind::Ingress => ApiResource::erase::<Ingress>(&()),
            Kind::NetworkPolicy => ApiResource::erase::<NetworkPolicy>(&()),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Secret => "Secret",
            Kind::ConfigMap => "ConfigMap",
            Kind::Service => "Service",
            Kind::StatefulSet => "StatefulSet",
            Kind::Deployment => "Deployment",
            Kind::PodDisruptionBudget => "PodDisruptionBudget",
            Kind::Ingress => "Ingress",
            Kind::NetworkPolicy => "NetworkPolicy",
        }
    }
}

/// How the reconciler writes a desired object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteMode {
    /// Server-side apply (field manager `stockmesh-operator`, forced),
    /// skipped when the observed object carries the same applied-hash.
    Apply,
    /// Created once with generated values; never written again while it
    /// exists (credentials are not rotated by accident).
    CreateOnce,
}

/// One object the operator wants to exist.
#[derive(Clone, Debug)]
pub struct Desired {
    pub kind: Kind,
    pub name: String,
    pub mode: WriteMode,
    /// The full object (apiVersion, kind, metadata, ...).
    pub object: Value,
}

impl Desired {
    pub fn to_dynamic(&self) -> Result<DynamicObject, serde_json::Error> {
        serde_json::from_value(self.object.clone())
    }
}

/// What the builders need to know about Secrets in the cluster.
#[derive(Clone, Debug, Default)]
pub struct ObservedSecrets {
    /// Names of Secrets that exist; generated Secrets among them are not
    /// built again.
    pub existing: BTreeSet<String>,
    /// External mode: the connection URL of each service, read from
    /// `spec.postgres.external.secretRef`.
    pub external_database_urls: BTreeMap<String, String>,
    /// External mode: the AMQP URL, read from `spec.rabbitmq.external.secretRef`.
    pub external_amqp_url: Option<String>,
    /// External mode: the version (`<uid>/<resourceVersion>`) of each
    /// referenced Secret, by name. The pod templates' config-hash and the
    /// copies' applied-hash are computed from these, never from the values
    /// (a digest of a password in an annotation is a password leak).
    pub external_versions: BTreeMap<String, String>,
}

/// Why the builders cannot produce objects.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("the InventorySystem has no {0}")]
    MissingMetadata(&'static str),
    #[error("the external database Secret has no key `{0}`")]
    MissingExternalDatabaseUrl(String),
    #[error("the external RabbitMQ Secret has no key `url`")]
    MissingExternalAmqpUrl,
    #[error(transparent)]
    Random(#[from] secrets::RandomError),
}

/// Problems with a spec that the CRD schema cannot express (or that an API
/// server without CEL support let through). Each entry is one sentence.
pub fn validate(obj: &InventorySystem) -> Vec<String> {
    let mut problems = Vec::new();
    let name = obj.name_any();
    if !names::valid_instance_name(&name) {
        problems.push(format!(
            "metadata.name {name:?} must be a DNS label of at most {} characters starting with a letter",
            crate::crd::MAX_NAME_LEN
        ));
    }
    let spec = &obj.spec;
    if spec.postgres.managed.is_some() && spec.postgres.external.is_some() {
        problems.push("set at most one of postgres.managed and postgres.external".into());
    }
    if spec.rabbitmq.managed.is_some() && spec.rabbitmq.external.is_some() {
        problems.push("set at most one of rabbitmq.managed and rabbitmq.external".into());
    }
    if spec.ingress.tls_secret_name.is_some() && spec.ingress.host.is_none() {
        problems.push("ingress.tlsSecretName needs ingress.host".into());
    }
    for cidr in &spec.ingress.trusted_proxies {
        if !valid_cidr(cidr) {
            problems.push(format!(
                "ingress.trustedProxies entry {cidr:?} is not an IP address or CIDR"
            ));
        }
    }
    if !(0.0..=1.0).contains(&spec.tracing.sampling_ratio) {
        problems.push("tracing.samplingRatio must be between 0 and 1".into());
    }
    if spec.image.tag.is_empty() || spec.image.repository.is_empty() {
        problems.push("image.repository and image.tag must not be empty".into());
    }
    for svc in Svc::ALL {
        let s = service_spec(spec, svc);
        if !(0..=50).contains(&s.replicas) {
            problems.push(format!(
                "services.{}.replicas must be between 0 and 50",
                svc.as_str()
            ));
        }
        check_resources(
            &mut problems,
            &format!("services.{}", svc.as_str()),
            &s.resources,
        );
    }
    if let Some(m) = &spec.postgres.managed {
        check_quantity(
            &mut problems,
            "postgres.managed.storageSize",
            &m.storage_size,
        );
        check_resources(&mut problems, "postgres.managed", &m.resources);
    }
    if let Some(m) = &spec.rabbitmq.managed {
        check_quantity(
            &mut problems,
            "rabbitmq.managed.storageSize",
            &m.storage_size,
        );
        check_resources(&mut problems, "rabbitmq.managed", &m.resources);
    }
    if !(100..=600_000).contains(&spec.resilience.request_timeout_ms) {
        problems.push("resilience.requestTimeoutMs must be between 100 and 600000".into());
    }
    if !(1..=1000).contains(&spec.resilience.breaker.failure_threshold) {
        problems.push("resilience.breaker.failureThreshold must be between 1 and 1000".into());
    }
    let breaker = &spec.resilience.breaker;
    if !(100..=3_600_000).contains(&breaker.open_ms) {
        problems.push("resilience.breaker.openMs must be between 100 and 3600000".into());
    }
    if let Some(max) = breaker.max_open_ms {
        if !(100..=3_600_000).contains(&max) {
            problems.push("resilience.breaker.maxOpenMs must be between 100 and 3600000".into());
        } else if max < breaker.open_ms {
            problems.push(format!(
                "resilience.breaker.maxOpenMs ({max}) must be at least openMs ({})",
                breaker.open_ms
            ));
        }
    }
    let np = &spec.network_policy;
    let mut cidrs = vec![("networkPolicy.otlpCidr", &np.otlp_cidr)];
    if let Some(ext) = &spec.postgres.external {
        cidrs.push(("postgres.external.cidr", &ext.cidr));
    }
    if let Some(ext) = &spec.rabbitmq.external {
        cidrs.push(("rabbitmq.external.cidr", &ext.cidr));
    }
    for (field, cidr) in cidrs {
        if !cidr.contains('/') || !valid_cidr(cidr) {
            problems.push(format!(
                "{field} {cidr:?} is not a network in CIDR notation"
            ));
        }
    }
    let ports = [
        (
            "postgres.external.port",
            spec.postgres.external.as_ref().and_then(|e| e.port),
        ),
        (
            "rabbitmq.external.port",
            spec.rabbitmq.external.as_ref().and_then(|e| e.port),
        ),
    ];
    for (field, port) in ports {
        if port.is_some_and(|p| !(1..=65_535).contains(&p)) {
            problems.push(format!("{field} must be between 1 and 65535"));
        }
    }
    if !(0..=120_000).contains(&spec.resilience.shutdown.drain_ms) {
        problems.push("resilience.shutdown.drainMs must be between 0 and 120000".into());
    }
    if !(1_000..=600_000).contains(&spec.resilience.shutdown.grace_ms) {
        problems.push("resilience.shutdown.graceMs must be between 1000 and 600000".into());
    }
    problems
}

fn check_resources(problems: &mut Vec<String>, path: &str, r: &ResourcesSpec) {
    for (field, value) in [
        ("requests.cpu", &r.requests.cpu),
        ("requests.memory", &r.requests.memory),
        ("limits.cpu", &r.limits.cpu),
        ("limits.memory", &r.limits.memory),
    ] {
        if let Some(v) = value {
            check_quantity(problems, &format!("{path}.resources.{field}"), v);
        }
    }
}

fn check_quantity(problems: &mut Vec<String>, path: &str, value: &str) {
    if !is_quantity(value) {
        problems.push(format!("{path} {value:?} is not a Kubernetes quantity"));
    }
}

/// A conservative check of the Kubernetes quantity syntax.
pub fn is_quantity(value: &str) -> bool {
    let digits_end = value
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(value.len());
    let (number, suffix) = value.split_at(digits_end);
    let number_ok = !number.is_empty() && number != "." && number.matches('.').count() <= 1;
    let suffix_ok = matches!(
        suffix,
        "" | "m"
            | "k"
            | "M"
            | "G"
            | "T"
            | "P"
            | "E"
            | "Ki"
            | "Mi"
            | "Gi"
            | "Ti"
            | "Pi"
            | "Ei"
            | "n"
            | "u"
    );
    number_ok && suffix_ok
}

fn service_spec(spec: &InventorySystemSpec, svc: Svc) -> &crate::crd::ServiceSpec {
    match svc {
        Svc::User => &spec.services.user,
        Svc::Product => &spec.services.product,
        Svc::Inventory => &spec.services.inventory,
        Svc::Order => &spec.services.order,
        Svc::Notification => &spec.services.notification,
    }
}

/// Replicas the spec asks for, per service.
pub fn desired_replicas(spec: &InventorySystemSpec, svc: Svc) -> i32 {
    service_spec(spec, svc).replicas
}

/// Context shared by the builders.
struct Ctx<'a> {
    name: String,
    namespace: String,
    owner: Value,
    spec: &'a InventorySystemSpec,
    pg: Option<ManagedPostgres>,
    mq: Option<ManagedRabbitMq>,
}

impl Ctx<'_> {
    fn meta(&self, name: &str, component: &str) -> Value {
        json!({
            "name": name,
            "namespace": self.namespace,
            "labels": names::labels(&self.name, component),
            "ownerReferences": [self.owner.clone()],
        })
    }
}

/// Every object of the InventorySystem, in apply order (Secrets, ConfigMaps,
/// Services, StatefulSets, Deployments, PodDisruptionBudgets, Ingress,
/// NetworkPolicies). Generated Secrets that already exist are left out;
/// those that do not get fresh random values.
pub fn build_all(
    obj: &InventorySystem,
    observed: &ObservedSecrets,
) -> Result<Vec<Desired>, BuildError> {
    let name = obj
        .metadata
        .name
        .clone()
        .ok_or(BuildError::MissingMetadata("metadata.name"))?;
    let namespace = obj
        .metadata
        .namespace
        .clone()
        .ok_or(BuildError::MissingMetadata("metadata.namespace"))?;
    let uid = obj
        .metadata
        .uid
        .clone()
        .ok_or(BuildError::MissingMetadata("metadata.uid"))?;
    let owner = json!({
        "apiVersion": InventorySystem::api_version(&()),
        "kind": InventorySystem::kind(&()),
        "name": name,
        "uid": uid,
        "controller": true,
        "blockOwnerDeletion": true,
    });
    let ctx = Ctx {
        name,
        namespace,
        owner,
        spec: &obj.spec,
        pg: obj.spec.postgres.effective_managed(),
        mq: obj.spec.rabbitmq.effective_managed(),
    };

    let mut out = Vec::new();
    secrets_all(&ctx, observed, &mut out)?;
    let config = config_map(&ctx);
    let config_hash = config_hash(&config, observed);
    out.push(config);
    if ctx.pg.is_some() {
        out.push(postgres_init_config_map(&ctx));
    }
    // Services.
    for svc in Svc::ALL {
        out.push(service(&ctx, svc));
        if svc.has_grpc() {
            out.push(grpc_service(&ctx, svc));
        }
    }
    if ctx.pg.is_some() {
        out.push(store_service(
            &ctx,
            "postgres",
            &names::postgres(&ctx.name),
            false,
            names::POSTGRES_PORT,
            "postgres",
        ));
        out.push(store_service(
            &ctx,
            "postgres",
            &names::postgres_headless(&ctx.name),
            true,
            names::POSTGRES_PORT,
            "postgres",
        ));
    }
    if ctx.mq.is_some() {
        out.push(store_service(
            &ctx,
            "rabbitmq",
            &names::rabbitmq(&ctx.name),
            false,
            names::AMQP_PORT,
            "amqp",
        ));
        out.push(store_service(
            &ctx,
            "rabbitmq",
            &names::rabbitmq_headless(&ctx.name),
            true,
            names::AMQP_PORT,
            "amqp",
        ));
    }
    // StatefulSets.
    if let Some(pg) = &ctx.pg {
        out.push(postgres_statefulset(&ctx, pg));
    }
    if let Some(mq) = &ctx.mq {
        out.push(rabbitmq_statefulset(&ctx, mq));
    }
    // Deployments and their disruption budgets.
    for svc in Svc::ALL {
        out.push(deployment(&ctx, svc, &config_hash));
    }
    for svc in Svc::ALL {
        out.push(pdb(&ctx, svc));
    }
    if ctx.spec.ingress.enabled {
        out.push(ingress(&ctx));
    }
    if ctx.spec.network_policy.enabled {
        for svc in Svc::ALL {
            out.push(service_network_policy(&ctx, svc, observed));
        }
        if ctx.pg.is_some() {
            out.push(store_network_policy(
                &ctx,
                "postgres",
                &names::postgres(&ctx.name),
                names::POSTGRES_PORT,
                &Svc::ALL,
            ));
        }
        if ctx.mq.is_some() {
            out.push(store_network_policy(
                &ctx,
                "rabbitmq",
                &names::rabbitmq(&ctx.name),
                names::AMQP_PORT,
                &[Svc::Order, Svc::Notification],
            ));
        }
    }
    for d in &mut out {
        if d.mode == WriteMode::Apply {
            let hash = applied_hash(d, observed);
            if let Some(meta) = d.object.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.insert(
                    "annotations".into(),
                    json!({(names::APPLIED_HASH_ANNOTATION): hash }),
                );
            }
        }
    }
    Ok(out)
}

/// First 16 hex digits of the SHA-256 of a JSON value (keys sorted, so the
/// hash is stable).
pub fn short_hash(value: &Value) -> String {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
    digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The `stockmesh.io/applied-hash` of a desired object. A Secret's data
/// never enters it: a Secret copied from an external one is hashed without
/// its data, with the versions of the Secrets it was copied from instead
/// (so a changed external Secret is copied again).
fn applied_hash(d: &Desired, observed: &ObservedSecrets) -> String {
    if d.kind != Kind::Secret {
        return short_hash(&d.object);
    }
    let mut object = d.object.clone();
    if let Some(o) = object.as_object_mut() {
        o.remove("data");
        o.remove("stringData");
    }
    short_hash(&json!({"object": object, "copiedFrom": observed.external_versions}))
}

/// The `stockmesh.io/config-hash` of the service pod templates: the shared
/// ConfigMap's data and, in external mode, the versions of the referenced
/// Secrets (uid and resourceVersion, not their values), so that a change of
/// either rolls the pods.
fn config_hash(config: &Desired, observed: &ObservedSecrets) -> String {
    short_hash(&json!({
        "config": config.object.get("data"),
        "externalSecretVersions": observed.external_versions,
    }))
}

fn b64(s: &str) -> String {
    STANDARD.encode(s.as_bytes())
}

fn secret(
    ctx: &Ctx<'_>,
    name: &str,
    component: &str,
    mode: WriteMode,
    retained: bool,
    data: &[(&str, &str)],
) -> Desired {
    let mut meta = ctx.meta(name, component);
    if retained && let Some(m) = meta.as_object_mut() {
        m.remove("ownerReferences");
        m.insert(
            "annotations".into(),
            json!({(names::RETAINED_ANNOTATION): "true" }),
        );
    }
    let data: BTreeMap<&str, String> = data.iter().map(|(k, v)| (*k, b64(v))).collect();
    Desired {
        kind: Kind::Secret,
        name: name.to_owned(),
        mode,
        object: json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": meta,
            "type": "Opaque",
            "data": data,
        }),
    }
}

fn secrets_all(
    ctx: &Ctx<'_>,
    observed: &ObservedSecrets,
    out: &mut Vec<Desired>,
) -> Result<(), BuildError> {
    let name = &ctx.name;
    let missing = |secret: &str| !observed.existing.contains(secret);
    let pg_retained = ctx.pg.as_ref().is_some_and(|p| p.keep_volumes);
    let mq_retained = ctx.mq.as_ref().is_some_and(|m| m.keep_volumes);

    if let Some(_pg) = &ctx.pg {
        let superuser = names::postgres(name);
        if missing(&superuser) {
            let pw = secrets::password(32)?;
            out.push(secret(
                ctx,
                &superuser,
                "postgres",
                WriteMode::CreateOnce,
                pg_retained,
                &[("username", "postgres"), ("password", &pw)],
            ));
        }
        for svc in Svc::ALL {
            let sname = names::db_secret(name, svc);
            if missing(&sname) {
                let pw = secrets::password(32)?;
                let db = names::db_name(svc);
                let url = format!(
                    "postgres://{db}:{pw}@{}:{}/{db}",
                    names::postgres(name),
                    names::POSTGRES_PORT
                );
                out.push(secret(
                    ctx,
                    &sname,
                    svc.as_str(),
                    WriteMode::CreateOnce,
                    pg_retained,
                    &[
                        ("url", &url),
                        ("username", &db),
                        ("password", &pw),
                        ("database", &db),
                    ],
                ));
            }
        }
    } else {
        // External database: copy each service's URL into the Secret name
        // the contract gives the pods.
        for svc in Svc::ALL {
            let url = observed
                .external_database_urls
                .get(svc.as_str())
                .ok_or_else(|| BuildError::MissingExternalDatabaseUrl(svc.as_str().to_owned()))?;
            out.push(secret(
                ctx,
                &names::db_secret(name, svc),
                svc.as_str(),
                WriteMode::Apply,
                false,
                &[("url", url)],
            ));
        }
    }

    let mq_name = names::rabbitmq(name);
    if ctx.mq.is_some() {
        if missing(&mq_name) {
            let pw = secrets::password(32)?;
            let url = format!("amqp://stockmesh:{pw}@{mq_name}:{}/%2f", names::AMQP_PORT);
            out.push(secret(
                ctx,
                &mq_name,
                "rabbitmq",
                WriteMode::CreateOnce,
                mq_retained,
                &[("url", &url), ("username", "stockmesh"), ("password", &pw)],
            ));
        }
    } else {
        let url = observed
            .external_amqp_url
            .as_deref()
            .ok_or(BuildError::MissingExternalAmqpUrl)?;
        out.push(secret(
            ctx,
            &mq_name,
            "rabbitmq",
            WriteMode::Apply,
            false,
            &[("url", url)],
        ));
    }

    let jwt = names::jwt_secret(name);
    if missing(&jwt) {
        let pair = secrets::jwt_key_pair()?;
        out.push(secret(
            ctx,
            &jwt,
            "jwt",
            WriteMode::CreateOnce,
            false,
            &[
                ("private.pem", &pair.private_pem),
                ("public.pem", &pair.public_pem),
            ],
        ));
    }
    let admin = names::admin_secret(name);
    if missing(&admin) {
        let pw = secrets::password(24)?;
        // The admin account lives in the user database: keep its password
        // as long as that database is kept.
        out.push(secret(
            ctx,
            &admin,
            "admin",
            WriteMode::CreateOnce,
            pg_retained,
            &[("password", &pw)],
        ));
    }
    Ok(())
}

/// Names of the Secrets the operator generates (created once) for this
/// spec, whether or not they exist yet: never pruned while wanted.
pub fn generated_secret_names(obj: &InventorySystem) -> Vec<String> {
    let name = obj.name_any();
    let mut out = Vec::new();
    if obj.spec.postgres.effective_managed().is_some() {
        out.push(names::postgres(&name));
        out.extend(Svc::ALL.iter().map(|s| names::db_secret(&name, *s)));
    }
    if obj.spec.rabbitmq.effective_managed().is_some() {
        out.push(names::rabbitmq(&name));
    }
    out.push(names::jwt_secret(&name));
    out.push(names::admin_secret(&name));
    out
}

/// `<name>-config`: the non-secret settings shared by the services.
fn config_map(ctx: &Ctx<'_>) -> Desired {
    let spec = ctx.spec;
    let mut data = BTreeMap::from([
        ("RUST_LOG".to_owned(), spec.log_level.clone()),
        (
            "REQUEST_TIMEOUT_MS".to_owned(),
            spec.resilience.request_timeout_ms.to_string(),
        ),
        (
            "OTEL_TRACES_SAMPLER_ARG".to_owned(),
            spec.tracing.sampling_ratio.to_string(),
        ),
        (
            "DEPLOYMENT_ENVIRONMENT".to_owned(),
            spec.environment.clone(),
        ),
        ("STOCKMESH_ADMIN_EMAIL".to_owned(), spec.admin_email.clone()),
        (
            "BREAKER_FAILURE_THRESHOLD".to_owned(),
            spec.resilience.breaker.failure_threshold.to_string(),
        ),
        (
            "BREAKER_OPEN_MS".to_owned(),
            spec.resilience.breaker.open_ms.to_string(),
        ),
        (
            "BREAKER_MAX_OPEN_MS".to_owned(),
            spec.resilience.breaker.effective_max_open_ms().to_string(),
        ),
    ]);
    if let Some(endpoint) = &spec.tracing.otlp_endpoint {
        data.insert("OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(), endpoint.clone());
    }
    let name = names::config_map(&ctx.name);
    Desired {
        kind: Kind::ConfigMap,
        name: name.clone(),
        mode: WriteMode::Apply,
        object: json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": ctx.meta(&name, "config"),
            "data": data,
        }),
    }
}

/// The init script creating one role and one database per service. It runs
/// once, when the official postgres image initialises an empty data
/// directory; passwords come from environment variables sourced from the
/// `<name>-<service>-db` Secrets, never from this ConfigMap.
pub const POSTGRES_INIT_SCRIPT: &str = r#"#!/bin/bash
# Generated by stockmesh-operator. Creates one role and one database per
# stockmesh service; the passwords come from the environment
# (STOCKMESH_<SERVICE>_DB_PASSWORD, from the Secrets <name>-<service>-db).
set -euo pipefail
for svc in user product inventory order notification; do
  var="STOCKMESH_${svc^^}_DB_PASSWORD"
  role="stockmesh_${svc}"
  psql -v ON_ERROR_STOP=1 --no-password --username "$POSTGRES_USER" --dbname postgres \
    --set=role="$role" --set=pw="${!var}" <<'SQL'
CREATE ROLE :"role" LOGIN PASSWORD :'pw';
CREATE DATABASE :"role" OWNER :"role";
REVOKE ALL ON DATABASE :"role" FROM PUBLIC;
SQL
done
"#;

fn postgres_init_config_map(ctx: &Ctx<'_>) -> Desired {
    let name = names::postgres_init(&ctx.name);
    Desired {
        kind: Kind::ConfigMap,
        name: name.clone(),
        mode: WriteMode::Apply,
        object: json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": ctx.meta(&name, "postgres"),
            "data": { "10-stockmesh-databases.sh": POSTGRES_INIT_SCRIPT },
        }),
    }
}

fn service(ctx: &Ctx<'_>, svc: Svc) -> Desired {
    let name = names::svc_name(&ctx.name, svc);
    let mut ports = vec![
        json!({"name": "http", "port": names::HTTP_PORT, "targetPort": "http", "protocol": "TCP"}),
    ];
    if svc.has_grpc() {
        ports.push(json!({"name": "grpc", "port": names::GRPC_PORT, "targetPort": "grpc", "protocol": "TCP", "appProtocol": "grpc"}));
    }
    Desired {
        kind: Kind::Service,
        name: name.clone(),
        mode: WriteMode::Apply,
        object: json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": ctx.meta(&name, svc.as_str()),
            "spec": {
                "type": "ClusterIP",
                "selector": names::selector_labels(&ctx.name, svc.as_str()),
                "ports": ports,
            },
        }),
    }
}

fn grpc_service(ctx: &Ctx<'_>, svc: Svc) -> Desired {
    let name = names::grpc_svc_name(&ctx.name, svc);
    Desired {
        kind: Kind::Service,
        name: name.clone(),
        mode: WriteMode::Apply,
        object: json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": ctx.meta(&name, svc.as_str()),
            "spec": {
                "clusterIP": "None",
                "selector": names::selector_labels(&ctx.name, svc.as_str()),
                "ports": [{"name": "grpc", "port": names::GRPC_PORT, "targetPort": "grpc", "protocol": "TCP", "appProtocol": "grpc"}],
            },
        }),
    }
}

fn store_service(
    ctx: &Ctx<'_>,
    component: &str,
    name: &str,
    headless: bool,
    port: i32,
    port_name: &str,
) -> Desired {
    let mut spec = json!({
        "selector": names::selector_labels(&ctx.name, component),
        "ports": [{"name": port_name, "port": port, "targetPort": port_name, "protocol": "TCP"}],
    });
    if headless {
        spec["clusterIP"] = json!("None");
        spec["publishNotReadyAddresses"] = json!(true);
    } else {
        spec["type"] = json!("ClusterIP");
    }
    Desired {
        kind: Kind::Service,
        name: name.to_owned(),
        mode: WriteMode::Apply,
        object: json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": ctx.meta(name, component),
            "spec": spec,
        }),
    }
}

fn resources_json(r: &ResourcesSpec) -> Value {
    let mut out = serde_json::Map::new();
    for (key, amounts) in [("requests", &r.requests), ("limits", &r.limits)] {
        let mut m = serde_json::Map::new();
        if let Some(cpu) = &amounts.cpu {
            m.insert("cpu".into(), json!(cpu));
        }
        if let Some(mem) = &amounts.memory {
            m.insert("memory".into(), json!(mem));
        }
        if !m.is_empty() {
            out.insert(key.into(), Value::Object(m));
        }
    }
    Value::Object(out)
}

/// The restricted container security context of the contract.
pub fn container_security_context() -> Value {
    json!({
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "capabilities": {"drop": ["ALL"]},
        "privileged": false,
    })
}

/// The restricted pod security context of the contract, for a user id.
pub fn pod_security_context(uid: i64) -> Value {
    json!({
        "runAsNonRoot": true,
        "runAsUser": uid,
        "runAsGroup": uid,
        "fsGroup": uid,
        "seccompProfile": {"type": "RuntimeDefault"},
    })
}

/// An address or network as the user service's `TRUSTED_PROXIES` accepts
/// it: `10.0.0.0/8`, `fd00::/8`, `127.0.0.1`.
fn valid_cidr(text: &str) -> bool {
    let (addr, prefix) = match text.split_once('/') {
        Some((addr, prefix)) => (addr, Some(prefix)),
        None => (text, None),
    };
    let Ok(addr) = addr.parse::<std::net::IpAddr>() else {
        return false;
    };
    let max = if addr.is_ipv4() { 32 } else { 128 };
    prefix.is_none_or(|p| p.parse::<u8>().is_ok_and(|p| p <= max))
}

fn env_value(name: &str, value: &str) -> Value {
    json!({"name": name, "value": value})
}
fn env_config(ctx: &Ctx<'_>, name: &str) -> Value {
    json!({"name": name, "valueFrom": {"configMapKeyRef": {"name": names::config_map(&ctx.name), "key": name}}})
}
fn env_secret(name: &str, secret: &str, key: &str) -> Value {
    json!({"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}})
}
fn env_field(name: &str, path: &str) -> Value {
    json!({"name": name, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": path}}})
}

/// The environment of a service container, per the contract.
fn service_env(ctx: &Ctx<'_>, svc: Svc) -> Vec<Value> {
    let name = &ctx.name;
    let mut env = vec![
        env_field("POD_NAME", "metadata.name"),
        env_field("POD_NAMESPACE", "metadata.namespace"),
        env_value("HTTP_ADDR", "0.0.0.0:8080"),
    ];
    if svc.has_grpc() {
        env.push(env_value("GRPC_ADDR", "0.0.0.0:50051"));
    }
    env.extend([
        env_value("LOG_FORMAT", "json"),
        env_config(ctx, "RUST_LOG"),
        env_secret("DATABASE_URL", &names::db_secret(name, svc), "url"),
        env_value(
            "DATABASE_ACQUIRE_TIMEOUT_MS",
            &DATABASE_ACQUIRE_TIMEOUT_MS.to_string(),
        ),
        env_value(
            "SHUTDOWN_DRAIN_MS",
            &ctx.spec.resilience.shutdown.drain_ms.to_string(),
        ),
        env_value(
            "SHUTDOWN_GRACE_MS",
            &ctx.spec.resilience.shutdown.grace_ms.to_string(),
        ),
        env_config(ctx, "REQUEST_TIMEOUT_MS"),
    ]);
    if ctx.spec.tracing.otlp_endpoint.is_some() {
        env.push(env_config(ctx, "OTEL_EXPORTER_OTLP_ENDPOINT"));
    }
    env.extend([
        env_value("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
        env_config(ctx, "OTEL_TRACES_SAMPLER_ARG"),
        env_value(
            "OTEL_RESOURCE_ATTRIBUTES",
            "k8s.pod.name=$(POD_NAME),k8s.namespace.name=$(POD_NAMESPACE)",
        ),
        env_config(ctx, "DEPLOYMENT_ENVIRONMENT"),
    ]);
    if svc == Svc::User {
        env.push(env_value(
            "JWT_PRIVATE_KEY_FILE",
            "/etc/stockmesh/jwt/private.pem",
        ));
    }
    if svc.uses_jwt() {
        env.extend([
            env_value("JWT_PUBLIC_KEY_FILE", "/etc/stockmesh/jwt/public.pem"),
            env_value("JWT_ISSUER", "stockmesh"),
            env_value("JWT_AUDIENCE", "stockmesh-api"),
        ]);
    }
    if svc == Svc::User {
        let tls = ctx.spec.ingress.enabled && ctx.spec.ingress.tls_secret_name.is_some();
        env.extend([
            env_config(ctx, "STOCKMESH_ADMIN_EMAIL"),
            env_secret(
                "STOCKMESH_ADMIN_PASSWORD",
                &names::admin_secret(name),
                "password",
            ),
            env_value("AUTH_COOKIE_SECURE", if tls { "true" } else { "false" }),
        ]);
        // Behind the Ingress the peer is the controller: the client is found
        // in X-Forwarded-For, believed only from these networks. Without the
        // Ingress nothing is trusted (a Service's SNAT peer is no proxy).
        let proxies = &ctx.spec.ingress.trusted_proxies;
        if ctx.spec.ingress.enabled && !proxies.is_empty() {
            env.push(env_value("TRUSTED_PROXIES", &proxies.join(",")));
        }
    }
    if matches!(svc, Svc::Product | Svc::Order) {
        env.push(env_value(
            "INVENTORY_GRPC_URL",
            &format!(
                "http://{}:{}",
                names::grpc_svc_name(name, Svc::Inventory),
                names::GRPC_PORT
            ),
        ));
    }
    if svc == Svc::Order {
        env.push(env_value(
            "PRODUCT_GRPC_URL",
            &format!(
                "http://{}:{}",
                names::grpc_svc_name(name, Svc::Product),
                names::GRPC_PORT
            ),
        ));
    }
    if svc.uses_amqp() {
        env.push(env_secret("AMQP_URL", &names::rabbitmq(name), "url"));
    }
    if !svc.grpc_upstreams().is_empty() {
        env.extend([
            env_config(ctx, "BREAKER_FAILURE_THRESHOLD"),
            env_config(ctx, "BREAKER_OPEN_MS"),
            env_config(ctx, "BREAKER_MAX_OPEN_MS"),
        ]);
    }
    env
}

/// A request waits at most this long for a pooled database connection: while
/// the database is down, requests are answered 503 + Retry-After within about
/// a second, sooner than a gRPC caller's per-call deadline (2 s), so product
/// and inventory answer UNAVAILABLE rather than letting order time out. The
/// chart sets the same.
const DATABASE_ACQUIRE_TIMEOUT_MS: i64 = 1_000;

/// What a pod needs after its shutdown phases, in seconds: the exit itself
/// (closing pools, flushing spans, bounded at 5 s by the services).
const TERMINATION_MARGIN_SECONDS: i64 = 5;

/// `terminationGracePeriodSeconds` of a service pod: the drain window (the
/// preStop hook), the grace period for in-flight work, the margin, so
/// kubelet never SIGKILLs a pod that is still inside its own sequence. The
/// chart computes the same.
pub fn termination_grace_seconds(shutdown: &ShutdownSpec) -> i64 {
    (shutdown.drain_ms + shutdown.grace_ms + 999) / 1000 + TERMINATION_MARGIN_SECONDS
}

/// The preStop hook: `GET /drain` turns readiness false and answers when the
/// drain window is over; kubelet sends SIGTERM after it. An HTTP hook
/// because the images have no shell (no `exec sleep`) and clusters before
/// 1.29 have no `sleep` hook.
fn pre_stop_drain() -> Value {
    json!({"preStop": {"httpGet": {"path": "/drain", "port": "http"}}})
}

fn http_probe(path: &str, period: i32, failure: i32) -> Value {
    json!({"httpGet": {"path": path, "port": "http"}, "periodSeconds": period, "failureThreshold": failure})
}
fn grpc_probe(period: i32, failure: i32) -> Value {
    json!({"grpc": {"port": names::GRPC_PORT, "service": ""}, "periodSeconds": period, "failureThreshold": failure})
}

fn deployment(ctx: &Ctx<'_>, svc: Svc, config_hash: &str) -> Desired {
    let name = names::svc_name(&ctx.name, svc);
    let spec = service_spec(ctx.spec, svc);
    let image = format!(
        "{}/{}:{}",
        ctx.spec.image.repository,
        svc.as_str(),
        ctx.spec.image.tag
    );
    let mut ports =
        vec![json!({"name": "http", "containerPort": names::HTTP_PORT, "protocol": "TCP"})];
    if svc.has_grpc() {
        ports.push(json!({"name": "grpc", "containerPort": names::GRPC_PORT, "protocol": "TCP"}));
    }
    let (startup, readiness) = if svc == Svc::Inventory {
        (grpc_probe(2, 30), grpc_probe(5, 2))
    } else {
        (http_probe("/healthz", 2, 30), http_probe("/readyz", 5, 2))
    };
    let liveness = http_probe("/healthz", 10, 3);
    let mut mounts = vec![json!({"name": "tmp", "mountPath": "/tmp"})];
    // A bounded scratch directory (the root filesystem is read-only); the
    // chart mounts the same.
    let mut volumes = vec![json!({"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}})];
    if svc.uses_jwt() {
        let mut items = vec![json!({"key": "public.pem", "path": "public.pem"})];
        if svc == Svc::User {
            items.insert(0, json!({"key": "private.pem", "path": "private.pem"}));
        }
        mounts.push(json!({"name": "jwt", "mountPath": "/etc/stockmesh/jwt", "readOnly": true}));
        volumes.push(json!({"name": "jwt", "secret": {"secretName": names::jwt_secret(&ctx.name), "items": items, "defaultMode": 0o440}}));
    }
    let selector = names::selector_labels(&ctx.name, svc.as_str());
    Desired {
        kind: Kind::Deployment,
        name: name.clone(),
        mode: WriteMode::Apply,
        object: json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": ctx.meta(&name, svc.as_str()),
            "spec": {
                "replicas": spec.replicas,
                "selector": {"matchLabels": selector},
                "template": {
                    "metadata": {
                        "labels": names::labels(&ctx.name, svc.as_str()),
                        "annotations": {(names::CONFIG_HASH_ANNOTATION): config_hash},
                    },
                    "spec": {
                        "automountServiceAccountToken": false,
                        "enableServiceLinks": false,
                        "terminationGracePeriodSeconds":
                            termination_grace_seconds(&ctx.spec.resilience.shutdown),
                        "securityContext": pod_security_context(65532),
                        "containers": [{
                            "name": svc.as_str(),
                            "image": image,
                            "imagePullPolicy": ctx.spec.image.pull_policy.as_str(),
                            "ports": ports,
                            "env": service_env(ctx, svc),
                            "startupProbe": startup,
                            "livenessProbe": liveness,
                            "readinessProbe": readiness,
                            "lifecycle": pre_stop_drain(),
                            "resources": resources_json(&spec.resources),
                            "securityContext": container_security_context(),
                            "volumeMounts": mounts,
                        }],
                        "volumes": volumes,
                    },
                },
            },
        }),
    }
}

fn pdb(ctx: &Ctx<'_>, svc: Svc) -> Desired {
    let name = names::svc_name(&ctx.name, svc);
    Desired {
        kind: Kind::PodDisruptionBudget,
        name: name.clone(),
        mode: WriteMode::Apply,
        object: json!({
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": ctx.meta(&name, svc.as_str()),
            "spec": {
                "maxUnavailable": 1,
                "selector": {"matchLabels": names::selector_labels(&ctx.name, svc.as_str())},
            },
        }),
    }
}

fn pvc_template(size: &str, class: Option<&String>) -> Value {
    let mut spec = json!({
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": size}},
    });
    if let Some(class) = class {
        spec["storageClassName"] = json!(class);
    }
    json!({"metadata": {"name": "data"}, "spec": spec})
}

fn retention(keep: bool) -> Value {
    let policy = if keep { "Retain" } else { "Delete" };
    json!({"whenDeleted": policy, "whenScaled": "Retain"})
}

fn exec_probe(cmd: &[&str], period: i32, timeout: i32, failure: i32) -> Value {
    json!({"exec": {"command": cmd}, "periodSeconds": period, "timeoutSeconds": timeout, "failureThreshold": failure})
}

fn postgres_statefulset(ctx: &Ctx<'_>, pg: &ManagedPostgres) -> Desired {
    let name = names::postgres(&ctx.name);
    let superuser = names::postgres(&ctx.name);
    let mut env = vec![
        env_secret("POSTGRES_USER", &superuser, "username"),
        env_secret("POSTGRES_PASSWORD", &superuser, "password"),
        env_value("PGDATA", POSTGRES_PGDATA),
    ];
    for svc in Svc::ALL {
        env.push(env_secret(
            &format!("STOCKMESH_{}_DB_PASSWORD", svc.as_str().to_uppercase()),
            &names::db_secret(&ctx.name, svc),
            "password",
        ));
    }
    let ready = [
        "pg_isready",
        "-h",
        "127.0.0.1",
        "-p",
        "5432",
        "-U",
        "postgres",
        "-d",
        "postgres",
    ];
    let init_hash = short_hash(&json!(POSTGRES_INIT_SCRIPT));
    Desired {
        kind: Kind::StatefulSet,
        name: name.clone(),
        mode: WriteMode::Apply,
        object: json!({
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": ctx.meta(&name, "postgres"),
            "spec": {
                "serviceName": names::postgres_headless(&ctx.name),
                "replicas": 1,
                "selector": {"matchLabels": names::selector_labels(&ctx.name, "postgres")},
                "persistentVolumeClaimRetentionPolicy": retention(pg.keep_volumes),
                "template": {
                    "metadata": {
                        "labels": names::labels(&ctx.name, "postgres"),
                        "annotations": {(names::CONFIG_HASH_ANNOTATION): init_hash},
                    },
                    "spec": {
                        "automountServiceAccountToken": false,
                        "enableServiceLinks": false,
                        "terminationGracePeriodSeconds": 60,
                        "securityContext": pod_security_context(pg.run_as_user),
                        "containers": [{
                            "name": "postgres",
                            "image": pg.image,
                            "imagePullPolicy": "IfNotPresent",
                            "ports": [{"name": "postgres", "containerPort": names::POSTGRES_PORT, "protocol": "TCP"}],
                            "env": env,
                            "startupProbe": exec_probe(&ready, 5, 5, 60),
                            "livenessProbe": exec_probe(&ready, 10, 5, 6),
                            "readinessProbe": exec_probe(&ready, 5, 5, 3),
                            "resources": resources_json(&pg.resources),
                            "securityContext": container_security_context(),
                            "volumeMounts": [
                                {"name": "data", "mountPath": "/var/lib/postgresql/data"},
                                {"name": "init", "mountPath": "/docker-entrypoint-initdb.d", "readOnly": true},
                                {"name": "run", "mountPath": "/var/run/postgresql"},
                                {"name": "tmp", "mountPath": "/tmp"},
                            ],
                        }],
                        "volumes": [
                            {"name": "init", "configMap": {"name": names::postgres_init(&ctx.name), "defaultMode": 0o555}},
                            {"name": "run", "emptyDir": {}},
                            {"name": "tmp", "emptyDir": {}},
                        ],
                    },
                },
                "volumeClaimTemplates": [pvc_template(&pg.storage_size, pg.storage_class_name.as_ref())],
            },
        }),
    }
}

/// Where the stores write, with a read-only root filesystem: every path
/// below is a volume (the data PVC or an emptyDir), and the manifest tests
/// and the chart parity check hold both renderers to this list.
///
/// PostgreSQL (official image, docker-library/postgres `docker-entrypoint.sh`):
/// `PGDATA` (a subdirectory of the data volume, which has `lost+found`);
/// `/var/run/postgresql`, the socket and its lock file; `/tmp`, where the
/// entrypoint's here-documents and, for a uid without a passwd entry, its
/// nss_wrapper files go. Nothing else: the server writes only to `PGDATA`
/// and the socket directory, dynamic shared memory uses `/dev/shm` (a tmpfs
/// of the runtime, not the root filesystem).
///
/// RabbitMQ (official image, docker-library/rabbitmq: `HOME` and
/// `RABBITMQ_DATA_DIR` are `/var/lib/rabbitmq`): `/var/lib/rabbitmq`, the
/// Erlang cookie, the Mnesia/Khepri data, the PID file and the expanded
/// plugins; `RABBITMQ_LOG_BASE` (`/var/log/rabbitmq`), where RabbitMQ
/// always opens `<node>_upgrade.log` (the upgrade log category is a file
/// whatever the main log output) and the Erlang VM writes `erl_crash.dump`;
/// `/tmp` (`/tmp/rabbitmq-ssl` in the image). `RABBITMQ_LOGS=-` sends the
/// main log to standard output for images whose configuration logs to a
/// file (Debian's package does; the official image's `10-defaults.conf`
/// sets `log.console = true`).
pub const STORE_WRITABLE_PATHS: [(&str, &[&str]); 2] = [
    (
        "postgres",
        &[POSTGRES_PGDATA, "/var/run/postgresql", "/tmp"],
    ),
    (
        "rabbitmq",
        &["/var/lib/rabbitmq", RABBITMQ_LOG_BASE, "/tmp"],
    ),
];

/// `PGDATA` of the managed PostgreSQL.
pub const POSTGRES_PGDATA: &str = "/var/lib/postgresql/data/pgdata";
/// `RABBITMQ_LOG_BASE` of the managed RabbitMQ (an emptyDir).
pub const RABBITMQ_LOG_BASE: &str = "/var/log/rabbitmq";

fn rabbitmq_statefulset(ctx: &Ctx<'_>, mq: &ManagedRabbitMq) -> Desired {
    let name = names::rabbitmq(&ctx.name);
    let ping = ["rabbitmq-diagnostics", "-q", "ping"];
    Desired {
        kind: Kind::StatefulSet,
        name: name.clone(),
        mode: WriteMode::Apply,
        object: json!({
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": ctx.meta(&name, "rabbitmq"),
            "spec": {
                "serviceName": names::rabbitmq_headless(&ctx.name),
                "replicas": 1,
                "selector": {"matchLabels": names::selector_labels(&ctx.name, "rabbitmq")},
                "persistentVolumeClaimRetentionPolicy": retention(mq.keep_volumes),
                "template": {
                    "metadata": {"labels": names::labels(&ctx.name, "rabbitmq")},
                    "spec": {
                        "automountServiceAccountToken": false,
                        "enableServiceLinks": false,
                        "terminationGracePeriodSeconds": 60,
                        "securityContext": pod_security_context(mq.run_as_user),
                        "containers": [{
                            "name": "rabbitmq",
                            "image": mq.image,
                            "imagePullPolicy": "IfNotPresent",
                            "ports": [{"name": "amqp", "containerPort": names::AMQP_PORT, "protocol": "TCP"}],
                            "env": [
                                env_secret("RABBITMQ_DEFAULT_USER", &name, "username"),
                                env_secret("RABBITMQ_DEFAULT_PASS", &name, "password"),
                                env_value("RABBITMQ_LOGS", "-"),
                                env_value("RABBITMQ_LOG_BASE", RABBITMQ_LOG_BASE),
                            ],
                            "startupProbe": exec_probe(&ping, 10, 10, 30),
                            "livenessProbe": exec_probe(&ping, 30, 15, 3),
                            "readinessProbe": {"tcpSocket": {"port": "amqp"}, "periodSeconds": 10, "failureThreshold": 3},
                            "resources": resources_json(&mq.resources),
                            "securityContext": container_security_context(),
                            "volumeMounts": [
                                {"name": "data", "mountPath": "/var/lib/rabbitmq"},
                                {"name": "logs", "mountPath": RABBITMQ_LOG_BASE},
                                {"name": "tmp", "mountPath": "/tmp"},
                            ],
                        }],
                        "volumes": [
                            {"name": "logs", "emptyDir": {}},
                            {"name": "tmp", "emptyDir": {}},
                        ],
                    },
                },
                "volumeClaimTemplates": [pvc_template(&mq.storage_size, mq.storage_class_name.as_ref())],
            },
        }),
    }
}

fn ingress(ctx: &Ctx<'_>) -> Desired {
    let spec_in = &ctx.spec.ingress;
    let paths: Vec<Value> = Svc::ALL
        .iter()
        .filter_map(|svc| {
            svc.api_prefix().map(|prefix| {
                json!({
                    "path": prefix,
                    "pathType": "Prefix",
                    "backend": {"service": {"name": names::svc_name(&ctx.name, *svc), "port": {"name": "http"}}},
                })
            })
        })
        .collect();
    let mut rule = json!({"http": {"paths": paths}});
    if let Some(host) = &spec_in.host {
        rule["host"] = json!(host);
    }
    let mut spec = json!({"rules": [rule]});
    if let Some(class) = &spec_in.class_name {
        spec["ingressClassName"] = json!(class);
    }
    if let (Some(tls), Some(host)) = (&spec_in.tls_secret_name, &spec_in.host) {
        spec["tls"] = json!([{"hosts": [host], "secretName": tls}]);
    }
    Desired {
        kind: Kind::Ingress,
        name: ctx.name.clone(),
        mode: WriteMode::Apply,
        object: json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress",
            "metadata": ctx.meta(&ctx.name, "ingress"),
            "spec": spec,
        }),
    }
}

/// Pods of a namespace (all of them when `pods` is empty).
fn namespace_peer(ns: &str, pods: &BTreeMap<String, String>) -> Value {
    let mut peer =
        json!({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}});
    if !pods.is_empty() {
        peer["podSelector"] = json!({"matchLabels": pods});
    }
    peer
}
fn pod_peer(ctx: &Ctx<'_>, component: &str) -> Value {
    json!({"podSelector": {"matchLabels": names::selector_labels(&ctx.name, component)}})
}
fn ip_peer(cidr: &str) -> Value {
    json!({"ipBlock": {"cidr": cidr}})
}
fn tcp(port: i32) -> Value {
    json!({"protocol": "TCP", "port": port})
}

/// Egress every pod needs: DNS.
fn dns_egress() -> Value {
    json!({"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]})
}

/// The ports a URL (or a PostgreSQL URL with several `host:port` pairs)
/// connects to: the explicit ones, else the scheme's default.
pub fn url_ports(url: &str) -> BTreeSet<i32> {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let default = match scheme {
        "postgres" | "postgresql" => 5432,
        "amqp" => 5672,
        "amqps" => 5671,
        "https" => 443,
        _ => 80,
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let hosts = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    hosts
        .split(',')
        .map(|host| {
            // `[::1]:5432` or `host:5432`; a bare IPv6 address has no port.
            let port = match host.rsplit_once(']') {
                Some((_, after)) => after.strip_prefix(':'),
                None if host.matches(':').count() == 1 => host.rsplit_once(':').map(|(_, p)| p),
                None => None,
            };
            port.and_then(|p| p.parse().ok()).unwrap_or(default)
        })
        .collect()
}

/// An egress rule to a network (ipBlock) on some TCP ports.
fn ip_egress(cidr: &str, ports: impl IntoIterator<Item = i32>) -> Value {
    let ports: Vec<Value> = ports.into_iter().map(tcp).collect();
    json!({"to": [ip_peer(cidr)], "ports": ports})
}

/// The NetworkPolicy of a service: ingress from the ingress controller (the
/// public services), Prometheus and its gRPC clients; egress to DNS, the
/// OTLP endpoint (only with tracing on; `networkPolicy.otlpCidr`, the
/// endpoint's port), its database and broker (the managed pods, or the
/// external ones' `cidr` and port) and its gRPC upstreams. The chart renders
/// the same rules for the same configuration (scripts/check_parity.py).
fn service_network_policy(ctx: &Ctx<'_>, svc: Svc, observed: &ObservedSecrets) -> Desired {
    let np = &ctx.spec.network_policy;
    let mut http_from = vec![namespace_peer(
        &np.monitoring_namespace,
        &np.monitoring_pod_labels,
    )];
    if svc.has_public_http() {
        http_from.insert(
            0,
            namespace_peer(
                &np.ingress_controller_namespace,
                &np.ingress_controller_pod_labels,
            ),
        );
    }
    let mut ingress = vec![json!({"from": http_from, "ports": [tcp(names::HTTP_PORT)]})];
    let grpc_clients: Vec<Value> = Svc::ALL
        .iter()
        .filter(|c| c.grpc_upstreams().contains(&svc))
        .map(|c| pod_peer(ctx, c.as_str()))
        .collect();
    if !grpc_clients.is_empty() {
        ingress.push(json!({"from": grpc_clients, "ports": [tcp(names::GRPC_PORT)]}));
    }
    let mut egress = vec![dns_egress()];
    if let Some(endpoint) = &ctx.spec.tracing.otlp_endpoint {
        egress.push(ip_egress(&np.otlp_cidr, url_ports(endpoint)));
    }
    egress.push(match &ctx.spec.postgres.external {
        None => json!({"to": [pod_peer(ctx, "postgres")], "ports": [tcp(names::POSTGRES_PORT)]}),
        Some(ext) => {
            let ports: BTreeSet<i32> = match ext.port {
                Some(port) => [port].into(),
                None => observed
                    .external_database_urls
                    .values()
                    .flat_map(|u| url_ports(u))
                    .collect(),
            };
            ip_egress(&ext.cidr, ports)
        }
    });
    if svc.uses_amqp() {
        egress.push(match &ctx.spec.rabbitmq.external {
            None => json!({"to": [pod_peer(ctx, "rabbitmq")], "ports": [tcp(names::AMQP_PORT)]}),
            Some(ext) => {
                let ports: BTreeSet<i32> = match ext.port {
                    Some(port) => [port].into(),
                    None => observed
                        .external_amqp_url
                        .iter()
                        .flat_map(|u| url_ports(u))
                        .collect(),
                };
                ip_egress(&ext.cidr, ports)
            }
        });
    }
    for upstream in svc.grpc_upstreams() {
        egress.push(
            json!({"to": [pod_peer(ctx, upstream.as_str())], "ports": [tcp(names::GRPC_PORT)]}),
        );
    }
    let name = names::svc_name(&ctx.name, svc);
    Desired {
        kind: Kind::NetworkPolicy,
        name: name.clone(),
        mode: WriteMode::Apply,
        object: json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": ctx.meta(&name, svc.as_str()),
            "spec": {
                "podSelector": {"matchLabels": names::selector_labels(&ctx.name, svc.as_str())},
                "policyTypes": ["Ingress", "Egress"],
                "ingress": ingress,
                "egress": egress,
            },
        }),
    }
}

fn store_network_policy(
    ctx: &Ctx<'_>,
    component: &str,
    name: &str,
    port: i32,
    clients: &[Svc],
) -> Desired {
    let from: Vec<Value> = clients.iter().map(|c| pod_peer(ctx, c.as_str())).collect();
    Desired {
        kind: Kind::NetworkPolicy,
        name: name.to_owned(),
        mode: WriteMode::Apply,
        object: json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": ctx.meta(name, component),
            "spec": {
                "podSelector": {"matchLabels": names::selector_labels(&ctx.name, component)},
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [{"from": from, "ports": [tcp(port)]}],
                "egress": [dns_egress()],
            },
        }),
    }
}
