//! Run cards end to end: a slash command through the discord-adapter's endpoint, the real server,
//! an argo-adapter on kube-rs against the fake Kubernetes API (Workflow `status.nodes`, pod logs)
//! and the card edits the fake Discord records. What a person reads is in the captured JSON:
//! state, progress, the step running or failed, its log, and where to click.

use facteur_tests::discord::*;
use facteur_tests::*;
use serde_json::{Value, json};
use std::time::Duration;

const NS: &str = "argo-workflows";
const ARGO_UI: &str = "https://argo.example/";

async fn cards() -> Followed {
    Followed::start(Options {
        argo_ui: ARGO_UI,
        show_logs: true,
        ..Default::default()
    })
    .await
}

/// What the card tests ask of a [`Followed`] stack.
trait Cards {
    async fn deploy(&self, id: &str) -> (Value, String);
    fn edits(&self, id: &str) -> Vec<(std::time::Instant, Value)>;
    async fn edit_reading(&self, id: &str, text: &str) -> Value;
}

impl Cards for Followed {
    /// Runs `/deploy` as interaction `id`; returns the first answer and the Workflow's name.
    async fn deploy(&self, id: &str) -> (Value, String) {
        let cmd = command(
            id,
            &[DEPLOYER],
            "deploy",
            json!([{"name": "service", "type": 3, "value": "api"}]),
        );
        let (code, resp) = self.s.post(&cmd).await;
        assert_eq!(code, 200, "{resp}");
        let run = self.s.run_of(id).await;
        let name = run.workflow_name.clone();
        wait_until("the Workflow", Duration::from_secs(20), || async {
            self.kube.workflow(NS, &name).is_some()
        })
        .await;
        (resp, run.workflow_name)
    }

    /// The edits of interaction `id`'s message, in order, with when they arrived.
    fn edits(&self, id: &str) -> Vec<(std::time::Instant, Value)> {
        let path = format!("/webhooks/{APP}/token-{id}/messages/@original");
        self.s
            .discord
            .calls()
            .into_iter()
            .zip(self.s.discord.call_times())
            .filter(|((m, p, _), _)| m == "PATCH" && *p == path)
            .map(|((_, _, b), t)| (t, b))
            .collect()
    }

    /// Waits for an edit of `id`'s message whose card reads `text`; returns it.
    async fn edit_reading(&self, id: &str, text: &str) -> Value {
        let found = || {
            self.edits(id)
                .into_iter()
                .map(|(_, b)| b)
                .find(|b| message_text(b).contains(text))
        };
        wait_until(
            &format!("an edit reading {text:?}"),
            Duration::from_secs(20),
            || async { found().is_some() },
        )
        .await;
        found().expect("found")
    }
}

/// A Pod node of `wf` running template `template`.
fn pod(wf: &str, i: usize, template: &str, phase: &str) -> (String, Value) {
    let name = format!("{wf}[{i}].{template}");
    let id = format!("{wf}-{i}");
    (
        id.clone(),
        json!({"id": id, "name": name, "displayName": template, "type": "Pod",
               "templateName": template, "phase": phase,
               "startedAt": format!("2026-12-05T12:00:0{i}Z")}),
    )
}

fn nodes(wf: &str, phases: &[(&str, &str)]) -> Value {
    let mut out = serde_json::Map::new();
    out.insert(
        wf.to_string(),
        json!({"id": wf, "name": wf, "displayName": wf, "type": "Steps", "phase": "Running"}),
    );
    for (i, (template, phase)) in phases.iter().enumerate() {
        let (id, node) = pod(wf, i, template, phase);
        out.insert(id, node);
    }
    Value::Object(out)
}

fn embed(body: &Value) -> &Value {
    &body["embeds"][0]
}

fn buttons(body: &Value) -> Vec<(String, String)> {
    body["components"][0]["components"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| {
            let s = |k: &str| b[k].as_str().unwrap_or("").to_string();
            (
                s("label"),
                if b["style"] == 5 {
                    s("url")
                } else {
                    s("custom_id")
                },
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_card_follows_the_workflow_step_by_step() {
    let c = cards().await;
    let id = "700000000000000101";
    let (first, wf) = c.deploy(id).await;
    let card = embed(&first["data"]);
    assert!(
        card["title"]
            .as_str()
            .unwrap_or("")
            .starts_with("/deploy · run "),
        "{first}"
    );
    assert_eq!(card["color"], 0x95a5a6, "queued is grey: {first}");
    assert_eq!(
        card["fields"][0],
        json!({"name": "Requested by", "value": "<@300000000000000001>", "inline": true})
    );
    assert_eq!(
        first["data"]["allowed_mentions"]["parse"],
        json!([]),
        "no ping"
    );
    let labels: Vec<String> = buttons(&first["data"]).into_iter().map(|b| b.0).collect();
    assert_eq!(
        labels,
        ["Cancel", "Refresh"],
        "no link before the Workflow exists"
    );

    let link = format!("https://argo.example/workflows/{NS}/{wf}");
    let steps = ["checkout", "build", "test"];
    for done in 1..=3 {
        let phases: Vec<(&str, &str)> = steps
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let phase = match i.cmp(&done) {
                    std::cmp::Ordering::Less => "Succeeded",
                    std::cmp::Ordering::Equal => "Running",
                    std::cmp::Ordering::Greater => "Pending",
                };
                (*t, phase)
            })
            .collect();
        let phase = if done == 3 { "Succeeded" } else { "Running" };
        c.kube
            .set_phase(NS, &wf, phase, json!({"nodes": nodes(&wf, &phases)}));
        let edit = c.edit_reading(id, &format!("{done}/3")).await;
        let card = embed(&edit);
        let text = card["description"].as_str().unwrap_or("");
        if done < 3 {
            assert!(
                text.contains(&format!("step {} of 3 · now `{}`", done + 1, steps[done])),
                "{edit}"
            );
            assert_eq!(card["color"], 0x3498db, "running is blue");
            assert_eq!(buttons(&edit)[0].0, "Cancel");
        } else {
            assert!(
                text.starts_with("**succeeded** · 3 of 3 steps done"),
                "{edit}"
            );
            assert_eq!(card["color"], 0x2ecc71, "succeeded is green");
            assert_eq!(buttons(&edit)[0].0, "Retry");
        }
        assert_eq!(card["url"], link.as_str());
        assert_eq!(
            buttons(&edit).last().cloned(),
            Some(("Open in Argo".to_string(), link.clone())),
            "{edit}"
        );
    }
    // Progress moved forward in successive edits: 1/3 before 2/3 before 3/3.
    let order: Vec<usize> = c
        .edits(id)
        .iter()
        .filter_map(|(_, b)| {
            let t = message_text(b);
            (1..=3).find(|n| t.contains(&format!(" {n}/3")))
        })
        .collect();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted, "edits in order");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_card_shows_the_step_its_message_and_its_log_tail() {
    let c = cards().await;
    let id = "700000000000000102";
    let (_, wf) = c.deploy(id).await;
    let mut n = nodes(&wf, &[("checkout", "Succeeded"), ("build", "Failed")]);
    n[format!("{wf}-1")]["message"] = json!("exit code 2");
    let node = n[format!("{wf}-1")].clone();
    let pod = facteur_argo::status::pod_name(&wf, &node, "v2");
    let log: Vec<String> = (1..=20)
        .map(|i| format!("line {i}"))
        .chain([format!("auth failed with {ARGO_TOKEN}")])
        .collect();
    c.kube.set_pod_log(NS, &pod, &log.join("\n"));
    c.kube.set_phase(
        NS,
        &wf,
        "Failed",
        json!({"nodes": n, "message": "child 'build' failed"}),
    );
    let edit = c.edit_reading(id, "Failed step: `build`").await;
    let card = embed(&edit);
    let text = card["description"].as_str().unwrap_or("");
    assert_eq!(card["color"], 0xe74c3c, "failed is red: {edit}");
    assert!(text.starts_with("**failed** · 1 of 2 steps done"), "{text}");
    assert!(text.contains("build: exit code 2"), "{text}");
    // The last 15 lines (the token the server knows masked), in a code block.
    assert!(
        text.ends_with("```\nline 7\nline 8\nline 9\nline 10\nline 11\nline 12\nline 13\nline 14\nline 15\nline 16\nline 17\nline 18\nline 19\nline 20\nauth failed with ***\n```"),
        "{text}"
    );
    assert!(!edit.to_string().contains(ARGO_TOKEN));
    assert_eq!(
        buttons(&edit).into_iter().map(|b| b.0).collect::<Vec<_>>(),
        ["Retry", "Refresh", "Open in Argo"]
    );
    let asked = c.kube.log_requests();
    assert_eq!(asked.len(), 1, "read once: {asked:?}");
    let (ns, name, q) = &asked[0];
    assert_eq!((ns.as_str(), name.as_str()), (NS, pod.as_str()));
    assert_eq!(q.get("container").map(String::as_str), Some("main"));
    assert_eq!(q.get("tailLines").map(String::as_str), Some("15"));
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_changes_is_coalesced_and_the_final_state_lands() {
    let c = cards().await;
    let id = "700000000000000103";
    let (_, wf) = c.deploy(id).await;
    let before = c.edits(id).len();
    let started = std::time::Instant::now();
    for i in 1..=40 {
        c.kube
            .set_phase(NS, &wf, "Running", json!({"progress": format!("{i}/40")}));
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    c.kube
        .set_phase(NS, &wf, "Succeeded", json!({"progress": "40/40"}));
    let burst = started.elapsed();
    c.edit_reading(id, "**succeeded** · 40 of 40 steps done")
        .await;
    let edits = c.edits(id);
    let during = edits.len() - before;
    // One edit per second at most: the burst lasted ~1 s, so a handful, not 41.
    let allowed = burst.as_secs() as usize + 3;
    assert!(
        during <= allowed,
        "{during} edits for 41 changes in {burst:?} (at most {allowed})"
    );
    for pair in edits.windows(2) {
        let gap = pair[1].0 - pair[0].0;
        assert!(gap >= Duration::from_millis(900), "edits {gap:?} apart");
    }
    let last = &edits.last().expect("an edit").1;
    assert!(
        message_text(last).contains("succeeded"),
        "the final state is the last edit"
    );
    c.stop().await;
}
