//! What facteur writes on a run's Workflow besides its template and parameters: the labels that
//! find it again (by run, by command, as managed by facteur) and the annotations that carry who
//! asked, from where, the trace, and whether its logs are shown on the card.

use crate::domain::run::Run;
use facteur_proto::workflow::{
    COMMAND_LABEL, MANAGED_BY_LABEL, RUN_ID_LABEL, SHOW_LOGS_ANNOTATION, TRACEPARENT_ANNOTATION,
};
use std::collections::BTreeMap;

/// Who asked for the run (a Discord user id, else the principal).
pub const REQUESTER_ANNOTATION: &str = "facteur.proompteng.ai/requester";
/// Where the run came from (`discord`, `admin`, `codex`, …).
pub const SOURCE_ANNOTATION: &str = "facteur.proompteng.ai/source";
/// Kubernetes' bound on a label value.
const MAX_LABEL_VALUE: usize = 63;

/// A Workflow's labels and annotations.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metadata {
    /// Labels (values valid as Kubernetes label values).
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    pub annotations: BTreeMap<String, String>,
}

/// The labels and annotations of `run`'s Workflow; `show_logs` when its command shows logs.
pub fn metadata(run: &Run, show_logs: bool) -> Metadata {
    let labels = [
        (MANAGED_BY_LABEL, "facteur".to_string()),
        (RUN_ID_LABEL, run.id.clone()),
        (COMMAND_LABEL, label_value(&run.command)),
    ];
    let requester = if run.requester.user_id.is_empty() {
        &run.requester.principal
    } else {
        &run.requester.user_id
    };
    let mut annotations: BTreeMap<String, String> = [
        (REQUESTER_ANNOTATION.to_string(), requester.clone()),
        (
            SOURCE_ANNOTATION.to_string(),
            run.source.as_str().to_string(),
        ),
    ]
    .into_iter()
    .collect();
    if !run.trace_parent.is_empty() {
        annotations.insert(TRACEPARENT_ANNOTATION.into(), run.trace_parent.clone());
    }
    if show_logs {
        annotations.insert(SHOW_LOGS_ANNOTATION.into(), "true".into());
    }
    Metadata {
        labels: labels
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        annotations,
    }
}

/// A label value: at most 63 of `[A-Za-z0-9-_.]`, alphanumeric at both ends (anything else
/// becomes `-`).
pub fn label_value(s: &str) -> String {
    let mut v: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    v.truncate(MAX_LABEL_VALUE);
    v.trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_what_kubernetes_accepts() {
        for (given, want) in [
            ("deploy", "deploy"),
            ("ops:deploy", "ops-deploy"),
            ("-edge_", "edge"),
            ("é", ""),
        ] {
            assert_eq!(label_value(given), want, "{given}");
        }
        let long = label_value(&"a".repeat(100));
        assert_eq!(long.len(), 63);
    }

    #[test]
    fn a_runs_workflow_carries_its_run_command_requester_and_trace() {
        let mut run = Run::example(crate::domain::run::RunStatus::Queued);
        run.command = "ops:deploy".into();
        run.trace_parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into();
        run.requester.principal = "admin".into();
        let m = metadata(&run, false);
        assert_eq!(m.labels[RUN_ID_LABEL], run.id);
        assert_eq!(m.labels[COMMAND_LABEL], "ops-deploy");
        assert_eq!(m.labels[MANAGED_BY_LABEL], "facteur");
        assert_eq!(m.annotations[REQUESTER_ANNOTATION], "admin");
        assert_eq!(m.annotations[TRACEPARENT_ANNOTATION], run.trace_parent);
        assert!(!m.annotations.contains_key(SHOW_LOGS_ANNOTATION));
        // A Discord member is named by id; logs shown when the command says so.
        run.requester.user_id = "300000000000000001".into();
        run.trace_parent.clear();
        let m = metadata(&run, true);
        assert_eq!(m.annotations[REQUESTER_ANNOTATION], "300000000000000001");
        assert!(!m.annotations.contains_key(TRACEPARENT_ANNOTATION));
        assert_eq!(m.annotations[SHOW_LOGS_ANNOTATION], "true");
    }
}

/// Where each cluster's Argo UI is (`clusters[].ui_base_url`, or `argo.ui_base_url` for the one
/// `default` cluster), for the links on cards.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ArgoUi {
    bases: BTreeMap<String, String>,
}

impl ArgoUi {
    /// From the configuration.
    pub fn of(config: &facteur_config::Config) -> ArgoUi {
        ArgoUi {
            bases: config
                .clusters()
                .into_iter()
                .map(|c| (c.name, c.ui_base_url.trim_end_matches('/').to_string()))
                .collect(),
        }
    }

    /// One UI, of the `default` cluster.
    pub fn single(base: &str) -> ArgoUi {
        ArgoUi {
            bases: [(
                facteur_config::DEFAULT_CLUSTER.to_string(),
                base.trim_end_matches('/').to_string(),
            )]
            .into(),
        }
    }

    /// The Argo UI of `cluster` (empty: none known).
    pub fn base(&self, cluster: &str) -> &str {
        self.bases.get(cluster).map_or("", String::as_str)
    }
}

/// Where `run`'s Workflow is, as people read it: `namespace/name`, after `cluster/` outside the
/// `default` cluster.
pub fn place_of(run: &Run) -> String {
    if run.cluster.is_empty() || run.cluster == facteur_config::DEFAULT_CLUSTER {
        format!("{}/{}", run.namespace, run.workflow_name)
    } else {
        format!("{}/{}/{}", run.cluster, run.namespace, run.workflow_name)
    }
}
