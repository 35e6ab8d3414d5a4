//! Retention: how long finished history is kept, and what a pass may delete.
//!
//! Three windows (`retention.runs`, `retention.audit`, `retention.codex_task_runs`), each a
//! duration or "keep everything". A run is deleted only when it is terminal (succeeded, failed,
//! error, cancelled) and finished before its window; a dead-lettered run waits for an admin and
//! a run still moving is never deleted, however old. A run goes with its history entries and its
//! dispatches.

use super::run::RunStatus;
use chrono::{DateTime, Utc};
use std::time::Duration;

/// The windows, `None` where everything is kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Retention {
    pub runs: Option<Duration>,
    pub audit: Option<Duration>,
    pub codex_task_runs: Option<Duration>,
}

/// What is older than these goes (per kind; `None`: nothing goes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cutoffs {
    pub runs: Option<DateTime<Utc>>,
    pub audit: Option<DateTime<Utc>>,
    pub codex_task_runs: Option<DateTime<Utc>>,
}

impl Retention {
    /// From the configuration (validated at load: an invalid window there is a start-up error).
    pub fn from_config(c: &facteur_config::RetentionConfig) -> Retention {
        let window = |s: &str| facteur_config::parse_retention(s).ok().flatten();
        Retention {
            runs: window(&c.runs),
            audit: window(&c.audit),
            codex_task_runs: window(&c.codex_task_runs),
        }
    }

    /// The windows as an operator reads them: `runs=90d audit=365d codex_task_runs=keep` (each
    /// in the largest unit that divides it).
    pub fn describe(&self) -> String {
        let window = |w: Option<Duration>| match w {
            None => "keep".to_string(),
            Some(w) => {
                let secs = w.as_secs();
                let (n, unit) = [(7 * 86_400, "w"), (86_400, "d"), (3600, "h"), (60, "m")]
                    .into_iter()
                    .find(|(per, _)| secs % per == 0)
                    .map_or((secs, "s"), |(per, unit)| (secs / per, unit));
                format!("{n}{unit}")
            }
        };
        format!(
            "runs={} audit={} codex_task_runs={}",
            window(self.runs),
            window(self.audit),
            window(self.codex_task_runs)
        )
    }

    /// The cutoffs of a pass at `now`.
    pub fn cutoffs(&self, now: DateTime<Utc>) -> Cutoffs {
        let before = |w: Option<Duration>| {
            w.and_then(|w| chrono::Duration::from_std(w).ok())
                .and_then(|w| now.checked_sub_signed(w))
        };
        Cutoffs {
            runs: before(self.runs),
            audit: before(self.audit),
            codex_task_runs: before(self.codex_task_runs),
        }
    }
}

/// The states a run may be deleted in (once its window has passed).
pub fn prunable_statuses() -> Vec<RunStatus> {
    RunStatus::ALL
        .into_iter()
        .filter(|s| s.is_terminal())
        .collect()
}

/// Whether a run in `status`, finished at `finished_at`, goes under `cutoff`.
pub fn run_goes(
    status: RunStatus,
    finished_at: Option<DateTime<Utc>>,
    cutoff: Option<DateTime<Utc>>,
) -> bool {
    match (cutoff, finished_at) {
        (Some(cutoff), Some(finished)) => status.is_terminal() && finished < cutoff,
        _ => false,
    }
}

/// What one pass deleted (or, dry, would delete), per kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    pub runs: u64,
    pub run_events: u64,
    pub dispatches: u64,
    pub audit_events: u64,
    pub codex_task_runs: u64,
}

impl Pruned {
    /// `(kind, count)` in a fixed order: what metrics, logs and `facteurctl prune` print.
    pub fn by_kind(&self) -> [(&'static str, u64); 5] {
        [
            ("runs", self.runs),
            ("run_events", self.run_events),
            ("dispatches", self.dispatches),
            ("audit_events", self.audit_events),
            ("codex_task_runs", self.codex_task_runs),
        ]
    }

    /// Adds `other`'s counts.
    pub fn add(&mut self, other: Pruned) {
        self.runs += other.runs;
        self.run_events += other.run_events;
        self.dispatches += other.dispatches;
        self.audit_events += other.audit_events;
        self.codex_task_runs += other.codex_task_runs;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn windows_read_back_in_their_largest_unit() {
        let c = facteur_config::RetentionConfig {
            runs: "90d".into(),
            audit: "2w".into(),
            codex_task_runs: String::new(),
            ..Default::default()
        };
        assert_eq!(
            super::Retention::from_config(&c).describe(),
            "runs=90d audit=2w codex_task_runs=keep"
        );
        let c = facteur_config::RetentionConfig {
            runs: "36h".into(),
            audit: "0".into(),
            codex_task_runs: "90s".into(),
            ..Default::default()
        };
        assert_eq!(
            super::Retention::from_config(&c).describe(),
            "runs=36h audit=keep codex_task_runs=90s"
        );
    }

    use super::*;

    #[test]
    fn only_terminal_runs_past_their_window_go() {
        let now = Utc::now();
        let r = Retention {
            runs: Some(Duration::from_secs(90 * 86_400)),
            ..Default::default()
        };
        let cut = r.cutoffs(now).runs;
        let old = Some(now - chrono::Duration::days(91));
        let young = Some(now - chrono::Duration::days(89));
        for s in RunStatus::ALL {
            assert_eq!(run_goes(s, old, cut), s.is_terminal(), "{s:?}");
            assert!(!run_goes(s, young, cut), "{s:?}");
            assert!(!run_goes(s, None, cut), "{s:?} without an end");
        }
        assert!(!run_goes(RunStatus::DeadLettered, old, cut));
        assert!(!run_goes(RunStatus::Running, old, cut));
        assert!(!run_goes(RunStatus::Succeeded, old, None), "unset keeps");
        assert_eq!(
            prunable_statuses(),
            vec![
                RunStatus::Succeeded,
                RunStatus::Failed,
                RunStatus::Error,
                RunStatus::Cancelled
            ]
        );
    }

    #[test]
    fn windows_come_from_the_configuration() {
        let c = facteur_config::RetentionConfig::default();
        let r = Retention::from_config(&c);
        assert_eq!(r.runs, Some(Duration::from_secs(90 * 86_400)));
        assert_eq!(r.audit, Some(Duration::from_secs(365 * 86_400)));
        assert_eq!(r.codex_task_runs, None, "codex_kb is kept unless asked");
        let now = Utc::now();
        assert_eq!(r.cutoffs(now).codex_task_runs, None);
        assert_eq!(r.cutoffs(now).runs, Some(now - chrono::Duration::days(90)));
    }
}
