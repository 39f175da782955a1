//! The catalog's rules, behind both transports (HTTP for clients, gRPC for
//! the order service).
//!
//! Creating a product with its initial stock spans two services. The order
//! of operations keeps them consistent without a distributed transaction:
//! 1. the product row is stored with `stock_status = 'pending'` and its
//!    initial stock;
//! 2. inventory `InitStock` records the stock if it has no record yet (so
//!    repeating it is harmless: the background retry below may run while a
//!    creation is still under way, and must never put back units that
//!    orders took since; an absolute `SetStock` did, an oversell);
//! 3. the row is marked `synced`.
//!
//! If inventory is down at step 2 the product still exists, shows
//! `"stock": null`, and [`ProductService::sync_pending_stock`] (run in the
//! background) repeats step 2 until it succeeds. No product is left without
//! a stock record for longer than the outage.

use std::collections::HashMap;

use uuid::Uuid;

use crate::domain::{self, Money, Product};
use crate::error::ProductError;
use crate::repository::{ProductChanges, ProductRepository};
use crate::stock::StockClient;

/// Stock as the catalog shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StockView {
    Known(i64),
    /// Inventory did not answer, or has no record yet.
    Unknown(&'static str),
}

pub const MAX_BATCH: usize = 100;

#[derive(Clone)]
pub struct ProductService {
    repository: ProductRepository,
    stock: StockClient,
}

/// Requested product changes.
#[derive(Debug, Default, Clone)]
pub struct ProductUpdate {
    pub name: Option<String>,
    pub description: Option<String>,
    pub price: Option<Money>,
}

impl ProductService {
    pub fn new(repository: ProductRepository, stock: StockClient) -> Self {
        Self { repository, stock }
    }

    pub async fn create(
        &self,
        name: &str,
        description: &str,
        price: &Money,
        initial_stock: i64,
    ) -> Result<(Product, StockView), ProductError> {
        let name = domain::check_name(name)?;
        let description = domain::check_description(description)?;
        let price = domain::check_price(price)?;
        let initial_stock = domain::check_stock(initial_stock)?;
        let product = self
            .repository
            .insert(&name, &description, &price, initial_stock)
            .await?;
        tracing::info!(product_id = %product.id, "product created");
        let stock = match self.record_stock(&product).await {
            Ok(available) => StockView::Known(available),
            Err(err) => {
                tracing::warn!(product_id = %product.id, error = %err, "stock not recorded yet; will retry");
                StockView::Unknown(
                    "inventory unavailable; the stock will be recorded when it returns",
                )
            }
        };
        Ok((product, stock))
    }

    async fn record_stock(&self, product: &Product) -> Result<i64, ProductError> {
        let available = self.stock.init(product.id, product.initial_stock).await?;
        self.repository.mark_stock_synced(product.id).await?;
        Ok(available)
    }

    /// Records the stock of products created while inventory was down.
    /// Returns how many were synced.
    pub async fn sync_pending_stock(&self) -> Result<usize, ProductError> {
        let mut synced = 0;
        for product in self.repository.pending_stock(50).await? {
            self.record_stock(&product).await?;
            tracing::info!(product_id = %product.id, "stock recorded after retry");
            synced += 1;
        }
        Ok(synced)
    }

    pub async fn get(&self, id: Uuid) -> Result<Product, ProductError> {
        self.repository
            .by_id(id)
            .await?
            .ok_or(ProductError::NotFound)
    }

    pub async fn get_many(&self, ids: &[String]) -> Result<Vec<Product>, ProductError> {
        if ids.len() > MAX_BATCH {
            return Err(ProductError::TooManyIds(MAX_BATCH));
        }
        let ids = ids
            .iter()
            .map(|id| Uuid::parse_str(id.trim()).map_err(|_| ProductError::InvalidId("ids")))
            .collect::<Result<Vec<_>, _>>()?;
        self.repository.by_ids(&ids).await
    }

    pub async fn list(
        &self,
        search: Option<&str>,
        limit: i64,
        offset: i64,
    ) -> Result<(Vec<Product>, i64), ProductError> {
        self.repository.list(search, limit, offset).await
    }

    /// Current stock of each product; never fails: an unreachable inventory
    /// makes the stock unknown, the catalog answers anyway.
    pub async fn stock_of(&self, products: &[Product]) -> HashMap<Uuid, StockView> {
        let ids: Vec<Uuid> = products.iter().map(|p| p.id).collect();
        match self.stock.available(&ids).await {
            Ok(found) => ids
                .into_iter()
                .map(|id| {
                    let view = found
                        .get(&id)
                        .map(|a| StockView::Known(*a))
                        .unwrap_or(StockView::Unknown("no stock recorded yet"));
                    (id, view)
                })
                .collect(),
            Err(err) => {
                tracing::warn!(error = %err, "stock unknown: inventory did not answer");
                ids.into_iter()
                    .map(|id| (id, StockView::Unknown("inventory unavailable")))
                    .collect()
            }
        }
    }

    pub async fn update(&self, id: Uuid, update: ProductUpdate) -> Result<Product, ProductError> {
        let changes = ProductChanges {
            name: update.name.as_deref().map(domain::check_name).transpose()?,
            description: update
                .description
                .as_deref()
                .map(domain::check_description)
                .transpose()?,
            price: update.price.as_ref().map(domain::check_price).transpose()?,
        };
        let product = self.repository.update(id, &changes).await?;
        tracing::info!(product_id = %id, "product updated");
        Ok(product)
    }

    pub async fn delete(&self, id: Uuid) -> Result<(), ProductError> {
        self.repository.soft_delete(id).await?;
        tracing::info!(product_id = %id, "product deleted");
        Ok(())
    }

    /// Admin stock change: inventory must answer, or the caller is told to
    /// retry (503).
    pub async fn set_stock(&self, id: Uuid, quantity: i64) -> Result<i64, ProductError> {
        let quantity = domain::check_stock(quantity)?;
        let product = self.get(id).await?;
        let available = self.stock.set(product.id, quantity).await?;
        self.repository.mark_stock_synced(product.id).await?;
        tracing::info!(product_id = %id, available, "stock set");
        Ok(available)
    }
}
