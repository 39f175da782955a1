//! The Kubernetes versions the operator supports, the start-up check of the
//! API server's version, and the API client (with a real user agent).
//!
//! **Supported: Kubernetes 1.29 to 1.37**, the range of the Helm charts
//! (`kubeVersion: >=1.29.0-0`). 1.29 is the first release where everything
//! the objects rely on is on by default and the CRD's validation rules
//! (`x-kubernetes-validations`, CEL) are GA; gRPC probes (inventory) and a
//! StatefulSet's `persistentVolumeClaimRetentionPolicy` (what
//! `keepVolumes: false` needs) are on by default since 1.27. The objects
//! are validated against the 1.33 and 1.37 API schemas. Older servers get a
//! clear warning at start-up, not a refusal: on 1.26 (tried on a real node)
//! everything but the retention policy works, the server drops that field
//! (PVCs are then kept whatever `keepVolumes` says) and the drift check
//! accepts that (see [`crate::drift`]).

use http::{HeaderValue, header::USER_AGENT};
use k8s_openapi::apimachinery::pkg::version::Info;
use kube::{Client, Config};
use tracing::{info, warn};

/// Oldest supported Kubernetes minor version (1.x).
pub const MIN_MINOR: u32 = 29;
/// Newest Kubernetes minor version the objects are validated against.
pub const MAX_TESTED_MINOR: u32 = 37;

/// The supported range, as the README and the start-up log state it.
pub fn supported_range() -> String {
    format!("1.{MIN_MINOR} to 1.{MAX_TESTED_MINOR}")
}

/// `stockmesh-operator/<version>`: the user agent of every API request (in
/// the API server's audit log and metrics).
pub fn user_agent() -> String {
    format!("stockmesh-operator/{}", env!("CARGO_PKG_VERSION"))
}

/// The API client for a configuration: every request carries
/// [`user_agent`] (kube's `Config::headers`, sent with every request).
pub fn client(mut config: Config) -> Result<Client, kube::Error> {
    config
        .headers
        .retain(|(name, _)| name.as_str() != USER_AGENT.as_str());
    let value = HeaderValue::from_str(&user_agent())
        .map_err(|e| kube::Error::HttpError(http::Error::from(e)))?;
    config.headers.push((USER_AGENT, value));
    Client::try_from(config)
}

/// How a server version relates to the supported range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Support {
    Supported,
    /// Older than [`MIN_MINOR`]: warned about at start-up.
    TooOld,
    /// Newer than [`MAX_TESTED_MINOR`]: expected to work (only GA APIs).
    Newer,
    /// The version could not be read.
    Unknown,
}

/// The (major, minor) of a server: from `major`/`minor` (`"1"`, `"29+"`),
/// else from `gitVersion` (`v1.29.3-gke.100`).
pub fn version_of(info: &Info) -> Option<(u32, u32)> {
    fn digits(s: &str) -> Option<u32> {
        let d: String = s.chars().take_while(char::is_ascii_digit).collect();
        d.parse().ok()
    }
    if let (Some(major), Some(minor)) = (digits(&info.major), digits(&info.minor)) {
        return Some((major, minor));
    }
    let mut parts = info.git_version.trim_start_matches('v').split('.');
    Some((digits(parts.next()?)?, digits(parts.next()?)?))
}

/// Where a server version stands.
pub fn assess(version: Option<(u32, u32)>) -> Support {
    match version {
        None => Support::Unknown,
        Some((major, _)) if major < 1 => Support::TooOld,
        Some((1, minor)) if minor < MIN_MINOR => Support::TooOld,
        Some((1, minor)) if minor <= MAX_TESTED_MINOR => Support::Supported,
        Some(_) => Support::Newer,
    }
}

/// Asks the API server for its version and logs it against the supported
/// range: a warning below it (what breaks), a note above it. Never fails
/// start-up.
pub async fn check_server_version(client: &Client) -> Support {
    let range = supported_range();
    let info = match client.apiserver_version().await {
        Ok(info) => info,
        Err(e) => {
            warn!(error = %e, supported = %range, "could not read the Kubernetes API server version");
            return Support::Unknown;
        }
    };
    let support = assess(version_of(&info));
    let server = info.git_version.as_str();
    match support {
        Support::Supported => {
            info!(server, supported = %range, "Kubernetes API server version is supported");
        }
        Support::TooOld => warn!(
            server,
            supported = %range,
            "UNSUPPORTED Kubernetes version: older than 1.{MIN_MINOR}. The operator runs, but the CRD's validation rules may not be enforced (<1.25), inventory's gRPC probes need 1.24+, and before 1.27 the server drops spec.persistentVolumeClaimRetentionPolicy of the StatefulSets, so data volumes are kept whatever keepVolumes says; upgrade the cluster"
        ),
        Support::Newer => info!(
            server,
            supported = %range,
            "Kubernetes API server is newer than the newest version tested; expected to work (only GA APIs are used)"
        ),
        Support::Unknown => warn!(
            server,
            supported = %range,
            "could not parse the Kubernetes API server version"
        ),
    }
    support
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(major: &str, minor: &str, git: &str) -> Info {
        Info {
            major: major.into(),
            minor: minor.into(),
            git_version: git.into(),
            ..Default::default()
        }
    }

    #[test]
    fn versions_are_read_from_every_shape_servers_report() {
        assert_eq!(version_of(&info("1", "29", "v1.29.0")), Some((1, 29)));
        assert_eq!(
            version_of(&info("1", "26+", "v1.26.15-eks-1")),
            Some((1, 26))
        );
        assert_eq!(version_of(&info("", "", "v1.31.2-gke.100")), Some((1, 31)));
        assert_eq!(version_of(&info("", "", "")), None);
    }

    #[test]
    fn the_range_starts_at_the_charts_minimum() {
        assert_eq!(assess(Some((1, 26))), Support::TooOld);
        assert_eq!(assess(Some((1, 28))), Support::TooOld);
        assert_eq!(assess(Some((1, 29))), Support::Supported);
        assert_eq!(assess(Some((1, 37))), Support::Supported);
        assert_eq!(assess(Some((1, 38))), Support::Newer);
        assert_eq!(assess(Some((2, 0))), Support::Newer);
        assert_eq!(assess(None), Support::Unknown);
        // The charts declare the same minimum.
        for chart in ["stockmesh", "stockmesh-operator"] {
            // Run time, not `env!`: the binary may come from another checkout.
            let dir = std::env::var("CARGO_MANIFEST_DIR")
                .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned());
            let path = format!("{dir}/../charts/{chart}/Chart.yaml");
            let text = std::fs::read_to_string(&path).expect("Chart.yaml");
            assert!(
                text.contains(&format!("kubeVersion: \">=1.{MIN_MINOR}.0-0\"")),
                "{chart}: kubeVersion differs from the operator's minimum 1.{MIN_MINOR}"
            );
        }
    }

    #[test]
    fn the_user_agent_names_the_operator_and_its_version() {
        assert_eq!(
            user_agent(),
            format!("stockmesh-operator/{}", env!("CARGO_PKG_VERSION"))
        );
    }
}
