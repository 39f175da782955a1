//! Products and the rules for their fields.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::ProductError;

/// Largest price accepted: 10^12 minor units.
pub const MAX_PRICE_MINOR: i64 = 1_000_000_000_000;
/// Largest stock level (inventory's own limit).
pub const MAX_STOCK: i64 = 1_000_000_000;

/// An amount of money in integer minor units (cents) of a currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Money {
    /// Minor units (e.g. cents), 0 to 10^12.
    #[schema(minimum = 0, maximum = 1000000000000_i64, example = 1999)]
    pub amount_minor: i64,
    /// ISO 4217 code, three upper-case letters.
    #[schema(example = "EUR", pattern = "^[A-Z]{3}$")]
    pub currency: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Product {
    pub id: Uuid,
    pub name: String,
    pub description: String,
    pub price: Money,
    pub stock_synced: bool,
    pub initial_stock: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

pub fn check_name(raw: &str) -> Result<String, ProductError> {
    let name = raw.trim();
    if name.is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
        return Err(ProductError::Invalid(
            "name must have 1 to 200 printable characters",
        ));
    }
    Ok(name.to_owned())
}

pub fn check_description(raw: &str) -> Result<String, ProductError> {
    if raw.chars().count() > 2000 {
        return Err(ProductError::Invalid(
            "description must have at most 2000 characters",
        ));
    }
    Ok(raw.trim().to_owned())
}

pub fn check_price(price: &Money) -> Result<Money, ProductError> {
    if !(0..=MAX_PRICE_MINOR).contains(&price.amount_minor) {
        return Err(ProductError::Invalid(
            "price.amount_minor must be between 0 and 10^12",
        ));
    }
    let currency = price.currency.trim();
    if currency.len() != 3 || !currency.chars().all(|c| c.is_ascii_uppercase()) {
        return Err(ProductError::Invalid(
            "price.currency must be an ISO 4217 code like EUR",
        ));
    }
    Ok(Money {
        amount_minor: price.amount_minor,
        currency: currency.to_owned(),
    })
}

pub fn check_stock(quantity: i64) -> Result<i64, ProductError> {
    if !(0..=MAX_STOCK).contains(&quantity) {
        return Err(ProductError::Invalid(
            "quantity must be between 0 and 1000000000",
        ));
    }
    Ok(quantity)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_rules() {
        assert!(check_name("  ").is_err());
        assert_eq!(check_name(" Mug ").unwrap(), "Mug");
        assert!(
            check_price(&Money {
                amount_minor: -1,
                currency: "EUR".into()
            })
            .is_err()
        );
        assert!(
            check_price(&Money {
                amount_minor: 1,
                currency: "eur".into()
            })
            .is_err()
        );
        assert!(
            check_price(&Money {
                amount_minor: 1,
                currency: "EURO".into()
            })
            .is_err()
        );
        assert!(
            check_price(&Money {
                amount_minor: 0,
                currency: "EUR".into()
            })
            .is_ok()
        );
        assert!(check_stock(-1).is_err());
        assert!(check_stock(MAX_STOCK + 1).is_err());
    }
}
