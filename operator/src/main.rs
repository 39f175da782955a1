//! `stockmesh-operator`: see `--help` and operator/README.md.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::controller::{self, Controller};
use kube::runtime::{WatchStreamExt, predicates, reflector, watcher};
use kube::{Client, Config};
use serde::de::DeserializeOwned;
use stockmesh_operator::cli::{self, Command, HELP, Options};
use stockmesh_operator::controller::{Context, error_policy, reconcile};
use stockmesh_operator::metrics::Metrics;
use stockmesh_operator::server::{self, AppState};
use stockmesh_operator::{InventorySystem, compat, names};
use tokio::sync::watch;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let opts = match cli::parse(std::env::args().skip(1)) {
        Ok(Command::Run(opts)) => opts,
        Ok(Command::Help) => {
            print!("{HELP}");
            return Ok(());
        }
        Ok(Command::Version) => {
            println!("stockmesh-operator {}", env!("CARGO_PKG_VERSION"));
            return Ok(());
        }
        Err(msg) => {
            eprintln!("error: {msg}");
            std::process::exit(2);
        }
    };
    let telemetry = stockmesh_operator::telemetry::init()?;
    let result = run(opts).await;
    telemetry.shutdown();
    result
}

async fn client(opts: &Options) -> anyhow::Result<Client> {
    let config = match &opts.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            let options = KubeConfigOptions {
                context: opts.context.clone(),
                ..Default::default()
            };
            Config::from_custom_kubeconfig(kubeconfig, &options).await?
        }
        None if opts.context.is_some() => {
            let options = KubeConfigOptions {
                context: opts.context.clone(),
                ..Default::default()
            };
            Config::from_kubeconfig(&options).await?
        }
        None => Config::infer().await?,
    };
    Ok(compat::client(config)?)
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

fn owned_config() -> watcher::Config {
    watcher::Config::default().labels(&format!(
        "{}={}",
        names::LABEL_MANAGED_BY,
        names::MANAGED_BY
    ))
}

fn owns<K>(
    c: Controller<InventorySystem>,
    client: &Client,
    ns: Option<&str>,
) -> Controller<InventorySystem>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
{
    c.owns(api::<K>(client, ns), owned_config())
}

async fn run(opts: Options) -> anyhow::Result<()> {
    let client = client(&opts).await?;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        user_agent = %compat::user_agent(),
        supported_kubernetes = %compat::supported_range(),
        "stockmesh-operator starting"
    );
    compat::check_server_version(&client).await;
    let ns = opts.namespace.as_deref();
    let systems: Api<InventorySystem> = api(&client, ns);
    systems.list(&ListParams::default().limit(1)).await.context(
        "cannot list InventorySystems: is the CRD installed (kubectl apply -f k8s/crd/inventorysystem.yaml) and may this account list them?",
    )?;

    let metrics = Arc::new(Metrics::new());
    let ready = Arc::new(AtomicBool::new(false));
    let (stop_tx, stop_rx) = watch::channel(false);
    let shutdown = {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    let http = tokio::spawn(server::serve(
        opts.http_addr,
        AppState {
            metrics: metrics.clone(),
            ready: ready.clone(),
        },
        shutdown,
    ));

    let ctx = Arc::new(Context::new(
        client.clone(),
        metrics,
        std::env::var("POD_NAME").ok(),
    ));
    let (reader, writer) = reflector::store::<InventorySystem>();
    // Only spec changes (a new generation) trigger a reconcile from the
    // InventorySystem watch; our own status patches do not.
    let trigger = watcher(systems, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(predicates::generation, Default::default());
    {
        let reader = reader.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            if reader.wait_until_ready().await.is_ok() {
                ready.store(true, Ordering::Relaxed);
            }
        });
    }
    let mut c = Controller::for_stream(trigger, reader);
    c = owns::<Secret>(c, &client, ns);
    c = owns::<ConfigMap>(c, &client, ns);
    c = owns::<Service>(c, &client, ns);
    c = owns::<StatefulSet>(c, &client, ns);
    c = owns::<Deployment>(c, &client, ns);
    c = owns::<PodDisruptionBudget>(c, &client, ns);
    c = owns::<Ingress>(c, &client, ns);
    c = owns::<NetworkPolicy>(c, &client, ns);
    tracing::info!(
        namespace = ns.unwrap_or("<all>"),
        concurrency = opts.concurrency,
        "starting the controller"
    );
    c.with_config(controller::Config::default().concurrency(opts.concurrency))
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(err) = result {
                tracing::debug!(error = %err, "reconcile did not complete");
            }
        })
        .await;
    tracing::info!("controller stopped; shutting down");
    let _ = stop_tx.send(true);
    let _ = http.await;
    Ok(())
}
