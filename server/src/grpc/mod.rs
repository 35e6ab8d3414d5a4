//! The gRPC edge: the four `facteur.v1` services, translating protobuf to domain calls.
//! Handlers hold no business rule; errors map to codes in [`status`].

pub mod admin;
pub mod card;
pub mod codex;
pub mod command;
pub mod convert;
pub mod dispatch;
pub mod layer;
pub mod status;

pub use admin::AdminApi;
pub use codex::CodexApi;
pub use command::CommandApi;
pub use dispatch::DispatchApi;

use std::pin::Pin;
use tokio_stream::Stream;
use tonic::Status;

pub(crate) type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;
