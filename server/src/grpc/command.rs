//! `facteur.v1.CommandService`: Discord commands and buttons, decided on the server. The
//! discord-adapter only translates; permission, validation and state are here.

use super::{BoxStream, card, convert};
use crate::domain::run::Run;
use crate::domain::{Error, Result};
use crate::service::discord::{
    self, Builtin, Button, Clicked, Interaction, Invocation, Invoked, ModalId, Suggestions,
};
use crate::service::feeds::{self, GuildChange, RunChange};
use crate::service::{guilds, sessions};
use crate::state::AppState;
use crate::store::feed::FeedCursor;
use facteur_proto::v1 as pb;
use pb::command_service_server::CommandService;
use std::sync::Arc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

/// `facteur.v1.CommandService`.
#[derive(Clone)]
pub struct CommandApi(pub Arc<AppState>);

impl CommandApi {
    /// A run's card, linked to the Argo UI when one is configured.
    fn card(&self, run: &Run, ephemeral: bool) -> pb::Reply {
        card::run_card(run, &self.0.argo_ui, chrono::Utc::now(), ephemeral)
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

/// The modal of a command that asks for its values in one (`modal:<command>`).
fn modal_of(state: &AppState, c: &facteur_config::CommandConfig) -> Option<pb::Modal> {
    c.modal.as_ref().map(|m| pb::Modal {
        custom_id: ModalId::Command(&c.name).encode(),
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
    })
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
            modal: modal_of(state, c),
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
        let what = match pb::InvocationKind::try_from(r.kind) {
            Ok(pb::InvocationKind::SlashCommand) => Invocation::Slash {
                command: r.command,
                options: r.options.into_iter().map(|o| (o.name, o.value)).collect(),
            },
            Ok(pb::InvocationKind::ModalSubmit) => Invocation::ModalSubmit {
                custom_id: r.modal_custom_id,
                values: r.modal_values.into_iter().collect(),
            },
            _ => {
                return Err(Status::from(Error::invalid(
                    "kind",
                    "kind must be SLASH_COMMAND or MODAL_SUBMIT",
                )));
            }
        };
        Ok(Response::new(
            match discord::invoke(&self.0, &c, what).await? {
                Invoked::Started {
                    run,
                    duplicate,
                    ephemeral,
                } => pb::InvokeResponse {
                    reply: Some(self.card(&run, ephemeral)),
                    run: Some(convert::run(&run)),
                    duplicate,
                    ..Default::default()
                },
                // The modal was opened from the run's card: the answer edits that card in place.
                Invoked::Approved(run) => pb::InvokeResponse {
                    reply: Some(self.card(&run, false)),
                    run: Some(convert::run(&run)),
                    update_message: true,
                    ..Default::default()
                },
                Invoked::Builtin(b) => pb::InvokeResponse {
                    reply: Some(match b {
                        Builtin::Run(run) => self.card(&run, true),
                        Builtin::Runs(runs) => card::runs_list(&runs),
                    }),
                    ..Default::default()
                },
                Invoked::OpenModal(command) => pb::InvokeResponse {
                    modal: modal_of(&self.0, &command),
                    ..Default::default()
                },
            },
        ))
    }

    async fn autocomplete(
        &self,
        req: Request<pb::AutocompleteRequest>,
    ) -> Result<Response<pb::AutocompleteResponse>, Status> {
        let r = req.into_inner();
        let c = ctx(r.context)?;
        let suggested =
            discord::autocomplete(&self.0, &c, &r.command, &r.focused_option, &r.partial_value)
                .await?;
        let choices = match suggested {
            Suggestions::Runs(runs) => runs
                .into_iter()
                .map(|run| pb::OptionChoice {
                    name: format!("{} /{} {}", card::handle(&run), run.command, run.status),
                    value: run.id,
                })
                .collect(),
            Suggestions::Choices(choices) => choices
                .into_iter()
                .map(|(name, value)| pb::OptionChoice { name, value })
                .collect(),
        };
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
        let message = sessions::RunMessage {
            channel_id: r.channel_id,
            message_id: r.message_id,
        };
        discord::record_message(&self.0, &r.run_id, message).await?;
        Ok(Response::new(pb::RecordRunMessageResponse {}))
    }

    type WatchGuildsStream = BoxStream<pb::WatchGuildsResponse>;
    async fn watch_guilds(
        &self,
        req: Request<pb::WatchGuildsRequest>,
    ) -> Result<Response<Self::WatchGuildsStream>, Status> {
        let notices = req.into_inner().catalog_notices;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(feeds::follow_guilds(self.0.clone(), notices, tx));
        let stream = ReceiverStream::new(rx).map(|change| {
            Ok(match change {
                GuildChange::Catalog(version) => pb::WatchGuildsResponse {
                    guild: None,
                    catalog_version: version,
                },
                GuildChange::Guild(g, version) => pb::WatchGuildsResponse {
                    guild: Some(convert::guild(&g)),
                    catalog_version: version,
                },
            })
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn report_guild_registration(
        &self,
        req: Request<pb::ReportGuildRegistrationRequest>,
    ) -> Result<Response<pb::ReportGuildRegistrationResponse>, Status> {
        let r = req.into_inner();
        // Generation 0: the adapter's own scope (its configured guild, or global commands).
        convert::guild_id(&r.guild_id, r.generation == 0)?;
        let report = guilds::RegistrationReport {
            guild_id: r.guild_id,
            generation: r.generation,
            catalog_version: r.catalog_version,
            commands: r.commands,
            error: r.error,
            discord_code: r.discord_code,
        };
        let guild = guilds::report_registration(&self.0, report).await?;
        Ok(Response::new(pb::ReportGuildRegistrationResponse {
            guild: guild.as_ref().map(convert::guild),
        }))
    }

    type WatchRunsStream = BoxStream<pb::WatchRunsResponse>;
    async fn watch_runs(
        &self,
        req: Request<pb::WatchRunsRequest>,
    ) -> Result<Response<Self::WatchRunsStream>, Status> {
        let cursor = req.into_inner().cursor;
        let start = if cursor.is_empty() {
            feeds::now(&self.0).await?
        } else {
            cursor.parse::<FeedCursor>()?
        };
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(feeds::follow_runs(self.0.clone(), start, tx));
        let ui = self.0.argo_ui.clone();
        let stream = ReceiverStream::new(rx).map(move |change| {
            Ok(pb::WatchRunsResponse {
                cursor: change.cursor.to_string(),
                target: Some(target(&change)),
                reply: Some(card::run_card(&change.run, &ui, chrono::Utc::now(), false)),
                run: Some(convert::run(&change.run)),
            })
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Where a run is shown: the interaction while its token lives, then the channel (and the
/// message recorded by `RecordRunMessage`).
fn target(change: &RunChange) -> pb::DiscordTarget {
    let session = change.session.clone().unwrap_or_default();
    pb::DiscordTarget {
        application_id: session.application_id,
        interaction_token: session.token,
        token_expires_at: session.expires_at.map(convert::ts),
        channel_id: match &change.message {
            Some(m) => m.channel_id.clone(),
            None => change.run.requester.channel_id.clone(),
        },
        message_id: change
            .message
            .as_ref()
            .map(|m| m.message_id.clone())
            .unwrap_or_default(),
        ephemeral: false,
    }
}
