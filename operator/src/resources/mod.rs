//! Builders: the desired state of every child object of an InventorySystem.
//!
//! Pure functions of the custom resource and [`ObservedSecrets`]; the
//! reconciler applies what they return, `render` prints it, tests validate
//! it. Everything follows `docs/deployment-contract.md`. Each object is
//! built as its `k8s_openapi` type, one concern per module:
//!
//! - [`secrets`]: generated credentials and copies of external ones;
//! - [`workloads`]: the shared ConfigMap, the Deployments and
//!   PodDisruptionBudgets of the services and the web console, and the pod
//!   pieces every workload shares;
//! - [`stores`]: PostgreSQL and RabbitMQ, one generic shape for both
//!   (StatefulSet, Services, NetworkPolicy);
//! - [`network`]: the Services and NetworkPolicies of the services and the
//!   web console;
//! - [`ingress`]: the Ingress.
//!
//! [`Desired`] carries each as JSON, the form the apply, the drift check
//! and the hashes work on.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::core::{ApiResource, DynamicObject};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde_json::{Value, json};

use crate::crd::{
    InventorySystem, InventorySystemSpec, ManagedPostgres, ManagedRabbitMq, Postgres, RabbitMq,
    ResourcesSpec,
};
use crate::names::{self, Svc};

mod ingress;
mod network;
mod secrets;
mod stores;
mod workloads;

pub use network::url_ports;
pub use secrets::generated_secret_names;
pub use stores::{POSTGRES_INIT_SCRIPT, POSTGRES_PGDATA, RABBITMQ_LOG_BASE, STORE_WRITABLE_PATHS};
pub use workloads::{container_security_context, pod_security_context, termination_grace_seconds};

/// The kinds the operator creates, in the order it applies them: each a
/// [`Kind`] variant named after its `k8s_openapi` type.
macro_rules! kinds {
    ($($t:ident),* $(,)?) => {
        /// The kinds the operator creates, in the order it applies them.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Kind {
            $($t,)*
        }

        impl Kind {
            pub const ALL: [Kind; [$(Kind::$t),*].len()] = [$(Kind::$t),*];

            pub fn api_resource(self) -> ApiResource {
                match self {
                    $(Kind::$t => ApiResource::erase::<$t>(&()),)*
                }
            }

            pub fn as_str(self) -> &'static str {
                match self {
                    $(Kind::$t => stringify!($t),)*
                }
            }
        }

        $(impl Owned for $t {
            const KIND: Kind = Kind::$t;
        })*
    };
}

kinds!(
    Secret,
    ConfigMap,
    Service,
    StatefulSet,
    Deployment,
    PodDisruptionBudget,
    Ingress,
    NetworkPolicy,
);

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
    /// A typed object as the reconciler writes it.
    fn of<K: Owned>(mode: WriteMode, object: &K) -> Result<Self, BuildError> {
        Ok(Self {
            kind: K::KIND,
            name: object.meta().name.clone().unwrap_or_default(),
            mode,
            object: serde_json::to_value(object)?,
        })
    }

    pub fn to_dynamic(&self) -> Result<DynamicObject, serde_json::Error> {
        serde_json::from_value(self.object.clone())
    }
}

/// The `k8s_openapi` types of the kinds the operator creates.
trait Owned: Resource<DynamicType = ()> + Serialize {
    const KIND: Kind;
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
    Random(#[from] crate::secrets::RandomError),
    #[error("serialising an object: {0}")]
    Json(#[from] serde_json::Error),
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
    for svc in Svc::WITH_WEB {
        let (replicas, resources) = workload_spec(spec, svc);
        if !(0..=50).contains(&replicas) {
            problems.push(format!(
                "services.{}.replicas must be between 0 and 50",
                svc.as_str()
            ));
        }
        check_resources(
            &mut problems,
            &format!("services.{}", svc.as_str()),
            resources,
        );
    }
    if let Some(url) = &spec.services.web.jaeger_ui_url
        && !(url.starts_with("http://") || url.starts_with("https://") || url.starts_with('/'))
    {
        problems.push(format!(
            "services.web.jaegerUiUrl {url:?} must be an http(s):// URL or a path"
        ));
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

/// Replicas and resources the spec asks for, per deployable.
fn workload_spec(spec: &InventorySystemSpec, svc: Svc) -> (i32, &ResourcesSpec) {
    let s = match svc {
        Svc::User => &spec.services.user,
        Svc::Product => &spec.services.product,
        Svc::Inventory => &spec.services.inventory,
        Svc::Order => &spec.services.order,
        Svc::Notification => &spec.services.notification,
        Svc::Web => return (spec.services.web.replicas, &spec.services.web.resources),
    };
    (s.replicas, &s.resources)
}

/// Replicas the spec asks for, per deployable.
pub fn desired_replicas(spec: &InventorySystemSpec, svc: Svc) -> i32 {
    workload_spec(spec, svc).0
}

/// The deployables the spec runs: the five services, and the web console
/// unless `services.web.enabled` is false.
pub fn deployables(spec: &InventorySystemSpec) -> Vec<Svc> {
    Svc::WITH_WEB
        .into_iter()
        .filter(|svc| *svc != Svc::Web || spec.services.web.enabled)
        .collect()
}

/// Context shared by the builders.
struct Ctx<'a> {
    name: String,
    namespace: String,
    owner: OwnerReference,
    spec: &'a InventorySystemSpec,
    pg: Option<ManagedPostgres>,
    mq: Option<ManagedRabbitMq>,
}

impl Ctx<'_> {
    /// Name, namespace, the component's labels and the controller owner
    /// reference of a child object.
    fn meta(&self, name: &str, component: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(self.namespace.clone()),
            labels: Some(names::labels(&self.name, component)),
            owner_references: Some(vec![self.owner.clone()]),
            ..Default::default()
        }
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
    let owner = OwnerReference {
        api_version: InventorySystem::api_version(&()).into_owned(),
        kind: InventorySystem::kind(&()).into_owned(),
        name: name.clone(),
        uid,
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    let ctx = Ctx {
        name,
        namespace,
        owner,
        spec: &obj.spec,
        pg: obj.spec.postgres.effective_managed(),
        mq: obj.spec.rabbitmq.effective_managed(),
    };
    let apply = WriteMode::Apply;

    let mut out = Vec::new();
    secrets::secrets_all(&ctx, observed, &mut out)?;
    let config = Desired::of(apply, &workloads::config_map(&ctx))?;
    let config_hash = config_hash(&config, observed);
    out.push(config);
    if ctx.pg.is_some() {
        out.push(Desired::of(apply, &stores::postgres_init_config_map(&ctx))?);
    }
    let deployables = deployables(ctx.spec);
    // Services.
    for &svc in &deployables {
        out.push(Desired::of(apply, &network::service(&ctx, svc))?);
        if svc.has_grpc() {
            out.push(Desired::of(apply, &network::grpc_service(&ctx, svc))?);
        }
    }
    for headless in [false, true] {
        if ctx.pg.is_some() {
            out.push(Desired::of(
                apply,
                &stores::service::<Postgres>(&ctx, headless),
            )?);
        }
    }
    for headless in [false, true] {
        if ctx.mq.is_some() {
            out.push(Desired::of(
                apply,
                &stores::service::<RabbitMq>(&ctx, headless),
            )?);
        }
    }
    // StatefulSets.
    if let Some(pg) = &ctx.pg {
        out.push(stores::statefulset_desired(&ctx, pg)?);
    }
    if let Some(mq) = &ctx.mq {
        out.push(stores::statefulset_desired(&ctx, mq)?);
    }
    // Deployments and their disruption budgets.
    for &svc in &deployables {
        out.push(Desired::of(
            apply,
            &workloads::deployment(&ctx, svc, &config_hash),
        )?);
    }
    for &svc in &deployables {
        out.push(Desired::of(apply, &workloads::pdb(&ctx, svc))?);
    }
    if ctx.spec.ingress.enabled {
        out.push(Desired::of(apply, &ingress::ingress(&ctx))?);
    }
    if ctx.spec.network_policy.enabled {
        for &svc in &deployables {
            out.push(Desired::of(
                apply,
                &network::service_network_policy(&ctx, svc, observed),
            )?);
        }
        if ctx.pg.is_some() {
            out.push(Desired::of(
                apply,
                &stores::network_policy::<Postgres>(&ctx),
            )?);
        }
        if ctx.mq.is_some() {
            out.push(Desired::of(
                apply,
                &stores::network_policy::<RabbitMq>(&ctx),
            )?);
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
