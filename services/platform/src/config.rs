//! Typed configuration from environment variables.
//!
//! A service reads every variable it needs through one [`EnvReader`], which
//! collects *all* problems instead of stopping at the first, so a
//! misconfigured pod prints one error naming every missing or malformed
//! variable. [`CommonConfig`] holds the settings every service shares.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

/// Every configuration problem found at start-up, reported together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration ({} problem", self.problems.len())?;
        if self.problems.len() != 1 {
            write!(f, "s")?;
        }
        write!(f, "):")?;
        for problem in &self.problems {
            write!(f, "\n  - {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Reads typed values from an environment, remembering every failure.
///
/// Getters return a usable value even on failure (the default, or
/// `T::default()`), so reading can carry on; [`EnvReader::finish`] then
/// reports everything at once.
pub struct EnvReader {
    vars: HashMap<String, String>,
    problems: Vec<String>,
}

impl EnvReader {
    /// Reads from the process environment.
    pub fn from_env() -> Self {
        Self::from_map(std::env::vars().collect())
    }

    /// Reads from an explicit map (tests, or a config assembled in code).
    pub fn from_map(vars: HashMap<String, String>) -> Self {
        Self {
            vars,
            problems: Vec::new(),
        }
    }

    fn raw(&self, name: &str) -> Option<&str> {
        self.vars
            .get(name)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    }

    /// A variable that must be present and parse as `T`.
    pub fn required<T>(&mut self, name: &str) -> Option<T>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        match self.raw(name) {
            None => {
                self.problems
                    .push(format!("{name} is required but not set"));
                None
            }
            Some(raw) => {
                let raw = raw.to_owned();
                self.parse(name, &raw)
            }
        }
    }

    /// A variable that must be present; the value is secret and never echoed.
    pub fn required_secret(&mut self, name: &str) -> Option<String> {
        match self.raw(name) {
            None => {
                self.problems
                    .push(format!("{name} is required but not set"));
                None
            }
            Some(raw) => Some(raw.to_owned()),
        }
    }

    /// A variable with a default used when it is absent or empty.
    pub fn with_default<T>(&mut self, name: &str, default: T) -> T
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        match self.raw(name) {
            None => default,
            Some(raw) => {
                let raw = raw.to_owned();
                self.parse(name, &raw).unwrap_or(default)
            }
        }
    }

    /// A variable that may be absent.
    pub fn optional<T>(&mut self, name: &str) -> Option<T>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        let raw = self.raw(name)?.to_owned();
        self.parse(name, &raw)
    }

    /// A duration in milliseconds, with a default.
    pub fn millis(&mut self, name: &str, default: Duration) -> Duration {
        let ms = self.with_default::<u64>(name, default.as_millis() as u64);
        Duration::from_millis(ms)
    }

    /// Records a problem found by a cross-field check.
    pub fn problem(&mut self, message: impl Into<String>) {
        self.problems.push(message.into());
    }

    /// Ends reading: `Ok` only if no variable was missing or malformed.
    pub fn finish(self) -> Result<(), ConfigError> {
        if self.problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError {
                problems: self.problems,
            })
        }
    }

    fn parse<T>(&mut self, name: &str, raw: &str) -> Option<T>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        match raw.parse::<T>() {
            Ok(value) => Some(value),
            Err(err) => {
                // Never echo the value: it may be a secret (a URL with a password).
                self.problems.push(format!("{name} is malformed: {err}"));
                None
            }
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// JSON when stdout is not a terminal, human text when it is.
    Auto,
    Json,
    Text,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "json" => Ok(Self::Json),
            "text" | "pretty" => Ok(Self::Text),
            other => Err(format!("expected auto, json or text, got {other:?}")),
        }
    }
}

/// Tracing export settings (OpenTelemetry).
#[derive(Debug, Clone, PartialEq)]
pub struct OtelConfig {
    /// OTLP/gRPC endpoint; export is off when absent.
    pub endpoint: Option<String>,
    /// Fraction of new root traces that are sampled (parent decisions are kept).
    pub sample_ratio: f64,
    /// `deployment.environment` resource attribute.
    pub environment: String,
    /// Extra resource attributes (`OTEL_RESOURCE_ATTRIBUTES`, `k=v,k=v`).
    pub resource_attributes: Vec<(String, String)>,
}

/// Default drain window of phase 1 of shutdown (`SHUTDOWN_DRAIN_MS`).
pub const DEFAULT_SHUTDOWN_DRAIN: Duration = Duration::from_secs(1);

/// Settings every service shares.
#[derive(Debug, Clone)]
pub struct CommonConfig {
    /// The service's name, used in logs, traces and metrics.
    pub service_name: &'static str,
    /// Address of the HTTP server (API, health, metrics).
    pub http_addr: SocketAddr,
    pub log_format: LogFormat,
    /// `RUST_LOG`-style filter.
    pub log_filter: String,
    /// Phase 1 of shutdown: after SIGTERM (or the preStop hook's `GET
    /// /drain`) the process reports not-ready but keeps serving this long,
    /// so load balancers stop routing to it before its listener closes.
    pub shutdown_drain: Duration,
    /// Phase 3 of shutdown: upper bound for finishing in-flight work once
    /// the listeners are closed.
    pub shutdown_grace: Duration,
    /// Server-side timeout for one request.
    pub request_timeout: Duration,
    /// Requests served at once before new ones are shed with 503/RESOURCE_EXHAUSTED.
    pub max_concurrent_requests: usize,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// `ALLOWED_ORIGINS`: sites besides the request's own host that may
    /// send state-changing requests (see [`crate::csrf`]).
    pub allowed_origins: crate::csrf::AllowedOrigins,
    pub otel: OtelConfig,
}

impl CommonConfig {
    /// Reads the shared settings; `default_http` is the service's local port.
    pub fn read(env: &mut EnvReader, service_name: &'static str, default_http: SocketAddr) -> Self {
        let http_addr = env.with_default("HTTP_ADDR", default_http);
        let log_format = env.with_default("LOG_FORMAT", LogFormat::Auto);
        let log_filter = env.with_default(
            "RUST_LOG",
            "info,sqlx=warn,tower_http=info,h2=warn,hyper=warn,tonic=info".to_owned(),
        );
        // 1 s: enough for a balancer that polls readiness a few times a
        // second (local stacks, tests) while a SIGTERM'd process outside
        // Kubernetes still stops quickly; the chart and the operator set the
        // window Kubernetes needs (endpoint propagation) explicitly.
        let shutdown_drain = env.millis("SHUTDOWN_DRAIN_MS", DEFAULT_SHUTDOWN_DRAIN);
        let shutdown_grace = env.millis("SHUTDOWN_GRACE_MS", Duration::from_secs(20));
        let request_timeout = env.millis("REQUEST_TIMEOUT_MS", Duration::from_secs(10));
        let max_concurrent_requests = env.with_default("MAX_CONCURRENT_REQUESTS", 512usize);
        if max_concurrent_requests == 0 {
            env.problem("MAX_CONCURRENT_REQUESTS must be at least 1");
        }
        let max_body_bytes = env.with_default("MAX_BODY_BYTES", 64 * 1024usize);
        let allowed_origins = match crate::csrf::AllowedOrigins::parse(
            &env.with_default("ALLOWED_ORIGINS", String::new()),
        ) {
            Ok(origins) => origins,
            Err(problem) => {
                env.problem(format!("ALLOWED_ORIGINS is malformed: {problem}"));
                Default::default()
            }
        };
        let otel = read_otel(env);
        Self {
            service_name,
            http_addr,
            log_format,
            log_filter,
            shutdown_drain,
            shutdown_grace,
            request_timeout,
            max_concurrent_requests: max_concurrent_requests.max(1),
            max_body_bytes,
            allowed_origins,
            otel,
        }
    }
}

fn read_otel(env: &mut EnvReader) -> OtelConfig {
    let endpoint = env.optional::<String>("OTEL_EXPORTER_OTLP_ENDPOINT");
    let sdk_disabled = env.with_default("OTEL_SDK_DISABLED", false);
    // OTEL_TRACES_SAMPLER / _ARG as in the OpenTelemetry spec; we support the
    // ratio-based and always on/off samplers, always parent-based.
    let sampler = env.with_default("OTEL_TRACES_SAMPLER", "parentbased_always_on".to_owned());
    let sample_ratio = match sampler.as_str() {
        "always_on" | "parentbased_always_on" => 1.0,
        "always_off" | "parentbased_always_off" => 0.0,
        "traceidratio" | "parentbased_traceidratio" => {
            let ratio = env.with_default("OTEL_TRACES_SAMPLER_ARG", 1.0f64);
            if !(0.0..=1.0).contains(&ratio) {
                env.problem("OTEL_TRACES_SAMPLER_ARG must be between 0 and 1");
            }
            ratio.clamp(0.0, 1.0)
        }
        other => {
            env.problem(format!(
                "OTEL_TRACES_SAMPLER is malformed: unsupported sampler {other:?} \
                 (use parentbased_traceidratio, parentbased_always_on or parentbased_always_off)"
            ));
            1.0
        }
    };
    let resource_attributes = env
        .optional::<String>("OTEL_RESOURCE_ATTRIBUTES")
        .map(|raw| {
            raw.split(',')
                .filter_map(|pair| {
                    let (k, v) = pair.split_once('=')?;
                    Some((k.trim().to_owned(), v.trim().to_owned()))
                })
                .collect()
        })
        .unwrap_or_default();
    OtelConfig {
        endpoint: if sdk_disabled { None } else { endpoint },
        sample_ratio,
        environment: env.with_default("DEPLOYMENT_ENVIRONMENT", "local".to_owned()),
        resource_attributes,
    }
}

/// PostgreSQL settings of one service.
#[derive(Clone)]
pub struct DatabaseConfig {
    /// Connection URL; holds a password, so it is never logged.
    pub url: String,
    pub max_connections: u32,
    pub acquire_timeout: Duration,
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &"<redacted>")
            .field("max_connections", &self.max_connections)
            .field("acquire_timeout", &self.acquire_timeout)
            .finish()
    }
}

impl DatabaseConfig {
    /// Reads `DATABASE_URL`, `DATABASE_MAX_CONNECTIONS`, `DATABASE_ACQUIRE_TIMEOUT_MS`.
    pub fn read(env: &mut EnvReader) -> Self {
        let url = env.required_secret("DATABASE_URL").unwrap_or_default();
        if !(url.is_empty() || url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            env.problem("DATABASE_URL is malformed: expected a postgres:// URL");
        }
        let max_connections = env.with_default("DATABASE_MAX_CONNECTIONS", 10u32);
        if max_connections == 0 {
            env.problem("DATABASE_MAX_CONNECTIONS must be at least 1");
        }
        Self {
            url,
            max_connections: max_connections.max(1),
            acquire_timeout: env.millis("DATABASE_ACQUIRE_TIMEOUT_MS", Duration::from_secs(3)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> EnvReader {
        EnvReader::from_map(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn reports_every_problem_at_once_without_echoing_values() {
        let mut reader = env(&[
            ("HTTP_ADDR", "not-an-address"),
            ("MAX_CONCURRENT_REQUESTS", "lots"),
            ("DATABASE_URL", "mysql://user:hunter2@db/x"),
        ]);
        let _ = CommonConfig::read(&mut reader, "svc", "127.0.0.1:1".parse().unwrap());
        let _ = DatabaseConfig::read(&mut reader);
        let err = reader.finish().unwrap_err();
        let text = err.to_string();
        assert_eq!(err.problems.len(), 3, "{text}");
        assert!(text.contains("HTTP_ADDR is malformed"), "{text}");
        assert!(
            text.contains("MAX_CONCURRENT_REQUESTS is malformed"),
            "{text}"
        );
        assert!(text.contains("DATABASE_URL is malformed"), "{text}");
        assert!(
            !text.contains("hunter2"),
            "secrets must not be echoed: {text}"
        );
    }

    #[test]
    fn missing_required_variable_is_named() {
        let mut reader = env(&[]);
        let _ = DatabaseConfig::read(&mut reader);
        let err = reader.finish().unwrap_err();
        assert_eq!(err.problems, vec!["DATABASE_URL is required but not set"]);
    }

    #[test]
    fn defaults_apply_and_overrides_parse() {
        let mut reader = env(&[
            ("HTTP_ADDR", "0.0.0.0:9000"),
            ("REQUEST_TIMEOUT_MS", "250"),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "k8s.pod.name=p-1, k8s.namespace.name=shop",
            ),
        ]);
        let cfg = CommonConfig::read(&mut reader, "svc", "127.0.0.1:1".parse().unwrap());
        reader.finish().unwrap();
        assert_eq!(cfg.http_addr, "0.0.0.0:9000".parse().unwrap());
        assert_eq!(cfg.request_timeout, Duration::from_millis(250));
        assert_eq!(cfg.shutdown_grace, Duration::from_secs(20));
        assert_eq!(cfg.shutdown_drain, Duration::from_secs(1));
        assert_eq!(cfg.otel.sample_ratio, 0.25);
        assert_eq!(cfg.otel.endpoint, None);
        assert_eq!(
            cfg.otel.resource_attributes,
            vec![
                ("k8s.pod.name".to_owned(), "p-1".to_owned()),
                ("k8s.namespace.name".to_owned(), "shop".to_owned())
            ]
        );
    }

    #[test]
    fn unsupported_sampler_is_rejected() {
        let mut reader = env(&[("OTEL_TRACES_SAMPLER", "jaeger_remote")]);
        let _ = CommonConfig::read(&mut reader, "svc", "127.0.0.1:1".parse().unwrap());
        assert!(reader.finish().is_err());
    }
}
