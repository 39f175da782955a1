//! The inventory service: stock levels and per-order reservations, over gRPC.
//!
//! `grpc` translates, `service` decides, `repository` stores; `startup`
//! assembles them with the shared platform.

pub mod config;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod repository;
pub mod service;
pub mod startup;
