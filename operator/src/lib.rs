//! stockmesh-operator: reconciles an `InventorySystem` custom resource
//! (`stockmesh.io/v1alpha1`) into PostgreSQL, RabbitMQ and the five stockmesh
//! services, following `docs/deployment-contract.md`.
//!
//! The builders ([`resources::build_all`]) are pure and public so that the
//! `render` binary and the Helm chart parity test can use them.

pub mod cache;
pub mod cli;
pub mod compat;
pub mod controller;
pub mod crd;
pub mod drift;
pub mod images;
pub mod leader;
pub mod metrics;
pub mod names;
pub mod rbac;
pub mod render;
pub mod resources;
pub mod runner;
pub mod secrets;
pub mod server;
pub mod status;
pub mod telemetry;

pub use crd::{InventorySystem, InventorySystemSpec, InventorySystemStatus};
pub use resources::{Desired, Kind, ObservedSecrets, WriteMode, build_all};
