//! Notifications and how one is made from an order event.

use chrono::{DateTime, Utc};
use serde::Serialize;
use stockmesh_platform::events::{ORDER_CANCELLED, ORDER_CONFIRMED, OrderEvent, Total};
use uuid::Uuid;

use crate::error::NotificationError;

/// What happened, as the event type names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub enum NotificationKind {
    #[serde(rename = "order.confirmed")]
    OrderConfirmed,
    #[serde(rename = "order.cancelled")]
    OrderCancelled,
}

impl NotificationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OrderConfirmed => ORDER_CONFIRMED,
            Self::OrderCancelled => ORDER_CANCELLED,
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            ORDER_CONFIRMED => Some(Self::OrderConfirmed),
            ORDER_CANCELLED => Some(Self::OrderCancelled),
            _ => None,
        }
    }
}

/// A stored notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub id: Uuid,
    /// The event it was made from (unique: one notification per event).
    pub event_id: Uuid,
    /// The owner: the user of the order.
    pub user_id: Uuid,
    pub order_id: Uuid,
    pub kind: NotificationKind,
    pub message: String,
    pub created_at: DateTime<Utc>,
    pub read_at: Option<DateTime<Utc>>,
}

/// What clients see of a notification.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct NotificationView {
    pub id: Uuid,
    pub order_id: Uuid,
    pub kind: NotificationKind,
    #[schema(example = "Your order of 2 × Mug (25.00 EUR) is confirmed.")]
    pub message: String,
    pub created_at: DateTime<Utc>,
    /// When the owner marked it read; null while unread.
    pub read_at: Option<DateTime<Utc>>,
}

impl From<Notification> for NotificationView {
    fn from(n: Notification) -> Self {
        Self {
            id: n.id,
            order_id: n.order_id,
            kind: n.kind,
            message: n.message,
            created_at: n.created_at,
            read_at: n.read_at,
        }
    }
}

/// A notification about to be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewNotification {
    pub event_id: Uuid,
    pub user_id: Uuid,
    pub order_id: Uuid,
    pub kind: NotificationKind,
    pub message: String,
}

/// Longest product name quoted in a message (in characters).
const MAX_NAME_CHARS: usize = 120;

impl NewNotification {
    /// The notification an event asks for; an event that cannot make sense
    /// (no owner, a non-positive quantity, a bad currency) is refused.
    pub fn from_event(event: &OrderEvent) -> Result<Self, NotificationError> {
        let kind = NotificationKind::parse(&event.kind).ok_or_else(|| {
            NotificationError::InvalidEvent(format!("unknown event type {:?}", event.kind))
        })?;
        let data = &event.data;
        if data.user_id.is_nil() {
            return Err(NotificationError::InvalidEvent("no user_id".into()));
        }
        if data.quantity < 1 {
            return Err(NotificationError::InvalidEvent(
                "quantity must be positive".into(),
            ));
        }
        if data.total.amount_minor < 0
            || data.total.currency.len() != 3
            || !data.total.currency.bytes().all(|b| b.is_ascii_uppercase())
        {
            return Err(NotificationError::InvalidEvent(
                "total must be a non-negative amount with an ISO 4217 currency".into(),
            ));
        }
        let message = message_for(kind, &data.product_name, data.quantity, &data.total);
        Ok(Self {
            event_id: event.id,
            user_id: data.user_id,
            order_id: data.order_id,
            kind,
            message,
        })
    }
}

/// "Your order of 2 × Mug (25.00 EUR) is confirmed."
pub fn message_for(kind: NotificationKind, product: &str, quantity: i64, total: &Total) -> String {
    let mut name: String = product
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_NAME_CHARS)
        .collect();
    name = name.trim().to_owned();
    if name.is_empty() {
        name = "an item".to_owned();
    }
    let money = format_money(total.amount_minor, &total.currency);
    match kind {
        NotificationKind::OrderConfirmed => {
            format!("Your order of {quantity} × {name} ({money}) is confirmed.")
        }
        NotificationKind::OrderCancelled => {
            format!("Your order of {quantity} × {name} ({money}) was cancelled.")
        }
    }
}

/// Minor units of a currency (ISO 4217 exponent; 2 unless listed).
fn minor_digits(currency: &str) -> u32 {
    match currency {
        "BIF" | "CLP" | "DJF" | "GNF" | "ISK" | "JPY" | "KMF" | "KRW" | "PYG" | "RWF" | "UGX"
        | "UYI" | "VND" | "VUV" | "XAF" | "XOF" | "XPF" => 0,
        "BHD" | "IQD" | "JOD" | "KWD" | "LYD" | "OMR" | "TND" => 3,
        _ => 2,
    }
}

/// An exact decimal amount: `2500, "EUR"` → `25.00 EUR`.
pub fn format_money(amount_minor: i64, currency: &str) -> String {
    let digits = minor_digits(currency);
    let sign = if amount_minor < 0 { "-" } else { "" };
    let abs = amount_minor.unsigned_abs();
    if digits == 0 {
        return format!("{sign}{abs} {currency}");
    }
    let unit = 10u64.pow(digits);
    format!(
        "{sign}{}.{:0width$} {currency}",
        abs / unit,
        abs % unit,
        width = digits as usize
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use stockmesh_platform::events::OrderEventData;

    fn event(kind: &str, quantity: i64, amount_minor: i64, currency: &str) -> OrderEvent {
        OrderEvent::new(
            kind,
            OrderEventData {
                order_id: Uuid::now_v7(),
                user_id: Uuid::now_v7(),
                product_id: Uuid::now_v7(),
                product_name: "Mug".into(),
                quantity,
                total: Total {
                    amount_minor,
                    currency: currency.into(),
                },
            },
        )
    }

    #[test]
    fn messages_read_well() {
        let confirmed =
            NewNotification::from_event(&event(ORDER_CONFIRMED, 2, 2500, "EUR")).unwrap();
        assert_eq!(
            confirmed.message,
            "Your order of 2 × Mug (25.00 EUR) is confirmed."
        );
        assert_eq!(confirmed.kind, NotificationKind::OrderConfirmed);
        let cancelled = NewNotification::from_event(&event(ORDER_CANCELLED, 1, 5, "USD")).unwrap();
        assert_eq!(
            cancelled.message,
            "Your order of 1 × Mug (0.05 USD) was cancelled."
        );
    }

    #[test]
    fn money_is_exact() {
        assert_eq!(format_money(0, "EUR"), "0.00 EUR");
        assert_eq!(format_money(123456, "EUR"), "1234.56 EUR");
        assert_eq!(format_money(500, "JPY"), "500 JPY");
        assert_eq!(format_money(1005, "KWD"), "1.005 KWD");
        assert_eq!(format_money(-250, "EUR"), "-2.50 EUR");
        assert_eq!(format_money(i64::MIN, "EUR"), "-92233720368547758.08 EUR");
    }

    #[test]
    fn names_are_cleaned() {
        let total = Total {
            amount_minor: 100,
            currency: "EUR".into(),
        };
        let long = "x".repeat(500);
        let message = message_for(NotificationKind::OrderConfirmed, &long, 1, &total);
        assert!(message.len() < 200, "{message}");
        let message = message_for(NotificationKind::OrderConfirmed, " \n\u{7} ", 1, &total);
        assert_eq!(
            message,
            "Your order of 1 × an item (1.00 EUR) is confirmed."
        );
    }

    #[test]
    fn nonsense_events_are_refused() {
        for bad in [
            event(ORDER_CONFIRMED, 0, 100, "EUR"),
            event(ORDER_CONFIRMED, 1, -1, "EUR"),
            event(ORDER_CONFIRMED, 1, 100, "eur"),
            event("order.teleported", 1, 100, "EUR"),
        ] {
            assert!(matches!(
                NewNotification::from_event(&bad),
                Err(NotificationError::InvalidEvent(_))
            ));
        }
        let mut no_owner = event(ORDER_CONFIRMED, 1, 100, "EUR");
        no_owner.data.user_id = Uuid::nil();
        assert!(NewNotification::from_event(&no_owner).is_err());
    }
}
