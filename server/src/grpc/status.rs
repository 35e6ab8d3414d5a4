//! The one mapping from domain errors to gRPC status codes and their `google.rpc.Status`
//! details, built from the error's type (never from its text). Adapters branch on the code and
//! the details.

use crate::domain::Error;
use std::collections::HashMap;
use tonic::{Code, Status};

/// The domain of every `ErrorInfo` the server attaches.
pub const ERROR_DOMAIN: &str = "facteur.proompteng.ai";

/// The gRPC code of an error.
pub fn code_of(e: &Error) -> Code {
    match e {
        Error::InvalidArgument { .. } | Error::Refused(_) => Code::InvalidArgument,
        Error::NotFound(_) => Code::NotFound,
        Error::FailedPrecondition(_) | Error::Disabled { .. } => Code::FailedPrecondition,
        Error::AlreadyExists(_) => Code::AlreadyExists,
        Error::Aborted(_) => Code::Aborted,
        Error::PermissionDenied(_) => Code::PermissionDenied,
        Error::ResourceExhausted(_) => Code::ResourceExhausted,
        Error::Unavailable { .. } => Code::Unavailable,
        Error::Internal(_) => Code::Internal,
    }
}

/// The stable reason of a code (its name in SCREAMING_SNAKE_CASE: `INVALID_ARGUMENT`).
fn reason_of(code: Code) -> String {
    format!("{code:?}").chars().fold(String::new(), |mut s, c| {
        if c.is_uppercase() && !s.is_empty() {
            s.push('_');
        }
        s.push(c.to_ascii_uppercase());
        s
    })
}

/// The details of an error: an `ErrorInfo` with a stable reason in [`ERROR_DOMAIN`] (the
/// code's name; `DEPENDENCY_UNAVAILABLE` with the `dependency` for an outage; a disabled
/// feature's `feature`), and for bad input a `BadRequest` with a violation per field at fault
/// (each refused value's option). Clients branch on these, not on the text.
pub fn details_of(e: &Error) -> tonic_types::ErrorDetails {
    let mut metadata = HashMap::new();
    let reason = match e {
        Error::Unavailable { dependency, .. } => {
            metadata.insert("dependency".to_string(), dependency.to_string());
            "DEPENDENCY_UNAVAILABLE".to_string()
        }
        Error::Disabled { feature, .. } => {
            metadata.insert("feature".to_string(), feature.to_string());
            reason_of(Code::FailedPrecondition)
        }
        other => reason_of(code_of(other)),
    };
    let mut d = tonic_types::ErrorDetails::with_error_info(reason, ERROR_DOMAIN, metadata);
    match e {
        Error::InvalidArgument { field, message } if !field.is_empty() => {
            d.add_bad_request_violation(field.clone(), message.clone());
        }
        Error::Refused(r) => {
            for refusal in &r.0 {
                d.add_bad_request_violation(refusal.option.clone(), refusal.message.clone());
            }
        }
        _ => {}
    }
    d
}

/// What the caller reads of an error (gRPC and HTTP alike), logging what it must: an outage
/// as a warning; an internal error's text is logged and never shown.
pub fn public_message(e: &Error) -> String {
    match e {
        Error::Unavailable { .. } => {
            tracing::warn!(error = %e, "dependency unavailable");
            e.to_string()
        }
        Error::Internal(m) => {
            tracing::error!(error = %m, "internal error");
            "internal error; the server log has the cause".to_string()
        }
        other => other.to_string(),
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        use tonic_types::StatusExt;
        Status::with_error_details(code_of(&e), public_message(&e), details_of(&e))
    }
}

/// Adds an `ErrorInfo` (the code's reason) to an error answer (a trailers-only response's
/// headers) that has no details: tonic's own (an undecodable request, a deadline), the
/// authentication layer's. Every error the server decides carries its details already.
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
    let info = tonic_types::ErrorDetails::with_error_info(
        reason_of(status.code()),
        ERROR_DOMAIN,
        HashMap::new(),
    );
    let detailed = Status::with_error_details(status.code(), status.message(), info);
    let _ = detailed.add_header(headers);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::input::{Refusal, Refusals, Rule};
    use tonic_types::StatusExt;

    fn back(st: Status) -> Status {
        let mut headers = http::HeaderMap::new();
        st.add_header(&mut headers).expect("headers");
        add_details(&mut headers);
        Status::from_header_map(&headers).expect("status")
    }

    #[test]
    fn bad_input_names_its_field_from_the_type_not_the_text() {
        let st = back(
            Error::invalid(
                "task.repository",
                "task.repository is 141 characters long; at most 140 are accepted",
            )
            .into(),
        );
        assert_eq!(st.code(), Code::InvalidArgument);
        let d = st.get_error_details();
        let info = d.error_info().expect("error info");
        assert_eq!(
            (info.reason.as_str(), info.domain.as_str()),
            ("INVALID_ARGUMENT", ERROR_DOMAIN)
        );
        let v = &d.bad_request().expect("bad request").field_violations;
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].field, "task.repository");
        // A message that reads like a field names none unless the error says so.
        let st = back(Error::malformed("kind must be SLASH_COMMAND or MODAL_SUBMIT").into());
        assert!(st.get_error_details().bad_request().is_none());
        // Refused values: one violation per option.
        let refused = Refusals(vec![
            Refusal {
                option: "env".into(),
                rule: Rule::Required,
                message: "`env` is required".into(),
            },
            Refusal {
                option: "ref".into(),
                rule: Rule::Length,
                message: "`ref` is too long".into(),
            },
        ]);
        let st = back(Error::Refused(refused).into());
        let fields: Vec<String> = st
            .get_error_details()
            .bad_request()
            .expect("bad request")
            .field_violations
            .iter()
            .map(|v| v.field.clone())
            .collect();
        assert_eq!(fields, ["env", "ref"]);
    }

    #[test]
    fn every_error_carries_a_stable_reason() {
        let outage = back(
            Error::Unavailable {
                dependency: "database",
                message: "pool timed out".into(),
            }
            .into(),
        );
        let d = outage.get_error_details();
        let info = d.error_info().expect("info");
        assert_eq!(info.reason, "DEPENDENCY_UNAVAILABLE");
        assert_eq!(
            info.metadata.get("dependency").map(String::as_str),
            Some("database")
        );
        let off = back(
            Error::Disabled {
                feature: "codex_orchestration",
                message: "off".into(),
            }
            .into(),
        );
        assert_eq!(off.code(), Code::FailedPrecondition);
        let d = off.get_error_details();
        let info = d.error_info().expect("info");
        assert_eq!(info.reason, "FAILED_PRECONDITION");
        assert_eq!(
            info.metadata.get("feature").map(String::as_str),
            Some("codex_orchestration")
        );
        for (e, reason) in [
            (
                Error::ResourceExhausted("quota".into()),
                "RESOURCE_EXHAUSTED",
            ),
            (Error::FailedPrecondition("x".into()), "FAILED_PRECONDITION"),
            (Error::NotFound("x".into()), "NOT_FOUND"),
            (Error::Internal("secret text".into()), "INTERNAL"),
        ] {
            let st = back(e.into());
            assert_eq!(
                st.get_error_details().error_info().expect("info").reason,
                reason
            );
            assert!(!st.message().contains("secret"), "{}", st.message());
        }
        // A status the server did not build from an error (tonic's own) gets its reason too.
        let st = back(Status::unimplemented("no such method"));
        assert_eq!(
            st.get_error_details().error_info().expect("info").reason,
            "UNIMPLEMENTED"
        );
    }
}
