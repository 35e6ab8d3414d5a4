//! `facteurctl`: the admin CLI of the facteur control plane.

use clap::{Parser, Subcommand};
use facteur_client::{Client, ClientConfig, pb};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "facteurctl",
    version,
    about = "Administer a facteur control plane"
)]
struct Cli {
    /// gRPC URL of the server.
    #[arg(
        long,
        env = "FACTEUR_CONTROL_PLANE_URL",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    url: String,
    /// Bearer token of an admin principal.
    #[arg(
        long,
        env = "FACTEUR_CONTROL_PLANE_TOKEN",
        hide_env_values = true,
        default_value = "",
        global = true
    )]
    token: String,
    /// PEM CA to trust for an https:// URL.
    #[arg(long, env = "FACTEUR_CONTROL_PLANE_CA_FILE", global = true)]
    ca_file: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Server version and the health of each dependency; exits 1 when not ready.
    Status,
    /// The command catalog: each command, its options and where it comes from (the
    /// configuration, built in, or a labelled WorkflowTemplate), then the labelled templates
    /// that are not commands, and why.
    Commands,
    /// Start a run: `facteurctl run <command> key=value…`; or `facteurctl run get <id>`.
    #[command(args_conflicts_with_subcommands = true)]
    Run {
        #[command(subcommand)]
        sub: Option<RunSub>,
        /// Catalog command to run.
        command: Option<String>,
        /// Parameters as key=value.
        params: Vec<String>,
        /// Idempotency key (a replay returns the original run).
        #[arg(long)]
        key: Option<String>,
        /// Follow the run until it ends; exit 1 unless it succeeded.
        #[arg(long)]
        wait: bool,
    },
    /// Runs, newest first.
    Runs {
        /// Only this state (queued, dispatching, submitted, running, succeeded, failed, error, cancelled, dead_lettered).
        #[arg(long)]
        status: Option<String>,
        /// Only this command.
        #[arg(long)]
        command: Option<String>,
        /// Only this requester (principal or Discord user id).
        #[arg(long)]
        requester: Option<String>,
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Cancel a run (a running Workflow is stopped, or terminated with --terminate).
    Cancel {
        /// Run: its number (#1234), its id, or a unique prefix of the id (8+ characters).
        run_id: String,
        /// Terminate (exit handlers do not run) instead of Stop.
        #[arg(long)]
        terminate: bool,
        /// Why, for the audit trail.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Start a new run with the parameters of a finished one.
    Retry {
        /// Run: its number (#1234), its id, or a unique prefix of the id (8+ characters).
        run_id: String,
    },
    /// Approve the suspend step a run waits at: `facteurctl approve <run> [--node N] key=value…`
    /// (the values its output parameters ask for).
    Approve {
        /// Run: its number (#1234), its id, or a unique prefix of the id (8+ characters).
        run_id: String,
        /// The suspend node (id or display name); default: the one it waits at.
        #[arg(long, default_value = "")]
        node: String,
        /// Values as key=value.
        values: Vec<String>,
    },
    /// Reject the suspend step a run waits at: its Workflow stops and the run fails.
    Reject {
        /// Run: its number (#1234), its id, or a unique prefix of the id (8+ characters).
        run_id: String,
        /// The suspend node (id or display name); default: the one it waits at.
        #[arg(long, default_value = "")]
        node: String,
        /// Why.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Dispatches that exhausted their attempts.
    DeadLetters {
        /// How many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Put a dead-lettered dispatch back in the queue.
    Requeue {
        /// Dispatch id (from `dead-letters`).
        dispatch_id: String,
    },
    /// One retention pass now (`retention.*` of the server): deletes finished runs with their
    /// history and dispatches, old audit entries and (when configured) Codex task runs, and
    /// prints the counts per kind. Runs that are not final are never deleted.
    Prune {
        /// Only count what would be deleted.
        #[arg(long)]
        dry_run: bool,
    },
    /// Discord guilds: set one up for facteur's commands, or list them.
    Guild {
        #[command(subcommand)]
        sub: GuildSub,
    },
    /// A guild's quota for a command, live: `facteurctl quota set <guild> <command>
    /// [--max-concurrent N|none] [--max-per-hour N|none]` (no limit given: back to the
    /// configuration's). Usage is in `facteurctl status`.
    Quota {
        #[command(subcommand)]
        sub: QuotaSub,
    },
}

#[derive(Subcommand)]
enum QuotaSub {
    /// Set (or clear) one command's quota in one guild.
    Set {
        /// Guild id (snowflake).
        guild_id: String,
        /// Command name.
        command: String,
        /// Runs at once: a number, or `none` for no limit.
        #[arg(long)]
        max_concurrent: Option<String>,
        /// Runs per rolling hour: a number, or `none` for no limit.
        #[arg(long)]
        max_per_hour: Option<String>,
    },
}

#[derive(Subcommand)]
enum GuildSub {
    /// Seed the guild's role policy from the configuration and have the discord-adapter
    /// register the catalog's commands there; nothing restarts. Waits for the registration.
    Setup {
        /// Guild id (snowflake).
        guild_id: String,
        /// Replace a policy the guild already has with the configuration's.
        #[arg(long)]
        reseed_policy: bool,
        /// Seconds to wait for the discord-adapter's registration (0: do not wait).
        #[arg(long, default_value_t = 60)]
        wait_seconds: u64,
    },
    /// Guilds set up, and where their registration stands.
    List,
}

#[derive(Subcommand)]
enum RunSub {
    /// One run with its history.
    Get {
        /// Run: its number (#1234), its id, or a unique prefix of the id (8+ characters).
        run_id: String,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("facteurctl: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut cfg = ClientConfig::new(cli.url.clone()).with_token(cli.token);
    if let Some(path) = &cli.ca_file {
        cfg.ca_pem = Some(
            std::fs::read(path)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?,
        );
    }
    let client = Client::connect(cfg).await?;
    match cli.command {
        Command::Status => status(&client, &cli.url).await,
        Command::Commands => commands(&client).await,
        Command::Run {
            sub: Some(RunSub::Get { run_id }),
            ..
        } => get_run(&client, &run_id).await,
        Command::Run {
            sub: None,
            command: Some(command),
            params,
            key,
            wait,
        } => start_run(&client, command, &params, key, wait).await,
        Command::Run { .. } => Err(anyhow::anyhow!(
            "usage: facteurctl run <command> key=value… | facteurctl run get <id>"
        )),
        Command::Runs {
            status,
            command,
            requester,
            limit,
        } => list_runs(&client, status, command, requester, limit).await,
        Command::Prune { dry_run } => {
            let r = client
                .admin()
                .prune(pb::PruneRequest { dry_run })
                .await
                .map_err(status_err)?
                .into_inner();
            println!(
                "{} ({})",
                if r.dry_run { "would delete" } else { "deleted" },
                r.windows
            );
            for c in &r.counts {
                println!("{:<16} {}", c.kind, c.count);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Cancel {
            run_id,
            terminate,
            reason,
        } => {
            let mode = if terminate {
                pb::CancelMode::Terminate
            } else {
                pb::CancelMode::Stop
            };
            let req = pb::CancelRunRequest {
                run_id,
                mode: mode as i32,
                reason,
            };
            let run = client
                .admin()
                .cancel_run(req)
                .await
                .map_err(status_err)?
                .into_inner()
                .run
                .unwrap_or_default();
            println!("run {}: {}", run.id, status_name(run.status));
            Ok(ExitCode::SUCCESS)
        }
        Command::Approve {
            run_id,
            node,
            values,
        } => {
            let req = pb::ApproveRunRequest {
                run_id,
                node,
                values: key_values(&values)?,
            };
            let r = client.admin().approve_run(req).await;
            decided(
                r.map(|r| r.into_inner().run),
                "approved; the argo-adapter resumes it",
            )
        }
        Command::Reject {
            run_id,
            node,
            reason,
        } => {
            let req = pb::RejectRunRequest {
                run_id,
                node,
                reason,
            };
            let r = client.admin().reject_run(req).await;
            decided(
                r.map(|r| r.into_inner().run),
                "rejected; the argo-adapter stops its Workflow",
            )
        }
        Command::Retry { run_id } => {
            let req = pb::RetryRunRequest {
                run_id,
                idempotency_key: String::new(),
            };
            let run = client
                .admin()
                .retry_run(req)
                .await
                .map_err(status_err)?
                .into_inner()
                .run
                .unwrap_or_default();
            println!(
                "new run {} (retry of {}): {}",
                run.id,
                run.parent_run_id,
                status_name(run.status)
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::DeadLetters { limit } => dead_letters(&client, limit).await,
        Command::Guild {
            sub:
                GuildSub::Setup {
                    guild_id,
                    reseed_policy,
                    wait_seconds,
                },
        } => setup_guild(&client, guild_id, reseed_policy, wait_seconds).await,
        Command::Guild {
            sub: GuildSub::List,
        } => list_guilds(&client).await,
        Command::Quota {
            sub:
                QuotaSub::Set {
                    guild_id,
                    command,
                    max_concurrent,
                    max_per_hour,
                },
        } => set_quota(&client, guild_id, command, max_concurrent, max_per_hour).await,
        Command::Requeue { dispatch_id } => {
            let req = pb::RequeueDeadLetterRequest { dispatch_id };
            let run = client
                .admin()
                .requeue_dead_letter(req)
                .await
                .map_err(status_err)?
                .into_inner()
                .run
                .unwrap_or_default();
            println!("run {} requeued: {}", run.id, status_name(run.status));
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn status_err(e: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}: {}", code_name(e.code()), e.message())
}

/// `RUN_STATUS_DEAD_LETTERED` → `dead_lettered`.
fn status_name(s: i32) -> String {
    pb::RunStatus::try_from(s)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("RUN_STATUS_")
                .to_ascii_lowercase()
        })
        .unwrap_or_else(|_| s.to_string())
}

fn parse_status(s: &str) -> anyhow::Result<pb::RunStatus> {
    pb::RunStatus::from_str_name(&format!("RUN_STATUS_{}", s.to_ascii_uppercase()))
        .filter(|s| *s != pb::RunStatus::Unspecified)
        .ok_or_else(|| anyhow::anyhow!("unknown status `{s}`"))
}

fn ts(t: &Option<facteur_proto::Timestamp>) -> String {
    t.as_ref().map(|t| fmt_time(t.seconds)).unwrap_or_default()
}

/// `N` or `none`.
fn limit(flag: &str, v: &str) -> anyhow::Result<Option<u32>> {
    if v == "none" {
        return Ok(None);
    }
    v.parse()
        .map(Some)
        .map_err(|_| anyhow::anyhow!("--{flag} must be a number or `none` (got `{v}`)"))
}

async fn set_quota(
    client: &Client,
    guild_id: String,
    command: String,
    max_concurrent: Option<String>,
    max_per_hour: Option<String>,
) -> anyhow::Result<ExitCode> {
    let mut policy = client
        .admin()
        .get_policy(pb::GetPolicyRequest {
            guild_id: guild_id.clone(),
        })
        .await
        .map_err(status_err)?
        .into_inner()
        .policy
        .unwrap_or_default();
    policy.guild_id = guild_id.clone();
    policy.quotas.retain(|q| q.command != command);
    if max_concurrent.is_some() || max_per_hour.is_some() {
        policy.quotas.push(pb::CommandQuota {
            command: command.clone(),
            max_concurrent: max_concurrent
                .as_deref()
                .map(|v| limit("max-concurrent", v))
                .transpose()?
                .flatten(),
            max_per_hour: max_per_hour
                .as_deref()
                .map(|v| limit("max-per-hour", v))
                .transpose()?
                .flatten(),
        });
    }
    let expected_version = policy.version;
    let stored = client
        .admin()
        .set_policy(pb::SetPolicyRequest {
            policy: Some(policy),
            expected_version,
        })
        .await
        .map_err(status_err)?
        .into_inner()
        .policy
        .unwrap_or_default();
    let q = stored.quotas.iter().find(|q| q.command == command);
    let show = |v: Option<u32>| v.map_or_else(|| "no limit".to_string(), |n| n.to_string());
    match q {
        Some(q) => println!(
            "guild {guild_id}: /{command} at most {} at once, {} per hour (policy version {})",
            show(q.max_concurrent),
            show(q.max_per_hour),
            stored.version
        ),
        None => println!(
            "guild {guild_id}: /{command} follows the configuration's quota (policy version {})",
            stored.version
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// Says what became of a decision on a waiting step.
fn decided(answer: Result<Option<pb::Run>, tonic::Status>, what: &str) -> anyhow::Result<ExitCode> {
    let run = answer.map_err(status_err)?.unwrap_or_default();
    let node = run.approval.map(|a| a.node_name).unwrap_or_default();
    println!("run {}: `{node}` {what}", run.id);
    Ok(ExitCode::SUCCESS)
}

/// `key=value` arguments as a map.
fn key_values(args: &[String]) -> anyhow::Result<std::collections::HashMap<String, String>> {
    args.iter()
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| anyhow::anyhow!("`{p}` is not key=value"))
        })
        .collect()
}

async fn start_run(
    client: &Client,
    command: String,
    params: &[String],
    key: Option<String>,
    wait: bool,
) -> anyhow::Result<ExitCode> {
    let parameters = key_values(params)?;
    let req = pb::StartRunRequest {
        cluster: String::new(),
        command,
        parameters,
        idempotency_key: key.unwrap_or_default(),
    };
    let resp = client
        .admin()
        .start_run(req)
        .await
        .map_err(status_err)?
        .into_inner();
    let run = resp.run.unwrap_or_default();
    let target = run.target.clone().unwrap_or_default();
    println!(
        "run {}{}: {} (workflow {}/{})",
        run.id,
        if resp.duplicate {
            " (already accepted)"
        } else {
            ""
        },
        status_name(run.status),
        target.namespace,
        target.workflow_name
    );
    if !wait {
        return Ok(ExitCode::SUCCESS);
    }
    let mut last = run.status;
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let r = client
            .admin()
            .get_run(pb::GetRunRequest {
                run_id: run.id.clone(),
            })
            .await
            .map_err(status_err)?
            .into_inner();
        let r = r.run.unwrap_or_default();
        if r.status != last {
            println!(
                "{}  {}{}",
                status_name(r.status),
                r.progress,
                if r.message.is_empty() {
                    String::new()
                } else {
                    format!("  {}", r.message)
                }
            );
            last = r.status;
        }
        let s = pb::RunStatus::try_from(r.status).unwrap_or(pb::RunStatus::Unspecified);
        match s {
            pb::RunStatus::Succeeded => return Ok(ExitCode::SUCCESS),
            pb::RunStatus::Failed
            | pb::RunStatus::Error
            | pb::RunStatus::Cancelled
            | pb::RunStatus::DeadLettered => {
                return Ok(ExitCode::FAILURE);
            }
            _ => {}
        }
    }
}

async fn setup_guild(
    client: &Client,
    guild_id: String,
    reseed_policy: bool,
    wait_seconds: u64,
) -> anyhow::Result<ExitCode> {
    let r = client
        .admin()
        .setup_guild(pb::SetupGuildRequest {
            guild_id: guild_id.clone(),
            reseed_policy,
        })
        .await
        .map_err(status_err)?
        .into_inner();
    let guild = r.guild.unwrap_or_default();
    let policy = r.policy.unwrap_or_default();
    let default = pb::DefaultPolicy::try_from(policy.default_policy)
        .map(|d| {
            d.as_str_name()
                .trim_start_matches("DEFAULT_POLICY_")
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    println!(
        "guild {guild_id}: policy {} (version {}, {} command rules, default {default})",
        if r.policy_seeded {
            "seeded from the configuration"
        } else {
            "kept as it was"
        },
        policy.version,
        policy.commands.len(),
    );
    if wait_seconds == 0 {
        println!(
            "guild {guild_id}: command registration requested (generation {})",
            guild.generation
        );
        return Ok(ExitCode::SUCCESS);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(wait_seconds);
    loop {
        let now = client
            .admin()
            .list_guilds(pb::ListGuildsRequest {
                guild_id: guild_id.clone(),
            })
            .await
            .map_err(status_err)?
            .into_inner()
            .guilds
            .pop()
            .unwrap_or_default();
        if now.registered_generation >= guild.generation {
            println!(
                "guild {guild_id}: {} commands registered",
                now.registered_commands
            );
            return Ok(ExitCode::SUCCESS);
        }
        if now.generation == guild.generation && !now.registration_error.is_empty() {
            eprintln!(
                "guild {guild_id}: registration failed: {}\n(the discord-adapter tries again; `facteurctl guild list` shows the outcome)",
                now.registration_error
            );
            return Ok(ExitCode::FAILURE);
        }
        if std::time::Instant::now() >= deadline {
            eprintln!(
                "guild {guild_id}: no discord-adapter registered the commands within {wait_seconds} s; is one running? The request stays pending and is taken when one connects."
            );
            return Ok(ExitCode::FAILURE);
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

async fn list_guilds(client: &Client) -> anyhow::Result<ExitCode> {
    let guilds = client
        .admin()
        .list_guilds(pb::ListGuildsRequest::default())
        .await
        .map_err(status_err)?
        .into_inner()
        .guilds;
    println!(
        "{:<20}  {:<10}  {:<20}  {:<20}  {:<8}  STATE",
        "GUILD", "GENERATION", "SET UP", "REGISTERED", "COMMANDS"
    );
    for g in guilds {
        let state = if g.registered_generation >= g.generation {
            "registered".to_string()
        } else if !g.registration_error.is_empty() {
            format!("failed: {}", g.registration_error)
        } else {
            "pending".to_string()
        };
        println!(
            "{:<20}  {:<10}  {:<20}  {:<20}  {:<8}  {state}",
            g.guild_id,
            g.generation,
            ts(&g.requested_at),
            ts(&g.registered_at),
            g.registered_commands,
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn get_run(client: &Client, run_id: &str) -> anyhow::Result<ExitCode> {
    let r = client
        .admin()
        .get_run(pb::GetRunRequest {
            run_id: run_id.into(),
        })
        .await
        .map_err(status_err)?
        .into_inner();
    let run = r.run.unwrap_or_default();
    let target = run.target.clone().unwrap_or_default();
    let req = run.requester.clone().unwrap_or_default();
    let params: Vec<String> = run
        .parameters
        .iter()
        .map(|p| format!("{}={}", p.name, p.value))
        .collect();
    let rows = vec![
        vec!["id".to_string(), run.id.clone()],
        vec!["number".into(), format!("#{}", run.number)],
        vec!["status".into(), status_name(run.status)],
        vec!["command".into(), run.command.clone()],
        vec![
            "requester".into(),
            if req.discord_user_id.is_empty() {
                req.principal.clone()
            } else {
                req.discord_user_id.clone()
            },
        ],
        vec!["template".into(), target.workflow_template.clone()],
        vec![
            "workflow".into(),
            format!("{}/{}", target.namespace, target.workflow_name),
        ],
        vec!["uid".into(), run.workflow_uid.clone()],
        vec!["parameters".into(), params.join(" ")],
        vec!["progress".into(), run.progress.clone()],
        vec!["message".into(), run.message.clone()],
        vec!["attempts".into(), run.attempts.to_string()],
        vec!["retry of".into(), run.parent_run_id.clone()],
        vec!["created".into(), ts(&run.created_at)],
        vec!["started".into(), ts(&run.started_at)],
        vec!["finished".into(), ts(&run.finished_at)],
    ];
    print!("{}", table(&["FIELD", "VALUE"], &rows));
    println!();
    let events: Vec<Vec<String>> = r
        .events
        .iter()
        .map(|e| {
            vec![
                e.sequence.to_string(),
                ts(&e.time),
                e.actor.clone(),
                e.kind.clone(),
                format!(
                    "{} -> {}",
                    status_name(e.from_status),
                    status_name(e.to_status)
                ),
                e.payload_json.clone(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &["SEQ", "TIME", "ACTOR", "EVENT", "STATE", "DETAILS"],
            &events
        )
    );
    Ok(ExitCode::SUCCESS)
}

async fn list_runs(
    client: &Client,
    status: Option<String>,
    command: Option<String>,
    requester: Option<String>,
    limit: u32,
) -> anyhow::Result<ExitCode> {
    let status = status
        .map(|s| parse_status(&s))
        .transpose()?
        .map_or(0, |s| s as i32);
    let req = pb::ListRunsRequest {
        status,
        command: command.unwrap_or_default(),
        requester: requester.unwrap_or_default(),
        page_size: limit,
        ..Default::default()
    };
    let runs = client
        .admin()
        .list_runs(req)
        .await
        .map_err(status_err)?
        .into_inner()
        .runs;
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            let req = r.requester.clone().unwrap_or_default();
            vec![
                r.id.clone(),
                status_name(r.status),
                r.command.clone(),
                if req.discord_user_id.is_empty() {
                    req.principal
                } else {
                    req.discord_user_id
                },
                r.target
                    .as_ref()
                    .map(|t| t.workflow_name.clone())
                    .unwrap_or_default(),
                ts(&r.created_at),
                format!("#{}", r.number),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "RUN",
                "STATUS",
                "COMMAND",
                "REQUESTER",
                "WORKFLOW",
                "CREATED",
                "NUMBER"
            ],
            &rows
        )
    );
    Ok(ExitCode::SUCCESS)
}

async fn dead_letters(client: &Client, limit: u32) -> anyhow::Result<ExitCode> {
    let req = pb::ListDeadLettersRequest {
        page_size: limit,
        page_token: String::new(),
    };
    let dl = client
        .admin()
        .list_dead_letters(req)
        .await
        .map_err(status_err)?
        .into_inner()
        .dead_letters;
    let rows: Vec<Vec<String>> = dl
        .iter()
        .map(|d| {
            let run = d.run.clone().unwrap_or_default();
            vec![
                d.dispatch_id.clone(),
                run.id,
                run.command,
                d.attempts.to_string(),
                ts(&d.dead_lettered_at),
                d.last_error.clone(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "DISPATCH",
                "RUN",
                "COMMAND",
                "ATTEMPTS",
                "DEAD-LETTERED",
                "ERROR"
            ],
            &rows
        )
    );
    Ok(ExitCode::SUCCESS)
}

/// The rule a free-text option's values follow, as `facteurctl commands` shows it: its choices,
/// its pattern (with the hint), or where the template interpolates it into a shell (then no
/// shell metacharacters); `None` for other types.
fn option_rule(o: &pb::CommandOption) -> Option<String> {
    if o.r#type != pb::OptionType::String as i32 {
        return None;
    }
    let length = o
        .max_length
        .map_or(String::new(), |m| format!(", at most {m} characters"));
    Some(if !o.choices.is_empty() {
        "one of its choices".to_string()
    } else if !o.pattern.is_empty() {
        let hint = if o.pattern_hint.is_empty() {
            String::new()
        } else {
            format!(" ({})", o.pattern_hint)
        };
        let used = if o.interpolated_in.is_empty() {
            String::new()
        } else {
            format!("; used in {}", o.interpolated_in.join(", "))
        };
        format!("pattern `{}`{hint}{used}{length}", o.pattern)
    } else if !o.interpolated_in.is_empty() {
        format!(
            "shell-restricted (no quotes ; | & $ ` < > ( ) \\ or line breaks): used in {}{length}",
            o.interpolated_in.join(", ")
        )
    } else {
        format!("free text (no `{{{{`, no control characters){length}")
    })
}

async fn commands(client: &Client) -> anyhow::Result<ExitCode> {
    let c = client
        .admin()
        .list_catalog(pb::ListCatalogRequest {})
        .await
        .map_err(status_err)?
        .into_inner();
    let rows: Vec<Vec<String>> = c
        .commands
        .iter()
        .map(|d| {
            let options: Vec<String> = d
                .options
                .iter()
                .map(|o| {
                    let mut s = o.name.clone();
                    if !o.choices.is_empty() {
                        let values: Vec<&str> =
                            o.choices.iter().map(|c| c.value.as_str()).collect();
                        s.push_str(&format!("={}", values.join("|")));
                    }
                    if !o.required {
                        s = format!("[{s}]");
                    }
                    s
                })
                .collect();
            vec![
                format!("/{}", d.name),
                d.source.clone(),
                options.join(" "),
                d.description.clone(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(&["COMMAND", "SOURCE", "OPTIONS", "DESCRIPTION"], &rows)
    );
    // What each free-text option accepts beyond its type: where a refused value's reason is.
    let rules: Vec<Vec<String>> = c
        .commands
        .iter()
        .flat_map(|d| {
            d.options.iter().filter_map(move |o| {
                let rule = option_rule(o)?;
                Some(vec![format!("/{}", d.name), o.name.clone(), rule])
            })
        })
        .collect();
    if !rules.is_empty() {
        println!();
        print!("{}", table(&["COMMAND", "OPTION", "RULE"], &rules));
    }
    // Who approves and the quotas, each rule with where it comes from.
    let policy: Vec<Vec<String>> = c
        .commands
        .iter()
        .filter_map(|d| Some((d, d.rules.as_ref()?)))
        .flat_map(|(d, r)| policy_rows(&d.name, r))
        .collect();
    if !policy.is_empty() {
        println!();
        print!(
            "{}",
            table(&["COMMAND", "POLICY", "VALUE", "FROM"], &policy)
        );
    }
    if !c.problems.is_empty() || !c.repairs.is_empty() {
        println!();
        for p in &c.problems {
            println!("not a command: {p}");
        }
        for r in &c.repairs {
            println!("repaired: {r}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The rows of `facteurctl commands`' policy table for one command: each rule it sets, with
/// where it comes from, and each supplied value's pattern.
fn policy_rows(command: &str, r: &pb::CommandRules) -> Vec<Vec<String>> {
    let from = |rule: &str| r.sources.get(rule).cloned().unwrap_or_default();
    let mut rows = Vec::new();
    let mut row = |rule: &str, value: String, source: String| {
        rows.push(vec![format!("/{command}"), rule.to_string(), value, source]);
    };
    if !r.approvers.is_empty() {
        let roles: Vec<String> = r.approvers.iter().map(|a| format!("role {a}")).collect();
        row("approvers", roles.join(", "), from("approvers"));
    }
    if r.require_second_person {
        row(
            "require_second_person",
            "true".into(),
            from("require_second_person"),
        );
    }
    if let Some(n) = r.max_concurrent {
        row("max_concurrent", n.to_string(), from("max_concurrent"));
    }
    if let Some(n) = r.max_per_hour {
        row("max_per_hour", n.to_string(), from("max_per_hour"));
    }
    for (name, v) in &r.approval_values {
        let value = if v.pattern_hint.is_empty() {
            format!("pattern {}", v.pattern)
        } else {
            format!("pattern {} ({})", v.pattern, v.pattern_hint)
        };
        row(
            &format!("approval_values.{name}"),
            value,
            from(&format!("approval_values.{name}")),
        );
    }
    rows
}

async fn status(client: &Client, url: &str) -> anyhow::Result<ExitCode> {
    let s = client
        .admin()
        .get_status(pb::GetStatusRequest {})
        .await
        .map_err(|e| anyhow::anyhow!("{}: {}", code_name(e.code()), e.message()))?
        .into_inner();
    let since = s
        .started_at
        .map(|t| format!(", up since {}", fmt_time(t.seconds)))
        .unwrap_or_default();
    println!(
        "facteur {} at {url}: {}{since}",
        s.version,
        if s.ready { "ready" } else { "NOT READY" }
    );
    let rows: Vec<Vec<String>> = s
        .dependencies
        .iter()
        .map(|d| {
            vec![
                d.name.clone(),
                d.backend.clone(),
                if d.healthy { "yes".into() } else { "NO".into() },
                format!("{:.1} ms", d.latency_ms),
                d.message.clone(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &["DEPENDENCY", "BACKEND", "HEALTHY", "LATENCY", "MESSAGE"],
            &rows
        )
    );
    println!();
    if s.adapters.is_empty() {
        println!("no argo-adapter connected");
    } else {
        let rows: Vec<Vec<String>> = s
            .adapters
            .iter()
            .map(|a| {
                vec![
                    a.adapter_id.clone(),
                    a.namespaces.join(","),
                    format!("{}/{}", a.in_flight, a.max_in_flight),
                    a.connected_at
                        .as_ref()
                        .map_or_else(String::new, |t| fmt_time(t.seconds)),
                ]
            })
            .collect();
        print!(
            "{}",
            table(&["ADAPTER", "NAMESPACES", "IN-FLIGHT", "SINCE"], &rows)
        );
    }
    for p in &s.catalog_problems {
        println!("catalog: not a command: {p}");
    }
    for r in &s.catalog_repairs {
        println!("catalog: repaired: {r}");
    }
    if !s.registrations.is_empty() {
        println!();
        let rows: Vec<Vec<String>> = s
            .registrations
            .iter()
            .map(|r| {
                vec![
                    r.scope.clone(),
                    if r.ok {
                        format!("ok ({} commands)", r.commands)
                    } else {
                        format!("FAILING ({} in a row)", r.failures)
                    },
                    r.registered_at
                        .as_ref()
                        .map_or_else(|| "never".into(), |t| fmt_time(t.seconds)),
                    match (r.ok, r.discord_code) {
                        (true, _) => String::new(),
                        (false, 0) => r.error.clone(),
                        (false, code) => format!("Discord {code}: {}", r.error),
                    },
                ]
            })
            .collect();
        print!(
            "{}",
            table(&["REGISTRATION", "STATE", "LAST SUCCESS", "ERROR"], &rows)
        );
    }
    if !s.quota_usage.is_empty() {
        println!();
        let of = |n: u64, max: Option<u32>| match max {
            Some(m) => format!("{n}/{m}"),
            None => n.to_string(),
        };
        let rows: Vec<Vec<String>> = s
            .quota_usage
            .iter()
            .map(|u| {
                vec![
                    u.guild_id.clone(),
                    format!("/{}", u.command),
                    of(u.active, u.max_concurrent),
                    match u.max_per_hour {
                        Some(_) => of(u.last_hour, u.max_per_hour),
                        None => "-".into(),
                    },
                ]
            })
            .collect();
        print!(
            "{}",
            table(&["GUILD", "COMMAND", "RUNNING", "LAST HOUR"], &rows)
        );
    }
    if !s.unserved_namespaces.is_empty() {
        println!();
        let rows: Vec<Vec<String>> = s
            .unserved_namespaces
            .iter()
            .map(|u| {
                vec![
                    u.namespace.clone(),
                    u.queued_runs.to_string(),
                    u.oldest_queued_at
                        .as_ref()
                        .map_or_else(|| "-".into(), |t| fmt_time(t.seconds)),
                    if u.configured {
                        "configured".into()
                    } else {
                        "old runs only".into()
                    },
                ]
            })
            .collect();
        print!(
            "{}",
            table(
                &["UNSERVED NAMESPACE", "QUEUED RUNS", "OLDEST", "WHY"],
                &rows
            )
        );
    }
    Ok(if s.ready {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `InvalidArgument` → `INVALID_ARGUMENT`, as gRPC names its codes.
fn code_name(c: tonic::Code) -> String {
    let mut out = String::new();
    for (i, ch) in format!("{c:?}").chars().enumerate() {
        if ch.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(ch.to_ascii_uppercase());
    }
    out
}

fn fmt_time(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0).map_or_else(
        || unix.to_string(),
        |t| t.format("%Y-%m-%d %H:%M:%SZ").to_string(),
    )
}

/// Left-aligned columns separated by two spaces.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect::<Vec<_>>()
            .join("  ");
        s.truncate(s.trim_end().len());
        s.push('\n');
        s
    };
    let mut out = line(headers.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_tables() {
        assert_eq!(fmt_time(0), "1970-01-01 00:00:00Z");
        assert_eq!(fmt_time(1_795_392_000), "2026-11-23 00:00:00Z");
        let t = table(&["A", "BB"], &[vec!["xxx".into(), "y".into()]]);
        assert_eq!(t, "A    BB\nxxx  y\n");
    }
}
