//! The order saga (ARCHITECTURE.md, "The order saga"):
//! 1. validate; price and name from product;
//! 2. store the order PENDING;
//! 3. inventory `Reserve` keyed by the order id (idempotent);
//! 4. shortage → REJECTED (409);
//! 5. CONFIRMED + the `order.confirmed` outbox row in one transaction (201);
//! 6. any failure after step 3 → FAILED (only while still PENDING), then
//!    `Release` (idempotent);
//! 7. after the answer, inventory `Commit` of the confirmed order's
//!    reservation, in the background ([`OrderService::commit_confirmed`]).
//!
//! Outcomes are decided from the stored state, never from an error alone:
//! a confirm whose reply was lost may have committed, so the order is read
//! back before anything is compensated, and every move out of PENDING is a
//! conditional update, so a confirm and a compensation can never both win.
//! A compensation that cannot run now (inventory down) is recorded
//! (`needs_release`) and retried by [`OrderService::sweep`], which also
//! fails orders whose saga died while PENDING; a commit that cannot run now
//! stays flagged (`needs_commit`) and is retried. Nothing is left half-done.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use stockmesh_platform::auth::Caller;
use stockmesh_platform::events::{
    ORDER_CANCELLED, ORDER_CONFIRMED, OrderEvent, OrderEventData, Total,
};
use stockmesh_platform::{broker, deadline};
use stockmesh_proto::inventory::v1 as inv;
use tokio::sync::Notify;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use uuid::Uuid;

use crate::clients::Upstreams;
use crate::domain::{MAX_QUANTITY, Order, OrderFilter, OrderStatus, request_hash};
use crate::error::OrderError;
use crate::repository::{OrderRepository, OutboxEvent};

#[derive(Clone)]
pub struct OrderService {
    repository: OrderRepository,
    upstreams: Upstreams,
    /// Wakes the outbox relay after an event was committed.
    relay_wake: Arc<Notify>,
    /// Wakes the committer after an order was confirmed.
    commit_wake: Arc<Notify>,
}

/// Confirmed orders read per commit round.
const COMMIT_BATCH: i64 = 100;
/// Time kept, when reading an order back, to still answer before the
/// request's deadline.
const ANSWER_MARGIN: Duration = Duration::from_millis(100);
/// Read-back attempts outside a request (no deadline to bound them).
const READ_BACK_ATTEMPTS: u32 = 5;

/// What a compensation found.
enum Compensation {
    /// The order was PENDING and is now FAILED; its reservation released
    /// (or flagged for the sweeper).
    Failed,
    /// The order was not PENDING any more: someone else decided it.
    NotPending,
    /// The database could not be reached: the order stays PENDING and the
    /// sweeper fails it and releases its reservation later.
    Unknown,
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
            commit_wake: Arc::new(Notify::new()),
        }
    }

    /// Notified whenever an order was confirmed: its reservation awaits
    /// the inventory Commit.
    pub fn commit_wake(&self) -> Arc<Notify> {
        self.commit_wake.clone()
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
        // Inventory's breaker is open: the reservation would fail fast, so
        // the order is not stored only to be failed and compensated (two
        // commits per refused order, while inventory is down). 503 at once.
        if let Some(retry_after) = self.upstreams.inventory_refusing() {
            return Err(OrderError::UpstreamUnavailable("inventory", retry_after));
        }
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
            trace_id: stockmesh_platform::telemetry::current_trace_id(),
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
            Ok(Some(confirmed)) => Ok(self.confirmed(confirmed)),
            Ok(None) => {
                // The sweeper declared it abandoned meanwhile; it releases.
                Err(OrderError::UpstreamUnavailable(
                    "order database",
                    Duration::from_secs(1),
                ))
            }
            Err(err) => self.confirm_failed(&order, err).await,
        }
    }

    /// A confirmed order: its event is on its way and its reservation
    /// will be committed.
    fn confirmed(&self, order: Order) -> Placed {
        self.relay_wake.notify_one();
        self.commit_wake.notify_one();
        tracing::info!(order_id = %order.id, "order confirmed");
        Placed {
            order,
            created_now: true,
        }
    }

    /// The confirm statement failed, or its reply was lost: it may have
    /// committed all the same (the connection dropped after the commit).
    /// What is stored decides: CONFIRMED is a success; still PENDING is
    /// compensated; unknown (the database is unreachable) is left to the
    /// sweeper, which decides from the stored state in turn.
    async fn confirm_failed(&self, order: &Order, err: OrderError) -> Result<Placed, OrderError> {
        let Some(stored) = self.read_back(order.id).await else {
            tracing::warn!(order_id = %order.id, error = %err, "confirm failed and the order cannot be read back; left to the sweeper");
            return Err(err);
        };
        match stored.status {
            OrderStatus::Confirmed => {
                tracing::warn!(order_id = %order.id, error = %err, "the confirm's answer was lost, but it committed");
                Ok(self.confirmed(stored))
            }
            OrderStatus::Pending => {
                match self.compensate(order, "could not confirm the order").await {
                    Compensation::NotPending => {
                        // The confirm statement landed after all (it was
                        // still running when it seemed to fail).
                        match self.read_back(order.id).await {
                            Some(stored) if stored.status == OrderStatus::Confirmed => {
                                Ok(self.confirmed(stored))
                            }
                            _ => Err(err),
                        }
                    }
                    Compensation::Failed | Compensation::Unknown => Err(err),
                }
            }
            // Failed by the sweeper, which releases its reservation.
            _ => Err(err),
        }
    }

    /// Reads an order back, retrying with backoff while the database is
    /// unreachable, but only as long as the request's deadline leaves time
    /// to answer (a few attempts outside a request). `None`: unknown.
    async fn read_back(&self, id: Uuid) -> Option<Order> {
        let mut backoff = Duration::from_millis(25);
        let mut attempt = 1;
        loop {
            let read = match deadline::remaining() {
                Some(left) => {
                    // No time left to read and still answer: unknown.
                    let budget = left.checked_sub(ANSWER_MARGIN)?;
                    tokio::time::timeout(budget, self.repository.get(id))
                        .await
                        .unwrap_or_else(|_| Err(OrderError::UpstreamTimeout("order database")))
                }
                None => self.repository.get(id).await,
            };
            let err = match read {
                Ok(order) => return order,
                Err(err) => err,
            };
            let time_left = deadline::remaining().map_or(attempt < READ_BACK_ATTEMPTS, |left| {
                left > backoff + ANSWER_MARGIN
            });
            if !time_left {
                tracing::warn!(order_id = %id, error = %err, attempt, "cannot read the order back");
                return None;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
            attempt += 1;
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
            tonic::Code::Aborted => {
                // Inventory had released this order before the reserve
                // arrived (the saga was given up): nothing is held for it.
                let reason = "released before its stock was reserved";
                if let Err(err) = self
                    .repository
                    .finish_pending(order.id, OrderStatus::Failed, reason, false)
                    .await
                {
                    tracing::error!(order_id = %order.id, error = %err, "cannot mark order failed; the sweeper will");
                }
                tracing::warn!(order_id = %order.id, "order failed: {reason}");
                OrderError::PreviouslyFailed(order.id)
            }
            _ => {
                // The reservation may or may not have happened (a timeout):
                // release it either way; Release is idempotent.
                self.compensate(order, "inventory unavailable").await;
                OrderError::upstream("inventory", status)
            }
        }
    }

    /// Fails a PENDING order and releases its reservation. FAILED comes
    /// first, conditional on PENDING and flagged for release in the same
    /// statement: if a confirm landed meanwhile, it wins and nothing is
    /// released; if the release cannot run now, the sweeper retries it.
    async fn compensate(&self, order: &Order, reason: &str) -> Compensation {
        match self
            .repository
            .finish_pending(order.id, OrderStatus::Failed, reason, true)
            .await
        {
            Ok(Some(_)) => {}
            Ok(None) => return Compensation::NotPending,
            Err(err) => {
                tracing::error!(order_id = %order.id, error = %err, "cannot mark order failed; left PENDING for the sweeper");
                return Compensation::Unknown;
            }
        }
        let released = self.upstreams.release(order.id).await.is_ok();
        if released && let Err(err) = self.repository.clear_needs_release(order.id).await {
            // Harmless: the sweeper releases again, and Release is idempotent.
            tracing::debug!(order_id = %order.id, error = %err, "release flag not cleared");
        }
        tracing::warn!(order_id = %order.id, reason, released, "order failed");
        Compensation::Failed
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
        everyone: bool,
        mut filter: OrderFilter,
        limit: i64,
        offset: i64,
    ) -> Result<(Vec<Order>, i64), OrderError> {
        if !caller.is_admin() {
            if everyone || filter.user_id.is_some_and(|user| user != caller.id) {
                return Err(OrderError::Forbidden(
                    "only administrators may list other users' orders",
                ));
            }
            filter.user_id = Some(caller.id);
        } else if !everyone && filter.user_id.is_none() {
            filter.user_id = Some(caller.id);
        }
        self.repository.list(filter, limit, offset).await
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

    /// Commits in inventory the reservations of CONFIRMED orders not
    /// committed yet, a batch at a time (one `CommitMany` call, one
    /// inventory transaction per batch), until none is left or inventory
    /// cannot be reached (the batch stays flagged for the next round).
    /// Returns how many orders were settled.
    pub async fn commit_confirmed(&self) -> Result<usize, OrderError> {
        let mut settled = 0;
        loop {
            let ids = self.repository.needing_commit(COMMIT_BATCH).await?;
            if ids.is_empty() {
                return Ok(settled);
            }
            let outcomes = match self.upstreams.commit_many(&ids).await {
                Ok(outcomes) => outcomes,
                Err(status) => {
                    tracing::debug!(orders = ids.len(), code = ?status.code(), "commit will be retried");
                    return Ok(settled);
                }
            };
            let mut done = Vec::with_capacity(outcomes.len());
            for (id, result) in outcomes {
                match result {
                    inv::CommitResult::Committed => done.push(id),
                    // Final answers: nothing left to commit. Released: the
                    // order was cancelled meanwhile (its release returned
                    // the units). No reservation: nothing ever will commit it.
                    inv::CommitResult::Released | inv::CommitResult::NotFound => {
                        tracing::warn!(order_id = %id, ?result, "reservation of a confirmed order cannot be committed");
                        done.push(id);
                    }
                    // An answer this version does not know: keep the flag.
                    inv::CommitResult::Unspecified => {
                        tracing::warn!(order_id = %id, "unknown commit answer; will ask again");
                    }
                }
            }
            self.repository.clear_needs_commit(&done).await?;
            settled += done.len();
            if done.len() < ids.len() || ids.len() < COMMIT_BATCH as usize {
                return Ok(settled);
            }
        }
    }

    /// Background compensation: fails abandoned PENDING orders and retries
    /// releases that could not run. Returns how many releases succeeded.
    /// Both decide from the stored state: only PENDING orders are
    /// abandoned (a conditional update), and only FAILED or CANCELLED
    /// orders are released, never a CONFIRMED one.
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
