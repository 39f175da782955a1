//! Web console configuration, read from the environment at start-up.

use stockmesh_platform::auth::AuthConfig;
use stockmesh_platform::config::{CommonConfig, ConfigError, EnvReader};

/// Local default port (beside the services' 8081-8085).
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8086";

/// The services the system page reports on, in the order it shows them.
pub const SERVICES: [&str; 5] = ["user", "product", "inventory", "order", "notification"];

#[derive(Debug, Clone)]
pub struct WebConfig {
    pub common: CommonConfig,
    /// Verifies the caller of the system page (administrators only).
    pub auth: AuthConfig,
    /// `<SERVICE>_HTTP_URL`: each service's HTTP base URL inside the
    /// cluster, where its `/readyz` and `/metrics` answer. A service
    /// without one shows as "not configured".
    pub service_urls: Vec<(&'static str, Option<String>)>,
    /// `JAEGER_UI_URL`: the Jaeger UI an order's trace link opens
    /// (`<url>/trace/<trace id>`); no links without it.
    pub jaeger_ui_url: Option<String>,
}

impl WebConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::read(EnvReader::from_env())
    }

    pub fn read(mut env: EnvReader) -> Result<Self, ConfigError> {
        let default_http = DEFAULT_HTTP_ADDR.parse().expect("valid default address");
        let common = CommonConfig::read(&mut env, "web", default_http);
        let auth = AuthConfig::read(&mut env);
        let service_urls = SERVICES
            .iter()
            .map(|name| {
                let var = format!("{}_HTTP_URL", name.to_ascii_uppercase());
                let url = env
                    .optional::<String>(&var)
                    .map(|u| u.trim_end_matches('/').to_owned());
                if let Some(url) = &url
                    && !(url.starts_with("http://") || url.starts_with("https://"))
                {
                    env.problem(format!(
                        "{var} is malformed: expected an http:// or https:// URL"
                    ));
                }
                (*name, url)
            })
            .collect();
        let jaeger_ui_url = env
            .optional::<String>("JAEGER_UI_URL")
            .map(|u| u.trim_end_matches('/').to_owned());
        if let Some(url) = &jaeger_ui_url
            && !(url.starts_with("http://") || url.starts_with("https://") || url.starts_with('/'))
        {
            env.problem("JAEGER_UI_URL is malformed: expected an http(s):// URL or a path");
        }
        env.finish()?;
        Ok(Self {
            common,
            auth,
            service_urls,
            jaeger_ui_url,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> EnvReader {
        let public = stockmesh_platform::auth::generate_keypair()
            .expect("keys")
            .1;
        let mut vars: std::collections::HashMap<String, String> =
            [("JWT_PUBLIC_KEY".to_owned(), public)]
                .into_iter()
                .collect();
        for (k, v) in pairs {
            vars.insert((*k).to_owned(), (*v).to_owned());
        }
        EnvReader::from_map(vars)
    }

    #[test]
    fn service_urls_are_optional_and_checked() {
        let config =
            WebConfig::read(env(&[("ORDER_HTTP_URL", "http://order:8080/")])).expect("valid");
        assert_eq!(
            config.common.http_addr,
            DEFAULT_HTTP_ADDR.parse().expect("addr")
        );
        let order = config.service_urls.iter().find(|(n, _)| *n == "order");
        assert_eq!(
            order,
            Some(&("order", Some("http://order:8080".to_owned())))
        );
        assert!(
            config
                .service_urls
                .iter()
                .any(|(n, u)| *n == "user" && u.is_none())
        );
        let err = WebConfig::read(env(&[
            ("USER_HTTP_URL", "user:8080"),
            ("JAEGER_UI_URL", "jaeger"),
        ]))
        .expect_err("malformed");
        assert_eq!(err.problems.len(), 2, "{err}");
    }
}
