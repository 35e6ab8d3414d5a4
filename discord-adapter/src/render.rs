//! The server's replies as Discord interaction responses and message bodies.

use facteur_proto::v1 as pb;
use serde_json::{Value, json};

/// Message flag: only the invoker sees it.
pub const EPHEMERAL: u64 = 1 << 6;

/// `{content, flags, components}` of a message.
pub fn message(reply: &pb::Reply) -> Value {
    let buttons: Vec<Value> = reply
        .buttons
        .iter()
        .map(|b| json!({"type": 2, "style": if b.danger { 4 } else { 2 }, "label": b.label, "custom_id": b.custom_id}))
        .collect();
    let mut m = json!({"content": reply.content, "allowed_mentions": {"parse": []}});
    m["components"] = if buttons.is_empty() {
        json!([])
    } else {
        json!([{"type": 1, "components": buttons}])
    };
    if reply.ephemeral {
        m["flags"] = json!(EPHEMERAL);
    }
    m
}

/// An interaction response of `kind` (4 = channel message, 7 = update message).
pub fn response(kind: u8, reply: &pb::Reply) -> Value {
    json!({"type": kind, "data": message(reply)})
}

/// A refusal or error shown only to the invoker.
pub fn notice(text: &str) -> Value {
    json!({"type": 4, "data": {"content": text, "flags": EPHEMERAL, "allowed_mentions": {"parse": []}}})
}

/// Discord's option type numbers.
pub fn option_type(t: i32) -> u8 {
    match pb::OptionType::try_from(t) {
        Ok(pb::OptionType::Integer) => 4,
        Ok(pb::OptionType::Boolean) => 5,
        Ok(pb::OptionType::User) => 6,
        Ok(pb::OptionType::Channel) => 7,
        Ok(pb::OptionType::Role) => 8,
        Ok(pb::OptionType::Number) => 10,
        _ => 3,
    }
}

/// A catalog command in Discord's registration shape, normalised for comparison: guild
/// context only, defaults written out so a command read back from Discord compares equal.
pub fn command(c: &pb::CommandDefinition) -> Value {
    let options: Vec<Value> = c
        .options
        .iter()
        .map(|o| {
            json!({
                "type": option_type(o.r#type),
                "name": o.name,
                "description": o.description,
                "required": o.required,
                "choices": o.choices.iter().map(|ch| json!({"name": ch.name, "value": ch.value})).collect::<Vec<_>>(),
                "min_value": o.min_value,
                "max_value": o.max_value,
                "min_length": o.min_length,
                "max_length": o.max_length,
                "autocomplete": o.autocomplete,
            })
        })
        .collect();
    json!({"type": 1, "name": c.name, "description": c.description, "options": options, "contexts": [0], "integration_types": [0]})
}

/// A modal response (type 9): one text input per row.
pub fn modal(m: &pb::Modal) -> Value {
    let rows: Vec<Value> = m
        .inputs
        .iter()
        .map(|i| {
            let mut input = json!({
                "type": 4, "custom_id": i.custom_id, "label": i.label,
                "style": if i.paragraph { 2 } else { 1 }, "required": i.required,
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
            json!({"type": 1, "components": [input]})
        })
        .collect();
    json!({"type": 9, "data": {"custom_id": m.custom_id, "title": m.title, "components": rows}})
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
