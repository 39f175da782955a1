//! The order saga (ARCHITECTURE.md, "The order saga"):
//! 1. validate; price and name from product;
//! 2. store the order PENDING;
//! 3. inventory `Reserve` keyed by the order id (idempotent);
//! 4. shortage → REJECTED (409);
//! 5. CONFIRMED + the `order.confirmed` outbox row in one transaction (201);
//! 6. any failure after step 3 → `Release` (idempotent) and FAILED.
//!
//! A compensation that cannot run now (inventory down) is recorded
//! (`needs_release`) and retried by [`OrderService::sweep`], which also
//! fails orders whose saga died while PENDING. Nothing is left half-done.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use stockmesh_platform::auth::Caller;
use stockmesh_platform::broker;
use stockmesh_platform::events::{
    ORDER_CANCELLED, ORDER_CONFIRMED, OrderEvent, OrderEventData, Total,
};
use tokio::sync::Notify;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use uuid::Uuid;

use crate::clients::Upstreams;
use crate::domain::{MAX_QUANTITY, Order, OrderStatus, request_hash};
use crate::error::OrderError;
use crate::repository::{OrderRepository, OutboxEvent};

#[derive(Clone)]
pub struct OrderService {
    repository: OrderRepository,
    upstreams: Upstreams,
    /// Wakes the outbox relay after an event was committed.
    relay_wake: Arc<Notify>,
}

/// The outcome of placing an order: the order, and whether this call
/// created it (false: an idempotent replay).
pub struct Placed {
    pub order: Order,
    pub created_now: bool,
}

impl OrderService {
    pub fn new(repository: OrderRepository, upstreams: Upstreams, relay_wake: Arc<Notify>) -> Self {
        Self {
            repository,
            upstreams,
            relay_wake,
        }
    }

    pub async fn place(
        &self,
        caller: Caller,
        product_id: Uuid,
        quantity: i64,
        idempotency_key: Option<&str>,
    ) -> Result<Placed, OrderError> {
        if !(1..=MAX_QUANTITY).contains(&quantity) {
            return Err(OrderError::Invalid("quantity must be between 1 and 1000"));
        }
        let hash = request_hash(product_id, quantity);
        if let Some(key) = idempotency_key
            && let Some(existing) = self.repository.by_idempotency_key(caller.id, key).await?
        {
            return replay(existing, &hash);
        }

        let product = self.upstreams.product(product_id).await.map_err(|status| {
            if status.code() == tonic::Code::NotFound {
                OrderError::UnknownProduct(product_id)
            } else {
                OrderError::upstream("product", &status)
            }
        })?;
        let price = product.price.unwrap_or_default();
        let total = price
            .amount_minor
            .checked_mul(quantity)
            .ok_or(OrderError::Invalid("order total is too large"))?;
        let now = Utc::now();
        let draft = Order {
            id: Uuid::now_v7(),
            user_id: caller.id,
            product_id,
            product_name: product.name,
            quantity,
            unit_price_minor: price.amount_minor,
            total_minor: total,
            currency: price.currency,
            status: OrderStatus::Pending,
            failure_reason: None,
            idempotency_key: idempotency_key.map(str::to_owned),
            request_hash: idempotency_key.map(|_| hash.clone()),
            created_at: now,
            updated_at: now,
        };
        let order = match self.repository.insert_pending(&draft).await? {
            Ok(order) => order,
            Err(existing) => return replay(existing, &hash),
        };
        tracing::info!(order_id = %order.id, %product_id, quantity, "order pending");

        if let Err(status) = self.upstreams.reserve(order.id, product_id, quantity).await {
            return Err(self.reservation_failed(&order, &status).await);
        }

        let event = outbox_event(ORDER_CONFIRMED, &order);
        match self
            .repository
            .transition_with_event(
                order.id,
                OrderStatus::Pending,
                OrderStatus::Confirmed,
                false,
                &event,
            )
            .await
        {
            Ok(Some(confirmed)) => {
                self.relay_wake.notify_one();
                tracing::info!(order_id = %order.id, "order confirmed");
                Ok(Placed {
                    order: confirmed,
                    created_now: true,
                })
            }
            Ok(None) => {
                // The sweeper declared it abandoned meanwhile; it releases.
                Err(OrderError::UpstreamUnavailable(
                    "order database",
                    Duration::from_secs(1),
                ))
            }
            Err(err) => {
                self.compensate(&order, "could not confirm the order").await;
                Err(err)
            }
        }
    }

    async fn reservation_failed(&self, order: &Order, status: &tonic::Status) -> OrderError {
        match status.code() {
            tonic::Code::FailedPrecondition | tonic::Code::NotFound => {
                let reason = format!("insufficient stock: {}", status.message());
                if let Err(err) = self
                    .repository
                    .finish_pending(order.id, OrderStatus::Rejected, &reason, false)
                    .await
                {
                    tracing::error!(order_id = %order.id, error = %err, "cannot mark order rejected; the sweeper will fail it");
                }
                tracing::info!(order_id = %order.id, "order rejected: insufficient stock");
                OrderError::InsufficientStock(status.message().to_owned())
            }
            _ => {
                // The reservation may or may not have happened (a timeout):
                // release it either way; Release is idempotent.
                self.compensate(order, "inventory unavailable").await;
                OrderError::upstream("inventory", status)
            }
        }
    }

    /// Marks the order FAILED and releases its reservation now, or flags it
    /// for the sweeper when inventory cannot be reached.
    async fn compensate(&self, order: &Order, reason: &str) {
        let released = self.upstreams.release(order.id).await.is_ok();
        if let Err(err) = self
            .repository
            .finish_pending(order.id, OrderStatus::Failed, reason, !released)
            .await
        {
            tracing::error!(order_id = %order.id, error = %err, "cannot mark order failed; the sweeper will");
        }
        tracing::warn!(order_id = %order.id, reason, released, "order failed");
    }

    pub async fn get(&self, caller: Caller, id: Uuid) -> Result<Order, OrderError> {
        let order = self.repository.get(id).await?.ok_or(OrderError::NotFound)?;
        if !caller.may_access(order.user_id) {
            return Err(OrderError::NotFound);
        }
        Ok(order)
    }

    pub async fn list(
        &self,
        caller: Caller,
        limit: i64,
        offset: i64,
    ) -> Result<(Vec<Order>, i64), OrderError> {
        self.repository
            .list_for_user(caller.id, limit, offset)
            .await
    }

    /// Cancels a confirmed order: CANCELLED + `order.cancelled` in one
    /// transaction, then the reservation is released (now, or by the sweeper).
    pub async fn cancel(&self, caller: Caller, id: Uuid) -> Result<Order, OrderError> {
        let order = self.get(caller, id).await?;
        if order.status != OrderStatus::Confirmed {
            return Err(OrderError::NotCancellable(match order.status {
                OrderStatus::Cancelled => "already cancelled",
                OrderStatus::Pending => "still pending",
                OrderStatus::Rejected => "rejected",
                OrderStatus::Failed => "failed",
                OrderStatus::Confirmed => "confirmed",
            }));
        }
        let event = outbox_event(ORDER_CANCELLED, &order);
        let cancelled = self
            .repository
            .transition_with_event(
                id,
                OrderStatus::Confirmed,
                OrderStatus::Cancelled,
                true,
                &event,
            )
            .await?
            .ok_or(OrderError::NotCancellable("already cancelled"))?;
        self.relay_wake.notify_one();
        if self.upstreams.release(id).await.is_ok() {
            self.repository.clear_needs_release(id).await?;
        }
        tracing::info!(order_id = %id, by = %caller.id, "order cancelled");
        Ok(cancelled)
    }

    /// Background compensation: fails abandoned PENDING orders and retries
    /// releases that could not run. Returns how many releases succeeded.
    pub async fn sweep(&self, pending_timeout: Duration) -> Result<usize, OrderError> {
        let abandoned = self
            .repository
            .abandon_stale_pending(pending_timeout.as_secs_f64())
            .await?;
        if abandoned > 0 {
            tracing::warn!(abandoned, "abandoned pending orders marked failed");
        }
        let mut released = 0;
        for id in self.repository.needing_release(100).await? {
            if self.upstreams.release(id).await.is_err() {
                break;
            }
            self.repository.clear_needs_release(id).await?;
            released += 1;
        }
        Ok(released)
    }
}

/// The answer to a request whose idempotency key is already used.
fn replay(existing: Order, hash: &str) -> Result<Placed, OrderError> {
    if existing.request_hash.as_deref() != Some(hash) {
        return Err(OrderError::IdempotencyMismatch);
    }
    match existing.status {
        OrderStatus::Confirmed | OrderStatus::Cancelled => Ok(Placed {
            order: existing,
            created_now: false,
        }),
        OrderStatus::Pending => Err(OrderError::InProgress),
        OrderStatus::Rejected => Err(OrderError::InsufficientStock(
            existing
                .failure_reason
                .unwrap_or_else(|| "not enough stock".into()),
        )),
        OrderStatus::Failed => Err(OrderError::PreviouslyFailed(existing.id)),
    }
}

/// The event for an order change, carrying the current trace context.
fn outbox_event(kind: &str, order: &Order) -> OutboxEvent {
    let event = OrderEvent::new(
        kind,
        OrderEventData {
            order_id: order.id,
            user_id: order.user_id,
            product_id: order.product_id,
            product_name: order.product_name.clone(),
            quantity: order.quantity,
            total: Total {
                amount_minor: order.total_minor,
                currency: order.currency.clone(),
            },
        },
    );
    OutboxEvent {
        event_id: event.id,
        routing_key: kind.to_owned(),
        payload: serde_json::to_value(&event).unwrap_or_default(),
        trace_context: broker::context_to_map(&tracing::Span::current().context()),
    }
}
