//! The events stockmesh publishes, defined once for publisher and consumer.
//!
//! Format: JSON (readable in the RabbitMQ UI and in the outbox table, and
//! the payloads are tiny). Every event is an [`Envelope`] with an `id`
//! (consumers deduplicate on it), a `type` that is also the routing key, a
//! `version` of the data shape, `occurred_at`, and `data`. A consumer that
//! meets an unknown version or a malformed payload dead-letters it rather
//! than guessing.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The durable topic exchange every event goes to.
pub const EXCHANGE: &str = "stockmesh.events";
/// Where rejected messages go (bound to the dead-letter queues).
pub const DEAD_LETTER_EXCHANGE: &str = "stockmesh.events.dlx";

pub const ORDER_CONFIRMED: &str = "order.confirmed";
pub const ORDER_CANCELLED: &str = "order.cancelled";

/// The version of [`OrderEventData`] this code writes and reads.
pub const ORDER_EVENT_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub id: Uuid,
    #[serde(rename = "type")]
    pub kind: String,
    pub version: u32,
    pub occurred_at: DateTime<Utc>,
    pub data: T,
}

/// Money in events: integer minor units and an ISO 4217 code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Total {
    pub amount_minor: i64,
    pub currency: String,
}

/// What every order event carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderEventData {
    pub order_id: Uuid,
    pub user_id: Uuid,
    pub product_id: Uuid,
    pub product_name: String,
    pub quantity: i64,
    pub total: Total,
}

pub type OrderEvent = Envelope<OrderEventData>;

/// Why a message could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("malformed event: {0}")]
    Malformed(String),
    #[error("unsupported event version {version} of {kind}")]
    UnsupportedVersion { kind: String, version: u32 },
    #[error("unknown event type {0}")]
    UnknownType(String),
}

impl OrderEvent {
    pub fn new(kind: &str, data: OrderEventData) -> Self {
        Self {
            id: Uuid::now_v7(),
            kind: kind.to_owned(),
            version: ORDER_EVENT_VERSION,
            occurred_at: Utc::now(),
            data,
        }
    }

    /// Reads an order event, refusing unknown types and versions.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        #[derive(Deserialize)]
        struct Head {
            #[serde(rename = "type")]
            kind: String,
            version: u32,
        }
        let head: Head =
            serde_json::from_slice(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))?;
        if head.kind != ORDER_CONFIRMED && head.kind != ORDER_CANCELLED {
            return Err(DecodeError::UnknownType(head.kind));
        }
        if head.version != ORDER_EVENT_VERSION {
            return Err(DecodeError::UnsupportedVersion {
                kind: head.kind,
                version: head.version,
            });
        }
        serde_json::from_slice(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> OrderEvent {
        OrderEvent::new(
            ORDER_CONFIRMED,
            OrderEventData {
                order_id: Uuid::now_v7(),
                user_id: Uuid::now_v7(),
                product_id: Uuid::now_v7(),
                product_name: "Mug".into(),
                quantity: 2,
                total: Total {
                    amount_minor: 2500,
                    currency: "EUR".into(),
                },
            },
        )
    }

    #[test]
    fn round_trips_and_refuses_what_it_cannot_read() {
        let event = sample();
        let bytes = serde_json::to_vec(&event).unwrap();
        assert_eq!(OrderEvent::decode(&bytes).unwrap(), event);
        let mut future: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        future["version"] = 2.into();
        assert!(matches!(
            OrderEvent::decode(future.to_string().as_bytes()),
            Err(DecodeError::UnsupportedVersion { version: 2, .. })
        ));
        future["version"] = 1.into();
        future["type"] = "order.teleported".into();
        assert!(matches!(
            OrderEvent::decode(future.to_string().as_bytes()),
            Err(DecodeError::UnknownType(_))
        ));
        assert!(matches!(
            OrderEvent::decode(b"{not json"),
            Err(DecodeError::Malformed(_))
        ));
        future["type"] = ORDER_CONFIRMED.into();
        future["data"]["quantity"] = "two".into();
        assert!(matches!(
            OrderEvent::decode(future.to_string().as_bytes()),
            Err(DecodeError::Malformed(_))
        ));
    }
}
