//! PostgreSQL storage of stock and reservations.
//!
//! Every mutation is a single transaction whose correctness does not depend
//! on a prior read: stock only moves through conditional `UPDATE`s
//! (`... WHERE available >= $q`), and a reservation is keyed by its order
//! id, so concurrent and repeated calls cannot oversell or double-count.

use sqlx::{PgPool, Postgres, Row, Transaction};
use stockmesh_platform::db::span as db_span;
use tracing::Instrument;
use uuid::Uuid;

use crate::domain::{MAX_QUANTITY, Reservation, ReservationState, Stock};
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

/// A client span for one database operation (name, never parameter values).
fn foreign_key_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.code().as_deref() == Some("23503"))
}

fn reservation_from_row(row: &sqlx::postgres::PgRow) -> Result<Reservation, InventoryError> {
    let state: String = row.try_get("state")?;
    let state = ReservationState::parse(&state).ok_or_else(|| {
        InventoryError::Database(sqlx::Error::Decode(
            format!("unknown reservation state {state:?}").into(),
        ))
    })?;
    Ok(Reservation {
        order_id: row.try_get("order_id")?,
        product_id: row.try_get("product_id")?,
        quantity: row.try_get("quantity")?,
        state,
    })
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
                let existing = Self::reservation_in(&mut tx, order_id)
                    .await?
                    .ok_or(InventoryError::UnknownReservation(order_id))?;
                let stock = Self::stock_in(&mut tx, existing.product_id)
                    .await?
                    .ok_or(InventoryError::UnknownProduct(existing.product_id))?;
                tx.commit().await?;
                if existing.product_id != product_id || existing.quantity != quantity {
                    return Err(InventoryError::ReservationMismatch(order_id));
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
                    Ok(ReserveOutcome::Reserved(
                        Reservation {
                            order_id,
                            product_id,
                            quantity,
                            state: ReservationState::Reserved,
                        },
                        stock,
                    ))
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

    pub async fn release(&self, order_id: Uuid) -> Result<ReleaseOutcome, InventoryError> {
        async {
            let mut tx = self.pool.begin().await?;
            let released = sqlx::query(
                "UPDATE reservations SET state = 'released', updated_at = now() \
                 WHERE order_id = $1 AND state = 'reserved' \
                 RETURNING order_id, product_id, quantity, state",
            )
            .bind(order_id)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(row) = released else {
                let existing = Self::reservation_in(&mut tx, order_id).await?;
                tx.commit().await?;
                return Ok(ReleaseOutcome {
                    reservation: existing,
                    released_now: false,
                });
            };
            let reservation = reservation_from_row(&row)?;
            sqlx::query(
                "UPDATE stock SET available = available + $2, reserved = reserved - $2, \
                 updated_at = now() WHERE product_id = $1",
            )
            .bind(reservation.product_id)
            .bind(reservation.quantity)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(ReleaseOutcome {
                reservation: Some(reservation),
                released_now: true,
            })
        }
        .instrument(db_span("release", "reservations"))
        .await
    }

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
                    Some(r) if r.state == ReservationState::Released => {
                        Err(InventoryError::AlreadyReleased(order_id))
                    }
                    Some(r) => Ok(r),
                };
            };
            let reservation = reservation_from_row(&row)?;
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
    ) -> Result<Option<Reservation>, InventoryError> {
        let row = sqlx::query(
            "SELECT order_id, product_id, quantity, state FROM reservations WHERE order_id = $1",
        )
        .bind(order_id)
        .fetch_optional(&mut **tx)
        .await?;
        row.as_ref().map(reservation_from_row).transpose()
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
