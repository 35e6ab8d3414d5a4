//! The server's replies as Discord interaction responses and message bodies, built with
//! serenity's builders (which carry Discord's callback and component type numbers).

use facteur_proto::v1 as pb;
use serde_json::{Value, json};
use serenity::all::{
    ButtonStyle, CreateActionRow, CreateAllowedMentions, CreateAutocompleteResponse, CreateButton,
    CreateEmbed, CreateEmbedFooter, CreateInputText, CreateInteractionResponse,
    CreateInteractionResponseMessage, CreateModal, InputTextStyle, Timestamp,
};

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

/// An embed (a run card) as Discord documents it.
pub fn embed(e: &pb::Embed) -> CreateEmbed {
    let mut out = CreateEmbed::new().colour(e.color);
    if !e.title.is_empty() {
        out = out.title(e.title.clone());
    }
    if !e.description.is_empty() {
        out = out.description(e.description.clone());
    }
    if !e.url.is_empty() {
        out = out.url(e.url.clone());
    }
    if !e.footer.is_empty() {
        out = out.footer(CreateEmbedFooter::new(e.footer.clone()));
    }
    if let Some(t) = e
        .timestamp
        .as_ref()
        .and_then(|t| Timestamp::from_unix_timestamp(t.seconds).ok())
    {
        out = out.timestamp(t);
    }
    out.fields(
        e.fields
            .iter()
            .map(|f| (f.name.clone(), f.value.clone(), f.inline)),
    )
}

/// A button: a link when it carries a URL, else one whose click comes back by `custom_id`.
fn button(b: &pb::Button) -> CreateButton {
    if !b.url.is_empty() {
        return CreateButton::new_link(b.url.clone()).label(b.label.clone());
    }
    CreateButton::new(b.custom_id.clone())
        .label(b.label.clone())
        .style(if b.danger {
            ButtonStyle::Danger
        } else {
            ButtonStyle::Secondary
        })
}

/// A reply's message body: content, embeds, its buttons in one row, and no pings
/// (`allowed_mentions` empty). The same body is an interaction response's `data`, an edit of
/// `@original`, and a channel message (created or edited): serenity writes the fields those
/// routes share.
pub fn message(reply: &pb::Reply) -> CreateInteractionResponseMessage {
    let reply = &fit(reply);
    let buttons: Vec<CreateButton> = reply.buttons.iter().map(button).collect();
    let rows = if buttons.is_empty() {
        vec![]
    } else {
        vec![CreateActionRow::Buttons(buttons)]
    };
    let m = CreateInteractionResponseMessage::new()
        .content(reply.content.clone())
        .embeds(reply.embeds.iter().map(embed).collect())
        .allowed_mentions(CreateAllowedMentions::new())
        .components(rows);
    if reply.ephemeral {
        m.ephemeral(true)
    } else {
        m
    }
}

/// `reply` within Discord's message limits (`facteur_config::discord`): content 2,000
/// characters; at most 10 embeds, each with a title of 256, a description of 4,096, 25 fields
/// (name 256, value 1,024) and a footer of 2,048; 6,000 characters across the embeds, spent in
/// order (the first embed's title and description first), what no longer fits cut or left
/// out. Every text cut ends with `…`.
pub fn fit(reply: &pb::Reply) -> pb::Reply {
    use facteur_config::discord::*;
    let n = |s: &str| s.chars().count();
    let left = std::cell::Cell::new(EMBEDS_TOTAL_MAX);
    // `s` within both its own limit and what is left of the total, taken from the total.
    let take = |s: &str, max: usize| {
        let max = max.min(left.get());
        let out = if max == 0 {
            String::new()
        } else {
            clip(s, max)
        };
        left.set(left.get() - n(&out));
        out
    };
    let mut r = reply.clone();
    r.content = clip(&r.content, CONTENT_MAX);
    r.embeds.truncate(10);
    for e in &mut r.embeds {
        e.title = take(&e.title, EMBED_TITLE_MAX);
        e.description = take(&e.description, EMBED_DESCRIPTION_MAX);
        e.fields.truncate(EMBED_FIELDS_MAX);
        let fields = std::mem::take(&mut e.fields);
        for mut f in fields {
            let (name, value) = (
                clip(&f.name, FIELD_NAME_MAX),
                clip(&f.value, FIELD_VALUE_MAX),
            );
            if n(&name) + n(&value) > left.get() {
                break;
            }
            (f.name, f.value) = (take(&name, usize::MAX), take(&value, usize::MAX));
            e.fields.push(f);
        }
        e.footer = take(&e.footer, FOOTER_MAX);
    }
    r.embeds
        .retain(|e| !(e.title.is_empty() && e.description.is_empty() && e.fields.is_empty()));
    r
}

/// A reply as an interaction response: a new message, or (for a component) an update of the
/// message the component sits on.
pub fn response(update: bool, reply: &pb::Reply) -> CreateInteractionResponse {
    if update {
        CreateInteractionResponse::UpdateMessage(message(reply))
    } else {
        CreateInteractionResponse::Message(message(reply))
    }
}

/// A refusal or error shown only to the invoker.
pub fn notice(text: &str) -> CreateInteractionResponse {
    CreateInteractionResponse::Message(notice_message(text))
}

/// The body of [`notice`].
pub fn notice_message(text: &str) -> CreateInteractionResponseMessage {
    CreateInteractionResponseMessage::new()
        .content(facteur_config::discord::clip(
            text,
            facteur_config::discord::CONTENT_MAX,
        ))
        .allowed_mentions(CreateAllowedMentions::new())
        .ephemeral(true)
}

/// Autocomplete suggestions (values are the option's text).
pub fn autocomplete(choices: &[pb::OptionChoice]) -> CreateInteractionResponse {
    let r = choices
        .iter()
        .fold(CreateAutocompleteResponse::new(), |r, c| {
            r.add_string_choice(c.name.clone(), c.value.clone())
        });
    CreateInteractionResponse::Autocomplete(r)
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

/// Discord's EPHEMERAL message flag (1 << 6).
pub const EPHEMERAL: u64 = 1 << 6;

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

/// A modal: one text input per row. Lengths beyond Discord's (4,000) are left to Discord to
/// refuse rather than wrapped.
pub fn modal(m: &pb::Modal) -> CreateInteractionResponse {
    let len = |n: u32| u16::try_from(n).unwrap_or(u16::MAX);
    let rows: Vec<CreateActionRow> = m
        .inputs
        .iter()
        .map(|i| {
            let style = if i.paragraph {
                InputTextStyle::Paragraph
            } else {
                InputTextStyle::Short
            };
            let mut input = CreateInputText::new(style, i.label.clone(), i.custom_id.clone())
                .required(i.required);
            if let Some(n) = i.min_length {
                input = input.min_length(len(n));
            }
            if let Some(n) = i.max_length {
                input = input.max_length(len(n));
            }
            if !i.placeholder.is_empty() {
                input = input.placeholder(i.placeholder.clone());
            }
            CreateActionRow::InputText(input)
        })
        .collect();
    CreateInteractionResponse::Modal(
        CreateModal::new(m.custom_id.clone(), m.title.clone()).components(rows),
    )
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
    fn every_reply_fits_discords_message_limits() {
        let n = |s: &str| s.chars().count();
        let field = pb::EmbedField {
            name: "n".repeat(300),
            value: "v".repeat(2000),
            inline: false,
        };
        let embed = pb::Embed {
            title: "t".repeat(300),
            description: "d".repeat(5000),
            footer: "f".repeat(3000),
            fields: vec![field; 30],
            ..Default::default()
        };
        let reply = pb::Reply {
            content: "c".repeat(2500),
            embeds: vec![embed; 12],
            ..Default::default()
        };
        let r = fit(&reply);
        assert_eq!(n(&r.content), 2000);
        assert!(r.content.ends_with('…'));
        assert!(r.embeds.len() <= 10);
        let total: usize = r
            .embeds
            .iter()
            .map(|e| {
                assert!(n(&e.title) <= 256 && n(&e.description) <= 4096 && n(&e.footer) <= 2048);
                assert!(e.fields.len() <= 25);
                n(&e.title)
                    + n(&e.description)
                    + n(&e.footer)
                    + e.fields
                        .iter()
                        .map(|f| n(&f.name) + n(&f.value))
                        .sum::<usize>()
            })
            .sum();
        assert!(total <= 6000, "{total}");
        // What fits is left as it is.
        let small = pb::Reply {
            content: "hello".into(),
            embeds: vec![pb::Embed {
                title: "Run".into(),
                description: "ok".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(fit(&small), small);
    }

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

    /// Interaction responses as Discord documents them (callback type, message flags,
    /// component and style numbers), whatever serenity's builders write besides.
    #[test]
    fn responses_are_discords_shapes() {
        let v = |r: CreateInteractionResponse| serde_json::to_value(r).expect("serialises");
        let reply = pb::Reply {
            content: "run `abc`: **running**".into(),
            buttons: vec![pb::Button {
                label: "Cancel".into(),
                custom_id: "facteur:cancel:abc".into(),
                danger: true,
                ..Default::default()
            }],
            ephemeral: false,
            embeds: vec![],
        };
        let m = v(response(false, &reply));
        assert_eq!(m["type"], 4, "{m}");
        assert_eq!(m["data"]["content"], "run `abc`: **running**");
        assert!(m["data"].get("flags").is_none(), "not ephemeral: {m}");
        assert_eq!(m["data"]["allowed_mentions"]["parse"], json!([]));
        assert_eq!(
            m["data"]["components"],
            json!([{"type": 1, "components": [
                {"type": 2, "style": 4, "label": "Cancel", "custom_id": "facteur:cancel:abc", "disabled": false}
            ]}])
        );
        assert_eq!(v(response(true, &reply))["type"], 7);
        let n = v(notice("no"));
        assert_eq!(
            (n["type"].clone(), n["data"]["flags"].clone()),
            (json!(4), json!(64))
        );
        assert_eq!(v(CreateInteractionResponse::Pong)["type"], 1);
        assert_eq!(v(CreateInteractionResponse::Acknowledge)["type"], 6);
        let a = v(autocomplete(&[pb::OptionChoice {
            name: "prod".into(),
            value: "prod".into(),
        }]));
        assert_eq!(
            (a["type"].clone(), a["data"]["choices"].clone()),
            (json!(8), json!([{"name": "prod", "value": "prod"}]))
        );
        let f = v(modal(&pb::Modal {
            custom_id: "facteur:modal:deploy".into(),
            title: "Deploy".into(),
            inputs: vec![pb::ModalInput {
                custom_id: "note".into(),
                label: "Note".into(),
                paragraph: true,
                required: false,
                max_length: Some(100),
                ..Default::default()
            }],
        }));
        assert_eq!(f["type"], 9, "{f}");
        assert_eq!(f["data"]["custom_id"], "facteur:modal:deploy");
        let input = &f["data"]["components"][0]["components"][0];
        assert_eq!(f["data"]["components"][0]["type"], 1);
        assert_eq!(
            (
                &input["type"],
                &input["style"],
                &input["custom_id"],
                &input["max_length"]
            ),
            (&json!(4), &json!(2), &json!("note"), &json!(100)),
            "{f}"
        );
        assert_eq!(input["required"], false);
    }

    /// A run card as Discord documents the embed object, with a link button beside the others.
    #[test]
    fn cards_are_discords_embeds_and_link_buttons() {
        let reply = pb::Reply {
            embeds: vec![pb::Embed {
                title: "/deploy · run 3f2a9c1e".into(),
                description: "**running** · step 2 of 3".into(),
                color: 0x3498db,
                fields: vec![pb::EmbedField {
                    name: "Requested by".into(),
                    value: "<@1>".into(),
                    inline: true,
                }],
                footer: "run 3f2a9c1e-…".into(),
                timestamp: Some(facteur_proto::Timestamp {
                    seconds: 1_796_472_000,
                    nanos: 0,
                }),
                url: "https://argo.example/workflows/ns/deploy-3f2a9c1e".into(),
            }],
            buttons: vec![
                pb::Button {
                    label: "Refresh".into(),
                    custom_id: "facteur:refresh:abc".into(),
                    ..Default::default()
                },
                pb::Button {
                    label: "Open in Argo".into(),
                    url: "https://argo.example/workflows/ns/deploy-3f2a9c1e".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let m = serde_json::to_value(message(&reply)).expect("serialises");
        assert_eq!(
            m["embeds"],
            json!([{
                "title": "/deploy · run 3f2a9c1e",
                "description": "**running** · step 2 of 3",
                "color": 0x3498db,
                "url": "https://argo.example/workflows/ns/deploy-3f2a9c1e",
                "footer": {"text": "run 3f2a9c1e-…"},
                "timestamp": "2026-12-05T12:00:00Z",
                "fields": [{"name": "Requested by", "value": "<@1>", "inline": true}],
                "type": "rich",
            }]),
            "{m}"
        );
        assert_eq!(
            m["allowed_mentions"]["parse"],
            json!([]),
            "a mention never pings"
        );
        assert_eq!(
            m["components"][0]["components"][1],
            json!({"type": 2, "style": 5, "label": "Open in Argo",
                   "url": "https://argo.example/workflows/ns/deploy-3f2a9c1e", "disabled": false}),
            "{m}"
        );
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
