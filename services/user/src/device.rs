//! Device cookies: proof that a browser has logged into an account before.
//!
//! After a successful login the response sets `stockmesh_device`, an EdDSA
//! JWT signed with the service's token key, naming the account (`sub`) and
//! a random device id (`jti`), with its own audience (`stockmesh-device`,
//! so it is never accepted as an access token, and an access token is
//! never accepted as one) and a long lifetime. It is HttpOnly,
//! `SameSite=Strict` and scoped to the login path, so it travels with
//! nothing else. A login that presents a valid device cookie for the
//! account it names is exempt from that account's guessing backoff (see
//! `backoff.rs`). Why a cookie and not "an address that logged in before":
//! addresses are shared (the Ingress, office and carrier NAT, where the
//! attacker may sit next to the owner) and they change (mobile networks),
//! while only a browser the owner used holds the cookie. This is OWASP's
//! "device cookies" scheme.

use std::time::Duration;

use axum::http::{HeaderMap, header};
use chrono::Utc;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::UserError;

pub const DEVICE_COOKIE: &str = "stockmesh_device";
/// The audience of device tokens; the service refuses to start if the
/// access-token audience is the same.
pub const DEVICE_AUDIENCE: &str = "stockmesh-device";
/// Where the browser sends the cookie: the login route only.
pub const DEVICE_COOKIE_PATH: &str = "/api/users/login";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeviceClaims {
    /// The account this browser logged into.
    pub sub: Uuid,
    /// The device: its own failure budget is keyed by it.
    pub jti: Uuid,
    pub iss: String,
    pub aud: String,
    pub exp: i64,
    pub iat: i64,
}

#[derive(Clone)]
pub struct Devices {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    issuer: String,
    ttl: Duration,
}

impl Devices {
    pub fn new(
        private_key_pem: &str,
        public_key_pem: &str,
        issuer: &str,
        ttl: Duration,
    ) -> anyhow::Result<Self> {
        let encoding = EncodingKey::from_ed_pem(private_key_pem.as_bytes())
            .map_err(|e| anyhow::anyhow!("JWT private key: {e}"))?;
        let decoding = DecodingKey::from_ed_pem(public_key_pem.as_bytes())
            .map_err(|e| anyhow::anyhow!("JWT public key: {e}"))?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.algorithms = vec![Algorithm::EdDSA];
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[DEVICE_AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "iat", "sub", "iss", "aud"]);
        validation.leeway = 5;
        Ok(Self {
            encoding,
            decoding,
            validation,
            issuer: issuer.to_owned(),
            ttl,
        })
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A device token for a browser that just logged into `user_id`; the
    /// device id is kept from the token it presented, if it had one for
    /// this account, so its failure budget follows it.
    pub fn issue(&self, user_id: Uuid, device_id: Option<Uuid>) -> Result<String, UserError> {
        let now = Utc::now();
        let exp = now + chrono::Duration::from_std(self.ttl).unwrap_or(chrono::Duration::days(90));
        let claims = DeviceClaims {
            sub: user_id,
            jti: device_id.unwrap_or_else(Uuid::new_v4),
            iss: self.issuer.clone(),
            aud: DEVICE_AUDIENCE.to_owned(),
            exp: exp.timestamp(),
            iat: now.timestamp(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, &self.encoding)
            .map_err(|e| UserError::Internal(format!("signing a device token failed: {e}")))
    }

    /// The claims of a genuine, unexpired device token; `None` otherwise.
    pub fn verify(&self, token: &str) -> Option<DeviceClaims> {
        jsonwebtoken::decode::<DeviceClaims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .ok()
    }
}

/// The device cookie's value in a request, if any.
pub fn cookie_from(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == DEVICE_COOKIE)
        .map(|(_, value)| value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use stockmesh_platform::auth::{AuthConfig, Verifier, generate_keypair};

    fn devices(private: &str, public: &str) -> Devices {
        Devices::new(private, public, "stockmesh", Duration::from_secs(3600)).unwrap()
    }

    #[test]
    fn device_tokens_verify_only_with_our_key_and_audience() {
        let (private, public) = generate_keypair().unwrap();
        let d = devices(&private, &public);
        let user = Uuid::now_v7();
        let token = d.issue(user, None).unwrap();
        let claims = d.verify(&token).expect("genuine");
        assert_eq!(claims.sub, user);
        let again = d.issue(user, Some(claims.jti)).unwrap();
        assert_eq!(d.verify(&again).unwrap().jti, claims.jti, "device id kept");

        let (other_private, other_public) = generate_keypair().unwrap();
        assert!(
            devices(&other_private, &other_public)
                .verify(&token)
                .is_none(),
            "another key"
        );
        assert!(d.verify("garbage").is_none());

        // Not an access token, and an access token is not a device token.
        let verifier = Verifier::new(&AuthConfig {
            public_key_pem: public.clone(),
            issuer: "stockmesh".into(),
            audience: "stockmesh-api".into(),
        })
        .unwrap();
        assert!(verifier.verify(&token).is_err());
        let issuer = crate::tokens::Issuer::new(
            &private,
            "stockmesh",
            "stockmesh-api",
            Duration::from_secs(60),
        )
        .unwrap();
        let (access, _) = issuer
            .issue(
                user,
                stockmesh_platform::auth::Role::Admin,
                Uuid::now_v7(),
                Utc::now() + chrono::Duration::hours(1),
            )
            .unwrap();
        assert!(d.verify(&access).is_none());
    }

    #[test]
    fn cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; stockmesh_device=tok.en.x"),
        );
        assert_eq!(cookie_from(&headers), Some("tok.en.x"));
        assert_eq!(cookie_from(&HeaderMap::new()), None);
    }
}
