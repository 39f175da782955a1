//! Command line of `stockmesh-operator` (clap; every option also has an
//! environment variable, for the chart and for local runs).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{ArgAction, Parser};

use crate::leader::DEFAULT_LEASE_DURATION_SECONDS;

const AFTER_HELP: &str = "\
Environment: RUST_LOG (log filter, default info), LOG_FORMAT (json or text;
default json unless stdout is a terminal), POD_NAME (the event reporting
instance and the leader-election identity; without it: host name, process
id and a random suffix), OTEL_EXPORTER_OTLP_ENDPOINT (export reconcile
spans).

High availability: with --leader-election (the default) any number of
replicas may run; only the one holding the Lease reconciles, the others
stand by (Ready, stockmesh_operator_leader 0) and one takes over within
about the lease duration after the leader dies. A leader that loses the
Lease stops reconciling at once and exits (Kubernetes restarts it as a
follower).

Before the first run, install the CRD:
    kubectl apply -f k8s/crd/inventorysystem.yaml
Run against a cluster from your machine:
    cargo run -p stockmesh-operator -- --kubeconfig ~/.kube/config --context kind-stockmesh
Then create a system:
    kubectl apply -f k8s/examples/minimal.yaml && kubectl get invsys -w";

/// Reconciles InventorySystem resources (stockmesh.io/v1alpha1) into
/// PostgreSQL, RabbitMQ and the five stockmesh services.
#[derive(Debug, Clone, PartialEq, Parser)]
#[command(name = "stockmesh-operator", version, after_help = AFTER_HELP)]
pub struct Options {
    /// Kubeconfig file to use. Default: the in-cluster service account when
    /// running in a pod, else $KUBECONFIG or ~/.kube/config.
    #[arg(long, env = "STOCKMESH_KUBECONFIG", value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,

    /// Kubeconfig context (default: the current context).
    #[arg(long, env = "STOCKMESH_KUBE_CONTEXT", value_name = "NAME")]
    pub context: Option<String>,

    /// Watch only these namespaces (repeatable or comma-separated; default:
    /// all namespaces). A Role in each is then enough (chart:
    /// watchNamespaces).
    #[arg(
        short = 'n',
        long = "namespace",
        env = "STOCKMESH_WATCH_NAMESPACES",
        value_name = "NS",
        value_delimiter = ',',
        value_parser = parse_namespace
    )]
    pub namespaces: Vec<String>,

    /// Registries/repositories the images of a spec may come from,
    /// comma-separated: `ghcr.io/acme/` for a path, `postgres` for a
    /// repository, `postgres:16.4` for one image. A spec choosing another
    /// image is InvalidSpec. Default: any image.
    #[arg(
        long,
        env = "STOCKMESH_ALLOWED_IMAGES",
        value_name = "LIST",
        value_delimiter = ',',
        value_parser = parse_image_entry
    )]
    pub allowed_images: Vec<String>,

    /// Address of /metrics, /healthz and /readyz.
    #[arg(
        long,
        env = "STOCKMESH_HTTP_ADDR",
        default_value = "0.0.0.0:8080",
        value_name = "ADDR"
    )]
    pub http_addr: SocketAddr,

    /// InventorySystems reconciled in parallel.
    #[arg(
        long,
        env = "STOCKMESH_CONCURRENCY",
        default_value_t = 4,
        value_parser = clap::value_parser!(u16).range(1..)
    )]
    pub concurrency: u16,

    /// Elect a leader on a coordination.k8s.io Lease, so that only one
    /// replica reconciles (needs get/create/patch on that Lease). On by
    /// default: a second replica, or a rollout's old and new pod side by
    /// side, can then never reconcile at the same time. `false` only for a
    /// single replica whose account may not touch Leases.
    #[arg(
        long,
        env = "STOCKMESH_LEADER_ELECTION",
        value_name = "BOOL",
        action = ArgAction::Set,
        num_args = 0..=1,
        default_value_t = true,
        default_missing_value = "true"
    )]
    pub leader_election: bool,

    /// Name of the leader-election Lease.
    #[arg(
        long,
        env = "STOCKMESH_LEASE_NAME",
        default_value = "stockmesh-operator",
        value_name = "NAME",
        value_parser = parse_lease_name
    )]
    pub lease_name: String,

    /// Namespace of the Lease. Default: the operator pod's own ($POD_NAMESPACE,
    /// from the downward API), else the kubeconfig context's namespace.
    #[arg(
        long,
        env = "POD_NAMESPACE",
        value_name = "NS",
        value_parser = parse_namespace
    )]
    pub lease_namespace: Option<String>,

    /// How long the Lease holds after its last renewal. The leader renews a
    /// third of it before expiry; a follower takes over within about this
    /// long (plus up to 1 s) after the leader dies.
    #[arg(
        long,
        env = "STOCKMESH_LEASE_DURATION_SECONDS",
        value_name = "SECS",
        default_value_t = DEFAULT_LEASE_DURATION_SECONDS,
        value_parser = clap::value_parser!(u64).range(2..=3600)
    )]
    pub lease_duration_seconds: u64,
}

/// A Kubernetes namespace name: a DNS label.
fn parse_namespace(name: &str) -> Result<String, String> {
    let name = name.trim();
    let valid = (1..=63).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if valid {
        Ok(name.to_owned())
    } else {
        Err(format!("{name:?} is not a namespace name (a DNS label)"))
    }
}

/// A Lease name: a DNS subdomain (lower-case alphanumerics, `-` and `.`).
fn parse_lease_name(name: &str) -> Result<String, String> {
    let name = name.trim();
    let valid = (1..=253).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if valid {
        Ok(name.to_owned())
    } else {
        Err(format!("{name:?} is not a Lease name (a DNS subdomain)"))
    }
}

/// One `--allowed-images` entry: non-empty, no spaces.
fn parse_image_entry(entry: &str) -> Result<String, String> {
    let entry = entry.trim();
    if entry.is_empty() || entry.chars().any(char::is_whitespace) {
        Err(format!("{entry:?} is not an image, repository or path"))
    } else {
        Ok(entry.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Options, clap::Error> {
        Options::try_parse_from(std::iter::once("stockmesh-operator").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_line_is_well_formed() {
        Options::command().debug_assert();
    }

    #[test]
    fn parses_every_option_in_both_forms() {
        let opts = parse(&[
            "--kubeconfig",
            "/tmp/kc",
            "--context=kind",
            "-n",
            "shop",
            "--namespace=team-a,team-b",
            "--allowed-images",
            "ghcr.io/stockmesh/,postgres",
            "--http-addr",
            "127.0.0.1:9090",
            "--concurrency=2",
            "--leader-election=false",
            "--lease-name",
            "shop-operator",
            "--lease-namespace=ops",
            "--lease-duration-seconds",
            "6",
        ])
        .expect("valid");
        assert_eq!(
            opts,
            Options {
                kubeconfig: Some("/tmp/kc".into()),
                context: Some("kind".into()),
                namespaces: vec!["shop".into(), "team-a".into(), "team-b".into()],
                allowed_images: vec!["ghcr.io/stockmesh/".into(), "postgres".into()],
                http_addr: "127.0.0.1:9090".parse().expect("addr"),
                concurrency: 2,
                leader_election: false,
                lease_name: "shop-operator".into(),
                lease_namespace: Some("ops".into()),
                lease_duration_seconds: 6,
            }
        );
        let defaults = parse(&[]).expect("defaults");
        assert!(defaults.namespaces.is_empty() && defaults.allowed_images.is_empty());
        assert_eq!(defaults.concurrency, 4);
        assert_eq!(defaults.http_addr, "0.0.0.0:8080".parse().expect("addr"));
        assert!(defaults.leader_election, "leader election is on by default");
        assert_eq!(defaults.lease_name, "stockmesh-operator");
        assert_eq!(defaults.lease_duration_seconds, 15);
        assert!(
            parse(&["--leader-election"])
                .expect("bare flag")
                .leader_election
        );
    }

    #[test]
    fn rejects_bad_input_with_a_message() {
        for bad in [
            &["--concurrency", "0"][..],
            &["--http-addr", "nope"],
            &["--kubeconfig"],
            &["--namespace", "Team_A"],
            &["--allowed-images", "a b"],
            &["--leader-election=maybe"],
            &["--lease-name", "Not_A_Name"],
            &["--lease-namespace", "-bad"],
            &["--lease-duration-seconds", "1"],
            &["--frobnicate"],
        ] {
            let err = parse(bad).expect_err("refused").to_string();
            assert!(err.contains("error"), "{bad:?}: {err}");
        }
        let err = parse(&["--frobnicate"]).expect_err("unknown").to_string();
        assert!(err.contains("--frobnicate"), "{err}");
    }
}
