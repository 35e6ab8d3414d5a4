//! WorkflowTemplates labelled `facteur.proompteng.ai/command` become commands: this adapter
//! watches the templates of every namespace it serves and reports what it finds to the server
//! (`DispatchService.ReportWorkflowTemplates`), which decides how they read as commands.
//! Every template is linted ([`crate::lint`], `templateRef`s followed within the namespace): a
//! labelled one is reported whole, an unlabelled one (a configured command's, or one another
//! refers to) only with the parameters it interpolates, under an empty `command`, so the
//! server restricts configured commands' options as it does template commands'.
//!
//! A report is a snapshot of the namespaces whose templates have been listed: each change (a
//! template added, changed or deleted) is reported within [`SETTLE`], and everything again every
//! [`RESEND`] (a server whose database was restored, a report lost to an outage).

use crate::workflows::Workflows;
use facteur_client::{Client, pb};
use facteur_proto::workflow::COMMAND_LABEL;
use kube::api::DynamicObject;
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;

/// Changes arriving together are reported together.
pub const SETTLE: Duration = Duration::from_millis(200);
/// Everything is reported again this often.
pub const RESEND: Duration = Duration::from_secs(60);

/// Annotations the server reads: Argo's description and title, and facteur's hints.
fn wanted_annotation(k: &str) -> bool {
    k == "workflows.argoproj.io/description"
        || k == "workflows.argoproj.io/title"
        || k.starts_with("facteur.proompteng.ai/")
}

/// What the server needs of a template: a labelled one whole (its command), an unlabelled one
/// only when it interpolates a parameter, with just those (`command` empty); `None` otherwise.
/// `other` gives the spec of another template of the namespace (for `templateRef`s).
pub fn command_of(
    obj: &DynamicObject,
    other: &dyn Fn(&str) -> Option<Value>,
) -> Option<pb::WorkflowTemplateCommand> {
    let command = obj
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(COMMAND_LABEL))
        .cloned();
    let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let mut interpolated = obj
        .data
        .get("spec")
        .map(|spec| crate::lint::interpolations(spec, other))
        .unwrap_or_default();
    if command.is_none() && interpolated.is_empty() {
        return None;
    }
    let parameters = obj
        .data
        .pointer("/spec/arguments/parameters")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|p| pb::TemplateParameter {
            name: text(p, "name"),
            description: text(p, "description"),
            choices: crate::status::strings(p.get("enum")),
            has_default: ["value", "default", "valueFrom"]
                .iter()
                .any(|k| p.get(*k).is_some_and(|v| !v.is_null())),
            interpolated_in: interpolated.remove(&text(p, "name")).unwrap_or_default(),
        })
        .filter(|p: &pb::TemplateParameter| command.is_some() || !p.interpolated_in.is_empty())
        .collect();
    let command = command.unwrap_or_default();
    let labelled = !command.is_empty();
    Some(pb::WorkflowTemplateCommand {
        namespace: obj.metadata.namespace.clone().unwrap_or_default(),
        name: obj.metadata.name.clone().unwrap_or_default(),
        command,
        annotations: obj
            .metadata
            .annotations
            .iter()
            .flatten()
            .filter(|(k, _)| labelled && wanted_annotation(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        parameters,
    })
}

/// The templates per namespace, by name, for the namespaces listed so far.
#[derive(Default)]
struct Seen {
    listed: BTreeMap<String, BTreeMap<String, DynamicObject>>,
}

/// What one namespace's templates report: each read by [`command_of`], `templateRef`s resolved
/// among them.
fn report_of(templates: &BTreeMap<String, DynamicObject>) -> Vec<pb::WorkflowTemplateCommand> {
    let other = |name: &str| {
        templates
            .get(name)
            .and_then(|o| o.data.get("spec").cloned())
    };
    templates
        .values()
        .filter_map(|o| command_of(o, &other))
        .collect()
}

/// Watches and reports until `shutdown`.
pub async fn follow(
    workflows: Workflows,
    control: Client,
    adapter_id: String,
    cluster: String,
    assigned: crate::assignment::Assigned,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let changed = Arc::new(Notify::new());
    let stop = shutdown.child_token();
    let reporting = tokio::spawn(report(
        control,
        adapter_id,
        cluster,
        seen.clone(),
        changed.clone(),
        stop.clone(),
    ));
    let watching = crate::watch::per_namespace(
        assigned,
        shutdown.clone(),
        "template watch",
        move |ns, token| watch(workflows.clone(), ns, seen.clone(), changed.clone(), token),
    )
    .await;
    stop.cancel();
    let _ = reporting.await;
    watching
}

/// Watches one namespace's labelled templates until `shutdown`; forgets them when it ends.
async fn watch(
    workflows: Workflows,
    namespace: String,
    seen: Arc<Mutex<Seen>>,
    changed: Arc<Notify>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // Every template, not only the labelled ones: configured commands name unlabelled ones,
    // and templateRefs reach them.
    let stream =
        watcher(workflows.templates(&namespace), watcher::Config::default()).default_backoff();
    tokio::pin!(stream);
    tracing::info!(namespace = %namespace, "watching workflow templates");
    // A (re)list is gathered apart and replaces what was known at its end: a template deleted
    // while the watch was down is gone then.
    let mut relist: Option<BTreeMap<String, DynamicObject>> = None;
    let set = |f: &mut dyn FnMut(&mut BTreeMap<String, DynamicObject>)| {
        if let Ok(mut s) = seen.lock()
            && let Some(m) = s.listed.get_mut(&namespace)
        {
            f(m);
            changed.notify_one();
        }
    };
    loop {
        let ev = tokio::select! {
            _ = shutdown.cancelled() => break,
            ev = stream.next() => ev,
        };
        match ev {
            Some(Ok(watcher::Event::Init)) => relist = Some(BTreeMap::new()),
            Some(Ok(watcher::Event::InitApply(obj))) => {
                if let Some(m) = relist.as_mut() {
                    m.insert(obj.metadata.name.clone().unwrap_or_default(), obj);
                }
            }
            Some(Ok(watcher::Event::InitDone)) => {
                if let (Some(m), Ok(mut s)) = (relist.take(), seen.lock()) {
                    s.listed.insert(namespace.clone(), m);
                    changed.notify_one();
                }
            }
            Some(Ok(watcher::Event::Apply(obj))) => {
                let name = obj.metadata.name.clone().unwrap_or_default();
                set(&mut |m| {
                    m.insert(name.clone(), obj.clone());
                });
            }
            Some(Ok(watcher::Event::Delete(obj))) => {
                let name = obj.metadata.name.clone().unwrap_or_default();
                set(&mut |m| {
                    m.remove(&name);
                });
            }
            Some(Err(e)) => {
                tracing::warn!(namespace = %namespace, error = %e, "workflow template watch error; retrying with backoff")
            }
            None => {
                return Err(anyhow::anyhow!(
                    "workflow template watch of {namespace} ended"
                ));
            }
        }
    }
    // No longer served: the next report leaves it out (its templates stay as last reported).
    if let Ok(mut s) = seen.lock() {
        s.listed.remove(&namespace);
    }
    Ok(())
}

/// Sends the snapshot after each settled change, and every [`RESEND`], until `shutdown`.
async fn report(
    control: Client,
    adapter_id: String,
    cluster: String,
    seen: Arc<Mutex<Seen>>,
    changed: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let mut last: Option<pb::ReportWorkflowTemplatesRequest> = None;
    let mut due = tokio::time::Instant::now() + RESEND;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = changed.notified() => tokio::time::sleep(SETTLE).await,
            _ = tokio::time::sleep_until(due) => last = None,
        }
        let req = {
            let Ok(s) = seen.lock() else { return };
            pb::ReportWorkflowTemplatesRequest {
                adapter_id: adapter_id.clone(),
                cluster: cluster.clone(),
                namespaces: s.listed.keys().cloned().collect(),
                templates: s.listed.values().flat_map(report_of).collect(),
            }
        };
        if req.namespaces.is_empty() || last.as_ref() == Some(&req) {
            continue;
        }
        match control
            .dispatch()
            .report_workflow_templates(req.clone())
            .await
        {
            Ok(r) => {
                let r = r.into_inner();
                for p in &r.problems {
                    tracing::warn!(problem = %p, "a labelled workflow template is not a command");
                }
                tracing::info!(
                    templates = req.templates.len(),
                    commands = r.commands,
                    "workflow template commands reported"
                );
                last = Some(req);
                due = tokio::time::Instant::now() + RESEND;
            }
            Err(st) => {
                tracing::warn!(code = ?st.code(), error = %st.message(), "cannot report the workflow template commands; trying again");
                changed.notify_one();
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_labelled_template_is_read_as_argo_declares_it() {
        let obj: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "argoproj.io/v1alpha1", "kind": "WorkflowTemplate",
            "metadata": {"name": "hello", "namespace": "ns",
                "labels": {COMMAND_LABEL: "hello"},
                "annotations": {"workflows.argoproj.io/description": "Say hello",
                                "facteur.proompteng.ai/type.count": "integer",
                                "kubectl.kubernetes.io/last-applied-configuration": "{}"}},
            "spec": {"arguments": {"parameters": [
                {"name": "greeting", "enum": ["hi", "hello"], "value": "hi", "description": "How"},
                {"name": "target"},
                {"name": "count", "default": "1"},
            ]}},
        }))
        .expect("template");
        let c = command_of(&obj, &|_| None).expect("labelled");
        assert_eq!(
            (c.namespace.as_str(), c.name.as_str(), c.command.as_str()),
            ("ns", "hello", "hello")
        );
        assert_eq!(
            c.annotations
                .keys()
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect::<Vec<_>>(),
            [
                "facteur.proompteng.ai/type.count",
                "workflows.argoproj.io/description"
            ],
            "only the annotations that say how it reads"
        );
        let p: Vec<(&str, usize, bool)> = c
            .parameters
            .iter()
            .map(|p| (p.name.as_str(), p.choices.len(), p.has_default))
            .collect();
        assert_eq!(
            p,
            [
                ("greeting", 2, true),
                ("target", 0, false),
                ("count", 0, true)
            ]
        );
        let mut unlabelled = obj.clone();
        unlabelled.metadata.labels = None;
        assert!(
            command_of(&unlabelled, &|_| None).is_none(),
            "unlabelled and interpolating nothing: not reported"
        );
    }

    #[test]
    fn an_unlabelled_template_reports_only_what_it_interpolates_and_refs_are_followed() {
        let caller: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "argoproj.io/v1alpha1", "kind": "WorkflowTemplate",
            "metadata": {"name": "deploy", "namespace": "ns",
                "annotations": {"workflows.argoproj.io/description": "Deploy"}},
            "spec": {"arguments": {"parameters": [{"name": "service"}, {"name": "note"}]},
                "templates": [{"name": "main", "steps": [[{"name": "a",
                    "templateRef": {"name": "shared", "template": "run"},
                    "arguments": {"parameters": [
                        {"name": "cmd", "value": "{{workflow.parameters.service}}"}]}}]]}]},
        }))
        .expect("caller");
        let shared: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "argoproj.io/v1alpha1", "kind": "WorkflowTemplate",
            "metadata": {"name": "shared", "namespace": "ns"},
            "spec": {"templates": [{"name": "run", "inputs": {"parameters": [{"name": "cmd"}]},
                "script": {"image": "alpine", "source": "deploy {{inputs.parameters.cmd}}"}}]},
        }))
        .expect("shared");
        let ns: BTreeMap<String, DynamicObject> = [
            ("deploy".to_string(), caller),
            ("shared".to_string(), shared),
        ]
        .into();
        let report = report_of(&ns);
        assert_eq!(
            report.len(),
            1,
            "shared interpolates nothing of its own: {report:?}"
        );
        let r = &report[0];
        assert_eq!((r.name.as_str(), r.command.as_str()), ("deploy", ""));
        assert!(r.annotations.is_empty());
        let p: Vec<(&str, Vec<String>)> = r
            .parameters
            .iter()
            .map(|p| (p.name.as_str(), p.interpolated_in.clone()))
            .collect();
        assert_eq!(
            p,
            [(
                "service",
                vec!["templateRef(shared).spec.templates[0].script.source".to_string()]
            )],
            "only the interpolated parameter, traced into the other template"
        );
    }
}
