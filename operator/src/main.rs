//! `stockmesh-operator`: see `--help` and operator/README.md.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context as _;
use clap::Parser as _;
use kube::Config;
use kube::api::ListParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use stockmesh_operator::cli::Options;
use stockmesh_operator::compat;
use stockmesh_operator::controller::Context;
use stockmesh_operator::images::ImagePolicy;
use stockmesh_operator::leader::{self, Election, Outcome};
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

async fn config(opts: &Options) -> anyhow::Result<Config> {
    Ok(match &opts.kubeconfig {
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
    })
}

/// SIGTERM (Kubernetes stopping the pod) or Ctrl-C. The controllers watch
/// for these themselves; this is for a replica standing by.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        () = terminate => {}
        () = interrupt => {}
    }
}

async fn run(opts: Options) -> anyhow::Result<()> {
    let config = config(&opts).await?;
    let client = compat::client(config.clone())?;
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
        Context::new(
            client.clone(),
            metrics.clone(),
            std::env::var("POD_NAME").ok(),
        )
        .with_image_policy(images),
    );
    let concurrency = opts.concurrency;
    let outcome = if opts.leader_election {
        let election = Election {
            lease_name: opts.lease_name.clone(),
            namespace: opts
                .lease_namespace
                .clone()
                .unwrap_or_else(|| client.default_namespace().to_owned()),
            identity: leader::identity(),
            duration_seconds: opts.lease_duration_seconds,
        };
        // The Lease's own client: a renewal that hangs must fail while the
        // lease is still valid (see `leader`), whatever the other requests
        // may take.
        let mut lease_config = config;
        let timeout = Some(election.request_timeout());
        lease_config.connect_timeout = timeout;
        lease_config.read_timeout = timeout;
        lease_config.write_timeout = timeout;
        let lease_client = compat::client(lease_config)?;
        let controllers = {
            let ready = ready.clone();
            move || async move { runner::run(client, &scope, ctx, concurrency, ready).await }
        };
        leader::run(
            lease_client,
            &election,
            &metrics,
            &ready,
            shutdown_signal(),
            controllers,
        )
        .await
        .with_context(|| {
            format!(
                "leader election on Lease {}/{}: may this account get, create and patch Leases there (chart: leaderElection)? --leader-election=false runs without one",
                election.namespace, election.lease_name
            )
        })?
    } else {
        tracing::warn!("leader election is off: run exactly one replica");
        metrics.set_leader(true);
        runner::run(client, &scope, ctx, concurrency, ready.clone()).await;
        Outcome::Finished
    };
    tracing::info!("controller stopped; shutting down");
    let _ = stop_tx.send(true);
    let _ = http.await;
    match outcome {
        Outcome::LostLeadership(reason) => Err(anyhow::anyhow!(
            "lost the leader Lease ({reason}): exiting so that Kubernetes restarts this replica as a follower"
        )),
        Outcome::Finished | Outcome::Shutdown => Ok(()),
    }
}
