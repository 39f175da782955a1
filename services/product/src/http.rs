//! HTTP handlers: translate JSON and tokens to service calls and back.

use axum::extract::{FromRef, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use stockmesh_platform::ApiError;
use stockmesh_platform::auth::{Admin, Verifier};
use stockmesh_platform::error::ErrorBody;
use stockmesh_platform::extract::{ApiJson, ApiPath, ApiQuery, Paging};
use utoipa::OpenApi;
use uuid::Uuid;

use crate::domain::{Money, Product};
use crate::service::{ProductService, ProductUpdate, StockView};

#[derive(Clone)]
pub struct AppState {
    pub service: ProductService,
    pub verifier: Verifier,
}

impl FromRef<AppState> for Verifier {
    fn from_ref(state: &AppState) -> Self {
        state.verifier.clone()
    }
}

/// A product as clients see it, with its current stock when known.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ProductView {
    pub id: Uuid,
    pub name: String,
    pub description: String,
    pub price: Money,
    /// Units available now; `null` when unknown (see `stock_reason`).
    pub stock: Option<i64>,
    /// Why `stock` is null.
    pub stock_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

fn view(product: Product, stock: StockView) -> ProductView {
    let (stock, stock_reason) = match stock {
        StockView::Known(n) => (Some(n), None),
        StockView::Unknown(reason) => (None, Some(reason.to_owned())),
    };
    ProductView {
        id: product.id,
        name: product.name,
        description: product.description,
        price: product.price,
        stock,
        stock_reason,
        created_at: product.created_at,
        updated_at: product.updated_at,
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ProductPage {
    pub items: Vec<ProductView>,
    pub total: i64,
    pub limit: i64,
    pub offset: i64,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProductRequest {
    #[schema(example = "Espresso cup", min_length = 1, max_length = 200)]
    pub name: String,
    #[serde(default)]
    #[schema(max_length = 2000)]
    pub description: String,
    pub price: Money,
    /// Units in stock at creation (default 0).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 1000000000)]
    pub initial_stock: i64,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateProductRequest {
    #[schema(min_length = 1, max_length = 200)]
    pub name: Option<String>,
    #[schema(max_length = 2000)]
    pub description: Option<String>,
    pub price: Option<Money>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetStockRequest {
    #[schema(minimum = 0, maximum = 1000000000)]
    pub quantity: i64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StockResponse {
    pub product_id: Uuid,
    pub stock: i64,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/products", get(list).post(create))
        .route(
            "/api/products/{id}",
            get(get_product).patch(update).delete(delete),
        )
        .route("/api/products/{id}/stock", put(set_stock))
        .route(
            "/api/products/openapi.json",
            stockmesh_platform::openapi::route::<ApiDoc, _>(),
        )
        .with_state(state)
}

/// Catalog search.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CatalogQuery {
    /// Only products whose name or description contains this text
    /// (case-insensitive, at most 100 characters).
    pub q: Option<String>,
}

#[utoipa::path(get, path = "/api/products", tag = "products", params(Paging, CatalogQuery),
    responses(
        (status = 200, description = "Live products, oldest first, with stock when inventory answers", body = ProductPage),
        (status = 400, description = "Bad paging parameters", body = ErrorBody),
        (status = 503, description = "Temporarily unavailable", body = ErrorBody),
    ))]
async fn list(
    State(state): State<AppState>,
    ApiQuery(paging): ApiQuery<Paging>,
    ApiQuery(query): ApiQuery<CatalogQuery>,
) -> Result<Json<ProductPage>, ApiError> {
    let (limit, offset) = paging.bounds()?;
    let search = query.q.as_deref().map(str::trim).filter(|q| !q.is_empty());
    if search.is_some_and(|q| q.chars().count() > 100) {
        return Err(
            ApiError::bad_request("q must be at most 100 characters").with_code("invalid_query")
        );
    }
    // PostgreSQL text cannot hold NUL; no product name holds control characters.
    if search.is_some_and(|q| q.chars().any(char::is_control)) {
        return Err(
            ApiError::bad_request("q must not contain control characters")
                .with_code("invalid_query"),
        );
    }
    let (products, total) = state.service.list(search, limit, offset).await?;
    let mut stock = state.service.stock_of(&products).await;
    let items = products
        .into_iter()
        .map(|p| {
            let s = stock
                .remove(&p.id)
                .unwrap_or(StockView::Unknown("inventory unavailable"));
            view(p, s)
        })
        .collect();
    Ok(Json(ProductPage {
        items,
        total,
        limit,
        offset,
    }))
}

#[utoipa::path(get, path = "/api/products/{id}", tag = "products", params(("id" = Uuid, Path, description = "Product id")),
    responses(
        (status = 200, description = "The product, with stock when inventory answers", body = ProductView),
        (status = 400, description = "Malformed id", body = ErrorBody),
        (status = 404, description = "No such product", body = ErrorBody),
        (status = 503, description = "Temporarily unavailable", body = ErrorBody),
    ))]
async fn get_product(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<ProductView>, ApiError> {
    let product = state.service.get(id).await?;
    let stock = state
        .service
        .stock_of(std::slice::from_ref(&product))
        .await
        .remove(&product.id)
        .unwrap_or(StockView::Unknown("inventory unavailable"));
    Ok(Json(view(product, stock)))
}

#[utoipa::path(post, path = "/api/products", tag = "products", request_body = CreateProductRequest,
    security(("bearer" = []), ("cookie" = [])),
    responses(
        (status = 201, description = "Created; `stock` is null while inventory is unreachable (it is recorded when it returns)", body = ProductView),
        (status = 400, description = "Malformed request", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Administrators only", body = ErrorBody),
        (status = 409, description = "Name already used by a live product", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "Invalid field values", body = ErrorBody),
        (status = 503, description = "Temporarily unavailable", body = ErrorBody),
    ))]
async fn create(
    State(state): State<AppState>,
    _admin: Admin,
    ApiJson(body): ApiJson<CreateProductRequest>,
) -> Result<Response, ApiError> {
    let (product, stock) = state
        .service
        .create(
            &body.name,
            &body.description,
            &body.price,
            body.initial_stock,
        )
        .await?;
    Ok((StatusCode::CREATED, Json(view(product, stock))).into_response())
}

#[utoipa::path(patch, path = "/api/products/{id}", tag = "products", params(("id" = Uuid, Path, description = "Product id")),
    request_body = UpdateProductRequest, security(("bearer" = []), ("cookie" = [])),
    responses(
        (status = 200, description = "Updated product (stock not included)", body = ProductView),
        (status = 400, description = "Malformed request", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Administrators only", body = ErrorBody),
        (status = 404, description = "No such product", body = ErrorBody),
        (status = 409, description = "Name already used by a live product", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "Invalid field values", body = ErrorBody),
        (status = 503, description = "Temporarily unavailable", body = ErrorBody),
    ))]
async fn update(
    State(state): State<AppState>,
    _admin: Admin,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<UpdateProductRequest>,
) -> Result<Json<ProductView>, ApiError> {
    let update = ProductUpdate {
        name: body.name,
        description: body.description,
        price: body.price,
    };
    let product = state.service.update(id, update).await?;
    Ok(Json(view(
        product,
        StockView::Unknown("not included in this answer"),
    )))
}

#[utoipa::path(delete, path = "/api/products/{id}", tag = "products", params(("id" = Uuid, Path, description = "Product id")),
    security(("bearer" = []), ("cookie" = [])),
    responses(
        (status = 204, description = "Deleted (kept for past orders, hidden from the catalog)"),
        (status = 400, description = "Malformed id", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Administrators only", body = ErrorBody),
        (status = 404, description = "No such product", body = ErrorBody),
        (status = 503, description = "Temporarily unavailable", body = ErrorBody),
    ))]
async fn delete(
    State(state): State<AppState>,
    _admin: Admin,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<StatusCode, ApiError> {
    state.service.delete(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(put, path = "/api/products/{id}/stock", tag = "products", params(("id" = Uuid, Path, description = "Product id")),
    request_body = SetStockRequest, security(("bearer" = []), ("cookie" = [])),
    responses(
        (status = 200, description = "Stock recorded in inventory", body = StockResponse),
        (status = 400, description = "Malformed request", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Administrators only", body = ErrorBody),
        (status = 404, description = "No such product", body = ErrorBody),
        (status = 409, description = "Inventory refused the change", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "Invalid quantity", body = ErrorBody),
        (status = 503, description = "Inventory unavailable; see Retry-After", body = ErrorBody),
        (status = 504, description = "Inventory did not answer in time", body = ErrorBody),
    ))]
async fn set_stock(
    State(state): State<AppState>,
    _admin: Admin,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<SetStockRequest>,
) -> Result<Json<StockResponse>, ApiError> {
    let stock = state.service.set_stock(id, body.quantity).await?;
    Ok(Json(StockResponse {
        product_id: id,
        stock,
    }))
}

#[derive(OpenApi)]
#[openapi(
    info(title = "stockmesh product service", description = "The catalog; writes are for administrators."),
    paths(list, get_product, create, update, delete, set_stock),
    components(schemas(ErrorBody, Money, ProductView, ProductPage, CreateProductRequest, UpdateProductRequest, SetStockRequest, StockResponse)),
    tags((name = "products", description = "Catalog and stock administration"))
)]
pub struct ApiDoc;
