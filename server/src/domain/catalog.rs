//! The command catalog: which commands exist, what they run, and the server-side validation of
//! their options. Discord's client-side checks are never trusted; only declared options reach
//! Argo, on top of the configured base parameters (`argo.parameters`).

use crate::domain::input::{Refusal, Refusals, Rule, safe_text, shell_safe, storable};
use crate::domain::templates::{CLUSTER_OPTION, Merged, Template, lint_configured, merge};
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
    /// Cluster.
    pub cluster: String,
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
            cluster: self.cluster,
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
    /// The clusters runs go to (names), the first the default one.
    clusters: Vec<String>,
    namespace: String,
    template: String,
    service_account: String,
    /// `input.max_value_length`.
    max_value_length: u32,
    /// `command_policies`: the operator's policy for commands from templates.
    policies: BTreeMap<String, facteur_config::PolicyOverride>,
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
            clusters: c.clusters().into_iter().map(|k| k.name).collect(),
            namespace: c.argo.namespace.clone(),
            template: c.argo.workflow_template.clone(),
            service_account: c.argo.service_account.clone(),
            max_value_length: c.input.max_value_length,
            policies: c.command_policies.clone(),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, FromTemplates> {
        self.templates.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Every command in `t` (what [`Catalog::read`] gave): configured ones first (with the lint
    /// of their templates once reported), then those of templates.
    fn all<'a>(&'a self, t: &'a FromTemplates) -> impl Iterator<Item = &'a CommandConfig> {
        t.configured
            .as_ref()
            .unwrap_or(&self.configured)
            .iter()
            .chain(t.merged.commands.iter().map(|(c, _)| c))
    }

    /// The commands: configured ones first, then those of templates.
    pub fn commands(&self) -> Vec<CommandConfig> {
        let t = self.read();
        self.all(&t).cloned().collect()
    }

    /// The commands to which the catalog gives an hourly limit: the only ones whose ended runs
    /// of the hour a quota report must count.
    pub fn hourly_limited(&self) -> std::collections::BTreeSet<String> {
        let t = self.read();
        self.all(&t)
            .filter(|c| c.max_per_hour.is_some())
            .map(|c| c.name.clone())
            .collect()
    }

    /// The quota the catalog gives `command`: its configuration's, or its template's
    /// annotations under the operator's `command_policies` (a guild's policy may override it).
    pub fn quota_of(&self, command: &str) -> crate::domain::policy::Quota {
        self.with_command(command, |c| crate::domain::policy::Quota {
            max_concurrent: c.max_concurrent,
            max_per_hour: c.max_per_hour,
        })
        .unwrap_or_default()
    }

    /// `f` of the command named so (without copying the catalog).
    fn with_command<T>(&self, name: &str, f: impl FnOnce(&CommandConfig) -> T) -> Option<T> {
        let t = self.read();
        self.all(&t).find(|c| c.name == name).map(f)
    }

    /// The command named so.
    pub fn command(&self, name: &str) -> Option<CommandConfig> {
        self.with_command(name, CommandConfig::clone)
    }

    /// Where each policy rule `command` sets comes from (rule → source): `configuration` for a
    /// configured command, the annotation or `command_policies` for one from a template.
    pub fn policy_sources(&self, command: &str) -> BTreeMap<String, String> {
        if let Some(s) = self.read().merged.policy_sources.get(command) {
            return s.clone();
        }
        self.with_command(command, |c| {
            let set = [
                !c.approvers.is_empty(),
                c.require_second_person,
                c.max_concurrent.is_some(),
                c.max_per_hour.is_some(),
            ];
            crate::domain::templates::POLICY_RULES
                .iter()
                .zip(set)
                .filter(|(_, set)| *set)
                .map(|(r, _)| (r.to_string(), "configuration".to_string()))
                .collect()
        })
        .unwrap_or_default()
    }

    /// The longest value a string option takes: its own `max_length`, else
    /// `input.max_value_length`, never more than Discord's 6,000; `None` for options that are
    /// not free text (other types, choices).
    pub fn max_length(&self, o: &OptionConfig) -> Option<u32> {
        max_length(o, self.max_value_length)
    }

    /// Checks what an approver supplies at `approval`'s step of a run of `command`: each value
    /// as an option's ([`check_value`]: `{{`, control characters, length, the step's enum, the
    /// command's `approval_values` pattern, else no shell metacharacter where the Workflow puts
    /// it into a shell), every parameter given (its default counts), none it does not ask for.
    /// Returns the values to apply, defaults filled in.
    pub fn check_supplied(
        &self,
        command: &str,
        approval: &crate::domain::run::Approval,
        values: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>> {
        let rules = self
            .with_command(command, |c| c.approval_values.clone())
            .unwrap_or_default();
        check_supplied(approval, values, &rules, self.max_value_length)
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
        reported.sort_by_key(|t| (t.cluster.clone(), t.namespace.clone(), t.name.clone()));
        if self.read().reported == reported {
            return false;
        }
        let taken: BTreeSet<String> = self
            .configured
            .iter()
            .map(|c| c.name.clone())
            .chain(BUILTINS.iter().map(|b| b.to_string()))
            .collect();
        let merged = merge(&taken, &reported, &self.policies);
        let configured = lint_configured(
            &self.configured,
            &reported,
            self.default_cluster(),
            &self.namespace,
            &self.template,
        );
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

    /// Where commands that name no cluster run: the first configured.
    pub fn default_cluster(&self) -> &str {
        self.clusters
            .first()
            .map_or(facteur_config::DEFAULT_CLUSTER, String::as_str)
    }

    /// The clusters runs go to.
    pub fn clusters(&self) -> &[String] {
        &self.clusters
    }

    /// The clusters `command` runs in, and where in each: one for a configured command or a
    /// template in one cluster, several for a template in several (its `cluster` option).
    pub fn placements(&self, command: &str) -> Vec<(String, String)> {
        let t = self.read();
        if let Some(targets) = t.merged.clusters.get(command) {
            return targets
                .iter()
                .map(|(k, v)| (k.clone(), v.namespace.clone()))
                .collect();
        }
        self.all(&t)
            .find(|c| c.name == command)
            .map(|c| vec![(self.cluster_of(c), self.namespace_of(c))])
            .unwrap_or_default()
    }

    /// The cluster `cmd` runs in: its own, else the default one.
    pub fn cluster_of(&self, cmd: &CommandConfig) -> String {
        if cmd.cluster.is_empty() {
            self.default_cluster().to_string()
        } else {
            cmd.cluster.clone()
        }
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
        self.resolve_in(command, values, "")
    }

    /// [`Catalog::resolve`] in the cluster `cluster` asks for (empty: the command's own, or its
    /// `cluster` option's for a command in several): a cluster the command does not run in is
    /// INVALID_ARGUMENT naming those it does.
    pub fn resolve_in(
        &self,
        command: &str,
        values: &BTreeMap<String, String>,
        cluster: &str,
    ) -> Result<Resolved> {
        if !cluster.is_empty() && !self.clusters.iter().any(|k| k == cluster) {
            return Err(Error::invalid(
                "cluster",
                format!(
                    "unknown cluster `{}`; known: {}",
                    facteur_config::discord::clip(cluster, 63),
                    self.clusters.join(", ")
                ),
            ));
        }
        for name in values.keys() {
            storable("option name", name, MAX_OPTION_NAME)?;
        }
        // The catalog as it is, without copying it (this runs on every interaction).
        let t = self.read();
        let commands: Vec<&CommandConfig> = self.all(&t).collect();
        let Some(cmd) = commands.iter().copied().find(|c| c.name == command) else {
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
            return Err(Error::invalid(
                "command",
                format!(
                    "unknown command `{}`; known: {}{more}",
                    facteur_config::discord::clip(command, 32),
                    known.join(", ")
                ),
            ));
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
        let targets = t.merged.clusters.get(&cmd.name);
        let mut values = std::borrow::Cow::Borrowed(values);
        if targets.is_some() && !cluster.is_empty() {
            match values.get(CLUSTER_OPTION) {
                Some(v) if v != cluster => refuse(
                    CLUSTER_OPTION,
                    Rule::Choice,
                    format!("is `{v}` but the request asks for cluster `{cluster}`"),
                ),
                Some(_) => {}
                // Checked as the option's value: a cluster the command is not in is refused
                // as not one of its choices, which are named.
                None => {
                    values
                        .to_mut()
                        .insert(CLUSTER_OPTION.to_string(), cluster.to_string());
                }
            }
        }
        let mut parameters = self.base.clone();
        let mut chosen: Option<String> = None;
        for o in &cmd.options {
            if targets.is_some() && o.name == CLUSTER_OPTION {
                // Where to run, not a parameter of the Workflow.
                match values.get(&o.name) {
                    None => refuse(&o.name, Rule::Required, "is required".into()),
                    Some(v) => match check_value(o, v, None) {
                        Ok(v) => chosen = Some(v),
                        Err((rule, m)) => refuse(&o.name, rule, m),
                    },
                }
                continue;
            }
            match values.get(&o.name) {
                None if o.required => refuse(&o.name, Rule::Required, "is required".into()),
                None => {}
                Some(v) => match check_value(o, v, max_length(o, self.max_value_length)) {
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
        let (cluster, namespace, template) = match (targets, chosen) {
            (Some(targets), Some(k)) => {
                let target = targets.get(&k).ok_or_else(|| {
                    Error::Internal(format!("command `{command}` has no target in `{k}`"))
                })?;
                (
                    k,
                    target.namespace.clone(),
                    target.workflow_template.clone(),
                )
            }
            _ => {
                let own = self.cluster_of(cmd);
                if !cluster.is_empty() && cluster != own {
                    return Err(Error::invalid(
                        "cluster",
                        format!(
                            "command `{command}` runs in cluster `{own}` only, not `{cluster}`"
                        ),
                    ));
                }
                (own, self.namespace_of(cmd), cmd.workflow_template.clone())
            }
        };
        let or = |v: &str, d: &str| {
            if v.is_empty() {
                d.to_string()
            } else {
                v.to_string()
            }
        };
        Ok(Resolved {
            command: cmd.name.clone(),
            workflow_template: or(&template, &self.template),
            cluster,
            namespace,
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

/// The longest value a free-text option takes ([`Catalog::max_length`]).
fn max_length(o: &OptionConfig, max_value_length: u32) -> Option<u32> {
    let kind = if o.kind.is_empty() { "string" } else { &o.kind };
    (kind == "string" && o.choices.is_empty()).then(|| {
        o.max_length
            .unwrap_or(max_value_length)
            .min(MAX_OPTION_VALUE as u32)
    })
}

/// [`Catalog::check_supplied`] with the command's `rules` and `input.max_value_length`.
pub fn check_supplied(
    approval: &crate::domain::run::Approval,
    values: &BTreeMap<String, String>,
    rules: &BTreeMap<String, facteur_config::ValueRuleConfig>,
    max_value_length: u32,
) -> Result<BTreeMap<String, String>> {
    let mut refused = Vec::new();
    let mut refuse = |name: &str, rule: Rule, m: String| {
        refused.push(Refusal {
            option: name.to_string(),
            rule,
            message: format!("`{name}` {m}"),
        })
    };
    let asked: Vec<&str> = approval
        .parameters
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    for name in values.keys() {
        if !asked.contains(&name.as_str()) {
            refuse(
                name,
                Rule::Unknown,
                format!(
                    "is not asked for by `{}` (it asks for: {})",
                    approval.node,
                    if asked.is_empty() {
                        "nothing".to_string()
                    } else {
                        asked.join(", ")
                    }
                ),
            );
        }
    }
    let mut out = BTreeMap::new();
    for p in &approval.parameters {
        let value = values
            .get(&p.name)
            .filter(|v| !v.is_empty())
            .unwrap_or(&p.default);
        if value.is_empty() {
            refuse(&p.name, Rule::Required, "is required".into());
            continue;
        }
        let rule = rules.get(&p.name);
        // The supplied value is checked as a string option of the step would be.
        let o = OptionConfig {
            name: p.name.clone(),
            choices: p
                .choices
                .iter()
                .map(|c| facteur_config::ChoiceConfig {
                    name: c.clone(),
                    value: c.clone(),
                })
                .collect(),
            pattern: rule.map(|r| r.pattern.clone()).unwrap_or_default(),
            pattern_hint: rule.map(|r| r.pattern_hint.clone()).unwrap_or_default(),
            interpolated_in: p.interpolated_in.clone(),
            ..Default::default()
        };
        match check_value(&o, value, max_length(&o, max_value_length)) {
            Ok(v) => {
                out.insert(p.name.clone(), v);
            }
            Err((rule, m)) => refuse(&p.name, rule, m),
        }
    }
    if refused.is_empty() {
        Ok(out)
    } else {
        Err(Error::Refused(Refusals(refused)))
    }
}

/// Checks one value by the option's type, bounds and rules; returns it normalised, or the rule
/// it breaks and what is wrong. Every value first follows [`safe_text`]; a string then has a
/// length (its own bounds, at most `max`), its `pattern` when it declares one, and otherwise,
/// where the template puts it into a shell, no shell metacharacter.
fn check_value(
    o: &OptionConfig,
    v: &str,
    max: Option<u32>,
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
            // A string with choices is bounded by them; Discord's bound still holds.
            let max = max.unwrap_or(MAX_OPTION_VALUE as u32) as usize;
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
                let matches = compiled(&o.pattern).is_some_and(|re| re.is_match(v));
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

/// `pattern` compiled once ([`facteur_config::whole_value_pattern`]); `None` when it is not
/// one. Patterns come from the configuration and the templates, so the memo stays small; it is
/// emptied should it ever reach a thousand.
fn compiled(pattern: &str) -> Option<Arc<regex_lite::Regex>> {
    type Memo = RwLock<std::collections::HashMap<String, Option<Arc<regex_lite::Regex>>>>;
    static MEMO: std::sync::LazyLock<Memo> = std::sync::LazyLock::new(Memo::default);
    if let Some(hit) = MEMO.read().unwrap_or_else(|e| e.into_inner()).get(pattern) {
        return hit.clone();
    }
    let re = facteur_config::whole_value_pattern(pattern)
        .ok()
        .map(Arc::new);
    let mut memo = MEMO.write().unwrap_or_else(|e| e.into_inner());
    if memo.len() >= 1000 {
        memo.clear();
    }
    memo.insert(pattern.to_string(), re.clone());
    re
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

    /// A deployment with clusters `east` and `west`, and the template `build` (labelled
    /// `build`, one parameter `ref`) in each cluster of `templates`, with its description.
    fn two_clusters(templates: &[(&str, &str)]) -> Catalog {
        let c = facteur_config::Config {
            clusters: ["east", "west"]
                .map(|n| facteur_config::ClusterConfig {
                    name: n.into(),
                    ..Default::default()
                })
                .to_vec(),
            ..Default::default()
        };
        let cat = Catalog::from_config(&c);
        cat.set_templates(
            templates
                .iter()
                .map(|(cluster, described)| Template {
                    cluster: cluster.to_string(),
                    namespace: format!("ci-{cluster}"),
                    name: "build".into(),
                    command: "build".into(),
                    annotations: [(
                        crate::domain::templates::DESCRIPTION_ANNOTATION.to_string(),
                        described.to_string(),
                    )]
                    .into(),
                    parameters: vec![crate::domain::templates::TemplateParameter {
                        name: "ref".into(),
                        description: "git ref".into(),
                        ..Default::default()
                    }],
                    refused: String::new(),
                })
                .collect(),
        );
        cat
    }

    #[test]
    fn a_template_in_two_clusters_is_one_command_that_asks_where() {
        let cat = two_clusters(&[("east", "Build"), ("west", "Build")]);
        let cmd = cat.command("build").expect("one command");
        let choice = &cmd.options[0];
        assert_eq!((choice.name.as_str(), choice.required), ("cluster", true));
        let values: Vec<&str> = choice.choices.iter().map(|c| c.value.as_str()).collect();
        assert_eq!(values, ["east", "west"]);
        assert!(cat.problems().is_empty(), "{:?}", cat.problems());
        // Each choice runs in its own cluster's namespace; the choice is no Workflow parameter.
        let west = cat
            .resolve("build", &vals(&[("cluster", "west"), ("ref", "main")]))
            .expect("west");
        assert_eq!(
            (west.cluster.as_str(), west.namespace.as_str()),
            ("west", "ci-west")
        );
        assert!(!west.parameters.contains_key("cluster"));
        // The request's cluster stands for the option; asking both ways differently is refused.
        let east = cat
            .resolve_in("build", &vals(&[("ref", "main")]), "east")
            .expect("east");
        assert_eq!(east.namespace, "ci-east");
        assert!(matches!(
            cat.resolve_in("build", &vals(&[("cluster", "west"), ("ref", "x")]), "east"),
            Err(Error::Refused(_))
        ));
        // Without a cluster it is required; an unknown one is INVALID_ARGUMENT naming the known.
        assert!(matches!(
            cat.resolve("build", &vals(&[("ref", "main")])),
            Err(Error::Refused(r)) if r.0[0].option == "cluster"
        ));
        let e = cat
            .resolve_in("build", &vals(&[("ref", "main")]), "north")
            .expect_err("unknown");
        assert!(e.to_string().contains("east, west"), "{e}");
        // One cluster's template gone: one command in the other, no choice any more.
        let cat = two_clusters(&[("west", "Build")]);
        let cmd = cat.command("build").expect("west only");
        assert!(cmd.options.iter().all(|o| o.name != "cluster"));
        let r = cat
            .resolve("build", &vals(&[("ref", "main")]))
            .expect("west");
        assert_eq!(r.cluster, "west");
        assert!(
            cat.resolve_in("build", &vals(&[("ref", "main")]), "east")
                .is_err()
        );
    }

    #[test]
    fn templates_that_disagree_across_clusters_leave_the_command_out_saying_why() {
        let cat = two_clusters(&[("east", "Build"), ("west", "Build it differently")]);
        assert!(cat.command("build").is_none());
        let problems = cat.problems();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("east")
                && problems[0].contains("west")
                && problems[0].contains("left out"),
            "{problems:?}"
        );
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
        let Err(Error::InvalidArgument { message: m, .. }) =
            catalog.resolve(&"x".repeat(500), &BTreeMap::new())
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
            matches!(c.resolve("nope", &BTreeMap::new()), Err(Error::InvalidArgument { message: m, .. }) if m.contains("unknown command"))
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

    #[test]
    fn supplied_values_follow_the_rules_of_typed_ones() {
        use crate::domain::run::{Approval, ApprovalParameter};
        let approval = Approval {
            node: "gate".into(),
            parameters: vec![
                ApprovalParameter {
                    name: "confirm".into(),
                    choices: vec!["YES".into(), "NO".into()],
                    default: "NO".into(),
                    ..Default::default()
                },
                ApprovalParameter {
                    name: "note".into(),
                    interpolated_in: vec!["templates[2].script.source".into()],
                    ..Default::default()
                },
                ApprovalParameter {
                    name: "ticket".into(),
                    interpolated_in: vec!["templates[2].script.source".into()],
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let rules: BTreeMap<String, facteur_config::ValueRuleConfig> = [(
            "ticket".to_string(),
            facteur_config::ValueRuleConfig {
                pattern: r"[A-Z]+-[0-9]+|n/a \(none\)".into(),
                pattern_hint: "a ticket like OPS-12".into(),
            },
        )]
        .into();
        let values = |v: &[(&str, &str)]| -> BTreeMap<String, String> {
            v.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let ok = check_supplied(
            &approval,
            &values(&[("note", "ship it, now"), ("ticket", "n/a (none)")]),
            &rules,
            20,
        )
        .expect("accepted");
        // The default fills `confirm`; the pattern lets `(` through where the shell rule would not.
        assert_eq!(ok["confirm"], "NO");
        assert_eq!(ok["ticket"], "n/a (none)");
        let refused = |v: &[(&str, &str)]| -> Vec<(String, Rule, String)> {
            let Err(Error::Refused(r)) = check_supplied(&approval, &values(v), &rules, 20) else {
                panic!("{v:?} accepted");
            };
            r.0.into_iter()
                .map(|r| (r.option, r.rule, r.message))
                .collect()
        };
        assert_eq!(
            refused(&[("note", "x'; rm -rf /; echo '"), ("ticket", "OPS-1")]),
            [(
                "note".to_string(),
                Rule::Shell,
                "`note` must not contain quotes, `;`, `|`, `&`, `$`, backticks, `<`, `>`, parentheses, backslashes or line breaks: the template passes it to a shell".to_string()
            )]
        );
        let got = refused(&[
            ("confirm", "maybe"),
            ("note", "a very long note, longer than twenty"),
            ("ticket", "ops-1"),
            ("extra", "1"),
        ]);
        let rules_broken: Vec<(&str, Rule)> =
            got.iter().map(|(o, r, _)| (o.as_str(), *r)).collect();
        assert_eq!(
            rules_broken,
            [
                ("extra", Rule::Unknown),
                ("confirm", Rule::Choice),
                ("note", Rule::Length),
                ("ticket", Rule::Pattern),
            ]
        );
        assert_eq!(got[1].2, "`confirm` must be one of YES, NO");
        assert_eq!(got[3].2, "`ticket` must be a ticket like OPS-12");
        assert_eq!(
            refused(&[("note", "{{workflow.name}}"), ("ticket", "OPS-1")])[0].1,
            Rule::TemplateSyntax
        );
        assert_eq!(refused(&[("ticket", "OPS-1")])[0].1, Rule::Required);
    }

    #[test]
    fn a_free_text_option_says_the_bound_the_server_holds_it_to() {
        let c = catalog();
        let mut o = OptionConfig {
            name: "note".into(),
            ..Default::default()
        };
        assert_eq!(c.max_length(&o), Some(1000), "input.max_value_length");
        o.max_length = Some(50);
        assert_eq!(c.max_length(&o), Some(50));
        o.max_length = Some(9000);
        assert_eq!(c.max_length(&o), Some(6000), "Discord's bound");
        o.kind = "integer".into();
        assert_eq!(c.max_length(&o), None);
    }
}
