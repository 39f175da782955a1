//! The Ingress routing the public API prefixes to their services and the
//! rest (`/`) to the web console.

use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec, IngressTLS, ServiceBackendPort,
};

use super::{Ctx, deployables};
use crate::names;

/// `<name>`: `/api/users`, `/api/products`, `/api/orders` and
/// `/api/notifications` to their services' `http` port, and (while the
/// console runs) `/` to the web console's, on the spec's host (all hosts
/// when unset), with TLS when a Secret is named. Every path is a Prefix:
/// the longest matching one wins, so `/` only gets what no `/api/...`
/// prefix claims (the console's own `/api/console/...` among it); it comes
/// last in the list as well.
pub(super) fn ingress(ctx: &Ctx<'_>) -> Ingress {
    let spec_in = &ctx.spec.ingress;
    let paths: Vec<HTTPIngressPath> = deployables(ctx.spec)
        .iter()
        .filter_map(|svc| {
            svc.api_prefix().map(|prefix| HTTPIngressPath {
                path: Some(prefix.to_owned()),
                path_type: "Prefix".to_owned(),
                backend: IngressBackend {
                    service: Some(IngressServiceBackend {
                        name: names::svc_name(&ctx.name, *svc),
                        port: Some(ServiceBackendPort {
                            name: Some("http".to_owned()),
                            ..Default::default()
                        }),
                    }),
                    ..Default::default()
                },
            })
        })
        .collect();
    let tls = match (&spec_in.tls_secret_name, &spec_in.host) {
        (Some(tls), Some(host)) => Some(vec![IngressTLS {
            hosts: Some(vec![host.clone()]),
            secret_name: Some(tls.clone()),
        }]),
        _ => None,
    };
    Ingress {
        metadata: ctx.meta(&ctx.name, "ingress"),
        spec: Some(IngressSpec {
            ingress_class_name: spec_in.class_name.clone(),
            rules: Some(vec![IngressRule {
                host: spec_in.host.clone(),
                http: Some(HTTPIngressRuleValue { paths }),
            }]),
            tls,
            ..Default::default()
        }),
        ..Default::default()
    }
}
