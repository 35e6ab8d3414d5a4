//! Where runs go, and who serves them. The server is the one source of truth: an argo-adapter
//! serves what the server dispatches to ([`dispatch_namespaces`]), narrowed by its own list
//! ([`assign`]); a namespace nobody serves is reported, with the runs waiting there
//! ([`unserved`]). Pure functions.

use crate::domain::catalog::Catalog;
use crate::domain::codex;
use chrono::{DateTime, Utc};
use facteur_config::Config;
use std::collections::{BTreeMap, BTreeSet};

/// Every namespace the server dispatches runs to: `argo.namespace`, each command's, and the
/// Codex orchestrator's (autonomous and not) when orchestration is on. Sorted, no empties.
pub fn dispatch_namespaces(config: &Config, catalog: &Catalog) -> Vec<String> {
    let mut ns: BTreeSet<String> = BTreeSet::new();
    ns.insert(config.argo.namespace.clone());
    for cmd in catalog.commands() {
        ns.insert(catalog.namespace_of(&cmd));
    }
    if config.codex_implementation_orchestrator.enabled {
        ns.insert(codex::namespace(config, true));
        ns.insert(codex::namespace(config, false));
    }
    ns.into_iter().filter(|n| !n.is_empty()).collect()
}

/// What an adapter serves: `dispatch` narrowed by its own list (its RBAC scope; empty: no
/// narrowing). Sorted, no duplicates.
pub fn assign(dispatch: &[String], narrowing: &[String]) -> Vec<String> {
    let set: BTreeSet<&String> = dispatch
        .iter()
        .filter(|n| narrowing.is_empty() || narrowing.contains(n))
        .collect();
    set.into_iter().cloned().collect()
}

/// Runs waiting in one namespace to be dispatched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Queued {
    /// How many.
    pub runs: u64,
    /// When the oldest was queued.
    pub oldest: Option<DateTime<Utc>>,
}

/// A namespace no adapter serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unserved {
    /// The namespace.
    pub namespace: String,
    /// Its waiting runs (zero when none).
    pub queued: Queued,
    /// Whether the server dispatches there by configuration.
    pub configured: bool,
}

/// The namespaces that runs are dispatched to (`dispatch`) or wait in (`queued`) and that none
/// of `served` (each live adapter's namespaces) covers.
pub fn unserved(
    dispatch: &[String],
    served: &[Vec<String>],
    queued: &BTreeMap<String, Queued>,
) -> Vec<Unserved> {
    let covered: BTreeSet<&String> = served.iter().flatten().collect();
    let wanted: BTreeSet<&String> = dispatch.iter().chain(queued.keys()).collect();
    wanted
        .into_iter()
        .filter(|n| !covered.contains(n))
        .map(|n| Unserved {
            namespace: n.clone(),
            queued: queued.get(n).cloned().unwrap_or(Queued {
                runs: 0,
                oldest: None,
            }),
            configured: dispatch.contains(n),
        })
        .collect()
}

/// Runs stranded: waiting in an unserved namespace for longer than `after`.
pub fn stranded(unserved: &[Unserved], now: DateTime<Utc>, after: chrono::Duration) -> u64 {
    unserved
        .iter()
        .filter(|u| u.queued.oldest.is_some_and(|t| now - t >= after))
        .map(|u| u.queued.runs)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn the_server_names_every_namespace_it_dispatches_to() {
        let mut c = Config::default();
        c.argo.namespace = "argo-workflows".into();
        let cat = Catalog::from_config(&c);
        assert_eq!(dispatch_namespaces(&c, &cat), v(&["argo-workflows"]));
        // Codex orchestration on: both of its targets, whatever the adapter's config says.
        c.codex_implementation_orchestrator.enabled = true;
        c.codex_implementation_orchestrator.namespace = "codex".into();
        c.codex_implementation_orchestrator.autonomous_namespace = "jangar".into();
        let cat = Catalog::from_config(&c);
        assert_eq!(
            dispatch_namespaces(&c, &cat),
            v(&["argo-workflows", "codex", "jangar"])
        );
        // A command with its own namespace.
        c.commands = vec![facteur_config::CommandConfig {
            name: "deploy".into(),
            description: "d".into(),
            namespace: "deploys".into(),
            ..Default::default()
        }];
        let cat = Catalog::from_config(&c);
        assert!(dispatch_namespaces(&c, &cat).contains(&"deploys".to_string()));
    }

    #[test]
    fn an_adapter_may_only_narrow_the_set() {
        let d = v(&["a", "b", "c"]);
        assert_eq!(assign(&d, &[]), d);
        assert_eq!(assign(&d, &v(&["b", "z"])), v(&["b"]));
    }

    #[test]
    fn unserved_namespaces_and_their_stranded_runs() {
        let t0 = DateTime::from_timestamp(1_000_000, 0).expect("t");
        let queued: BTreeMap<String, Queued> = [
            (
                "codex".to_string(),
                Queued {
                    runs: 3,
                    oldest: Some(t0),
                },
            ),
            (
                "old".to_string(),
                Queued {
                    runs: 1,
                    oldest: Some(t0 + chrono::Duration::seconds(50)),
                },
            ),
            (
                "argo".to_string(),
                Queued {
                    runs: 2,
                    oldest: Some(t0),
                },
            ),
        ]
        .into();
        let u = unserved(&v(&["argo", "codex", "idle"]), &[v(&["argo"])], &queued);
        let names: Vec<_> = u.iter().map(|u| u.namespace.as_str()).collect();
        assert_eq!(names, ["codex", "idle", "old"]);
        assert!(u[0].configured && u[1].configured && !u[2].configured);
        assert_eq!(u[1].queued.runs, 0);
        let now = t0 + chrono::Duration::seconds(60);
        assert_eq!(stranded(&u, now, chrono::Duration::seconds(60)), 3);
        assert_eq!(stranded(&u, now, chrono::Duration::seconds(5)), 4);
        // With nobody connected, everything is unserved.
        assert_eq!(unserved(&v(&["argo"]), &[], &BTreeMap::new()).len(), 1);
    }
}
