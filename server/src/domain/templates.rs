//! Commands that come from WorkflowTemplates: a template labelled
//! `facteur.proompteng.ai/command: <name>` in a namespace the argo-adapters serve becomes a slash
//! command with no configuration. Pure rules: how a template reads as a command, and how such
//! commands merge with the configured catalog (the configuration wins a clash).

use facteur_config::{ChoiceConfig, CommandConfig, OptionConfig, ValueRuleConfig};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

pub use facteur_proto::workflow::COMMAND_LABEL;
/// Argo's own description annotation.
pub const DESCRIPTION_ANNOTATION: &str = "workflows.argoproj.io/description";
/// Argo's title annotation.
pub const TITLE_ANNOTATION: &str = "workflows.argoproj.io/title";
/// `facteur.proompteng.ai/type.<parameter>: integer|number|boolean`.
pub const TYPE_ANNOTATION_PREFIX: &str = "facteur.proompteng.ai/type.";
/// Comma-separated parameters not exposed as options.
pub const HIDDEN_ANNOTATION: &str = "facteur.proompteng.ai/hidden";
/// `facteur.proompteng.ai/pattern.<parameter>`: the values it accepts, a regular expression
/// matched against the whole value.
pub const PATTERN_ANNOTATION_PREFIX: &str = "facteur.proompteng.ai/pattern.";
/// `facteur.proompteng.ai/pattern-hint.<parameter>`: what the pattern allows, in words.
pub const PATTERN_HINT_ANNOTATION_PREFIX: &str = "facteur.proompteng.ai/pattern-hint.";
/// `facteur.proompteng.ai/approvers`: role ids (comma-separated) that may approve or reject the
/// command's suspend steps.
pub const APPROVERS_ANNOTATION: &str = "facteur.proompteng.ai/approvers";
/// `facteur.proompteng.ai/require-second-person: "true"`: the member who started a run may not
/// approve it.
pub const SECOND_PERSON_ANNOTATION: &str = "facteur.proompteng.ai/require-second-person";
/// `facteur.proompteng.ai/max-concurrent`: runs one guild may have at once.
pub const MAX_CONCURRENT_ANNOTATION: &str = "facteur.proompteng.ai/max-concurrent";
/// `facteur.proompteng.ai/max-per-hour`: runs one guild may start per rolling hour.
pub const MAX_PER_HOUR_ANNOTATION: &str = "facteur.proompteng.ai/max-per-hour";
use facteur_config::discord::{
    CHOICES_MAX as MAX_CHOICES, COMMANDS_MAX, OPTIONS_MAX as MAX_OPTIONS,
};

/// The policy a template's annotations give its command (approvers, second person, quotas),
/// and what its `pattern.<name>` annotations allow an approver to supply; an error names the
/// annotation and what is wrong with it.
fn policy_of(t: &Template, command: &mut CommandConfig) -> Result<(), String> {
    let a = |k: &str| t.annotations.get(k).map(|v| v.trim());
    if let Some(v) = a(APPROVERS_ANNOTATION) {
        let roles: Vec<String> = v
            .split(',')
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .map(str::to_string)
            .collect();
        if let Some(bad) = roles.iter().find(|r| !facteur_config::is_snowflake(r)) {
            return Err(format!(
                "annotation `{APPROVERS_ANNOTATION}`: `{bad}` is not a role id (^[0-9]{{17,20}}$)"
            ));
        }
        command.approvers = roles;
    }
    if let Some(v) = a(SECOND_PERSON_ANNOTATION) {
        command.require_second_person = match v {
            "true" => true,
            "false" => false,
            other => {
                return Err(format!(
                    "annotation `{SECOND_PERSON_ANNOTATION}` is `{other}`; use true or false"
                ));
            }
        };
    }
    for (key, slot) in [
        (MAX_CONCURRENT_ANNOTATION, &mut command.max_concurrent),
        (MAX_PER_HOUR_ANNOTATION, &mut command.max_per_hour),
    ] {
        if let Some(v) = a(key) {
            match v.parse::<u32>() {
                Ok(n) if n > 0 => *slot = Some(n),
                _ => {
                    return Err(format!(
                        "annotation `{key}` is `{v}`; use a whole number of runs, at least 1"
                    ));
                }
            }
        }
    }
    // Patterns name parameters and supplied values alike: every one also rules what an
    // approver may supply under that name.
    for (k, v) in &t.annotations {
        if let Some(name) = k.strip_prefix(PATTERN_ANNOTATION_PREFIX) {
            let rule = ValueRuleConfig {
                pattern: v.trim().to_string(),
                pattern_hint: a(&format!("{PATTERN_HINT_ANNOTATION_PREFIX}{name}"))
                    .unwrap_or("")
                    .to_string(),
            };
            let mut problem = None;
            facteur_config::validate_value_rule("", &rule, &mut |_, p| {
                problem.get_or_insert(p);
            });
            if let Some(p) = problem {
                return Err(format!("annotation `{k}`: {p}"));
            }
            command.approval_values.insert(name.to_string(), rule);
        } else if let Some(name) = k.strip_prefix(PATTERN_HINT_ANNOTATION_PREFIX)
            && a(&format!("{PATTERN_ANNOTATION_PREFIX}{name}")).is_none()
        {
            return Err(format!(
                "annotation `{k}` says what a pattern allows, but `{PATTERN_ANNOTATION_PREFIX}{name}` is not set"
            ));
        }
    }
    Ok(())
}

/// Where `templates` interpolate the parameters of the configured `commands`' templates: each
/// option of a command gets the uses its parameter has in the template it runs (`namespace`
/// and `template` are the defaults when the command names none), added to any set by hand.
pub fn lint_configured(
    commands: &[CommandConfig],
    templates: &[Template],
    cluster: &str,
    namespace: &str,
    template: &str,
) -> Vec<CommandConfig> {
    let or = |v: &str, d: &str| {
        if v.is_empty() {
            d.to_string()
        } else {
            v.to_string()
        }
    };
    commands
        .iter()
        .map(|c| {
            let mut c = c.clone();
            let (cl, ns, name) = (
                or(&c.cluster, cluster),
                or(&c.namespace, namespace),
                or(&c.workflow_template, template),
            );
            let Some(t) = templates
                .iter()
                .find(|t| t.cluster == cl && t.namespace == ns && t.name == name)
            else {
                return c;
            };
            for o in &mut c.options {
                let param = if o.parameter.is_empty() {
                    &o.name
                } else {
                    &o.parameter
                };
                if let Some(p) = t.parameters.iter().find(|p| &p.name == param) {
                    for at in &p.interpolated_in {
                        if !o.interpolated_in.contains(at) {
                            o.interpolated_in.push(at.clone());
                        }
                    }
                }
            }
            c
        })
        .collect()
}

/// One parameter a template declares.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateParameter {
    /// Name.
    pub name: String,
    /// `description`.
    pub description: String,
    /// `enum`.
    pub choices: Vec<String>,
    /// Has a `value` or `default`.
    pub has_default: bool,
    /// Where the template puts it into a shell or an expression (the adapter's lint).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interpolated_in: Vec<String>,
}

/// A labelled WorkflowTemplate, as an argo-adapter reported it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Template {
    /// Cluster (of the adapter that reported it).
    #[serde(default = "default_cluster")]
    pub cluster: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The label's value.
    pub command: String,
    /// Annotations that matter (description, title, facteur's hints).
    pub annotations: BTreeMap<String, String>,
    /// `spec.arguments.parameters`, in order.
    pub parameters: Vec<TemplateParameter>,
    /// Why the server refused this template's report (kept in its place, alone, so the others
    /// update and the reason shows where the catalog's problems do); empty when taken.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub refused: String,
}

fn default_cluster() -> String {
    facteur_config::DEFAULT_CLUSTER.to_string()
}

impl Default for Template {
    fn default() -> Self {
        Template {
            cluster: default_cluster(),
            namespace: String::new(),
            name: String::new(),
            command: String::new(),
            annotations: BTreeMap::new(),
            parameters: Vec::new(),
            refused: String::new(),
        }
    }
}

impl Template {
    /// Where the command comes from: `namespace/name`, after `cluster/` outside the `default`
    /// cluster.
    pub fn source(&self) -> String {
        if self.cluster == facteur_config::DEFAULT_CLUSTER {
            format!("{}/{}", self.namespace, self.name)
        } else {
            format!("{}/{}/{}", self.cluster, self.namespace, self.name)
        }
    }
}

/// An Argo parameter name as a Discord option name (lower case, `[a-z0-9_-]`, 1–32).
fn option_name(parameter: &str) -> String {
    let mut out: String = parameter
        .chars()
        .map(|c| match c {
            'A'..='Z' => c.to_ascii_lowercase(),
            'a'..='z' | '0'..='9' | '_' | '-' => c,
            _ => '_',
        })
        .collect();
    out.truncate(32);
    out
}

/// How `t` reads as a command: its description from Argo's annotations, one option per
/// parameter not hidden (its `enum` as choices, optional when it has a default, STRING unless a
/// type annotation says otherwise), required options first as Discord wants them; then the
/// faithful repairs Discord's rules allow ([`facteur_config::discord::repair`], each said in
/// the second value). An error says why it cannot be a command: what Discord would refuse and
/// no repair mends.
pub fn command_of(t: &Template) -> Result<(CommandConfig, Vec<String>), String> {
    let a = |k: &str| t.annotations.get(k).map(|v| v.trim()).unwrap_or("");
    let description = [a(DESCRIPTION_ANNOTATION), a(TITLE_ANNOTATION), &t.name]
        .into_iter()
        .find(|d| !d.is_empty())
        .unwrap_or(&t.name);
    let hidden: BTreeSet<&str> = a(HIDDEN_ANNOTATION)
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let mut options: Vec<OptionConfig> = Vec::new();
    for p in t
        .parameters
        .iter()
        .filter(|p| !hidden.contains(p.name.as_str()))
    {
        let kind = match a(&format!("{TYPE_ANNOTATION_PREFIX}{}", p.name)) {
            "" | "string" => "string",
            k @ ("integer" | "number" | "boolean") => k,
            other => {
                return Err(format!(
                    "annotation `{TYPE_ANNOTATION_PREFIX}{}` is `{other}`; use integer, number or boolean",
                    p.name
                ));
            }
        };
        if p.choices.len() > MAX_CHOICES {
            return Err(format!(
                "parameter `{}` has {} enum values; Discord shows at most {MAX_CHOICES}",
                p.name,
                p.choices.len()
            ));
        }
        let pattern = a(&format!("{PATTERN_ANNOTATION_PREFIX}{}", p.name));
        if !pattern.is_empty()
            && let Err(e) = facteur_config::whole_value_pattern(pattern)
        {
            return Err(format!(
                "annotation `{PATTERN_ANNOTATION_PREFIX}{}`: {e}",
                p.name
            ));
        }
        let name = option_name(&p.name);
        let description = if p.description.trim().is_empty() {
            p.name.clone()
        } else {
            p.description.trim().to_string()
        };
        options.push(OptionConfig {
            parameter: if name == p.name {
                String::new()
            } else {
                p.name.clone()
            },
            name,
            description,
            kind: kind.to_string(),
            required: !p.has_default,
            pattern: pattern.to_string(),
            pattern_hint: a(&format!("{PATTERN_HINT_ANNOTATION_PREFIX}{}", p.name)).to_string(),
            interpolated_in: p.interpolated_in.clone(),
            choices: p
                .choices
                .iter()
                .map(|v| ChoiceConfig {
                    name: v.clone(),
                    value: v.clone(),
                })
                .collect(),
            ..Default::default()
        });
    }
    if options.len() > MAX_OPTIONS {
        return Err(format!(
            "{} parameters are exposed; Discord allows {MAX_OPTIONS} options (hide some with `{HIDDEN_ANNOTATION}`)",
            options.len()
        ));
    }
    // Discord lists required options first; the order within each group is the template's.
    options.sort_by_key(|o| !o.required);
    let mut command = CommandConfig {
        name: t.command.clone(),
        description: description.to_string(),
        workflow_template: t.name.clone(),
        namespace: t.namespace.clone(),
        cluster: t.cluster.clone(),
        options,
        ..Default::default()
    };
    policy_of(t, &mut command)?;
    let repairs = facteur_config::discord::repair(&mut command);
    let mut problems = Vec::new();
    facteur_config::validate_commands(std::slice::from_ref(&command), &mut |key, p| {
        problems.push(format!(
            "{}: {p}",
            key.replacen("commands[0]", "command", 1)
        ))
    });
    if problems.is_empty() {
        Ok((command, repairs))
    } else {
        Err(problems.join("; "))
    }
}

/// The commands templates add to a catalog, with where each comes from, and the templates that
/// add none, with why.
#[derive(Clone, Debug, Default)]
pub struct Merged {
    /// Commands from templates: (command, `namespace/template`).
    pub commands: Vec<(CommandConfig, String)>,
    /// `namespace/template: why it is not a command`.
    pub problems: Vec<String>,
    /// `namespace/template: what was repaired` for the commands Discord's rules made facteur
    /// mend ([`facteur_config::discord::repair`]).
    pub repairs: Vec<String>,
    /// For each command from a template, where each policy rule it sets comes from (rule →
    /// `annotation <key>` or `configuration (command_policies.<name>)`).
    pub policy_sources: BTreeMap<String, BTreeMap<String, String>>,
    /// For each command whose templates are in several clusters, where it runs in each.
    pub clusters: BTreeMap<String, BTreeMap<String, Target>>,
}

/// The policy rules a command can set, by the names `facteurctl commands` shows.
pub const POLICY_RULES: [&str; 4] = [
    "approvers",
    "require_second_person",
    "max_concurrent",
    "max_per_hour",
];

/// Applies the operator's override to a template's command, rule by rule (the configuration
/// wins), and says where each rule set comes from.
fn apply_policy(
    t: &Template,
    c: &mut CommandConfig,
    o: Option<&facteur_config::PolicyOverride>,
) -> BTreeMap<String, String> {
    let from_config = format!("configuration (command_policies.{})", c.name);
    let mut sources = BTreeMap::new();
    let mut note = |rule: &str, overridden: bool, annotation: &str| {
        if overridden {
            sources.insert(rule.to_string(), from_config.clone());
        } else if t.annotations.contains_key(annotation) {
            sources.insert(rule.to_string(), format!("annotation {annotation}"));
        }
    };
    let o = o.cloned().unwrap_or_default();
    note("approvers", o.approvers.is_some(), APPROVERS_ANNOTATION);
    note(
        "require_second_person",
        o.require_second_person.is_some(),
        SECOND_PERSON_ANNOTATION,
    );
    note(
        "max_concurrent",
        o.max_concurrent.is_some(),
        MAX_CONCURRENT_ANNOTATION,
    );
    note(
        "max_per_hour",
        o.max_per_hour.is_some(),
        MAX_PER_HOUR_ANNOTATION,
    );
    if let Some(a) = o.approvers {
        c.approvers = a;
    }
    if let Some(r) = o.require_second_person {
        c.require_second_person = r;
    }
    if o.max_concurrent.is_some() {
        c.max_concurrent = o.max_concurrent;
    }
    if o.max_per_hour.is_some() {
        c.max_per_hour = o.max_per_hour;
    }
    sources
}

/// The option a command whose template is in several clusters gets: which cluster to run in.
pub const CLUSTER_OPTION: &str = "cluster";

/// Where a command from templates runs in one cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Namespace of the template.
    pub namespace: String,
    /// Its name.
    pub workflow_template: String,
}

/// Merges `templates` into a catalog that already has the commands `taken` (the configured ones
/// and the built-ins): a name already taken keeps its command; of two templates naming the same
/// command in one cluster, the first by `namespace/name` wins. A command whose templates are in
/// several clusters is one command with a required [`CLUSTER_OPTION`] choosing among them, when
/// they define it alike; otherwise it is left out, with the reason.
///
/// `policies` are the operator's overrides by command name ([`apply_policy`]); one that names
/// no command is listed among the problems.
pub fn merge(
    taken: &BTreeSet<String>,
    templates: &[Template],
    policies: &BTreeMap<String, facteur_config::PolicyOverride>,
) -> Merged {
    let mut sorted: Vec<&Template> = templates.iter().collect();
    sorted.sort_by_key(|t| (t.namespace.clone(), t.name.clone(), t.cluster.clone()));
    let mut out = Merged::default();
    for t in &sorted {
        if !t.refused.is_empty() {
            out.problems
                .push(format!("{}: report refused: {}", t.source(), t.refused));
        }
    }
    // The first template of each command in each cluster, commands in the order of their first
    // template. An unlabelled template (reported for its lint: a configured command's) is none.
    let mut groups: Vec<(String, Vec<&Template>)> = Vec::new();
    for t in sorted
        .into_iter()
        .filter(|t| !t.command.is_empty() && t.refused.is_empty())
    {
        let source = t.source();
        // Discord's names are lower case: `Deploy` and `deploy` are one command.
        let name = t.command.to_lowercase();
        if taken.contains(&name) {
            out.problems.push(format!(
                "{source}: command `{name}` is already defined by the configuration (or built in); the configured one is used"
            ));
            continue;
        }
        match groups.iter_mut().find(|(n, _)| *n == name) {
            Some((_, group)) => match group.iter().find(|f| f.cluster == t.cluster) {
                Some(first) => out.problems.push(format!(
                    "{source}: command `{name}` is already defined by the template {}",
                    first.source()
                )),
                None => group.push(t),
            },
            None => groups.push((name, vec![t])),
        }
    }
    for (name, group) in groups {
        let mut made: Vec<(&Template, CommandConfig, Vec<String>)> = Vec::new();
        for t in group {
            match command_of(t) {
                Ok((c, repairs)) => made.push((t, c, repairs)),
                Err(why) => out.problems.push(format!("{}: {why}", t.source())),
            }
        }
        let Some((first, _, _)) = made.first() else {
            continue;
        };
        let first = *first;
        let sources: Vec<String> = made.iter().map(|(t, _, _)| t.source()).collect();
        let source = sources.join(", ");
        if taken.len() + out.commands.len() >= COMMANDS_MAX {
            out.problems.push(format!(
                "{source}: command `{name}` left out: Discord registers at most {COMMANDS_MAX} commands per guild and the catalog has {COMMANDS_MAX} (the configured ones, the built-ins and templates before it by namespace/name)"
            ));
            continue;
        }
        let (mut c, targets) = if made.len() == 1 {
            (made[0].1.clone(), None)
        } else {
            match across_clusters(&name, &made) {
                Ok((c, targets)) => (c, Some(targets)),
                Err(why) => {
                    out.problems.push(format!("{source}: {why}"));
                    continue;
                }
            }
        };
        for (t, _, repairs) in &made {
            let at = t.source();
            out.repairs
                .extend(repairs.iter().map(|r| format!("{at}: {r}")));
        }
        let policy = policies.get(&c.name);
        let policy_sources = apply_policy(first, &mut c, policy);
        out.policy_sources.insert(c.name.clone(), policy_sources);
        if let Some(targets) = targets {
            out.clusters.insert(c.name.clone(), targets);
        }
        out.commands.push((c, source));
    }
    for name in policies.keys() {
        if !out.commands.iter().any(|(c, _)| &c.name == name) {
            out.problems.push(format!(
                "command_policies.{name}: no template defines a command `{name}`; the policy waits for one"
            ));
        }
    }
    out
}

/// One command from the templates of `name` in several clusters (`made`: each template with
/// the command it reads as): they must read alike but for where they are; the command gets a
/// required [`CLUSTER_OPTION`] whose choices are the clusters, each with its target.
#[allow(clippy::type_complexity)]
fn across_clusters(
    name: &str,
    made: &[(&Template, CommandConfig, Vec<String>)],
) -> Result<(CommandConfig, BTreeMap<String, Target>), String> {
    let placeless = |c: &CommandConfig| {
        let mut c = c.clone();
        c.namespace.clear();
        c.workflow_template.clear();
        c.cluster.clear();
        serde_json::to_value(&c).unwrap_or_default()
    };
    let (first_t, first, _) = &made[0];
    let shape = placeless(first);
    if let Some((t, c, _)) = made.iter().skip(1).find(|(_, c, _)| placeless(c) != shape) {
        let options = |c: &CommandConfig| {
            let names: Vec<&str> = c.options.iter().map(|o| o.name.as_str()).collect();
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        };
        return Err(format!(
            "command `{name}` left out: its templates in clusters {} and {} define it differently (their description, options or policy differ; options: {} / {}); make them agree or label one otherwise",
            first_t.cluster,
            t.cluster,
            options(first),
            options(c)
        ));
    }
    if first.options.iter().any(|o| o.name == CLUSTER_OPTION) {
        return Err(format!(
            "command `{name}` left out: it is in several clusters, and its parameter `{CLUSTER_OPTION}` takes the name of the option that chooses among them"
        ));
    }
    if first.options.len() >= MAX_OPTIONS {
        return Err(format!(
            "command `{name}` left out: it is in several clusters and has {} options; with the `{CLUSTER_OPTION}` option Discord's {MAX_OPTIONS} would be exceeded",
            first.options.len()
        ));
    }
    let mut clusters: Vec<&str> = made.iter().map(|(t, _, _)| t.cluster.as_str()).collect();
    clusters.sort();
    let mut c = first.clone();
    c.namespace.clear();
    c.workflow_template.clear();
    c.cluster.clear();
    c.options.insert(
        0,
        OptionConfig {
            name: CLUSTER_OPTION.into(),
            description: "Cluster to run in".into(),
            kind: "string".into(),
            required: true,
            choices: clusters
                .iter()
                .map(|k| ChoiceConfig {
                    name: k.to_string(),
                    value: k.to_string(),
                })
                .collect(),
            ..Default::default()
        },
    );
    let targets = made
        .iter()
        .map(|(t, _, _)| {
            (
                t.cluster.clone(),
                Target {
                    namespace: t.namespace.clone(),
                    workflow_template: t.name.clone(),
                },
            )
        })
        .collect();
    Ok((c, targets))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template() -> Template {
        Template {
            namespace: "argo-workflows".into(),
            name: "hello".into(),
            command: "hello".into(),
            annotations: [
                (DESCRIPTION_ANNOTATION.to_string(), "Say hello".to_string()),
                (
                    format!("{TYPE_ANNOTATION_PREFIX}count"),
                    "integer".to_string(),
                ),
                (
                    HIDDEN_ANNOTATION.to_string(),
                    "secret, internal".to_string(),
                ),
            ]
            .into(),
            parameters: vec![
                TemplateParameter {
                    name: "greeting".into(),
                    description: "How to greet".into(),
                    choices: vec!["hi".into(), "hello".into()],
                    has_default: true,
                    ..Default::default()
                },
                TemplateParameter {
                    name: "Target.Name".into(),
                    has_default: false,
                    ..Default::default()
                },
                TemplateParameter {
                    name: "count".into(),
                    has_default: true,
                    ..Default::default()
                },
                TemplateParameter {
                    name: "secret".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn configured_commands_take_the_lint_of_the_template_they_run() {
        let configured = vec![
            CommandConfig {
                name: "deploy".into(),
                workflow_template: "deploy".into(),
                options: vec![
                    OptionConfig {
                        name: "service".into(),
                        ..Default::default()
                    },
                    OptionConfig {
                        name: "note".into(),
                        parameter: "Note".into(),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            },
            CommandConfig {
                name: "other".into(),
                namespace: "elsewhere".into(),
                workflow_template: "deploy".into(),
                options: vec![OptionConfig {
                    name: "service".into(),
                    ..Default::default()
                }],
                ..Default::default()
            },
        ];
        let reported = vec![Template {
            namespace: "argo-workflows".into(),
            name: "deploy".into(),
            parameters: vec![
                TemplateParameter {
                    name: "service".into(),
                    interpolated_in: vec!["templates[0].script.source".into()],
                    ..Default::default()
                },
                TemplateParameter {
                    name: "Note".into(),
                    interpolated_in: vec!["templates[1].steps[0][0].when".into()],
                    ..Default::default()
                },
            ],
            ..Default::default()
        }];
        let linted = lint_configured(&configured, &reported, "default", "argo-workflows", "dflt");
        let uses: Vec<Vec<&str>> = linted
            .iter()
            .flat_map(|c| c.options.iter())
            .map(|o| o.interpolated_in.iter().map(String::as_str).collect())
            .collect();
        assert_eq!(
            uses,
            [
                vec!["templates[0].script.source"],
                vec!["templates[1].steps[0][0].when"],
                vec![],
            ],
            "by parameter name; another namespace's template is another template"
        );
        // Not a command of its own.
        let merged = merge(&BTreeSet::new(), &reported, &BTreeMap::new());
        assert!(merged.commands.is_empty() && merged.problems.is_empty());
    }

    #[test]
    fn patterns_and_the_lint_reach_the_options() {
        let mut t = template();
        t.parameters[1].interpolated_in = vec!["templates[0].script.source".into()];
        t.annotations.insert(
            format!("{PATTERN_ANNOTATION_PREFIX}Target.Name"),
            "[a-z-]+".into(),
        );
        t.annotations.insert(
            format!("{PATTERN_HINT_ANNOTATION_PREFIX}Target.Name"),
            "a name in lower case".into(),
        );
        let (c, _) = command_of(&t).expect("a command");
        let o = &c.options[0];
        assert_eq!(
            (
                o.pattern.as_str(),
                o.pattern_hint.as_str(),
                o.interpolated_in.as_slice()
            ),
            (
                "[a-z-]+",
                "a name in lower case",
                &["templates[0].script.source".to_string()][..]
            )
        );
        // A pattern that is not one leaves the command out, saying which annotation.
        t.annotations.insert(
            format!("{PATTERN_ANNOTATION_PREFIX}Target.Name"),
            "[a-z".into(),
        );
        let why = command_of(&t).expect_err("invalid pattern");
        assert!(
            why.starts_with("annotation `facteur.proompteng.ai/pattern.Target.Name`: `[a-z` is not a regular expression"),
            "{why}"
        );
        // On a parameter typed integer, a pattern is refused too.
        let mut t = template();
        t.annotations
            .insert(format!("{PATTERN_ANNOTATION_PREFIX}count"), "[0-9]".into());
        let why = command_of(&t).expect_err("pattern on an integer");
        assert!(why.contains("only string options take a pattern"), "{why}");
    }

    #[test]
    fn a_template_reads_as_a_command() {
        let (c, _) = command_of(&template()).expect("a command");
        assert_eq!(
            (
                c.name.as_str(),
                c.description.as_str(),
                c.namespace.as_str(),
                c.workflow_template.as_str()
            ),
            ("hello", "Say hello", "argo-workflows", "hello")
        );
        let o: Vec<(&str, &str, &str, bool, usize, &str)> = c
            .options
            .iter()
            .map(|o| {
                (
                    o.name.as_str(),
                    o.kind.as_str(),
                    o.description.as_str(),
                    o.required,
                    o.choices.len(),
                    o.parameter.as_str(),
                )
            })
            .collect();
        assert_eq!(
            o,
            [
                // Required first; a name Discord refuses is mapped, the parameter kept.
                (
                    "target_name",
                    "string",
                    "Target.Name",
                    true,
                    0,
                    "Target.Name"
                ),
                ("greeting", "string", "How to greet", false, 2, ""),
                ("count", "integer", "count", false, 0, ""),
            ],
            "`secret` is hidden"
        );
        assert_eq!(c.options[1].choices[1].value, "hello");
    }

    #[test]
    fn the_description_falls_back_to_the_title_then_the_name() {
        let mut t = template();
        t.annotations.remove(DESCRIPTION_ANNOTATION);
        t.annotations
            .insert(TITLE_ANNOTATION.into(), "Hello world".into());
        assert_eq!(command_of(&t).expect("ok").0.description, "Hello world");
        t.annotations.remove(TITLE_ANNOTATION);
        assert_eq!(command_of(&t).expect("ok").0.description, "hello");
        t.annotations
            .insert(DESCRIPTION_ANNOTATION.into(), "x".repeat(300));
        assert_eq!(
            command_of(&t).expect("ok").0.description.chars().count(),
            100
        );
    }

    #[test]
    fn what_cannot_be_a_command_says_why() {
        let mut t = template();
        t.command = "Not A Name".into();
        assert!(
            command_of(&t)
                .expect_err("not a command")
                .contains("command.name")
        );
        let mut t = template();
        t.annotations
            .insert(format!("{TYPE_ANNOTATION_PREFIX}count"), "date".into());
        assert!(
            command_of(&t)
                .expect_err("not a command")
                .contains("use integer, number or boolean")
        );
        let mut t = template();
        t.parameters[0].choices = (0..30).map(|i| i.to_string()).collect();
        assert!(
            command_of(&t)
                .expect_err("not a command")
                .contains("30 enum values")
        );
    }

    #[test]
    fn templates_by_others_are_repaired_or_left_out_alone() {
        // Item by item, what Discord refused before: each repaired and said, or refused.
        let mut t = template();
        t.command = "Hello".into();
        t.parameters[0].choices = vec![String::new(), "hi".into()];
        t.parameters[2].choices = vec!["few".into(), "many".into()];
        t.parameters.push(TemplateParameter {
            name: "dry".into(),
            choices: vec!["true".into(), "false".into()],
            has_default: true,
            ..Default::default()
        });
        t.annotations
            .insert(format!("{TYPE_ANNOTATION_PREFIX}dry"), "boolean".into());
        let (c, repairs) = command_of(&t).expect("repaired");
        assert_eq!(c.name, "hello");
        assert_eq!(repairs.len(), 4, "{repairs:?}");
        assert!(facteur_config::discord::problems(&c).is_empty());
        let kinds: Vec<(&str, &str, usize)> = c
            .options
            .iter()
            .map(|o| (o.name.as_str(), o.kind.as_str(), o.choices.len()))
            .collect();
        assert_eq!(
            kinds,
            [
                ("target_name", "string", 0),
                ("greeting", "string", 1),
                ("count", "string", 2),
                ("dry", "boolean", 0)
            ]
        );
        // A value Discord cannot take whole has no faithful repair: this template alone is
        // left out, saying which value.
        let mut long = template();
        long.name = "long".into();
        long.command = "long".into();
        long.parameters[0].choices = vec!["x".repeat(101)];
        let why = command_of(&long).expect_err("left out");
        assert!(why.contains("choices[0].value: must be 1 to 100"), "{why}");
        let m = merge(&BTreeSet::new(), &[template(), long], &BTreeMap::new());
        assert_eq!(m.commands.len(), 1);
        assert_eq!(m.problems.len(), 1);
        assert!(m.problems[0].starts_with("argo-workflows/long: "));
    }

    #[test]
    fn a_catalog_stops_at_discords_hundred_commands() {
        let taken: BTreeSet<String> = (0..90).map(|i| format!("c{i}")).collect();
        let templates: Vec<Template> = (0..15)
            .map(|i| {
                let mut t = template();
                t.name = format!("t{i:02}");
                t.command = format!("t{i:02}");
                t
            })
            .collect();
        let m = merge(&taken, &templates, &BTreeMap::new());
        assert_eq!(m.commands.len(), 10);
        assert_eq!(m.problems.len(), 5);
        assert!(
            m.problems[0].starts_with(
                "argo-workflows/t10: command `t10` left out: Discord registers at most 100"
            ),
            "{}",
            m.problems[0]
        );
    }

    #[test]
    fn the_configuration_wins_and_the_first_template_wins() {
        let mut other = template();
        other.namespace = "zz".into();
        let mut deploy = template();
        deploy.name = "deploy-tpl".into();
        deploy.command = "deploy".into();
        let taken: BTreeSet<String> = ["deploy".to_string(), "status".to_string()].into();
        let m = merge(&taken, &[other, deploy, template()], &BTreeMap::new());
        let names: Vec<(&str, &str)> = m
            .commands
            .iter()
            .map(|(c, s)| (c.name.as_str(), s.as_str()))
            .collect();
        assert_eq!(names, [("hello", "argo-workflows/hello")]);
        assert_eq!(
            m.problems,
            [
                "argo-workflows/deploy-tpl: command `deploy` is already defined by the configuration (or built in); the configured one is used",
                "zz/hello: command `hello` is already defined by the template argo-workflows/hello",
            ]
        );
    }

    #[test]
    fn a_templates_policy_comes_from_its_annotations_and_the_configuration_wins() {
        let role = "111111111111111111";
        let mut t = template();
        for (k, v) in [
            (APPROVERS_ANNOTATION, format!("{role}, 222222222222222222")),
            (SECOND_PERSON_ANNOTATION, "true".into()),
            (MAX_CONCURRENT_ANNOTATION, "2".into()),
            (
                format!("{PATTERN_ANNOTATION_PREFIX}confirm").as_str(),
                "YES|NO".into(),
            ),
        ] {
            t.annotations.insert(k.to_string(), v);
        }
        let (c, _) = command_of(&t).expect("a command");
        assert_eq!(c.approvers, [role, "222222222222222222"]);
        assert!(c.require_second_person);
        assert_eq!((c.max_concurrent, c.max_per_hour), (Some(2), None));
        assert_eq!(c.approval_values["confirm"].pattern, "YES|NO");
        // Nothing overridden: every rule set says its annotation.
        let m = merge(&BTreeSet::new(), std::slice::from_ref(&t), &BTreeMap::new());
        assert_eq!(
            m.policy_sources["hello"],
            [
                ("approvers", format!("annotation {APPROVERS_ANNOTATION}")),
                (
                    "max_concurrent",
                    format!("annotation {MAX_CONCURRENT_ANNOTATION}")
                ),
                (
                    "require_second_person",
                    format!("annotation {SECOND_PERSON_ANNOTATION}")
                ),
            ]
            .map(|(k, v)| (k.to_string(), v))
            .into()
        );
        // The operator's override wins rule by rule; what it leaves unset stays the template's.
        let policies: BTreeMap<String, facteur_config::PolicyOverride> = [
            (
                "hello".to_string(),
                facteur_config::PolicyOverride {
                    approvers: Some(vec!["333333333333333333".into()]),
                    max_per_hour: Some(10),
                    ..Default::default()
                },
            ),
            ("nowhere".to_string(), Default::default()),
        ]
        .into();
        let m = merge(&BTreeSet::new(), &[t], &policies);
        let (c, _) = &m.commands[0];
        assert_eq!(c.approvers, ["333333333333333333"]);
        assert_eq!((c.max_concurrent, c.max_per_hour), (Some(2), Some(10)));
        assert!(c.require_second_person);
        let sources = &m.policy_sources["hello"];
        assert_eq!(
            sources["approvers"],
            "configuration (command_policies.hello)"
        );
        assert_eq!(
            sources["max_per_hour"],
            "configuration (command_policies.hello)"
        );
        assert_eq!(
            sources["max_concurrent"],
            format!("annotation {MAX_CONCURRENT_ANNOTATION}")
        );
        assert_eq!(
            m.problems,
            [
                "command_policies.nowhere: no template defines a command `nowhere`; the policy waits for one"
            ]
        );
    }

    #[test]
    fn a_bad_policy_annotation_leaves_the_command_out_saying_which() {
        for (k, v, why) in [
            (
                APPROVERS_ANNOTATION.to_string(),
                "admins",
                "annotation `facteur.proompteng.ai/approvers`: `admins` is not a role id",
            ),
            (
                SECOND_PERSON_ANNOTATION.to_string(),
                "yes",
                "annotation `facteur.proompteng.ai/require-second-person` is `yes`; use true or false",
            ),
            (
                MAX_CONCURRENT_ANNOTATION.to_string(),
                "0",
                "annotation `facteur.proompteng.ai/max-concurrent` is `0`; use a whole number",
            ),
            (
                MAX_PER_HOUR_ANNOTATION.to_string(),
                "lots",
                "annotation `facteur.proompteng.ai/max-per-hour` is `lots`",
            ),
            (
                format!("{PATTERN_ANNOTATION_PREFIX}confirm"),
                "(",
                "annotation `facteur.proompteng.ai/pattern.confirm`: `(` is not a regular expression",
            ),
            (
                format!("{PATTERN_HINT_ANNOTATION_PREFIX}confirm"),
                "yes or no",
                "annotation `facteur.proompteng.ai/pattern-hint.confirm` says what a pattern allows, but `facteur.proompteng.ai/pattern.confirm` is not set",
            ),
        ] {
            let mut t = template();
            t.annotations.insert(k.clone(), v.into());
            let got = command_of(&t).expect_err(&k);
            assert!(got.starts_with(why), "{k}: {got}");
            // Left out alone, with its reason.
            let m = merge(&BTreeSet::new(), &[t], &BTreeMap::new());
            assert!(m.commands.is_empty());
            assert_eq!(m.problems, [format!("argo-workflows/hello: {got}")]);
        }
    }
}
