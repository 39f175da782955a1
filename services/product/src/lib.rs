//! The product service: the catalog over HTTP (clients) and gRPC (order),
//! and stock administration through inventory.
//!
//! `http`/`grpc` translate, `service` decides, `repository` stores, `stock`
//! talks to inventory; `startup` assembles them with the shared platform.

pub mod config;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod http;
pub mod repository;
pub mod service;
pub mod startup;
pub mod stock;
