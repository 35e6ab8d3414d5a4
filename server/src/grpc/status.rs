//! The one mapping from domain errors to gRPC status codes. Adapters branch on the code.

use crate::domain::Error;
use tonic::Status;

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        match e {
            Error::InvalidArgument(m) => Status::invalid_argument(m),
            Error::NotFound(m) => Status::not_found(m),
            Error::FailedPrecondition(m) => Status::failed_precondition(m),
            Error::AlreadyExists(m) => Status::already_exists(m),
            Error::Aborted(m) => Status::aborted(m),
            Error::PermissionDenied(m) => Status::permission_denied(m),
            Error::ResourceExhausted(m) => Status::resource_exhausted(m),
            e @ Error::Unavailable { .. } => {
                tracing::warn!(error = %e, "dependency unavailable");
                Status::unavailable(e.to_string())
            }
            Error::Internal(m) => {
                tracing::error!(error = %m, "internal error");
                Status::internal("internal error; the server log has the cause")
            }
        }
    }
}
