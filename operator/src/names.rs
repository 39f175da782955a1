//! Deterministic names and labels of everything the operator creates.
//!
//! For an InventorySystem named `<name>` (see `docs/deployment-contract.md`):
//!
//! | kind | names |
//! |---|---|
//! | Secret | `<name>-postgres`, `<name>-<service>-db`, `<name>-rabbitmq`, `<name>-jwt`, `<name>-admin` |
//! | ConfigMap | `<name>-config`, `<name>-postgres-init` |
//! | StatefulSet | `<name>-postgres`, `<name>-rabbitmq` |
//! | Service | `<name>-<service>`, `<name>-web`, `<name>-product-grpc`, `<name>-inventory-grpc`, `<name>-postgres`, `<name>-postgres-headless`, `<name>-rabbitmq`, `<name>-rabbitmq-headless` |
//! | Deployment, PodDisruptionBudget | `<name>-<service>`, `<name>-web` |
//! | Ingress | `<name>` |
//! | NetworkPolicy | `<name>-<service>`, `<name>-web`, `<name>-postgres`, `<name>-rabbitmq` |
//!
//! `<service>` is one of the five services (each with its own database);
//! the web console's objects exist while `spec.services.web.enabled`.

use std::collections::BTreeMap;

/// Field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "stockmesh-operator";
/// `app.kubernetes.io/managed-by` value.
pub const MANAGED_BY: &str = "stockmesh-operator";
/// Hash of the desired object, used to skip applies that would change nothing.
pub const APPLIED_HASH_ANNOTATION: &str = "stockmesh.io/applied-hash";
/// Hash of the configuration on pod templates: a change rolls the pods.
pub const CONFIG_HASH_ANNOTATION: &str = "stockmesh.io/config-hash";
/// Set on generated Secrets that outlive the InventorySystem (no owner
/// reference) because `keepVolumes` keeps the data they open.
pub const RETAINED_ANNOTATION: &str = "stockmesh.io/retained";

pub const LABEL_NAME: &str = "app.kubernetes.io/name";
pub const LABEL_INSTANCE: &str = "app.kubernetes.io/instance";
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";
pub const LABEL_PART_OF: &str = "app.kubernetes.io/part-of";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";

pub const HTTP_PORT: i32 = 8080;
pub const GRPC_PORT: i32 = 50051;
pub const POSTGRES_PORT: i32 = 5432;
pub const AMQP_PORT: i32 = 5672;

/// The deployables: the five services and the web console.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Svc {
    User,
    Product,
    Inventory,
    Order,
    Notification,
    /// The web console: no database, no broker; serves the browser pages
    /// under `/` and asks the five services' HTTP ports for its system page.
    Web,
}

impl Svc {
    /// The five services, each with its own database (not the console).
    pub const ALL: [Svc; 5] = [
        Svc::User,
        Svc::Product,
        Svc::Inventory,
        Svc::Order,
        Svc::Notification,
    ];

    /// Every deployable: the five services, then the web console (whether
    /// the spec enables it is [`crate::resources::deployables`]' business).
    pub const WITH_WEB: [Svc; 6] = [
        Svc::User,
        Svc::Product,
        Svc::Inventory,
        Svc::Order,
        Svc::Notification,
        Svc::Web,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Svc::User => "user",
            Svc::Product => "product",
            Svc::Inventory => "inventory",
            Svc::Order => "order",
            Svc::Notification => "notification",
            Svc::Web => "web",
        }
    }

    /// Has its own PostgreSQL database and role (all but the console).
    pub fn uses_database(self) -> bool {
        !matches!(self, Svc::Web)
    }

    /// Serves gRPC on 50051 (and has a headless `-grpc` Service).
    pub fn has_grpc(self) -> bool {
        matches!(self, Svc::Product | Svc::Inventory)
    }

    /// Reachable through the Ingress (all but inventory; the console under
    /// `/`).
    pub fn has_public_http(self) -> bool {
        !matches!(self, Svc::Inventory)
    }

    /// Verifies (and for user: issues) JWTs; the console verifies the
    /// session of its admin-only system page.
    pub fn uses_jwt(self) -> bool {
        !matches!(self, Svc::Inventory)
    }

    /// Talks to RabbitMQ.
    pub fn uses_amqp(self) -> bool {
        matches!(self, Svc::Order | Svc::Notification)
    }

    /// gRPC services it calls.
    pub fn grpc_upstreams(self) -> &'static [Svc] {
        match self {
            Svc::Product => &[Svc::Inventory],
            Svc::Order => &[Svc::Product, Svc::Inventory],
            _ => &[],
        }
    }

    /// Services whose HTTP port (8080: `/readyz`, `/metrics`) it calls:
    /// the console's system page asks all five.
    pub fn http_upstreams(self) -> &'static [Svc] {
        match self {
            Svc::Web => &Svc::ALL,
            _ => &[],
        }
    }

    /// Ingress path prefix.
    pub fn api_prefix(self) -> Option<&'static str> {
        match self {
            Svc::User => Some("/api/users"),
            Svc::Product => Some("/api/products"),
            Svc::Order => Some("/api/orders"),
            Svc::Notification => Some("/api/notifications"),
            Svc::Web => Some("/"),
            Svc::Inventory => None,
        }
    }
}

/// Name of the PostgreSQL role and database of a service.
pub fn db_name(svc: Svc) -> String {
    format!("stockmesh_{}", svc.as_str())
}

pub fn svc_name(name: &str, svc: Svc) -> String {
    format!("{name}-{}", svc.as_str())
}
pub fn grpc_svc_name(name: &str, svc: Svc) -> String {
    format!("{name}-{}-grpc", svc.as_str())
}
pub fn db_secret(name: &str, svc: Svc) -> String {
    format!("{name}-{}-db", svc.as_str())
}
pub fn postgres(name: &str) -> String {
    format!("{name}-postgres")
}
pub fn postgres_headless(name: &str) -> String {
    format!("{name}-postgres-headless")
}
pub fn postgres_init(name: &str) -> String {
    format!("{name}-postgres-init")
}
pub fn rabbitmq(name: &str) -> String {
    format!("{name}-rabbitmq")
}
pub fn rabbitmq_headless(name: &str) -> String {
    format!("{name}-rabbitmq-headless")
}
pub fn jwt_secret(name: &str) -> String {
    format!("{name}-jwt")
}
pub fn admin_secret(name: &str) -> String {
    format!("{name}-admin")
}
pub fn config_map(name: &str) -> String {
    format!("{name}-config")
}

/// Labels selecting the pods of one component of one InventorySystem.
pub fn selector_labels(name: &str, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_INSTANCE.to_owned(), name.to_owned()),
        (LABEL_COMPONENT.to_owned(), component.to_owned()),
    ])
}

/// Every label of an object of one component.
pub fn labels(name: &str, component: &str) -> BTreeMap<String, String> {
    let mut labels = selector_labels(name, component);
    labels.insert(LABEL_NAME.to_owned(), "stockmesh".to_owned());
    labels.insert(LABEL_PART_OF.to_owned(), "stockmesh".to_owned());
    labels.insert(LABEL_MANAGED_BY.to_owned(), MANAGED_BY.to_owned());
    labels
}

/// Label selector matching everything the operator made for `name`.
pub fn owned_selector(name: &str) -> String {
    format!("{LABEL_INSTANCE}={name},{LABEL_MANAGED_BY}={MANAGED_BY}")
}

/// Whether `name` can be used as an InventorySystem name (all child names
/// then are valid DNS-1035 labels).
pub fn valid_instance_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= crate::crd::MAX_NAME_LEN
        && bytes[0].is_ascii_lowercase()
        && bytes[bytes.len() - 1] != b'-'
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}
