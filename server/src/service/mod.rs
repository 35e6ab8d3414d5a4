//! The application layer, between the edges (`grpc`, `http`) and the store. Each function is
//! one use case: it authorizes and audits, applies the domain's rules, calls the store, counts
//! and logs. It speaks domain types only (an [`discord::Interaction`], a Codex task, a
//! requester), never protobuf; the edges decode, call one function here and map its error.

pub mod codex;
pub mod completions;
pub mod discord;
pub mod dispatch;
pub mod history;
pub mod runs;
pub mod sessions;
pub mod templates;
