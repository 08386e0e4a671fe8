//! tollgate: the authorization sidecar that governs LLM traffic behind Envoy.
//!
//! Envoy asks [`authz`] over gRPC ext_authz whether a request may pass. The answer is
//! computed in three layers, each in its own module:
//!
//! - [`authz`] is the gRPC edge: it turns a `CheckRequest` into [`decision::RequestFacts`]
//!   and a [`decision::Verdict`] back into a `CheckResponse`. Nothing else knows about Envoy.
//! - [`authn`] resolves a credential into a [`decision::Principal`] (master key, virtual key,
//!   later JWTs); virtual keys are served from a moka cache so a warm decision does no I/O.
//! - [`decision`] is the pure policy: expiry, blocking, route permissions, model access.
//!   It takes `now` and the resolved facts and returns a verdict; no I/O, no tonic, no sqlx.
//!
//! Around it: [`store`] (SQLite or Postgres through sqlx), [`admin`] (the HTTP API),
//! [`ui`] (the web UI: pages over the HTTP API's handlers), [`cli`] (the command line),
//! [`config`], [`metrics`] and [`app`] (wiring and listeners);
//! [`lifecycle`] says when a replica is ready and how it drains on SIGTERM;
//! [`backend_tls`] says what TLS to Postgres and Redis trusts and what its failures mean;
//! [`mail`] sends budget alerts by SMTP.
//! [`mock_llm`] is an OpenAI-shaped upstream used by the end-to-end tests and the demo.

pub mod admin;
pub mod admission;
pub mod app;
pub mod authn;
pub mod authz;
pub mod backend;
pub mod backend_tls;
pub mod budget;
pub mod cli;
pub mod clock;
pub mod config;
pub mod decision;
pub mod domain;
pub mod invalidation;
pub mod lifecycle;
pub mod limits;
pub mod mail;
pub mod metrics;
pub mod mock_llm;
pub mod redis_pool;
pub mod secret;
pub mod store;
pub mod ui;
pub mod usage;
