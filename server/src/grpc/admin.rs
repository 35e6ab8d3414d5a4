//! `facteur.v1.AdminService`: runs, dead letters, status (policy and sessions come with the
//! Discord issue).

use super::convert;
use crate::auth::Principal;
use crate::domain::Error;
use crate::domain::dispatch::DispatchKind;
use crate::domain::policy::{DefaultPolicy, Quota};
use crate::domain::retention::Retention;
use crate::domain::run::Decision as RunDecision;
use crate::service::{guilds, policy, runs, sessions, status};
use crate::state::AppState;
use crate::store::RunFilter;
use chrono::{DateTime, Utc};
use facteur_proto::v1 as pb;
use pb::admin_service_server::AdminService;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// `facteur.v1.AdminService`.
#[derive(Clone)]
pub struct AdminApi(pub Arc<AppState>);

const PAGE_DEFAULT: u32 = 50;
const PAGE_MAX: u32 = 500;

fn page_size(requested: u32) -> u64 {
    u64::from(if requested == 0 {
        PAGE_DEFAULT
    } else {
        requested.min(PAGE_MAX)
    })
}

/// Keyset cursor: `<unix nanos>.<uuid>`.
pub(crate) fn parse_cursor(token: &str) -> Result<Option<(DateTime<Utc>, String)>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || {
        Status::from(Error::invalid(
            "page_token",
            format!("page_token `{token}` is not a token from a previous response"),
        ))
    };
    let (nanos, id) = token.split_once('.').ok_or_else(bad)?;
    let nanos: i64 = nanos.parse().map_err(|_| bad())?;
    if uuid::Uuid::parse_str(id).is_err() {
        return Err(bad());
    }
    Ok(Some((
        DateTime::from_timestamp_nanos(nanos),
        id.to_string(),
    )))
}

pub(crate) fn cursor(t: DateTime<Utc>, id: &str) -> String {
    format!("{}.{id}", t.timestamp_nanos_opt().unwrap_or(0))
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn get_status(
        &self,
        _req: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::GetStatusResponse>, Status> {
        let report = status::report(&self.0).await;
        let ready = report.ready();
        let (adapters, unserved_namespaces, clusters) = report
            .served
            .map(|s| {
                let clusters = s
                    .clusters
                    .into_iter()
                    .map(|c| pb::ClusterStatus {
                        name: c.name,
                        ui_base_url: c.ui_base_url,
                        adapters: c.adapters,
                        namespaces: c.namespaces,
                        last_seen_at: c.last_seen_at.map(convert::ts),
                        queued_runs: u32::try_from(c.queued_runs).unwrap_or(u32::MAX),
                        stranded_runs: u32::try_from(c.stranded_runs).unwrap_or(u32::MAX),
                    })
                    .collect();
                let adapters = s
                    .adapters
                    .into_iter()
                    .map(|a| pb::AdapterStatus {
                        adapter_id: a.id,
                        cluster: a.cluster,
                        namespaces: a.namespaces,
                        connected_at: Some(convert::ts(a.connected_at)),
                        last_seen_at: Some(convert::ts(a.seen_at)),
                        in_flight: u32::try_from(a.in_flight).unwrap_or(u32::MAX),
                        max_in_flight: a.max_in_flight,
                    })
                    .collect();
                let unserved = s
                    .unserved
                    .into_iter()
                    .map(|u| pb::UnservedNamespace {
                        cluster: u.cluster,
                        namespace: u.namespace,
                        queued_runs: u32::try_from(u.queued.runs).unwrap_or(u32::MAX),
                        oldest_queued_at: u.queued.oldest.map(convert::ts),
                        configured: u.configured,
                    })
                    .collect();
                (adapters, unserved, clusters)
            })
            .unwrap_or_default();
        Ok(Response::new(pb::GetStatusResponse {
            clusters,
            adapters,
            unserved_namespaces,
            version: env!("CARGO_PKG_VERSION").into(),
            ready,
            dependencies: report
                .dependencies
                .into_iter()
                .map(|d| pb::DependencyStatus {
                    name: d.name.into(),
                    backend: d.backend.into(),
                    healthy: d.healthy,
                    message: d.message,
                    latency_ms: d.latency.as_secs_f64() * 1000.0,
                })
                .collect(),
            started_at: Some(convert::ts(self.0.started_at)),
            catalog_problems: self.0.catalog.problems(),
            catalog_repairs: self.0.catalog.repairs(),
            registrations: report
                .registrations
                .into_iter()
                .map(|r| pb::CommandRegistration {
                    ok: r.error.is_empty(),
                    scope: r.scope,
                    commands: r.commands.max(0) as u32,
                    error: r.error,
                    discord_code: r.discord_code,
                    failures: r.failures.max(0) as u32,
                    registered_at: r.registered_at.map(convert::ts),
                    updated_at: Some(convert::ts(r.updated_at)),
                })
                .collect(),
            quota_usage: report
                .quota_usage
                .into_iter()
                .map(|(guild_id, command, quota, u)| pb::QuotaUsage {
                    guild_id,
                    command,
                    active: u.active,
                    max_concurrent: quota.max_concurrent,
                    last_hour: u.last_hour,
                    max_per_hour: quota.max_per_hour,
                })
                .collect(),
        }))
    }

    async fn start_run(
        &self,
        req: Request<pb::StartRunRequest>,
    ) -> Result<Response<pb::StartRunResponse>, Status> {
        let principal = Principal::of(&req);
        let r = req.into_inner();
        let params: std::collections::BTreeMap<String, String> = r.parameters.into_iter().collect();
        let (run, duplicate) = runs::start_admin(
            &self.0,
            &r.command,
            &params,
            &r.cluster,
            &r.idempotency_key,
            &principal.name,
        )
        .await?;
        Ok(Response::new(pb::StartRunResponse {
            run: Some(convert::run(&run)),
            duplicate,
        }))
    }

    async fn list_runs(
        &self,
        req: Request<pb::ListRunsRequest>,
    ) -> Result<Response<pb::ListRunsResponse>, Status> {
        let r = req.into_inner();
        let status = match pb::RunStatus::try_from(r.status) {
            Ok(pb::RunStatus::Unspecified) => None,
            Ok(s) => convert::status_from(s),
            Err(_) => {
                return Err(Status::from(Error::invalid(
                    "status",
                    format!("status {} is not a RunStatus", r.status),
                )));
            }
        };
        let nonempty = |s: String| (!s.is_empty()).then_some(s);
        let time = |t: Option<facteur_proto::Timestamp>, field: &str| -> Result<_, Status> {
            t.map(|t| {
                convert::from_ts(&t).ok_or_else(|| {
                    Status::from(Error::invalid(field, format!("{field} is out of range")))
                })
            })
            .transpose()
        };
        let filter = RunFilter {
            status,
            command: nonempty(r.command),
            requester: nonempty(r.requester),
            guild_id: nonempty(r.guild_id),
            cluster: nonempty(r.cluster),
            created_after: time(r.created_after, "created_after")?,
            created_before: time(r.created_before, "created_before")?,
        };
        let limit = page_size(r.page_size);
        let page = runs::list(&self.0, &filter, limit, parse_cursor(&r.page_token)?).await?;
        Ok(Response::new(pb::ListRunsResponse {
            runs: page.items.iter().map(convert::run).collect(),
            next_page_token: page.next.map(|(t, id)| cursor(t, &id)).unwrap_or_default(),
        }))
    }

    async fn get_run(
        &self,
        req: Request<pb::GetRunRequest>,
    ) -> Result<Response<pb::GetRunResponse>, Status> {
        let id = req.into_inner().run_id;
        let (run, events) = runs::with_history(&self.0, &id).await?;
        Ok(Response::new(pb::GetRunResponse {
            run: Some(convert::run(&run)),
            events: events.iter().map(convert::event).collect(),
        }))
    }

    async fn cancel_run(
        &self,
        req: Request<pb::CancelRunRequest>,
    ) -> Result<Response<pb::CancelRunResponse>, Status> {
        let principal = Principal::of(&req);
        let r = req.into_inner();
        let run_id = runs::id_of(&self.0, &r.run_id, None).await?;
        let kind = match pb::CancelMode::try_from(r.mode) {
            Ok(pb::CancelMode::Unspecified | pb::CancelMode::Stop) => DispatchKind::Stop,
            Ok(pb::CancelMode::Terminate) => DispatchKind::Terminate,
            Err(_) => {
                return Err(Status::from(Error::invalid(
                    "mode",
                    format!("mode {} is not a CancelMode", r.mode),
                )));
            }
        };
        let run = runs::cancel(&self.0, &run_id, kind, &principal.name, &r.reason).await?;
        tracing::info!(run_id = %run.id, status = %run.status, mode = kind.as_str(), principal = %principal.name, "cancel requested");
        Ok(Response::new(pb::CancelRunResponse {
            run: Some(convert::run(&run)),
        }))
    }

    async fn retry_run(
        &self,
        req: Request<pb::RetryRunRequest>,
    ) -> Result<Response<pb::RetryRunResponse>, Status> {
        let principal = Principal::of(&req);
        let r = req.into_inner();
        let (run, _) =
            runs::retry_as(&self.0, &r.run_id, &r.idempotency_key, &principal.name).await?;
        Ok(Response::new(pb::RetryRunResponse {
            run: Some(convert::run(&run)),
        }))
    }

    async fn approve_run(
        &self,
        req: Request<pb::ApproveRunRequest>,
    ) -> Result<Response<pb::ApproveRunResponse>, Status> {
        let principal = Principal::of(&req);
        let r = req.into_inner();
        let decision = RunDecision {
            by: principal.name.clone(),
            approved: true,
            values: r.values.into_iter().collect(),
            reason: String::new(),
        };
        let run = decide_as(&self.0, &principal, &r.run_id, &r.node, decision).await?;
        Ok(Response::new(pb::ApproveRunResponse {
            run: Some(convert::run(&run)),
        }))
    }

    async fn reject_run(
        &self,
        req: Request<pb::RejectRunRequest>,
    ) -> Result<Response<pb::RejectRunResponse>, Status> {
        let principal = Principal::of(&req);
        let r = req.into_inner();
        let decision = RunDecision {
            by: principal.name.clone(),
            approved: false,
            values: Default::default(),
            reason: r.reason,
        };
        let run = decide_as(&self.0, &principal, &r.run_id, &r.node, decision).await?;
        Ok(Response::new(pb::RejectRunResponse {
            run: Some(convert::run(&run)),
        }))
    }

    async fn setup_guild(
        &self,
        req: Request<pb::SetupGuildRequest>,
    ) -> Result<Response<pb::SetupGuildResponse>, Status> {
        let principal = Principal::of(&req);
        let r = req.into_inner();
        convert::guild_id(&r.guild_id, false)?;
        let setup = guilds::setup(&self.0, &r.guild_id, &principal.name, r.reseed_policy).await?;
        Ok(Response::new(pb::SetupGuildResponse {
            guild: Some(convert::guild(&setup.guild)),
            policy: Some(convert::policy(&setup.policy)),
            policy_seeded: setup.policy_seeded,
        }))
    }

    async fn list_catalog(
        &self,
        _req: Request<pb::ListCatalogRequest>,
    ) -> Result<Response<pb::ListCatalogResponse>, Status> {
        Ok(Response::new(pb::ListCatalogResponse {
            commands: super::command::definitions(&self.0),
            problems: self.0.catalog.problems(),
            repairs: self.0.catalog.repairs(),
        }))
    }

    async fn prune(
        &self,
        req: Request<pb::PruneRequest>,
    ) -> Result<Response<pb::PruneResponse>, Status> {
        let principal = Principal::of(&req);
        let dry_run = req.into_inner().dry_run;
        let pruned = crate::service::history::prune(&self.0, dry_run).await?;
        tracing::info!(principal = %principal.name, dry_run, "retention pass asked for");
        Ok(Response::new(pb::PruneResponse {
            counts: pruned
                .by_kind()
                .into_iter()
                .map(|(kind, count)| pb::PrunedCount {
                    kind: kind.into(),
                    count,
                })
                .collect(),
            dry_run,
            windows: Retention::from_config(&self.0.config.retention).describe(),
        }))
    }

    async fn list_guilds(
        &self,
        req: Request<pb::ListGuildsRequest>,
    ) -> Result<Response<pb::ListGuildsResponse>, Status> {
        let only = req.into_inner().guild_id;
        convert::guild_id(&only, true)?;
        let listed = guilds::list(&self.0, (!only.is_empty()).then_some(only.as_str())).await?;
        Ok(Response::new(pb::ListGuildsResponse {
            guilds: listed.iter().map(convert::guild).collect(),
        }))
    }

    async fn get_policy(
        &self,
        req: Request<pb::GetPolicyRequest>,
    ) -> Result<Response<pb::GetPolicyResponse>, Status> {
        let guild = req.into_inner().guild_id;
        convert::guild_id(&guild, true)?;
        let p = policy::get(&self.0, &guild).await?;
        Ok(Response::new(pb::GetPolicyResponse {
            policy: Some(convert::policy(&p)),
        }))
    }

    async fn set_policy(
        &self,
        req: Request<pb::SetPolicyRequest>,
    ) -> Result<Response<pb::SetPolicyResponse>, Status> {
        let principal = Principal::of(&req);
        let r = req.into_inner();
        let p = r
            .policy
            .ok_or_else(|| Status::from(Error::invalid("policy", "policy is required")))?;
        let default = match pb::DefaultPolicy::try_from(p.default_policy) {
            Ok(pb::DefaultPolicy::Allow) => Some(DefaultPolicy::Allow),
            Ok(pb::DefaultPolicy::Deny) => Some(DefaultPolicy::Deny),
            // Unspecified keeps the default in force.
            Ok(pb::DefaultPolicy::Unspecified) => None,
            Err(_) => {
                return Err(Status::from(Error::invalid(
                    "policy.default_policy",
                    format!("default_policy {} is not a DefaultPolicy", p.default_policy),
                )));
            }
        };
        let change = policy::PolicyChange {
            guild_id: p.guild_id,
            commands: p
                .commands
                .into_iter()
                .map(|c| (c.command, c.role_ids))
                .collect(),
            quotas: p
                .quotas
                .into_iter()
                .map(|q| {
                    let quota = Quota {
                        max_concurrent: q.max_concurrent,
                        max_per_hour: q.max_per_hour,
                    };
                    (q.command, quota)
                })
                .collect(),
            default,
            expected_version: (r.expected_version != 0).then_some(r.expected_version),
        };
        let stored = policy::set(&self.0, change, &principal.name).await?;
        Ok(Response::new(pb::SetPolicyResponse {
            policy: Some(convert::policy(&stored)),
        }))
    }

    async fn list_dead_letters(
        &self,
        req: Request<pb::ListDeadLettersRequest>,
    ) -> Result<Response<pb::ListDeadLettersResponse>, Status> {
        let r = req.into_inner();
        let limit = page_size(r.page_size);
        let page =
            crate::service::dispatch::dead_letters(&self.0, limit, parse_cursor(&r.page_token)?)
                .await?;
        let next_page_token = page.next.map(|(t, id)| cursor(t, &id)).unwrap_or_default();
        let dead_letters = page
            .items
            .iter()
            .map(|(d, run)| pb::DeadLetter {
                dispatch_id: d.id.clone(),
                run: Some(convert::run(run)),
                attempts: d.attempts,
                last_error: d.last_error.clone(),
                dead_lettered_at: d.dead_lettered_at.map(convert::ts),
            })
            .collect();
        Ok(Response::new(pb::ListDeadLettersResponse {
            dead_letters,
            next_page_token,
        }))
    }

    async fn requeue_dead_letter(
        &self,
        req: Request<pb::RequeueDeadLetterRequest>,
    ) -> Result<Response<pb::RequeueDeadLetterResponse>, Status> {
        let principal = Principal::of(&req);
        let id = req.into_inner().dispatch_id;
        if uuid::Uuid::parse_str(&id).is_err() {
            return Err(Status::from(Error::invalid(
                "dispatch_id",
                format!("dispatch_id `{id}` is not a UUID"),
            )));
        }
        let run = runs::requeue(&self.0, &id, &principal.name).await?;
        tracing::info!(run_id = %run.id, dispatch_id = %id, principal = %principal.name, "dead letter requeued");
        Ok(Response::new(pb::RequeueDeadLetterResponse {
            run: Some(convert::run(&run)),
        }))
    }

    async fn list_sessions(
        &self,
        req: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        let guild = req.into_inner().guild_id;
        convert::guild_id(&guild, true)?;
        // The interaction token stays in the store: it is never returned.
        let out = sessions::list(&self.0, &guild)
            .await?
            .into_iter()
            .map(|s| pb::Session {
                interaction_id: s.interaction_id,
                run_id: s.run_id,
                guild_id: s.guild_id,
                channel_id: s.channel_id,
                user_id: s.user_id,
                expires_at: s.expires_at.map(convert::ts),
            })
            .collect();
        Ok(Response::new(pb::ListSessionsResponse { sessions: out }))
    }
}

/// An admin's decision on `run_id`'s waiting step (refused values audited in the admin trail).
async fn decide_as(
    state: &crate::state::AppState,
    principal: &Principal,
    run_id: &str,
    node: &str,
    decision: RunDecision,
) -> Result<crate::domain::Run, crate::domain::Error> {
    let run = runs::get(state, run_id).await?;
    let context = serde_json::json!({"run_id": run.id, "node": node, "principal": principal.name});
    runs::decide(state, &run, node, decision, &principal.name, "", context).await
}
