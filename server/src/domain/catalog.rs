//! The command catalog: which commands exist, what they run, and the server-side validation of
//! their options. Discord's client-side checks are never trusted; only declared options reach
//! Argo, on top of the configured base parameters (`argo.parameters`).

use crate::domain::input::{Refusal, Refusals, Rule, safe_text, shell_safe, storable};
use crate::domain::templates::{Merged, Template, lint_configured, merge};
use crate::domain::{Error, Result};
use facteur_config::{CommandConfig, Config, OptionConfig, is_snowflake};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};

/// Discord's integer range (±2^53).
const MAX_SAFE_INTEGER: i64 = 9_007_199_254_740_991;

/// What a validated command invocation runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// Command name.
    pub command: String,
    /// WorkflowTemplate.
    pub workflow_template: String,
    /// Namespace.
    pub namespace: String,
    /// Service account.
    pub service_account: String,
    /// Prefix of the Workflow name.
    pub workflow_name_prefix: String,
    /// Base parameters overlaid by the option values.
    pub parameters: BTreeMap<String, String>,
}

impl Resolved {
    /// The run this resolution asks for.
    pub fn into_run(
        self,
        idempotency_key: String,
        source: crate::domain::run::RunSource,
        requester: crate::domain::run::Requester,
        trace_parent: String,
    ) -> crate::domain::run::NewRun {
        crate::domain::run::NewRun {
            idempotency_key,
            command: self.command,
            source,
            requester,
            namespace: self.namespace,
            workflow_template: self.workflow_template,
            service_account: self.service_account,
            workflow_name_prefix: self.workflow_name_prefix,
            parameters: self.parameters,
            parent_run_id: None,
            trace_parent,
        }
    }
}

/// The catalog in effect: the configured commands, then those of labelled WorkflowTemplates
/// (replaced as the argo-adapters report them; clones share them).
#[derive(Clone, Debug)]
pub struct Catalog {
    configured: Vec<CommandConfig>,
    templates: Arc<RwLock<FromTemplates>>,
    base: BTreeMap<String, String>,
    namespace: String,
    template: String,
    service_account: String,
    /// `input.max_value_length`.
    max_value_length: u32,
}

/// The part of the catalog that comes from WorkflowTemplates.
#[derive(Clone, Debug, Default)]
struct FromTemplates {
    /// What was reported, sorted (to tell a change).
    reported: Vec<Template>,
    merged: Merged,
    /// The configured commands with the lint of the templates they run (`None` until a
    /// report: then the configured ones as they are).
    configured: Option<Vec<CommandConfig>>,
    /// Bumped by every change.
    version: u64,
}

/// Names no template can take besides the configured commands.
const BUILTINS: [&str; 3] = ["status", "runs", "cancel"];

impl Catalog {
    /// From the configuration.
    pub fn from_config(c: &Config) -> Catalog {
        Catalog {
            configured: c.catalog(),
            templates: Arc::default(),
            base: c.argo.parameters.clone(),
            namespace: c.argo.namespace.clone(),
            template: c.argo.workflow_template.clone(),
            service_account: c.argo.service_account.clone(),
            max_value_length: c.input.max_value_length,
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, FromTemplates> {
        self.templates.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The commands: configured ones first, then those of templates.
    pub fn commands(&self) -> Vec<CommandConfig> {
        let t = self.read();
        t.configured
            .as_ref()
            .unwrap_or(&self.configured)
            .iter()
            .cloned()
            .chain(t.merged.commands.iter().map(|(c, _)| c.clone()))
            .collect()
    }

    /// The quota the configuration gives `command` (a guild's policy may override it).
    pub fn quota_of(&self, command: &str) -> crate::domain::policy::Quota {
        self.configured
            .iter()
            .find(|c| c.name == command)
            .map(|c| crate::domain::policy::Quota {
                max_concurrent: c.max_concurrent,
                max_per_hour: c.max_per_hour,
            })
            .unwrap_or_default()
    }

    /// The command named so.
    pub fn command(&self, name: &str) -> Option<CommandConfig> {
        self.commands().into_iter().find(|c| c.name == name)
    }

    /// Where `command` comes from: `configuration`, or the `namespace/template` that defines it.
    pub fn source_of(&self, command: &str) -> String {
        self.read()
            .merged
            .commands
            .iter()
            .find(|(c, _)| c.name == command)
            .map_or_else(|| "configuration".to_string(), |(_, s)| s.clone())
    }

    /// How many commands come from templates.
    pub fn template_commands(&self) -> usize {
        self.read().merged.commands.len()
    }

    /// Labelled templates that are not commands, and why.
    pub fn problems(&self) -> Vec<String> {
        self.read().merged.problems.clone()
    }

    /// Commands from templates repaired to meet Discord's rules, and how.
    pub fn repairs(&self) -> Vec<String> {
        self.read().merged.repairs.clone()
    }

    /// Bumped whenever the commands from templates change.
    pub fn version(&self) -> u64 {
        self.read().version
    }

    /// Replaces the templates' commands with those of `reported`; whether anything changed.
    pub fn set_templates(&self, mut reported: Vec<Template>) -> bool {
        reported.sort_by_key(|t| (t.namespace.clone(), t.name.clone()));
        if self.read().reported == reported {
            return false;
        }
        let taken: BTreeSet<String> = self
            .configured
            .iter()
            .map(|c| c.name.clone())
            .chain(BUILTINS.iter().map(|b| b.to_string()))
            .collect();
        let merged = merge(&taken, &reported);
        let configured =
            lint_configured(&self.configured, &reported, &self.namespace, &self.template);
        let mut t = self.templates.write().unwrap_or_else(|e| e.into_inner());
        t.merged = merged;
        t.configured = Some(configured);
        t.reported = reported;
        t.version += 1;
        true
    }

    /// Whether a failed run of `command` shows its failing step's log tail.
    pub fn shows_logs(&self, command: &str) -> bool {
        self.configured
            .iter()
            .any(|c| c.name == command && c.show_logs)
    }

    /// The namespace `cmd` runs in: its own, else `argo.namespace`.
    pub fn namespace_of(&self, cmd: &CommandConfig) -> String {
        if cmd.namespace.is_empty() {
            self.namespace.clone()
        } else {
            cmd.namespace.clone()
        }
    }

    /// Validates `values` against `command` and resolves what it runs: every value refused
    /// is named with its rule ([`Error::Refused`]), an unknown command is INVALID_ARGUMENT.
    pub fn resolve(&self, command: &str, values: &BTreeMap<String, String>) -> Result<Resolved> {
        for name in values.keys() {
            storable("option name", name, MAX_OPTION_NAME)?;
        }
        let commands = self.commands();
        let Some(cmd) = commands.iter().find(|c| c.name == command) else {
            // A few names, not the whole catalog: the answer is a chat message (2,000 at most).
            const SHOWN: usize = 20;
            let known: Vec<&str> = commands
                .iter()
                .take(SHOWN)
                .map(|c| c.name.as_str())
                .collect();
            let more = match commands.len().saturating_sub(SHOWN) {
                0 => String::new(),
                n => format!(" and {n} more"),
            };
            return Err(Error::InvalidArgument(format!(
                "unknown command `{}`; known: {}{more}",
                facteur_config::discord::clip(command, 32),
                known.join(", ")
            )));
        };
        let mut refused = Vec::new();
        let mut refuse = |option: &str, rule: Rule, m: String| {
            refused.push(Refusal {
                option: option.to_string(),
                rule,
                message: format!("`{option}` {m}"),
            })
        };
        for name in values.keys() {
            if !cmd.options.iter().any(|o| &o.name == name) {
                let declared: Vec<&str> = cmd.options.iter().map(|o| o.name.as_str()).collect();
                refuse(
                    name,
                    Rule::Unknown,
                    format!(
                        "is not an option of command `{command}` (declared: {})",
                        declared.join(", ")
                    ),
                );
            }
        }
        let mut parameters = self.base.clone();
        for o in &cmd.options {
            match values.get(&o.name) {
                None if o.required => refuse(&o.name, Rule::Required, "is required".into()),
                None => {}
                Some(v) => match check_value(o, v, self.max_value_length) {
                    Ok(v) => {
                        let param = if o.parameter.is_empty() {
                            o.name.clone()
                        } else {
                            o.parameter.clone()
                        };
                        parameters.insert(param, v);
                    }
                    Err((rule, m)) => refuse(&o.name, rule, m),
                },
            }
        }
        if !refused.is_empty() {
            return Err(Error::Refused(Refusals(refused)));
        }
        let or = |v: &str, d: &str| {
            if v.is_empty() {
                d.to_string()
            } else {
                v.to_string()
            }
        };
        Ok(Resolved {
            command: cmd.name.clone(),
            workflow_template: or(&cmd.workflow_template, &self.template),
            namespace: self.namespace_of(cmd),
            service_account: or(&cmd.service_account, &self.service_account),
            workflow_name_prefix: or(
                &cmd.workflow_name_prefix,
                &format!("{}-", cmd.name.replace([':', '_'], "-")),
            ),
            parameters,
        })
    }
}

/// Discord's longest string option.
pub const MAX_OPTION_VALUE: usize = 6000;
/// Longest option name (Discord allows 32).
const MAX_OPTION_NAME: usize = 100;

/// Checks one value by the option's type, bounds and rules; returns it normalised, or the rule
/// it breaks and what is wrong. Every value first follows [`safe_text`]; a string then has a
/// length (its own bounds, else `max_value_length`), its `pattern` when it declares one, and
/// otherwise, where the template puts it into a shell, no shell metacharacter.
fn check_value(
    o: &OptionConfig,
    v: &str,
    max_value_length: u32,
) -> std::result::Result<String, (Rule, String)> {
    safe_text(v)?;
    let kind = if o.kind.is_empty() {
        "string"
    } else {
        o.kind.as_str()
    };
    let value = match kind {
        "integer" => {
            let n: i64 = v
                .trim()
                .parse()
                .map_err(|_| (Rule::Type, format!("must be a whole number (got `{v}`)")))?;
            if n.abs() > MAX_SAFE_INTEGER {
                return Err((
                    Rule::Range,
                    format!("must be between -{MAX_SAFE_INTEGER} and {MAX_SAFE_INTEGER} (got {n})"),
                ));
            }
            check_range(o, n as f64).map_err(|m| (Rule::Range, m))?;
            n.to_string()
        }
        "number" => {
            let n: f64 = v
                .trim()
                .parse()
                .map_err(|_| (Rule::Type, format!("must be a number (got `{v}`)")))?;
            if !n.is_finite() {
                return Err((Rule::Type, format!("must be a finite number (got `{v}`)")));
            }
            check_range(o, n).map_err(|m| (Rule::Range, m))?;
            v.trim().to_string()
        }
        "boolean" => match v.trim() {
            "true" | "false" => v.trim().to_string(),
            _ => return Err((Rule::Type, format!("must be true or false (got `{v}`)"))),
        },
        "user" | "channel" | "role" => {
            if !is_snowflake(v.trim()) {
                return Err((Rule::Type, format!("must be a {kind} id (got `{v}`)")));
            }
            v.trim().to_string()
        }
        _ => {
            let len = v.chars().count();
            let max = o
                .max_length
                .unwrap_or(max_value_length)
                .min(MAX_OPTION_VALUE as u32) as usize;
            let min = o.min_length.unwrap_or(0) as usize;
            if len < min || len > max {
                let bounds = if min > 0 {
                    format!("between {min} and {max} characters long")
                } else {
                    format!("at most {max} characters long")
                };
                return Err((Rule::Length, format!("must be {bounds} (got {len})")));
            }
            if !o.pattern.is_empty() {
                // Validated when the catalog took the command: an invalid one is not here.
                let matches =
                    facteur_config::whole_value_pattern(&o.pattern).is_ok_and(|re| re.is_match(v));
                if !matches {
                    let what = if o.pattern_hint.is_empty() {
                        format!("must match `{}`", o.pattern)
                    } else {
                        format!("must be {}", o.pattern_hint)
                    };
                    return Err((Rule::Pattern, what));
                }
            } else if !o.interpolated_in.is_empty() && o.choices.is_empty() {
                shell_safe(v)?;
            }
            v.to_string()
        }
    };
    if !o.choices.is_empty() && !o.choices.iter().any(|c| c.value == value) {
        let allowed: Vec<&str> = o.choices.iter().map(|c| c.value.as_str()).collect();
        return Err((
            Rule::Choice,
            format!("must be one of {}", allowed.join(", ")),
        ));
    }
    Ok(value)
}

fn check_range(o: &OptionConfig, n: f64) -> std::result::Result<(), String> {
    if o.min_value.is_some_and(|m| n < m) || o.max_value.is_some_and(|m| n > m) {
        let bounds = match (o.min_value, o.max_value) {
            (Some(a), Some(b)) => format!("between {a} and {b}"),
            (Some(a), None) => format!("at least {a}"),
            (_, Some(b)) => format!("at most {b}"),
            (None, None) => "any number".into(),
        };
        return Err(format!("must be {bounds} (got {n})"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use facteur_config::{ChoiceConfig, Process};

    fn catalog() -> Catalog {
        let mut c =
            facteur_config::load_from(None, &Default::default(), Process::Server).expect("config");
        c.argo.parameters.insert("Base".into(), "b".into());
        c.commands = vec![CommandConfig {
            name: "deploy".into(),
            description: "d".into(),
            workflow_template: "deploy-tmpl".into(),
            options: vec![
                OptionConfig {
                    name: "service".into(),
                    required: true,
                    choices: vec![ChoiceConfig {
                        name: "API".into(),
                        value: "api".into(),
                    }],
                    ..Default::default()
                },
                OptionConfig {
                    name: "replicas".into(),
                    kind: "integer".into(),
                    min_value: Some(1.0),
                    max_value: Some(10.0),
                    ..Default::default()
                },
                OptionConfig {
                    name: "owner".into(),
                    kind: "user".into(),
                    parameter: "ownerId".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        }];
        Catalog::from_config(&c)
    }

    fn vals(p: &[(&str, &str)]) -> BTreeMap<String, String> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn resolves_declared_options_over_base_parameters() {
        let r = catalog()
            .resolve(
                "deploy",
                &vals(&[
                    ("service", "api"),
                    ("replicas", "3"),
                    ("owner", "123456789012345678"),
                ]),
            )
            .expect("ok");
        assert_eq!(r.workflow_template, "deploy-tmpl");
        assert_eq!(r.namespace, "argo-workflows");
        assert_eq!(r.workflow_name_prefix, "deploy-");
        assert_eq!(
            r.parameters,
            vals(&[
                ("Base", "b"),
                ("service", "api"),
                ("replicas", "3"),
                ("ownerId", "123456789012345678")
            ])
        );
    }

    #[test]
    fn an_unknown_command_is_answered_within_a_chat_message() {
        let mut c =
            facteur_config::load_from(None, &Default::default(), Process::Server).expect("config");
        c.commands = (0..90)
            .map(|i| CommandConfig {
                name: format!("{i:0>32}"),
                description: "d".into(),
                ..Default::default()
            })
            .collect();
        let catalog = Catalog::from_config(&c);
        let Err(Error::InvalidArgument(m)) = catalog.resolve(&"x".repeat(500), &BTreeMap::new())
        else {
            panic!("refused");
        };
        assert!(m.chars().count() < 1000, "{}", m.len());
        assert!(m.ends_with(" and 70 more"), "{m}");
    }

    #[test]
    fn rejects_what_discord_would_have_checked_client_side() {
        let c = catalog();
        let err = |v: &[(&str, &str)]| match c.resolve("deploy", &vals(v)) {
            Err(e @ Error::Refused(_)) => e.to_string(),
            other => panic!("expected a refusal, got {other:?}"),
        };
        assert!(err(&[]).contains("`service` is required"));
        assert_eq!(err(&[("service", "web")]), "`service` must be one of api");
        let replicas = err(&[("service", "api"), ("replicas", "11")]);
        assert!(
            replicas.starts_with("`replicas` must be between 1 and ")
                && replicas.ends_with(" (got 11)")
                && !replicas.contains("Some("),
            "{replicas}"
        );
        assert_eq!(
            err(&[("service", "api"), ("replicas", "two")]),
            "`replicas` must be a whole number (got `two`)"
        );
        assert_eq!(
            err(&[("service", "api"), ("owner", "bob")]),
            "`owner` must be a user id (got `bob`)"
        );
        assert!(
            err(&[("service", "api"), ("extra", "x")])
                .contains("`extra` is not an option of command `deploy`")
        );
        assert!(
            matches!(c.resolve("nope", &BTreeMap::new()), Err(Error::InvalidArgument(m)) if m.contains("unknown command"))
        );
    }

    /// Injection payloads against a value the template runs in a shell, one it passes through
    /// `env`, and one with a declared pattern: (payload, shell rule, env rule, pattern rule).
    #[test]
    fn typed_values_cannot_break_out_of_the_template() {
        let mut c =
            facteur_config::load_from(None, &Default::default(), Process::Server).expect("config");
        let text = |name: &str| OptionConfig {
            name: name.into(),
            description: "d".into(),
            ..Default::default()
        };
        c.commands = vec![CommandConfig {
            name: "say".into(),
            description: "d".into(),
            options: vec![
                OptionConfig {
                    interpolated_in: vec!["templates[0].script.source".into()],
                    ..text("shell")
                },
                text("env"),
                OptionConfig {
                    interpolated_in: vec!["templates[0].container.args[1]".into()],
                    pattern: "[a-z0-9 ;'/-]+".into(),
                    pattern_hint: "lower case words".into(),
                    ..text("patterned")
                },
            ],
            ..Default::default()
        }];
        let cat = Catalog::from_config(&c);
        let long = "a".repeat(1001);
        type Expected<'a> = (&'a str, Option<Rule>, Option<Rule>, Option<Rule>);
        let table: [Expected; 13] = [
            ("hello world", None, None, None),
            ("hello'; ls -la /; echo '", Some(Rule::Shell), None, None),
            (
                "$(cat /etc/passwd)",
                Some(Rule::Shell),
                None,
                Some(Rule::Pattern),
            ),
            ("`id`", Some(Rule::Shell), None, Some(Rule::Pattern)),
            // The pattern wins: its author let `;` and `/` through.
            ("a; rm -rf /", Some(Rule::Shell), None, None),
            ("a && b", Some(Rule::Shell), None, Some(Rule::Pattern)),
            ("a\nb", Some(Rule::Shell), None, Some(Rule::Pattern)),
            ("a | b", Some(Rule::Shell), None, Some(Rule::Pattern)),
            (
                "{{workflow.name}}",
                Some(Rule::TemplateSyntax),
                Some(Rule::TemplateSyntax),
                Some(Rule::TemplateSyntax),
            ),
            (
                "{{=sprig.trim('x')}}",
                Some(Rule::TemplateSyntax),
                Some(Rule::TemplateSyntax),
                Some(Rule::TemplateSyntax),
            ),
            (
                "bell\u{7}",
                Some(Rule::ControlCharacter),
                Some(Rule::ControlCharacter),
                Some(Rule::ControlCharacter),
            ),
            (
                &long,
                Some(Rule::Length),
                Some(Rule::Length),
                Some(Rule::Length),
            ),
            ("UPPER", None, None, Some(Rule::Pattern)),
        ];
        for (payload, shell, env, patterned) in table {
            for (option, want) in [("shell", shell), ("env", env), ("patterned", patterned)] {
                let got = match cat.resolve("say", &vals(&[(option, payload)])) {
                    Ok(r) => {
                        assert_eq!(r.parameters.get(option).map(String::as_str), Some(payload));
                        None
                    }
                    Err(Error::Refused(r)) => {
                        assert_eq!(r.0.len(), 1, "{r:?}");
                        assert_eq!(r.0[0].option, option);
                        assert!(r.0[0].message.starts_with(&format!("`{option}` ")), "{r:?}");
                        assert!(
                            !r.0[0].message.contains(payload),
                            "the refusal does not echo the value: {r:?}"
                        );
                        Some(r.0[0].rule)
                    }
                    Err(other) => panic!("{other:?}"),
                };
                assert_eq!(got, want, "{payload:?} in `{option}`");
            }
        }
        let Err(e) = cat.resolve("say", &vals(&[("patterned", "UPPER")])) else {
            panic!("refused");
        };
        assert_eq!(e.to_string(), "`patterned` must be lower case words");
        let Err(e) = cat.resolve("say", &vals(&[("shell", "a;b")])) else {
            panic!("refused");
        };
        assert!(
            e.to_string().contains("the template passes it to a shell"),
            "{e}"
        );
    }

    #[test]
    fn the_default_catalog_is_the_deployed_dispatch_template() {
        let c = Catalog::from_config(
            &facteur_config::load_from(None, &Default::default(), Process::Server).expect("config"),
        );
        let r = c
            .resolve("dispatch", &vals(&[("payload", "{\"a\":1}")]))
            .expect("ok");
        assert_eq!(
            (r.workflow_template.as_str(), r.namespace.as_str()),
            ("facteur-dispatch", "argo-workflows")
        );
        assert_eq!(
            r.parameters.get("payload").map(String::as_str),
            Some("{\"a\":1}")
        );
    }
}
