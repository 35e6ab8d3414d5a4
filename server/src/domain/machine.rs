//! The run state machine (DESIGN.md §3): every move of a run, and of the dispatch it is about,
//! with its guard, in one place.
//!
//! ```text
//! queued ─▶ dispatching ─▶ submitted ─▶ running ─▶ succeeded
//!    │           │             │           ├─────▶ failed
//!    │           │             │           └─────▶ error
//!    └───────────┴─────────────┴───────────────────▶ cancelled
//! dispatching ─(attempts exhausted)─▶ dead_lettered ─(requeue)─▶ queued
//! ```
//!
//! Transitions only move forward. [`RunStatus::can_move_to`] is the single authority: a late or
//! repeated report that would move a run backwards is refused, and callers treat it as a no-op.
//!
//! The moves are pure functions ([`on_lease`], [`on_outcome`], [`on_report`], [`on_decision`],
//! [`on_cancel`], [`on_requeue`]): each takes what is stored and what happened and returns a
//! [`Transition`], which the store applies inside one transaction that has locked the run row
//! (then the dispatch row), with a compare-and-set on each, writing the history entry only
//! when both won. Retrying a run is a new run; [`check_retryable`] is its guard.

use crate::domain::dispatch::{
    CompleteEffect, Dispatch, DispatchKind, DispatchPolicy, DispatchState, Outcome, StatusReport,
};
use crate::domain::run::{Approval, Decision, Run, RunStatus, Steps};
use crate::domain::{Error, Result};
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use std::time::Duration;

impl RunStatus {
    /// Position along the forward path; states of one rank are alternatives, not successors.
    fn rank(self) -> u8 {
        match self {
            RunStatus::Queued => 0,
            RunStatus::Dispatching => 1,
            RunStatus::DeadLettered => 2,
            RunStatus::Submitted => 2,
            RunStatus::Running => 3,
            RunStatus::Succeeded | RunStatus::Failed | RunStatus::Error | RunStatus::Cancelled => 4,
        }
    }

    /// Whether `self → to` is a legal transition.
    pub fn can_move_to(self, to: RunStatus) -> bool {
        use RunStatus::*;
        match (self, to) {
            (a, b) if a.is_terminal() || a == b => false,
            // An admin requeue is the one way back, and only from the dead-letter state.
            (DeadLettered, Queued) => true,
            (DeadLettered, Cancelled) => true,
            (DeadLettered, _) => false,
            (_, DeadLettered) => self == Dispatching || self == Queued,
            // A failed create attempt hands the dispatch back to the queue for a retry.
            (Dispatching, Queued) => true,
            // Argo may report a Workflow's outcome before we saw it running, or before the
            // adapter's Complete arrived: skipping ahead is fine, going back is not.
            _ => to.rank() > self.rank(),
        }
    }
}

/// Only a finished run can be retried (FAILED_PRECONDITION otherwise).
pub fn check_retryable(run: &Run) -> crate::domain::Result<()> {
    if run.status.is_terminal() {
        Ok(())
    } else {
        Err(crate::domain::Error::FailedPrecondition(format!(
            "run `{}` is {}; only a finished run can be retried",
            run.id, run.status
        )))
    }
}

/// What a transition does to the dispatch it is about.
#[derive(Clone, Debug, PartialEq)]
pub enum DispatchChange {
    /// Leased (attempts + 1; the store sets owner, token and deadline).
    Lease,
    /// Completed.
    Done,
    /// Back to pending, due after `delay`, the error recorded.
    Retry {
        /// Backoff before the next attempt.
        delay: Duration,
        /// What failed.
        error: String,
    },
    /// Dead-lettered.
    Dead {
        /// Why.
        error: String,
    },
    /// Closed without running.
    Cancelled {
        /// What failed, if anything.
        error: String,
    },
    /// Pending again at once with fresh attempts (an admin requeue).
    Requeue,
}

impl DispatchChange {
    /// The dispatch's state after the change.
    pub fn state(&self) -> DispatchState {
        match self {
            DispatchChange::Lease => DispatchState::Leased,
            DispatchChange::Done => DispatchState::Done,
            DispatchChange::Retry { .. } | DispatchChange::Requeue => DispatchState::Pending,
            DispatchChange::Dead { .. } => DispatchState::Dead,
            DispatchChange::Cancelled { .. } => DispatchState::Cancelled,
        }
    }
}

/// Run columns a transition sets besides the status (`None`: unchanged).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunChange {
    /// `message`.
    pub message: Option<String>,
    /// `attempts`.
    pub attempts: Option<u32>,
    /// `workflow_uid`.
    pub workflow_uid: Option<String>,
    /// `progress`.
    pub progress: Option<String>,
    /// `workflow_phase`.
    pub workflow_phase: Option<String>,
    /// `started_at`.
    pub started_at: Option<DateTime<Utc>>,
    /// `finished_at` (set with every move to a terminal state).
    pub finished_at: Option<DateTime<Utc>>,
    /// A cancel was requested, to be carried out by a job of this kind.
    pub cancel_requested: Option<(DispatchKind, DateTime<Utc>)>,
    /// `current_step`, `failed_step`, `log_tail`.
    pub steps: Option<Steps>,
}

/// One step of a run and of the dispatch it is about, decided from what is stored and what
/// happened. Applied by the store as a whole or not at all.
#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    /// The run's next status (may be its current one).
    pub to: RunStatus,
    /// Other run columns.
    pub run: RunChange,
    /// What happens to the dispatch (`None`: the transition is not about one).
    pub dispatch: Option<DispatchChange>,
    /// The run is finished: its other jobs not run yet (pending, dead) are cancelled.
    pub close_open_jobs: bool,
    /// Argo reports the Workflow: the run's create job is done whatever its state.
    pub close_create: bool,
    /// A new job of this kind is queued (a cancel's stop or terminate).
    pub new_job: Option<DispatchKind>,
    /// The history entry (kind, details); `None` writes none (news within a phase).
    pub event: Option<(&'static str, serde_json::Value)>,
}

impl Transition {
    fn new(to: RunStatus) -> Self {
        Transition {
            to,
            run: RunChange::default(),
            dispatch: None,
            close_open_jobs: false,
            close_create: false,
            new_job: None,
            event: None,
        }
    }
    fn finishing(mut self, at: DateTime<Utc>) -> Self {
        if self.to.is_terminal() {
            self.run.finished_at = Some(at);
            self.close_open_jobs = true;
        }
        self
    }
}

fn dead_letter(d: &Dispatch, run: &Run, why: String) -> Transition {
    let to = if d.kind == DispatchKind::Create && run.status.can_move_to(RunStatus::DeadLettered) {
        RunStatus::DeadLettered
    } else {
        run.status
    };
    let mut t = Transition::new(to);
    t.run.message = Some(why.clone());
    t.event = Some((
        "dead_lettered",
        serde_json::json!({"error": why, "attempts": d.attempts, "dispatch": d.kind.as_str(), "dispatch_id": d.id}),
    ));
    t.dispatch = Some(DispatchChange::Dead { error: why });
    t
}

/// A due dispatch is about to be handed to `owner` until `expires`: lease it, or dead-letter it
/// (its previous lease expired on the last attempt), or close it (its run is finished).
pub fn on_lease(
    d: &Dispatch,
    run: &Run,
    policy: &DispatchPolicy,
    owner: &str,
    expires: DateTime<Utc>,
) -> Transition {
    let expired_lease = d.state == DispatchState::Leased;
    if expired_lease && d.attempts >= policy.max_attempts {
        let why = format!(
            "lease expired on attempt {} of {}: the adapter did not complete it",
            d.attempts, policy.max_attempts
        );
        return dead_letter(d, run, why);
    }
    if d.kind == DispatchKind::Create && run.status.is_terminal() {
        // Not reached through these rules (a finished run closes its create job); close it
        // rather than create a Workflow for a finished run.
        let mut t = Transition::new(run.status);
        t.dispatch = Some(DispatchChange::Cancelled {
            error: String::new(),
        });
        return t;
    }
    let attempt = d.attempts + 1;
    let mut t = Transition::new(
        if d.kind == DispatchKind::Create && run.status == RunStatus::Queued {
            RunStatus::Dispatching
        } else {
            run.status
        },
    );
    if d.kind == DispatchKind::Create {
        t.run.attempts = Some(attempt);
    }
    t.dispatch = Some(DispatchChange::Lease);
    t.event = Some((
        "leased",
        serde_json::json!({"owner": owner, "attempt": attempt, "dispatch": d.kind.as_str(), "lease_expires_at": expires, "after_expired_lease": expired_lease}),
    ));
    t
}

/// The adapter holding `d` under `token` reports how the attempt ended. `Ok((None,
/// AlreadyDone))` for a repeated success; FAILED_PRECONDITION when the lease is no longer the
/// caller's.
pub fn on_outcome(
    d: &Dispatch,
    token: &str,
    run: &Run,
    outcome: &Outcome,
    policy: &DispatchPolicy,
    now: DateTime<Utc>,
) -> Result<(Option<Transition>, CompleteEffect)> {
    if d.state != DispatchState::Leased || d.lease_token != token {
        if d.state == DispatchState::Done && matches!(outcome, Outcome::Success { .. }) {
            return Ok((None, CompleteEffect::AlreadyDone));
        }
        return Err(Error::FailedPrecondition(format!(
            "dispatch `{}` is no longer leased with this token (state {}): its lease expired or another adapter holds it",
            d.id, d.state
        )));
    }
    Ok(match outcome {
        Outcome::Success {
            workflow_name,
            workflow_uid,
            already_existed,
        } => {
            if d.kind == DispatchKind::Create {
                // A status report may have got there first: then keep the state, record the UID.
                let to = if run.status.can_move_to(RunStatus::Submitted) {
                    RunStatus::Submitted
                } else {
                    run.status
                };
                let mut t = Transition::new(to);
                t.dispatch = Some(DispatchChange::Done);
                t.run.workflow_uid = Some(workflow_uid.clone());
                t.event = Some((
                    "submitted",
                    serde_json::json!({"workflow_name": workflow_name, "workflow_uid": workflow_uid, "already_existed": already_existed, "attempt": d.attempts}),
                ));
                let since = (now - run.created_at).to_std().unwrap_or_default();
                (Some(t), CompleteEffect::Submitted(since))
            } else if matches!(d.kind, DispatchKind::Approve | DispatchKind::Reject) {
                let mut t = Transition::new(run.status);
                t.dispatch = Some(DispatchChange::Done);
                t.event = Some((
                    "decision_applied",
                    serde_json::json!({"decision": d.kind.as_str(), "workflow_name": workflow_name}),
                ));
                (Some(t), CompleteEffect::ShutdownSent)
            } else {
                let mut t = Transition::new(run.status);
                t.dispatch = Some(DispatchChange::Done);
                t.event = Some((
                    "shutdown_sent",
                    serde_json::json!({"shutdown": d.kind.as_str(), "workflow_name": workflow_name}),
                ));
                (Some(t), CompleteEffect::ShutdownSent)
            }
        }
        Outcome::Failure { message, retryable } => {
            if d.kind == DispatchKind::Create && run.cancel_requested_at.is_some() {
                // Cancelled while the create was in flight, and the create failed: done.
                let moves = run.status.can_move_to(RunStatus::Cancelled);
                let mut t = if moves {
                    Transition::new(RunStatus::Cancelled).finishing(now)
                } else {
                    Transition::new(run.status)
                };
                t.close_open_jobs = true;
                t.dispatch = Some(DispatchChange::Cancelled {
                    error: message.clone(),
                });
                if moves {
                    t.event = Some((
                        "cancelled",
                        serde_json::json!({"reason": "cancel requested; the create failed", "error": message}),
                    ));
                }
                (Some(t), CompleteEffect::Cancelled)
            } else if *retryable && d.attempts < policy.max_attempts {
                let delay = policy.backoff(d.attempts);
                let at = now + chrono::Duration::from_std(delay).unwrap_or_default();
                let mut t = Transition::new(
                    if d.kind == DispatchKind::Create && run.status == RunStatus::Dispatching {
                        RunStatus::Queued
                    } else {
                        run.status
                    },
                );
                t.run.message = Some(message.clone());
                t.dispatch = Some(DispatchChange::Retry {
                    delay,
                    error: message.clone(),
                });
                t.event = Some((
                    "dispatch_failed",
                    serde_json::json!({"error": message, "attempt": d.attempts, "retry_at": at, "dispatch": d.kind.as_str()}),
                ));
                (Some(t), CompleteEffect::RetryScheduled)
            } else {
                let why = if *retryable {
                    format!(
                        "{message} (attempt {} of {})",
                        d.attempts, policy.max_attempts
                    )
                } else {
                    format!("{message} (not retryable)")
                };
                (Some(dead_letter(d, run, why)), CompleteEffect::DeadLettered)
            }
        }
    })
}

/// A Workflow status observed by an adapter. Monotonic: a report that would move the run
/// backwards (late, repeated, out of order) gives `None`.
pub fn on_report(run: &Run, r: &StatusReport, now: DateTime<Utc>) -> Result<Option<Transition>> {
    if r.cluster != run.cluster {
        // A Workflow of the same name in another cluster is another Workflow: it never moves
        // this run (and the reporter learns nothing of it but that it is not its own).
        return Err(Error::NotFound(format!(
            "no run `{}` in cluster `{}`",
            run.id, r.cluster
        )));
    }
    if !r.workflow_name.is_empty() && r.workflow_name != run.workflow_name {
        return Err(Error::invalid(
            "workflow_name",
            format!(
                "workflow `{}` does not belong to run `{}` (its workflow is `{}`)",
                r.workflow_name, run.id, run.workflow_name
            ),
        ));
    }
    let mut target = RunStatus::from_argo_phase(&r.phase);
    if run.cancel_requested_at.is_some()
        && matches!(target, Some(RunStatus::Failed | RunStatus::Error))
    {
        target = Some(RunStatus::Cancelled);
    }
    let Some(to) = target else {
        return Ok(None);
    };
    // A Workflow stopped by a rejection ended for that reason, not for Argo's stop strategy.
    let rejected = matches!(to, RunStatus::Failed | RunStatus::Error)
        .then(|| run.steps.rejection())
        .flatten();
    let message = if let Some(d) = rejected {
        rejection_text(d)
    } else if r.failed_node_message.is_empty() {
        r.message.clone()
    } else if r.message.is_empty() {
        format!("{}: {}", r.failed_node, r.failed_node_message)
    } else {
        format!(
            "{} ({}: {})",
            r.message, r.failed_node, r.failed_node_message
        )
    };
    let steps = Steps {
        // Nothing runs, nothing waits, once the Workflow ended.
        current: if to.is_terminal() {
            String::new()
        } else {
            r.current_step.clone()
        },
        // The node a rejection failed is the decision, said above; no step failed.
        failed: if rejected.is_some() {
            String::new()
        } else {
            r.failed_node.clone()
        },
        log_tail: r.log_tail.clone(),
        // Decisions are the server's, never a report's: they stay to the end.
        decisions: run.steps.decisions.clone(),
        approval: if to.is_terminal() {
            None
        } else {
            r.approval.clone().map(|mut a| {
                // A decision taken on this same step is kept while the adapter applies it.
                if let Some(prev) = &run.steps.approval
                    && prev.node_id == a.node_id
                    && prev.workflow_suspended == a.workflow_suspended
                {
                    a.decision = prev.decision.clone();
                }
                a
            })
        },
    };
    let waiting = |s: &Steps| {
        s.approval
            .as_ref()
            .map(|a| (a.node_id.clone(), a.workflow_suspended))
    };
    let approval_changed = waiting(&run.steps) != waiting(&steps);
    let waiting_at = steps.approval.as_ref().map(|a| a.node.clone());
    let moves = run.status.can_move_to(to);
    let new_phase = to == run.status && !to.is_terminal() && run.workflow_phase != r.phase;
    let news = to == run.status
        && !to.is_terminal()
        && (run.progress != r.progress || run.message != message || run.steps != steps);
    if !(moves || new_phase || news) {
        return Ok(None);
    }
    let mut t = Transition::new(to);
    t.run.message = Some(message);
    t.run.progress = Some(r.progress.clone());
    t.run.steps = Some(steps);
    t.run.workflow_phase = Some(r.phase.clone());
    if run.workflow_uid.is_empty() && !r.workflow_uid.is_empty() {
        t.run.workflow_uid = Some(r.workflow_uid.clone());
    }
    if run.started_at.is_none() && r.started_at.is_some() {
        t.run.started_at = r.started_at;
    }
    if moves {
        t = t.finishing(r.finished_at.unwrap_or(now));
        // The Workflow exists: its create job is done whatever the adapter said.
        t.close_create = true;
        t.event = Some((
            "status",
            serde_json::json!({
                "phase": r.phase, "message": r.message, "progress": r.progress,
                "failed_node": r.failed_node, "failed_node_message": r.failed_node_message,
                "started_at": r.started_at, "finished_at": r.finished_at, "source": r.source,
            }),
        ));
    } else if new_phase {
        // A new Argo phase within the same run state (Pending after the create was completed).
        t.event = Some((
            "status",
            serde_json::json!({"phase": r.phase, "message": r.message, "progress": r.progress, "source": r.source}),
        ));
    } else if approval_changed {
        // A step starts or stops waiting for approval: the card shows (or drops) its buttons.
        t.event = Some((
            "approval",
            serde_json::json!({"waiting_at": waiting_at, "progress": r.progress, "source": r.source}),
        ));
    } else if run.progress != r.progress || run.steps.current != t_current(&t) {
        // A step started or ended: recorded, so the run's card (which follows the history)
        // moves with the Workflow. A new message alone is kept without an entry.
        t.event = Some((
            "progress",
            serde_json::json!({"progress": r.progress, "step": t_current(&t), "source": r.source}),
        ));
    }
    Ok(Some(t))
}

/// How a rejection reads, in a run's message and on its card: `Rejected by <who>: <reason>`.
pub fn rejection_text(d: &crate::domain::run::Decided) -> String {
    let who = if d.decision.by.is_empty() {
        "someone"
    } else {
        d.decision.by.as_str()
    };
    match d.decision.reason.trim() {
        "" => format!("Rejected by {who}"),
        why => format!("Rejected by {who}: {why}"),
    }
}

/// What checks the values an approver supplies at a step, and gives those to apply
/// ([`crate::domain::catalog::check_supplied`] with the command's rules).
pub type SuppliedCheck<'a> =
    dyn Fn(&Approval, &BTreeMap<String, String>) -> Result<BTreeMap<String, String>> + Sync + 'a;

/// How many decisions a run keeps (the latest).
pub const MAX_DECISIONS_KEPT: usize = 20;

/// A decision on the suspend step `run` waits at (`node`: its id or display name, or empty for
/// the one it waits at). Approving takes the values `supplied` accepts for the step (the
/// catalog's [`crate::domain::catalog::check_supplied`]: every parameter the step asks for,
/// each by its rules); a decision already taken stands. The transition records the decision and
/// asks an argo-adapter to apply it.
pub fn on_decision(
    run: &Run,
    node: &str,
    mut decision: Decision,
    supplied: &SuppliedCheck,
    now: DateTime<Utc>,
) -> Result<Transition> {
    let Some(waiting) = run
        .steps
        .approval
        .as_ref()
        .filter(|_| !run.status.is_terminal())
    else {
        return Err(Error::FailedPrecondition(format!(
            "run `{}` is {} and waits for no approval",
            run.id, run.status
        )));
    };
    if !node.is_empty() && node != waiting.node_id && node != waiting.node {
        return Err(Error::FailedPrecondition(format!(
            "run `{}` waits at `{}`, not at `{node}`",
            run.id, waiting.node
        )));
    }
    if let Some(d) = &waiting.decision {
        return Err(Error::FailedPrecondition(format!(
            "`{}` was already {} by {}",
            waiting.node,
            if d.approved { "approved" } else { "rejected" },
            d.by
        )));
    }
    if decision.approved {
        decision.values = supplied(waiting, &decision.values)?;
    } else {
        decision.values.clear();
    }
    let mut t = Transition::new(run.status);
    let (kind, event) = if decision.approved {
        (DispatchKind::Approve, "approved")
    } else {
        (DispatchKind::Reject, "rejected")
    };
    t.event = Some((
        event,
        serde_json::json!({"node": waiting.node, "node_id": waiting.node_id, "by": decision.by,
                           "values": decision.values, "reason": decision.reason}),
    ));
    let mut steps = run.steps.clone();
    steps.decisions.push(crate::domain::run::Decided {
        node: waiting.node.clone(),
        at: Some(now),
        decision: decision.clone(),
    });
    // A Workflow that loops over a gate keeps the latest few on its card.
    let excess = steps.decisions.len().saturating_sub(MAX_DECISIONS_KEPT);
    steps.decisions.drain(..excess);
    steps.approval = Some(Approval {
        decision: Some(decision),
        ..waiting.clone()
    });
    t.run.steps = Some(steps);
    t.new_job = Some(kind);
    Ok(t)
}

/// The running step a transition records.
fn t_current(t: &Transition) -> &str {
    t.run.steps.as_ref().map_or("", |s| s.current.as_str())
}

/// A cancel of `run` by a job of `kind`: queued and dead-lettered runs are cancelled at once;
/// one whose Workflow may exist gets a stop or terminate job (the run becomes `cancelled` when
/// Argo reports the end). `None`: a cancel was already requested.
pub fn on_cancel(
    run: &Run,
    kind: DispatchKind,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<Option<Transition>> {
    let payload = serde_json::json!({"reason": reason, "mode": kind.as_str()});
    match run.status {
        s if s.is_terminal() => Err(Error::FailedPrecondition(format!(
            "run `{}` is already {s}; nothing to cancel",
            run.id
        ))),
        RunStatus::Queued | RunStatus::DeadLettered => {
            let mut t = Transition::new(RunStatus::Cancelled).finishing(now);
            t.event = Some(("cancelled", payload));
            Ok(Some(t))
        }
        _ if run.cancel_requested_at.is_some() => Ok(None),
        s => {
            let mut t = Transition::new(s);
            t.run.cancel_requested = Some((kind, now));
            t.new_job = Some(kind);
            t.event = Some(("cancel_requested", payload));
            Ok(Some(t))
        }
    }
}

/// An admin puts a dead-lettered job back in the queue with fresh attempts.
pub fn on_requeue(d: &Dispatch, run: &Run) -> Result<Transition> {
    if d.state != DispatchState::Dead {
        return Err(Error::FailedPrecondition(format!(
            "dispatch `{}` is {}, not dead-lettered",
            d.id, d.state
        )));
    }
    let mut t = Transition::new(if run.status == RunStatus::DeadLettered {
        RunStatus::Queued
    } else {
        run.status
    });
    t.run.attempts = Some(0);
    t.dispatch = Some(DispatchChange::Requeue);
    t.event = Some((
        "requeued",
        serde_json::json!({"dispatch_id": d.id, "previous_error": d.last_error}),
    ));
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Error;

    fn policy() -> DispatchPolicy {
        DispatchPolicy {
            lease: Duration::from_secs(30),
            max_attempts: 3,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_millis(500),
        }
    }

    fn run(status: RunStatus, cancel_requested: bool) -> Run {
        let mut run = Run::example(status);
        run.cancel_requested_at = cancel_requested.then_some(run.created_at);
        run
    }

    fn dispatch(kind: DispatchKind, state: DispatchState, attempts: u32) -> Dispatch {
        Dispatch {
            id: "d1".into(),
            run_id: "r1".into(),
            kind,
            state,
            attempts,
            lease_token: "tok".into(),
            lease_expires_at: None,
            last_error: "earlier".into(),
            dead_lettered_at: None,
        }
    }

    const KINDS: [DispatchKind; 3] = [
        DispatchKind::Create,
        DispatchKind::Stop,
        DispatchKind::Terminate,
    ];

    fn outcomes() -> Vec<Outcome> {
        vec![
            Outcome::Success {
                workflow_name: "wf-r1".into(),
                workflow_uid: "uid".into(),
                already_existed: false,
            },
            Outcome::Failure {
                message: "boom".into(),
                retryable: true,
            },
            Outcome::Failure {
                message: "bad".into(),
                retryable: false,
            },
        ]
    }

    /// A transition never makes an illegal move, and writes history only with a reason.
    fn legal(from: &Run, t: &Transition) {
        assert!(
            t.to == from.status || from.status.can_move_to(t.to),
            "{} → {} is not a legal move",
            from.status,
            t.to
        );
        assert_eq!(
            t.run.finished_at.is_some(),
            t.to.is_terminal() && t.to != from.status,
            "finished_at is set exactly when the run finishes ({} → {})",
            from.status,
            t.to
        );
    }

    #[test]
    fn every_outcome_in_every_state() {
        let now = Utc::now();
        for status in RunStatus::ALL {
            for cancel in [false, true] {
                let r = run(status, cancel);
                for kind in KINDS {
                    for attempts in 1..=3 {
                        for outcome in outcomes() {
                            let d = dispatch(kind, DispatchState::Leased, attempts);
                            let (t, effect) = on_outcome(&d, "tok", &r, &outcome, &policy(), now)
                                .expect("the lease holder may complete");
                            let t = t.expect("a leased dispatch always moves");
                            legal(&r, &t);
                            let last = attempts >= policy().max_attempts;
                            let cancelled_create = kind == DispatchKind::Create && cancel;
                            let want = match (&outcome, cancelled_create) {
                                (Outcome::Success { .. }, _) if kind == DispatchKind::Create => {
                                    assert_eq!(t.run.workflow_uid.as_deref(), Some("uid"));
                                    if status.can_move_to(RunStatus::Submitted) {
                                        assert_eq!(t.to, RunStatus::Submitted);
                                    } else {
                                        assert_eq!(t.to, status, "a later state is kept");
                                    }
                                    DispatchState::Done
                                }
                                (Outcome::Success { .. }, _) => {
                                    assert_eq!(t.to, status);
                                    assert_eq!(effect, CompleteEffect::ShutdownSent);
                                    DispatchState::Done
                                }
                                (Outcome::Failure { .. }, true) => {
                                    assert_eq!(effect, CompleteEffect::Cancelled);
                                    if status.can_move_to(RunStatus::Cancelled) {
                                        assert_eq!(t.to, RunStatus::Cancelled);
                                        assert!(t.event.is_some());
                                    } else {
                                        assert!(t.event.is_none(), "no move, no history");
                                    }
                                    DispatchState::Cancelled
                                }
                                (
                                    Outcome::Failure {
                                        retryable: true, ..
                                    },
                                    false,
                                ) if !last => {
                                    assert_eq!(effect, CompleteEffect::RetryScheduled);
                                    if kind == DispatchKind::Create
                                        && status == RunStatus::Dispatching
                                    {
                                        assert_eq!(t.to, RunStatus::Queued);
                                    } else {
                                        assert_eq!(t.to, status);
                                    }
                                    DispatchState::Pending
                                }
                                (Outcome::Failure { .. }, false) => {
                                    assert_eq!(effect, CompleteEffect::DeadLettered);
                                    let dead = kind == DispatchKind::Create
                                        && status.can_move_to(RunStatus::DeadLettered);
                                    let want = if dead {
                                        RunStatus::DeadLettered
                                    } else {
                                        status
                                    };
                                    assert_eq!(t.to, want);
                                    DispatchState::Dead
                                }
                            };
                            assert_eq!(
                                t.dispatch.as_ref().map(DispatchChange::state),
                                Some(want),
                                "{status} {kind:?} attempt {attempts} {outcome:?}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn an_outcome_from_a_stale_lease_is_refused_but_a_repeated_success_is_not() {
        let now = Utc::now();
        let r = run(RunStatus::Submitted, false);
        for state in DispatchState::ALL {
            for outcome in outcomes() {
                let d = dispatch(DispatchKind::Create, state, 1);
                let got = on_outcome(&d, "other-token", &r, &outcome, &policy(), now);
                match (state, &outcome) {
                    (DispatchState::Done, Outcome::Success { .. }) => {
                        assert!(matches!(got, Ok((None, CompleteEffect::AlreadyDone))));
                    }
                    _ => assert!(matches!(got, Err(Error::FailedPrecondition(_)))),
                }
            }
        }
    }

    #[test]
    fn every_lease_in_every_state() {
        let exp = Utc::now();
        for status in RunStatus::ALL {
            let r = run(status, false);
            for kind in KINDS {
                for (state, attempts) in [
                    (DispatchState::Pending, 0),
                    (DispatchState::Leased, 1),
                    (DispatchState::Leased, 3),
                ] {
                    let d = dispatch(kind, state, attempts);
                    let t = on_lease(&d, &r, &policy(), "a1", exp);
                    legal(&r, &t);
                    let change = t.dispatch.clone().expect("a lease always decides");
                    if state == DispatchState::Leased && attempts >= 3 {
                        assert!(matches!(change, DispatchChange::Dead { .. }));
                        assert_eq!(t.event.as_ref().map(|e| e.0), Some("dead_lettered"));
                    } else if kind == DispatchKind::Create && status.is_terminal() {
                        assert!(matches!(change, DispatchChange::Cancelled { .. }));
                        assert!(t.event.is_none());
                    } else {
                        assert_eq!(change, DispatchChange::Lease);
                        let want = if kind == DispatchKind::Create && status == RunStatus::Queued {
                            RunStatus::Dispatching
                        } else {
                            status
                        };
                        assert_eq!(t.to, want);
                        assert_eq!(
                            t.run.attempts,
                            (kind == DispatchKind::Create).then_some(attempts + 1)
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn every_report_in_every_state() {
        let now = Utc::now();
        let phases = [
            "",
            "Pending",
            "Running",
            "Succeeded",
            "Failed",
            "Error",
            "Odd",
        ];
        for status in RunStatus::ALL {
            for cancel in [false, true] {
                let r = run(status, cancel);
                for phase in phases {
                    let report = StatusReport {
                        workflow_name: "wf-r1".into(),
                        phase: phase.into(),
                        progress: "1/2".into(),
                        ..Default::default()
                    };
                    let t = on_report(&r, &report, now).expect("own workflow");
                    let target = RunStatus::from_argo_phase(phase).map(|s| {
                        if cancel && matches!(s, RunStatus::Failed | RunStatus::Error) {
                            RunStatus::Cancelled
                        } else {
                            s
                        }
                    });
                    match (target, t) {
                        (None, t) => assert!(t.is_none(), "{phase} means nothing"),
                        (Some(to), Some(t)) => {
                            legal(&r, &t);
                            if status.can_move_to(to) {
                                assert_eq!(t.to, to);
                                assert!(t.close_create);
                                assert_eq!(t.close_open_jobs, to.is_terminal());
                                assert!(t.event.is_some());
                            } else {
                                assert_eq!(t.to, status, "never backwards");
                                assert!(!status.is_terminal());
                            }
                        }
                        (Some(to), None) => {
                            assert!(!status.can_move_to(to), "{status} + {phase} should move")
                        }
                    }
                }
            }
        }
        let r = run(RunStatus::Running, false);
        let other = StatusReport {
            workflow_name: "someone-else".into(),
            phase: "Succeeded".into(),
            ..Default::default()
        };
        assert!(matches!(
            on_report(&r, &other, now),
            Err(Error::InvalidArgument { .. })
        ));
    }

    #[test]
    fn progress_within_a_phase_is_recorded_and_a_message_alone_is_not() {
        let now = Utc::now();
        let mut r = run(RunStatus::Running, false);
        r.workflow_phase = "Running".into();
        r.progress = "1/3".into();
        let report = StatusReport {
            workflow_name: "wf-r1".into(),
            phase: "Running".into(),
            progress: "2/3".into(),
            ..Default::default()
        };
        let t = on_report(&r, &report, now).expect("ok").expect("news");
        assert_eq!(t.to, RunStatus::Running);
        assert_eq!(t.event.as_ref().map(|e| e.0), Some("progress"));
        r.progress = "2/3".into();
        assert!(
            on_report(&r, &report, now).expect("ok").is_none(),
            "no news"
        );
        let said = StatusReport {
            message: "still going".into(),
            ..report
        };
        let t = on_report(&r, &said, now).expect("ok").expect("news");
        assert!(t.event.is_none(), "a message alone adds no entry");
    }

    #[test]
    fn the_running_step_is_news_and_the_failed_step_and_log_are_kept() {
        let now = Utc::now();
        let mut r = run(RunStatus::Running, false);
        r.workflow_phase = "Running".into();
        r.steps.current = "checkout".into();
        let report = StatusReport {
            workflow_name: "wf-r1".into(),
            phase: "Running".into(),
            current_step: "build".into(),
            ..Default::default()
        };
        let t = on_report(&r, &report, now)
            .expect("ok")
            .expect("a new step is news");
        assert_eq!(
            t.run.steps.as_ref().map(|s| s.current.as_str()),
            Some("build")
        );
        r.steps.current = "build".into();
        assert!(on_report(&r, &report, now).expect("ok").is_none());
        let failed = StatusReport {
            phase: "Failed".into(),
            current_step: "build".into(),
            failed_node: "build".into(),
            failed_node_message: "exit code 2".into(),
            log_tail: "boom".into(),
            ..report
        };
        let t = on_report(&r, &failed, now).expect("ok").expect("moves");
        assert_eq!(t.to, RunStatus::Failed);
        assert_eq!(
            t.run.steps,
            Some(Steps {
                current: String::new(),
                failed: "build".into(),
                log_tail: "boom".into(),
                approval: None,
                decisions: vec![],
            }),
            "nothing runs once the Workflow ended"
        );
    }

    fn waiting(r: &mut Run) {
        r.steps.approval = Some(Approval {
            node_id: "wf-r1-123".into(),
            node: "approve-deploy".into(),
            parameters: vec![
                crate::domain::run::ApprovalParameter {
                    name: "environment".into(),
                    choices: vec!["staging".into(), "prod".into()],
                    ..Default::default()
                },
                crate::domain::run::ApprovalParameter {
                    name: "note".into(),
                    default: "none".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        });
    }

    fn approve(values: &[(&str, &str)]) -> Decision {
        Decision {
            by: "alice".into(),
            approved: true,
            values: values
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            reason: String::new(),
        }
    }

    /// A decision checked by the catalog's rules with no pattern and the default length.
    fn on_decision_(r: &Run, node: &str, d: Decision, now: DateTime<Utc>) -> Result<Transition> {
        on_decision(
            r,
            node,
            d,
            &|a, v| crate::domain::catalog::check_supplied(a, v, &BTreeMap::new(), 1000),
            now,
        )
    }

    #[test]
    fn a_decision_needs_a_waiting_step_and_its_values() {
        let now = Utc::now();
        let mut r = run(RunStatus::Running, false);
        assert!(matches!(
            on_decision_(&r, "", approve(&[]), now),
            Err(Error::FailedPrecondition(_))
        ));
        waiting(&mut r);
        let Err(Error::Refused(m)) = on_decision_(&r, "", approve(&[]), now) else {
            panic!("values missing");
        };
        assert_eq!(m.to_string(), "`environment` is required");
        let Err(Error::Refused(m)) =
            on_decision_(&r, "", approve(&[("environment", "qa"), ("x", "1")]), now)
        else {
            panic!("bad values");
        };
        assert_eq!(
            m.to_string(),
            "`x` is not asked for by `approve-deploy` (it asks for: environment, note); \
             `environment` must be one of staging, prod"
        );
        let Err(Error::Refused(m)) = on_decision_(
            &r,
            "",
            approve(&[("environment", "{{workflow.name}}")]),
            now,
        ) else {
            panic!("Argo syntax in an approval value");
        };
        assert_eq!(
            m.to_string(),
            "`environment` must not contain `{{` (Argo's template syntax)"
        );
        assert!(matches!(
            on_decision_(&r, "other-step", approve(&[("environment", "prod")]), now),
            Err(Error::FailedPrecondition(_))
        ));
        let t = on_decision_(
            &r,
            "approve-deploy",
            approve(&[("environment", "prod")]),
            now,
        )
        .expect("approved");
        assert_eq!(
            (t.to, t.new_job),
            (RunStatus::Running, Some(DispatchKind::Approve))
        );
        let decided = t
            .run
            .steps
            .as_ref()
            .and_then(|s| s.approval.clone())
            .expect("approval");
        let d = decided.decision.clone().expect("decision");
        assert_eq!(
            d.values.into_iter().collect::<Vec<_>>(),
            [
                ("environment".to_string(), "prod".to_string()),
                ("note".to_string(), "none".to_string())
            ],
            "the default fills what was not given"
        );
        assert_eq!(t.event.as_ref().map(|e| e.0), Some("approved"));
        // Taken once: a second decision is refused, and a report of the same step keeps it.
        r.steps.approval = Some(decided.clone());
        assert!(matches!(
            on_decision_(&r, "", Decision { approved: false, ..approve(&[]) }, now),
            Err(Error::FailedPrecondition(m)) if m.contains("already approved by alice")
        ));
        let report = StatusReport {
            workflow_name: "wf-r1".into(),
            phase: "Running".into(),
            approval: Some(Approval {
                decision: None,
                ..decided.clone()
            }),
            ..Default::default()
        };
        r.workflow_phase = "Running".into();
        assert!(
            on_report(&r, &report, now).expect("ok").is_none(),
            "nothing new"
        );
        // The step resumed: it no longer waits, and that is news for the card.
        let resumed = StatusReport {
            approval: None,
            ..report
        };
        let t = on_report(&r, &resumed, now).expect("ok").expect("news");
        assert_eq!(t.event.as_ref().map(|e| e.0), Some("approval"));
        assert_eq!(t.run.steps.and_then(|s| s.approval), None);
        // Rejected: a Reject job, no values kept.
        let mut r = run(RunStatus::Running, false);
        waiting(&mut r);
        let t = on_decision_(
            &r,
            "",
            Decision {
                approved: false,
                reason: "no".into(),
                ..approve(&[("environment", "prod")])
            },
            now,
        )
        .expect("rejected");
        assert_eq!(t.new_job, Some(DispatchKind::Reject));
        // Kept to the end: the step resumes (the report drops it), the Workflow stops, and the
        // run says who rejected it and why, not Argo's stop strategy.
        let steps = t.run.steps.clone().expect("steps");
        assert_eq!(steps.decisions.len(), 1);
        assert_eq!(
            (steps.decisions[0].node.as_str(), steps.decisions[0].at),
            ("approve-deploy", Some(now))
        );
        let mut rejected = r.clone();
        rejected.steps = steps;
        rejected.workflow_phase = "Running".into();
        let stopped = StatusReport {
            workflow_name: "wf-r1".into(),
            phase: "Failed".into(),
            message: "Stopped with strategy 'Stop'".into(),
            failed_node: "wf-r1".into(),
            ..Default::default()
        };
        let end = on_report(&rejected, &stopped, now)
            .expect("ok")
            .expect("ends");
        assert_eq!(end.to, RunStatus::Failed);
        assert_eq!(end.run.message.as_deref(), Some("Rejected by alice: no"));
        let kept = end.run.steps.expect("steps");
        assert_eq!((kept.failed.as_str(), kept.decisions.len()), ("", 1));
        assert_eq!(kept.approval, None);
        assert!(
            t.run
                .steps
                .and_then(|s| s.approval)
                .and_then(|a| a.decision)
                .is_some_and(|d| d.values.is_empty())
        );
        // Finished runs wait for nothing.
        let mut done = run(RunStatus::Succeeded, false);
        waiting(&mut done);
        assert!(on_decision_(&done, "", approve(&[("environment", "prod")]), now).is_err());
    }

    #[test]
    fn every_cancel_in_every_state() {
        let now = Utc::now();
        for status in RunStatus::ALL {
            for requested in [false, true] {
                let r = run(status, requested);
                let got = on_cancel(&r, DispatchKind::Stop, "why", now);
                match status {
                    s if s.is_terminal() => {
                        assert!(matches!(got, Err(Error::FailedPrecondition(_))))
                    }
                    RunStatus::Queued | RunStatus::DeadLettered => {
                        let t = got.expect("ok").expect("cancelled at once");
                        legal(&r, &t);
                        assert_eq!(t.to, RunStatus::Cancelled);
                        assert!(t.close_open_jobs && t.new_job.is_none());
                    }
                    _ if requested => assert!(got.expect("ok").is_none()),
                    _ => {
                        let t = got.expect("ok").expect("a stop job");
                        assert_eq!(t.to, status);
                        assert_eq!(t.new_job, Some(DispatchKind::Stop));
                        assert_eq!(
                            t.run.cancel_requested.map(|c| c.0),
                            Some(DispatchKind::Stop)
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn only_a_dead_letter_is_requeued() {
        for status in RunStatus::ALL {
            let r = run(status, false);
            for state in DispatchState::ALL {
                let d = dispatch(DispatchKind::Create, state, 3);
                match on_requeue(&d, &r) {
                    Ok(t) => {
                        assert_eq!(state, DispatchState::Dead);
                        legal(&r, &t);
                        assert_eq!(t.dispatch, Some(DispatchChange::Requeue));
                        assert_eq!(t.run.attempts, Some(0));
                        if status == RunStatus::DeadLettered {
                            assert_eq!(t.to, RunStatus::Queued);
                        }
                    }
                    Err(e) => {
                        assert_ne!(state, DispatchState::Dead);
                        assert!(matches!(e, Error::FailedPrecondition(_)));
                    }
                }
            }
        }
    }

    #[test]
    fn dispatch_states_round_trip() {
        for s in DispatchState::ALL {
            assert_eq!(DispatchState::parse(s.as_str()), Some(s));
        }
        assert_eq!(DispatchState::parse("nope"), None);
    }

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

    #[test]
    fn forward_path_is_legal() {
        use RunStatus::*;
        for (a, b) in [
            (Queued, Dispatching),
            (Dispatching, Submitted),
            (Submitted, Running),
            (Running, Succeeded),
            (Running, Failed),
            (Running, Error),
        ] {
            assert!(a.can_move_to(b), "{a} -> {b}");
        }
    }

    #[test]
    fn skipping_ahead_is_legal_going_back_is_not() {
        use RunStatus::*;
        assert!(Dispatching.can_move_to(Running));
        assert!(Submitted.can_move_to(Succeeded));
        assert!(!Running.can_move_to(Submitted));
        assert!(!Running.can_move_to(Dispatching));
        assert!(!Submitted.can_move_to(Dispatching));
    }

    #[test]
    fn terminal_states_are_final() {
        use RunStatus::*;
        for t in [Succeeded, Failed, Error, Cancelled] {
            for to in RunStatus::ALL {
                assert!(!t.can_move_to(to), "{t} -> {to}");
            }
        }
    }

    #[test]
    fn cancel_from_every_live_state() {
        use RunStatus::*;
        for s in [Queued, Dispatching, Submitted, Running, DeadLettered] {
            assert!(s.can_move_to(Cancelled), "{s}");
        }
    }

    #[test]
    fn dead_letter_only_from_dispatch_and_back_only_by_requeue() {
        use RunStatus::*;
        assert!(Dispatching.can_move_to(DeadLettered));
        assert!(!Running.can_move_to(DeadLettered));
        assert!(!Submitted.can_move_to(DeadLettered));
        assert!(DeadLettered.can_move_to(Queued));
        assert!(!DeadLettered.can_move_to(Running));
    }

    #[test]
    fn repeated_state_is_not_a_transition() {
        for s in RunStatus::ALL {
            assert!(!s.can_move_to(s));
        }
    }

    /// Every pair of states, one row each: the whole graph in one table. A change to the graph
    /// changes this table, on purpose.
    #[test]
    fn the_graph_whole() {
        // from: the states it may move to (every other move is refused).
        let graph = "
            queued:        dispatching submitted running succeeded failed error cancelled dead_lettered
            dispatching:   queued submitted running succeeded failed error cancelled dead_lettered
            submitted:     running succeeded failed error cancelled
            running:       succeeded failed error cancelled
            succeeded:
            failed:
            error:
            cancelled:
            dead_lettered: queued cancelled";
        let rows: Vec<(RunStatus, Vec<RunStatus>)> = graph
            .trim()
            .lines()
            .map(|l| {
                let (from, to) = l.trim().split_once(':').expect("from: to");
                let parse = |s: &str| s.parse::<RunStatus>().expect("a state");
                (parse(from), to.split_whitespace().map(parse).collect())
            })
            .collect();
        assert_eq!(rows.len(), RunStatus::ALL.len(), "one row per state");
        for (from, allowed) in rows {
            for to in RunStatus::ALL {
                assert_eq!(from.can_move_to(to), allowed.contains(&to), "{from} → {to}");
            }
        }
    }

    #[test]
    fn only_an_ended_run_is_retried() {
        for s in RunStatus::ALL {
            assert_eq!(
                check_retryable(&Run::example(s)).is_ok(),
                s.is_terminal(),
                "{s}"
            );
        }
    }
}
