//! WorkflowTemplates labelled `facteur.proompteng.ai/command` become commands: this adapter
//! watches them in every namespace it serves and reports what it finds to the server
//! (`DispatchService.ReportWorkflowTemplates`), which decides how they read as commands.
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

/// What the server needs of a labelled template.
pub fn command_of(obj: &DynamicObject) -> Option<pb::WorkflowTemplateCommand> {
    let command = obj.metadata.labels.as_ref()?.get(COMMAND_LABEL)?.clone();
    let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    // templateRefs to other templates are not followed here (this watch sees labelled ones
    // only): a value handed to one counts as interpolated.
    let mut interpolated = obj
        .data
        .get("spec")
        .map(|spec| crate::lint::interpolations(spec, &|_| None))
        .unwrap_or_default();
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
        .collect();
    Some(pb::WorkflowTemplateCommand {
        namespace: obj.metadata.namespace.clone().unwrap_or_default(),
        name: obj.metadata.name.clone().unwrap_or_default(),
        command,
        annotations: obj
            .metadata
            .annotations
            .iter()
            .flatten()
            .filter(|(k, _)| wanted_annotation(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        parameters,
    })
}

/// The labelled templates per namespace, for the namespaces listed so far.
#[derive(Default)]
struct Seen {
    listed: BTreeMap<String, BTreeMap<String, pb::WorkflowTemplateCommand>>,
}

/// Watches and reports until `shutdown`.
pub async fn follow(
    workflows: Workflows,
    control: Client,
    adapter_id: String,
    assigned: crate::assignment::Assigned,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let changed = Arc::new(Notify::new());
    let stop = shutdown.child_token();
    let reporting = tokio::spawn(report(
        control,
        adapter_id,
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
    let stream = watcher(
        workflows.templates(&namespace),
        watcher::Config::default().labels(COMMAND_LABEL),
    )
    .default_backoff();
    tokio::pin!(stream);
    tracing::info!(namespace = %namespace, "watching labelled workflow templates");
    // A (re)list is gathered apart and replaces what was known at its end: a template deleted
    // while the watch was down is gone then.
    let mut relist: Option<BTreeMap<String, pb::WorkflowTemplateCommand>> = None;
    let set = |f: &mut dyn FnMut(&mut BTreeMap<String, pb::WorkflowTemplateCommand>)| {
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
                if let (Some(m), Some(c)) = (relist.as_mut(), command_of(&obj)) {
                    m.insert(c.name.clone(), c);
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
                match command_of(&obj) {
                    Some(c) => set(&mut |m| {
                        m.insert(name.clone(), c.clone());
                    }),
                    // The label was removed: no longer a command.
                    None => set(&mut |m| {
                        m.remove(&name);
                    }),
                }
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
                namespaces: s.listed.keys().cloned().collect(),
                templates: s
                    .listed
                    .values()
                    .flat_map(|m| m.values().cloned())
                    .collect(),
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
        let c = command_of(&obj).expect("labelled");
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
        assert!(command_of(&unlabelled).is_none());
    }
}
