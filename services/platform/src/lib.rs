//! Plumbing written once for every stockmesh service.
//!
//! A service crate composes these pieces in its `startup` module and keeps
//! only its domain: handlers translate, the service layer decides,
//! repositories store.

pub mod auth;
mod balancer;
pub mod breaker;
pub mod broker;
pub mod config;
pub mod csrf;
pub mod db;
pub mod deadline;
pub mod error;
pub mod events;
pub mod extract;
pub mod grpc;
pub mod grpc_client;
pub mod health;
pub mod http;
pub mod layers;
pub mod metrics;
pub mod openapi;
pub mod runtime;
pub mod shutdown;
pub mod telemetry;

pub use error::{ApiError, ErrorKind};
pub use shutdown::Shutdown;
