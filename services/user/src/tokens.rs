//! Issuing access tokens: EdDSA (Ed25519) JWTs with `sub`, `role`, `iss`,
//! `aud`, `exp`, `iat`, `jti` (the claims every service reads) and `sid`,
//! the session they belong to (read by this service only, see
//! `sessions.rs`). Only this service holds the private key.

use std::time::Duration;

use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use stockmesh_platform::auth::Role;
use uuid::Uuid;

use crate::error::UserError;

/// The claims of the access tokens this service issues. A superset of the
/// platform's `Claims`: other services decode the same token and ignore
/// `sid`; this service requires it, so a token without a session (minted
/// by hand, or issued before sessions existed) is refused here.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccessClaims {
    pub sub: Uuid,
    /// The role at issue time. Other services trust it until `exp`; this
    /// service reads the account's current role instead.
    pub role: Role,
    pub iss: String,
    pub aud: String,
    pub exp: i64,
    pub iat: i64,
    pub jti: Uuid,
    /// The session (`sessions.id`) the token was issued for.
    pub sid: Uuid,
}

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

    /// A signed access token for `user_id` in session `sid` and when it
    /// expires: after the configured lifetime, but never after the session
    /// itself ends (`not_after`), so no token outlives its session.
    pub fn issue(
        &self,
        user_id: Uuid,
        role: Role,
        sid: Uuid,
        not_after: DateTime<Utc>,
    ) -> Result<(String, DateTime<Utc>), UserError> {
        let now = Utc::now();
        let expires = (now
            + chrono::Duration::from_std(self.ttl).unwrap_or(chrono::Duration::minutes(5)))
        .min(not_after);
        let claims = AccessClaims {
            sub: user_id,
            role,
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            exp: expires.timestamp(),
            iat: now.timestamp(),
            jti: Uuid::now_v7(),
            sid,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, &self.key)
            .map_err(|e| UserError::Internal(format!("signing failed: {e}")))?;
        Ok((token, expires))
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stockmesh_platform::auth::{AuthConfig, Verifier, generate_keypair};

    #[test]
    fn access_tokens_carry_their_session_and_verify_offline() {
        let (private, public) = generate_keypair().unwrap();
        let issuer = Issuer::new(
            &private,
            "stockmesh",
            "stockmesh-api",
            Duration::from_secs(300),
        )
        .unwrap();
        let verifier = Verifier::new(&AuthConfig {
            public_key_pem: public,
            issuer: "stockmesh".into(),
            audience: "stockmesh-api".into(),
        })
        .unwrap();
        let (user, sid) = (Uuid::now_v7(), Uuid::now_v7());
        let far = Utc::now() + chrono::Duration::days(1);
        let (token, expires) = issuer.issue(user, Role::Admin, sid, far).unwrap();
        // Other services: the platform claims, no lookup.
        let offline = verifier.verify(&token).unwrap();
        assert_eq!((offline.sub, offline.role), (user, Role::Admin));
        assert_eq!(offline.exp - offline.iat, 300);
        // This service: the session too.
        let own: AccessClaims = verifier.verify_as(&token).unwrap();
        assert_eq!(own.sid, sid);
        assert_eq!(own.exp, expires.timestamp());

        // A session ending sooner caps the token.
        let soon = Utc::now() + chrono::Duration::seconds(30);
        let (token, expires) = issuer.issue(user, Role::User, sid, soon).unwrap();
        assert_eq!(expires, soon);
        let own: AccessClaims = verifier.verify_as(&token).unwrap();
        assert_eq!(own.exp, soon.timestamp());
    }
}
