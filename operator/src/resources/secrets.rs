//! The Secrets of an InventorySystem: generated credentials (created once,
//! never rotated by accident), or copies of the external stores' URLs under
//! the names the pods expect.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;

use super::{BuildError, Ctx, Desired, ObservedSecrets, WriteMode};
use crate::crd::InventorySystem;
use crate::names::{self, Svc};
use crate::secrets;
use kube::ResourceExt;

/// A Secret of string values. A `retained` one has no owner reference (it
/// survives the InventorySystem, with the volumes it opens) and says so in
/// an annotation.
fn secret(
    ctx: &Ctx<'_>,
    name: &str,
    component: &str,
    retained: bool,
    data: &[(&str, &str)],
) -> Secret {
    let mut metadata = ctx.meta(name, component);
    if retained {
        metadata.owner_references = None;
        metadata.annotations = Some(BTreeMap::from([(
            names::RETAINED_ANNOTATION.to_owned(),
            "true".to_owned(),
        )]));
    }
    Secret {
        metadata,
        type_: Some("Opaque".to_owned()),
        data: Some(
            data.iter()
                .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Default::default()
    }
}

/// Every Secret to write, in apply order: generated ones only when they do
/// not exist yet (`observed.existing`), copies of external ones always.
pub(super) fn secrets_all(
    ctx: &Ctx<'_>,
    observed: &ObservedSecrets,
    out: &mut Vec<Desired>,
) -> Result<(), BuildError> {
    let name = &ctx.name;
    let missing = |secret: &str| !observed.existing.contains(secret);
    let pg_retained = ctx.pg.as_ref().is_some_and(|p| p.keep_volumes);
    let mq_retained = ctx.mq.as_ref().is_some_and(|m| m.keep_volumes);
    let mut push = |mode: WriteMode, s: Secret| -> Result<(), BuildError> {
        out.push(Desired::of(mode, &s)?);
        Ok(())
    };

    if ctx.pg.is_some() {
        let superuser = names::postgres(name);
        if missing(&superuser) {
            let pw = secrets::password(32)?;
            push(
                WriteMode::CreateOnce,
                secret(
                    ctx,
                    &superuser,
                    "postgres",
                    pg_retained,
                    &[("username", "postgres"), ("password", &pw)],
                ),
            )?;
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
                push(
                    WriteMode::CreateOnce,
                    secret(
                        ctx,
                        &sname,
                        svc.as_str(),
                        pg_retained,
                        &[
                            ("url", &url),
                            ("username", &db),
                            ("password", &pw),
                            ("database", &db),
                        ],
                    ),
                )?;
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
            push(
                WriteMode::Apply,
                secret(
                    ctx,
                    &names::db_secret(name, svc),
                    svc.as_str(),
                    false,
                    &[("url", url)],
                ),
            )?;
        }
    }

    let mq_name = names::rabbitmq(name);
    if ctx.mq.is_some() {
        if missing(&mq_name) {
            let pw = secrets::password(32)?;
            let url = format!("amqp://stockmesh:{pw}@{mq_name}:{}/%2f", names::AMQP_PORT);
            push(
                WriteMode::CreateOnce,
                secret(
                    ctx,
                    &mq_name,
                    "rabbitmq",
                    mq_retained,
                    &[("url", &url), ("username", "stockmesh"), ("password", &pw)],
                ),
            )?;
        }
    } else {
        let url = observed
            .external_amqp_url
            .as_deref()
            .ok_or(BuildError::MissingExternalAmqpUrl)?;
        push(
            WriteMode::Apply,
            secret(ctx, &mq_name, "rabbitmq", false, &[("url", url)]),
        )?;
    }

    let jwt = names::jwt_secret(name);
    if missing(&jwt) {
        let pair = secrets::jwt_key_pair()?;
        push(
            WriteMode::CreateOnce,
            secret(
                ctx,
                &jwt,
                "jwt",
                false,
                &[
                    ("private.pem", &pair.private_pem),
                    ("public.pem", &pair.public_pem),
                ],
            ),
        )?;
    }
    let admin = names::admin_secret(name);
    if missing(&admin) {
        let pw = secrets::password(24)?;
        // The admin account lives in the user database: keep its password
        // as long as that database is kept.
        push(
            WriteMode::CreateOnce,
            secret(ctx, &admin, "admin", pg_retained, &[("password", &pw)]),
        )?;
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
