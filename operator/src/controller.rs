//! The reconciler: observe, build, write what differs, report.
//!
//! One reconcile of an InventorySystem:
//! 1. validate the spec (and its images against `--allowed-images`); an
//!    invalid spec gets a `Degraded=True/InvalidSpec`
//!    condition and a Warning event, and nothing else happens until the spec
//!    changes (no crash loop, no retries);
//! 2. read every object it manages for this InventorySystem from the
//!    controller's watch caches ([`crate::cache`]; labelled
//!    `app.kubernetes.io/instance=<name>,app.kubernetes.io/managed-by=stockmesh-operator`),
//!    without a request; in external mode, get the referenced Secrets;
//! 3. build the desired objects ([`crate::resources::build_all`]);
//! 4. create generated Secrets that do not exist yet (never touching those
//!    that do); server-side apply every other object whose
//!    `stockmesh.io/applied-hash` annotation differs from the observed one,
//!    or that lacks a desired field or holds another value there (drift:
//!    a manual edit, [`crate::drift`]; entries other managers added to
//!    merged lists and fields the server did not keep after our last apply
//!    of the same desired object are not drift) — in a steady state nothing
//!    is written; delete objects it owns that are no longer desired (e.g. the
//!    Ingress after `ingress.enabled: false`);
//! 5. publish Events for what it created, updated, deleted or failed;
//! 6. compute the status and patch it only if it changed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::core::DynamicObject;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{Instrument, info, info_span, warn};

use crate::cache::{CacheError, Caches, OwnedStream};
use crate::crd::{InventorySystem, InventorySystemStatus, Phase};
use crate::drift;
use crate::images::ImagePolicy;
use crate::metrics::Metrics;
use crate::names::{self, Svc};
use crate::resources::{self, BuildError, Desired, Kind, ObservedSecrets, WriteMode};
use crate::status::{self, Blocker, ObservedWorkloads};

/// Errors of a reconcile; each is retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("building objects: {0}")]
    Build(#[from] BuildError),
    #[error("serialising an object: {0}")]
    Json(#[from] serde_json::Error),
    #[error("watch cache: {0}")]
    Cache(#[from] CacheError),
}

impl Error {
    /// Low-cardinality label for the failure metric.
    pub fn metric_reason(&self) -> String {
        match self {
            Error::Kube(kube::Error::Api(status)) if !status.reason.is_empty() => {
                status.reason.clone()
            }
            Error::Kube(kube::Error::Api(_)) => "ApiError".into(),
            Error::Kube(_) => "ApiUnreachable".into(),
            Error::Build(_) => "BuildFailed".into(),
            Error::Json(_) => "SerializationFailed".into(),
            Error::Cache(_) => "CacheNotReady".into(),
        }
    }
}

/// Per child object of one InventorySystem: the applied-hash of its last
/// apply and what the server did not keep of it.
type ServedChildren = HashMap<String, (String, drift::Accepted)>;

/// Shared state of the reconciler.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// Consecutive failures per InventorySystem (`namespace/name`), for the
    /// exponential backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// Per InventorySystem (`namespace/name`), per child object
    /// (`Kind/namespace/name`): the applied-hash of the last successful
    /// apply and the desired fields the API server did not keep as applied
    /// ([`drift::served_deviations`]); the drift check accepts the server's
    /// values there until the desired object changes. Only objects with
    /// such fields have an entry.
    served: Mutex<HashMap<String, ServedChildren>>,
    /// The watch caches the reconciler reads its children from.
    caches: Caches,
    /// Where the images a spec chooses may come from (`--allowed-images`).
    images: ImagePolicy,
}

impl Context {
    pub fn new(client: Client, metrics: Arc<Metrics>, instance: Option<String>) -> Self {
        let reporter = Reporter {
            controller: names::FIELD_MANAGER.into(),
            instance,
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            failures: Mutex::new(HashMap::new()),
            served: Mutex::new(HashMap::new()),
            caches: Caches::default(),
            images: ImagePolicy::default(),
        }
    }

    /// The watch caches of owned objects.
    pub fn caches(&self) -> &Caches {
        &self.caches
    }

    /// One watch per owned kind in `namespace` (`None`: every namespace),
    /// feeding the caches the reconciler reads: the controller's `owns`
    /// triggers (`Controller::owns_stream_with(stream, kind.api_resource())`).
    pub fn owned_streams(&self, namespace: Option<&str>) -> Vec<(Kind, OwnedStream)> {
        self.caches.owned_streams(&self.client, namespace)
    }

    /// Forgets what the reconciler kept about an InventorySystem that was
    /// deleted: its failure count (backoff) and what the server did not
    /// keep of its children.
    pub fn forget_system(&self, namespace: &str, name: &str) {
        let key = format!("{namespace}/{name}");
        if let Ok(mut map) = self.failures.lock() {
            map.remove(&key);
        }
        if let Ok(mut map) = self.served.lock() {
            map.remove(&key);
        }
    }

    /// After a (re)list of the InventorySystems of `namespace` (`None`: all
    /// namespaces): forgets every system of that scope not among `present`
    /// (`namespace/name` keys), deleted while no watch was open.
    pub fn retain_systems(&self, namespace: Option<&str>, present: &BTreeSet<String>) {
        let stale = |key: &String| {
            let in_scope = namespace.is_none_or(|ns| key.split('/').next() == Some(ns));
            in_scope && !present.contains(key)
        };
        if let Ok(mut map) = self.failures.lock() {
            map.retain(|k, _| !stale(k));
        }
        if let Ok(mut map) = self.served.lock() {
            map.retain(|k, _| !stale(k));
        }
    }

    /// How many InventorySystems the reconciler keeps failure or drift
    /// state for (for tests of [`Context::forget_system`]).
    pub fn remembered_systems(&self) -> usize {
        let mut keys = BTreeSet::new();
        if let Ok(map) = self.failures.lock() {
            keys.extend(map.keys().cloned());
        }
        if let Ok(map) = self.served.lock() {
            keys.extend(map.keys().cloned());
        }
        keys.len()
    }

    /// Restricts the images specs may choose (see [`crate::images`]).
    pub fn with_image_policy(mut self, images: ImagePolicy) -> Self {
        self.images = images;
        self
    }

    /// What the drift check accepts for a child whose desired object has
    /// the applied-hash `hash`: the server's values recorded after the last
    /// apply of that same desired object, else nothing.
    fn accepted(&self, system: &str, child: &str, hash: &str) -> drift::Accepted {
        let Ok(map) = self.served.lock() else {
            return drift::Accepted::new();
        };
        map.get(system)
            .and_then(|children| children.get(child))
            .filter(|(h, _)| h == hash)
            .map(|(_, accepted)| accepted.clone())
            .unwrap_or_default()
    }

    /// Records what the server kept of a child right after applying it.
    fn remember_served(
        &self,
        system: &str,
        child: &str,
        hash: Option<&str>,
        accepted: drift::Accepted,
    ) {
        let Ok(mut map) = self.served.lock() else {
            return;
        };
        match hash {
            Some(hash) if !accepted.is_empty() => {
                map.entry(system.to_owned())
                    .or_default()
                    .insert(child.to_owned(), (hash.to_owned(), accepted));
            }
            _ => self.forget_served_in(&mut map, system, child),
        }
    }

    fn forget_served(&self, system: &str, child: &str) {
        if let Ok(mut map) = self.served.lock() {
            self.forget_served_in(&mut map, system, child);
        }
    }

    fn forget_served_in(
        &self,
        map: &mut HashMap<String, ServedChildren>,
        system: &str,
        child: &str,
    ) {
        if let Some(children) = map.get_mut(system) {
            children.remove(child);
            if children.is_empty() {
                map.remove(system);
            }
        }
    }

    fn failure_count(&self, key: &str, reset: bool) -> u32 {
        let Ok(mut map) = self.failures.lock() else {
            return 0;
        };
        if reset {
            map.remove(key);
            return 0;
        }
        let n = map.entry(key.to_owned()).or_insert(0);
        *n = n.saturating_add(1);
        *n
    }
}

/// How often a healthy InventorySystem is looked at again (catches changes
/// of external Secrets and drift the watches do not see).
pub const RESYNC: Duration = Duration::from_secs(300);

fn key(obj: &InventorySystem) -> String {
    format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
}

/// Backoff after `failures` consecutive failures: 5 s doubling to 5 min.
pub fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(6);
    Duration::from_secs((5u64 << exp).min(300))
}

/// Marks the current (reconcile) span failed the OpenTelemetry way: status
/// Error, `error.type`, and an `exception` event carrying the message.
fn mark_span_failed(reason: &str, err: &Error) {
    let span = tracing::Span::current();
    span.record("otel.status_code", "ERROR");
    span.record("error.type", reason);
    // An event whose only text is an `error` field becomes the span's
    // `exception` event (Display, so the message is not quoted).
    tracing::event!(
        target: crate::telemetry::EXCEPTION_TARGET,
        tracing::Level::ERROR,
        "exception.type" = reason,
        error = tracing::field::display(err),
    );
}

/// Entry point used by the controller (and the tests).
pub async fn reconcile(obj: Arc<InventorySystem>, ctx: Arc<Context>) -> Result<Action, Error> {
    let span = info_span!(
        "reconcile",
        name = %obj.name_any(),
        namespace = %obj.namespace().unwrap_or_default(),
        generation = obj.metadata.generation.unwrap_or_default(),
        otel.status_code = tracing::field::Empty,
        error.type = tracing::field::Empty,
    );
    async move {
        let started = Instant::now();
        ctx.metrics.reconciles.inc();
        let (result, calls) = ctx
            .metrics
            .counting_calls(async {
                let result = reconcile_inner(&obj, &ctx).await;
                if let Err(err) = &result {
                    report_failure(&obj, &ctx, err).await;
                }
                result
            })
            .await;
        ctx.metrics.observe(started.elapsed());
        let api_calls = calls
            .iter()
            .map(|(verb, n)| format!("{verb}={n}"))
            .collect::<Vec<_>>()
            .join(",");
        match &result {
            Ok(action) => {
                ctx.failure_count(&key(&obj), true);
                info!(
                    ?action,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    %api_calls,
                    "reconciled"
                );
            }
            Err(err) => {
                let reason = err.metric_reason();
                ctx.metrics.failed(&reason);
                mark_span_failed(&reason, err);
                warn!(error = %err, %api_calls, "reconcile failed");
            }
        }
        result
    }
    .instrument(span)
    .await
}

/// The controller's error policy: requeue with exponential backoff per object.
pub fn error_policy(obj: Arc<InventorySystem>, _err: &Error, ctx: Arc<Context>) -> Action {
    let n = ctx.failure_count(&key(&obj), false);
    Action::requeue(backoff(n))
}

/// Best effort: a Warning event and `Degraded=True` on a failed reconcile.
async fn report_failure(obj: &InventorySystem, ctx: &Context, err: &Error) {
    let message = err.to_string();
    publish(
        ctx,
        obj,
        EventType::Warning,
        "ReconcileFailed",
        "Reconcile",
        &message,
    )
    .await;
    let status = status::with_failure(obj, &message, &status::now_rfc3339());
    if obj.status.as_ref() != Some(&status)
        && let Err(e) = patch_status(ctx, obj, &status).await
    {
        warn!(error = %e, "could not record the failure in the status");
    }
}

async fn publish(
    ctx: &Context,
    obj: &InventorySystem,
    type_: EventType,
    reason: &str,
    action: &str,
    note: &str,
) {
    ctx.metrics.api_call("create", "Event");
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(truncate(note, 1000)),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &obj.object_ref(&())).await {
        warn!(error = %e, reason, "could not publish an event");
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

async fn patch_status(
    ctx: &Context,
    obj: &InventorySystem,
    status: &InventorySystemStatus,
) -> Result<(), kube::Error> {
    let api: Api<InventorySystem> =
        Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    ctx.metrics.api_call("patch", "InventorySystem");
    let body = json!({
        "apiVersion": InventorySystem::api_version(&()),
        "kind": InventorySystem::kind(&()),
        "status": status,
    });
    api.patch_status(
        &obj.name_any(),
        &PatchParams::apply(names::FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await?;
    Ok(())
}

/// The children of one InventorySystem in the watch caches.
#[derive(Default)]
struct Observed {
    objects: BTreeMap<(Kind, String), Arc<DynamicObject>>,
}

impl Observed {
    fn workloads(&self) -> ObservedWorkloads {
        let mut w = ObservedWorkloads::default();
        for ((kind, name), obj) in &self.objects {
            match kind {
                Kind::Deployment => {
                    if let Ok(d) = DynamicObject::clone(obj).try_parse() {
                        w.deployments.insert(name.clone(), d);
                    }
                }
                Kind::StatefulSet => {
                    if let Ok(s) = DynamicObject::clone(obj).try_parse() {
                        w.statefulsets.insert(name.clone(), s);
                    }
                }
                Kind::Ingress => w.ingress = DynamicObject::clone(obj).try_parse().ok(),
                _ => {}
            }
        }
        w
    }

    fn secret_names(&self) -> BTreeSet<String> {
        self.objects
            .keys()
            .filter(|(k, _)| *k == Kind::Secret)
            .map(|(_, n)| n.clone())
            .collect()
    }
}

/// The children of `name` in `ns`, from the watch caches: no request.
async fn observe(ctx: &Context, ns: &str, name: &str) -> Result<Observed, CacheError> {
    let mut observed = Observed::default();
    for (kind, item) in ctx.caches.children(ns, name).await? {
        observed.objects.insert((kind, item.name_any()), item);
    }
    Ok(observed)
}

/// `<uid>/<resourceVersion>` of a Secret: what pod templates and applied
/// hashes are derived from in external mode (never the values).
fn secret_version(secret: &Secret) -> String {
    format!(
        "{}/{}",
        secret.metadata.uid.as_deref().unwrap_or_default(),
        secret
            .metadata
            .resource_version
            .as_deref()
            .unwrap_or_default()
    )
}

fn secret_string(secret: &Secret, key: &str) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.0.clone())
        .ok()
        .filter(|s| !s.is_empty())
}

/// Reads the Secrets of external PostgreSQL/RabbitMQ. `Err(blocker)` when one
/// is missing or incomplete.
async fn external_secrets(
    ctx: &Context,
    obj: &InventorySystem,
    ns: &str,
    observed: &mut ObservedSecrets,
) -> Result<Option<Blocker>, kube::Error> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    if let Some(ext) = &obj.spec.postgres.external {
        let name = &ext.secret_ref.name;
        ctx.metrics.api_call("get", Kind::Secret.as_str());
        match api.get_opt(name).await? {
            None => {
                return Ok(Some(Blocker::ExternalDatabaseSecret(format!(
                    "Secret {name} (postgres.external.secretRef) not found"
                ))));
            }
            Some(secret) => {
                observed
                    .external_versions
                    .insert(name.clone(), secret_version(&secret));
                let mut missing = Vec::new();
                for svc in Svc::ALL {
                    match secret_string(&secret, svc.as_str()) {
                        Some(url) => {
                            observed
                                .external_database_urls
                                .insert(svc.as_str().to_owned(), url);
                        }
                        None => missing.push(svc.as_str()),
                    }
                }
                if !missing.is_empty() {
                    return Ok(Some(Blocker::ExternalDatabaseSecret(format!(
                        "Secret {name} (postgres.external.secretRef) lacks the keys {}",
                        missing.join(", ")
                    ))));
                }
            }
        }
    }
    if let Some(ext) = &obj.spec.rabbitmq.external {
        let name = &ext.secret_ref.name;
        ctx.metrics.api_call("get", Kind::Secret.as_str());
        match api.get_opt(name).await? {
            None => {
                return Ok(Some(Blocker::ExternalBrokerSecret(format!(
                    "Secret {name} (rabbitmq.external.secretRef) not found"
                ))));
            }
            Some(secret) => match secret_string(&secret, "url") {
                Some(url) => {
                    observed
                        .external_versions
                        .insert(name.clone(), secret_version(&secret));
                    observed.external_amqp_url = Some(url);
                }
                None => {
                    return Ok(Some(Blocker::ExternalBrokerSecret(format!(
                        "Secret {name} (rabbitmq.external.secretRef) lacks the key url"
                    ))));
                }
            },
        }
    }
    Ok(None)
}

/// Patches the status if it differs from the current one.
async fn update_status(
    ctx: &Context,
    obj: &InventorySystem,
    status: InventorySystemStatus,
) -> Result<(), kube::Error> {
    if obj.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let old_phase = obj.status.as_ref().and_then(|s| s.phase);
    if old_phase != status.phase
        && let Some(phase) = status.phase
    {
        info!(phase = phase.as_str(), "phase changed");
        if phase == Phase::Ready {
            publish(
                ctx,
                obj,
                EventType::Normal,
                "Ready",
                "Reconcile",
                "every component is ready",
            )
            .await;
        }
    }
    patch_status(ctx, obj, &status).await
}

async fn reconcile_inner(obj: &InventorySystem, ctx: &Context) -> Result<Action, Error> {
    let ns = obj.namespace().unwrap_or_default();
    let name = obj.name_any();
    let now = status::now_rfc3339();

    // 1. Validate (the spec, and the images it chooses).
    let mut problems = resources::validate(obj);
    problems.extend(ctx.images.problems(&obj.spec));
    if !problems.is_empty() {
        let message = problems.join("; ");
        let st = status::compute(
            obj,
            &ObservedWorkloads::default(),
            Some(&Blocker::InvalidSpec(message.clone())),
            &now,
        );
        if obj.status.as_ref() != Some(&st) {
            publish(
                ctx,
                obj,
                EventType::Warning,
                "InvalidSpec",
                "Validate",
                &message,
            )
            .await;
            update_status(ctx, obj, st).await?;
        }
        // Nothing to retry: a spec change (new generation) triggers the next reconcile.
        return Ok(Action::await_change());
    }

    // 2. Observe.
    let observed = observe(ctx, &ns, &name).await?;
    let mut secrets = ObservedSecrets {
        existing: observed.secret_names(),
        ..Default::default()
    };
    if let Some(blocker) = external_secrets(ctx, obj, &ns, &mut secrets).await? {
        let message = match &blocker {
            Blocker::ExternalDatabaseSecret(m) | Blocker::ExternalBrokerSecret(m) => m.clone(),
            Blocker::InvalidSpec(m) => m.clone(),
        };
        let st = status::compute(obj, &observed.workloads(), Some(&blocker), &now);
        if obj.status.as_ref() != Some(&st) {
            publish(
                ctx,
                obj,
                EventType::Warning,
                "ExternalSecretInvalid",
                "Validate",
                &message,
            )
            .await;
            update_status(ctx, obj, st).await?;
        }
        return Ok(Action::requeue(Duration::from_secs(30)));
    }

    // 3. Build.
    let desired = resources::build_all(obj, &secrets)?;

    // 4. Write what differs.
    let mut created = Vec::new();
    let mut updated = Vec::new();
    let system = key(obj);
    for d in &desired {
        match write(ctx, &system, &ns, d, &observed).await? {
            Written::Created => created.push(format!("{}/{}", d.kind.as_str(), d.name)),
            Written::Updated => updated.push(format!("{}/{}", d.kind.as_str(), d.name)),
            Written::Repaired | Written::Unchanged => {}
        }
    }
    let mut wanted: BTreeSet<(Kind, String)> =
        desired.iter().map(|d| (d.kind, d.name.clone())).collect();
    // Generated Secrets that exist are not rebuilt, but they are still wanted.
    wanted.extend(
        resources::generated_secret_names(obj)
            .into_iter()
            .map(|n| (Kind::Secret, n)),
    );
    let uid = obj.metadata.uid.clone().unwrap_or_default();
    let mut deleted = Vec::new();
    for ((kind, child), o) in &observed.objects {
        let owned_by_us = o
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|r| r.controller == Some(true) && r.uid == uid);
        if owned_by_us && !wanted.contains(&(*kind, child.clone())) {
            let api: Api<DynamicObject> =
                Api::namespaced_with(ctx.client.clone(), &ns, &kind.api_resource());
            ctx.metrics.api_call("delete", kind.as_str());
            ctx.forget_served(&system, &child_key(*kind, &ns, child));
            match api.delete(child, &DeleteParams::background()).await {
                Ok(_) => {
                    ctx.metrics.wrote(kind.as_str(), "delete");
                    deleted.push(format!("{}/{child}", kind.as_str()));
                }
                // Already gone (the cache had not seen it yet): done.
                Err(kube::Error::Api(s)) if s.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    // 5. Events.
    if !created.is_empty() {
        info!(objects = %created.join(","), "created");
        publish(
            ctx,
            obj,
            EventType::Normal,
            "Created",
            "Apply",
            &format!("created {}", created.join(", ")),
        )
        .await;
    }
    if !updated.is_empty() {
        info!(objects = %updated.join(","), "updated");
        publish(
            ctx,
            obj,
            EventType::Normal,
            "Updated",
            "Apply",
            &format!("updated {}", updated.join(", ")),
        )
        .await;
    }
    if !deleted.is_empty() {
        info!(objects = %deleted.join(","), "deleted");
        publish(
            ctx,
            obj,
            EventType::Normal,
            "Deleted",
            "Prune",
            &format!("deleted {}", deleted.join(", ")),
        )
        .await;
    }

    // 6. Status.
    let st = status::compute(obj, &observed.workloads(), None, &now);
    update_status(ctx, obj, st).await?;
    Ok(Action::requeue(RESYNC))
}

/// Key of a child object in the reconciler's per-object memory.
fn child_key(kind: Kind, ns: &str, name: &str) -> String {
    format!("{}/{ns}/{name}", kind.as_str())
}

enum Written {
    Created,
    Updated,
    /// Re-applied because a field of ours was edited by someone else (logged
    /// and counted as `action="repair"`, no event).
    Repaired,
    Unchanged,
}

async fn write(
    ctx: &Context,
    system: &str,
    ns: &str,
    d: &Desired,
    observed: &Observed,
) -> Result<Written, Error> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(ctx.client.clone(), ns, &d.kind.api_resource());
    let current = observed
        .objects
        .get(&(d.kind, d.name.clone()))
        .map(AsRef::as_ref);
    match d.mode {
        WriteMode::CreateOnce => {
            if current.is_some() {
                return Ok(Written::Unchanged);
            }
            let pp = PostParams {
                field_manager: Some(names::FIELD_MANAGER.into()),
                ..Default::default()
            };
            ctx.metrics.api_call("create", d.kind.as_str());
            match api.create(&pp, &d.to_dynamic()?).await {
                Ok(_) => {
                    ctx.metrics.wrote(d.kind.as_str(), "create");
                    Ok(Written::Created)
                }
                // Created concurrently: keep what exists, never overwrite.
                Err(kube::Error::Api(s)) if s.is_already_exists() => Ok(Written::Unchanged),
                Err(e) => Err(e.into()),
            }
        }
        WriteMode::Apply => {
            let want = d
                .object
                .pointer("/metadata/annotations")
                .and_then(|a| a.get(names::APPLIED_HASH_ANNOTATION))
                .and_then(|v| v.as_str());
            let have = current.and_then(|c| c.annotations().get(names::APPLIED_HASH_ANNOTATION));
            let child = child_key(d.kind, ns, &d.name);
            let mut repair = None;
            if let Some(current) = current
                && let Some(hash) = want
                && Some(hash) == have.map(String::as_str)
            {
                // Same desired object as last applied: write only if someone
                // changed or removed one of our fields since (drift), not
                // for fields this API server does not keep as applied.
                let accepted = ctx.accepted(system, &child, hash);
                match drift::first_difference_accepting(
                    &d.object,
                    &serde_json::to_value(current)?,
                    &accepted,
                ) {
                    None => return Ok(Written::Unchanged),
                    Some(path) => repair = Some(path),
                }
            }
            ctx.metrics.api_call("patch", d.kind.as_str());
            let served = api
                .patch(
                    &d.name,
                    &PatchParams::apply(names::FIELD_MANAGER).force(),
                    &Patch::Apply(&d.object),
                )
                .await?;
            // What the server returns right after an apply that succeeded is
            // what it keeps: a desired field missing or different there is
            // the server's doing (a field it drops or rewrites), never drift.
            let deviations = drift::served_deviations(&d.object, &serde_json::to_value(&served)?);
            if !deviations.is_empty() {
                info!(
                    kind = d.kind.as_str(),
                    object = %d.name,
                    fields = %deviations.keys().cloned().collect::<Vec<_>>().join(","),
                    "the API server does not keep these fields as applied; drift checks accept its values until the desired object changes"
                );
            }
            ctx.remember_served(system, &child, want, deviations);
            if let Some(path) = repair {
                info!(
                    kind = d.kind.as_str(),
                    object = %d.name,
                    field = %path,
                    "drift repaired"
                );
                ctx.metrics.wrote(d.kind.as_str(), "repair");
                return Ok(Written::Repaired);
            }
            let action = if current.is_some() {
                "update"
            } else {
                "create"
            };
            ctx.metrics.wrote(d.kind.as_str(), action);
            Ok(if current.is_some() {
                Written::Updated
            } else {
                Written::Created
            })
        }
    }
}
