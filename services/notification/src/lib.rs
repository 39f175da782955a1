//! The notification service: consumes order events from RabbitMQ, stores
//! one notification per event for the order's user, and serves them to
//! their owner over HTTP.
//!
//! `consumer` and `http` translate, `service` decides, `repository` stores;
//! `startup` assembles them with the shared platform.

pub mod acks;
pub mod config;
pub mod consumer;
pub mod domain;
pub mod error;
pub mod http;
pub mod live;
pub mod replay;
pub mod repository;
pub mod service;
pub mod startup;
