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

/// The labels and annotations on the Workflows facteur creates: the server writes them into each
/// job's `WorkflowSpec`, the argo-adapter selects and reads by them. One definition for both.
pub mod workflow {
    /// Every Workflow facteur manages carries `app.kubernetes.io/managed-by: facteur`.
    pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
    /// The selector of those Workflows.
    pub const MANAGED_SELECTOR: &str = "app.kubernetes.io/managed-by=facteur";
    /// The run id.
    pub const RUN_ID_LABEL: &str = "facteur.proompteng.ai/run-id";
    /// On a Workflow, the command it runs; on a WorkflowTemplate, the command it becomes.
    pub const COMMAND_LABEL: &str = "facteur.proompteng.ai/command";
    /// The W3C `traceparent` of the request that started the run.
    pub const TRACEPARENT_ANNOTATION: &str = "facteur.proompteng.ai/traceparent";
    /// `"true"`: a failed run's card shows the failing step's log tail (the argo-adapter reads
    /// it with `pods/log` get).
    pub const SHOW_LOGS_ANNOTATION: &str = "facteur.proompteng.ai/show-logs";
}

/// A CodexTask as proto-JSON, as Go's `protojson.Marshal` renders it (camelCase names, enum
/// names, 64-bit integers as strings, unset fields omitted). A stage number that names no
/// enum value is written as that number, as protojson does (pbjson would refuse the whole task).
pub fn codex_task_json(task: &froussard::CodexTask) -> String {
    let mut json = if froussard::CodexTaskStage::try_from(task.stage).is_ok() {
        // Sized for the task (its text, quoted, a little longer) so that rendering a
        // megabytes-long prompt does not grow, copy and double the buffer as it goes.
        let mut out = Vec::with_capacity(prost::Message::encoded_len(task) / 16 * 17 + 512);
        serde_json::to_writer(&mut out, task)
            .map(|()| String::from_utf8(out).unwrap_or_else(|_| "{}".into()))
    } else {
        // `stage` is field 1, so protojson writes it first.
        let known = froussard::CodexTask {
            stage: 0,
            ..task.clone()
        };
        serde_json::to_string(&known).map(|rest| match rest.strip_prefix("{}") {
            Some(_) => format!("{{\"stage\":{}}}", task.stage),
            None => format!("{{\"stage\":{},{}", task.stage, &rest[1..]),
        })
    }
    .unwrap_or_else(|_| "{}".into());
    // pbjson writes `+00:00`; protojson writes `Z` with 0, 3, 6 or 9 fractional digits.
    // Replaced where it stands (the rest of the text is not copied).
    if let Some(ts) = &task.issued_at
        && let Ok(theirs) = serde_json::to_string(ts)
        && let Some(at) = json.find(&theirs)
    {
        json.replace_range(
            at..at + theirs.len(),
            &format!("\"{}\"", protojson_timestamp(ts)),
        );
    }
    json
}

/// A Timestamp as protojson renders it: `2025-10-30T20:55:00Z`, `…:00.120Z`, `…:00.000001Z`
/// (0, 3, 6 or 9 fractional digits: chrono's `AutoSi`). Outside protojson's range (years 1 to
/// 9999) there is no rendering; [`timestamp_in_range`] tells beforehand.
pub fn protojson_timestamp(ts: &Timestamp) -> String {
    let nanos = u32::try_from(ts.nanos.clamp(0, 999_999_999)).unwrap_or(0);
    chrono::DateTime::from_timestamp(ts.seconds, nanos)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
        .unwrap_or_default()
}

/// Whether protojson can render `ts`: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z.
pub fn timestamp_in_range(ts: &Timestamp) -> bool {
    (-62_135_596_800..=253_402_300_799).contains(&ts.seconds)
        && (0..=999_999_999).contains(&ts.nanos)
}

/// Parses a proto-JSON CodexTask (camelCase or original field names, numbers or strings for
/// 64-bit integers, enum names or numbers). Fields the message does not declare are skipped,
/// as protobuf's binary decoding skips them; a known field of the wrong shape is an error.
pub fn codex_task_from_json(bytes: &[u8]) -> Result<froussard::CodexTask, String> {
    serde_json::from_slice(bytes).map_err(|e| e.to_string())
}

/// [`codex_task_from_json`] of a parsed body, with the paths of the fields it skipped
/// ([`unknown_fields`]).
pub fn codex_task_from_value(
    v: serde_json::Value,
) -> Result<(froussard::CodexTask, Vec<String>), String> {
    let unknown = unknown_fields(&v, ".proompteng.froussard.v1.CodexTask");
    // The error names the field where it is (`issueNumber: invalid type …`).
    let task = serde_path_to_error::deserialize(v).map_err(|e| {
        let at = e.path().to_string();
        let inner = e.into_inner();
        if at == "." {
            inner.to_string()
        } else {
            format!("{at}: {inner}")
        }
    })?;
    Ok((task, unknown))
}

/// The JSON paths (`review.newField`, `checks[0].extra`) of `v`'s keys that no field of the
/// message `message` (a fully qualified name: `.pkg.Message`) declares, by its proto name or
/// its JSON name, followed into nested messages; map values are not followed. From the
/// descriptors compiled into this crate.
pub fn unknown_fields(v: &serde_json::Value, message: &str) -> Vec<String> {
    use prost::Message;
    use prost_types::field_descriptor_proto::{Label, Type};
    static SET: std::sync::LazyLock<prost_types::FileDescriptorSet> =
        std::sync::LazyLock::new(|| {
            prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).unwrap_or_default()
        });
    let find = |name: &str| {
        SET.file.iter().find_map(|f| {
            let pkg = f.package();
            f.message_type
                .iter()
                .find(|m| format!(".{pkg}.{}", m.name()) == name)
        })
    };
    fn walk(
        v: &serde_json::Value,
        m: &prost_types::DescriptorProto,
        path: &str,
        find: &dyn Fn(&str) -> Option<&'static prost_types::DescriptorProto>,
        out: &mut Vec<String>,
    ) {
        let Some(obj) = v.as_object() else { return };
        for (k, child) in obj {
            let at = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            let Some(f) = m.field.iter().find(|f| f.name() == k || f.json_name() == k) else {
                out.push(at);
                continue;
            };
            if f.r#type() != Type::Message {
                continue;
            }
            let Some(nested) = find(f.type_name()) else {
                continue; // well-known types (Timestamp) have their own JSON forms
            };
            if nested.options.as_ref().is_some_and(|o| o.map_entry()) {
                continue;
            }
            if f.label() == Label::Repeated {
                for (i, item) in child.as_array().into_iter().flatten().enumerate() {
                    walk(item, nested, &format!("{at}[{i}]"), find, out);
                }
            } else {
                walk(child, nested, &at, find, out);
            }
        }
    }
    let mut out = Vec::new();
    if let Some(m) = find(message) {
        walk(v, m, "", &find, &mut out);
    }
    out
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
        assert_eq!(t(-62_135_596_800, 0), "0001-01-01T00:00:00Z");
        assert_eq!(
            t(253_402_300_799, 999_999_999),
            "9999-12-31T23:59:59.999999999Z"
        );
        assert!(!timestamp_in_range(&Timestamp {
            seconds: 253_402_300_800,
            nanos: 0
        }));
        assert!(!timestamp_in_range(&Timestamp {
            seconds: 0,
            nanos: -1
        }));
    }

    #[test]
    fn an_unknown_stage_is_written_as_its_number() {
        let task = froussard::CodexTask {
            stage: 1_581_355,
            issue_number: 7,
            ..Default::default()
        };
        let out = codex_task_json(&task);
        assert_eq!(out, r#"{"stage":1581355,"issueNumber":"7"}"#);
        // pbjson's parser, unlike protojson's, takes only known enum numbers.
        assert!(codex_task_from_json(out.as_bytes()).is_err());
        let bare = froussard::CodexTask {
            stage: -3,
            ..Default::default()
        };
        assert_eq!(codex_task_json(&bare), r#"{"stage":-3}"#);
    }

    #[test]
    fn unknown_fields_are_skipped_and_named_known_ones_still_checked() {
        let v = serde_json::json!({
            "stage": "CODEX_TASK_STAGE_IMPLEMENTATION",
            "issue_number": "7",
            "newThing": 1,
            "reviewContext": {"summary": "s", "later": true,
                              "reviewThreads": [{"summary": "t", "x": 1}]},
            "iterations": {"mode": "fixed", "count": 2},
        });
        let (task, unknown) = codex_task_from_value(v).expect("taken");
        assert_eq!(task.issue_number, 7);
        assert_eq!(
            unknown,
            [
                "newThing",
                "reviewContext.later",
                "reviewContext.reviewThreads[0].x"
            ]
        );
        let bad = serde_json::json!({"issueNumber": {"not": "a number"}});
        assert!(codex_task_from_value(bad).is_err());
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
