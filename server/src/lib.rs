//! The facteur control plane (`facteur` binary): the only process that touches the database and
//! the session store.
//!
//! ```text
//!  discord-adapter ─┐                      ┌─▶ store (sea-orm: Postgres | SQLite)
//!  argo-adapter ────┼─▶ grpc (tonic, auth) ─┤
//!  facteurctl ──────┘        │              └─▶ session (Redis | memory)
//!                          domain (runs, state machine) — no tonic/sea-orm/redis types
//!  probes, Prometheus ─▶ http (axum): /healthz /readyz /metrics
//! ```
//!
//! Where is the run state machine? [`domain::run`].

pub mod app;
pub mod auth;
pub mod domain;
pub mod grpc;
pub mod health;
pub mod http;
pub mod metrics;
pub mod service;
pub mod session;
pub mod state;
pub mod store;

pub use app::{RunningServer, start};
