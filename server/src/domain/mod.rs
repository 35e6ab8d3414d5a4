//! The domain: runs and their state machine, and the errors every edge maps from.
//! Free of tonic, sea-orm and redis types: handlers translate at the edge.

pub mod approval;
pub mod assignment;
pub mod catalog;
pub mod codex;
pub mod dispatch;
pub mod error;
pub mod input;
pub mod interaction;
pub mod machine;
pub mod policy;
pub mod retention;
pub mod run;
pub mod templates;
pub mod workflow;

pub use error::{Error, Result};
pub use run::{NewRun, Run, RunEvent, RunSource, RunStatus};
