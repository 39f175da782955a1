//! Command line of `stockmesh-operator` (clap; every option also has an
//! environment variable, for the chart and for local runs).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

const AFTER_HELP: &str = "\
Environment: RUST_LOG (log filter, default info), LOG_FORMAT (json or text;
default json unless stdout is a terminal), POD_NAME (the event reporting
instance), OTEL_EXPORTER_OTLP_ENDPOINT (export reconcile spans).

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
            }
        );
        let defaults = parse(&[]).expect("defaults");
        assert!(defaults.namespaces.is_empty() && defaults.allowed_images.is_empty());
        assert_eq!(defaults.concurrency, 4);
        assert_eq!(defaults.http_addr, "0.0.0.0:8080".parse().expect("addr"));
    }

    #[test]
    fn rejects_bad_input_with_a_message() {
        for bad in [
            &["--concurrency", "0"][..],
            &["--http-addr", "nope"],
            &["--kubeconfig"],
            &["--namespace", "Team_A"],
            &["--allowed-images", "a b"],
            &["--frobnicate"],
        ] {
            let err = parse(bad).expect_err("refused").to_string();
            assert!(err.contains("error"), "{bad:?}: {err}");
        }
        let err = parse(&["--frobnicate"]).expect_err("unknown").to_string();
        assert!(err.contains("--frobnicate"), "{err}");
    }
}
