//! HTTP handlers: translate tokens and paths to service calls and back.

use axum::extract::{FromRef, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use stockmesh_platform::ApiError;
use stockmesh_platform::auth::{Caller, Verifier};
use stockmesh_platform::error::ErrorBody;
use stockmesh_platform::extract::{ApiPath, ApiQuery, Paging};
use utoipa::OpenApi;
use uuid::Uuid;

use crate::domain::{NotificationKind, NotificationView};
use crate::service::NotificationService;

#[derive(Clone)]
pub struct AppState {
    pub service: NotificationService,
    pub verifier: Verifier,
}

impl FromRef<AppState> for Verifier {
    fn from_ref(state: &AppState) -> Self {
        state.verifier.clone()
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct NotificationPage {
    pub items: Vec<NotificationView>,
    pub total: i64,
    pub limit: i64,
    pub offset: i64,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/notifications", get(list))
        .route("/api/notifications/{id}/read", post(mark_read))
        .route(
            "/api/notifications/openapi.json",
            stockmesh_platform::openapi::route::<ApiDoc, _>(),
        )
        .with_state(state)
}

#[utoipa::path(get, path = "/api/notifications", tag = "notifications", params(Paging),
    security(("bearer" = []), ("cookie" = [])),
    responses(
        (status = 200, description = "The caller's notifications, newest first", body = NotificationPage),
        (status = 400, description = "Bad paging parameters", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 503, description = "Temporarily unavailable", body = ErrorBody),
    ))]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(paging): ApiQuery<Paging>,
) -> Result<Json<NotificationPage>, ApiError> {
    let (limit, offset) = paging.bounds()?;
    let (items, total) = state.service.list(caller, limit, offset).await?;
    Ok(Json(NotificationPage {
        items: items.into_iter().map(Into::into).collect(),
        total,
        limit,
        offset,
    }))
}

#[utoipa::path(post, path = "/api/notifications/{id}/read", tag = "notifications",
    params(("id" = Uuid, Path, description = "Notification id")),
    security(("bearer" = []), ("cookie" = [])),
    responses(
        (status = 200, description = "The notification, with `read_at` set (kept from the first time)", body = NotificationView),
        (status = 400, description = "Malformed id", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 404, description = "No such notification, or not yours", body = ErrorBody),
        (status = 503, description = "Temporarily unavailable", body = ErrorBody),
    ))]
async fn mark_read(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<NotificationView>, ApiError> {
    Ok(Json(state.service.mark_read(caller, id).await?.into()))
}

#[derive(OpenApi)]
#[openapi(
    info(title = "stockmesh notification service", description = "Notifications about the caller's orders, made from order events."),
    paths(list, mark_read),
    components(schemas(ErrorBody, NotificationView, NotificationPage, NotificationKind)),
    tags((name = "notifications", description = "The caller's notifications"))
)]
pub struct ApiDoc;
