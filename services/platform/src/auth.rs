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
    verified: Arc<VerifiedTokens>,
}

/// Seconds of clock skew allowed on `exp` (as the full verification does).
const LEEWAY_SECONDS: u64 = 5;
/// Tokens remembered as verified; past it, expired ones are dropped and,
/// if that is not enough, all of them (the next requests verify again).
const MAX_VERIFIED_TOKENS: usize = 4096;

/// Tokens that passed full verification, with their claims, until they
/// expire. A client sends the same token with every request for its
/// lifetime, and checking its Ed25519 signature each time was the order
/// service's largest single CPU cost in the benchmark's profile. Keyed by
/// the token's exact text, so only those same bytes are answered from
/// here; a token is accepted from here only while the full check would
/// still accept its `exp`; tokens that fail are never kept. Revocation is
/// unchanged: verification is offline either way, bounded by the tokens'
/// lifetime.
#[derive(Default)]
struct VerifiedTokens {
    tokens: std::sync::Mutex<std::collections::HashMap<Box<str>, Claims>>,
}

impl VerifiedTokens {
    /// The claims of `token` if it was verified and is not expired at `now`
    /// (seconds since the epoch).
    fn get(&self, token: &str, now: u64) -> Option<Claims> {
        let tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        let claims = tokens.get(token)?;
        still_valid(claims, now).then(|| claims.clone())
    }

    fn insert(&self, token: &str, claims: &Claims, now: u64) {
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        if tokens.len() >= MAX_VERIFIED_TOKENS {
            tokens.retain(|_, claims| still_valid(claims, now));
            if tokens.len() >= MAX_VERIFIED_TOKENS {
                tokens.clear();
            }
        }
        tokens.insert(token.into(), claims.clone());
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.tokens.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// Whether the full verification would still accept these claims' `exp`.
fn still_valid(claims: &Claims, now: u64) -> bool {
    u64::try_from(claims.exp).is_ok_and(|exp| exp.saturating_add(LEEWAY_SECONDS) >= now)
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
        validation.leeway = LEEWAY_SECONDS;
        Ok(Self {
            key: Arc::new(key),
            validation: Arc::new(validation),
            verified: Arc::default(),
        })
    }

    /// The claims of a valid token; any defect is the same 401 to the
    /// client. A token this verifier already accepted is answered from
    /// memory until it expires (see `VerifiedTokens`).
    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        let now = jsonwebtoken::get_current_timestamp();
        if let Some(claims) = self.verified.get(token, now) {
            return Ok(claims);
        }
        let claims = self.verify_as::<Claims>(token)?;
        self.verified.insert(token, &claims, now);
        Ok(claims)
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

    fn signed(key: &jsonwebtoken::EncodingKey, claims: &Claims) -> String {
        jsonwebtoken::encode(&jsonwebtoken::Header::new(Algorithm::EdDSA), claims, key).unwrap()
    }

    fn verifier_and_key() -> (Verifier, jsonwebtoken::EncodingKey) {
        let (private, public) = generate_keypair().unwrap();
        let config = AuthConfig {
            public_key_pem: public,
            issuer: "stockmesh".into(),
            audience: "stockmesh-api".into(),
        };
        let key = jsonwebtoken::EncodingKey::from_ed_pem(private.as_bytes()).unwrap();
        (Verifier::new(&config).unwrap(), key)
    }

    fn claims_expiring_at(exp: i64) -> Claims {
        Claims {
            sub: Uuid::now_v7(),
            role: Role::User,
            iss: "stockmesh".into(),
            aud: "stockmesh-api".into(),
            exp,
            iat: exp - 300,
            jti: Uuid::now_v7(),
        }
    }

    /// A verified token is remembered until the full check would refuse its
    /// expiry; other bytes (a tampered copy, a token signed by another key)
    /// are never answered from memory, and refused tokens are not kept.
    #[test]
    fn verified_tokens_are_remembered_until_they_expire_and_only_as_sent() {
        let (verifier, key) = verifier_and_key();
        let now = jsonwebtoken::get_current_timestamp();
        let claims = claims_expiring_at(now as i64 + 60);
        let token = signed(&key, &claims);
        assert_eq!(verifier.verify(&token).unwrap(), claims);
        assert_eq!(verifier.verified.get(&token, now), Some(claims.clone()));
        let last_second = now + 60 + LEEWAY_SECONDS;
        assert!(verifier.verified.get(&token, last_second).is_some());
        assert_eq!(verifier.verified.get(&token, last_second + 1), None);

        // The same claims with a broken signature: refused, not kept.
        let mut tampered = token.clone().into_bytes();
        let inside_signature = tampered.len() - 10;
        tampered[inside_signature] = if tampered[inside_signature] == b'A' {
            b'B'
        } else {
            b'A'
        };
        let tampered = String::from_utf8(tampered).unwrap();
        assert!(verifier.verify(&tampered).is_err());
        assert_eq!(verifier.verified.get(&tampered, now), None);
        // Signed by another key: refused although its claims are cached.
        let (_, other_key) = verifier_and_key();
        let forged = signed(&other_key, &claims);
        assert!(verifier.verify(&forged).is_err());
        assert_eq!(verifier.verified.len(), 1);

        // An expired token is refused by the full check and never kept.
        let expired = signed(&key, &claims_expiring_at(now as i64 - 60));
        assert!(verifier.verify(&expired).is_err());
        assert_eq!(verifier.verified.len(), 1);
    }

    /// The memory stays bounded: at the bound expired tokens go first, then
    /// everything.
    #[test]
    fn verified_tokens_stay_bounded() {
        let cache = VerifiedTokens::default();
        let now = 1_000_000;
        for n in 0..MAX_VERIFIED_TOKENS {
            let exp = if n % 2 == 0 { now - 100 } else { now + 100 };
            cache.insert(&format!("token-{n}"), &claims_expiring_at(exp as i64), now);
        }
        assert_eq!(cache.len(), MAX_VERIFIED_TOKENS);
        cache.insert("one-more", &claims_expiring_at(now as i64 + 100), now);
        assert_eq!(
            cache.len(),
            MAX_VERIFIED_TOKENS / 2 + 1,
            "the expired half went"
        );
        for n in 0..MAX_VERIFIED_TOKENS {
            cache.insert(
                &format!("fresh-{n}"),
                &claims_expiring_at(now as i64 + 100),
                now,
            );
        }
        assert!(cache.len() <= MAX_VERIFIED_TOKENS);
        assert!(
            cache.get("one-more", now).is_none(),
            "full of live tokens: cleared"
        );
    }

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
