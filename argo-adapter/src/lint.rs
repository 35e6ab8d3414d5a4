//! Where a WorkflowTemplate puts each of its parameters into a shell or an expression.
//!
//! Argo substitutes `{{workflow.parameters.x}}` and `{{inputs.parameters.x}}` into a template's
//! text as they are, escaped for JSON and never for a shell, so a value typed in chat that
//! reaches `echo '{{inputs.parameters.x}}'` in a script runs whatever follows its closing quote
//! (argo-workflows#12534). This lint traces every exposed parameter (`spec.arguments.parameters`)
//! through the templates: used directly as `{{workflow.parameters.x}}`, or handed down as a step's
//! or DAG task's argument and read there as `{{inputs.parameters.y}}`, step after step. A use
//! counts as interpolated when it is inside
//! - `script.source`;
//! - `container.args` / `container.command` (or a script's) after a shell's `-c` (`sh`, `bash`,
//!   ... with `-c`, `-ec`, `-xc`, ...);
//! - a step's or task's `when`;
//! - an expression, `{{= … }}`, anywhere.
//!
//! A use through `env` (`value: "{{inputs.parameters.x}}"`, read by the script as `$X`) is safe
//! and not reported. A parameter handed to a `templateRef` whose template this lint is not given
//! (another WorkflowTemplate, a ClusterWorkflowTemplate) counts as interpolated there: what the
//! lint cannot see, it does not vouch for. The server decides what a reported use restricts
//! (`facteur_server::domain::input`); this only reads Argo's format.

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// For each exposed parameter that is interpolated somewhere, the paths of those uses
/// (`templates[1].script.source`), sorted. `other` gives the `spec` of another template in the
/// same namespace by name (for `templateRef`s), where the caller has it.
pub fn interpolations(
    spec: &Value,
    other: &dyn Fn(&str) -> Option<Value>,
) -> BTreeMap<String, Vec<String>> {
    let exposed = Exposed {
        scopes: vec!["workflow.parameters".into()],
        names: params(spec.pointer("/arguments/parameters")),
    };
    traced(spec, &exposed, other)
}

/// For each of `names`, the output parameters an approver supplies at the suspend step `step`
/// (a step's or DAG task's name), the paths where the Workflow `spec` puts them into a shell
/// or an expression: read downstream as `{{steps.<step>.outputs.parameters.x}}` or
/// `{{tasks.<step>.outputs.parameters.x}}`, directly or handed down as arguments, like an
/// exposed parameter.
pub fn supplied_interpolations(
    spec: &Value,
    step: &str,
    names: BTreeSet<String>,
) -> BTreeMap<String, Vec<String>> {
    let exposed = Exposed {
        scopes: vec![
            format!("steps.{step}.outputs.parameters"),
            format!("tasks.{step}.outputs.parameters"),
        ],
        names,
    };
    traced(spec, &exposed, &|_| None)
}

/// The values traced, and how the templates name them (`workflow.parameters`, a step's
/// outputs): `<scope>.<name>` or `<scope>['<name>']`.
struct Exposed {
    scopes: Vec<String>,
    names: BTreeSet<String>,
}

fn traced(
    spec: &Value,
    exposed: &Exposed,
    other: &dyn Fn(&str) -> Option<Value>,
) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut seen_refs = BTreeSet::new();
    lint_spec(
        spec,
        "",
        exposed,
        &BTreeMap::new(),
        other,
        &mut seen_refs,
        &mut out,
    );
    out.into_iter()
        .map(|(k, v)| (k, v.into_iter().collect()))
        .collect()
}

/// Names of a `parameters` list.
fn params(list: Option<&Value>) -> BTreeSet<String> {
    list.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| p.get("name").and_then(Value::as_str))
        .map(str::to_string)
        .collect()
}

/// Which exposed parameters a template's inputs carry: template name → input → exposed ones.
type Taint = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

/// Lints one spec's templates. `entry` taints the inputs of the templates of a referenced spec
/// (`templateRef`): template name → input → exposed parameters; `prefix` goes before each path.
fn lint_spec(
    spec: &Value,
    prefix: &str,
    exposed: &Exposed,
    entry: &Taint,
    other: &dyn Fn(&str) -> Option<Value>,
    seen_refs: &mut BTreeSet<String>,
    out: &mut BTreeMap<String, BTreeSet<String>>,
) {
    let templates: Vec<&Value> = spec
        .get("templates")
        .and_then(Value::as_array)
        .map(|t| t.iter().collect())
        .unwrap_or_default();
    let name_of = |t: &Value| {
        t.get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    // What reaches each template's inputs, to a fixed point (steps hand values down).
    let mut taint: Taint = entry.clone();
    let mut refs: Vec<(String, String, BTreeMap<String, BTreeSet<String>>)> = Vec::new();
    loop {
        let mut changed = false;
        refs.clear();
        for t in &templates {
            let own = taint.get(&name_of(t)).cloned().unwrap_or_default();
            for (_, call) in calls(t) {
                let args = call
                    .pointer("/arguments/parameters")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten();
                let mut passed: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
                for a in args {
                    let (Some(name), Some(value)) = (
                        a.get("name").and_then(Value::as_str),
                        a.get("value").and_then(Value::as_str),
                    ) else {
                        continue;
                    };
                    let carried = carried(value, exposed, &own);
                    if !carried.is_empty() {
                        passed.entry(name.to_string()).or_default().extend(carried);
                    }
                }
                if passed.is_empty() {
                    continue;
                }
                if let Some(callee) = call.get("template").and_then(Value::as_str) {
                    let slot = taint.entry(callee.to_string()).or_default();
                    for (input, from) in passed {
                        let have = slot.entry(input).or_default();
                        let before = have.len();
                        have.extend(from);
                        changed |= have.len() != before;
                    }
                } else if let Some(r) = call.get("templateRef") {
                    let name = r.get("name").and_then(Value::as_str).unwrap_or("");
                    let template = r.get("template").and_then(Value::as_str).unwrap_or("");
                    let cluster = r.get("clusterScope").and_then(Value::as_bool) == Some(true);
                    let key = if cluster {
                        format!("cluster:{name}")
                    } else {
                        name.to_string()
                    };
                    refs.push((key, template.to_string(), passed));
                }
            }
        }
        if !changed {
            break;
        }
    }
    // The uses.
    for (i, t) in templates.iter().enumerate() {
        let path = format!("{prefix}templates[{i}]");
        let own = taint.get(&name_of(t)).cloned().unwrap_or_default();
        let mut hit = |at: String, text: &str, expression_only: bool| {
            let found = if expression_only {
                in_expressions(text, exposed, &own)
            } else {
                carried(text, exposed, &own)
            };
            for p in found {
                out.entry(p).or_default().insert(at.clone());
            }
        };
        if let Some(src) = t.pointer("/script/source").and_then(Value::as_str) {
            hit(format!("{path}.script.source"), src, false);
        }
        for kind in ["container", "script"] {
            let Some(c) = t.get(kind) else { continue };
            let mut line: Vec<(String, &str)> = Vec::new();
            for field in ["command", "args"] {
                let items = c.get(field).and_then(Value::as_array).into_iter().flatten();
                for (k, v) in items.enumerate() {
                    if let Some(s) = v.as_str() {
                        line.push((format!("{path}.{kind}.{field}[{k}]"), s));
                    }
                }
            }
            if let Some(after) = shell_script_from(&line) {
                for (at, text) in &line[after..] {
                    hit(at.clone(), text, false);
                }
            }
        }
        for (at, call) in calls(t) {
            if let Some(w) = call.get("when").and_then(Value::as_str) {
                hit(format!("{path}.{at}.when"), w, false);
            }
        }
        // Expressions anywhere in the template.
        let mut strings = Vec::new();
        walk(t, &path, &mut strings);
        for (at, text) in strings {
            if text.contains("{{=") {
                hit(at, text, true);
            }
        }
    }
    // templateRefs: traced into the template when it is given, else the hand-over is the use.
    for (key, template, passed) in refs {
        let visible = (!key.starts_with("cluster:") && seen_refs.insert(key.clone()))
            .then(|| other(&key))
            .flatten();
        match visible {
            Some(spec) => {
                let entry: Taint = [(template.clone(), passed)].into();
                lint_spec(
                    &spec,
                    &format!("{prefix}templateRef({key}).spec."),
                    exposed,
                    &entry,
                    other,
                    seen_refs,
                    out,
                );
            }
            None => {
                for from in passed.into_values() {
                    for p in from {
                        out.entry(p).or_default().insert(format!(
                            "{prefix}templateRef({key}/{template}) (not visible to the adapter)"
                        ));
                    }
                }
            }
        }
    }
}

/// A template's steps and DAG tasks, each with its path inside the template.
fn calls(t: &Value) -> Vec<(String, &Value)> {
    let mut out = Vec::new();
    if let Some(groups) = t.get("steps").and_then(Value::as_array) {
        for (j, group) in groups.iter().enumerate() {
            for (k, step) in group.as_array().into_iter().flatten().enumerate() {
                out.push((format!("steps[{j}][{k}]"), step));
            }
        }
    }
    if let Some(tasks) = t.pointer("/dag/tasks").and_then(Value::as_array) {
        for (j, task) in tasks.iter().enumerate() {
            out.push((format!("dag.tasks[{j}]"), task));
        }
    }
    out
}

/// Every string under `v` with its path.
fn walk<'a>(v: &'a Value, path: &str, out: &mut Vec<(String, &'a str)>) {
    match v {
        Value::String(s) => out.push((path.to_string(), s)),
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                walk(x, &format!("{path}[{i}]"), out);
            }
        }
        Value::Object(o) => {
            for (k, x) in o {
                walk(x, &format!("{path}.{k}"), out);
            }
        }
        _ => {}
    }
}

/// Where a command line (`command` then `args`) starts its shell script: the element after a
/// shell's `-c` flag.
fn shell_script_from(line: &[(String, &str)]) -> Option<usize> {
    let is_shell = |s: &str| {
        let base = s.rsplit('/').next().unwrap_or(s);
        matches!(base, "sh" | "bash" | "ash" | "dash" | "zsh" | "ksh")
    };
    let shell = line.iter().position(|(_, s)| is_shell(s))?;
    let flag = line[shell + 1..]
        .iter()
        .position(|(_, s)| s.starts_with('-') && !s.starts_with("--") && s.contains('c'))?;
    Some(shell + 1 + flag + 1)
}

/// References to parameters in `{{ … }}` (and in expressions) of `text`: the exposed ones it
/// carries, directly or through the template's tainted inputs `own`.
fn carried(
    text: &str,
    exposed: &Exposed,
    own: &BTreeMap<String, BTreeSet<String>>,
) -> BTreeSet<String> {
    bodies(text, "{{", exposed, own)
}

/// Like [`carried`], only inside `{{= … }}`.
fn in_expressions(
    text: &str,
    exposed: &Exposed,
    own: &BTreeMap<String, BTreeSet<String>>,
) -> BTreeSet<String> {
    bodies(text, "{{=", exposed, own)
}

/// The parameters named in every `open … }}` of `text`.
fn bodies(
    text: &str,
    open: &str,
    exposed: &Exposed,
    own: &BTreeMap<String, BTreeSet<String>>,
) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find(open) {
        let after = &rest[start + open.len()..];
        let end = after.find("}}").unwrap_or(after.len());
        references(&after[..end], exposed, own, &mut out);
        rest = &after[end..];
    }
    out
}

/// The parameters one `{{ … }}` body names: `workflow.parameters.x`, `inputs.parameters.x`, or
/// in an expression `workflow.parameters['x']` / `inputs.parameters["x"]`.
fn references(
    body: &str,
    exposed: &Exposed,
    own: &BTreeMap<String, BTreeSet<String>>,
    out: &mut BTreeSet<String>,
) {
    let scopes = exposed
        .scopes
        .iter()
        .map(|s| (s.as_str(), true))
        .chain([("inputs.parameters", false)]);
    for (scope, at) in scopes {
        let mut rest = body;
        while let Some(i) = rest.find(scope) {
            let after = &rest[i + scope.len()..];
            let name: String = if let Some(dotted) = after.strip_prefix('.') {
                dotted
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
                    .collect()
            } else if let Some(indexed) = after.strip_prefix('[') {
                let quoted = indexed.trim_start();
                let q = quoted.chars().next().unwrap_or(' ');
                if q == '\'' || q == '"' {
                    quoted[1..].chars().take_while(|c| *c != q).collect()
                } else {
                    String::new()
                }
            } else {
                String::new()
            };
            if !name.is_empty() {
                if at {
                    if exposed.names.contains(&name) {
                        out.insert(name);
                    }
                } else if let Some(from) = own.get(&name) {
                    out.extend(from.iter().cloned());
                }
            }
            rest = after;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lint(spec: Value) -> BTreeMap<String, Vec<String>> {
        interpolations(&spec, &|_| None)
    }

    fn spec(templates: Value) -> Value {
        json!({
            "entrypoint": "main",
            "arguments": {"parameters": [{"name": "message"}, {"name": "env"}]},
            "templates": templates,
        })
    }

    fn one(path: &str) -> BTreeMap<String, Vec<String>> {
        [("message".to_string(), vec![path.to_string()])].into()
    }

    #[test]
    fn a_script_source_interpolates() {
        let s = spec(
            json!([{"name": "main", "script": {"image": "alpine", "command": ["sh"],
            "source": "echo '{{workflow.parameters.message}}'"}}]),
        );
        assert_eq!(lint(s), one("templates[0].script.source"));
    }

    #[test]
    fn args_after_sh_dash_c_interpolate_and_others_do_not() {
        let s = spec(json!([{"name": "main", "container": {"image": "alpine",
            "command": ["/bin/sh", "-ec"], "args": ["echo {{workflow.parameters.message}}"]}}]));
        assert_eq!(lint(s), one("templates[0].container.args[0]"));
        // No shell: the value is one argv element, whatever it holds.
        let s = spec(json!([{"name": "main", "container": {"image": "alpine",
            "command": ["echo"], "args": ["{{workflow.parameters.message}}"]}}]));
        assert_eq!(lint(s), BTreeMap::new());
        // A shell without -c reads a file, not its arguments as a script.
        let s = spec(json!([{"name": "main", "container": {"image": "alpine",
            "command": ["bash", "/run.sh"], "args": ["{{workflow.parameters.message}}"]}}]));
        assert_eq!(lint(s), BTreeMap::new());
    }

    #[test]
    fn env_is_safe() {
        let s = spec(json!([{"name": "main", "script": {"image": "alpine",
            "env": [{"name": "MESSAGE", "value": "{{workflow.parameters.message}}"}],
            "source": "echo \"$MESSAGE\""}}]));
        assert_eq!(lint(s), BTreeMap::new());
    }

    #[test]
    fn inputs_handed_down_through_steps_and_dags_are_traced() {
        let s = spec(json!([
            {"name": "main", "steps": [[{"name": "a", "template": "middle",
                "arguments": {"parameters": [{"name": "text", "value": "{{workflow.parameters.message}}"}]}}]]},
            {"name": "middle", "dag": {"tasks": [{"name": "b", "template": "leaf",
                "arguments": {"parameters": [{"name": "said", "value": "x-{{inputs.parameters.text}}"}]}}]},
             "inputs": {"parameters": [{"name": "text"}]}},
            {"name": "leaf", "inputs": {"parameters": [{"name": "said"}]},
             "script": {"image": "alpine", "source": "echo {{ inputs.parameters.said }}"}},
            {"name": "unrelated", "inputs": {"parameters": [{"name": "said"}]},
             "script": {"image": "alpine", "source": "echo {{inputs.parameters.said}}"}},
        ]));
        assert_eq!(lint(s), one("templates[2].script.source"));
    }

    #[test]
    fn when_and_expressions_interpolate() {
        let s = spec(
            json!([{"name": "main", "steps": [[{"name": "a", "template": "noop",
            "when": "{{workflow.parameters.env}} == prod"}]]},
            {"name": "noop", "container": {"image": "alpine",
                "env": [{"name": "X", "value": "{{=sprig.trim(workflow.parameters['message'])}}"}]}}]),
        );
        assert_eq!(
            lint(s),
            [
                (
                    "env".to_string(),
                    vec!["templates[0].steps[0][0].when".to_string()]
                ),
                (
                    "message".to_string(),
                    vec!["templates[1].container.env[0].value".to_string()]
                ),
            ]
            .into()
        );
    }

    #[test]
    fn a_template_ref_is_traced_when_given_and_restricted_when_not() {
        let caller = spec(json!([{"name": "main", "steps": [[{"name": "a",
            "templateRef": {"name": "shared", "template": "say"},
            "arguments": {"parameters": [{"name": "what", "value": "{{workflow.parameters.message}}"}]}}]]}]));
        assert_eq!(
            lint(caller.clone()),
            one("templateRef(shared/say) (not visible to the adapter)")
        );
        let shared = json!({"templates": [
            {"name": "say", "inputs": {"parameters": [{"name": "what"}]},
             "script": {"image": "alpine", "source": "echo {{inputs.parameters.what}}"}}]});
        let got = interpolations(&caller, &|name| (name == "shared").then(|| shared.clone()));
        assert_eq!(
            got,
            one("templateRef(shared).spec.templates[0].script.source")
        );
        // Given, and safe there: nothing.
        let safe = json!({"templates": [
            {"name": "say", "inputs": {"parameters": [{"name": "what"}]},
             "container": {"image": "alpine", "args": ["{{inputs.parameters.what}}"]}}]});
        let got = interpolations(&caller, &|name| (name == "shared").then(|| safe.clone()));
        assert_eq!(got, BTreeMap::new());
    }

    #[test]
    fn parameters_not_exposed_are_not_reported() {
        let s = spec(json!([{"name": "main", "script": {"image": "alpine",
            "source": "echo {{workflow.parameters.internal}} {{workflow.name}}"}}]));
        assert_eq!(lint(s), BTreeMap::new());
    }

    #[test]
    fn supplied_outputs_are_traced_from_steps_and_tasks() {
        let s = json!({"templates": [
            {"name": "main", "dag": {"tasks": [
                {"name": "gate", "template": "gate"},
                {"name": "go", "template": "go", "depends": "gate",
                 "when": "{{tasks.gate.outputs.parameters.env}} == prod"}]}},
            {"name": "go", "container": {"image": "alpine", "command": ["bash", "-c"],
             "args": ["deploy {{tasks.gate.outputs.parameters['target']}}"]}},
            {"name": "other", "script": {"image": "alpine",
             "source": "echo {{tasks.elsewhere.outputs.parameters.env}}"}}]});
        let names = ["env", "target", "unused"].map(String::from).into();
        assert_eq!(
            supplied_interpolations(&s, "gate", names),
            [
                (
                    "env".to_string(),
                    vec!["templates[0].dag.tasks[1].when".to_string()]
                ),
                (
                    "target".to_string(),
                    vec!["templates[1].container.args[0]".to_string()]
                ),
            ]
            .into()
        );
    }
}
