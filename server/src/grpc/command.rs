//! `facteur.v1.CommandService`: Discord commands and buttons, decided on the server. The
//! discord-adapter only translates; permission, validation and state are here.

use super::{BoxStream, card, convert};
use crate::domain::run::{Run, RunSource};
use crate::domain::{Error, Result};
use crate::service::discord::{self, Builtin, Button, Clicked, Interaction};
use crate::service::{runs, sessions};
use crate::state::AppState;
use crate::store::feed::FeedCursor;
use facteur_config::is_snowflake;
use facteur_proto::v1 as pb;
use pb::command_service_server::CommandService;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status};

/// `facteur.v1.CommandService`.
#[derive(Clone)]
pub struct CommandApi(pub Arc<AppState>);

impl CommandApi {
    /// A run's card, linked to the Argo UI when one is configured.
    fn card(&self, run: &Run, ephemeral: bool) -> pb::Reply {
        card::run_card(
            run,
            &self.0.config.argo.ui_base_url,
            chrono::Utc::now(),
            ephemeral,
        )
    }
}

pub use crate::service::discord::BUILTINS;

fn option_type(kind: &str) -> pb::OptionType {
    match kind {
        "integer" => pb::OptionType::Integer,
        "number" => pb::OptionType::Number,
        "boolean" => pb::OptionType::Boolean,
        "user" => pb::OptionType::User,
        "channel" => pb::OptionType::Channel,
        "role" => pb::OptionType::Role,
        _ => pb::OptionType::String,
    }
}

fn run_option(required: bool, description: &str) -> pb::CommandOption {
    pb::CommandOption {
        name: "run".into(),
        description: description.into(),
        r#type: pb::OptionType::String as i32,
        required,
        ..Default::default()
    }
}

/// The catalog as Discord registers it, built-ins last.
pub fn definitions(state: &AppState) -> Vec<pb::CommandDefinition> {
    let mut out: Vec<pb::CommandDefinition> = state
        .catalog
        .commands()
        .iter()
        .map(|c| pb::CommandDefinition {
            name: c.name.clone(),
            description: c.description.clone(),
            options: c
                .options
                .iter()
                .map(|o| pb::CommandOption {
                    name: o.name.clone(),
                    description: if o.description.is_empty() {
                        o.name.clone()
                    } else {
                        o.description.clone()
                    },
                    r#type: option_type(&o.kind) as i32,
                    required: o.required,
                    choices: o
                        .choices
                        .iter()
                        .map(|c| pb::OptionChoice {
                            name: c.name.clone(),
                            value: c.value.clone(),
                        })
                        .collect(),
                    min_value: o.min_value,
                    max_value: o.max_value,
                    min_length: o.min_length,
                    // The bound the server holds a value to, so that Discord's client says
                    // it first (`input.max_value_length` where the option sets none).
                    max_length: state.catalog.max_length(o),
                    autocomplete: o.autocomplete,
                    pattern: o.pattern.clone(),
                    pattern_hint: o.pattern_hint.clone(),
                    interpolated_in: o.interpolated_in.clone(),
                })
                .collect(),
            ephemeral: c.ephemeral,
            source: state.catalog.source_of(&c.name),
            rules: Some(pb::CommandRules {
                approvers: c.approvers.clone(),
                require_second_person: c.require_second_person,
                max_concurrent: c.max_concurrent,
                max_per_hour: c.max_per_hour,
                sources: state
                    .catalog
                    .policy_sources(&c.name)
                    .into_iter()
                    .chain(c.approval_values.keys().map(|k| {
                        let from = if state.catalog.source_of(&c.name) == "configuration" {
                            "configuration".to_string()
                        } else {
                            format!(
                                "annotation {}{k}",
                                crate::domain::templates::PATTERN_ANNOTATION_PREFIX
                            )
                        };
                        (format!("approval_values.{k}"), from)
                    }))
                    .collect(),
                approval_values: c
                    .approval_values
                    .iter()
                    .map(|(k, r)| {
                        (
                            k.clone(),
                            pb::ValueRule {
                                pattern: r.pattern.clone(),
                                pattern_hint: r.pattern_hint.clone(),
                            },
                        )
                    })
                    .collect(),
            }),
            modal: c.modal.as_ref().map(|m| pb::Modal {
                custom_id: format!("modal:{}", c.name),
                title: m.title.clone(),
                inputs: m
                    .inputs
                    .iter()
                    .map(|i| {
                        let option = c.options.iter().find(|o| o.name == i.name);
                        pb::ModalInput {
                            custom_id: i.name.clone(),
                            label: i.label.clone(),
                            paragraph: i.paragraph,
                            required: option.is_some_and(|o| o.required),
                            min_length: option.and_then(|o| o.min_length),
                            max_length: option
                                .and_then(|o| state.catalog.max_length(o))
                                .map(|m| m.min(facteur_config::discord::TEXT_INPUT_MAX)),
                            placeholder: i.placeholder.clone(),
                        }
                    })
                    .collect(),
            }),
            ..Default::default()
        })
        .collect();
    for (name, description, options) in [
        (
            "status",
            "Show a run's status (default: your latest run)",
            vec![run_option(false, "Run id")],
        ),
        ("runs", "List your recent runs", vec![]),
        ("cancel", "Cancel a run", vec![run_option(true, "Run id")]),
    ] {
        out.push(pb::CommandDefinition {
            name: name.into(),
            description: description.into(),
            options,
            ephemeral: true,
            builtin: true,
            source: "built-in".into(),
            ..Default::default()
        });
    }
    out
}

/// The interaction of a request, checked.
pub(crate) fn ctx(c: Option<pb::InteractionContext>) -> Result<Interaction> {
    let c = c.ok_or_else(|| Error::invalid("context", "context is required"))?;
    Interaction {
        interaction_id: c.interaction_id,
        application_id: c.application_id,
        token: c.token,
        guild_id: c.guild_id,
        channel_id: c.channel_id,
        user_id: c.user_id,
        user_name: c.user_name,
        role_ids: c.role_ids,
        locale: c.locale,
        field_prefix: "context.",
    }
    .validate()
}

#[tonic::async_trait]
impl CommandService for CommandApi {
    async fn list_commands(
        &self,
        req: Request<pb::ListCommandsRequest>,
    ) -> Result<Response<pb::ListCommandsResponse>, Status> {
        let guild = req.into_inner().guild_id;
        convert::guild_id(&guild, true)?;
        Ok(Response::new(pb::ListCommandsResponse {
            commands: definitions(&self.0),
        }))
    }

    async fn invoke(
        &self,
        req: Request<pb::InvokeRequest>,
    ) -> Result<Response<pb::InvokeResponse>, Status> {
        let r = req.into_inner();
        let c = ctx(r.context)?;
        let modal_submit = match pb::InvocationKind::try_from(r.kind) {
            Ok(pb::InvocationKind::SlashCommand) => false,
            Ok(pb::InvocationKind::ModalSubmit) => true,
            _ => {
                return Err(Status::from(Error::invalid(
                    "kind",
                    "kind must be SLASH_COMMAND or MODAL_SUBMIT",
                )));
            }
        };
        if modal_submit && let Some(run_id) = r.modal_custom_id.strip_prefix("approve:") {
            // The values a suspend step asked for: approve with them.
            let values: BTreeMap<String, String> = r.modal_values.into_iter().collect();
            let run = discord::approve_with_values(&self.0, &c, run_id, values).await?;
            // The modal was opened from the run's card: the answer edits that card in place.
            return Ok(Response::new(pb::InvokeResponse {
                reply: Some(self.card(&run, false)),
                run: Some(convert::run(&run)),
                update_message: true,
                ..Default::default()
            }));
        }
        let command = if modal_submit {
            r.modal_custom_id
                .strip_prefix("modal:")
                .ok_or_else(|| {
                    Status::from(Error::invalid(
                        "modal_custom_id",
                        format!("modal_custom_id `{}` is not one of ours", r.modal_custom_id),
                    ))
                })?
                .to_string()
        } else {
            r.command.clone()
        };
        let mut options = BTreeMap::new();
        if modal_submit {
            options.extend(r.modal_values);
        } else {
            for o in r.options {
                if options.insert(o.name.clone(), o.value).is_some() {
                    return Err(Status::from(Error::invalid(
                        "options",
                        format!("option `{}` given twice", o.name),
                    )));
                }
            }
        }
        let r = pb::InvokeRequest {
            command,
            ..Default::default()
        };
        // Permission first: nobody sees a modal for a command they may not run.
        discord::authorize(&self.0, &c, &r.command).await?;
        if BUILTINS.contains(&r.command.as_str()) {
            let reply = match discord::builtin(&self.0, &c, &r.command, &options).await? {
                Builtin::Run(run) => self.card(&run, true),
                Builtin::Runs(runs) => card::runs_list(&runs),
            };
            return Ok(Response::new(pb::InvokeResponse {
                reply: Some(reply),
                ..Default::default()
            }));
        }
        if !modal_submit
            && let Some(modal) = definitions(&self.0)
                .into_iter()
                .find(|d| d.name == r.command)
                .and_then(|d| d.modal)
        {
            return Ok(Response::new(pb::InvokeResponse {
                modal: Some(modal),
                ..Default::default()
            }));
        }
        let ephemeral = self
            .0
            .catalog
            .commands()
            .iter()
            .any(|cmd| cmd.name == r.command && cmd.ephemeral);
        let (run, duplicate) =
            discord::start(&self.0, &c, &r.command, &options, RunSource::Discord).await?;
        Ok(Response::new(pb::InvokeResponse {
            reply: Some(self.card(&run, ephemeral)),
            modal: None,
            run: Some(convert::run(&run)),
            duplicate,
            update_message: false,
        }))
    }

    async fn autocomplete(
        &self,
        req: Request<pb::AutocompleteRequest>,
    ) -> Result<Response<pb::AutocompleteResponse>, Status> {
        let r = req.into_inner();
        let c = ctx(r.context)?;
        // Suggestions only for what the member may run; otherwise none (the run is refused anyway).
        if !discord::may_run(&self.0, &c, &r.command).await? {
            return Ok(Response::new(pb::AutocompleteResponse::default()));
        }
        let partial = r.partial_value.to_lowercase();
        let mut choices = Vec::new();
        if r.focused_option == "run" && BUILTINS.contains(&r.command.as_str()) {
            for run in discord::own_runs(&self.0, &c, 25).await? {
                let number = run.number.to_string();
                if run.id.starts_with(&partial)
                    || number.starts_with(partial.trim_start_matches('#'))
                    || run.command.contains(&partial)
                {
                    choices.push(pb::OptionChoice {
                        name: format!("{} /{} {}", card::handle(&run), run.command, run.status),
                        value: run.id,
                    });
                }
            }
        } else if let Some(option) = self
            .0
            .catalog
            .commands()
            .iter()
            .find(|cmd| cmd.name == r.command)
            .and_then(|cmd| cmd.options.iter().find(|o| o.name == r.focused_option))
        {
            for ch in &option.choices {
                if ch.name.to_lowercase().contains(&partial)
                    || ch.value.to_lowercase().contains(&partial)
                {
                    choices.push(pb::OptionChoice {
                        name: ch.name.clone(),
                        value: ch.value.clone(),
                    });
                }
            }
        }
        choices.truncate(25);
        Ok(Response::new(pb::AutocompleteResponse { choices }))
    }

    async fn interact(
        &self,
        req: Request<pb::InteractRequest>,
    ) -> Result<Response<pb::InteractResponse>, Status> {
        let r = req.into_inner();
        let c = ctx(r.context)?;
        let (button, run_id) = Button::parse(&r.custom_id)?;
        Ok(Response::new(
            match discord::click(&self.0, &c, button, run_id).await? {
                Clicked::Run(run, update) => pb::InteractResponse {
                    reply: Some(self.card(&run, false)),
                    run: Some(convert::run(&run)),
                    update_message: update,
                    modal: None,
                },
                Clicked::AskValues(run) => pb::InteractResponse {
                    modal: card::approval_modal(&run),
                    run: Some(convert::run(&run)),
                    ..Default::default()
                },
            },
        ))
    }

    async fn record_run_message(
        &self,
        req: Request<pb::RecordRunMessageRequest>,
    ) -> Result<Response<pb::RecordRunMessageResponse>, Status> {
        let r = req.into_inner();
        runs::check_id(&r.run_id)?;
        if !is_snowflake(&r.channel_id) || !is_snowflake(&r.message_id) {
            return Err(Status::from(Error::invalid(
                "channel_id",
                "channel_id and message_id must be snowflakes",
            )));
        }
        let run = runs::get(&self.0, &r.run_id).await?;
        if run.requester.guild_id.is_empty() {
            return Err(Status::from(Error::FailedPrecondition(
                "the run did not come from Discord".into(),
            )));
        }
        let message = sessions::RunMessage {
            channel_id: r.channel_id,
            message_id: r.message_id,
        };
        sessions::record_message(&self.0, &r.run_id, &message).await?;
        Ok(Response::new(pb::RecordRunMessageResponse {}))
    }

    type WatchGuildsStream = BoxStream<pb::WatchGuildsResponse>;
    async fn watch_guilds(
        &self,
        req: Request<pb::WatchGuildsRequest>,
    ) -> Result<Response<Self::WatchGuildsStream>, Status> {
        let notices = req.into_inner().catalog_notices;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(guild_loop(self.0.clone(), notices, tx));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn report_guild_registration(
        &self,
        req: Request<pb::ReportGuildRegistrationRequest>,
    ) -> Result<Response<pb::ReportGuildRegistrationResponse>, Status> {
        let r = req.into_inner();
        // Generation 0: the adapter's own scope (its configured guild, or global commands).
        convert::guild_id(&r.guild_id, r.generation == 0)?;
        if r.generation < 0 {
            return Err(Status::from(Error::invalid(
                "generation",
                "generation must be one from WatchGuilds (≥ 1), or 0 for the adapter's own scope",
            )));
        }
        let error: String = r.error.chars().take(2000).collect();
        let scope = if r.guild_id.is_empty() {
            "global"
        } else {
            r.guild_id.as_str()
        };
        // A set-up guild first: a report naming a guild never set up is refused and records
        // nothing.
        let guild = if r.generation >= 1 {
            let g = self
                .0
                .store
                .report_guild_registration(&r.guild_id, r.generation, r.commands, &error)
                .await?;
            Some(convert::guild(&g))
        } else {
            None
        };
        self.0
            .store
            .record_registration(
                scope,
                i64::try_from(r.catalog_version).unwrap_or(i64::MAX),
                r.commands,
                &error,
                r.discord_code,
            )
            .await?;
        if error.is_empty() {
            tracing::info!(
                scope,
                generation = r.generation,
                commands = r.commands,
                "discord commands registered"
            );
        } else {
            self.0.metrics.add(
                crate::metrics::Metric::DiscordRegistrationFailures,
                vec![("scope", scope.to_string())],
                1,
            );
            tracing::warn!(scope, generation = r.generation, discord_code = r.discord_code, error = %error, "discord command registration failed");
        }
        Ok(Response::new(pb::ReportGuildRegistrationResponse { guild }))
    }

    type WatchRunsStream = BoxStream<pb::WatchRunsResponse>;
    async fn watch_runs(
        &self,
        req: Request<pb::WatchRunsRequest>,
    ) -> Result<Response<Self::WatchRunsStream>, Status> {
        let cursor = req.into_inner().cursor;
        let start = if cursor.is_empty() {
            self.0.store.feed_now().await?
        } else {
            cursor.parse::<FeedCursor>()?
        };
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(watch_loop(self.0.clone(), start, tx));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// Longest wait between two looks at the change feed (changes on other replicas, expirations).
const WATCH_RECHECK: Duration = Duration::from_millis(500);

/// Where a run is shown: the interaction while its token lives, then the channel (and the
/// message recorded by `RecordRunMessage`).
async fn target(state: &AppState, run: &Run) -> pb::DiscordTarget {
    let (session, message) = sessions::of_run(state, run).await;
    let session = session.unwrap_or_default();
    pb::DiscordTarget {
        application_id: session.application_id,
        interaction_token: session.token,
        token_expires_at: session.expires_at.map(convert::ts),
        channel_id: match &message {
            Some(m) => m.channel_id.clone(),
            None => run.requester.channel_id.clone(),
        },
        message_id: message.map(|m| m.message_id).unwrap_or_default(),
        ephemeral: false,
    }
}

/// A guild whose registration is still pending is sent again after this long (the adapter
/// that got it may have died or failed).
const GUILD_RESEND: Duration = Duration::from_secs(30);
/// Longest wait between two looks at the guilds (set-ups on other replicas).
const GUILD_RECHECK: Duration = Duration::from_secs(1);

/// Feeds one `WatchGuilds` stream: every guild first (after a catalog notice, when asked for),
/// then pending set-ups as they appear; when the catalog changes, every guild again.
async fn guild_loop(
    state: Arc<AppState>,
    notices: bool,
    tx: tokio::sync::mpsc::Sender<Result<pb::WatchGuildsResponse, Status>>,
) {
    let mut sent: BTreeMap<String, (i64, std::time::Instant)> = BTreeMap::new();
    let mut first = true;
    let mut catalog = None;
    loop {
        let notified = state.guilds_wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let version = state.catalog.version();
        let changed = catalog != Some(version);
        if changed && notices {
            let notice = pb::WatchGuildsResponse {
                guild: None,
                catalog_version: version,
            };
            if tx.send(Ok(notice)).await.is_err() {
                return;
            }
        }
        catalog = Some(version);
        match state.store.guilds(None).await {
            Ok(guilds) => {
                for g in guilds {
                    let due = match sent.get(&g.guild_id) {
                        _ if changed => true,
                        None => first || g.pending(),
                        Some((generation, at)) => {
                            g.pending()
                                && (*generation != g.generation || at.elapsed() >= GUILD_RESEND)
                        }
                    };
                    if !due {
                        continue;
                    }
                    sent.insert(
                        g.guild_id.clone(),
                        (g.generation, std::time::Instant::now()),
                    );
                    let update = pb::WatchGuildsResponse {
                        guild: Some(convert::guild(&g)),
                        catalog_version: version,
                    };
                    if tx.send(Ok(update)).await.is_err() {
                        return;
                    }
                }
                first = false;
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the guilds; retrying"),
        }
        tokio::select! {
            _ = &mut notified => {}
            _ = tokio::time::sleep(GUILD_RECHECK) => {}
            _ = tx.closed() => return,
            _ = state.shutdown.cancelled() => return,
        }
    }
}

async fn watch_loop(
    state: Arc<AppState>,
    mut cursor: FeedCursor,
    tx: tokio::sync::mpsc::Sender<Result<pb::WatchRunsResponse, Status>>,
) {
    loop {
        let notified = state.dispatch_wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        match state.store.discord_changes_after(cursor, 200).await {
            Ok(changes) if !changes.is_empty() => {
                // One update per run, at its newest entry, in feed order (cursors only grow):
                // resuming after one of them skips only entries of runs sent after it.
                let mut newest: BTreeMap<String, FeedCursor> = BTreeMap::new();
                for e in changes {
                    newest.insert(e.run_id, e.cursor);
                }
                let mut order: Vec<(FeedCursor, String)> =
                    newest.into_iter().map(|(r, c)| (c, r)).collect();
                order.sort();
                for (id, run_id) in order {
                    cursor = id;
                    let Ok(Some(run)) = state.store.get_run(&run_id).await else {
                        continue;
                    };
                    let update = pb::WatchRunsResponse {
                        cursor: id.to_string(),
                        target: Some(target(&state, &run).await),
                        reply: Some(card::run_card(
                            &run,
                            &state.config.argo.ui_base_url,
                            chrono::Utc::now(),
                            false,
                        )),
                        run: Some(convert::run(&run)),
                    };
                    if tx.send(Ok(update)).await.is_err() {
                        return;
                    }
                }
                continue;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "run change feed failed; retrying"),
        }
        tokio::select! {
            _ = &mut notified => {}
            _ = tokio::time::sleep(WATCH_RECHECK) => {}
            _ = tx.closed() => return,
            _ = state.shutdown.cancelled() => return,
        }
    }
}
