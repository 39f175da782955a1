//! `stockmesh-operator`: see `--help` and operator/README.md.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context as _;
use clap::Parser as _;
use kube::api::ListParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use stockmesh_operator::cli::Options;
use stockmesh_operator::compat;
use stockmesh_operator::controller::Context;
use stockmesh_operator::images::ImagePolicy;
use stockmesh_operator::metrics::Metrics;
use stockmesh_operator::runner::{self, Scope};
use stockmesh_operator::server::{self, AppState};
use tokio::sync::watch;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `--help`, `--version` and mistakes are answered by clap (exit 0 / 2).
    let opts = Options::parse();
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

async fn run(opts: Options) -> anyhow::Result<()> {
    let client = client(&opts).await?;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        user_agent = %compat::user_agent(),
        supported_kubernetes = %compat::supported_range(),
        "stockmesh-operator starting"
    );
    compat::check_server_version(&client).await;
    let scope = Scope::from_namespaces(&opts.namespaces);
    let images = ImagePolicy::new(&opts.allowed_images).map_err(anyhow::Error::msg)?;
    tracing::info!(
        namespaces = %scope.describe(),
        allowed_images = %if images.allows_all() { "<any>".to_owned() } else { opts.allowed_images.join(",") },
        "scope"
    );
    // The CRD is installed and this account may list InventorySystems
    // everywhere it is meant to watch.
    let check: Vec<Option<String>> = match &scope {
        Scope::Cluster => vec![None],
        Scope::Namespaces(list) => list.iter().cloned().map(Some).collect(),
    };
    for ns in check {
        runner::systems_api(&client, ns.as_deref())
            .list(&ListParams::default().limit(1))
            .await
            .with_context(|| format!(
                "cannot list InventorySystems in {}: is the CRD installed (kubectl apply -f k8s/crd/inventorysystem.yaml) and may this account list them there?",
                ns.as_deref().map_or("any namespace".to_owned(), |ns| format!("namespace {ns}"))
            ))?;
    }

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

    let ctx = Arc::new(
        Context::new(client.clone(), metrics, std::env::var("POD_NAME").ok())
            .with_image_policy(images),
    );
    runner::run(client, &scope, ctx, opts.concurrency, ready).await;
    tracing::info!("controller stopped; shutting down");
    let _ = stop_tx.send(true);
    let _ = http.await;
    Ok(())
}
