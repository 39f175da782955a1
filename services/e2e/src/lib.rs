//! End-to-end tests of stockmesh: the five real service binaries (`user`,
//! `product`, `inventory`, `order`, `notification`) started as processes,
//! each with its own fresh database, against the real test PostgreSQL and
//! RabbitMQ. The harness lives in `tests/common`, the scenarios in `tests/`.
//!
//! The tests run the binaries from the target directory they are built into
//! (`cargo test --workspace --all-targets` or `make test` build them first;
//! otherwise run `cargo build --bins`). They never invoke cargo themselves.
