//! Issuing tokens: EdDSA (Ed25519) JWTs with `sub`, `role`, `iss`, `aud`,
//! `exp`, `iat`, `jti`. Only this service holds the private key.

use std::time::Duration;

use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use stockmesh_platform::auth::{Claims, Role};
use uuid::Uuid;

use crate::error::UserError;

#[derive(Clone)]
pub struct Issuer {
    key: EncodingKey,
    issuer: String,
    audience: String,
    ttl: Duration,
}

impl Issuer {
    pub fn new(
        private_key_pem: &str,
        issuer: &str,
        audience: &str,
        ttl: Duration,
    ) -> anyhow::Result<Self> {
        let key = EncodingKey::from_ed_pem(private_key_pem.as_bytes())
            .map_err(|e| anyhow::anyhow!("JWT private key: {e}"))?;
        Ok(Self {
            key,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            ttl,
        })
    }

    /// A signed token for `user_id` and when it expires.
    pub fn issue(&self, user_id: Uuid, role: Role) -> Result<(String, DateTime<Utc>), UserError> {
        let now = Utc::now();
        let expires =
            now + chrono::Duration::from_std(self.ttl).unwrap_or(chrono::Duration::hours(1));
        let claims = Claims {
            sub: user_id,
            role,
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            exp: expires.timestamp(),
            iat: now.timestamp(),
            jti: Uuid::now_v7(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, &self.key)
            .map_err(|e| UserError::Internal(format!("signing failed: {e}")))?;
        Ok((token, expires))
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }
}
