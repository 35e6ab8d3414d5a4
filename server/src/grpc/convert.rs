//! Domain ↔ protobuf conversions.

use crate::domain::Error;
use crate::domain::run::{Run, RunEvent, RunSource, RunStatus};
use chrono::{DateTime, Utc};
use facteur_proto::v1 as pb;

/// `DateTime` → `Timestamp`.
pub fn ts(t: DateTime<Utc>) -> facteur_proto::Timestamp {
    facteur_proto::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

/// `Timestamp` → `DateTime`, rejecting out-of-range values.
pub fn from_ts(t: &facteur_proto::Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32)
}

/// Domain status → proto enum.
pub fn status(s: RunStatus) -> pb::RunStatus {
    match s {
        RunStatus::Queued => pb::RunStatus::Queued,
        RunStatus::Dispatching => pb::RunStatus::Dispatching,
        RunStatus::Submitted => pb::RunStatus::Submitted,
        RunStatus::Running => pb::RunStatus::Running,
        RunStatus::Succeeded => pb::RunStatus::Succeeded,
        RunStatus::Failed => pb::RunStatus::Failed,
        RunStatus::Error => pb::RunStatus::Error,
        RunStatus::Cancelled => pb::RunStatus::Cancelled,
        RunStatus::DeadLettered => pb::RunStatus::DeadLettered,
    }
}

/// Proto enum → domain status (`None` for unspecified).
pub fn status_from(s: pb::RunStatus) -> Option<RunStatus> {
    RunStatus::ALL.into_iter().find(|d| status(*d) == s)
}

fn source(s: RunSource) -> pb::RunSource {
    match s {
        RunSource::Discord => pb::RunSource::Discord,
        RunSource::Codex => pb::RunSource::Codex,
        RunSource::Admin => pb::RunSource::Admin,
        RunSource::CompatEvent => pb::RunSource::CompatEvent,
        RunSource::Retry => pb::RunSource::Retry,
    }
}

/// Domain run → proto run.
pub fn run(r: &Run) -> pb::Run {
    pb::Run {
        id: r.id.clone(),
        number: r.number,
        idempotency_key: r.idempotency_key.clone(),
        command: r.command.clone(),
        source: source(r.source) as i32,
        status: status(r.status) as i32,
        requester: Some(pb::Requester {
            principal: r.requester.principal.clone(),
            discord_user_id: r.requester.user_id.clone(),
            guild_id: r.requester.guild_id.clone(),
            channel_id: r.requester.channel_id.clone(),
            display_name: r.requester.display_name.clone(),
        }),
        target: Some(pb::WorkflowTarget {
            cluster: r.cluster.clone(),
            namespace: r.namespace.clone(),
            workflow_template: r.workflow_template.clone(),
            service_account: r.service_account.clone(),
            workflow_name: r.workflow_name.clone(),
        }),
        parameters: r
            .parameters
            .iter()
            .map(|(k, v)| pb::Parameter {
                name: k.clone(),
                value: v.clone(),
            })
            .collect(),
        workflow_uid: r.workflow_uid.clone(),
        message: r.message.clone(),
        progress: r.progress.clone(),
        parent_run_id: r.parent_run_id.clone().unwrap_or_default(),
        attempts: r.attempts,
        created_at: Some(ts(r.created_at)),
        updated_at: Some(ts(r.updated_at)),
        started_at: r.started_at.map(ts),
        finished_at: r.finished_at.map(ts),
        current_step: r.steps.current.clone(),
        failed_step: r.steps.failed.clone(),
        log_tail: r.steps.log_tail.clone(),
        approval: r.steps.approval.as_ref().map(approval),
    }
}

/// Domain approval → proto approval.
pub fn approval(a: &crate::domain::run::Approval) -> pb::Approval {
    let d = a.decision.clone().unwrap_or_default();
    pb::Approval {
        node_id: a.node_id.clone(),
        node_name: a.node.clone(),
        parameters: a
            .parameters
            .iter()
            .map(|p| pb::ApprovalParameter {
                name: p.name.clone(),
                description: p.description.clone(),
                choices: p.choices.clone(),
                default: p.default.clone(),
                interpolated_in: p.interpolated_in.clone(),
            })
            .collect(),
        workflow_suspended: a.workflow_suspended,
        decided_by: d.by,
        approved: d.approved,
        values: d.values.into_iter().collect(),
        reason: d.reason,
    }
}

/// A reported waiting step (what an adapter says; a decision is never taken from a report).
pub fn waiting_step(a: pb::Approval) -> crate::domain::run::Approval {
    crate::domain::run::Approval {
        node_id: a.node_id,
        node: a.node_name,
        parameters: a
            .parameters
            .into_iter()
            .map(|p| crate::domain::run::ApprovalParameter {
                name: p.name,
                description: p.description,
                choices: p.choices,
                default: p.default,
                // The first uses say enough; what the run keeps stays small.
                interpolated_in: p
                    .interpolated_in
                    .iter()
                    .take(10)
                    .map(|at| facteur_config::discord::clip(at, 200))
                    .collect(),
            })
            .collect(),
        workflow_suspended: a.workflow_suspended,
        decision: None,
    }
}

/// Domain policy → proto policy.
/// Checks a `guild_id` field: a Discord snowflake, or empty where `optional`.
pub fn guild_id(id: &str, optional: bool) -> Result<(), tonic::Status> {
    if (optional && id.is_empty()) || facteur_config::is_snowflake(id) {
        return Ok(());
    }
    Err(tonic::Status::from(Error::invalid(
        "guild_id",
        format!("guild_id `{id}` is not a snowflake (a Discord guild id)"),
    )))
}

pub fn guild(g: &crate::store::guilds::Guild) -> pb::Guild {
    pb::Guild {
        guild_id: g.guild_id.clone(),
        generation: g.generation,
        requested_by: g.requested_by.clone(),
        requested_at: Some(ts(g.requested_at)),
        registered_generation: g.registered_generation,
        registered_at: g.registered_at.map(ts),
        registered_commands: g.registered_commands.max(0) as u32,
        registration_error: g.registration_error.clone(),
    }
}

pub fn policy(p: &crate::domain::policy::GuildPolicy) -> pb::GuildPolicy {
    pb::GuildPolicy {
        guild_id: p.guild_id.clone(),
        commands: p
            .commands
            .iter()
            .map(|(c, r)| pb::CommandPolicy {
                command: c.clone(),
                role_ids: r.clone(),
            })
            .collect(),
        default_policy: match p.default {
            crate::domain::policy::DefaultPolicy::Allow => pb::DefaultPolicy::Allow as i32,
            crate::domain::policy::DefaultPolicy::Deny => pb::DefaultPolicy::Deny as i32,
        },
        version: p.version,
        updated_by: p.updated_by.clone(),
        updated_at: p.updated_at.map(ts),
        quotas: p
            .quotas
            .iter()
            .map(|(c, q)| pb::CommandQuota {
                command: c.clone(),
                max_concurrent: q.max_concurrent,
                max_per_hour: q.max_per_hour,
            })
            .collect(),
    }
}

/// Domain event → proto event.
pub fn event(e: &RunEvent) -> pb::RunEvent {
    pb::RunEvent {
        sequence: e.sequence,
        run_id: e.run_id.clone(),
        actor: e.actor.clone(),
        kind: e.kind.clone(),
        from_status: status(e.from_status) as i32,
        to_status: status(e.to_status) as i32,
        payload_json: e.payload.to_string(),
        time: Some(ts(e.time)),
    }
}
