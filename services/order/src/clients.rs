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
    budget: RetryBudget,
    products: Arc<ProductCache>,
}

impl Upstreams {
    pub fn new(product: Upstream, inventory: Upstream, products: ProductCache) -> Self {
        Self {
            product: ProductServiceClient::new(product),
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

    /// Makes the order's reservation final in inventory (the units are sold).
    pub async fn commit(&self, order_id: Uuid) -> Result<(), tonic::Status> {
        retry(&self.budget, ATTEMPTS, || {
            let mut client = self.inventory.clone();
            let request = inv::CommitRequest {
                order_id: order_id.to_string(),
            };
            async move { client.commit(request).await }
        })
        .await
        .map(|_| ())
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
