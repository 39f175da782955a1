//! Everything that can go wrong in the order service, and how clients see it.

use std::time::Duration;

use stockmesh_platform::{ApiError, ErrorKind};
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    #[error("{0}")]
    Invalid(&'static str),
    #[error("{0}")]
    BadRequest(&'static str),
    #[error("product {0} does not exist")]
    UnknownProduct(Uuid),
    #[error("insufficient stock: {0}")]
    InsufficientStock(String),
    #[error("order not found")]
    NotFound,
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("the Idempotency-Key was already used with a different request")]
    IdempotencyMismatch,
    #[error("a request with this Idempotency-Key is still in progress")]
    InProgress,
    #[error("order {0} failed; retry with a new Idempotency-Key")]
    PreviouslyFailed(Uuid),
    #[error("order is {0} and cannot be cancelled")]
    NotCancellable(&'static str),
    #[error("{0} is unavailable, retry shortly")]
    UpstreamUnavailable(&'static str, Duration),
    #[error("{0} did not answer in time")]
    UpstreamTimeout(&'static str),
    #[error("{0} refused the request: {1}")]
    UpstreamRefused(&'static str, String),
    #[error("database unavailable")]
    Unavailable(#[source] sqlx::Error),
    #[error("database error")]
    Database(#[source] sqlx::Error),
}

impl From<sqlx::Error> for OrderError {
    fn from(err: sqlx::Error) -> Self {
        if stockmesh_platform::db::is_connection_error(&err) {
            Self::Unavailable(err)
        } else {
            Self::Database(err)
        }
    }
}

impl OrderError {
    /// Reads a failed call to `upstream` that is not an expected refusal.
    pub fn upstream(upstream: &'static str, status: &tonic::Status) -> Self {
        match status.code() {
            tonic::Code::DeadlineExceeded => Self::UpstreamTimeout(upstream),
            tonic::Code::Unavailable
            | tonic::Code::ResourceExhausted
            | tonic::Code::Unknown
            | tonic::Code::Cancelled => {
                let retry_after = status
                    .metadata()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .map(Duration::from_secs)
                    .unwrap_or(Duration::from_secs(1));
                Self::UpstreamUnavailable(upstream, retry_after)
            }
            _ => Self::UpstreamRefused(upstream, status.message().to_owned()),
        }
    }
}

impl From<OrderError> for ApiError {
    fn from(err: OrderError) -> Self {
        use OrderError::*;
        match &err {
            Invalid(_) => ApiError::validation(err.to_string()),
            BadRequest(_) => ApiError::bad_request(err.to_string()),
            UnknownProduct(_) => ApiError::validation(err.to_string()).with_code("unknown_product"),
            InsufficientStock(_) => ApiError::new(ErrorKind::FailedPrecondition, err.to_string())
                .with_code("insufficient_stock"),
            NotFound => ApiError::not_found(err.to_string()),
            Forbidden(_) => ApiError::new(ErrorKind::Forbidden, err.to_string()),
            IdempotencyMismatch => {
                ApiError::validation(err.to_string()).with_code("idempotency_key_reused")
            }
            InProgress => ApiError::new(ErrorKind::Conflict, err.to_string())
                .with_code("request_in_progress")
                .with_retry_after(Duration::from_secs(1)),
            PreviouslyFailed(_) => {
                ApiError::new(ErrorKind::Conflict, err.to_string()).with_code("order_failed")
            }
            NotCancellable(_) => ApiError::new(ErrorKind::FailedPrecondition, err.to_string())
                .with_code("not_cancellable"),
            UpstreamUnavailable(_, after) => {
                ApiError::new(ErrorKind::Unavailable, err.to_string()).with_retry_after(*after)
            }
            UpstreamTimeout(_) => ApiError::new(ErrorKind::Timeout, err.to_string())
                .with_retry_after(Duration::from_secs(1)),
            UpstreamRefused(_, _) => {
                tracing::error!(error = %err, "upstream refused an order step");
                ApiError::new(ErrorKind::Internal, "internal error")
            }
            Unavailable(source) => {
                tracing::warn!(error = %stockmesh_platform::error::ErrorChain(source), "database unavailable");
                ApiError::unavailable("order database unavailable", Duration::from_secs(1))
            }
            Database(source) => ApiError::internal(source),
        }
    }
}
