//! Commands from WorkflowTemplates: the argo-adapters' reports stored, and the catalog of every
//! replica rebuilt from what is stored (at start, after a report, and every few seconds for
//! reports another replica took). A change wakes the `WatchGuilds` streams, so the
//! discord-adapters register it, and the lease streams (new namespaces may be served).

use crate::domain::input::storable;
use crate::domain::templates::Template;
use crate::domain::{Error, Result};
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

fn check(namespaces: &[String], templates: &[Template]) -> Result<()> {
    for (i, ns) in namespaces.iter().enumerate() {
        storable(&format!("namespaces[{i}]"), ns, MAX_NAME)?;
    }
    for (i, t) in templates.iter().enumerate() {
        let field = |f: &str| format!("templates[{i}].{f}");
        storable(&field("namespace"), &t.namespace, MAX_NAME)?;
        storable(&field("name"), &t.name, MAX_NAME)?;
        storable(&field("command"), &t.command, MAX_NAME)?;
        if !namespaces.contains(&t.namespace) {
            return Err(Error::InvalidArgument(format!(
                "{}: `{}` is not one of the reported namespaces",
                field("namespace"),
                t.namespace
            )));
        }
        for (k, v) in &t.annotations {
            storable(&field("annotations"), k, MAX_NAME)?;
            storable(&field(&format!("annotations[{k}]")), v, MAX_TEXT)?;
        }
        for (j, p) in t.parameters.iter().enumerate() {
            let pf = field(&format!("parameters[{j}]"));
            storable(&format!("{pf}.name"), &p.name, MAX_NAME)?;
            storable(&format!("{pf}.description"), &p.description, MAX_TEXT)?;
            for c in &p.choices {
                storable(&format!("{pf}.choices"), c, MAX_TEXT)?;
            }
            for at in &p.interpolated_in {
                storable(&format!("{pf}.interpolated_in"), at, MAX_TEXT)?;
            }
        }
    }
    Ok(())
}

/// Stores what adapter `by` found in `namespaces` and rebuilds the catalog.
pub async fn report(
    state: &AppState,
    by: &str,
    namespaces: Vec<String>,
    templates: Vec<Template>,
) -> Result<Reported> {
    check(&namespaces, &templates)?;
    state
        .store
        .replace_templates(&namespaces, &templates, by)
        .await?;
    reload(state).await?;
    Ok(Reported {
        commands: state.catalog.template_commands(),
        problems: state.catalog.problems(),
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
