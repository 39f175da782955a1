//! Runs the controller over what the operator may see: the whole cluster
//! (a ClusterRole), or only the namespaces of a namespaced install (a Role
//! in each): then one controller per namespace, so that no request — list,
//! watch or write — ever leaves those namespaces.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use std::collections::BTreeSet;

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::controller::{self, Controller};
use kube::runtime::{WatchStreamExt, predicates, reflector, watcher};
use kube::{Client, ResourceExt};

use crate::InventorySystem;
use crate::controller::{Context, error_policy, reconcile};

/// Where the operator looks for InventorySystems and their objects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every namespace (needs the ClusterRole).
    Cluster,
    /// Only these namespaces (a Role in each is enough).
    Namespaces(Vec<String>),
}

impl Scope {
    /// The scope for the `--namespace` values given (none: the cluster).
    pub fn from_namespaces(namespaces: &[String]) -> Self {
        if namespaces.is_empty() {
            Self::Cluster
        } else {
            let mut unique = namespaces.to_vec();
            unique.sort();
            unique.dedup();
            Self::Namespaces(unique)
        }
    }

    /// The namespaces one controller each covers (`None`: all of them).
    fn parts(&self) -> Vec<Option<String>> {
        match self {
            Self::Cluster => vec![None],
            Self::Namespaces(list) => list.iter().cloned().map(Some).collect(),
        }
    }

    /// For logs: `<all>` or the namespaces, comma-separated.
    pub fn describe(&self) -> String {
        match self {
            Self::Cluster => "<all>".to_owned(),
            Self::Namespaces(list) => list.join(","),
        }
    }
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// The InventorySystems of the scope (for the start-up check that the CRD
/// is installed and may be listed).
pub fn systems_api(client: &Client, namespace: Option<&str>) -> Api<InventorySystem> {
    api(client, namespace)
}

/// Runs the controllers of `scope` until a shutdown signal; `ready` turns
/// true once every one of them has listed its InventorySystems.
pub async fn run(
    client: Client,
    scope: &Scope,
    ctx: Arc<Context>,
    concurrency: u16,
    ready: Arc<AtomicBool>,
) {
    let mut controllers = Vec::new();
    let parts = scope.parts();
    // Ready once every controller has listed its InventorySystems (its
    // first InitDone). Counted from the event stream: the store's
    // `wait_until_ready` wakes only one waiter, and the controller is one.
    let unlisted = Arc::new(AtomicUsize::new(parts.len()));
    for ns in parts {
        let (reader, writer) = reflector::store::<InventorySystem>();
        let listed = AtomicBool::new(false);
        let (unlisted, ready) = (unlisted.clone(), ready.clone());
        let (forget, scope_ns, systems) = (ctx.clone(), ns.clone(), reader.clone());
        // Only spec changes (a new generation) trigger a reconcile from the
        // InventorySystem watch; our own status patches do not.
        let trigger = watcher(api(&client, ns.as_deref()), watcher::Config::default())
            .default_backoff()
            .reflect(writer)
            .inspect(move |event| {
                if matches!(event, Ok(watcher::Event::InitDone))
                    && !listed.swap(true, Ordering::Relaxed)
                    && unlisted.fetch_sub(1, Ordering::Relaxed) == 1
                {
                    ready.store(true, Ordering::Relaxed);
                }
                // A deleted InventorySystem leaves no backoff or drift
                // state behind (nor one deleted while no watch was open).
                match event {
                    Ok(watcher::Event::Delete(obj)) => {
                        forget.forget_system(&obj.namespace().unwrap_or_default(), &obj.name_any());
                    }
                    Ok(watcher::Event::InitDone) => {
                        let present: BTreeSet<String> = systems
                            .state()
                            .iter()
                            .map(|o| {
                                format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any())
                            })
                            .collect();
                        forget.retain_systems(scope_ns.as_deref(), &present);
                    }
                    _ => {}
                }
            })
            .applied_objects()
            .predicate_filter(predicates::generation, Default::default());
        let mut c = Controller::for_stream(trigger, reader);
        let ns = ns.as_deref();
        // Owned objects: one watch per kind, each feeding the cache the
        // reconciler reads its children from (crate::cache).
        for (kind, stream) in ctx.owned_streams(ns) {
            c = c.owns_stream_with(stream, kind.api_resource());
        }
        tracing::info!(
            namespace = ns.unwrap_or("<all>"),
            concurrency,
            "starting the controller"
        );
        let ctx = ctx.clone();
        controllers.push(
            c.with_config(controller::Config::default().concurrency(concurrency))
                .shutdown_on_signal()
                .run(reconcile, error_policy, ctx)
                .for_each(|result| async move {
                    if let Err(err) = result {
                        tracing::debug!(error = %err, "reconcile did not complete");
                    }
                }),
        );
    }
    futures::future::join_all(controllers).await;
}
