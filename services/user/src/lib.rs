//! The user service: accounts, roles, login and JWT issuance, over HTTP.
//!
//! `http` translates, `service` decides, `repository` stores; `startup`
//! assembles them with the shared platform.

pub mod backoff;
pub mod client_ip;
pub mod config;
pub mod device;
pub mod domain;
pub mod error;
pub mod http;
pub mod password;
pub mod rate_limit;
pub mod repository;
pub mod service;
pub mod sessions;
pub mod startup;
pub mod tokens;
