//! Request extractors whose rejections use the standard error document.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::error::{ApiError, ErrorKind};

/// JSON body: malformed JSON is 400, a wrong shape or type is 422, a wrong
/// content type is 400, an oversized body is 413.
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::JsonDataError(err) => {
            ApiError::new(ErrorKind::Validation, err.body_text()).with_code("invalid_body")
        }
        JsonRejection::JsonSyntaxError(err) => {
            ApiError::new(ErrorKind::BadRequest, err.body_text()).with_code("malformed_json")
        }
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            ErrorKind::BadRequest,
            "expected Content-Type: application/json",
        )
        .with_code("unsupported_media_type"),
        JsonRejection::BytesRejection(err)
            if err.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE =>
        {
            ApiError::new(ErrorKind::PayloadTooLarge, "request body too large")
        }
        other => ApiError::new(ErrorKind::BadRequest, other.body_text()),
    }
}

/// Query string, with 400 and a readable message when malformed.
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Self(value)),
            Err(rejection) => Err(query_rejection(rejection)),
        }
    }
}

fn query_rejection(rejection: QueryRejection) -> ApiError {
    ApiError::new(ErrorKind::BadRequest, rejection.body_text()).with_code("invalid_query")
}

/// Path parameters, with 400 (not a raw 400 text body) for a malformed id.
pub struct ApiPath<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Self(value)),
            Err(rejection) => Err(ApiError::new(ErrorKind::BadRequest, rejection.body_text())
                .with_code("invalid_path")),
        }
    }
}

/// `?limit=&offset=` paging, bounded.
#[derive(Debug, Clone, Copy, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Paging {
    /// Items per page, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// Items to skip (default 0).
    #[param(minimum = 0, maximum = 1000000)]
    pub offset: Option<i64>,
}

impl Paging {
    pub const MAX_LIMIT: i64 = 100;
    pub const MAX_OFFSET: i64 = 1_000_000;

    /// Validated `(limit, offset)`.
    pub fn bounds(&self) -> Result<(i64, i64), ApiError> {
        let limit = self.limit.unwrap_or(20);
        let offset = self.offset.unwrap_or(0);
        if !(1..=Self::MAX_LIMIT).contains(&limit) {
            return Err(
                ApiError::new(ErrorKind::BadRequest, "limit must be between 1 and 100")
                    .with_code("invalid_query"),
            );
        }
        if !(0..=Self::MAX_OFFSET).contains(&offset) {
            return Err(ApiError::new(
                ErrorKind::BadRequest,
                "offset must be between 0 and 1000000",
            )
            .with_code("invalid_query"));
        }
        Ok((limit, offset))
    }
}
