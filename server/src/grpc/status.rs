//! The one mapping from domain errors to gRPC status codes. Adapters branch on the code.

use crate::domain::Error;
use tonic::Status;

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        match e {
            Error::InvalidArgument(m) => Status::invalid_argument(m),
            Error::Refused(r) => Status::invalid_argument(r.to_string()),
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

/// The domain of every `ErrorInfo` the server attaches.
pub const ERROR_DOMAIN: &str = "facteur.proompteng.ai";

/// The field an INVALID_ARGUMENT message names: its leading path (`templates[0].namespace: …`,
/// `context.user_id is …`), else the first name in backquotes (`` `repository` is … ``).
pub fn field_of(message: &str) -> Option<String> {
    let lead: String = message
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || "_.[]".contains(*c))
        .collect();
    let rest = &message[lead.len()..];
    if !lead.is_empty()
        && (rest.starts_with(':') || rest.starts_with(" is ") || rest.starts_with(" must "))
    {
        return Some(lead);
    }
    let (_, after) = message.split_once('`')?;
    let (name, _) = after.split_once('`')?;
    (!name.is_empty() && !name.contains(' ')).then(|| name.to_string())
}

/// The `google.rpc.Status` details of an error answered with `code` and `message`: an
/// `ErrorInfo` with a stable reason (the code's name; `DEPENDENCY_UNAVAILABLE` with the
/// dependency for an outage) in [`ERROR_DOMAIN`], and for INVALID_ARGUMENT a `BadRequest`
/// naming the field when the message does. Clients branch on these, not on the text.
pub fn details(code: tonic::Code, message: &str) -> tonic_types::ErrorDetails {
    use tonic::Code;
    let mut metadata = std::collections::HashMap::new();
    let reason = match code {
        Code::Unavailable => {
            // `database unavailable: …`, `session_store unavailable: …`
            if let Some((dependency, _)) = message.split_once(" unavailable") {
                metadata.insert("dependency".to_string(), dependency.to_string());
            }
            "DEPENDENCY_UNAVAILABLE".to_string()
        }
        other => format!("{other:?}")
            .chars()
            .fold(String::new(), |mut s, c| {
                if c.is_uppercase() && !s.is_empty() {
                    s.push('_');
                }
                s.push(c.to_ascii_uppercase());
                s
            }),
    };
    let mut d = tonic_types::ErrorDetails::with_error_info(reason, ERROR_DOMAIN, metadata);
    if code == Code::InvalidArgument
        && let Some(field) = field_of(message)
    {
        d.add_bad_request_violation(field, message);
    }
    d
}

/// Adds [`details`] to an error answer (a trailers-only response's headers) that has none.
pub fn add_details(headers: &mut http::HeaderMap) {
    use tonic_types::StatusExt;
    if headers.contains_key("grpc-status-details-bin") {
        return;
    }
    let Some(status) = Status::from_header_map(headers) else {
        return;
    };
    if status.code() == tonic::Code::Ok {
        return;
    }
    let detailed = Status::with_error_details(
        status.code(),
        status.message(),
        details(status.code(), status.message()),
    );
    let _ = detailed.add_header(headers);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::StatusExt;

    #[test]
    fn fields_are_named_as_the_messages_name_them() {
        assert_eq!(
            field_of("templates[0].namespace: `x` is not one").as_deref(),
            Some("templates[0].namespace")
        );
        assert_eq!(
            field_of("context.user_id is 300 characters long").as_deref(),
            Some("context.user_id")
        );
        assert_eq!(
            field_of("`environment` is required").as_deref(),
            Some("environment")
        );
        assert_eq!(
            field_of("kind must be SLASH_COMMAND or MODAL_SUBMIT").as_deref(),
            Some("kind")
        );
        assert_eq!(field_of("something went wrong"), None);
    }

    #[test]
    fn every_error_carries_a_stable_reason_and_bad_input_its_field() {
        let mut headers = http::HeaderMap::new();
        Status::invalid_argument(
            "task.repository is 141 characters long; at most 140 are accepted",
        )
        .add_header(&mut headers)
        .expect("headers");
        add_details(&mut headers);
        let back = Status::from_header_map(&headers).expect("status");
        let d = back.get_error_details();
        let info = d.error_info().expect("error info");
        assert_eq!(
            (info.reason.as_str(), info.domain.as_str()),
            ("INVALID_ARGUMENT", ERROR_DOMAIN)
        );
        let v = &d.bad_request().expect("bad request").field_violations[0];
        assert_eq!(v.field, "task.repository");
        let outage = details(
            tonic::Code::Unavailable,
            "database unavailable: pool timed out",
        );
        let info = outage.error_info().expect("info");
        assert_eq!(info.reason, "DEPENDENCY_UNAVAILABLE");
        assert_eq!(
            info.metadata.get("dependency").map(String::as_str),
            Some("database")
        );
        assert_eq!(
            details(tonic::Code::ResourceExhausted, "quota")
                .error_info()
                .expect("info")
                .reason,
            "RESOURCE_EXHAUSTED"
        );
        assert_eq!(
            details(tonic::Code::FailedPrecondition, "x")
                .error_info()
                .expect("info")
                .reason,
            "FAILED_PRECONDITION"
        );
    }
}
