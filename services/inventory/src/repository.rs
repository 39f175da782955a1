//! PostgreSQL storage of stock and reservations.
//!
//! Every mutation is a single transaction whose correctness does not depend
//! on a prior read: stock only moves through conditional `UPDATE`s
//! (`... WHERE available >= $q`), and a reservation is keyed by its order
//! id, so concurrent and repeated calls cannot oversell or double-count.
//!
//! A reservation row only ever moves forward: `reserved` → `committed` →
//! `released`, or `reserved` → `released`. A release that finds no row
//! leaves a tombstone (`released`, no product, quantity 0), so a Reserve
//! that arrives after its order's Release finds the order released and
//! takes nothing: late calls cannot hold stock forever.

use sqlx::{PgPool, Postgres, Row, Transaction};
use stockmesh_platform::db::span as db_span;
use tracing::Instrument;
use uuid::Uuid;

use crate::domain::{CommitResult, MAX_QUANTITY, Reservation, ReservationState, Stock};
use crate::error::InventoryError;

/// What `reserve` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReserveOutcome {
    /// Units were taken from stock now.
    Reserved(Reservation, Stock),
    /// The order already had this reservation; nothing changed.
    Replayed(Reservation, Stock),
}

/// What `release` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReleaseOutcome {
    pub reservation: Option<Reservation>,
    pub released_now: bool,
}

#[derive(Clone)]
pub struct InventoryRepository {
    pool: PgPool,
}

fn foreign_key_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.code().as_deref() == Some("23503"))
}

/// The answer of a Reserve that took the units now.
fn newly_reserved(order_id: Uuid, product_id: Uuid, quantity: i64, stock: Stock) -> ReserveOutcome {
    ReserveOutcome::Reserved(
        Reservation {
            order_id,
            product_id,
            quantity,
            state: ReservationState::Reserved,
        },
        stock,
    )
}

fn unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505"))
}

/// A row of `reservations`.
enum Stored {
    /// Units of a product held (or once held) for the order.
    Holding(Reservation),
    /// The order was released before it held anything.
    Tombstone,
}

fn stored_from_row(row: &sqlx::postgres::PgRow) -> Result<Stored, InventoryError> {
    let state: String = row.try_get("state")?;
    let state = ReservationState::parse(&state).ok_or_else(|| {
        InventoryError::Database(sqlx::Error::Decode(
            format!("unknown reservation state {state:?}").into(),
        ))
    })?;
    let product_id: Option<Uuid> = row.try_get("product_id")?;
    let Some(product_id) = product_id else {
        return Ok(Stored::Tombstone);
    };
    Ok(Stored::Holding(Reservation {
        order_id: row.try_get("order_id")?,
        product_id,
        quantity: row.try_get("quantity")?,
        state,
    }))
}

/// A row that a statement filtered on a live state returned: never a tombstone.
fn holding_from_row(row: &sqlx::postgres::PgRow) -> Result<Reservation, InventoryError> {
    match stored_from_row(row)? {
        Stored::Holding(reservation) => Ok(reservation),
        Stored::Tombstone => Err(InventoryError::Database(sqlx::Error::Decode(
            "a tombstone where a live reservation was expected".into(),
        ))),
    }
}

impl InventoryRepository {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub async fn reserve(
        &self,
        order_id: Uuid,
        product_id: Uuid,
        quantity: i64,
    ) -> Result<ReserveOutcome, InventoryError> {
        async {
            if let Some(stock) = self.reserve_at_once(order_id, product_id, quantity).await? {
                return Ok(newly_reserved(order_id, product_id, quantity, stock));
            }
            // Anything but the common case (a replay, a tombstone, too little
            // stock, an unknown product, a concurrent duplicate): the full
            // transaction works out which.
            let mut tx = self.pool.begin().await?;
            // The primary key on order_id makes a concurrent duplicate wait
            // for this transaction, then see its row: one reservation per order.
            let inserted = sqlx::query(
                "INSERT INTO reservations (order_id, product_id, quantity, state) \
                 VALUES ($1, $2, $3, 'reserved') ON CONFLICT (order_id) DO NOTHING",
            )
            .bind(order_id)
            .bind(product_id)
            .bind(quantity)
            .execute(&mut *tx)
            .await;
            let inserted = match inserted {
                Ok(done) => done.rows_affected(),
                Err(err) if foreign_key_violation(&err) => {
                    return Err(InventoryError::UnknownProduct(product_id));
                }
                Err(err) => return Err(err.into()),
            };
            if inserted == 0 {
                let existing = match Self::reservation_in(&mut tx, order_id)
                    .await?
                    .ok_or(InventoryError::UnknownReservation(order_id))?
                {
                    Stored::Holding(existing) => existing,
                    // Released before this reserve arrived: its caller has
                    // given the order up, so nothing may be taken for it.
                    Stored::Tombstone => {
                        tx.commit().await?;
                        return Err(InventoryError::ReservationReleased(order_id));
                    }
                };
                let stock = Self::stock_in(&mut tx, existing.product_id)
                    .await?
                    .ok_or(InventoryError::UnknownProduct(existing.product_id))?;
                tx.commit().await?;
                if existing.product_id != product_id || existing.quantity != quantity {
                    return Err(InventoryError::ReservationMismatch(order_id));
                }
                if existing.state == ReservationState::Released {
                    return Err(InventoryError::ReservationReleased(order_id));
                }
                return Ok(ReserveOutcome::Replayed(existing, stock));
            }
            let taken = sqlx::query_as::<_, Stock>(
                "UPDATE stock SET available = available - $2, reserved = reserved + $2, \
                 updated_at = now() \
                 WHERE product_id = $1 AND available >= $2 \
                 RETURNING product_id, available, reserved",
            )
            .bind(product_id)
            .bind(quantity)
            .fetch_optional(&mut *tx)
            .await?;
            match taken {
                Some(stock) => {
                    tx.commit().await?;
                    Ok(newly_reserved(order_id, product_id, quantity, stock))
                }
                None => {
                    tx.rollback().await?;
                    let available = self
                        .get_stock(product_id)
                        .await?
                        .map(|s| s.available)
                        .ok_or(InventoryError::UnknownProduct(product_id))?;
                    Err(InventoryError::InsufficientStock {
                        product_id,
                        requested: quantity,
                        available,
                    })
                }
            }
        }
        .instrument(db_span("reserve", "stock"))
        .await
    }

    /// The common case of a Reserve in one statement (one round trip and
    /// one implicit transaction instead of four round trips): the stock is
    /// taken and the reservation row inserted together, only if the order
    /// has no row yet. `None` when that did not apply (no row taken: too
    /// little stock, an unknown product, or a row already there) or when a
    /// concurrent duplicate inserted the row first: the statement then
    /// fails on the primary key and rolls back whole, taking nothing.
    async fn reserve_at_once(
        &self,
        order_id: Uuid,
        product_id: Uuid,
        quantity: i64,
    ) -> Result<Option<Stock>, InventoryError> {
        let taken = sqlx::query_as::<_, Stock>(
            "WITH taken AS ( \
               UPDATE stock SET available = available - $3, reserved = reserved + $3, \
                 updated_at = now() \
               WHERE product_id = $2 AND available >= $3 \
                 AND NOT EXISTS (SELECT 1 FROM reservations WHERE order_id = $1) \
               RETURNING product_id, available, reserved \
             ), held AS ( \
               INSERT INTO reservations (order_id, product_id, quantity, state) \
               SELECT $1, product_id, $3, 'reserved' FROM taken \
             ) \
             SELECT product_id, available, reserved FROM taken",
        )
        .bind(order_id)
        .bind(product_id)
        .bind(quantity)
        .fetch_optional(&self.pool)
        .await;
        match taken {
            Ok(taken) => Ok(taken),
            Err(err) if unique_violation(&err) => Ok(None),
            Err(err) => Err(err.into()),
        }
    }

    /// Returns the order's units to stock, once: a reserved reservation
    /// gives back its held units, a committed one its sold units (the
    /// order was cancelled after the sale). An order with no reservation
    /// gets a tombstone, so a Reserve arriving later takes nothing.
    pub async fn release(&self, order_id: Uuid) -> Result<ReleaseOutcome, InventoryError> {
        async {
            let mut tx = self.pool.begin().await?;
            // A concurrent Reserve of the same order makes this wait for it
            // (primary key), then conflict: then its reservation is released below.
            let tombstone = sqlx::query(
                "INSERT INTO reservations (order_id, product_id, quantity, state) \
                 VALUES ($1, NULL, 0, 'released') ON CONFLICT (order_id) DO NOTHING",
            )
            .bind(order_id)
            .execute(&mut *tx)
            .await?;
            if tombstone.rows_affected() == 1 {
                tx.commit().await?;
                return Ok(ReleaseOutcome {
                    reservation: None,
                    released_now: false,
                });
            }
            let row = sqlx::query(
                "SELECT order_id, product_id, quantity, state FROM reservations \
                 WHERE order_id = $1 FOR UPDATE",
            )
            .bind(order_id)
            .fetch_optional(&mut *tx)
            .await?;
            let existing = row.as_ref().map(stored_from_row).transpose()?;
            let reservation = match existing {
                Some(Stored::Holding(r)) if r.state != ReservationState::Released => r,
                Some(Stored::Holding(released)) => {
                    tx.commit().await?;
                    return Ok(ReleaseOutcome {
                        reservation: Some(released),
                        released_now: false,
                    });
                }
                Some(Stored::Tombstone) | None => {
                    tx.commit().await?;
                    return Ok(ReleaseOutcome {
                        reservation: None,
                        released_now: false,
                    });
                }
            };
            sqlx::query(
                "UPDATE reservations SET state = 'released', updated_at = now() WHERE order_id = $1",
            )
            .bind(order_id)
            .execute(&mut *tx)
            .await?;
            // Committed units already left `reserved` when they were committed.
            let still_held = if reservation.state == ReservationState::Reserved {
                reservation.quantity
            } else {
                0
            };
            sqlx::query(
                "UPDATE stock SET available = available + $2, reserved = reserved - $3, \
                 updated_at = now() WHERE product_id = $1",
            )
            .bind(reservation.product_id)
            .bind(reservation.quantity)
            .bind(still_held)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(ReleaseOutcome {
                reservation: Some(Reservation {
                    state: ReservationState::Released,
                    ..reservation
                }),
                released_now: true,
            })
        }
        .instrument(db_span("release", "reservations"))
        .await
    }

    /// Makes a reservation final: its units leave `reserved` (they are
    /// sold; `available` was already lowered by the reserve). Idempotent.
    pub async fn commit(&self, order_id: Uuid) -> Result<Reservation, InventoryError> {
        async {
            let mut tx = self.pool.begin().await?;
            let committed = sqlx::query(
                "UPDATE reservations SET state = 'committed', updated_at = now() \
                 WHERE order_id = $1 AND state = 'reserved' \
                 RETURNING order_id, product_id, quantity, state",
            )
            .bind(order_id)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(row) = committed else {
                let existing = Self::reservation_in(&mut tx, order_id).await?;
                tx.commit().await?;
                return match existing {
                    None => Err(InventoryError::UnknownReservation(order_id)),
                    Some(Stored::Tombstone) => Err(InventoryError::AlreadyReleased(order_id)),
                    Some(Stored::Holding(r)) if r.state == ReservationState::Released => {
                        Err(InventoryError::AlreadyReleased(order_id))
                    }
                    Some(Stored::Holding(r)) => Ok(r),
                };
            };
            let reservation = holding_from_row(&row)?;
            sqlx::query(
                "UPDATE stock SET reserved = reserved - $2, updated_at = now() \
                 WHERE product_id = $1",
            )
            .bind(reservation.product_id)
            .bind(reservation.quantity)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(reservation)
        }
        .instrument(db_span("commit", "reservations"))
        .await
    }

    /// Commits the reservations of many orders in one statement (one
    /// round trip, one implicit transaction): the batch form of
    /// [`Self::commit`], answered per order id.
    ///
    /// Locks are taken in a fixed order (reservations by order id, then the
    /// stock rows by product id) so that two batches, or a batch and the
    /// single-order calls (reservation, then stock), can never deadlock;
    /// and they are held for one statement and its commit only, so the
    /// reserves waiting on a stock row it touches wait that long, not for
    /// a transaction's worth of round trips.
    pub async fn commit_many(
        &self,
        order_ids: &[Uuid],
    ) -> Result<Vec<(Uuid, CommitResult)>, InventoryError> {
        async {
            // `held` rechecks each row once its lock is granted, so a
            // reservation a concurrent call settled meanwhile drops out;
            // the final SELECT sees the statement's snapshot, in which such
            // a row still reads 'reserved': it answers NULL for it, and it
            // is read again below.
            let rows: Vec<(Uuid, Option<String>)> = sqlx::query_as(
                "WITH held AS MATERIALIZED ( \
                   SELECT order_id, product_id, quantity FROM reservations \
                   WHERE order_id = ANY($1) AND state = 'reserved' \
                   ORDER BY order_id FOR UPDATE \
                 ), per_product AS MATERIALIZED ( \
                   SELECT product_id, sum(quantity)::bigint AS quantity FROM held GROUP BY product_id \
                 ), locked AS MATERIALIZED ( \
                   SELECT stock.product_id, per_product.quantity \
                   FROM stock JOIN per_product ON per_product.product_id = stock.product_id \
                   ORDER BY stock.product_id FOR UPDATE OF stock \
                 ), sold AS ( \
                   UPDATE stock SET reserved = stock.reserved - locked.quantity, updated_at = now() \
                   FROM locked WHERE stock.product_id = locked.product_id \
                 ), committed AS ( \
                   UPDATE reservations SET state = 'committed', updated_at = now() \
                   FROM held WHERE reservations.order_id = held.order_id \
                   RETURNING reservations.order_id \
                 ) \
                 SELECT r.order_id, CASE WHEN c.order_id IS NOT NULL THEN 'committed' \
                                         WHEN r.state = 'reserved' THEN NULL \
                                         ELSE r.state END \
                 FROM reservations r LEFT JOIN committed c ON c.order_id = r.order_id \
                 WHERE r.order_id = ANY($1)",
            )
            .bind(order_ids)
            .fetch_all(&self.pool)
            .await?;
            let mut states: std::collections::HashMap<Uuid, String> =
                std::collections::HashMap::with_capacity(rows.len());
            let mut settled_meanwhile = Vec::new();
            for (order_id, state) in rows {
                match state {
                    Some(state) => {
                        states.insert(order_id, state);
                    }
                    None => settled_meanwhile.push(order_id),
                }
            }
            if !settled_meanwhile.is_empty() {
                let now: Vec<(Uuid, String)> = sqlx::query_as(
                    "SELECT order_id, state FROM reservations WHERE order_id = ANY($1)",
                )
                .bind(&settled_meanwhile)
                .fetch_all(&self.pool)
                .await?;
                states.extend(now);
            }
            Ok(order_ids
                .iter()
                .map(|id| {
                    let result = match states.get(id).map(String::as_str) {
                        Some("committed") => CommitResult::Committed,
                        Some(_) => CommitResult::Released,
                        None => CommitResult::NotFound,
                    };
                    (*id, result)
                })
                .collect())
        }
        .instrument(db_span("commit", "reservations"))
        .await
    }

    /// Reservations still held and made more than `seconds` ago, oldest
    /// first (the partial index `reservations_held_idx`).
    pub async fn held_older_than(
        &self,
        seconds: f64,
        limit: i64,
    ) -> Result<Vec<Reservation>, InventoryError> {
        let rows = sqlx::query(
            "SELECT order_id, product_id, quantity, state FROM reservations \
             WHERE state = 'reserved' AND created_at < now() - make_interval(secs => $1) \
             ORDER BY created_at LIMIT $2",
        )
        .bind(seconds)
        .bind(limit)
        .fetch_all(&self.pool)
        .instrument(db_span("select", "reservations"))
        .await?;
        rows.iter().map(holding_from_row).collect()
    }

    pub async fn get_stock(&self, product_id: Uuid) -> Result<Option<Stock>, InventoryError> {
        sqlx::query_as::<_, Stock>(
            "SELECT product_id, available, reserved FROM stock WHERE product_id = $1",
        )
        .bind(product_id)
        .fetch_optional(&self.pool)
        .instrument(db_span("select", "stock"))
        .await
        .map_err(Into::into)
    }

    pub async fn get_stocks(&self, product_ids: &[Uuid]) -> Result<Vec<Stock>, InventoryError> {
        sqlx::query_as::<_, Stock>(
            "SELECT product_id, available, reserved FROM stock \
             WHERE product_id = ANY($1) ORDER BY product_id",
        )
        .bind(product_ids)
        .fetch_all(&self.pool)
        .instrument(db_span("select", "stock"))
        .await
        .map_err(Into::into)
    }

    pub async fn set_stock(
        &self,
        product_id: Uuid,
        quantity: i64,
    ) -> Result<Stock, InventoryError> {
        sqlx::query_as::<_, Stock>(
            "INSERT INTO stock (product_id, available) VALUES ($1, $2) \
             ON CONFLICT (product_id) DO UPDATE SET available = EXCLUDED.available, updated_at = now() \
             RETURNING product_id, available, reserved",
        )
        .bind(product_id)
        .bind(quantity)
        .fetch_one(&self.pool)
        .instrument(db_span("upsert", "stock"))
        .await
        .map_err(Into::into)
    }

    /// Creates the stock record at `quantity` if the product has none; the
    /// record as it is either way.
    pub async fn init_stock(
        &self,
        product_id: Uuid,
        quantity: i64,
    ) -> Result<Stock, InventoryError> {
        sqlx::query_as::<_, Stock>(
            "WITH created AS ( \
               INSERT INTO stock (product_id, available) VALUES ($1, $2) \
               ON CONFLICT (product_id) DO NOTHING \
               RETURNING product_id, available, reserved \
             ) \
             SELECT product_id, available, reserved FROM created \
             UNION ALL \
             SELECT product_id, available, reserved FROM stock \
             WHERE product_id = $1 AND NOT EXISTS (SELECT 1 FROM created)",
        )
        .bind(product_id)
        .bind(quantity)
        .fetch_one(&self.pool)
        .instrument(db_span("insert", "stock"))
        .await
        .map_err(Into::into)
    }

    pub async fn adjust_stock(
        &self,
        product_id: Uuid,
        delta: i64,
    ) -> Result<Stock, InventoryError> {
        async {
            let adjusted = sqlx::query_as::<_, Stock>(
                "UPDATE stock SET available = available + $2, updated_at = now() \
                 WHERE product_id = $1 AND available + $2 BETWEEN 0 AND $3 \
                 RETURNING product_id, available, reserved",
            )
            .bind(product_id)
            .bind(delta)
            .bind(MAX_QUANTITY)
            .fetch_optional(&self.pool)
            .await?;
            if let Some(stock) = adjusted {
                return Ok(stock);
            }
            match self.get_stock(product_id).await? {
                None => Err(InventoryError::UnknownProduct(product_id)),
                Some(stock) if stock.available + delta < 0 => {
                    Err(InventoryError::WouldGoNegative {
                        product_id,
                        available: stock.available,
                        delta,
                    })
                }
                Some(_) => Err(InventoryError::WouldOverflow(product_id)),
            }
        }
        .instrument(db_span("adjust", "stock"))
        .await
    }

    async fn reservation_in(
        tx: &mut Transaction<'_, Postgres>,
        order_id: Uuid,
    ) -> Result<Option<Stored>, InventoryError> {
        let row = sqlx::query(
            "SELECT order_id, product_id, quantity, state FROM reservations WHERE order_id = $1",
        )
        .bind(order_id)
        .fetch_optional(&mut **tx)
        .await?;
        row.as_ref().map(stored_from_row).transpose()
    }

    async fn stock_in(
        tx: &mut Transaction<'_, Postgres>,
        product_id: Uuid,
    ) -> Result<Option<Stock>, InventoryError> {
        sqlx::query_as::<_, Stock>(
            "SELECT product_id, available, reserved FROM stock WHERE product_id = $1",
        )
        .bind(product_id)
        .fetch_optional(&mut **tx)
        .await
        .map_err(Into::into)
    }
}
