//! Turning a Workflow object into a status report, and sending it (de-duplicated).

use crate::workflows::Workflows;
use facteur_client::{Backoff, Client, pb, retry};
use kube::api::DynamicObject;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use facteur_proto::workflow::{MANAGED_SELECTOR, RUN_ID_LABEL, SHOW_LOGS_ANNOTATION};

fn ts(v: &Value) -> Option<facteur_proto::Timestamp> {
    let t = chrono::DateTime::parse_from_rfc3339(v.as_str()?).ok()?;
    Some(facteur_proto::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    })
}

/// Argo's annotation choosing how pod names are derived (`v1`: the node id; else `v2`).
const POD_NAME_FORMAT_ANNOTATION: &str = "workflows.argoproj.io/pod-name-format";
/// Lines of a failed step's log that a card shows.
pub const LOG_TAIL_LINES: i64 = 15;

fn text<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

/// The Workflow's Pod nodes: its steps that run a container.
fn pods(status: &Value) -> impl Iterator<Item = &Value> {
    status
        .get("nodes")
        .and_then(Value::as_object)
        .into_iter()
        .flat_map(|n| n.values())
        .filter(|n| text(n, "type") == "Pod")
}

/// The failing node: a failed or errored Pod node if any (the step that broke; the latest to
/// finish), else any failed node.
fn failing(status: &Value) -> Option<&Value> {
    let failed = |n: &&Value| matches!(text(n, "phase"), "Failed" | "Error");
    pods(status)
        .filter(failed)
        .max_by_key(|n| text(n, "finishedAt"))
        .or_else(|| {
            status
                .get("nodes")?
                .as_object()?
                .values()
                .find(|n| failed(n))
        })
}

fn display_name(n: &Value) -> String {
    let d = text(n, "displayName");
    if d.is_empty() { text(n, "name") } else { d }.to_string()
}

/// The failing node's display name and message.
pub fn failing_node(status: &Value) -> Option<(String, String)> {
    failing(status).map(|n| (display_name(n), text(n, "message").to_string()))
}

/// Steps done / total: Argo's `status.progress` where present, else counted from the Pod nodes
/// (a node that succeeded or was skipped is done).
pub fn progress_of(status: &Value) -> String {
    let p = text(status, "progress");
    if !p.is_empty() {
        return p.to_string();
    }
    let (mut done, mut total) = (0, 0);
    for n in pods(status) {
        total += 1;
        if matches!(text(n, "phase"), "Succeeded" | "Skipped" | "Omitted") {
            done += 1;
        }
    }
    if total == 0 {
        String::new()
    } else {
        format!("{done}/{total}")
    }
}

/// The step running now: the running Pod node started last.
pub fn current_step(status: &Value) -> String {
    pods(status)
        .filter(|n| text(n, "phase") == "Running")
        .max_by_key(|n| text(n, "startedAt"))
        .map(display_name)
        .unwrap_or_default()
}

/// FNV-1a, 32 bits (what Argo hashes node names with for pod names).
fn fnv1a32(s: &str) -> u32 {
    s.bytes().fold(2_166_136_261u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(16_777_619)
    })
}

/// The pod of a Pod node, named as Argo names it (`workflow/util/pod_name.go`): the node id
/// under the `v1` format or without a template name; else `<workflow>-<template>` (cut to
/// 242 characters) and the FNV-1a hash of the node's name.
pub fn pod_name(workflow: &str, node: &Value, format: &str) -> String {
    let id = text(node, "id");
    let template = match text(node, "templateName") {
        "" => node
            .get("templateRef")
            .map(|r| text(r, "template"))
            .unwrap_or(""),
        t => t,
    };
    let name = text(node, "name");
    if format == "v1" || template.is_empty() {
        return id.to_string();
    }
    if name == workflow {
        return workflow.to_string();
    }
    let mut prefix = if name.contains(".inline") {
        workflow.to_string()
    } else {
        format!("{workflow}-{template}")
    };
    // Kubernetes names are at most 253; Argo keeps 10 for the hash and one for the dash.
    prefix.truncate(253 - 10 - 1);
    format!("{prefix}-{}", fnv1a32(name))
}

/// The pod whose log a card shows: the failing Pod node's, when the Workflow failed and asks
/// for logs.
pub fn failed_pod(obj: &DynamicObject) -> Option<String> {
    let annotations = obj.metadata.annotations.as_ref()?;
    if annotations.get(SHOW_LOGS_ANNOTATION).map(String::as_str) != Some("true") {
        return None;
    }
    let status = obj.data.get("status")?;
    if !matches!(text(status, "phase"), "Failed" | "Error") {
        return None;
    }
    let node = failing(status).filter(|n| text(n, "type") == "Pod")?;
    let format = annotations
        .get(POD_NAME_FORMAT_ANNOTATION)
        .map(String::as_str)
        .unwrap_or("v2");
    Some(pod_name(obj.metadata.name.as_deref()?, node, format))
}

/// The end of a log, bounded to what a card shows, with the secrets given masked.
pub fn log_tail(log: &str, secrets: &[String]) -> String {
    let masked = facteur_config::mask_secrets(log.trim_end(), secrets);
    let n = masked.chars().count();
    masked.chars().skip(n.saturating_sub(1000)).collect()
}

/// A JSON array of strings (an `enum`), its strings.
pub fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect()
}

/// The template a node runs, from the Workflow's own templates or those Argo stored from its
/// WorkflowTemplate (`status.storedWorkflowTemplateSpec`, `status.storedTemplates`).
fn template_of<'a>(obj: &'a DynamicObject, node: &Value) -> Option<&'a Value> {
    let name = match text(node, "templateName") {
        "" => node
            .get("templateRef")
            .map(|r| text(r, "template"))
            .unwrap_or(""),
        t => t,
    };
    if name.is_empty() {
        return None;
    }
    let in_list = |v: Option<&'a Value>| {
        v.and_then(Value::as_array)?
            .iter()
            .find(|t| text(t, "name") == name)
    };
    in_list(obj.data.pointer("/spec/templates"))
        .or_else(|| {
            in_list(
                obj.data
                    .pointer("/status/storedWorkflowTemplateSpec/templates"),
            )
        })
        .or_else(|| {
            obj.data
                .pointer("/status/storedTemplates")?
                .as_object()?
                .values()
                .find(|t| text(t, "name") == name)
        })
}

/// What a supplied output parameter asks for. Argo documents two forms: the output alone
/// (`enum`, `description`, `valueFrom.default` on it), and "intermediate parameters", where the
/// suspend template's input of the same name carries `enum`, `default` (or `value`) and
/// `description`, and the output takes it with `valueFrom.supplied` (the form the Argo UI's
/// resume dialog reads). The output's own fields win where both are set.
fn supplied(output: &Value, input: Option<&&Value>) -> pb::ApprovalParameter {
    let or = |a: &str, b: &str| if a.is_empty() { b } else { a }.to_string();
    let input_text = |k: &str| input.map_or("", |i| text(i, k));
    let output_default = output
        .pointer("/valueFrom/default")
        .and_then(Value::as_str)
        .unwrap_or("");
    let choices = match strings(output.get("enum")) {
        c if !c.is_empty() => c,
        _ => strings(input.and_then(|i| i.get("enum"))),
    };
    pb::ApprovalParameter {
        name: text(output, "name").to_string(),
        description: or(text(output, "description"), input_text("description")),
        choices,
        default: or(
            output_default,
            or(input_text("default"), input_text("value")).as_str(),
        ),
        interpolated_in: Vec::new(),
    }
}

/// The Workflow's templates: its own `spec`, or what Argo stored of its WorkflowTemplate.
fn workflow_spec(obj: &DynamicObject) -> Option<&Value> {
    let own = obj
        .data
        .get("spec")
        .filter(|s| s.get("templates").is_some());
    own.or_else(|| obj.data.pointer("/status/storedWorkflowTemplateSpec"))
}

/// The step waiting for a decision: the running Suspend node started last (with the output
/// parameters its template asks to be supplied), or the Workflow's own `spec.suspend`.
pub fn waiting_approval(obj: &DynamicObject) -> Option<pb::Approval> {
    let status = obj.data.get("status")?;
    let suspended = obj.data.pointer("/spec/suspend").and_then(Value::as_bool) == Some(true);
    let node = status
        .get("nodes")
        .and_then(Value::as_object)
        .into_iter()
        .flat_map(|n| n.values())
        .filter(|n| text(n, "type") == "Suspend" && text(n, "phase") == "Running")
        .max_by_key(|n| text(n, "startedAt"));
    if node.is_none() && !suspended {
        return None;
    }
    let template = node.and_then(|n| template_of(obj, n));
    let list = |path: &str| -> Vec<&Value> {
        template
            .and_then(|t| t.pointer(path))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .collect()
    };
    let inputs = list("/inputs/parameters");
    let mut parameters: Vec<pb::ApprovalParameter> = list("/outputs/parameters")
        .into_iter()
        .filter(|p| p.pointer("/valueFrom/supplied").is_some())
        .map(|p| {
            supplied(
                p,
                inputs.iter().find(|i| text(i, "name") == text(p, "name")),
            )
        })
        .collect();
    // Where the Workflow reads the supplied values afterwards (as `steps.<step>.outputs…`):
    // the step is the node's display name, without a retry's or loop's `(n)`.
    if let (Some(n), Some(spec)) = (node, workflow_spec(obj))
        && !parameters.is_empty()
    {
        let name = display_name(n);
        let step = name.split('(').next().unwrap_or(&name).trim();
        let names = parameters.iter().map(|p| p.name.clone()).collect();
        let mut uses = crate::lint::supplied_interpolations(spec, step, names);
        for p in &mut parameters {
            p.interpolated_in = uses.remove(&p.name).unwrap_or_default();
        }
    }
    Some(pb::Approval {
        node_id: node.map(|n| text(n, "id").to_string()).unwrap_or_default(),
        node_name: node.map(display_name).unwrap_or_default(),
        parameters,
        workflow_suspended: suspended,
        ..Default::default()
    })
}

/// The report for a Workflow object; `None` when it has no phase yet.
pub fn report_of(obj: &DynamicObject, source: &str) -> Option<pb::ReportWorkflowStatusRequest> {
    let status = obj.data.get("status")?;
    let phase = text(status, "phase");
    if phase.is_empty() {
        return None;
    }
    let (failed_node, failed_node_message) = failing_node(status).unwrap_or_default();
    Some(pb::ReportWorkflowStatusRequest {
        run_id: obj
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(RUN_ID_LABEL))
            .cloned()
            .unwrap_or_default(),
        namespace: obj.metadata.namespace.clone().unwrap_or_default(),
        workflow_name: obj.metadata.name.clone().unwrap_or_default(),
        workflow_uid: obj.metadata.uid.clone().unwrap_or_default(),
        phase: phase.to_string(),
        message: text(status, "message").to_string(),
        progress: progress_of(status),
        started_at: status.get("startedAt").and_then(ts),
        finished_at: status.get("finishedAt").and_then(ts),
        failed_node,
        failed_node_message,
        source: source.to_string(),
        current_step: current_step(status),
        log_tail: String::new(),
        approval: waiting_approval(obj),
        // Set by the reporter, which knows its cluster.
        cluster: String::new(),
    })
}

/// Phase, progress, message and running step: what makes a report worth sending again.
type Fingerprint = (String, String, String, String);

/// Sends reports, skipping one identical to the last sent for the same Workflow.
#[derive(Clone)]
pub struct Reporter {
    client: Client,
    /// The cluster this adapter drives: every report says it.
    cluster: String,
    last: Arc<Mutex<HashMap<String, Fingerprint>>>,
    /// Where failed steps' logs are read, and the secrets masked in them.
    logs: Option<(Workflows, Arc<[String]>)>,
}

impl Reporter {
    /// Reports through `client`, for Workflows of `cluster`.
    pub fn new(client: Client, cluster: String) -> Self {
        Self {
            client,
            cluster,
            last: Arc::default(),
            logs: None,
        }
    }

    /// Also reads the failing step's log tail of Workflows that ask for it, masking `secrets`.
    pub fn with_logs(self, workflows: Workflows, secrets: Vec<String>) -> Self {
        Self {
            logs: Some((workflows, secrets.into())),
            ..self
        }
    }

    /// Reports what a Workflow object says: its status and, for a failed Workflow that asks for
    /// it, the last lines of the failing step's log. A log that cannot be read is left out
    /// (the card still names the step and its message).
    pub async fn observe(&self, obj: &DynamicObject, source: &str) {
        let Some(mut r) = report_of(obj, source) else {
            return;
        };
        if let (Some((workflows, secrets)), Some(pod)) = (&self.logs, failed_pod(obj)) {
            match workflows.log_tail(&r.namespace, &pod, LOG_TAIL_LINES).await {
                Ok(log) => r.log_tail = log_tail(&log, secrets),
                Err(e) => {
                    tracing::warn!(namespace = %r.namespace, pod = %pod, error = %e, "cannot read the failed step's log")
                }
            }
        }
        self.send(r).await
    }

    /// Sends `r` (retrying while the server is unavailable). A report the server rejects is
    /// logged and dropped: the watch will send the Workflow's state again.
    pub async fn send(&self, mut r: pb::ReportWorkflowStatusRequest) {
        r.cluster.clone_from(&self.cluster);
        let key = format!("{}/{}", r.namespace, r.workflow_name);
        let fingerprint = (
            r.phase.clone(),
            r.progress.clone(),
            r.message.clone(),
            r.current_step.clone(),
        );
        if self
            .last
            .lock()
            .map(|m| m.get(&key) == Some(&fingerprint))
            .unwrap_or(false)
        {
            return;
        }
        let terminal = matches!(r.phase.as_str(), "Succeeded" | "Failed" | "Error");
        // While the server is unreachable (restarting, say), keep trying: a dropped report of a
        // final phase would leave the run unfinished until the next resync.
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let result = loop {
            let attempt = retry(4, backoff.clone(), || {
                let mut c = self.client.dispatch();
                let r = r.clone();
                async move { c.report_workflow_status(r).await }
            })
            .await;
            match attempt {
                Err(s) if facteur_client::is_retryable(&s) => {
                    tracing::warn!(workflow = %key, code = ?s.code(), "server unavailable for a status report; still trying");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                other => break other,
            }
        };
        match result {
            Ok(resp) => {
                let resp = resp.into_inner();
                tracing::debug!(workflow = %key, phase = %r.phase, changed = resp.changed, source = %r.source, "status reported");
                if let Ok(mut m) = self.last.lock() {
                    if terminal {
                        // Nothing follows a terminal phase: forget it, keeping the map bounded.
                        m.remove(&key);
                    } else {
                        m.insert(key, fingerprint);
                    }
                }
            }
            Err(s) => {
                tracing::warn!(workflow = %key, phase = %r.phase, code = ?s.code(), error = %s.message(), "status report refused")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_failing_pod_node_is_named() {
        let status = json!({"nodes": {
            "a": {"phase": "Failed", "type": "Steps", "displayName": "main", "message": "child failed"},
            "b": {"phase": "Succeeded", "type": "Pod", "displayName": "checkout"},
            "c": {"phase": "Failed", "type": "Pod", "displayName": "build", "message": "exit code 2", "finishedAt": "2026-01-01T00:00:02Z"},
        }});
        assert_eq!(
            failing_node(&status),
            Some(("build".into(), "exit code 2".into()))
        );
        assert_eq!(failing_node(&json!({"nodes": {}})), None);
    }

    #[test]
    fn progress_and_the_running_step_come_from_the_pod_nodes() {
        let status = json!({"nodes": {
            "w": {"phase": "Running", "type": "Steps", "displayName": "w"},
            "a": {"phase": "Succeeded", "type": "Pod", "displayName": "checkout", "startedAt": "2026-01-01T00:00:00Z"},
            "b": {"phase": "Running", "type": "Pod", "displayName": "build", "startedAt": "2026-01-01T00:00:05Z"},
            "c": {"phase": "Pending", "type": "Pod", "displayName": "test"},
        }});
        assert_eq!(progress_of(&status), "1/3");
        assert_eq!(current_step(&status), "build");
        let mut with_argos = status.clone();
        with_argos["progress"] = json!("2/4");
        assert_eq!(progress_of(&with_argos), "2/4", "Argo's own figure wins");
        assert_eq!(progress_of(&json!({})), "");
        assert_eq!(current_step(&json!({"nodes": {}})), "");
    }

    #[test]
    fn pods_are_named_as_argo_names_them() {
        assert_eq!(fnv1a32("hello"), 1_335_831_723, "Argo's own test vector");
        assert_eq!(fnv1a32("world"), 933_488_787);
        let node =
            json!({"id": "deploy-x-1234", "name": "deploy-x[0].build", "templateName": "build"});
        assert_eq!(
            pod_name("deploy-x", &node, "v2"),
            format!("deploy-x-build-{}", fnv1a32("deploy-x[0].build"))
        );
        assert_eq!(pod_name("deploy-x", &node, "v1"), "deploy-x-1234");
        let by_ref = json!({"id": "i", "name": "deploy-x[0].b", "templateRef": {"name": "t", "template": "run"}});
        assert!(pod_name("deploy-x", &by_ref, "v2").starts_with("deploy-x-run-"));
        let root = json!({"id": "deploy-x", "name": "deploy-x", "templateName": "main"});
        assert_eq!(pod_name("deploy-x", &root, "v2"), "deploy-x");
        let long = "w".repeat(300);
        assert!(pod_name(&long, &node, "v2").len() <= 253);
    }

    fn workflow(annotations: serde_json::Value, status: serde_json::Value) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
            "metadata": {"name": "deploy-x", "namespace": "ns", "annotations": annotations},
            "status": status,
        }))
        .expect("workflow")
    }

    #[test]
    fn logs_are_read_only_for_failed_workflows_that_ask() {
        let failed = json!({"phase": "Failed", "nodes": {
            "n": {"id": "deploy-x-1", "name": "deploy-x[0].build", "templateName": "build",
                  "type": "Pod", "phase": "Failed", "displayName": "build"}}});
        let asks = json!({SHOW_LOGS_ANNOTATION: "true"});
        assert_eq!(
            failed_pod(&workflow(asks.clone(), failed.clone())),
            Some(format!("deploy-x-build-{}", fnv1a32("deploy-x[0].build")))
        );
        assert_eq!(failed_pod(&workflow(json!({}), failed.clone())), None);
        let mut running = failed.clone();
        running["phase"] = json!("Running");
        assert_eq!(failed_pod(&workflow(asks, running)), None);
        let tail = log_tail(
            &format!("{}\ntoken s3cr3t-value\n", "x".repeat(2000)),
            &["s3cr3t-value".into()],
        );
        assert_eq!(tail.chars().count(), 1000);
        assert!(tail.ends_with("token ***"), "{tail}");
    }

    #[test]
    fn the_waiting_step_and_what_it_asks_for() {
        let wf = workflow(
            json!({}),
            json!({"phase": "Running",
                "nodes": {"s": {"id": "wf-9", "name": "wf[1].gate", "displayName": "gate", "type": "Suspend",
                                "phase": "Running", "templateName": "gate"}},
                "storedWorkflowTemplateSpec": {"templates": [{"name": "gate", "suspend": {},
                    "outputs": {"parameters": [
                        {"name": "env", "description": "Where", "enum": ["a", "b"],
                         "valueFrom": {"supplied": {}, "default": "a"}},
                        {"name": "computed", "valueFrom": {"path": "/tmp/x"}}]}}]}}),
        );
        let a = waiting_approval(&wf).expect("waiting");
        assert_eq!(
            (
                a.node_id.as_str(),
                a.node_name.as_str(),
                a.workflow_suspended
            ),
            ("wf-9", "gate", false)
        );
        assert_eq!(
            a.parameters.len(),
            1,
            "only supplied parameters are asked for"
        );
        let p = &a.parameters[0];
        assert_eq!(
            (p.name.as_str(), p.description.as_str(), p.default.as_str()),
            ("env", "Where", "a")
        );
        assert_eq!(p.choices, ["a", "b"]);
        let done = workflow(json!({}), json!({"phase": "Running", "nodes": {}}));
        assert!(waiting_approval(&done).is_none());
    }

    #[test]
    fn argos_intermediate_parameters_are_read_from_the_inputs() {
        // Argo's documented form (examples/intermediate-parameters.yaml): the input carries the
        // enum, default and description; the output takes it with `valueFrom.supplied`.
        let wf = workflow(
            json!({}),
            json!({"phase": "Running",
                "nodes": {"s": {"id": "wf-3", "name": "wf[0].approve", "displayName": "approve",
                                "type": "Suspend", "phase": "Running", "templateName": "approve"}},
                "storedWorkflowTemplateSpec": {"templates": [{"name": "approve", "suspend": {},
                    "inputs": {"parameters": [
                        {"name": "approve", "default": "NO", "enum": ["YES", "NO"],
                         "description": "Choose YES to continue workflow and deploy to production"},
                        {"name": "note", "value": "none"}]},
                    "outputs": {"parameters": [
                        {"name": "approve", "valueFrom": {"supplied": {}}},
                        {"name": "note", "valueFrom": {"supplied": {}}, "description": "Why"}]}}]}}),
        );
        let a = waiting_approval(&wf).expect("waiting");
        let got: Vec<(&str, &str, &str, Vec<String>)> = a
            .parameters
            .iter()
            .map(|p| {
                (
                    p.name.as_str(),
                    p.description.as_str(),
                    p.default.as_str(),
                    p.choices.clone(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (
                    "approve",
                    "Choose YES to continue workflow and deploy to production",
                    "NO",
                    vec!["YES".to_string(), "NO".to_string()]
                ),
                ("note", "Why", "none", vec![])
            ]
        );
    }

    #[test]
    fn supplied_values_read_in_a_shell_downstream_are_marked() {
        // The Workflow reads `note` in a script after the approval step and `approve` only in
        // an environment variable: `note` is restricted, `approve` is not.
        let wf = workflow(
            json!({}),
            json!({"phase": "Running",
                "nodes": {"s": {"id": "wf-3", "name": "wf[0].approve", "displayName": "approve",
                                "type": "Suspend", "phase": "Running", "templateName": "approve"}},
                "storedWorkflowTemplateSpec": {"entrypoint": "main", "templates": [
                    {"name": "main", "steps": [
                        [{"name": "approve", "template": "approve"}],
                        [{"name": "release", "template": "release", "arguments": {"parameters": [
                            {"name": "why", "value": "{{steps.approve.outputs.parameters.note}}"},
                            {"name": "ok", "value": "{{steps.approve.outputs.parameters.approve}}"}]}}]]},
                    {"name": "approve", "suspend": {},
                     "outputs": {"parameters": [
                        {"name": "approve", "valueFrom": {"supplied": {}}},
                        {"name": "note", "valueFrom": {"supplied": {}}}]}},
                    {"name": "release", "inputs": {"parameters": [{"name": "why"}, {"name": "ok"}]},
                     "script": {"image": "alpine", "command": ["sh"],
                        "env": [{"name": "OK", "value": "{{inputs.parameters.ok}}"}],
                        "source": "echo '{{inputs.parameters.why}}' \"$OK\""}}]}}),
        );
        let a = waiting_approval(&wf).expect("waiting");
        let got: Vec<(&str, Vec<String>)> = a
            .parameters
            .iter()
            .map(|p| (p.name.as_str(), p.interpolated_in.clone()))
            .collect();
        assert_eq!(
            got,
            [
                ("approve", vec![]),
                ("note", vec!["templates[2].script.source".to_string()])
            ]
        );
    }
}
