//! A Discord interaction as the server sees it, checked before anything is stored or keyed on
//! it. Built by the edges (`CommandService`, `POST /events`); read by the services.

use crate::domain::input::storable;
use crate::domain::machine::check_retryable;
use crate::domain::run::{Requester, Run, RunStatus};
use crate::domain::{Error, Result};
use facteur_config::is_snowflake;

/// Widest accepted values: the columns and session fields they go to, with room for what
/// Discord sends (names ≤ 32 characters, tokens of a few hundred, locales like `en-US`).
const MAX_INTERACTION_ID: usize = 100;
const MAX_USER_NAME: usize = 100;
const MAX_TOKEN: usize = 1000;
const MAX_LOCALE: usize = 16;

/// A button on a run's message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Button {
    /// Cancel the run.
    Cancel,
    /// Start it again (finished runs).
    Retry,
    /// Show it as it is now.
    Refresh,
    /// Approve the suspend step it waits at.
    Approve,
    /// Reject the suspend step it waits at.
    Reject,
}

impl Button {
    /// Every button, for the tests of the encoding.
    pub const ALL: [Button; 5] = [
        Button::Cancel,
        Button::Retry,
        Button::Refresh,
        Button::Approve,
        Button::Reject,
    ];

    /// The action's word in a `custom_id`.
    pub fn as_str(self) -> &'static str {
        match self {
            Button::Cancel => "cancel",
            Button::Retry => "retry",
            Button::Refresh => "refresh",
            Button::Approve => "approve",
            Button::Reject => "reject",
        }
    }

    /// The `custom_id` of this button on run `run_id`'s card: `<action>:<run id>`.
    pub fn custom_id(self, run_id: &str) -> String {
        format!("{}:{run_id}", self.as_str())
    }

    /// From a component's `custom_id` (`<action>:<run id>`).
    pub fn parse(custom_id: &str) -> Result<(Button, &str)> {
        let (action, run_id) = custom_id.split_once(':').ok_or_else(|| {
            Error::invalid(
                "custom_id",
                format!("custom_id `{custom_id}` is not <action>:<run id>"),
            )
        })?;
        let b = Button::ALL
            .into_iter()
            .find(|b| b.as_str() == action)
            .ok_or_else(|| Error::invalid("custom_id", format!("unknown action `{action}`")))?;
        Ok((b, run_id))
    }
}

/// What may be done to `run` now, in the order its card shows the buttons: Approve and Reject
/// while a step waits for a decision, Retry once it ended (or Cancel while it may still run),
/// Refresh always. The card shows these and nothing else; a click is checked again by the same
/// rules (an old card's button may no longer apply).
pub fn actions(run: &Run) -> Vec<Button> {
    let mut out = Vec::with_capacity(4);
    if run.waiting_step().is_some() {
        out.extend([Button::Approve, Button::Reject]);
    }
    if check_retryable(run).is_ok() {
        out.push(Button::Retry);
    } else if run.status.can_move_to(RunStatus::Cancelled) {
        out.push(Button::Cancel);
    }
    out.push(Button::Refresh);
    out
}

/// What a submitted modal's `custom_id` names: the one encoding of modals, written and read
/// here (the discord-adapter passes it through).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModalId<'a> {
    /// The values a suspend step asks for, before approving it: `approve:<run id>`.
    Approval(&'a str),
    /// A command's own modal (its options as text inputs): `modal:<command>`.
    Command(&'a str),
}

impl<'a> ModalId<'a> {
    const APPROVAL: &'static str = "approve:";
    const COMMAND: &'static str = "modal:";

    /// The `custom_id` of this modal.
    pub fn encode(self) -> String {
        match self {
            ModalId::Approval(run_id) => format!("{}{run_id}", Self::APPROVAL),
            ModalId::Command(command) => format!("{}{command}", Self::COMMAND),
        }
    }

    /// From a submitted modal's `custom_id` (`field` names it in the error).
    pub fn parse(custom_id: &'a str, field: &'static str) -> Result<ModalId<'a>> {
        if let Some(run_id) = custom_id.strip_prefix(Self::APPROVAL) {
            Ok(ModalId::Approval(run_id))
        } else if let Some(command) = custom_id.strip_prefix(Self::COMMAND) {
            Ok(ModalId::Command(command))
        } else {
            Err(Error::invalid(
                field,
                format!("{field} `{custom_id}` is not one of ours"),
            ))
        }
    }
}

/// A Discord interaction as the server sees it (from `CommandService` or `POST /events`).
#[derive(Clone, Debug, Default)]
pub struct Interaction {
    /// Interaction id: the idempotency key of what it starts.
    pub interaction_id: String,
    /// Application id.
    pub application_id: String,
    /// Interaction token (a secret).
    pub token: String,
    /// Guild.
    pub guild_id: String,
    /// Channel.
    pub channel_id: String,
    /// Member.
    pub user_id: String,
    /// Member's display name.
    pub user_name: String,
    /// Member's roles.
    pub role_ids: Vec<String>,
    /// Locale.
    pub locale: String,
    /// Where the field names of errors come from (`context.` for gRPC).
    pub field_prefix: &'static str,
}

impl Interaction {
    /// Checks everything the server will store or key on: INVALID_ARGUMENT naming the field.
    pub fn validate(self) -> Result<Self> {
        let f = |name: &str| format!("{}{name}", self.field_prefix);
        if self.interaction_id.is_empty() {
            return Err(Error::invalid(
                f("interaction_id"),
                format!("{} is required", f("interaction_id")),
            ));
        }
        storable(
            &f("interaction_id"),
            &self.interaction_id,
            MAX_INTERACTION_ID,
        )?;
        if !is_snowflake(&self.guild_id) {
            return Err(Error::invalid(
                f("guild_id"),
                format!(
                    "{} must be a guild snowflake: commands run in guilds only",
                    f("guild_id")
                ),
            ));
        }
        if !is_snowflake(&self.user_id) {
            return Err(Error::invalid(
                f("user_id"),
                format!("{} must be a snowflake", f("user_id")),
            ));
        }
        for (name, v) in [
            ("channel_id", &self.channel_id),
            ("application_id", &self.application_id),
        ] {
            if !v.is_empty() && !is_snowflake(v) {
                return Err(Error::invalid(
                    f(name),
                    format!(
                        "{} must be a snowflake (got `{}`)",
                        f(name),
                        v.chars().take(40).collect::<String>()
                    ),
                ));
            }
        }
        for (i, r) in self.role_ids.iter().enumerate() {
            if !is_snowflake(r) {
                return Err(Error::invalid(
                    format!("{}[{i}]", f("role_ids")),
                    format!("{}[{i}] must be a role snowflake", f("role_ids")),
                ));
            }
        }
        storable(&f("user_name"), &self.user_name, MAX_USER_NAME)?;
        storable(&f("token"), &self.token, MAX_TOKEN)?;
        storable(&f("locale"), &self.locale, MAX_LOCALE)?;
        Ok(self)
    }

    /// The requester of what it starts.
    pub fn requester(&self) -> Requester {
        Requester {
            principal: "discord".into(),
            user_id: self.user_id.clone(),
            guild_id: self.guild_id.clone(),
            channel_id: self.channel_id.clone(),
            display_name: self.user_name.clone(),
        }
    }

    /// The idempotency key of what it starts.
    pub fn key(&self) -> String {
        format!("discord:{}", self.interaction_id)
    }
}

#[cfg(test)]
mod custom_id_tests {
    use super::*;

    #[test]
    fn every_button_reads_back_what_it_writes() {
        for b in Button::ALL {
            let id = b.custom_id("0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b");
            assert_eq!(
                Button::parse(&id).expect("ours"),
                (b, "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b")
            );
        }
        // Messages sent by earlier versions carry the same encoding.
        assert_eq!(
            Button::parse("cancel:abc").expect("old"),
            (Button::Cancel, "abc")
        );
        assert!(Button::parse("explode:abc").is_err());
        assert!(Button::parse("cancel").is_err());
    }

    #[test]
    fn every_modal_reads_back_what_it_writes() {
        for m in [ModalId::Approval("run-1"), ModalId::Command("deploy")] {
            assert_eq!(
                ModalId::parse(&m.encode(), "modal_custom_id").expect("ours"),
                m
            );
        }
        let e = ModalId::parse("other:1", "modal_custom_id").expect_err("not ours");
        assert!(matches!(e, Error::InvalidArgument { field, .. } if field == "modal_custom_id"));
    }
}

#[cfg(test)]
mod action_tests {
    use super::*;

    #[test]
    fn a_card_offers_what_its_run_allows() {
        use RunStatus::*;
        for (status, want) in [
            (Queued, vec![Button::Cancel, Button::Refresh]),
            (Running, vec![Button::Cancel, Button::Refresh]),
            (DeadLettered, vec![Button::Cancel, Button::Refresh]),
            (Succeeded, vec![Button::Retry, Button::Refresh]),
            (Failed, vec![Button::Retry, Button::Refresh]),
            (Cancelled, vec![Button::Retry, Button::Refresh]),
        ] {
            assert_eq!(actions(&Run::example(status)), want, "{status}");
        }
        let mut waiting = Run::example(Running);
        waiting.steps.approval = Some(Default::default());
        assert_eq!(
            actions(&waiting),
            [
                Button::Approve,
                Button::Reject,
                Button::Cancel,
                Button::Refresh
            ]
        );
    }
}
