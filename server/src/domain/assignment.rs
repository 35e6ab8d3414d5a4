//! Where runs go, and who serves them. The server is the one source of truth: an argo-adapter
//! of a cluster serves what the server dispatches to in that cluster ([`dispatch_places`]),
//! narrowed by its own list ([`assign`]); a namespace of a cluster that no adapter of the
//! cluster serves is reported, with the runs waiting there ([`unserved`]). Pure functions.

use crate::domain::catalog::Catalog;
use crate::domain::codex;
use chrono::{DateTime, Utc};
use facteur_config::Config;
use std::collections::{BTreeMap, BTreeSet};

/// A namespace of a cluster.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Place {
    /// The cluster.
    pub cluster: String,
    /// The namespace.
    pub namespace: String,
}

/// Every namespace the server dispatches runs to, by cluster: each configured cluster's
/// `namespaces`, `argo.namespace` in the default cluster, each command's cluster and namespace
/// (each of its clusters for a template in several), and the Codex orchestrator's (autonomous
/// and not) when orchestration is on. Every configured cluster is a key; sorted, no empties.
pub fn dispatch_places(config: &Config, catalog: &Catalog) -> BTreeMap<String, Vec<String>> {
    let mut by: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for c in config.clusters() {
        by.entry(c.name).or_default().extend(c.namespaces);
    }
    by.entry(catalog.default_cluster().to_string())
        .or_default()
        .insert(config.argo.namespace.clone());
    for cmd in catalog.commands() {
        for (cluster, namespace) in catalog.placements(&cmd.name) {
            by.entry(cluster).or_default().insert(namespace);
        }
    }
    let c = &config.codex_implementation_orchestrator;
    if c.enabled {
        let codex_cluster = config.cluster_or_default(&c.cluster).to_string();
        let set = by.entry(codex_cluster).or_default();
        set.insert(codex::namespace(config, true));
        set.insert(codex::namespace(config, false));
    }
    by.into_iter()
        .map(|(k, v)| (k, v.into_iter().filter(|n| !n.is_empty()).collect()))
        .collect()
}

/// The namespaces the server dispatches to in `cluster` (none for a cluster it does not know).
pub fn dispatch_namespaces(config: &Config, catalog: &Catalog, cluster: &str) -> Vec<String> {
    dispatch_places(config, catalog)
        .remove(cluster)
        .unwrap_or_default()
}

/// The cluster an adapter acts for: the one it names (empty: `default`), which must be the one
/// its token is bound to, if any (else PERMISSION_DENIED naming both).
pub fn adapter_cluster(bound: Option<&str>, named: &str) -> crate::domain::Result<String> {
    let named = if named.is_empty() {
        facteur_config::DEFAULT_CLUSTER
    } else {
        named
    };
    match bound {
        Some(b) if b != named => Err(crate::domain::Error::PermissionDenied(format!(
            "this token is bound to cluster `{b}`; it may not act for cluster `{}`",
            facteur_config::discord::clip(named, 63)
        ))),
        _ => Ok(named.to_string()),
    }
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

/// A namespace of a cluster no adapter of that cluster serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unserved {
    /// The cluster.
    pub cluster: String,
    /// The namespace.
    pub namespace: String,
    /// Its waiting runs (zero when none).
    pub queued: Queued,
    /// Whether the server dispatches there by configuration.
    pub configured: bool,
}

/// The places that runs are dispatched to (`dispatch`, by cluster) or wait in (`queued`) and
/// that none of `served` (each live adapter's cluster and namespaces) covers: an adapter covers
/// only namespaces of its own cluster.
pub fn unserved(
    dispatch: &BTreeMap<String, Vec<String>>,
    served: &[(String, Vec<String>)],
    queued: &BTreeMap<Place, Queued>,
) -> Vec<Unserved> {
    let covered: BTreeSet<Place> = served.iter().flat_map(|(c, n)| places(c, n)).collect();
    let configured: BTreeSet<Place> = dispatch.iter().flat_map(|(c, n)| places(c, n)).collect();
    let wanted: BTreeSet<&Place> = configured.iter().chain(queued.keys()).collect();
    wanted
        .into_iter()
        .filter(|p| !covered.contains(p))
        .map(|p| Unserved {
            cluster: p.cluster.clone(),
            namespace: p.namespace.clone(),
            queued: queued.get(p).cloned().unwrap_or(Queued {
                runs: 0,
                oldest: None,
            }),
            configured: configured.contains(p),
        })
        .collect()
}

/// The places of `namespaces` in `cluster`.
fn places<'a>(cluster: &'a str, namespaces: &'a [String]) -> impl Iterator<Item = Place> + 'a {
    namespaces.iter().map(move |n| Place {
        cluster: cluster.to_string(),
        namespace: n.clone(),
    })
}

/// Runs stranded: waiting in an unserved namespace for longer than `after`.
pub fn stranded<'a>(
    unserved: impl IntoIterator<Item = &'a Unserved>,
    now: DateTime<Utc>,
    after: chrono::Duration,
) -> u64 {
    unserved
        .into_iter()
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

    fn place(c: &str, n: &str) -> Place {
        Place {
            cluster: c.into(),
            namespace: n.into(),
        }
    }

    #[test]
    fn the_server_names_every_namespace_it_dispatches_to() {
        let mut c = Config::default();
        c.argo.namespace = "argo-workflows".into();
        let cat = Catalog::from_config(&c);
        assert_eq!(
            dispatch_namespaces(&c, &cat, "default"),
            v(&["argo-workflows"])
        );
        // Codex orchestration on: both of its targets, whatever the adapter's config says.
        c.codex_implementation_orchestrator.enabled = true;
        c.codex_implementation_orchestrator.namespace = "codex".into();
        c.codex_implementation_orchestrator.autonomous_namespace = "jangar".into();
        let cat = Catalog::from_config(&c);
        assert_eq!(
            dispatch_namespaces(&c, &cat, "default"),
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
        assert!(dispatch_namespaces(&c, &cat, "default").contains(&"deploys".to_string()));
        assert!(dispatch_namespaces(&c, &cat, "west").is_empty());
    }

    #[test]
    fn each_cluster_has_its_own_namespaces() {
        let mut c = Config::default();
        c.argo.namespace = "argo".into();
        c.clusters = vec![
            facteur_config::ClusterConfig {
                name: "east".into(),
                ui_base_url: String::new(),
                namespaces: v(&["shared"]),
            },
            facteur_config::ClusterConfig {
                name: "west".into(),
                ui_base_url: String::new(),
                namespaces: v(&["gpu"]),
            },
        ];
        c.commands = vec![
            facteur_config::CommandConfig {
                name: "train".into(),
                description: "d".into(),
                cluster: "west".into(),
                namespace: "ml".into(),
                ..Default::default()
            },
            facteur_config::CommandConfig {
                name: "deploy".into(),
                description: "d".into(),
                ..Default::default()
            },
        ];
        c.codex_implementation_orchestrator.enabled = true;
        c.codex_implementation_orchestrator.cluster = "west".into();
        c.codex_implementation_orchestrator.namespace = "codex".into();
        let cat = Catalog::from_config(&c);
        let places = dispatch_places(&c, &cat);
        // East is the first listed: the default cluster, with `argo.namespace`.
        assert_eq!(places["east"], v(&["argo", "shared"]));
        assert_eq!(places["west"], v(&["codex", "gpu", "ml"]));
        assert_eq!(places.len(), 2);
    }

    #[test]
    fn a_bound_token_acts_for_its_cluster_only() {
        assert_eq!(adapter_cluster(None, "").expect("any"), "default");
        assert_eq!(adapter_cluster(None, "west").expect("any"), "west");
        assert_eq!(adapter_cluster(Some("east"), "east").expect("own"), "east");
        let e = adapter_cluster(Some("east"), "west").expect_err("other");
        assert!(
            matches!(e, crate::domain::Error::PermissionDenied(m) if m.contains("`east`") && m.contains("`west`"))
        );
        // Empty names `default`: a token bound elsewhere may not use it either.
        assert!(adapter_cluster(Some("east"), "").is_err());
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
        let queued: BTreeMap<Place, Queued> = [
            (
                place("default", "codex"),
                Queued {
                    runs: 3,
                    oldest: Some(t0),
                },
            ),
            (
                place("default", "old"),
                Queued {
                    runs: 1,
                    oldest: Some(t0 + chrono::Duration::seconds(50)),
                },
            ),
            (
                place("default", "argo"),
                Queued {
                    runs: 2,
                    oldest: Some(t0),
                },
            ),
        ]
        .into();
        let dispatch: BTreeMap<String, Vec<String>> =
            [("default".to_string(), v(&["argo", "codex", "idle"]))].into();
        let served = vec![("default".to_string(), v(&["argo"]))];
        let u = unserved(&dispatch, &served, &queued);
        let names: Vec<_> = u.iter().map(|u| u.namespace.as_str()).collect();
        assert_eq!(names, ["codex", "idle", "old"]);
        assert!(u[0].configured && u[1].configured && !u[2].configured);
        assert_eq!(u[1].queued.runs, 0);
        let now = t0 + chrono::Duration::seconds(60);
        assert_eq!(stranded(&u, now, chrono::Duration::seconds(60)), 3);
        assert_eq!(stranded(&u, now, chrono::Duration::seconds(5)), 4);
        // With nobody connected, everything is unserved.
        assert_eq!(unserved(&dispatch, &[], &BTreeMap::new()).len(), 3);
    }

    #[test]
    fn an_adapter_serves_its_own_cluster_only() {
        let dispatch: BTreeMap<String, Vec<String>> = [
            ("east".to_string(), v(&["argo"])),
            ("west".to_string(), v(&["argo"])),
        ]
        .into();
        // East's adapter serves `argo` in east; west's `argo` stays unserved.
        let u = unserved(
            &dispatch,
            &[("east".to_string(), v(&["argo"]))],
            &BTreeMap::new(),
        );
        assert_eq!(u.len(), 1);
        assert_eq!(
            (u[0].cluster.as_str(), u[0].namespace.as_str()),
            ("west", "argo")
        );
    }
}
