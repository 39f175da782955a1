//! Orders and their life cycle.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

/// Largest quantity of one order line.
pub const MAX_QUANTITY: i64 = 1000;

/// PENDING → CONFIRMED → CANCELLED, or PENDING → REJECTED (no stock) /
/// FAILED (a dependency failed; any reservation is released).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    Pending,
    Confirmed,
    Rejected,
    Failed,
    Cancelled,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Confirmed => "CONFIRMED",
            Self::Rejected => "REJECTED",
            Self::Failed => "FAILED",
            Self::Cancelled => "CANCELLED",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "PENDING" => Some(Self::Pending),
            "CONFIRMED" => Some(Self::Confirmed),
            "REJECTED" => Some(Self::Rejected),
            "FAILED" => Some(Self::Failed),
            "CANCELLED" => Some(Self::Cancelled),
            _ => None,
        }
    }
}

/// Which orders a listing returns. A user always sees only their own; an
/// administrator may ask for everyone's and narrow by user, product and
/// status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OrderFilter {
    pub user_id: Option<Uuid>,
    pub product_id: Option<Uuid>,
    pub status: Option<OrderStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Money {
    pub amount_minor: i64,
    pub currency: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub id: Uuid,
    pub user_id: Uuid,
    pub product_id: Uuid,
    pub product_name: String,
    pub quantity: i64,
    pub unit_price_minor: i64,
    pub total_minor: i64,
    pub currency: String,
    pub status: OrderStatus,
    pub failure_reason: Option<String>,
    pub idempotency_key: Option<String>,
    pub request_hash: Option<String>,
    /// The trace of the request that placed it, when tracing was on.
    pub trace_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// What clients see of an order.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct OrderView {
    pub id: Uuid,
    pub user_id: Uuid,
    pub product_id: Uuid,
    pub product_name: String,
    pub quantity: i64,
    pub unit_price: Money,
    pub total: Money,
    pub status: OrderStatus,
    pub failure_reason: Option<String>,
    /// W3C trace id of the request that placed the order (null when tracing
    /// was off): look it up in Jaeger.
    pub trace_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<Order> for OrderView {
    fn from(o: Order) -> Self {
        Self {
            id: o.id,
            user_id: o.user_id,
            product_id: o.product_id,
            product_name: o.product_name,
            quantity: o.quantity,
            unit_price: Money {
                amount_minor: o.unit_price_minor,
                currency: o.currency.clone(),
            },
            total: Money {
                amount_minor: o.total_minor,
                currency: o.currency,
            },
            status: o.status,
            failure_reason: o.failure_reason,
            trace_id: o.trace_id,
            created_at: o.created_at,
            updated_at: o.updated_at,
        }
    }
}

/// The canonical form of a request, to tell a replay from a different
/// request under the same idempotency key.
pub fn request_hash(product_id: Uuid, quantity: i64) -> String {
    format!("{product_id}:{quantity}")
}
