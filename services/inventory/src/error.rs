//! Everything that can go wrong in the inventory, and how clients see it.

use stockmesh_platform::{ApiError, ErrorKind};
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("{field} must be a UUID")]
    InvalidId { field: &'static str },
    #[error("{field} {reason}")]
    InvalidQuantity {
        field: &'static str,
        reason: &'static str,
    },
    #[error("too many {field} (at most {max})")]
    TooManyIds { field: &'static str, max: usize },
    #[error("no stock record for product {0}")]
    UnknownProduct(Uuid),
    #[error("no reservation for order {0}")]
    UnknownReservation(Uuid),
    #[error(
        "insufficient stock for product {product_id}: requested {requested}, available {available}"
    )]
    InsufficientStock {
        product_id: Uuid,
        requested: i64,
        available: i64,
    },
    #[error("order {0} already holds a different reservation")]
    ReservationMismatch(Uuid),
    #[error(
        "stock of product {product_id} would become negative (available {available}, delta {delta})"
    )]
    WouldGoNegative {
        product_id: Uuid,
        available: i64,
        delta: i64,
    },
    #[error("stock of product {0} would exceed the maximum of 1000000000")]
    WouldOverflow(Uuid),
    #[error("reservation of order {0} was released and cannot be committed")]
    AlreadyReleased(Uuid),
    /// A Reserve for an order that was already released (a late or
    /// repeated call after the caller gave the order up).
    #[error("order {0} was released; nothing can be reserved for it any more")]
    ReservationReleased(Uuid),
    #[error("database unavailable")]
    Unavailable(#[source] sqlx::Error),
    #[error("database error")]
    Database(#[source] sqlx::Error),
}

impl From<sqlx::Error> for InventoryError {
    fn from(err: sqlx::Error) -> Self {
        if stockmesh_platform::db::is_connection_error(&err) {
            Self::Unavailable(err)
        } else {
            Self::Database(err)
        }
    }
}

impl From<InventoryError> for ApiError {
    fn from(err: InventoryError) -> Self {
        use InventoryError::*;
        match &err {
            InvalidId { .. } | InvalidQuantity { .. } | TooManyIds { .. } => {
                ApiError::new(ErrorKind::Validation, err.to_string())
            }
            UnknownProduct(_) => ApiError::not_found(err.to_string()).with_code("unknown_product"),
            UnknownReservation(_) => {
                ApiError::not_found(err.to_string()).with_code("unknown_reservation")
            }
            InsufficientStock { .. } => {
                ApiError::new(ErrorKind::FailedPrecondition, err.to_string())
                    .with_code("insufficient_stock")
            }
            ReservationMismatch(_) => ApiError::new(ErrorKind::Conflict, err.to_string())
                .with_code("reservation_mismatch"),
            WouldGoNegative { .. } | WouldOverflow(_) => {
                ApiError::new(ErrorKind::FailedPrecondition, err.to_string())
                    .with_code("stock_out_of_range")
            }
            AlreadyReleased(_) | ReservationReleased(_) => {
                ApiError::new(ErrorKind::FailedPrecondition, err.to_string())
                    .with_code("reservation_released")
            }
            Unavailable(source) => {
                tracing::warn!(error = %stockmesh_platform::error::ErrorChain(source), "database unavailable");
                ApiError::unavailable(
                    "inventory database unavailable",
                    std::time::Duration::from_secs(1),
                )
            }
            Database(source) => ApiError::internal(source),
        }
    }
}

impl From<InventoryError> for tonic::Status {
    fn from(err: InventoryError) -> Self {
        if let InventoryError::ReservationReleased(_) = err {
            // ABORTED, not FAILED_PRECONDITION: the call lost a race with
            // the order's Release, which callers must tell apart from a
            // shortage (FAILED_PRECONDITION); retrying it cannot succeed.
            let mut status = tonic::Status::aborted(err.to_string());
            status.metadata_mut().insert(
                "error-code",
                tonic::metadata::MetadataValue::from_static("reservation_released"),
            );
            return status;
        }
        ApiError::from(err).into()
    }
}
