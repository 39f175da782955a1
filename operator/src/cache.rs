//! Watch caches of the objects the operator owns.
//!
//! The controller watches every kind it manages (labelled
//! `app.kubernetes.io/managed-by=stockmesh-operator`) to be woken when one
//! changes. The same watches feed one reflector store per kind and watched
//! scope (the cluster, or each namespace of a namespaced install), and the
//! reconciler reads its children from those stores instead of listing eight
//! kinds on every reconcile: a steady-state reconcile sends no request.
//!
//! A store is read only after its watch has delivered its first complete
//! list (its first `InitDone`); a reconcile arriving earlier waits for that
//! (every waiter is woken, unlike `Store::wait_until_ready` in kube-runtime
//! 5, which wakes one). The stores are eventually consistent: a reconcile may
//! see an object as it was just before the operator's own last write. That
//! costs at most a redundant apply (server-side apply is idempotent), an
//! `AlreadyExists` on a generated Secret (kept, never overwritten) or a
//! `NotFound` on a prune (treated as done); the watch event of the write
//! then triggers another reconcile that sees it.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use kube::api::Api;
use kube::core::DynamicObject;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio::sync::watch;

use crate::names;
use crate::resources::Kind;

/// A watch stream of one owned kind, as the controller's `owns_stream_with` takes it.
pub type OwnedStream = BoxStream<'static, Result<DynamicObject, watcher::Error>>;

/// How long a reconcile waits for the first list of a watch.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the caches could not answer.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("no watch covers namespace {0}")]
    NotWatched(String),
    #[error("the {0} watch has not listed its objects yet")]
    NotSynced(&'static str),
}

/// One kind's store in one scope, and whether its watch has listed yet.
struct KindCache {
    store: Store<DynamicObject>,
    synced: watch::Receiver<bool>,
}

/// The stores of one watched scope (`None`: every namespace).
struct ScopeCache {
    namespace: Option<String>,
    kinds: BTreeMap<Kind, KindCache>,
}

impl ScopeCache {
    fn covers(&self, ns: &str) -> bool {
        self.namespace.as_deref().is_none_or(|n| n == ns)
    }
}

/// The stores of every watched scope.
#[derive(Default)]
pub struct Caches {
    scopes: RwLock<Vec<Arc<ScopeCache>>>,
}

/// The writing half of a scope's stores, before its watches start.
struct ScopeWriters {
    writers: Vec<(
        Kind,
        reflector::store::Writer<DynamicObject>,
        watch::Sender<bool>,
    )>,
}

/// The watch configuration of owned objects: everything the operator made.
pub fn owned_config() -> watcher::Config {
    watcher::Config::default().labels(&format!(
        "{}={}",
        names::LABEL_MANAGED_BY,
        names::MANAGED_BY
    ))
}

impl Caches {
    /// New stores for `namespace` (replacing those of an earlier controller
    /// of the same scope).
    fn register(&self, namespace: Option<String>) -> ScopeWriters {
        let mut writers = Vec::new();
        let mut kinds = BTreeMap::new();
        for kind in Kind::ALL {
            let writer = reflector::store::Writer::<DynamicObject>::new(kind.api_resource());
            let (tx, rx) = watch::channel(false);
            kinds.insert(
                kind,
                KindCache {
                    store: writer.as_reader(),
                    synced: rx,
                },
            );
            writers.push((kind, writer, tx));
        }
        let scope = Arc::new(ScopeCache {
            namespace: namespace.clone(),
            kinds,
        });
        if let Ok(mut scopes) = self.scopes.write() {
            scopes.retain(|s| s.namespace != namespace);
            scopes.push(scope);
        }
        ScopeWriters { writers }
    }

    /// One watch per owned kind in `namespace` (`None`: all namespaces),
    /// each feeding a store of these caches; the controller takes the
    /// streams as its `owns` triggers.
    pub fn owned_streams(
        &self,
        client: &Client,
        namespace: Option<&str>,
    ) -> Vec<(Kind, OwnedStream)> {
        let writers = self.register(namespace.map(str::to_owned));
        writers
            .writers
            .into_iter()
            .map(|(kind, writer, synced)| {
                let ar = kind.api_resource();
                let api: Api<DynamicObject> = match namespace {
                    Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
                    None => Api::all_with(client.clone(), &ar),
                };
                let stream = watcher(api, owned_config())
                    .default_backoff()
                    .reflect(writer)
                    .inspect(move |event| {
                        if matches!(event, Ok(watcher::Event::InitDone)) {
                            synced.send_replace(true);
                        }
                    })
                    .applied_objects()
                    .boxed();
                (kind, stream)
            })
            .collect()
    }

    /// Fills the stores of `namespace` as a watch's first list would, and
    /// marks them listed: for tests and tools that drive the reconciler
    /// without a controller.
    pub fn prime(&self, namespace: Option<&str>, objects: Vec<(Kind, DynamicObject)>) {
        let mut writers = self.register(namespace.map(str::to_owned));
        for (kind, writer, synced) in &mut writers.writers {
            writer.apply_watcher_event(&watcher::Event::Init);
            for (k, obj) in &objects {
                if k == kind {
                    writer.apply_watcher_event(&watcher::Event::InitApply(obj.clone()));
                }
            }
            writer.apply_watcher_event(&watcher::Event::InitDone);
            synced.send_replace(true);
        }
    }

    fn scope_of(&self, ns: &str) -> Option<Arc<ScopeCache>> {
        let scopes = self.scopes.read().ok()?;
        scopes.iter().find(|s| s.covers(ns)).cloned()
    }

    /// The objects of every owned kind in `ns` labelled as made for the
    /// InventorySystem `instance`, once each watch has listed (waiting at
    /// most [`SYNC_TIMEOUT`] for that).
    pub async fn children(
        &self,
        ns: &str,
        instance: &str,
    ) -> Result<Vec<(Kind, Arc<DynamicObject>)>, CacheError> {
        let scope = self
            .scope_of(ns)
            .ok_or_else(|| CacheError::NotWatched(ns.to_owned()))?;
        let mut out = Vec::new();
        for (kind, cache) in &scope.kinds {
            let mut synced = cache.synced.clone();
            let listed = tokio::time::timeout(SYNC_TIMEOUT, synced.wait_for(|s| *s)).await;
            if !matches!(listed, Ok(Ok(_))) {
                return Err(CacheError::NotSynced(kind.as_str()));
            }
            out.extend(
                cache
                    .store
                    .state_filter(|o| {
                        o.namespace().as_deref() == Some(ns) && is_child_of(o, instance)
                    })
                    .into_iter()
                    .map(|o| (*kind, o)),
            );
        }
        Ok(out)
    }
}

/// Whether an object carries the labels of everything made for `instance`
/// (what [`names::owned_selector`] selects).
fn is_child_of(obj: &DynamicObject, instance: &str) -> bool {
    let labels = obj.labels();
    labels.get(names::LABEL_INSTANCE).map(String::as_str) == Some(instance)
        && labels.get(names::LABEL_MANAGED_BY).map(String::as_str) == Some(names::MANAGED_BY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(ns: &str, name: &str, instance: &str) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": name,
                "namespace": ns,
                "labels": {
                    names::LABEL_INSTANCE: instance,
                    names::LABEL_MANAGED_BY: names::MANAGED_BY,
                },
            },
        }))
        .expect("object")
    }

    #[tokio::test]
    async fn children_are_those_of_the_instance_in_its_namespace() {
        let caches = Caches::default();
        caches.prime(
            None,
            vec![
                (Kind::ConfigMap, object("a", "shop-config", "shop")),
                (Kind::ConfigMap, object("b", "shop-config", "shop")),
                (Kind::ConfigMap, object("a", "other-config", "other")),
            ],
        );
        let children = caches.children("a", "shop").await.expect("children");
        let names: Vec<String> = children.iter().map(|(_, o)| o.name_any()).collect();
        assert_eq!(names, ["shop-config"]);
    }

    #[tokio::test]
    async fn a_namespace_no_watch_covers_is_an_error() {
        let caches = Caches::default();
        caches.prime(Some("a"), Vec::new());
        assert!(caches.children("a", "shop").await.is_ok());
        assert!(matches!(
            caches.children("b", "shop").await,
            Err(CacheError::NotWatched(_))
        ));
    }

    #[tokio::test]
    async fn a_store_whose_watch_never_listed_is_not_read() {
        let caches = Caches::default();
        // The watches are gone before their first list (the senders dropped).
        drop(caches.register(Some("a".into())));
        assert!(matches!(
            caches.children("a", "shop").await,
            Err(CacheError::NotSynced(_))
        ));
    }
}
