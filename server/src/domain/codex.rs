//! Codex tasks: validation and the orchestration rules of wire-compat.md §5 (which template,
//! namespace, service account and parameters a task runs with). Pure functions.

use crate::domain::Error;
use facteur_config::Config;
use facteur_proto::froussard::{CodexTask, CodexTaskStage};
use std::collections::BTreeMap;

/// Iterations are capped here whatever the task asks (wire-compat.md §5).
pub const MAX_ITERATIONS: i32 = 25;
/// Delivery ids are GitHub GUIDs; anything much longer is not one.
pub const MAX_DELIVERY_ID: usize = 200;
/// A GitHub `owner/name`: an owner of up to 39 characters, a name of up to 100.
pub const MAX_REPOSITORY: usize = 140;

/// What a task runs: resolved template, namespace, service account and parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodexPlan {
    /// Delivery id (the idempotency key).
    pub delivery_id: String,
    /// WorkflowTemplate.
    pub workflow_template: String,
    /// Cluster (`codex_implementation_orchestrator.cluster`, else the default one).
    pub cluster: String,
    /// Namespace.
    pub namespace: String,
    /// Service account.
    pub service_account: String,
    /// Prefix of the Workflow name (the run id completes it).
    pub workflow_name_prefix: String,
    /// Workflow parameters (names keep their case), but for the three that are the task again
    /// (`prompt`, `eventBody`, `rawEvent`): those are made from `task_json`
    /// ([`CodexPlan::workflow_parameters`]).
    pub parameters: BTreeMap<String, String>,
    /// `owner/name`.
    pub repository: String,
    /// Issue number.
    pub issue_number: i64,
    /// Stage name as stored (`implementation`).
    pub stage: &'static str,
    /// The task as proto-JSON (the `ideas.payload` and the source of `rawEvent`).
    pub task_json: String,
}

impl CodexPlan {
    /// The run's parameters as stored, but for the task itself: the plan's own and, under
    /// [`DERIVED_PARAMETERS`], the three made from the task, which the store keeps under
    /// [`TASK_PARAMETER`].
    pub fn stored_parameters(&self) -> BTreeMap<String, String> {
        let mut p = self.parameters.clone();
        p.insert(DERIVED_PARAMETERS.into(), FROM_TASK.join(","));
        p
    }

    /// Every Workflow parameter of the run, as a read of the stored run gives them.
    pub fn workflow_parameters(&self) -> Result<BTreeMap<String, String>, String> {
        let mut p = self.stored_parameters();
        p.insert(TASK_PARAMETER.into(), self.task_json.clone());
        expand_parameters(&mut p)?;
        Ok(p)
    }
}

/// Why a task was refused (also the metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// No delivery id.
    MissingDeliveryId,
    /// Not the implementation stage.
    UnsupportedStage,
    /// Orchestration is switched off.
    Disabled,
    /// A field holds what cannot be stored (a NUL character, too long).
    Invalid,
}

impl Rejection {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::MissingDeliveryId => "missing_delivery_id",
            Rejection::UnsupportedStage => "unsupported_stage",
            Rejection::Disabled => "disabled",
            Rejection::Invalid => "invalid",
        }
    }
}

/// The stage's stored name.
pub fn stage_name(stage: i32) -> &'static str {
    match CodexTaskStage::try_from(stage) {
        Ok(CodexTaskStage::Planning) => "planning",
        Ok(CodexTaskStage::Implementation) => "implementation",
        Ok(CodexTaskStage::Review) => "review",
        _ => "unspecified",
    }
}

/// `implementation_iterations` by the rules of wire-compat.md §5.
pub fn iterations(task: &CodexTask) -> i32 {
    let n = match &task.iterations {
        None => 1,
        Some(p) => match p.mode.as_str() {
            "" | "fixed" => p.count.filter(|c| *c > 0).unwrap_or(1),
            "until" => p.max.or(p.count).unwrap_or(1),
            _ => 1,
        },
    };
    n.clamp(1, MAX_ITERATIONS)
}

/// Refuses a task holding what no store can: a NUL character in any string (Postgres refuses
/// it in the `jsonb` the task is kept in), or a repository longer than [`MAX_REPOSITORY`]. The
/// error names the field.
pub fn check_task(task: &CodexTask) -> Result<(), Error> {
    use crate::domain::input::{no_nul, storable};
    storable("repository", &task.repository, MAX_REPOSITORY)?;
    if let Some(ts) = &task.issued_at
        && !facteur_proto::timestamp_in_range(ts)
    {
        return Err(Error::invalid(
            "issued_at",
            "issued_at is outside 0001-01-01T00:00:00Z..9999-12-31T23:59:59.999999999Z",
        ));
    }
    for (field, v) in [
        ("prompt", &task.prompt),
        ("base", &task.base),
        ("head", &task.head),
        ("issue_url", &task.issue_url),
        ("issue_title", &task.issue_title),
        ("issue_body", &task.issue_body),
        ("sender", &task.sender),
        ("delivery_id", &task.delivery_id),
    ] {
        no_nul(field, v)?;
    }
    for (field, v) in [
        ("plan_comment_url", &task.plan_comment_url),
        ("plan_comment_body", &task.plan_comment_body),
    ] {
        no_nul(field, v.as_deref().unwrap_or(""))?;
    }
    if let Some(r) = &task.review_context {
        no_nul("review_context.summary", r.summary.as_deref().unwrap_or(""))?;
        for (i, t) in r.review_threads.iter().enumerate() {
            no_nul(
                &format!("review_context.review_threads[{i}].summary"),
                &t.summary,
            )?;
            for (f, v) in [("url", &t.url), ("author", &t.author)] {
                let field = format!("review_context.review_threads[{i}].{f}");
                no_nul(&field, v.as_deref().unwrap_or(""))?;
            }
        }
        for (i, c) in r.failing_checks.iter().enumerate() {
            no_nul(&format!("review_context.failing_checks[{i}].name"), &c.name)?;
            for (f, v) in [
                ("conclusion", &c.conclusion),
                ("url", &c.url),
                ("details", &c.details),
            ] {
                let field = format!("review_context.failing_checks[{i}].{f}");
                no_nul(&field, v.as_deref().unwrap_or(""))?;
            }
        }
        for (i, n) in r.additional_notes.iter().enumerate() {
            no_nul(&format!("review_context.additional_notes[{i}]"), n)?;
        }
    }
    if let Some(p) = &task.iterations {
        no_nul("iterations.mode", &p.mode)?;
        no_nul("iterations.reason", p.reason.as_deref().unwrap_or(""))?;
        for (i, v) in p.stop_on.iter().enumerate() {
            no_nul(&format!("iterations.stop_on[{i}]"), v)?;
        }
    }
    Ok(())
}

fn first_non_empty<'a>(candidates: &[&'a str]) -> Option<&'a str> {
    candidates.iter().copied().find(|s| !s.is_empty())
}

/// The namespace an autonomous (or not) task runs in: the orchestrator's, else `argo.namespace`
/// (autonomous tasks: `autonomous_namespace` first, `jangar` last).
pub fn namespace(config: &Config, autonomous: bool) -> String {
    let (c, argo) = (&config.codex_implementation_orchestrator, &config.argo);
    if autonomous {
        first_non_empty(&[&c.autonomous_namespace, &c.namespace, &argo.namespace])
            .unwrap_or("jangar")
            .to_string()
    } else {
        first_non_empty(&[&c.namespace, &argo.namespace])
            .unwrap_or("")
            .to_string()
    }
}

/// Validates a task and resolves what it runs. `proto_json` renders the task as proto-JSON
/// (for `rawEvent` and `eventBody`).
pub fn plan(
    task: &CodexTask,
    delivery_override: &str,
    config: &Config,
    proto_json: impl Fn(&CodexTask) -> String,
) -> std::result::Result<CodexPlan, (Rejection, Error)> {
    let delivery_id = first_non_empty(&[delivery_override.trim(), task.delivery_id.trim()])
        .unwrap_or("")
        .to_string();
    if delivery_id.is_empty() {
        return Err((
            Rejection::MissingDeliveryId,
            Error::invalid(
                "delivery_id",
                "delivery_id is required (the task's idempotency key)",
            ),
        ));
    }
    if delivery_id.len() > MAX_DELIVERY_ID {
        return Err((
            Rejection::MissingDeliveryId,
            Error::invalid(
                "delivery_id",
                format!("delivery_id is longer than {MAX_DELIVERY_ID} characters"),
            ),
        ));
    }
    crate::domain::input::no_nul("delivery_id", &delivery_id)
        .and_then(|()| check_task(task))
        .map_err(|e| (Rejection::Invalid, e))?;
    if task.stage != CodexTaskStage::Implementation as i32 {
        let name = CodexTaskStage::try_from(task.stage)
            .map(|s| s.as_str_name().to_string())
            .unwrap_or_else(|_| task.stage.to_string());
        return Err((
            Rejection::UnsupportedStage,
            Error::invalid(
                "stage",
                format!(
                    "unsupported stage {name}: only CODEX_TASK_STAGE_IMPLEMENTATION is orchestrated"
                ),
            ),
        ));
    }
    let c = &config.codex_implementation_orchestrator;
    if !c.enabled {
        return Err((
            Rejection::Disabled,
            Error::Disabled {
                feature: "codex_orchestration",
                message: "codex implementation orchestration is disabled (codex_implementation_orchestrator.enabled)".into(),
            },
        ));
    }
    let argo = &config.argo;
    let autonomous = task.autonomous.unwrap_or(true);
    let (workflow_template, namespace, service_account, prefix) = if autonomous {
        (
            c.autonomous_workflow_template.clone(),
            namespace(config, true),
            first_non_empty(&[
                &c.autonomous_service_account,
                &c.service_account,
                &argo.service_account,
            ])
            .unwrap_or("")
            .to_string(),
            c.autonomous_generate_name_prefix.clone(),
        )
    } else {
        (
            c.workflow_template.clone(),
            namespace(config, false),
            first_non_empty(&[&c.service_account, &argo.service_account])
                .unwrap_or("")
                .to_string(),
            format!("{}-", c.workflow_template),
        )
    };

    let mut p: BTreeMap<String, String> = c.parameters.clone();
    if !task.repository.is_empty() {
        p.insert("repository".into(), task.repository.clone());
    }
    if task.issue_number > 0 {
        p.insert("issue_number".into(), task.issue_number.to_string());
    }
    p.insert("head".into(), task.head.clone());
    p.insert(
        "base".into(),
        if task.base.is_empty() {
            "main".into()
        } else {
            task.base.clone()
        },
    );
    p.insert(
        "implementation_iterations".into(),
        iterations(task).to_string(),
    );
    p.insert(
        "iteration_cycle".into(),
        task.iteration_cycle
            .filter(|c| *c > 0)
            .unwrap_or(1)
            .to_string(),
    );
    if !c.judge_prompt.is_empty() {
        p.insert("judge_prompt".into(), c.judge_prompt.clone());
    }
    // `prompt`, `eventBody` and `rawEvent` are the task again: made from `task_json` when the
    // run is read (`CodexPlan::stored_parameters`, `expand_parameters`), never held twice.
    let task_json = proto_json(task);

    Ok(CodexPlan {
        delivery_id,
        workflow_template,
        cluster: config.cluster_or_default(&c.cluster).to_string(),
        namespace,
        service_account,
        workflow_name_prefix: prefix,
        parameters: p,
        repository: task.repository.clone(),
        issue_number: task.issue_number,
        stage: "implementation",
        task_json,
    })
}

/// `eventBody` (wire-compat.md §5): the task's proto-JSON with `stage` set to the plain string
/// `"implementation"` (not the enum name `rawEvent` carries), re-serialised with sorted keys, as
/// the old service wrote it, from the parsed proto-JSON. WorkflowTemplates read that string.
pub fn event_body(mut v: serde_json::Value) -> String {
    if let Some(o) = v.as_object_mut() {
        o.insert("stage".into(), "implementation".into());
    }
    // serde_json's map is ordered by key: the output has sorted keys at every depth.
    v.to_string()
}

/// The key that lists, in stored parameters, those left out because the task gives them.
pub const DERIVED_PARAMETERS: &str = "facteur:derived";

/// The key under which a Codex run's stored parameters keep the task's proto-JSON, from which
/// `rawEvent`, `eventBody` and `prompt` are made when the run is read.
pub const TASK_PARAMETER: &str = "facteur:task";

/// Parameters of a Codex run that are the task again: `rawEvent` (base64 of its proto-JSON),
/// `eventBody` (the same with its stage set, base64) and `prompt`. Stored, a 4 MiB task would be
/// kept four times over with `codex_kb.ideas.payload`; the run keeps the proto-JSON once.
const FROM_TASK: [&str; 3] = ["eventBody", "prompt", "rawEvent"];

/// Of those, the ones runs stored before [`TASK_PARAMETER`] (and retries of Codex runs) leave
/// out, `rawEvent` being kept.
const FROM_RAW_EVENT: [&str; 2] = ["eventBody", "prompt"];

/// Which of `p`'s parameters storage may leave out, to be made again from `rawEvent` by
/// [`expand_parameters`]: those of [`FROM_RAW_EVENT`] present in a Codex run's parameters that
/// carry `rawEvent` (a retry copies them from the run it retries, which made them from the
/// task). Nothing for other runs.
pub fn derived_parameters(
    source: crate::domain::RunSource,
    p: &BTreeMap<String, String>,
) -> Vec<&'static str> {
    if source != crate::domain::RunSource::Codex || !p.contains_key("rawEvent") {
        return Vec::new();
    }
    FROM_RAW_EVENT
        .into_iter()
        .filter(|k| p.contains_key(*k))
        .collect()
}

/// Puts back the parameters listed under [`DERIVED_PARAMETERS`] (stored parameters, as read),
/// from the task kept under [`TASK_PARAMETER`] or, for runs stored without it, from `rawEvent`.
pub fn expand_parameters(p: &mut BTreeMap<String, String>) -> Result<(), String> {
    let Some(listed) = p.remove(DERIVED_PARAMETERS) else {
        return Ok(());
    };
    let keys: Vec<&str> = listed.split(',').collect();
    if let Some(k) = keys.iter().find(|k| !FROM_TASK.contains(k)) {
        return Err(format!("`{k}` cannot be derived"));
    }
    let task_json = match p.remove(TASK_PARAMETER) {
        Some(t) => t,
        None if keys.contains(&"rawEvent") => {
            return Err(format!(
                "rawEvent is derived but {TASK_PARAMETER} is missing"
            ));
        }
        None => {
            let raw = p.get("rawEvent").ok_or("rawEvent is missing")?;
            let bytes = decode_base64(raw).map_err(|e| format!("rawEvent is not base64: {e}"))?;
            String::from_utf8(bytes).map_err(|e| format!("rawEvent is not UTF-8: {e}"))?
        }
    };
    // Parsed once for both: the task can be megabytes.
    let task: serde_json::Value =
        serde_json::from_str(&task_json).map_err(|e| format!("the task is not JSON: {e}"))?;
    if keys.contains(&"rawEvent") {
        p.insert("rawEvent".into(), base64(task_json.as_bytes()));
    }
    drop(task_json);
    if keys.contains(&"prompt") {
        let prompt = task
            .get("prompt")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        p.insert("prompt".into(), prompt.to_string());
    }
    if keys.contains(&"eventBody") {
        p.insert("eventBody".into(), base64(event_body(task).as_bytes()));
    }
    Ok(())
}

/// A digest of a task's proto-JSON: tells a replayed delivery that carries other content from
/// one that carries the same, without keeping the first one's task in memory.
pub fn task_digest(task_json: &[u8]) -> u64 {
    use std::hash::Hasher as _;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    h.write(task_json);
    h.finish()
}

/// Whether a Codex run's parameters (as read) carry the task whose digest is `digest`.
pub fn carries_task(p: &BTreeMap<String, String>, digest: u64) -> bool {
    p.get("rawEvent")
        .and_then(|raw| decode_base64(raw).ok())
        .is_some_and(|task| task_digest(&task) == digest)
}

fn decode_base64(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(text)
}

/// Standard base64 with padding (what Go's `base64.StdEncoding` produced for these parameters).
pub fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use facteur_config::Process;
    use facteur_proto::froussard::CodexIterationsPolicy;

    fn config() -> Config {
        let mut c =
            facteur_config::load_from(None, &Default::default(), Process::Server).expect("config");
        c.codex_implementation_orchestrator.enabled = true;
        c
    }

    fn task() -> CodexTask {
        CodexTask {
            stage: CodexTaskStage::Implementation as i32,
            repository: "proompteng/lab".into(),
            issue_number: 1635,
            head: "codex/x".into(),
            prompt: "do it".into(),
            delivery_id: "d-1".into(),
            ..Default::default()
        }
    }

    fn json(t: &CodexTask) -> String {
        format!("{{\"stage\":{}}}", t.stage)
    }

    #[test]
    fn base64_matches_the_standard_alphabet() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"\xfb\xff"), "+/8=");
    }

    #[test]
    fn iteration_rules() {
        let with = |mode: &str, count: Option<i32>, max: Option<i32>| {
            let mut t = task();
            t.iterations = Some(CodexIterationsPolicy {
                mode: mode.into(),
                count,
                max,
                ..Default::default()
            });
            iterations(&t)
        };
        assert_eq!(iterations(&task()), 1);
        assert_eq!(with("fixed", Some(3), None), 3);
        assert_eq!(with("", Some(0), None), 1);
        assert_eq!(with("fixed", Some(-2), None), 1);
        assert_eq!(with("until", Some(2), Some(7)), 7);
        assert_eq!(with("until", Some(2), None), 2);
        assert_eq!(with("until", None, None), 1);
        assert_eq!(with("budget", Some(9), Some(9)), 1);
        assert_eq!(with("fixed", Some(100), None), 25);
    }

    #[test]
    fn autonomous_path_selection() {
        let mut c = config();
        c.argo.namespace = String::new();
        let p = plan(&task(), "", &c, json).expect("plan");
        assert_eq!(
            (p.workflow_template.as_str(), p.namespace.as_str()),
            ("codex-autonomous", "jangar")
        );
        assert_eq!(p.workflow_name_prefix, "codex-autonomous-");
        c.argo.namespace = "argo".into();
        c.argo.service_account = "argo-sa".into();
        assert_eq!(plan(&task(), "", &c, json).expect("plan").namespace, "argo");
        assert_eq!(
            plan(&task(), "", &c, json).expect("plan").service_account,
            "argo-sa"
        );
        c.codex_implementation_orchestrator.namespace = "codex".into();
        c.codex_implementation_orchestrator.service_account = "codex-sa".into();
        assert_eq!(
            plan(&task(), "", &c, json).expect("plan").namespace,
            "codex"
        );
        c.codex_implementation_orchestrator.autonomous_namespace = "jangar".into();
        c.codex_implementation_orchestrator
            .autonomous_service_account = "jangar-inspector".into();
        let p = plan(&task(), "", &c, json).expect("plan");
        assert_eq!(
            (p.namespace.as_str(), p.service_account.as_str()),
            ("jangar", "jangar-inspector")
        );
    }

    #[test]
    fn non_autonomous_path_selection() {
        let mut c = config();
        c.codex_implementation_orchestrator.namespace = "codex".into();
        c.codex_implementation_orchestrator.autonomous_namespace = "jangar".into();
        let mut t = task();
        t.autonomous = Some(false);
        let p = plan(&t, "", &c, json).expect("plan");
        assert_eq!(
            (p.workflow_template.as_str(), p.namespace.as_str()),
            ("github-codex-implementation", "codex")
        );
        c.codex_implementation_orchestrator.namespace = String::new();
        assert_eq!(
            plan(&t, "", &c, json).expect("plan").namespace,
            "argo-workflows"
        );
    }

    #[test]
    fn parameters() {
        let mut c = config();
        c.codex_implementation_orchestrator.judge_prompt = "judge".into();
        c.codex_implementation_orchestrator
            .parameters
            .insert("Extra_Param".into(), "x".into());
        let mut t = task();
        t.iteration_cycle = Some(2);
        t.stage = CodexTaskStage::Implementation as i32;
        let planned = plan(&t, "", &c, json).expect("plan");
        for k in FROM_TASK {
            assert!(
                !planned.parameters.contains_key(k),
                "{k} is made from the task"
            );
        }
        let p = planned.workflow_parameters().expect("parameters");
        assert_eq!(p.len(), planned.parameters.len() + 3);
        assert_eq!(p["repository"], "proompteng/lab");
        assert_eq!(p["issue_number"], "1635");
        assert_eq!(p["base"], "main");
        assert_eq!(p["head"], "codex/x");
        // Made from the rendered task, which this renderer leaves without one.
        assert_eq!(p["prompt"], "");
        assert_eq!(p["implementation_iterations"], "1");
        assert_eq!(p["iteration_cycle"], "2");
        assert_eq!(p["judge_prompt"], "judge");
        assert_eq!(p["Extra_Param"], "x");
        assert_eq!(p["rawEvent"], base64(b"{\"stage\":2}"));
        // The task with its stage set to implementation, which it already is.
        assert_eq!(p["eventBody"], base64(b"{\"stage\":\"implementation\"}"));
        let mut t = task();
        t.repository = String::new();
        t.issue_number = 0;
        let p = plan(&t, "", &config(), json).expect("plan").parameters;
        assert!(
            !p.contains_key("repository")
                && !p.contains_key("issue_number")
                && !p.contains_key("judge_prompt")
        );
    }

    #[test]
    fn refusals() {
        let mut t = task();
        t.delivery_id = "  ".into();
        assert_eq!(
            plan(&t, "", &config(), json).map(|_| ()).map_err(|e| e.0),
            Err(Rejection::MissingDeliveryId)
        );
        assert!(
            plan(&t, "from-request", &config(), json).is_ok(),
            "the request's delivery id counts"
        );
        let mut t = task();
        t.stage = CodexTaskStage::Planning as i32;
        match plan(&t, "", &config(), json) {
            Err((Rejection::UnsupportedStage, Error::InvalidArgument { message: m, .. })) => {
                assert!(m.contains("CODEX_TASK_STAGE_PLANNING"), "{m}")
            }
            other => panic!("{other:?}"),
        }
        let mut c = config();
        c.codex_implementation_orchestrator.enabled = false;
        assert!(matches!(
            plan(&task(), "", &c, json),
            Err((Rejection::Disabled, Error::Disabled { .. }))
        ));
    }

    #[test]
    fn parameters_made_from_the_task_are_made_again_from_it() {
        let c = config();
        let mut t = task();
        t.prompt = "line one\nline \"two\" ✓".into();
        let planned = plan(&t, "", &c, facteur_proto::codex_task_json).expect("plan");
        let p = planned.workflow_parameters().expect("parameters");
        assert_eq!(p["prompt"], t.prompt);
        assert_eq!(p["rawEvent"], base64(planned.task_json.as_bytes()));
        let body: serde_json::Value =
            serde_json::from_slice(&decode_base64(&p["eventBody"]).expect("base64")).expect("json");
        assert_eq!(body["stage"], "implementation");
        assert_eq!(body["prompt"], t.prompt.as_str());
        // Stored: the plan's own, the task once, the list of what it gives.
        let mut stored = planned.stored_parameters();
        assert_eq!(stored[DERIVED_PARAMETERS], "eventBody,prompt,rawEvent");
        stored.insert(TASK_PARAMETER.into(), planned.task_json.clone());
        expand_parameters(&mut stored).expect("expand");
        assert_eq!(stored, p, "read back as planned");

        // Runs stored before the task was kept (and retries) kept `rawEvent`.
        let left_out = derived_parameters(crate::domain::RunSource::Codex, &p);
        assert_eq!(left_out, ["eventBody", "prompt"]);
        let mut old: BTreeMap<String, String> = p
            .iter()
            .filter(|(k, _)| !left_out.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        old.insert(DERIVED_PARAMETERS.into(), left_out.join(","));
        expand_parameters(&mut old).expect("expand");
        assert_eq!(old, p, "read back as planned");

        // An empty prompt is left out of the proto-JSON, and made again empty.
        t.prompt = String::new();
        let p = plan(&t, "", &c, facteur_proto::codex_task_json)
            .expect("plan")
            .workflow_parameters()
            .expect("parameters");
        assert_eq!(p["prompt"], "");

        // Other runs keep every parameter; an unknown name is refused, not guessed; `rawEvent`
        // is made only from a stored task.
        assert!(derived_parameters(crate::domain::RunSource::Admin, &p).is_empty());
        let mut bad = p.clone();
        bad.insert(DERIVED_PARAMETERS.into(), "payload".into());
        assert!(expand_parameters(&mut bad).is_err());
        let mut bad = p.clone();
        bad.insert(DERIVED_PARAMETERS.into(), "rawEvent".into());
        assert!(expand_parameters(&mut bad).is_err());
    }

    #[test]
    fn a_replay_is_told_by_its_task() {
        let planned = plan(&task(), "", &config(), facteur_proto::codex_task_json).expect("plan");
        let p = planned.workflow_parameters().expect("parameters");
        assert!(carries_task(&p, task_digest(planned.task_json.as_bytes())));
        let mut other = task();
        other.prompt = "do something else".into();
        let other = plan(&other, "", &config(), facteur_proto::codex_task_json).expect("plan");
        assert!(!carries_task(&p, task_digest(other.task_json.as_bytes())));
        assert!(!carries_task(&BTreeMap::new(), task_digest(b"{}")));
    }
}
