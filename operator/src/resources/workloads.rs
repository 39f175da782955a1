//! The services' workloads: the shared ConfigMap, one Deployment and one
//! PodDisruptionBudget per service and for the web console, and the
//! pod-level pieces (security contexts, probes, environment helpers) the
//! stores share.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapKeySelector, Container, ContainerPort, EmptyDirVolumeSource,
    EnvVar, EnvVarSource, ExecAction, GRPCAction, HTTPGetAction, KeyToPath, Lifecycle,
    LifecycleHandler, ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SeccompProfile, SecretKeySelector, SecretVolumeSource, SecurityContext,
    Volume, VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{Ctx, workload_spec};
use crate::crd::{ResourcesSpec, ShutdownSpec};
use crate::names::{self, Svc};

/// `<name>-config`: the non-secret settings shared by the services.
pub(super) fn config_map(ctx: &Ctx<'_>) -> ConfigMap {
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
    ConfigMap {
        metadata: ctx.meta(&names::config_map(&ctx.name), "config"),
        data: Some(data),
        ..Default::default()
    }
}

/// Container resources from the spec's amounts (only those set).
pub(super) fn resource_requirements(r: &ResourcesSpec) -> ResourceRequirements {
    let amounts = |a: &crate::crd::ResourceAmounts| {
        let mut m = BTreeMap::new();
        if let Some(cpu) = &a.cpu {
            m.insert("cpu".to_owned(), Quantity(cpu.clone()));
        }
        if let Some(mem) = &a.memory {
            m.insert("memory".to_owned(), Quantity(mem.clone()));
        }
        (!m.is_empty()).then_some(m)
    };
    ResourceRequirements {
        requests: amounts(&r.requests),
        limits: amounts(&r.limits),
        ..Default::default()
    }
}

/// The restricted container security context of the contract.
pub fn container_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            ..Default::default()
        }),
        privileged: Some(false),
        ..Default::default()
    }
}

/// The restricted pod security context of the contract, for a user id.
pub fn pod_security_context(uid: i64) -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(uid),
        run_as_group: Some(uid),
        fs_group: Some(uid),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(super) fn env_value(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.to_owned()),
        ..Default::default()
    }
}

fn env_from(name: &str, source: EnvVarSource) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(source),
        ..Default::default()
    }
}

fn env_config(ctx: &Ctx<'_>, name: &str) -> EnvVar {
    env_from(
        name,
        EnvVarSource {
            config_map_key_ref: Some(ConfigMapKeySelector {
                name: names::config_map(&ctx.name),
                key: name.to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
}

pub(super) fn env_secret(name: &str, secret: &str, key: &str) -> EnvVar {
    env_from(
        name,
        EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.to_owned(),
                key: key.to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
}

fn env_field(name: &str, path: &str) -> EnvVar {
    env_from(
        name,
        EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: Some("v1".to_owned()),
                field_path: path.to_owned(),
            }),
            ..Default::default()
        },
    )
}

/// The environment of a service (or the web console's) container, per the
/// contract.
fn service_env(ctx: &Ctx<'_>, svc: Svc) -> Vec<EnvVar> {
    let name = &ctx.name;
    let mut env = vec![
        env_field("POD_NAME", "metadata.name"),
        env_field("POD_NAMESPACE", "metadata.namespace"),
        env_value("HTTP_ADDR", "0.0.0.0:8080"),
    ];
    if svc.has_grpc() {
        env.push(env_value("GRPC_ADDR", "0.0.0.0:50051"));
    }
    env.extend([env_value("LOG_FORMAT", "json"), env_config(ctx, "RUST_LOG")]);
    if svc.uses_database() {
        env.extend([
            env_secret("DATABASE_URL", &names::db_secret(name, svc), "url"),
            env_value(
                "DATABASE_ACQUIRE_TIMEOUT_MS",
                &DATABASE_ACQUIRE_TIMEOUT_MS.to_string(),
            ),
        ]);
    }
    env.extend([
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
    // The console's system page: each service's HTTP port, through its
    // Service (`<SERVICE>_HTTP_URL`).
    for upstream in svc.http_upstreams() {
        env.push(env_value(
            &format!("{}_HTTP_URL", upstream.as_str().to_ascii_uppercase()),
            &format!(
                "http://{}:{}",
                names::svc_name(name, *upstream),
                names::HTTP_PORT
            ),
        ));
    }
    if svc == Svc::Web
        && let Some(url) = &ctx.spec.services.web.jaeger_ui_url
    {
        env.push(env_value("JAEGER_UI_URL", url));
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
fn pre_stop_drain() -> Lifecycle {
    Lifecycle {
        pre_stop: Some(LifecycleHandler {
            http_get: Some(http_get("/drain")),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn http_get(path: &str) -> HTTPGetAction {
    HTTPGetAction {
        path: Some(path.to_owned()),
        port: IntOrString::String("http".to_owned()),
        ..Default::default()
    }
}

fn http_probe(path: &str, period: i32, failure: i32) -> Probe {
    Probe {
        http_get: Some(http_get(path)),
        period_seconds: Some(period),
        failure_threshold: Some(failure),
        ..Default::default()
    }
}

fn grpc_probe(period: i32, failure: i32) -> Probe {
    Probe {
        grpc: Some(GRPCAction {
            port: names::GRPC_PORT,
            service: Some(String::new()),
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failure),
        ..Default::default()
    }
}

pub(super) fn exec_probe(cmd: &[&str], period: i32, timeout: i32, failure: i32) -> Probe {
    Probe {
        exec: Some(ExecAction {
            command: Some(cmd.iter().map(|c| (*c).to_owned()).collect()),
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(timeout),
        failure_threshold: Some(failure),
        ..Default::default()
    }
}

pub(super) fn container_port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_owned()),
        container_port: port,
        protocol: Some("TCP".to_owned()),
        ..Default::default()
    }
}

pub(super) fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.to_owned(),
        mount_path: path.to_owned(),
        read_only: read_only.then_some(true),
        ..Default::default()
    }
}

/// An emptyDir volume, bounded when `size_limit` is given.
pub(super) fn empty_dir(name: &str, size_limit: Option<&str>) -> Volume {
    Volume {
        name: name.to_owned(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: size_limit.map(|s| Quantity(s.to_owned())),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A label selector on exactly these labels.
pub(super) fn match_labels(labels: BTreeMap<String, String>) -> LabelSelector {
    LabelSelector {
        match_labels: Some(labels),
        ..Default::default()
    }
}

/// The pod spec every workload shares (no service account token, no
/// service links, the restricted pod security context) around one container.
pub(super) fn pod_spec(
    run_as: i64,
    termination_grace: i64,
    container: Container,
    volumes: Vec<Volume>,
) -> PodSpec {
    PodSpec {
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        termination_grace_period_seconds: Some(termination_grace),
        security_context: Some(pod_security_context(run_as)),
        containers: vec![container],
        volumes: Some(volumes),
        ..Default::default()
    }
}

pub(super) fn deployment(ctx: &Ctx<'_>, svc: Svc, config_hash: &str) -> Deployment {
    let name = names::svc_name(&ctx.name, svc);
    let (replicas, resources) = workload_spec(ctx.spec, svc);
    let image = format!(
        "{}/{}:{}",
        ctx.spec.image.repository,
        svc.as_str(),
        ctx.spec.image.tag
    );
    let mut ports = vec![container_port("http", names::HTTP_PORT)];
    if svc.has_grpc() {
        ports.push(container_port("grpc", names::GRPC_PORT));
    }
    let (startup, readiness) = if svc == Svc::Inventory {
        (grpc_probe(2, 30), grpc_probe(5, 2))
    } else {
        (http_probe("/healthz", 2, 30), http_probe("/readyz", 5, 2))
    };
    let mut mounts = vec![mount("tmp", "/tmp", false)];
    // A bounded scratch directory (the root filesystem is read-only); the
    // chart mounts the same.
    let mut volumes = vec![empty_dir("tmp", Some("64Mi"))];
    if svc.uses_jwt() {
        let item = |key: &str| KeyToPath {
            key: key.to_owned(),
            path: key.to_owned(),
            ..Default::default()
        };
        let mut items = vec![item("public.pem")];
        if svc == Svc::User {
            items.insert(0, item("private.pem"));
        }
        mounts.push(mount("jwt", "/etc/stockmesh/jwt", true));
        volumes.push(Volume {
            name: "jwt".to_owned(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(names::jwt_secret(&ctx.name)),
                items: Some(items),
                default_mode: Some(0o440),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    let container = Container {
        name: svc.as_str().to_owned(),
        image: Some(image),
        image_pull_policy: Some(ctx.spec.image.pull_policy.as_str().to_owned()),
        ports: Some(ports),
        env: Some(service_env(ctx, svc)),
        startup_probe: Some(startup),
        liveness_probe: Some(http_probe("/healthz", 10, 3)),
        readiness_probe: Some(readiness),
        lifecycle: Some(pre_stop_drain()),
        resources: Some(resource_requirements(resources)),
        security_context: Some(container_security_context()),
        volume_mounts: Some(mounts),
        ..Default::default()
    };
    Deployment {
        metadata: ctx.meta(&name, svc.as_str()),
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: match_labels(names::selector_labels(&ctx.name, svc.as_str())),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(names::labels(&ctx.name, svc.as_str())),
                    annotations: Some(BTreeMap::from([(
                        names::CONFIG_HASH_ANNOTATION.to_owned(),
                        config_hash.to_owned(),
                    )])),
                    ..Default::default()
                }),
                spec: Some(pod_spec(
                    65532,
                    termination_grace_seconds(&ctx.spec.resilience.shutdown),
                    container,
                    volumes,
                )),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(super) fn pdb(ctx: &Ctx<'_>, svc: Svc) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: ctx.meta(&names::svc_name(&ctx.name, svc), svc.as_str()),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(match_labels(names::selector_labels(
                &ctx.name,
                svc.as_str(),
            ))),
            ..Default::default()
        }),
        ..Default::default()
    }
}
