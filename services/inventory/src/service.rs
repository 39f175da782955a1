//! The inventory's rules: validate every input before anything is stored,
//! then let the repository make the change atomically.

use uuid::Uuid;

use crate::domain::{self, CommitResult, Reservation, Stock};
use crate::error::InventoryError;
use crate::repository::{InventoryRepository, ReleaseOutcome, ReserveOutcome};

/// Most ids accepted in one `GetStocks` or `CommitMany` call.
pub const MAX_BATCH: usize = 1000;

#[derive(Clone)]
pub struct InventoryService {
    repository: InventoryRepository,
}

impl InventoryService {
    pub fn new(repository: InventoryRepository) -> Self {
        Self { repository }
    }

    pub async fn reserve(
        &self,
        order_id: &str,
        product_id: &str,
        quantity: i64,
    ) -> Result<ReserveOutcome, InventoryError> {
        let order_id = domain::parse_id("order_id", order_id)?;
        let product_id = domain::parse_id("product_id", product_id)?;
        let quantity = domain::positive_quantity("quantity", quantity)?;
        let outcome = self
            .repository
            .reserve(order_id, product_id, quantity)
            .await;
        match &outcome {
            Ok(ReserveOutcome::Reserved(_, stock)) => {
                tracing::info!(%order_id, %product_id, quantity, available = stock.available, "reserved");
            }
            Ok(ReserveOutcome::Replayed(..)) => {
                tracing::info!(%order_id, %product_id, "reservation replayed, nothing changed");
            }
            Err(InventoryError::InsufficientStock { available, .. }) => {
                tracing::info!(%order_id, %product_id, quantity, available, "insufficient stock");
            }
            Err(InventoryError::ReservationReleased(_)) => {
                tracing::warn!(%order_id, %product_id, "reserve after the order's release refused; nothing taken");
            }
            Err(_) => {}
        }
        outcome
    }

    pub async fn release(&self, order_id: &str) -> Result<ReleaseOutcome, InventoryError> {
        let order_id = domain::parse_id("order_id", order_id)?;
        let outcome = self.repository.release(order_id).await?;
        if outcome.released_now {
            tracing::info!(%order_id, "reservation released");
        }
        Ok(outcome)
    }

    pub async fn commit(&self, order_id: &str) -> Result<Reservation, InventoryError> {
        let order_id = domain::parse_id("order_id", order_id)?;
        self.repository.commit(order_id).await
    }

    /// Reservations still held after `older_than` (at most `limit`, 1 to
    /// [`MAX_BATCH`]), oldest first: what the order service settles when
    /// their order was never stored.
    pub async fn list_held(
        &self,
        older_than: std::time::Duration,
        limit: u32,
    ) -> Result<Vec<Reservation>, InventoryError> {
        if limit == 0 || limit as usize > MAX_BATCH {
            return Err(InventoryError::InvalidQuantity {
                field: "limit",
                reason: "must be between 1 and 1000",
            });
        }
        self.repository
            .held_older_than(older_than.as_secs_f64(), i64::from(limit))
            .await
    }

    /// Commits many orders' reservations at once (at most [`MAX_BATCH`]).
    pub async fn commit_many(
        &self,
        order_ids: &[String],
    ) -> Result<Vec<(Uuid, CommitResult)>, InventoryError> {
        if order_ids.len() > MAX_BATCH {
            return Err(InventoryError::TooManyIds {
                field: "order_ids",
                max: MAX_BATCH,
            });
        }
        let ids = order_ids
            .iter()
            .map(|id| domain::parse_id("order_ids", id))
            .collect::<Result<Vec<Uuid>, _>>()?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let outcomes = self.repository.commit_many(&ids).await?;
        tracing::debug!(orders = ids.len(), "reservations committed");
        Ok(outcomes)
    }

    pub async fn get_stock(&self, product_id: &str) -> Result<Stock, InventoryError> {
        let product_id = domain::parse_id("product_id", product_id)?;
        self.repository
            .get_stock(product_id)
            .await?
            .ok_or(InventoryError::UnknownProduct(product_id))
    }

    pub async fn get_stocks(&self, product_ids: &[String]) -> Result<Vec<Stock>, InventoryError> {
        if product_ids.len() > MAX_BATCH {
            return Err(InventoryError::TooManyIds {
                field: "product_ids",
                max: MAX_BATCH,
            });
        }
        let ids = product_ids
            .iter()
            .map(|id| domain::parse_id("product_ids", id))
            .collect::<Result<Vec<Uuid>, _>>()?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        self.repository.get_stocks(&ids).await
    }

    pub async fn set_stock(
        &self,
        product_id: &str,
        quantity: i64,
    ) -> Result<Stock, InventoryError> {
        let product_id = domain::parse_id("product_id", product_id)?;
        let quantity = domain::stock_level("quantity", quantity)?;
        let stock = self.repository.set_stock(product_id, quantity).await?;
        tracing::info!(%product_id, available = stock.available, "stock set");
        Ok(stock)
    }

    /// A new product's initial stock, recorded only if it has none yet.
    pub async fn init_stock(
        &self,
        product_id: &str,
        quantity: i64,
    ) -> Result<Stock, InventoryError> {
        let product_id = domain::parse_id("product_id", product_id)?;
        let quantity = domain::stock_level("quantity", quantity)?;
        let stock = self.repository.init_stock(product_id, quantity).await?;
        tracing::info!(%product_id, available = stock.available, "initial stock recorded");
        Ok(stock)
    }

    pub async fn adjust_stock(
        &self,
        product_id: &str,
        delta: i64,
    ) -> Result<Stock, InventoryError> {
        let product_id = domain::parse_id("product_id", product_id)?;
        let delta = domain::delta("delta", delta)?;
        let stock = self.repository.adjust_stock(product_id, delta).await?;
        tracing::info!(%product_id, delta, available = stock.available, "stock adjusted");
        Ok(stock)
    }
}
