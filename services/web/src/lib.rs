//! The web console: a single-page shop and admin console in plain HTML,
//! CSS and JavaScript, embedded in the binary (nothing is loaded from
//! elsewhere at run time, so it works in an air-gapped cluster), and the
//! admin system page's view of every service.
//!
//! The console calls the services' own public API under `/api/...` on the
//! same origin (the Ingress routes those paths to the services and
//! everything else here); `assets` serves the files, `system` gathers
//! readiness and key metrics from each service, `startup` assembles them.

pub mod assets;
pub mod config;
pub mod startup;
pub mod system;
