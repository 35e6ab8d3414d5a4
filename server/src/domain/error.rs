//! Domain errors. One mapping to `tonic::Status` lives in `grpc::status`; one to HTTP status in
//! `http`. The variant carries the meaning; the message says what failed, in lower case.

/// What can go wrong, by meaning.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    /// The caller sent something malformed (INVALID_ARGUMENT / 400).
    #[error("{0}")]
    InvalidArgument(String),
    /// Typed values a command refuses, each with its option and rule (INVALID_ARGUMENT /
    /// 400): the edges audit the option and the rule, never the value.
    #[error("{0}")]
    Refused(crate::domain::input::Refusals),
    /// No such thing (NOT_FOUND / 404).
    #[error("{0}")]
    NotFound(String),
    /// The request is valid but not in the current state (FAILED_PRECONDITION / 409).
    #[error("{0}")]
    FailedPrecondition(String),
    /// It exists already with other content, e.g. a reused idempotency key (ALREADY_EXISTS /
    /// 409).
    #[error("{0}")]
    AlreadyExists(String),
    /// A concurrent change won; the same request may simply be sent again (ABORTED / 409).
    #[error("{0}")]
    Aborted(String),
    /// The role policy refuses it (PERMISSION_DENIED / 403).
    #[error("{0}")]
    PermissionDenied(String),
    /// A quota is used up for now (RESOURCE_EXHAUSTED / 429); the message says when it frees.
    #[error("{0}")]
    ResourceExhausted(String),
    /// A dependency (database, session store) did not answer (UNAVAILABLE / 503).
    #[error("{dependency} unavailable: {message}")]
    Unavailable {
        /// `database` or `session_store`.
        dependency: &'static str,
        /// What failed.
        message: String,
    },
    /// A bug or an unexpected state (INTERNAL / 500). The text is logged, never shown.
    #[error("{0}")]
    Internal(String),
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Session store failure.
    pub fn session_store(e: impl std::fmt::Display) -> Self {
        Error::Unavailable {
            dependency: "session_store",
            message: e.to_string(),
        }
    }
}
