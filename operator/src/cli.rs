//! Command line of `stockmesh-operator` (a small hand-rolled parser).

use std::net::SocketAddr;
use std::path::PathBuf;

pub const HELP: &str = "\
stockmesh-operator: reconciles InventorySystem resources (stockmesh.io/v1alpha1)
into PostgreSQL, RabbitMQ and the five stockmesh services.

USAGE:
    stockmesh-operator [OPTIONS]

OPTIONS:
    --kubeconfig <PATH>     Kubeconfig file to use. Default: in-cluster service
                            account when running in a pod, else $KUBECONFIG or
                            ~/.kube/config.
    --context <NAME>        Kubeconfig context (default: the current context).
    --namespace <NS[,NS]>   Watch only these namespaces (repeatable or
                            comma-separated; default: all namespaces). A Role
                            in each is then enough (chart: watchNamespaces).
    --allowed-images <LIST> Registries/repositories the images of a spec may
                            come from, comma-separated (`ghcr.io/acme/` for a
                            path, `postgres` for a repository, `postgres:16.4`
                            for one image); a spec choosing another image is
                            InvalidSpec. Default: any image.
    --http-addr <ADDR>      Address of /metrics, /healthz and /readyz
                            (default 0.0.0.0:8080).
    --concurrency <N>       InventorySystems reconciled in parallel (default 4).
    -h, --help              Print this help.
    -V, --version           Print the version.

ENVIRONMENT:
    RUST_LOG                Log filter (default: info).
    LOG_FORMAT              json or text (default: json unless stdout is a terminal).
    POD_NAME                Reported as the event reporting instance.

BEFORE THE FIRST RUN, install the CRD:
    kubectl apply -f k8s/crd/inventorysystem.yaml
RUN AGAINST A CLUSTER FROM YOUR MACHINE:
    cargo run -p stockmesh-operator -- --kubeconfig ~/.kube/config --context kind-stockmesh
THEN CREATE A SYSTEM:
    kubectl apply -f k8s/examples/minimal.yaml && kubectl get invsys -w
";

/// Parsed options.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
    /// Namespaces to watch; empty: every namespace.
    pub namespaces: Vec<String>,
    /// `--allowed-images` entries; empty: any image.
    pub allowed_images: Vec<String>,
    pub http_addr: SocketAddr,
    pub concurrency: u16,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            kubeconfig: None,
            context: None,
            namespaces: Vec::new(),
            allowed_images: Vec::new(),
            http_addr: SocketAddr::from(([0, 0, 0, 0], 8080)),
            concurrency: 4,
        }
    }
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Run(Options),
    Help,
    Version,
}

/// Parses the arguments (without the program name).
pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Command, String> {
    let mut opts = Options::default();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| -> Result<String, String> {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            "--kubeconfig" => opts.kubeconfig = Some(PathBuf::from(value("--kubeconfig")?)),
            "--context" => opts.context = Some(value("--context")?),
            "--namespace" | "-n" => {
                for ns in list(&value("--namespace")?) {
                    if !valid_namespace(&ns) {
                        return Err(format!(
                            "--namespace {ns:?} is not a namespace name (a DNS label)"
                        ));
                    }
                    opts.namespaces.push(ns);
                }
            }
            "--allowed-images" => {
                let entries = list(&value("--allowed-images")?);
                if entries.is_empty() {
                    return Err("--allowed-images needs at least one entry".into());
                }
                opts.allowed_images.extend(entries);
            }
            "--http-addr" => {
                let v = value("--http-addr")?;
                opts.http_addr = v.parse().map_err(|_| {
                    format!("--http-addr {v:?} is not an address like 0.0.0.0:8080")
                })?;
            }
            "--concurrency" => {
                let v = value("--concurrency")?;
                opts.concurrency = v.parse().ok().filter(|n| *n >= 1).ok_or_else(|| {
                    format!("--concurrency {v:?} must be a number from 1 to 65535")
                })?;
            }
            other => return Err(format!("unknown argument {other:?} (see --help)")),
        }
    }
    Ok(Command::Run(opts))
}

/// The non-empty items of a comma-separated value.
fn list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A Kubernetes namespace name: a DNS label.
fn valid_namespace(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<String> {
        s.iter().map(|a| (*a).to_owned()).collect()
    }

    #[test]
    fn parses_every_option_in_both_forms() {
        let cmd = parse(args(&[
            "--kubeconfig",
            "/tmp/kc",
            "--context=kind",
            "-n",
            "shop",
            "--namespace=team-a,team-b",
            "--allowed-images",
            "ghcr.io/stockmesh/, postgres",
            "--http-addr",
            "127.0.0.1:9090",
            "--concurrency=2",
        ]))
        .expect("valid");
        assert_eq!(
            cmd,
            Command::Run(Options {
                kubeconfig: Some("/tmp/kc".into()),
                context: Some("kind".into()),
                namespaces: vec!["shop".into(), "team-a".into(), "team-b".into()],
                allowed_images: vec!["ghcr.io/stockmesh/".into(), "postgres".into()],
                http_addr: "127.0.0.1:9090".parse().expect("addr"),
                concurrency: 2,
            })
        );
        assert_eq!(parse(args(&[])), Ok(Command::Run(Options::default())));
        assert_eq!(parse(args(&["--help"])), Ok(Command::Help));
    }

    #[test]
    fn rejects_bad_input_with_a_message() {
        assert!(parse(args(&["--concurrency", "0"])).is_err());
        assert!(parse(args(&["--http-addr", "nope"])).is_err());
        assert!(parse(args(&["--kubeconfig"])).is_err());
        assert!(parse(args(&["--namespace", "Team_A"])).is_err());
        assert!(parse(args(&["--allowed-images", ","])).is_err());
        let err = parse(args(&["--frobnicate"])).expect_err("unknown");
        assert!(err.contains("--frobnicate"));
    }
}
