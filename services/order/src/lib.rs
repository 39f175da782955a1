//! The order service: the order saga over product and inventory, the
//! transactional outbox and its relay to RabbitMQ.
//!
//! `http` translates, `service` decides (the saga), `repository` stores,
//! `clients` calls upstreams, `outbox` publishes; `startup` assembles them.

pub mod clients;
pub mod config;
pub mod domain;
pub mod error;
pub mod http;
pub mod outbox;
pub mod repository;
pub mod service;
pub mod startup;
