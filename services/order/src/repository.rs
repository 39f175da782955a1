//! PostgreSQL storage of orders and of the outbox.

use std::collections::HashMap;
use stockmesh_platform::db::span as db_span;

use sqlx::{PgPool, Row};
use tracing::Instrument;
use uuid::Uuid;

use crate::domain::{Order, OrderFilter, OrderStatus};
use crate::error::OrderError;

const COLUMNS: &str = "id, user_id, product_id, product_name, quantity, unit_price_minor, total_minor, currency, \
                       status, failure_reason, idempotency_key, request_hash, trace_id, created_at, updated_at";

fn order_from_row(row: &sqlx::postgres::PgRow) -> Result<Order, OrderError> {
    let status: String = row.try_get("status")?;
    Ok(Order {
        id: row.try_get("id")?,
        user_id: row.try_get("user_id")?,
        product_id: row.try_get("product_id")?,
        product_name: row.try_get("product_name")?,
        quantity: row.try_get("quantity")?,
        unit_price_minor: row.try_get("unit_price_minor")?,
        total_minor: row.try_get("total_minor")?,
        currency: row.try_get("currency")?,
        status: OrderStatus::parse(&status).ok_or_else(|| {
            OrderError::Database(sqlx::Error::Decode(format!("status {status:?}").into()))
        })?,
        failure_reason: row.try_get("failure_reason")?,
        idempotency_key: row.try_get("idempotency_key")?,
        request_hash: row.try_get("request_hash")?,
        trace_id: row.try_get("trace_id")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// An event to commit together with an order change.
pub struct OutboxEvent {
    pub event_id: Uuid,
    pub routing_key: String,
    pub payload: serde_json::Value,
    pub trace_context: HashMap<String, String>,
}

impl OutboxEvent {
    /// The event as the relay publishes it, once stored as row `id`.
    pub fn into_row(self, id: i64) -> OutboxRow {
        OutboxRow {
            id,
            event_id: self.event_id,
            routing_key: self.routing_key,
            payload: self.payload,
            trace_context: self.trace_context,
        }
    }
}

/// A row the relay must publish.
pub struct OutboxRow {
    pub id: i64,
    pub event_id: Uuid,
    pub routing_key: String,
    pub payload: serde_json::Value,
    pub trace_context: HashMap<String, String>,
}

type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

/// Binds a new order's own columns as `$1` to `$11` (id, user, product,
/// name, quantity, unit price, total, currency, idempotency key, request
/// hash, trace id): every insert of a new order lists them in this order.
fn bind_new_order<'q>(query: PgQuery<'q>, order: &Order) -> PgQuery<'q> {
    query
        .bind(order.id)
        .bind(order.user_id)
        .bind(order.product_id)
        .bind(&order.product_name)
        .bind(order.quantity)
        .bind(order.unit_price_minor)
        .bind(order.total_minor)
        .bind(&order.currency)
        .bind(order.idempotency_key.as_deref())
        .bind(order.request_hash.as_deref())
        .bind(order.trace_id.as_deref())
}

#[derive(Clone)]
pub struct OrderRepository {
    pool: PgPool,
}

impl OrderRepository {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Stores a new order CONFIRMED with its event in one statement (one
    /// implicit transaction, one round trip), flagged for the inventory
    /// Commit of its reservation only with `needs_commit` (the commit is
    /// usually queued in memory, see [`crate::committer`]): the order is
    /// stored once, after its
    /// stock was reserved. `Ok(None)` when its idempotency key is taken (a
    /// concurrent request with the same key was stored first). An order
    /// whose id is taken (the sweeper fenced it as abandoned, see
    /// [`Self::fence_abandoned`]) fails with a unique violation.
    ///
    /// With `lease`, the event's row is stored leased for that long (as a
    /// relay's claim would lease it): it is about to be handed to this
    /// process's relay in memory. Returns the order and its outbox row's id.
    pub async fn insert_confirmed(
        &self,
        order: &Order,
        event: &OutboxEvent,
        lease: Option<std::time::Duration>,
        needs_commit: bool,
    ) -> Result<Option<(Order, i64)>, OrderError> {
        let insert = sqlx::query(sqlx::AssertSqlSafe(format!(
            "WITH stored AS ( \
               INSERT INTO orders (id, user_id, product_id, product_name, quantity, unit_price_minor, \
                 total_minor, currency, status, needs_commit, idempotency_key, request_hash, trace_id) \
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'CONFIRMED', $17, $9, $10, $11) \
               ON CONFLICT (user_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING \
               RETURNING {COLUMNS} \
             ), event AS ( \
               INSERT INTO outbox (event_id, routing_key, payload, trace_context, available_at) \
               SELECT $12, $13, $14, $15, now() + make_interval(secs => $16) FROM stored \
               RETURNING id \
             ) \
             SELECT {COLUMNS}, (SELECT id FROM event) AS outbox_id FROM stored"
        )));
        let row = bind_new_order(insert, order)
            .bind(event.event_id)
            .bind(&event.routing_key)
            .bind(&event.payload)
            .bind(serde_json::to_value(&event.trace_context).unwrap_or_default())
            .bind(lease.unwrap_or_default().as_secs_f64())
            .bind(needs_commit)
            .fetch_optional(&self.pool)
            .instrument(db_span("commit", "orders+outbox"))
            .await?;
        row.as_ref()
            .map(|row| Ok((order_from_row(row)?, row.try_get("outbox_id")?)))
            .transpose()
    }

    /// Makes event `event_id` due now if it is unpublished and leased
    /// (gives up a lease nobody will use).
    pub async fn make_due(&self, event_id: Uuid) -> Result<(), OrderError> {
        sqlx::query(
            "UPDATE outbox SET available_at = now() \
             WHERE event_id = $1 AND published_at IS NULL AND available_at > now()",
        )
        .bind(event_id)
        .execute(&self.pool)
        .instrument(db_span("update", "outbox"))
        .await?;
        Ok(())
    }

    /// Stores a new order that ended without being confirmed (`REJECTED`,
    /// or `FAILED` with `needs_release` when stock may be held for it).
    /// `false` when nothing was stored: its id or its idempotency key is
    /// already taken.
    pub async fn insert_unconfirmed(
        &self,
        order: &Order,
        status: OrderStatus,
        reason: &str,
        needs_release: bool,
    ) -> Result<bool, OrderError> {
        let insert = sqlx::query(
            "INSERT INTO orders (id, user_id, product_id, product_name, quantity, unit_price_minor, \
               total_minor, currency, idempotency_key, request_hash, trace_id, status, \
               failure_reason, needs_release) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
             ON CONFLICT DO NOTHING",
        );
        let done = bind_new_order(insert, order)
            .bind(status.as_str())
            .bind(reason)
            .bind(needs_release)
            .execute(&self.pool)
            .instrument(db_span("insert", "orders"))
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Settles reservations inventory still holds long after any saga
    /// could have stored their order (`(order id, product id, quantity)`):
    /// - no order row: one is stored FAILED and flagged for release. It
    ///   takes the order's id, so a confirm arriving even later fails on
    ///   the key instead of selling units that are being given back (the
    ///   fence); it has no user (the nil id) and no price, as only
    ///   inventory's side of the order was ever known;
    /// - a CONFIRMED order: flagged for the Commit again; a FAILED or
    ///   CANCELLED one: flagged for the release again (both idempotent);
    /// - a PENDING order (stored by an earlier version): left to the
    ///   pending timeout.
    ///
    /// Returns how many orders were fenced.
    pub async fn fence_abandoned(&self, held: &[(Uuid, Uuid, i64)]) -> Result<u64, OrderError> {
        let ids: Vec<Uuid> = held.iter().map(|(id, _, _)| *id).collect();
        let products: Vec<Uuid> = held.iter().map(|(_, product, _)| *product).collect();
        let quantities: Vec<i64> = held.iter().map(|(_, _, quantity)| *quantity).collect();
        let fenced: i64 = sqlx::query_scalar(
            "WITH fenced AS ( \
               INSERT INTO orders (id, user_id, product_id, product_name, quantity, unit_price_minor, \
                 total_minor, currency, status, failure_reason, needs_release) \
               SELECT id, '00000000-0000-0000-0000-000000000000', product_id, '', quantity, 0, 0, '', \
                 'FAILED', 'abandoned: its stock was reserved but the order was never stored', true \
               FROM unnest($1::uuid[], $2::uuid[], $3::bigint[]) AS held(id, product_id, quantity) \
               WHERE quantity > 0 \
               ON CONFLICT (id) DO NOTHING RETURNING id \
             ), to_commit AS ( \
               UPDATE orders SET needs_commit = true \
               WHERE id = ANY($1) AND status = 'CONFIRMED' AND NOT needs_commit \
             ), to_release AS ( \
               UPDATE orders SET needs_release = true \
               WHERE id = ANY($1) AND status IN ('FAILED', 'CANCELLED') AND NOT needs_release \
             ) \
             SELECT count(*) FROM fenced",
        )
        .bind(&ids)
        .bind(&products)
        .bind(&quantities)
        .fetch_one(&self.pool)
        .instrument(db_span("insert", "orders"))
        .await?;
        Ok(u64::try_from(fenced).unwrap_or_default())
    }

    pub async fn by_idempotency_key(
        &self,
        user_id: Uuid,
        key: &str,
    ) -> Result<Option<Order>, OrderError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM orders WHERE user_id = $1 AND idempotency_key = $2"
        )))
        .bind(user_id)
        .bind(key)
        .fetch_optional(&self.pool)
        .instrument(db_span("select", "orders"))
        .await?;
        row.as_ref().map(order_from_row).transpose()
    }

    /// Moves an order `from` → `to` and stores its event, in one transaction.
    /// Entering CONFIRMED also flags the order for the inventory Commit of
    /// its reservation; leaving it (cancel) clears the flag.
    pub async fn transition_with_event(
        &self,
        id: Uuid,
        from: OrderStatus,
        to: OrderStatus,
        needs_release: bool,
        event: &OutboxEvent,
    ) -> Result<Option<Order>, OrderError> {
        // One statement, so one implicit transaction and one round trip:
        // the event row is inserted exactly when the status changed.
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "WITH changed AS ( \
               UPDATE orders SET status = $3, needs_release = $4, \
                 needs_commit = ($3 = 'CONFIRMED'), updated_at = now() \
               WHERE id = $1 AND status = $2 RETURNING {COLUMNS} \
             ), event AS ( \
               INSERT INTO outbox (event_id, routing_key, payload, trace_context) \
               SELECT $5, $6, $7, $8 FROM changed \
             ) \
             SELECT {COLUMNS} FROM changed"
        )))
        .bind(id)
        .bind(from.as_str())
        .bind(to.as_str())
        .bind(needs_release)
        .bind(event.event_id)
        .bind(&event.routing_key)
        .bind(&event.payload)
        .bind(serde_json::to_value(&event.trace_context).unwrap_or_default())
        .fetch_optional(&self.pool)
        .instrument(db_span("commit", "orders+outbox"))
        .await?;
        row.as_ref().map(order_from_row).transpose()
    }

    pub async fn clear_needs_release(&self, id: Uuid) -> Result<(), OrderError> {
        sqlx::query("UPDATE orders SET needs_release = false WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .instrument(db_span("update", "orders"))
            .await?;
        Ok(())
    }

    /// PENDING orders older than `seconds` (their saga died): FAILED, and
    /// flagged so their reservation is released.
    pub async fn abandon_stale_pending(&self, seconds: f64) -> Result<u64, OrderError> {
        let done = sqlx::query(
            "UPDATE orders SET status = 'FAILED', failure_reason = 'abandoned while pending', \
             needs_release = true, updated_at = now() \
             WHERE status = 'PENDING' AND created_at < now() - make_interval(secs => $1)",
        )
        .bind(seconds)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Orders whose reservation must still be released. Only FAILED and
    /// CANCELLED orders qualify: a CONFIRMED (or still PENDING) order's
    /// reservation is never released from here, whatever its flag says.
    pub async fn needing_release(&self, limit: i64) -> Result<Vec<Uuid>, OrderError> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM orders WHERE needs_release AND status IN ('FAILED', 'CANCELLED') \
             ORDER BY updated_at LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// CONFIRMED orders whose reservation is not committed in inventory yet.
    pub async fn needing_commit(&self, limit: i64) -> Result<Vec<Uuid>, OrderError> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM orders WHERE needs_commit AND status = 'CONFIRMED' \
             ORDER BY updated_at LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .instrument(db_span("select", "orders"))
        .await?)
    }

    /// Flags CONFIRMED orders whose reservation could not be committed
    /// now, for the committer's rounds from the database.
    pub async fn flag_for_commit(&self, ids: &[Uuid]) -> Result<(), OrderError> {
        sqlx::query(
            "UPDATE orders SET needs_commit = true \
             WHERE id = ANY($1) AND status = 'CONFIRMED' AND NOT needs_commit",
        )
        .bind(ids)
        .execute(&self.pool)
        .instrument(db_span("update", "orders"))
        .await?;
        Ok(())
    }

    /// Remembers that these orders' reservations are settled in inventory.
    pub async fn clear_needs_commit(&self, ids: &[Uuid]) -> Result<(), OrderError> {
        if ids.is_empty() {
            return Ok(());
        }
        sqlx::query("UPDATE orders SET needs_commit = false WHERE id = ANY($1)")
            .bind(ids)
            .execute(&self.pool)
            .instrument(db_span("update", "orders"))
            .await?;
        Ok(())
    }

    pub async fn get(&self, id: Uuid) -> Result<Option<Order>, OrderError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM orders WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .instrument(db_span("select", "orders"))
        .await?;
        row.as_ref().map(order_from_row).transpose()
    }

    pub async fn list(
        &self,
        filter: OrderFilter,
        limit: i64,
        offset: i64,
    ) -> Result<(Vec<Order>, i64), OrderError> {
        // Each condition is off when its parameter is NULL.
        const MATCHES: &str = "($1::uuid IS NULL OR user_id = $1) \
             AND ($2::uuid IS NULL OR product_id = $2) \
             AND ($3::text IS NULL OR status = $3)";
        let status = filter.status.map(OrderStatus::as_str);
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM orders WHERE {MATCHES} \
             ORDER BY created_at DESC, id DESC LIMIT $4 OFFSET $5"
        )))
        .bind(filter.user_id)
        .bind(filter.product_id)
        .bind(status)
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await?;
        let total: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM orders WHERE {MATCHES}"
        )))
        .bind(filter.user_id)
        .bind(filter.product_id)
        .bind(status)
        .fetch_one(&self.pool)
        .await?;
        Ok((
            rows.iter().map(order_from_row).collect::<Result<_, _>>()?,
            total,
        ))
    }
}
