//! The order service: the order saga over product and inventory, the
//! transactional outbox and its relay to RabbitMQ.
//!
//! `http` translates, `service` decides (the saga), `repository` stores,
//! `clients` calls upstreams (`catalog` keeps product answers briefly), `outbox` publishes; `startup` assembles them.

pub mod catalog;
pub mod clients;
pub mod committer;
pub mod config;
pub mod domain;
pub mod error;
pub mod http;
pub mod outbox;
pub mod repository;
pub mod service;
pub mod startup;
