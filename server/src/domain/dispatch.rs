//! Dispatches: the outbox of runs. Delivered at least once under leases; the Workflow name
//! derived from the run id makes the effect happen once. What moves a run and its dispatch is
//! the run state machine, [`crate::domain::machine`].

use crate::domain::run::{Approval, Run};
use chrono::{DateTime, Utc};
use std::time::Duration;

/// Where a dispatch stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DispatchState {
    /// Waiting for `available_at`.
    Pending,
    /// Held by an adapter until `lease_expires_at`.
    Leased,
    /// Completed.
    Done,
    /// Attempts exhausted or a permanent failure; an admin may requeue it.
    Dead,
    /// The run was cancelled (or finished) before the job ran.
    Cancelled,
}

impl DispatchState {
    /// Every state.
    pub const ALL: [DispatchState; 5] = [
        DispatchState::Pending,
        DispatchState::Leased,
        DispatchState::Done,
        DispatchState::Dead,
        DispatchState::Cancelled,
    ];
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            DispatchState::Pending => "pending",
            DispatchState::Leased => "leased",
            DispatchState::Done => "done",
            DispatchState::Dead => "dead",
            DispatchState::Cancelled => "cancelled",
        }
    }
    /// From the stored name.
    pub fn parse(s: &str) -> Option<DispatchState> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
    /// A job not run yet, that a finished run no longer needs.
    pub fn is_open(self) -> bool {
        matches!(self, DispatchState::Pending | DispatchState::Dead)
    }
}

impl std::fmt::Display for DispatchState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a dispatch asks the adapter to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DispatchKind {
    /// Create the Workflow.
    Create,
    /// `spec.shutdown: Stop`.
    Stop,
    /// `spec.shutdown: Terminate`.
    Terminate,
    /// Resume the suspend step the run's approval names.
    Approve,
    /// Reject it (the node Failed, the Workflow stopped).
    Reject,
}

impl DispatchKind {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            DispatchKind::Create => "create",
            DispatchKind::Stop => "stop",
            DispatchKind::Terminate => "terminate",
            DispatchKind::Approve => "approve",
            DispatchKind::Reject => "reject",
        }
    }
    /// From the stored name.
    pub fn parse(s: &str) -> Option<DispatchKind> {
        [
            DispatchKind::Create,
            DispatchKind::Stop,
            DispatchKind::Terminate,
            DispatchKind::Approve,
            DispatchKind::Reject,
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
    /// Where it stands.
    pub state: DispatchState,
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
    /// Taken again after an earlier lease expired (its adapter died or stalled).
    pub redelivered: bool,
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
    /// Cluster of the reporting adapter: a run of another cluster is not touched.
    pub cluster: String,
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
    /// The Pod node running now.
    pub current_step: String,
    /// The last lines of the failing node's log.
    pub log_tail: String,
    /// The suspend step waiting for a decision.
    pub approval: Option<Approval>,
}

/// What a `Complete` did, for metrics and wake-ups.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompleteEffect {
    /// The Workflow exists now; the run was accepted this long ago.
    Submitted(Duration),
    /// A stop or terminate patch went through.
    ShutdownSent,
    /// The attempt failed and will be retried.
    RetryScheduled,
    /// The attempt failed for the last time.
    DeadLettered,
    /// The run had been cancelled before the Workflow existed; nothing more to do.
    Cancelled,
    /// Repeated call for an already completed dispatch: nothing changed.
    AlreadyDone,
}
