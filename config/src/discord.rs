//! Discord's documented rules for what facteur sends it, in one place: application commands
//! (interactions/application-commands), messages and embeds (resources/message), modals
//! (components/reference). Pure functions over the catalog's own model ([`CommandConfig`]), so
//! the configuration check, the catalog the server assembles (configured, built-in and
//! WorkflowTemplate commands alike) and the adapter's answers all apply the same numbers.
//!
//! [`check_command`] says what Discord would refuse, path by path; [`repair`] makes the faithful
//! repairs a command born from a template allows (a text clipped, an empty enum value dropped, a
//! word enum under a number hint made a string option) and says which it made; what it cannot
//! repair is left to [`check_command`] to refuse.

use crate::{ChoiceConfig, CommandConfig};

/// Command and option names: 1–32 characters.
pub const NAME_MAX: usize = 32;
/// Command and option descriptions: 1–100 characters.
pub const DESCRIPTION_MAX: usize = 100;
/// Options per command.
pub const OPTIONS_MAX: usize = 25;
/// Choices per option.
pub const CHOICES_MAX: usize = 25;
/// A choice's name: 1–100 characters.
pub const CHOICE_NAME_MAX: usize = 100;
/// A string choice's value: at most 100 characters (and, as Discord refuses an empty one, at
/// least 1).
pub const CHOICE_VALUE_MAX: usize = 100;
/// A string option's `min_length` and `max_length`: 0–6,000.
pub const STRING_LENGTH_MAX: u32 = 6000;
/// Name, description and every option's and choice's name, description and value together.
pub const COMMAND_TOTAL_MAX: usize = 8000;
/// CHAT_INPUT commands per guild (and globally).
pub const COMMANDS_MAX: usize = 100;
/// Integer options and choices: ±2^53.
pub const SAFE_INTEGER_MAX: f64 = 9_007_199_254_740_991.0;
/// A modal's title.
pub const MODAL_TITLE_MAX: usize = 45;
/// Components of a modal.
pub const MODAL_INPUTS_MAX: usize = 5;
/// A text input's label.
pub const LABEL_MAX: usize = 45;
/// A text input's placeholder.
pub const PLACEHOLDER_MAX: usize = 100;
/// A text input's value and `max_length`.
pub const TEXT_INPUT_MAX: u32 = 4000;
/// A message's content.
pub const CONTENT_MAX: usize = 2000;
/// Characters across all embeds of a message.
pub const EMBEDS_TOTAL_MAX: usize = 6000;
/// An embed's title.
pub const EMBED_TITLE_MAX: usize = 256;
/// An embed's description.
pub const EMBED_DESCRIPTION_MAX: usize = 4096;
/// Fields per embed.
pub const EMBED_FIELDS_MAX: usize = 25;
/// A field's name.
pub const FIELD_NAME_MAX: usize = 256;
/// A field's value.
pub const FIELD_VALUE_MAX: usize = 1024;
/// An embed's footer text.
pub const FOOTER_MAX: usize = 2048;

/// `s` within `max` characters: clipped with `…` when longer.
pub fn clip(s: &str, max: usize) -> String {
    if s.len() <= max || s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

fn chars(s: &str) -> usize {
    s.chars().count()
}

/// Devanagari and Thai, which Discord names besides letters and numbers.
fn deva_or_thai(c: char) -> bool {
    matches!(c as u32, 0x0900..=0x097F | 0xA8E0..=0xA8FF | 0x11B00..=0x11B5F | 0x0E00..=0x0E7F)
}

/// Why `name` is not a command or option name Discord accepts:
/// `^[-_'\p{L}\p{N}\p{sc=Deva}\p{sc=Thai}]{1,32}$`, in lower case where a lower-case form exists.
pub fn name_problem(name: &str) -> Option<String> {
    let n = chars(name);
    if n == 0 || n > NAME_MAX {
        return Some(format!(
            "`{name}` must be 1 to {NAME_MAX} characters (it has {n})"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|&c| !(c.is_alphabetic() || c.is_numeric() || "-_'".contains(c) || deva_or_thai(c)))
    {
        return Some(format!(
            "`{name}` holds `{c}`: Discord takes letters, digits, `-`, `_` and `'` only"
        ));
    }
    if name
        .chars()
        .any(|c| !c.to_lowercase().eq(std::iter::once(c)))
    {
        return Some(format!("`{name}` must be in lower case"));
    }
    None
}

/// The description Discord is sent for an option: its own, else its name (as the catalog
/// renders it).
fn option_description(o: &crate::OptionConfig) -> &str {
    if o.description.is_empty() {
        &o.name
    } else {
        &o.description
    }
}

fn kind(o: &crate::OptionConfig) -> &str {
    if o.kind.is_empty() { "string" } else { &o.kind }
}

/// The characters of `c` that count towards Discord's 8,000 per command.
pub fn command_size(c: &CommandConfig) -> usize {
    chars(&c.name)
        + chars(&c.description)
        + c.options
            .iter()
            .map(|o| {
                chars(&o.name)
                    + chars(option_description(o))
                    + o.choices
                        .iter()
                        .map(|ch| chars(&ch.name) + chars(&ch.value))
                        .sum::<usize>()
            })
            .sum::<usize>()
}

fn number_problem(kind: &str, v: &str) -> Option<String> {
    match kind {
        "integer" => match v.trim().parse::<i64>() {
            Ok(n) if (n as f64).abs() <= SAFE_INTEGER_MAX => None,
            Ok(_) => Some(format!("`{v}` is outside ±2^53")),
            Err(_) => Some(format!("`{v}` is not an integer")),
        },
        "number" => match v.trim().parse::<f64>() {
            Ok(n) if n.is_finite() => None,
            _ => Some(format!("`{v}` is not a number")),
        },
        _ => None,
    }
}

/// Everything Discord would refuse in `c`, each as `err(path, why)` with `path` relative to
/// the command (`name`, `options[2].choices[0].value`, `modal.inputs[1].label`, ...).
pub fn check_command(c: &CommandConfig, err: &mut impl FnMut(&str, String)) {
    if let Some(p) = name_problem(&c.name) {
        err("name", p);
    }
    let d = chars(&c.description);
    if d == 0 || d > DESCRIPTION_MAX {
        err(
            "description",
            format!("must be 1 to {DESCRIPTION_MAX} characters (it has {d})"),
        );
    }
    if c.options.len() > OPTIONS_MAX {
        err(
            "options",
            format!(
                "{} options; Discord allows at most {OPTIONS_MAX}",
                c.options.len()
            ),
        );
    }
    let mut seen_optional = false;
    for (j, o) in c.options.iter().enumerate() {
        let key = |f: &str| format!("options[{j}].{f}");
        if let Some(p) = name_problem(&o.name) {
            err(&key("name"), p);
        }
        let d = chars(option_description(o));
        if d > DESCRIPTION_MAX {
            err(
                &key("description"),
                format!("must be 1 to {DESCRIPTION_MAX} characters (it has {d})"),
            );
        }
        if o.required && seen_optional {
            err(
                &key("required"),
                "required options must come before optional ones".into(),
            );
        }
        seen_optional |= !o.required;
        let kind = kind(o);
        if o.choices.len() > CHOICES_MAX {
            err(
                &key("choices"),
                format!(
                    "{} choices; Discord allows at most {CHOICES_MAX}",
                    o.choices.len()
                ),
            );
        }
        if !o.choices.is_empty() && !["string", "integer", "number"].contains(&kind) {
            err(&key("choices"), format!("{kind} options take no choices"));
        }
        if o.autocomplete && !o.choices.is_empty() {
            err(
                &key("autocomplete"),
                "cannot be combined with choices".into(),
            );
        }
        for (k, ch) in o.choices.iter().enumerate() {
            let ckey = |f: &str| format!("options[{j}].choices[{k}].{f}");
            let n = chars(&ch.name);
            if n == 0 || n > CHOICE_NAME_MAX {
                err(
                    &ckey("name"),
                    format!("must be 1 to {CHOICE_NAME_MAX} characters (it has {n})"),
                );
            }
            if kind == "string" {
                let n = chars(&ch.value);
                if n == 0 || n > CHOICE_VALUE_MAX {
                    err(
                        &ckey("value"),
                        format!("must be 1 to {CHOICE_VALUE_MAX} characters (it has {n})"),
                    );
                }
            } else if let Some(p) = number_problem(kind, &ch.value) {
                err(&ckey("value"), format!("{p}, and the option is {kind}"));
            }
        }
        for (f, v) in [("min_length", o.min_length), ("max_length", o.max_length)] {
            if let Some(v) = v
                && v > STRING_LENGTH_MAX
            {
                err(
                    &key(f),
                    format!("{v} is over Discord's {STRING_LENGTH_MAX}"),
                );
            }
        }
        if kind == "integer" {
            for (f, v) in [("min_value", o.min_value), ("max_value", o.max_value)] {
                if let Some(v) = v
                    && v.abs() > SAFE_INTEGER_MAX
                {
                    err(&key(f), format!("{v} is outside ±2^53"));
                }
            }
        }
    }
    let total = command_size(c);
    if total > COMMAND_TOTAL_MAX {
        err(
            "options",
            format!(
                "the command's names, descriptions and choices add up to {total} characters; Discord allows {COMMAND_TOTAL_MAX}"
            ),
        );
    }
    if let Some(m) = &c.modal {
        let t = chars(&m.title);
        if t == 0 || t > MODAL_TITLE_MAX {
            err(
                "modal.title",
                format!("must be 1 to {MODAL_TITLE_MAX} characters (it has {t})"),
            );
        }
        if m.inputs.is_empty() || m.inputs.len() > MODAL_INPUTS_MAX {
            err(
                "modal.inputs",
                format!("must have 1 to {MODAL_INPUTS_MAX} inputs"),
            );
        }
        for (j, input) in m.inputs.iter().enumerate() {
            let key = |f: &str| format!("modal.inputs[{j}].{f}");
            let n = chars(&input.label);
            if n == 0 || n > LABEL_MAX {
                err(
                    &key("label"),
                    format!("must be 1 to {LABEL_MAX} characters (it has {n})"),
                );
            }
            let n = chars(&input.placeholder);
            if n > PLACEHOLDER_MAX {
                err(
                    &key("placeholder"),
                    format!("at most {PLACEHOLDER_MAX} characters (it has {n})"),
                );
            }
            if let Some(o) = c.options.iter().find(|o| o.name == input.name) {
                for (f, v) in [("min_length", o.min_length), ("max_length", o.max_length)] {
                    if let Some(v) = v
                        && v > TEXT_INPUT_MAX
                    {
                        err(
                            &key(f),
                            format!(
                                "option `{}` has {f} {v}; a modal's text input takes at most {TEXT_INPUT_MAX}",
                                o.name
                            ),
                        );
                    }
                }
            }
        }
    }
}

/// Everything Discord would refuse in `c`, as `path: why` lines (empty: Discord accepts it).
pub fn problems(c: &CommandConfig) -> Vec<String> {
    let mut out = Vec::new();
    check_command(c, &mut |k, p| out.push(format!("{k}: {p}")));
    out
}

/// Makes the repairs that keep `c` faithful to what it runs, and says which it made: a command
/// name in lower case; descriptions and choice names clipped with `…` (or, when empty, the
/// name); an empty enum value dropped (the option can still be left out); a word enum under an
/// integer or number hint made a string option (its values are what Argo gets); a boolean with
/// an enum of `true`/`false` keeps no choices, one of other words becomes a string option. A
/// choice value too long for Discord has no faithful repair: [`check_command`] refuses it.
pub fn repair(c: &mut CommandConfig) -> Vec<String> {
    let mut done = Vec::new();
    let lower = c.name.to_lowercase();
    if lower != c.name {
        done.push(format!("name `{}` used in lower case (`{lower}`)", c.name));
        c.name = lower;
    }
    if c.description.trim().is_empty() {
        c.description = c.name.clone();
    } else if chars(&c.description) > DESCRIPTION_MAX {
        done.push(format!(
            "description clipped to {DESCRIPTION_MAX} characters (it had {})",
            chars(&c.description)
        ));
        c.description = clip(&c.description, DESCRIPTION_MAX);
    }
    for o in &mut c.options {
        if chars(&o.description) > DESCRIPTION_MAX {
            done.push(format!(
                "option `{}`: description clipped to {DESCRIPTION_MAX} characters",
                o.name
            ));
            o.description = clip(&o.description, DESCRIPTION_MAX);
        }
        let before = o.choices.len();
        o.choices.retain(|ch| !ch.value.is_empty());
        if o.choices.len() < before {
            done.push(format!(
                "option `{}`: the empty enum value dropped (Discord takes no empty choice; leave the option out for it)",
                o.name
            ));
        }
        for ch in &mut o.choices {
            if ch.name.is_empty() {
                ch.name = ch.value.clone();
            }
            if chars(&ch.name) > CHOICE_NAME_MAX {
                done.push(format!(
                    "option `{}`: choice name clipped to {CHOICE_NAME_MAX} characters",
                    o.name
                ));
                ch.name = clip(&ch.name, CHOICE_NAME_MAX);
            }
        }
        let k = kind(o).to_string();
        if (k == "integer" || k == "number")
            && o.choices
                .iter()
                .any(|ch| number_problem(&k, &ch.value).is_some())
        {
            done.push(format!(
                "option `{}`: hinted {k} but its enum holds words; made a string option",
                o.name
            ));
            o.kind = "string".into();
            o.min_value = None;
            o.max_value = None;
        }
        if k == "boolean" && !o.choices.is_empty() {
            let is_bool = |ch: &ChoiceConfig| ch.value == "true" || ch.value == "false";
            if o.choices.iter().all(is_bool) {
                done.push(format!(
                    "option `{}`: a boolean takes no choices; its enum (true, false) dropped",
                    o.name
                ));
                o.choices.clear();
            } else {
                done.push(format!(
                    "option `{}`: hinted boolean but its enum holds other words; made a string option",
                    o.name
                ));
                o.kind = "string".into();
            }
        }
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ModalConfig, ModalInputConfig, OptionConfig};

    fn command() -> CommandConfig {
        CommandConfig {
            name: "deploy".into(),
            description: "Deploy".into(),
            options: vec![OptionConfig {
                name: "service".into(),
                description: "Which".into(),
                required: true,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn refused(c: &CommandConfig) -> Vec<String> {
        let mut v = Vec::new();
        check_command(c, &mut |k, _| v.push(k.to_string()));
        v
    }

    fn s(n: usize) -> String {
        "x".repeat(n)
    }

    #[test]
    fn names_follow_discords_pattern() {
        for ok in [
            "deploy",
            "a",
            "ops-deploy_2",
            "don't",
            "déployer",
            "रन",
            "ทดสอบ",
            &s(32),
        ] {
            assert_eq!(name_problem(ok), None, "{ok}");
        }
        for bad in [
            "",
            "ops:deploy",
            "Deploy",
            "two words",
            "a.b",
            "a/b",
            &s(33),
            "ÉTÉ",
        ] {
            assert!(name_problem(bad).is_some(), "{bad}");
        }
        assert!(
            name_problem("ops:deploy")
                .expect("refused")
                .contains("holds `:`")
        );
    }

    #[test]
    fn each_length_at_below_and_above_its_bound() {
        type Set = fn(&mut CommandConfig, usize);
        let cases: [(&str, usize, usize, Set); 7] = [
            ("description", 1, DESCRIPTION_MAX, |c, n| {
                c.description = s(n)
            }),
            ("options[0].description", 1, DESCRIPTION_MAX, |c, n| {
                c.options[0].description = s(n)
            }),
            ("options[0].choices[0].name", 1, CHOICE_NAME_MAX, |c, n| {
                c.options[0].choices = vec![ChoiceConfig {
                    name: s(n),
                    value: "v".into(),
                }]
            }),
            (
                "options[0].choices[0].value",
                1,
                CHOICE_VALUE_MAX,
                |c, n| {
                    c.options[0].choices = vec![ChoiceConfig {
                        name: "n".into(),
                        value: s(n),
                    }]
                },
            ),
            (
                "options[0].max_length",
                0,
                STRING_LENGTH_MAX as usize,
                |c, n| c.options[0].max_length = Some(n as u32),
            ),
            ("options", 0, OPTIONS_MAX, |c, n| {
                c.options = (0..n)
                    .map(|i| OptionConfig {
                        name: format!("o{i}"),
                        ..Default::default()
                    })
                    .collect()
            }),
            ("options[0].choices", 0, CHOICES_MAX, |c, n| {
                c.options[0].choices = (0..n)
                    .map(|i| ChoiceConfig {
                        name: format!("c{i}"),
                        value: format!("v{i}"),
                    })
                    .collect()
            }),
        ];
        for (path, min, max, set) in cases {
            for (n, ok) in [(max - 1, true), (max, true), (max + 1, false)] {
                let mut c = command();
                set(&mut c, n);
                assert_eq!(
                    refused(&c).is_empty(),
                    ok,
                    "{path} at {n}: {:?}",
                    refused(&c)
                );
                if !ok {
                    assert_eq!(refused(&c), [path], "{path} at {n}");
                }
            }
            if min == 1 && path != "options[0].description" {
                let mut c = command();
                set(&mut c, 0);
                assert_eq!(refused(&c), [path], "{path} empty");
            }
        }
    }

    #[test]
    fn the_command_total_counts_every_text() {
        let mut c = command();
        // 6 + 6 + 7 + 5 = 24 so far; 25 choices of name 100 + value 100 = 5,000 more per option.
        c.options[0].choices = (0..25)
            .map(|i| ChoiceConfig {
                name: format!("{i:0>100}"),
                value: format!("{i:0>100}"),
            })
            .collect();
        let mut other = c.options[0].clone();
        other.name = "second".into();
        other.required = false;
        c.options.push(other);
        assert_eq!(command_size(&c), 6 + 6 + 7 + 5 + 6 + 5 + 10_000);
        assert_eq!(refused(&c), ["options"]);
        c.options.truncate(1);
        assert!(refused(&c).is_empty());
        // At the bound exactly: a second option's choices take up the room left.
        let mut second = OptionConfig {
            name: "second".into(),
            ..Default::default()
        };
        let mut left = COMMAND_TOTAL_MAX - command_size(&c) - 12;
        while left >= 2 {
            let n = (left - 1).min(100);
            let v = (left - n).min(100);
            second.choices.push(ChoiceConfig {
                name: s(n),
                value: s(v),
            });
            left -= n + v;
        }
        c.description.push_str(&s(left));
        c.options.push(second);
        assert_eq!(command_size(&c), COMMAND_TOTAL_MAX);
        assert!(refused(&c).is_empty(), "{:?}", refused(&c));
        c.options[0].description.push('x');
        assert_eq!(refused(&c), ["options"]);
    }

    #[test]
    fn typed_choices_and_order() {
        let mut c = command();
        c.options[0].kind = "integer".into();
        c.options[0].choices = vec![ChoiceConfig {
            name: "one".into(),
            value: "one".into(),
        }];
        assert_eq!(refused(&c), ["options[0].choices[0].value"]);
        c.options[0].choices[0].value = "9007199254740992".into();
        assert_eq!(refused(&c), ["options[0].choices[0].value"]);
        c.options[0].choices[0].value = "-9007199254740991".into();
        assert!(refused(&c).is_empty());
        c.options[0].kind = "boolean".into();
        c.options[0].choices[0].value = "true".into();
        assert_eq!(refused(&c), ["options[0].choices"]);
        let mut c = command();
        c.options[0].required = false;
        c.options.push(OptionConfig {
            name: "late".into(),
            required: true,
            ..Default::default()
        });
        assert_eq!(refused(&c), ["options[1].required"]);
    }

    #[test]
    fn modals_take_discords_limits() {
        let mut c = command();
        c.modal = Some(ModalConfig {
            title: s(45),
            inputs: vec![ModalInputConfig {
                name: "service".into(),
                label: s(45),
                placeholder: s(100),
                ..Default::default()
            }],
        });
        c.options[0].max_length = Some(4000);
        assert!(refused(&c).is_empty());
        let m = c.modal.as_mut().expect("modal");
        m.title = s(46);
        m.inputs[0].label = s(46);
        m.inputs[0].placeholder = s(101);
        c.options[0].max_length = Some(4001);
        assert_eq!(
            refused(&c),
            [
                "modal.title",
                "modal.inputs[0].label",
                "modal.inputs[0].placeholder",
                "modal.inputs[0].max_length"
            ]
        );
    }

    #[test]
    fn repairs_are_faithful_and_said() {
        let mut c = command();
        c.name = "Deploy".into();
        c.description = s(300);
        c.options[0].choices = vec![
            ChoiceConfig {
                name: String::new(),
                value: String::new(),
            },
            ChoiceConfig {
                name: String::new(),
                value: "fast".into(),
            },
        ];
        c.options.push(OptionConfig {
            name: "count".into(),
            kind: "integer".into(),
            choices: vec![ChoiceConfig {
                name: "few".into(),
                value: "few".into(),
            }],
            ..Default::default()
        });
        c.options.push(OptionConfig {
            name: "dry".into(),
            kind: "boolean".into(),
            choices: ["true", "false"]
                .map(|v| ChoiceConfig {
                    name: v.into(),
                    value: v.into(),
                })
                .to_vec(),
            ..Default::default()
        });
        assert!(!refused(&c).is_empty());
        let done = repair(&mut c);
        assert_eq!(done.len(), 5, "{done:?}");
        assert!(refused(&c).is_empty(), "{:?}", refused(&c));
        assert_eq!(c.name, "deploy");
        assert_eq!(chars(&c.description), 100);
        assert!(c.description.ends_with('…'));
        assert_eq!(c.options[0].choices.len(), 1);
        assert_eq!(c.options[0].choices[0].name, "fast");
        assert_eq!(c.options[1].kind, "string");
        assert!(c.options[2].choices.is_empty());
        // A value too long for Discord has no faithful repair.
        c.options[0].choices[0].value = s(101);
        assert!(repair(&mut c).is_empty());
        assert_eq!(refused(&c), ["options[0].choices[0].value"]);
    }
}
