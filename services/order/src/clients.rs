//! The order service's upstreams, over the shared gRPC client stack. Every
//! call used here is idempotent (reads, and Reserve/Release/Commit keyed by
//! order id), so all of them are retried within the retry budget.

use std::sync::Arc;

use stockmesh_platform::grpc_client::{RetryBudget, Upstream, retry};
use stockmesh_proto::inventory::v1 as inv;
use stockmesh_proto::inventory::v1::inventory_service_client::InventoryServiceClient;
use stockmesh_proto::product::v1 as prod;
use stockmesh_proto::product::v1::product_service_client::ProductServiceClient;
use uuid::Uuid;

use crate::catalog::ProductCache;

const ATTEMPTS: u32 = 3;

#[derive(Clone)]
pub struct Upstreams {
    product: ProductServiceClient<Upstream>,
    inventory: InventoryServiceClient<Upstream>,
    /// Inventory's breaker, asked before an order is stored.
    inventory_breaker: stockmesh_platform::breaker::Breaker,
    budget: RetryBudget,
    products: Arc<ProductCache>,
}

impl Upstreams {
    pub fn new(product: Upstream, inventory: Upstream, products: ProductCache) -> Self {
        Self {
            product: ProductServiceClient::new(product),
            inventory_breaker: inventory.breaker().clone(),
            inventory: InventoryServiceClient::new(inventory),
            budget: RetryBudget::new(0.2),
            products: Arc::new(products),
        }
    }

    /// The product, from the short-lived cache or else from product.
    pub async fn product(&self, id: Uuid) -> Result<prod::Product, tonic::Status> {
        if let Some(product) = self.products.get(id) {
            return Ok(product);
        }
        let product = self.fetch_product(id).await?;
        self.products.put(id, &product);
        Ok(product)
    }

    async fn fetch_product(&self, id: Uuid) -> Result<prod::Product, tonic::Status> {
        let response = retry(&self.budget, ATTEMPTS, || {
            let mut client = self.product.clone();
            async move {
                client
                    .get_product(prod::GetProductRequest { id: id.to_string() })
                    .await
            }
        })
        .await?;
        response
            .into_inner()
            .product
            .ok_or_else(|| tonic::Status::internal("product answer without a product"))
    }

    /// How long inventory's breaker will still fail calls fast, if it is
    /// open: an order placed now could only be stored to be failed.
    pub fn inventory_refusing(&self) -> Option<std::time::Duration> {
        self.inventory_breaker.refusing()
    }

    pub async fn reserve(
        &self,
        order_id: Uuid,
        product_id: Uuid,
        quantity: i64,
    ) -> Result<(), tonic::Status> {
        retry(&self.budget, ATTEMPTS, || {
            let mut client = self.inventory.clone();
            let request = inv::ReserveRequest {
                order_id: order_id.to_string(),
                product_id: product_id.to_string(),
                quantity,
            };
            async move { client.reserve(request).await }
        })
        .await
        .map(|_| ())
    }

    /// Makes the reservations of these orders final in inventory (the units
    /// are sold), in one call and one inventory transaction: the answer for
    /// each order, in the order asked.
    pub async fn commit_many(
        &self,
        order_ids: &[Uuid],
    ) -> Result<Vec<(Uuid, inv::CommitResult)>, tonic::Status> {
        let request = inv::CommitManyRequest {
            order_ids: order_ids.iter().map(Uuid::to_string).collect(),
        };
        let response = retry(&self.budget, ATTEMPTS, || {
            let mut client = self.inventory.clone();
            let request = request.clone();
            async move { client.commit_many(request).await }
        })
        .await?
        .into_inner();
        if response.outcomes.len() != order_ids.len() {
            return Err(tonic::Status::internal(format!(
                "CommitMany answered {} outcomes for {} orders",
                response.outcomes.len(),
                order_ids.len()
            )));
        }
        Ok(order_ids
            .iter()
            .zip(response.outcomes)
            .map(|(id, outcome)| (*id, outcome.result()))
            .collect())
    }

    /// Reservations inventory still holds that were made more than
    /// `older_than` ago (at most `limit`): `(order id, product id, quantity)`.
    pub async fn held_reservations(
        &self,
        older_than: std::time::Duration,
        limit: u32,
    ) -> Result<Vec<(Uuid, Uuid, i64)>, tonic::Status> {
        let request = inv::ListHeldRequest {
            older_than_ms: u64::try_from(older_than.as_millis()).unwrap_or(u64::MAX),
            limit,
        };
        let response = retry(&self.budget, ATTEMPTS, || {
            let mut client = self.inventory.clone();
            async move { client.list_held(request).await }
        })
        .await?
        .into_inner();
        response
            .reservations
            .into_iter()
            .map(|held| {
                let order = Uuid::parse_str(&held.order_id);
                let product = Uuid::parse_str(&held.product_id);
                match (order, product) {
                    (Ok(order), Ok(product)) => Ok((order, product, held.quantity)),
                    _ => Err(tonic::Status::internal(format!(
                        "ListHeld answered a malformed reservation ({:?}, {:?})",
                        held.order_id, held.product_id
                    ))),
                }
            })
            .collect()
    }

    pub async fn release(&self, order_id: Uuid) -> Result<(), tonic::Status> {
        retry(&self.budget, ATTEMPTS, || {
            let mut client = self.inventory.clone();
            let request = inv::ReleaseRequest {
                order_id: order_id.to_string(),
            };
            async move { client.release(request).await }
        })
        .await
        .map(|_| ())
    }
}
