//! Discord commands and buttons, decided on the server: who may run what (authorize and audit),
//! commands that start runs, the built-ins, and the buttons on a run's message. Shared by
//! `CommandService` and the `POST /events` compatibility endpoint.

use crate::domain::dispatch::DispatchKind;
pub use crate::domain::interaction::{Button, Interaction, ModalId};
use crate::domain::policy::Decision;
use crate::domain::policy::{Quota, Usage};
use crate::domain::run::{Decision as RunDecision, NewRun, Run, RunSource};
use crate::domain::{Error, Result};
use crate::metrics::Metric;
use crate::service::{runs, sessions};
use crate::state::AppState;
use crate::store::RunFilter;
use crate::store::policy::Quoted;
use std::collections::BTreeMap;

/// Built-in commands answered by the server itself.
pub const BUILTINS: [&str; 3] = ["status", "runs", "cancel"];

/// Checks the role policy; a denial is audited and answered PERMISSION_DENIED with the roles
/// that would allow it.
pub async fn authorize(state: &AppState, i: &Interaction, command: &str) -> Result<()> {
    let policy = state.store.policy_for(&i.guild_id).await?;
    match policy.decide(command, &i.role_ids) {
        Decision::Allowed => Ok(()),
        Decision::Denied { reason, roles } => {
            let payload = serde_json::json!({"user_id": i.user_id, "member_roles": i.role_ids, "allowed_roles": roles, "channel_id": i.channel_id, "interaction_id": i.interaction_id});
            state
                .store
                .audit(&i.guild_id, &i.user_id, "denied", command, payload)
                .await?;
            tracing::info!(guild_id = %i.guild_id, user_id = %i.user_id, command, "command denied by role policy");
            Err(Error::PermissionDenied(reason))
        }
    }
}

/// Whether the member may run `command` (no audit: for suggestions).
pub async fn may_run(state: &AppState, i: &Interaction, command: &str) -> Result<bool> {
    let policy = state.store.policy_for(&i.guild_id).await?;
    Ok(policy.decide(command, &i.role_ids) == Decision::Allowed)
}

/// A run of the interaction's guild (guild data stays in its guild: another guild's run is
/// NOT_FOUND).
pub async fn guild_run(state: &AppState, i: &Interaction, id: &str) -> Result<Run> {
    let not_found = || Error::NotFound(format!("no run `{}` in this server", id.trim()));
    // Another guild's runs are not this guild's to find, nor to list as candidates.
    let id = match runs::id_of(state, id, Some(&i.guild_id)).await {
        Err(Error::NotFound(_)) => return Err(not_found()),
        other => other?,
    };
    let run = state.store.get_run(&id).await?.ok_or_else(not_found)?;
    if run.requester.guild_id != i.guild_id {
        return Err(not_found());
    }
    Ok(run)
}

/// The member's own runs in this guild, newest first.
pub async fn own_runs(state: &AppState, i: &Interaction, limit: u64) -> Result<Vec<Run>> {
    let filter = RunFilter {
        requester: Some(i.user_id.clone()),
        guild_id: Some(i.guild_id.clone()),
        ..Default::default()
    };
    state.store.list_runs(&filter, limit, None).await
}

/// Starts a catalog command for an authorized member: validated options, idempotent on the
/// interaction id, the session remembered.
pub async fn start(
    state: &AppState,
    i: &Interaction,
    command: &str,
    options: &BTreeMap<String, String>,
    source: RunSource,
) -> Result<(Run, bool)> {
    let context = serde_json::json!({"user_id": i.user_id, "channel_id": i.channel_id,
        "interaction_id": i.interaction_id, "source": source.as_str()});
    let resolved = runs::resolve(state, command, options, &i.guild_id, &i.user_id, context).await?;
    let new = resolved.into_run(i.key(), source, i.requester(), runs::trace_parent());
    start_in_quota(state, i, new).await
}

/// The quota of `command` in `guild_id`: the guild's policy's, else the configuration's.
pub async fn quota_for(state: &AppState, guild_id: &str, command: &str) -> Result<Quota> {
    let policy = state.store.policy_for(guild_id).await?;
    Ok(policy
        .quotas
        .get(command)
        .copied()
        .unwrap_or_else(|| state.catalog.quota_of(command)))
}

/// Starts `new` for `i` within its guild's quota for the command: over it, refused
/// (RESOURCE_EXHAUSTED, saying which limit and when it frees up), counted and audited.
async fn start_in_quota(state: &AppState, i: &Interaction, new: NewRun) -> Result<(Run, bool)> {
    let quota = quota_for(state, &i.guild_id, &new.command).await?;
    let command = new.command.clone();
    let refused = std::sync::Mutex::new(None);
    let started = with_session(state, i, new, |state, new, actor| {
        let refused = &refused;
        async move {
            match state.store.create_run_within(new, actor, &quota).await? {
                Quoted::Started(run, duplicate) => {
                    if !duplicate {
                        tracing::info!(run_id = %run.id, command = %run.command, actor, "run accepted");
                        state.wake_dispatchers();
                    }
                    Ok((*run, duplicate))
                }
                Quoted::Refused(limit, message) => {
                    if let Ok(mut r) = refused.lock() {
                        *r = Some(limit);
                    }
                    Err(Error::ResourceExhausted(message))
                }
            }
        }
    })
    .await;
    let limit = refused.lock().ok().and_then(|mut r| r.take());
    if let Some(limit) = limit {
        state.metrics.add(
            Metric::QuotaRefusals,
            vec![
                ("command", command.clone()),
                ("limit", limit.as_str().to_string()),
            ],
            1,
        );
        let payload = serde_json::json!({"user_id": i.user_id, "limit": limit.as_str(),
            "max_concurrent": quota.max_concurrent, "max_per_hour": quota.max_per_hour,
            "interaction_id": i.interaction_id});
        state
            .store
            .audit(&i.guild_id, &i.user_id, "quota_refused", &command, payload)
            .await?;
    }
    started
}

/// Every guild's use of every command with a quota (that runs now or, where an hourly limit is
/// in force, ran within the hour). `last_hour` is counted only where the quota has an hourly
/// limit: a report of concurrent quotas alone reads the active runs, not the hour's history.
pub async fn quota_usage(state: &AppState) -> Result<Vec<(String, String, Quota, Usage)>> {
    let mut out = Vec::new();
    let mut hourly = state.catalog.hourly_limited();
    hourly.extend(state.store.hourly_limited().await?);
    // The quotas of every guild in two statements (not a policy read per guild and command:
    // a month of history has a row for every pair that ran in the last hour).
    let usage = state.store.quota_usage(&hourly).await?;
    let guilds: Vec<String> = usage
        .iter()
        .map(|(g, _, _)| g.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let in_force = state.store.quotas_in_force(&guilds).await?;
    for (guild, command, usage) in usage {
        let quota = in_force
            .get(&guild)
            .and_then(|q| q.get(&command).copied())
            .unwrap_or_else(|| state.catalog.quota_of(&command));
        if !quota.is_unlimited() {
            let usage = if quota.max_per_hour.is_some() {
                usage
            } else {
                Usage {
                    last_hour: 0,
                    oldest_in_hour: None,
                    ..usage
                }
            };
            out.push((guild, command, quota, usage));
        }
    }
    Ok(out)
}

/// Starts `new` for interaction `i` so that the run and the session that lets it report back
/// are one outcome: the session is written first (no session store, no run: UNAVAILABLE and
/// nothing started), then the run, then the link between them (best effort). A replay of an
/// interaction whose run already started is answered with that run even while the session
/// store is out.
async fn with_session<'a, F, Fut>(
    state: &'a AppState,
    i: &'a Interaction,
    new: crate::domain::run::NewRun,
    start: F,
) -> Result<(Run, bool)>
where
    F: FnOnce(&'a AppState, crate::domain::run::NewRun, &'a str) -> Fut,
    Fut: std::future::Future<Output = Result<(Run, bool)>>,
{
    if !i.token.is_empty()
        && let Err(e) = sessions::open(state, i).await
    {
        return match state.store.run_by_key(&new.idempotency_key).await? {
            Some(run) => {
                new.check_replay_of(&run)?;
                Ok((run, true))
            }
            None => Err(e),
        };
    }
    let (run, duplicate) = start(state, new, &i.user_id).await?;
    if !i.token.is_empty() {
        // A replay links again: its `open` wrote the session without the run.
        sessions::link(state, i, &run).await;
    }
    Ok((run, duplicate))
}

/// What a member asked for, as the edge decoded it.
#[derive(Clone, Debug)]
pub enum Invocation {
    /// A slash command with its options (in the order Discord sent them).
    Slash {
        /// Command name.
        command: String,
        /// (name, value) of each option given.
        options: Vec<(String, String)>,
    },
    /// A modal submitted, by its `custom_id` (see [`ModalId`]) and its inputs' values.
    ModalSubmit {
        /// The modal's `custom_id`.
        custom_id: String,
        /// The value of each input, by its `custom_id`.
        values: BTreeMap<String, String>,
    },
}

/// What an invocation comes to, for the edge to show.
#[derive(Debug)]
pub enum Invoked {
    /// A run started, or the one this interaction already started (`duplicate`); `ephemeral`
    /// when its command answers only the member.
    Started {
        /// The run.
        run: Box<Run>,
        /// A replay of an interaction that had started it.
        duplicate: bool,
        /// Shown to the member alone.
        ephemeral: bool,
    },
    /// A suspend step approved with a modal's values: the card it was opened from is updated.
    Approved(Box<Run>),
    /// A built-in command's answer.
    Builtin(Builtin),
    /// The command asks for its values in its modal first (nothing started).
    OpenModal(Box<facteur_config::CommandConfig>),
}

/// The Invoke flow: a slash command or a modal's submission, from decoding to what it comes
/// to. Permission first (nobody sees a modal for a command they may not run), then the
/// built-ins, the modal of a command that has one, and the run.
pub async fn invoke(state: &AppState, i: &Interaction, what: Invocation) -> Result<Invoked> {
    let (command, options, modal_submit) = match what {
        Invocation::ModalSubmit { custom_id, values } => {
            match ModalId::parse(&custom_id, "modal_custom_id")? {
                ModalId::Approval(run_id) => {
                    let run = approve_with_values(state, i, run_id, values).await?;
                    return Ok(Invoked::Approved(Box::new(run)));
                }
                ModalId::Command(command) => (command.to_string(), values, true),
            }
        }
        Invocation::Slash { command, options } => {
            let mut by_name = BTreeMap::new();
            for (name, value) in options {
                if by_name.contains_key(&name) {
                    return Err(Error::invalid(
                        "options",
                        format!("option `{name}` given twice"),
                    ));
                }
                by_name.insert(name, value);
            }
            (command, by_name, false)
        }
    };
    authorize(state, i, &command).await?;
    if BUILTINS.contains(&command.as_str()) {
        return Ok(Invoked::Builtin(
            builtin(state, i, &command, &options).await?,
        ));
    }
    let config = state.catalog.command(&command);
    if let Some(c) = config
        .as_ref()
        .filter(|c| !modal_submit && c.modal.is_some())
    {
        return Ok(Invoked::OpenModal(Box::new(c.clone())));
    }
    // An unknown command is refused by `start`, with the catalog's own message.
    let (run, duplicate) = start(state, i, &command, &options, RunSource::Discord).await?;
    Ok(Invoked::Started {
        run: Box::new(run),
        duplicate,
        ephemeral: config.is_some_and(|c| c.ephemeral),
    })
}

/// The `POST /events` flow (the old front end's CommandEvent): the interaction checked, the
/// member authorized, the run started.
pub async fn run_event(
    state: &AppState,
    i: Interaction,
    command: &str,
    options: &BTreeMap<String, String>,
) -> Result<(Run, bool)> {
    let i = i.validate()?;
    authorize(state, &i, command).await?;
    start(state, &i, command, options, RunSource::CompatEvent).await
}

/// Most suggestions Discord shows for an option.
pub const MAX_SUGGESTIONS: usize = 25;

/// What an option being typed is offered.
#[derive(Debug)]
pub enum Suggestions {
    /// The member's own runs that match (the `run` option of the built-ins).
    Runs(Vec<Run>),
    /// The option's choices that match: (name, value).
    Choices(Vec<(String, String)>),
}

/// Suggestions for `focused` of `command` as the member types `partial`: only for what the
/// member may run (otherwise none: the run would be refused anyway), at most
/// [`MAX_SUGGESTIONS`].
pub async fn autocomplete(
    state: &AppState,
    i: &Interaction,
    command: &str,
    focused: &str,
    partial: &str,
) -> Result<Suggestions> {
    if !may_run(state, i, command).await? {
        return Ok(Suggestions::Choices(Vec::new()));
    }
    let partial = partial.to_lowercase();
    if focused == "run" && BUILTINS.contains(&command) {
        let number = partial.trim_start_matches('#');
        let mut runs: Vec<Run> = own_runs(state, i, MAX_SUGGESTIONS as u64)
            .await?
            .into_iter()
            .filter(|run| {
                run.id.starts_with(&partial)
                    || run.number.to_string().starts_with(number)
                    || run.command.contains(&partial)
            })
            .collect();
        runs.truncate(MAX_SUGGESTIONS);
        return Ok(Suggestions::Runs(runs));
    }
    let mut choices: Vec<(String, String)> = state
        .catalog
        .command(command)
        .and_then(|c| c.options.into_iter().find(|o| o.name == focused))
        .map(|o| o.choices)
        .unwrap_or_default()
        .into_iter()
        .filter(|ch| {
            ch.name.to_lowercase().contains(&partial) || ch.value.to_lowercase().contains(&partial)
        })
        .map(|ch| (ch.name, ch.value))
        .collect();
    choices.truncate(MAX_SUGGESTIONS);
    Ok(Suggestions::Choices(choices))
}

/// Records the message that shows run `run_id` in its channel (the card edited from then on,
/// once the interaction's token has expired). Only a run that came from Discord has one.
pub async fn record_message(
    state: &AppState,
    run_id: &str,
    message: sessions::RunMessage,
) -> Result<()> {
    runs::check_id(run_id)?;
    if !facteur_config::is_snowflake(&message.channel_id)
        || !facteur_config::is_snowflake(&message.message_id)
    {
        return Err(Error::invalid(
            "channel_id",
            "channel_id and message_id must be snowflakes",
        ));
    }
    let run = runs::get(state, run_id).await?;
    if run.requester.guild_id.is_empty() {
        return Err(Error::FailedPrecondition(
            "the run did not come from Discord".into(),
        ));
    }
    sessions::record_message(state, run_id, &message).await
}

/// What a built-in command answers.
#[derive(Debug)]
pub enum Builtin {
    /// One run (`/status`, `/cancel`).
    Run(Box<Run>),
    /// The member's recent runs (`/runs`).
    Runs(Vec<Run>),
}

/// Answers a built-in command (the member is authorized for it).
pub async fn builtin(
    state: &AppState,
    i: &Interaction,
    command: &str,
    options: &BTreeMap<String, String>,
) -> Result<Builtin> {
    match command {
        "status" => Ok(Builtin::Run(Box::new(match options.get("run") {
            Some(id) => guild_run(state, i, id).await?,
            None => own_runs(state, i, 1)
                .await?
                .into_iter()
                .next()
                .ok_or_else(|| Error::NotFound("you have no runs in this server".into()))?,
        }))),
        "runs" => Ok(Builtin::Runs(own_runs(state, i, 10).await?)),
        "cancel" => {
            let id = options
                .get("run")
                .ok_or_else(|| Error::invalid("run", "option `run` is required"))?;
            let run = guild_run(state, i, id).await?;
            authorize(state, i, &run.command).await?;
            let run = runs::cancel(
                state,
                &run.id,
                DispatchKind::Stop,
                &i.user_id,
                "cancelled from Discord",
            )
            .await?;
            Ok(Builtin::Run(Box::new(run)))
        }
        other => Err(Error::invalid(
            "command",
            format!("`{other}` is not a built-in command"),
        )),
    }
}

/// What a click asks the edge to show.
#[derive(Clone, Debug, PartialEq)]
pub enum Clicked {
    /// The run; `true`: as an update of the clicked message.
    Run(Box<Run>, bool),
    /// The values the waiting step asks for, before approving (a modal).
    AskValues(Box<Run>),
}

/// A click on a run's button. Every click is checked again: the button may be old, the
/// member's roles may have changed. Returns the run to show and whether the clicked message
/// is updated (a retry answers with a new message).
pub async fn click(
    state: &AppState,
    i: &Interaction,
    button: Button,
    run_id: &str,
) -> Result<Clicked> {
    let run = guild_run(state, i, run_id).await?;
    if let Button::Approve | Button::Reject = button {
        may_decide(state, i, &run).await?;
        let asks = run.waiting_step().is_some_and(|a| !a.parameters.is_empty());
        if button == Button::Approve && asks {
            return Ok(Clicked::AskValues(Box::new(run)));
        }
        let approved = button == Button::Approve;
        let run = decide(state, i, &run, approved, BTreeMap::new()).await?;
        return Ok(Clicked::Run(Box::new(run), true));
    }
    authorize(state, i, &run.command).await?;
    let (run, update) = match button {
        Button::Cancel => {
            let run = runs::cancel(
                state,
                &run.id,
                DispatchKind::Stop,
                &i.user_id,
                "Cancel button",
            )
            .await?;
            Ok::<_, Error>((run, true))
        }
        Button::Retry => {
            let new = runs::retry_of(&run, i.key(), i.requester())?;
            let (new, _) = start_in_quota(state, i, new).await?;
            Ok((new, false))
        }
        Button::Refresh => Ok((run, true)),
        Button::Approve | Button::Reject => unreachable!("decided above"),
    }?;
    Ok(Clicked::Run(Box::new(run), update))
}

/// Whether the member may decide on `run`'s waiting step: one of the command's `approvers`
/// roles (else a role that may run the command), and not the requester under
/// `require_second_person`. A refusal is audited with the reason.
pub async fn may_decide(state: &AppState, i: &Interaction, run: &Run) -> Result<()> {
    let cmd = state.catalog.command(&run.command).unwrap_or_default();
    let rules = crate::domain::approval::Rules {
        approvers: &cmd.approvers,
        require_second_person: cmd.require_second_person,
    };
    let refused = crate::domain::approval::may_decide(rules, run, &i.user_id, &i.role_ids).err();
    let node = run.steps.approval.as_ref().map(|a| a.node.clone());
    if let Some(reason) = refused {
        let payload = serde_json::json!({"run_id": run.id, "node": node, "user_id": i.user_id,
            "member_roles": i.role_ids, "approvers": cmd.approvers, "reason": reason});
        state
            .store
            .audit(
                &i.guild_id,
                &i.user_id,
                "approval_refused",
                &run.command,
                payload,
            )
            .await?;
        return Err(Error::PermissionDenied(reason));
    }
    if cmd.approvers.is_empty() {
        authorize(state, i, &run.command).await?;
    }
    Ok(())
}

/// Records the member's decision on `run`'s waiting step (audited) and wakes the adapters.
pub async fn decide(
    state: &AppState,
    i: &Interaction,
    run: &Run,
    approved: bool,
    values: BTreeMap<String, String>,
) -> Result<Run> {
    let by = if i.user_name.is_empty() {
        i.user_id.clone()
    } else {
        i.user_name.clone()
    };
    let decision = RunDecision {
        by,
        approved,
        values,
        reason: if approved {
            String::new()
        } else {
            "rejected in Discord".into()
        },
    };
    let node = run.steps.approval.as_ref().map(|a| a.node.clone());
    let context = serde_json::json!({"run_id": run.id, "node": node, "user_id": i.user_id,
        "interaction_id": i.interaction_id});
    let decided = runs::decide(
        state,
        run,
        "",
        decision.clone(),
        &i.user_id,
        &i.guild_id,
        context,
    )
    .await?;
    let payload = serde_json::json!({"run_id": run.id, "node": node, "user_id": i.user_id,
        "member_roles": i.role_ids, "values": decision.values});
    state
        .store
        .audit(
            &i.guild_id,
            &i.user_id,
            if approved { "approved" } else { "rejected" },
            &run.command,
            payload,
        )
        .await?;
    Ok(decided)
}

/// A modal of approval values submitted (`approve:<run id>`): checked again, then approved.
pub async fn approve_with_values(
    state: &AppState,
    i: &Interaction,
    run_id: &str,
    values: BTreeMap<String, String>,
) -> Result<Run> {
    let run = guild_run(state, i, run_id).await?;
    may_decide(state, i, &run).await?;
    decide(state, i, &run, true, values).await
}
