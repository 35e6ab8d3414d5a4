//! What the three facteur binaries share at run time, apart from their configuration
//! (`facteur-config`) and the control plane's client (`facteur-client`, which depends on
//! neither this crate nor OpenTelemetry):
//!
//! - [`runtime`]: the tokio runtime and what it asks of the allocator;
//! - [`telemetry`]: logs, traces and metrics (OTLP), and the trace context of calls;
//! - [`signals`]: SIGTERM and SIGINT start a drain;
//! - [`supervise`]: background tasks that are restarted, or stop the process;
//! - [`adapter`]: the command line and start-up of `facteur-argo` and `facteur-discord`.

pub mod adapter;
pub mod runtime;
pub mod signals;
pub mod supervise;
pub mod telemetry;
