//! Verifying who the caller is.
//!
//! Tokens are JWTs signed by the user service with an Ed25519 key (EdDSA);
//! every other service holds only the public key, so it can verify but never
//! mint. Verification pins the algorithm (no `none`, no HS256 "signed" with
//! the public key), the issuer and the audience, and requires `exp`, `iat`,
//! `sub`. The token comes from `Authorization: Bearer` or the session cookie.
//!
//! Verification here is offline (the public key only, no lookup), so a
//! token stays valid until it expires even if its session was ended: access
//! tokens are therefore short-lived (`JWT_TTL_SECONDS`, 300 s by default),
//! and that lifetime is the documented bound on revocation for every
//! service but the user service, which also checks the session.

use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::EnvReader;
use crate::error::{ApiError, ErrorKind};

/// Name of the HttpOnly cookie that carries the token for browsers.
pub const SESSION_COOKIE: &str = "stockmesh_session";

/// The two roles of stockmesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    User,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::User => "user",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "admin" => Some(Self::Admin),
            "user" => Some(Self::User),
            _ => None,
        }
    }
}

/// The claims every service reads from stockmesh tokens. Tokens the user
/// service issues also carry `sid`, the session they belong to; services
/// that verify offline ignore it (and so the session's end reaches them
/// only when the token expires, `JWT_TTL_SECONDS` after issue), while the
/// user service checks it on every request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// The user id.
    pub sub: Uuid,
    pub role: Role,
    pub iss: String,
    pub aud: String,
    pub exp: i64,
    pub iat: i64,
    /// Unique token id.
    pub jti: Uuid,
}

/// Where tokens come from and for whom they are meant.
#[derive(Clone)]
pub struct AuthConfig {
    pub public_key_pem: String,
    pub issuer: String,
    pub audience: String,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

/// Reads a PEM from `<NAME>_FILE` (a path) or `<NAME>` (inline PEM).
pub fn read_pem(env: &mut EnvReader, name: &str) -> Option<String> {
    let file_var = format!("{name}_FILE");
    if let Some(path) = env.optional::<String>(&file_var) {
        return match std::fs::read_to_string(&path) {
            Ok(pem) => Some(pem),
            Err(err) => {
                env.problem(format!("{file_var}: cannot read {path}: {err}"));
                None
            }
        };
    }
    let inline = env.optional::<String>(name);
    if inline.is_none() {
        env.problem(format!("{file_var} (or {name}) is required but not set"));
    }
    inline.map(|pem| pem.replace("\\n", "\n"))
}

impl AuthConfig {
    /// `JWT_PUBLIC_KEY_FILE` (or `JWT_PUBLIC_KEY`), `JWT_ISSUER`, `JWT_AUDIENCE`.
    pub fn read(env: &mut EnvReader) -> Self {
        let public_key_pem = read_pem(env, "JWT_PUBLIC_KEY").unwrap_or_default();
        if !public_key_pem.is_empty()
            && DecodingKey::from_ed_pem(public_key_pem.as_bytes()).is_err()
        {
            env.problem("JWT_PUBLIC_KEY is malformed: expected an Ed25519 public key in PEM form");
        }
        Self {
            public_key_pem,
            issuer: env.with_default("JWT_ISSUER", "stockmesh".to_owned()),
            audience: env.with_default("JWT_AUDIENCE", "stockmesh-api".to_owned()),
        }
    }
}

/// Verifies tokens; cheap to clone.
#[derive(Clone)]
pub struct Verifier {
    key: Arc<DecodingKey>,
    validation: Arc<Validation>,
}

impl Verifier {
    pub fn new(config: &AuthConfig) -> anyhow::Result<Self> {
        let key = DecodingKey::from_ed_pem(config.public_key_pem.as_bytes())
            .map_err(|e| anyhow::anyhow!("JWT public key: {e}"))?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.algorithms = vec![Algorithm::EdDSA];
        validation.set_issuer(&[&config.issuer]);
        validation.set_audience(&[&config.audience]);
        validation.set_required_spec_claims(&["exp", "iat", "sub", "iss", "aud"]);
        validation.leeway = 5;
        Ok(Self {
            key: Arc::new(key),
            validation: Arc::new(validation),
        })
    }

    /// The claims of a valid token; any defect is the same 401 to the client.
    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        self.verify_as::<Claims>(token)
    }

    /// Like [`verify`](Self::verify), into the issuer's own claim set: the
    /// user service reads the `sid` it adds to its tokens (a claim every
    /// other service ignores), with the same algorithm, issuer, audience
    /// and expiry checks. A token lacking a field of `T` is refused.
    pub fn verify_as<T: DeserializeOwned>(&self, token: &str) -> Result<T, ApiError> {
        jsonwebtoken::decode::<T>(token, &self.key, &self.validation)
            .map(|data| data.claims)
            .map_err(|err| {
                tracing::debug!(error = %err, "token rejected");
                unauthenticated("invalid or expired token")
            })
    }
}

fn unauthenticated(message: &str) -> ApiError {
    ApiError::new(ErrorKind::Unauthenticated, message)
}

/// The token of a request: the bearer header wins over the cookie.
pub fn token_from(parts: &Parts) -> Option<String> {
    token_from_headers(&parts.headers)
}

/// [`token_from`] for a handler that holds the headers only.
pub fn token_from_headers(headers: &HeaderMap) -> Option<String> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let text = value.to_str().ok()?;
        let (scheme, token) = text.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_owned());
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.to_owned())
}

/// The verified caller. Extracting it answers 401 when the token is
/// missing or invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub id: Uuid,
    pub role: Role,
}

impl Caller {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// Allowed when the caller is `owner` or an admin.
    pub fn may_access(&self, owner: Uuid) -> bool {
        self.is_admin() || self.id == owner
    }
}

impl<S> FromRequestParts<S> for Caller
where
    Verifier: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let token = token_from(parts).ok_or_else(|| unauthenticated("authentication required"))?;
        let claims = Verifier::from_ref(state).verify(&token)?;
        Ok(Caller {
            id: claims.sub,
            role: claims.role,
        })
    }
}

/// A verified caller with the admin role (403 for other users).
#[derive(Debug, Clone, Copy)]
pub struct Admin(pub Caller);

impl<S> FromRequestParts<S> for Admin
where
    Verifier: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let caller = Caller::from_request_parts(parts, state).await?;
        if !caller.is_admin() {
            return Err(ApiError::new(
                ErrorKind::Forbidden,
                "administrator role required",
            ));
        }
        Ok(Admin(caller))
    }
}

/// A fresh Ed25519 key pair as `(private PKCS#8 PEM, public SPKI PEM)`, for
/// local runs and tests (Kubernetes gets its pair from the operator or chart).
pub fn generate_keypair() -> anyhow::Result<(String, String)> {
    use ed25519_dalek::pkcs8::{EncodePrivateKey, EncodePublicKey, spki::der::pem::LineEnding};
    let mut seed = [0u8; 32];
    // Two v4 UUIDs are 244 bits from the OS random source.
    seed[..16].copy_from_slice(Uuid::new_v4().as_bytes());
    seed[16..].copy_from_slice(Uuid::new_v4().as_bytes());
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    let private = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| anyhow::anyhow!("encoding private key: {e}"))?
        .to_string();
    let public = key
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| anyhow::anyhow!("encoding public key: {e}"))?;
    Ok((private, public))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_sign_and_verify() {
        let (private, public) = generate_keypair().unwrap();
        let config = AuthConfig {
            public_key_pem: public,
            issuer: "stockmesh".into(),
            audience: "stockmesh-api".into(),
        };
        let verifier = Verifier::new(&config).unwrap();
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: Uuid::now_v7(),
            role: Role::User,
            iss: "stockmesh".into(),
            aud: "stockmesh-api".into(),
            exp: now + 60,
            iat: now,
            jti: Uuid::now_v7(),
        };
        let key = jsonwebtoken::EncodingKey::from_ed_pem(private.as_bytes()).unwrap();
        let token =
            jsonwebtoken::encode(&jsonwebtoken::Header::new(Algorithm::EdDSA), &claims, &key)
                .unwrap();
        assert_eq!(verifier.verify(&token).unwrap(), claims);
        let mut wrong_audience = claims.clone();
        wrong_audience.aud = "elsewhere".into();
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::EdDSA),
            &wrong_audience,
            &key,
        )
        .unwrap();
        assert!(verifier.verify(&token).is_err());
    }
}
