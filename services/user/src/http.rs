//! HTTP handlers: translate JSON and tokens to service calls and back.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRef, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use stockmesh_platform::ApiError;
use stockmesh_platform::auth::{Admin, Caller, Role, SESSION_COOKIE, Verifier};
use stockmesh_platform::error::ErrorBody;
use stockmesh_platform::extract::{ApiJson, ApiPath, ApiQuery, Paging};
use utoipa::OpenApi;
use uuid::Uuid;

use crate::client_ip::TrustedProxies;
use crate::device::{self, DEVICE_COOKIE, DEVICE_COOKIE_PATH};
use crate::domain::UserView;
use crate::service::{UserService, UserUpdate};

#[derive(Clone)]
pub struct AppState {
    pub service: UserService,
    pub verifier: Verifier,
    pub cookie_secure: bool,
    /// Whose `X-Forwarded-For` entries name the client.
    pub trusted_proxies: TrustedProxies,
}

impl FromRef<AppState> for Verifier {
    fn from_ref(state: &AppState) -> Self {
        state.verifier.clone()
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

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LoginResponse {
    /// EdDSA-signed JWT; also set as the HttpOnly session cookie.
    pub token: String,
    pub expires_at: DateTime<Utc>,
    pub user: UserView,
}

/// Fields to change; absent fields stay as they are. Only an admin may set `role`.
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
        (status = 200, description = "Token issued (also set as an HttpOnly cookie, with the device cookie that exempts this browser from the account's guessing backoff)", body = LoginResponse),
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
    let session = state
        .service
        .login(
            &body.email,
            &body.password,
            client,
            device::cookie_from(&headers),
        )
        .await?;
    let mut response = Json(LoginResponse {
        token: session.token.clone(),
        expires_at: session.expires_at,
        user: session.user.into(),
    })
    .into_response();
    let cookies = [
        session_cookie(
            &session.token,
            state.service.token_ttl().as_secs(),
            state.cookie_secure,
        ),
        device_cookie(
            &session.device_token,
            state.service.device_ttl().as_secs(),
            state.cookie_secure,
        ),
    ];
    for cookie in cookies.into_iter().flatten() {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    Ok(response)
}

#[utoipa::path(post, path = "/api/users/logout", tag = "users",
    responses((status = 204, description = "Session cookie cleared")))]
async fn logout(State(state): State<AppState>) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    if let Some(cookie) = session_cookie("", 0, state.cookie_secure) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

#[utoipa::path(get, path = "/api/users/me", tag = "users", security(("bearer" = []), ("cookie" = [])),
    responses(
        (status = 200, description = "The caller's account", body = UserView),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 404, description = "The account was deleted", body = ErrorBody),
        (status = 503, description = "Temporarily unavailable", body = ErrorBody),
    ))]
async fn me(State(state): State<AppState>, caller: Caller) -> Result<Json<UserView>, ApiError> {
    Ok(Json(state.service.get(caller, caller.id).await?.into()))
}

#[utoipa::path(get, path = "/api/users", tag = "users", params(Paging), security(("bearer" = []), ("cookie" = [])),
    responses(
        (status = 200, description = "Accounts, oldest first", body = UserPage),
        (status = 400, description = "Bad paging parameters", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Administrators only", body = ErrorBody),
        (status = 503, description = "Temporarily unavailable", body = ErrorBody),
    ))]
async fn list(
    State(state): State<AppState>,
    _admin: Admin,
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
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 404, description = "No such account, or not yours", body = ErrorBody),
        (status = 503, description = "Temporarily unavailable", body = ErrorBody),
    ))]
async fn get_user(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<UserView>, ApiError> {
    Ok(Json(state.service.get(caller, id).await?.into()))
}

#[utoipa::path(patch, path = "/api/users/{id}", tag = "users", params(("id" = Uuid, Path, description = "User id")),
    request_body = UpdateUserRequest, security(("bearer" = []), ("cookie" = [])),
    responses(
        (status = 200, description = "Updated account", body = UserView),
        (status = 400, description = "Malformed request", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Only an administrator changes roles", body = ErrorBody),
        (status = 404, description = "No such account, or not yours", body = ErrorBody),
        (status = 409, description = "Email taken, or the last administrator would be demoted", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "Invalid field values", body = ErrorBody),
        (status = 503, description = "Temporarily unavailable", body = ErrorBody),
    ))]
async fn update(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<UpdateUserRequest>,
) -> Result<Json<UserView>, ApiError> {
    let update = UserUpdate {
        email: body.email,
        name: body.name,
        password: body.password,
        role: body.role,
    };
    Ok(Json(state.service.update(caller, id, update).await?.into()))
}

#[utoipa::path(delete, path = "/api/users/{id}", tag = "users", params(("id" = Uuid, Path, description = "User id")),
    security(("bearer" = []), ("cookie" = [])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Malformed id", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 404, description = "No such account, or not yours", body = ErrorBody),
        (status = 409, description = "The last administrator cannot be deleted", body = ErrorBody),
        (status = 503, description = "Temporarily unavailable", body = ErrorBody),
    ))]
async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<StatusCode, ApiError> {
    state.service.delete(caller, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(OpenApi)]
#[openapi(
    info(title = "stockmesh user service", description = "Accounts, roles and login (JWT issuance)."),
    paths(register, login, logout, me, list, get_user, update, delete),
    components(schemas(ErrorBody, UserView, RegisterRequest, LoginRequest, LoginResponse, UpdateUserRequest, UserPage, Role)),
    tags((name = "users", description = "Accounts and sessions"))
)]
pub struct ApiDoc;
