//! What the fuzz targets check once a decoder has produced a value. Each property is one the
//! server relies on; a violation is a panic, which libFuzzer records as a crash.

use facteur_config::Config;
use facteur_proto::froussard::CodexTask;
use facteur_server::domain::codex;

/// The configuration the targets plan with: orchestration on, defaults otherwise.
pub fn config() -> Config {
    let mut c = Config::default();
    c.codex_implementation_orchestrator.enabled = true;
    c
}

/// Everything the server does with a decoded CodexTask before it touches a store: check it,
/// plan it, render `rawEvent` and `eventBody`. Properties:
/// - `rawEvent` is proto-JSON that decodes back to the same task (what WorkflowTemplates and the
///   old service read is what was sent); an unknown stage number is kept as that number;
/// - `eventBody` is JSON with `stage: "implementation"` and otherwise the same members as
///   `rawEvent` (wire-compat.md §5);
/// - both parameters are standard base64 of those texts.
pub fn codex_task(task: &CodexTask, config: &Config) {
    if codex::check_task(task).is_err() {
        return;
    }
    let raw = facteur_proto::codex_task_json(task);
    if facteur_proto::froussard::CodexTaskStage::try_from(task.stage).is_ok() {
        let back = facteur_proto::codex_task_from_json(raw.as_bytes())
            .unwrap_or_else(|e| panic!("rawEvent does not decode back ({e}): {raw}"));
        assert_eq!(&back, task, "rawEvent does not round-trip: {raw}");
    } else {
        // An unknown stage number is rendered as the number, as protojson does.
        let head = format!("{{\"stage\":{}", task.stage);
        assert!(raw.starts_with(&head), "unknown stage lost: {raw}");
    }

    let mut raw_v: serde_json::Value = serde_json::from_str(&raw).expect("rawEvent is JSON");
    let body = codex::event_body(raw_v.clone());
    let body_v: serde_json::Value = serde_json::from_str(&body).expect("eventBody is JSON");
    assert_eq!(body_v["stage"], "implementation", "eventBody: {body}");
    if let Some(o) = raw_v.as_object_mut() {
        o.insert("stage".into(), "implementation".into());
    }
    assert_eq!(
        raw_v, body_v,
        "eventBody differs from rawEvent beyond stage"
    );

    if let Ok(plan) = codex::plan(task, "", config, facteur_proto::codex_task_json) {
        let p = plan
            .workflow_parameters()
            .unwrap_or_else(|e| panic!("parameters not made from the task ({e}): {raw}"));
        assert_eq!(p["rawEvent"], codex::base64(raw.as_bytes()));
        assert_eq!(p["eventBody"], codex::base64(body.as_bytes()));
        assert_eq!(p["prompt"], task.prompt);
        assert!(!plan.delivery_id.is_empty());
    }
}
