//! Everything that can go wrong in the product service, and how clients see it.

use std::time::Duration;

use stockmesh_platform::{ApiError, ErrorKind};

#[derive(Debug, thiserror::Error)]
pub enum ProductError {
    #[error("{0}")]
    Invalid(&'static str),
    #[error("{0} must be a UUID")]
    InvalidId(&'static str),
    #[error("too many ids (at most {0})")]
    TooManyIds(usize),
    #[error("product not found")]
    NotFound,
    #[error("a product with this name already exists")]
    NameTaken,
    #[error("inventory is unavailable, retry shortly")]
    InventoryUnavailable,
    #[error("inventory did not answer in time")]
    InventoryTimeout,
    #[error("inventory refused: {0}")]
    InventoryRefused(String),
    #[error("database unavailable")]
    Unavailable(#[source] sqlx::Error),
    #[error("database error")]
    Database(#[source] sqlx::Error),
}

impl From<sqlx::Error> for ProductError {
    fn from(err: sqlx::Error) -> Self {
        if matches!(&err, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505")) {
            Self::NameTaken
        } else if stockmesh_platform::db::is_connection_error(&err) {
            Self::Unavailable(err)
        } else {
            Self::Database(err)
        }
    }
}

/// Reads a failed inventory call.
impl From<tonic::Status> for ProductError {
    fn from(status: tonic::Status) -> Self {
        match status.code() {
            tonic::Code::DeadlineExceeded => Self::InventoryTimeout,
            tonic::Code::InvalidArgument
            | tonic::Code::FailedPrecondition
            | tonic::Code::NotFound => Self::InventoryRefused(status.message().to_owned()),
            _ => {
                tracing::warn!(code = ?status.code(), message = status.message(), "inventory call failed");
                Self::InventoryUnavailable
            }
        }
    }
}

impl From<ProductError> for ApiError {
    fn from(err: ProductError) -> Self {
        use ProductError::*;
        match &err {
            Invalid(_) | TooManyIds(_) => ApiError::validation(err.to_string()),
            InvalidId(_) => ApiError::bad_request(err.to_string()),
            NotFound => ApiError::not_found(err.to_string()),
            NameTaken => {
                ApiError::new(ErrorKind::Conflict, err.to_string()).with_code("name_taken")
            }
            InventoryUnavailable => ApiError::unavailable(err.to_string(), Duration::from_secs(2))
                .with_code("inventory_unavailable"),
            InventoryTimeout => ApiError::new(ErrorKind::Timeout, err.to_string())
                .with_code("inventory_timeout")
                .with_retry_after(Duration::from_secs(2)),
            InventoryRefused(_) => ApiError::new(ErrorKind::FailedPrecondition, err.to_string())
                .with_code("inventory_refused"),
            Unavailable(source) => {
                tracing::warn!(error = %stockmesh_platform::error::ErrorChain(source), "database unavailable");
                ApiError::unavailable("product database unavailable", Duration::from_secs(1))
            }
            Database(source) => ApiError::internal(source),
        }
    }
}

impl From<ProductError> for tonic::Status {
    fn from(err: ProductError) -> Self {
        ApiError::from(err).into()
    }
}
