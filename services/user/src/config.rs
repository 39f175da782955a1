//! User service configuration, read from the environment at start-up.

use std::time::Duration;

use stockmesh_platform::auth::{AuthConfig, read_pem};
use stockmesh_platform::config::{CommonConfig, ConfigError, DatabaseConfig, EnvReader};

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

/// Login rate limits: attempts per window, per client address and per account.
#[derive(Debug, Clone, Copy)]
pub struct LoginLimits {
    pub window: Duration,
    pub per_client: u32,
    pub per_account: u32,
}

#[derive(Clone)]
pub struct UserConfig {
    pub common: CommonConfig,
    pub database: DatabaseConfig,
    pub auth: AuthConfig,
    /// Ed25519 private key (PEM) that signs tokens.
    pub signing_key_pem: String,
    pub token_ttl: Duration,
    /// Adds `Secure` to the session cookie (behind TLS).
    pub cookie_secure: bool,
    pub admin: Option<AdminBootstrap>,
    pub login_limits: LoginLimits,
    /// Use the first `X-Forwarded-For` address as the client (behind a trusted proxy).
    pub trust_forwarded_for: bool,
}

impl std::fmt::Debug for UserConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserConfig")
            .field("common", &self.common)
            .field("database", &self.database)
            .field("auth", &self.auth)
            .field("token_ttl", &self.token_ttl)
            .field("admin", &self.admin)
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
        let token_ttl = Duration::from_secs(env.with_default("JWT_TTL_SECONDS", 3600u64));
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
        let login_limits = LoginLimits {
            window: env.millis("LOGIN_RATE_WINDOW_MS", Duration::from_secs(60)),
            per_client: env.with_default("LOGIN_RATE_PER_CLIENT", 20u32),
            per_account: env.with_default("LOGIN_RATE_PER_ACCOUNT", 5u32),
        };
        let trust_forwarded_for = env.with_default("TRUST_FORWARDED_FOR", false);
        env.finish()?;
        Ok(Self {
            common,
            database,
            auth,
            signing_key_pem,
            token_ttl,
            cookie_secure,
            admin,
            login_limits,
            trust_forwarded_for,
        })
    }
}
