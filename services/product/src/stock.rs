//! The product service's view of inventory: stock reads (best effort, the
//! catalog stays up without them) and stock writes (admin), over the shared
//! gRPC client stack.

use std::collections::HashMap;

use stockmesh_platform::grpc_client::Upstream;
use stockmesh_proto::inventory::v1 as pb;
use stockmesh_proto::inventory::v1::inventory_service_client::InventoryServiceClient;
use uuid::Uuid;

use crate::error::ProductError;

#[derive(Clone)]
pub struct StockClient {
    client: InventoryServiceClient<Upstream>,
}

impl StockClient {
    pub fn new(upstream: Upstream) -> Self {
        Self {
            client: InventoryServiceClient::new(upstream),
        }
    }

    /// Available units per product; products without a record are absent.
    pub async fn available(&self, ids: &[Uuid]) -> Result<HashMap<Uuid, i64>, ProductError> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let response = self
            .client
            .clone()
            .get_stocks(pb::GetStocksRequest {
                product_ids: ids.iter().map(Uuid::to_string).collect(),
            })
            .await?;
        Ok(response
            .into_inner()
            .stocks
            .into_iter()
            .filter_map(|s| Some((Uuid::parse_str(&s.product_id).ok()?, s.available)))
            .collect())
    }

    /// Sets the available quantity (idempotent: an absolute value).
    /// Records a new product's initial stock unless inventory already has
    /// a record (a repeated creation must not undo what orders took since);
    /// the available stock as it is.
    pub async fn init(&self, id: Uuid, quantity: i64) -> Result<i64, ProductError> {
        let response = self
            .client
            .clone()
            .init_stock(pb::SetStockRequest {
                product_id: id.to_string(),
                quantity,
            })
            .await?;
        Ok(response
            .into_inner()
            .stock
            .map(|s| s.available)
            .unwrap_or(quantity))
    }

    pub async fn set(&self, id: Uuid, quantity: i64) -> Result<i64, ProductError> {
        let response = self
            .client
            .clone()
            .set_stock(pb::SetStockRequest {
                product_id: id.to_string(),
                quantity,
            })
            .await?;
        Ok(response
            .into_inner()
            .stock
            .map(|s| s.available)
            .unwrap_or(quantity))
    }
}
