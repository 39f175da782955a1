//! Pieces every service's OpenAPI document shares: the auth schemes and the
//! error responses.

use axum::Json;
use axum::routing::{MethodRouter, get};
use utoipa::openapi::OpenApi;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};

/// Adds the `bearer` (JWT) and `cookie` security schemes.
pub fn add_security_schemes(doc: &mut OpenApi) {
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("JWT")
                .description(Some("Token from POST /api/users/login"))
                .build(),
        ),
    );
    components.add_security_scheme(
        "cookie",
        SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new(
            crate::auth::SESSION_COOKIE,
        ))),
    );
}

/// A service's document `D` with the shared security schemes.
pub fn document<D: utoipa::OpenApi>() -> OpenApi {
    let mut doc = D::openapi();
    add_security_schemes(&mut doc);
    doc
}

/// `GET` handler serving `document::<D>()` (mount at `/api/<service>/openapi.json`).
pub fn route<D, S>() -> MethodRouter<S>
where
    D: utoipa::OpenApi + 'static,
    S: Clone + Send + Sync + 'static,
{
    get(|| async { Json(document::<D>()) })
}
