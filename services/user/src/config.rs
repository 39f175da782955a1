//! User service configuration, read from the environment at start-up.

use std::num::NonZeroUsize;
use std::time::Duration;

use stockmesh_platform::auth::{AuthConfig, read_pem};
use stockmesh_platform::config::{CommonConfig, ConfigError, DatabaseConfig, EnvReader};

use crate::backoff::BackoffPolicy;
use crate::client_ip::TrustedProxies;
use crate::device::DEVICE_AUDIENCE;
use crate::password::HashLimits;

pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8081";

/// The first administrator, created at start-up when absent.
#[derive(Clone)]
pub struct AdminBootstrap {
    pub email: String,
    pub password: String,
}

impl std::fmt::Debug for AdminBootstrap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminBootstrap")
            .field("email", &self.email)
            .finish_non_exhaustive()
    }
}

/// Abuse limits: per-client rate limits on login and registration, the
/// per-account guessing backoff, and how much memory the limiters may hold.
#[derive(Debug, Clone, Copy)]
pub struct LoginLimits {
    /// Login attempts per client address: `per_client` per `window`.
    pub window: Duration,
    pub per_client: u32,
    /// Registrations per client address: `register_per_client` per
    /// `register_window`.
    pub register_window: Duration,
    pub register_per_client: u32,
    /// Failed logins on one account (or one device) before each further
    /// attempt must wait, and how long.
    pub backoff: BackoffPolicy,
    /// Lifetime of the device cookie that exempts a browser from its
    /// accounts' backoff.
    pub device_ttl: Duration,
    /// Keys each limiter holds at most (least recently used go first).
    pub max_keys: NonZeroUsize,
}

#[derive(Clone)]
pub struct UserConfig {
    pub common: CommonConfig,
    pub database: DatabaseConfig,
    pub auth: AuthConfig,
    /// Ed25519 private key (PEM) that signs tokens.
    pub signing_key_pem: String,
    /// Lifetime of an access token: how long a session's end can take to
    /// reach the services that verify tokens offline.
    pub token_ttl: Duration,
    /// Lifetime of a session (and so of its refresh tokens) from login;
    /// refreshing does not extend it.
    pub session_ttl: Duration,
    /// Adds `Secure` to the session cookie (behind TLS).
    pub cookie_secure: bool,
    pub admin: Option<AdminBootstrap>,
    pub login_limits: LoginLimits,
    /// Proxies whose `X-Forwarded-For` entries name the client (the Ingress).
    pub trusted_proxies: TrustedProxies,
    /// Bounds on concurrent argon2 work.
    pub hash_limits: HashLimits,
}

impl std::fmt::Debug for UserConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserConfig")
            .field("common", &self.common)
            .field("database", &self.database)
            .field("auth", &self.auth)
            .field("token_ttl", &self.token_ttl)
            .field("session_ttl", &self.session_ttl)
            .field("admin", &self.admin)
            .field("login_limits", &self.login_limits)
            .field("trusted_proxies", &self.trusted_proxies.to_string())
            .field("hash_limits", &self.hash_limits)
            .finish_non_exhaustive()
    }
}

impl UserConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::read(EnvReader::from_env())
    }

    pub fn read(mut env: EnvReader) -> Result<Self, ConfigError> {
        let common =
            CommonConfig::read(&mut env, "user", DEFAULT_HTTP_ADDR.parse().expect("valid"));
        let database = DatabaseConfig::read(&mut env);
        let auth = AuthConfig::read(&mut env);
        let signing_key_pem = read_pem(&mut env, "JWT_PRIVATE_KEY").unwrap_or_default();
        if !signing_key_pem.is_empty()
            && jsonwebtoken::EncodingKey::from_ed_pem(signing_key_pem.as_bytes()).is_err()
        {
            env.problem(
                "JWT_PRIVATE_KEY is malformed: expected an Ed25519 private key (PKCS#8 PEM)",
            );
        }
        // Short: other services verify offline, so this is how long a
        // logout, demotion or password change takes to reach them.
        let token_ttl = Duration::from_secs(env.with_default("JWT_TTL_SECONDS", 300u64));
        let session_ttl =
            Duration::from_secs(env.with_default("SESSION_TTL_SECONDS", 7 * 24 * 3600u64));
        if token_ttl.is_zero() || session_ttl.is_zero() {
            env.problem("JWT_TTL_SECONDS and SESSION_TTL_SECONDS must be at least 1");
        }
        let cookie_secure = env.with_default("AUTH_COOKIE_SECURE", false);
        let admin_email = env.optional::<String>("STOCKMESH_ADMIN_EMAIL");
        let admin_password = env.optional::<String>("STOCKMESH_ADMIN_PASSWORD");
        let admin = match (admin_email, admin_password) {
            (Some(email), Some(password)) => Some(AdminBootstrap { email, password }),
            (None, None) => None,
            _ => {
                env.problem(
                    "STOCKMESH_ADMIN_EMAIL and STOCKMESH_ADMIN_PASSWORD must be set together",
                );
                None
            }
        };
        if auth.audience == DEVICE_AUDIENCE {
            env.problem(format!(
                "JWT_AUDIENCE must not be {DEVICE_AUDIENCE}: that audience marks device cookies"
            ));
        }
        let login_limits = read_limits(&mut env);
        let trusted_proxies = env.with_default("TRUSTED_PROXIES", TrustedProxies::none());
        // The old switch trusted the left-most X-Forwarded-For entry, which
        // the client writes: refuse it rather than silently change meaning.
        if env.with_default("TRUST_FORWARDED_FOR", false) {
            env.problem(
                "TRUST_FORWARDED_FOR is no longer supported (it believed an address the client \
                 writes); set TRUSTED_PROXIES to the proxies' networks instead, e.g. 127.0.0.1/32",
            );
        }
        let hash_limits = HashLimits {
            concurrency: env.with_default(
                "PASSWORD_HASH_CONCURRENCY",
                HashLimits::default_concurrency(),
            ),
            queue_max: env.with_default("PASSWORD_HASH_QUEUE_MAX", 32usize),
            queue_timeout: env.millis("PASSWORD_HASH_QUEUE_TIMEOUT_MS", Duration::from_secs(2)),
        };
        if hash_limits.concurrency == 0 {
            env.problem("PASSWORD_HASH_CONCURRENCY must be at least 1");
        }
        env.finish()?;
        Ok(Self {
            common,
            database,
            auth,
            signing_key_pem,
            token_ttl,
            session_ttl,
            cookie_secure,
            admin,
            login_limits,
            trusted_proxies,
            hash_limits,
        })
    }
}

fn read_limits(env: &mut EnvReader) -> LoginLimits {
    let limits = LoginLimits {
        window: env.millis("LOGIN_RATE_WINDOW_MS", Duration::from_secs(60)),
        per_client: env.with_default("LOGIN_RATE_PER_CLIENT", 20u32),
        register_window: env.millis("REGISTER_RATE_WINDOW_MS", Duration::from_secs(60)),
        register_per_client: env.with_default("REGISTER_RATE_PER_CLIENT", 20u32),
        backoff: BackoffPolicy {
            after_failures: env.with_default("LOGIN_BACKOFF_AFTER_FAILURES", 5u32),
            base: env.millis("LOGIN_BACKOFF_BASE_MS", Duration::from_secs(1)),
            max: env.millis("LOGIN_BACKOFF_MAX_MS", Duration::from_secs(15 * 60)),
            forget_after: env.millis("LOGIN_BACKOFF_FORGET_MS", Duration::from_secs(3600)),
        },
        device_ttl: Duration::from_secs(
            env.with_default("LOGIN_DEVICE_TTL_SECONDS", 90 * 24 * 3600u64),
        ),
        max_keys: env.with_default(
            "RATE_LIMIT_MAX_KEYS",
            NonZeroUsize::new(65_536).unwrap_or(NonZeroUsize::MIN),
        ),
    };
    if limits.per_client == 0 || limits.register_per_client == 0 {
        env.problem("LOGIN_RATE_PER_CLIENT and REGISTER_RATE_PER_CLIENT must be at least 1");
    }
    if limits.window.is_zero() || limits.register_window.is_zero() {
        env.problem("LOGIN_RATE_WINDOW_MS and REGISTER_RATE_WINDOW_MS must be positive");
    }
    if limits.backoff.after_failures == 0 {
        env.problem("LOGIN_BACKOFF_AFTER_FAILURES must be at least 1");
    }
    if limits.backoff.base > limits.backoff.max {
        env.problem("LOGIN_BACKOFF_BASE_MS must not exceed LOGIN_BACKOFF_MAX_MS");
    }
    limits
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn read(vars: &[(&str, &str)]) -> Result<UserConfig, ConfigError> {
        let (private, public) = stockmesh_platform::auth::generate_keypair().unwrap();
        let mut map: HashMap<String, String> = [
            ("DATABASE_URL", "postgres://u:p@127.0.0.1/db"),
            ("JWT_PRIVATE_KEY", private.as_str()),
            ("JWT_PUBLIC_KEY", public.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        for (k, v) in vars {
            map.insert((*k).to_owned(), (*v).to_owned());
        }
        UserConfig::read(EnvReader::from_map(map))
    }

    #[test]
    fn defaults_and_overrides() {
        let config = read(&[]).unwrap();
        assert!(config.trusted_proxies.is_empty());
        assert!((1..=4).contains(&config.hash_limits.concurrency));
        assert_eq!(config.login_limits.register_per_client, 20);
        assert_eq!(config.token_ttl, Duration::from_secs(300));
        assert_eq!(config.session_ttl, Duration::from_secs(7 * 24 * 3600));
        let config = read(&[
            ("TRUSTED_PROXIES", "10.0.0.0/8, 127.0.0.1/32"),
            ("PASSWORD_HASH_CONCURRENCY", "3"),
            ("PASSWORD_HASH_QUEUE_TIMEOUT_MS", "250"),
            ("TRUST_FORWARDED_FOR", "false"),
        ])
        .unwrap();
        assert_eq!(
            config.trusted_proxies.to_string(),
            "10.0.0.0/8,127.0.0.1/32"
        );
        assert_eq!(config.hash_limits.concurrency, 3);
        assert_eq!(config.hash_limits.queue_timeout, Duration::from_millis(250));
    }

    #[test]
    fn unsafe_or_malformed_settings_are_refused() {
        for (vars, needle) in [
            (vec![("TRUST_FORWARDED_FOR", "true")], "TRUST_FORWARDED_FOR"),
            (vec![("TRUSTED_PROXIES", "10.0.0.0/33")], "TRUSTED_PROXIES"),
            (
                vec![("PASSWORD_HASH_CONCURRENCY", "0")],
                "PASSWORD_HASH_CONCURRENCY",
            ),
            (vec![("RATE_LIMIT_MAX_KEYS", "0")], "RATE_LIMIT_MAX_KEYS"),
            (
                vec![("REGISTER_RATE_PER_CLIENT", "0")],
                "REGISTER_RATE_PER_CLIENT",
            ),
            (
                vec![
                    ("LOGIN_BACKOFF_BASE_MS", "10"),
                    ("LOGIN_BACKOFF_MAX_MS", "5"),
                ],
                "LOGIN_BACKOFF_BASE_MS",
            ),
            (vec![("JWT_AUDIENCE", "stockmesh-device")], "JWT_AUDIENCE"),
            (vec![("JWT_TTL_SECONDS", "0")], "JWT_TTL_SECONDS"),
            (vec![("SESSION_TTL_SECONDS", "0")], "SESSION_TTL_SECONDS"),
        ] {
            let err = read(&vars).expect_err("refused").to_string();
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }
}
