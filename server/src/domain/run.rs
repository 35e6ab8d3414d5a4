//! Runs: what is stored of each, who asked, its steps and decisions, and the handles people
//! type to name one. How a run moves from state to state is [`crate::domain::machine`].

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// State of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RunStatus {
    /// Accepted; its dispatch waits for an adapter.
    Queued,
    /// Leased by an adapter creating the Workflow.
    Dispatching,
    /// The Workflow exists; not started yet.
    Submitted,
    /// The Workflow runs.
    Running,
    /// Terminal: the Workflow succeeded.
    Succeeded,
    /// Terminal: the Workflow failed (stopped and terminated Workflows end here too).
    Failed,
    /// Terminal: Argo reported an error.
    Error,
    /// Terminal: cancelled.
    Cancelled,
    /// Every dispatch attempt failed; an admin may requeue it.
    DeadLettered,
}

impl RunStatus {
    /// Every state, in order.
    pub const ALL: [RunStatus; 9] = [
        RunStatus::Queued,
        RunStatus::Dispatching,
        RunStatus::Submitted,
        RunStatus::Running,
        RunStatus::Succeeded,
        RunStatus::Failed,
        RunStatus::Error,
        RunStatus::Cancelled,
        RunStatus::DeadLettered,
    ];

    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Dispatching => "dispatching",
            RunStatus::Submitted => "submitted",
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Error => "error",
            RunStatus::Cancelled => "cancelled",
            RunStatus::DeadLettered => "dead_lettered",
        }
    }

    /// No transition leaves a terminal state.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunStatus::Succeeded | RunStatus::Failed | RunStatus::Error | RunStatus::Cancelled
        )
    }

    /// The run state an Argo Workflow phase means, if any (`""` and unknown phases mean none).
    pub fn from_argo_phase(phase: &str) -> Option<RunStatus> {
        match phase {
            "Pending" => Some(RunStatus::Submitted),
            "Running" => Some(RunStatus::Running),
            "Succeeded" => Some(RunStatus::Succeeded),
            "Failed" => Some(RunStatus::Failed),
            "Error" => Some(RunStatus::Error),
            _ => None,
        }
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RunStatus::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| format!("unknown run status `{s}`"))
    }
}

/// Where a run came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunSource {
    /// Discord interaction.
    Discord,
    /// CodexTask delivery.
    Codex,
    /// Admin call.
    Admin,
    /// Legacy `POST /events`.
    CompatEvent,
    /// Retry of an earlier run.
    Retry,
}

impl RunSource {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            RunSource::Discord => "discord",
            RunSource::Codex => "codex",
            RunSource::Admin => "admin",
            RunSource::CompatEvent => "compat_event",
            RunSource::Retry => "retry",
        }
    }
}

impl FromStr for RunSource {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            RunSource::Discord,
            RunSource::Codex,
            RunSource::Admin,
            RunSource::CompatEvent,
            RunSource::Retry,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
        .ok_or_else(|| format!("unknown run source `{s}`"))
    }
}

/// Who asked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Requester {
    /// Authenticated principal (token name).
    pub principal: String,
    /// Discord user id.
    pub user_id: String,
    /// Discord guild id.
    pub guild_id: String,
    /// Discord channel id.
    pub channel_id: String,
    /// Display name.
    pub display_name: String,
}

/// What a caller asks to run; persisted with its dispatch in one transaction.
#[derive(Clone, Debug)]
pub struct NewRun {
    /// Idempotency key (unique across runs).
    pub idempotency_key: String,
    /// Command name.
    pub command: String,
    /// Origin.
    pub source: RunSource,
    /// Requester.
    pub requester: Requester,
    /// Cluster of the Workflow.
    pub cluster: String,
    /// Namespace of the Workflow.
    pub namespace: String,
    /// WorkflowTemplate.
    pub workflow_template: String,
    /// Service account (empty: Argo's default).
    pub service_account: String,
    /// Prefix of the Workflow name; the rest is derived from the run id.
    pub workflow_name_prefix: String,
    /// Parameters (sorted by name by the map).
    pub parameters: BTreeMap<String, String>,
    /// The run this retries.
    pub parent_run_id: Option<String>,
    /// W3C `traceparent` of the creating request, carried to the Workflow.
    pub trace_parent: String,
}

/// Longest idempotency key a caller may choose (the column holds 255, room for prefixes).
pub const MAX_IDEMPOTENCY_KEY: usize = 200;

impl NewRun {
    /// A replay of an idempotency key must ask for what the first request asked: the same
    /// command, parameters, requester and parent. Otherwise the key was reused for something
    /// else, and that is ALREADY_EXISTS naming the key (an identical replay answers the
    /// original run as a duplicate).
    pub fn check_replay_of(&self, existing: &Run) -> crate::domain::Result<()> {
        let mut differs = Vec::new();
        if self.command != existing.command {
            differs.push("command");
        }
        if self.parameters != existing.parameters {
            differs.push("parameters");
        }
        if self.cluster != existing.cluster {
            differs.push("cluster");
        }
        if self.parent_run_id != existing.parent_run_id {
            differs.push("the run retried");
        }
        if self.requester.user_id != existing.requester.user_id
            || self.requester.principal != existing.requester.principal
        {
            differs.push("requester");
        }
        if differs.is_empty() {
            return Ok(());
        }
        Err(crate::domain::Error::AlreadyExists(format!(
            "idempotency key `{}` was already used by run `{}` with another {}; use a new key",
            self.idempotency_key,
            existing.id,
            differs.join(", ")
        )))
    }

    /// A new run with the command, target and parameters of `run` (which it retries).
    pub fn retry_of(
        run: &Run,
        idempotency_key: String,
        requester: Requester,
        trace_parent: String,
    ) -> NewRun {
        NewRun {
            idempotency_key,
            command: run.command.clone(),
            source: RunSource::Retry,
            requester,
            cluster: run.cluster.clone(),
            namespace: run.namespace.clone(),
            workflow_template: run.workflow_template.clone(),
            service_account: run.service_account.clone(),
            // The name's prefix is what precedes the run id's 32 hex digits.
            workflow_name_prefix: run
                .workflow_name
                .trim_end_matches(|c: char| c.is_ascii_hexdigit())
                .to_string(),
            parameters: run.parameters.clone(),
            parent_run_id: Some(run.id.clone()),
            trace_parent,
        }
    }
}

impl Run {
    /// The suspend step the run waits at for a decision (none once decided, or when it waits
    /// at none): what Approve and Reject act on.
    pub fn waiting_step(&self) -> Option<&Approval> {
        self.steps
            .approval
            .as_ref()
            .filter(|a| a.decision.is_none())
    }
}

#[cfg(test)]
impl Run {
    /// A run of `dispatch` in namespace `ns` (id `r1`), for the domain's tests.
    pub(crate) fn example(status: RunStatus) -> Run {
        let t = Utc::now();
        Run {
            id: "r1".into(),
            number: 0,
            idempotency_key: "k".into(),
            command: "dispatch".into(),
            source: RunSource::Admin,
            status,
            requester: Requester::default(),
            cluster: String::new(),
            namespace: "ns".into(),
            workflow_template: "tpl".into(),
            service_account: String::new(),
            workflow_name: "wf-r1".into(),
            workflow_uid: String::new(),
            parameters: Default::default(),
            message: String::new(),
            progress: String::new(),
            workflow_phase: String::new(),
            parent_run_id: None,
            attempts: 0,
            created_at: t,
            updated_at: t,
            started_at: None,
            finished_at: None,
            cancel_requested_at: None,
            steps: Default::default(),
            trace_parent: String::new(),
        }
    }
}

/// A run as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct Run {
    /// UUID.
    pub id: String,
    /// Its number in this deployment (`#1234`): unique, increasing, the handle people type.
    pub number: i64,
    /// Idempotency key.
    pub idempotency_key: String,
    /// Command name.
    pub command: String,
    /// Origin.
    pub source: RunSource,
    /// Current state.
    pub status: RunStatus,
    /// Requester.
    pub requester: Requester,
    /// Cluster.
    pub cluster: String,
    /// Namespace.
    pub namespace: String,
    /// WorkflowTemplate.
    pub workflow_template: String,
    /// Service account.
    pub service_account: String,
    /// Workflow name (deterministic).
    pub workflow_name: String,
    /// Workflow UID once created.
    pub workflow_uid: String,
    /// Parameters.
    pub parameters: BTreeMap<String, String>,
    /// Last message.
    pub message: String,
    /// Argo progress.
    pub progress: String,
    /// Last Argo phase reported.
    pub workflow_phase: String,
    /// Retried run.
    pub parent_run_id: Option<String>,
    /// Dispatch attempts.
    pub attempts: u32,
    /// Accepted at.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// Workflow start.
    pub started_at: Option<DateTime<Utc>>,
    /// Terminal at.
    pub finished_at: Option<DateTime<Utc>>,
    /// When a cancel was requested for a Workflow that already existed.
    pub cancel_requested_at: Option<DateTime<Utc>>,
    /// W3C `traceparent` of the request that created the run (empty when not traced).
    pub trace_parent: String,
    /// What the Workflow's nodes say beyond its phase.
    pub steps: Steps,
}

/// What a run card shows of a Workflow's nodes, as the argo-adapter last reported them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Steps {
    /// The step running now (empty when none is).
    pub current: String,
    /// The step that failed (empty unless one did).
    pub failed: String,
    /// The last lines of the failed step's log (commands with `show_logs`).
    pub log_tail: String,
    /// The suspend step waiting for a decision, and the decision once taken.
    pub approval: Option<Approval>,
    /// Every decision taken on the run's suspend steps, oldest first, kept to the end.
    pub decisions: Vec<Decided>,
}

/// A decision taken on one suspend step, as the card keeps it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decided {
    /// The step's display name (empty: the Workflow itself).
    pub node: String,
    /// When it was taken.
    pub at: Option<DateTime<Utc>>,
    /// The decision: who, approved or rejected, values or reason.
    #[serde(flatten)]
    pub decision: Decision,
}

impl Steps {
    /// The decision that ended the run, if the last one taken was a rejection.
    pub fn rejection(&self) -> Option<&Decided> {
        self.decisions.last().filter(|d| !d.decision.approved)
    }
}

/// A suspend step waiting for someone to approve or reject it (stored as JSON).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// The Suspend node's id (empty when only the Workflow is suspended).
    pub node_id: String,
    /// Its display name.
    pub node: String,
    /// The output parameters it asks for (`valueFrom.supplied`).
    pub parameters: Vec<ApprovalParameter>,
    /// `spec.suspend: true`.
    pub workflow_suspended: bool,
    /// Taken, and being applied by an argo-adapter.
    pub decision: Option<Decision>,
}

/// An output parameter a suspend step asks the approver for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalParameter {
    /// Name.
    pub name: String,
    /// Description (the input's label).
    pub description: String,
    /// `enum`.
    pub choices: Vec<String>,
    /// `valueFrom.default`.
    pub default: String,
    /// Where the Workflow puts the supplied value into a shell or an expression (the
    /// argo-adapter's lint): without a pattern, the value takes no shell metacharacter.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interpolated_in: Vec<String>,
}

/// Someone's decision on a suspend step.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// Who (a Discord user's name, or a principal).
    pub by: String,
    /// Approved, or rejected.
    pub approved: bool,
    /// The values supplied (approved), every parameter given.
    pub values: BTreeMap<String, String>,
    /// Why (rejected).
    pub reason: String,
}
#[derive(Clone, Debug, PartialEq)]
pub struct RunEvent {
    /// 1-based position.
    pub sequence: i64,
    /// Run id.
    pub run_id: String,
    /// Who.
    pub actor: String,
    /// What.
    pub kind: String,
    /// Before.
    pub from_status: RunStatus,
    /// After.
    pub to_status: RunStatus,
    /// Details (JSON object).
    pub payload: serde_json::Value,
    /// When.
    pub time: DateTime<Utc>,
}

/// Kubernetes names: at most 253 characters of `[a-z0-9-.]`; we keep to 63 so the name also fits
/// a label value. The run id's 32 hex digits make it unique.
pub fn workflow_name(prefix: &str, run_id: &uuid::Uuid) -> String {
    let mut p: String = prefix
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    p.truncate(63 - 32);
    let p = p.trim_start_matches('-');
    let p = if p.is_empty() { "run-" } else { p };
    format!("{p}{}", run_id.simple())
}

/// How someone names a run: its id, its number (`#1234`, `1234`), or a prefix of its id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Handle {
    /// A whole UUID.
    Id(String),
    /// The run's number.
    Number(i64),
    /// The first characters of its id (8 or more, lower-case hex and dashes).
    Prefix(String),
}

/// The shortest id prefix taken: shorter ones name too many runs to be worth a lookup.
pub const MIN_PREFIX: usize = 8;

impl Handle {
    /// Reads what someone typed; an error says what is accepted.
    pub fn parse(text: &str) -> std::result::Result<Handle, String> {
        let t = text.trim();
        let digits = t.strip_prefix('#').unwrap_or(t);
        if !digits.is_empty()
            && digits.len() <= 18
            && digits.bytes().all(|b| b.is_ascii_digit())
            && let Ok(n) = digits.parse::<i64>()
        {
            return Ok(Handle::Number(n));
        }
        if let Ok(u) = uuid::Uuid::parse_str(t) {
            return Ok(Handle::Id(u.hyphenated().to_string()));
        }
        let lower = t.to_ascii_lowercase();
        if lower.len() >= MIN_PREFIX
            && lower.len() < 36
            && lower.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
        {
            return Ok(Handle::Prefix(lower));
        }
        Err(format!(
            "`{}` is not a run: give its number (#1234), its id, or the first {MIN_PREFIX} characters of its id or more",
            facteur_config::discord::clip(t, 40)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::RunStatus::*;
    use super::*;

    fn new_run() -> NewRun {
        NewRun {
            idempotency_key: "k1".into(),
            command: "deploy".into(),
            source: RunSource::Admin,
            requester: Requester {
                principal: "ops".into(),
                ..Default::default()
            },
            cluster: "default".into(),
            namespace: "ns".into(),
            workflow_template: "t".into(),
            service_account: String::new(),
            workflow_name_prefix: "deploy-".into(),
            parameters: [("service".to_string(), "api".to_string())].into(),
            parent_run_id: None,
            trace_parent: "00-a-b-01".into(),
        }
    }

    fn stored(n: &NewRun) -> Run {
        let t = chrono::Utc::now();
        Run {
            id: "r1".into(),
            number: 0,
            idempotency_key: n.idempotency_key.clone(),
            command: n.command.clone(),
            source: n.source,
            status: RunStatus::Running,
            requester: n.requester.clone(),
            cluster: n.cluster.clone(),
            namespace: n.namespace.clone(),
            workflow_template: n.workflow_template.clone(),
            service_account: String::new(),
            workflow_name: "deploy-r1".into(),
            workflow_uid: String::new(),
            parameters: n.parameters.clone(),
            message: String::new(),
            progress: String::new(),
            workflow_phase: String::new(),
            parent_run_id: None,
            attempts: 1,
            created_at: t,
            updated_at: t,
            started_at: None,
            finished_at: None,
            cancel_requested_at: None,
            steps: Steps::default(),
            trace_parent: String::new(),
        }
    }

    #[test]
    fn a_reused_key_with_other_content_is_a_conflict_and_a_replay_is_not() {
        let first = new_run();
        let run = stored(&first);
        // Another trace, the same request: a replay.
        let mut again = new_run();
        again.trace_parent = "00-c-d-01".into();
        assert!(again.check_replay_of(&run).is_ok());
        let mut other = new_run();
        other.parameters.insert("service".into(), "web".into());
        let Err(crate::domain::Error::AlreadyExists(m)) = other.check_replay_of(&run) else {
            panic!("conflict expected");
        };
        assert!(m.contains("`k1`") && m.contains("parameters"), "{m}");
        let mut other = new_run();
        other.command = "rollback".into();
        assert!(other.check_replay_of(&run).is_err());
        let mut other = new_run();
        other.requester.principal = "someone-else".into();
        assert!(other.check_replay_of(&run).is_err());
    }

    #[test]
    fn names_round_trip() {
        for s in RunStatus::ALL {
            assert_eq!(s.as_str().parse::<RunStatus>(), Ok(s));
        }
        assert!("bogus".parse::<RunStatus>().is_err());
    }

    #[test]
    fn argo_phases() {
        assert_eq!(RunStatus::from_argo_phase("Pending"), Some(Submitted));
        assert_eq!(RunStatus::from_argo_phase("Failed"), Some(Failed));
        assert_eq!(RunStatus::from_argo_phase(""), None);
    }

    #[test]
    fn workflow_names_are_valid_and_deterministic() {
        let id = uuid::Uuid::parse_str("0190b7a4-7c4e-7b4a-9a57-3c1f2e7d9a10").expect("uuid");
        let n = workflow_name("codex-autonomous-", &id);
        assert_eq!(n, "codex-autonomous-0190b7a47c4e7b4a9a573c1f2e7d9a10");
        assert_eq!(n, workflow_name("codex-autonomous-", &id));
        let long = workflow_name(
            "Facteur_Dispatch.With.A.Very.Long.Prefix.That.Goes.On-",
            &id,
        );
        assert!(long.len() <= 63, "{long}");
        assert!(
            long.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
            "{long}"
        );
        assert!(workflow_name("", &id).starts_with("run-"));
    }

    #[test]
    fn a_handle_is_a_number_an_id_or_a_long_enough_prefix() {
        let id = "019af3c2-7d10-7a3b-9c4e-2b6f0a1d9e88";
        for (text, want) in [
            ("#1234", Ok(Handle::Number(1234))),
            (" 42 ", Ok(Handle::Number(42))),
            (id, Ok(Handle::Id(id.into()))),
            (
                "019AF3C2-7D10-7A3B-9C4E-2B6F0A1D9E88",
                Ok(Handle::Id(id.into())),
            ),
            ("019af3c2", Ok(Handle::Prefix("019af3c2".into()))),
            ("019AF3C2-7d", Ok(Handle::Prefix("019af3c2-7d".into()))),
        ] {
            assert_eq!(Handle::parse(text), want, "{text:?}");
        }
        for bad in [
            "019af3c",
            "",
            "#",
            "abc",
            "019af3c2%",
            "hello-world",
            "#12a",
        ] {
            let e = Handle::parse(bad).expect_err(bad);
            assert!(e.contains("is not a run"), "{bad:?}: {e}");
        }
    }
}
