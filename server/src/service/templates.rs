//! Commands from WorkflowTemplates: the argo-adapters' reports stored, and the catalog of every
//! replica rebuilt from what is stored (at start, after a report, and every few seconds for
//! reports another replica took). A change wakes the `WatchGuilds` streams, so the
//! discord-adapters register it, and the lease streams (new namespaces may be served).

use crate::domain::Result;
use crate::domain::input::storable;
use crate::domain::templates::Template;
use crate::state::AppState;
use std::sync::Arc;
use std::time::Duration;

/// How often each replica looks for reports another replica stored.
pub const RELOAD: Duration = Duration::from_secs(2);
/// A Kubernetes name's longest form, for namespaces, template names and label values.
const MAX_NAME: usize = 253;
/// Longest annotation value or parameter text kept.
const MAX_TEXT: usize = 4000;

/// What a report did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reported {
    /// Commands the catalog has from templates now.
    pub commands: usize,
    /// Templates that are not commands, and why.
    pub problems: Vec<String>,
}

fn check(t: &Template) -> Result<()> {
    storable("command", &t.command, MAX_NAME)?;
    for (k, v) in &t.annotations {
        storable("annotations", k, MAX_NAME)?;
        storable(&format!("annotations[{k}]"), v, MAX_TEXT)?;
    }
    for (j, p) in t.parameters.iter().enumerate() {
        let pf = format!("parameters[{j}]");
        storable(&format!("{pf}.name"), &p.name, MAX_NAME)?;
        storable(&format!("{pf}.description"), &p.description, MAX_TEXT)?;
        for c in &p.choices {
            storable(&format!("{pf}.choices"), c, MAX_TEXT)?;
        }
        for at in &p.interpolated_in {
            storable(&format!("{pf}.interpolated_in"), at, MAX_TEXT)?;
        }
    }
    Ok(())
}

/// Takes a report template by template: a template that cannot be stored is kept in its place
/// as refused, with its reason and nothing else, so the others update and the refusal shows
/// with the catalog's problems; one that cannot even be named (outside the reported
/// namespaces, a name no Kubernetes object has) is dropped, its reason returned. Only the
/// namespaces, the adapter's own configuration, refuse the report whole.
fn sort_out(
    namespaces: &[String],
    templates: Vec<Template>,
) -> Result<(Vec<Template>, Vec<String>)> {
    for (i, ns) in namespaces.iter().enumerate() {
        storable(&format!("namespaces[{i}]"), ns, MAX_NAME)?;
    }
    let mut kept = Vec::with_capacity(templates.len());
    let mut dropped = Vec::new();
    for (i, t) in templates.into_iter().enumerate() {
        let named = storable("namespace", &t.namespace, MAX_NAME)
            .and_then(|()| storable("name", &t.name, MAX_NAME));
        if let Err(e) = named {
            dropped.push(format!("templates[{i}]: report refused: {e}"));
            continue;
        }
        if !namespaces.contains(&t.namespace) {
            dropped.push(format!(
                "{}: report refused: namespace `{}` is not one of the reported namespaces",
                t.source(),
                t.namespace
            ));
            continue;
        }
        match check(&t) {
            Ok(()) => kept.push(t),
            Err(e) => kept.push(Template {
                command: if storable("command", &t.command, MAX_NAME).is_ok() {
                    t.command.clone()
                } else {
                    String::new()
                },
                refused: e.to_string(),
                cluster: t.cluster,
                namespace: t.namespace,
                name: t.name,
                ..Default::default()
            }),
        }
    }
    Ok((kept, dropped))
}

/// Stores what adapter `by` found in `namespaces` of `cluster` and rebuilds the catalog;
/// templates refused are refused alone ([`sort_out`]).
pub async fn report(
    state: &AppState,
    by: &str,
    cluster: &str,
    namespaces: Vec<String>,
    templates: Vec<Template>,
) -> Result<Reported> {
    let (templates, dropped) = sort_out(&namespaces, templates)?;
    for d in &dropped {
        tracing::warn!(adapter = %by, problem = %d, "a reported WorkflowTemplate was dropped");
    }
    state
        .store
        .replace_templates(cluster, &namespaces, &templates, by)
        .await?;
    reload(state).await?;
    Ok(Reported {
        commands: state.catalog.template_commands(),
        problems: dropped
            .into_iter()
            .chain(state.catalog.problems())
            .collect(),
    })
}

/// Rebuilds the catalog's template commands from the store; whether they changed.
pub async fn reload(state: &AppState) -> Result<bool> {
    let templates = state.store.templates().await?;
    if !state.catalog.set_templates(templates) {
        return Ok(false);
    }
    let problems = state.catalog.problems();
    for p in &problems {
        tracing::warn!(problem = %p, "a labelled WorkflowTemplate is not a command");
    }
    let repairs = state.catalog.repairs();
    for r in &repairs {
        tracing::info!(repair = %r, "a template command was repaired to meet Discord's rules");
    }
    use crate::metrics::Metric;
    state
        .metrics
        .set_gauge(Metric::CatalogProblems, vec![], problems.len() as f64);
    state
        .metrics
        .set_gauge(Metric::CatalogRepairs, vec![], repairs.len() as f64);
    tracing::info!(
        commands = state.catalog.commands().len(),
        version = state.catalog.version(),
        problems = problems.len(),
        "command catalog changed (WorkflowTemplates)"
    );
    state.guilds_wake.notify_waiters();
    state.wake_dispatchers();
    Ok(true)
}

/// Reloads every [`RELOAD`] until shutdown (reports that other replicas stored).
pub async fn follow(state: Arc<AppState>) {
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tokio::time::sleep(RELOAD) => {}
        }
        if let Err(e) = reload(&state).await {
            tracing::debug!(error = %e, "could not reload the WorkflowTemplate commands");
        }
    }
}
