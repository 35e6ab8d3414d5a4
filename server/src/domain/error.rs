//! Domain errors. One mapping to `tonic::Status` lives in `grpc::status`; one to HTTP status in
//! `http`. The variant carries the meaning; the message says what failed, in lower case.

/// What can go wrong, by meaning.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    /// The caller sent something malformed (INVALID_ARGUMENT / 400). `field` names what, as
    /// the caller wrote it (`context.user_id`, `task.repository`, `policy.commands[2]`); empty
    /// when the request as a whole is wrong. The edges put it in `BadRequest` (gRPC) and in the
    /// JSON body's `field` (HTTP): nothing reads it back from the message.
    #[error("{message}")]
    InvalidArgument {
        /// The field at fault, or empty.
        field: String,
        /// What is wrong with it, naming it.
        message: String,
    },
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
    /// A feature this deployment has turned off (FAILED_PRECONDITION; 503 over HTTP, as the old
    /// service answered a Codex task while orchestration was off).
    #[error("{message}")]
    Disabled {
        /// Which: `codex_orchestration`.
        feature: &'static str,
        /// What is off and how to turn it on.
        message: String,
    },
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
    /// Bad input in `field` (see [`Error::InvalidArgument`]).
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidArgument {
            field: field.into(),
            message: message.into(),
        }
    }

    /// Bad input that is no one field's fault (the request as a whole).
    pub fn malformed(message: impl Into<String>) -> Self {
        Self::invalid(String::new(), message)
    }

    /// Session store failure.
    pub fn session_store(e: impl std::fmt::Display) -> Self {
        Error::Unavailable {
            dependency: "session_store",
            message: e.to_string(),
        }
    }
}
