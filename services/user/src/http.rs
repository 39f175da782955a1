//! HTTP handlers: translate JSON and tokens to service calls and back.

use std::net::SocketAddr;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use stockmesh_platform::auth::{self, Role, SESSION_COOKIE, Verifier};
use stockmesh_platform::error::ErrorBody;
use stockmesh_platform::extract::{ApiJson, ApiPath, ApiQuery, Paging};
use stockmesh_platform::{ApiError, ErrorKind};
use utoipa::OpenApi;
use uuid::Uuid;

use crate::client_ip::TrustedProxies;
use crate::device::{self, DEVICE_COOKIE, DEVICE_COOKIE_PATH};
use crate::domain::UserView;
use crate::error::UserError;
use crate::service::{Grant, SessionCaller, UserService, UserUpdate};
use crate::tokens::AccessClaims;

/// The HttpOnly cookie that carries the refresh token for browsers.
pub const REFRESH_COOKIE: &str = "stockmesh_refresh";
/// Where the browser sends it: the user service only (refresh and logout
/// need it), never the other services.
pub const REFRESH_COOKIE_PATH: &str = "/api/users/";

#[derive(Clone)]
pub struct AppState {
    pub service: UserService,
    pub verifier: Verifier,
    pub cookie_secure: bool,
    /// Whose `X-Forwarded-For` entries name the client.
    pub trusted_proxies: TrustedProxies,
}

// No `FromRef<AppState> for Verifier`: the platform's `Caller` and `Admin`
// extractors (offline verification only) cannot be used by mistake here.
// Every route of this service authenticates with the extractors below,
// which also require the token's session to be live.

/// The caller of a route: a genuine access token (bearer header or session
/// cookie) whose session is live, with the account's current role. 401 if
/// the token is missing, invalid, expired, names no session, or its
/// session has ended.
pub struct Authenticated(pub SessionCaller);

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = auth::token_from(parts)
            .ok_or_else(|| ApiError::new(ErrorKind::Unauthenticated, "authentication required"))?;
        let claims: AccessClaims = state.verifier.verify_as(&token)?;
        Ok(Self(state.service.authenticate(&claims).await?))
    }
}

/// [`Authenticated`], and the account is an administrator now (403
/// otherwise).
pub struct AdminSession(pub SessionCaller);

impl FromRequestParts<AppState> for AdminSession {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Authenticated(caller) = Authenticated::from_request_parts(parts, state).await?;
        if !caller.caller.is_admin() {
            return Err(ApiError::new(
                ErrorKind::Forbidden,
                "administrator role required",
            ));
        }
        Ok(Self(caller))
    }
}

/// A JSON body that may be absent: an empty body or `null` is `None` (a
/// browser refreshing or logging out with its cookie sends none); anything
/// else is read exactly as [`ApiJson`] reads it, with the same errors.
pub struct OptionalJson<T>(pub Option<T>);

impl<T, S> FromRequest<S> for OptionalJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let (parts, body) = req.into_parts();
        let bytes = Bytes::from_request(Request::from_parts(parts.clone(), body), state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(ErrorKind::PayloadTooLarge, "request body too large")
                } else {
                    ApiError::new(ErrorKind::BadRequest, rejection.body_text())
                }
            })?;
        if bytes.is_empty() {
            return Ok(Self(None));
        }
        // `null` is an absent body too (the document allows it).
        let ApiJson(value) = ApiJson::<Option<T>>::from_request(
            Request::from_parts(parts, Body::from(bytes)),
            state,
        )
        .await?;
        Ok(Self(value))
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// Normalised to lower case; must be unique.
    #[schema(example = "ada@example.com", max_length = 254)]
    pub email: String,
    /// 8 to 128 characters.
    #[schema(min_length = 8, max_length = 128)]
    pub password: String,
    #[schema(example = "Ada Lovelace", min_length = 1, max_length = 100)]
    pub name: String,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    #[schema(max_length = 254)]
    pub email: String,
    #[schema(max_length = 128)]
    pub password: String,
}

/// A session's tokens, from a login or a refresh.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LoginResponse {
    /// EdDSA-signed JWT access token, short-lived (`JWT_TTL_SECONDS`); also
    /// set as the HttpOnly session cookie.
    pub token: String,
    pub expires_at: DateTime<Utc>,
    /// Opaque, single-use: trade it at `POST /api/users/refresh` for new
    /// tokens. Also set as the HttpOnly `stockmesh_refresh` cookie (path
    /// `/api/users/`). Presenting a spent one ends the session.
    pub refresh_token: String,
    /// When the session ends; refreshing does not extend it.
    pub refresh_expires_at: DateTime<Utc>,
    pub user: UserView,
}

/// The refresh token, for clients that do not keep cookies; without it the
/// `stockmesh_refresh` cookie is used.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    #[schema(max_length = 256)]
    pub refresh_token: Option<String>,
}

/// Fields to change; absent fields stay as they are. Only an admin may set
/// `role`. Changing your own `email` or `password` needs
/// `current_password`; an admin changing another account's does not. A new
/// password or role ends every session of the account.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUserRequest {
    #[schema(max_length = 254)]
    pub email: Option<String>,
    #[schema(min_length = 1, max_length = 100)]
    pub name: Option<String>,
    #[schema(min_length = 8, max_length = 128)]
    pub password: Option<String>,
    pub role: Option<Role>,
    /// The account's present password: required to change your own email
    /// or password, ignored otherwise.
    #[schema(max_length = 128)]
    pub current_password: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UserPage {
    pub items: Vec<UserView>,
    pub total: i64,
    pub limit: i64,
    pub offset: i64,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/users/register", post(register))
        .route("/api/users/login", post(login))
        .route("/api/users/refresh", post(refresh))
        .route("/api/users/logout", post(logout))
        .route("/api/users/me", get(me))
        .route("/api/users", get(list))
        .route(
            "/api/users/{id}",
            get(get_user).patch(update).delete(delete),
        )
        .route(
            "/api/users/openapi.json",
            stockmesh_platform::openapi::route::<ApiDoc, _>(),
        )
        .with_state(state)
}

#[utoipa::path(post, path = "/api/users/register", tag = "users", request_body = RegisterRequest,
    responses(
        (status = 201, description = "Account created", body = UserView),
        (status = 400, description = "Malformed request", body = ErrorBody),
        (status = 409, description = "Email already registered", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "Invalid email, password or name", body = ErrorBody),
        (status = 429, description = "Too many registrations from this client; see Retry-After", body = ErrorBody),
        (status = 503, description = "Temporarily unavailable or too many password hashes in progress; see Retry-After", body = ErrorBody),
    ))]
async fn register(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<RegisterRequest>,
) -> Result<Response, ApiError> {
    let client = state.trusted_proxies.client(peer.ip(), &headers);
    let user = state
        .service
        .register(&body.email, &body.password, &body.name, client)
        .await?;
    Ok((StatusCode::CREATED, Json(UserView::from(user))).into_response())
}

fn session_cookie(value: &str, max_age: u64, secure: bool) -> Option<HeaderValue> {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}"
    ))
    .ok()
}

/// The refresh cookie: the user service's paths only, never readable by
/// scripts, never sent cross-site.
fn refresh_cookie(value: &str, max_age: u64, secure: bool) -> Option<HeaderValue> {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{REFRESH_COOKIE}={value}; Path={REFRESH_COOKIE_PATH}; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
    ))
    .ok()
}

/// The refresh cookie's value in a request, if any.
fn refresh_cookie_from(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == REFRESH_COOKIE)
        .map(|(_, value)| value)
}

/// Cookies that make a browser forget its session.
fn clear_session_cookies(response: &mut Response, secure: bool) {
    let cookies = [session_cookie("", 0, secure), refresh_cookie("", 0, secure)];
    for cookie in cookies.into_iter().flatten() {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
}

/// A grant as JSON plus its cookies (the access token first, then the
/// refresh token, then the device cookie on login).
fn grant_response(grant: Grant, state: &AppState) -> Response {
    let refresh_max_age = grant
        .refresh_expires_at
        .signed_duration_since(Utc::now())
        .num_seconds()
        .max(0)
        .unsigned_abs();
    let access_max_age = grant
        .expires_at
        .signed_duration_since(Utc::now())
        .num_seconds()
        .clamp(
            0,
            i64::try_from(state.service.token_ttl().as_secs()).unwrap_or(i64::MAX),
        )
        .unsigned_abs();
    let cookies = [
        session_cookie(&grant.token, access_max_age, state.cookie_secure),
        refresh_cookie(&grant.refresh_token, refresh_max_age, state.cookie_secure),
        grant.device_token.as_deref().and_then(|token| {
            device_cookie(
                token,
                state.service.device_ttl().as_secs(),
                state.cookie_secure,
            )
        }),
    ];
    let mut response = Json(LoginResponse {
        token: grant.token,
        expires_at: grant.expires_at,
        refresh_token: grant.refresh_token,
        refresh_expires_at: grant.refresh_expires_at,
        user: grant.user.into(),
    })
    .into_response();
    for cookie in cookies.into_iter().flatten() {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

/// The device cookie: sent back to the login route only, never readable by
/// scripts, never sent cross-site.
fn device_cookie(value: &str, max_age: u64, secure: bool) -> Option<HeaderValue> {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{DEVICE_COOKIE}={value}; Path={DEVICE_COOKIE_PATH}; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
    ))
    .ok()
}

#[utoipa::path(post, path = "/api/users/login", tag = "users", request_body = LoginRequest,
    responses(
        (status = 200, description = "Session started: a short-lived access token and a refresh token (also set as HttpOnly cookies, with the device cookie that exempts this browser from the account's guessing backoff)", body = LoginResponse),
        (status = 400, description = "Malformed request", body = ErrorBody),
        (status = 401, description = "Invalid email or password (same answer for both)", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "Wrong body shape", body = ErrorBody),
        (status = 429, description = "Too many attempts from this client, or on this account from browsers that never logged into it; see Retry-After", body = ErrorBody),
        (status = 503, description = "Temporarily unavailable or too many password checks in progress; see Retry-After", body = ErrorBody),
    ))]
async fn login(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<LoginRequest>,
) -> Result<Response, ApiError> {
    let client = state.trusted_proxies.client(peer.ip(), &headers);
    let grant = state
        .service
        .login(
            &body.email,
            &body.password,
            client,
            device::cookie_from(&headers),
        )
        .await?;
    Ok(grant_response(grant, &state))
}

#[utoipa::path(post, path = "/api/users/refresh", tag = "users",
    request_body(content = Option<RefreshRequest>, description = "The refresh token; without a body (or without `refresh_token`) the `stockmesh_refresh` cookie is used"),
    responses(
        (status = 200, description = "New access token and new refresh token (the one presented is spent); cookies updated", body = LoginResponse),
        (status = 400, description = "Malformed request", body = ErrorBody),
        (status = 401, description = "Missing, unknown or expired refresh token; a spent one (`refresh_token_reused`: the session has been ended) or one replaced by a concurrent refresh moments ago (`refresh_token_rotated`)", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "Wrong body shape", body = ErrorBody),
        (status = 503, description = "Temporarily unavailable", body = ErrorBody),
    ))]
async fn refresh(
    State(state): State<AppState>,
    headers: HeaderMap,
    OptionalJson(body): OptionalJson<RefreshRequest>,
) -> Result<Response, ApiError> {
    let token = body
        .and_then(|b| b.refresh_token)
        .or_else(|| refresh_cookie_from(&headers).map(str::to_owned))
        .ok_or(UserError::InvalidRefreshToken)?;
    match state.service.refresh(&token).await {
        Ok(grant) => Ok(grant_response(grant, &state)),
        Err(
            err @ (UserError::InvalidRefreshToken
            | UserError::RefreshTokenReused
            | UserError::RefreshTokenRotated),
        ) => {
            let rotated = matches!(err, UserError::RefreshTokenRotated);
            let mut response = ApiError::from(err).into_response();
            // The browser's session is over, unless another tab just
            // rotated it (then its cookies are already the newer ones).
            if !rotated {
                clear_session_cookies(&mut response, state.cookie_secure);
            }
            Ok(response)
        }
        Err(err) => Err(err.into()),
    }
}

#[utoipa::path(post, path = "/api/users/logout", tag = "users",
    request_body(content = Option<RefreshRequest>, description = "Optionally the refresh token of the session to end (for clients without cookies whose access token has expired)"),
    security((), ("bearer" = []), ("cookie" = [])),
    responses(
        (status = 204, description = "The session named by the access token (bearer or cookie) and the one the refresh token (body or cookie) belongs to are ended; cookies cleared. Also 204 when there was no session to end"),
        (status = 400, description = "Malformed request", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "Wrong body shape", body = ErrorBody),
        (status = 503, description = "Temporarily unavailable", body = ErrorBody),
    ))]
async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    OptionalJson(body): OptionalJson<RefreshRequest>,
) -> Result<Response, ApiError> {
    // An invalid or expired access token ends nothing: it names no session
    // we can trust. The refresh token may still end one.
    let access = auth::token_from_headers(&headers)
        .and_then(|token| state.verifier.verify_as::<AccessClaims>(&token).ok());
    let refresh = body
        .and_then(|b| b.refresh_token)
        .or_else(|| refresh_cookie_from(&headers).map(str::to_owned));
    state
        .service
        .logout(access.as_ref(), refresh.as_deref())
        .await?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    clear_session_cookies(&mut response, state.cookie_secure);
    Ok(response)
}

#[utoipa::path(get, path = "/api/users/me", tag = "users", security(("bearer" = []), ("cookie" = [])),
    responses(
        (status = 200, description = "The caller's account", body = UserView),
        (status = 401, description = "Missing or invalid token, or its session has ended", body = ErrorBody),
        (status = 404, description = "The account was deleted", body = ErrorBody),
        (status = 503, description = "Temporarily unavailable", body = ErrorBody),
    ))]
async fn me(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
) -> Result<Json<UserView>, ApiError> {
    let caller = caller.caller;
    Ok(Json(state.service.get(caller, caller.id).await?.into()))
}

#[utoipa::path(get, path = "/api/users", tag = "users", params(Paging), security(("bearer" = []), ("cookie" = [])),
    responses(
        (status = 200, description = "Accounts, oldest first", body = UserPage),
        (status = 400, description = "Bad paging parameters", body = ErrorBody),
        (status = 401, description = "Missing or invalid token, or its session has ended", body = ErrorBody),
        (status = 403, description = "Administrators only", body = ErrorBody),
        (status = 503, description = "Temporarily unavailable", body = ErrorBody),
    ))]
async fn list(
    State(state): State<AppState>,
    _admin: AdminSession,
    ApiQuery(paging): ApiQuery<Paging>,
) -> Result<Json<UserPage>, ApiError> {
    let (limit, offset) = paging.bounds()?;
    let (users, total) = state.service.list(limit, offset).await?;
    Ok(Json(UserPage {
        items: users.into_iter().map(Into::into).collect(),
        total,
        limit,
        offset,
    }))
}

#[utoipa::path(get, path = "/api/users/{id}", tag = "users", params(("id" = Uuid, Path, description = "User id")),
    security(("bearer" = []), ("cookie" = [])),
    responses(
        (status = 200, description = "The account", body = UserView),
        (status = 400, description = "Malformed id", body = ErrorBody),
        (status = 401, description = "Missing or invalid token, or its session has ended", body = ErrorBody),
        (status = 404, description = "No such account, or not yours", body = ErrorBody),
        (status = 503, description = "Temporarily unavailable", body = ErrorBody),
    ))]
async fn get_user(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<UserView>, ApiError> {
    Ok(Json(state.service.get(caller.caller, id).await?.into()))
}

#[utoipa::path(patch, path = "/api/users/{id}", tag = "users", params(("id" = Uuid, Path, description = "User id")),
    request_body = UpdateUserRequest, security(("bearer" = []), ("cookie" = [])),
    responses(
        (status = 200, description = "Updated account", body = UserView),
        (status = 400, description = "Malformed request", body = ErrorBody),
        (status = 401, description = "Missing or invalid token, or its session has ended", body = ErrorBody),
        (status = 403, description = "Only an administrator changes roles; or `current_password` is wrong (`current_password_incorrect`)", body = ErrorBody),
        (status = 404, description = "No such account, or not yours", body = ErrorBody),
        (status = 409, description = "Email taken, or the last administrator would be demoted", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "Invalid field values, or `current_password` missing for a change of your own email or password (`current_password_required`)", body = ErrorBody),
        (status = 429, description = "Too many wrong current passwords from this session; see Retry-After", body = ErrorBody),
        (status = 503, description = "Temporarily unavailable or too many password checks in progress; see Retry-After", body = ErrorBody),
    ))]
async fn update(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<UpdateUserRequest>,
) -> Result<Json<UserView>, ApiError> {
    let update = UserUpdate {
        email: body.email,
        name: body.name,
        password: body.password,
        role: body.role,
        current_password: body.current_password,
    };
    Ok(Json(state.service.update(caller, id, update).await?.into()))
}

#[utoipa::path(delete, path = "/api/users/{id}", tag = "users", params(("id" = Uuid, Path, description = "User id")),
    security(("bearer" = []), ("cookie" = [])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Malformed id", body = ErrorBody),
        (status = 401, description = "Missing or invalid token, or its session has ended", body = ErrorBody),
        (status = 404, description = "No such account, or not yours", body = ErrorBody),
        (status = 409, description = "The last administrator cannot be deleted", body = ErrorBody),
        (status = 503, description = "Temporarily unavailable", body = ErrorBody),
    ))]
async fn delete(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<StatusCode, ApiError> {
    state.service.delete(caller.caller, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(OpenApi)]
#[openapi(
    info(title = "stockmesh user service", description = "Accounts, roles, login and sessions (JWT issuance, rotating refresh tokens)."),
    paths(register, login, refresh, logout, me, list, get_user, update, delete),
    components(schemas(ErrorBody, UserView, RegisterRequest, LoginRequest, LoginResponse, RefreshRequest, UpdateUserRequest, UserPage, Role)),
    tags((name = "users", description = "Accounts and sessions"))
)]
pub struct ApiDoc;
