//! Shared helpers for the integration tests: fresh databases, the mock LLM upstream,
//! a real Envoy, and an in-process tollgate.
#![allow(dead_code)]

pub mod authenticator;
pub mod changes;
pub mod chaos;
pub mod check;
pub mod chromium;
pub mod db;
pub mod envoy;
pub mod metrics;
pub mod oidc_issuer;
pub mod oidc_provider;
pub mod pki;
pub mod private_redis;
pub mod redis_cluster;
pub mod serve;
pub mod smtp;
pub mod tollgate;
pub mod ui;
pub mod upstream;
