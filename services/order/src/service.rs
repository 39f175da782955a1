//! The order saga (ARCHITECTURE.md, "The order saga"), storing each order
//! once, after its stock is held:
//! 1. validate; price and name from product;
//! 2. inventory `Reserve` keyed by a new order id (idempotent);
//! 3. shortage → the order is stored REJECTED (409);
//! 4. the order is stored CONFIRMED with its `order.confirmed` outbox row,
//!    in one statement (201);
//! 5. a failure after step 2 → the order is stored FAILED (taking its id,
//!    so a late confirm cannot land), then `Release` (idempotent);
//! 6. after the answer, inventory `Commit` of the confirmed order's
//!    reservation, in the background ([`OrderService::commit_confirmed`]).
//!
//! Outcomes are decided from the stored state, never from an error alone:
//! a confirm whose reply was lost may have committed, so the order is read
//! back before anything is compensated, and the order's id is the fence:
//! whichever of the confirm and the compensation stores it first wins.
//! A compensation that cannot run now (inventory down) is recorded
//! (`needs_release`) and retried by [`OrderService::sweep`]. A process
//! that dies between the reserve and the insert leaves a reservation with
//! no order: the sweeper asks inventory for reservations held longer than
//! any saga (`ListHeld`), stores their orders FAILED and releases them.
//! A commit that cannot run now stays flagged (`needs_commit`) and is
//! retried. Nothing is left half-done.
//!
//! Why once: the order used to be stored PENDING before the reserve and
//! moved to CONFIRMED after it, two commits in the order database per
//! order on the request's path; now it is one (issue 17). PENDING rows of
//! an earlier version are still failed after the pending timeout.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use stockmesh_platform::auth::Caller;
use stockmesh_platform::events::{
    ORDER_CANCELLED, ORDER_CONFIRMED, OrderEvent, OrderEventData, Total,
};
use stockmesh_platform::{broker, deadline};
use stockmesh_proto::inventory::v1 as inv;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use uuid::Uuid;

use crate::clients::Upstreams;
use crate::committer::CommitQueue;
use crate::domain::{MAX_QUANTITY, Order, OrderFilter, OrderStatus, request_hash};
use crate::error::OrderError;
use crate::outbox::RelayLink;
use crate::repository::{OrderRepository, OutboxEvent};

#[derive(Clone)]
pub struct OrderService {
    repository: OrderRepository,
    upstreams: Upstreams,
    /// Hands new events to the outbox relay, or wakes it to claim them.
    relay: RelayLink,
    /// Confirmed orders whose reservation awaits the inventory Commit.
    commits: Arc<CommitQueue>,
}

/// Confirmed orders read per commit round.
const COMMIT_BATCH: i64 = 100;
/// Held reservations settled per sweep.
const SETTLE_BATCH: u32 = 100;
/// Time kept, when reading an order back, to still answer before the
/// request's deadline.
const ANSWER_MARGIN: Duration = Duration::from_millis(100);
/// Read-back attempts outside a request (no deadline to bound them).
const READ_BACK_ATTEMPTS: u32 = 5;

/// What a compensation found.
enum Compensation {
    /// The order is stored FAILED; its reservation released (or flagged
    /// for the sweeper).
    Failed,
    /// The order's id was taken: it was stored meanwhile (or fenced).
    NotStored,
    /// The database could not be reached: nothing is stored, and the
    /// sweeper settles the reservation once it is older than any saga.
    Unknown,
}

/// The outcome of placing an order: the order, and whether this call
/// created it (false: an idempotent replay).
pub struct Placed {
    pub order: Order,
    pub created_now: bool,
}

impl OrderService {
    pub fn new(repository: OrderRepository, upstreams: Upstreams, relay: RelayLink) -> Self {
        Self {
            repository,
            upstreams,
            relay,
            commits: Arc::new(CommitQueue::default()),
        }
    }

    /// Confirmed orders of this process whose reservation awaits the
    /// inventory Commit (see [`crate::committer`]).
    pub fn commit_queue(&self) -> Arc<CommitQueue> {
        self.commits.clone()
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
            status: OrderStatus::Confirmed,
            failure_reason: None,
            idempotency_key: idempotency_key.map(str::to_owned),
            request_hash: idempotency_key.map(|_| hash.clone()),
            trace_id: stockmesh_platform::telemetry::current_trace_id(),
            created_at: now,
            updated_at: now,
        };

        if let Err(status) = self.upstreams.reserve(draft.id, product_id, quantity).await {
            return Err(self.reservation_failed(&draft, &status).await);
        }
        tracing::info!(order_id = %draft.id, %product_id, quantity, "stock reserved");

        let event = outbox_event(ORDER_CONFIRMED, &draft);
        // Taken before the commit, so that the row is stored leased only
        // when the relay will have it.
        let slot = self.relay.slot();
        let lease = slot.as_ref().map(|slot| slot.lease);
        // The commit is queued in memory; a full queue stores the order
        // flagged for it instead (see `crate::committer`).
        let queued = self.commits.has_room();
        match self
            .repository
            .insert_confirmed(&draft, &event, lease, !queued)
            .await
        {
            Ok(Some((confirmed, outbox_id))) => {
                match slot {
                    Some(slot) => slot.hand(event.into_row(outbox_id)),
                    None => self.relay.wake(),
                }
                if queued {
                    self.commits.push(confirmed.id);
                }
                Ok(self.confirmed(confirmed))
            }
            Ok(None) => self.key_taken(&draft, &hash).await,
            Err(err) => self.store_failed(&draft, event.event_id, err).await,
        }
    }

    /// A confirmed order: its event is on its way and its reservation
    /// will be committed.
    fn confirmed(&self, order: Order) -> Placed {
        tracing::info!(order_id = %order.id, "order confirmed");
        Placed {
            order,
            created_now: true,
        }
    }

    /// A concurrent request with the same idempotency key was stored first:
    /// this one's reservation is given back (now, or by the sweeper, which
    /// finds it held with no order) and the stored order answers.
    async fn key_taken(&self, draft: &Order, hash: &str) -> Result<Placed, OrderError> {
        if let Err(status) = self.upstreams.release(draft.id).await {
            tracing::warn!(order_id = %draft.id, code = ?status.code(), "duplicate's reservation not released now; the sweeper will");
        }
        let key = draft.idempotency_key.as_deref().unwrap_or_default();
        match self
            .repository
            .by_idempotency_key(draft.user_id, key)
            .await?
        {
            Some(existing) => replay(existing, hash),
            None => Err(OrderError::InProgress),
        }
    }

    /// Storing the confirmed order failed, or its reply was lost: it may
    /// have committed all the same (the connection dropped after the
    /// commit). What is stored decides: CONFIRMED is a success; nothing
    /// stored is compensated; unknown (the database is unreachable) is left
    /// to the sweeper, which finds the reservation held with no order and
    /// fences it, or finds the order confirmed and leaves it.
    async fn store_failed(
        &self,
        draft: &Order,
        event_id: Uuid,
        err: OrderError,
    ) -> Result<Placed, OrderError> {
        let stored = match self.read_back(draft.id).await {
            Ok(stored) => stored,
            Err(unknown) => {
                tracing::warn!(order_id = %draft.id, error = %err, read_back = %unknown, "storing the order failed and it cannot be read back; left to the sweeper");
                return Err(err);
            }
        };
        match stored {
            Some(stored) if stored.status == OrderStatus::Confirmed => {
                tracing::warn!(order_id = %draft.id, error = %err, "the order's answer was lost, but it was stored");
                self.event_not_handed(event_id).await;
                Ok(self.confirmed(stored))
            }
            // Fenced by the sweeper as abandoned; it releases the units.
            Some(_) => Err(err),
            None => match self.compensate(draft, "could not store the order").await {
                Compensation::NotStored => {
                    // The id is taken after all: the insert landed late.
                    match self.read_back(draft.id).await {
                        Ok(Some(stored)) if stored.status == OrderStatus::Confirmed => {
                            self.event_not_handed(event_id).await;
                            Ok(self.confirmed(stored))
                        }
                        _ => Err(err),
                    }
                }
                Compensation::Failed | Compensation::Unknown => Err(err),
            },
        }
    }

    /// The order was stored but its row's id never came back, so its
    /// event (perhaps stored leased for a handoff) was not handed to the
    /// relay: make it due now and wake the relay to claim it. If this
    /// fails too, the lease runs out and it is claimed then.
    async fn event_not_handed(&self, event_id: Uuid) {
        if let Err(err) = self.repository.make_due(event_id).await {
            tracing::warn!(%event_id, error = %err, "the order's event is published once its lease runs out");
        }
        self.relay.wake();
    }

    /// Reads an order back, retrying with backoff while the database is
    /// unreachable, but only as long as the request's deadline leaves time
    /// to answer (a few attempts outside a request). `Ok(None)`: not
    /// stored; `Err`: unknown.
    async fn read_back(&self, id: Uuid) -> Result<Option<Order>, OrderError> {
        let mut backoff = Duration::from_millis(25);
        let mut attempt = 1;
        loop {
            let read = match deadline::remaining() {
                Some(left) => {
                    // No time left to read and still answer: unknown.
                    let budget = left
                        .checked_sub(ANSWER_MARGIN)
                        .ok_or(OrderError::UpstreamTimeout("order database"))?;
                    tokio::time::timeout(budget, self.repository.get(id))
                        .await
                        .unwrap_or_else(|_| Err(OrderError::UpstreamTimeout("order database")))
                }
                None => self.repository.get(id).await,
            };
            let err = match read {
                Ok(order) => return Ok(order),
                Err(err) => err,
            };
            let time_left = deadline::remaining().map_or(attempt < READ_BACK_ATTEMPTS, |left| {
                left > backoff + ANSWER_MARGIN
            });
            if !time_left {
                tracing::warn!(order_id = %id, error = %err, attempt, "cannot read the order back");
                return Err(err);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
            attempt += 1;
        }
    }

    async fn reservation_failed(&self, draft: &Order, status: &tonic::Status) -> OrderError {
        match status.code() {
            tonic::Code::FailedPrecondition | tonic::Code::NotFound => {
                // Nothing is held: the rejection is stored for the record
                // (and for replays of its idempotency key), best effort.
                let reason = format!("insufficient stock: {}", status.message());
                if let Err(err) = self
                    .repository
                    .insert_unconfirmed(draft, OrderStatus::Rejected, &reason, false)
                    .await
                {
                    tracing::error!(order_id = %draft.id, error = %err, "cannot store the rejected order");
                }
                tracing::info!(order_id = %draft.id, "order rejected: insufficient stock");
                OrderError::InsufficientStock(status.message().to_owned())
            }
            tonic::Code::Aborted => {
                // Inventory had released this order before the reserve
                // arrived: nothing is held for it.
                let reason = "released before its stock was reserved";
                if let Err(err) = self
                    .repository
                    .insert_unconfirmed(draft, OrderStatus::Failed, reason, false)
                    .await
                {
                    tracing::error!(order_id = %draft.id, error = %err, "cannot store the failed order");
                }
                tracing::warn!(order_id = %draft.id, "order failed: {reason}");
                OrderError::PreviouslyFailed(draft.id)
            }
            _ => {
                // The reservation may or may not have happened (a timeout):
                // release it either way; Release is idempotent.
                self.compensate(draft, "inventory unavailable").await;
                OrderError::upstream("inventory", status)
            }
        }
    }

    /// Stores the order FAILED, flagged for release, then releases its
    /// reservation. The row comes first and takes the order's id: if the
    /// confirmed insert landed meanwhile, it wins and nothing is released;
    /// if the release cannot run now, the sweeper retries it. A taken
    /// idempotency key (a concurrent duplicate was stored) does not stop
    /// it: the row is then stored without the key.
    async fn compensate(&self, draft: &Order, reason: &str) -> Compensation {
        let mut stored = self
            .repository
            .insert_unconfirmed(draft, OrderStatus::Failed, reason, true)
            .await;
        if matches!(stored, Ok(false)) && draft.idempotency_key.is_some() {
            let keyless = Order {
                idempotency_key: None,
                request_hash: None,
                ..draft.clone()
            };
            stored = self
                .repository
                .insert_unconfirmed(&keyless, OrderStatus::Failed, reason, true)
                .await;
        }
        match stored {
            Ok(true) => {}
            Ok(false) => return Compensation::NotStored,
            Err(err) => {
                tracing::error!(order_id = %draft.id, error = %err, "cannot store the failed order; its reservation is left to the sweeper");
                return Compensation::Unknown;
            }
        }
        let released = self.upstreams.release(draft.id).await.is_ok();
        if released && let Err(err) = self.repository.clear_needs_release(draft.id).await {
            // Harmless: the sweeper releases again, and Release is idempotent.
            tracing::debug!(order_id = %draft.id, error = %err, "release flag not cleared");
        }
        tracing::warn!(order_id = %draft.id, reason, released, "order failed");
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
        self.relay.wake();
        if self.upstreams.release(id).await.is_ok() {
            self.repository.clear_needs_release(id).await?;
        }
        tracing::info!(order_id = %id, by = %caller.id, "order cancelled");
        Ok(cancelled)
    }

    /// Commits in inventory the reservations of the queued confirmed
    /// orders, a batch at a time (one `CommitMany` call each). A batch
    /// inventory cannot take now is flagged in the database for
    /// [`Self::commit_flagged`]; ids the database cannot flag either go
    /// back into the queue. A batch that was not full ends the round:
    /// confirms arriving meanwhile wait for the next one, so that batches
    /// stay large under load. Returns how many ids are still queued.
    pub async fn commit_queued(&self) -> usize {
        loop {
            let ids = self.commits.take(COMMIT_BATCH as usize);
            if ids.is_empty() {
                return 0;
            }
            let full = ids.len() == COMMIT_BATCH as usize;
            let unsettled = match self.upstreams.commit_many(&ids).await {
                Ok(outcomes) => unsettled(outcomes),
                Err(status) => {
                    tracing::debug!(orders = ids.len(), code = ?status.code(), "commit flagged for a retry");
                    ids
                }
            };
            if !unsettled.is_empty()
                && let Err(err) = self.repository.flag_for_commit(&unsettled).await
            {
                tracing::debug!(error = %err, orders = unsettled.len(), "commit neither done nor flagged; kept in memory");
                self.commits.put_back(unsettled);
                return self.commits.len();
            }
            if !full {
                return self.commits.len();
            }
        }
    }

    /// Commits in inventory the reservations of CONFIRMED orders flagged
    /// in the database (a round that failed, a full queue, the sweeper's
    /// finds, earlier versions), a batch at a time, until none is left or
    /// inventory cannot be reached (the batch stays flagged for the next
    /// round). Returns how many orders were settled.
    pub async fn commit_flagged(&self) -> Result<usize, OrderError> {
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
            let kept = unsettled(outcomes);
            let done: Vec<Uuid> = ids
                .iter()
                .filter(|id| !kept.contains(id))
                .copied()
                .collect();
            self.repository.clear_needs_commit(&done).await?;
            settled += done.len();
            if done.len() < ids.len() || ids.len() < COMMIT_BATCH as usize {
                return Ok(settled);
            }
        }
    }

    /// Background compensation: settles reservations whose order was
    /// never stored, fails PENDING orders left by an earlier version, and
    /// retries releases that could not run. Returns how many releases
    /// succeeded. Everything decides from the stored state: a reservation
    /// is only given up by storing its order FAILED first (which fails if
    /// the order was stored), and only FAILED or CANCELLED orders are
    /// released, never a CONFIRMED one.
    pub async fn sweep(&self, pending_timeout: Duration) -> Result<usize, OrderError> {
        self.settle_unstored(pending_timeout).await?;
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

impl OrderService {
    /// Reservations held in inventory for longer than any saga can take
    /// (`older_than`, the pending timeout, outlasts every request): an
    /// order still not stored by then never will be (its process died
    /// between the reserve and the insert, or the database was gone), so
    /// it is stored FAILED, fencing out a confirm that might still arrive,
    /// and released by the release pass that follows.
    async fn settle_unstored(&self, older_than: Duration) -> Result<(), OrderError> {
        let held = match self
            .upstreams
            .held_reservations(older_than, SETTLE_BATCH)
            .await
        {
            Ok(held) => held,
            Err(status) => {
                tracing::debug!(code = ?status.code(), "held reservations not listed; next sweep");
                return Ok(());
            }
        };
        if held.is_empty() {
            return Ok(());
        }
        let fenced = self.repository.fence_abandoned(&held).await?;
        if fenced > 0 {
            tracing::warn!(
                fenced,
                "reservations whose order was never stored: stored FAILED, their units are released"
            );
        }
        Ok(())
    }
}

/// The orders of a `CommitMany` answer that must be asked again.
/// Committed, Released (the order was cancelled meanwhile: its release
/// returned the units) and NotFound (nothing ever will commit it) are
/// final; an answer this version does not know is asked again.
fn unsettled(outcomes: Vec<(Uuid, inv::CommitResult)>) -> Vec<Uuid> {
    let mut again = Vec::new();
    for (id, result) in outcomes {
        match result {
            inv::CommitResult::Committed => {}
            inv::CommitResult::Released | inv::CommitResult::NotFound => {
                tracing::warn!(order_id = %id, ?result, "reservation of a confirmed order cannot be committed");
            }
            inv::CommitResult::Unspecified => {
                tracing::warn!(order_id = %id, "unknown commit answer; will ask again");
                again.push(id);
            }
        }
    }
    again
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
