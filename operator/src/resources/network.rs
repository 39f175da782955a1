//! The network of the services and the web console: their Services (HTTP,
//! and a headless gRPC Service for client-side balancing) and
//! NetworkPolicies.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::workloads::match_labels;
use super::{Ctx, ObservedSecrets, deployables};
use crate::names::{self, Svc};

fn http_port() -> ServicePort {
    ServicePort {
        name: Some("http".to_owned()),
        port: names::HTTP_PORT,
        target_port: Some(IntOrString::String("http".to_owned())),
        protocol: Some("TCP".to_owned()),
        ..Default::default()
    }
}

fn grpc_port() -> ServicePort {
    ServicePort {
        name: Some("grpc".to_owned()),
        port: names::GRPC_PORT,
        target_port: Some(IntOrString::String("grpc".to_owned())),
        protocol: Some("TCP".to_owned()),
        app_protocol: Some("grpc".to_owned()),
        ..Default::default()
    }
}

/// `<name>-<service>`: HTTP, and gRPC for the services that serve it.
pub(super) fn service(ctx: &Ctx<'_>, svc: Svc) -> Service {
    let mut ports = vec![http_port()];
    if svc.has_grpc() {
        ports.push(grpc_port());
    }
    Service {
        metadata: ctx.meta(&names::svc_name(&ctx.name, svc), svc.as_str()),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_owned()),
            selector: Some(names::selector_labels(&ctx.name, svc.as_str())),
            ports: Some(ports),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `<name>-<service>-grpc`: headless, so gRPC clients see every pod.
pub(super) fn grpc_service(ctx: &Ctx<'_>, svc: Svc) -> Service {
    Service {
        metadata: ctx.meta(&names::grpc_svc_name(&ctx.name, svc), svc.as_str()),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_owned()),
            selector: Some(names::selector_labels(&ctx.name, svc.as_str())),
            ports: Some(vec![grpc_port()]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Pods of a namespace (all of them when `pods` is empty).
fn namespace_peer(ns: &str, pods: &BTreeMap<String, String>) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        namespace_selector: Some(match_labels(BTreeMap::from([(
            "kubernetes.io/metadata.name".to_owned(),
            ns.to_owned(),
        )]))),
        pod_selector: (!pods.is_empty()).then(|| match_labels(pods.clone())),
        ..Default::default()
    }
}

/// The pods of one component of this InventorySystem.
pub(super) fn pod_peer(ctx: &Ctx<'_>, component: &str) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        pod_selector: Some(match_labels(names::selector_labels(&ctx.name, component))),
        ..Default::default()
    }
}

fn ip_peer(cidr: &str) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        ip_block: Some(IPBlock {
            cidr: cidr.to_owned(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn port(protocol: &str, port: i32) -> NetworkPolicyPort {
    NetworkPolicyPort {
        protocol: Some(protocol.to_owned()),
        port: Some(IntOrString::Int(port)),
        ..Default::default()
    }
}

pub(super) fn tcp(p: i32) -> NetworkPolicyPort {
    port("TCP", p)
}

/// Egress every pod needs: DNS.
pub(super) fn dns_egress() -> NetworkPolicyEgressRule {
    NetworkPolicyEgressRule {
        ports: Some(vec![port("UDP", 53), port("TCP", 53)]),
        ..Default::default()
    }
}

/// An egress rule to some peers on some TCP ports.
fn egress_to(
    to: Vec<NetworkPolicyPeer>,
    ports: impl IntoIterator<Item = i32>,
) -> NetworkPolicyEgressRule {
    NetworkPolicyEgressRule {
        to: Some(to),
        ports: Some(ports.into_iter().map(tcp).collect()),
    }
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

/// Egress to a store: its managed pods on its port, or (external) its
/// network on the port the spec names, else the ports of its URLs.
fn store_egress<'a>(
    ctx: &Ctx<'_>,
    component: &str,
    managed_port: i32,
    external: Option<(&str, Option<i32>)>,
    urls: impl Iterator<Item = &'a String>,
) -> NetworkPolicyEgressRule {
    match external {
        None => egress_to(vec![pod_peer(ctx, component)], [managed_port]),
        Some((cidr, port)) => {
            let ports: BTreeSet<i32> = match port {
                Some(port) => [port].into(),
                None => urls.flat_map(|u| url_ports(u)).collect(),
            };
            egress_to(vec![ip_peer(cidr)], ports)
        }
    }
}

/// The NetworkPolicy of a service or the web console: ingress from the
/// ingress controller (the public services and the console), Prometheus,
/// the console (every service's HTTP port, for its system page, while the
/// console runs) and its gRPC clients; egress to DNS, the OTLP endpoint
/// (only with tracing on; `networkPolicy.otlpCidr`, the endpoint's port),
/// its database and broker (the managed pods, or the external ones' `cidr`
/// and port; the console has neither), its gRPC upstreams and (the console)
/// the five services' HTTP port. The chart renders the same rules for the
/// same configuration (scripts/check_parity.py).
pub(super) fn service_network_policy(
    ctx: &Ctx<'_>,
    svc: Svc,
    observed: &ObservedSecrets,
) -> NetworkPolicy {
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
    let running = deployables(ctx.spec);
    http_from.extend(
        running
            .iter()
            .filter(|c| c.http_upstreams().contains(&svc))
            .map(|c| pod_peer(ctx, c.as_str())),
    );
    let mut ingress = vec![NetworkPolicyIngressRule {
        from: Some(http_from),
        ports: Some(vec![tcp(names::HTTP_PORT)]),
    }];
    let grpc_clients: Vec<NetworkPolicyPeer> = Svc::ALL
        .iter()
        .filter(|c| c.grpc_upstreams().contains(&svc))
        .map(|c| pod_peer(ctx, c.as_str()))
        .collect();
    if !grpc_clients.is_empty() {
        ingress.push(NetworkPolicyIngressRule {
            from: Some(grpc_clients),
            ports: Some(vec![tcp(names::GRPC_PORT)]),
        });
    }
    let mut egress = vec![dns_egress()];
    if let Some(endpoint) = &ctx.spec.tracing.otlp_endpoint {
        egress.push(egress_to(vec![ip_peer(&np.otlp_cidr)], url_ports(endpoint)));
    }
    if svc.uses_database() {
        let pg = ctx.spec.postgres.external.as_ref();
        egress.push(store_egress(
            ctx,
            "postgres",
            names::POSTGRES_PORT,
            pg.map(|e| (e.cidr.as_str(), e.port)),
            observed.external_database_urls.values(),
        ));
    }
    if svc.uses_amqp() {
        let mq = ctx.spec.rabbitmq.external.as_ref();
        egress.push(store_egress(
            ctx,
            "rabbitmq",
            names::AMQP_PORT,
            mq.map(|e| (e.cidr.as_str(), e.port)),
            observed.external_amqp_url.iter(),
        ));
    }
    for upstream in svc.grpc_upstreams() {
        egress.push(egress_to(
            vec![pod_peer(ctx, upstream.as_str())],
            [names::GRPC_PORT],
        ));
    }
    let http_upstreams = svc.http_upstreams();
    if !http_upstreams.is_empty() {
        egress.push(egress_to(
            http_upstreams
                .iter()
                .map(|u| pod_peer(ctx, u.as_str()))
                .collect(),
            [names::HTTP_PORT],
        ));
    }
    NetworkPolicy {
        metadata: ctx.meta(&names::svc_name(&ctx.name, svc), svc.as_str()),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(match_labels(names::selector_labels(
                &ctx.name,
                svc.as_str(),
            ))),
            policy_types: Some(vec!["Ingress".to_owned(), "Egress".to_owned()]),
            ingress: Some(ingress),
            egress: Some(egress),
        }),
    }
}
