//! The facteur contract, generated from `proto/` and nowhere else.
//!
//! - [`v1`]: the `facteur.v1` API (`CommandService`, `CodexService`, `DispatchService`,
//!   `AdminService`) served by the control plane;
//! - [`froussard`] and [`legacy`]: the wire-compatible messages existing producers send
//!   (`proompteng.froussard.v1.CodexTask`, `proompteng.facteur.v1.CommandEvent`);
//! - [`FILE_DESCRIPTOR_SET`]: every descriptor, imports included, for server reflection.
//!
//! Modules nest like the protobuf packages because generated code refers across packages with
//! `super::super::…` paths.

/// Package `facteur.*`.
pub mod facteur {
    /// Package `facteur.v1`.
    pub mod v1 {
        tonic::include_proto!("facteur.v1");
    }
}

/// Package `proompteng.*` (wire-compatible legacy messages).
pub mod proompteng {
    /// Package `proompteng.froussard.*`.
    pub mod froussard {
        /// Package `proompteng.froussard.v1`.
        pub mod v1 {
            tonic::include_proto!("proompteng.froussard.v1");
            include!(concat!(
                env!("OUT_DIR"),
                "/proompteng.froussard.v1.serde.rs"
            ));
        }
    }
    /// Package `proompteng.facteur.*`.
    pub mod facteur {
        /// Package `proompteng.facteur.v1`.
        pub mod v1 {
            tonic::include_proto!("proompteng.facteur.v1");
        }
    }
}

pub use facteur::v1;
/// `proompteng.facteur.v1`: the CommandEvent of the old Discord front end.
pub use proompteng::facteur::v1 as legacy;
/// `proompteng.froussard.v1`: the CodexTask that froussard publishes.
pub use proompteng::froussard::v1 as froussard;

/// `google.protobuf.Timestamp` as used by every generated message (with proto-JSON support).
pub use pbjson_types::Timestamp;

/// A CodexTask as proto-JSON, as Go's `protojson.Marshal` renders it (camelCase names, enum
/// names, 64-bit integers as strings, unset fields omitted).
pub fn codex_task_json(task: &froussard::CodexTask) -> String {
    let json = serde_json::to_string(task).unwrap_or_else(|_| "{}".into());
    // pbjson writes `+00:00`; protojson writes `Z` with 0, 3, 6 or 9 fractional digits.
    match &task.issued_at {
        Some(ts) => match serde_json::to_string(ts) {
            Ok(theirs) => json.replacen(&theirs, &format!("\"{}\"", protojson_timestamp(ts)), 1),
            Err(_) => json,
        },
        None => json,
    }
}

/// A Timestamp as protojson renders it: `2025-10-30T20:55:00Z`, `…:00.120Z`, `…:00.000001Z`.
pub fn protojson_timestamp(ts: &Timestamp) -> String {
    let (days, secs) = (ts.seconds.div_euclid(86_400), ts.seconds.rem_euclid(86_400));
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let n = ts.nanos.clamp(0, 999_999_999);
    let frac = if n == 0 {
        String::new()
    } else if n % 1_000_000 == 0 {
        format!(".{:03}", n / 1_000_000)
    } else if n % 1_000 == 0 {
        format!(".{:06}", n / 1_000)
    } else {
        format!(".{n:09}")
    };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}{frac}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Parses a proto-JSON CodexTask (camelCase or original field names, numbers or strings for
/// 64-bit integers, enum names or numbers).
pub fn codex_task_from_json(bytes: &[u8]) -> Result<froussard::CodexTask, String> {
    serde_json::from_slice(bytes).map_err(|e| e.to_string())
}

/// Encoded `FileDescriptorSet` of every file above, for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/facteur_descriptor.bin"));

/// Fully qualified names of the four `facteur.v1` services.
pub const SERVICE_NAMES: [&str; 4] = [
    "facteur.v1.CommandService",
    "facteur.v1.CodexService",
    "facteur.v1.DispatchService",
    "facteur.v1.AdminService",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_render_like_protojson() {
        let t = |seconds, nanos| protojson_timestamp(&Timestamp { seconds, nanos });
        assert_eq!(t(1_761_857_700, 0), "2025-10-30T20:55:00Z");
        assert_eq!(t(0, 120_000_000), "1970-01-01T00:00:00.120Z");
        assert_eq!(t(0, 1_000), "1970-01-01T00:00:00.000001Z");
        assert_eq!(t(0, 1), "1970-01-01T00:00:00.000000001Z");
    }

    #[test]
    fn codex_task_round_trips_through_proto_json() {
        let json = br#"{"stage":"CODEX_TASK_STAGE_IMPLEMENTATION","issueNumber":1635,"issuedAt":"2025-10-30T20:55:00Z","deliveryId":"d","autonomous":false}"#;
        let task = codex_task_from_json(json).expect("parse");
        assert_eq!(task.issue_number, 1635);
        assert_eq!(task.autonomous, Some(false));
        let out = codex_task_json(&task);
        assert!(out.contains(r#""issueNumber":"1635""#), "{out}");
        assert!(
            out.contains(r#""issuedAt":"2025-10-30T20:55:00Z""#),
            "{out}"
        );
        assert!(
            out.contains(r#""stage":"CODEX_TASK_STAGE_IMPLEMENTATION""#),
            "{out}"
        );
        assert!(
            out.contains(r#""autonomous":false"#),
            "explicitly set optional fields are kept: {out}"
        );
        assert!(!out.contains("prompt"), "unset fields are omitted: {out}");
        assert_eq!(codex_task_from_json(out.as_bytes()).expect("reparse"), task);
    }
}
