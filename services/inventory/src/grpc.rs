//! gRPC handlers: translate protobuf messages to service calls and back.

use stockmesh_proto::inventory::v1 as pb;
use stockmesh_proto::inventory::v1::inventory_service_server::InventoryService as InventoryApi;
use tonic::{Request, Response, Status};

use crate::domain::{CommitResult, Reservation, ReservationState, Stock};
use crate::repository::ReserveOutcome;
use crate::service::InventoryService;

pub struct InventoryGrpc {
    service: InventoryService,
}

impl InventoryGrpc {
    pub fn new(service: InventoryService) -> Self {
        Self { service }
    }
}

fn stock_to_pb(stock: Stock) -> pb::Stock {
    pb::Stock {
        product_id: stock.product_id.to_string(),
        available: stock.available,
        reserved: stock.reserved,
    }
}

fn reservation_to_pb(reservation: Reservation) -> pb::Reservation {
    let state = match reservation.state {
        ReservationState::Reserved => pb::ReservationState::Reserved,
        ReservationState::Released => pb::ReservationState::Released,
        ReservationState::Committed => pb::ReservationState::Committed,
    };
    pb::Reservation {
        order_id: reservation.order_id.to_string(),
        product_id: reservation.product_id.to_string(),
        quantity: reservation.quantity,
        state: state as i32,
    }
}

#[tonic::async_trait]
impl InventoryApi for InventoryGrpc {
    async fn reserve(
        &self,
        request: Request<pb::ReserveRequest>,
    ) -> Result<Response<pb::ReserveResponse>, Status> {
        let req = request.into_inner();
        let (reservation, stock) = match self
            .service
            .reserve(&req.order_id, &req.product_id, req.quantity)
            .await?
        {
            ReserveOutcome::Reserved(r, s) | ReserveOutcome::Replayed(r, s) => (r, s),
        };
        Ok(Response::new(pb::ReserveResponse {
            reservation: Some(reservation_to_pb(reservation)),
            stock: Some(stock_to_pb(stock)),
        }))
    }

    async fn release(
        &self,
        request: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        let outcome = self.service.release(&request.into_inner().order_id).await?;
        Ok(Response::new(pb::ReleaseResponse {
            reservation: outcome.reservation.map(reservation_to_pb),
            released_now: outcome.released_now,
        }))
    }

    async fn commit(
        &self,
        request: Request<pb::CommitRequest>,
    ) -> Result<Response<pb::CommitResponse>, Status> {
        let reservation = self.service.commit(&request.into_inner().order_id).await?;
        Ok(Response::new(pb::CommitResponse {
            reservation: Some(reservation_to_pb(reservation)),
        }))
    }

    async fn commit_many(
        &self,
        request: Request<pb::CommitManyRequest>,
    ) -> Result<Response<pb::CommitManyResponse>, Status> {
        let outcomes = self
            .service
            .commit_many(&request.into_inner().order_ids)
            .await?;
        Ok(Response::new(pb::CommitManyResponse {
            outcomes: outcomes
                .into_iter()
                .map(|(order_id, result)| pb::CommitOutcome {
                    order_id: order_id.to_string(),
                    result: match result {
                        CommitResult::Committed => pb::CommitResult::Committed,
                        CommitResult::Released => pb::CommitResult::Released,
                        CommitResult::NotFound => pb::CommitResult::NotFound,
                    } as i32,
                })
                .collect(),
        }))
    }

    async fn list_held(
        &self,
        request: Request<pb::ListHeldRequest>,
    ) -> Result<Response<pb::ListHeldResponse>, Status> {
        let request = request.into_inner();
        let held = self
            .service
            .list_held(
                std::time::Duration::from_millis(request.older_than_ms),
                request.limit,
            )
            .await?;
        Ok(Response::new(pb::ListHeldResponse {
            reservations: held.into_iter().map(reservation_to_pb).collect(),
        }))
    }

    async fn get_stock(
        &self,
        request: Request<pb::GetStockRequest>,
    ) -> Result<Response<pb::GetStockResponse>, Status> {
        let stock = self
            .service
            .get_stock(&request.into_inner().product_id)
            .await?;
        Ok(Response::new(pb::GetStockResponse {
            stock: Some(stock_to_pb(stock)),
        }))
    }

    async fn get_stocks(
        &self,
        request: Request<pb::GetStocksRequest>,
    ) -> Result<Response<pb::GetStocksResponse>, Status> {
        let stocks = self
            .service
            .get_stocks(&request.into_inner().product_ids)
            .await?;
        Ok(Response::new(pb::GetStocksResponse {
            stocks: stocks.into_iter().map(stock_to_pb).collect(),
        }))
    }

    async fn set_stock(
        &self,
        request: Request<pb::SetStockRequest>,
    ) -> Result<Response<pb::SetStockResponse>, Status> {
        let req = request.into_inner();
        let stock = self
            .service
            .set_stock(&req.product_id, req.quantity)
            .await?;
        Ok(Response::new(pb::SetStockResponse {
            stock: Some(stock_to_pb(stock)),
        }))
    }

    async fn init_stock(
        &self,
        request: Request<pb::SetStockRequest>,
    ) -> Result<Response<pb::SetStockResponse>, Status> {
        let req = request.into_inner();
        let stock = self
            .service
            .init_stock(&req.product_id, req.quantity)
            .await?;
        Ok(Response::new(pb::SetStockResponse {
            stock: Some(stock_to_pb(stock)),
        }))
    }

    async fn adjust_stock(
        &self,
        request: Request<pb::AdjustStockRequest>,
    ) -> Result<Response<pb::AdjustStockResponse>, Status> {
        let req = request.into_inner();
        let stock = self
            .service
            .adjust_stock(&req.product_id, req.delta)
            .await?;
        Ok(Response::new(pb::AdjustStockResponse {
            stock: Some(stock_to_pb(stock)),
        }))
    }
}
