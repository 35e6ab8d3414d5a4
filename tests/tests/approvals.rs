//! Approvals of Argo suspend steps from chat, end to end: a run's Workflow reaches a Suspend node
//! (fake Kubernetes API), its card shows Approve and Reject (fake Discord), the clicks are checked
//! against the policy (approver roles, a second person), the decision is audited, and the
//! argo-adapter applies it to the Workflow as `argo resume` / `argo stop` would (replace at the
//! version read, again after a conflict).

use facteur_client::pb;
use facteur_tests::discord::*;
use facteur_tests::*;
use serde_json::{Value, json};
use std::time::Duration;

const NS: &str = "argo-workflows";
const WAIT: Duration = Duration::from_secs(20);
/// The role that may approve `/deploy`.
const APPROVER: &str = "200000000000000009";
/// A second member (the requester is [`MEMBER`], `alice`).
const BOB: &str = "300000000000000002";

async fn approvals() -> Followed {
    Followed::start(Options {
        approvers: &[APPROVER],
        second_person: true,
        ..Default::default()
    })
    .await
}

/// An interaction of member `user` (named `name`) with `roles`.
fn by(mut i: Value, user: &str, name: &str, roles: &[&str]) -> Value {
    i["member"]["user"] = json!({"id": user, "username": name});
    i["member"]["roles"] = json!(roles);
    i
}

fn click(id: &str, custom_id: &str) -> Value {
    let mut i = command(id, &[], "deploy", json!([]));
    i["type"] = json!(3);
    i["data"] = json!({"custom_id": custom_id, "component_type": 2});
    i
}

/// What the approval tests ask of a [`Followed`] stack.
trait Approvals {
    async fn waiting_run(&self, id: &str) -> (facteur_server::domain::Run, String);
    async fn waiting_run_at(&self, id: &str, gate: Value) -> (facteur_server::domain::Run, String);
    fn node(&self, wf: &str, node: &str) -> Value;
    async fn audited(&self, kind: &str) -> Vec<Value>;
}

impl Approvals for Followed {
    /// `/deploy` by alice, its Workflow created and waiting at the `approve` step.
    async fn waiting_run(&self, id: &str) -> (facteur_server::domain::Run, String) {
        self.waiting_run_at(
            id,
            json!({"name": "approve", "suspend": {}, "outputs": {"parameters": [
                {"name": "environment", "description": "Where to deploy",
                 "enum": ["staging", "prod"], "valueFrom": {"supplied": {}}},
            ]}}),
        )
        .await
    }

    /// `/deploy` by alice, waiting at a suspend step whose template (named `approve`) is `gate`
    /// (or, given an array, among those templates).
    async fn waiting_run_at(&self, id: &str, gate: Value) -> (facteur_server::domain::Run, String) {
        let templates = if gate.is_array() { gate } else { json!([gate]) };
        let cmd = command(
            id,
            &[DEPLOYER, APPROVER],
            "deploy",
            json!([{"name": "service", "type": 3, "value": "api"}]),
        );
        let (code, resp) = self.s.post(&cmd).await;
        assert_eq!(code, 200, "{resp}");
        let run = self.s.run_of(id).await;
        let wf = run.workflow_name.clone();
        wait_until("the Workflow", WAIT, || async {
            self.kube.workflow(NS, &wf).is_some()
        })
        .await;
        let node = format!("{wf}-1");
        self.kube.set_phase(
            NS,
            &wf,
            "Running",
            json!({
                "nodes": {
                    wf.clone(): {"id": wf, "name": wf, "displayName": wf, "type": "Steps", "phase": "Running"},
                    node.clone(): {"id": node, "name": format!("{wf}[0].approve"), "displayName": "approve",
                                   "type": "Suspend", "phase": "Running", "templateName": "approve",
                                   "startedAt": "2026-12-05T12:00:00Z"},
                },
                "storedWorkflowTemplateSpec": {"templates": templates},
            }),
        );
        let original = format!("/webhooks/{APP}/token-{id}/messages/@original");
        wait_until("the card waiting for approval", WAIT, || async {
            self.s.discord.calls().iter().any(|(m, p, b)| {
                m == "PATCH"
                    && *p == original
                    && message_text(b).contains("waiting for approval: **approve**")
                    && b["components"][0]["components"][0]["label"] == "Approve"
                    && b["components"][0]["components"][1]["label"] == "Reject"
            })
        })
        .await;
        (self.s.run_of(id).await, node)
    }

    fn node(&self, wf: &str, node: &str) -> Value {
        self.kube.workflow(NS, wf).expect("workflow")["status"]["nodes"][node].clone()
    }

    async fn audited(&self, kind: &str) -> Vec<Value> {
        self.s
            .srv
            .server
            .state
            .store
            .audit_events(GUILD, 50)
            .await
            .expect("audit")
            .into_iter()
            .filter(|e| e.1 == kind)
            .map(|e| e.3)
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approve_in_discord_with_a_value_through_the_modal() {
    let a = approvals().await;
    let (run, node) = a.waiting_run("700000000000000301").await;
    let wf = run.workflow_name.clone();
    let approve = format!("approve:{}", run.id);

    // The requester may not approve their own run (require_second_person), though an approver.
    let (_, resp) =
        a.s.post(&by(
            click("700000000000000302", &approve),
            MEMBER,
            "alice",
            &[APPROVER],
        ))
        .await;
    assert_eq!(resp["data"]["flags"], 64, "{resp}");
    assert!(
        message_text(&resp["data"]).contains("second person"),
        "{resp}"
    );
    // Another member without the approver role is refused, naming it.
    let (_, resp) =
        a.s.post(&by(
            click("700000000000000303", &approve),
            BOB,
            "bob",
            &[DEPLOYER],
        ))
        .await;
    assert!(message_text(&resp["data"]).contains(APPROVER), "{resp}");
    let refused = a.audited("approval_refused").await;
    assert_eq!(refused.len(), 2, "both refusals audited: {refused:?}");
    assert_eq!(refused[0]["node"], "approve");

    // An approver: the step asks for a value, so a modal opens.
    let (_, resp) =
        a.s.post(&by(
            click("700000000000000304", &approve),
            BOB,
            "bob",
            &[APPROVER],
        ))
        .await;
    assert_eq!(resp["type"], 9, "a modal: {resp}");
    assert_eq!(resp["data"]["custom_id"], approve.as_str());
    let input = &resp["data"]["components"][0]["components"][0];
    assert_eq!(
        (&input["custom_id"], &input["label"], &input["required"]),
        (
            &json!("environment"),
            &json!("Where to deploy"),
            &json!(true)
        ),
        "{resp}"
    );
    assert!(
        input["placeholder"]
            .as_str()
            .unwrap_or("")
            .contains("staging, prod")
    );
    // A value outside the enum is refused on the server; nothing is decided.
    let mut submit = by(
        click("700000000000000305", &approve),
        BOB,
        "bob",
        &[APPROVER],
    );
    submit["type"] = json!(5);
    // Opened from the run's card: Discord sends the message the modal came from.
    submit["message"] = json!({"id": "900000000000000001", "content": ""});
    submit["data"] = json!({"custom_id": approve, "components": [{"type": 1, "components": [
        {"type": 4, "custom_id": "environment", "value": "moon"}]}]});
    let (_, resp) = a.s.post(&submit).await;
    assert!(
        message_text(&resp["data"]).contains("must be one of staging, prod"),
        "{resp}"
    );
    // A refusal is for the approver alone, never an edit of the card.
    assert_eq!(
        (resp["type"].clone(), resp["data"]["flags"].clone()),
        (json!(4), json!(64)),
        "{resp}"
    );
    // The controller writes in between twice: the adapter reads again and replaces.
    a.kube.conflict_puts(2);
    submit["id"] = json!("700000000000000306");
    submit["data"]["components"][0]["components"][0]["value"] = json!("prod");
    let (code, resp) = a.s.post(&submit).await;
    assert_eq!(code, 200, "{resp}");
    // The card the modal was opened from is updated in place (UPDATE_MESSAGE), not copied.
    assert_eq!(resp["type"], 7, "{resp}");
    assert!(
        resp["data"]["flags"].as_u64().unwrap_or(0) & 64 == 0,
        "{resp}"
    );
    assert!(
        message_text(&resp["data"]).contains("approved by bob"),
        "{resp}"
    );
    wait_until("the node approved in the Workflow", WAIT, || async {
        a.node(&wf, &node)["phase"] == "Succeeded"
    })
    .await;
    let n = a.node(&wf, &node);
    assert_eq!(n["message"], "Approved by bob via facteur");
    assert_eq!(
        n["outputs"]["parameters"],
        json!([{"name": "environment", "value": "prod"}])
    );
    assert_eq!(a.kube.replaces().len(), 3, "two conflicts, then the write");
    let approved = a.audited("approved").await;
    assert_eq!(approved.len(), 1);
    assert_eq!(approved[0]["values"]["environment"], "prod");
    // The Workflow goes on and succeeds.
    a.kube.set_phase(NS, &wf, "Succeeded", json!({}));
    let admin = facteur_tests::stack::admin(&a.s.srv).await;
    wait_until("the run succeeded", WAIT, || async {
        admin.status(&run.id).await == pb::RunStatus::Succeeded
    })
    .await;
    let kinds: Vec<String> = admin
        .get(&run.id)
        .await
        .events
        .into_iter()
        .map(|e| e.kind)
        .collect();
    for k in ["approved", "decision_applied"] {
        assert!(
            kinds.contains(&k.to_string()),
            "{k} in the history: {kinds:?}"
        );
    }
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn argos_intermediate_parameters_are_checked() {
    let a = approvals().await;
    // Argo's documented form: the input carries the enum, the output takes it as supplied.
    let (run, node) = a
        .waiting_run_at(
            "700000000000000321",
            json!({"name": "approve", "suspend": {},
                "inputs": {"parameters": [
                    {"name": "approve", "default": "NO", "enum": ["YES", "NO"],
                     "description": "Choose YES to continue"}]},
                "outputs": {"parameters": [
                    {"name": "approve", "valueFrom": {"supplied": {}}}]}}),
        )
        .await;
    let wf = run.workflow_name.clone();
    let admin = facteur_tests::stack::admin(&a.s.srv).await;
    let approve = |v: &str| pb::ApproveRunRequest {
        run_id: run.id.clone(),
        values: [("approve".to_string(), v.to_string())].into(),
        ..Default::default()
    };
    let err = admin
        .0
        .admin()
        .approve_run(approve("maybe"))
        .await
        .expect_err("outside the enum");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("`approve` must be one of YES, NO"),
        "{}",
        err.message()
    );
    assert_eq!(
        a.node(&wf, &node)["phase"],
        "Running",
        "nothing was applied"
    );
    admin
        .0
        .admin()
        .approve_run(approve("YES"))
        .await
        .expect("approved");
    wait_until("the step resumed with YES", WAIT, || async {
        let n = a.node(&wf, &node);
        n["phase"] == "Succeeded" && n["outputs"]["parameters"][0]["value"] == "YES"
    })
    .await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supplied_value_the_workflow_puts_in_a_shell_is_refused_and_audited() {
    let a = approvals().await;
    // The Workflow reads the approver's `note` in a script after the step: argo-workflows#12534
    // applies to supplied values as to parameters.
    let (run, node) = a
        .waiting_run_at(
            "700000000000000331",
            json!([
                {"name": "main", "steps": [
                    [{"name": "approve", "template": "approve"}],
                    [{"name": "release", "template": "release", "arguments": {"parameters": [
                        {"name": "why", "value": "{{steps.approve.outputs.parameters.note}}"}]}}]]},
                {"name": "approve", "suspend": {}, "outputs": {"parameters": [
                    {"name": "note", "valueFrom": {"supplied": {}}}]}},
                {"name": "release", "inputs": {"parameters": [{"name": "why"}]},
                 "script": {"image": "alpine", "command": ["sh"],
                            "source": "echo '{{inputs.parameters.why}}'"}},
            ]),
        )
        .await;
    let shown = run.steps.approval.as_ref().expect("waiting").parameters[0].clone();
    assert_eq!(shown.interpolated_in, ["templates[2].script.source"]);
    let wf = run.workflow_name.clone();
    let admin = facteur_tests::stack::admin(&a.s.srv).await;
    let approve = |v: &str| pb::ApproveRunRequest {
        run_id: run.id.clone(),
        values: [("note".to_string(), v.to_string())].into(),
        ..Default::default()
    };
    let payload = "ok'; id; echo '";
    let err = admin
        .0
        .admin()
        .approve_run(approve(payload))
        .await
        .expect_err("a shell break-out");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message()
            .starts_with("`note` must not contain quotes, `;`"),
        "{}",
        err.message()
    );
    assert_eq!(a.node(&wf, &node)["phase"], "Running", "nothing applied");
    // Audited with the parameter and the rule, never the value.
    let audit =
        a.s.srv
            .server
            .state
            .store
            .audit_events("", 50)
            .await
            .expect("audit");
    let refused: Vec<&Value> = audit
        .iter()
        .filter(|e| e.1 == "value_refused")
        .map(|e| &e.3)
        .collect();
    assert_eq!(refused.len(), 1, "{audit:?}");
    assert_eq!(
        refused[0]["refused"],
        json!([{"option": "note", "rule": "shell"}])
    );
    assert_eq!(refused[0]["run_id"], run.id.as_str());
    assert!(
        !refused[0].to_string().contains("id; echo"),
        "{}",
        refused[0]
    );
    admin
        .0
        .admin()
        .approve_run(approve("ship it, now"))
        .await
        .expect("a plain sentence");
    wait_until("the step resumed with the note", WAIT, || async {
        let n = a.node(&wf, &node);
        n["phase"] == "Succeeded" && n["outputs"]["parameters"][0]["value"] == "ship it, now"
    })
    .await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_through_the_admin_api_stops_the_workflow() {
    let a = approvals().await;
    let (run, node) = a.waiting_run("700000000000000311").await;
    let wf = run.workflow_name.clone();
    let admin = facteur_tests::stack::admin(&a.s.srv).await;
    // Approve with nothing for a step that needs a value: refused, naming it.
    let err = admin
        .0
        .admin()
        .approve_run(pb::ApproveRunRequest {
            run_id: run.id.clone(),
            ..Default::default()
        })
        .await
        .expect_err("a value is needed");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("`environment` is required"),
        "{}",
        err.message()
    );
    let r = admin
        .0
        .admin()
        .reject_run(pb::RejectRunRequest {
            run_id: run.id.clone(),
            node: "approve".into(),
            reason: "not today".into(),
        })
        .await
        .expect("rejected")
        .into_inner()
        .run
        .expect("run");
    assert_eq!(
        r.approval.expect("approval").decided_by,
        "ops",
        "the admin principal"
    );
    wait_until("the Workflow stopped", WAIT, || async {
        a.kube.workflow(NS, &wf).expect("wf")["spec"]["shutdown"] == "Stop"
    })
    .await;
    let n = a.node(&wf, &node);
    assert_eq!(
        (n["phase"].clone(), n["message"].clone()),
        (
            json!("Failed"),
            json!("Rejected by ops via facteur: not today")
        )
    );
    // A second decision on the same step is refused.
    let again = admin
        .0
        .admin()
        .approve_run(pb::ApproveRunRequest {
            run_id: run.id.clone(),
            values: [("environment".to_string(), "prod".to_string())].into(),
            ..Default::default()
        })
        .await
        .expect_err("decided");
    assert_eq!(again.code(), tonic::Code::FailedPrecondition);
    // Argo ends the stopped Workflow: the run fails, the reason in its history.
    a.kube.set_phase(
        NS,
        &wf,
        "Failed",
        json!({"message": "Stopped with strategy 'Stop'"}),
    );
    wait_until("the run failed", WAIT, || async {
        admin.status(&run.id).await == pb::RunStatus::Failed
    })
    .await;
    let events = admin.get(&run.id).await.events;
    let rejected = events
        .iter()
        .find(|e| e.kind == "rejected")
        .expect("rejected");
    assert!(
        rejected.payload_json.contains("not today"),
        "{}",
        rejected.payload_json
    );
    // The run and its final card say who rejected it and why, not Argo's stop strategy.
    let ended = admin.get(&run.id).await.run.expect("run");
    assert_eq!(ended.message, "Rejected by ops: not today");
    let original = format!("/webhooks/{APP}/token-700000000000000311/messages/@original");
    wait_until("the final card", WAIT, || async {
        a.s.discord.calls().iter().any(|(m, p, b)| {
            let text = message_text(b);
            m == "PATCH"
                && *p == original
                && text.contains("**failed**")
                && text.contains("⛔ **approve** rejected by ops")
                && text.contains("> Rejected by ops: not today")
                && !text.contains("Stopped with strategy")
                && !text.contains("Failed step")
        })
    })
    .await;
    a.stop().await;
}
