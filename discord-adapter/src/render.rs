//! The server's replies as Discord interaction responses and message bodies.

use facteur_proto::v1 as pb;
use serde_json::{Value, json};

/// Message flag: only the invoker sees it (serenity's `MessageFlags::EPHEMERAL`).
pub const EPHEMERAL: u64 = serenity::all::MessageFlags::EPHEMERAL.bits();

/// Interaction response types (Discord's "interaction callback type"; serenity 0.12 keeps them
/// private to its builders).
pub mod callback {
    /// ACK a ping.
    pub const PONG: u8 = 1;
    /// Respond with a message.
    pub const CHANNEL_MESSAGE: u8 = 4;
    /// ACK now, edit the original response later.
    pub const DEFERRED_CHANNEL_MESSAGE: u8 = 5;
    /// ACK a component now, update its message later.
    pub const DEFERRED_UPDATE_MESSAGE: u8 = 6;
    /// Edit the message the component is attached to.
    pub const UPDATE_MESSAGE: u8 = 7;
    /// Autocomplete choices.
    pub const AUTOCOMPLETE_RESULT: u8 = 8;
    /// Open a modal.
    pub const MODAL: u8 = 9;
}

/// Interaction types Discord sends (the values of serenity's `InteractionType`, which has no
/// `const` conversion; a test pins them to it).
pub mod interaction {
    /// A ping.
    pub const PING: u8 = 1;
    /// A slash command.
    pub const COMMAND: u8 = 2;
    /// A button.
    pub const COMPONENT: u8 = 3;
    /// Autocomplete.
    pub const AUTOCOMPLETE: u8 = 4;
    /// A modal submitted.
    pub const MODAL: u8 = 5;
}

fn component(t: serenity::all::ComponentType) -> u8 {
    u8::from(t)
}

/// `{content, flags, components}` of a message.
pub fn message(reply: &pb::Reply) -> Value {
    let buttons: Vec<Value> = reply
        .buttons
        .iter()
        .map(|b| {
            use serenity::all::{ButtonStyle, ComponentType};
            let style = if b.danger {
                ButtonStyle::Danger
            } else {
                ButtonStyle::Secondary
            };
            json!({"type": component(ComponentType::Button), "style": u8::from(style), "label": b.label, "custom_id": b.custom_id})
        })
        .collect();
    let mut m = json!({"content": reply.content, "allowed_mentions": {"parse": []}});
    m["components"] = if buttons.is_empty() {
        json!([])
    } else {
        json!([{"type": component(serenity::all::ComponentType::ActionRow), "components": buttons}])
    };
    if reply.ephemeral {
        m["flags"] = json!(EPHEMERAL);
    }
    m
}

/// An interaction response of `kind` ([`callback::CHANNEL_MESSAGE`] or
/// [`callback::UPDATE_MESSAGE`]).
pub fn response(kind: u8, reply: &pb::Reply) -> Value {
    json!({"type": kind, "data": message(reply)})
}

/// A refusal or error shown only to the invoker.
pub fn notice(text: &str) -> Value {
    json!({"type": callback::CHANNEL_MESSAGE, "data": {"content": text, "flags": EPHEMERAL, "allowed_mentions": {"parse": []}}})
}

/// Discord's option type numbers (serenity's `CommandOptionType`).
pub fn option_type(t: i32) -> u8 {
    use serenity::all::CommandOptionType as T;
    u8::from(match pb::OptionType::try_from(t) {
        Ok(pb::OptionType::Integer) => T::Integer,
        Ok(pb::OptionType::Boolean) => T::Boolean,
        Ok(pb::OptionType::User) => T::User,
        Ok(pb::OptionType::Channel) => T::Channel,
        Ok(pb::OptionType::Role) => T::Role,
        Ok(pb::OptionType::Number) => T::Number,
        _ => T::String,
    })
}

/// A bound or choice value in the type Discord documents for the option: an integer for
/// INTEGER options, a number for NUMBER ones, a string otherwise.
fn typed(kind: u8, v: f64) -> Value {
    if kind == u8::from(serenity::all::CommandOptionType::Integer) && v.fract() == 0.0 {
        json!(v as i64)
    } else {
        json!(v)
    }
}

fn typed_choice(kind: u8, v: &str) -> Value {
    use serenity::all::CommandOptionType as T;
    let parsed = if kind == u8::from(T::Integer) {
        v.trim().parse::<i64>().ok().map(|n| json!(n))
    } else if kind == u8::from(T::Number) {
        v.trim().parse::<f64>().ok().map(|n| json!(n))
    } else {
        None
    };
    parsed.unwrap_or_else(|| json!(v))
}

/// A catalog command in Discord's registration shape (application command object): fields
/// absent when unset, never `null`; INTEGER bounds and choices as integers; guild context.
/// (serenity 0.12's `CreateCommandOption` takes only unsigned integer bounds and `i32` integer
/// choices, narrower than the catalog's ±2^53, so the body is written out here.)
pub fn command(c: &pb::CommandDefinition) -> Value {
    let options: Vec<Value> = c
        .options
        .iter()
        .map(|o| {
            let kind = option_type(o.r#type);
            let mut v = json!({"type": kind, "name": o.name, "description": o.description});
            if o.required {
                v["required"] = json!(true);
            }
            if !o.choices.is_empty() {
                v["choices"] = o
                    .choices
                    .iter()
                    .map(|ch| json!({"name": ch.name, "value": typed_choice(kind, &ch.value)}))
                    .collect();
            }
            if let Some(n) = o.min_value {
                v["min_value"] = typed(kind, n);
            }
            if let Some(n) = o.max_value {
                v["max_value"] = typed(kind, n);
            }
            if let Some(n) = o.min_length {
                v["min_length"] = json!(n);
            }
            if let Some(n) = o.max_length {
                v["max_length"] = json!(n);
            }
            if o.autocomplete {
                v["autocomplete"] = json!(true);
            }
            v
        })
        .collect();
    use serenity::all::{CommandType, InstallationContext, InteractionContext};
    json!({
        "type": u8::from(CommandType::ChatInput),
        "name": c.name,
        "description": c.description,
        "options": options,
        "contexts": [InteractionContext::Guild],
        "integration_types": [InstallationContext::Guild],
    })
}

/// A modal response (type 9): one text input per row.
pub fn modal(m: &pb::Modal) -> Value {
    let rows: Vec<Value> = m
        .inputs
        .iter()
        .map(|i| {
            use serenity::all::{ComponentType, InputTextStyle};
            let style = if i.paragraph {
                InputTextStyle::Paragraph
            } else {
                InputTextStyle::Short
            };
            let mut input = json!({
                "type": component(ComponentType::InputText), "custom_id": i.custom_id, "label": i.label,
                "style": u8::from(style), "required": i.required,
            });
            if let Some(n) = i.min_length {
                input["min_length"] = json!(n);
            }
            if let Some(n) = i.max_length {
                input["max_length"] = json!(n);
            }
            if !i.placeholder.is_empty() {
                input["placeholder"] = json!(i.placeholder);
            }
            json!({"type": component(ComponentType::ActionRow), "components": [input]})
        })
        .collect();
    json!({"type": callback::MODAL, "data": {"custom_id": m.custom_id, "title": m.title, "components": rows}})
}

/// The values of a submitted modal, by input `custom_id` (action rows or Label-wrapped inputs).
pub fn modal_values(components: &Value, out: &mut std::collections::HashMap<String, String>) {
    match components {
        Value::Array(items) => items.iter().for_each(|c| modal_values(c, out)),
        Value::Object(o) => {
            if let (Some(Value::String(id)), Some(Value::String(v))) =
                (o.get("custom_id"), o.get("value"))
            {
                out.insert(id.clone(), v.clone());
            }
            for key in ["components", "component"] {
                if let Some(child) = o.get(key) {
                    modal_values(child, out);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod registration_tests {
    use super::*;

    #[test]
    fn interaction_types_are_serenitys() {
        use serenity::all::InteractionType as T;
        for (ours, theirs) in [
            (interaction::PING, T::Ping),
            (interaction::COMMAND, T::Command),
            (interaction::COMPONENT, T::Component),
            (interaction::AUTOCOMPLETE, T::Autocomplete),
            (interaction::MODAL, T::Modal),
        ] {
            assert_eq!(ours, u8::from(theirs));
        }
    }

    /// The registration body as Discord documents the application command object.
    #[test]
    fn integer_bounds_are_integers_and_absent_fields_are_omitted() {
        let c = pb::CommandDefinition {
            name: "deploy".into(),
            description: "Deploy a service".into(),
            options: vec![
                pb::CommandOption {
                    name: "replicas".into(),
                    description: "how many".into(),
                    r#type: pb::OptionType::Integer as i32,
                    required: true,
                    choices: vec![pb::OptionChoice {
                        name: "two".into(),
                        value: "2".into(),
                    }],
                    min_value: Some(1.0),
                    max_value: Some(10.0),
                    ..Default::default()
                },
                pb::CommandOption {
                    name: "note".into(),
                    description: "free text".into(),
                    r#type: pb::OptionType::String as i32,
                    max_length: Some(100),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        assert_eq!(
            command(&c),
            json!({
                "type": 1, "name": "deploy", "description": "Deploy a service",
                "contexts": [0], "integration_types": [0],
                "options": [
                    {"type": 4, "name": "replicas", "description": "how many", "required": true,
                     "choices": [{"name": "two", "value": 2}], "min_value": 1, "max_value": 10},
                    {"type": 3, "name": "note", "description": "free text", "max_length": 100},
                ],
            })
        );
        let text = command(&c).to_string();
        assert!(!text.contains("null"), "{text}");
        assert!(
            text.contains("\"min_value\":1,"),
            "an integer, not 1.0: {text}"
        );
    }
}
