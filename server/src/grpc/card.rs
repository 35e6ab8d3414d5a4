//! Run cards: how a run reads in Discord at a glance. A presentation of the domain run as the
//! `Reply` the discord-adapter renders with serenity's builders (an embed and its buttons); no
//! rule is decided here.
//!
//! ```text
//!  ┃ /deploy · run #1234                            (title, linked to Argo when configured)
//!  ┃ **running** · step 2 of 3 · now `build`
//!  ┃ ▰▰▰▰▰▰▰▱▱▱
//!  ┃ Requested by @ana   Target argo-workflows/deploy-3f2a…   Started 2 minutes ago
//!  ┃ Duration 1m 12s so far   Attempt 1
//!  ┃ run 3f2a9c1e-…                                  · updated 12:03
//!  [Cancel] [Refresh] [Open in Argo ↗]
//! ```

use crate::domain::interaction::{Button, ModalId, actions};
use crate::domain::run::{Run, RunStatus};
use crate::domain::workflow::{ArgoUi, place_of};
use chrono::{DateTime, Utc};
use facteur_proto::v1 as pb;

/// Colours of the left bar, by status (Discord's palette).
mod colour {
    pub const GREY: u32 = 0x95a5a6;
    pub const BLUE: u32 = 0x3498db;
    pub const GREEN: u32 = 0x2ecc71;
    pub const RED: u32 = 0xe74c3c;
    pub const DARK_GREY: u32 = 0x546e7a;
    pub const DARK_RED: u32 = 0x992d22;
}

/// Discord's limits on an embed's parts (characters).
const TITLE_MAX: usize = 256;
const DESCRIPTION_MAX: usize = 4096;
const FIELD_MAX: usize = 1024;
/// Cells of the progress bar.
const BAR_CELLS: u64 = 10;

/// The colour of a run's card.
pub fn colour(status: RunStatus) -> u32 {
    match status {
        RunStatus::Queued | RunStatus::Dispatching | RunStatus::Submitted => colour::GREY,
        RunStatus::Running => colour::BLUE,
        RunStatus::Succeeded => colour::GREEN,
        RunStatus::Failed | RunStatus::Error => colour::RED,
        RunStatus::Cancelled => colour::DARK_GREY,
        RunStatus::DeadLettered => colour::DARK_RED,
    }
}

/// The first 8 characters of a run id.
pub fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// How cards name a run: its number (`#1234`), which people can type back; a run stored before
/// numbers existed shows its id's first characters.
pub fn handle(run: &Run) -> String {
    if run.number > 0 {
        format!("#{}", run.number)
    } else {
        short(&run.id).to_string()
    }
}

fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max - 1).collect();
    out.push('…');
    out
}

/// `1h 02m`, `3m 07s`, `12s`.
fn duration(seconds: i64) -> String {
    let s = seconds.max(0);
    match (s / 3600, s % 3600 / 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m {s:02}s"),
        (h, m, _) => format!("{h}h {m:02}m"),
    }
}

/// Argo's `N/M`, when it parses.
fn progress(p: &str) -> Option<(u64, u64)> {
    let (done, total) = p.split_once('/')?;
    let (done, total) = (done.trim().parse().ok()?, total.trim().parse().ok()?);
    (total > 0 && done <= total).then_some((done, total))
}

fn bar(done: u64, total: u64) -> String {
    let filled = (done * BAR_CELLS + total / 2) / total;
    (0..BAR_CELLS)
        .map(|i| if i < filled { '▰' } else { '▱' })
        .collect()
}

/// Where the run's Workflow is in Argo's UI, once it may exist.
pub fn argo_link(run: &Run, ui: &ArgoUi) -> Option<String> {
    let base = ui.base(&run.cluster);
    let created = !run.workflow_uid.is_empty()
        || matches!(
            run.status,
            RunStatus::Submitted
                | RunStatus::Running
                | RunStatus::Succeeded
                | RunStatus::Failed
                | RunStatus::Error
        );
    (!base.is_empty() && created)
        .then(|| format!("{base}/workflows/{}/{}", run.namespace, run.workflow_name))
}

/// Who asked: a mention of the Discord user (rendered as a name; no ping, as replies carry no
/// allowed mentions), else the name given, else the principal.
fn requester(run: &Run) -> String {
    let r = &run.requester;
    if !r.user_id.is_empty() {
        format!("<@{}>", r.user_id)
    } else if !r.display_name.is_empty() {
        r.display_name.clone()
    } else {
        r.principal.clone()
    }
}

/// The card's first lines: the state, and how far the Workflow got.
fn summary(run: &Run) -> String {
    let mut out = format!("**{}**", run.status.as_str().replace('_', " "));
    let running = run.status == RunStatus::Running;
    let p = progress(&run.progress);
    match p {
        Some((done, total)) if running && done < total => {
            out.push_str(&format!(" · step {} of {total}", done + 1))
        }
        Some((done, total)) => out.push_str(&format!(" · {done} of {total} steps done")),
        None => {}
    }
    if running && !run.steps.current.is_empty() {
        out.push_str(&format!(" · now `{}`", run.steps.current));
    }
    if let Some((done, total)) = p {
        out.push_str(&format!("\n{} {done}/{total}", bar(done, total)));
    }
    out
}

/// A supplied value as the card shows it: short, in a code span that it cannot close.
fn shown_value(v: &str) -> String {
    format!("`{}`", clip(&v.replace('`', "ˋ").replace('\n', " "), 100))
}

/// Every decision taken, who decided what, then what is waiting, what went wrong or what Argo
/// last said, and the failed step's log tail.
fn details(run: &Run) -> String {
    let mut out = String::new();
    let name = |node: &str| {
        if node.is_empty() {
            "the Workflow".to_string()
        } else {
            node.to_string()
        }
    };
    // A run decided before decisions were kept has only its step's.
    let before: Vec<crate::domain::run::Decided> = match &run.steps.approval {
        Some(a) if run.steps.decisions.is_empty() => a
            .decision
            .iter()
            .map(|d| crate::domain::run::Decided {
                node: a.node.clone(),
                at: None,
                decision: d.clone(),
            })
            .collect(),
        _ => Vec::new(),
    };
    for d in run.steps.decisions.iter().chain(&before) {
        let node = name(&d.node);
        let when =
            d.at.map(|t| format!(" <t:{}:R>", t.timestamp()))
                .unwrap_or_default();
        if d.decision.approved {
            out.push_str(&format!(
                "\n✅ **{node}** approved by {}{when}",
                d.decision.by
            ));
            let values: Vec<String> = d
                .decision
                .values
                .iter()
                .map(|(k, v)| format!("{k}={}", shown_value(v)))
                .collect();
            if !values.is_empty() {
                out.push_str(&format!(" · {}", values.join(", ")));
            }
        } else {
            out.push_str(&format!(
                "\n⛔ **{node}** rejected by {}{when}",
                d.decision.by
            ));
            if !d.decision.reason.trim().is_empty() {
                out.push_str(&format!(": {}", clip(d.decision.reason.trim(), 300)));
            }
        }
    }
    if let Some(a) = run.waiting_step() {
        out.push_str(&format!("\n⏸ waiting for approval: **{}**", name(&a.node)));
    }
    if !run.steps.failed.is_empty() {
        out.push_str(&format!("\nFailed step: `{}`", run.steps.failed));
    }
    if !run.message.is_empty() && run.status != RunStatus::Succeeded {
        out.push_str(&format!(
            "\n> {}",
            clip(&run.message, 500).replace('\n', "\n> ")
        ));
    }
    if !run.steps.log_tail.is_empty() {
        // A fence inside the log would end the code block early.
        let log = run.steps.log_tail.replace("```", "ˋˋˋ");
        out.push_str(&format!("\n```\n{}\n```", log.trim_end()));
    }
    out
}

fn field(name: &str, value: String) -> pb::EmbedField {
    pb::EmbedField {
        name: name.into(),
        value: clip(&value, FIELD_MAX),
        inline: true,
    }
}

fn ts(t: DateTime<Utc>) -> facteur_proto::Timestamp {
    facteur_proto::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

/// The embed of one run.
pub fn embed(run: &Run, ui: &ArgoUi, now: DateTime<Utc>) -> pb::Embed {
    let mut fields = vec![
        field("Requested by", requester(run)),
        field("Target", format!("`{}`", place_of(run))),
    ];
    if let Some(start) = run.started_at {
        fields.push(field("Started", format!("<t:{}:R>", start.timestamp())));
        fields.push(match run.finished_at {
            Some(end) => field("Duration", duration((end - start).num_seconds())),
            None => field(
                "Duration",
                format!("{} so far", duration((now - start).num_seconds())),
            ),
        });
    }
    let mut attempt = run.attempts.max(1).to_string();
    if let Some(parent) = &run.parent_run_id {
        attempt.push_str(&format!(" · retry of `{}`", short(parent)));
    }
    fields.push(field("Attempt", attempt));
    let description = clip(
        &format!("{}{}", summary(run), details(run)),
        DESCRIPTION_MAX,
    );
    pb::Embed {
        title: clip(
            &format!("/{} · run {}", run.command, handle(run)),
            TITLE_MAX,
        ),
        description,
        color: colour(run.status),
        fields,
        footer: format!("run {}", run.id),
        timestamp: Some(ts(run.updated_at)),
        url: argo_link(run, ui).unwrap_or_default(),
    }
}

fn button(label: &str, b: Button, run: &Run, danger: bool) -> pb::Button {
    let action = match b {
        Button::Cancel => pb::ComponentAction::Cancel,
        Button::Retry => pb::ComponentAction::Retry,
        Button::Approve => pb::ComponentAction::Approve,
        Button::Reject => pb::ComponentAction::Reject,
        Button::Refresh => pb::ComponentAction::Refresh,
    };
    pb::Button {
        custom_id: b.custom_id(&run.id),
        label: label.into(),
        action: action as i32,
        run_id: run.id.clone(),
        danger,
        url: String::new(),
    }
}

/// The buttons under a run's card: what the domain says may be done to it now
/// ([`actions`]), and a link to Argo when its UI is configured.
pub fn buttons(run: &Run, ui: &ArgoUi) -> Vec<pb::Button> {
    let mut out: Vec<pb::Button> = actions(run)
        .into_iter()
        .map(|b| match b {
            Button::Approve => button("Approve", b, run, false),
            Button::Reject => button("Reject", b, run, true),
            Button::Retry => button("Retry", b, run, false),
            Button::Cancel => button("Cancel", b, run, true),
            Button::Refresh => button("Refresh", b, run, false),
        })
        .collect();
    if let Some(url) = argo_link(run, ui) {
        out.push(pb::Button {
            label: "Open in Argo".into(),
            url,
            ..Default::default()
        });
    }
    out
}

/// The modal asking for the values a waiting step wants before it is approved: one text input
/// per parameter (Discord allows five), its description as label, its default prefilled as the
/// placeholder, its choices named. The server checks the values on submit.
pub fn approval_modal(run: &Run) -> Option<pb::Modal> {
    let a = run.steps.approval.as_ref()?;
    let node = if a.node.is_empty() { "run" } else { &a.node };
    Some(pb::Modal {
        custom_id: ModalId::Approval(&run.id).encode(),
        title: clip(&format!("Approve {node}"), 45),
        inputs: a
            .parameters
            .iter()
            .take(5)
            .map(|p| {
                let label = if p.description.is_empty() {
                    &p.name
                } else {
                    &p.description
                };
                let mut hint = p.default.clone();
                if !p.choices.is_empty() {
                    hint = format!("one of: {}", p.choices.join(", "));
                    if !p.default.is_empty() {
                        hint.push_str(&format!(" (default {})", p.default));
                    }
                }
                pb::ModalInput {
                    custom_id: p.name.clone(),
                    label: clip(label, 45),
                    paragraph: false,
                    required: p.default.is_empty(),
                    placeholder: clip(&hint, 100),
                    ..Default::default()
                }
            })
            .collect(),
    })
}

/// A run's message: its card and the buttons that act on it.
pub fn run_card(run: &Run, ui: &ArgoUi, now: DateTime<Utc>, ephemeral: bool) -> pb::Reply {
    pb::Reply {
        content: String::new(),
        ephemeral,
        buttons: buttons(run, ui),
        embeds: vec![embed(run, ui, now)],
    }
}

/// The built-in `/runs`: one compact embed, a line per run.
pub fn runs_list(runs: &[Run]) -> pb::Reply {
    let lines: Vec<String> = runs
        .iter()
        .map(|r| {
            let mut line = format!(
                "`{}` **/{}** · {}",
                handle(r),
                r.command,
                r.status.as_str().replace('_', " ")
            );
            if let Some((done, total)) = progress(&r.progress)
                && !r.status.is_terminal()
            {
                line.push_str(&format!(" {done}/{total}"));
            }
            line.push_str(&format!(" · <t:{}:R>", r.created_at.timestamp()));
            line
        })
        .collect();
    let description = if lines.is_empty() {
        "You have no runs in this server.".to_string()
    } else {
        lines.join("\n")
    };
    pb::Reply {
        content: String::new(),
        ephemeral: true,
        buttons: vec![],
        embeds: vec![pb::Embed {
            title: "Your recent runs".into(),
            description: clip(&description, DESCRIPTION_MAX),
            color: runs.first().map_or(colour::GREY, |r| colour(r.status)),
            ..Default::default()
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::run::{Requester, RunSource, Steps};
    use chrono::TimeZone;

    fn run(status: RunStatus) -> Run {
        let t = Utc
            .with_ymd_and_hms(2026, 12, 5, 12, 0, 0)
            .single()
            .expect("time");
        Run {
            id: "3f2a9c1e-0000-4000-8000-000000000001".into(),
            number: 0,
            idempotency_key: "k".into(),
            command: "deploy".into(),
            source: RunSource::Discord,
            status,
            requester: Requester {
                user_id: "123456789012345678".into(),
                display_name: "ana".into(),
                ..Default::default()
            },
            cluster: "default".into(),
            namespace: "argo-workflows".into(),
            workflow_template: "deploy".into(),
            service_account: String::new(),
            workflow_name: "deploy-3f2a9c1e".into(),
            workflow_uid: "uid".into(),
            parameters: Default::default(),
            message: String::new(),
            progress: String::new(),
            workflow_phase: String::new(),
            parent_run_id: None,
            attempts: 1,
            created_at: t,
            updated_at: t,
            started_at: Some(t),
            finished_at: None,
            cancel_requested_at: None,
            trace_parent: String::new(),
            steps: Steps::default(),
        }
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 5, 12, 1, 12)
            .single()
            .expect("time")
    }

    #[test]
    fn a_running_card_shows_progress_the_step_and_the_live_duration() {
        let mut r = run(RunStatus::Running);
        r.progress = "1/3".into();
        r.steps.current = "build".into();
        let e = embed(&r, &ArgoUi::single("https://argo.example/"), now());
        assert_eq!(
            e.title, "/deploy · run 3f2a9c1e",
            "stored before numbers existed"
        );
        let numbered = Run {
            number: 1234,
            ..r.clone()
        };
        assert_eq!(
            embed(&numbered, &ArgoUi::default(), now()).title,
            "/deploy · run #1234"
        );
        assert_eq!(e.color, 0x3498db);
        assert_eq!(
            e.description,
            "**running** · step 2 of 3 · now `build`\n▰▰▰▱▱▱▱▱▱▱ 1/3"
        );
        let f: Vec<(&str, &str)> = e
            .fields
            .iter()
            .map(|f| (f.name.as_str(), f.value.as_str()))
            .collect();
        assert_eq!(
            f,
            [
                ("Requested by", "<@123456789012345678>"),
                ("Target", "`argo-workflows/deploy-3f2a9c1e`"),
                ("Started", "<t:1796472000:R>"),
                ("Duration", "1m 12s so far"),
                ("Attempt", "1"),
            ]
        );
        assert_eq!(
            e.url,
            "https://argo.example/workflows/argo-workflows/deploy-3f2a9c1e"
        );
        let b = buttons(&r, &ArgoUi::single("https://argo.example/"));
        let labels: Vec<&str> = b.iter().map(|b| b.label.as_str()).collect();
        assert_eq!(labels, ["Cancel", "Refresh", "Open in Argo"]);
        assert_eq!(b[0].custom_id, format!("cancel:{}", r.id));
        assert_eq!(b[1].custom_id, format!("refresh:{}", r.id));
        assert!(b[2].custom_id.is_empty());
        assert_eq!(b[2].url, e.url);
    }

    #[test]
    fn a_rejected_card_keeps_every_decision_and_says_who_rejected_it() {
        use crate::domain::run::{Decided, Decision};
        let mut r = run(RunStatus::Failed);
        r.progress = "2/4".into();
        r.finished_at = Some(now());
        let at = now().timestamp();
        r.steps.decisions = vec![
            Decided {
                node: "approve-build".into(),
                at: Some(now()),
                decision: Decision {
                    by: "alice".into(),
                    approved: true,
                    values: [("environment".to_string(), "prod `x`".to_string())].into(),
                    reason: String::new(),
                },
            },
            Decided {
                node: "approve-deploy".into(),
                at: Some(now()),
                decision: Decision {
                    by: "bob".into(),
                    approved: false,
                    values: Default::default(),
                    reason: "not today".into(),
                },
            },
        ];
        r.message = crate::domain::machine::rejection_text(&r.steps.decisions[1]);
        let e = embed(&r, &ArgoUi::default(), now());
        assert_eq!(
            e.description,
            format!(
                "**failed** · 2 of 4 steps done\n▰▰▰▰▰▱▱▱▱▱ 2/4\n\
                 ✅ **approve-build** approved by alice <t:{at}:R> · environment=`prod ˋxˋ`\n\
                 ⛔ **approve-deploy** rejected by bob <t:{at}:R>: not today\n\
                 > Rejected by bob: not today"
            )
        );
    }

    #[test]
    fn a_failed_card_names_the_step_its_message_and_log() {
        let mut r = run(RunStatus::Failed);
        r.progress = "1/3".into();
        r.finished_at = Some(now());
        r.message = "child failed (build: exit code 2)".into();
        r.steps.failed = "build".into();
        r.steps.log_tail = "compiling\nerror: ```boom```\n".into();
        let e = embed(&r, &ArgoUi::default(), now());
        assert_eq!(e.color, 0xe74c3c);
        assert_eq!(
            e.description,
            "**failed** · 1 of 3 steps done\n▰▰▰▱▱▱▱▱▱▱ 1/3\nFailed step: `build`\n\
             > child failed (build: exit code 2)\n```\ncompiling\nerror: ˋˋˋboomˋˋˋ\n```"
        );
        assert!(e.url.is_empty(), "no Argo UI configured");
        assert_eq!(e.fields[3].value, "1m 12s");
        let labels: Vec<String> = buttons(&r, &ArgoUi::default())
            .into_iter()
            .map(|b| b.label)
            .collect();
        assert_eq!(labels, ["Retry", "Refresh"]);
    }

    #[test]
    fn colours_follow_the_status() {
        // In the order of `RunStatus::ALL`: queued … dead-lettered.
        let c: Vec<u32> = RunStatus::ALL.into_iter().map(colour).collect();
        assert_eq!(
            c,
            [
                0x95a5a6, 0x95a5a6, 0x95a5a6, 0x3498db, 0x2ecc71, 0xe74c3c, 0xe74c3c, 0x546e7a,
                0x992d22
            ]
        );
    }

    #[test]
    fn no_link_before_the_workflow_may_exist_and_long_texts_fit() {
        let mut r = run(RunStatus::Queued);
        r.workflow_uid.clear();
        r.started_at = None;
        assert_eq!(argo_link(&r, &ArgoUi::single("https://argo.example")), None);
        r.message = "x".repeat(10_000);
        r.steps.log_tail = "y".repeat(1000);
        let e = embed(&r, &ArgoUi::single("https://argo.example"), now());
        assert!(e.description.chars().count() <= DESCRIPTION_MAX);
        assert_eq!(e.description.lines().next(), Some("**queued**"));
        assert!(e.fields.iter().all(|f| f.name != "Started"));
    }

    #[test]
    fn the_runs_list_is_one_compact_embed() {
        let mut a = run(RunStatus::Running);
        a.progress = "2/3".into();
        let b = run(RunStatus::DeadLettered);
        let reply = runs_list(&[a, b]);
        assert!(reply.ephemeral);
        assert_eq!(reply.embeds.len(), 1);
        assert_eq!(
            reply.embeds[0].description,
            "`3f2a9c1e` **/deploy** · running 2/3 · <t:1796472000:R>\n\
             `3f2a9c1e` **/deploy** · dead lettered · <t:1796472000:R>"
        );
        assert_eq!(
            runs_list(&[]).embeds[0].description,
            "You have no runs in this server."
        );
    }
}
