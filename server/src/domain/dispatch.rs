//! Dispatches: the outbox of runs. Delivered at least once under leases; the Workflow name
//! derived from the run id makes the effect happen once.

use crate::domain::run::Run;
use chrono::{DateTime, Utc};
use std::time::Duration;

/// What a dispatch asks the adapter to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DispatchKind {
    /// Create the Workflow.
    Create,
    /// `spec.shutdown: Stop`.
    Stop,
    /// `spec.shutdown: Terminate`.
    Terminate,
}

impl DispatchKind {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            DispatchKind::Create => "create",
            DispatchKind::Stop => "stop",
            DispatchKind::Terminate => "terminate",
        }
    }
    /// From the stored name.
    pub fn parse(s: &str) -> Option<DispatchKind> {
        [
            DispatchKind::Create,
            DispatchKind::Stop,
            DispatchKind::Terminate,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// A dispatch as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct Dispatch {
    /// Id.
    pub id: String,
    /// Run id.
    pub run_id: String,
    /// Kind.
    pub kind: DispatchKind,
    /// `pending`, `leased`, `done`, `dead`, `cancelled`.
    pub state: String,
    /// Attempts made (leases handed out).
    pub attempts: u32,
    /// Lease token while leased.
    pub lease_token: String,
    /// Lease deadline while leased.
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// Last failure.
    pub last_error: String,
    /// When it was dead-lettered.
    pub dead_lettered_at: Option<DateTime<Utc>>,
}

/// A leased job: the dispatch and its run.
#[derive(Clone, Debug)]
pub struct Leased {
    /// The dispatch (state `leased`).
    pub dispatch: Dispatch,
    /// Its run.
    pub run: Run,
}

/// How an attempt ended.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// Created or patched.
    Success {
        /// Workflow name.
        workflow_name: String,
        /// Workflow UID.
        workflow_uid: String,
        /// The create found it already there.
        already_existed: bool,
    },
    /// Failed.
    Failure {
        /// What failed.
        message: String,
        /// Worth another attempt.
        retryable: bool,
    },
}

/// Leasing and retry policy (from `dispatcher.*`).
#[derive(Clone, Copy, Debug)]
pub struct DispatchPolicy {
    /// Lease length.
    pub lease: Duration,
    /// Attempts before dead-lettering.
    pub max_attempts: u32,
    /// First retry delay.
    pub backoff_initial: Duration,
    /// Retry delay cap.
    pub backoff_max: Duration,
}

impl DispatchPolicy {
    /// From the configuration.
    pub fn from_config(c: &facteur_config::DispatcherConfig) -> Self {
        Self {
            lease: Duration::from_secs(c.lease_seconds),
            max_attempts: c.max_attempts,
            backoff_initial: Duration::from_millis(c.backoff_initial_ms),
            backoff_max: Duration::from_millis(c.backoff_max_ms),
        }
    }

    /// Delay before attempt `attempts + 1`: `min(initial * 2^(attempts-1), max)`.
    pub fn backoff(&self, attempts: u32) -> Duration {
        let exp = attempts.saturating_sub(1).min(20);
        (self.backoff_initial * 2u32.pow(exp)).min(self.backoff_max)
    }
}

/// A Workflow status observed by an adapter (watch, resync or exit-handler callback).
#[derive(Clone, Debug, Default)]
pub struct StatusReport {
    /// Run id, when the Workflow carries our label.
    pub run_id: Option<String>,
    /// Namespace.
    pub namespace: String,
    /// Workflow name.
    pub workflow_name: String,
    /// Workflow UID.
    pub workflow_uid: String,
    /// Argo phase.
    pub phase: String,
    /// `status.message`.
    pub message: String,
    /// `status.progress`.
    pub progress: String,
    /// `status.startedAt`.
    pub started_at: Option<DateTime<Utc>>,
    /// `status.finishedAt`.
    pub finished_at: Option<DateTime<Utc>>,
    /// Failing node.
    pub failed_node: String,
    /// Failing node's message.
    pub failed_node_message: String,
    /// `watch`, `resync`, `callback`.
    pub source: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = DispatchPolicy {
            lease: Duration::from_secs(30),
            max_attempts: 5,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_millis(500),
        };
        let got: Vec<u128> = (1..=5).map(|a| p.backoff(a).as_millis()).collect();
        assert_eq!(got, vec![100, 200, 400, 500, 500]);
    }
}
