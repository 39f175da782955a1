//! gRPC handlers for the order service: `GetProduct`, `GetProducts`.

use stockmesh_proto::product::v1 as pb;
use stockmesh_proto::product::v1::product_service_server::ProductService as ProductApi;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::domain::Product;
use crate::error::ProductError;
use crate::service::ProductService;

pub struct ProductGrpc {
    service: ProductService,
}

impl ProductGrpc {
    pub fn new(service: ProductService) -> Self {
        Self { service }
    }
}

fn to_pb(product: Product) -> pb::Product {
    pb::Product {
        id: product.id.to_string(),
        name: product.name,
        description: product.description,
        price: Some(pb::Money {
            amount_minor: product.price.amount_minor,
            currency: product.price.currency,
        }),
    }
}

#[tonic::async_trait]
impl ProductApi for ProductGrpc {
    async fn get_product(
        &self,
        request: Request<pb::GetProductRequest>,
    ) -> Result<Response<pb::GetProductResponse>, Status> {
        let id = Uuid::parse_str(request.get_ref().id.trim())
            .map_err(|_| ProductError::InvalidId("id"))?;
        let product = self.service.get(id).await?;
        tracing::debug!(product_id = %id, "product read");
        Ok(Response::new(pb::GetProductResponse {
            product: Some(to_pb(product)),
        }))
    }

    async fn get_products(
        &self,
        request: Request<pb::GetProductsRequest>,
    ) -> Result<Response<pb::GetProductsResponse>, Status> {
        let products = self.service.get_many(&request.into_inner().ids).await?;
        Ok(Response::new(pb::GetProductsResponse {
            products: products.into_iter().map(to_pb).collect(),
        }))
    }
}
