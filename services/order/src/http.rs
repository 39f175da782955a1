//! HTTP handlers: translate JSON, headers and tokens to service calls.

use axum::extract::{FromRef, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use stockmesh_platform::ApiError;
use stockmesh_platform::auth::{Caller, Verifier};
use stockmesh_platform::error::ErrorBody;
use stockmesh_platform::extract::{ApiJson, ApiPath, ApiQuery, Paging};
use utoipa::OpenApi;
use uuid::Uuid;

use crate::domain::{Money, OrderFilter, OrderStatus, OrderView};
use crate::error::OrderError;
use crate::service::OrderService;

#[derive(Clone)]
pub struct AppState {
    pub service: OrderService,
    pub verifier: Verifier,
}

impl FromRef<AppState> for Verifier {
    fn from_ref(state: &AppState) -> Self {
        state.verifier.clone()
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlaceOrderRequest {
    pub product_id: Uuid,
    /// 1 to 1000 units.
    #[schema(minimum = 1, maximum = 1000)]
    pub quantity: i64,
}

/// Which orders to list (besides paging).
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OrderQuery {
    /// `all`: everyone's orders (administrators only); default: the caller's.
    pub scope: Option<String>,
    /// Only this user's orders (administrators only, unless it is the caller).
    pub user_id: Option<Uuid>,
    /// Only orders of this product.
    pub product_id: Option<Uuid>,
    /// Only orders in this status: PENDING, CONFIRMED, REJECTED, FAILED or CANCELLED.
    pub status: Option<String>,
}

impl OrderQuery {
    /// `(everyone, filter)`, or a readable refusal of a bad value.
    fn filter(&self) -> Result<(bool, OrderFilter), OrderError> {
        let everyone = match self.scope.as_deref() {
            None | Some("mine") => false,
            Some("all") => true,
            Some(_) => return Err(OrderError::BadRequest("scope must be all or mine")),
        };
        let status = match self.status.as_deref() {
            None | Some("") => None,
            Some(text) => Some(OrderStatus::parse(text).ok_or(OrderError::BadRequest(
                "status must be one of PENDING, CONFIRMED, REJECTED, FAILED, CANCELLED",
            ))?),
        };
        Ok((
            everyone,
            OrderFilter {
                user_id: self.user_id,
                product_id: self.product_id,
                status,
            },
        ))
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OrderPage {
    pub items: Vec<OrderView>,
    pub total: i64,
    pub limit: i64,
    pub offset: i64,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/orders", get(list).post(place))
        .route("/api/orders/{id}", get(get_order))
        .route("/api/orders/{id}/cancel", post(cancel))
        .route(
            "/api/orders/openapi.json",
            stockmesh_platform::openapi::route::<ApiDoc, _>(),
        )
        .with_state(state)
}

/// `Idempotency-Key`: 1 to 200 visible ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, OrderError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .map_err(|_| OrderError::BadRequest("Idempotency-Key must be visible ASCII"))?
        .trim();
    if key.is_empty() || key.len() > 200 || !key.chars().all(|c| c.is_ascii_graphic()) {
        return Err(OrderError::BadRequest(
            "Idempotency-Key must be 1 to 200 visible ASCII characters",
        ));
    }
    Ok(Some(key.to_owned()))
}

#[utoipa::path(post, path = "/api/orders", tag = "orders", request_body = PlaceOrderRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Same key + same body → same order and answer; same key + different body → 422")),
    security(("bearer" = []), ("cookie" = [])),
    responses(
        (status = 201, description = "Order confirmed (also the answer to a replay)", body = OrderView),
        (status = 400, description = "Malformed request", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 409, description = "Insufficient stock, or the same key is in progress or failed", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "Invalid quantity, unknown product, or key reused with another body", body = ErrorBody),
        (status = 500, description = "Unexpected failure (the order is failed and its stock released)", body = ErrorBody),
        (status = 503, description = "A dependency is unavailable; see Retry-After", body = ErrorBody),
        (status = 504, description = "A dependency did not answer in time", body = ErrorBody),
    ))]
async fn place(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(body): ApiJson<PlaceOrderRequest>,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    let placed = state
        .service
        .place(caller, body.product_id, body.quantity, key.as_deref())
        .await?;
    Ok((StatusCode::CREATED, Json(OrderView::from(placed.order))).into_response())
}

#[utoipa::path(get, path = "/api/orders", tag = "orders", params(Paging, OrderQuery), security(("bearer" = []), ("cookie" = [])),
    responses(
        (status = 200, description = "The caller's orders (or, for administrators with scope=all or user_id, anyone's), newest first", body = OrderPage),
        (status = 400, description = "Bad paging or filter parameters", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Another user's orders asked for by a non-administrator", body = ErrorBody),
        (status = 503, description = "Temporarily unavailable", body = ErrorBody),
    ))]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(paging): ApiQuery<Paging>,
    ApiQuery(query): ApiQuery<OrderQuery>,
) -> Result<Json<OrderPage>, ApiError> {
    let (limit, offset) = paging.bounds()?;
    let (everyone, filter) = query.filter()?;
    let (orders, total) = state
        .service
        .list(caller, everyone, filter, limit, offset)
        .await?;
    Ok(Json(OrderPage {
        items: orders.into_iter().map(Into::into).collect(),
        total,
        limit,
        offset,
    }))
}

#[utoipa::path(get, path = "/api/orders/{id}", tag = "orders", params(("id" = Uuid, Path, description = "Order id")),
    security(("bearer" = []), ("cookie" = [])),
    responses(
        (status = 200, description = "The order", body = OrderView),
        (status = 400, description = "Malformed id", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 404, description = "No such order, or not yours", body = ErrorBody),
        (status = 503, description = "Temporarily unavailable", body = ErrorBody),
    ))]
async fn get_order(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<OrderView>, ApiError> {
    Ok(Json(state.service.get(caller, id).await?.into()))
}

#[utoipa::path(post, path = "/api/orders/{id}/cancel", tag = "orders", params(("id" = Uuid, Path, description = "Order id")),
    security(("bearer" = []), ("cookie" = [])),
    responses(
        (status = 200, description = "Cancelled; the stock is returned", body = OrderView),
        (status = 400, description = "Malformed id", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 404, description = "No such order, or not yours", body = ErrorBody),
        (status = 409, description = "The order is not confirmed (already cancelled, rejected or failed)", body = ErrorBody),
        (status = 503, description = "Temporarily unavailable", body = ErrorBody),
    ))]
async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<OrderView>, ApiError> {
    Ok(Json(state.service.cancel(caller, id).await?.into()))
}

#[derive(OpenApi)]
#[openapi(
    info(title = "stockmesh order service", description = "Orders: placed through a saga over product and inventory, events through a transactional outbox."),
    paths(place, list, get_order, cancel),
    components(schemas(ErrorBody, Money, OrderStatus, OrderView, OrderPage, PlaceOrderRequest)),
    tags((name = "orders", description = "Placing, reading and cancelling orders"))
)]
pub struct ApiDoc;
