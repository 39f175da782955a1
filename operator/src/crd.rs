//! The `InventorySystem` custom resource (`stockmesh.io/v1alpha1`).
//!
//! The CRD YAML in `k8s/crd/inventorysystem.yaml` is generated from these
//! types by the `crdgen` binary; doc comments become the descriptions that
//! `kubectl explain inventorysystem.spec...` prints, `#[serde(default)]`
//! values become schema defaults (so `spec: {}` is a complete, working
//! resource), and `x_kube(validation = ...)` attributes become CEL rules
//! (`x-kubernetes-validations`) that the API server enforces.

use std::collections::BTreeMap;

use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The Kubernetes-style quantity syntax (`100m`, `1.5`, `64Mi`, `1e3`).
pub const QUANTITY_PATTERN: &str = r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$";

/// The longest `metadata.name` an InventorySystem may have: child names such
/// as `<name>-rabbitmq-headless` must stay valid 63-character DNS labels.
pub const MAX_NAME_LEN: usize = 40;

/// A complete stockmesh installation: PostgreSQL and RabbitMQ (managed by the
/// operator or external), the five services (user, product, inventory, order,
/// notification), the web console, their configuration, secrets, network
/// policies and an optional Ingress. Every field has a default, so `spec: {}`
/// is enough.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "stockmesh.io",
    version = "v1alpha1",
    kind = "InventorySystem",
    plural = "inventorysystems",
    singular = "inventorysystem",
    shortname = "invsys",
    category = "stockmesh",
    namespaced,
    status = "InventorySystemStatus",
    derive = "PartialEq",
    doc = "InventorySystem is a complete stockmesh installation (PostgreSQL, RabbitMQ, the five services, the web console, their configuration, secrets, network policies and an optional Ingress) reconciled by stockmesh-operator.",
    validation = kube::core::Rule::new("size(self.metadata.name) <= 40").message("metadata.name must be at most 40 characters (child names append suffixes such as -rabbitmq-headless)"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether every component is ready"
    ),
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Pending, Progressing, Ready, Degraded or Failed"
    ),
    printcolumn(
        name = "URL",
        type_ = "string",
        json_path = ".status.url",
        description = "Where the API is reachable"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct InventorySystemSpec {
    /// Where the service images come from: `<repository>/<service>:<tag>`.
    #[serde(default)]
    pub image: ImageSpec,
    /// Replicas and resources of each of the five services and of the web
    /// console.
    #[serde(default)]
    pub services: ServicesSpec,
    /// PostgreSQL: managed by the operator (a StatefulSet, the default) or
    /// external (a Secret with one connection URL per service). Set at most
    /// one of `managed` and `external`; setting neither means managed with
    /// defaults.
    #[serde(default)]
    pub postgres: PostgresSpec,
    /// RabbitMQ: managed by the operator (a StatefulSet, the default) or
    /// external (a Secret with an AMQP URL). Set at most one of `managed` and
    /// `external`; setting neither means managed with defaults.
    #[serde(default)]
    pub rabbitmq: RabbitMqSpec,
    /// An Ingress routing the `/api/...` prefixes to the services and `/`
    /// to the web console.
    #[serde(default)]
    pub ingress: IngressSpec,
    /// OpenTelemetry trace export of the services.
    #[serde(default)]
    pub tracing: TracingSpec,
    /// Timeouts and circuit breaker thresholds of the services.
    #[serde(default)]
    pub resilience: ResilienceSpec,
    /// NetworkPolicies that allow only the edges the system needs.
    #[serde(default)]
    pub network_policy: NetworkPolicySpec,
    /// E-mail address of the first administrator, created by the user service
    /// at start-up. The password is generated into the Secret `<name>-admin`
    /// (key `password`).
    #[serde(default = "default_admin_email")]
    #[schemars(length(min = 3, max = 254), regex(pattern = r"^[^@\s]+@[^@\s]+$"))]
    pub admin_email: String,
    /// Log filter of the services (`RUST_LOG` syntax), e.g. `info` or
    /// `info,inventory=debug`.
    #[serde(default = "default_log_level")]
    #[schemars(length(min = 1, max = 256))]
    pub log_level: String,
    /// Value of `DEPLOYMENT_ENVIRONMENT` (the `deployment.environment`
    /// resource attribute on traces).
    #[serde(default = "default_environment")]
    #[schemars(length(min = 1, max = 63))]
    pub environment: String,
}

fn default_admin_email() -> String {
    "admin@stockmesh.local".into()
}
fn default_log_level() -> String {
    "info".into()
}
fn default_environment() -> String {
    "production".into()
}

/// Image repository, tag and pull policy of the services.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageSpec {
    /// Repository prefix; each service runs `<repository>/<service>:<tag>`.
    #[serde(default = "default_repository")]
    #[schemars(length(min = 1, max = 200))]
    pub repository: String,
    /// Image tag shared by the five services and the web console.
    #[serde(default = "default_tag")]
    #[schemars(
        length(min = 1, max = 128),
        regex(pattern = r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
    )]
    pub tag: String,
    /// Kubernetes image pull policy.
    #[serde(default)]
    pub pull_policy: PullPolicy,
}

impl Default for ImageSpec {
    fn default() -> Self {
        Self {
            repository: default_repository(),
            tag: default_tag(),
            pull_policy: PullPolicy::default(),
        }
    }
}

fn default_repository() -> String {
    "stockmesh".into()
}
fn default_tag() -> String {
    env!("CARGO_PKG_VERSION").into()
}

/// Kubernetes image pull policy.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum PullPolicy {
    Always,
    #[default]
    IfNotPresent,
    Never,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "Always",
            Self::IfNotPresent => "IfNotPresent",
            Self::Never => "Never",
        }
    }
}

/// Per-service settings of the five services and the web console.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServicesSpec {
    /// The user service (accounts, login, JWT issuing).
    #[serde(default)]
    pub user: ServiceSpec,
    /// The product service (catalogue; HTTP and gRPC).
    #[serde(default)]
    pub product: ServiceSpec,
    /// The inventory service (stock levels and reservations; gRPC).
    #[serde(default)]
    pub inventory: ServiceSpec,
    /// The order service.
    #[serde(default)]
    pub order: ServiceSpec,
    /// The notification service.
    #[serde(default)]
    pub notification: ServiceSpec,
    /// The web console (shop and admin pages), served under `/` of the
    /// Ingress; on by default.
    #[serde(default)]
    pub web: WebSpec,
}

/// The web console (binary `web`): the browser pages under `/` of the
/// Ingress, which call the services' public API from the browser. It has
/// no database and no broker; it verifies the session (JWT public key) for
/// its admin-only system page, which asks every service's `/readyz` and
/// `/metrics` on port 8080.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebSpec {
    /// Run the console: a Deployment, Service, PodDisruptionBudget and
    /// NetworkPolicy `<name>-web`, and the Ingress path `/` (the `/api/...`
    /// prefixes of the services take precedence). `false`: the API only.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Number of pods. A PodDisruptionBudget allows one unavailable pod.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 50))]
    pub replicas: i32,
    /// CPU and memory requests and limits of the console container.
    #[serde(default = "default_web_resources")]
    pub resources: ResourcesSpec,
    /// The Jaeger UI the console's trace links open (`<url>/trace/<trace
    /// id>`; `JAEGER_UI_URL`): an `http(s)://` URL or a path on the
    /// Ingress host. No trace links when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512), regex(pattern = r"^(https?://|/)"))]
    pub jaeger_ui_url: Option<String>,
}

impl Default for WebSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            replicas: default_replicas(),
            resources: default_web_resources(),
            jaeger_ui_url: None,
        }
    }
}

/// The console serves embedded files and asks five services at a time: a
/// smaller footprint than a service's.
fn default_web_resources() -> ResourcesSpec {
    ResourcesSpec::new("25m", "32Mi", None, "128Mi")
}

/// Replicas and resources of one service.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Number of pods. A PodDisruptionBudget allows one unavailable pod.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 50))]
    pub replicas: i32,
    /// CPU and memory requests and limits of the service container.
    #[serde(default = "default_service_resources")]
    pub resources: ResourcesSpec,
}

impl Default for ServiceSpec {
    fn default() -> Self {
        Self {
            replicas: default_replicas(),
            resources: default_service_resources(),
        }
    }
}

fn default_replicas() -> i32 {
    2
}
fn default_service_resources() -> ResourcesSpec {
    ResourcesSpec::new("50m", "64Mi", None, "256Mi")
}

/// Container resources, in Kubernetes quantity syntax.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourcesSpec {
    /// Guaranteed resources (scheduling).
    #[serde(default)]
    pub requests: ResourceAmounts,
    /// Upper bounds (the container is throttled at the CPU limit and killed
    /// above the memory limit).
    #[serde(default)]
    pub limits: ResourceAmounts,
}

impl ResourcesSpec {
    pub fn new(req_cpu: &str, req_mem: &str, limit_cpu: Option<&str>, limit_mem: &str) -> Self {
        Self {
            requests: ResourceAmounts {
                cpu: Some(req_cpu.into()),
                memory: Some(req_mem.into()),
            },
            limits: ResourceAmounts {
                cpu: limit_cpu.map(Into::into),
                memory: Some(limit_mem.into()),
            },
        }
    }
}

/// CPU and memory amounts.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceAmounts {
    /// CPU, e.g. `100m` or `1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = QUANTITY_PATTERN))]
    pub cpu: Option<String>,
    /// Memory, e.g. `128Mi` or `1Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = QUANTITY_PATTERN))]
    pub memory: Option<String>,
}

/// PostgreSQL: managed or external (at most one of the two).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("!(has(self.managed) && has(self.external))").message("set at most one of postgres.managed and postgres.external"))]
pub struct PostgresSpec {
    /// A PostgreSQL StatefulSet run by the operator (the default). Each
    /// service gets its own database and role, created on first start by an
    /// init script; passwords are generated into `<name>-<service>-db`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<ManagedPostgres>,
    /// An existing PostgreSQL. The referenced Secret holds one connection URL
    /// per service under the keys `user`, `product`, `inventory`, `order`
    /// and `notification`; the operator copies each into `<name>-<service>-db`
    /// (key `url`). No PostgreSQL StatefulSet is created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalPostgres>,
}

impl PostgresSpec {
    /// The managed settings in effect, `None` in external mode.
    pub fn effective_managed(&self) -> Option<ManagedPostgres> {
        effective_managed(&self.managed, &self.external)
    }
}

/// RabbitMQ: managed or external (at most one of the two).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("!(has(self.managed) && has(self.external))").message("set at most one of rabbitmq.managed and rabbitmq.external"))]
pub struct RabbitMqSpec {
    /// A single-node RabbitMQ StatefulSet run by the operator (the default).
    /// Credentials are generated into `<name>-rabbitmq`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<ManagedRabbitMq>,
    /// An existing RabbitMQ. The referenced Secret holds an `amqp://` URL
    /// under the key `url`; the operator copies it into `<name>-rabbitmq`.
    /// No RabbitMQ StatefulSet is created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalRabbitMq>,
}

impl RabbitMqSpec {
    /// The managed settings in effect, `None` in external mode.
    pub fn effective_managed(&self) -> Option<ManagedRabbitMq> {
        effective_managed(&self.managed, &self.external)
    }
}

/// What tells PostgreSQL and RabbitMQ apart in the spec; the managed and
/// external settings of both have one shape ([`ManagedStore`],
/// [`ExternalStore`]), with these defaults and these descriptions (what
/// `kubectl explain` prints for the fields whose meaning differs).
pub trait StoreKind:
    Clone + std::fmt::Debug + PartialEq + Default + JsonSchema + Send + Sync + 'static
{
    /// Default image of the managed store.
    const IMAGE: &'static str;
    /// Default size of the managed store's data volume.
    const STORAGE: &'static str;
    /// Descriptions of [`ManagedStore`] fields, by (camelCase) name.
    const MANAGED_DOCS: &'static [(&'static str, &'static str)];
    /// Descriptions of [`ExternalStore`] fields, by (camelCase) name.
    const EXTERNAL_DOCS: &'static [(&'static str, &'static str)];
}

/// PostgreSQL (marker of [`StoreKind`]).
#[derive(Clone, Debug, PartialEq, Default, JsonSchema)]
pub struct Postgres;

/// RabbitMQ (marker of [`StoreKind`]).
#[derive(Clone, Debug, PartialEq, Default, JsonSchema)]
pub struct RabbitMq;

impl StoreKind for Postgres {
    const IMAGE: &'static str = "postgres:17.6";
    const STORAGE: &'static str = "8Gi";
    const MANAGED_DOCS: &'static [(&'static str, &'static str)] = &[
        (
            "image",
            "PostgreSQL image (the official image layout: `docker-entrypoint-initdb.d`,\n`POSTGRES_USER`, `POSTGRES_PASSWORD`, `PGDATA`).",
        ),
        (
            "keepVolumes",
            "Keep the data volume, and the credentials that open it, when the\nInventorySystem is deleted. With `true` (the default) the\nPersistentVolumeClaim and the generated Secrets survive deletion so a\nre-created InventorySystem of the same name finds its data; with\n`false` everything is deleted with it.",
        ),
        (
            "runAsUser",
            "User and group id the image runs as (999 in the official Debian image).",
        ),
        ("resources", "Resources of the PostgreSQL container."),
    ];
    const EXTERNAL_DOCS: &'static [(&'static str, &'static str)] = &[
        (
            "secretRef",
            "The Secret (same namespace) with keys `user`, `product`, `inventory`,\n`order` and `notification`, each a `postgres://` URL.",
        ),
        (
            "cidr",
            "Where the database lives, for the NetworkPolicy egress rule of the\nservices (an `ipBlock`); narrow it to the database's network.",
        ),
        (
            "port",
            "The database port allowed by that rule; when unset, the ports of the\nURLs in the Secret (5432 where a URL names none).",
        ),
    ];
}

impl StoreKind for RabbitMq {
    const IMAGE: &'static str = "rabbitmq:4.1";
    const STORAGE: &'static str = "2Gi";
    const MANAGED_DOCS: &'static [(&'static str, &'static str)] = &[
        (
            "image",
            "RabbitMQ image (the official image: `RABBITMQ_DEFAULT_USER`/`_PASS`).",
        ),
        (
            "keepVolumes",
            "Keep the data volume and the broker credentials when the\nInventorySystem is deleted (default `true`), see `postgres.managed.keepVolumes`.",
        ),
        (
            "runAsUser",
            "User and group id the image runs as (999 in the official image).",
        ),
        ("resources", "Resources of the RabbitMQ container."),
    ];
    const EXTERNAL_DOCS: &'static [(&'static str, &'static str)] = &[
        (
            "secretRef",
            "The Secret (same namespace) with the key `url`, an `amqp://` or\n`amqps://` URL.",
        ),
        (
            "cidr",
            "Where the broker lives, for the NetworkPolicy egress rule of order\nand notification (an `ipBlock`); narrow it to the broker's network.",
        ),
        (
            "port",
            "The broker port allowed by that rule; when unset, the port of the\nURL in the Secret (5672 for `amqp://`, 5671 for `amqps://` when it\nnames none).",
        ),
    ];
}

/// A PostgreSQL StatefulSet managed by the operator.
pub type ManagedPostgres = ManagedStore<Postgres>;
/// An existing PostgreSQL, reached through URLs in a Secret.
pub type ExternalPostgres = ExternalStore<Postgres>;
/// A RabbitMQ StatefulSet managed by the operator.
pub type ManagedRabbitMq = ManagedStore<RabbitMq>;
/// An existing RabbitMQ, reached through a URL in a Secret.
pub type ExternalRabbitMq = ExternalStore<RabbitMq>;

/// The managed settings in effect: none in external mode, the defaults
/// when neither is set.
fn effective_managed<K: StoreKind>(
    managed: &Option<ManagedStore<K>>,
    external: &Option<ExternalStore<K>>,
) -> Option<ManagedStore<K>> {
    match (managed, external) {
        (_, Some(_)) => None,
        (Some(m), None) => Some(m.clone()),
        (None, None) => Some(ManagedStore::default()),
    }
}

/// Sets the descriptions of the properties named in `docs`.
fn describe(schema: &mut schemars::Schema, docs: &[(&str, &str)]) {
    let Some(props) = schema
        .get_mut("properties")
        .and_then(serde_json::Value::as_object_mut)
    else {
        return;
    };
    for (field, doc) in docs {
        if let Some(prop) = props
            .get_mut(*field)
            .and_then(serde_json::Value::as_object_mut)
        {
            prop.insert("description".into(), (*doc).into());
        }
    }
}

fn describe_managed<K: StoreKind>(schema: &mut schemars::Schema) {
    describe(schema, K::MANAGED_DOCS);
}

fn describe_external<K: StoreKind>(schema: &mut schemars::Schema) {
    describe(schema, K::EXTERNAL_DOCS);
}

/// A store (PostgreSQL or RabbitMQ) run by the operator as a StatefulSet.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", bound = "")]
#[schemars(transform = describe_managed::<K>)]
pub struct ManagedStore<K: StoreKind> {
    /// The store's image (described per store).
    #[serde(default = "default_image::<K>")]
    #[schemars(length(min = 1, max = 256))]
    pub image: String,
    /// Size of the data volume (PersistentVolumeClaim).
    #[serde(default = "default_storage::<K>")]
    #[schemars(regex(pattern = QUANTITY_PATTERN))]
    pub storage_size: String,
    /// StorageClass of the data volume; the cluster default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub storage_class_name: Option<String>,
    /// Keep the data volume when the InventorySystem is deleted (described
    /// per store).
    #[serde(default = "default_true")]
    pub keep_volumes: bool,
    /// User and group id the image runs as (described per store).
    #[serde(default = "default_store_uid")]
    #[schemars(range(min = 1, max = 2147483647))]
    pub run_as_user: i64,
    /// Resources of the store's container (described per store).
    #[serde(default = "default_store_resources")]
    pub resources: ResourcesSpec,
    /// Which store.
    #[serde(skip)]
    #[schemars(skip)]
    pub store: std::marker::PhantomData<K>,
}

impl<K: StoreKind> Default for ManagedStore<K> {
    fn default() -> Self {
        Self {
            image: default_image::<K>(),
            storage_size: default_storage::<K>(),
            storage_class_name: None,
            keep_volumes: true,
            run_as_user: default_store_uid(),
            resources: default_store_resources(),
            store: std::marker::PhantomData,
        }
    }
}

fn default_image<K: StoreKind>() -> String {
    K::IMAGE.into()
}
fn default_storage<K: StoreKind>() -> String {
    K::STORAGE.into()
}
fn default_store_resources() -> ResourcesSpec {
    ResourcesSpec::new("100m", "256Mi", None, "1Gi")
}
fn default_true() -> bool {
    true
}
fn default_store_uid() -> i64 {
    999
}

/// An existing store (PostgreSQL or RabbitMQ), reached through URLs in a Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", bound = "")]
#[schemars(transform = describe_external::<K>)]
pub struct ExternalStore<K: StoreKind> {
    /// The Secret (same namespace) with the URLs (described per store).
    pub secret_ref: SecretRef,
    /// Where the store lives, for the NetworkPolicy egress rules (described
    /// per store).
    #[serde(default = "default_any_cidr")]
    #[schemars(regex(pattern = CIDR_PATTERN))]
    pub cidr: String,
    /// The port allowed by that rule (described per store).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
    /// Which store.
    #[serde(skip)]
    #[schemars(skip)]
    pub store: std::marker::PhantomData<K>,
}

/// An IPv4 or IPv6 network in CIDR notation (`10.0.0.0/8`, `fd00::/8`).
pub const CIDR_PATTERN: &str = r"^[0-9A-Fa-f:.]+/[0-9]{1,3}$";

fn default_any_cidr() -> String {
    "0.0.0.0/0".into()
}

/// A reference to a Secret in the namespace of the InventorySystem.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Name of the Secret.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub name: String,
}

/// The Ingress for the `/api/users`, `/api/products`, `/api/orders` and
/// `/api/notifications` prefixes, and `/` for the web console (when it is
/// enabled; the longer `/api/...` prefixes take precedence).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("!has(self.tlsSecretName) || has(self.host)").message("ingress.tlsSecretName needs ingress.host"))]
pub struct IngressSpec {
    /// Create the Ingress.
    #[serde(default)]
    pub enabled: bool,
    /// Host name the Ingress answers; all hosts when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(
            pattern = r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
        )
    )]
    pub host: Option<String>,
    /// IngressClass; the cluster default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub class_name: Option<String>,
    /// TLS Secret (type `kubernetes.io/tls`) for `host`; enables HTTPS and
    /// secure auth cookies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub tls_secret_name: Option<String>,
    /// Networks (CIDRs) of the proxies in front of the services: the
    /// ingress controller's pods and any load balancer of yours that adds
    /// `X-Forwarded-For`. The user service believes those entries and takes
    /// the right-most address outside these networks as the client (for
    /// login and registration rate limits); set it to your controller's pod
    /// CIDR. The default, `10.0.0.0/8`, covers the pod networks of kind,
    /// minikube and most clusters. Used only while the Ingress is enabled
    /// (`TRUSTED_PROXIES` of the user service).
    #[serde(default = "default_trusted_proxies")]
    #[schemars(
        length(max = 32),
        inner(regex(pattern = r"^[0-9A-Fa-f:.]+(/[0-9]{1,3})?$"))
    )]
    pub trusted_proxies: Vec<String>,
}

impl Default for IngressSpec {
    fn default() -> Self {
        Self {
            enabled: false,
            host: None,
            class_name: None,
            tls_secret_name: None,
            trusted_proxies: default_trusted_proxies(),
        }
    }
}

fn default_trusted_proxies() -> Vec<String> {
    vec!["10.0.0.0/8".into()]
}

/// OpenTelemetry trace export.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TracingSpec {
    /// OTLP/gRPC endpoint, e.g. `http://jaeger-collector.observability:4317`.
    /// Tracing export is off when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512), regex(pattern = r"^https?://"))]
    pub otlp_endpoint: Option<String>,
    /// Fraction of new traces that are sampled (0 to 1); propagated sampling
    /// decisions are honoured (`parentbased_traceidratio`).
    #[serde(default = "default_sampling_ratio")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub sampling_ratio: f64,
}

impl Default for TracingSpec {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            sampling_ratio: default_sampling_ratio(),
        }
    }
}

fn default_sampling_ratio() -> f64 {
    1.0
}

/// Timeouts and circuit breaker thresholds.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResilienceSpec {
    /// Upper bound of one request, in milliseconds (`REQUEST_TIMEOUT_MS`).
    #[serde(default = "default_request_timeout_ms")]
    #[schemars(range(min = 100, max = 600000))]
    pub request_timeout_ms: i64,
    /// Circuit breaker on calls between services.
    #[serde(default)]
    pub breaker: BreakerSpec,
    /// How a service pod stops (rolling updates, deletions): drain first,
    /// then finish in-flight work.
    #[serde(default)]
    pub shutdown: ShutdownSpec,
}

impl Default for ResilienceSpec {
    fn default() -> Self {
        Self {
            request_timeout_ms: default_request_timeout_ms(),
            breaker: BreakerSpec::default(),
            shutdown: ShutdownSpec::default(),
        }
    }
}

/// The shutdown sequence of every service pod. The preStop hook (`GET
/// /drain`) makes the pod report not-ready while it keeps serving for
/// `drainMs`, so endpoints and load balancers stop routing to it before it
/// stops accepting; then it has `graceMs` to finish in-flight work. The pod's
/// `terminationGracePeriodSeconds` is derived from both (plus 5 s for the
/// exit itself).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShutdownSpec {
    /// Drain window, in milliseconds (`SHUTDOWN_DRAIN_MS`): longer than it
    /// takes the cluster to propagate an endpoint change.
    #[serde(default = "default_drain_ms")]
    #[schemars(range(min = 0, max = 120000))]
    pub drain_ms: i64,
    /// Upper bound for finishing in-flight work once the listeners are
    /// closed, in milliseconds (`SHUTDOWN_GRACE_MS`).
    #[serde(default = "default_grace_ms")]
    #[schemars(range(min = 1000, max = 600000))]
    pub grace_ms: i64,
}

impl Default for ShutdownSpec {
    fn default() -> Self {
        Self {
            drain_ms: default_drain_ms(),
            grace_ms: default_grace_ms(),
        }
    }
}

fn default_drain_ms() -> i64 {
    5_000
}
fn default_grace_ms() -> i64 {
    20_000
}

fn default_request_timeout_ms() -> i64 {
    10_000
}

/// Circuit breaker thresholds (`BREAKER_FAILURE_THRESHOLD`,
/// `BREAKER_OPEN_MS`, `BREAKER_MAX_OPEN_MS`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("!has(self.maxOpenMs) || self.maxOpenMs >= self.openMs").message("resilience.breaker.maxOpenMs must be at least openMs"))]
pub struct BreakerSpec {
    /// Consecutive failures that open the breaker.
    #[serde(default = "default_failure_threshold")]
    #[schemars(range(min = 1, max = 1000))]
    pub failure_threshold: i32,
    /// How long the breaker stays open before the first trial call, in
    /// milliseconds (`BREAKER_OPEN_MS`).
    #[serde(default = "default_open_ms")]
    #[schemars(range(min = 100, max = 3600000))]
    pub open_ms: i64,
    /// Longest open period, in milliseconds (`BREAKER_MAX_OPEN_MS`): each
    /// failed trial call doubles the open period up to this bound. At least
    /// `openMs`; when unset, the larger of `openMs` and 30000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 100, max = 3600000))]
    pub max_open_ms: Option<i64>,
}

impl Default for BreakerSpec {
    fn default() -> Self {
        Self {
            failure_threshold: default_failure_threshold(),
            open_ms: default_open_ms(),
            max_open_ms: None,
        }
    }
}

/// `BREAKER_MAX_OPEN_MS` when `maxOpenMs` is unset: the services' own
/// default, or `openMs` when that is longer (never cut the open period short).
pub const DEFAULT_BREAKER_MAX_OPEN_MS: i64 = 30_000;

impl BreakerSpec {
    /// The `BREAKER_MAX_OPEN_MS` in effect.
    pub fn effective_max_open_ms(&self) -> i64 {
        self.max_open_ms
            .unwrap_or_else(|| self.open_ms.max(DEFAULT_BREAKER_MAX_OPEN_MS))
    }
}

fn default_failure_threshold() -> i32 {
    5
}
fn default_open_ms() -> i64 {
    30_000
}

/// NetworkPolicies allowing only the edges of the deployment contract.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// Create the NetworkPolicies.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Namespace of the ingress controller, allowed to reach the HTTP port
    /// of user, product, order, notification and the web console.
    #[serde(default = "default_ingress_namespace")]
    #[schemars(length(min = 1, max = 63))]
    pub ingress_controller_namespace: String,
    /// Labels of the ingress controller's pods in that namespace (the
    /// default is ingress-nginx's); `{}`: every pod of the namespace.
    #[serde(default = "default_ingress_pod_labels")]
    pub ingress_controller_pod_labels: BTreeMap<String, String>,
    /// Namespace of Prometheus, allowed to scrape every service on 8080.
    #[serde(default = "default_monitoring_namespace")]
    #[schemars(length(min = 1, max = 63))]
    pub monitoring_namespace: String,
    /// Labels of the Prometheus pods in that namespace (the default is the
    /// Prometheus Operator's); `{}`: every pod of the namespace.
    #[serde(default = "default_monitoring_pod_labels")]
    pub monitoring_pod_labels: BTreeMap<String, String>,
    /// Where the OTLP endpoint (`tracing.otlpEndpoint`) lives: the services
    /// may send to this network, on the endpoint's port (an `ipBlock`; a
    /// NetworkPolicy cannot name a host). Narrow it to the collector's
    /// network. No egress for traces when tracing is off.
    #[serde(default = "default_any_cidr")]
    #[schemars(regex(pattern = CIDR_PATTERN))]
    pub otlp_cidr: String,
}

impl Default for NetworkPolicySpec {
    fn default() -> Self {
        Self {
            enabled: true,
            ingress_controller_namespace: default_ingress_namespace(),
            ingress_controller_pod_labels: default_ingress_pod_labels(),
            monitoring_namespace: default_monitoring_namespace(),
            monitoring_pod_labels: default_monitoring_pod_labels(),
            otlp_cidr: default_any_cidr(),
        }
    }
}

fn default_ingress_namespace() -> String {
    "ingress-nginx".into()
}
fn default_monitoring_namespace() -> String {
    "monitoring".into()
}
fn default_ingress_pod_labels() -> BTreeMap<String, String> {
    BTreeMap::from([("app.kubernetes.io/name".into(), "ingress-nginx".into())])
}
fn default_monitoring_pod_labels() -> BTreeMap<String, String> {
    BTreeMap::from([("app.kubernetes.io/name".into(), "prometheus".into())])
}

/// Observed state, written by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InventorySystemStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Summary: Pending, Progressing, Ready, Degraded or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Ready, DatabaseReady, BrokerReady, ServicesReady and Degraded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Ready and desired pods per component (postgres, rabbitmq, the five
    /// services and web).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub components: BTreeMap<String, ComponentStatus>,
    /// Where the API is reachable (from the Ingress), when it is enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// Summary of the state of an InventorySystem.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    /// Nothing reconciled yet.
    Pending,
    /// Objects applied, waiting for pods to become ready.
    Progressing,
    /// Every component is ready.
    Ready,
    /// Something that worked is failing (see the Degraded condition).
    Degraded,
    /// The spec cannot be reconciled (see the Degraded condition).
    Failed,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Progressing => "Progressing",
            Self::Ready => "Ready",
            Self::Degraded => "Degraded",
            Self::Failed => "Failed",
        }
    }
}

/// A status condition in the usual Kubernetes shape.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Ready, DatabaseReady, BrokerReady, ServicesReady or Degraded.
    #[serde(rename = "type")]
    pub type_: String,
    /// True, False or Unknown.
    pub status: String,
    /// CamelCase machine-readable reason of the last transition or update.
    pub reason: String,
    /// Human-readable details.
    #[serde(default)]
    pub message: String,
    /// When `status` last changed (RFC 3339).
    #[schemars(extend("format" = "date-time"))]
    pub last_transition_time: String,
    /// The `metadata.generation` the condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Ready and desired pods of a component.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComponentStatus {
    /// Pods that pass their readiness probe.
    pub ready: i32,
    /// Pods the spec asks for.
    pub desired: i32,
}

/// The CRD as YAML, exactly as committed in `k8s/crd/inventorysystem.yaml`.
pub fn crd_yaml() -> anyhow::Result<String> {
    let crd = InventorySystem::crd();
    let body = serde_yaml::to_string(&crd)?;
    Ok(format!(
        "# Generated by `make crd` (cargo run -p stockmesh-operator --bin crdgen) from\n# operator/src/crd.rs. Do not edit by hand.\n{body}"
    ))
}
