//! The inventory's vocabulary: validated inputs and the records it returns.

use uuid::Uuid;

use crate::error::InventoryError;

/// Largest quantity accepted anywhere (stock level, reservation, delta):
/// far beyond any real shelf, far below `i64` overflow when added up.
pub const MAX_QUANTITY: i64 = 1_000_000_000;

/// Stock of one product.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct Stock {
    pub product_id: Uuid,
    pub available: i64,
    pub reserved: i64,
}

/// Lifecycle of a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReservationState {
    Reserved,
    Released,
    Committed,
}

impl ReservationState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reserved => "reserved",
            Self::Released => "released",
            Self::Committed => "committed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "reserved" => Some(Self::Reserved),
            "released" => Some(Self::Released),
            "committed" => Some(Self::Committed),
            _ => None,
        }
    }
}

/// What a commit found for one order (the batch form of `Commit`'s answers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitResult {
    /// Committed now or before.
    Committed,
    /// Released: nothing to commit.
    Released,
    /// The order never reserved.
    NotFound,
}

/// Units of one product held for one order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    pub order_id: Uuid,
    pub product_id: Uuid,
    pub quantity: i64,
    pub state: ReservationState,
}

/// Parses an id from the wire, naming the field when it is malformed.
pub fn parse_id(field: &'static str, raw: &str) -> Result<Uuid, InventoryError> {
    Uuid::parse_str(raw.trim()).map_err(|_| InventoryError::InvalidId { field })
}

/// A quantity that must be at least 1 (reservations).
pub fn positive_quantity(field: &'static str, value: i64) -> Result<i64, InventoryError> {
    if value <= 0 {
        return Err(InventoryError::InvalidQuantity {
            field,
            reason: "must be at least 1",
        });
    }
    if value > MAX_QUANTITY {
        return Err(InventoryError::InvalidQuantity {
            field,
            reason: "exceeds the maximum of 1000000000",
        });
    }
    Ok(value)
}

/// A stock level: zero allowed, negative not.
pub fn stock_level(field: &'static str, value: i64) -> Result<i64, InventoryError> {
    if value < 0 {
        return Err(InventoryError::InvalidQuantity {
            field,
            reason: "must not be negative",
        });
    }
    if value > MAX_QUANTITY {
        return Err(InventoryError::InvalidQuantity {
            field,
            reason: "exceeds the maximum of 1000000000",
        });
    }
    Ok(value)
}

/// A non-zero delta within ±MAX_QUANTITY.
pub fn delta(field: &'static str, value: i64) -> Result<i64, InventoryError> {
    if value == 0 {
        return Err(InventoryError::InvalidQuantity {
            field,
            reason: "must not be zero",
        });
    }
    if value.unsigned_abs() > MAX_QUANTITY as u64 {
        return Err(InventoryError::InvalidQuantity {
            field,
            reason: "exceeds the maximum of 1000000000 in magnitude",
        });
    }
    Ok(value)
}
